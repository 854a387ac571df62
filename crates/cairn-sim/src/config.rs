//! What a simulation runs: providers, demand, the adversary mix, and the chain's parameters.

use cairn_state::Params;
use cairn_types::Amount;
use serde::Serialize;

/// What to simulate.
#[derive(Clone, Debug, Serialize)]
pub struct SimConfig {
    /// Seed of every random choice the simulator makes (the chain's own randomness is its beacon).
    pub seed: u64,
    /// Providers.
    pub providers: u32,
    /// Blocks of demand; then the chain runs until every task is final.
    pub blocks: u64,
    /// Tasks submitted per block (in jobs of `tasks_per_job`).
    pub tasks_per_block: u32,
    /// Tasks per job.
    pub tasks_per_job: u32,
    /// Share of providers (basis points) per adversary behaviour; the rest are honest.
    pub mix: Mix,
    /// Share of tasks a `wrong_sometimes` provider cheats on, in basis points.
    pub wrong_sometimes_bps: u32,
    /// Honest results a cheater builds up before it starts cheating (its reputation).
    pub cheat_after: u64,
    /// Cost of running a task, as a share of its price (basis points).
    pub cost_bps: u32,
    /// Posted price of every provider, in base units.
    pub price: u128,
    /// Stake each provider bonds, in base units.
    pub stake: u128,
    /// Chain parameters.
    pub params: Params,
}

/// Adversary shares, in basis points of all providers.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Mix {
    /// Commit a wrong output every time.
    pub wrong_always: u32,
    /// Commit a wrong output sometimes.
    pub wrong_sometimes: u32,
    /// Skip the work and commit a plausible output.
    pub skip_work: u32,
    /// Echo claims instead of re-running audits.
    pub lazy_auditor: u32,
    /// Cheat, and approve each other's results (rings of two).
    pub colluder: u32,
    /// Commit a wrong output, then stop.
    pub vanish: u32,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            providers: 1_000,
            blocks: 300,
            tasks_per_block: 400,
            tasks_per_job: 50,
            mix: Mix {
                wrong_always: 200,
                wrong_sometimes: 200,
                skip_work: 200,
                lazy_auditor: 300,
                colluder: 200,
                vanish: 100,
            },
            wrong_sometimes_bps: 2_000,
            cheat_after: 20,
            cost_bps: 6_000,
            price: 500_000,
            stake: 1_000_000_000,
            params: sim_params(),
        }
    }
}

/// The protocol's default parameters with windows sized for the simulation.
pub fn sim_params() -> Params {
    Params {
        challenge_window: 20,
        audit_window: 5,
        heartbeat_timeout: 100,
        max_wait_blocks: 200,
        max_bids_per_task: 8,
        reward_epoch_blocks: 100,
        unbonding_blocks: 1_000,
        min_provider_stake: Amount::from_base_units(100_000_000),
        ..Params::default()
    }
}
