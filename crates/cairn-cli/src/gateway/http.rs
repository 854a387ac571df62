//! The gateway's HTTP surface around the market: OpenAI-style errors, admission (slots, a
//! bounded queue, 429s) and Prometheus metrics.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cairn_runtime::inference::{ReqError, RequestLine};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

/// Admission: at most `max_inflight` requests run; up to `max_queue` more wait for a slot;
/// the rest are told to come back later (429 + `retry-after`) instead of piling jobs onto the
/// load that is already late, and instead of timing out (which clients retry, adding load).
pub(super) struct Admission {
    pub(super) slots: Arc<tokio::sync::Semaphore>,
    pub(super) waiting: std::sync::atomic::AtomicUsize,
    pub(super) max_queue: usize,
}

impl Admission {
    pub(super) async fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
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
pub(super) struct Labels {
    pub(super) endpoint: String,
    pub(super) status: u16,
}

pub(super) struct Metrics {
    pub(super) registry: Registry,
    pub(super) requests: Family<Labels, Counter>,
    pub(super) latency: Histogram,
    pub(super) tokens: Counter,
    pub(super) first_token: Histogram,
    pub(super) stream_mismatch: Counter,
}

impl Metrics {
    pub(super) fn new() -> Self {
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

/// An OpenAI-style error response.
pub(super) struct ApiError {
    pub(super) status: StatusCode,
    pub(super) error: ReqError,
}

impl ApiError {
    pub(super) fn bad(e: ReqError) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, error: e }
    }
    pub(super) fn server(status: StatusCode, code: &str, msg: impl std::fmt::Display) -> Self {
        ApiError {
            status,
            error: ReqError {
                code: Some(code.into()),
                kind: "server_error".into(),
                ..ReqError::invalid(msg)
            },
        }
    }
    pub(super) fn not_found(model: &str) -> Self {
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

pub(super) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub(super) fn parse_body(bytes: &[u8]) -> Result<RequestLine, ApiError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad(ReqError::invalid(format!("We could not parse the JSON body of your request: {e}")))
    })?;
    if !v.is_object() {
        return Err(ApiError::bad(ReqError::invalid("The request body must be a JSON object.")));
    }
    Ok(RequestLine { custom_id: None, body: v })
}
