//! The provider's record of tasks in flight, written to disk on every change (write to a
//! temporary file, then rename), so a restart knows what it was doing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cairn_types::{ContentId, JobId, TaskId};
use serde::{Deserialize, Serialize};

/// Where a task is in this provider's hands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Assigned; inputs being fetched or the workload running.
    Running,
    /// Finished; output stored locally, commit not yet in a block.
    Done {
        /// Output content id.
        output: ContentId,
        /// Metered units.
        units: u64,
        /// Output bytes.
        output_bytes: u64,
    },
    /// Commit is in a finalized block; the chain settles it.
    Committed {
        /// Output content id.
        output: ContentId,
    },
    /// It could not run here (inputs unavailable, wall-clock cap): tried again after a back-off
    /// rather than in a loop, until the deadline hands the task to someone else.
    Failed {
        /// Why.
        reason: String,
        /// Failed tries so far.
        tries: u32,
        /// Not tried again before this time (ms since the epoch).
        retry_at_ms: u64,
    },
}

impl Phase {
    /// The back-off after `tries` failed tries: 10 s, doubling, at most 5 minutes.
    pub fn backoff_ms(tries: u32) -> u64 {
        10_000u64.saturating_mul(1u64 << tries.saturating_sub(1).min(5)).min(300_000)
    }
}

/// One task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The job.
    pub job: JobId,
    /// Index in the job.
    pub index: u32,
    /// The attempt this provider was assigned.
    pub attempt: u32,
    /// Phase.
    pub phase: Phase,
    /// When this provider first saw the assignment (ms since the Unix epoch; for operators).
    pub seen_ms: u64,
    /// When execution started (ms since the Unix epoch), once it did.
    pub started_ms: Option<u64>,
}

/// All tasks in flight.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Ledger {
    /// Task → entry.
    pub tasks: BTreeMap<TaskId, Entry>,
    #[serde(skip)]
    path: PathBuf,
}

impl Ledger {
    /// Load (or start) the ledger at `path`.
    ///
    /// # Errors
    /// If the file exists but cannot be read or parsed.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let mut l: Ledger = serde_json::from_slice(&bytes).map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))
                })?;
                l.path = path.to_path_buf();
                Ok(l)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(Ledger { tasks: BTreeMap::new(), path: path.to_path_buf() })
            }
            Err(e) => Err(e),
        }
    }

    /// Write to disk atomically.
    ///
    /// # Errors
    /// On I/O failure.
    pub fn save(&self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)
    }
}

/// Milliseconds since the Unix epoch (operator-facing timestamps only).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::Phase;

    #[test]
    fn a_failed_task_waits_longer_after_each_try_up_to_five_minutes() {
        let waits: Vec<u64> = (1..=8).map(Phase::backoff_ms).collect();
        assert_eq!(waits, [10_000, 20_000, 40_000, 80_000, 160_000, 300_000, 300_000, 300_000]);
    }
}
