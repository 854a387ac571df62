//! The executor pipeline: fetch a task's workload and inputs (verified), run it in the
//! executor for its kind, and keep the output bundle in the blob store.

use std::sync::Arc;

use cairn_runtime::{Executor, TaskRun};
use cairn_state::model::Task;
use cairn_types::stream::StreamEnd;
use cairn_types::{Canonical, ContentId, JobSpec, WorkloadKind};
use tracing::{info, warn};

use crate::daemon::{Ctx, MAX_BLOB};
use crate::ledger::now_ms;
use crate::{Error, Result};

/// Fetch a blob from the job's hints, the node, and the replicas of any storage deal keeping
/// it (a dataset, checkpoint or asset stored with `cairn store put`), verified.
pub(crate) async fn fetch(
    ctx: &Ctx,
    spec: &JobSpec,
    id: &ContentId,
    size: Option<u64>,
) -> Result<std::path::PathBuf> {
    let mut sources = spec.hints.clone();
    sources.push(ctx.cfg.node.clone());
    if !ctx.blobs.has(id) {
        sources.extend(stored_replicas(ctx, id).await);
    }
    Ok(ctx.fetcher.fetch(&ctx.blobs, id, size, MAX_BLOB, &sources).await?)
}

/// Endpoints of storage replicas that proved they hold `id` (none when no deal keeps it).
pub(crate) async fn stored_replicas(ctx: &Ctx, id: &ContentId) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Replicas {
        endpoints: Vec<String>,
    }
    match ctx.client.get::<Replicas>(&format!("/api/blobs/{id}/replicas")).await {
        Ok(r) => r.endpoints.into_iter().filter(|e| *e != ctx.cfg.endpoint).collect(),
        Err(_) => Vec::new(),
    }
}

/// The stream ends committed with an inference result: recomputed from the stored output
/// bundle, so they are what the task's replies really were (empty for other kinds).
pub(crate) fn stream_ends(
    ctx: &Ctx,
    task: &cairn_types::TaskId,
    spec: &JobSpec,
    output: &ContentId,
) -> Vec<StreamEnd> {
    if spec.kind != WorkloadKind::Inference {
        return Vec::new();
    }
    match ctx.blobs.read(output).ok().and_then(|b| cairn_types::OutputBundle::decode(&b).ok()) {
        Some(bundle) => cairn_runtime::inference::stream_ends(task, &bundle),
        None => {
            warn!(task = %task.short(), "cannot read the output bundle for its stream ends");
            Vec::new()
        }
    }
}

#[derive(serde::Deserialize)]
struct ProviderView {
    provider: cairn_state::model::Provider,
}

/// Where a blob that `producer` made can be fetched: that provider's endpoint first (unless it
/// is this one), then the job's hints and the node.
pub(crate) async fn sources_from(
    ctx: &Ctx,
    spec: &JobSpec,
    producer: Option<cairn_types::Address>,
) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(p) = producer.filter(|p| *p != ctx.me)
        && let Ok(v) = ctx.client.get::<ProviderView>(&format!("/api/providers/{p}")).await
    {
        out.push(v.provider.info.endpoint);
    }
    for s in spec.hints.iter().chain(std::iter::once(&ctx.cfg.node)) {
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    out
}

/// Run a task and store its output bundle. With `forge`, the output is then falsified
/// (adversary behaviours only).
pub(crate) async fn execute(
    ctx: &Ctx,
    task: &Task,
    spec: &JobSpec,
    forge: bool,
) -> Result<(ContentId, u64, u64)> {
    if forge && !ctx.cfg.behaviour.runs_work() {
        // A plausible result without the work: a clean exit and nothing written.
        let mut bundle = cairn_types::OutputBundle::default();
        bundle.files.insert(cairn_types::OutputBundle::EXIT.into(), b"ok".to_vec());
        let bytes = bundle.encode();
        let output = ctx.blobs.put_bytes(&bytes)?;
        warn!(task = %task.id.short(), behaviour = ctx.cfg.behaviour.name(), "skipped the work");
        return Ok((output, 1, bytes.len() as u64));
    }
    let workload = fetch(ctx, spec, &spec.workload, None).await?;
    let mut inputs = Vec::new();
    for i in &spec.inputs {
        inputs.push((i.name.clone(), fetch(ctx, spec, &i.id, Some(i.size)).await?));
    }
    if let Some(i) = spec.task_inputs.get(task.index as usize) {
        inputs.push((i.name.clone(), fetch(ctx, spec, &i.id, Some(i.size)).await?));
    }
    inputs.extend(crate::train::inputs(ctx, spec, task).await?);
    ctx.ledger(|l| {
        if let Some(e) = l.tasks.get_mut(&task.id) {
            e.started_ms = Some(now_ms());
        }
    });
    let run = TaskRun {
        workload: spec.workload,
        inputs,
        args: spec.args.clone(),
        env: spec.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        task_index: task.index,
        tasks: spec.tasks,
        limits: spec.limits.clone(),
        memory_mb: spec.resources.memory_mb,
        cpu_millis: spec.resources.cpu_millis,
        seed: task.id.0,
        train: spec.train.as_deref().cloned(),
        network: spec.network,
        render: spec.render.as_deref().cloned(),
    };
    let exec: Arc<dyn Executor> = match spec.kind {
        WorkloadKind::Inference => ctx.infer.clone(),
        WorkloadKind::Train => ctx.train.clone(),
        WorkloadKind::Render => match &ctx.render {
            Some(r) => r.clone(),
            None => return Err(Error::Config("this provider does not render".into())),
        },
        WorkloadKind::Container => match &ctx.container {
            Some(c) => c.clone(),
            None => return Err(Error::Config("this provider does not run containers".into())),
        },
        _ => ctx.exec.clone(),
    };
    let id = spec.workload;
    if spec.kind == WorkloadKind::Inference {
        // A run starts its streams afresh: a retry must not extend the chains of an earlier try.
        ctx.streams.begin_task(&task.id);
    }
    let ran = tokio::task::spawn_blocking(move || {
        if !exec.is_prepared(&id) {
            exec.prepare_file(&id, &workload)?;
        }
        exec.run(&run)
    })
    .await
    .map_err(|e| Error::Config(format!("executor thread: {e}")));
    if spec.kind == WorkloadKind::Inference {
        ctx.streams.end_task(&task.id);
    }
    let outcome = match ran? {
        Ok(o) => o,
        // The job itself cannot run (not a module, output over its cap): every honest provider
        // and auditor gets the same, so the failure is the result, committed and paid like one.
        Err(e) if let Some(exit) = e.committable_exit() => {
            warn!(task = %task.id.short(), error = %e, "the job cannot run; committing the failure as its result");
            let mut bundle = cairn_types::OutputBundle::default();
            bundle.files.insert(cairn_types::OutputBundle::EXIT.into(), exit.into_bytes());
            cairn_runtime::Outcome { bundle, units: 0, wall_ms: 0 }
        }
        Err(e) => return Err(e.into()),
    };
    let mut bundle = outcome.bundle;
    if forge {
        let mut out = bundle.files.get(cairn_types::OutputBundle::STDOUT).cloned().unwrap_or_default();
        out.extend_from_slice(b"\n(forged)");
        bundle.files.insert(cairn_types::OutputBundle::STDOUT.into(), out);
        warn!(task = %task.id.short(), behaviour = ctx.cfg.behaviour.name(), "forged the output");
    }
    let bytes = bundle.encode();
    let output = ctx.blobs.put_bytes(&bytes)?;
    info!(task = %task.id.short(), output = %output.short(), units = outcome.units, ms = outcome.wall_ms, exit = bundle.exit().unwrap_or("?"), "task ran");
    Ok((output, outcome.units, bytes.len() as u64))
}
