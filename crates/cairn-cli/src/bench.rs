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
    Inference(InferenceArgs),
    /// Training: a devnet job vs the same loop in one process, scaling with W, audit overhead.
    Train(crate::bench_train::TrainArgs),
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
        BenchCommand::Inference(i) => return crate::runtime()?.block_on(inference(i)),
        BenchCommand::Train(t) => return crate::runtime()?.block_on(crate::bench_train::run(t)),
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
    let resolved = crate::manifest::resolve(manifest, &dir, client.base()).await?;
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

/// `cairn bench inference`.
#[derive(Debug, Args)]
pub(crate) struct InferenceArgs {
    /// Sentences embedded per measurement.
    #[arg(long, default_value_t = 64)]
    embeddings: usize,
    /// Tokens generated per measurement.
    #[arg(long, default_value_t = 128)]
    tokens: usize,
    /// Skip the market measurement (in-process and executor only).
    #[arg(long)]
    no_market: bool,
    /// Repetitions of each warm measurement (medians are reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Where the network lives while measured.
    #[arg(long, default_value = ".cairn/bench-inference")]
    home: PathBuf,
}

const BENCH_PROMPT: &str = "Write a long story about a hiker who builds cairns along a mountain trail.";

fn bench_sentence(i: usize) -> String {
    format!("Sentence number {i} describes stones, trails and the weather on day {}.", i * 7 % 31)
}

fn requests_file(dir: &std::path::Path, lines: &[serde_json::Value]) -> Result<PathBuf> {
    let path = dir.join("requests.jsonl");
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Submit `lines` as a one-task inference job and time it from submission to a committed result.
async fn market_job(
    client: &Client,
    key: &SecretKey,
    dir: &std::path::Path,
    model: &crate::catalog::ServedModel,
    lines: &[serde_json::Value],
) -> Result<(f64, cairn_types::JobId)> {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("batch.jsonl"), &text)?;
    let manifest = format!(
        "kind: inference\nworkload: {}\nrequests: batch.jsonl\nrequests_per_task: {}\nmax_price_per_task: 1 CRN\nverification: none\ndeadline_blocks: 600\nlimits:\n  wall_ms: 600000\n",
        model.id,
        lines.len()
    );
    let resolved = crate::manifest::resolve(&manifest, dir, client.base()).await?;
    let t0 = Instant::now();
    let job = crate::job::submit(client, key, resolved.spec).await?;
    loop {
        let v = crate::job::job_view(client, &job).await?;
        if v.tasks.iter().all(|t| crate::job::output_of(t).is_some()) {
            return Ok((t0.elapsed().as_secs_f64(), job));
        }
        if crate::job::finished(&v) {
            bail!("the benchmark job ended without output");
        }
        if t0.elapsed() > Duration::from_secs(900) {
            bail!("the benchmark job did not finish");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn inference(a: InferenceArgs) -> Result<()> {
    use cairn_runtime::inference::import::{GEMMA, MINILM};
    use cairn_runtime::inference::{Engine, ModelPackage};
    use cairn_runtime::{Executor as _, InferenceConfig, InferenceExecutor, TaskRun};
    let store = crate::model::ModelStore::open_default()?;
    let models = store.install_demo(false)?;
    let find = |n: &str| models.iter().find(|m| m.header.name == n).cloned().context("demo model missing");
    let (minilm, gemma) = (find(MINILM)?, find(GEMMA)?);
    let dir = a.home.join("work");
    std::fs::create_dir_all(&dir)?;
    let device = cairn_runtime::inference::Device::Cpu;
    let embed_lines: Vec<serde_json::Value> =
        (0..a.embeddings).map(|i| serde_json::json!({ "input": bench_sentence(i) })).collect();
    let chat_line = serde_json::json!({
        "messages": [{ "role": "user", "content": BENCH_PROMPT }], "max_tokens": a.tokens, "temperature": 0,
    });

    // In process, straight on candle (`Engine`), against the provider's executor (task files
    // in; JSON results, commitments and the bundle out), interleaved rep by rep so both see the
    // same machine state; medians reported.
    let exec = InferenceExecutor::new(InferenceConfig::cpu(dir.join("exec")));
    let mut loads = Vec::new();
    let mut timings: Vec<(f64, f64)> = Vec::new();
    let mut generated = 0;
    for (m, lines) in [(&minilm, embed_lines.clone()), (&gemma, vec![chat_line.clone()])] {
        let t = Instant::now();
        let engine = Engine::load(&ModelPackage::open(&m.path)?, &device)?;
        let direct_load = t.elapsed().as_secs_f64();
        let t = Instant::now();
        exec.prepare_file(&m.id, &m.path)?;
        exec.preload(&m.id)?;
        let exec_load = t.elapsed().as_secs_f64();
        let t = Instant::now();
        cairn_runtime::inference::ModelTokenizer::load(&ModelPackage::open(&m.path)?)?;
        let tokenizer_load = t.elapsed().as_secs_f64();
        loads.push((direct_load, exec_load, tokenizer_load));
        let req = requests_file(&dir, &lines)?;
        let mut task = TaskRun::new(m.id, cairn_types::Limits { wall_ms: 600_000, ..Default::default() });
        task.inputs.push(("requests.jsonl".into(), req));
        let (mut direct, mut executor) = (Vec::new(), Vec::new());
        for _ in 0..a.reps.max(1) {
            let t = Instant::now();
            if m.header.name == MINILM {
                for i in 0..a.embeddings {
                    engine.embed(&bench_sentence(i))?;
                }
            } else {
                generated = engine.chat(BENCH_PROMPT, a.tokens)?.1;
            }
            direct.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            exec.run(&task)?;
            executor.push(t.elapsed().as_secs_f64());
        }
        timings.push((median(&mut direct), median(&mut executor)));
    }
    drop(exec);

    // The market: a devnet with one provider serving both models.
    let mut market = None;
    let mut market_added = None;
    if !a.no_market {
        let layout = crate::devnet::Layout {
            validators: 1,
            providers: 1,
            p2p_port: 27_500,
            api_port: 27_510,
            provider_port: 27_520,
            models: vec![(minilm.id, minilm.path.clone()), (gemma.id, gemma.path.clone())],
            params: Vec::new(),
        };
        let mut net = crate::devnet::start(&a.home.join("net"), &layout, true, &[])?;
        crate::devnet::wait_ready(&mut net, 2, Duration::from_secs(60)).await?;
        crate::devnet::start_providers(&mut net, 1, Duration::from_secs(120)).await?;
        let client = Client::new(&net.apis[0]);
        let faucet = crate::keys::read_seed_file(&net.root.join("faucet.key"))?;
        let served = crate::catalog::served_models(&client).await?;
        let (sm, sg) =
            (crate::catalog::find(&served, MINILM)?.clone(), crate::catalog::find(&served, GEMMA)?.clone());
        // Each warm job's time minus the provider's own run time (from its log) is what the
        // market adds: transactions, blocks, fetching inputs, committing.
        let log = net.root.join("provider-0").join("provider.log");
        let mut runs = Vec::new();
        for (m, lines) in [(&sm, embed_lines.as_slice()), (&sg, std::slice::from_ref(&chat_line))] {
            let cold = market_job(&client, &faucet, &dir, m, lines).await?.0;
            let mut warm = Vec::new();
            let mut added = Vec::new();
            for _ in 0..a.reps.max(1) {
                let (secs, job) = market_job(&client, &faucet, &dir, m, lines).await?;
                warm.push(secs);
                if let Some(ran) = provider_run_secs(&log, &cairn_types::TaskId::derive(&job, 0)) {
                    added.push(secs - ran);
                }
            }
            runs.push((cold, median(&mut warm), median(&mut added)));
        }
        let ((embed_cold, embed_warm, embed_added), (gen_cold, gen_warm, gen_added)) = (runs[0], runs[1]);
        market_added = Some((embed_added, gen_added));
        market = Some((embed_cold, embed_warm, gen_cold, gen_warm));
        drop(net);
    }

    let n = a.embeddings as f64;
    let k = generated as f64;
    println!("Medians of {} rep(s).", a.reps.max(1));
    println!();
    println!(
        "| model | measure | in-process (candle) | provider executor | ratio | market job, warm | market adds (job − provider's run) | budget (1.05× + 200 ms) | market job, cold |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let row = |name: &str, what: &str, direct: f64, exec: f64, units: f64, m: Option<(f64, f64, f64)>| {
        let (warm, over, cold) = m.map_or(("–".into(), "–".into(), "–".into()), |(c, w, added)| {
            (format!("{:.0} ms", w * 1e3), format!("{:.0} ms", added * 1e3), format!("{:.0} ms", c * 1e3))
        });
        println!(
            "| {name} | {what} | {:.1}/s ({:.0} ms) | {:.1}/s ({:.0} ms) | {:.2}× | {warm} | {over} | {:.0} ms | {cold} |",
            units / direct,
            direct * 1e3,
            units / exec,
            exec * 1e3,
            exec / direct,
            (direct * 1.05 + 0.2) * 1e3,
        );
    };
    row(
        MINILM,
        &format!("{} embeddings", a.embeddings),
        timings[0].0,
        timings[0].1,
        n,
        market.zip(market_added).map(|(m, x)| (m.0, m.1, x.0)),
    );
    row(
        GEMMA,
        &format!("{generated} tokens"),
        timings[1].0,
        timings[1].1,
        k,
        market.zip(market_added).map(|(m, x)| (m.2, m.3, x.1)),
    );
    println!();
    println!(
        "| model | cold load in-process | executor cold start (hash check + load) | tokenizer only (gateway) |"
    );
    println!("|---|---:|---:|---:|");
    for (name, (d, e, t)) in [MINILM, GEMMA].iter().zip(&loads) {
        println!("| {name} | {:.0} ms | {:.0} ms | {:.0} ms |", d * 1e3, e * 1e3, t * 1e3);
    }
    Ok(())
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// How long the provider says it ran `task` (its `task ran … ms=` log line).
fn provider_run_secs(log: &std::path::Path, task: &cairn_types::TaskId) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    let key = format!("task ran task={}", task.short());
    let line = text.lines().find(|l| l.contains(&key))?;
    let ms: f64 = line.split(" ms=").nth(1)?.split_whitespace().next()?.parse().ok()?;
    Some(ms / 1e3)
}
