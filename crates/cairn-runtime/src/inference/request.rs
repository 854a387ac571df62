//! Inference requests and results: OpenAI-shaped request bodies (one per JSONL line, optionally
//! wrapped as `{"custom_id", "body"}` like OpenAI's batch files), and the result lines a task
//! commits to.

use serde::{Deserialize, Deserializer, Serialize};

/// Why one request could not be served; the shape of OpenAI's error object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ReqError {
    /// Human-readable reason.
    pub message: String,
    /// OpenAI's error type (`invalid_request_error`).
    #[serde(rename = "type")]
    pub kind: String,
    /// The offending parameter.
    #[serde(default)]
    pub param: Option<String>,
    /// A stable code: `context_length_exceeded`, `unsupported_parameter`, `invalid_value`…
    #[serde(default)]
    pub code: Option<String>,
}

impl ReqError {
    /// A malformed request.
    pub fn invalid(msg: impl std::fmt::Display) -> Self {
        ReqError { message: msg.to_string(), kind: "invalid_request_error".into(), param: None, code: None }
    }
    /// A parameter with a bad value.
    pub fn param(param: &str, msg: impl std::fmt::Display) -> Self {
        ReqError { param: Some(param.into()), code: Some("invalid_value".into()), ..Self::invalid(msg) }
    }
    /// A parameter Cairn does not support.
    pub fn unsupported(param: &str) -> Self {
        ReqError {
            param: Some(param.into()),
            code: Some("unsupported_parameter".into()),
            ..Self::invalid(format!(
                "Unsupported parameter: '{param}' is not supported by this model on Cairn."
            ))
        }
    }
    /// Input longer than the model's context.
    pub fn context(tokens: usize, max: usize) -> Self {
        ReqError {
            param: Some("messages".into()),
            code: Some("context_length_exceeded".into()),
            ..Self::invalid(format!(
                "This model's maximum context length is {max} tokens. However, your input has {tokens} tokens."
            ))
        }
    }
}

/// A chat message; `content` may be a string or a list of text parts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `developer`, `user` or `assistant`.
    pub role: String,
    /// The text.
    #[serde(deserialize_with = "content_text")]
    pub content: String,
    /// Accepted and ignored (OpenAI's participant name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

fn content_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    struct Part {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        text: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Content {
        Text(String),
        Parts(Vec<Part>),
    }
    match Content::deserialize(d)? {
        Content::Text(s) => Ok(s),
        Content::Parts(parts) => {
            let mut out = String::new();
            for p in parts {
                match (p.kind.as_str(), p.text) {
                    ("text", Some(t)) => out.push_str(&t),
                    (k, _) => {
                        return Err(serde::de::Error::custom(format!(
                            "content part type {k:?} is not supported"
                        )));
                    }
                }
            }
            Ok(out)
        }
    }
}

/// A string or a list of strings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl OneOrMany {
    /// As a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// `POST /v1/embeddings`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingRequest {
    /// Text(s) to embed.
    pub input: OneOrMany,
    /// Model name or content id (the gateway resolves it; a task's model is its workload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `float` (default) or `base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_format: Option<String>,
    /// Not supported (the model's dimension is fixed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u64>,
    /// Accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// Inputs per embedding request.
pub const MAX_EMBEDDING_INPUTS: usize = 256;

impl EmbeddingRequest {
    /// Check the parameters.
    ///
    /// # Errors
    /// [`ReqError`] naming the first bad parameter.
    pub fn check(&self) -> Result<(), ReqError> {
        let inputs = self.input.to_vec();
        if inputs.is_empty() || inputs.len() > MAX_EMBEDDING_INPUTS {
            return Err(ReqError::param(
                "input",
                format!("input must hold 1..={MAX_EMBEDDING_INPUTS} strings"),
            ));
        }
        if inputs.iter().any(String::is_empty) {
            return Err(ReqError::param("input", "input strings must not be empty"));
        }
        if self.dimensions.is_some() {
            return Err(ReqError::unsupported("dimensions"));
        }
        match self.encoding_format.as_deref() {
            None | Some("float" | "base64") => Ok(()),
            Some(other) => Err(ReqError::param(
                "encoding_format",
                format!("encoding_format {other:?} must be float or base64"),
            )),
        }
    }
}

/// `POST /v1/chat/completions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Model name or content id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Most tokens to generate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// The newer name of `max_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u64>,
    /// 0 (greedy) to 2; default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass, (0, 1]; default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Sampling seed; without it the task's seed decides (still reproducible by auditors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Up to 4 stop sequences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<OneOrMany>,
    /// Server-sent events (the gateway's concern; ignored in batch lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Accepted for compatibility (`include_usage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<serde_json::Value>,
    /// Must be 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u64>,
    /// Accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Must be 0 when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    /// Must be 0 when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    /// Not supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    /// Not supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<serde_json::Value>,
    /// Not supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<serde_json::Value>,
    /// Not supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_bias: Option<serde_json::Value>,
    /// Only `{"type": "text"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<serde_json::Value>,
}

impl ChatRequest {
    /// Most tokens to generate, if limited.
    pub fn max_new_tokens(&self) -> Option<u64> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// Check the parameters.
    ///
    /// # Errors
    /// [`ReqError`] naming the first bad parameter.
    pub fn check(&self) -> Result<(), ReqError> {
        if self.messages.is_empty() {
            return Err(ReqError::param("messages", "messages must not be empty"));
        }
        for m in &self.messages {
            if !matches!(m.role.as_str(), "system" | "developer" | "user" | "assistant") {
                return Err(ReqError::param("messages", format!("unsupported role {:?}", m.role)));
            }
        }
        if self.max_new_tokens() == Some(0) {
            return Err(ReqError::param("max_tokens", "max_tokens must be at least 1"));
        }
        if let Some(t) = self.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(ReqError::param("temperature", "temperature must be between 0 and 2"));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(ReqError::param("top_p", "top_p must be in (0, 1]"));
        }
        if let Some(n) = self.n
            && n != 1
        {
            return Err(ReqError::unsupported("n"));
        }
        if self.stop.as_ref().is_some_and(|s| s.to_vec().len() > 4 || s.to_vec().iter().any(String::is_empty))
        {
            return Err(ReqError::param("stop", "stop takes up to 4 non-empty sequences"));
        }
        for (name, v) in
            [("frequency_penalty", self.frequency_penalty), ("presence_penalty", self.presence_penalty)]
        {
            if v.is_some_and(|v| v != 0.0) {
                return Err(ReqError::unsupported(name));
            }
        }
        if self.logprobs == Some(true) {
            return Err(ReqError::unsupported("logprobs"));
        }
        if self.tools.is_some() || self.tool_choice.is_some() {
            return Err(ReqError::unsupported("tools"));
        }
        if self.logit_bias.as_ref().is_some_and(|b| b.as_object().is_none_or(|o| !o.is_empty())) {
            return Err(ReqError::unsupported("logit_bias"));
        }
        if let Some(f) = &self.response_format
            && f.get("type").and_then(|t| t.as_str()) != Some("text")
        {
            return Err(ReqError::unsupported("response_format"));
        }
        Ok(())
    }
}

/// A request line of a batch file: a bare body, or `{"custom_id", "body"}`.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestLine {
    /// The caller's id, echoed in the result.
    pub custom_id: Option<String>,
    /// The body.
    pub body: serde_json::Value,
}

/// Largest request line.
pub const MAX_LINE_BYTES: usize = 256 * 1024;

impl RequestLine {
    /// Parse one line.
    ///
    /// # Errors
    /// [`ReqError`] if it is not a JSON object.
    pub fn parse(line: &str) -> Result<Self, ReqError> {
        if line.len() > MAX_LINE_BYTES {
            return Err(ReqError::invalid(format!("request line is over {MAX_LINE_BYTES} bytes")));
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| ReqError::invalid(format!("not JSON: {e}")))?;
        let Some(obj) = v.as_object() else {
            return Err(ReqError::invalid("a request must be a JSON object"));
        };
        if let Some(body) = obj.get("body") {
            let custom_id = match obj.get("custom_id") {
                None => None,
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(_) => return Err(ReqError::param("custom_id", "custom_id must be a string")),
            };
            if !body.is_object() {
                return Err(ReqError::param("body", "body must be an object"));
            }
            return Ok(RequestLine { custom_id, body: body.clone() });
        }
        Ok(RequestLine { custom_id: None, body: v })
    }

    /// The body as an embedding request, checked.
    ///
    /// # Errors
    /// [`ReqError`] for unknown fields, wrong types or bad values.
    pub fn embedding(&self) -> Result<EmbeddingRequest, ReqError> {
        let r: EmbeddingRequest = parse_body(&self.body)?;
        r.check()?;
        Ok(r)
    }

    /// The body as a chat request, checked.
    ///
    /// # Errors
    /// As [`embedding`](Self::embedding).
    pub fn chat(&self) -> Result<ChatRequest, ReqError> {
        let r: ChatRequest = parse_body(&self.body)?;
        r.check()?;
        Ok(r)
    }
}

/// Read a request body, naming the parameter at fault when a value has the wrong type or range.
fn parse_body<T: serde::de::DeserializeOwned>(body: &serde_json::Value) -> Result<T, ReqError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let field = e.path().iter().next().map(|s| s.to_string()).filter(|f| !f.is_empty() && f != "?");
        let inner = e.into_inner();
        let base = body_error(inner);
        match field {
            Some(f) if base.param.is_none() => {
                let what = base.message.trim_start_matches("invalid request body: ");
                let what = what
                    .replace("expected u64", "expected a non-negative integer")
                    .replace("expected u32", "expected a non-negative integer")
                    .replace("expected f64", "expected a number");
                ReqError::param(&f, format!("Invalid value for '{f}': {what}."))
            }
            _ => base,
        }
    })
}

/// A serde error on a request body, as OpenAI words it.
pub fn body_error(e: serde_json::Error) -> ReqError {
    let msg = e.to_string();
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or("");
        return ReqError {
            param: Some(field.to_string()),
            code: Some("unknown_parameter".into()),
            ..ReqError::invalid(format!("Unrecognized request argument supplied: {field}"))
        };
    }
    if let Some(rest) = msg.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or("");
        return ReqError::param(field, format!("Missing required parameter: '{field}'."));
    }
    ReqError::invalid(format!("invalid request body: {msg}"))
}

/// One line of `results.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultLine {
    /// The request's position in the job's request file (0-based, across tasks).
    pub index: u64,
    /// Echoed from the request line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_id: Option<String>,
    /// One vector per input (embeddings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embeddings: Option<Vec<Vec<f32>>>,
    /// The reply (chat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The reply's token ids (chat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
    /// `stop` or `length` (chat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// Input tokens.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Generated tokens.
    #[serde(default)]
    pub completion_tokens: u64,
    /// BLAKE3 of the raw result (f32 bits or token ids): what auditors compare.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commitment: Option<String>,
    /// Why the request was not served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ReqError>,
}

impl ResultLine {
    /// An error result.
    pub fn failed(index: u64, custom_id: Option<String>, error: ReqError) -> Self {
        ResultLine {
            index,
            custom_id,
            embeddings: None,
            text: None,
            token_ids: None,
            finish_reason: None,
            prompt_tokens: 0,
            completion_tokens: 0,
            commitment: None,
            error: Some(error),
        }
    }
}

/// The commitment to embeddings: BLAKE3 over the vectors' f32 bits.
pub fn commit_embeddings(vs: &[Vec<f32>]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"cairn embeddings v1");
    h.update(&(vs.len() as u64).to_le_bytes());
    for v in vs {
        h.update(&(v.len() as u64).to_le_bytes());
        for x in v {
            h.update(&x.to_bits().to_le_bytes());
        }
    }
    h.finalize().to_hex().to_string()
}

/// The commitment to generated tokens.
pub fn commit_tokens(ids: &[u32]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"cairn tokens v1");
    h.update(&(ids.len() as u64).to_le_bytes());
    for id in ids {
        h.update(&id.to_le_bytes());
    }
    h.finalize().to_hex().to_string()
}

/// Parse `results.jsonl`.
///
/// # Errors
/// [`ReqError`] naming the first bad line.
pub fn parse_results(text: &str) -> Result<Vec<ResultLine>, ReqError> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| ReqError::invalid(format!("result line {}: {e}", i + 1)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_bad_value_names_its_parameter_in_plain_words() {
        let e = chat(r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        assert!(e.message.contains("non-negative integer"), "{}", e.message);
        assert!(!e.message.contains("u64"), "{}", e.message);
        let e =
            chat(r#"{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let e = chat(r#"{"messages": [{"role": "user", "content": 5}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
    }

    fn chat(body: &str) -> Result<ChatRequest, ReqError> {
        RequestLine::parse(body)?.chat()
    }

    #[test]
    fn chat_requests_accept_openai_shapes() {
        let r = chat(r#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],"max_completion_tokens":5,"stop":"x","stream":true,"stream_options":{"include_usage":true},"response_format":{"type":"text"}}"#).unwrap();
        assert_eq!(r.messages[1].content, "ab");
        assert_eq!(r.max_new_tokens(), Some(5));
    }

    #[test]
    fn bad_chat_parameters_name_the_parameter() {
        let code = |b: &str| chat(b).unwrap_err();
        let e = code(r#"{"messages":[{"role":"user","content":"x"}],"temperature":3}"#);
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let e = code(r#"{"messages":[{"role":"user","content":"x"}],"tools":[]}"#);
        assert_eq!(e.code.as_deref(), Some("unsupported_parameter"));
        let e = code(r#"{"messages":[{"role":"user","content":"x"}],"colour":1}"#);
        assert_eq!((e.code.as_deref(), e.param.as_deref()), (Some("unknown_parameter"), Some("colour")));
        let e = code(r#"{"messages":[{"role":"tool","content":"x"}]}"#);
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = code(r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]}"#);
        assert!(e.message.contains("not supported"), "{e:?}");
        let e = code(r#"{"model":"m"}"#);
        assert_eq!(e.param.as_deref(), Some("messages"));
        assert!(code("[1]").message.contains("JSON object"));
    }

    #[test]
    fn embedding_requests_take_one_or_many_inputs() {
        let one = RequestLine::parse(r#"{"input":"a"}"#).unwrap().embedding().unwrap();
        assert_eq!(one.input.to_vec(), ["a"]);
        let wrapped = RequestLine::parse(r#"{"custom_id":"c","body":{"input":["a","b"]}}"#).unwrap();
        assert_eq!(wrapped.custom_id.as_deref(), Some("c"));
        assert_eq!(wrapped.embedding().unwrap().input.to_vec().len(), 2);
        assert!(RequestLine::parse(r#"{"input":[]}"#).unwrap().embedding().is_err());
        assert!(RequestLine::parse(r#"{"input":"a","encoding_format":"hex"}"#).unwrap().embedding().is_err());
        assert!(RequestLine::parse(r#"{"custom_id":7,"body":{"input":"a"}}"#).is_err());
    }

    #[test]
    fn commitments_change_with_any_bit() {
        let a = commit_embeddings(&[vec![0.5, -0.25]]);
        assert_eq!(a, commit_embeddings(&[vec![0.5, -0.25]]));
        assert_ne!(a, commit_embeddings(&[vec![0.5, -0.250_000_03]]));
        assert_ne!(commit_tokens(&[1, 2]), commit_tokens(&[2, 1]));
    }
}
