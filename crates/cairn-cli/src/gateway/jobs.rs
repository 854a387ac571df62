//! Requests as jobs: each becomes a paid one-task `inference` job; its committed output is
//! fetched and verified. Also the served-model lookup and the tokenizer cache.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use cairn_runtime::inference::{
    ModelPackage, ModelTokenizer, REQUESTS_FILE, RESULTS_FILE, ReqError, ResultLine, parse_results,
};
use cairn_state::model::TaskState;
use cairn_types::{
    Amount, CancelJob, Constraints, ContentId, Event, InputRef, JobId, JobSpec, Limits, Receipt, Resources,
    SubmitJob, TxBody, TxStatus, VerificationLevel, WorkloadKind,
};
use serde_json::{Value, json};
use std::sync::Arc;
use tracing::warn;

use super::http::Labels;
use super::{ApiError, Gateway};
use crate::catalog::{ServedModel, served_models};

/// What the network did for a request.
pub(super) struct Served {
    pub(super) result: ResultLine,
    pub(super) job: JobId,
    pub(super) provider: cairn_types::Address,
    pub(super) price: Amount,
    pub(super) output: ContentId,
}

impl Served {
    pub(super) fn cairn(&self) -> Value {
        json!({ "job": self.job, "provider": self.provider, "price": self.price, "output": self.output,
                "commitment": self.result.commitment })
    }
}

impl Gateway {
    pub(super) async fn model(&self, name: Option<&str>, task: &str) -> Result<ServedModel, ApiError> {
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
    pub(super) async fn tokenizer(&self, m: &ServedModel) -> Result<Arc<ModelTokenizer>, ApiError> {
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
    pub(super) async fn serve(&self, m: &ServedModel, body: &Value) -> Result<Served, ApiError> {
        let job = self.submit(m, body).await?;
        self.wait_result(job, Instant::now() + self.timeout).await
    }

    /// Submit one request as a one-task job; returns the job once the chain has taken it.
    pub(super) async fn submit(&self, m: &ServedModel, body: &Value) -> Result<JobId, ApiError> {
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
            deterministic: true,
            network: false,
            service: None,
            render: None,
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
    pub(super) async fn wait_result(&self, job: JobId, deadline: Instant) -> Result<Served, ApiError> {
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

    pub(super) fn count(&self, endpoint: &str, status: StatusCode) {
        self.metrics
            .requests
            .get_or_create(&Labels { endpoint: endpoint.into(), status: status.as_u16() })
            .inc();
    }
}
