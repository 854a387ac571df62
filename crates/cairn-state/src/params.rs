//! Chain parameters, fixed at genesis.

use borsh::{BorshDeserialize, BorshSerialize};
use cairn_types::Amount;
use serde::{Deserialize, Serialize};

/// Every tunable number of the protocol. Rates are in basis points (1 bp = 0.01%); durations
/// are in blocks. The defaults assume one-second blocks.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// Smallest fee a transaction may pay.
    pub min_tx_fee: Amount,
    /// New supply per block.
    pub block_reward: Amount,
    /// Share of the block reward paid to validators; the rest goes to providers by verified work.
    pub validator_reward_bps: u32,
    /// Blocks per provider reward epoch.
    pub reward_epoch_blocks: u64,
    /// Protocol's cut of each settled task, paid to validators.
    pub protocol_fee_bps: u32,
    /// Verification fee escrowed per task on top of its max price (for audits).
    pub verification_fee_bps: u32,
    /// Blocks a committed result waits before settling.
    pub challenge_window: u64,
    /// Blocks unbonded stake takes to return.
    pub unbonding_blocks: u64,
    /// Stake a provider needs per unit of open task value.
    pub exposure_multiplier: u32,
    /// Stake a provider needs to register.
    pub min_provider_stake: Amount,
    /// Blocks after its last heartbeat a provider still gets new work.
    pub heartbeat_timeout: u64,
    /// Bids kept per task auction.
    pub max_bids_per_task: u32,
    /// Auction window used when a task finds no provider at once.
    pub rematch_blocks: u32,
    /// Blocks since submission a task may wait for a provider before it is refunded.
    pub max_wait_blocks: u64,
    /// Unbondings in flight per account.
    pub max_unbondings: u32,
    /// Providers the registry holds.
    pub max_providers: u32,
    /// Blocks per storage epoch.
    pub storage_epoch_blocks: u64,
    /// Chunks each storage replica must prove per epoch.
    pub storage_challenges: u32,
    /// Least audit probability, `p_min`.
    pub audit_p_min_bps: u32,
    /// Extra auditors in a dispute, `k`.
    pub dispute_auditors: u32,
    /// Canary rate, `φ`: the chance, per committed result, that an auditor is also handed a
    /// task with a known answer and a wrong claimed output.
    pub canary_rate_bps: u32,
    /// Blocks an assigned auditor has to submit its verdict.
    pub audit_window: u64,
    /// A provider's first results are all audited.
    pub audit_first_results: u64,
    /// Auditors drawn in turn for one random audit when the drawn one gives no verdict.
    pub audit_max_draws: u32,
    /// Share of a slash paid to the auditors whose verdicts found the fault.
    pub slash_auditor_bps: u32,
    /// Share of a slash paid to the wronged client.
    pub slash_client_bps: u32,
    /// Least bond a client's dispute puts up, as a share of the task's price.
    pub dispute_bond_bps: u32,
    /// Verified results kept as canaries' known answers.
    pub known_answers: u32,
    /// Blocks after an auction stops taking sealed bids during which bidders reveal them; the
    /// auction closes at the end of this window.
    pub reveal_blocks: u32,
    /// Share of a validator's bonded stake burned for each proven consensus fault (one per
    /// validator and view).
    pub slash_validator_bps: u32,
    /// Blocks in a lease's probe round (the unit a lease is paid or refunded in).
    pub probe_interval: u64,
    /// Probers drawn per round.
    pub lease_probers: u32,
    /// Failed rounds in a row after which a lease moves to another provider.
    pub lease_migrate_after: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            min_tx_fee: Amount::from_base_units(1_000),
            block_reward: Amount::from_base_units(1_000_000),
            validator_reward_bps: 3_000,
            reward_epoch_blocks: 600,
            protocol_fee_bps: 200,
            verification_fee_bps: 1_000,
            challenge_window: 3_600,
            unbonding_blocks: 7 * 24 * 3_600,
            exposure_multiplier: 20,
            min_provider_stake: Amount::from_base_units(100_000_000),
            heartbeat_timeout: 600,
            max_bids_per_task: 32,
            rematch_blocks: 5,
            max_wait_blocks: 1_800,
            max_unbondings: 16,
            max_providers: 100_000,
            storage_epoch_blocks: 3_600,
            storage_challenges: 2,
            audit_p_min_bps: 500,
            dispute_auditors: 3,
            canary_rate_bps: 100,
            audit_window: 600,
            audit_first_results: 10,
            audit_max_draws: 3,
            slash_auditor_bps: 3_000,
            slash_client_bps: 2_000,
            dispute_bond_bps: 10_000,
            known_answers: 64,
            slash_validator_bps: 500,
            reveal_blocks: 5,
            probe_interval: 60,
            lease_probers: 3,
            lease_migrate_after: 2,
        }
    }
}

impl Params {
    /// Check the parameters make sense together.
    ///
    /// # Errors
    /// A message naming the first broken rule.
    pub fn validate(&self) -> Result<(), String> {
        let bps = [
            ("validator_reward_bps", self.validator_reward_bps),
            ("protocol_fee_bps", self.protocol_fee_bps),
            ("verification_fee_bps", self.verification_fee_bps),
            ("audit_p_min_bps", self.audit_p_min_bps),
            ("canary_rate_bps", self.canary_rate_bps),
            ("slash_auditor_bps", self.slash_auditor_bps),
            ("slash_client_bps", self.slash_client_bps),
            ("slash_validator_bps", self.slash_validator_bps),
            (
                "slash_auditor_bps + slash_client_bps",
                self.slash_auditor_bps.saturating_add(self.slash_client_bps),
            ),
        ];
        for (name, v) in bps {
            if v > 10_000 {
                return Err(format!("{name} must be at most 10000 (100%)"));
            }
        }
        let positive = [
            ("reward_epoch_blocks", self.reward_epoch_blocks),
            ("challenge_window", self.challenge_window),
            ("unbonding_blocks", self.unbonding_blocks),
            ("heartbeat_timeout", self.heartbeat_timeout),
            ("storage_epoch_blocks", self.storage_epoch_blocks),
            ("storage_challenges", u64::from(self.storage_challenges)),
            ("max_bids_per_task", u64::from(self.max_bids_per_task)),
            ("rematch_blocks", u64::from(self.rematch_blocks)),
            ("reveal_blocks", u64::from(self.reveal_blocks)),
            ("max_wait_blocks", self.max_wait_blocks),
            ("max_unbondings", u64::from(self.max_unbondings)),
            ("max_providers", u64::from(self.max_providers)),
            ("audit_p_min_bps", u64::from(self.audit_p_min_bps)),
            ("audit_window", self.audit_window),
            ("audit_max_draws", u64::from(self.audit_max_draws)),
            ("probe_interval", self.probe_interval),
            ("lease_probers", u64::from(self.lease_probers)),
            ("lease_migrate_after", u64::from(self.lease_migrate_after)),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("{name} must be above zero"));
            }
        }
        // The exposure rule only deters a single cheat when stake covers 1/p_min of the task.
        if u64::from(self.exposure_multiplier).saturating_mul(u64::from(self.audit_p_min_bps)) < 10_000 {
            return Err("exposure_multiplier must be at least 1/p_min (10000 / audit_p_min_bps)".into());
        }
        if self.dispute_auditors == 0 || self.dispute_auditors.is_multiple_of(2) {
            return Err("dispute_auditors must be odd so a majority exists".into());
        }
        if self.max_bids_per_task > 1_024 || self.max_unbondings > 1_024 {
            return Err("max_bids_per_task and max_unbondings must be at most 1024".into());
        }
        if self.dispute_auditors > 101 || self.audit_max_draws > 16 || self.known_answers > 1_024 {
            return Err(
                "dispute_auditors, audit_max_draws and known_answers must be at most 101, 16 and 1024".into(),
            );
        }
        if self.lease_probers > 15 || self.probe_interval > 1_000_000 {
            return Err("lease_probers must be at most 15 and probe_interval at most 1000000".into());
        }
        if self.storage_challenges > cairn_types::storage_limits::MAX_CHALLENGES {
            return Err(format!(
                "storage_challenges must be at most {}",
                cairn_types::storage_limits::MAX_CHALLENGES
            ));
        }
        if self.min_provider_stake.is_zero() {
            return Err("min_provider_stake must be above zero".into());
        }
        Ok(())
    }
}
