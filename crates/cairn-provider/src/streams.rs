//! Live token streams of running inference tasks: `GET /streams/{task}` sends each reply's
//! tokens as server-sent events while the engine makes them, each event signed over the
//! reply's token hash chain ([`cairn_types::stream`]), then `[DONE]` when the task has run.
//!
//! A client may connect before the task starts (it waits) or after (it gets everything so
//! far, then follows). Streams are kept a while after their task ran, and at most
//! [`MAX_STREAMS`] at once.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Router, http::StatusCode};
use cairn_runtime::inference::batch::TokenEvent;
use cairn_types::stream::{MAX_STREAM_ENDS, StreamEvent, chain_next, chain_start};
use cairn_types::{Hash32, SecretKey, TaskId};
use tokio::sync::Notify;

/// Streams kept at once (the oldest finished ones go first).
pub(crate) const MAX_STREAMS: usize = 512;
/// How long a finished stream stays readable.
const KEEP: Duration = Duration::from_secs(600);

#[derive(Default)]
struct State_ {
    events: Vec<StreamEvent>,
    /// Per request: tokens so far and the chain over them.
    chains: BTreeMap<u64, (u64, Hash32)>,
    ended: Option<Instant>,
}

#[derive(Default)]
struct TaskStream {
    state: Mutex<State_>,
    notify: Notify,
}

/// The provider's live streams.
pub(crate) struct Streams {
    key: SecretKey,
    /// Sign a stream other than the reply (the `stream_lies` adversary).
    lie: bool,
    tasks: Mutex<BTreeMap<TaskId, Arc<TaskStream>>>,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Streams")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Streams {
    pub(crate) fn new(key: SecretKey, lie: bool) -> Self {
        Streams { key, lie, tasks: Mutex::new(BTreeMap::new()) }
    }

    fn stream(&self, task: &TaskId) -> Arc<TaskStream> {
        let mut tasks = lock(&self.tasks);
        if let Some(s) = tasks.get(task) {
            return s.clone();
        }
        // Make room: drop streams finished long ago, then the oldest finished ones.
        let now = Instant::now();
        tasks.retain(|_, s| lock(&s.state).ended.is_none_or(|t| now.duration_since(t) < KEEP));
        while tasks.len() >= MAX_STREAMS {
            let oldest = tasks
                .iter()
                .filter_map(|(id, s)| lock(&s.state).ended.map(|t| (t, *id)))
                .min()
                .map(|(_, id)| id)
                .or_else(|| tasks.keys().next().copied());
            match oldest {
                Some(id) => tasks.remove(&id),
                None => break,
            };
        }
        let s = Arc::new(TaskStream::default());
        tasks.insert(*task, s.clone());
        s
    }

    /// A token (or the end of a reply) made by the engine for request `index` of `task`.
    pub(crate) fn token(&self, task: &TaskId, index: u64, ev: &TokenEvent) {
        if index >= MAX_STREAM_ENDS as u64 {
            // Not covered by the commitment: not streamed.
            return;
        }
        let s = self.stream(task);
        {
            let mut st = lock(&s.state);
            let (n, chain) = st.chains.get(&index).copied().unwrap_or((0, chain_start(task, index)));
            let e = match ev {
                TokenEvent::Token { id, delta } => {
                    // An adversary behaviour for drills: the second token shown is not the one made.
                    let id = if self.lie && n == 1 { id ^ 1 } else { *id };
                    let id = &id;
                    let (n, chain) = (n + 1, chain_next(&chain, *id));
                    st.chains.insert(index, (n, chain));
                    let sig = self.key.sign(&StreamEvent::signed_bytes(task, index, n, &chain, false));
                    StreamEvent { index, n, id: Some(*id), delta: delta.clone(), finish: None, chain, sig }
                }
                TokenEvent::Done { finish } => {
                    let sig = self.key.sign(&StreamEvent::signed_bytes(task, index, n, &chain, true));
                    StreamEvent {
                        index,
                        n,
                        id: None,
                        delta: String::new(),
                        finish: Some((*finish).into()),
                        chain,
                        sig,
                    }
                }
            };
            st.events.push(e);
        }
        s.notify.notify_waiters();
    }

    /// A run of the task starts: forget the chains of any earlier try, so the new run's
    /// tokens are signed from the start (a deterministic re-run signs the same points again).
    pub(crate) fn begin_task(&self, task: &TaskId) {
        let s = self.stream(task);
        let mut st = lock(&s.state);
        // A follower keeps its place: the re-run's events past it are the same tokens.
        st.events.clear();
        st.chains.clear();
        st.ended = None;
    }

    /// The task has run (or failed here): its stream ends.
    pub(crate) fn end_task(&self, task: &TaskId) {
        let s = self.stream(task);
        lock(&s.state).ended = Some(Instant::now());
        s.notify.notify_waiters();
    }

    /// Whether the provider still knows the task's stream.
    fn known(&self, task: &TaskId) -> bool {
        lock(&self.tasks).contains_key(task)
    }
}

/// The stream routes.
pub(crate) fn router(streams: Arc<Streams>, assigned: Arc<dyn Fn(&TaskId) -> bool + Send + Sync>) -> Router {
    Router::new().route("/streams/{task}", get(sse)).with_state((streams, assigned))
}

type St = (Arc<Streams>, Arc<dyn Fn(&TaskId) -> bool + Send + Sync>);

async fn sse(State((streams, assigned)): State<St>, Path(task): Path<String>) -> Response {
    let Ok(task) = task.parse::<TaskId>() else {
        return (StatusCode::BAD_REQUEST, "not a task id").into_response();
    };
    // Only tasks this provider runs or ran: anyone else's id would pin memory for nothing.
    if !streams.known(&task) && !assigned(&task) {
        return (StatusCode::NOT_FOUND, "no such task here").into_response();
    }
    let s = streams.stream(&task);
    let body = futures::stream::unfold((s, 0usize, false), |(s, pos, done)| async move {
        if done {
            return None;
        }
        loop {
            let waker = s.clone();
            let notified = waker.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (batch, ended) = {
                let st = lock(&s.state);
                (st.events[pos.min(st.events.len())..].to_vec(), st.ended.is_some())
            };
            if !batch.is_empty() {
                let next = pos + batch.len();
                let events: Vec<Result<SseEvent, Infallible>> = batch
                    .iter()
                    .map(|e| Ok(SseEvent::default().data(serde_json::to_string(e).unwrap_or_default())))
                    .collect();
                return Some((futures::stream::iter(events), (s, next, false)));
            }
            if ended {
                let last: Vec<Result<SseEvent, Infallible>> = vec![Ok(SseEvent::default().data("[DONE]"))];
                return Some((futures::stream::iter(last), (s, pos, true)));
            }
            // Wait for more; the keep-alive below keeps idle connections open.
            let _ = tokio::time::timeout(Duration::from_secs(30), notified).await;
        }
    });
    Sse::new(futures::StreamExt::flatten(body)).keep_alive(KeepAlive::default()).into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use cairn_types::stream::{Judgement, chain_of, ends_of, judge};

    use super::*;

    const REPLY: [u32; 4] = [7, 8, 9, 10];

    fn run(s: &Streams, task: &TaskId, index: u64, ids: &[u32]) {
        s.begin_task(task);
        for id in ids {
            s.token(task, index, &TokenEvent::Token { id: *id, delta: format!("<{id}>") });
        }
        s.token(task, index, &TokenEvent::Done { finish: "stop" });
        s.end_task(task);
    }

    fn events(s: &Streams, task: &TaskId) -> Vec<StreamEvent> {
        lock(&s.stream(task).state).events.clone()
    }

    #[test]
    fn events_are_signed_points_of_the_reply_and_a_rerun_starts_afresh() {
        let key = SecretKey::from_seed([4; 32]);
        let s = Streams::new(key.clone(), false);
        let task = TaskId([1; 32]);
        run(&s, &task, 0, &REPLY);
        // A retry of the same task signs the same points, not a chain continued from the first try.
        run(&s, &task, 0, &REPLY);
        let ev = events(&s, &task);
        assert_eq!(ev.len(), REPLY.len() + 1);
        let end = &ends_of(&task, [Some(&REPLY[..])])[0];
        for e in &ev {
            e.verify(&task, &key.address()).unwrap();
            let j = judge(&task, 0, end, e.n, &e.chain, e.finish.is_some(), &REPLY);
            assert_eq!(j, Judgement::Consistent, "{e:?}");
        }
        assert_eq!(ev.last().unwrap().chain, chain_of(&task, 0, &REPLY));
        // Replies past the committed ones are not streamed.
        let other = TaskId([2; 32]);
        s.token(&other, MAX_STREAM_ENDS as u64, &TokenEvent::Token { id: 1, delta: "x".into() });
        assert!(events(&s, &other).is_empty());
    }

    #[test]
    fn a_lying_stream_is_judged_a_mismatch_against_the_honest_commitment() {
        let key = SecretKey::from_seed([5; 32]);
        let s = Streams::new(key.clone(), true);
        let task = TaskId([3; 32]);
        run(&s, &task, 0, &REPLY);
        let end = &ends_of(&task, [Some(&REPLY[..])])[0];
        let ev = events(&s, &task);
        let first = &ev[0];
        assert_eq!(judge(&task, 0, end, first.n, &first.chain, false, &REPLY), Judgement::Consistent);
        let second = &ev[1];
        second.verify(&task, &key.address()).unwrap();
        assert_eq!(judge(&task, 0, end, second.n, &second.chain, false, &REPLY), Judgement::Mismatch);
    }

    #[tokio::test]
    async fn the_stream_route_refuses_bad_and_unknown_task_ids_and_serves_known_ones() {
        let streams = Arc::new(Streams::new(SecretKey::from_seed([6; 32]), false));
        let task = TaskId([7; 32]);
        run(&streams, &task, 0, &REPLY[..2]);
        let app = router(streams, Arc::new(|_: &TaskId| false));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let get = |path: String| async move { reqwest::get(format!("http://{addr}{path}")).await.unwrap() };
        for bad in ["/streams/xyz", "/streams/%00%ff", &format!("/streams/{}", "a".repeat(10_000))] {
            let r = get(bad.to_string()).await;
            assert!(r.status().is_client_error(), "{bad}: {}", r.status());
        }
        let unknown = get(format!("/streams/{}", TaskId([8; 32]))).await;
        assert_eq!(unknown.status().as_u16(), 404);
        let body = get(format!("/streams/{task}")).await.text().await.unwrap();
        let data: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
        assert_eq!(data.len(), 4, "two tokens, the end, then [DONE]: {body}");
        assert_eq!(data[3], "[DONE]");
        let e: StreamEvent = serde_json::from_str(data[1]).unwrap();
        assert_eq!((e.n, e.id), (2, Some(8)));
    }
}
