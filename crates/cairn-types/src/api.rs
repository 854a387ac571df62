//! Shapes of the node API's JSON, shared by the node and its clients.

use serde::{Deserialize, Serialize};

use crate::{Address, Amount, Receipt, TxHash};

/// `GET /api/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    /// The chain id.
    pub chain_id: String,
    /// Finalized height.
    pub height: u64,
    /// Canonical state root after that block, hex.
    pub state_root: String,
    /// The block's digest, hex.
    pub block: String,
    /// Whether the node has loaded its state and serves reads.
    pub ready: bool,
    /// Transactions in the mempool.
    pub mempool: usize,
    /// Transactions finalized since the node started.
    pub txs_finalized: u64,
}

/// `GET /api/accounts/{address}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    /// The address.
    pub address: Address,
    /// Spendable balance.
    pub balance: Amount,
    /// Next nonce of committed state.
    pub nonce: u64,
    /// Next nonce counting the sender's queued transactions.
    pub next_nonce: u64,
    /// Stake (bonded and unbonding), as the state records it.
    pub stake: serde_json::Value,
}

/// `GET /api/txs/{hash}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TxLookup {
    /// Waiting in the mempool.
    Pending {
        /// The hash.
        hash: TxHash,
    },
    /// In a finalized block.
    Committed {
        /// The hash.
        hash: TxHash,
        /// Block height.
        height: u64,
        /// Position in the block.
        index: u32,
        /// Its receipt.
        receipt: Receipt,
    },
}

/// An API error body: `{"error": {"code", "message"}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The error inside an [`ErrorBody`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable snake_case code.
    pub code: String,
    /// For people.
    pub message: String,
}
