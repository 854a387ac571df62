//! The auditor role: re-run the tasks the chain assigns for audit and submit the verdict.

use std::sync::Arc;
use std::time::Duration;

use cairn_state::model::TaskState;
use cairn_types::{ContentId, Metering, SubmitAudit, TxBody, TxStatus};
use serde::Deserialize;
use tracing::{info, warn};

use crate::daemon::{Ctx, spec_of};

#[derive(Deserialize)]
struct AuditsView {
    audits: Vec<AuditView>,
}

#[derive(Deserialize)]
struct AuditView {
    task: cairn_state::model::Task,
    claimed: ContentId,
    due: u64,
}

/// Answer the chain's audit assignments: re-run each task in the same deterministic runtime
/// and submit the output root before the verdict deadline.
pub(crate) async fn audits(ctx: &Arc<Ctx>) {
    let me = ctx.me;
    let Ok(v) = ctx.client.get::<AuditsView>(&format!("/api/providers/{me}/audits")).await else { return };
    for a in v.audits {
        let key = (a.task.id, a.due);
        if !ctx.auditing.lock().unwrap_or_else(|p| p.into_inner()).insert(key) {
            continue;
        }
        let c = ctx.clone();
        tokio::spawn(async move {
            audit(&c, a).await;
            c.auditing.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        });
    }
}

/// Whether the worker's claimed bundle and this auditor's own re-run ended with the same exit
/// status and hold the same output files (the check of a job declared non-deterministic).
async fn loosely_same(
    ctx: &Arc<Ctx>,
    spec: &cairn_types::JobSpec,
    worker: Option<cairn_types::Address>,
    mine: &ContentId,
    claimed: &ContentId,
) -> bool {
    use cairn_types::{Canonical as _, OutputBundle};
    let sources = crate::pipeline::sources_from(ctx, spec, worker).await;
    let Ok(path) = ctx.fetcher.fetch(&ctx.blobs, claimed, None, crate::daemon::MAX_BLOB, &sources).await
    else {
        return false;
    };
    let read = |p: &std::path::Path| std::fs::read(p).ok().and_then(|b| OutputBundle::decode(&b).ok());
    let (Some(theirs), Some(ours)) =
        (read(&path), ctx.blobs.read(mine).ok().and_then(|b| OutputBundle::decode(&b).ok()))
    else {
        return false;
    };
    let files =
        |b: &OutputBundle| b.files.keys().filter(|k| !k.starts_with(".cairn/")).cloned().collect::<Vec<_>>();
    theirs.exit() == ours.exit() && files(&theirs) == files(&ours)
}

async fn audit(ctx: &Arc<Ctx>, a: AuditView) {
    let task = a.task;
    let worker = match &task.state {
        TaskState::Committed { provider, .. } | TaskState::Settled { provider, .. } => Some(*provider),
        _ => None,
    };
    let (output, metering, streams) = if ctx.cfg.behaviour.reruns_audit(worker.as_ref()) {
        let Ok(permit) = ctx.slots.acquire().await else { return };
        let Some(spec) = spec_of(ctx, &task.job).await else {
            warn!(task = %task.id.short(), "cannot read the audited job's spec");
            return;
        };
        let ran = crate::pipeline::execute(ctx, &task, &spec, false).await;
        drop(permit);
        match ran {
            Ok((output, units, output_bytes)) => {
                let streams = crate::pipeline::stream_ends(ctx, &task.id, &spec, &output);
                // A non-deterministic job is checked loosely: the claim stands if it ended the
                // same way with the same files.
                let output =
                    if !spec.deterministic && loosely_same(ctx, &spec, worker, &output, &a.claimed).await {
                        a.claimed
                    } else {
                        output
                    };
                (output, Metering { units, output_bytes }, streams)
            }
            Err(e) => {
                // Tried again after a pause (the assignment stays listed until its deadline).
                warn!(task = %task.id.short(), error = %e, "cannot re-run the audited task; retrying in 15 s");
                tokio::time::sleep(Duration::from_secs(15)).await;
                return;
            }
        }
    } else {
        (a.claimed, Metering::default(), Vec::new())
    };
    let verdict =
        if cairn_types::stream::claim(&output, &streams) == a.claimed { "match" } else { "mismatch" };
    let body = TxBody::SubmitAudit(SubmitAudit { task: task.id, output, metering, streams });
    match ctx.sender.submit_and_wait(body, Duration::from_secs(60)).await {
        Ok(TxStatus::Ok) => {
            info!(task = %task.id.short(), output = %output.short(), verdict, "audit submitted");
        }
        Ok(other) => warn!(task = %task.id.short(), ?other, "audit verdict refused"),
        Err(e) => warn!(task = %task.id.short(), error = %e, "audit verdict not accepted"),
    }
}
