//! The training role. A task of a `train` job reads the committed outputs of the tasks before
//! it — the round's checkpoint, or the round's shards — which the chain records on the task
//! when it opens. They are fetched from the provider that committed each (its registered
//! endpoint), then from the job's hints and the node, and checked against the committed id, so
//! a worker and every auditor start from exactly the same bytes. Each training output is also
//! copied to the node, so the next round can start even if the provider that made it is gone.

use std::path::PathBuf;

use cairn_state::model::{Task, TaskState};
use cairn_types::{ContentId, JobSpec, TaskId};
use serde::Deserialize;
use tracing::{info, warn};

use crate::daemon::{Ctx, MAX_BLOB};
use crate::{Error, Result};

#[derive(Deserialize)]
struct TaskView {
    task: Task,
}

/// Where the output of the job's task `index` can be fetched: its producer first.
async fn sources(ctx: &Ctx, spec: &JobSpec, job: &cairn_types::JobId, index: u32) -> Vec<String> {
    let id = TaskId::derive(job, index);
    let producer = match ctx.client.get::<TaskView>(&format!("/api/tasks/{id}")).await {
        Ok(v) => match v.task.state {
            TaskState::Committed { provider, .. } | TaskState::Settled { provider, .. } => Some(provider),
            _ => None,
        },
        Err(_) => None,
    };
    crate::pipeline::sources_from(ctx, spec, producer).await
}

/// The task's inputs as the train executor reads them: `dep-0`, `dep-1`, … in the order the
/// job's plan lists its dependencies.
///
/// # Errors
/// [`Error::Config`] if the chain's record and the plan disagree; fetch errors otherwise (not
/// committable: the provider retries after a back-off, and the chain re-auctions the task after
/// its deadline).
pub(crate) async fn inputs(ctx: &Ctx, spec: &JobSpec, task: &Task) -> Result<Vec<(String, PathBuf)>> {
    let Some(plan) = &spec.train else { return Ok(Vec::new()) };
    let deps = plan.dependencies(task.index);
    if deps.len() != task.inputs.len() {
        return Err(Error::Config(format!(
            "task {} reads {} outputs by its plan, but the chain recorded {}",
            task.index,
            deps.len(),
            task.inputs.len()
        )));
    }
    let mut out = Vec::with_capacity(deps.len());
    for (k, (dep, id)) in deps.iter().zip(&task.inputs).enumerate() {
        let from = sources(ctx, spec, &task.job, *dep).await;
        let path = ctx.fetcher.fetch(&ctx.blobs, id, None, MAX_BLOB, &from).await?;
        out.push((format!("dep-{k}"), path));
    }
    Ok(out)
}

/// Copy a training output to the node (best effort: the provider's own endpoint serves it too).
pub(crate) async fn publish(ctx: &Ctx, output: &ContentId) {
    let bytes = match ctx.blobs.read(output) {
        Ok(b) => b,
        Err(e) => {
            warn!(output = %output.short(), error = %e, "cannot read a training output to copy it to the node");
            return;
        }
    };
    match ctx.fetcher.upload(&ctx.cfg.node, bytes).await {
        Ok(_) => info!(output = %output.short(), "training output copied to the node"),
        Err(e) => warn!(output = %output.short(), error = %e, "cannot copy a training output to the node"),
    }
}
