//! `cairn bench train`: a training job on a devnet against the same candle loop in one process
//! (market overhead), per-round time as the data-parallel width doubles (scaling), and the share
//! of training compute that audits re-run once reputations are established (verification
//! overhead).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use cairn_client::Client;
use cairn_types::{Event, JobId, SecretKey, TrainRole, TrainSpec};
use clap::Args;

/// `cairn bench train`.
#[derive(Debug, Args)]
pub(crate) struct TrainArgs {
    /// The example to train: `digits` (classifier) or `lm` (language model on Macbeth).
    #[arg(long, default_value = "lm")]
    model: String,
    /// Rounds of each measured job.
    #[arg(long, default_value_t = 4)]
    rounds: u32,
    /// Optimizer steps per round at width 1 (each of W shards runs this / W).
    #[arg(long, default_value_t = 40)]
    steps_per_round: u32,
    /// Tasks of the job measured for verification overhead (after a warm-up).
    #[arg(long, default_value_t = 20)]
    audit_rounds: u32,
    /// Skip the verification-overhead run (it needs a warm-up of many small jobs).
    #[arg(long)]
    no_audits: bool,
    /// Verification level of the timed jobs: `standard` (each result waits for its audit draw
    /// in the next block before the tasks reading it open) or `none`.
    #[arg(long, default_value = "standard")]
    verification: String,
    /// Repetitions of each measurement (medians are reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Where the network lives while measured.
    #[arg(long, default_value = ".cairn/bench-train")]
    home: PathBuf,
}

const DIGITS: &[u8] = include_bytes!("../../../examples/train-digits/digits.csv");
const MACBETH: &[u8] = include_bytes!("../../../examples/train-shakespeare/macbeth.txt");

fn plan(
    model: &str,
    rounds: u32,
    width: u32,
    local_steps: u32,
    verification: &str,
) -> Result<(String, &'static [u8], &'static str)> {
    let (arch, data, file) = match model {
        "digits" => (
            "{ arch: mlp, hidden: 64 }\n  optimizer: { learning_rate: 0.01 }\n  batch_size: 32",
            DIGITS,
            "digits.csv",
        ),
        "lm" => (
            "{ arch: gpt, layers: 2, d_model: 64, heads: 4, context: 64 }\n  optimizer: { learning_rate: 0.003 }\n  batch_size: 16",
            MACBETH,
            "macbeth.txt",
        ),
        other => bail!("--model must be digits or lm, not {other:?}"),
    };
    let yaml = format!(
        "kind: train\nworkload: {file}\nmax_price_per_task: 0.05 CRN\ndeadline_blocks: 600\nverification: {verification}\nlimits: {{ wall_ms: 600000 }}\ntrain:\n  model: {arch}\n  rounds: {rounds}\n  width: {width}\n  local_steps: {local_steps}\n  seed: 3\n"
    );
    Ok((yaml, data, file))
}

/// Submit a manifest and time it from submission until its last round's checkpoint is
/// committed (payment settles later; training is done then).
async fn run_job(
    client: &Client,
    key: &SecretKey,
    dir: &std::path::Path,
    yaml: &str,
) -> Result<(f64, JobId)> {
    let resolved = crate::manifest::resolve(yaml, dir, client, key).await?;
    let t0 = Instant::now();
    let job = crate::job::submit(client, key, resolved.spec).await?;
    loop {
        let v = crate::job::job_view(client, &job).await?;
        if v.tasks.last().and_then(crate::job::output_of).is_some() {
            return Ok((t0.elapsed().as_secs_f64(), job));
        }
        if crate::job::finished(&v) {
            bail!("benchmark job {job} ended without its last checkpoint");
        }
        if t0.elapsed() > Duration::from_secs(1_800) {
            bail!("benchmark job {job} did not finish");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The same training in this process: `rounds × W × local_steps` steps of one loop.
fn in_process(yaml: &str, data: &[u8]) -> Result<f64> {
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(yaml)?;
    let train: TrainSpec = serde_yaml_ng::from_value(v.get("train").context("a train section")?.clone())?;
    let steps = train.rounds.saturating_mul(train.width).saturating_mul(train.local_steps);
    let t0 = Instant::now();
    cairn_runtime::train::reference_loop(&train, data, steps)?;
    Ok(t0.elapsed().as_secs_f64())
}

pub(crate) async fn run(a: TrainArgs) -> Result<()> {
    let (_net, client, faucet, dir) = crate::bench::bench_network(&a.home, 27_600).await?;
    std::fs::write(dir.join("digits.csv"), DIGITS)?;
    std::fs::write(dir.join("macbeth.txt"), MACBETH)?;

    if !matches!(a.verification.as_str(), "standard" | "none") {
        bail!("--verification must be standard or none");
    }
    println!(
        "| width W | rounds | steps / shard task | verification | devnet (s) | per round (s) | one process, same steps (s) | ratio | overhead per round (ms) |"
    );
    println!("|---:|---:|---:|---|---:|---:|---:|---:|---:|");
    for width in [1u32, 2] {
        let local = a.steps_per_round.checked_div(width).unwrap_or(1).max(1);
        let (yaml, data, _) = plan(&a.model, a.rounds, width, local, &a.verification)?;
        // Interleaved rep by rep, so both see the same machine state; medians reported.
        let (mut locals, mut nets) = (Vec::new(), Vec::new());
        for _ in 0..a.reps.max(1) {
            locals.push(in_process(&yaml, data)?);
            nets.push(run_job(&client, &faucet, &dir, &yaml).await?.0);
        }
        let (local_s, net_s) = (crate::bench::median(&mut locals), crate::bench::median(&mut nets));
        let rounds = f64::from(a.rounds);
        // With W shards in parallel, the devnet's compute per round is one shard's; the
        // overhead is what the market adds on top of the same total steps in one process.
        let overhead_ms = (net_s - local_s) / rounds * 1_000.0;
        println!(
            "| {width} | {} | {local} | {} | {net_s:.2} | {:.2} | {local_s:.2} | {:.2} | {overhead_ms:.0} |",
            a.rounds,
            a.verification,
            net_s / rounds,
            net_s / local_s
        );
    }

    if a.no_audits {
        return Ok(());
    }
    // Verification overhead once reputations are established: warm the providers up with
    // small verified jobs (a newcomer's first results are all audited), then measure which
    // tasks of a long training job audits re-ran, weighted by each task's compute.
    std::fs::write(dir.join("sieve.wasm"), include_bytes!("../../../testdata/wasm/sieve.wasm"))?;
    let warm = crate::manifest::resolve(
        "kind: wasm\nworkload: sieve.wasm\nargs: [\"1000\"]\ntasks: 90\nmax_price_per_task: 0.01 CRN\ndeadline_blocks: 600\n",
        &dir,
        &client,
        &faucet,
    )
    .await?;
    let warm_job = crate::job::submit(&client, &faucet, warm.spec).await?;
    eprintln!("warming up reputations with job {} (90 small verified tasks)", warm_job.short());
    let t0 = Instant::now();
    while !crate::job::finished(&crate::job::job_view(&client, &warm_job).await?) {
        if t0.elapsed() > Duration::from_secs(900) {
            bail!("the warm-up job did not finish");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (yaml, _, _) = plan(&a.model, a.audit_rounds, 2, a.steps_per_round / 2, "standard")?;
    let from = client.status().await?.height;
    let (_, job) = run_job(&client, &faucet, &dir, &yaml).await?;
    while !crate::job::finished(&crate::job::job_view(&client, &job).await?) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let to = client.status().await?.height;
    let v = crate::job::job_view(&client, &job).await?;
    let train = crate::train::plan(&v)?.clone();
    let units = |index: u32| -> u64 {
        match train.role(index).1 {
            TrainRole::Shard(_) => u64::from(train.local_steps) * u64::from(train.batch_size),
            TrainRole::Aggregate => u64::from(train.width),
        }
    };
    let total: u64 = (0..train.tasks()).map(units).sum();
    let mut audited = 0u64;
    let mut reruns = 0u64;
    let ids: std::collections::BTreeMap<cairn_types::TaskId, u32> =
        v.tasks.iter().map(|t| (t.id, t.index)).collect();
    for h in from..=to {
        let Ok(r) = client.get::<serde_json::Value>(&format!("/api/blocks/{h}/receipts")).await else {
            continue;
        };
        for e in r["receipts"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r["events"].as_array().into_iter().flatten())
        {
            if let Ok(Event::AuditAssigned { task, .. }) = serde_json::from_value::<Event>(e.clone())
                && let Some(i) = ids.get(&task)
            {
                audited += units(*i);
                reruns += 1;
            }
        }
    }
    let params: cairn_state::Params = serde_json::from_value(client.params().await?)?;
    println!();
    println!("| training tasks | re-runs by auditors | compute re-run | p_min + canary rate |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| {} | {reruns} | {:.1}% | {:.1}% |",
        train.tasks(),
        audited as f64 / total as f64 * 100.0,
        f64::from(params.audit_p_min_bps + params.canary_rate_bps) / 100.0
    );
    Ok(())
}
