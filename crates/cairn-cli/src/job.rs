//! `cairn job …`: submit a job and follow it to its verified outputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use cairn_blobs::{BlobStore, Fetcher};
use cairn_client::Client;
use cairn_state::model::{Job, Provider, Task, TaskState};
use cairn_types::{
    Amount, CancelJob, Canonical, ContentId, Event, JobId, JobSpec, OutputBundle, Receipt, SecretKey,
    SubmitJob, Tx, TxBody, TxStatus, VerificationLevel,
};
use clap::{Args, Subcommand};
use serde::Deserialize;

use crate::keys::KeyArgs;

#[derive(Debug, Subcommand)]
pub(crate) enum JobCommand {
    /// Submit a job from a YAML spec (local files are uploaded).
    Submit(SubmitArgs),
    /// Show a job's tasks, providers, prices and outputs.
    Status(IdArgs),
    /// Follow a job until every task is settled or refunded.
    Watch(IdArgs),
    /// Show each task's exit status, standard output and error.
    Logs(IdArgs),
    /// Fetch and verify a job's outputs into a directory.
    Result(ResultArgs),
    /// Cancel a job; tasks without a committed result are refunded.
    Cancel(CancelArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ApiArgs {
    /// Node API.
    #[arg(long, env = "CAIRN_API", default_value = "http://127.0.0.1:8080")]
    pub(crate) api: String,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SubmitArgs {
    /// The job spec (YAML).
    spec: PathBuf,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    api: ApiArgs,
    /// Return once the job is accepted instead of following it.
    #[arg(long)]
    no_watch: bool,
    /// For `kind: service` specs: how the lease is opened.
    #[command(flatten)]
    lease: crate::service::OpenOptions,
}

/// Refuse a module a provider would refuse, before anything is paid.
pub(crate) fn check_wasm(bytes: &[u8]) -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("cairn-validate-{}", std::process::id()));
    let exec =
        cairn_runtime::WasmExecutor::new(cairn_runtime::WasmConfig { work_dir: tmp, cache_dir: None })?;
    exec.validate(bytes).context("the workload is not a valid WebAssembly module")?;
    Ok(())
}

/// Refuse an image a provider would refuse, before anything is paid.
pub(crate) fn check_image(bytes: &[u8]) -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("cairn-image-check-{}", std::process::id()));
    let checked = cairn_runtime::container::image::unpack(bytes, &tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    checked.context("the workload is not a container image")?;
    Ok(())
}

#[derive(Debug, Args)]
pub(crate) struct IdArgs {
    /// The job id.
    job: JobId,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ResultArgs {
    /// The job id.
    job: JobId,
    /// Where to write the files (a directory per task).
    #[arg(long, default_value = "cairn-results")]
    out: PathBuf,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Debug, Args)]
pub(crate) struct CancelArgs {
    /// The job id.
    job: JobId,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    api: ApiArgs,
}

/// `GET /api/jobs/{id}`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct JobView {
    pub(crate) job: Job,
    pub(crate) spec: Option<JobSpec>,
    pub(crate) escrow: Amount,
    pub(crate) tasks: Vec<Task>,
}

pub(crate) async fn job_view(client: &Client, job: &JobId) -> Result<JobView> {
    client.get(&format!("/api/jobs/{job}")).await.with_context(|| format!("reading job {job}"))
}

pub(crate) async fn fee_and_chain(client: &Client) -> Result<(Amount, String, cairn_state::Params)> {
    let params: cairn_state::Params = serde_json::from_value(client.params().await?)?;
    let chain = client.status().await?.chain_id;
    Ok((params.min_tx_fee, chain, params))
}

/// The escrow a job will lock: (max price + verification fee) × tasks.
pub(crate) fn deposit(spec: &JobSpec, params: &cairn_state::Params) -> Option<Amount> {
    let vfee = match spec.verification {
        VerificationLevel::None => Amount::ZERO,
        _ => spec.max_price_per_task.checked_bps(params.verification_fee_bps)?,
    };
    spec.max_price_per_task.checked_add(vfee)?.checked_mul(u128::from(spec.tasks))
}

/// Sign, submit and wait for a transaction; the receipt's events on success.
pub(crate) async fn send(client: &Client, key: &SecretKey, body: TxBody) -> Result<Vec<Event>> {
    let (fee, chain, _) = fee_and_chain(client).await?;
    let acct = client.account(&key.address()).await?;
    if acct.balance < fee {
        bail!("{} has {}, not enough for the {fee} fee", key.address(), acct.balance);
    }
    let tx = Tx::sign(key, &chain, acct.next_nonce, fee, body);
    let hash = client.submit(&tx).await?;
    let (_, receipt) = client.wait_for(&hash, Duration::from_secs(60)).await?;
    match receipt {
        Receipt::Tx { status: TxStatus::Ok, events, .. } => Ok(events),
        Receipt::Tx { status: TxStatus::Failed(c) | TxStatus::Rejected(c), .. } => {
            bail!("the chain refused it: {c}")
        }
        Receipt::EndBlock { .. } => bail!("unexpected receipt"),
    }
}

/// Submit a resolved spec; returns the job id.
pub(crate) async fn submit(client: &Client, key: &SecretKey, spec: JobSpec) -> Result<JobId> {
    let (fee, _, params) = fee_and_chain(client).await?;
    let need = deposit(&spec, &params).context("the job's escrow overflows")?;
    let acct = client.account(&key.address()).await?;
    let total = need.checked_add(fee).context("overflow")?;
    if acct.balance < total {
        bail!("{} has {}; this job escrows {need} plus a {fee} fee", key.address(), acct.balance);
    }
    let events = send(client, key, TxBody::SubmitJob(SubmitJob { spec })).await?;
    events
        .iter()
        .find_map(|e| match e {
            Event::JobSubmitted { job, .. } => Some(*job),
            _ => None,
        })
        .context("the receipt has no job id")
}

pub(crate) fn state_word(t: &Task) -> &'static str {
    t.state.name()
}

fn counts(v: &JobView) -> BTreeMap<&'static str, usize> {
    let mut c = BTreeMap::new();
    for t in &v.tasks {
        *c.entry(state_word(t)).or_insert(0) += 1;
    }
    c
}

pub(crate) fn finished(v: &JobView) -> bool {
    v.tasks.iter().all(|t| t.state.is_final())
}

/// A progress bar drawn with `template` (hidden when `quiet`).
pub(crate) fn progress_bar(quiet: bool, template: &str) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(0);
    b.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}

/// Follow a job with a progress bar until it finishes (a training job round by round).
pub(crate) async fn watch(client: &Client, job: &JobId, quiet: bool) -> Result<JobView> {
    match job_view(client, job).await?.job.kind {
        cairn_types::WorkloadKind::Train => return crate::train::watch(client, job, quiet).await,
        cairn_types::WorkloadKind::Render => return crate::render::watch(client, job, quiet).await,
        _ => {}
    }
    let bar = progress_bar(quiet, "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} tasks done  {msg}");
    loop {
        let v = job_view(client, job).await?;
        bar.set_length(v.tasks.len() as u64);
        bar.set_position(v.tasks.iter().filter(|t| t.state.is_final()).count() as u64);
        let c = counts(&v);
        let mut msg = c.iter().map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", ");
        // While auctions run: how many bids, and the best price so far.
        let bids: Vec<cairn_types::Amount> = v
            .tasks
            .iter()
            .flat_map(|t| match &t.state {
                TaskState::Open { bids, .. } => bids.iter().map(|b| b.price).collect(),
                _ => Vec::new(),
            })
            .collect();
        if let Some(best) = bids.iter().min() {
            msg.push_str(&format!("; {} bid(s), best {best}", bids.len()));
        }
        bar.set_message(msg);
        bar.tick();
        if finished(&v) {
            bar.finish();
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn print_status(v: &JobView) {
    println!("job {}  ({} tasks, {})", v.job.id, v.job.tasks, v.job.kind);
    println!("  client   {}", v.job.client);
    println!("  escrow   {} held", v.escrow);
    for t in &v.tasks {
        let detail = match &t.state {
            TaskState::Open { auction_end, bids } => {
                format!("open until block {auction_end}, {} bid(s)", bids.len())
            }
            TaskState::Assigned { provider, price, deadline, .. } => {
                format!("assigned to {provider} at {price}, due block {deadline}")
            }
            TaskState::Committed { provider, price, output, settle_at, .. } => {
                format!(
                    "committed by {provider} at {price}, output {}, settles at block {settle_at}",
                    output.short()
                )
            }
            TaskState::Settled { provider, price, output, .. } => {
                format!("settled: {provider} paid {price}, output {output}")
            }
            TaskState::Refunded { reason, .. } => format!("refunded ({reason:?})"),
            TaskState::Waiting {} => "waiting for the round before it".to_string(),
        };
        println!("  task {:>3} attempt {}  {detail}", t.index, t.attempt);
    }
}

/// The verified output bundle of a task, fetched from its provider's endpoint.
pub(crate) async fn fetch_output(
    client: &Client,
    store: &BlobStore,
    provider: &cairn_types::Address,
    output: &ContentId,
) -> Result<OutputBundle> {
    #[derive(Deserialize)]
    struct PV {
        provider: Provider,
    }
    let p: PV = client.get(&format!("/api/providers/{provider}")).await?;
    let path = Fetcher::new()
        .fetch(store, output, None, 1 << 30, &[p.provider.info.endpoint.clone(), client.base().to_string()])
        .await
        .with_context(|| format!("fetching output {output}"))?;
    let bytes = std::fs::read(path)?;
    Ok(OutputBundle::decode(&bytes)?)
}

pub(crate) fn output_of(t: &Task) -> Option<(cairn_types::Address, ContentId)> {
    match &t.state {
        TaskState::Committed { provider, output, .. } | TaskState::Settled { provider, output, .. } => {
            Some((*provider, *output))
        }
        _ => None,
    }
}

pub(crate) fn cache() -> Result<BlobStore> {
    let dir = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".cairn")
        .join("blobs");
    Ok(BlobStore::open(dir)?)
}

/// Write a bundle's files under `dir`, refusing paths that would leave it.
pub(crate) fn write_bundle(dir: &Path, bundle: &OutputBundle) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (name, bytes) in &bundle.files {
        let rel = Path::new(name);
        if rel.is_absolute() || rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            bail!("output file {name:?} has an unsafe path");
        }
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, bytes)?;
        written.push(path);
    }
    Ok(written)
}

/// Reassemble an inference job's per-task `results.jsonl` in request order (task by task,
/// renumbering `index` across the job); returns the number of results.
pub(crate) fn write_results(path: &Path, bundles: &mut [(u32, OutputBundle)]) -> Result<usize> {
    bundles.sort_by_key(|(i, _)| *i);
    let mut out = String::new();
    let mut offset = 0u64;
    for (i, b) in bundles.iter() {
        let bytes = b
            .files
            .get(cairn_runtime::inference::RESULTS_FILE)
            .with_context(|| format!("task {i} has no results.jsonl"))?;
        let lines = cairn_runtime::inference::parse_results(&String::from_utf8_lossy(bytes))
            .map_err(|e| anyhow::anyhow!("task {i}: {}", e.message))?;
        for mut r in lines {
            r.index = offset;
            out.push_str(&serde_json::to_string(&r)?);
            out.push('\n');
            offset = offset.checked_add(1).context("index overflow")?;
        }
    }
    std::fs::write(path, out)?;
    Ok(usize::try_from(offset).unwrap_or(usize::MAX))
}

pub(crate) fn run(cmd: JobCommand) -> Result<()> {
    let rt = crate::runtime()?;
    match cmd {
        JobCommand::Submit(a) => rt.block_on(async {
            let client = Client::new(&a.api.api);
            let text = std::fs::read_to_string(&a.spec).with_context(|| format!("reading {}", a.spec.display()))?;
            let dir = a.spec.parent().map(Path::to_path_buf).unwrap_or_default();
            let key = a.key.load()?;
            let resolved = crate::manifest::resolve(&text, &dir, &client, &key).await?;
            if resolved.spec.kind == cairn_types::WorkloadKind::Service {
                return crate::service::open_and_report(&client, &key, resolved, &a.lease, a.api.json).await;
            }
            if let Some(bytes) = &resolved.workload
                && resolved.spec.kind == cairn_types::WorkloadKind::Wasm
            {
                check_wasm(bytes)?;
            }
            if let Some(bytes) = &resolved.workload
                && resolved.spec.kind == cairn_types::WorkloadKind::Render
                && !cairn_runtime::render::looks_like_blend(bytes)
            {
                anyhow::bail!("the workload is not a .blend file (a render job's workload is the scene)");
            }
            if let Some(bytes) = &resolved.workload
                && resolved.spec.kind == cairn_types::WorkloadKind::Render
            {
                crate::render::check_scene(bytes, &resolved.spec)?;
            }
            // An image a provider would refuse is refused here, before anything is paid.
            if let Some(bytes) = &resolved.workload
                && resolved.spec.kind == cairn_types::WorkloadKind::Container
            {
                check_image(bytes)?;
            }
            // A dataset that cannot train this model is refused here, before anything is paid.
            if let (Some(bytes), Some(plan)) = (&resolved.workload, resolved.spec.train.as_deref()) {
                cairn_runtime::train::Dataset::parse(plan, bytes)
                    .map_err(|e| anyhow::anyhow!("the dataset does not fit the job: {e}"))?;
            }
            if let Some((m, n)) = &resolved.model
                && !a.api.json
            {
                println!(
                    "model {} ({}): {n} request(s) in {} task(s); {} provider(s) serve it, from {}",
                    m.name,
                    m.id.short(),
                    resolved.spec.tasks,
                    m.providers.len(),
                    m.cheapest().map(|p| p.to_string()).unwrap_or_default()
                );
            }
            let job = submit(&client, &key, resolved.spec).await?;
            if a.api.json && a.no_watch {
                println!("{}", serde_json::json!({ "job": job }));
                return Ok(());
            }
            if !a.api.json {
                println!("submitted job {job}");
            }
            if a.no_watch {
                return Ok(());
            }
            let v = watch(&client, &job, a.api.json).await?;
            if a.api.json {
                println!("{}", serde_json::json!({ "job": job, "tasks": v.tasks }));
            } else {
                print_status(&v);
                println!("fetch the outputs with: cairn job result {job} --api {}", client.base());
            }
            Ok(())
        }),
        JobCommand::Status(a) => rt.block_on(async {
            let v = job_view(&Client::new(&a.api.api), &a.job).await?;
            if a.api.json {
                println!("{}", serde_json::json!({ "job": v.job, "spec": v.spec, "escrow": v.escrow, "tasks": v.tasks }));
            } else {
                print_status(&v);
            }
            Ok(())
        }),
        JobCommand::Watch(a) => rt.block_on(async {
            let v = watch(&Client::new(&a.api.api), &a.job, a.api.json).await?;
            if a.api.json {
                println!("{}", serde_json::json!({ "job": v.job, "tasks": v.tasks }));
            } else {
                print_status(&v);
            }
            Ok(())
        }),
        JobCommand::Logs(a) => rt.block_on(async {
            let client = Client::new(&a.api.api);
            let v = job_view(&client, &a.job).await?;
            let store = cache()?;
            let mut report = Vec::new();
            for t in &v.tasks {
                let Some((provider, output)) = output_of(t) else {
                    if a.api.json {
                        report.push(serde_json::json!({ "task": t.index, "state": state_word(t) }));
                    } else {
                        println!("== task {} ({}): no output yet", t.index, state_word(t));
                    }
                    continue;
                };
                let b = fetch_output(&client, &store, &provider, &output).await?;
                let text = |f: &str| b.files.get(f).map(|bytes| String::from_utf8_lossy(bytes).into_owned());
                if a.api.json {
                    report.push(serde_json::json!({
                        "task": t.index,
                        "state": state_word(t),
                        "exit": b.exit(),
                        "stdout": text(OutputBundle::STDOUT),
                        "stderr": text(OutputBundle::STDERR),
                    }));
                    continue;
                }
                println!("== task {}: {}", t.index, b.exit().unwrap_or("?"));
                for f in [OutputBundle::STDOUT, OutputBundle::STDERR] {
                    if let Some(t) = text(f) {
                        println!("-- {f}\n{t}");
                    }
                }
            }
            if a.api.json {
                println!("{}", serde_json::json!({ "job": a.job, "tasks": report }));
            }
            Ok(())
        }),
        JobCommand::Result(a) => rt.block_on(async {
            let client = Client::new(&a.api.api);
            let v = job_view(&client, &a.job).await?;
            let store = cache()?;
            let mut report = Vec::new();
            let mut bundles = Vec::new();
            for t in &v.tasks {
                let Some((provider, output)) = output_of(t) else { continue };
                let b = fetch_output(&client, &store, &provider, &output).await?;
                let dir = a.out.join(format!("task-{}", t.index));
                let files = write_bundle(&dir, &b)?;
                bundles.push((t.index, b.clone()));
                report.push(serde_json::json!({ "task": t.index, "output": output, "exit": b.exit(), "files": files }));
                if !a.api.json {
                    println!("task {}: output {output} verified, {} file(s) in {}", t.index, files.len(), dir.display());
                }
            }
            let mut combined = None;
            if v.job.kind == cairn_types::WorkloadKind::Inference && !bundles.is_empty() {
                if bundles.len() == v.tasks.len() {
                    let path = a.out.join(cairn_runtime::inference::RESULTS_FILE);
                    let n = write_results(&path, &mut bundles)?;
                    if !a.api.json {
                        println!("{n} results in request order in {}", path.display());
                    }
                    combined = Some(path);
                } else if !a.api.json {
                    println!("results.jsonl is written once every task has an output");
                }
            }
            let mut training = None;
            if v.job.kind == cairn_types::WorkloadKind::Train {
                let w = crate::train::result(&client, &v, &a.out).await?;
                if !a.api.json {
                    for m in &w.rounds {
                        println!("round {}: held-out loss {:.4}{}", m.round + 1, m.eval_loss, crate::train::accuracy(m));
                    }
                    println!("metrics in {}", w.metrics.display());
                    if let Some(c) = &w.curve {
                        println!("loss curve in {}", c.display());
                    }
                    if let Some(m) = &w.model {
                        println!("trained model in {} (serve it: cairn model import {})", m.display(), m.display());
                    }
                }
                training = Some(serde_json::json!({ "metrics": w.metrics, "curve": w.curve, "model": w.model, "rounds": w.rounds }));
            }
            let mut rendered = None;
            if v.job.kind == cairn_types::WorkloadKind::Render {
                let r = crate::render::result(&client, &v, &a.out).await?;
                if !a.api.json {
                    crate::render::report(&r, &a.out);
                }
                rendered = Some(crate::render::json(&r));
            }
            if a.api.json {
                println!("{}", serde_json::json!({ "job": a.job, "results": report, "combined": combined, "training": training, "render": rendered }));
            }
            if report.is_empty() {
                bail!("no task of job {} has an output yet", a.job);
            }
            Ok(())
        }),
        JobCommand::Cancel(a) => rt.block_on(async {
            let client = Client::new(&a.api.api);
            let key = a.key.load()?;
            send(&client, &key, TxBody::CancelJob(CancelJob { job: a.job })).await?;
            if a.api.json {
                let v = job_view(&client, &a.job).await?;
                let tasks: Vec<_> = v.tasks.iter().map(|t| serde_json::json!({ "task": t.index, "state": state_word(t) })).collect();
                println!("{}", serde_json::json!({ "job": a.job, "cancelled": true, "tasks": tasks }));
            } else {
                println!("cancelled job {}: tasks without a committed result are refunded", a.job);
            }
            Ok(())
        }),
    }
}
