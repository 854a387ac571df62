//! How a provider behaves: honest, or one of the adversaries verification must defeat.
//!
//! Provider daemons take a [`Behaviour`] from their configuration (tests and devnet drills
//! start cheating providers with it) and the simulator gives one to each simulated provider,
//! so both exercise the same strategies against the same chain code.

use serde::{Deserialize, Serialize};

use crate::{Address, TaskId, hash_domain};

/// A provider's strategy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Behaviour {
    /// Runs every task and re-runs every audit.
    #[default]
    Honest,
    /// Commits a wrong output for every task.
    WrongAlways,
    /// Commits a wrong output for a share of its tasks (`rate_bps` of 10,000), picked per task.
    WrongSometimes {
        /// Share of tasks cheated, in basis points.
        rate_bps: u32,
    },
    /// Skips the work and commits a plausible output (exit `ok`, nothing written).
    SkipWork,
    /// Runs its own tasks honestly; as an auditor, echoes the claimed output without re-running.
    LazyAuditor,
    /// Commits wrong outputs; as an auditor, approves the results of its ring without
    /// re-running, and re-runs the rest (so it passes canaries).
    Colluder {
        /// The colluding providers.
        ring: Vec<Address>,
    },
    /// Behaves until its first wrong output, then stops (no audits, no further work).
    CommitThenVanish,
    /// Commits honest results, but the live token streams it signs show another second token
    /// than the reply it commits.
    StreamLies,
    /// Does its compute work honestly, but keeps no stored replica: it deletes each deal's blob
    /// after its first possession proof and proves nothing after (hoping to be paid for storage
    /// it does not keep).
    DropsReplicas,
}

impl Behaviour {
    /// Whether it commits a wrong output for `task`.
    pub fn cheats_on(&self, task: &TaskId) -> bool {
        match self {
            Behaviour::Honest | Behaviour::LazyAuditor | Behaviour::StreamLies | Behaviour::DropsReplicas => {
                false
            }
            Behaviour::WrongAlways
            | Behaviour::SkipWork
            | Behaviour::Colluder { .. }
            | Behaviour::CommitThenVanish => true,
            Behaviour::WrongSometimes { rate_bps } => {
                let h = hash_domain("cairn adversary draw v1", &[&task.0]);
                u32::from_le_bytes([h[0], h[1], h[2], h[3]]) % 10_000 < *rate_bps
            }
        }
    }

    /// Whether it does the work of a task it cheats on (a skipper saves the cost).
    pub fn runs_work(&self) -> bool {
        !matches!(self, Behaviour::SkipWork)
    }

    /// Whether, auditing `worker`'s result, it re-runs the task; otherwise it echoes the claim.
    pub fn reruns_audit(&self, worker: Option<&Address>) -> bool {
        match self {
            Behaviour::LazyAuditor => false,
            Behaviour::Colluder { ring } => !worker.is_some_and(|w| ring.contains(w)),
            _ => true,
        }
    }

    /// A short name: `honest`, `wrong_always`…
    pub fn name(&self) -> &'static str {
        match self {
            Behaviour::Honest => "honest",
            Behaviour::WrongAlways => "wrong_always",
            Behaviour::WrongSometimes { .. } => "wrong_sometimes",
            Behaviour::SkipWork => "skip_work",
            Behaviour::LazyAuditor => "lazy_auditor",
            Behaviour::Colluder { .. } => "colluder",
            Behaviour::CommitThenVanish => "commit_then_vanish",
            Behaviour::StreamLies => "stream_lies",
            Behaviour::DropsReplicas => "drops_replicas",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_cheater_cheats_on_about_its_share_of_tasks() {
        let b = Behaviour::WrongSometimes { rate_bps: 2_500 };
        let n = (0..4_000u32).filter(|i| b.cheats_on(&TaskId(hash_domain("t", &[&i.to_le_bytes()])))).count();
        assert!((850..1_150).contains(&n), "{n} of 4000");
        assert!(!Behaviour::Honest.cheats_on(&TaskId::default()));
        let ring = vec![Address([1; 32])];
        let c = Behaviour::Colluder { ring: ring.clone() };
        assert!(!c.reruns_audit(Some(&ring[0])));
        assert!(c.reruns_audit(Some(&Address([2; 32]))));
        assert!(!Behaviour::LazyAuditor.reruns_audit(None));
    }
}
