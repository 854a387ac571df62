//! State shared by the consensus application, the API and the node's own tasks.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use cairn_state::Genesis;
use cairn_types::{Event, Receipt, Tx, TxHash};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge, histogram::Histogram};
use serde::Serialize;
use tokio::sync::broadcast;
use tracing::warn;

use crate::app::tx_hashes;
use crate::block::{BlockCfg, CairnBlock, digest_bytes};
use crate::mempool::{AccountView, Mempool, MempoolError};
use crate::state::Mirror;

/// A proof of one key's current value (or absence) under a state root.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct StateProof {
    /// The key, hex in JSON.
    #[serde(with = "hex_bytes")]
    pub key: Vec<u8>,
    /// Its value, if any.
    #[serde(with = "hex_opt")]
    pub value: Option<Vec<u8>>,
    /// The canonical state root the proof verifies against.
    #[serde(with = "hex_arr")]
    pub root: [u8; 32],
    /// The encoded proof (inclusion or exclusion).
    #[serde(with = "hex_bytes")]
    pub proof: Vec<u8>,
}

mod hex_bytes {
    use serde::Deserialize as _;
    pub(super) fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        hex::decode(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}
mod hex_arr {
    use serde::Deserialize as _;
    pub(super) fn serialize<S: serde::Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(String::deserialize(d)?, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}
mod hex_opt {
    use serde::Deserialize as _;
    pub(super) fn serialize<S: serde::Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&hex::encode(v)),
            None => s.serialize_none(),
        }
    }
    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| hex::decode(s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Where proofs come from (the state database, once the node has opened it).
pub trait ProofSource: Send + Sync {
    /// Prove `key` against the current committed root.
    fn prove(&self, key: Vec<u8>) -> futures::future::BoxFuture<'_, Result<StateProof, String>>;
}

/// The finalized tip.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChainStatus {
    /// Height of the last finalized block.
    pub height: u64,
    /// Its digest, hex.
    pub block: String,
    /// Canonical state root after it, hex.
    pub state_root: String,
    /// Transactions finalized since this node started.
    pub txs_finalized: u64,
}

/// Something subscribers of the event stream hear about.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NodeEvent {
    /// A block was finalized.
    Block {
        /// Height.
        height: u64,
        /// Digest, hex.
        block: String,
        /// Transactions in it.
        txs: usize,
        /// State root after it, hex.
        state_root: String,
    },
    /// A chain event from a finalized block (jobs, tasks, transfers…).
    Chain {
        /// Height of the block.
        height: u64,
        /// The transaction that caused it, if any (end-of-block work has none).
        tx: Option<TxHash>,
        /// The event.
        event: Event,
    },
}

/// Consensus misbehaviour seen by this node, with the signed evidence.
#[derive(Clone, Debug, Serialize)]
pub struct Evidence {
    /// `conflicting_notarize`, `conflicting_finalize` or `nullify_finalize`.
    pub kind: &'static str,
    /// The offending validator's address.
    pub validator: String,
    /// The view.
    pub view: u64,
    /// The encoded evidence (two signed, conflicting messages), hex.
    pub evidence: String,
}

/// Node metrics (registered with the runtime, exported at `/metrics`).
#[derive(Clone)]
pub struct NodeMetrics {
    /// Finalized height.
    pub height: Gauge,
    /// Finalized transactions.
    pub txs: Counter,
    /// Transactions in the mempool.
    pub mempool: Gauge,
    /// Blocks this node proposed.
    pub proposed: Counter,
    /// Block execution time in milliseconds.
    pub exec_ms: Histogram,
    /// Consensus faults seen.
    pub faults: Counter,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeMetrics {
    /// Fresh metrics.
    pub fn new() -> Self {
        NodeMetrics {
            height: Gauge::default(),
            txs: Counter::default(),
            mempool: Gauge::default(),
            proposed: Counter::default(),
            exec_ms: Histogram::new([1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]),
            faults: Counter::default(),
        }
    }
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeMetrics")
    }
}

/// Receipts of recent blocks and where each transaction landed.
#[derive(Debug, Default)]
pub struct ReceiptIndex {
    by_height: BTreeMap<u64, Arc<Vec<Receipt>>>,
    by_tx: HashMap<TxHash, (u64, u32)>,
    order: VecDeque<(u64, Vec<TxHash>)>,
}

/// How many blocks of receipts are kept in memory.
const RECEIPT_BLOCKS: usize = 100_000;

impl ReceiptIndex {
    /// Index a block's receipts; false if that height was indexed already.
    fn insert(&mut self, height: u64, hashes: Vec<TxHash>, receipts: Arc<Vec<Receipt>>) -> bool {
        if self.by_height.contains_key(&height) {
            return false;
        }
        for (i, h) in hashes.iter().enumerate() {
            self.by_tx.insert(*h, (height, u32::try_from(i).unwrap_or(u32::MAX)));
        }
        self.by_height.insert(height, receipts);
        self.order.push_back((height, hashes));
        while self.order.len() > RECEIPT_BLOCKS {
            if let Some((h, hashes)) = self.order.pop_front() {
                self.by_height.remove(&h);
                for t in hashes {
                    self.by_tx.remove(&t);
                }
            }
        }
        true
    }

    /// Every indexed block's receipts, oldest first.
    fn newest(&self) -> Vec<crate::receipt_log::BlockReceipts> {
        self.order
            .iter()
            .filter_map(|(h, hashes)| {
                let receipts = self.by_height.get(h)?;
                Some(crate::receipt_log::BlockReceipts {
                    height: *h,
                    hashes: hashes.clone(),
                    receipts: receipts.as_ref().clone(),
                })
            })
            .collect()
    }

    /// Receipts of a block.
    pub fn block(&self, height: u64) -> Option<Arc<Vec<Receipt>>> {
        self.by_height.get(&height).cloned()
    }

    /// Where a transaction landed and its receipt.
    pub fn tx(&self, hash: &TxHash) -> Option<(u64, u32, Receipt)> {
        let (h, i) = *self.by_tx.get(hash)?;
        let r = self.by_height.get(&h)?.get(i as usize)?.clone();
        Some((h, i, r))
    }
}

/// Everything the application and the API share.
pub struct NodeShared {
    /// The chain id.
    pub chain_id: String,
    /// The genesis.
    pub genesis: Genesis,
    /// The genesis block.
    pub genesis_block: CairnBlock,
    /// Block limits.
    pub block_cfg: BlockCfg,
    /// Committed state in memory and unfinalized overlays.
    pub mirror: RwLock<Mirror>,
    /// Transactions waiting for a block.
    pub mempool: Mutex<Mempool>,
    /// The finalized tip.
    pub status: RwLock<ChainStatus>,
    /// Receipts.
    pub receipts: RwLock<ReceiptIndex>,
    /// Receipts on disk, once attached ([`NodeShared::attach_receipt_log`]).
    pub receipt_log: Mutex<Option<crate::receipt_log::ReceiptLog>>,
    /// Event stream.
    pub events: broadcast::Sender<NodeEvent>,
    /// Consensus misbehaviour seen.
    pub evidence: Mutex<Vec<Evidence>>,
    /// Fault proofs waiting to be carried in a block (removed once one is finalized).
    pub faults: Mutex<Vec<crate::block::FaultProof>>,
    /// Proofs, once the database is open.
    pub proofs: OnceLock<Arc<dyn ProofSource>>,
    /// Transactions accepted from clients, waiting to be relayed to peers.
    pub outbox: Mutex<Vec<Vec<u8>>>,
    /// Metrics.
    pub metrics: NodeMetrics,
}

impl std::fmt::Debug for NodeShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeShared({})", self.chain_id)
    }
}

impl NodeShared {
    /// Shared state for a chain.
    pub fn new(genesis: Genesis, genesis_block: CairnBlock, block_cfg: BlockCfg, mempool: Mempool) -> Self {
        let (events, _) = broadcast::channel(16_384);
        NodeShared {
            chain_id: genesis.chain_id.clone(),
            genesis,
            genesis_block,
            block_cfg,
            mirror: RwLock::new(Mirror::default()),
            mempool: Mutex::new(mempool),
            status: RwLock::new(ChainStatus::default()),
            receipts: RwLock::new(ReceiptIndex::default()),
            receipt_log: Mutex::new(None),
            events,
            evidence: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
            proofs: OnceLock::new(),
            outbox: Mutex::new(Vec::new()),
            metrics: NodeMetrics::new(),
        }
    }

    /// Keep receipts in the log at `path` from now on, first loading what it already holds, so
    /// transactions finalized before a restart can still be looked up.
    ///
    /// # Errors
    /// I/O errors opening or repairing the log.
    pub fn attach_receipt_log(&self, path: &std::path::Path) -> std::io::Result<()> {
        let (log, records) = crate::receipt_log::ReceiptLog::open(path, RECEIPT_BLOCKS)?;
        {
            let mut index = self.receipts.write().unwrap_or_else(|p| p.into_inner());
            for r in records {
                index.insert(r.height, r.hashes, Arc::new(r.receipts));
            }
        }
        *self.receipt_log.lock().unwrap_or_else(|p| p.into_inner()) = Some(log);
        Ok(())
    }

    /// Queue a verified fault proof for the next block this node proposes (once per validator
    /// and view).
    pub fn add_fault(&self, proof: crate::block::FaultProof) {
        let mut list = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        let dup = list.iter().any(|f| f.signer() == proof.signer() && f.view() == proof.view());
        if !dup && list.len() < 1_000 {
            list.push(proof);
        }
    }

    /// The fault proofs a proposal carries: the oldest waiting, at most one block's worth.
    pub fn pending_faults(&self) -> Vec<crate::block::FaultProof> {
        let list = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        list.iter().take(cairn_types::MAX_BLOCK_FAULTS).cloned().collect()
    }

    /// True once the committed state is loaded and can be read.
    pub fn ready(&self) -> bool {
        self.mirror.read().unwrap_or_else(|p| p.into_inner()).tip.is_some()
    }

    /// Read committed state.
    pub fn read<T>(&self, f: impl FnOnce(&cairn_state::State<ReadOnly<'_>>) -> T) -> T {
        let mirror = self.mirror.read().unwrap_or_else(|p| p.into_inner());
        let view = ReadOnly(&mirror);
        let state = cairn_state::State::from_view(view);
        f(&state)
    }

    /// Every committed task passing `keep`, in key order.
    pub fn tasks_where(
        &self,
        keep: impl Fn(&cairn_state::model::Task) -> bool,
        limit: usize,
    ) -> Vec<cairn_state::model::Task> {
        self.records_where(cairn_state::keys::TASK, keep, limit)
    }

    /// Every committed record under key prefix `prefix` passing `keep`, in key order.
    fn records_where<T: borsh::BorshDeserialize>(
        &self,
        prefix: u8,
        keep: impl Fn(&T) -> bool,
        limit: usize,
    ) -> Vec<T> {
        let mirror = self.mirror.read().unwrap_or_else(|p| p.into_inner());
        mirror
            .committed
            .range(vec![prefix]..)
            .take_while(|(k, _)| k.first() == Some(&prefix))
            .filter_map(|(_, v)| borsh::from_slice::<T>(v).ok())
            .filter(|r| keep(r))
            .take(limit)
            .collect()
    }

    /// Every committed storage deal passing `keep`, in key order.
    pub fn deals_where(
        &self,
        keep: impl Fn(&cairn_state::model::Deal) -> bool,
        limit: usize,
    ) -> Vec<cairn_state::model::Deal> {
        self.records_where(cairn_state::keys::DEAL, keep, limit)
    }

    /// Every committed lease passing `keep`, in key order.
    pub fn leases_where(
        &self,
        keep: impl Fn(&cairn_state::model::Lease) -> bool,
        limit: usize,
    ) -> Vec<cairn_state::model::Lease> {
        self.records_where(cairn_state::keys::LEASE, keep, limit)
    }

    /// Every committed audit, dispute and canary (in that order, each in key order) passing `keep`.
    pub fn audits_where(
        &self,
        keep: impl Fn(&cairn_state::model::Audit) -> bool,
        limit: usize,
    ) -> Vec<cairn_state::model::Audit> {
        let mirror = self.mirror.read().unwrap_or_else(|p| p.into_inner());
        [cairn_state::keys::AUDIT, cairn_state::keys::CANARY]
            .into_iter()
            .flat_map(|prefix| {
                mirror
                    .committed
                    .range(vec![prefix]..)
                    .take_while(move |(k, _)| k.first() == Some(&prefix))
                    .filter_map(|(_, v)| borsh::from_slice::<cairn_state::model::Audit>(v).ok())
            })
            .filter(|a| keep(a))
            .take(limit)
            .collect()
    }

    /// The committed account view the mempool checks against.
    pub fn account_view(&self, who: &cairn_types::Address) -> AccountView {
        self.read(|s| {
            s.account(who).map(|a| AccountView { nonce: a.nonce, balance: a.balance }).unwrap_or_default()
        })
    }

    /// Check and queue a transaction.
    ///
    /// # Errors
    /// Why the mempool refused it.
    pub fn submit(&self, tx: Tx) -> Result<TxHash, MempoolError> {
        let account = self.account_view(&tx.sender);
        let mut pool = self.mempool.lock().unwrap_or_else(|p| p.into_inner());
        let r = pool.insert(tx, account);
        self.metrics.mempool.set(i64::try_from(pool.len()).unwrap_or(i64::MAX));
        r
    }

    /// Accept a transaction from a client: queue it here and relay it to the other validators.
    ///
    /// # Errors
    /// Why the mempool refused it.
    pub fn submit_from_client(&self, tx: Tx) -> Result<TxHash, MempoolError> {
        let bytes = cairn_types::Canonical::encode(&tx);
        let hash = self.submit(tx)?;
        let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        if outbox.len() < 100_000 {
            outbox.push(bytes);
        }
        Ok(hash)
    }

    /// Publish a finalized block: status, receipts, mempool, events, metrics.
    pub fn on_finalized(&self, block: &CairnBlock, digest: [u8; 32], receipts: Vec<Receipt>) {
        let height = block.height.get();
        {
            // Already published in this process (consensus may deliver a block twice).
            let st = self.status.read().unwrap_or_else(|p| p.into_inner());
            if !st.block.is_empty() && st.height >= height {
                return;
            }
        }
        let hashes = tx_hashes(block);
        let state_root = hex::encode(digest_bytes(&block.state_root));
        if !block.faults.is_empty() {
            let carried: std::collections::BTreeSet<(u32, u64)> =
                block.faults.iter().map(|f| (f.signer(), f.view())).collect();
            self.faults
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|f| !carried.contains(&(f.signer(), f.view())));
        }
        let receipts = Arc::new(receipts);
        // A block delivered again after a restart comes without its receipts (they were not
        // recomputed): only complete receipts of a block not indexed yet are kept and logged.
        let complete = receipts.len() == hashes.len().saturating_add(1);
        let added = complete
            && self.receipts.write().unwrap_or_else(|p| p.into_inner()).insert(
                height,
                hashes.clone(),
                receipts.clone(),
            );
        if added && let Some(log) = self.receipt_log.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            let newest = || self.receipts.read().unwrap_or_else(|p| p.into_inner()).newest();
            if let Err(e) = log.append(height, &hashes, &receipts, newest) {
                warn!(height, error = %e, "cannot write the receipt log; receipts of this block are kept in memory only");
            }
        }
        {
            let mut st = self.status.write().unwrap_or_else(|p| p.into_inner());
            st.height = height;
            st.block = hex::encode(digest);
            st.state_root = state_root.clone();
            st.txs_finalized = st.txs_finalized.saturating_add(hashes.len() as u64);
        }
        {
            let mirror = self.mirror.read().unwrap_or_else(|p| p.into_inner());
            let view = ReadOnly(&mirror);
            let state = cairn_state::State::from_view(view);
            let mut pool = self.mempool.lock().unwrap_or_else(|p| p.into_inner());
            pool.on_finalized(height, &hashes, |a| state.account(a).map(|x| x.nonce).unwrap_or(0));
            self.metrics.mempool.set(i64::try_from(pool.len()).unwrap_or(i64::MAX));
        }
        self.metrics.height.set(i64::try_from(height).unwrap_or(i64::MAX));
        self.metrics.txs.inc_by(hashes.len() as u64);
        let _ = self.events.send(NodeEvent::Block {
            height,
            block: hex::encode(digest),
            txs: hashes.len(),
            state_root,
        });
        for r in receipts.iter() {
            let tx = match r {
                Receipt::Tx { hash, .. } => Some(*hash),
                Receipt::EndBlock { .. } => None,
            };
            for e in r.events() {
                let _ = self.events.send(NodeEvent::Chain { height, tx, event: e.clone() });
            }
        }
    }
}

/// A read-only view of the committed mirror.
#[derive(Debug)]
pub struct ReadOnly<'a>(&'a Mirror);

impl cairn_state::StateView for ReadOnly<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, cairn_state::StoreError> {
        cairn_state::StateView::get(self.0, key)
    }
}

/// Check a [`StateProof`]: that under `proof.root` the key holds `proof.value` (or nothing).
/// Clients that trust a state root (from a finalized block) can use this instead of trusting
/// the node that served the value.
pub fn verify_state_proof(p: &StateProof) -> bool {
    use commonware_codec::Decode as _;
    use commonware_cryptography::{Sha256, sha256};
    use commonware_storage::mmr;
    use commonware_storage::qmdb::any::value::VariableEncoding;
    use commonware_storage::qmdb::current::ordered::proof::{ExclusionProof, KeyValueProof};

    type Kvp = KeyValueProof<mmr::Family, Vec<u8>, sha256::Digest, [u8; 32]>;
    type Exp = ExclusionProof<mmr::Family, Vec<u8>, VariableEncoding<Vec<u8>>, sha256::Digest, [u8; 32]>;
    const MAX_DIGESTS: usize = 4_096;
    let key_cfg = (commonware_codec::RangeCfg::from(0..=256usize), ());
    let value_cfg = (commonware_codec::RangeCfg::from(0..=(1usize << 20)), ());
    let root = sha256::Digest::from(p.root);
    match &p.value {
        Some(v) => Kvp::decode_cfg(p.proof.clone(), &(MAX_DIGESTS, key_cfg))
            .is_ok_and(|k| k.verify::<Sha256, VariableEncoding<Vec<u8>>>(p.key.clone(), v.clone(), &root)),
        None => Exp::decode_cfg(p.proof.clone(), &(MAX_DIGESTS, (key_cfg, value_cfg), value_cfg))
            .is_ok_and(|e| e.verify::<Sha256>(&p.key, &root)),
    }
}
