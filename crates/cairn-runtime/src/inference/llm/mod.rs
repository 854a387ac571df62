//! Cairn's decoder-only language-model engine on candle: Gemma 3 and Qwen 2 GGUF models, weights kept quantized, prompts processed in one pass, and several sequences decoded
//! together in one step.
//!
//! Batching never changes a sequence's numbers. Each row of a quantized matrix product is
//! computed from that row alone (its activations are quantized per row and dotted with the
//! weights; no sum runs across rows), attention runs per sequence over its own cache, and norms
//! are per row. So a request's tokens are the same bits whether it ran alone or beside fifteen
//! others — which is what lets an auditor re-run it alone and compare bit for bit.
//! `tests/it/llm.rs` checks this on the real models.

mod attention;
mod gated;
mod linear;
pub mod load;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

use crate::inference::quant;
use attention::{LayerCache, Norms, Rope};
use linear::{Linear, Proj};
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
    /// The same norms' weights as values, for the attention steps.
    q_norm_values: Option<Vec<f32>>,
    k_norm_values: Option<Vec<f32>>,
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
            let q_norm = opt(&mut t, "attn_q_norm.weight")?;
            let k_norm = opt(&mut t, "attn_k_norm.weight")?;
            let values = |w: &Option<Tensor>| -> Result<Option<Vec<f32>>> {
                w.as_ref()
                    .map(|w| w.to_dtype(DType::F32).and_then(|w| w.to_vec1::<f32>()).map_err(engine))
                    .transpose()
            };
            let (q_norm_values, k_norm_values) = (values(&q_norm)?, values(&k_norm)?);
            layers.push(Layer {
                attn_norm: t.dense(&n("attn_norm.weight"))?,
                qkv: t.projections(&[&n("attn_q.weight"), &n("attn_k.weight"), &n("attn_v.weight")])?,
                bq: opt(&mut t, "attn_q.bias")?,
                bk: opt(&mut t, "attn_k.bias")?,
                bv: opt(&mut t, "attn_v.bias")?,
                q_norm,
                k_norm,
                q_norm_values,
                k_norm_values,
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
            let mut qkv = layer.qkv.forward(&h).map_err(engine)?.into_iter();
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
            let attn = self.attend(li, layer, batch, &segs, (&q, &k, &v))?;
            let mut o = layer.wo.forward(&attn).map_err(engine)?;
            if let Some(w) = &layer.post_attn_norm {
                o = candle_nn::ops::rms_norm(&o, w, cfg.eps).map_err(engine)?;
            }
            x = (x + o).map_err(engine)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, cfg.eps).map_err(engine)?;
            let mut gu = layer.gate_up.forward(&h).map_err(engine)?.into_iter();
            let (Some(g), Some(u)) = (gu.next(), gu.next()) else {
                return Err(RunError::Runtime("missing projection".into()));
            };
            let mut f = layer.down.forward(&gated::gated(cfg.arch, &g, &u)?).map_err(engine)?;
            if let Some(w) = &layer.post_ffn_norm {
                f = candle_nn::ops::rms_norm(&f, w, cfg.eps).map_err(engine)?;
            }
            x = (x + f).map_err(engine)?;
        }
        let last: Vec<u32> = segs.iter().map(|&(off, len, _)| (off + len - 1) as u32).collect();
        let last = Tensor::from_vec(last, segs.len(), &self.device).map_err(engine)?;
        let x = x.index_select(&last, 0).map_err(engine)?;
        let x = candle_nn::ops::rms_norm(&x, &self.norm, cfg.eps).map_err(engine)?;
        let logits = self.output.forward(&x).map_err(engine)?;
        for (seq, toks) in batch.iter_mut() {
            seq.pos += toks.len();
        }
        logits.to_dtype(DType::F32).and_then(|l| l.to_vec2::<f32>()).map_err(engine)
    }

    /// Attention of every sequence in one layer: prompt segments one by one, one-token steps
    /// together (see [`attention`]). Returns `(rows, heads · head_dim)` in row order.
    fn attend(
        &self,
        li: usize,
        layer: &Layer,
        batch: &mut [(&mut Sequence, &[u32])],
        segs: &[(usize, usize, usize)],
        (q, k, v): (&Tensor, &Tensor, &Tensor),
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let rope = match (&self.rope_local, layer.sliding) {
            (Some(local), true) => local,
            _ => &self.rope_global,
        };
        let window = if layer.sliding { cfg.window } else { None };
        let norms = Norms {
            q: layer.q_norm.as_ref(),
            k: layer.k_norm.as_ref(),
            q_values: layer.q_norm_values.as_deref(),
            k_values: layer.k_norm_values.as_deref(),
        };
        let mut outs: Vec<Option<Tensor>> = Vec::with_capacity(segs.len());
        for (si, &seg) in segs.iter().enumerate() {
            outs.push(if seg.1 > 1 {
                let cache = &mut batch[si].0.caches[li];
                Some(attention::prompt(cfg, rope, window, &norms, cache, (q, k, v), seg)?)
            } else {
                None
            });
        }
        let step_segs: Vec<usize> = (0..segs.len()).filter(|&si| segs[si].1 == 1).collect();
        if !step_segs.is_empty() {
            let flat = |t: &Tensor| t.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(engine);
            let (qv, kv, vv) = (flat(q)?, flat(k)?, flat(v)?);
            let rows: Vec<usize> = step_segs.iter().map(|&si| segs[si].0).collect();
            let pos: Vec<usize> = step_segs.iter().map(|&si| segs[si].2).collect();
            let mut caches: Vec<&mut LayerCache> = batch
                .iter_mut()
                .enumerate()
                .filter(|(si, _)| segs[*si].1 == 1)
                .map(|(_, (seq, _))| &mut seq.caches[li])
                .collect();
            let out = attention::steps(cfg, rope, window, &norms, &mut caches, (&qv, &kv, &vv), &rows, &pos)?;
            let width = cfg.heads * cfg.head_dim;
            if step_segs.len() == segs.len() {
                return Tensor::from_vec(out, (segs.len(), width), &self.device).map_err(engine);
            }
            for (n, &si) in step_segs.iter().enumerate() {
                let row = Tensor::from_slice(&out[n * width..(n + 1) * width], (1, width), &self.device);
                outs[si] = Some(row.map_err(engine)?);
            }
        }
        let mut outs: Vec<Tensor> = outs.into_iter().flatten().collect();
        if outs.len() == 1 { Ok(outs.remove(0)) } else { Tensor::cat(&outs, 0).map_err(engine) }
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
