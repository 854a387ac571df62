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
