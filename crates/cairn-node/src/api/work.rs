//! What a provider must do now: its assigned tasks and its unanswered audits.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{ApiError, ApiResult, ApiState, address_param, ready};

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/providers/{address}/tasks", get(provider_tasks))
        .route("/api/providers/{address}/audits", get(provider_audits))
}

async fn provider_tasks(
    State(st): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    use cairn_state::model::TaskState;
    let address = address_param(path)?;
    ready(&st)?;
    let tasks = st.shared.tasks_where(
        |t| matches!(&t.state, TaskState::Assigned { provider, .. } if *provider == address),
        10_000,
    );
    Ok(Json(json!({ "tasks": tasks })))
}

/// Audit assignments a provider has not answered: the task to re-run, the output it is checked
/// against, and the last height a verdict is taken. Canaries look like any other assignment.
async fn provider_audits(
    State(st): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let address = address_param(path)?;
    ready(&st)?;
    let pending = st.shared.audits_where(
        |r| r.auditors.iter().zip(&r.verdicts).any(|(x, v)| *x == address && v.is_none()),
        10_000,
    );
    let mut out = Vec::with_capacity(pending.len());
    for r in pending {
        let task = st.shared.read(|s| s.task(&r.task)).map_err(ApiError::internal)?;
        if let Some(task) = task {
            out.push(json!({ "task": task, "claimed": r.claimed, "due": r.due }));
        }
    }
    Ok(Json(json!({ "audits": out })))
}
