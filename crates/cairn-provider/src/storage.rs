//! The provider's storage role: keep the replicas the chain places here and prove them every
//! epoch.
//!
//! Every second (and on deal events) it reads the running deals it holds a replica of. A blob it
//! does not have is fetched (verified group by group, resumable) from the deal's other replicas;
//! a first replica waits for the client's upload to `PUT /deals/<id>/blob`, which is taken only
//! for a deal this provider holds, only up to the deal's size, and kept only when it hashes to
//! the deal's blob. Each epoch it answers its challenge: the chunks the epoch's seed picks, with
//! their paths, read from the blob's stored tree.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use cairn_state::model::Deal;
use cairn_types::storage::{challenged_chunks, storage_limits};
use cairn_types::{Behaviour, ContentId, DealId, ProveStorage, TxBody};
use serde::Deserialize;
use tracing::{info, warn};

use crate::daemon::Ctx;

/// A proof not seen on chain this long after it was sent is sent again.
const RESEND_AFTER: Duration = Duration::from_secs(8);

#[derive(Deserialize)]
struct ReplicaView {
    provider: cairn_types::Address,
    endpoint: Option<String>,
}

#[derive(Deserialize)]
struct DealView {
    deal: Deal,
    replicas: Vec<ReplicaView>,
}

#[derive(Deserialize)]
struct DealsView {
    deals: Vec<DealView>,
}

/// What the storage loop remembers between ticks.
#[derive(Default)]
pub(crate) struct StorageState {
    /// Proofs sent, by deal and epoch, and when.
    sent: Mutex<BTreeMap<(DealId, u32), Instant>>,
    /// Blobs being fetched now.
    fetching: Mutex<BTreeSet<ContentId>>,
    /// Blobs whose last fetch failed, and when to try again.
    retry_at: Mutex<BTreeMap<ContentId, Instant>>,
    /// Deals whose replica this provider dropped (the `drops_replicas` adversary only).
    dropped: Mutex<BTreeSet<DealId>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Keep and prove this provider's replicas until the process stops.
pub(crate) async fn run(ctx: Arc<Ctx>) {
    let challenges = loop {
        match ctx.client.params().await {
            Ok(p) => {
                break p.get("storage_challenges").and_then(serde_json::Value::as_u64).unwrap_or(2) as u32;
            }
            Err(e) => warn!(error = %e, "storage: cannot read the chain's parameters yet"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    loop {
        if let Err(e) = tick(&ctx, challenges).await {
            warn!(error = %e, "storage: cannot read this provider's deals; retrying");
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), ctx.storage_wake.notified()).await;
    }
}

async fn tick(ctx: &Arc<Ctx>, challenges: u32) -> crate::Result<()> {
    let view: DealsView = ctx.client.get(&format!("/api/providers/{}/deals", ctx.me)).await?;
    for DealView { deal: d, replicas } in view.deals {
        if lock(&ctx.storage.dropped).contains(&d.id) {
            continue;
        }
        if !ctx.blobs.has(&d.blob) {
            let sources: Vec<String> =
                replicas.into_iter().filter(|r| r.provider != ctx.me).filter_map(|r| r.endpoint).collect();
            let waiting = lock(&ctx.storage.retry_at).get(&d.blob).is_some_and(|t| Instant::now() < *t);
            if !sources.is_empty() && !waiting && lock(&ctx.storage.fetching).insert(d.blob) {
                tokio::spawn(fetch(ctx.clone(), d.blob, d.size, sources));
            }
            continue;
        }
        let Some(mine) = d.holders.iter().find(|r| r.provider == ctx.me) else { continue };
        if mine.proven {
            if ctx.cfg.behaviour == Behaviour::DropsReplicas {
                warn!(deal = %d.id.short(), "adversary: dropping the replica after its first proof");
                lock(&ctx.storage.dropped).insert(d.id);
                ctx.blobs.remove(&d.blob)?;
            }
            continue;
        }
        let key = (d.id, d.epoch);
        if lock(&ctx.storage.sent).get(&key).is_some_and(|t| t.elapsed() < RESEND_AFTER) {
            continue;
        }
        let picks = challenged_chunks(&d.seed, &d.id, &ctx.me, d.epoch, d.size, challenges);
        let blobs = ctx.blobs.clone();
        let blob = d.blob;
        let proof = tokio::task::spawn_blocking(move || blobs.possession_proof(&blob, &picks))
            .await
            .map_err(|e| crate::Error::Config(format!("proof task: {e}")))?;
        let proof = match proof {
            Ok(p) => p,
            Err(e) => {
                // The blob went bad on disk: drop it, so it is fetched again from a replica.
                warn!(deal = %d.id.short(), error = %e, "storage: cannot prove the replica; fetching it again");
                ctx.blobs.remove(&d.blob)?;
                continue;
            }
        };
        match ctx
            .sender
            .submit(TxBody::ProveStorage(ProveStorage { deal: d.id, epoch: d.epoch, proof }))
            .await
        {
            Ok(_) => {
                lock(&ctx.storage.sent).insert(key, Instant::now());
            }
            Err(e) => warn!(deal = %d.id.short(), error = %e, "storage: proof not accepted; will retry"),
        }
    }
    // Forget proofs of epochs long gone.
    lock(&ctx.storage.sent).retain(|_, t| t.elapsed() < Duration::from_secs(600));
    Ok(())
}

async fn fetch(ctx: Arc<Ctx>, blob: ContentId, size: u64, sources: Vec<String>) {
    match ctx.fetcher.fetch(&ctx.blobs, &blob, Some(size), storage_limits::MAX_DEAL_BYTES, &sources).await {
        Ok(_) => {
            info!(blob = %blob.short(), size, "storage: replica copied from another replica");
            lock(&ctx.storage.retry_at).remove(&blob);
        }
        Err(e) => {
            // Not there yet (the client is still uploading to another replica) is expected.
            if matches!(e, cairn_blobs::Error::NotFound(_)) {
                tracing::debug!(blob = %blob.short(), "storage: no replica has the blob yet");
            } else {
                warn!(blob = %blob.short(), error = %e, "storage: cannot copy the replica yet");
            }
            lock(&ctx.storage.retry_at).insert(blob, Instant::now() + Duration::from_secs(1));
        }
    }
    lock(&ctx.storage.fetching).remove(&blob);
    ctx.storage_wake.notify_one();
}

/// `PUT /deals/{deal}/blob`: a client's upload of a deal's blob.
pub(crate) fn router(ctx: Arc<Ctx>) -> axum::Router {
    axum::Router::new()
        .route("/deals/{deal}/blob", axum::routing::put(upload))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(ctx)
}

fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": { "code": code, "message": message } }))).into_response()
}

async fn upload(
    State(ctx): State<Arc<Ctx>>,
    Path(deal): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(deal) = deal.parse::<DealId>() else {
        return refuse(StatusCode::BAD_REQUEST, "bad_id", "not a deal id");
    };
    let view: DealView = match ctx.client.get(&format!("/api/deals/{deal}")).await {
        Ok(v) => v,
        Err(e) if e.code() == Some("not_found") => {
            return refuse(StatusCode::NOT_FOUND, "not_found", "no such deal");
        }
        Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, "node", &e.to_string()),
    };
    let d = view.deal;
    if d.ended || !d.holders.iter().any(|r| r.provider == ctx.me) {
        return refuse(StatusCode::FORBIDDEN, "not_replica", "this provider holds no replica of that deal");
    }
    if ctx.blobs.has(&d.blob) {
        return (StatusCode::OK, axum::Json(serde_json::json!({ "id": d.blob, "stored": true })))
            .into_response();
    }
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n != d.size) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "wrong_size",
            &format!("the deal's blob is {} bytes", d.size),
        );
    }
    match cairn_blobs::put_stream_as(&ctx.blobs, body.into_data_stream(), d.blob, d.size).await {
        Ok(()) => {}
        Err(e @ (cairn_blobs::UploadError::TooLong(_) | cairn_blobs::UploadError::WrongBlob(_))) => {
            return refuse(StatusCode::BAD_REQUEST, "wrong_blob", &e.to_string());
        }
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, "io", &e.to_string()),
    }
    let id = d.blob;
    info!(deal = %deal.short(), size = d.size, "storage: replica uploaded by the client");
    ctx.storage_wake.notify_one();
    (StatusCode::CREATED, axum::Json(serde_json::json!({ "id": id, "stored": true }))).into_response()
}
