//! `cairn bench chain`: committed transactions per second and submit-to-finality latency of
//! a real network of validator processes on loopback.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use cairn_client::Client;
use cairn_types::{Amount, SecretKey, Transfer, Tx, TxBody, TxHash};
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Throughput and finality latency of the chain.
    Chain(ChainArgs),
    /// Submit-to-running and submit-to-settled latency of jobs on a devnet.
    Jobs(JobsArgs),
    /// Inference: in-process candle vs the provider's executor vs a market job; model loads.
    Inference(crate::bench_inference::InferenceArgs),
    /// Training: a devnet job vs the same loop in one process, scaling with W, audit overhead.
    Train(crate::bench_train::TrainArgs),
    /// Containers: a CPU-bound program directly vs in the runc sandbox.
    Container(crate::bench_container::ContainerArgs),
    /// Services: lease start-up, SLA accounting and migration off a SIGKILLed provider.
    Service(crate::bench_service::ServiceArgs),
    /// Rendering: frames/min on a devnet with 1/2/3 providers vs `blender -b` directly, and
    /// the share of render compute audits re-run.
    Render(crate::bench_render::RenderArgs),
    /// Storage: possession proof cost and size, put/get throughput against a plain HTTP copy,
    /// and how often a provider keeping part of a blob is caught.
    Storage(crate::bench_storage::StorageArgs),
}

#[derive(Debug, Args)]
pub(crate) struct JobsArgs {
    /// Jobs to submit.
    #[arg(long, default_value_t = 40)]
    jobs: usize,
    /// Where the network lives while measured.
    #[arg(long, default_value = ".cairn/bench-jobs")]
    home: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct ChainArgs {
    /// Validator counts to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 4])]
    validators: Vec<usize>,
    /// Transactions in the throughput run.
    #[arg(long, default_value_t = 40_000)]
    txs: usize,
    /// Distinct senders.
    #[arg(long, default_value_t = 400)]
    senders: usize,
    /// Offered load in the latency run, transactions per second.
    #[arg(long, default_value_t = 1_000)]
    latency_rate: usize,
    /// Seconds of the latency run.
    #[arg(long, default_value_t = 10)]
    latency_secs: u64,
    /// Where the networks live while measured.
    #[arg(long, default_value = ".cairn/bench")]
    home: PathBuf,
}

pub(crate) fn run(cmd: BenchCommand) -> Result<()> {
    let a = match cmd {
        BenchCommand::Chain(a) => a,
        BenchCommand::Jobs(j) => return crate::runtime()?.block_on(jobs(j)),
        BenchCommand::Inference(i) => return crate::runtime()?.block_on(crate::bench_inference::run(i)),
        BenchCommand::Train(t) => return crate::runtime()?.block_on(crate::bench_train::run(t)),
        BenchCommand::Container(c) => return crate::bench_container::run(c),
        BenchCommand::Service(s) => return crate::runtime()?.block_on(crate::bench_service::run(s)),
        BenchCommand::Render(r) => return crate::runtime()?.block_on(crate::bench_render::run(r)),
        BenchCommand::Storage(s) => return crate::runtime()?.block_on(crate::bench_storage::run(s)),
    };
    let rt = crate::runtime()?;
    let mut rows = Vec::new();
    for &n in &a.validators {
        let row = rt.block_on(measure(&a, n))?;
        eprintln!(
            "{n} validator(s): {:.0} tx/s committed, p50 {:.0} ms, p99 {:.0} ms",
            row.tps, row.p50, row.p99
        );
        rows.push((n, row));
    }
    println!(
        "| validators | txs committed | committed tx/s | finality p50 (ms) | finality p99 (ms) | latency load (tx/s) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for (n, r) in rows {
        println!(
            "| {n} | {} | {:.0} | {:.0} | {:.0} | {} |",
            r.committed, r.tps, r.p50, r.p99, a.latency_rate
        );
    }
    Ok(())
}

struct Row {
    committed: usize,
    tps: f64,
    p50: f64,
    p99: f64,
}

fn sender(i: usize) -> SecretKey {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
    seed[8] = 0xbe;
    SecretKey::from_seed(seed)
}

/// Watches finalized blocks and records when each transaction was first seen final.
async fn watch(client: &Client, from: u64, seen: &mut HashMap<TxHash, Instant>) -> Result<u64> {
    let s = client.status().await?;
    for h in from..=s.height {
        let b: serde_json::Value = client.get(&format!("/api/blocks/{h}")).await?;
        let now = Instant::now();
        if let Some(txs) = b["txs"].as_array() {
            for t in txs {
                if let Some(hash) = t["hash"].as_str().and_then(|x| x.parse().ok()) {
                    seen.entry(hash).or_insert(now);
                }
            }
        }
    }
    Ok(s.height.saturating_add(1))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn measure(a: &ChainArgs, n: usize) -> Result<Row> {
    let root = a.home.join(format!("validators-{n}"));
    let senders: Vec<SecretKey> = (0..a.senders).map(sender).collect();
    let funded: Vec<_> =
        senders.iter().map(|k| (k.address(), Amount::from_base_units(1_000_000_000_000))).collect();
    let base = 27_000 + u16::try_from(n)?.saturating_mul(20);
    let layout = crate::devnet::Layout {
        validators: n,
        providers: 0,
        p2p_port: base,
        api_port: base.saturating_add(10),
        provider_port: base.saturating_add(15),
        models: Vec::new(),
        params: Vec::new(),
    };
    let mut net = crate::devnet::start(&root, &layout, true, &funded)?;
    crate::devnet::wait_ready(&mut net, 2, Duration::from_secs(60)).await?;
    let client = Client::new(&net.apis[0]);
    let fee = Amount::from_base_units(1_000);
    let to = SecretKey::from_seed([3; 32]).address();
    let mut nonces = vec![0u64; senders.len()];
    let mut sign = |count: usize| -> Vec<Tx> {
        (0..count)
            .map(|i| {
                let s = i % senders.len();
                let tx = Tx::sign(
                    &senders[s],
                    crate::devnet::CHAIN_ID,
                    nonces[s],
                    fee,
                    TxBody::Transfer(Transfer { to, amount: Amount::from_base_units(1) }),
                );
                nonces[s] += 1;
                tx
            })
            .collect()
    };

    // Throughput: offer everything as fast as the API takes it, and time until the last
    // transaction is final.
    let txs = sign(a.txs);
    let mut next = client.status().await?.height.saturating_add(1);
    let mut seen = HashMap::new();
    let started = Instant::now();
    for chunk in txs.chunks(1_000) {
        let results = client.submit_batch(chunk).await?;
        if let Some(Err(code)) = results.iter().find(|r| r.is_err()) {
            bail!("the node refused a benchmark transaction: {code}");
        }
        next = watch(&client, next, &mut seen).await?;
    }
    let wanted: Vec<TxHash> = txs.iter().map(Tx::hash).collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    while wanted.iter().any(|h| !seen.contains_key(h)) {
        if Instant::now() > deadline {
            bail!("transactions were not finalized within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        next = watch(&client, next, &mut seen).await?;
    }
    let last = wanted.iter().filter_map(|h| seen.get(h)).max().copied().context("no transactions")?;
    let tps = wanted.len() as f64 / last.duration_since(started).as_secs_f64();

    // Latency: a steady offered load well under capacity; each transaction timed from the
    // moment its batch was accepted to the moment its block was seen final.
    let per_tick = (a.latency_rate / 20).max(1);
    let mut submitted: Vec<(TxHash, Instant)> = Vec::new();
    let run_until = Instant::now() + Duration::from_secs(a.latency_secs);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while Instant::now() < run_until {
        tick.tick().await;
        let batch = sign(per_tick);
        let at = Instant::now();
        client.submit_batch(&batch).await?;
        submitted.extend(batch.iter().map(|t| (t.hash(), at)));
        next = watch(&client, next, &mut seen).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while submitted.iter().any(|(h, _)| !seen.contains_key(h)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        next = watch(&client, next, &mut seen).await?;
    }
    let mut lat: Vec<f64> = submitted
        .iter()
        .filter_map(|(h, at)| seen.get(h).map(|t| t.duration_since(*at).as_secs_f64() * 1e3))
        .collect();
    lat.sort_by(f64::total_cmp);
    drop(net);
    let _ = std::fs::remove_dir_all(&root);
    Ok(Row { committed: wanted.len(), tps, p50: percentile(&lat, 0.5), p99: percentile(&lat, 0.99) })
}

/// Milliseconds since the Unix epoch (providers report task starts on the same clock).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn jobs(a: JobsArgs) -> Result<()> {
    let (net, client, faucet, dir) = bench_network(&a.home, 27_400).await?;
    std::fs::write(dir.join("sieve.wasm"), include_bytes!("../../../testdata/wasm/sieve.wasm"))?;
    let manifest = "kind: wasm\nworkload: sieve.wasm\nargs: [\"100000\"]\nmax_price_per_task: 0.2 CRN\nverification: none\n";
    let resolved = crate::manifest::resolve(manifest, &dir, &client, &faucet).await?;
    // A watcher records, as they happen, when providers start tasks and when jobs settle.
    let submitted: Arc<Mutex<Vec<(cairn_types::JobId, u64)>>> = Arc::default();
    let started: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let settled: Arc<Mutex<HashMap<JobIdHex, u64>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (submitted, started, settled, stop) =
            (submitted.clone(), started.clone(), settled.clone(), stop.clone());
        let (providers, client) = (net.providers.clone(), client.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for p in &providers {
                    let v: serde_json::Value =
                        Client::new(p).get("/provider/status").await.unwrap_or_default();
                    if let Some(tasks) = v["tasks"].as_object() {
                        for (id, e) in tasks {
                            if let Some(ms) = e["started_ms"].as_u64() {
                                started
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .entry(id.clone())
                                    .or_insert(ms);
                            }
                        }
                    }
                }
                let jobs = submitted.lock().unwrap_or_else(|p| p.into_inner()).clone();
                for (job, _) in jobs {
                    if settled.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&job.to_hex()) {
                        continue;
                    }
                    if let Ok(v) = crate::job::job_view(&client, &job).await
                        && crate::job::finished(&v)
                    {
                        settled.lock().unwrap_or_else(|p| p.into_inner()).insert(job.to_hex(), now_ms());
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    for i in 0..a.jobs {
        let mut spec = resolved.spec.clone();
        spec.env.insert("RUN".into(), i.to_string());
        let t0 = now_ms();
        let job = crate::job::submit(&client, &faucet, spec).await?;
        submitted.lock().unwrap_or_else(|p| p.into_inner()).push((job, t0));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while settled.lock().unwrap_or_else(|p| p.into_inner()).len() < a.jobs && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = watcher.await;
    let submitted = submitted.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let started = started.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let settled = settled.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut to_running = Vec::new();
    let mut to_settled = Vec::new();
    for (job, t0) in &submitted {
        let task = cairn_types::TaskId::derive(job, 0).to_hex();
        if let Some(s) = started.get(&task) {
            to_running.push(s.saturating_sub(*t0) as f64);
        }
        if let Some(s) = settled.get(&job.to_hex()) {
            to_settled.push(s.saturating_sub(*t0) as f64);
        }
    }
    to_running.sort_by(f64::total_cmp);
    to_settled.sort_by(f64::total_cmp);
    drop(net);
    println!(
        "| jobs | measured | submit → running p50 (ms) | p99 (ms) | submit → settled p50 (ms) | p99 (ms) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
        submitted.len(),
        to_running.len(),
        percentile(&to_running, 0.5),
        percentile(&to_running, 0.99),
        percentile(&to_settled, 0.5),
        percentile(&to_settled, 0.99)
    );
    Ok(())
}

type JobIdHex = String;

/// A fresh devnet for a benchmark: one validator and three providers on ports from `port`
/// (p2p, API and providers ten apart), the faucet's key, and a work directory.
pub(crate) async fn bench_network(
    home: &std::path::Path,
    port: u16,
) -> Result<(crate::devnet::Network, Client, SecretKey, PathBuf)> {
    let layout = crate::devnet::Layout {
        validators: 1,
        providers: 3,
        p2p_port: port,
        api_port: port + 10,
        provider_port: port + 20,
        models: Vec::new(),
        params: Vec::new(),
    };
    let mut net = crate::devnet::start(home, &layout, true, &[])?;
    crate::devnet::wait_ready(&mut net, 2, Duration::from_secs(60)).await?;
    crate::devnet::start_providers(&mut net, 3, Duration::from_secs(60)).await?;
    let client = Client::new(&net.apis[0]);
    let faucet = crate::keys::read_seed_file(&net.root.join("faucet.key"))?;
    let dir = net.root.join("bench");
    std::fs::create_dir_all(&dir)?;
    Ok((net, client, faucet, dir))
}

/// Resolve and submit the manifest `yaml` (files relative to `dir`), then wait until every task
/// has a committed result: the seconds from submission, and the job. Fails if the job ends
/// with a task unfinished, or after `limit`.
pub(crate) async fn until_committed(
    client: &Client,
    key: &SecretKey,
    dir: &std::path::Path,
    yaml: &str,
    limit: Duration,
) -> Result<(f64, cairn_types::JobId)> {
    let resolved = crate::manifest::resolve(yaml, dir, client, key).await?;
    let t0 = std::time::Instant::now();
    let job = crate::job::submit(client, key, resolved.spec).await?;
    loop {
        let v = crate::job::job_view(client, &job).await?;
        if v.tasks.iter().all(|t| crate::job::output_of(t).is_some()) {
            return Ok((t0.elapsed().as_secs_f64(), job));
        }
        if crate::job::finished(&v) {
            anyhow::bail!("benchmark job {job} ended with tasks unfinished");
        }
        if t0.elapsed() > limit {
            anyhow::bail!("benchmark job {job} did not finish in {} s", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// How long the provider says it ran `task` (its `task ran … ms=` log line).
pub(crate) fn provider_run_secs(log: &std::path::Path, task: &cairn_types::TaskId) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    let key = format!("task ran task={}", task.short());
    let line = text.lines().find(|l| l.contains(&key))?;
    let ms: f64 = line.split(" ms=").nth(1)?.split_whitespace().next()?.parse().ok()?;
    Some(ms / 1e3)
}
