//! The models the executor runs: BERT-family sentence embeddings (on Cairn's encoder on the
//! CPU, candle's BERT elsewhere), Gemma 3 and
//! Qwen 2.5 chat from GGUF on Cairn's own engine ([`super::llm`]), and character models trained
//! on Cairn; each with its tokenizer.

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use tokenizers::Tokenizer;

use super::encoder::{Encoder, Unsupported};
use super::llm::{Config as LlmConfig, Llm};
use super::package::{Family, ModelPackage};
use super::request::{ChatMessage, ReqError};
use super::tokenize::ChatTokenizer;
use crate::{Result, RunError};

/// BERT's position table.
pub const BERT_CONTEXT: usize = 512;
/// An embedding and the tokens it took.
pub(crate) type Embedded = (Vec<f32>, usize);

/// Inputs embedded together in one padded batch.
pub const EMBED_BATCH: usize = 32;

/// An engine error's first line: candle appends a backtrace when RUST_BACKTRACE is set, which
/// would put machine-specific text into committed results and error messages.
pub(crate) fn one_line(e: impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or("").trim_end().to_string()
}

fn engine(e: impl std::fmt::Display) -> RunError {
    RunError::Runtime(one_line(e))
}

fn tok_err(e: impl std::fmt::Display) -> RunError {
    RunError::InvalidWorkload(format!("tokenizer: {}", one_line(e)))
}

/// A model's tokenizer alone (what a gateway needs to count tokens).
#[derive(Debug)]
pub enum ModelTokenizer {
    /// WordPiece, from `tokenizer.json`.
    Bert(Box<Tokenizer>),
    /// A GGUF chat model's tokenizer and template, and the context Cairn serves it with.
    Chat(Box<ChatTokenizer>, usize),
    /// The characters of a model trained on Cairn, and its context.
    Chars(Vec<char>, usize),
}

impl ModelTokenizer {
    /// Load the tokenizer of a package.
    ///
    /// # Errors
    /// [`RunError::InvalidWorkload`] when the package's tokenizer cannot be read.
    pub fn load(pkg: &ModelPackage) -> Result<Self> {
        match pkg.header.family {
            Family::Bert => Ok(ModelTokenizer::Bert(Box::new(bert_tokenizer(&pkg.read("tokenizer.json")?)?))),
            Family::Gemma3 | Family::Qwen2 => {
                let mut r = pkg.reader("model.gguf")?;
                let ct = gguf_file::Content::read(&mut r)
                    .map_err(|e| tok_err(format!("GGUF: {}", one_line(e))))?;
                let context = LlmConfig::from_gguf(&ct)?.context;
                Ok(ModelTokenizer::Chat(Box::new(ChatTokenizer::from_gguf(&ct)?), context))
            }
            Family::CairnGpt => match serde_json::from_slice(&pkg.read("model.json")?) {
                Ok(crate::train::ModelCard::Gpt { vocab, context, .. }) => {
                    Ok(ModelTokenizer::Chars(vocab.chars().collect(), context as usize))
                }
                _ => Err(tok_err("model.json does not describe a language model")),
            },
        }
    }

    /// Tokens of an embedding input (with `[CLS]`/`[SEP]`), or of a chat prompt as the model
    /// will see it.
    ///
    /// # Errors
    /// [`ReqError`] for input the tokenizer refuses.
    pub fn count_embedding(&self, text: &str) -> Result<usize, ReqError> {
        match self {
            ModelTokenizer::Bert(t) => Ok(t.encode_fast(text, true).map_err(ReqError::invalid)?.len()),
            ModelTokenizer::Chat(..) | ModelTokenizer::Chars(..) => {
                Err(ReqError::invalid("this model does not make embeddings"))
            }
        }
    }

    /// Tokens of a chat prompt.
    ///
    /// # Errors
    /// [`ReqError`] for a malformed conversation.
    pub fn count_chat(&self, messages: &[ChatMessage]) -> Result<usize, ReqError> {
        match self {
            ModelTokenizer::Chat(t, _) => Ok(t.chat_prompt(messages)?.len()),
            ModelTokenizer::Chars(vocab, _) => Ok(char_prompt(vocab, messages)?.len()),
            ModelTokenizer::Bert(_) => Err(ReqError::invalid("this model does not chat")),
        }
    }

    /// The model's context length in tokens.
    pub fn context(&self) -> usize {
        match self {
            ModelTokenizer::Bert(_) => BERT_CONTEXT,
            ModelTokenizer::Chat(_, context) => *context,
            // A character model slides its window: any prompt fits.
            ModelTokenizer::Chars(..) => usize::MAX,
        }
    }
}

/// A character model's prompt: the messages' text, one per line, as token ids. A character
/// the model never saw is refused (it has no id).
fn char_prompt(vocab: &[char], messages: &[ChatMessage]) -> Result<Vec<u32>, ReqError> {
    if messages.is_empty() {
        return Err(ReqError::param("messages", "messages must not be empty"));
    }
    let text = messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n");
    let mut ids = Vec::with_capacity(text.len());
    for c in text.chars() {
        match vocab.iter().position(|v| *v == c).and_then(|i| u32::try_from(i).ok()) {
            Some(i) => ids.push(i),
            None => {
                return Err(ReqError::param(
                    "messages",
                    format!("the model's vocabulary has no {c:?} (it knows {} characters)", vocab.len()),
                ));
            }
        }
    }
    if ids.is_empty() {
        return Err(ReqError::param("messages", "the prompt is empty"));
    }
    Ok(ids)
}

fn bert_tokenizer(json: &[u8]) -> Result<Tokenizer> {
    let mut t = Tokenizer::from_bytes(json).map_err(tok_err)?;
    // tokenizer.json pads to 128; inputs run unpadded (Cairn's encoder packs them; candle's
    // BERT pads its own batches).
    t.with_padding(None);
    t.with_truncation(None).map_err(tok_err)?;
    Ok(t)
}

/// Which BERT runs an embedding model.
pub(crate) enum Bert {
    /// Cairn's encoder (on the CPU): unpadded, the same bits alone or batched.
    Own(Box<Encoder>),
    /// Candle's BERT (on a GPU, or shapes the encoder does not compute), in padded batches.
    Candle { model: Box<BertModel>, device: Device },
}

impl Bert {
    /// Tokens one input may take.
    fn context(&self) -> usize {
        match self {
            Bert::Own(enc) => enc.context().min(BERT_CONTEXT),
            Bert::Candle { .. } => BERT_CONTEXT,
        }
    }
}

/// A loaded model.
pub(crate) enum Loaded {
    Bert { model: Bert, tokenizer: Box<Tokenizer> },
    Llm { llm: Box<Llm>, tokenizer: Box<ChatTokenizer> },
    Trained { model: Box<crate::train::Trained>, vocab: Vec<char> },
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Loaded::Bert { .. } => "Loaded::Bert",
            Loaded::Llm { .. } => "Loaded::Llm",
            Loaded::Trained { .. } => "Loaded::Trained",
        })
    }
}

/// Sampling settings of one generation.
#[derive(Clone, Debug)]
pub(crate) struct GenParams {
    pub(crate) max_tokens: Option<usize>,
    pub(crate) temperature: f64,
    pub(crate) top_p: f64,
    pub(crate) seed: u64,
    pub(crate) stop: Vec<String>,
}

/// What a generation produced.
#[derive(Clone, Debug)]
pub(crate) struct Generation {
    pub(crate) text: String,
    pub(crate) ids: Vec<u32>,
    pub(crate) prompt_tokens: usize,
    pub(crate) finish: &'static str,
}

impl Loaded {
    /// Load a package's model onto `device`.
    pub(crate) fn load(pkg: &ModelPackage, device: &Device) -> Result<Self> {
        Self::load_with(pkg, device, candle_bert())
    }

    /// As [`load`](Self::load); `candle_bert` keeps embedding models on candle's BERT.
    pub(crate) fn load_with(pkg: &ModelPackage, device: &Device, candle_bert: bool) -> Result<Self> {
        match pkg.header.family {
            Family::Bert => {
                let config = pkg.read("config.json")?;
                let tokenizer = Box::new(bert_tokenizer(&pkg.read("tokenizer.json")?)?);
                let vb =
                    VarBuilder::from_buffered_safetensors(pkg.read("model.safetensors")?, DType::F32, device)
                        .map_err(|e| {
                            RunError::InvalidWorkload(format!("model.safetensors: {}", one_line(e)))
                        })?;
                if device.is_cpu() && !candle_bert {
                    match Encoder::load(&config, &vb) {
                        Ok(enc) => return Ok(Loaded::Bert { model: Bert::Own(Box::new(enc)), tokenizer }),
                        Err(Unsupported::Invalid(e)) => return Err(RunError::InvalidWorkload(e)),
                        Err(Unsupported::Shape(why)) => {
                            tracing::debug!(%why, "BERT shape outside Cairn's encoder: candle's BERT runs it")
                        }
                    }
                }
                let cfg: BertConfig = serde_json::from_slice(&config)
                    .map_err(|e| RunError::InvalidWorkload(format!("config.json: {}", one_line(e))))?;
                let model = BertModel::load(vb, &cfg)
                    .map_err(|e| RunError::InvalidWorkload(format!("BERT: {}", one_line(e))))?;
                Ok(Loaded::Bert {
                    model: Bert::Candle { model: Box::new(model), device: device.clone() },
                    tokenizer,
                })
            }
            Family::Gemma3 | Family::Qwen2 => {
                let mut r = pkg.reader("model.gguf")?;
                let ct = gguf_file::Content::read(&mut r)
                    .map_err(|e| RunError::InvalidWorkload(format!("GGUF: {}", one_line(e))))?;
                let cfg = LlmConfig::from_gguf(&ct)?;
                if cfg.arch.name() != pkg.header.family.gguf_arch().unwrap_or_default() {
                    return Err(RunError::InvalidWorkload(format!(
                        "the package says {:?} but its GGUF is {}",
                        pkg.header.family,
                        cfg.arch.name()
                    )));
                }
                let tokenizer = ChatTokenizer::from_gguf(&ct)?;
                let llm = Llm::from_gguf(&ct, &mut r, device)?;
                Ok(Loaded::Llm { llm: Box::new(llm), tokenizer: Box::new(tokenizer) })
            }
            Family::CairnGpt => {
                let model = crate::train::load_trained(
                    &pkg.read("model.json")?,
                    &pkg.read("checkpoint.safetensors")?,
                    device,
                )?;
                let vocab = match &model.card {
                    crate::train::ModelCard::Gpt { vocab, .. } => vocab.chars().collect(),
                    crate::train::ModelCard::Mlp { .. } => {
                        return Err(RunError::InvalidWorkload("a classifier cannot chat".into()));
                    }
                };
                Ok(Loaded::Trained { model: Box::new(model), vocab })
            }
        }
    }

    /// One sentence embedding: mean pooling over tokens, L2-normalised. Returns the vector and
    /// the tokens it took.
    pub(crate) fn embed(&self, text: &str) -> Result<std::result::Result<(Vec<f32>, usize), ReqError>> {
        Ok(self.embed_many(&[text.to_string()])?.map(|mut v| v.remove(0)))
    }

    /// Embeddings of several inputs, in input order with the tokens each took, or the first
    /// input refused. On Cairn's encoder every input runs unpadded and gets the bits it gets
    /// alone. On candle's BERT inputs are sorted by length (then position) and run in padded
    /// batches of up to [`EMBED_BATCH`], each pooled over its own tokens only: the batches follow
    /// from the inputs alone, so a re-run makes the same batches and the same bits.
    pub(crate) fn embed_many(
        &self,
        texts: &[String],
    ) -> Result<std::result::Result<Vec<Embedded>, ReqError>> {
        let Loaded::Bert { model, tokenizer } = self else {
            return Ok(Err(ReqError::invalid("this model does not make embeddings")));
        };
        let mut all: Vec<Vec<u32>> = Vec::with_capacity(texts.len());
        for text in texts {
            let ids = match tokenizer.encode_fast(text.as_str(), true) {
                Ok(e) => e.get_ids().to_vec(),
                Err(e) => return Ok(Err(ReqError::invalid(e))),
            };
            if ids.len() > model.context() {
                return Ok(Err(ReqError::context(ids.len(), model.context())));
            }
            if ids.is_empty() {
                return Ok(Err(ReqError::invalid("an input that makes no tokens")));
            }
            all.push(ids);
        }
        let vectors = match model {
            Bert::Own(enc) => enc.embed(&all).map_err(RunError::Runtime)?,
            Bert::Candle { model, device } => candle_embed(model, device, &all)?,
        };
        Ok(Ok(vectors.into_iter().zip(all).map(|(v, ids)| (v, ids.len())).collect()))
    }

    /// Generate a chat reply.
    pub(crate) fn chat(
        &self,
        messages: &[ChatMessage],
        p: &GenParams,
    ) -> Result<std::result::Result<Generation, ReqError>> {
        if let Loaded::Trained { model, vocab } = self {
            return trained_chat(model, vocab, messages, p);
        }
        let Loaded::Llm { llm, tokenizer } = self else {
            return Ok(Err(ReqError::invalid("this model does not chat")));
        };
        let prompt = match tokenizer.chat_prompt(messages) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        super::batch::generate(llm, tokenizer, &prompt, p, None)
    }
}

/// The generation cut before its first stop sequence, if `text` has one.
/// Candle's BERT over `all` in padded batches of up to [`EMBED_BATCH`] inputs of similar length.
fn candle_embed(model: &BertModel, device: &Device, all: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
    let mut order: Vec<usize> = (0..all.len()).collect();
    order.sort_by_key(|&i| (all[i].len(), i));
    let mut out: Vec<Vec<f32>> = vec![Vec::new(); all.len()];
    for batch in order.chunks(EMBED_BATCH) {
        let width = batch.iter().map(|&i| all[i].len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(batch.len() * width);
        let mut mask = Vec::with_capacity(batch.len() * width);
        for &i in batch {
            let row = &all[i];
            ids.extend_from_slice(row);
            ids.resize(ids.len() + width - row.len(), 0);
            mask.extend(std::iter::repeat_n(1u32, row.len()));
            mask.resize(mask.len() + width - row.len(), 0);
        }
        let shape = (batch.len(), width);
        let input = Tensor::from_vec(ids, shape, device).map_err(engine)?;
        let mask = Tensor::from_vec(mask, shape, device).map_err(engine)?;
        let types = input.zeros_like().map_err(engine)?;
        let hidden = model.forward(&input, &types, Some(&mask)).map_err(engine)?;
        let m = mask.to_dtype(DType::F32).and_then(|m| m.unsqueeze(2)).map_err(engine)?;
        let summed = hidden.broadcast_mul(&m).and_then(|h| h.sum(1)).map_err(engine)?;
        let counts = m.sum(1).map_err(engine)?;
        let pooled = summed.broadcast_div(&counts).map_err(engine)?;
        let norm = pooled.sqr().and_then(|s| s.sum_keepdim(1)).and_then(|s| s.sqrt()).map_err(engine)?;
        let rows = pooled.broadcast_div(&norm).and_then(|t| t.to_vec2::<f32>()).map_err(engine)?;
        for (&i, v) in batch.iter().zip(rows) {
            out[i] = v;
        }
    }
    Ok(out)
}

/// `CAIRN_CANDLE_BERT=1` runs embedding models on candle's BERT even on the CPU (the reference
/// the benchmark compares Cairn's encoder with).
fn candle_bert() -> bool {
    std::env::var("CAIRN_CANDLE_BERT").is_ok_and(|v| v == "1")
}

fn stopped(text: String, ids: &[u32], prompt_tokens: usize, stop: &[String]) -> Option<Generation> {
    let cut = stop.iter().filter_map(|s| text.find(s.as_str())).min()?;
    Some(Generation { text: text[..cut].to_string(), ids: ids.to_vec(), prompt_tokens, finish: "stop" })
}

pub(crate) fn sampling(p: &GenParams) -> Sampling {
    if p.temperature <= 0.0 {
        Sampling::ArgMax
    } else if p.top_p < 1.0 {
        Sampling::TopP { p: p.top_p, temperature: p.temperature }
    } else {
        Sampling::All { temperature: p.temperature }
    }
}

/// Continue a prompt with a character model trained on Cairn: each step reads the last
/// `context` characters (no cache: the models are small), seeded sampling as for Gemma. A
/// character model has no end token, so it stops at `max_tokens` or a stop sequence.
fn trained_chat(
    model: &crate::train::Trained,
    vocab: &[char],
    messages: &[ChatMessage],
    p: &GenParams,
) -> Result<std::result::Result<Generation, ReqError>> {
    let prompt = match char_prompt(vocab, messages) {
        Ok(ids) => ids,
        Err(e) => return Ok(Err(e)),
    };
    let max_new = p.max_tokens.unwrap_or(super::DEFAULT_MAX_TOKENS);
    let mut sampler = LogitsProcessor::from_sampling(p.seed, sampling(p));
    let mut all = prompt.clone();
    let mut ids: Vec<u32> = Vec::new();
    while ids.len() < max_new {
        let logits = model.logits(&all)?;
        let logits = Tensor::new(logits.as_slice(), &Device::Cpu).map_err(engine)?;
        let next = sampler.sample(&logits).map_err(engine)?;
        ids.push(next);
        all.push(next);
        if !p.stop.is_empty()
            && let Some(g) = stopped(model.decode(&ids), &ids, prompt.len(), &p.stop)
        {
            return Ok(Ok(g));
        }
    }
    Ok(Ok(Generation { text: model.decode(&ids), ids, prompt_tokens: prompt.len(), finish: "length" }))
}
