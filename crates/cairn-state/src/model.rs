//! The records the state holds. All are borsh-encoded under the keys in [`crate::keys`].

use borsh::{BorshDeserialize, BorshSerialize};
use cairn_types::{
    Address, Amount, AuditKind, ContentId, DealId, JobId, JobSpec, LeaseId, Metering, ProviderInfo,
    RefundReason, TaskId, WorkloadKind, stream::StreamEnd,
};
use serde::{Deserialize, Serialize};

/// Chain metadata.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Meta {
    /// The chain id transactions must name.
    pub chain_id: String,
    /// Height of the last applied block (0 = genesis).
    pub height: u64,
}

/// Supply counters and module pools. Conservation: balances + stakes + escrows + pools +
/// burned = genesis supply + emitted.
#[derive(Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Totals {
    /// Supply created at genesis.
    pub genesis_supply: Amount,
    /// Supply created by block rewards since.
    pub emitted: Amount,
    /// Supply destroyed (slashing).
    pub burned: Amount,
    /// Fees waiting to be paid to validators.
    pub fee_pool: Amount,
    /// Provider rewards waiting for the epoch's end.
    pub provider_pool: Amount,
    /// Verified work (settled task value) in the current reward epoch.
    pub epoch_work: Amount,
    /// Verification fees of settled tasks, waiting to pay auditors.
    pub audit_pool: Amount,
}

/// An account.
#[derive(Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Account {
    /// Spendable balance.
    pub balance: Amount,
    /// The next nonce this account must use.
    pub nonce: u64,
}

/// Stake that is unlocking.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Unbonding {
    /// Amount.
    pub amount: Amount,
    /// Height at which it returns to the balance.
    pub release_at: u64,
}

/// Bonded and unbonding stake. Both can be slashed.
#[derive(Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Stake {
    /// Bonded.
    pub bonded: Amount,
    /// Unlocking, oldest first.
    pub unbonding: Vec<Unbonding>,
}

/// Result history used for audit probability and auction ranking.
#[derive(Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Reputation {
    /// Valid results since the last failure.
    pub consecutive_valid: u64,
    /// Valid results ever.
    pub total_valid: u64,
    /// Failed results and missed deadlines ever.
    pub total_failed: u64,
}

impl Reputation {
    /// Ranking weight in basis points: 1.0× for a newcomer, up to 1.5× after 50 valid results
    /// in a row, down to 0.5× with failures. Auctions rank bids by `price / weight`.
    pub fn weight_bps(&self) -> u128 {
        let bonus = u128::from(self.consecutive_valid.min(50)).saturating_mul(100);
        let malus = u128::from(self.total_failed.min(10)).saturating_mul(500);
        10_000u128.saturating_add(bonus).saturating_sub(malus).max(5_000)
    }
}

/// Capacity held by assigned tasks.
#[derive(Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Reserved {
    /// CPU in thousandths of a core.
    pub cpu_millis: u64,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// GPUs.
    pub gpus: u32,
    /// Bytes held by storage replicas.
    #[serde(default)]
    pub storage_bytes: u64,
}

/// A registered provider.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Provider {
    /// Its account.
    pub owner: Address,
    /// Its registration.
    pub info: ProviderInfo,
    /// Capacity held by assigned tasks.
    pub reserved: Reserved,
    /// Value of tasks assigned or committed and not yet settled (its stake exposure).
    pub open_value: Amount,
    /// Number of such tasks.
    pub open_tasks: u32,
    /// Height of its last heartbeat.
    pub heartbeat: u64,
    /// Height it registered at.
    pub registered_at: u64,
    /// Result history.
    pub reputation: Reputation,
    /// Verified work in `work_epoch`.
    pub epoch_work: Amount,
    /// The reward epoch `epoch_work` belongs to.
    pub work_epoch: u64,
}

/// A job.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// Who pays.
    pub client: Address,
    /// Workload kind.
    pub kind: WorkloadKind,
    /// Number of tasks.
    pub tasks: u32,
    /// Most paid per task.
    pub max_price: Amount,
    /// Escrow held per unfinished task: `max_price` + verification fee.
    pub reserve_per_task: Amount,
    /// Height submitted.
    pub submitted_at: u64,
    /// Tasks not yet settled or refunded.
    pub unfinished: u32,
    /// Cancelled by its client.
    pub cancelled: bool,
}

/// A sealed bid: who, and the commitment to its price.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct SealedBid {
    /// Bidder.
    pub provider: Address,
    /// [`cairn_types::Bid::commitment`] of its price.
    pub commitment: cairn_types::Hash32,
}

/// A (revealed) bid in an open auction.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct BidEntry {
    /// Bidder.
    pub provider: Address,
    /// Price asked.
    pub price: Amount,
}

/// Where a task is in its life.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TaskState {
    /// Collecting bids until `auction_end` (inclusive).
    Open {
        /// Last height bids are taken.
        auction_end: u64,
        /// Bids so far.
        bids: Vec<BidEntry>,
    },
    /// A provider is running it.
    Assigned {
        /// The provider.
        provider: Address,
        /// Its price.
        price: Amount,
        /// Height assigned.
        assigned_at: u64,
        /// Last height a commit is accepted.
        deadline: u64,
    },
    /// A result is committed and waits out the challenge window.
    Committed {
        /// The provider.
        provider: Address,
        /// Its price.
        price: Amount,
        /// Output content id.
        output: ContentId,
        /// Metering reported.
        metering: Metering,
        /// Where each reply's live stream ends (inference).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        streams: Vec<StreamEnd>,
        /// Height committed.
        committed_at: u64,
        /// Height it settles at if unchallenged.
        settle_at: u64,
    },
    /// Paid.
    Settled {
        /// The provider.
        provider: Address,
        /// Price paid.
        price: Amount,
        /// Output content id.
        output: ContentId,
        /// Height settled.
        settled_at: u64,
    },
    /// Refunded to the client.
    Refunded {
        /// Why.
        reason: RefundReason,
        /// Height refunded.
        at: u64,
    },
    /// A training task waiting for the tasks it reads (see [`cairn_types::TrainSpec`]).
    Waiting {},
}

impl TaskState {
    /// A short name: `open`, `assigned`, `committed`, `settled`, `refunded`.
    pub fn name(&self) -> &'static str {
        match self {
            TaskState::Open { .. } => "open",
            TaskState::Assigned { .. } => "assigned",
            TaskState::Committed { .. } => "committed",
            TaskState::Settled { .. } => "settled",
            TaskState::Refunded { .. } => "refunded",
            TaskState::Waiting { .. } => "waiting",
        }
    }

    /// True once settled or refunded.
    pub fn is_final(&self) -> bool {
        matches!(self, TaskState::Settled { .. } | TaskState::Refunded { .. })
    }
}

/// One task of a job.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Task {
    /// Its id.
    pub id: TaskId,
    /// Its job.
    pub job: JobId,
    /// Its index in the job.
    pub index: u32,
    /// Current attempt, from 1.
    pub attempt: u32,
    /// Providers that missed this task's deadline; they are not picked again for it.
    pub excluded: Vec<Address>,
    /// State.
    pub state: TaskState,
    /// The committed outputs this task reads (a training task's checkpoint or shards, in the
    /// order of [`cairn_types::TrainSpec::dependencies`]), fixed when it opens; empty otherwise.
    /// Its worker and every auditor run it from exactly these.
    #[serde(default)]
    pub inputs: Vec<ContentId>,
    /// Height it became ready to match (submission, or when its inputs were accepted).
    #[serde(default)]
    pub ready_at: u64,
    /// Its committed result is past the audit draw and any audit it drew, so tasks reading it
    /// may start (and its client can no longer dispute it).
    #[serde(default)]
    pub accepted: bool,
}

/// An audit in progress: a random audit, a dispute, or a canary.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Audit {
    /// The task re-run.
    pub task: TaskId,
    /// Random audit, dispute or canary.
    pub kind: AuditKind,
    /// The output verdicts are checked against: the worker's, or a canary's wrong one.
    pub claimed: ContentId,
    /// A canary's known answer.
    pub answer: Option<ContentId>,
    /// After a random audit found a mismatch: that auditor and the output it reported.
    pub first: Option<(Address, ContentId)>,
    /// A client's dispute: the client and its bond (held here until the dispute ends).
    pub challenger: Option<(Address, Amount)>,
    /// Auditors assigned now.
    pub auditors: Vec<Address>,
    /// Their verdicts, in the same order.
    pub verdicts: Vec<Option<ContentId>>,
    /// Last height a verdict is taken.
    pub due: u64,
    /// Assignment round; the scheduled deadline carries it.
    pub round: u32,
    /// Auditors drawn for this task so far (never drawn twice).
    pub tried: Vec<Address>,
    /// The task's price: the basis of fees and slashes.
    pub price: Amount,
}

/// A verified result, kept as a canary's known answer.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct KnownAnswer {
    /// The task.
    pub task: TaskId,
    /// Its job.
    pub job: JobId,
    /// Who ran it (never drawn to audit its own canary).
    pub worker: Address,
    /// Its verified claim: the output, bound to its stream ends where it has any.
    pub output: ContentId,
    /// Its price.
    pub price: Amount,
}

/// One probe report of a lease's current round.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct ProbeReport {
    /// Who probed.
    pub prober: Address,
    /// Whether the service answered with a 2xx status.
    pub ok: bool,
    /// How long it took, in milliseconds.
    pub latency_ms: u32,
}

/// Probe rounds counted in the current SLA window.
#[derive(Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct SlaWindow {
    /// Rounds ended in this window.
    pub rounds: u32,
    /// Of them, rounds with a verdict (probed, and not a provider's first round).
    pub probed: u32,
    /// Of those, rounds that passed.
    pub passed: u32,
}

/// A lease: a long-running service on one provider at a time, paid per block in probe rounds.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Lease {
    /// Its id.
    pub id: LeaseId,
    /// Who pays.
    pub client: Address,
    /// Who serves now.
    pub provider: Address,
    /// What runs (a `kind: service` spec).
    pub spec: JobSpec,
    /// The current provider's price per block.
    pub price_per_block: Amount,
    /// The client's deposit (always `paid + refunded + escrow`).
    pub deposit: Amount,
    /// Escrow still held.
    pub escrow: Amount,
    /// Height opened.
    pub opened_at: u64,
    /// Height closed, once closed.
    pub closed_at: Option<u64>,
    /// Why it closed, once closed.
    pub end: Option<cairn_types::LeaseEnd>,
    /// The current probe round.
    pub round: u32,
    /// The round covers the blocks after `round_start` up to and including `round_end`.
    pub round_start: u64,
    /// See `round_start`.
    pub round_end: u64,
    /// This round's drawn probers.
    pub probers: Vec<Address>,
    /// This round's reports so far.
    pub reports: Vec<ProbeReport>,
    /// The current provider's first round: a failure is refunded but not held against it.
    pub fresh: bool,
    /// Failed rounds in a row on the current provider.
    pub failed_streak: u32,
    /// The SLA window so far.
    pub window: SlaWindow,
    /// Paid to providers so far (before the protocol fee).
    pub paid: Amount,
    /// Refunded to the client so far.
    pub refunded: Amount,
    /// Blocks paid for.
    pub paid_blocks: u64,
    /// Blocks refunded (rounds the probes failed).
    pub refunded_blocks: u64,
    /// Times it moved to another provider.
    pub migrations: u32,
    /// Providers it left (never chosen for it again); the most recent few.
    pub left: Vec<Address>,
    /// The volume as its provider last saved it (specs with a volume only).
    #[serde(default)]
    pub volume: Option<SavedVolume>,
}

/// A lease's volume as saved: the archive blob, its size and when.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct SavedVolume {
    /// The tar archive's content id.
    pub blob: ContentId,
    /// Its size in bytes.
    pub size: u64,
    /// The height of the save.
    pub at: u64,
    /// The provider that saved it.
    pub by: Address,
}

/// A storage deal: a blob kept on `replicas` providers for `epochs` epochs, each replica
/// paid for the epochs it proves.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Deal {
    /// Its id.
    pub id: DealId,
    /// Who pays.
    pub client: Address,
    /// The blob (its BLAKE3 hash is the root proofs are checked against).
    pub blob: ContentId,
    /// Its size.
    pub size: u64,
    /// Copies wanted.
    pub replicas: u32,
    /// Duration in epochs.
    pub epochs: u32,
    /// Most paid per GiB per replica per epoch.
    pub max_price_per_gib_epoch: Amount,
    /// What each replica slot reserves per epoch (`max_price_per_gib_epoch` for `size`).
    pub reserve_per_epoch: Amount,
    /// Regions replicas may be in (empty: anywhere).
    pub regions: Vec<cairn_types::Region>,
    /// No two replicas with one operator.
    pub distinct_operators: bool,
    /// Escrow still held: the reserve of every slot for every epoch not yet settled.
    pub escrow: Amount,
    /// Paid to providers (before the protocol fee).
    pub paid: Amount,
    /// Refunded to the client.
    pub refunded: Amount,
    /// Height created.
    pub created_at: u64,
    /// The current epoch (0-based).
    pub epoch: u32,
    /// Last height a proof for the current epoch is taken at.
    pub epoch_end: u64,
    /// The beacon the current epoch's challenges are drawn from.
    pub seed: cairn_types::Hash32,
    /// The replicas held now.
    pub holders: Vec<Replica>,
    /// Providers that held a replica and failed or left (never placed again).
    pub failed: Vec<Address>,
    /// Ended and settled.
    pub ended: bool,
}

/// One provider's replica of a deal.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Replica {
    /// The provider.
    pub provider: Address,
    /// What it is paid per proven epoch.
    pub price_per_epoch: Amount,
    /// The epoch it was placed in (its first, in which a miss is not slashed).
    pub since: u32,
    /// Epochs it proved.
    pub proven_epochs: u32,
    /// It proved the current epoch.
    pub proven: bool,
}

/// Work scheduled for the end of a block.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub enum Due {
    /// Close a task's auction (if it is still in this attempt's auction).
    AuctionClose {
        /// The task.
        task: TaskId,
        /// The attempt the auction belongs to.
        attempt: u32,
    },
    /// Check a task's deadline (if it is still assigned in this attempt).
    Deadline {
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: u32,
    },
    /// Decide, from this block's beacon, whether a task committed in the block before is
    /// audited (and whether a canary is handed out).
    AuditDraw {
        /// The task.
        task: TaskId,
    },
    /// An audit's verdict window ended (if it is still in this round).
    AuditDue {
        /// The task.
        task: TaskId,
        /// Canary (true) or audit/dispute record.
        canary: bool,
        /// The round.
        round: u32,
    },
    /// Settle a committed task whose challenge window ended.
    Settle {
        /// The task.
        task: TaskId,
    },
    /// Release matured unbondings.
    Unbond {
        /// Whose.
        who: Address,
    },
    /// End a lease's probe round: pay or refund its blocks, count the SLA, start the next.
    LeaseRound {
        /// The lease.
        lease: LeaseId,
        /// The round.
        round: u32,
    },
    /// Settle a storage deal's epoch.
    DealEpoch {
        /// The deal.
        deal: DealId,
        /// The epoch.
        epoch: u32,
    },
}
