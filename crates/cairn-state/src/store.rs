//! The authenticated key-value store the state machine runs over.
//!
//! Execution reads through a synchronous [`StateView`] and produces an ordered [`WriteSet`];
//! the backend turns a block's write set into a new root in one batch. The node backs this
//! with an on-disk authenticated database; tests and simulations use [`MemStore`].

use std::collections::{BTreeMap, BTreeSet};

use borsh::{BorshDeserialize, BorshSerialize};
use cairn_types::StateRoot;
use serde::{Deserialize, Serialize};

/// A failure of the storage backend. Never caused by transaction content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The backend could not read or write.
    #[error("store backend: {0}")]
    Backend(String),
    /// A stored value does not decode: the store is corrupt.
    #[error("store corrupt at key {key}: {reason}")]
    Corrupt {
        /// The key, hex-encoded.
        key: String,
        /// What was wrong.
        reason: String,
    },
}

/// Read access to state.
pub trait StateView {
    /// The value at `key`, if any.
    ///
    /// # Errors
    /// [`StoreError`] if the backend fails.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
}

/// An authenticated key-value store: reads, buffered writes, a Merkle root over the whole
/// state, and proofs of any key's value (or absence) against that root.
pub trait AuthenticatedKv: StateView {
    /// A proof that a key holds a value, or nothing, under a root.
    type Proof;

    /// Stage `value` at `key`; visible to [`StateView::get`] at once, in the root after
    /// [`AuthenticatedKv::commit`].
    ///
    /// # Errors
    /// [`StoreError`] if the backend fails.
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), StoreError>;

    /// Stage the removal of `key`.
    ///
    /// # Errors
    /// [`StoreError`] if the backend fails.
    fn delete(&mut self, key: &[u8]) -> Result<(), StoreError>;

    /// Fold the staged writes into the authenticated structure and return the new root.
    ///
    /// # Errors
    /// [`StoreError`] if the backend fails.
    fn commit(&mut self) -> Result<StateRoot, StoreError>;

    /// The root as of the last commit.
    fn root(&self) -> StateRoot;

    /// A proof of the committed value at `key` (or of its absence).
    ///
    /// # Errors
    /// [`StoreError`] if the backend fails.
    fn proof(&self, key: &[u8]) -> Result<Self::Proof, StoreError>;
}

/// Ordered writes: `Some(value)` to set, `None` to delete. Iteration order is key order, so
/// applying a write set is deterministic.
pub type WriteSet = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// A write set layered over another view: reads see `top` first.
#[derive(Clone, Copy)]
pub struct Layered<'a> {
    /// Writes on top.
    pub top: &'a WriteSet,
    /// What they sit on.
    pub base: &'a dyn StateView,
}

impl std::fmt::Debug for Layered<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Layered({} writes)", self.top.len())
    }
}

impl StateView for Layered<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.top.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(key),
        }
    }
}

/// Write a block's write set into a store and commit it.
///
/// # Errors
/// [`StoreError`] if the backend fails.
pub fn commit_writes<S: AuthenticatedKv>(store: &mut S, writes: WriteSet) -> Result<StateRoot, StoreError> {
    for (k, v) in writes {
        match v {
            Some(v) => store.put(k, v)?,
            None => store.delete(&k)?,
        }
    }
    store.commit()
}

const BUCKET_BITS: u32 = 12;
const BUCKETS: usize = 1 << BUCKET_BITS;

fn key_hash(key: &[u8]) -> [u8; 32] {
    *blake3::hash(key).as_bytes()
}

fn value_hash(value: &[u8]) -> [u8; 32] {
    *blake3::hash(value).as_bytes()
}

fn bucket_of(kh: &[u8; 32]) -> usize {
    (usize::from(kh[0]) << 4) | usize::from(kh[1] >> 4)
}

fn hash_bucket(leaves: &BTreeMap<[u8; 32], [u8; 32]>) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("cairn memstore bucket v1");
    for (k, v) in leaves {
        h.update(k);
        h.update(v);
    }
    *h.finalize().as_bytes()
}

fn hash_node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("cairn memstore node v1");
    h.update(left);
    h.update(right);
    *h.finalize().as_bytes()
}

/// A proof from [`MemStore`]: every leaf of the key's bucket (so presence and absence are
/// both provable) and the sibling path from the bucket to the root.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct MemProof {
    /// The bucket index.
    pub bucket: u16,
    /// `(key hash, value hash)` of every entry in the bucket, sorted.
    pub leaves: Vec<([u8; 32], [u8; 32])>,
    /// Sibling hashes from the bucket level up.
    pub siblings: Vec<[u8; 32]>,
}

impl MemProof {
    /// Check that under `root`, `key` holds `value` (`None`: holds nothing).
    pub fn verify(&self, root: &StateRoot, key: &[u8], value: Option<&[u8]>) -> bool {
        let kh = key_hash(key);
        if bucket_of(&kh) != usize::from(self.bucket) || self.siblings.len() != BUCKET_BITS as usize {
            return false;
        }
        let leaves: BTreeMap<[u8; 32], [u8; 32]> = self.leaves.iter().copied().collect();
        if leaves.len() != self.leaves.len() {
            return false;
        }
        match (leaves.get(&kh), value) {
            (Some(vh), Some(v)) if *vh == value_hash(v) => {}
            (None, None) => {}
            _ => return false,
        }
        let mut acc = hash_bucket(&leaves);
        let mut idx = usize::from(self.bucket);
        for sib in &self.siblings {
            acc = if idx & 1 == 0 { hash_node(&acc, sib) } else { hash_node(sib, &acc) };
            idx >>= 1;
        }
        acc == root.0
    }
}

/// An in-memory authenticated store for tests, benchmarks and simulations.
///
/// Keys are spread over 4,096 buckets by their BLAKE3 hash; each bucket hashes its sorted
/// `(key hash, value hash)` leaves and a binary Merkle tree over the buckets gives the root.
/// A commit rehashes only the buckets written since the last one.
#[derive(Clone, Debug)]
pub struct MemStore {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    buckets: Vec<BTreeMap<[u8; 32], [u8; 32]>>,
    bucket_hashes: Vec<[u8; 32]>,
    levels: Vec<Vec<[u8; 32]>>,
    dirty: BTreeSet<usize>,
    root: StateRoot,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        let empty = hash_bucket(&BTreeMap::new());
        let mut s = MemStore {
            map: BTreeMap::new(),
            buckets: vec![BTreeMap::new(); BUCKETS],
            bucket_hashes: vec![empty; BUCKETS],
            levels: Vec::new(),
            dirty: BTreeSet::new(),
            root: StateRoot::ZERO,
        };
        s.rebuild_tree();
        s
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every `(key, value)` whose key starts with `prefix`, in key order.
    pub fn scan_prefix<'a>(&'a self, prefix: &'a [u8]) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        self.map
            .range(prefix.to_vec()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    fn rebuild_tree(&mut self) {
        let mut levels = Vec::with_capacity(BUCKET_BITS as usize);
        let mut cur = self.bucket_hashes.clone();
        while cur.len() > 1 {
            let next: Vec<[u8; 32]> = cur.chunks_exact(2).map(|p| hash_node(&p[0], &p[1])).collect();
            levels.push(cur);
            cur = next;
        }
        self.root = StateRoot(cur.first().copied().unwrap_or_default());
        self.levels = levels;
    }
}

impl MemStore {
    /// Recompute the hashes from bucket `b` up to the root.
    fn update_path(&mut self, b: usize) {
        let Some(mut acc) = self.bucket_hashes.get(b).copied() else { return };
        let mut idx = b;
        for level in &mut self.levels {
            if let Some(slot) = level.get_mut(idx) {
                *slot = acc;
            }
            let sib = level.get(idx ^ 1).copied().unwrap_or_default();
            acc = if idx & 1 == 0 { hash_node(&acc, &sib) } else { hash_node(&sib, &acc) };
            idx >>= 1;
        }
        self.root = StateRoot(acc);
    }
}

impl StateView for MemStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.map.get(key).cloned())
    }
}

impl AuthenticatedKv for MemStore {
    type Proof = MemProof;

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), StoreError> {
        let kh = key_hash(&key);
        let b = bucket_of(&kh);
        if let Some(bucket) = self.buckets.get_mut(b) {
            bucket.insert(kh, value_hash(&value));
        }
        self.dirty.insert(b);
        self.map.insert(key, value);
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), StoreError> {
        if self.map.remove(key).is_some() {
            let kh = key_hash(key);
            let b = bucket_of(&kh);
            if let Some(bucket) = self.buckets.get_mut(b) {
                bucket.remove(&kh);
            }
            self.dirty.insert(b);
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<StateRoot, StoreError> {
        let dirty = std::mem::take(&mut self.dirty);
        for &b in &dirty {
            if let (Some(h), Some(leaves)) = (self.bucket_hashes.get_mut(b), self.buckets.get(b)) {
                *h = hash_bucket(leaves);
            }
        }
        if dirty.len() > BUCKETS / 16 {
            self.rebuild_tree();
        } else {
            for b in dirty {
                self.update_path(b);
            }
        }
        Ok(self.root)
    }

    fn root(&self) -> StateRoot {
        self.root
    }

    fn proof(&self, key: &[u8]) -> Result<MemProof, StoreError> {
        let kh = key_hash(key);
        let b = bucket_of(&kh);
        let corrupt = || StoreError::Backend("bucket index out of range".into());
        let leaves = self.buckets.get(b).ok_or_else(corrupt)?.iter().map(|(k, v)| (*k, *v)).collect();
        let mut siblings = Vec::with_capacity(self.levels.len());
        let mut idx = b;
        for level in &self.levels {
            siblings.push(*level.get(idx ^ 1).ok_or_else(corrupt)?);
            idx >>= 1;
        }
        Ok(MemProof { bucket: u16::try_from(b).map_err(|_| corrupt())?, leaves, siblings })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_show_presence_and_absence_against_the_root() {
        let mut s = MemStore::new();
        for i in 0u32..500 {
            s.put(i.to_le_bytes().to_vec(), vec![i as u8; 3]).unwrap();
        }
        let root = s.commit().unwrap();
        let p = s.proof(&7u32.to_le_bytes()).unwrap();
        assert!(p.verify(&root, &7u32.to_le_bytes(), Some(&[7, 7, 7])));
        assert!(!p.verify(&root, &7u32.to_le_bytes(), Some(&[7, 7, 8])));
        assert!(!p.verify(&root, &7u32.to_le_bytes(), None));
        let absent = s.proof(b"nope").unwrap();
        assert!(absent.verify(&root, b"nope", None));
        assert!(!absent.verify(&root, b"nope", Some(b"x")));
        let mut other = s.clone();
        other.put(b"nope".to_vec(), b"x".to_vec()).unwrap();
        let new_root = other.commit().unwrap();
        assert!(!absent.verify(&new_root, b"nope", None));
    }

    #[test]
    fn the_root_depends_on_content_not_on_write_order() {
        let mut a = MemStore::new();
        let mut b = MemStore::new();
        for i in 0u8..50 {
            a.put(vec![i], vec![i]).unwrap();
            b.put(vec![49 - i], vec![49 - i]).unwrap();
        }
        a.put(vec![200], vec![1]).unwrap();
        a.delete(&[200]).unwrap();
        assert_eq!(a.commit().unwrap(), b.commit().unwrap());
        b.put(vec![3], vec![4]).unwrap();
        assert_ne!(a.root(), b.commit().unwrap());
    }
}

#[cfg(test)]
mod incremental {
    use super::*;

    #[test]
    fn incremental_commits_give_the_same_root_as_one_full_rebuild() {
        let mut inc = MemStore::new();
        for round in 0u32..40 {
            for i in 0u32..50 {
                let k = (round * 131 + i * 17) % 3000;
                if (round + i) % 5 == 0 {
                    inc.delete(&k.to_le_bytes()).unwrap();
                } else {
                    inc.put(k.to_le_bytes().to_vec(), (round ^ i).to_le_bytes().to_vec()).unwrap();
                }
            }
            inc.commit().unwrap();
        }
        let mut full = MemStore::new();
        for (k, v) in inc.scan_prefix(&[]) {
            full.put(k.to_vec(), v.to_vec()).unwrap();
        }
        assert!(full.dirty.len() > BUCKETS / 16, "the fresh store takes the full-rebuild path");
        assert_eq!(full.commit().unwrap(), inc.root());
    }
}
