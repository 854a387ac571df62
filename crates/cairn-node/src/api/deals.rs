//! Storage deal routes: a deal with where its replicas are served, the deals a provider holds,
//! the deals a client made, and where a stored blob can be fetched.

use axum::Json;
use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::routing::get;
use cairn_state::model::Deal;
use cairn_types::{ContentId, DealId};
use serde_json::{Value, json};

use super::{ApiError, ApiResult, ApiState, address_param, parse, ready};

/// Most deals one listing returns.
const LIMIT: usize = 10_000;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/deals/{id}", get(deal))
        .route("/api/providers/{address}/deals", get(provider_deals))
        .route("/api/clients/{address}/deals", get(client_deals))
        .route("/api/blobs/{id}/replicas", get(blob_replicas))
}

/// The deal with each replica's endpoint.
fn view(st: &ApiState, d: &Deal) -> Value {
    let replicas: Vec<Value> = d
        .holders
        .iter()
        .map(|r| {
            let endpoint =
                st.shared.read(|s| s.provider(&r.provider)).ok().flatten().map(|p| p.info.endpoint);
            json!({
                "provider": r.provider,
                "endpoint": endpoint,
                "since": r.since,
                "proven_epochs": r.proven_epochs,
                "proven": r.proven,
            })
        })
        .collect();
    json!({ "deal": d, "replicas": replicas })
}

async fn deal(
    State(st): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let Path(id) = path?;
    let id: DealId = parse("deal id", &id)?;
    ready(&st)?;
    let d = st.shared.read(|s| s.deal(&id)).map_err(ApiError::internal)?;
    d.map(|d| Json(view(&st, &d))).ok_or_else(|| ApiError::not_found("deal"))
}

/// Deals in which a provider holds a replica now.
async fn provider_deals(
    State(st): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let address = address_param(path)?;
    ready(&st)?;
    let deals: Vec<Value> = st
        .shared
        .deals_where(|d| !d.ended && d.holders.iter().any(|r| r.provider == address), LIMIT)
        .iter()
        .map(|d| view(&st, d))
        .collect();
    Ok(Json(json!({ "deals": deals })))
}

/// Every deal a client made, running or ended.
async fn client_deals(
    State(st): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let address = address_param(path)?;
    ready(&st)?;
    let deals: Vec<Value> =
        st.shared.deals_where(|d| d.client == address, LIMIT).iter().map(|d| view(&st, d)).collect();
    Ok(Json(json!({ "deals": deals })))
}

/// Endpoints of replicas that have proven they hold a blob, in running deals: where jobs'
/// providers and `cairn store get` fetch it from.
async fn blob_replicas(
    State(st): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let Path(id) = path?;
    let id: ContentId = parse("blob id", &id)?;
    ready(&st)?;
    let mut endpoints: Vec<String> = Vec::new();
    let mut size = None;
    for d in st.shared.deals_where(|d| !d.ended && d.blob == id, LIMIT) {
        size = Some(d.size);
        for r in d.holders.iter().filter(|r| r.proven_epochs > 0) {
            if let Some(p) = st.shared.read(|s| s.provider(&r.provider)).ok().flatten()
                && !endpoints.contains(&p.info.endpoint)
            {
                endpoints.push(p.info.endpoint);
            }
        }
    }
    Ok(Json(json!({ "blob": id, "size": size, "endpoints": endpoints })))
}
