//! `cairn gateway`: an OpenAI-compatible HTTP API over the market. Each request becomes a paid
//! one-task `inference` job (the gateway's account escrows it), matched at once to the cheapest
//! provider that serves the model; the answer is the provider's committed, content-addressed
//! output, verified on fetch. Requests refused before a job exists cost nothing; a job that
//! times out is cancelled, which refunds it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use cairn_blobs::{BlobStore, Fetcher};
use cairn_client::Client;
use cairn_provider::sender::Sender;
use cairn_runtime::inference::{
    ChatRequest, EmbeddingRequest, ModelPackage, ModelTokenizer, REQUESTS_FILE, RESULTS_FILE, ReqError,
    RequestLine, ResultLine, parse_results,
};
use cairn_state::model::TaskState;
use cairn_types::{
    Amount, CancelJob, Constraints, ContentId, Event, InputRef, JobId, JobSpec, Limits, Receipt, Resources,
    SubmitJob, TxBody, TxStatus, VerificationLevel, WorkloadKind,
};
use clap::Args;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::catalog::{ServedModel, served_models};

mod stream;
use crate::keys::KeyArgs;

/// `cairn gateway`.
#[derive(Debug, Args)]
pub(crate) struct GatewayArgs {
    /// Node API.
    #[arg(long, env = "CAIRN_API", default_value = "http://127.0.0.1:8080")]
    api: String,
    #[command(flatten)]
    key: KeyArgs,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: String,
    /// The most one request's job may pay.
    #[arg(long, default_value = "0.5 CRN")]
    max_price: Amount,
    /// Seconds a request may wait for its result before its job is cancelled (refunded).
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// Where fetched outputs and model tokenizers are cached.
    #[arg(long)]
    cache: Option<std::path::PathBuf>,
    /// Requests served at once; more wait in a queue.
    #[arg(long, default_value_t = 32)]
    max_inflight: usize,
    /// Requests that may wait; past that a request is answered 429 with `retry-after`.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
}

/// Admission: at most `max_inflight` requests run; up to `max_queue` more wait for a slot;
/// the rest are told to come back later (429 + `retry-after`) instead of piling jobs onto the
/// load that is already late, and instead of timing out (which clients retry, adding load).
struct Admission {
    slots: Arc<tokio::sync::Semaphore>,
    waiting: std::sync::atomic::AtomicUsize,
    max_queue: usize,
}

impl Admission {
    async fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        use std::sync::atomic::Ordering::SeqCst;
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        if self.waiting.fetch_add(1, SeqCst) >= self.max_queue {
            self.waiting.fetch_sub(1, SeqCst);
            return Err(ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                error: ReqError {
                    code: Some("rate_limit_exceeded".into()),
                    kind: "rate_limit_error".into(),
                    ..ReqError::invalid("The gateway is at capacity; retry after a second.")
                },
            });
        }
        let p = self.slots.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, SeqCst);
        p.map_err(|_| {
            ApiError::server(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the gateway is stopping")
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    endpoint: String,
    status: u16,
}

struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    latency: Histogram,
    tokens: Counter,
    first_token: Histogram,
    stream_mismatch: Counter,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("cairn_gateway");
        let requests = Family::<Labels, Counter>::default();
        registry.register("requests", "Requests by endpoint and HTTP status", requests.clone());
        let latency = Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]);
        registry.register("request_seconds", "Time to answer a served request", latency.clone());
        let tokens = Counter::default();
        registry.register("tokens", "Prompt and completion tokens served", tokens.clone());
        let first_token = Histogram::new([0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0]);
        registry.register(
            "first_token_seconds",
            "Time from a streamed chat request to its first token",
            first_token.clone(),
        );
        let stream_mismatch = Counter::default();
        registry.register(
            "stream_mismatches",
            "Streams whose provider committed other tokens than it streamed and signed",
            stream_mismatch.clone(),
        );
        Metrics { registry, requests, latency, tokens, first_token, stream_mismatch }
    }
}

struct Gateway {
    admission: Admission,
    client: Client,
    /// For providers' live streams.
    http: reqwest::Client,
    sender: Sender,
    fetcher: Fetcher,
    cache: BlobStore,
    local_models: Option<crate::model::ModelStore>,
    max_price: Amount,
    timeout: Duration,
    tokenizers: Mutex<BTreeMap<ContentId, Arc<ModelTokenizer>>>,
    loading: tokio::sync::Mutex<()>,
    metrics: Metrics,
}

/// An OpenAI-style error response.
struct ApiError {
    status: StatusCode,
    error: ReqError,
}

impl ApiError {
    fn bad(e: ReqError) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, error: e }
    }
    fn server(status: StatusCode, code: &str, msg: impl std::fmt::Display) -> Self {
        ApiError {
            status,
            error: ReqError {
                code: Some(code.into()),
                kind: "server_error".into(),
                ..ReqError::invalid(msg)
            },
        }
    }
    fn not_found(model: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            error: ReqError {
                param: Some("model".into()),
                code: Some("model_not_found".into()),
                ..ReqError::invalid(format!(
                    "The model `{model}` does not exist or no provider on this network serves it."
                ))
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(json!({ "error": self.error }))).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        }
        r
    }
}

/// What the network did for a request.
struct Served {
    result: ResultLine,
    job: JobId,
    provider: cairn_types::Address,
    price: Amount,
    output: ContentId,
}

impl Served {
    fn cairn(&self) -> Value {
        json!({ "job": self.job, "provider": self.provider, "price": self.price, "output": self.output,
                "commitment": self.result.commitment })
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn parse_body(bytes: &[u8]) -> Result<RequestLine, ApiError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad(ReqError::invalid(format!("We could not parse the JSON body of your request: {e}")))
    })?;
    if !v.is_object() {
        return Err(ApiError::bad(ReqError::invalid("The request body must be a JSON object.")));
    }
    Ok(RequestLine { custom_id: None, body: v })
}

impl Gateway {
    async fn model(&self, name: Option<&str>, task: &str) -> Result<ServedModel, ApiError> {
        let Some(name) = name else {
            return Err(ApiError::bad(ReqError::param("model", "Missing required parameter: 'model'.")));
        };
        let models = served_models(&self.client)
            .await
            .map_err(|e| ApiError::server(StatusCode::BAD_GATEWAY, "node_unavailable", format!("{e:#}")))?;
        let m = crate::catalog::find(&models, name).map_err(|_| ApiError::not_found(name))?.clone();
        if m.task != task {
            return Err(ApiError::bad(ReqError::param(
                "model",
                format!("The model `{name}` serves {}, not {task}.", m.task),
            )));
        }
        Ok(m)
    }

    /// The model's tokenizer: from the local model store, else its package fetched (verified)
    /// from the node into the cache.
    async fn tokenizer(&self, m: &ServedModel) -> Result<Arc<ModelTokenizer>, ApiError> {
        if let Some(t) = self.tokenizers.lock().unwrap_or_else(|p| p.into_inner()).get(&m.id) {
            return Ok(t.clone());
        }
        let _one = self.loading.lock().await;
        if let Some(t) = self.tokenizers.lock().unwrap_or_else(|p| p.into_inner()).get(&m.id) {
            return Ok(t.clone());
        }
        let local = self.local_models.as_ref().filter(|s| s.blobs.has(&m.id)).map(|s| s.blobs.path(&m.id));
        // The node, then the providers that serve the model (a model imported by an operator
        // may exist only in its providers' blob stores).
        let sources: Vec<String> =
            std::iter::once(self.client.base().to_string()).chain(m.endpoints.iter().cloned()).collect();
        let path = match local {
            Some(p) => p,
            None => self
                .fetcher
                .fetch(&self.cache, &m.id, None, 8 << 30, &sources)
                .await
                .map_err(|e| ApiError::server(StatusCode::BAD_GATEWAY, "model_unavailable", e))?,
        };
        let t = tokio::task::spawn_blocking(move || {
            ModelPackage::open(&path).and_then(|p| ModelTokenizer::load(&p))
        })
        .await
        .map_err(|e| ApiError::server(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?
        .map_err(|e| ApiError::server(StatusCode::BAD_GATEWAY, "model_unavailable", e))?;
        let t = Arc::new(t);
        self.tokenizers.lock().unwrap_or_else(|p| p.into_inner()).insert(m.id, t.clone());
        Ok(t)
    }

    /// Run one request as a one-task job and return its verified result.
    async fn serve(&self, m: &ServedModel, body: &Value) -> Result<Served, ApiError> {
        let job = self.submit(m, body).await?;
        self.wait_result(job, Instant::now() + self.timeout).await
    }

    /// Submit one request as a one-task job; returns the job once the chain has taken it.
    async fn submit(&self, m: &ServedModel, body: &Value) -> Result<JobId, ApiError> {
        let unavailable =
            |e: &dyn std::fmt::Display| ApiError::server(StatusCode::BAD_GATEWAY, "node_unavailable", e);
        let line = format!("{body}\n").into_bytes();
        let size = line.len() as u64;
        let input = self.fetcher.upload(self.client.base(), line).await.map_err(|e| unavailable(&e))?;
        let (k, v) = m.attribute();
        let spec = JobSpec {
            kind: WorkloadKind::Inference,
            workload: m.id,
            inputs: Vec::new(),
            task_inputs: vec![InputRef { name: REQUESTS_FILE.into(), id: input, size }],
            args: Vec::new(),
            env: BTreeMap::new(),
            tasks: 1,
            resources: Resources::default(),
            limits: Limits::default(),
            max_price_per_task: self.max_price,
            // Generous: a provider may first load the model or finish other work; the
            // gateway's own timeout cancels (and refunds) long before this matters.
            deadline_blocks: 600,
            bid_window: 0,
            max_attempts: 3,
            constraints: Constraints { regions: Vec::new(), attributes: BTreeMap::from([(k, v)]) },
            verification: VerificationLevel::Standard,
            hints: vec![self.client.base().to_string()],
            train: None,
        };
        spec.validate().map_err(|e| ApiError::server(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?;
        let hash = self.sender.submit(TxBody::SubmitJob(SubmitJob { spec })).await.map_err(|e| {
            if matches!(e.code(), Some("insufficient_funds" | "insufficient_balance")) {
                ApiError::server(
                    StatusCode::TOO_MANY_REQUESTS,
                    "insufficient_quota",
                    "The gateway's account cannot pay for this request.",
                )
            } else {
                unavailable(&e)
            }
        })?;
        // Inclusion is waited for on its own clock: a job that lands must be seen, so that it
        // can be cancelled if its result is late.
        let (_, receipt) = self
            .client
            .wait_for(&hash, self.timeout.max(Duration::from_secs(60)))
            .await
            .map_err(|e| unavailable(&e))?;
        let job = match receipt {
            Receipt::Tx { status: TxStatus::Ok, events, .. } => events
                .iter()
                .find_map(|e| match e {
                    Event::JobSubmitted { job, .. } => Some(*job),
                    _ => None,
                })
                .ok_or_else(|| unavailable(&"the receipt names no job"))?,
            Receipt::Tx { status: TxStatus::Failed(c) | TxStatus::Rejected(c), .. } => {
                return Err(ApiError::server(
                    StatusCode::TOO_MANY_REQUESTS,
                    "insufficient_quota",
                    format!("The chain refused the job: {c}"),
                ));
            }
            Receipt::EndBlock { .. } => return Err(unavailable(&"unexpected receipt")),
        };
        Ok(job)
    }

    /// Wait for the job's committed output, fetch it (verified) and read its result; cancel
    /// (refunding) the job at `deadline`.
    async fn wait_result(&self, job: JobId, deadline: Instant) -> Result<Served, ApiError> {
        let unavailable =
            |e: &dyn std::fmt::Display| ApiError::server(StatusCode::BAD_GATEWAY, "node_unavailable", e);
        loop {
            let v =
                crate::job::job_view(&self.client, &job).await.map_err(|e| unavailable(&format!("{e:#}")))?;
            if let Some(t) = v.tasks.first() {
                match &t.state {
                    TaskState::Committed { provider, price, output, .. }
                    | TaskState::Settled { provider, price, output, .. } => {
                        let bundle = crate::job::fetch_output(&self.client, &self.cache, provider, output)
                            .await
                            .map_err(|e| unavailable(&format!("{e:#}")))?;
                        let text = bundle
                            .files
                            .get(RESULTS_FILE)
                            .map(|b| String::from_utf8_lossy(b).to_string())
                            .unwrap_or_default();
                        let result = parse_results(&text)
                            .map_err(|e| unavailable(&e))?
                            .into_iter()
                            .next()
                            .ok_or_else(|| unavailable(&"the output holds no result"))?;
                        return Ok(Served {
                            result,
                            job,
                            provider: *provider,
                            price: *price,
                            output: *output,
                        });
                    }
                    TaskState::Refunded { reason, .. } => {
                        return Err(ApiError::server(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "no_provider",
                            format!("No provider completed the request ({reason:?}); it was refunded."),
                        ));
                    }
                    _ => {}
                }
            }
            if Instant::now() >= deadline {
                if let Err(e) = self.sender.submit(TxBody::CancelJob(CancelJob { job })).await {
                    warn!(job = %job.short(), error = %e, "cancelling a timed-out job failed");
                }
                return Err(ApiError::server(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    format!(
                        "No result within {} s; job {job} was cancelled and its escrow refunded.",
                        self.timeout.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn count(&self, endpoint: &str, status: StatusCode) {
        self.metrics
            .requests
            .get_or_create(&Labels { endpoint: endpoint.into(), status: status.as_u16() })
            .inc();
    }
}

type Gw = State<Arc<Gateway>>;

async fn list_models(State(g): Gw) -> Response {
    match served_models(&g.client).await {
        Ok(models) => {
            let data: Vec<Value> = models.values().map(model_json).collect();
            Json(json!({ "object": "list", "data": data })).into_response()
        }
        Err(e) => {
            ApiError::server(StatusCode::BAD_GATEWAY, "node_unavailable", format!("{e:#}")).into_response()
        }
    }
}

fn model_json(m: &ServedModel) -> Value {
    json!({
        "id": m.name, "object": "model", "created": 0, "owned_by": "cairn",
        "cairn": { "package": m.id, "task": m.task, "providers": m.providers.len(), "cheapest_price": m.cheapest() },
    })
}

async fn get_model(State(g): Gw, UrlPath(name): UrlPath<String>) -> Response {
    match served_models(&g.client).await {
        Ok(models) => match crate::catalog::find(&models, &name) {
            Ok(m) => Json(model_json(m)).into_response(),
            Err(_) => ApiError::not_found(&name).into_response(),
        },
        Err(e) => {
            ApiError::server(StatusCode::BAD_GATEWAY, "node_unavailable", format!("{e:#}")).into_response()
        }
    }
}

async fn embeddings(State(g): Gw, body: Bytes) -> Response {
    let started = Instant::now();
    let _slot = match g.admission.admit().await {
        Ok(p) => p,
        Err(e) => return finish(&g, "embeddings", started, Err(e)),
    };
    let r = embeddings_inner(&g, &body).await;
    finish(&g, "embeddings", started, r)
}

fn finish(g: &Gateway, endpoint: &str, started: Instant, r: Result<Response, ApiError>) -> Response {
    match r {
        Ok(resp) => {
            g.count(endpoint, StatusCode::OK);
            g.metrics.latency.observe(started.elapsed().as_secs_f64());
            resp
        }
        Err(e) => {
            g.count(endpoint, e.status);
            info!(endpoint, status = e.status.as_u16(), error = %e.error.message, "request refused");
            e.into_response()
        }
    }
}

async fn embeddings_inner(g: &Gateway, body: &[u8]) -> Result<Response, ApiError> {
    let line = parse_body(body)?;
    let req: EmbeddingRequest = line.embedding().map_err(ApiError::bad)?;
    let m = g.model(req.model.as_deref(), "embeddings").await?;
    let tok = g.tokenizer(&m).await?;
    for text in req.input.to_vec() {
        let n = tok.count_embedding(&text).map_err(ApiError::bad)?;
        if n > tok.context() {
            return Err(ApiError::bad(ReqError {
                param: Some("input".into()),
                ..ReqError::context(n, tok.context())
            }));
        }
    }
    // The job sees the request without the gateway-only fields.
    let job_body = json!({ "input": req.input });
    let s = g.serve(&m, &job_body).await?;
    if let Some(e) = s.result.error.clone() {
        return Err(ApiError::bad(e));
    }
    let base64 = req.encoding_format.as_deref() == Some("base64");
    let data: Vec<Value> = s
        .result
        .embeddings
        .clone()
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({ "object": "embedding", "index": i, "embedding": embedding })
        })
        .collect();
    g.metrics.tokens.inc_by(s.result.prompt_tokens);
    Ok(Json(json!({
        "object": "list", "data": data, "model": m.name,
        "usage": { "prompt_tokens": s.result.prompt_tokens, "total_tokens": s.result.prompt_tokens },
        "cairn": s.cairn(),
    }))
    .into_response())
}

async fn chat(State(g): Gw, body: Bytes) -> Response {
    let started = Instant::now();
    let slot = match g.admission.admit().await {
        Ok(p) => p,
        Err(e) => return finish(&g, "chat_completions", started, Err(e)),
    };
    let r = chat_inner(&g, &body, slot).await;
    finish(&g, "chat_completions", started, r)
}

async fn chat_inner(
    g: &Arc<Gateway>,
    body: &[u8],
    slot: tokio::sync::OwnedSemaphorePermit,
) -> Result<Response, ApiError> {
    let line = parse_body(body)?;
    let req: ChatRequest = line.chat().map_err(ApiError::bad)?;
    let m = g.model(req.model.as_deref(), "chat").await?;
    let tok = g.tokenizer(&m).await?;
    let n = tok.count_chat(&req.messages).map_err(ApiError::bad)?;
    if n >= tok.context() {
        return Err(ApiError::bad(ReqError::context(n, tok.context())));
    }
    let mut job_req = req.clone();
    job_req.model = None;
    job_req.stream = None;
    job_req.stream_options = None;
    job_req.user = None;
    let job_body = serde_json::to_value(&job_req)
        .map_err(|e| ApiError::server(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?;
    if req.stream == Some(true) {
        let include_usage = req
            .stream_options
            .as_ref()
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        return stream::chat(g, m, &job_body, include_usage, slot).await;
    }
    let s = g.serve(&m, &job_body).await?;
    if let Some(e) = s.result.error.clone() {
        return Err(ApiError::bad(e));
    }
    let r = &s.result;
    g.metrics.tokens.inc_by(r.prompt_tokens.saturating_add(r.completion_tokens));
    let id = format!("chatcmpl-{}", s.job);
    let created = now_secs();
    let text = r.text.clone().unwrap_or_default();
    let finish_reason = r.finish_reason.clone().unwrap_or_else(|| "stop".into());
    let usage = json!({
        "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
        "total_tokens": r.prompt_tokens.saturating_add(r.completion_tokens),
    });
    Ok(Json(json!({
        "id": id, "object": "chat.completion", "created": created, "model": m.name,
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": text }, "finish_reason": finish_reason, "logprobs": null }],
        "usage": usage, "cairn": s.cairn(),
    }))
    .into_response())
}

async fn metrics(State(g): Gw) -> Response {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &g.metrics.registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    ([(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
        .into_response()
}

async fn fallback() -> Response {
    ApiError {
        status: StatusCode::NOT_FOUND,
        error: ReqError {
            code: Some("unknown_url".into()),
            ..ReqError::invalid(
                "Unknown request URL. See GET /v1/models, POST /v1/embeddings and POST /v1/chat/completions.",
            )
        },
    }
    .into_response()
}

/// The gateway's routes.
fn router(g: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{model}", get(get_model))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/chat/completions", post(chat))
        .route("/metrics", get(metrics))
        .fallback(fallback)
        .layer(axum::extract::DefaultBodyLimit::max(4 << 20))
        .with_state(g)
}

pub(crate) fn run(a: GatewayArgs) -> Result<()> {
    crate::init_logging();
    let rt = crate::runtime()?;
    rt.block_on(async {
        let listen: SocketAddr = crate::parse_addr(&a.listen)?;
        let key = a.key.load()?;
        let client = Client::new(&a.api);
        let (fee, chain, _) = crate::job::fee_and_chain(&client).await.context("reaching the node")?;
        let cache_dir =
            a.cache.clone().unwrap_or_else(|| crate::keys::default_keystore().with_file_name("gateway"));
        let g = Arc::new(Gateway {
            admission: Admission {
                slots: Arc::new(tokio::sync::Semaphore::new(a.max_inflight.max(1))),
                waiting: std::sync::atomic::AtomicUsize::new(0),
                max_queue: a.max_queue,
            },
            sender: Sender::new(client.clone(), key.clone(), chain, fee),
            client,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .context("building the HTTP client")?,
            fetcher: Fetcher::new(),
            cache: BlobStore::open(&cache_dir)?,
            local_models: crate::model::ModelStore::open_default().ok(),
            max_price: a.max_price,
            timeout: Duration::from_secs(a.timeout_secs.max(1)),
            tokenizers: Mutex::new(BTreeMap::new()),
            loading: tokio::sync::Mutex::new(()),
            metrics: Metrics::new(),
        });
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
        info!(%listen, account = %key.address(), "OpenAI-compatible gateway ready at http://{listen}/v1");
        axum::serve(listener, router(g)).await.context("serving")?;
        Ok(())
    })
}
