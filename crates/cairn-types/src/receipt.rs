//! What a block did: receipts with stable error codes, and events.

use std::fmt;

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Address, Amount, ContentId, DealId, JobId, LeaseId, TaskId, TxHash};

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $name:ident = $num:literal, $snake:literal, $msg:literal; )*) => {
        /// A stable, numbered reason a transaction was refused. Every node produces the same
        /// code for the same transaction; codes are never renumbered or reused.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u16)]
        pub enum ErrorCode {
            $( $(#[$doc])* $name = $num, )*
        }

        impl ErrorCode {
            /// Every code, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name,)*];

            /// The stable number.
            pub const fn code(self) -> u16 {
                self as u16
            }

            /// The code with this number.
            pub fn from_code(n: u16) -> Option<ErrorCode> {
                match n {
                    $( $num => Some(ErrorCode::$name), )*
                    _ => None,
                }
            }

            /// A stable snake_case name, e.g. `nonce_gap`.
            pub fn name(self) -> &'static str {
                match self {
                    $( ErrorCode::$name => $snake, )*
                }
            }

            /// A one-line explanation for people.
            pub fn message(self) -> &'static str {
                match self {
                    $( ErrorCode::$name => $msg, )*
                }
            }
        }
    };
}

error_codes! {
    /// The transaction bytes are not a canonical encoding.
    Malformed = 1, "malformed", "transaction bytes are not a canonical encoding";
    /// The transaction is over the size limit.
    TooLarge = 2, "too_large", "transaction is too large";
    /// The chain id is not this chain's.
    WrongChainId = 3, "wrong_chain_id", "transaction is for another chain";
    /// The signature does not verify.
    BadSignature = 4, "bad_signature", "signature does not verify";
    /// The nonce was already used (a replay).
    NonceReplayed = 5, "nonce_replayed", "nonce already used";
    /// The nonce skips ahead of the sender's next nonce.
    NonceGap = 6, "nonce_gap", "nonce is ahead of the sender's next nonce";
    /// The fee is below the chain's minimum.
    FeeTooLow = 7, "fee_too_low", "fee is below the minimum";
    /// The sender cannot pay the fee.
    CannotPayFee = 8, "cannot_pay_fee", "balance does not cover the fee";
    /// The sender cannot pay the amount.
    InsufficientFunds = 9, "insufficient_funds", "balance does not cover the amount";
    /// An amount would overflow.
    Overflow = 10, "overflow", "amount overflows";
    /// An amount that must be positive is zero.
    ZeroAmount = 11, "zero_amount", "amount must be above zero";
    /// A body field breaks a protocol rule.
    InvalidBody = 12, "invalid_body", "transaction body breaks a protocol rule";
    /// Not enough bonded stake.
    InsufficientStake = 20, "insufficient_stake", "bonded stake is too low";
    /// Stake backs open work and cannot be unbonded yet.
    StakeLocked = 21, "stake_locked", "stake backs open work or a registration and cannot be unbonded";
    /// Unbonding more than is bonded.
    UnbondTooMuch = 22, "unbond_too_much", "unbonding more than is bonded";
    /// Too many unbondings in flight.
    TooManyUnbondings = 23, "too_many_unbondings", "too many unbondings in flight";
    /// The sender is already a provider.
    ProviderAlreadyRegistered = 30, "provider_already_registered", "already registered as a provider";
    /// The sender or named account is not a provider.
    ProviderNotRegistered = 31, "provider_not_registered", "not a registered provider";
    /// The provider registration breaks a rule.
    InvalidProviderInfo = 32, "invalid_provider_info", "provider registration breaks a rule";
    /// Capacity cannot shrink below what running work holds.
    CapacityInUse = 33, "capacity_in_use", "capacity is held by running work";
    /// The provider registry is full.
    RegistryFull = 34, "registry_full", "provider registry is full";
    /// The job spec breaks a rule.
    InvalidJobSpec = 40, "invalid_job_spec", "job spec breaks a rule";
    /// No such job.
    JobNotFound = 41, "job_not_found", "no such job";
    /// No such task.
    TaskNotFound = 42, "task_not_found", "no such task";
    /// Only the job's client may do this.
    NotJobClient = 43, "not_job_client", "only the job's client may do this";
    /// The task is not open for bids.
    TaskNotOpen = 44, "task_not_open", "task is not open for bids";
    /// The auction window has closed.
    AuctionClosed = 45, "auction_closed", "auction window has closed";
    /// The price is above the task's maximum.
    PriceAboveMax = 46, "price_above_max", "price is above the task's maximum";
    /// This provider already bid on this task.
    DuplicateBid = 47, "duplicate_bid", "provider already bid on this task";
    /// The provider is not eligible for this task.
    NotEligible = 48, "not_eligible", "provider is not eligible for this task";
    /// Only the assigned provider may do this.
    NotAssignedProvider = 49, "not_assigned_provider", "only the assigned provider may do this";
    /// The task is not assigned.
    TaskNotAssigned = 50, "task_not_assigned", "task is not assigned";
    /// The task's deadline has passed.
    DeadlinePassed = 51, "deadline_passed", "task deadline has passed";
    /// The job has finished or was cancelled.
    JobFinished = 52, "job_finished", "job has finished or was cancelled";
    /// The auction already holds better bids.
    AuctionFull = 53, "auction_full", "auction is full of better bids";
    /// A client cannot work on its own job.
    ClientCannotBid = 54, "client_cannot_bid", "a client cannot work on its own job";
    /// Job id already exists.
    JobExists = 55, "job_exists", "a job with this id already exists";
    /// The sender is not the auditor assigned to this task.
    AuditNotAssigned = 60, "audit_not_assigned", "sender is not an assigned auditor for this task";
    /// Audits, disputes and storage proofs are not active on this chain yet.
    VerificationNotActive = 61, "verification_not_active", "this verification step is not active on this chain";
    /// The task cannot be disputed now.
    DisputeNotAllowed = 62, "dispute_not_allowed", "task cannot be disputed now";
    /// The audit's verdict window has closed.
    AuditLate = 63, "audit_late", "the audit's verdict window has closed";
    /// This auditor already gave its verdict.
    DuplicateVerdict = 64, "duplicate_verdict", "this auditor already gave its verdict";
    /// The task is already under audit or dispute.
    DisputeExists = 65, "dispute_exists", "the task is already under audit or dispute";
    /// The dispute bond is below the minimum.
    DisputeBondTooLow = 66, "dispute_bond_too_low", "dispute bond is below the minimum";
    /// No eligible auditors exist for this task.
    NoAuditors = 67, "no_auditors", "no eligible auditors exist for this task";
    /// No such storage deal.
    DealNotFound = 70, "deal_not_found", "no such storage deal";
    /// No such lease.
    LeaseNotFound = 71, "lease_not_found", "no such lease";
    /// Only the lease's client or provider may do this.
    NotLeaseParty = 72, "not_lease_party", "only the lease's client or provider may do this";
    /// The lease has ended.
    LeaseClosed = 73, "lease_closed", "lease has ended";
    /// The storage deal breaks a rule.
    InvalidDeal = 74, "invalid_deal", "storage deal breaks a rule";
    /// The provider does not serve this kind of workload.
    KindNotServed = 75, "kind_not_served", "provider does not serve this workload kind";
    /// The price is below the provider's posted price.
    PriceBelowPosted = 76, "price_below_posted", "price is below the provider's posted price";
    /// A reveal without this provider's sealed bid.
    BidNotSealed = 77, "bid_not_sealed", "no sealed bid of this provider to reveal";
    /// The revealed price and salt do not open the sealed commitment.
    RevealMismatch = 78, "reveal_mismatch", "revealed price and salt do not match the sealed bid";
    /// Reveals are taken only between the end of sealing and the auction's close.
    NotRevealTime = 79, "not_reveal_time", "bids are revealed after sealing ends and before the auction closes";
    /// The reported reply has no committed stream end.
    StreamNotCommitted = 80, "stream_not_committed", "the task's commitment has no stream for this reply";
    /// The reported stream point is a prefix of the committed reply: nothing to slash.
    StreamConsistent = 81, "stream_consistent", "the signed stream agrees with the committed reply";
    /// The committed tokens given do not match the committed stream end.
    StreamEvidenceInvalid = 82, "stream_evidence_invalid", "the tokens given are not the committed reply";
    /// No live provider posts a `service` price within the spec's maximum and fits it.
    NoServiceProvider = 83, "no_service_provider", "no live provider serves this service spec at its price";
    /// The sender is not one of this round's drawn probers.
    ProbeNotAssigned = 84, "probe_not_assigned", "only this round's drawn probers may report a probe";
    /// The report names a round that is not the lease's current one.
    ProbeRoundClosed = 85, "probe_round_closed", "the probe round is not the lease's current round";
    /// This prober already reported this round.
    ProbeDuplicate = 86, "probe_duplicate", "this prober already reported this round";
    /// The deposit does not pay for one probe round at the provider's price.
    LeaseDepositTooSmall = 87, "lease_deposit_too_small", "the deposit does not cover one probe round";
    /// Fewer live providers than the deal's replicas store the blob at its price and fit it.
    NoStorageProvider = 88, "no_storage_provider", "not enough live providers store this blob within the deal's price and constraints";
    /// The proof names another epoch than the deal's current one.
    WrongEpoch = 89, "wrong_epoch", "the proof is not for the deal's current epoch";
    /// The sender holds no replica of the deal.
    NotReplica = 90, "not_replica", "only a provider holding a replica of the deal may prove it";
    /// This replica's proof for the epoch is already taken.
    AlreadyProven = 91, "already_proven", "this replica already proved this epoch";
    /// The proof answers other chunks than the ones challenged.
    ChunksNotChallenged = 92, "chunks_not_challenged", "the proof answers chunks that were not challenged";
    /// A chunk and its path do not hash up to the deal's blob id.
    ProofInvalid = 93, "proof_invalid", "the possession proof does not hash up to the deal's blob";
    /// The blob is larger than a deal may store.
    BlobTooLarge = 94, "blob_too_large", "the blob is larger than a storage deal may hold";
    /// The deal has ended.
    DealClosed = 95, "deal_closed", "the storage deal has ended";
    /// Only the lease's current provider may save its volume.
    NotLeaseProvider = 96, "not_lease_provider", "only the lease's current provider may save its volume";
    /// The lease's spec has no volume.
    NoVolume = 97, "no_volume", "the lease's service has no volume";
    /// The saved volume is empty or larger than the spec's volume allows.
    VolumeTooLarge = 98, "volume_too_large", "the saved volume is empty or larger than its spec allows";
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "E{:03} {}: {}", self.code(), self.name(), self.message())
    }
}

impl BorshSerialize for ErrorCode {
    fn serialize<W: std::io::Write>(&self, w: &mut W) -> std::io::Result<()> {
        BorshSerialize::serialize(&self.code(), w)
    }
}

impl BorshDeserialize for ErrorCode {
    fn deserialize_reader<R: std::io::Read>(r: &mut R) -> std::io::Result<Self> {
        let n = u16::deserialize_reader(r)?;
        ErrorCode::from_code(n).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("unknown error code {n}"))
        })
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <String as Deserialize>::deserialize(d)?;
        ErrorCode::ALL
            .iter()
            .copied()
            .find(|c| c.name() == s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown error code {s:?}")))
    }
}

/// How a transaction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(tag = "status", content = "code", rename_all = "snake_case")]
pub enum TxStatus {
    /// Applied.
    Ok,
    /// The fee was charged and the nonce used, but the body changed nothing.
    Failed(ErrorCode),
    /// Refused before execution (bad signature, nonce, chain id, fee): nothing changed.
    Rejected(ErrorCode),
}

/// Why a task's deposit went back to its client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundReason {
    /// No eligible provider took it within its attempts.
    NoProvider,
    /// Every attempt missed its deadline.
    MaxAttempts,
    /// The client cancelled before a result was committed.
    Cancelled,
    /// A training task whose earlier round could not finish (that task was refunded).
    Upstream,
}

/// How an audit or dispute ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    /// The re-runs agree with the worker's result: it settles.
    Confirmed,
    /// The re-runs agree on another result: the worker is slashed, the task re-runs or is refunded.
    WorkerFaulted,
    /// A canary's known answer was given: the auditor re-ran it.
    CanaryPassed,
    /// A canary's auditor echoed the wrong claimed output: it is slashed.
    CanaryFailed,
    /// No majority, or no verdict: nobody is slashed, the worker is not paid and the task
    /// re-runs or is refunded.
    Undecided,
    /// The assigned auditor gave no verdict in time and no other auditor could be drawn: the
    /// result settles unaudited.
    Unanswered,
}

/// Why stake was slashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlashReason {
    /// A worker's committed result lost a dispute.
    WrongResult,
    /// An auditor's verdict disagreed with the dispute's majority.
    WrongVerdict,
    /// An auditor approved a canary's wrong answer (or gave another wrong one).
    Canary,
    /// A provider signed a live stream that differs from the reply it committed.
    StreamMismatch,
}

/// How a lease's probe round went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoundVerdict {
    /// Most probes saw the service answer within the SLA's latency.
    Passed,
    /// Most probes saw it fail (no answer, an error status, or too slow).
    Failed,
    /// No probe was reported (or none drawn): the round is paid, and not counted in the SLA.
    Unprobed,
}

/// Why a lease closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseEnd {
    /// The client closed it.
    Client,
    /// Its escrow no longer covered a block.
    Escrow,
    /// It had to move and no other provider could take it.
    NoProvider,
}

/// Why an audit was assigned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// The beacon picked the result for a random audit.
    Random,
    /// A dispute: `k` auditors re-run and the majority decides.
    Dispute,
    /// A task with a known answer, shown with a wrong claimed output.
    Canary,
}

/// Something that happened, for clients, providers and the explorer.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Funds moved.
    Transferred { from: Address, to: Address, amount: Amount },
    /// Stake bonded.
    Bonded { who: Address, amount: Amount },
    /// Unbonding started.
    UnbondStarted { who: Address, amount: Amount, release_at: u64 },
    /// Unbonded stake returned to the balance.
    Unbonded { who: Address, amount: Amount },
    /// A provider registered.
    ProviderRegistered { provider: Address },
    /// A provider changed its registration.
    ProviderUpdated { provider: Address },
    /// A job was submitted and its escrow deposited.
    JobSubmitted { job: JobId, client: Address, tasks: u32, deposit: Amount },
    /// A task is open for bids until `auction_end`.
    TaskOpened { task: TaskId, job: JobId, index: u32, attempt: u32, auction_end: u64 },
    /// A bid was placed.
    BidPlaced { task: TaskId, provider: Address, price: Amount },
    /// A task was given to a provider.
    TaskAssigned {
        task: TaskId,
        job: JobId,
        index: u32,
        provider: Address,
        price: Amount,
        deadline: u64,
        attempt: u32,
    },
    /// A provider committed a result.
    TaskCommitted { task: TaskId, provider: Address, output: ContentId, settle_at: u64 },
    /// A provider missed its deadline; the task goes back to auction or is refunded.
    TaskMissedDeadline { task: TaskId, provider: Address, attempt: u32 },
    /// A task was paid for.
    TaskSettled {
        task: TaskId,
        job: JobId,
        provider: Address,
        paid: Amount,
        protocol_fee: Amount,
        refunded: Amount,
    },
    /// A task's deposit went back to the client.
    TaskRefunded { task: TaskId, job: JobId, amount: Amount, reason: RefundReason },
    /// Every task of a job is settled or refunded.
    JobFinished { job: JobId },
    /// A lease opened on `provider` at `price_per_block`.
    LeaseOpened { lease: LeaseId, client: Address, provider: Address, price_per_block: Amount },
    /// A probe round of a lease began: `probers` request its probe path before height `ends`.
    LeaseRound { lease: LeaseId, round: u32, provider: Address, probers: Vec<Address>, ends: u64 },
    /// A probe round ended: the provider was paid for its blocks (`passed`, or no probe
    /// answered) or the client refunded them (the probes failed).
    LeaseRoundSettled {
        lease: LeaseId,
        round: u32,
        verdict: crate::RoundVerdict,
        blocks: u64,
        paid: Amount,
        refunded: Amount,
    },
    /// A probe report was taken.
    ProbeReported { lease: LeaseId, round: u32, prober: Address, ok: bool, latency_ms: u32 },
    /// An SLA window ended below the spec's uptime: the provider was slashed.
    SlaBreached {
        lease: LeaseId,
        provider: Address,
        uptime_bps: u32,
        slashed: Amount,
        to_client: Amount,
        burned: Amount,
    },
    /// A lease moved to another provider (the old one failed its probes, breached its SLA or
    /// left); the service restarts there at the new provider's price.
    LeaseMigrated { lease: LeaseId, from: Address, to: Address, price_per_block: Amount },
    /// A lease closed and settled: `paid` to providers (less fees) and `refunded` to the client
    /// over its whole life.
    LeaseClosed { lease: LeaseId, paid: Amount, refunded: Amount, reason: crate::LeaseEnd },
    /// A storage deal was created; its replicas follow as [`Event::ReplicaAssigned`].
    DealCreated { deal: DealId, client: Address },
    /// A storage deal ended (its last epoch passed, or no replica was left to keep it); its
    /// unspent escrow went back.
    DealEnded { deal: DealId, refunded: Amount, lost: bool },
    /// `provider` is to hold a replica of `deal` from `epoch`, copying it from `sources` (the
    /// client uploads it when there are none).
    ReplicaAssigned {
        deal: DealId,
        provider: Address,
        epoch: u32,
        price_per_epoch: Amount,
        sources: Vec<Address>,
    },
    /// A storage epoch began: each replica must prove the chunks its seed picks by height `ends`.
    DealEpoch { deal: DealId, epoch: u32, ends: u64 },
    /// A replica's possession proof for `epoch` was taken.
    StorageProven { deal: DealId, provider: Address, epoch: u32 },
    /// An epoch ended: proven replicas were `paid` (less the protocol fee) and the rest of the
    /// epoch's reserve `refunded` to the client.
    DealEpochSettled { deal: DealId, epoch: u32, proven: u32, paid: Amount, refunded: Amount },
    /// A replica gave no valid proof for `epoch`: it was dropped (and, past its first epoch,
    /// its collateral slashed: a share to the client, the rest burned).
    ReplicaFailed {
        deal: DealId,
        provider: Address,
        epoch: u32,
        slashed: Amount,
        to_client: Amount,
        burned: Amount,
    },
    /// An auditor must re-run `task` and submit its own output root by height `due`.
    /// `claimed` is the output it is checked against; canaries look the same.
    AuditAssigned { task: TaskId, auditor: Address, claimed: ContentId, due: u64 },
    /// A dispute opened: `auditors` re-run the task.
    DisputeOpened { task: TaskId, by: Option<Address>, auditors: Vec<Address>, due: u64 },
    /// An assigned auditor gave its verdict.
    AuditSubmitted { task: TaskId, auditor: Address },
    /// An assigned auditor gave no verdict in time.
    AuditorMissed { task: TaskId, auditor: Address },
    /// An audit or dispute ended.
    AuditResolved { task: TaskId, outcome: AuditOutcome },
    /// An auditor was paid for a verdict that matched the outcome.
    AuditorPaid { task: TaskId, auditor: Address, amount: Amount },
    /// Stake was slashed and split.
    Slashed {
        who: Address,
        task: TaskId,
        reason: SlashReason,
        amount: Amount,
        to_auditors: Amount,
        to_client: Amount,
        burned: Amount,
    },
    /// Block rewards and fees were paid out.
    RewardsPaid { validators: Amount, providers: Amount },
    /// A sealed bid was taken (its price stays hidden until revealed).
    BidSealed { task: TaskId, provider: Address },
    /// A validator's proven consensus fault cost it stake (burned).
    ValidatorSlashed { validator: Address, view: u64, kind: crate::FaultKind, amount: Amount },
    /// A provider's signed live stream differed from the reply it committed (`index` in the
    /// task), as `reporter` showed: it is slashed and the task re-runs or is refunded.
    StreamMismatch { task: TaskId, provider: Address, index: u64, reporter: Address },
    /// The lease's provider saved its volume as `blob`: where the service starts from if the
    /// lease moves, and what the client can download.
    VolumeSaved { lease: LeaseId, provider: Address, blob: ContentId, size: u64 },
}

/// The result of a transaction, or of the block's end-of-block work.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Receipt {
    /// One transaction.
    Tx {
        /// Its hash.
        hash: TxHash,
        /// How it ended.
        status: TxStatus,
        /// Fee charged (zero when rejected).
        fee: Amount,
        /// What it did.
        events: Vec<Event>,
    },
    /// The block's own work after its transactions: auctions closing, deadlines, settlement,
    /// unbonding, rewards.
    EndBlock {
        /// What it did.
        events: Vec<Event>,
    },
}

impl Receipt {
    /// The events of this receipt.
    pub fn events(&self) -> &[Event] {
        match self {
            Receipt::Tx { events, .. } | Receipt::EndBlock { events } => events,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_stable_and_named() {
        let mut seen = std::collections::BTreeSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.code()));
            assert_eq!(ErrorCode::from_code(c.code()), Some(*c));
        }
        assert_eq!(ErrorCode::NonceGap.code(), 6);
        assert_eq!(ErrorCode::NonceGap.name(), "nonce_gap");
        assert_eq!(ErrorCode::BadSignature.to_string(), "E004 bad_signature: signature does not verify");
        assert!(ErrorCode::from_code(9999).is_none());
    }
}
