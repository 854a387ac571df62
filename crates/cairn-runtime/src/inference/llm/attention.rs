//! Attention, per sequence over its own key/value cache.
//!
//! A prompt segment (many rows of one sequence) goes through candle's batched products. A
//! one-token step is a handful of dot products per head over the cache, and candle's cost per
//! operation dominated it: sixteen sequences decoded together spent a third of each step in
//! ~15 small operations per sequence and layer, all on one thread. Steps are computed here in
//! plain loops instead, each sequence whole on one thread, the sequences of a step shared out
//! over candle's worker pool. Which path a row takes follows from its segment's length, as its
//! matrix products' kernel does, so a sequence gets the same bits alone or batched, on any
//! thread count, and on any x86 instruction set (the loops are compiled per instruction set but
//! keep one order of operations: lanes are independent sums and nothing is fused).

use std::sync::Mutex;

use candle_core::{Device, Tensor};

use super::{Config, engine};
use crate::inference::numeric::{LANES, dot, fold, softmax, vectorized};
use crate::{Result, RunError};

/// Rotary tables for one base, `positions × head_dim / 2`.
pub(super) struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
}

impl Rope {
    pub(super) fn new(base: f32, head_dim: usize, positions: usize, device: &Device) -> Result<Self> {
        let half = head_dim / 2;
        let inv: Vec<f32> = (0..half).map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32)).collect();
        let mut angles = Vec::with_capacity(positions * half);
        for p in 0..positions {
            angles.extend(inv.iter().map(|f| p as f32 * f));
        }
        let t = Tensor::from_vec(angles, positions * half, device).map_err(engine)?;
        let table = |t: candle_core::Result<Tensor>| t.and_then(|t| t.to_vec1::<f32>()).map_err(engine);
        Ok(Rope { cos: table(t.cos())?, sin: table(t.sin())?, half })
    }

    /// Positions `start..start + len` as `(len, head_dim / 2)` tensors.
    fn tables(&self, start: usize, len: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let at = start * self.half..(start + len) * self.half;
        let t = |v: &[f32]| Tensor::from_slice(&v[at.clone()], (len, self.half), device).map_err(engine);
        Ok((t(&self.cos)?, t(&self.sin)?))
    }

    /// One head rotated in place to position `pos` (halves, not interleaved: candle's `rope`).
    #[inline(always)]
    fn rotate(&self, x: &mut [f32], pos: usize) {
        let h = self.half;
        let (c, s) = (&self.cos[pos * h..][..h], &self.sin[pos * h..][..h]);
        let (a, b) = x.split_at_mut(h);
        for i in 0..h {
            let (x0, x1) = (a[i], b[i]);
            a[i] = x0 * c[i] - x1 * s[i];
            b[i] = x1 * c[i] + x0 * s[i];
        }
    }
}

/// One layer's keys and values for one sequence, position after position: `(positions,
/// kv_heads, head_dim)`.
#[derive(Default)]
pub(super) struct LayerCache {
    k: Vec<f32>,
    v: Vec<f32>,
    len: usize,
}

impl LayerCache {
    /// Positions `from..len` as `(kv_heads, keys, head_dim)` tensors.
    fn view(&self, from: usize, kvh: usize, hd: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let keys = self.len - from;
        let t = |v: &[f32]| {
            Tensor::from_slice(&v[from * kvh * hd..self.len * kvh * hd], (keys, kvh, hd), device)
                .and_then(|t| t.transpose(0, 1))
                .and_then(|t| t.contiguous())
                .map_err(engine)
        };
        Ok((t(&self.k)?, t(&self.v)?))
    }
}

/// The layer weights attention uses besides its projections.
pub(super) struct Norms<'a> {
    pub(super) q: Option<&'a Tensor>,
    pub(super) k: Option<&'a Tensor>,
    /// The same weights as plain values, for the step loops.
    pub(super) q_values: Option<&'a [f32]>,
    pub(super) k_values: Option<&'a [f32]>,
}

/// Attention of one sequence's prompt rows `off..off+len` of `q`, `k`, `v` (its positions
/// `start..start+len`), appending its keys and values to `cache`.
#[allow(clippy::too_many_arguments)]
pub(super) fn prompt(
    cfg: &Config,
    rope: &Rope,
    window: Option<usize>,
    norms: &Norms<'_>,
    cache: &mut LayerCache,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    (off, len, start): (usize, usize, usize),
) -> Result<Tensor> {
    let (nh, nkv, hd) = (cfg.heads, cfg.kv_heads, cfg.head_dim);
    let device = q.device();
    let rows = |t: &Tensor, heads: usize| -> Result<Tensor> {
        t.narrow(0, off, len).and_then(|t| t.reshape((len, heads, hd))).map_err(engine)
    };
    let (mut qs, mut ks, vs) = (rows(q, nh)?, rows(k, nkv)?, rows(v, nkv)?);
    if let Some(w) = norms.q {
        qs = candle_nn::ops::rms_norm(&qs, w, cfg.eps).map_err(engine)?;
    }
    if let Some(w) = norms.k {
        ks = candle_nn::ops::rms_norm(&ks, w, cfg.eps).map_err(engine)?;
    }
    let heads_first = |t: Tensor| t.transpose(0, 1).and_then(|t| t.contiguous()).map_err(engine);
    let (qs, ks) = (heads_first(qs)?, heads_first(ks)?);
    let (cos, sin) = rope.tables(start, len, device)?;
    let rot = |t: &Tensor| -> Result<Tensor> {
        let t = t.unsqueeze(0).map_err(engine)?;
        candle_nn::rotary_emb::rope(&t, &cos, &sin).and_then(|t| t.squeeze(0)).map_err(engine)
    };
    let (qs, ks) = (rot(&qs)?, rot(&ks)?);
    // Into the cache position after position.
    let values = |t: candle_core::Result<Tensor>| {
        t.and_then(|t| t.contiguous())
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(engine)
    };
    cache.k.extend(values(ks.transpose(0, 1))?);
    cache.v.extend(values(Ok(vs))?);
    cache.len += len;
    // Keys this segment can see: a sliding layer's first query looks back `window - 1`.
    let from = window.map_or(0, |w| start.saturating_sub(w.saturating_sub(1)));
    let (kall, vall) = cache.view(from, nkv, hd, device)?;
    let keys = cache.len - from;
    let rep = nh / nkv;
    // Query heads grouped under their key/value head: (kv_heads, rep * len, head_dim).
    let qg = qs.reshape((nkv, rep * len, hd)).map_err(engine)?;
    let scale = 1.0 / (hd as f64).sqrt();
    let scores = (qg.matmul(&kall.t().map_err(engine)?).map_err(engine)? * scale).map_err(engine)?;
    let mut mask = Vec::with_capacity(len * keys);
    for i in 0..len {
        let qp = start + i;
        for j in 0..keys {
            let kp = from + j;
            let seen = kp <= qp && window.is_none_or(|w| qp - kp < w);
            mask.push(if seen { 0f32 } else { f32::NEG_INFINITY });
        }
    }
    let mask = Tensor::from_vec(mask, (len, keys), device).map_err(engine)?;
    let scores = scores
        .reshape((nkv, rep, len, keys))
        .and_then(|s| s.broadcast_add(&mask))
        .and_then(|s| s.reshape((nkv, rep * len, keys)))
        .map_err(engine)?;
    let probs = candle_nn::ops::softmax_last_dim(&scores).map_err(engine)?;
    let out = probs.matmul(&vall).map_err(engine)?;
    out.reshape((nh, len, hd))
        .and_then(|o| o.transpose(0, 1))
        .and_then(|o| o.reshape((len, nh * hd)))
        .map_err(engine)
}

/// One-token steps of several sequences in one layer. Step `i` is row `rows[i]` of `q` (`nh ·
/// hd` values a row), `k` and `v` (`nkv · hd`) at position `pos[i]`; its key and value are
/// appended to `caches[i]`. Returns the outputs, `nh · hd` values per step, in step order.
#[allow(clippy::too_many_arguments)]
pub(super) fn steps(
    cfg: &Config,
    rope: &Rope,
    window: Option<usize>,
    norms: &Norms<'_>,
    caches: &mut [&mut LayerCache],
    (q, k, v): (&[f32], &[f32], &[f32]),
    rows: &[usize],
    pos: &[usize],
) -> Result<Vec<f32>> {
    let (nh, nkv, hd) = (cfg.heads, cfg.kv_heads, cfg.head_dim);
    let (qw, kw) = (nh * hd, nkv * hd);
    let n = rows.len();
    if caches.len() != n
        || pos.len() != n
        || rows.iter().any(|&r| (r + 1) * qw > q.len() || (r + 1) * kw > k.len())
    {
        return Err(RunError::Runtime("attention step rows do not match the batch".into()));
    }
    let eps = cfg.eps;
    // Queries normed and rotated; keys too, then appended with the values.
    let mut queries = vec![0f32; n * qw];
    vectorized(
        #[inline(always)]
        || {
            for (i, (&r, &p)) in rows.iter().zip(pos).enumerate() {
                let qi = &mut queries[i * qw..][..qw];
                qi.copy_from_slice(&q[r * qw..][..qw]);
                for head in qi.chunks_exact_mut(hd) {
                    if let Some(w) = norms.q_values {
                        rms_norm(head, w, eps);
                    }
                    rope.rotate(head, p);
                }
                let cache = &mut *caches[i];
                let at = cache.k.len();
                cache.k.extend_from_slice(&k[r * kw..][..kw]);
                for head in cache.k[at..].chunks_exact_mut(hd) {
                    if let Some(w) = norms.k_values {
                        rms_norm(head, w, eps);
                    }
                    rope.rotate(head, p);
                }
                cache.v.extend_from_slice(&v[r * kw..][..kw]);
                cache.len += 1;
            }
        },
    );
    let mut out = vec![0f32; n * qw];
    let slots: Vec<Mutex<&mut [f32]>> = out.chunks_exact_mut(qw).map(Mutex::new).collect();
    let caches: Vec<&LayerCache> = caches.iter().map(|c| &**c).collect();
    let scale = 1.0 / (hd as f32).sqrt();
    let rep = nh / nkv;
    candle_core::utils::barrier_pool().execute_chunked(n, |range| {
        vectorized(
            #[inline(always)]
            || {
                for i in range {
                    let Ok(mut slot) = slots[i].lock() else { continue };
                    let cache = caches[i];
                    let from = window.map_or(0, |w| pos[i].saturating_sub(w.saturating_sub(1)));
                    let mut scores = vec![0f32; cache.len - from];
                    for h in 0..nh {
                        let g = h / rep;
                        let qh = &queries[i * qw + h * hd..][..hd];
                        let key = |j: usize| &cache.k[(j * nkv + g) * hd..][..hd];
                        let value = |j: usize| &cache.v[(j * nkv + g) * hd..][..hd];
                        for (s, j) in scores.iter_mut().zip(from..cache.len) {
                            *s = dot(qh, key(j)) * scale;
                        }
                        softmax(&mut scores);
                        let oh = &mut slot[h * hd..][..hd];
                        for (&p, j) in scores.iter().zip(from..cache.len) {
                            for (o, &x) in oh.iter_mut().zip(value(j)) {
                                *o += p * x;
                            }
                        }
                    }
                }
            },
        )
    });
    drop(slots);
    Ok(out)
}

/// `x / sqrt(mean(x²) + eps) · w`, in place.
#[inline(always)]
fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    let mut acc = [0f32; LANES];
    let (chunks, tail) = x.as_chunks::<LANES>();
    let tail: f32 = tail.iter().map(|v| v * v).sum();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l] * c[l];
        }
    }
    let rms = ((fold(acc) + tail) / x.len() as f32 + eps).sqrt();
    for (v, w) in x.iter_mut().zip(w) {
        *v = *v / rms * w;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fold_keeps_one_order_and_the_loops_match_plain_sums() {
        let a: Vec<f32> = (0..70).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..70).map(|i| (i as f32 * 0.11).cos()).collect();
        let exact: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
        let got = dot(&a, &b);
        assert!((f64::from(got) - exact).abs() < 1e-5, "{got} vs {exact}");
        // The same bits compiled for the vector extension as for plain x86-64.
        assert_eq!(vectorized(|| dot(&a, &b)).to_bits(), dot(&a, &b).to_bits());
        let mut s = vec![1.0f32, 3.0, -2.0, 3.0];
        softmax(&mut s);
        assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(s[1], s[3]);
        assert!(s[1] > s[0] && s[0] > s[2]);
        let mut x = vec![3.0f32; 32];
        rms_norm(&mut x, &[2.0; 32], 0.0);
        assert!(x.iter().all(|v| (*v - 2.0).abs() < 1e-6));
    }

    /// A small grouped-query layer: 4 query heads over 2 key/value heads of 32.
    fn config(window: Option<usize>) -> Config {
        Config {
            arch: super::super::Arch::Gemma3,
            layers: 1,
            d_model: 128,
            heads: 4,
            kv_heads: 2,
            head_dim: 32,
            eps: 1e-6,
            rope_base: 10_000.0,
            rope_local_base: 10_000.0,
            window,
            pattern: 1,
            context: 64,
            vocab: 8,
        }
    }

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + seed) * 0.731).sin()).collect()
    }

    #[test]
    fn a_step_attends_like_the_prompt_path_and_keeps_its_bits_batched() {
        let dev = Device::Cpu;
        let norm = Tensor::from_vec(values(32, 5.0), 32, &dev).unwrap();
        let norm_values = norm.to_vec1::<f32>().unwrap();
        for window in [None, Some(7)] {
            let cfg = config(window);
            let rope = Rope::new(cfg.rope_base, cfg.head_dim, cfg.context, &dev).unwrap();
            let norms = Norms {
                q: Some(&norm),
                k: Some(&norm),
                q_values: Some(&norm_values),
                k_values: Some(&norm_values),
            };
            let n = 12;
            let t = |w: usize, seed: f32| Tensor::from_vec(values(n * w, seed), (n, w), &dev).unwrap();
            let (q, k, v) = (t(128, 1.0), t(64, 2.0), t(64, 3.0));
            // The prompt path over all 12 positions: its last row is the reference.
            let mut whole = LayerCache::default();
            let want = prompt(&cfg, &rope, window, &norms, &mut whole, (&q, &k, &v), (0, n, 0)).unwrap();
            let want = want.narrow(0, n - 1, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            // 11 positions as a prompt, then the 12th as a step, alone and beside another sequence.
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let (qv, kv, vv) = (flat(&q), flat(&k), flat(&v));
            let mut outs = Vec::new();
            for batched in [false, true] {
                let mut a = LayerCache::default();
                prompt(&cfg, &rope, window, &norms, &mut a, (&q, &k, &v), (0, n - 1, 0)).unwrap();
                let mut other = LayerCache::default();
                prompt(&cfg, &rope, window, &norms, &mut other, (&q, &k, &v), (0, 3, 0)).unwrap();
                let out = if batched {
                    let mut caches = [&mut other, &mut a];
                    let out = steps(
                        &cfg,
                        &rope,
                        window,
                        &norms,
                        &mut caches,
                        (&qv, &kv, &vv),
                        &[5, n - 1],
                        &[3, n - 1],
                    );
                    out.unwrap()[128..].to_vec()
                } else {
                    steps(&cfg, &rope, window, &norms, &mut [&mut a], (&qv, &kv, &vv), &[n - 1], &[n - 1])
                        .unwrap()
                };
                assert_eq!(a.len, n);
                // The step's normed, rotated key lands where the prompt path puts it.
                let width = (n - 1) * 64;
                assert_eq!(a.k[..width], whole.k[..width]);
                for (got, want) in a.k[width..].iter().zip(&whole.k[width..]) {
                    assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "key {got} vs {want}");
                }
                assert_eq!(a.v, whole.v);
                for (got, want) in out.iter().zip(&want) {
                    assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "{window:?}: {got} vs {want}");
                }
                outs.push(out.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
            }
            assert_eq!(outs[0], outs[1], "{window:?}: a step's bits alone and batched");
        }
        // Rows that are not in the batch are refused, not read out of bounds.
        let cfg = config(None);
        let rope = Rope::new(cfg.rope_base, cfg.head_dim, cfg.context, &dev).unwrap();
        let norms = Norms { q: None, k: None, q_values: None, k_values: None };
        let mut c = LayerCache::default();
        let err = steps(
            &cfg,
            &rope,
            None,
            &norms,
            &mut [&mut c],
            (&[0.0; 128], &[0.0; 64], &[0.0; 64]),
            &[1],
            &[0],
        );
        assert!(err.is_err());
    }
}
