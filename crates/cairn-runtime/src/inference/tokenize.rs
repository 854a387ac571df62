//! Chat tokenizers rebuilt from a GGUF file's own vocabulary, with each family's chat template.
//!
//! Control tokens (`<start_of_turn>`, `<|im_start|>`…) are never produced from text: only the
//! template inserts them, so a user cannot forge a turn by typing one.

use std::collections::{BTreeSet, HashMap};

use candle_core::quantized::gguf_file;
use tokenizers::Tokenizer;
use tokenizers::models::bpe::{BPE, Vocab};

use super::models::one_line;
use super::request::{ChatMessage, ReqError};
use crate::{Result, RunError};

fn tok_err(e: impl std::fmt::Display) -> RunError {
    RunError::InvalidWorkload(format!("tokenizer: {}", one_line(e)))
}

/// GGUF token type of a user-defined piece (matched whole in text).
const USER_DEFINED: i32 = 4;

/// The user-defined pieces `keep` accepts, as tokens matched whole (never split by the model).
fn atomic(tokens: &[String], types: &[i32], keep: impl Fn(&str) -> bool) -> Vec<tokenizers::AddedToken> {
    tokens
        .iter()
        .zip(types)
        .filter(|(s, t)| **t == USER_DEFINED && keep(s))
        .map(|(s, _)| tokenizers::AddedToken::from(s.clone(), false).normalized(false))
        .collect()
}

/// Ids of plain text: no special tokens added.
fn plain_ids(tok: &Tokenizer, text: &str) -> Result<Vec<u32>, ReqError> {
    Ok(tok.encode_fast(text, false).map_err(ReqError::invalid)?.get_ids().to_vec())
}

/// A chat model's tokenizer and template.
#[derive(Debug)]
pub enum ChatTokenizer {
    /// Gemma 3: SentencePiece, `<start_of_turn>` turns.
    Gemma(Box<GemmaTokenizer>),
    /// Qwen 2.5: byte-level BPE, ChatML turns.
    ChatMl(Box<ChatMlTokenizer>),
}

impl ChatTokenizer {
    /// The tokenizer a GGUF file's architecture uses.
    ///
    /// # Errors
    /// [`RunError::InvalidWorkload`] when the metadata is missing or of another kind.
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<Self> {
        let arch = ct.metadata.get("general.architecture").and_then(|v| v.to_string().ok()).cloned();
        match arch.as_deref() {
            Some("gemma3") => Ok(ChatTokenizer::Gemma(Box::new(GemmaTokenizer::from_gguf(ct)?))),
            Some("qwen2") => Ok(ChatTokenizer::ChatMl(Box::new(ChatMlTokenizer::from_gguf(ct)?))),
            other => Err(tok_err(format!("no chat tokenizer for architecture {other:?}"))),
        }
    }

    /// Token ids of plain text.
    ///
    /// # Errors
    /// [`ReqError`] if the tokenizer fails on it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ReqError> {
        match self {
            ChatTokenizer::Gemma(t) => t.encode(text),
            ChatTokenizer::ChatMl(t) => t.encode(text),
        }
    }

    /// Text of generated ids, control tokens left out.
    ///
    /// # Errors
    /// [`ReqError`] if an id is out of range.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ReqError> {
        match self {
            ChatTokenizer::Gemma(t) => t.decode(ids),
            ChatTokenizer::ChatMl(t) => t.decode(ids),
        }
    }

    /// The prompt of a conversation, as the model was trained to see it.
    ///
    /// # Errors
    /// [`ReqError`] for an empty conversation or an unknown role.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, ReqError> {
        match self {
            ChatTokenizer::Gemma(t) => t.chat_prompt(messages),
            ChatTokenizer::ChatMl(t) => t.chat_prompt(messages),
        }
    }

    /// Whether generating `id` ends the reply.
    pub fn is_stop(&self, id: u32) -> bool {
        match self {
            ChatTokenizer::Gemma(t) => t.is_stop(id),
            ChatTokenizer::ChatMl(t) => t.is_stop(id),
        }
    }
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
        // SentencePiece matches user-defined pieces after spaces became `▁`, so the GGUF's
        // space-run pieces ("  ", "   "…) never match text; only the others are atomic.
        tok.add_tokens(atomic(&tokens, &types, |s| !s.contains(' '))).map_err(tok_err)?;
        Ok(GemmaTokenizer { tok, bos, eos, start_turn, end_turn })
    }

    /// Token ids of plain text (no control tokens).
    ///
    /// # Errors
    /// [`ReqError`] if the tokenizer fails on it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ReqError> {
        plain_ids(&self.tok, text)
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

    pub(crate) fn is_stop(&self, id: u32) -> bool {
        id == self.eos || id == self.end_turn
    }
}

/// The split Qwen 2 applies before byte-level BPE (`tokenizer.ggml.pre = qwen2`): contractions,
/// letter runs with one leading non-letter, single digits, punctuation runs, newlines, spaces.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen's default system turn (its template adds it when a conversation has none).
const QWEN_SYSTEM: &str = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

/// Byte-level BPE (GPT-2 style, as Qwen 2.5 uses) over the GGUF's vocabulary and merges, with
/// the ChatML template.
#[derive(Debug)]
pub struct ChatMlTokenizer {
    tok: Tokenizer,
    im_start: u32,
    im_end: u32,
    stops: BTreeSet<u32>,
    control: BTreeSet<u32>,
}

impl ChatMlTokenizer {
    /// Rebuild from GGUF metadata.
    ///
    /// # Errors
    /// [`RunError::InvalidWorkload`] when the metadata is missing, of another pre-tokenizer, or
    /// inconsistent.
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<Self> {
        let get = |k: &str| ct.metadata.get(k).ok_or_else(|| tok_err(format!("GGUF has no {k}")));
        let model = get("tokenizer.ggml.model")?.to_string().map_err(tok_err)?.clone();
        let pre = ct.metadata.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).cloned();
        if model != "gpt2" || pre.as_deref() != Some("qwen2") {
            return Err(tok_err(format!("tokenizer {model:?} with pre-tokenizer {pre:?} is not Qwen 2's")));
        }
        let strings = |k: &str| -> Result<Vec<String>> {
            get(k)?
                .to_vec()
                .map_err(tok_err)?
                .iter()
                .map(|v| v.to_string().cloned().map_err(tok_err))
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let types: Vec<i32> = get("tokenizer.ggml.token_type")?
            .to_vec()
            .map_err(tok_err)?
            .iter()
            .map(|v| v.to_i32().map_err(tok_err))
            .collect::<Result<_>>()?;
        if tokens.len() != types.len() || tokens.is_empty() {
            return Err(tok_err("vocabulary and types differ in length"));
        }
        let merges: Vec<(String, String)> = strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| match m.split_once(' ') {
                Some((a, b)) => Ok((a.to_string(), b.to_string())),
                None => Err(tok_err(format!("merge {m:?} is not two pieces"))),
            })
            .collect::<Result<_>>()?;
        let index: HashMap<&str, u32> = tokens
            .iter()
            .enumerate()
            .filter_map(|(i, t)| Some((t.as_str(), u32::try_from(i).ok()?)))
            .collect();
        let find = |s: &str| index.get(s).copied().ok_or_else(|| tok_err(format!("no {s} token")));
        let im_start = find("<|im_start|>")?;
        let im_end = find("<|im_end|>")?;
        let mut stops = BTreeSet::from([im_end]);
        if let Ok(eos) = get("tokenizer.ggml.eos_token_id").and_then(|v| v.to_u32().map_err(tok_err)) {
            stops.insert(eos);
        }
        if let Ok(end) = find("<|endoftext|>") {
            stops.insert(end);
        }
        const NORMAL: i32 = 1;
        let control: BTreeSet<u32> = types
            .iter()
            .enumerate()
            .filter(|(_, t)| **t != NORMAL && **t != USER_DEFINED)
            .filter_map(|(i, _)| u32::try_from(i).ok())
            .collect();
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .filter_map(|(i, t)| Some((t.clone(), u32::try_from(i).ok()?)))
            .collect();
        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(tok_err)?;
        let mut tok = Tokenizer::new(bpe);
        tok.with_normalizer(Some(tokenizers::normalizers::unicode::NFC)).map_err(tok_err)?;
        let split = tokenizers::pre_tokenizers::split::Split::new(
            tokenizers::pre_tokenizers::split::SplitPattern::Regex(QWEN2_SPLIT.into()),
            tokenizers::SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(tok_err)?;
        let bytes = tokenizers::pre_tokenizers::byte_level::ByteLevel::new(false, false, false);
        tok.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::sequence::Sequence::new(vec![
            split.into(),
            bytes.into(),
        ])));
        tok.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
        // User-defined pieces (`<tool_call>`…) are matched whole, as the model was trained.
        tok.add_tokens(atomic(&tokens, &types, |_| true)).map_err(tok_err)?;
        Ok(ChatMlTokenizer { tok, im_start, im_end, stops, control })
    }

    /// Token ids of plain text (no control tokens).
    ///
    /// # Errors
    /// [`ReqError`] if the tokenizer fails on it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ReqError> {
        plain_ids(&self.tok, text)
    }

    /// Text of token ids, control tokens left out.
    ///
    /// # Errors
    /// [`ReqError`] if an id is out of range.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ReqError> {
        let kept: Vec<u32> = ids.iter().copied().filter(|i| !self.control.contains(i)).collect();
        self.tok.decode(&kept, false).map_err(ReqError::invalid)
    }

    /// ChatML: `<|im_start|>{role}\n{text}<|im_end|>\n` per turn, Qwen's default system turn
    /// first when the conversation has none, then `<|im_start|>assistant\n`.
    ///
    /// # Errors
    /// [`ReqError`] for an empty conversation or an unknown role.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, ReqError> {
        if messages.is_empty() {
            return Err(ReqError::param("messages", "messages must not be empty"));
        }
        let mut ids = Vec::new();
        let turn = |ids: &mut Vec<u32>, role: &str, text: &str| -> Result<(), ReqError> {
            ids.push(self.im_start);
            ids.extend(self.encode(&format!("{role}\n{text}"))?);
            ids.push(self.im_end);
            ids.extend(self.encode("\n")?);
            Ok(())
        };
        let first_is_system = matches!(messages[0].role.as_str(), "system" | "developer");
        if !first_is_system {
            turn(&mut ids, "system", QWEN_SYSTEM)?;
        }
        let mut users = 0usize;
        for m in messages {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => {
                    users += 1;
                    "user"
                }
                "assistant" => "assistant",
                other => return Err(ReqError::param("messages", format!("unsupported role {other:?}"))),
            };
            turn(&mut ids, role, &m.content)?;
        }
        if users == 0 {
            return Err(ReqError::param("messages", "messages need at least one user turn"));
        }
        ids.push(self.im_start);
        ids.extend(self.encode("assistant\n")?);
        Ok(ids)
    }

    pub(crate) fn is_stop(&self, id: u32) -> bool {
        self.stops.contains(&id)
    }
}
