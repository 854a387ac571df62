//! Transactions: `Tx { chain_id, sender, nonce, fee, body, signature }`.
//!
//! The signature covers the canonical encoding of the transaction with the signature field
//! set to [`Signature::EMPTY`]. Replay protection is the chain id plus a nonce that must equal
//! the sender's next nonce exactly.

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

use crate::{
    Address, Amount, Canonical, ContentId, DealId, Hash32, JobId, JobSpec, LeaseId, ProviderInfo, Result,
    SecretKey, Signature, TaskId, TxHash, stream::StreamEnd,
};

/// Largest encoded transaction.
pub const MAX_TX_BYTES: usize = 128 * 1024;
/// Longest chain id.
pub const MAX_CHAIN_ID: usize = 64;

/// Move funds to another account.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Transfer {
    /// Recipient.
    pub to: Address,
    /// Amount moved.
    pub amount: Amount,
}

/// Lock funds as stake.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Bond {
    /// Amount bonded.
    pub amount: Amount,
}

/// Start unlocking stake; it returns after the unbonding period.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Unbond {
    /// Amount to unbond.
    pub amount: Amount,
}

/// Register the sender as a provider.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct RegisterProvider {
    /// Endpoint, region, attributes, capacity and prices.
    pub info: ProviderInfo,
}

/// Replace the sender's provider registration.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct UpdateProvider {
    /// The new registration.
    pub info: ProviderInfo,
}

/// A provider's liveness signal; providers without a recent heartbeat get no new work.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Heartbeat {}

/// Submit a job and deposit its escrow.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct SubmitJob {
    /// The job.
    pub spec: JobSpec,
}

/// A provider's bid for an open task: sealed while the auction takes bids, revealed after
/// (one per provider per task, binding).
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Bid {
    /// The task.
    pub task: TaskId,
    /// The sealed commitment, or its opening.
    pub offer: Offer,
}

/// The two halves of a sealed bid.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Offer {
    /// While the auction takes bids: [`Bid::commitment`] of the price and a secret salt. Nobody
    /// can read the price from it.
    Sealed(Hash32),
    /// After the auction's sealing window: the price and salt, which must match the commitment.
    Reveal {
        /// Price asked.
        price: Amount,
        /// The salt the commitment was made with.
        salt: Hash32,
    },
}

impl Bid {
    /// The commitment sealing `price` for `provider` on `task` (bound to both, so a bid cannot
    /// be copied by another provider or onto another task).
    pub fn commitment(task: &TaskId, provider: &Address, price: Amount, salt: &Hash32) -> Hash32 {
        Hash32(crate::hash_domain(
            "cairn sealed bid v1",
            &[&task.0, &provider.0, &price.base_units().to_le_bytes(), &salt.0],
        ))
    }
}

/// Cancel a job: tasks not yet committed are refunded.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct CancelJob {
    /// The job.
    pub job: JobId,
}

/// What running a task cost, as measured by the runtime.
#[derive(Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Metering {
    /// Metered units: fuel for WASM, tokens for inference.
    pub units: u64,
    /// Output size in bytes.
    pub output_bytes: u64,
}

/// The assigned provider's commitment to a result.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct CommitResult {
    /// The task.
    pub task: TaskId,
    /// Content id of the output.
    pub output: ContentId,
    /// What it cost to run.
    pub metering: Metering,
    /// Where each reply's token stream ends (inference; empty for other kinds): see
    /// [`crate::stream`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<StreamEnd>,
}

/// An assigned auditor's own result for a task it re-ran.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct SubmitAudit {
    /// The task audited.
    pub task: TaskId,
    /// Content id of the auditor's output.
    pub output: ContentId,
    /// What it cost to re-run.
    pub metering: Metering,
    /// The stream ends of the auditor's output, as in [`CommitResult::streams`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<StreamEnd>,
}

/// Challenge a committed result, with a bond.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct OpenDispute {
    /// The task.
    pub task: TaskId,
    /// Bond put up (lost if the dispute fails).
    pub bond: Amount,
}

/// Pin a blob on `replicas` providers for `epochs` epochs. The chain places each replica at
/// once on the cheapest live provider with room whose posted storage price is within
/// `max_price_per_gib_epoch` (and whose region and operator fit); the client escrows the most the
/// deal can cost and gets back what is not paid out.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct CreateStorageDeal {
    /// The blob.
    pub blob: ContentId,
    /// Its size in bytes.
    pub size: u64,
    /// Copies wanted.
    pub replicas: u32,
    /// Duration in epochs.
    pub epochs: u32,
    /// Most paid per GiB per replica per epoch.
    pub max_price_per_gib_epoch: Amount,
    /// Regions replicas may be in (empty: anywhere).
    pub regions: Vec<crate::Region>,
    /// No two replicas with one operator.
    pub distinct_operators: bool,
}

/// A storage provider's answer to its replica's possession challenge for `epoch`.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct ProveStorage {
    /// The deal.
    pub deal: DealId,
    /// The epoch challenged.
    pub epoch: u32,
    /// The challenged chunks with their inclusion proofs.
    pub proof: crate::PossessionProof,
}

/// Open a lease for a long-running service (a `kind: service` spec). The chain picks the
/// provider at once: the cheapest live one whose posted `service` price is within the spec's
/// `max_price_per_block` and that fits its resources and constraints. The lease pays that price.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct OpenLease {
    /// What runs, and its SLA.
    pub spec: JobSpec,
    /// Escrowed deposit; the lease closes when it no longer covers a block.
    pub deposit: Amount,
}

/// Close a lease; it settles to this block.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct CloseLease {
    /// The lease.
    pub lease: LeaseId,
}

/// Evidence that a provider streamed tokens it did not commit: one point of its signed live
/// stream (see [`crate::stream::StreamEvent`]) and, unless that point is the reply's end, the
/// committed reply's token ids (from the committed output). Anyone holding the signed point
/// may report it while the task is committed; a point that is not a prefix of the committed
/// reply slashes the provider and the task re-runs or is refunded.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct ReportStream {
    /// The task.
    pub task: TaskId,
    /// The reply's position in the task.
    pub index: u64,
    /// Tokens streamed at the signed point.
    pub n: u64,
    /// The chain the provider signed at that point.
    pub chain: Hash32,
    /// Whether the provider signed it as the reply's end.
    pub last: bool,
    /// The provider's signature over [`crate::stream::StreamEvent::signed_bytes`].
    pub sig: Signature,
    /// The committed reply's token ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<u32>,
}

/// A probe's outcome, from an auditor the chain drew for this round of the lease: whether the
/// service answered its SLA's probe path with a 2xx status, and how fast. Only this round's
/// drawn probers may report, once each, until the round ends.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct ReportProbe {
    /// The lease.
    pub lease: LeaseId,
    /// The probe round.
    pub round: u32,
    /// Whether the service answered with a 2xx status.
    pub ok: bool,
    /// How long the answer took, in milliseconds (0 when there was none).
    pub latency_ms: u32,
}

/// The lease's provider saved the service's volume (a tar archive of it, uploaded as `blob`):
/// the chain records it as the copy a provider the lease moves to starts from. Only the
/// lease's current provider may save, while the lease is open, within the spec's volume cap.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct SaveVolume {
    /// The lease.
    pub lease: LeaseId,
    /// The archive's content id.
    pub blob: ContentId,
    /// Its size in bytes.
    pub size: u64,
}

/// Every transaction body. The order of variants is the wire tag: append, never reorder.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TxBody {
    /// See [`Transfer`].
    Transfer(Transfer),
    /// See [`Bond`].
    Bond(Bond),
    /// See [`Unbond`].
    Unbond(Unbond),
    /// See [`RegisterProvider`].
    RegisterProvider(RegisterProvider),
    /// See [`UpdateProvider`].
    UpdateProvider(UpdateProvider),
    /// See [`Heartbeat`].
    Heartbeat(Heartbeat),
    /// See [`SubmitJob`].
    SubmitJob(SubmitJob),
    /// See [`Bid`].
    Bid(Bid),
    /// See [`CancelJob`].
    CancelJob(CancelJob),
    /// See [`CommitResult`].
    CommitResult(CommitResult),
    /// See [`SubmitAudit`].
    SubmitAudit(SubmitAudit),
    /// See [`OpenDispute`].
    OpenDispute(OpenDispute),
    /// See [`CreateStorageDeal`].
    CreateStorageDeal(CreateStorageDeal),
    /// See [`ProveStorage`].
    ProveStorage(ProveStorage),
    /// See [`OpenLease`].
    OpenLease(OpenLease),
    /// See [`CloseLease`].
    CloseLease(CloseLease),
    /// See [`ReportStream`].
    ReportStream(ReportStream),
    /// See [`ReportProbe`].
    ReportProbe(ReportProbe),
    /// See [`SaveVolume`].
    SaveVolume(SaveVolume),
}

impl TxBody {
    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            TxBody::Transfer(_) => "transfer",
            TxBody::Bond(_) => "bond",
            TxBody::Unbond(_) => "unbond",
            TxBody::RegisterProvider(_) => "register_provider",
            TxBody::UpdateProvider(_) => "update_provider",
            TxBody::Heartbeat(_) => "heartbeat",
            TxBody::SubmitJob(_) => "submit_job",
            TxBody::Bid(_) => "bid",
            TxBody::CancelJob(_) => "cancel_job",
            TxBody::CommitResult(_) => "commit_result",
            TxBody::SubmitAudit(_) => "submit_audit",
            TxBody::OpenDispute(_) => "open_dispute",
            TxBody::CreateStorageDeal(_) => "create_storage_deal",
            TxBody::ProveStorage(_) => "prove_storage",
            TxBody::OpenLease(_) => "open_lease",
            TxBody::CloseLease(_) => "close_lease",
            TxBody::ReportStream(_) => "report_stream",
            TxBody::ReportProbe(_) => "report_probe",
            TxBody::SaveVolume(_) => "save_volume",
        }
    }
}

/// A signed transaction.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Tx {
    /// The chain this transaction is for.
    pub chain_id: String,
    /// The signer.
    pub sender: Address,
    /// Must equal the sender's next nonce.
    pub nonce: u64,
    /// Fee paid to validators, charged even if the body fails.
    pub fee: Amount,
    /// What to do.
    pub body: TxBody,
    /// Signature over [`Tx::signing_bytes`].
    pub signature: Signature,
}

impl Canonical for Tx {
    const WHAT: &'static str = "transaction";
    const MAX_BYTES: usize = MAX_TX_BYTES;
}

impl Tx {
    /// Build and sign a transaction.
    pub fn sign(key: &SecretKey, chain_id: &str, nonce: u64, fee: Amount, body: TxBody) -> Tx {
        let mut tx = Tx {
            chain_id: chain_id.to_owned(),
            sender: key.address(),
            nonce,
            fee,
            body,
            signature: Signature::EMPTY,
        };
        tx.signature = key.sign(&tx.signing_bytes());
        tx
    }

    /// The signed message: the canonical encoding with the signature field empty.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let unsigned = Tx { signature: Signature::EMPTY, ..self.clone() };
        unsigned.encode()
    }

    /// The hash of the full canonical encoding.
    pub fn hash(&self) -> TxHash {
        TxHash(*blake3::hash(&self.encode()).as_bytes())
    }

    /// Check the signature on its own.
    ///
    /// # Errors
    /// [`crate::Error::BadSignature`].
    pub fn verify_signature(&self) -> Result<()> {
        self.sender.verify(&self.signing_bytes(), &self.signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    fn tx() -> Tx {
        let k = SecretKey::from_seed([9; 32]);
        Tx::sign(
            &k,
            "cairn-test",
            3,
            Amount::from_base_units(1000),
            TxBody::Transfer(Transfer {
                to: SecretKey::from_seed([8; 32]).address(),
                amount: Amount::from_base_units(5),
            }),
        )
    }

    #[test]
    fn a_changed_field_breaks_the_signature() {
        let mut t = tx();
        assert!(t.verify_signature().is_ok());
        t.nonce = 4;
        assert_eq!(t.verify_signature(), Err(Error::BadSignature));
    }

    #[test]
    fn trailing_and_truncated_bytes_are_refused() {
        let bytes = tx().encode();
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(Tx::decode(&longer), Err(Error::Malformed(_))));
        assert!(matches!(Tx::decode(&bytes[..bytes.len() - 1]), Err(Error::Malformed(_))));
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert!(matches!(Tx::decode(&v2), Err(Error::UnsupportedVersion { found: 2, .. })));
        assert!(matches!(Tx::decode(&vec![1; MAX_TX_BYTES + 1]), Err(Error::TooLarge { .. })));
    }
}
