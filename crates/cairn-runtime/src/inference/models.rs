//! The models the executor runs, on candle: BERT-family sentence embeddings and Gemma 3
//! text generation from GGUF, each with its tokenizer.

use std::collections::HashMap;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use candle_transformers::models::quantized_gemma3::ModelWeights;
use tokenizers::Tokenizer;
use tokenizers::models::bpe::{BPE, Vocab};

use super::package::{Family, ModelPackage};
use super::request::{ChatMessage, ReqError};
use crate::{Result, RunError};

/// Gemma's context as Cairn serves it: candle's single-token decoding attends past the
/// 512-token sliding window, so longer contexts would not match the model's training.
pub const GEMMA_CONTEXT: usize = 512;
/// BERT's position table.
pub const BERT_CONTEXT: usize = 512;

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
    /// SentencePiece BPE rebuilt from the GGUF's vocabulary and scores.
    Gemma(Box<GemmaTokenizer>),
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
            Family::Gemma3 => {
                let mut r = pkg.reader("model.gguf")?;
                let ct = gguf_file::Content::read(&mut r)
                    .map_err(|e| tok_err(format!("GGUF: {}", one_line(e))))?;
                Ok(ModelTokenizer::Gemma(Box::new(GemmaTokenizer::from_gguf(&ct)?)))
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
            ModelTokenizer::Gemma(_) | ModelTokenizer::Chars(..) => {
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
            ModelTokenizer::Gemma(t) => Ok(t.chat_prompt(messages)?.len()),
            ModelTokenizer::Chars(vocab, _) => Ok(char_prompt(vocab, messages)?.len()),
            ModelTokenizer::Bert(_) => Err(ReqError::invalid("this model does not chat")),
        }
    }

    /// The model's context length in tokens.
    pub fn context(&self) -> usize {
        match self {
            ModelTokenizer::Bert(_) => BERT_CONTEXT,
            ModelTokenizer::Gemma(_) => GEMMA_CONTEXT,
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
    // tokenizer.json pads to 128; inputs run one at a time, unpadded (batch composition is
    // part of what an auditor must reproduce bit for bit).
    t.with_padding(None);
    t.with_truncation(None).map_err(tok_err)?;
    Ok(t)
}

/// Gemma's tokenizer: SentencePiece BPE over the GGUF vocabulary. Control tokens
/// (`<start_of_turn>`, `<bos>`…) are never produced from text: only the chat template adds them.
#[derive(Debug)]
pub struct GemmaTokenizer {
    tok: Tokenizer,
    bos: u32,
    eos: u32,
    start_turn: u32,
    end_turn: u32,
}

impl GemmaTokenizer {
    /// Rebuild the tokenizer from GGUF metadata: merges ranked by the merged piece's score
    /// (SentencePiece's BPE rule), byte fallback, spaces as `▁`, user-defined pieces atomic.
    /// `tests/it/inference.rs` checks it against Google's SentencePiece on the same vocabulary.
    ///
    /// # Errors
    /// [`RunError::InvalidWorkload`] when the metadata is missing or inconsistent.
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<Self> {
        let get = |k: &str| ct.metadata.get(k).ok_or_else(|| tok_err(format!("GGUF has no {k}")));
        fn array<T>(
            v: &gguf_file::Value,
            f: impl Fn(&gguf_file::Value) -> candle_core::Result<T>,
        ) -> Result<Vec<T>> {
            v.to_vec().map_err(tok_err)?.iter().map(f).collect::<std::result::Result<_, _>>().map_err(tok_err)
        }
        let tokens = array(get("tokenizer.ggml.tokens")?, |v| v.to_string().cloned())?;
        let scores = array(get("tokenizer.ggml.scores")?, gguf_file::Value::to_f32)?;
        let types = array(get("tokenizer.ggml.token_type")?, gguf_file::Value::to_i32)?;
        if tokens.len() != scores.len() || tokens.len() != types.len() || tokens.is_empty() {
            return Err(tok_err("vocabulary, scores and types differ in length"));
        }
        let id = |k: &str| -> Result<u32> { get(k)?.to_u32().map_err(tok_err) };
        let bos = id("tokenizer.ggml.bos_token_id")?;
        let eos = id("tokenizer.ggml.eos_token_id")?;
        let index: HashMap<&str, u32> = tokens
            .iter()
            .enumerate()
            .filter_map(|(i, t)| Some((t.as_str(), u32::try_from(i).ok()?)))
            .collect();
        let find = |s: &str| index.get(s).copied().ok_or_else(|| tok_err(format!("no {s} token")));
        let start_turn = find("<start_of_turn>")?;
        let end_turn = find("<end_of_turn>")?;
        const NORMAL: i32 = 1;
        const USER: i32 = 4;
        // Merges: every split of a normal piece into two normal pieces, ranked by the merged
        // piece's score (higher first), ties by ids.
        let normal = |i: u32| types.get(i as usize) == Some(&NORMAL);
        let mut ranked: Vec<(f32, u32, u32, u32)> = Vec::new();
        for (i, piece) in tokens.iter().enumerate() {
            let Ok(i) = u32::try_from(i) else { break };
            if !normal(i) || piece.chars().nth(1).is_none() {
                continue;
            }
            for (at, _) in piece.char_indices().skip(1) {
                let (a, b) = piece.split_at(at);
                if let (Some(&ia), Some(&ib)) = (index.get(a), index.get(b))
                    && normal(ia)
                    && normal(ib)
                {
                    ranked.push((scores[i as usize], ia, ib, i));
                }
            }
        }
        ranked.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
        let merges: Vec<(String, String)> = ranked
            .iter()
            .map(|&(_, a, b, _)| (tokens[a as usize].clone(), tokens[b as usize].clone()))
            .collect();
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .filter_map(|(i, t)| Some((t.clone(), u32::try_from(i).ok()?)))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .byte_fallback(true)
            .unk_token("<unk>".into())
            .build()
            .map_err(tok_err)?;
        let mut tok = Tokenizer::new(bpe);
        tok.with_normalizer(Some(tokenizers::normalizers::Replace::new(" ", "\u{2581}").map_err(tok_err)?))
            .map_err(tok_err)?;
        tok.with_decoder(Some(tokenizers::decoders::sequence::Sequence::new(vec![
            tokenizers::decoders::DecoderWrapper::Replace(
                tokenizers::normalizers::Replace::new("\u{2581}", " ").map_err(tok_err)?,
            ),
            tokenizers::decoders::DecoderWrapper::ByteFallback(
                tokenizers::decoders::byte_fallback::ByteFallback::new(),
            ),
            tokenizers::decoders::DecoderWrapper::Fuse(tokenizers::decoders::fuse::Fuse::new()),
        ])));
        let user: Vec<tokenizers::AddedToken> = tokens
            .iter()
            .zip(&types)
            // SentencePiece matches user-defined pieces after spaces became `▁`, so the GGUF's
            // space-run pieces ("  ", "   "…) never match text; only the others are atomic.
            .filter(|(s, t)| **t == USER && !s.contains(' '))
            .map(|(s, _)| tokenizers::AddedToken::from(s.clone(), false).normalized(false))
            .collect();
        tok.add_tokens(user).map_err(tok_err)?;
        Ok(GemmaTokenizer { tok, bos, eos, start_turn, end_turn })
    }

    /// Token ids of plain text (no control tokens).
    ///
    /// # Errors
    /// [`ReqError`] if the tokenizer fails on it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ReqError> {
        Ok(self.tok.encode_fast(text, false).map_err(ReqError::invalid)?.get_ids().to_vec())
    }

    /// Text of token ids, control tokens left out.
    ///
    /// # Errors
    /// [`ReqError`] if an id is out of range.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ReqError> {
        self.tok.decode(ids, true).map_err(ReqError::invalid)
    }

    /// The Gemma chat template: `<bos>` then `<start_of_turn>{role}\n{text}<end_of_turn>\n` per
    /// turn (a system message is folded into the first user turn), then
    /// `<start_of_turn>model\n`. Only the template inserts control tokens.
    ///
    /// # Errors
    /// [`ReqError`] for an empty conversation or an unknown role.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, ReqError> {
        if messages.is_empty() {
            return Err(ReqError::param("messages", "messages must not be empty"));
        }
        let mut system = String::new();
        let mut ids = vec![self.bos];
        let mut turns = 0usize;
        for m in messages {
            let role = match m.role.as_str() {
                "system" | "developer" => {
                    if !system.is_empty() {
                        system.push_str("\n\n");
                    }
                    system.push_str(&m.content);
                    continue;
                }
                "user" => "user",
                "assistant" => "model",
                other => {
                    return Err(ReqError::param("messages", format!("unsupported role {other:?}")));
                }
            };
            let mut text = String::new();
            if role == "user" && !system.is_empty() {
                text.push_str(&std::mem::take(&mut system));
                text.push_str("\n\n");
            }
            text.push_str(&m.content);
            ids.push(self.start_turn);
            ids.extend(self.encode(&format!("{role}\n"))?);
            ids.extend(self.encode(&text)?);
            ids.push(self.end_turn);
            ids.extend(self.encode("\n")?);
            turns += 1;
        }
        if turns == 0 {
            return Err(ReqError::param("messages", "messages need at least one user turn"));
        }
        ids.push(self.start_turn);
        ids.extend(self.encode("model\n")?);
        Ok(ids)
    }

    fn is_stop(&self, id: u32) -> bool {
        id == self.eos || id == self.end_turn
    }
}

/// A loaded model.
pub(crate) enum Loaded {
    Bert { model: Box<BertModel>, tokenizer: Box<Tokenizer>, device: Device },
    Gemma { weights: Box<ModelWeights>, tokenizer: Box<GemmaTokenizer>, device: Device },
    Trained { model: Box<crate::train::Trained>, vocab: Vec<char> },
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Loaded::Bert { .. } => "Loaded::Bert",
            Loaded::Gemma { .. } => "Loaded::Gemma",
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
        match pkg.header.family {
            Family::Bert => {
                let cfg: BertConfig = serde_json::from_slice(&pkg.read("config.json")?)
                    .map_err(|e| RunError::InvalidWorkload(format!("config.json: {}", one_line(e))))?;
                let tokenizer = bert_tokenizer(&pkg.read("tokenizer.json")?)?;
                let vb =
                    VarBuilder::from_buffered_safetensors(pkg.read("model.safetensors")?, DType::F32, device)
                        .map_err(|e| {
                            RunError::InvalidWorkload(format!("model.safetensors: {}", one_line(e)))
                        })?;
                let model = BertModel::load(vb, &cfg)
                    .map_err(|e| RunError::InvalidWorkload(format!("BERT: {}", one_line(e))))?;
                Ok(Loaded::Bert {
                    model: Box::new(model),
                    tokenizer: Box::new(tokenizer),
                    device: device.clone(),
                })
            }
            Family::Gemma3 => {
                let mut r = pkg.reader("model.gguf")?;
                let ct = gguf_file::Content::read(&mut r)
                    .map_err(|e| RunError::InvalidWorkload(format!("GGUF: {}", one_line(e))))?;
                let arch = ct.metadata.get("general.architecture").and_then(|v| v.to_string().ok());
                if arch.map(String::as_str) != Some("gemma3") {
                    return Err(RunError::InvalidWorkload(format!(
                        "GGUF architecture {arch:?} is not gemma3"
                    )));
                }
                let tokenizer = GemmaTokenizer::from_gguf(&ct)?;
                let weights = ModelWeights::from_gguf(ct, &mut r, device)
                    .map_err(|e| RunError::InvalidWorkload(format!("Gemma 3 weights: {}", one_line(e))))?;
                Ok(Loaded::Gemma {
                    weights: Box::new(weights),
                    tokenizer: Box::new(tokenizer),
                    device: device.clone(),
                })
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
        let Loaded::Bert { model, tokenizer, device } = self else {
            return Ok(Err(ReqError::invalid("this model does not make embeddings")));
        };
        let ids = match tokenizer.encode_fast(text, true) {
            Ok(e) => e.get_ids().to_vec(),
            Err(e) => return Ok(Err(ReqError::invalid(e))),
        };
        if ids.len() > BERT_CONTEXT {
            return Ok(Err(ReqError::context(ids.len(), BERT_CONTEXT)));
        }
        let n = ids.len();
        let input = Tensor::new(ids.as_slice(), device).and_then(|t| t.unsqueeze(0)).map_err(engine)?;
        let types = input.zeros_like().map_err(engine)?;
        let out = model.forward(&input, &types, None).map_err(engine)?;
        let pooled = (out.sum(1).map_err(engine)? / n as f64).map_err(engine)?;
        let norm = pooled.sqr().and_then(|s| s.sum_keepdim(1)).and_then(|s| s.sqrt()).map_err(engine)?;
        let v = pooled
            .broadcast_div(&norm)
            .and_then(|t| t.squeeze(0))
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(engine)?;
        Ok(Ok((v, n)))
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
        let Loaded::Gemma { weights, tokenizer, device } = self else {
            return Ok(Err(ReqError::invalid("this model does not chat")));
        };
        let prompt = match tokenizer.chat_prompt(messages) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        if prompt.len() >= GEMMA_CONTEXT {
            return Ok(Err(ReqError::context(prompt.len(), GEMMA_CONTEXT)));
        }
        let room = GEMMA_CONTEXT.saturating_sub(prompt.len());
        let max_new = p.max_tokens.unwrap_or(room).min(room);
        let mut sampler = LogitsProcessor::from_sampling(p.seed, sampling(p));
        // A fresh KV cache per request: the clone shares the weights.
        let mut model = (**weights).clone();
        let mut ids: Vec<u32> = Vec::new();
        let mut finish = "length";
        let mut input = prompt.clone();
        let mut pos = 0usize;
        while ids.len() < max_new {
            let t = Tensor::new(input.as_slice(), device).and_then(|t| t.unsqueeze(0)).map_err(engine)?;
            let logits = model
                .forward(&t, pos)
                .and_then(|l| l.squeeze(0))
                .and_then(|l| l.to_dtype(DType::F32))
                .map_err(engine)?;
            pos = pos.saturating_add(input.len());
            let next = sampler.sample(&logits).map_err(engine)?;
            if tokenizer.is_stop(next) {
                finish = "stop";
                break;
            }
            ids.push(next);
            if !p.stop.is_empty()
                && let Some(g) =
                    stopped(tokenizer.decode(&ids).unwrap_or_default(), &ids, prompt.len(), &p.stop)
            {
                return Ok(Ok(g));
            }
            input = vec![next];
        }
        let text = match tokenizer.decode(&ids) {
            Ok(t) => t,
            Err(e) => return Ok(Err(e)),
        };
        Ok(Ok(Generation { text, ids, prompt_tokens: prompt.len(), finish }))
    }
}

/// The generation cut before its first stop sequence, if `text` has one.
fn stopped(text: String, ids: &[u32], prompt_tokens: usize, stop: &[String]) -> Option<Generation> {
    let cut = stop.iter().filter_map(|s| text.find(s.as_str())).min()?;
    Some(Generation { text: text[..cut].to_string(), ids: ids.to_vec(), prompt_tokens, finish: "stop" })
}

fn sampling(p: &GenParams) -> Sampling {
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
