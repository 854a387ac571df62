//! Cairn's decoder-only language-model engine on candle: Gemma 3 and Qwen 2 GGUF models, weights kept quantized, prompts processed in one pass, and several sequences decoded
//! together in one step.
//!
//! Batching never changes a sequence's numbers. Each row of a quantized matrix product is
//! computed from that row alone (its activations are quantized per row and dotted with the
//! weights; no sum runs across rows), attention runs per sequence over its own cache, and norms
//! are per row. So a request's tokens are the same bits whether it ran alone or beside fifteen
//! others — which is what lets an auditor re-run it alone and compare bit for bit.
//! `tests/it/llm.rs` checks this on the real models.

mod linear;
pub mod load;
mod quant;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

use linear::{Linear, Proj, Rows};
pub use load::{Arch, Config, MAX_SERVED_CONTEXT};

use crate::{Result, RunError};

fn engine(e: impl std::fmt::Display) -> RunError {
    RunError::Runtime(super::models::one_line(e))
}

struct Layer {
    attn_norm: Tensor,
    /// Query, key and value.
    qkv: Proj,
    bq: Option<Tensor>,
    bk: Option<Tensor>,
    bv: Option<Tensor>,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    wo: Linear,
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    /// Gate and up.
    gate_up: Proj,
    down: Linear,
    post_ffn_norm: Option<Tensor>,
    sliding: bool,
}

/// The token table: candle's (rows maybe padded past the model width), or Cairn's, shared
/// with the output product when the model ties them.
enum Embed {
    Candle(Arc<QTensor>, usize),
    Own(Arc<quant::QMatrix>),
}

/// Rotary tables for one base: `(positions, head_dim / 2)`.
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    fn new(base: f32, head_dim: usize, positions: usize, device: &Device) -> Result<Self> {
        let half = head_dim / 2;
        let inv: Vec<f32> = (0..half).map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32)).collect();
        let mut angles = Vec::with_capacity(positions * half);
        for p in 0..positions {
            angles.extend(inv.iter().map(|f| p as f32 * f));
        }
        let t = Tensor::from_vec(angles, (positions, half), device).map_err(engine)?;
        Ok(Rope { cos: t.cos().map_err(engine)?, sin: t.sin().map_err(engine)? })
    }
}

/// A loaded language model. Shared read-only between sequences (and threads).
pub struct Llm {
    /// Its shape.
    pub cfg: Config,
    embed: Embed,
    layers: Vec<Layer>,
    norm: Tensor,
    output: Linear,
    rope_global: Rope,
    rope_local: Option<Rope>,
    device: Device,
}

impl std::fmt::Debug for Llm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llm").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

/// One layer's keys and values for one sequence: `(kv_heads, capacity, head_dim)` buffers of
/// which the first `len` positions are filled; capacity doubles as the sequence grows.
#[derive(Default)]
struct LayerCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
}

impl LayerCache {
    fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<()> {
        let (kvh, add, hd) = k.dims3().map_err(engine)?;
        let cap = self.k.as_ref().map_or(0, |t| t.dims()[1]);
        if self.len + add > cap {
            let new_cap = (self.len + add).max(cap * 2).max(64);
            let grow = |old: &Option<Tensor>| -> Result<Tensor> {
                let t = Tensor::zeros((kvh, new_cap, hd), DType::F32, k.device()).map_err(engine)?;
                if let Some(old) = old
                    && self.len > 0
                {
                    t.slice_set(&old.narrow(1, 0, self.len).map_err(engine)?, 1, 0).map_err(engine)?;
                }
                Ok(t)
            };
            self.k = Some(grow(&self.k)?);
            self.v = Some(grow(&self.v)?);
        }
        if let (Some(kb), Some(vb)) = (&self.k, &self.v) {
            kb.slice_set(k, 1, self.len).map_err(engine)?;
            vb.slice_set(v, 1, self.len).map_err(engine)?;
        }
        self.len += add;
        Ok(())
    }

    /// Positions `from..len` of the keys and values.
    fn view(&self, from: usize) -> Result<(Tensor, Tensor)> {
        match (&self.k, &self.v) {
            (Some(k), Some(v)) => Ok((
                k.narrow(1, from, self.len - from).map_err(engine)?,
                v.narrow(1, from, self.len - from).map_err(engine)?,
            )),
            _ => Err(RunError::Runtime("empty key/value cache".into())),
        }
    }
}

/// One sequence being generated: its caches and how many tokens it has seen.
pub struct Sequence {
    caches: Vec<LayerCache>,
    pos: usize,
}

impl std::fmt::Debug for Sequence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sequence").field("pos", &self.pos).finish_non_exhaustive()
    }
}

impl Sequence {
    /// Tokens seen so far.
    pub fn len(&self) -> usize {
        self.pos
    }

    /// Nothing seen yet.
    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }
}

impl Llm {
    /// Load from a GGUF file's parsed header and its reader.
    ///
    /// # Errors
    /// [`RunError::InvalidWorkload`] for an unsupported or inconsistent file.
    pub fn from_gguf<R: std::io::Read + std::io::Seek>(
        ct: &candle_core::quantized::gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Self> {
        let cfg = Config::from_gguf(ct)?;
        let mut t = load::Tensors { ct, reader, device };
        let embed = match t.own("token_embd.weight")? {
            Some(m) => Embed::Own(Arc::new(m)),
            None => {
                let (q, width) = t.quantized("token_embd.weight")?;
                Embed::Candle(q, width)
            }
        };
        let output = if t.has("output.weight") {
            t.linear("output.weight")?
        } else {
            match &embed {
                Embed::Own(m) => Linear::Own(m.clone()),
                Embed::Candle(q, width) => Linear::new(q.clone(), cfg.d_model, *width)?,
            }
        };
        let gemma = cfg.arch == Arch::Gemma3;
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let n = |s: &str| format!("blk.{i}.{s}");
            let opt = |t: &mut load::Tensors<'_, R>, s: &str| -> Result<Option<Tensor>> {
                if t.has(&n(s)) { t.dense(&n(s)).map(Some) } else { Ok(None) }
            };
            layers.push(Layer {
                attn_norm: t.dense(&n("attn_norm.weight"))?,
                qkv: t.projections(&[&n("attn_q.weight"), &n("attn_k.weight"), &n("attn_v.weight")])?,
                bq: opt(&mut t, "attn_q.bias")?,
                bk: opt(&mut t, "attn_k.bias")?,
                bv: opt(&mut t, "attn_v.bias")?,
                q_norm: opt(&mut t, "attn_q_norm.weight")?,
                k_norm: opt(&mut t, "attn_k_norm.weight")?,
                wo: t.linear(&n("attn_output.weight"))?,
                post_attn_norm: if gemma { Some(t.dense(&n("post_attention_norm.weight"))?) } else { None },
                ffn_norm: t.dense(&n("ffn_norm.weight"))?,
                gate_up: t.projections(&[&n("ffn_gate.weight"), &n("ffn_up.weight")])?,
                down: t.linear(&n("ffn_down.weight"))?,
                post_ffn_norm: if gemma { Some(t.dense(&n("post_ffw_norm.weight"))?) } else { None },
                sliding: cfg.sliding(i),
            });
        }
        let norm = t.dense("output_norm.weight")?;
        let rope_global = Rope::new(cfg.rope_base, cfg.head_dim, cfg.context, device)?;
        let rope_local = match cfg.window {
            Some(_) => Some(Rope::new(cfg.rope_local_base, cfg.head_dim, cfg.context, device)?),
            None => None,
        };
        Ok(Llm { cfg, embed, layers, norm, output, rope_global, rope_local, device: device.clone() })
    }

    /// A new, empty sequence.
    pub fn sequence(&self) -> Sequence {
        Sequence { caches: (0..self.cfg.layers).map(|_| LayerCache::default()).collect(), pos: 0 }
    }

    /// Feed each sequence its next tokens (a whole prompt, or one token while decoding) in one
    /// pass, and return the logits after each sequence's last token, one `f32` row per sequence.
    ///
    /// # Errors
    /// [`RunError::Runtime`] when a sequence would pass the context or the engine fails.
    pub fn forward(&self, batch: &mut [(&mut Sequence, &[u32])]) -> Result<Vec<Vec<f32>>> {
        let cfg = &self.cfg;
        let mut ids = Vec::new();
        let mut segs = Vec::with_capacity(batch.len());
        for (seq, toks) in batch.iter() {
            if toks.is_empty() {
                return Err(RunError::Runtime("no tokens to feed".into()));
            }
            if seq.pos + toks.len() > cfg.context {
                return Err(RunError::Runtime(format!(
                    "the sequence would hold {} tokens; the context is {}",
                    seq.pos + toks.len(),
                    cfg.context
                )));
            }
            if let Some(bad) = toks.iter().find(|t| **t as usize >= cfg.vocab) {
                return Err(RunError::Runtime(format!("token {bad} is outside the vocabulary")));
            }
            segs.push((ids.len(), toks.len(), seq.pos));
            ids.extend_from_slice(toks);
        }
        let total = ids.len();
        let lengths: Vec<usize> = segs.iter().map(|s| s.1).collect();
        let rows = Rows::new(&lengths, &self.device).map_err(engine)?;
        let mut x = match &self.embed {
            Embed::Own(m) => m.rows_f32(&ids, &self.device).map_err(engine)?,
            Embed::Candle(q, _) => {
                let ids = Tensor::from_vec(ids, total, &self.device).map_err(engine)?;
                q.embedding(&ids).map_err(engine)?
            }
        };
        if x.dim(1).map_err(engine)? != cfg.d_model {
            x = x.narrow(1, 0, cfg.d_model).and_then(|x| x.contiguous()).map_err(engine)?;
        }
        if cfg.arch == Arch::Gemma3 {
            x = (x * (cfg.d_model as f64).sqrt()).map_err(engine)?;
        }
        for (li, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, cfg.eps).map_err(engine)?;
            let mut qkv = layer.qkv.forward(&h, &rows).map_err(engine)?.into_iter();
            let mut next = |b: &Option<Tensor>| -> Result<Tensor> {
                let y = qkv.next().ok_or_else(|| RunError::Runtime("missing projection".into()))?;
                match b {
                    Some(b) => y.broadcast_add(b).map_err(engine),
                    None => Ok(y),
                }
            };
            let q = next(&layer.bq)?;
            let k = next(&layer.bk)?;
            let v = next(&layer.bv)?;
            let mut outs = Vec::with_capacity(segs.len());
            for (si, &(off, len, start)) in segs.iter().enumerate() {
                let cache = &mut batch[si].0.caches[li];
                outs.push(self.attend(layer, cache, &q, &k, &v, off, len, start)?);
            }
            let attn =
                if outs.len() == 1 { outs.remove(0) } else { Tensor::cat(&outs, 0).map_err(engine)? };
            let mut o = layer.wo.forward(&attn, &rows).map_err(engine)?;
            if let Some(w) = &layer.post_attn_norm {
                o = candle_nn::ops::rms_norm(&o, w, cfg.eps).map_err(engine)?;
            }
            x = (x + o).map_err(engine)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, cfg.eps).map_err(engine)?;
            let mut gu = layer.gate_up.forward(&h, &rows).map_err(engine)?.into_iter();
            let (Some(g), Some(u)) = (gu.next(), gu.next()) else {
                return Err(RunError::Runtime("missing projection".into()));
            };
            let g = match cfg.arch {
                Arch::Gemma3 => g.gelu(),
                Arch::Qwen2 => g.silu(),
            }
            .map_err(engine)?;
            let mut f = layer.down.forward(&(g * u).map_err(engine)?, &rows).map_err(engine)?;
            if let Some(w) = &layer.post_ffn_norm {
                f = candle_nn::ops::rms_norm(&f, w, cfg.eps).map_err(engine)?;
            }
            x = (x + f).map_err(engine)?;
        }
        let last: Vec<u32> = segs.iter().map(|&(off, len, _)| (off + len - 1) as u32).collect();
        let last = Tensor::from_vec(last, segs.len(), &self.device).map_err(engine)?;
        let x = x.index_select(&last, 0).map_err(engine)?;
        let x = candle_nn::ops::rms_norm(&x, &self.norm, cfg.eps).map_err(engine)?;
        let logits = self.output.forward(&x, &Rows::steps()).map_err(engine)?;
        for (seq, toks) in batch.iter_mut() {
            seq.pos += toks.len();
        }
        logits.to_dtype(DType::F32).and_then(|l| l.to_vec2::<f32>()).map_err(engine)
    }

    /// Attention of one sequence's rows `off..off+len` (its positions `start..start+len`).
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        layer: &Layer,
        cache: &mut LayerCache,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        off: usize,
        len: usize,
        start: usize,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (nh, nkv, hd) = (cfg.heads, cfg.kv_heads, cfg.head_dim);
        let rows = |t: &Tensor, heads: usize| -> Result<Tensor> {
            t.narrow(0, off, len).and_then(|t| t.reshape((len, heads, hd))).map_err(engine)
        };
        let (mut qs, mut ks, vs) = (rows(q, nh)?, rows(k, nkv)?, rows(v, nkv)?);
        if let Some(w) = &layer.q_norm {
            qs = candle_nn::ops::rms_norm(&qs, w, cfg.eps).map_err(engine)?;
        }
        if let Some(w) = &layer.k_norm {
            ks = candle_nn::ops::rms_norm(&ks, w, cfg.eps).map_err(engine)?;
        }
        let heads_first = |t: Tensor| t.transpose(0, 1).and_then(|t| t.contiguous()).map_err(engine);
        let (qs, ks, vs) = (heads_first(qs)?, heads_first(ks)?, heads_first(vs)?);
        let rope = if layer.sliding {
            self.rope_local.as_ref().unwrap_or(&self.rope_global)
        } else {
            &self.rope_global
        };
        let cos = rope.cos.narrow(0, start, len).map_err(engine)?;
        let sin = rope.sin.narrow(0, start, len).map_err(engine)?;
        let rot = |t: &Tensor| -> Result<Tensor> {
            let t = t.unsqueeze(0).map_err(engine)?;
            candle_nn::rotary_emb::rope(&t, &cos, &sin).and_then(|t| t.squeeze(0)).map_err(engine)
        };
        let (qs, ks) = (rot(&qs)?, rot(&ks)?);
        cache.append(&ks, &vs)?;
        // Keys this step can see: a sliding layer's first query looks back `window - 1`.
        let window = if layer.sliding { cfg.window } else { None };
        let from = window.map_or(0, |w| start.saturating_sub(w.saturating_sub(1)));
        let (kall, vall) = cache.view(from)?;
        let keys = cache.len - from;
        let rep = nh / nkv;
        // Query heads grouped under their key/value head: (kv_heads, rep * len, head_dim).
        let qg = qs.reshape((nkv, rep * len, hd)).map_err(engine)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = (qg.matmul(&kall.t().map_err(engine)?).map_err(engine)? * scale).map_err(engine)?;
        let scores = if len > 1 || window.is_some_and(|w| keys > w) {
            let mut mask = Vec::with_capacity(len * keys);
            for i in 0..len {
                let qp = start + i;
                for j in 0..keys {
                    let kp = from + j;
                    let seen = kp <= qp && window.is_none_or(|w| qp - kp < w);
                    mask.push(if seen { 0f32 } else { f32::NEG_INFINITY });
                }
            }
            let mask = Tensor::from_vec(mask, (len, keys), &self.device).map_err(engine)?;
            scores
                .reshape((nkv, rep, len, keys))
                .and_then(|s| s.broadcast_add(&mask))
                .and_then(|s| s.reshape((nkv, rep * len, keys)))
                .map_err(engine)?
        } else {
            scores
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores).map_err(engine)?;
        let out = probs.matmul(&vall.contiguous().map_err(engine)?).map_err(engine)?;
        out.reshape((nh, len, hd))
            .and_then(|o| o.transpose(0, 1))
            .and_then(|o| o.reshape((len, nh * hd)))
            .map_err(engine)
    }

    /// Last-dimension index of the largest logit (the first on ties).
    pub fn argmax(row: &[f32]) -> u32 {
        let mut best = 0usize;
        for (i, v) in row.iter().enumerate() {
            if *v > row[best] {
                best = i;
            }
        }
        best as u32
    }
}
