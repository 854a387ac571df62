//! `cairn gateway`: an OpenAI-compatible HTTP API over the market. Each request becomes a paid
//! one-task `inference` job (the gateway's account escrows it), matched at once to the cheapest
//! provider that serves the model; the answer is the provider's committed, content-addressed
//! output, verified on fetch. Requests refused before a job exists cost nothing; a job that
//! times out is cancelled, which refunds it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
use cairn_runtime::inference::{ChatRequest, EmbeddingRequest, ModelTokenizer, ReqError};
use cairn_types::{Amount, ContentId};
use clap::Args;
use serde_json::{Value, json};
use tracing::info;

use crate::catalog::{ServedModel, served_models};

mod http;
mod jobs;
mod stream;

use crate::keys::KeyArgs;
use http::{Admission, ApiError, Metrics, now_secs, parse_body};

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
            fetcher: Fetcher::new()
                .with_uploader(cairn_types::upload::UploadAuth { key: key.clone(), chain_id: chain.clone() }),
            sender: Sender::new(client.clone(), key.clone(), chain, fee),
            client,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .context("building the HTTP client")?,
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
