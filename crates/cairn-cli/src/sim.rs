//! `cairn sim`: the verification economics at scale, on the real state machine.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use cairn_sim::{Mix, SimConfig, SimReport, sim_params};
use clap::Args;

#[derive(Debug, Args)]
pub(crate) struct SimArgs {
    /// Seeds to run (1..=N); results are pooled and every seed must slash no honest provider.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Providers.
    #[arg(long, default_value_t = 1_000)]
    providers: u32,
    /// Blocks of demand (the chain then runs until every task is final).
    #[arg(long, default_value_t = 300)]
    blocks: u64,
    /// Tasks submitted per block.
    #[arg(long, default_value_t = 400)]
    tasks_per_block: u32,
    /// Tasks per job.
    #[arg(long, default_value_t = 50)]
    tasks_per_job: u32,
    /// Share of providers that commit wrong outputs every time (basis points).
    #[arg(long, default_value_t = 200)]
    wrong_always_bps: u32,
    /// Share that commit wrong outputs sometimes.
    #[arg(long, default_value_t = 200)]
    wrong_sometimes_bps: u32,
    /// How often a `wrong_sometimes` provider cheats (basis points of its tasks).
    #[arg(long, default_value_t = 2_000)]
    wrong_sometimes_rate_bps: u32,
    /// Share that skip the work and commit plausible outputs.
    #[arg(long, default_value_t = 200)]
    skip_work_bps: u32,
    /// Share of lazy auditors (echo claims without re-running).
    #[arg(long, default_value_t = 300)]
    lazy_auditor_bps: u32,
    /// Share of colluders (rings of two that cheat and approve each other).
    #[arg(long, default_value_t = 200)]
    colluder_bps: u32,
    /// Share that commit a wrong output and vanish.
    #[arg(long, default_value_t = 100)]
    vanish_bps: u32,
    /// Honest results a cheater builds up before it starts cheating.
    #[arg(long, default_value_t = 20)]
    cheat_after: u64,
    /// Compute cost of a task as a share of its price (basis points).
    #[arg(long, default_value_t = 6_000)]
    cost_bps: u32,
    /// Least audit probability p_min (basis points).
    #[arg(long)]
    p_min_bps: Option<u32>,
    /// Canary rate φ (basis points).
    #[arg(long)]
    canary_bps: Option<u32>,
    /// Extra auditors in a dispute, k (odd).
    #[arg(long)]
    dispute_k: Option<u32>,
    /// Write the detection curve (k, simulated, theory) as CSV here.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Print the reports as JSON.
    #[arg(long)]
    json: bool,
}

fn config(a: &SimArgs, seed: u64) -> SimConfig {
    let mut params = sim_params();
    if let Some(p) = a.p_min_bps {
        params.audit_p_min_bps = p;
        // Keep the exposure rule sound: stake covers 1/p_min of a task.
        params.exposure_multiplier = params.exposure_multiplier.max(10_000u32.div_ceil(p.max(1)));
    }
    if let Some(c) = a.canary_bps {
        params.canary_rate_bps = c;
    }
    if let Some(k) = a.dispute_k {
        params.dispute_auditors = k;
    }
    SimConfig {
        seed,
        providers: a.providers,
        blocks: a.blocks,
        tasks_per_block: a.tasks_per_block,
        tasks_per_job: a.tasks_per_job,
        mix: Mix {
            wrong_always: a.wrong_always_bps,
            wrong_sometimes: a.wrong_sometimes_bps,
            skip_work: a.skip_work_bps,
            lazy_auditor: a.lazy_auditor_bps,
            colluder: a.colluder_bps,
            vanish: a.vanish_bps,
        },
        wrong_sometimes_bps: a.wrong_sometimes_rate_bps,
        cheat_after: a.cheat_after,
        cost_bps: a.cost_bps,
        params,
        ..SimConfig::default()
    }
}

pub(crate) fn run(a: SimArgs) -> Result<()> {
    if a.seeds == 0 || a.providers < 4 || a.tasks_per_job == 0 || a.blocks == 0 {
        bail!("--seeds, --blocks and --tasks-per-job must be at least 1, --providers at least 4");
    }
    let shares = [
        a.wrong_always_bps,
        a.wrong_sometimes_bps,
        a.skip_work_bps,
        a.lazy_auditor_bps,
        a.colluder_bps,
        a.vanish_bps,
    ];
    if shares.iter().map(|s| u64::from(*s)).sum::<u64>() > 10_000 || a.wrong_sometimes_rate_bps > 10_000 {
        bail!("adversary shares add up to more than 10000 basis points");
    }
    config(&a, 1).params.validate().map_err(|e| anyhow::anyhow!("parameters: {e}"))?;
    let mut reports = Vec::new();
    for seed in 1..=a.seeds {
        let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) && !a.json {
            indicatif::ProgressBar::new(a.blocks)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("seed {msg} [{bar:30}] {pos}/{len} blocks {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(seed.to_string());
        let started = std::time::Instant::now();
        let r = cairn_sim::run_with(config(&a, seed), &mut |b, total| bar.set_position(b.min(total)));
        bar.finish_and_clear();
        if !a.json {
            println!("{}", cairn_sim::report_text(&r, seed, started.elapsed()));
        }
        reports.push(r);
    }
    let pooled = SimReport::pooled(&reports);
    let ks: Vec<u64> = (0..=200).step_by(5).collect();
    let curve = pooled.detection_curve(&ks);
    if let Some(path) = &a.csv {
        let mut f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        writeln!(f, "cheated_tasks,simulated,theory")?;
        for (k, sim, theory) in &curve {
            writeln!(f, "{k},{sim:.4},{theory:.4}")?;
        }
    }
    let false_slashes: u64 = reports.iter().map(|r| r.false_slashes).sum();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "reports": reports,
                "detection_curve": curve,
                "k99_theory": pooled.k_theory(0.99),
                "k99_simulated": pooled.k_simulated(0.99),
                "false_slashes": false_slashes,
            }))?
        );
    } else if a.seeds > 1 {
        println!(
            "all {} seeds: {} persistent cheaters, honest providers slashed: {false_slashes}",
            a.seeds,
            pooled.detection.len()
        );
        print!("{}", cairn_sim::detection_text(&pooled));
    }
    if reports.iter().any(|r| !r.invariants_held) {
        bail!("a supply or escrow invariant broke");
    }
    Ok(())
}
