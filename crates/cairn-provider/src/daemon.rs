//! The provider's main loop.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_blobs::{BlobStore, Fetcher};
use cairn_client::Client;
use cairn_runtime::{Executor, InferenceExecutor, WasmConfig, WasmExecutor};
use cairn_state::model::{Provider, Stake, Task, TaskState};
use cairn_types::{
    Address, Amount, Bond, CommitResult, ErrorCode, Heartbeat, JobId, JobSpec, Metering, ProviderInfo,
    Receipt, RegisterProvider, SecretKey, TaskId, TxBody, TxStatus, UpdateProvider, WorkloadKind,
};
use futures::StreamExt as _;
use serde::Deserialize;
use tokio::sync::{Notify, Semaphore};
use tracing::{info, warn};

use crate::bids::{PricingPolicy, policy};
use crate::config::{ProviderConfig, ProviderHome};
use crate::ledger::{Entry, Ledger, Phase, now_ms};
use crate::sender::Sender;
use crate::{Error, Result, inventory};

/// Largest workload or input a provider fetches.
pub(crate) const MAX_BLOB: u64 = 2 << 30;

/// Everything the loops share.
pub(crate) struct Ctx {
    pub(crate) me: Address,
    pub(crate) cfg: ProviderConfig,
    pub(crate) client: Client,
    pub(crate) sender: Sender,
    pub(crate) blobs: Arc<BlobStore>,
    pub(crate) fetcher: Fetcher,
    pub(crate) exec: Arc<WasmExecutor>,
    pub(crate) infer: Arc<InferenceExecutor>,
    pub(crate) train: Arc<cairn_runtime::TrainExecutor>,
    /// Native containers (runc), where the operator prices `container` or `service` work.
    pub(crate) container: Option<Arc<cairn_runtime::ContainerExecutor>>,
    /// Blender scenes, where the operator prices `render` work.
    pub(crate) render: Option<Arc<cairn_runtime::RenderExecutor>>,
    /// Leases' services, where the operator prices `service` work.
    pub(crate) services: Option<Arc<crate::services::Services>>,
    /// `model:<id>` = `<task>:<name>` for each model served.
    pub(crate) model_attrs: BTreeMap<String, String>,
    pub(crate) ledger: Mutex<Ledger>,
    pub(crate) active: Mutex<BTreeSet<TaskId>>,
    pub(crate) bid_on: Mutex<BTreeSet<TaskId>>,
    /// Sealed bids not yet revealed: the price each commits to.
    pub(crate) sealed: Mutex<BTreeMap<TaskId, Amount>>,
    /// Secret from which bid salts are derived (so only this provider can open its bids).
    pub(crate) salt_key: [u8; 32],
    /// Audit assignments being answered, by task and verdict deadline.
    pub(crate) auditing: Mutex<BTreeSet<(TaskId, u64)>>,
    pub(crate) specs: Mutex<BTreeMap<JobId, JobSpec>>,
    pub(crate) pricing: Box<dyn PricingPolicy>,
    pub(crate) slots: Semaphore,
    /// Inference tasks run at once: they share each model's decode loop, which batches them.
    pub(crate) infer_slots: Semaphore,
    pub(crate) streams: Arc<crate::streams::Streams>,
    pub(crate) wake: Notify,
    /// Storage replicas: proofs sent, fetches running.
    pub(crate) storage: crate::storage::StorageState,
    pub(crate) storage_wake: Notify,
}

impl Ctx {
    pub(crate) fn ledger<T>(&self, f: impl FnOnce(&mut Ledger) -> T) -> T {
        let mut l = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        let out = f(&mut l);
        if let Err(e) = l.save() {
            warn!(error = %e, "cannot save the task ledger");
        }
        out
    }
}

#[derive(Deserialize)]
pub(crate) struct TasksView {
    pub(crate) tasks: Vec<Task>,
}

#[derive(Deserialize)]
struct JobView {
    spec: Option<JobSpec>,
}

#[derive(Deserialize)]
struct ProviderView {
    provider: Provider,
}

/// Run `op` until it succeeds or fails for a reason retrying cannot fix: a node that is
/// unreachable, slow or overloaded is waited out (with backoff), a refusal is returned.
async fn patiently<T, E, F, Fut>(what: &str, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, E>>,
    E: Into<Error>,
{
    let mut delay = Duration::from_millis(500);
    loop {
        match op().await.map_err(Into::into) {
            Err(Error::Node(e)) if e.is_transient() => {
                warn!(error = %e, "{what}: the node did not answer in time; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

async fn wait_for_node(client: &Client) -> cairn_types::api::StatusView {
    let mut delay = Duration::from_millis(200);
    loop {
        match client.status().await {
            Ok(s) if s.ready => return s,
            Ok(_) => info!("waiting for the node to load its state"),
            Err(e) => warn!(error = %e, "node not reachable yet"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Run the provider in `home` until the process stops.
///
/// # Errors
/// [`Error`] when it cannot start (configuration, registration refused); once running, node
/// outages are waited out rather than returned.
pub async fn run(home: &Path) -> Result<()> {
    let home = ProviderHome(home.to_path_buf());
    let cfg = home.load_config()?;
    let key = home.load_key()?;
    let client = Client::new(&cfg.node);
    let status = wait_for_node(&client).await;
    let params = patiently("reading the chain's parameters", || client.params()).await?;
    let fee: Amount = params
        .get("min_tx_fee")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .ok_or_else(|| Error::Config("the node did not report min_tx_fee".into()))?;
    let pricing = policy(&cfg.pricing).map_err(Error::Config)?;
    let blobs = Arc::new(BlobStore::open(home.blobs())?);
    // Training outputs are copied to the node, which keeps uploads signed by funded accounts.
    let fetcher = Fetcher::new().with_uploader(cairn_types::upload::UploadAuth {
        key: key.clone(),
        chain_id: status.chain_id.clone(),
    });
    let infer = Arc::new(InferenceExecutor::new(inference_config(&cfg, &home)));
    let lie = cfg.behaviour == cairn_types::Behaviour::StreamLies;
    let streams = Arc::new(crate::streams::Streams::new(key.clone(), lie));
    let sink = streams.clone();
    infer.set_token_sink(Arc::new(move |task, index, ev| sink.token(&TaskId(*task), index, ev)));
    let model_attrs = prepare_models(&cfg, &blobs, &fetcher, &infer).await?;
    let native = [WorkloadKind::Container, WorkloadKind::Service];
    let container = if native.iter().any(|k| cfg.prices.contains_key(k)) {
        let runc = std::path::Path::new("runc");
        if !cairn_runtime::container::available(runc) {
            return Err(Error::Config(
                "`container` or `service` is priced, but runc does not run here (install runc and run as root)"
                    .into(),
            ));
        }
        let dir = home.runtime().join("containers");
        Some(Arc::new(cairn_runtime::ContainerExecutor::new(cairn_runtime::ContainerConfig::in_dir(dir))?))
    } else {
        None
    };
    let exec = Arc::new(WasmExecutor::new(WasmConfig::in_dir(home.runtime()))?);
    let render = crate::render::executor(&cfg, &home.runtime().join("render")).await?;
    let services = match (&container, cfg.prices.contains_key(&WorkloadKind::Service)) {
        (Some(images), true) => {
            let host = cairn_runtime::container::service::ServiceHost::new(
                images.clone(),
                home.runtime().join("services"),
            )?;
            Some(Arc::new(crate::services::Services::new(host, exec.clone())?))
        }
        _ => None,
    };
    let ctx = Arc::new(Ctx {
        me: key.address(),
        client: client.clone(),
        sender: Sender::new(client.clone(), key.clone(), status.chain_id.clone(), fee),
        blobs,
        fetcher,
        exec,
        infer,
        train: Arc::new(cairn_runtime::TrainExecutor::new()),
        container,
        render,
        services,
        model_attrs,
        ledger: Mutex::new(Ledger::load(&home.ledger())?),
        active: Mutex::new(BTreeSet::new()),
        bid_on: Mutex::new(BTreeSet::new()),
        sealed: Mutex::new(BTreeMap::new()),
        salt_key: cairn_types::hash_domain("cairn bid salt key v1", &[key.seed().as_slice()]),
        auditing: Mutex::new(BTreeSet::new()),
        specs: Mutex::new(BTreeMap::new()),
        pricing,
        slots: Semaphore::new(cfg.max_parallel),
        infer_slots: Semaphore::new(cfg.max_parallel.max(cairn_runtime::inference::batch::MAX_BATCH)),
        streams,
        wake: Notify::new(),
        storage: Default::default(),
        storage_wake: Notify::new(),
        cfg,
    });
    serve(&ctx).await?;
    patiently("registering", || register(&ctx, &key)).await?;
    info!(provider = %ctx.me, endpoint = %ctx.cfg.endpoint, "provider ready");
    if ctx.cfg.behaviour != cairn_types::Behaviour::Honest {
        warn!(behaviour = ctx.cfg.behaviour.name(), "this provider runs an adversary behaviour");
    }

    let hb = ctx.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(hb.cfg.heartbeat_secs.max(1))).await;
            if let Err(e) = hb.sender.submit(TxBody::Heartbeat(Heartbeat {})).await {
                warn!(error = %e, "heartbeat not accepted; will retry");
            }
        }
    });
    let ev = ctx.clone();
    tokio::spawn(async move { watch_events(ev).await });
    tokio::spawn(crate::services::run(ctx.clone()));
    tokio::spawn(crate::services::stop_on_signal(ctx.clone()));
    tokio::spawn(crate::volumes::run(ctx.clone()));
    tokio::spawn(crate::probes::run(ctx.clone()));
    if ctx.cfg.storage.is_some() {
        tokio::spawn(crate::storage::run(ctx.clone()));
    }
    loop {
        reconcile(&ctx).await;
        let _ = tokio::time::timeout(Duration::from_millis(500), ctx.wake.notified()).await;
    }
}

/// The blob endpoint (outputs are fetched from here) and a status page.
async fn serve(ctx: &Arc<Ctx>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(ctx.cfg.listen).await.map_err(|e| {
        Error::Config(format!("cannot listen on {} (`listen` in provider.toml): {e}", ctx.cfg.listen))
    })?;
    let status_ctx = ctx.clone();
    let assigned_ctx = ctx.clone();
    let assigned = Arc::new(move |t: &TaskId| {
        assigned_ctx.active.lock().unwrap_or_else(|p| p.into_inner()).contains(t)
            || assigned_ctx.ledger.lock().unwrap_or_else(|p| p.into_inner()).tasks.contains_key(t)
    });
    let mut app = cairn_blobs::router(ctx.blobs.clone())
        .merge(crate::streams::router(ctx.streams.clone(), assigned))
        .route(
            "/provider/status",
            axum::routing::get(move || {
                let c = status_ctx.clone();
                async move {
                    let tasks = c.ledger.lock().unwrap_or_else(|p| p.into_inner()).tasks.clone();
                    let active = c.active.lock().unwrap_or_else(|p| p.into_inner()).len();
                    axum::Json(serde_json::json!({ "provider": c.me, "active": active, "tasks": tasks }))
                }
            }),
        );
    if let Some(svc) = &ctx.services {
        app = app.merge(crate::services::router(svc.clone()));
    }
    if ctx.cfg.storage.is_some() {
        app = app.merge(crate::storage::router(ctx.clone()));
    }
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "blob endpoint stopped");
        }
    });
    Ok(())
}

pub use crate::models::model_attribute;
use crate::models::{inference_config, prepare_models};

pub(crate) fn info_from(ctx: &Ctx) -> ProviderInfo {
    let cfg = &ctx.cfg;
    let mut attributes = cfg.attributes.clone();
    attributes.extend(ctx.model_attrs.iter().map(|(k, v)| (k.clone(), v.clone())));
    crate::render::attributes(ctx.render.as_deref(), &mut attributes);
    if ctx.container.is_some() && cairn_runtime::container::egress::available() {
        attributes.insert(cairn_types::NETWORK_ATTRIBUTE.to_string(), "egress".to_string());
    }
    ProviderInfo {
        endpoint: cfg.endpoint.clone(),
        region: cfg.region,
        attributes,
        capacity: cfg.capacity.clone().unwrap_or_else(inventory::detect),
        prices: cfg.price_sheet(),
        storage: cfg.storage.clone(),
    }
}

async fn register(ctx: &Ctx, key: &SecretKey) -> Result<()> {
    let me = key.address();
    let account = ctx.client.account(&me).await?;
    let stake: Stake = serde_json::from_value(account.stake.clone()).unwrap_or_default();
    if stake.bonded < ctx.cfg.stake {
        let need = ctx.cfg.stake.checked_sub(stake.bonded).unwrap_or_default();
        match submit_until_final(ctx, TxBody::Bond(Bond { amount: need })).await? {
            TxStatus::Ok => info!(amount = %need, "bonded stake"),
            other => {
                return Err(Error::Config(format!(
                    "bonding {need} failed: {other:?} (balance {})",
                    account.balance
                )));
            }
        }
    }
    let info = info_from(ctx);
    let body = match ctx.client.get::<ProviderView>(&format!("/api/providers/{me}")).await {
        Ok(v) if v.provider.info == info => return Ok(()),
        Ok(_) => TxBody::UpdateProvider(UpdateProvider { info }),
        Err(e) if e.code() == Some("not_found") => TxBody::RegisterProvider(RegisterProvider { info }),
        Err(e) => return Err(e.into()),
    };
    match submit_until_final(ctx, body).await? {
        TxStatus::Ok => Ok(()),
        other => Err(Error::Config(format!("registration refused: {other:?}"))),
    }
}

/// Submit a registration transaction and wait for its receipt however slow the chain is, so a
/// retry after a slow answer never submits it twice.
async fn submit_until_final(ctx: &Ctx, body: TxBody) -> Result<TxStatus> {
    let hash = ctx.sender.submit(body).await?;
    loop {
        match ctx.client.wait_for(&hash, Duration::from_secs(60)).await {
            Ok((_, Receipt::Tx { status, .. })) => return Ok(status),
            Ok((_, Receipt::EndBlock { .. })) => return Ok(TxStatus::Ok),
            Err(e) if e.is_transient() => {
                warn!(error = %e, tx = %hash, "still waiting for a block to include it")
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Wake the reconcile loop whenever the chain says something about tasks.
async fn watch_events(ctx: Arc<Ctx>) {
    loop {
        match ctx.client.events(None).await {
            Ok(stream) => {
                let mut stream = Box::pin(stream);
                while let Some(ev) = stream.next().await {
                    let kind = ev.pointer("/event/event").and_then(|k| k.as_str()).unwrap_or("");
                    if matches!(kind, "task_opened" | "task_assigned" | "job_submitted" | "audit_assigned")
                        || ev["type"] == "block"
                    {
                        ctx.wake.notify_one();
                    }
                    if matches!(kind, "replica_assigned" | "deal_epoch") {
                        ctx.storage_wake.notify_one();
                    }
                }
            }
            Err(e) => warn!(error = %e, "event stream unavailable; polling"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub(crate) async fn spec_of(ctx: &Ctx, job: &JobId) -> Option<JobSpec> {
    if let Some(s) = ctx.specs.lock().unwrap_or_else(|p| p.into_inner()).get(job) {
        return Some(s.clone());
    }
    let v: JobView = ctx.client.get(&format!("/api/jobs/{job}")).await.ok()?;
    let spec = v.spec?;
    ctx.specs.lock().unwrap_or_else(|p| p.into_inner()).insert(*job, spec.clone());
    Some(spec)
}

pub(crate) fn serves(ctx: &Ctx, spec: &JobSpec) -> Option<Amount> {
    match spec.kind {
        WorkloadKind::Wasm => {}
        WorkloadKind::Render if ctx.render.is_some() => {}
        // Inference only on the models this provider holds.
        WorkloadKind::Inference if ctx.infer.is_prepared(&spec.workload) => {}
        WorkloadKind::Train => {}
        WorkloadKind::Container if ctx.container.is_some() => {}
        // Services are leases the chain assigns (see `services`), never tasks to bid on.
        _ => return None,
    }
    ctx.cfg.prices.get(&spec.kind).copied()
}

async fn reconcile(ctx: &Arc<Ctx>) {
    let me = ctx.me;
    match ctx.client.get::<TasksView>(&format!("/api/providers/{me}/tasks")).await {
        Ok(v) => {
            let assigned: BTreeMap<TaskId, Task> = v.tasks.into_iter().map(|t| (t.id, t)).collect();
            let active = ctx.active.lock().unwrap_or_else(|p| p.into_inner()).clone();
            // Tasks we hold that the chain no longer assigns to us: committed ones settle,
            // the rest were released (deadline passed, cancelled).
            ctx.ledger(|l| {
                l.tasks.retain(|id, e| {
                    let keep = assigned.contains_key(id) || active.contains(id);
                    if !keep && !matches!(e.phase, Phase::Committed { .. }) {
                        info!(task = %id.short(), "task no longer assigned here; released");
                    }
                    keep
                })
            });
            for (id, task) in assigned {
                if active.contains(&id) {
                    continue;
                }
                ctx.active.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
                let c = ctx.clone();
                tokio::spawn(async move {
                    process(&c, task).await;
                    c.active.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                });
            }
        }
        Err(e) => warn!(error = %e, "cannot list assigned tasks; running work continues"),
    }
    crate::audit::audits(ctx).await;
    crate::bidding::bid(ctx).await;
}

async fn process(ctx: &Arc<Ctx>, task: Task) {
    let TaskState::Assigned { deadline, .. } = task.state else { return };
    let existing = ctx.ledger.lock().unwrap_or_else(|p| p.into_inner()).tasks.get(&task.id).cloned();
    let done = match existing {
        Some(Entry { attempt, phase: Phase::Done { output, units, output_bytes }, .. })
            if attempt == task.attempt && ctx.blobs.has(&output) =>
        {
            Some((output, units, output_bytes))
        }
        _ => None,
    };
    let tries = match &existing {
        Some(Entry { attempt, phase: Phase::Failed { tries, retry_at_ms, .. }, .. })
            if *attempt == task.attempt =>
        {
            if now_ms() < *retry_at_ms {
                return;
            }
            *tries
        }
        _ => 0,
    };
    let (output, units, output_bytes) = match done {
        Some(d) => d,
        None => {
            ctx.ledger(|l| {
                l.tasks.insert(
                    task.id,
                    Entry {
                        job: task.job,
                        index: task.index,
                        attempt: task.attempt,
                        phase: Phase::Running,
                        seen_ms: now_ms(),
                        started_ms: None,
                    },
                )
            });
            let Some(spec) = spec_of(ctx, &task.job).await else {
                warn!(task = %task.id.short(), "cannot read the job spec; will retry");
                ctx.ledger(|l| l.tasks.remove(&task.id));
                return;
            };
            let slots = if spec.kind == WorkloadKind::Inference { &ctx.infer_slots } else { &ctx.slots };
            let Ok(_permit) = slots.acquire().await else { return };
            let forge = ctx.cfg.behaviour.cheats_on(&task.id);
            match crate::pipeline::execute(ctx, &task, &spec, forge).await {
                Ok(r) => {
                    if spec.kind == WorkloadKind::Train && !forge {
                        crate::train::publish(ctx, &r.0).await;
                    }
                    ctx.ledger(|l| {
                        if let Some(e) = l.tasks.get_mut(&task.id) {
                            e.phase = Phase::Done { output: r.0, units: r.1, output_bytes: r.2 };
                        }
                    });
                    r
                }
                Err(e) => {
                    // Not a committable result (wall-clock cap, inputs unavailable): try again
                    // after a back-off; after the deadline the chain hands the task on.
                    let tries = tries.saturating_add(1);
                    let wait = Phase::backoff_ms(tries);
                    warn!(task = %task.id.short(), error = %e, tries, retry_in_s = wait / 1000, "task failed here");
                    ctx.ledger(|l| {
                        if let Some(entry) = l.tasks.get_mut(&task.id) {
                            entry.phase = Phase::Failed {
                                reason: e.to_string(),
                                tries,
                                retry_at_ms: now_ms().saturating_add(wait),
                            };
                        }
                    });
                    return;
                }
            }
        }
    };
    // An inference result commits where each reply's live stream ended, from the stored output.
    let Some(spec) = spec_of(ctx, &task.job).await else {
        warn!(task = %task.id.short(), "cannot read the job spec to commit; will retry");
        return;
    };
    let streams = crate::pipeline::stream_ends(ctx, &task.id, &spec, &output);
    let commit = TxBody::CommitResult(CommitResult {
        task: task.id,
        output,
        metering: Metering { units, output_bytes },
        streams,
    });
    let mut delay = Duration::from_millis(200);
    loop {
        match ctx.sender.submit_and_wait(commit.clone(), Duration::from_secs(30)).await {
            Ok(TxStatus::Ok) => {
                info!(task = %task.id.short(), output = %output.short(), "committed");
                ctx.ledger(|l| {
                    if let Some(e) = l.tasks.get_mut(&task.id) {
                        e.phase = Phase::Committed { output };
                    }
                });
                if ctx.cfg.behaviour == cairn_types::Behaviour::CommitThenVanish {
                    warn!(task = %task.id.short(), "committed; vanishing (adversary behaviour)");
                    std::process::exit(0);
                }
                return;
            }
            Ok(TxStatus::Failed(code) | TxStatus::Rejected(code))
                if matches!(
                    code,
                    ErrorCode::DeadlinePassed | ErrorCode::NotAssignedProvider | ErrorCode::TaskNotAssigned
                ) =>
            {
                warn!(task = %task.id.short(), %code, "too late to commit; releasing");
                ctx.ledger(|l| l.tasks.remove(&task.id));
                return;
            }
            Ok(other) => warn!(task = %task.id.short(), ?other, "commit refused; retrying"),
            Err(e) => warn!(task = %task.id.short(), error = %e, "node unavailable for the commit; retrying"),
        }
        if let Ok(s) = ctx.client.status().await
            && s.height > deadline
        {
            warn!(task = %task.id.short(), "deadline passed before the commit landed; releasing");
            ctx.ledger(|l| l.tasks.remove(&task.id));
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
