//! Streamed chat completions. The request becomes a job as usual; as soon as a provider is
//! assigned, the gateway reads that provider's live stream (`/streams/{task}`), checks each
//! event's signature and hash chain, and relays the text to the client as OpenAI chunks while
//! the provider generates. When the task commits, the gateway fetches the committed result and
//! checks that it is what was streamed: the chain over the committed token ids must equal the
//! last signed chain. The final chunk says so (`cairn.stream.verified`); a provider that
//! committed other tokens than it signed is reported to the chain with the signed evidence
//! (`ReportStream`), which slashes it.
//!
//! If the stream breaks (the provider died), the task is re-run elsewhere with the same seed,
//! so the committed answer continues what was shown; the rest is sent from it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use cairn_state::model::TaskState;
use cairn_types::stream::{StreamEvent, chain_next, chain_of, chain_start};
use cairn_types::{Address, Hash32, JobId, ReportStream, TaskId, TxBody};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::warn;

use super::{ApiError, Gateway, now_secs};
use crate::catalog::ServedModel;

/// The longest stream frame read from a provider (an event is a few hundred bytes): a provider
/// that sends more without a frame break is dropped rather than buffered.
const MAX_FRAME: usize = 64 * 1024;

/// What the client has been shown, and the provider's signed word for it.
struct Shown {
    text: String,
    ids: Vec<u32>,
    chain: Hash32,
    /// The last verified event (the evidence, should the commitment differ).
    last: Option<StreamEvent>,
    /// Who signed it.
    last_by: Option<Address>,
    first_at: Option<Instant>,
}

pub(super) async fn chat(
    g: &Arc<Gateway>,
    m: ServedModel,
    body: &Value,
    include_usage: bool,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    // Errors up to here are plain HTTP errors; once the job exists, the stream carries them.
    let job = g.submit(&m, body).await?;
    let (tx, rx) = mpsc::channel::<Value>(256);
    let g2 = g.clone();
    // The request keeps its admission slot until its stream has ended.
    tokio::spawn(async move {
        relay(g2, m, job, tx, include_usage, started).await;
        drop(slot);
    });
    let events = futures::stream::unfold((rx, false), |(mut rx, done)| async move {
        if done {
            return None;
        }
        match rx.recv().await {
            Some(v) => Some((Ok::<_, Infallible>(SseEvent::default().data(v.to_string())), (rx, false))),
            None => Some((Ok(SseEvent::default().data("[DONE]")), (rx, true))),
        }
    });
    Ok(Sse::new(events).into_response())
}

/// The job's first task: its id, attempt and state.
async fn assignment(g: &Gateway, job: &JobId) -> Option<(TaskId, u32, TaskState)> {
    let v = crate::job::job_view(&g.client, job).await.ok()?;
    v.tasks.first().map(|t| (t.id, t.attempt, t.state.clone()))
}

async fn relay(
    g: Arc<Gateway>,
    m: ServedModel,
    job: JobId,
    tx: mpsc::Sender<Value>,
    include_usage: bool,
    started: Instant,
) {
    let id = format!("chatcmpl-{job}");
    let created = now_secs();
    let chunk = |delta: Value, finish: Value| {
        json!({ "id": id, "object": "chat.completion.chunk", "created": created, "model": m.name,
                "choices": [{ "index": 0, "delta": delta, "finish_reason": finish, "logprobs": null }] })
    };
    if !send(&tx, chunk(json!({ "role": "assistant", "content": "" }), Value::Null)).await {
        return;
    }
    let deadline = Instant::now() + g.timeout;
    let mut shown = Shown {
        text: String::new(),
        ids: Vec::new(),
        chain: Hash32::ZERO,
        last: None,
        last_by: None,
        first_at: None,
    };
    let mut streamed_from: Option<(Address, u32)> = None;
    // Follow the task: stream from each provider it is assigned to, until it commits.
    loop {
        if Instant::now() >= deadline {
            break;
        }
        if tx.is_closed() {
            return; // the client went away; the job settles on its own
        }
        match assignment(&g, &job).await {
            Some((task, attempt, TaskState::Assigned { provider, .. }))
                if streamed_from != Some((provider, attempt)) =>
            {
                if shown.ids.is_empty() {
                    shown.chain = chain_start(&task, 0);
                }
                let endpoint = match m.endpoint_of.get(&provider) {
                    Some(e) => Some(e.clone()),
                    None => crate::catalog::served_models(&g.client)
                        .await
                        .ok()
                        .and_then(|all| all.get(&m.id).and_then(|s| s.endpoint_of.get(&provider).cloned())),
                };
                let Some(endpoint) = endpoint else {
                    streamed_from = Some((provider, attempt));
                    continue;
                };
                match follow(&g, &endpoint, &task, &provider, &mut shown, &tx, &chunk, started).await {
                    Follow::Gone => return, // the client went away; the job settles on its own
                    Follow::Done => streamed_from = Some((provider, attempt)),
                    // The provider has not seen its assignment yet (or is restarting): ask again.
                    Follow::NotYet => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            Some((
                _,
                _,
                TaskState::Committed { .. } | TaskState::Settled { .. } | TaskState::Refunded { .. },
            ))
            | None => break,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    // The committed answer: what the client is owed, and the check of what it was shown.
    match g.wait_result(job, deadline).await {
        Err(e) => {
            let _ = send(&tx, json!({ "error": e.error })).await;
        }
        Ok(s) => {
            if let Some(e) = s.result.error.clone() {
                let _ = send(&tx, json!({ "error": e })).await;
                return;
            }
            let r = &s.result;
            g.metrics.tokens.inc_by(r.prompt_tokens.saturating_add(r.completion_tokens));
            let text = r.text.clone().unwrap_or_default();
            let ids = r.token_ids.clone().unwrap_or_default();
            let task = TaskId::derive(&job, 0);
            let verified = shown.ids.len() <= ids.len()
                && shown.ids[..] == ids[..shown.ids.len()]
                && shown.last.as_ref().is_none_or(|e| chain_of(&task, 0, &ids[..e.n as usize]) == e.chain);
            let mut reported = None;
            if !verified {
                g.metrics.stream_mismatch.inc();
                warn!(job = %job.short(), provider = %s.provider, evidence = ?shown.last, "the provider committed other tokens than it streamed and signed");
                // The chain slashes on the provider's own signature: report the signed point
                // with the committed tokens.
                if let Some(e) = shown.last.as_ref().filter(|_| shown.last_by == Some(s.provider)) {
                    reported = report(&g, &task, e, &ids).await;
                }
            }
            // The rest of the answer, from the commitment.
            if let Some(rest) = text.strip_prefix(shown.text.as_str()).filter(|r| !r.is_empty()) {
                if shown.first_at.is_none() {
                    g.metrics.first_token.observe(started.elapsed().as_secs_f64());
                }
                let _ = send(&tx, chunk(json!({ "content": rest }), Value::Null)).await;
            }
            let finish_reason = r.finish_reason.clone().unwrap_or_else(|| "stop".into());
            let mut last = chunk(json!({}), Value::String(finish_reason));
            let mut cairn = s.cairn();
            cairn["stream"] = json!({
                "tokens": shown.ids.len(), "verified": verified, "reported": reported,
                "first_token_ms": shown.first_at.map(|t| t.duration_since(started).as_millis() as u64),
            });
            last["cairn"] = cairn;
            let _ = send(&tx, last).await;
            if include_usage {
                let usage = json!({
                    "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                    "total_tokens": r.prompt_tokens.saturating_add(r.completion_tokens),
                });
                let _ = send(&tx, json!({ "id": id, "object": "chat.completion.chunk", "created": created, "model": m.name, "choices": [], "usage": usage })).await;
            }
        }
    }
}

/// Report a signed stream point that the commitment contradicts; the transaction's hash.
async fn report(g: &Gateway, task: &TaskId, e: &StreamEvent, committed: &[u32]) -> Option<String> {
    let body = TxBody::ReportStream(ReportStream {
        task: *task,
        index: e.index,
        n: e.n,
        chain: e.chain,
        last: e.finish.is_some(),
        sig: e.sig,
        tokens: committed.to_vec(),
    });
    match g.sender.submit(body).await {
        Ok(hash) => {
            warn!(task = %task.short(), tx = %hash, "reported the stream mismatch to the chain");
            Some(hash.to_string())
        }
        Err(e) => {
            warn!(task = %task.short(), error = %e, "could not report the stream mismatch");
            None
        }
    }
}

/// How long a client may leave its stream unread before it counts as gone (a client that
/// stops reading must not hold a relay and an admission slot for ever).
const STALL: Duration = Duration::from_secs(30);

/// Send a chunk to the client; false once the client has gone or stalled.
async fn send(tx: &mpsc::Sender<Value>, v: Value) -> bool {
    matches!(tokio::time::timeout(STALL, tx.send(v)).await, Ok(Ok(())))
}

/// How following a provider's stream ended.
enum Follow {
    /// The client has gone.
    Gone,
    /// The stream ended (or broke, or failed its checks): the commitment says the rest.
    Done,
    /// No stream to read yet.
    NotYet,
}

/// Read one provider's stream of `task`, verify it, and relay it.
#[allow(clippy::too_many_arguments)]
async fn follow(
    g: &Gateway,
    endpoint: &str,
    task: &TaskId,
    provider: &Address,
    shown: &mut Shown,
    tx: &mpsc::Sender<Value>,
    chunk: &impl Fn(Value, Value) -> Value,
    started: Instant,
) -> Follow {
    let url = format!("{}/streams/{task}", endpoint.trim_end_matches('/'));
    let Ok(mut resp) = g.http.get(&url).send().await else { return Follow::NotYet };
    if !resp.status().is_success() {
        return Follow::NotYet;
    }
    let mut buf = String::new();
    loop {
        let bytes = match resp.chunk().await {
            Ok(Some(b)) => b,
            _ => return Follow::Done,
        };
        buf.push_str(&String::from_utf8_lossy(&bytes));
        if buf.len() > MAX_FRAME {
            warn!(task = %task.short(), provider = %provider, "a stream frame past 64 KiB; stream dropped");
            return Follow::Done;
        }
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let data: String = frame
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect::<Vec<_>>()
                .join("\n");
            if data.is_empty() {
                continue;
            }
            if data == "[DONE]" {
                return Follow::Done;
            }
            let Ok(e) = serde_json::from_str::<StreamEvent>(&data) else { return Follow::Done };
            if e.index != 0 || e.verify(task, provider).is_err() {
                warn!(task = %task.short(), provider = %provider, "a stream event failed its signature; stream dropped");
                return Follow::Done;
            }
            let Some(tok) = e.id else {
                return Follow::Done; // the reply ended; the commitment follows
            };
            if (e.n as usize) <= shown.ids.len() {
                // Already shown (a re-run repeating the same seeded tokens): check and skip.
                if e.n == 0 || shown.ids.get(e.n as usize - 1) != Some(&tok) {
                    return Follow::Done;
                }
                continue;
            }
            let next = chain_next(&shown.chain, tok);
            if e.n as usize != shown.ids.len() + 1 || next != e.chain {
                warn!(task = %task.short(), provider = %provider, "a stream event does not extend the chain; stream dropped");
                return Follow::Done;
            }
            shown.ids.push(tok);
            shown.chain = next;
            shown.last = Some(e.clone());
            shown.last_by = Some(*provider);
            if !e.delta.is_empty() {
                if shown.first_at.is_none() {
                    let now = Instant::now();
                    shown.first_at = Some(now);
                    g.metrics.first_token.observe(now.duration_since(started).as_secs_f64());
                }
                shown.text.push_str(&e.delta);
                if !send(tx, chunk(json!({ "content": e.delta }), Value::Null)).await {
                    return Follow::Gone;
                }
            }
        }
    }
}
