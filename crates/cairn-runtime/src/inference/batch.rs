//! Generation as a state machine, run alone or with others: continuous batching.
//!
//! A [`Decoding`] holds one reply in progress: its sequence (caches), sampler, tokens and stop
//! rules. Alone, it is fed its prompt and then each token it picks. In a [`Batcher`], one thread
//! owns the model's decode loop: the prompts of requests that arrived since the last step share
//! a pass, then every active reply advances one token per step in a single batched pass.
//! Requests join and leave between steps. Because the engine gives each row the bits it gets alone ([`super::llm`]), a reply is
//! the same whether it ran alone or in any batch — an auditor re-runs it alone and compares.

use std::sync::Arc;
use std::sync::mpsc;

use candle_core::{Device, Tensor};
use candle_transformers::generation::LogitsProcessor;

use super::llm::{Llm, Sequence};
use super::models::{GenParams, Generation, sampling};
use super::request::ReqError;
use super::tokenize::ChatTokenizer;
use crate::{Result, RunError};

/// Most replies decoded together (and, where batching is not known to be bit-stable, one).
pub const MAX_BATCH: usize = 16;

/// Where a reply's tokens go as they are made (a provider's live stream).
pub type TokenFn = Arc<dyn Fn(&TokenEvent) + Send + Sync>;

/// One generated token, or the end of a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenEvent {
    /// A token and the text it completes (empty while a multi-byte character is unfinished).
    Token {
        /// The token id.
        id: u32,
        /// Text new since the previous event.
        delta: String,
    },
    /// The reply ended: `stop` or `length`.
    Done {
        /// Why.
        finish: &'static str,
    },
}

/// One reply in progress.
pub(crate) struct Decoding {
    seq: Sequence,
    sampler: LogitsProcessor,
    greedy: bool,
    prompt_len: usize,
    max_new: usize,
    stop: Vec<String>,
    ids: Vec<u32>,
    sent: String,
    finish: Option<&'static str>,
    cut: Option<usize>,
    on_token: Option<TokenFn>,
}

impl Decoding {
    /// A reply to `prompt`; `Err` for a prompt that does not fit the context.
    pub(crate) fn new(
        llm: &Llm,
        prompt_len: usize,
        p: &GenParams,
        on_token: Option<TokenFn>,
    ) -> std::result::Result<Self, ReqError> {
        let context = llm.cfg.context;
        if prompt_len >= context {
            return Err(ReqError::context(prompt_len, context));
        }
        let room = context - prompt_len;
        Ok(Decoding {
            seq: llm.sequence(),
            sampler: LogitsProcessor::from_sampling(p.seed, sampling(p)),
            greedy: p.temperature <= 0.0,
            prompt_len,
            max_new: p.max_tokens.unwrap_or(room).min(room),
            stop: p.stop.clone(),
            ids: Vec::new(),
            sent: String::new(),
            finish: if p.max_tokens == Some(0) { Some("length") } else { None },
            cut: None,
            on_token,
        })
    }

    fn done(&self) -> bool {
        self.finish.is_some()
    }

    fn last(&self) -> u32 {
        self.ids.last().copied().unwrap_or(0)
    }

    /// Take the logits after the latest token: pick the next one and apply the stop rules.
    fn accept(&mut self, row: Vec<f32>, tok: &ChatTokenizer) -> Result<()> {
        let next = if self.greedy {
            // Greedy: the first largest logit, without a tensor of the whole vocabulary.
            Llm::argmax(&row)
        } else {
            let n = row.len();
            let logits =
                Tensor::from_vec(row, n, &Device::Cpu).map_err(|e| RunError::Runtime(e.to_string()))?;
            self.sampler.sample(&logits).map_err(|e| RunError::Runtime(e.to_string()))?
        };
        if tok.is_stop(next) {
            self.end("stop");
            return Ok(());
        }
        self.ids.push(next);
        if self.on_token.is_some() || !self.stop.is_empty() {
            let text = tok.decode(&self.ids).unwrap_or_default();
            if let Some(cut) = self.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                self.cut = Some(cut);
                // Nothing of a stop sequence (or after it) reaches the stream.
                self.emit(next, text.get(..cut).unwrap_or(""));
                self.end("stop");
                return Ok(());
            }
            // Hold back what may be the start of a stop sequence, and unfinished characters.
            let hold = self
                .stop
                .iter()
                .flat_map(|s| (1..s.len()).filter(|k| s.is_char_boundary(*k)).map(move |k| &s[..k]))
                .filter(|pre| text.ends_with(pre))
                .map(str::len)
                .max()
                .unwrap_or(0);
            let mut upto = text.len() - hold;
            if text[..upto].ends_with('\u{fffd}') {
                upto = upto.saturating_sub('\u{fffd}'.len_utf8());
            }
            self.emit(next, text.get(..upto).unwrap_or(""));
        }
        if self.ids.len() >= self.max_new {
            self.end("length");
        }
        Ok(())
    }

    fn emit(&mut self, id: u32, shown: &str) {
        let Some(f) = &self.on_token else { return };
        let delta = if shown.len() >= self.sent.len() && shown.starts_with(self.sent.as_str()) {
            shown[self.sent.len()..].to_string()
        } else {
            String::new()
        };
        if !delta.is_empty() {
            self.sent = shown.to_string();
        }
        f(&TokenEvent::Token { id, delta });
    }

    fn end(&mut self, finish: &'static str) {
        self.finish = Some(finish);
        if let Some(f) = &self.on_token {
            f(&TokenEvent::Done { finish });
        }
    }

    /// The finished reply.
    fn result(self, tok: &ChatTokenizer) -> std::result::Result<Generation, ReqError> {
        let mut text = tok.decode(&self.ids)?;
        if let Some(cut) = self.cut {
            text.truncate(cut);
        }
        Ok(Generation {
            text,
            ids: self.ids,
            prompt_tokens: self.prompt_len,
            finish: self.finish.unwrap_or("length"),
        })
    }
}

/// Generate one reply alone.
pub(crate) fn generate(
    llm: &Llm,
    tok: &ChatTokenizer,
    prompt: &[u32],
    p: &GenParams,
    on_token: Option<TokenFn>,
) -> Result<std::result::Result<Generation, ReqError>> {
    let mut d = match Decoding::new(llm, prompt.len(), p, on_token) {
        Ok(d) => d,
        Err(e) => return Ok(Err(e)),
    };
    let mut input = prompt.to_vec();
    while !d.done() {
        let row = llm.forward(&mut [(&mut d.seq, input.as_slice())])?.pop().unwrap_or_default();
        d.accept(row, tok)?;
        input = vec![d.last()];
    }
    Ok(d.result(tok))
}

type Reply = mpsc::Sender<Result<std::result::Result<Generation, ReqError>>>;

struct Request {
    prompt: Vec<u32>,
    params: GenParams,
    on_token: Option<TokenFn>,
    reply: Reply,
}

/// What a decode loop has done.
#[derive(Debug, Default)]
pub struct BatchStats {
    /// Batched decode steps.
    pub steps: std::sync::atomic::AtomicU64,
    /// Tokens those steps made.
    pub tokens: std::sync::atomic::AtomicU64,
    /// The most replies decoded in one step.
    pub peak: std::sync::atomic::AtomicUsize,
    /// Passes that fed new prompts (several prompts arriving together share one).
    pub prompt_passes: std::sync::atomic::AtomicU64,
    /// Microseconds the loop spent in those passes (the rest of its busy time is decoding).
    pub prompt_micros: std::sync::atomic::AtomicU64,
}

/// A model's shared decode loop.
#[derive(Clone)]
pub(crate) struct Batcher {
    tx: mpsc::Sender<Request>,
    pub(crate) stats: Arc<BatchStats>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Batcher")
    }
}

impl Batcher {
    /// Start the loop for a loaded model (it ends when every handle is dropped).
    pub(crate) fn start(model: Arc<super::models::Loaded>) -> Self {
        let (tx, rx) = mpsc::channel::<Request>();
        let max = if super::llm::load::batch_invariant() { MAX_BATCH } else { 1 };
        let stats = Arc::new(BatchStats::default());
        let st = stats.clone();
        let spawned = std::thread::Builder::new().name("cairn-batcher".into()).spawn(move || {
            if let super::models::Loaded::Llm { llm, tokenizer } = &*model {
                run(llm, tokenizer, &rx, max, &st);
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the batcher thread");
        }
        Batcher { tx, stats }
    }

    /// Generate a reply in the shared loop (blocks until it is finished).
    pub(crate) fn generate(
        &self,
        prompt: Vec<u32>,
        params: GenParams,
        on_token: Option<TokenFn>,
    ) -> Result<std::result::Result<Generation, ReqError>> {
        let (reply, rx) = mpsc::channel();
        self.tx
            .send(Request { prompt, params, on_token, reply })
            .map_err(|_| RunError::Runtime("the model's decode loop has stopped".into()))?;
        rx.recv().map_err(|_| RunError::Runtime("the model's decode loop has stopped".into()))?
    }
}

struct Active {
    d: Decoding,
    reply: Reply,
}

/// Most prompt rows fed in one pass (prompts that arrive together share passes up to this).
const PROMPT_ROWS: usize = 512;

/// Several prompts in one pass, each reply taking its first token; where the pass fails, each
/// prompt again alone, so one request's failure is its own.
fn prompts(
    llm: &Llm,
    tok: &ChatTokenizer,
    mut group: Vec<(Decoding, Vec<u32>, Reply)>,
) -> Vec<(Decoding, Reply, Result<()>)> {
    let rows = {
        let mut batch: Vec<(&mut Sequence, &[u32])> =
            group.iter_mut().map(|(d, p, _)| (&mut d.seq, p.as_slice())).collect();
        llm.forward(&mut batch)
    };
    match rows {
        Ok(rows) if rows.len() == group.len() => group
            .into_iter()
            .zip(rows)
            .map(|((mut d, _, reply), row)| {
                let step = d.accept(row, tok);
                (d, reply, step)
            })
            .collect(),
        Err(e) if group.len() == 1 => {
            let (d, _, reply) = group.remove(0);
            vec![(d, reply, Err(e))]
        }
        _ => group
            .into_iter()
            .map(|(mut d, prompt, reply)| {
                d.seq = llm.sequence();
                let step = llm
                    .forward(&mut [(&mut d.seq, prompt.as_slice())])
                    .and_then(|mut rows| d.accept(rows.pop().unwrap_or_default(), tok));
                (d, reply, step)
            })
            .collect(),
    }
}

fn run(llm: &Llm, tok: &ChatTokenizer, rx: &mpsc::Receiver<Request>, max: usize, stats: &BatchStats) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut active: Vec<Active> = Vec::new();
    loop {
        // Admit new requests: wait when idle, otherwise take what has arrived.
        let mut joining: Vec<(Decoding, Vec<u32>, Reply)> = Vec::new();
        while active.len() + joining.len() < max {
            let next = if active.is_empty() && joining.is_empty() {
                match rx.recv() {
                    Ok(r) => r,
                    Err(_) => return,
                }
            } else {
                match rx.try_recv() {
                    Ok(r) => r,
                    Err(_) => break,
                }
            };
            let d = match Decoding::new(llm, next.prompt.len(), &next.params, next.on_token) {
                Ok(d) => d,
                Err(e) => {
                    let _ = next.reply.send(Ok(Err(e)));
                    continue;
                }
            };
            if d.done() {
                let _ = next.reply.send(Ok(d.result(tok)));
                continue;
            }
            joining.push((d, next.prompt, next.reply));
        }
        // Their prompts together, in passes of up to `PROMPT_ROWS` rows.
        let mut joining = joining.into_iter().peekable();
        while joining.peek().is_some() {
            let mut group = Vec::new();
            let mut rows = 0;
            while let Some(j) = joining.next_if(|j| group.is_empty() || rows + j.1.len() <= PROMPT_ROWS) {
                rows += j.1.len();
                group.push(j);
            }
            stats.prompt_passes.fetch_add(1, Relaxed);
            let started = std::time::Instant::now();
            let fed = prompts(llm, tok, group);
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            stats.prompt_micros.fetch_add(micros, Relaxed);
            for (d, reply, step) in fed {
                match step {
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                    Ok(()) if d.done() => {
                        let _ = reply.send(Ok(d.result(tok)));
                    }
                    Ok(()) => active.push(Active { d, reply }),
                }
            }
        }
        if active.is_empty() {
            continue;
        }
        // One token for every active reply, in one pass.
        stats.steps.fetch_add(1, Relaxed);
        stats.tokens.fetch_add(active.len() as u64, Relaxed);
        stats.peak.fetch_max(active.len(), Relaxed);
        let lasts: Vec<[u32; 1]> = active.iter().map(|a| [a.d.last()]).collect();
        let rows = {
            let mut batch: Vec<(&mut Sequence, &[u32])> =
                active.iter_mut().zip(&lasts).map(|(a, t)| (&mut a.d.seq, &t[..])).collect();
            llm.forward(&mut batch)
        };
        match rows {
            Err(e) => {
                for a in active.drain(..) {
                    let _ = a.reply.send(Err(RunError::Runtime(e.to_string())));
                }
            }
            Ok(rows) => {
                for (a, row) in active.iter_mut().zip(rows) {
                    if let Err(e) = a.d.accept(row, tok) {
                        a.d.finish = Some("error");
                        let _ = a.reply.send(Err(e));
                    }
                }
                let mut i = 0;
                while i < active.len() {
                    if active[i].d.done() {
                        let a = active.swap_remove(i);
                        if a.d.finish != Some("error") {
                            let _ = a.reply.send(Ok(a.d.result(tok)));
                        }
                    } else {
                        i += 1;
                    }
                }
            }
        }
    }
}
