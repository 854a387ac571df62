//! The input to the state machine: an ordered batch of transactions at a height.

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

use crate::{Address, BlockHash, Canonical, Hash32, Tx};

/// Largest encoded block.
pub const MAX_BLOCK_BYTES: usize = 32 * 1024 * 1024;

/// A block as the state machine sees it. The consensus layer wraps it with what it needs
/// (the resulting state root, certificates).
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Block {
    /// Height, one above the parent's; genesis state is height 0.
    pub height: u64,
    /// The parent block's hash.
    pub parent: BlockHash,
    /// Who proposed it.
    pub proposer: Address,
    /// Randomness the proposer cannot choose (from consensus); breaks auction ties and, later,
    /// picks audits.
    pub beacon: Hash32,
    /// Transactions in order.
    pub txs: Vec<Tx>,
    /// Consensus misbehaviour proven in this block (the node checks the signed evidence before
    /// it accepts the block; the state machine slashes).
    pub faults: Vec<Fault>,
}

/// Most faults one block carries.
pub const MAX_BLOCK_FAULTS: usize = 16;

/// What a validator did wrong, proven by two messages it signed.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    BorshSerialize,
    BorshDeserialize,
    Serialize,
    Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[borsh(use_discriminant = true)]
#[repr(u8)]
pub enum FaultKind {
    /// Two notarize votes for different blocks in one view.
    ConflictingNotarize = 0,
    /// Two finalize votes for different blocks in one view.
    ConflictingFinalize = 1,
    /// A nullify and a finalize vote in one view.
    NullifyFinalize = 2,
}

/// A proven consensus fault of one validator in one view.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    BorshSerialize,
    BorshDeserialize,
    Serialize,
    Deserialize,
)]
pub struct Fault {
    /// The validator that signed both messages.
    pub validator: Address,
    /// The consensus view.
    pub view: u64,
    /// What it signed.
    pub kind: FaultKind,
}

impl Canonical for Block {
    const WHAT: &'static str = "block";
    const MAX_BYTES: usize = MAX_BLOCK_BYTES;
}

impl Block {
    /// The hash of the canonical encoding.
    pub fn hash(&self) -> BlockHash {
        BlockHash(*blake3::hash(&self.encode()).as_bytes())
    }
}
