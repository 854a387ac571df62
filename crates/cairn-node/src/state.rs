//! The node's view of chain state.
//!
//! The authenticated state lives in a QMDB (`current`, ordered, variable-size values), which
//! proves any key's current value or its absence. The state machine reads synchronously, so the
//! node keeps an in-memory mirror of the committed state plus one overlay (write set and
//! receipts) per executed block that is not yet finalized. A block executes against its
//! parent's overlays stacked on the mirror. When the overlays do not reach the mirror (a
//! freshly started node before its first finalization), execution reads through the database
//! batch instead: it runs, collects the keys it missed, fetches them and runs again until
//! nothing is missing. Both paths read the same state, so they produce the same result.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use cairn_state::{Genesis, Layered, StateView, StoreError, WriteSet};
use cairn_types::Receipt;
use commonware_cryptography::{Sha256, ed25519, sha256};
use commonware_glue::stateful::db::{DatabaseSet, Shared};
use commonware_parallel::Sequential;
use commonware_storage::{mmr, qmdb::current::ordered::variable, translator::EightCap};
use commonware_utils::ordered::Set;

use crate::block::CairnBlock;

/// The state database: ordered keys (exclusion proofs, range scans), variable-size values.
pub type StateDb<E> = variable::Db<mmr::Family, E, Vec<u8>, Vec<u8>, Sha256, EightCap, 32, Sequential>;
/// The database set glue manages for the application.
pub type Dbs<E> = Shared<StateDb<E>>;
/// A speculative batch forked from a parent's state.
pub type Unmerk<E> = <Dbs<E> as DatabaseSet<E>>::Unmerkleized;
/// A batch with its roots computed.
pub type Merk<E> = <Dbs<E> as DatabaseSet<E>>::Merkleized;

/// What executing a block produced.
#[derive(Debug)]
pub struct Overlay {
    /// The parent block.
    pub parent: sha256::Digest,
    /// The block's height.
    pub height: u64,
    /// The state it wrote.
    pub writes: WriteSet,
    /// Its receipts.
    pub receipts: Vec<Receipt>,
}

/// Committed state in memory, and the overlays of executed blocks above it.
#[derive(Debug, Default)]
pub struct Mirror {
    /// The block whose state `committed` holds, once loaded.
    pub tip: Option<(sha256::Digest, u64)>,
    /// Every key and value of the committed state.
    pub committed: BTreeMap<Vec<u8>, Vec<u8>>,
    overlays: HashMap<sha256::Digest, Arc<Overlay>>,
}

/// Reads through a stack of overlays (nearest first) onto the committed map.
struct Stacked<'a> {
    layers: Vec<&'a WriteSet>,
    base: &'a BTreeMap<Vec<u8>, Vec<u8>>,
}

impl StateView for Stacked<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        for l in &self.layers {
            if let Some(v) = l.get(key) {
                return Ok(v.clone());
            }
        }
        Ok(self.base.get(key).cloned())
    }
}

impl StateView for Mirror {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.committed.get(key).cloned())
    }
}

impl Mirror {
    /// The overlays from `parent` down to the committed tip, nearest first, or `None` if the
    /// chain of overlays does not reach it.
    fn layers(&self, parent: &sha256::Digest) -> Option<Vec<&WriteSet>> {
        let (tip, _) = self.tip?;
        let mut layers = Vec::new();
        let mut at = *parent;
        while at != tip {
            let o = self.overlays.get(&at)?;
            layers.push(&o.writes);
            at = o.parent;
        }
        Some(layers)
    }

    /// Run `f` on the state after `parent`, if the mirror can show it.
    pub fn with_view<T>(&self, parent: &sha256::Digest, f: impl FnOnce(&dyn StateView) -> T) -> Option<T> {
        let layers = self.layers(parent)?;
        Some(f(&Stacked { layers, base: &self.committed }))
    }

    /// Remember what a block wrote.
    pub fn insert(&mut self, digest: sha256::Digest, overlay: Arc<Overlay>) {
        self.overlays.insert(digest, overlay);
    }

    /// The overlay of a block, if it was executed here.
    pub fn overlay(&self, digest: &sha256::Digest) -> Option<Arc<Overlay>> {
        self.overlays.get(digest).cloned()
    }

    /// Fold a finalized block into the committed state. Returns false if the mirror could not
    /// (not loaded, or the block does not sit on its tip); the caller then reloads it.
    pub fn finalize(&mut self, digest: &sha256::Digest, parent: &sha256::Digest, height: u64) -> bool {
        let ok = match (self.tip, self.overlays.get(digest)) {
            (Some((tip, _)), Some(o)) if tip == *parent => {
                for (k, v) in &o.writes {
                    match v {
                        Some(v) => self.committed.insert(k.clone(), v.clone()),
                        None => self.committed.remove(k),
                    };
                }
                true
            }
            _ => false,
        };
        if ok {
            self.tip = Some((*digest, height));
        }
        self.prune(height);
        ok
    }

    /// Replace the committed state with a fresh read of the database at `tip`.
    pub fn reload(&mut self, tip: (sha256::Digest, u64), committed: BTreeMap<Vec<u8>, Vec<u8>>) {
        self.tip = Some(tip);
        self.committed = committed;
        self.prune(tip.1);
    }

    /// Drop overlays at or below a finalized height: they are finalized or on dead branches.
    fn prune(&mut self, height: u64) {
        self.overlays.retain(|_, o| o.height > height);
    }

    /// Number of overlays held.
    pub fn overlays(&self) -> usize {
        self.overlays.len()
    }
}

/// Why a block cannot be executed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The state machine refused the block (wrong height, broken invariant).
    #[error(transparent)]
    State(#[from] cairn_state::Error),
    /// The database failed.
    #[error("state database: {0}")]
    Db(String),
}

/// Execute a block on a view of its parent's state. Height 1 first writes the genesis state
/// (the database starts empty).
pub fn execute_on(
    view: &dyn StateView,
    block: &CairnBlock,
    genesis: &Genesis,
    participants: &Set<ed25519::PublicKey>,
) -> Result<(WriteSet, Vec<Receipt>), ExecError> {
    let sb = block.to_state_block(participants);
    if sb.height == 1 {
        let mut all = genesis.writes()?;
        let exec = cairn_state::execute(&Layered { top: &all, base: view }, &sb)?;
        all.extend(exec.writes);
        Ok((all, exec.receipts))
    } else {
        let exec = cairn_state::execute(view, &sb)?;
        Ok((exec.writes, exec.receipts))
    }
}

/// A view over prefetched values that records the keys it lacks, reading them as absent so
/// one pass finds as many missing keys as it can.
struct Prefetched<'a> {
    cache: &'a BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    misses: RefCell<BTreeSet<Vec<u8>>>,
}

impl StateView for Prefetched<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.cache.get(key) {
            Some(v) => Ok(v.clone()),
            None => {
                self.misses.borrow_mut().insert(key.to_vec());
                Ok(None)
            }
        }
    }
}

/// Execute through the database batch: run, fetch what was missed, run again, until a run
/// misses nothing.
pub async fn execute_via_batch<E>(
    batch: &Unmerk<E>,
    block: &CairnBlock,
    genesis: &Genesis,
    participants: &Set<ed25519::PublicKey>,
) -> Result<(WriteSet, Vec<Receipt>), ExecError>
where
    E: commonware_runtime::Spawner + commonware_storage::Context,
{
    let mut cache: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    loop {
        let view = Prefetched { cache: &cache, misses: RefCell::new(BTreeSet::new()) };
        let result = execute_on(&view, block, genesis, participants);
        let misses = view.misses.into_inner();
        if misses.is_empty() {
            return result;
        }
        let keys: Vec<Vec<u8>> = misses.into_iter().collect();
        let refs: Vec<&Vec<u8>> = keys.iter().collect();
        let values = batch.get_many(&refs).await.map_err(|e| ExecError::Db(e.to_string()))?;
        cache.extend(keys.into_iter().zip(values));
    }
}

/// Write a block's writes into its batch, in key order.
pub fn write_batch<E>(mut batch: Unmerk<E>, writes: &WriteSet) -> Unmerk<E>
where
    E: commonware_runtime::Spawner + commonware_storage::Context,
{
    for (k, v) in writes {
        batch = batch.write(k.clone(), v.clone());
    }
    batch
}
