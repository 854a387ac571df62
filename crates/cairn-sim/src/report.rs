//! What a simulation found: per-strategy rows, detection, and the texts `cairn sim` prints.

use serde::Serialize;

use crate::SimConfig;

/// Results per behaviour.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StrategyRow {
    /// Behaviour name.
    pub behaviour: String,
    /// Providers following it.
    pub providers: u32,
    /// Tasks they committed.
    pub tasks: u64,
    /// Of which with a wrong output.
    pub cheated: u64,
    /// Times slashed (as worker or auditor).
    pub slashed: u64,
    /// Mean profit per provider, in base units (signed).
    pub profit_per_provider: i128,
    /// Mean profit per committed task, in base units (signed).
    pub profit_per_task: i128,
    /// Expected value of cheating: what the strategy earned over the same tasks done honestly
    /// (at the honest providers' profit per task), per cheated task; `None` without cheats.
    pub gain_per_cheat: Option<i128>,
}

/// What a run measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SimReport {
    /// The configuration.
    pub config: Option<SimConfig>,
    /// Blocks run in all (demand plus drain).
    pub blocks: u64,
    /// Tasks submitted.
    pub tasks: u64,
    /// Per behaviour.
    pub strategies: Vec<StrategyRow>,
    /// Audit re-run units ÷ committed task units, whole run (basis points).
    pub overhead_bps: u64,
    /// The same once reputations are established (tasks committed by providers whose streak
    /// of valid results already puts them at `p_min`), in basis points.
    pub overhead_established_bps: u64,
    /// Random audits, disputes and canaries resolved.
    pub audits: u64,
    /// Disputes opened.
    pub disputes: u64,
    /// Canaries handed out.
    pub canaries: u64,
    /// Slashes of honest providers (must be zero).
    pub false_slashes: u64,
    /// Cheated tasks that were paid.
    pub cheats_paid: u64,
    /// Cheated tasks caught (worker slashed).
    pub cheats_caught: u64,
    /// Per persistent cheater that started cheating: cheated tasks until its first slash
    /// (`None`: never caught).
    pub detection: Vec<Option<u64>>,
    /// The per-cheat detection probability `q` the formula uses.
    pub q_bps: u64,
    /// Blocks from submission to settlement: median, 99th percentile, mean.
    pub settle_blocks: (u64, u64, u64),
    /// Supply conservation and escrow checks held after every block.
    pub invariants_held: bool,
}

impl SimReport {
    /// `(k, simulated P(caught within k cheated tasks), theory 1-(1-q)^k)` for `k` in `ks`.
    pub fn detection_curve(&self, ks: &[u64]) -> Vec<(u64, f64, f64)> {
        let n = self.detection.len().max(1) as f64;
        let q = self.q_bps as f64 / 10_000.0;
        ks.iter()
            .map(|&k| {
                let caught = self.detection.iter().filter(|d| d.is_some_and(|d| d <= k)).count() as f64;
                (k, caught / n, 1.0 - (1.0 - q).powf(k as f64))
            })
            .collect()
    }

    /// The detection samples of several runs together (their `q` is the first run's).
    pub fn pooled(reports: &[SimReport]) -> SimReport {
        SimReport {
            q_bps: reports.first().map_or(0, |r| r.q_bps),
            detection: reports.iter().flat_map(|r| r.detection.iter().copied()).collect(),
            ..SimReport::default()
        }
    }

    /// `K = ln(1-P)/ln(1-q)`: cheated tasks within which a persistent cheater is caught with
    /// probability `P`.
    pub fn k_theory(&self, p: f64) -> f64 {
        let q = self.q_bps as f64 / 10_000.0;
        (1.0 - p).ln() / (1.0 - q).ln()
    }

    /// The smallest `k` at which the simulated detection share reaches `p`, if it does.
    pub fn k_simulated(&self, p: f64) -> Option<u64> {
        let mut ks: Vec<u64> = self.detection.iter().flatten().copied().collect();
        ks.sort_unstable();
        let need = (p * self.detection.len() as f64).ceil() as usize;
        if need == 0 || need > ks.len() { None } else { ks.get(need - 1).copied() }
    }
}

fn crn(base: i128) -> String {
    format!("{:.4}", base as f64 / 1e6)
}

/// The detection summary: `q`, `K` by the formula and simulated, and a few points of the curve.
pub fn detection_text(r: &SimReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let caught = r.detection.iter().flatten().count();
    let _ = writeln!(
        out,
        "detection: q = {:.4}; caught {caught} of {} persistent cheaters; P=0.99 within K = {:.0} cheated tasks by the formula, {} simulated",
        r.q_bps as f64 / 1e4,
        r.detection.len(),
        r.k_theory(0.99),
        r.k_simulated(0.99).map_or("not reached".into(), |k| k.to_string()),
    );
    for (k, sim, theory) in r.detection_curve(&[1, 5, 10, 20, 44, 90, 150]) {
        let _ = writeln!(
            out,
            "  within {k:>3} cheated tasks: simulated {:>5.1}%  theory {:>5.1}%",
            sim * 100.0,
            theory * 100.0
        );
    }
    out
}

/// A run's report as a table.
pub fn report_text(r: &SimReport, seed: u64, took: std::time::Duration) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let cfg = r.config.as_ref();
    let _ = writeln!(
        out,
        "seed {seed}: {} providers, {} tasks over {} blocks ({:.1} s); invariants {}",
        cfg.map_or(0, |c| c.providers),
        r.tasks,
        r.blocks,
        took.as_secs_f64(),
        if r.invariants_held { "held" } else { "BROKEN" }
    );
    let _ = writeln!(
        out,
        "{:<20} {:>9} {:>9} {:>8} {:>8} {:>16} {:>12} {:>12}",
        "behaviour",
        "providers",
        "tasks",
        "cheated",
        "slashed",
        "profit/provider",
        "profit/task",
        "gain/cheat"
    );
    for s in &r.strategies {
        let _ = writeln!(
            out,
            "{:<20} {:>9} {:>9} {:>8} {:>8} {:>16} {:>12} {:>12}",
            s.behaviour,
            s.providers,
            s.tasks,
            s.cheated,
            s.slashed,
            crn(s.profit_per_provider),
            crn(s.profit_per_task),
            s.gain_per_cheat.map_or("-".into(), crn)
        );
    }
    let _ = writeln!(out, "(CRN; gain/cheat: profit over the same tasks done honestly, per cheated task)");
    let _ = writeln!(
        out,
        "verification overhead: {:.1}% of useful compute ({:.1}% once reputations are established)",
        r.overhead_bps as f64 / 100.0,
        r.overhead_established_bps as f64 / 100.0
    );
    let _ = writeln!(
        out,
        "audits {} (disputes {}, canaries {}); cheated tasks caught {}, paid {}; honest providers slashed: {}",
        r.audits, r.disputes, r.canaries, r.cheats_caught, r.cheats_paid, r.false_slashes
    );
    let _ = writeln!(
        out,
        "submission to settlement: median {} blocks, p99 {}, mean {}",
        r.settle_blocks.0, r.settle_blocks.1, r.settle_blocks.2
    );
    out.push_str(&detection_text(r));
    out
}
