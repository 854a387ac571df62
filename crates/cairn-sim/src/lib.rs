//! A deterministic, seeded simulation of Cairn's verification economics at scale.
//!
//! It runs the real state machine ([`cairn_state`], through its in-memory [`TestChain`]): real
//! signed transactions, real blocks, the real auction, audits, disputes, canaries and slashing.
//! Only the providers' and clients' decisions are simulated, each provider following a
//! [`Behaviour`] — the same strategies the provider daemon can be started with. A task's true
//! output is a hash of its id; a cheater commits another root.
//!
//! Costs: running a task (or re-running it for an audit) costs `cost_bps` of the posted price;
//! a skipper or an echoing auditor spends nothing. Profit = what a provider ends with (balance
//! and stake) − what it started with − its compute costs.

#![deny(clippy::unwrap_used)]

mod config;
mod engine;
mod report;

pub use config::{Mix, SimConfig, sim_params};
pub use report::{SimReport, StrategyRow, detection_text, report_text};

use engine::Sim;

/// Run a simulation.
pub fn run(cfg: SimConfig) -> SimReport {
    run_with(cfg, &mut |_, _| {})
}

/// Run a simulation, calling `progress(block, demand_blocks)` after every block.
pub fn run_with(cfg: SimConfig, progress: &mut dyn FnMut(u64, u64)) -> SimReport {
    Sim::new(cfg).run(progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            providers: 40,
            blocks: 60,
            tasks_per_block: 12,
            tasks_per_job: 4,
            mix: Mix {
                wrong_always: 1_000,
                wrong_sometimes: 1_000,
                skip_work: 1_000,
                lazy_auditor: 1_000,
                colluder: 1_000,
                vanish: 500,
            },
            cheat_after: 2,
            ..SimConfig::default()
        }
    }

    #[test]
    fn a_small_run_catches_cheaters_never_slashes_the_honest_and_conserves_supply() {
        let r = run(small(7));
        assert!(r.invariants_held, "supply and escrow invariants");
        assert_eq!(r.false_slashes, 0);
        assert!(r.cheats_caught > 0, "{r:?}");
        let honest = r.strategies.iter().find(|s| s.behaviour == "honest").expect("honest row");
        for s in &r.strategies {
            if s.behaviour != "honest" && s.cheated > 0 {
                assert!(
                    s.profit_per_task < honest.profit_per_task,
                    "{} out-earned honest: {r:?}",
                    s.behaviour
                );
                assert!(s.gain_per_cheat.is_some_and(|g| g < 0), "{} gained by cheating: {r:?}", s.behaviour);
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_report() {
        let a = serde_json::to_string(&run(small(3))).expect("json");
        let b = serde_json::to_string(&run(small(3))).expect("json");
        assert_eq!(a, b);
    }
}
