//! Cairn's own BERT encoder for sentence embeddings on the CPU.
//!
//! Every input runs unpadded: the tokens of all the inputs of a pass are rows of one matrix, the
//! matrix products go through Cairn's quantized kernel ([`super::quant`], weights quantized to
//! `Q8_0` at load), and attention, the norms and the GELU are Cairn's own loops, each row or
//! each (input, head) a unit of work on candle's worker pool. The kernel gives each row the same
//! bits however many rows share the product, and every other step works within one row or one
//! input, so an input's embedding has the same bits alone or in a batch of any make-up: batching
//! is free for audits.
//!
//! What it computes is BERT as `transformers` defines it (absolute positions, post-norm layers,
//! erf GELU), then the sentence-transformers pooling: the mean over the input's tokens, scaled to
//! unit length. Models outside that (another activation, relative positions) stay on candle's
//! BERT.

use std::sync::Mutex;

use candle_nn::VarBuilder;
use serde::Deserialize;

use super::numeric::{LANES, dot, exp, fold, for_rows, softmax, vectorized};
use super::quant::QMatrix;

/// Rows per unit of work in the row-wise passes.
const ROWS_PER_UNIT: usize = 8;
/// Tokens run through the layers together (bounds a pass's memory; the bits do not depend on it).
pub(crate) const PASS_TOKENS: usize = 2048;

/// The parts of a BERT `config.json` the encoder reads.
#[derive(Deserialize)]
struct BertShape {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    #[serde(default = "default_types")]
    type_vocab_size: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default = "default_positions")]
    position_embedding_type: String,
}

fn default_types() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_positions() -> String {
    "absolute".into()
}

/// A layer norm's scale and shift.
struct Norm {
    w: Vec<f32>,
    b: Vec<f32>,
}

/// A dense layer: quantized weights and an f32 bias.
struct Dense {
    m: QMatrix,
    bias: Vec<f32>,
}

struct Layer {
    /// Query, key and value stacked: `3h` outputs.
    qkv: Dense,
    out: Dense,
    norm1: Norm,
    up: Dense,
    down: Dense,
    norm2: Norm,
}

/// A loaded encoder.
pub(crate) struct Encoder {
    hidden: usize,
    heads: usize,
    inter: usize,
    eps: f32,
    vocab: usize,
    positions: usize,
    word: Vec<f32>,
    position: Vec<f32>,
    /// Token type 0's row (every input is one segment).
    token_type: Vec<f32>,
    norm: Norm,
    layers: Vec<Layer>,
}

/// Why a model cannot run on the encoder.
pub(crate) enum Unsupported {
    /// A shape or activation it does not compute: candle's BERT runs it instead.
    Shape(String),
    /// The weights are unusable.
    Invalid(String),
}

impl Encoder {
    /// From the package's `config.json` and its weights.
    pub(crate) fn load(config: &[u8], vb: &VarBuilder) -> Result<Self, Unsupported> {
        let c: BertShape =
            serde_json::from_slice(config).map_err(|e| Unsupported::Invalid(format!("config.json: {e}")))?;
        if c.hidden_act != "gelu" || c.position_embedding_type != "absolute" {
            return Err(Unsupported::Shape(format!(
                "activation {:?}, positions {:?}",
                c.hidden_act, c.position_embedding_type
            )));
        }
        let (h, n) = (c.hidden_size, c.intermediate_size);
        if c.num_attention_heads == 0
            || !h.is_multiple_of(c.num_attention_heads)
            || !QMatrix::fits(h, h)
            || !QMatrix::fits(n, h)
            || !QMatrix::fits(h, n)
            || c.type_vocab_size == 0
            || c.max_position_embeddings == 0
        {
            return Err(Unsupported::Shape(format!(
                "hidden {h}, intermediate {n}, {} heads",
                c.num_attention_heads
            )));
        }
        let vb =
            if vb.contains_tensor("embeddings.word_embeddings.weight") { vb.clone() } else { vb.pp("bert") };
        let bad = |e: String| Unsupported::Invalid(e);
        let get = |shape: &[usize], name: &str| -> Result<Vec<f32>, Unsupported> {
            let t =
                vb.get(shape, name).map_err(|e| bad(format!("{name}: {}", super::models::one_line(e))))?;
            let v = t
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| bad(format!("{name}: {}", super::models::one_line(e))))?;
            if v.iter().any(|x| !x.is_finite()) {
                return Err(bad(format!("{name}: a weight is not a finite number")));
            }
            Ok(v)
        };
        let norm = |prefix: &str| -> Result<Norm, Unsupported> {
            Ok(Norm { w: get(&[h], &format!("{prefix}.weight"))?, b: get(&[h], &format!("{prefix}.bias"))? })
        };
        let dense = |names: &[String], rows: usize, k: usize| -> Result<Dense, Unsupported> {
            let (mut w, mut bias) = (Vec::new(), Vec::new());
            for name in names {
                w.extend(get(&[rows, k], &format!("{name}.weight"))?);
                bias.extend(get(&[rows], &format!("{name}.bias"))?);
            }
            let m = QMatrix::quantize(&w, rows * names.len(), k).map_err(bad)?;
            Ok(Dense { m, bias })
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let qkv: Vec<String> =
                ["query", "key", "value"].iter().map(|s| format!("{p}.attention.self.{s}")).collect();
            layers.push(Layer {
                qkv: dense(&qkv, h, h)?,
                out: dense(&[format!("{p}.attention.output.dense")], h, h)?,
                norm1: norm(&format!("{p}.attention.output.LayerNorm"))?,
                up: dense(&[format!("{p}.intermediate.dense")], n, h)?,
                down: dense(&[format!("{p}.output.dense")], h, n)?,
                norm2: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        let types = get(&[c.type_vocab_size, h], "embeddings.token_type_embeddings.weight")?;
        Ok(Encoder {
            hidden: h,
            heads: c.num_attention_heads,
            inter: n,
            eps: c.layer_norm_eps as f32,
            vocab: c.vocab_size,
            positions: c.max_position_embeddings,
            word: get(&[c.vocab_size, h], "embeddings.word_embeddings.weight")?,
            position: get(&[c.max_position_embeddings, h], "embeddings.position_embeddings.weight")?,
            token_type: types[..h].to_vec(),
            norm: norm("embeddings.LayerNorm")?,
            layers,
        })
    }

    /// Positions the model has.
    pub(crate) fn context(&self) -> usize {
        self.positions
    }

    /// Each input's embedding (mean over its tokens, unit length), in input order. Inputs must be
    /// non-empty token ids below the vocabulary size and no longer than [`context`](Self::context).
    pub(crate) fn embed(&self, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, String> {
        for ids in inputs {
            if ids.is_empty() || ids.len() > self.positions {
                return Err(format!("an input of {} tokens (1 to {} fit)", ids.len(), self.positions));
            }
            if let Some(id) = ids.iter().find(|&&id| id as usize >= self.vocab) {
                return Err(format!("token {id} is past the vocabulary of {}", self.vocab));
            }
        }
        let mut out = Vec::with_capacity(inputs.len());
        let mut at = 0;
        while at < inputs.len() {
            let mut tokens = 0;
            let mut end = at;
            while end < inputs.len() && (end == at || tokens + inputs[end].len() <= PASS_TOKENS) {
                tokens += inputs[end].len();
                end += 1;
            }
            out.extend(self.pass(&inputs[at..end]));
            at = end;
        }
        Ok(out)
    }

    /// One pass of every layer over `inputs`' tokens (checked by the caller).
    fn pass(&self, inputs: &[Vec<u32>]) -> Vec<Vec<f32>> {
        let h = self.hidden;
        let starts: Vec<usize> = inputs
            .iter()
            .scan(0, |at, ids| {
                let s = *at;
                *at += ids.len();
                Some(s)
            })
            .collect();
        let place: Vec<(usize, usize)> =
            inputs.iter().enumerate().flat_map(|(s, ids)| (0..ids.len()).map(move |p| (s, p))).collect();
        let t = place.len();
        let eps = self.eps;
        let mut x = vec![0f32; t * h];
        for_rows(ROWS_PER_UNIT, &mut x, h, |r, row| {
            let (s, p) = place[r];
            let id = inputs[s][p] as usize;
            let (w, pos) = (&self.word[id * h..][..h], &self.position[p * h..][..h]);
            for (j, v) in row.iter_mut().enumerate() {
                *v = (w[j] + self.token_type[j]) + pos[j];
            }
            layer_norm(row, &self.norm, eps);
        });
        for layer in &self.layers {
            let mut qkv = layer.qkv.m.product(&x);
            for_rows(ROWS_PER_UNIT, &mut qkv, 3 * h, |_, row| add(row, &layer.qkv.bias));
            let ctx = self.attention(&qkv, inputs, &starts);
            let mut a = layer.out.m.product(&ctx);
            for_rows(ROWS_PER_UNIT, &mut a, h, |r, row| {
                add(row, &layer.out.bias);
                add(row, &x[r * h..][..h]);
                layer_norm(row, &layer.norm1, eps);
            });
            let mut u = layer.up.m.product(&a);
            for_rows(ROWS_PER_UNIT, &mut u, self.inter, |_, row| {
                for (v, b) in row.iter_mut().zip(&layer.up.bias) {
                    *v = gelu(*v + b);
                }
            });
            let mut d = layer.down.m.product(&u);
            for_rows(ROWS_PER_UNIT, &mut d, h, |r, row| {
                add(row, &layer.down.bias);
                add(row, &a[r * h..][..h]);
                layer_norm(row, &layer.norm2, eps);
            });
            x = d;
        }
        inputs
            .iter()
            .zip(&starts)
            .map(|(ids, &s)| {
                let mut v = vec![0f32; h];
                for row in x[s * h..(s + ids.len()) * h].chunks_exact(h) {
                    add(&mut v, row);
                }
                let n = ids.len() as f32;
                v.iter_mut().for_each(|e| *e /= n);
                let norm = dot(&v, &v).sqrt();
                if norm > 0.0 {
                    v.iter_mut().for_each(|e| *e /= norm);
                }
                v
            })
            .collect()
    }

    /// Self-attention of every input over its own tokens: `(tokens, h)` from the stacked
    /// `(tokens, 3h)` projections; one (input, head) per unit of work.
    fn attention(&self, qkv: &[f32], inputs: &[Vec<u32>], starts: &[usize]) -> Vec<f32> {
        let (h, heads) = (self.hidden, self.heads);
        let d = h / heads;
        let scale = 1.0 / (d as f32).sqrt();
        let units: Vec<Mutex<Vec<f32>>> = (0..inputs.len() * heads).map(|_| Mutex::new(Vec::new())).collect();
        candle_core::utils::barrier_pool().execute_chunked(units.len(), |range| {
            vectorized(
                #[inline(always)]
                || {
                    for u in range.clone() {
                        let (s, head) = (u / heads, u % heads);
                        let (start, len) = (starts[s], inputs[s].len());
                        let part =
                            |i: usize, which: usize| &qkv[(start + i) * 3 * h + which * h + head * d..][..d];
                        // Keys transposed (`d × len`): a query's scores are then sums over the
                        // head's dimensions in order, each across all keys at once.
                        let mut kt = vec![0f32; d * len];
                        for j in 0..len {
                            for (e, k) in part(j, 1).iter().enumerate() {
                                kt[e * len + j] = *k;
                            }
                        }
                        let mut out = vec![0f32; len * d];
                        let mut scores = vec![0f32; len];
                        for (i, o) in out.chunks_exact_mut(d).enumerate() {
                            scores.iter_mut().for_each(|s| *s = 0.0);
                            for (qe, ks) in part(i, 0).iter().zip(kt.chunks_exact(len)) {
                                for (s, k) in scores.iter_mut().zip(ks) {
                                    *s += qe * k;
                                }
                            }
                            scores.iter_mut().for_each(|s| *s *= scale);
                            softmax(&mut scores);
                            for (j, p) in scores.iter().enumerate() {
                                for (o, v) in o.iter_mut().zip(part(j, 2)) {
                                    *o += p * v;
                                }
                            }
                        }
                        if let Ok(mut slot) = units[u].lock() {
                            *slot = out;
                        }
                    }
                },
            )
        });
        let mut ctx = vec![0f32; starts.last().map_or(0, |s| s + inputs[inputs.len() - 1].len()) * h];
        for (u, unit) in units.into_iter().enumerate() {
            let (s, head) = (u / heads, u % heads);
            let unit = unit.into_inner().unwrap_or_default();
            for (i, o) in unit.chunks_exact(d).enumerate() {
                ctx[(starts[s] + i) * h + head * d..][..d].copy_from_slice(o);
            }
        }
        ctx
    }
}

#[inline(always)]
fn add(row: &mut [f32], b: &[f32]) {
    for (v, b) in row.iter_mut().zip(b) {
        *v += b;
    }
}

/// `(x − mean) / sqrt(var + eps) · w + b`, in place; sums in [`LANES`] fixed-order lanes.
#[inline(always)]
fn layer_norm(x: &mut [f32], n: &Norm, eps: f32) {
    let len = x.len() as f32;
    let sum = |x: &[f32], f: &dyn Fn(f32) -> f32| {
        let mut acc = [0f32; LANES];
        let (chunks, tail) = x.as_chunks::<LANES>();
        for c in chunks {
            for l in 0..LANES {
                acc[l] += f(c[l]);
            }
        }
        fold(acc) + tail.iter().map(|v| f(*v)).sum::<f32>()
    };
    let mean = sum(x, &|v| v) / len;
    let var = sum(x, &|v| (v - mean) * (v - mean)) / len;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, w), b) in x.iter_mut().zip(&n.w).zip(&n.b) {
        *v = (*v - mean) * inv * w + b;
    }
}

/// `erf(x)` to within 6·10⁻⁷ (Abramowitz and Stegun 7.1.26, 1.5·10⁻⁷, in f32 arithmetic and
/// through Cairn's exponential).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let p = 1.061_405_4f32;
    let p = p * t - 1.453_152_1;
    let p = p * t + 1.421_413_8;
    let p = p * t - 0.284_496_74;
    let p = p * t + 0.254_829_6;
    (1.0 - p * t * exp(-a * a)).copysign(x)
}

/// BERT's GELU, `x/2 · (1 + erf(x/√2))`.
#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_and_gelu_are_close_to_the_exact_values_and_keep_their_bits_vectorised() {
        let mut worst = 0f64;
        for i in -6000..6000 {
            let x = i as f32 / 1000.0;
            let exact = libm_erf(f64::from(x));
            worst = worst.max((f64::from(erf(x)) - exact).abs());
            assert_eq!(vectorized(|| gelu(x)).to_bits(), gelu(x).to_bits());
        }
        assert!(worst < 6e-7, "erf off by {worst}");
        assert_eq!(erf(50.0), 1.0);
        assert_eq!(erf(-50.0), -1.0);
        assert!((gelu(1.0) - 0.841_344_7).abs() < 1e-6);
        let mut x: Vec<f32> = (0..40).map(|i| i as f32).collect();
        layer_norm(&mut x, &Norm { w: vec![1.0; 40], b: vec![0.5; 40] }, 0.0);
        let mean: f32 = x.iter().sum::<f32>() / 40.0;
        let var: f32 = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 40.0;
        assert!((mean - 0.5).abs() < 1e-5 && (var - 1.0).abs() < 1e-4, "{mean} {var}");
    }

    /// A one-layer BERT of width 32 with seeded weights; `tweak` edits the config.
    fn tiny(tweak: impl FnOnce(&mut serde_json::Value), nan: bool) -> Result<Encoder, Unsupported> {
        use candle_core::{Device, Tensor};
        let (h, n, vocab, positions) = (32usize, 64usize, 10usize, 8usize);
        let mut seed = 7u64;
        let mut values = |len: usize| -> Vec<f32> {
            (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.4
                })
                .collect()
        };
        let mut ts = std::collections::HashMap::new();
        let mut put = |name: &str, shape: &[usize]| {
            let v = values(shape.iter().product());
            ts.insert(name.to_string(), Tensor::from_vec(v, shape, &Device::Cpu).unwrap());
        };
        put("embeddings.word_embeddings.weight", &[vocab, h]);
        put("embeddings.position_embeddings.weight", &[positions, h]);
        put("embeddings.token_type_embeddings.weight", &[2, h]);
        for part in [
            "embeddings.LayerNorm",
            "encoder.layer.0.attention.output.LayerNorm",
            "encoder.layer.0.output.LayerNorm",
        ] {
            put(&format!("{part}.weight"), &[h]);
            put(&format!("{part}.bias"), &[h]);
        }
        for (name, rows, k) in [
            ("encoder.layer.0.attention.self.query", h, h),
            ("encoder.layer.0.attention.self.key", h, h),
            ("encoder.layer.0.attention.self.value", h, h),
            ("encoder.layer.0.attention.output.dense", h, h),
            ("encoder.layer.0.intermediate.dense", n, h),
            ("encoder.layer.0.output.dense", h, n),
        ] {
            put(&format!("{name}.weight"), &[rows, k]);
            put(&format!("{name}.bias"), &[rows]);
        }
        if nan {
            ts.insert(
                "encoder.layer.0.output.dense.bias".into(),
                Tensor::new(&[f32::NAN; 32], &Device::Cpu).unwrap(),
            );
        }
        let mut config = serde_json::json!({
            "vocab_size": vocab, "hidden_size": h, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": n, "max_position_embeddings": positions,
        });
        tweak(&mut config);
        let vb = VarBuilder::from_tensors(ts, candle_core::DType::F32, &Device::Cpu);
        Encoder::load(config.to_string().as_bytes(), &vb)
    }

    #[test]
    fn inputs_get_their_own_bits_in_any_batch_and_bad_inputs_are_refused() {
        let Ok(enc) = tiny(|_| {}, false) else { panic!("the tiny encoder loads") };
        let inputs: Vec<Vec<u32>> = vec![vec![1, 2, 3], vec![4], vec![5, 6, 7, 8, 9, 1, 2, 3], vec![0, 9]];
        let together = enc.embed(&inputs).unwrap();
        for (ids, v) in inputs.iter().zip(&together) {
            let alone = enc.embed(std::slice::from_ref(ids)).unwrap().remove(0);
            assert_eq!(
                alone.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
            assert!((dot(v, v) - 1.0).abs() < 1e-5);
        }
        // Different inputs, different vectors; reversed order, the same vectors reversed.
        assert!(dot(&together[0], &together[1]) < 0.999);
        let mut reversed = inputs.clone();
        reversed.reverse();
        let mut back = enc.embed(&reversed).unwrap();
        back.reverse();
        assert_eq!(back, together);
        assert!(enc.embed(&[vec![10]]).unwrap_err().contains("vocabulary"));
        assert!(enc.embed(&[vec![1; 9]]).unwrap_err().contains("tokens"));
        assert!(enc.embed(&[vec![]]).is_err());
        assert!(matches!(tiny(|_| {}, true), Err(Unsupported::Invalid(e)) if e.contains("finite")));
        assert!(matches!(tiny(|c| c["hidden_act"] = "relu".into(), false), Err(Unsupported::Shape(_))));
        assert!(matches!(tiny(|c| c["num_attention_heads"] = 3.into(), false), Err(Unsupported::Shape(_))));
        assert!(matches!(tiny(|c| c["hidden_size"] = 48.into(), false), Err(Unsupported::Shape(_))));
        assert!(matches!(tiny(|c| c["hidden_size"] = "wide".into(), false), Err(Unsupported::Invalid(_))));
    }

    /// erf in f64 by its series (converges fast on |x| ≤ 6 in f64 with enough terms).
    fn libm_erf(x: f64) -> f64 {
        if x.abs() > 4.0 {
            return x.signum() * (1.0 - (-x * x).exp() / (x.abs() * std::f64::consts::PI.sqrt()));
        }
        let mut sum = 0f64;
        let mut term = x;
        let mut n = 0f64;
        while term.abs() > 1e-17 || n < 3.0 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }
}
