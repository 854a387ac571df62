//! Lease routes: a lease with where it is served, the leases a provider runs, and the probes a
//! provider owes this round.

use axum::Json;
use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::routing::get;
use cairn_state::model::Lease;
use cairn_types::{Address, LeaseId};
use serde_json::{Value, json};

use super::{ApiError, ApiResult, ApiState, address_param, parse, ready};

/// Most leases one listing returns.
const LIMIT: usize = 10_000;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/leases/{id}", get(lease))
        .route("/api/providers/{address}/leases", get(provider_leases))
        .route("/api/providers/{address}/probes", get(provider_probes))
        .route("/api/clients/{address}/leases", get(client_leases))
}

/// Where the lease's provider serves it: `<endpoint>/lease/<id>/`.
fn endpoint(st: &ApiState, provider: &Address) -> Option<String> {
    st.shared.read(|s| s.provider(provider)).ok().flatten().map(|p| p.info.endpoint)
}

fn view(st: &ApiState, l: &Lease) -> Value {
    let base = endpoint(st, &l.provider);
    let url = base.as_ref().map(|e| format!("{}/lease/{}/", e.trim_end_matches('/'), l.id));
    json!({ "lease": l, "endpoint": base, "url": url })
}

async fn lease(
    State(st): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let Path(id) = path?;
    let id: LeaseId = parse("lease id", &id)?;
    ready(&st)?;
    let l = st.shared.read(|s| s.lease(&id)).map_err(ApiError::internal)?;
    l.map(|l| Json(view(&st, &l))).ok_or_else(|| ApiError::not_found("lease"))
}

/// Open leases a provider must serve now.
async fn provider_leases(
    State(st): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let address = address_param(path)?;
    ready(&st)?;
    let leases = st.shared.leases_where(|l| l.closed_at.is_none() && l.provider == address, LIMIT);
    Ok(Json(json!({ "leases": leases })))
}

/// Probes a provider was drawn for in leases' current rounds and has not reported: what to
/// request, where, and the last height its report counts.
async fn provider_probes(
    State(st): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let address = address_param(path)?;
    ready(&st)?;
    let owed = st.shared.leases_where(
        |l| {
            l.closed_at.is_none()
                && l.probers.contains(&address)
                && l.reports.iter().all(|r| r.prober != address)
        },
        LIMIT,
    );
    let probes: Vec<Value> = owed
        .iter()
        .filter_map(|l| {
            let svc = l.spec.service.as_deref()?;
            let base = endpoint(&st, &l.provider)?;
            Some(json!({
                "lease": l.id,
                "round": l.round,
                "round_start": l.round_start,
                "round_end": l.round_end,
                "url": format!("{}/lease/{}{}", base.trim_end_matches('/'), l.id, svc.sla.probe_path),
                "latency_ms": svc.sla.latency_ms,
            }))
        })
        .collect();
    Ok(Json(json!({ "probes": probes })))
}

/// Every lease a client opened, open or closed.
async fn client_leases(
    State(st): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let address = address_param(path)?;
    ready(&st)?;
    let leases: Vec<Value> =
        st.shared.leases_where(|l| l.client == address, LIMIT).iter().map(|l| view(&st, l)).collect();
    Ok(Json(json!({ "leases": leases })))
}
