//! The node's HTTP API: JSON under `/api/`, a WebSocket event stream at `/api/events`,
//! Prometheus metrics at `/metrics` and an OpenAPI document at `/api/openapi.json`.
//!
//! Every error is JSON: `{"error": {"code": "<stable_snake_case>", "message": "..."}}`.

use std::sync::Arc;

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cairn_types::api::StatusView;
use cairn_types::{Address, Canonical, JobId, TaskId, Tx, TxHash};
use commonware_consensus::types::Height;
use serde::Deserialize;
use serde_json::{Value, json};

mod deals;
mod leases;
mod work;

use crate::block::{CairnBlock, digest_bytes};
use crate::engine::Marshal;
use crate::node::{NodeEvent, NodeShared};

/// The OpenAPI document served at `/api/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Largest request body (a transaction is at most 128 KiB; hex doubles it).
const MAX_BODY: usize = 512 * 1024;

/// What handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// Node state.
    pub shared: Arc<NodeShared>,
    /// Finalized blocks.
    pub marshal: Marshal,
    /// Prometheus text of every metric.
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiState")
    }
}

/// An API error with a stable code.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }
    fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }
    fn not_ready() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the node is still loading its state; retry shortly",
        )
    }
    fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": { "code": self.code, "message": self.message } })))
            .into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => {
                ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", r.body_text())
            }
            _ if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", r.body_text())
            }
            _ => ApiError::bad("malformed_json", r.body_text()),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", r.body_text())
        } else {
            ApiError::bad("malformed_body", r.body_text())
        }
    }
}

impl From<WebSocketUpgradeRejection> for ApiError {
    fn from(r: WebSocketUpgradeRejection) -> Self {
        ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "websocket_required",
            format!("/api/events is a WebSocket stream: {}", r.body_text()),
        )
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::bad("bad_path", r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::bad("bad_query", r.body_text())
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/status", get(status))
        .route("/api/params", get(params))
        .route("/api/txs", post(submit_tx))
        .route("/api/txs/batch", post(submit_batch))
        .route("/api/txs/{hash}", get(tx_status))
        .route("/api/simulate", post(simulate))
        .route("/api/accounts/{address}", get(account))
        .route("/api/providers", get(providers))
        .route("/api/providers/{address}", get(provider))
        .route("/api/tasks", get(open_tasks))
        .route("/api/jobs/{id}", get(job))
        .route("/api/tasks/{id}", get(task))
        .route("/api/blocks/latest", get(latest_block))
        .route("/api/blocks/{height}", get(block))
        .route("/api/blocks/{height}/receipts", get(receipts))
        .route("/api/proofs/{key}", get(proof))
        .route("/api/evidence", get(evidence))
        .route("/api/events", get(events))
        .route("/api/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .merge(leases::routes())
        .merge(deals::routes())
        .merge(work::routes())
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_route", "no such route; see /api/openapi.json")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

fn status_view(s: &NodeShared) -> StatusView {
    let st = s.status.read().unwrap_or_else(|p| p.into_inner()).clone();
    let mempool = s.mempool.lock().unwrap_or_else(|p| p.into_inner()).len();
    StatusView {
        chain_id: s.chain_id.clone(),
        height: st.height,
        state_root: st.state_root,
        block: st.block,
        ready: s.ready(),
        mempool,
        txs_finalized: st.txs_finalized,
    }
}

async fn params(State(st): State<ApiState>) -> Json<Value> {
    Json(json!({ "chain_id": st.shared.chain_id, "params": st.shared.genesis.params }))
}

async fn status(State(st): State<ApiState>) -> Json<StatusView> {
    Json(status_view(&st.shared))
}

/// `POST /api/txs` body: a canonical transaction, hex-encoded.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    tx: String,
}

fn decode_tx(hex_tx: &str) -> ApiResult<Tx> {
    let bytes = hex::decode(hex_tx.trim()).map_err(|_| ApiError::bad("malformed_tx", "tx must be hex"))?;
    Tx::decode(&bytes).map_err(|e| ApiError::bad("malformed_tx", e.to_string()))
}

fn accept(shared: &NodeShared, tx: Tx) -> ApiResult<TxHash> {
    if !shared.ready() {
        return Err(ApiError::not_ready());
    }
    shared.submit_from_client(tx).map_err(|e| {
        let status = match e {
            crate::mempool::MempoolError::PoolFull | crate::mempool::MempoolError::SenderFull(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.code(), e.to_string())
    })
}

async fn submit_tx(
    State(st): State<ApiState>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let body = body?;
    let octets = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/octet-stream"));
    let tx = if octets {
        Tx::decode(&body).map_err(|e| ApiError::bad("malformed_tx", e.to_string()))?
    } else {
        let parsed: SubmitBody =
            serde_json::from_slice(&body).map_err(|e| ApiError::bad("malformed_json", e.to_string()))?;
        decode_tx(&parsed.tx)?
    };
    let hash = accept(&st.shared, tx)?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "hash": hash }))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    txs: Vec<String>,
}

/// Accepts up to 1,000 transactions; each gets its own result.
async fn submit_batch(
    State(st): State<ApiState>,
    body: Result<Json<BatchBody>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(body) = body?;
    if body.txs.len() > 1_000 {
        return Err(ApiError::bad("batch_too_large", "at most 1000 transactions per batch"));
    }
    let results: Vec<Value> = body
        .txs
        .iter()
        .map(|t| match decode_tx(t).and_then(|tx| accept(&st.shared, tx)) {
            Ok(h) => json!({ "hash": h }),
            Err(e) => json!({ "error": { "code": e.code, "message": e.message } }),
        })
        .collect();
    Ok(Json(json!({ "results": results })))
}

fn parse<T: std::str::FromStr>(what: &'static str, s: &str) -> ApiResult<T> {
    s.parse().map_err(|_| ApiError::bad("bad_id", format!("invalid {what}: {s:?}")))
}

async fn tx_status(
    State(st): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let Path(h) = path?;
    let hash: TxHash = parse("transaction hash", &h)?;
    if let Some((height, index, receipt)) =
        st.shared.receipts.read().unwrap_or_else(|p| p.into_inner()).tx(&hash)
    {
        return Ok(Json(
            json!({ "hash": hash, "status": "committed", "height": height, "index": index, "receipt": receipt }),
        ));
    }
    if st.shared.mempool.lock().unwrap_or_else(|p| p.into_inner()).contains(&hash) {
        return Ok(Json(json!({ "hash": hash, "status": "pending" })));
    }
    Err(ApiError::not_found("transaction"))
}

async fn simulate(
    State(st): State<ApiState>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(body) = body?;
    let tx = decode_tx(
        body.get("tx")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad("malformed_json", "expected {\"tx\": \"<hex>\"}"))?,
    )?;
    if !st.shared.ready() {
        return Err(ApiError::not_ready());
    }
    let mirror = st.shared.mirror.read().unwrap_or_else(|p| p.into_inner());
    let (receipt, writes) = cairn_state::simulate(&*mirror, &tx).map_err(ApiError::internal)?;
    Ok(Json(json!({ "receipt": receipt, "writes": writes.len() })))
}

fn ready(st: &ApiState) -> ApiResult<()> {
    if st.shared.ready() { Ok(()) } else { Err(ApiError::not_ready()) }
}

async fn account(
    State(st): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let address = address_param(path)?;
    ready(&st)?;
    let (acct, stake) = st
        .shared
        .read(|s| Ok::<_, cairn_state::Error>((s.account(&address)?, s.stake(&address)?)))
        .map_err(ApiError::internal)?;
    let next_nonce = st
        .shared
        .mempool
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .next_nonce(&address, crate::mempool::AccountView { nonce: acct.nonce, balance: acct.balance });
    Ok(Json(
        json!({ "address": address, "balance": acct.balance, "nonce": acct.nonce, "next_nonce": next_nonce, "stake": stake }),
    ))
}

async fn providers(State(st): State<ApiState>) -> ApiResult<Json<Value>> {
    ready(&st)?;
    let list = st.shared.read(|s| s.providers()).map_err(ApiError::internal)?;
    Ok(Json(json!({ "providers": list })))
}

async fn provider(
    State(st): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let address = address_param(path)?;
    ready(&st)?;
    let p = st
        .shared
        .read(|s| s.provider(&address))
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found("provider"))?;
    let stake = st.shared.read(|s| s.stake(&address)).map_err(ApiError::internal)?;
    Ok(Json(json!({ "provider": p, "stake": stake })))
}

/// Tasks assigned to a provider and not yet committed: what it must run.
/// The `{address}` of a route.
fn address_param(path: Result<Path<String>, PathRejection>) -> ApiResult<Address> {
    let Path(a) = path?;
    a.parse().map_err(|e: cairn_types::Error| ApiError::bad("bad_address", e.to_string()))
}

/// Query of `GET /api/tasks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskQuery {
    /// Only `open` is supported: tasks collecting bids.
    state: String,
}

async fn open_tasks(
    State(st): State<ApiState>,
    query: Result<Query<TaskQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    use cairn_state::model::TaskState;
    let Query(q) = query?;
    if q.state != "open" {
        return Err(ApiError::bad("bad_query", "state must be \"open\""));
    }
    ready(&st)?;
    let tasks = st.shared.tasks_where(|t| matches!(t.state, TaskState::Open { .. }), 10_000);
    Ok(Json(json!({ "tasks": tasks })))
}

async fn job(
    State(st): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let Path(j) = path?;
    let id: JobId = parse("job id", &j)?;
    ready(&st)?;
    let out = st
        .shared
        .read(|s| -> Result<Option<Value>, cairn_state::Error> {
            let Some(job) = s.job(&id)? else { return Ok(None) };
            let spec = s.job_spec(&id)?;
            let tasks = s.tasks(&job)?;
            let escrow = s.escrow(&id)?;
            Ok(Some(json!({ "job": job, "spec": spec, "escrow": escrow, "tasks": tasks })))
        })
        .map_err(ApiError::internal)?;
    out.map(Json).ok_or_else(|| ApiError::not_found("job"))
}

async fn task(
    State(st): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let Path(t) = path?;
    let id: TaskId = parse("task id", &t)?;
    ready(&st)?;
    let task = st
        .shared
        .read(|s| s.task(&id))
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found("task"))?;
    // A random audit or dispute in progress (canaries are not shown).
    let audit = st.shared.read(|s| s.audit(&id)).map_err(ApiError::internal)?.map(|a| {
        json!({ "kind": a.kind, "auditors": a.auditors, "answered": a.verdicts.iter().filter(|v| v.is_some()).count(), "due": a.due, "challenger": a.challenger.map(|c| c.0) })
    });
    Ok(Json(json!({ "task": task, "audit": audit })))
}

fn block_json(b: &CairnBlock, digest: [u8; 32]) -> Value {
    let txs: Vec<Value> = b
        .txs
        .iter()
        .map(|t| json!({ "hash": t.hash(), "sender": t.sender, "nonce": t.nonce, "fee": t.fee, "type": t.body.name() }))
        .collect();
    json!({
        "height": b.height.get(),
        "digest": hex::encode(digest),
        "parent": hex::encode(digest_bytes(&b.parent)),
        "state_root": hex::encode(digest_bytes(&b.state_root)),
        "view": b.context.round.view().get(),
        "proposer": Address(crate::block::public_key_bytes(&b.context.leader)),
        "txs": txs,
    })
}

async fn block_at(st: &ApiState, height: u64) -> ApiResult<Json<Value>> {
    let b = st.marshal.get_block(Height::new(height)).await.ok_or_else(|| ApiError::not_found("block"))?;
    use commonware_cryptography::Digestible as _;
    Ok(Json(block_json(b.inner(), digest_bytes(&b.digest()))))
}

async fn latest_block(State(st): State<ApiState>) -> ApiResult<Json<Value>> {
    let h = st.shared.status.read().unwrap_or_else(|p| p.into_inner()).height;
    block_at(&st, h).await
}

async fn block(State(st): State<ApiState>, path: Result<Path<u64>, PathRejection>) -> ApiResult<Json<Value>> {
    let Path(h) = path?;
    block_at(&st, h).await
}

async fn receipts(
    State(st): State<ApiState>,
    path: Result<Path<u64>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let Path(h) = path?;
    let r = st
        .shared
        .receipts
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .block(h)
        .ok_or_else(|| ApiError::not_found("receipts"))?;
    Ok(Json(json!({ "height": h, "receipts": *r })))
}

async fn proof(
    State(st): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let Path(k) = path?;
    let key = hex::decode(&k).map_err(|_| ApiError::bad("bad_key", "key must be hex"))?;
    if key.is_empty() || key.len() > 256 {
        return Err(ApiError::bad("bad_key", "key must be 1..=256 bytes"));
    }
    let source = st.shared.proofs.get().cloned().ok_or_else(ApiError::not_ready)?;
    let p = source.prove(key).await.map_err(ApiError::internal)?;
    Ok(Json(serde_json::to_value(p).map_err(ApiError::internal)?))
}

async fn evidence(State(st): State<ApiState>) -> Json<Value> {
    let list = st.shared.evidence.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Json(json!({ "evidence": list }))
}

/// Event stream filter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventFilter {
    /// Only events of this job (and block events).
    job: Option<String>,
}

async fn events(
    State(st): State<ApiState>,
    query: Result<Query<EventFilter>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let Query(filter) = query?;
    let ws = ws?;
    let job = match filter.job {
        Some(j) => Some(parse::<JobId>("job id", &j)?),
        None => None,
    };
    let rx = st.shared.events.subscribe();
    Ok(ws.on_upgrade(move |socket| stream_events(socket, rx, job)))
}

fn event_job(e: &cairn_types::Event) -> Option<JobId> {
    use cairn_types::Event::*;
    match e {
        JobSubmitted { job, .. }
        | TaskOpened { job, .. }
        | TaskAssigned { job, .. }
        | TaskSettled { job, .. }
        | TaskRefunded { job, .. }
        | JobFinished { job } => Some(*job),
        _ => None,
    }
}

async fn stream_events(
    mut socket: WebSocket,
    mut rx: tokio::sync::broadcast::Receiver<NodeEvent>,
    job: Option<JobId>,
) {
    loop {
        match rx.recv().await {
            Ok(ev) => {
                if let (Some(want), NodeEvent::Chain { event, .. }) = (&job, &ev) {
                    // Task events without a job id are matched by the client; forward them.
                    if event_job(event).is_some_and(|j| j != *want) {
                        continue;
                    }
                }
                let Ok(text) = serde_json::to_string(&ev) else { continue };
                if socket.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                let note = json!({ "type": "lagged", "missed": n }).to_string();
                if socket.send(Message::Text(note.into())).await.is_err() {
                    return;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn metrics(State(st): State<ApiState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], (st.metrics)())
}
