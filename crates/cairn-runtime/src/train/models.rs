//! The models a `train` job trains, their deterministic initialization, and the loader that
//! turns a finished job's `model.json` + `checkpoint.safetensors` back into a model.
//!
//! Parameters live in a [`Weights`] map keyed by name (the names in the checkpoint, without the
//! `w.` prefix), so they can be saved, averaged and loaded; the forward passes are plain
//! functions of that map.
//!
//! - [`Mlp`]: `fc1` (inputs → hidden) → ReLU → `fc2` (hidden → classes).
//! - [`Gpt`]: token + learned position embeddings, `layers` pre-norm blocks (`h.<i>.ln1`,
//!   causal multi-head self-attention `h.<i>.attn.qkv` / `.proj`, residual, `h.<i>.ln2`, MLP
//!   `h.<i>.mlp.fc` (4×d_model, exact GELU) / `.proj`, residual), `ln_f`, linear `head`.
//!
//! Initialization never uses candle's random generators: each tensor draws from its own
//! [`SplitMix64`] stream keyed by the job's seed and the tensor's name, `u = (x >> 40) / 2^24`,
//! `w = (2u − 1) · bound` with `bound = 1 / sqrt(fan_in)` (the last dimension); biases start
//! at zero and layer-norm gains at one.

use std::collections::BTreeMap;

use candle_core::{D, DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::data::{Batch, Dataset, SplitMix64};
use super::state::{HostTensor, TensorFile, check_shapes};
use crate::{Result, RunError};
use cairn_types::{ModelArch, TrainSpec};

/// Epsilon of every layer norm.
pub const LN_EPS: f64 = 1e-5;

/// How a parameter starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// Uniform in `±1/sqrt(fan_in)`.
    Uniform {
        /// Inputs per output.
        fan_in: usize,
    },
    /// All zero.
    Zeros,
    /// All one.
    Ones,
}

/// A multi-layer perceptron classifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mlp {
    /// Features per example.
    pub n_inputs: usize,
    /// Hidden units.
    pub hidden: usize,
    /// Classes.
    pub n_classes: usize,
}

/// A character-level decoder-only transformer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gpt {
    /// Blocks.
    pub layers: usize,
    /// Residual width.
    pub d_model: usize,
    /// Attention heads.
    pub heads: usize,
    /// Longest sequence.
    pub context: usize,
    /// Vocabulary size.
    pub vocab: usize,
}

/// Either model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// A classifier.
    Mlp(Mlp),
    /// A language model.
    Gpt(Gpt),
}

/// Parameters by name (on some device).
#[derive(Clone, Debug, Default)]
pub struct Weights(pub BTreeMap<String, Tensor>);

impl Weights {
    /// Host tensors onto `device`.
    ///
    /// # Errors
    /// Candle's, for a shape that does not match its data.
    pub fn from_host(map: &BTreeMap<String, HostTensor>, device: &Device) -> candle_core::Result<Self> {
        let mut out = BTreeMap::new();
        for (k, t) in map {
            out.insert(k.clone(), Tensor::from_slice(&t.data, t.shape.as_slice(), device)?);
        }
        Ok(Weights(out))
    }

    /// The parameter `name`.
    ///
    /// # Errors
    /// When there is none.
    pub fn get(&self, name: &str) -> candle_core::Result<&Tensor> {
        self.0.get(name).ok_or_else(|| candle_core::Error::Msg(format!("no parameter {name}")))
    }
}

/// `x · wᵀ + b` for `x` of shape `[n, in]`.
fn linear(x: &Tensor, w: &Weights, name: &str) -> candle_core::Result<Tensor> {
    x.matmul(&w.get(&format!("{name}.weight"))?.t()?)?.broadcast_add(w.get(&format!("{name}.bias"))?)
}

/// Layer norm over the last dimension, from primitive ops (all of which have gradients).
fn layer_norm(x: &Tensor, w: &Weights, name: &str) -> candle_core::Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + LN_EPS)?.sqrt()?)?;
    xn.broadcast_mul(w.get(&format!("{name}.weight"))?)?.broadcast_add(w.get(&format!("{name}.bias"))?)
}

impl Mlp {
    /// Logits `[n, classes]` of features `[n, inputs]`.
    ///
    /// # Errors
    /// Candle's, for inputs of the wrong shape.
    pub fn forward(&self, w: &Weights, x: &Tensor) -> candle_core::Result<Tensor> {
        linear(&linear(x, w, "fc1")?.relu()?, w, "fc2")
    }
}

impl Gpt {
    /// Logits `[batch, seq, vocab]` of tokens `[batch, seq]` (`u32`, `seq ≤ context`).
    ///
    /// # Errors
    /// Candle's, for inputs of the wrong shape or tokens outside the vocabulary.
    pub fn forward(&self, w: &Weights, tokens: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        if t == 0 || t > self.context {
            candle_core::bail!("sequence of {t} tokens; the context is {}", self.context);
        }
        let (d, heads) = (self.d_model, self.heads);
        let hd = d / heads;
        let tok = w.get("tok_emb")?.embedding(&tokens.flatten_all()?)?.reshape((b, t, d))?;
        let pos = w.get("pos_emb")?.narrow(0, 0, t)?;
        let mut x = tok.broadcast_add(&pos)?.reshape((b * t, d))?;
        let mask: Vec<f32> =
            (0..t).flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
        let mask = Tensor::from_vec(mask, (t, t), tokens.device())?;
        let scale = 1.0 / (hd as f64).sqrt();
        for l in 0..self.layers {
            let p = format!("h.{l}");
            let h = layer_norm(&x, w, &format!("{p}.ln1"))?;
            let qkv = linear(&h, w, &format!("{p}.attn.qkv"))?;
            let split = |i: usize| -> candle_core::Result<Tensor> {
                qkv.narrow(1, i * d, d)?.reshape((b, t, heads, hd))?.transpose(1, 2)?.contiguous()
            };
            let (q, k, v) = (split(0)?, split(1)?, split(2)?);
            let att = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&mask)?;
            let att = candle_nn::ops::softmax(&att, D::Minus1)?;
            let y = att.matmul(&v)?.transpose(1, 2)?.contiguous()?.reshape((b * t, d))?;
            x = (x + linear(&y, w, &format!("{p}.attn.proj"))?)?;
            let h = layer_norm(&x, w, &format!("{p}.ln2"))?;
            let h = linear(&linear(&h, w, &format!("{p}.mlp.fc"))?.gelu_erf()?, w, &format!("{p}.mlp.proj"))?;
            x = (x + h)?;
        }
        let x = layer_norm(&x, w, "ln_f")?;
        linear(&x, w, "head")?.reshape((b, t, self.vocab))
    }
}

impl Model {
    /// The model `spec` trains on `data` (`None` if the dataset is not in the format the
    /// architecture reads, which parsing never returns).
    pub fn new(spec: &TrainSpec, data: &Dataset) -> Option<Self> {
        match (&spec.model, data) {
            (ModelArch::Mlp { hidden }, Dataset::Csv(c)) => Some(Model::Mlp(Mlp {
                n_inputs: c.n_inputs,
                hidden: *hidden as usize,
                n_classes: c.n_classes,
            })),
            (ModelArch::Gpt { layers, d_model, heads, context }, Dataset::Text(t)) => Some(Model::Gpt(Gpt {
                layers: *layers as usize,
                d_model: *d_model as usize,
                heads: *heads as usize,
                context: *context as usize,
                vocab: t.vocab.len(),
            })),
            _ => None,
        }
    }

    /// Every parameter: name, shape and initialization, in name order.
    pub fn params(&self) -> BTreeMap<String, (Vec<usize>, Init)> {
        let mut p = BTreeMap::new();
        let mut lin = |name: &str, out: usize, inp: usize| {
            p.insert(format!("{name}.weight"), (vec![out, inp], Init::Uniform { fan_in: inp }));
            p.insert(format!("{name}.bias"), (vec![out], Init::Zeros));
        };
        match self {
            Model::Mlp(m) => {
                lin("fc1", m.hidden, m.n_inputs);
                lin("fc2", m.n_classes, m.hidden);
            }
            Model::Gpt(g) => {
                let d = g.d_model;
                for l in 0..g.layers {
                    lin(&format!("h.{l}.attn.qkv"), 3 * d, d);
                    lin(&format!("h.{l}.attn.proj"), d, d);
                    lin(&format!("h.{l}.mlp.fc"), 4 * d, d);
                    lin(&format!("h.{l}.mlp.proj"), d, 4 * d);
                }
                lin("head", g.vocab, d);
                let mut norms: Vec<String> =
                    (0..g.layers).flat_map(|l| [format!("h.{l}.ln1"), format!("h.{l}.ln2")]).collect();
                norms.push("ln_f".into());
                for n in norms {
                    p.insert(format!("{n}.weight"), (vec![d], Init::Ones));
                    p.insert(format!("{n}.bias"), (vec![d], Init::Zeros));
                }
                p.insert("tok_emb".into(), (vec![g.vocab, d], Init::Uniform { fan_in: d }));
                p.insert("pos_emb".into(), (vec![g.context, d], Init::Uniform { fan_in: d }));
            }
        }
        p
    }

    /// Parameter shapes by name.
    pub fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.params().into_iter().map(|(k, (s, _))| (k, s)).collect()
    }

    /// Scalar parameters in all.
    pub fn parameters(&self) -> u64 {
        self.params().values().map(|(s, _)| s.iter().product::<usize>() as u64).sum()
    }

    /// The initial weights for `seed`.
    pub fn init(&self, seed: u64) -> BTreeMap<String, HostTensor> {
        self.params()
            .into_iter()
            .map(|(name, (shape, init))| {
                let t = match init {
                    Init::Zeros => HostTensor::filled(&shape, 0.0),
                    Init::Ones => HostTensor::filled(&shape, 1.0),
                    Init::Uniform { fan_in } => {
                        let mut rng = SplitMix64::keyed("init", &[&seed.to_le_bytes(), name.as_bytes()]);
                        let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
                        let n: usize = shape.iter().product();
                        let data = (0..n).map(|_| (2.0 * rng.unit_f32() - 1.0) * bound).collect();
                        HostTensor { shape, data }
                    }
                };
                (name, t)
            })
            .collect()
    }

    /// Logits `[n, classes]` and targets `[n]` of a batch.
    pub(crate) fn logits(
        &self,
        w: &Weights,
        batch: &Batch,
        device: &Device,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        match (self, batch) {
            (Model::Mlp(m), Batch::Rows { x, y, rows }) => {
                let x = Tensor::from_slice(x, (*rows, m.n_inputs), device)?;
                Ok((m.forward(w, &x)?, Tensor::from_slice(y, *rows, device)?))
            }
            (Model::Gpt(g), Batch::Windows { x, y, seqs, len }) => {
                let x = Tensor::from_slice(x, (*seqs, *len), device)?;
                let logits = g.forward(w, &x)?.reshape((seqs * len, g.vocab))?;
                Ok((logits, Tensor::from_slice(y, seqs * len, device)?))
            }
            _ => candle_core::bail!("batch does not fit the model"),
        }
    }

    /// Mean cross-entropy of a batch (the training loss).
    pub(crate) fn loss(&self, w: &Weights, batch: &Batch, device: &Device) -> candle_core::Result<Tensor> {
        let (logits, y) = self.logits(w, batch, device)?;
        candle_nn::loss::cross_entropy(&logits, &y)
    }

    /// Summed cross-entropy, predictions scored and predictions made in a batch.
    pub(crate) fn eval(
        &self,
        w: &Weights,
        batch: &Batch,
        device: &Device,
    ) -> candle_core::Result<(f32, usize, usize)> {
        let (logits, y) = self.logits(w, batch, device)?;
        let logp = candle_nn::ops::log_softmax(&logits, 1)?;
        let sum = logp.gather(&y.unsqueeze(1)?, 1)?.sum_all()?.neg()?.to_scalar::<f32>()?;
        let pred = logits.argmax(1)?.to_vec1::<u32>()?;
        let truth = y.to_vec1::<u32>()?;
        let correct = pred.iter().zip(&truth).filter(|(a, b)| a == b).count();
        Ok((sum, correct, truth.len()))
    }
}

fn u32_of(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// `model.json`: everything needed to rebuild a trained model besides its weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "lowercase", deny_unknown_fields)]
pub enum ModelCard {
    /// A classifier over CSV features.
    Mlp {
        /// Hidden units.
        hidden: u32,
        /// Features per example.
        n_inputs: u32,
        /// Classes.
        n_classes: u32,
        /// Divide raw feature `j` by `feature_scale[j]` before the model sees it.
        feature_scale: Vec<f32>,
        /// Scalar parameters.
        parameters: u64,
    },
    /// A character-level language model.
    Gpt {
        /// Blocks.
        layers: u32,
        /// Residual width.
        d_model: u32,
        /// Attention heads.
        heads: u32,
        /// Longest sequence.
        context: u32,
        /// The vocabulary: token `i` is the `i`-th character of this string.
        vocab: String,
        /// Scalar parameters.
        parameters: u64,
    },
}

impl ModelCard {
    /// The card of `model` trained on `data` (`None` if they do not go together).
    pub(crate) fn new(model: &Model, data: &Dataset) -> Option<Self> {
        match (model, data) {
            (Model::Mlp(m), Dataset::Csv(c)) => Some(ModelCard::Mlp {
                hidden: u32_of(m.hidden),
                n_inputs: u32_of(m.n_inputs),
                n_classes: u32_of(m.n_classes),
                feature_scale: c.scale.clone(),
                parameters: model.parameters(),
            }),
            (Model::Gpt(g), Dataset::Text(t)) => Some(ModelCard::Gpt {
                layers: u32_of(g.layers),
                d_model: u32_of(g.d_model),
                heads: u32_of(g.heads),
                context: u32_of(g.context),
                vocab: t.vocab.iter().collect(),
                parameters: model.parameters(),
            }),
            _ => None,
        }
    }

    /// The model this card describes.
    pub fn model(&self) -> Model {
        match self {
            ModelCard::Mlp { hidden, n_inputs, n_classes, .. } => Model::Mlp(Mlp {
                n_inputs: *n_inputs as usize,
                hidden: *hidden as usize,
                n_classes: *n_classes as usize,
            }),
            ModelCard::Gpt { layers, d_model, heads, context, vocab, .. } => Model::Gpt(Gpt {
                layers: *layers as usize,
                d_model: *d_model as usize,
                heads: *heads as usize,
                context: *context as usize,
                vocab: vocab.chars().count(),
            }),
        }
    }
}

/// A trained model, ready to run.
#[derive(Debug)]
pub struct Trained {
    /// Its card.
    pub card: ModelCard,
    /// Its architecture.
    pub model: Model,
    /// Its weights.
    pub weights: Weights,
    /// The optimizer step it was saved at.
    pub step: u64,
    vocab: Vec<char>,
    device: Device,
}

/// Load a finished job's model from its `model.json` and `checkpoint.safetensors` (or a
/// shard's `state.safetensors`: only the `w.` tensors are read).
///
/// # Errors
/// [`RunError::InvalidWorkload`] when the files are malformed or do not match each other.
pub fn load_trained(model_json: &[u8], checkpoint: &[u8], device: &Device) -> Result<Trained> {
    let card: ModelCard = serde_json::from_slice(model_json)
        .map_err(|e| RunError::InvalidWorkload(format!("model.json: {e}")))?;
    let model = card.model();
    if let Model::Gpt(g) = model
        && (g.heads == 0 || g.d_model % g.heads != 0 || g.context == 0 || g.vocab == 0)
    {
        return Err(RunError::InvalidWorkload("model.json: inconsistent GPT dimensions".into()));
    }
    let file =
        TensorFile::decode(checkpoint).map_err(|e| RunError::InvalidWorkload(format!("checkpoint: {e}")))?;
    let w = file.with_prefix("w.");
    check_shapes(&w, &model.shapes()).map_err(|e| RunError::InvalidWorkload(format!("checkpoint: {e}")))?;
    let weights = Weights::from_host(&w, device).map_err(|e| RunError::Runtime(e.to_string()))?;
    let vocab = match &card {
        ModelCard::Gpt { vocab, .. } => vocab.chars().collect(),
        ModelCard::Mlp { .. } => Vec::new(),
    };
    Ok(Trained { card, model, weights, step: file.step, vocab, device: device.clone() })
}

impl Trained {
    /// Token ids of `text`, or `None` if it has a character outside the vocabulary.
    pub fn encode(&self, text: &str) -> Option<Vec<u32>> {
        text.chars().map(|c| self.vocab.iter().position(|v| *v == c).map(|i| i as u32)).collect()
    }

    /// The text of token ids (unknown ids are skipped).
    pub fn decode(&self, tokens: &[u32]) -> String {
        tokens.iter().filter_map(|t| self.vocab.get(*t as usize)).collect()
    }

    /// GPT: logits over the vocabulary for the token after `tokens` (the last `context` of
    /// them are used).
    ///
    /// # Errors
    /// [`RunError::InvalidWorkload`] for an MLP, no tokens or a token outside the vocabulary.
    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let Model::Gpt(g) = self.model else {
            return Err(RunError::InvalidWorkload("logits need a GPT; this is a classifier".into()));
        };
        if tokens.is_empty() || tokens.iter().any(|t| *t as usize >= g.vocab) {
            return Err(RunError::InvalidWorkload("no tokens, or a token outside the vocabulary".into()));
        }
        let tokens = &tokens[tokens.len().saturating_sub(g.context)..];
        let run = || -> candle_core::Result<Vec<f32>> {
            let x = Tensor::from_slice(tokens, (1, tokens.len()), &self.device)?;
            let logits = g.forward(&self.weights, &x)?;
            logits.narrow(1, tokens.len() - 1, 1)?.flatten_all()?.to_dtype(DType::F32)?.to_vec1()
        };
        run().map_err(|e| RunError::Runtime(e.to_string()))
    }

    /// MLP: class logits for raw (unscaled) features.
    ///
    /// # Errors
    /// [`RunError::InvalidWorkload`] for a GPT or the wrong number of features.
    pub fn classify(&self, features: &[f32]) -> Result<Vec<f32>> {
        let (Model::Mlp(m), ModelCard::Mlp { feature_scale, .. }) = (self.model, &self.card) else {
            return Err(RunError::InvalidWorkload("classify needs an MLP; this is a language model".into()));
        };
        if features.len() != m.n_inputs || feature_scale.len() != m.n_inputs {
            return Err(RunError::InvalidWorkload(format!(
                "{} features; the model takes {}",
                features.len(),
                m.n_inputs
            )));
        }
        let x: Vec<f32> = features.iter().zip(feature_scale).map(|(v, s)| v / s).collect();
        let run = || -> candle_core::Result<Vec<f32>> {
            let x = Tensor::from_vec(x, (1, m.n_inputs), &self.device)?;
            m.forward(&self.weights, &x)?.flatten_all()?.to_vec1()
        };
        run().map_err(|e| RunError::Runtime(e.to_string()))
    }
}
