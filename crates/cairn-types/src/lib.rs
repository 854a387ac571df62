//! Cairn's shared domain types.
//!
//! Everything that crosses a process boundary is defined here: account addresses and keys,
//! token amounts, content ids, the canonical binary codec, transactions and their bodies, job
//! specs, blocks, receipts and the stable error codes a receipt carries. The crate has no I/O
//! and no dependency on the state machine, so clients can use it without pulling chain code.
//!
//! ```
//! use cairn_types::{Amount, Canonical, SecretKey, Tx, TxBody, Transfer};
//!
//! let alice = SecretKey::from_seed([1; 32]);
//! let bob = SecretKey::from_seed([2; 32]).address();
//! let tx = Tx::sign(
//!     &alice,
//!     "cairn-devnet",
//!     0,
//!     Amount::from_crn(0).unwrap(),
//!     TxBody::Transfer(Transfer { to: bob, amount: "1.5 CRN".parse().unwrap() }),
//! );
//! let bytes = tx.encode();
//! let back = Tx::decode(&bytes).unwrap();
//! assert_eq!(back, tx);
//! assert!(back.verify_signature().is_ok());
//! ```

#![deny(clippy::unwrap_used, clippy::arithmetic_side_effects, clippy::float_arithmetic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::arithmetic_side_effects))]

/// Serialize a type as its `Display` text and deserialize it with `FromStr`, so JSON, TOML and
/// YAML show the same form people type.
macro_rules! serde_as_text {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use serde_as_text;

mod amount;
pub mod api;
mod behaviour;
mod block;
mod bundle;
mod codec;
mod error;
mod hash;
mod job;
mod keys;
mod provider;
mod receipt;
mod render;
mod service;
pub mod storage;
pub mod stream;
mod train;
mod tx;
pub mod upload;

pub use amount::{Amount, BASE_UNITS_PER_CRN, DECIMALS};
pub use behaviour::Behaviour;
pub use block::{Block, Fault, FaultKind, MAX_BLOCK_BYTES, MAX_BLOCK_FAULTS};
pub use bundle::OutputBundle;
pub use codec::{CODEC_VERSION, Canonical};
pub use error::{Error, Result};
pub use hash::{
    BlockHash, ContentId, DealId, Hash32, JobId, LeaseId, StateRoot, TaskId, TxHash, hash_domain,
};
pub use job::{
    Constraints, InputRef, JobSpec, Limits, NETWORK_ATTRIBUTE, Resources, VerificationLevel, WorkloadKind,
    limits,
};
pub use keys::{Address, SecretKey, Signature, verify_batch};
pub use provider::{
    Capacity, Gpu, INFERENCE_CLASS_ATTRIBUTE, PriceSheet, ProviderInfo, Region, provider_limits,
};
pub use receipt::{
    AuditKind, AuditOutcome, ErrorCode, Event, LeaseEnd, Receipt, RefundReason, RoundVerdict, SlashReason,
    TxStatus,
};
pub use render::{
    BLENDER_ATTRIBUTE, Frames, RenderEngine, RenderSpec, Resolution, SCENE_FILE, render_limits,
};
pub use service::{ServiceRuntime, ServiceSpec, Sla, VolumeSpec, service_limits};
pub use storage::{
    ChunkProof, OPERATOR_ATTRIBUTE, PossessionProof, ProofError, StorageOffer, storage_limits,
};
pub use train::{Decimal, ModelArch, Optimizer, TrainRole, TrainSpec, train_limits};
pub use tx::{
    Bid, Bond, CancelJob, CloseLease, CommitResult, CreateStorageDeal, Heartbeat, MAX_CHAIN_ID, MAX_TX_BYTES,
    Metering, Offer, OpenDispute, OpenLease, ProveStorage, RegisterProvider, ReportProbe, ReportStream,
    SaveVolume, SubmitAudit, SubmitJob, Transfer, Tx, TxBody, Unbond, UpdateProvider,
};
