//! Storage deals: what a storage provider offers, and the possession proof the chain checks.
//!
//! A stored blob's id is its BLAKE3 hash, and BLAKE3 is a Merkle tree over 1 KiB chunks, so the
//! deal's root needs no separate commitment: a chunk is proven by its bytes and the chaining
//! values of its siblings on the way up (32 bytes a level, 20 levels for 1 GiB). Each epoch the
//! beacon picks [`challenged_chunks`] per replica; the provider answers with a
//! [`PossessionProof`], and [`verify_possession`] checks it against the blob id in a few
//! microseconds.

use std::fmt;

use blake3::hazmat::{
    ChainingValue, HasherExt as _, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};
use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

use crate::{Address, Amount, ContentId, DealId, Hash32, hash_domain};

/// Bytes in a chunk: BLAKE3's leaf.
pub const CHUNK_LEN: u64 = 1024;
/// Bytes in a GiB, the unit storage is priced in.
pub const GIB: u64 = 1 << 30;
/// The provider attribute naming who runs it (`operator=<name>`); a provider without one is its
/// own operator. Deals that ask for distinct operators place no two replicas on one.
pub const OPERATOR_ATTRIBUTE: &str = "operator";

/// Limits on deals.
pub mod storage_limits {
    /// Largest blob a deal stores (64 GiB: proofs stay under 4 KiB with two challenges).
    pub const MAX_DEAL_BYTES: u64 = 64 << 30;
    /// Replicas a deal asks for.
    pub const MAX_REPLICAS: u32 = 16;
    /// Epochs a deal lasts.
    pub const MAX_EPOCHS: u32 = 100_000;
    /// Regions a deal may name.
    pub const MAX_REGIONS: usize = 16;
    /// Chunks challenged per replica and epoch.
    pub const MAX_CHALLENGES: u32 = 16;
}

/// What a storage provider offers: room and its price.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageOffer {
    /// Room for replicas, in GiB.
    pub capacity_gib: u64,
    /// Price per GiB stored for one epoch (charged pro rata by the byte).
    pub price_per_gib_epoch: Amount,
}

/// The price of keeping `size` bytes for one epoch at `per_gib`: pro rata, rounded up, at
/// least one base unit. `None` on overflow.
pub fn replica_epoch_price(per_gib: Amount, size: u64) -> Option<Amount> {
    let units = per_gib.base_units().checked_mul(u128::from(size))?;
    let gib = u128::from(GIB);
    let price = units.checked_add(gib.checked_sub(1)?)?.checked_div(gib)?;
    Some(Amount::from_base_units(price.max(1)))
}

/// Chunks in a blob of `size` bytes (an empty blob has none).
pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK_LEN)
}

/// The chunks of a `size`-byte blob that `provider` must prove for `deal` in `epoch`, drawn from
/// the epoch's `seed` (with replacement, so a repeat is possible).
pub fn challenged_chunks(
    seed: &Hash32,
    deal: &DealId,
    provider: &Address,
    epoch: u32,
    size: u64,
    count: u32,
) -> Vec<u64> {
    let chunks = u128::from(chunk_count(size).max(1));
    (0..count)
        .map(|j| {
            let h = hash_domain(
                "cairn storage challenge v1",
                &[&seed.0, &deal.0, &provider.0, &epoch.to_le_bytes(), &j.to_le_bytes()],
            );
            let mut wide = [0u8; 16];
            wide.copy_from_slice(h.get(..16).unwrap_or(&[0; 16]));
            u64::try_from(u128::from_le_bytes(wide).checked_rem(chunks).unwrap_or(0)).unwrap_or(0)
        })
        .collect()
}

/// One challenged chunk: its bytes and its siblings' chaining values, lowest level first.
#[derive(Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct ChunkProof {
    /// The chunk's index in the blob.
    pub index: u64,
    /// Its bytes (1 KiB, or the tail of the blob).
    pub data: Vec<u8>,
    /// Chaining values of the sibling subtrees from the chunk up to the root.
    pub siblings: Vec<[u8; 32]>,
}

impl fmt::Debug for ChunkProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkProof(#{}, {} bytes, {} siblings)", self.index, self.data.len(), self.siblings.len())
    }
}

/// A replica's answer to one epoch's challenge: one [`ChunkProof`] per challenged chunk, in
/// the order [`challenged_chunks`] gives them.
#[derive(Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct PossessionProof {
    /// The chunks.
    pub chunks: Vec<ChunkProof>,
}

/// Why a possession proof does not verify.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The proof answers other chunks than the ones challenged (or another number of them).
    #[error("the proof answers chunks that were not challenged (expected {expected:?})")]
    NotChallenged {
        /// The challenged chunk indices.
        expected: Vec<u64>,
    },
    /// A chunk's bytes or path do not hash up to the blob's id.
    #[error("chunk {index} does not hash up to the blob's id")]
    Mismatch {
        /// The chunk.
        index: u64,
    },
}

/// The path from the root to chunk `index` of a `size`-byte blob: for each level from the top,
/// whether the chunk is in the left subtree. Empty for a one-chunk blob.
fn path(size: u64, index: u64) -> Vec<bool> {
    let target = index.saturating_mul(CHUNK_LEN);
    let (mut start, mut len) = (0u64, size);
    let mut out = Vec::new();
    while len > CHUNK_LEN {
        let left = left_subtree_len(len);
        let go_left = target < start.saturating_add(left);
        out.push(go_left);
        if go_left {
            len = left;
        } else {
            start = start.saturating_add(left);
            len = len.saturating_sub(left);
        }
    }
    out
}

/// The bytes chunk `index` of a `size`-byte blob holds.
fn chunk_len(size: u64, index: u64) -> u64 {
    size.saturating_sub(index.saturating_mul(CHUNK_LEN)).min(CHUNK_LEN)
}

/// Check `proof` answers exactly the `challenged` chunks of blob `root` (`size` bytes).
///
/// # Errors
/// [`ProofError`] naming what is wrong.
pub fn verify_possession(
    root: &ContentId,
    size: u64,
    challenged: &[u64],
    proof: &PossessionProof,
) -> Result<(), ProofError> {
    let chunks = chunk_count(size);
    let answered: Vec<u64> = proof.chunks.iter().map(|c| c.index).collect();
    if answered != challenged || challenged.iter().any(|i| *i >= chunks) {
        return Err(ProofError::NotChallenged { expected: challenged.to_vec() });
    }
    for c in &proof.chunks {
        let mismatch = || ProofError::Mismatch { index: c.index };
        if c.data.len() as u64 != chunk_len(size, c.index) {
            return Err(mismatch());
        }
        let dirs = path(size, c.index);
        if dirs.len() != c.siblings.len() {
            return Err(mismatch());
        }
        if dirs.is_empty() {
            // A one-chunk blob: the chunk is the root.
            if *blake3::hash(&c.data).as_bytes() != root.0 {
                return Err(mismatch());
            }
            continue;
        }
        let mut h = blake3::Hasher::new();
        h.set_input_offset(c.index.saturating_mul(CHUNK_LEN));
        h.update(&c.data);
        let mut cv: ChainingValue = h.finalize_non_root();
        let levels = dirs.len();
        for (depth_from_bottom, (left, sib)) in dirs.iter().rev().zip(&c.siblings).enumerate() {
            let (l, r) = if *left { (&cv, sib) } else { (sib, &cv) };
            if depth_from_bottom.saturating_add(1) == levels {
                if *merge_subtrees_root(l, r, Mode::Hash).as_bytes() != root.0 {
                    return Err(mismatch());
                }
            } else {
                cv = merge_subtrees_non_root(l, r, Mode::Hash);
            }
        }
    }
    Ok(())
}

/// The chaining value of the subtree of `data` starting at byte `start` (`data` is that
/// subtree's bytes).
fn subtree_cv(data: &[u8], start: u64) -> ChainingValue {
    let mut h = blake3::Hasher::new();
    h.set_input_offset(start);
    h.update(data);
    h.finalize_non_root()
}

/// Build the proof for `challenged` chunks from the whole blob in memory, hashing every sibling
/// subtree: a reference for tests and small blobs (providers answer from the stored tree).
/// Indices past the end are skipped.
pub fn prove_from_bytes(data: &[u8], challenged: &[u64]) -> PossessionProof {
    let size = data.len() as u64;
    let mut chunks = Vec::new();
    for &index in challenged.iter().filter(|i| **i < chunk_count(size)) {
        let target = index.saturating_mul(CHUNK_LEN);
        let (mut start, mut len) = (0u64, size);
        let mut top_down = Vec::new();
        while len > CHUNK_LEN {
            let left = left_subtree_len(len);
            let split = start.saturating_add(left);
            let bytes = |from: u64, to: u64| {
                data.get(
                    usize::try_from(from).unwrap_or(usize::MAX)..usize::try_from(to).unwrap_or(usize::MAX),
                )
                .unwrap_or_default()
            };
            if target < split {
                top_down.push(subtree_cv(bytes(split, start.saturating_add(len)), split));
                len = left;
            } else {
                top_down.push(subtree_cv(bytes(start, split), start));
                start = split;
                len = len.saturating_sub(left);
            }
        }
        top_down.reverse();
        let from = usize::try_from(target).unwrap_or(usize::MAX);
        let to = usize::try_from(target.saturating_add(chunk_len(size, index))).unwrap_or(usize::MAX);
        chunks.push(ChunkProof {
            index,
            data: data.get(from..to).unwrap_or_default().to_vec(),
            siblings: top_down,
        });
    }
    PossessionProof { chunks }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8).collect()
    }

    #[test]
    fn proofs_verify_for_every_shape_and_tampering_fails() {
        for size in [1usize, 1023, 1024, 1025, 2048, 3 * 1024 + 7, 8 * 1024, 13 * 1024 + 1, 100_000] {
            let data = blob(size);
            let root = ContentId(*blake3::hash(&data).as_bytes());
            let chunks = chunk_count(size as u64);
            let picks: Vec<u64> = vec![0, chunks - 1, chunks / 2];
            let proof = prove_from_bytes(&data, &picks);
            assert_eq!(verify_possession(&root, size as u64, &picks, &proof), Ok(()), "size {size}");
            // A flipped byte in a chunk.
            let mut bad = proof.clone();
            bad.chunks[2].data[0] ^= 1;
            assert!(matches!(
                verify_possession(&root, size as u64, &picks, &bad),
                Err(ProofError::Mismatch { .. })
            ));
            // A forged path.
            if chunks > 1 {
                let mut bad = proof.clone();
                bad.chunks[0].siblings[0][0] ^= 1;
                assert!(verify_possession(&root, size as u64, &picks, &bad).is_err());
                let mut bad = proof.clone();
                bad.chunks[0].siblings.pop();
                assert!(verify_possession(&root, size as u64, &picks, &bad).is_err());
            }
            // Other chunks than challenged.
            let other: Vec<u64> = picks.iter().map(|i| (i + 1) % chunks).collect();
            if other != picks {
                assert!(matches!(
                    verify_possession(&root, size as u64, &other, &proof),
                    Err(ProofError::NotChallenged { .. })
                ));
            }
            // Another blob's root.
            let other_root = ContentId(*blake3::hash(b"another blob").as_bytes());
            assert!(verify_possession(&other_root, size as u64, &picks, &proof).is_err());
        }
    }

    #[test]
    fn challenges_depend_on_seed_deal_provider_and_epoch_and_stay_in_range() {
        let (seed, deal, p) = (Hash32([1; 32]), DealId([2; 32]), Address([3; 32]));
        let a = challenged_chunks(&seed, &deal, &p, 4, 10_000, 8);
        assert_eq!(a, challenged_chunks(&seed, &deal, &p, 4, 10_000, 8));
        assert!(a.iter().all(|i| *i < 10));
        assert_ne!(a, challenged_chunks(&seed, &deal, &p, 5, 10_000, 8));
        assert_ne!(a, challenged_chunks(&seed, &DealId([9; 32]), &p, 4, 10_000, 8));
        assert_ne!(a, challenged_chunks(&seed, &deal, &Address([9; 32]), 4, 10_000, 8));
    }

    #[test]
    fn prices_are_pro_rata_rounded_up_and_never_zero() {
        let per_gib = Amount::from_base_units(1_000);
        assert_eq!(replica_epoch_price(per_gib, GIB), Some(Amount::from_base_units(1_000)));
        assert_eq!(replica_epoch_price(per_gib, GIB / 2), Some(Amount::from_base_units(500)));
        assert_eq!(replica_epoch_price(per_gib, 1), Some(Amount::from_base_units(1)));
        assert_eq!(replica_epoch_price(Amount::MAX, GIB), None);
    }
}
