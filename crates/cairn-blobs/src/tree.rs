//! A blob's stored tree (its "outboard", `blobs/<id>.tree`): the chaining values of BLAKE3's
//! tree over the blob from 16 KiB leaves up, level by level, leaving out the root (the id).
//!
//! Why 16 KiB leaves and not BLAKE3's own 1 KiB chunks: a leaf of 16 chunks is hashed with all
//! of BLAKE3's SIMD lanes at once, so building the tree runs at the hash's full speed, and the
//! tree is 1/256 of the blob (4 MiB a GiB) instead of 1/16. A possession proof for one chunk
//! reads that chunk's leaf (16 KiB) and hashes it again for the four levels inside it; the
//! levels above are read from the tree.
//!
//! Every leaf (the last may be short) is a node of BLAKE3's tree, and so is every entry of
//! every level: level `k` holds, for each aligned run of `2^k` leaves, the chaining value of
//! the subtree over it (at the right edge, over what is there). The left child of any node is
//! the largest power of two of chunks short of its length, which is exactly the aligned half.

use std::fs::File;
use std::os::unix::fs::FileExt as _;

use blake3::hazmat::{
    ChainingValue, HasherExt as _, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};
use cairn_types::storage::CHUNK_LEN;

/// Chunks per leaf, as a power of two.
pub(crate) const LEAF_LOG: u32 = 4;
/// Bytes per leaf.
pub(crate) const LEAF: u64 = CHUNK_LEN << LEAF_LOG;

/// Entries per level of the tree of a `size`-byte blob (none when it is one leaf).
pub(crate) fn level_lens(size: u64) -> Vec<u64> {
    let mut n = size.div_ceil(LEAF).max(1);
    let mut out = Vec::new();
    while n > 1 {
        out.push(n);
        n = n.div_ceil(2);
    }
    out
}

/// The tree's length in bytes for a `size`-byte blob.
pub(crate) fn tree_len(size: u64) -> u64 {
    level_lens(size).iter().sum::<u64>().saturating_mul(32)
}

/// The chaining value of the (non-root) subtree over `data`, which starts at byte `start`.
pub(crate) fn subtree_cv(data: &[u8], start: u64) -> ChainingValue {
    let mut h = blake3::Hasher::new();
    if start > 0 {
        h.set_input_offset(start);
    }
    h.update(data);
    h.finalize_non_root()
}

/// Builds a blob's tree as its bytes stream by.
#[derive(Default)]
pub(crate) struct TreeBuilder {
    /// A leaf not yet hashed (it may turn out to be the whole blob, whose hash is the root).
    pending: Vec<u8>,
    leaves: Vec<ChainingValue>,
}

impl TreeBuilder {
    pub(crate) fn update(&mut self, mut data: &[u8]) {
        let leaf = LEAF as usize;
        while !data.is_empty() {
            if self.pending.len() == leaf {
                // More bytes follow: the held leaf is not the whole blob.
                let cv = subtree_cv(&self.pending, self.next_start());
                self.leaves.push(cv);
                self.pending.clear();
            }
            if self.pending.is_empty() && data.len() > leaf {
                let (whole, rest) = data.split_at(leaf);
                let cv = subtree_cv(whole, self.next_start());
                self.leaves.push(cv);
                data = rest;
                continue;
            }
            let take = (leaf - self.pending.len()).min(data.len());
            let (head, rest) = data.split_at(take);
            self.pending.extend_from_slice(head);
            data = rest;
        }
    }

    fn next_start(&self) -> u64 {
        (self.leaves.len() as u64).saturating_mul(LEAF)
    }

    /// The blob's hash and its tree's bytes (levels from the leaves up, root left out).
    pub(crate) fn finish(mut self) -> (blake3::Hash, Vec<u8>) {
        if self.leaves.is_empty() {
            return (blake3::hash(&self.pending), Vec::new());
        }
        let cv = subtree_cv(&self.pending, self.next_start());
        self.leaves.push(cv);
        levels(self.leaves)
    }
}

/// From two or more leaves' chaining values (each leaf a power of two of chunks, the last
/// maybe short): the root hash and every level from the leaves up, root left out.
pub(crate) fn levels(leaves: Vec<ChainingValue>) -> (blake3::Hash, Vec<u8>) {
    let mut out = Vec::with_capacity(leaves.len().saturating_mul(64));
    let mut level = leaves;
    loop {
        for cv in &level {
            out.extend_from_slice(cv);
        }
        match level.as_slice() {
            [left, right] => return (merge_subtrees_root(left, right, Mode::Hash), out),
            [] | [_] => return (blake3::Hash::from_bytes(level.first().copied().unwrap_or_default()), out),
            _ => {}
        }
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [l, r] => merge_subtrees_non_root(l, r, Mode::Hash),
                [only] => *only,
                _ => unreachable_pair(),
            })
            .collect();
    }
}

/// `chunks(2)` yields one or two items; this is never reached.
fn unreachable_pair() -> ChainingValue {
    [0; 32]
}

/// Why a stored tree could not answer.
#[derive(Debug)]
pub(crate) enum TreeError {
    Io(std::io::Error),
    /// The tree or blob does not have the shape its size gives.
    Shape,
}

impl From<std::io::Error> for TreeError {
    fn from(e: std::io::Error) -> Self {
        TreeError::Io(e)
    }
}

/// The entry `index` of level `level` of a `size`-byte blob's tree.
fn entry(tree: &File, lens: &[u64], level: usize, index: u64) -> Result<ChainingValue, TreeError> {
    let n = *lens.get(level).ok_or(TreeError::Shape)?;
    if index >= n {
        return Err(TreeError::Shape);
    }
    let before: u64 = lens.iter().take(level).sum();
    let mut cv = [0u8; 32];
    tree.read_exact_at(&mut cv, before.saturating_add(index).saturating_mul(32))?;
    Ok(cv)
}

/// The sibling chaining values (bottom-up) on the path from chunk `index` to the root of a
/// `size`-byte blob, and the chunk's bytes: levels above its leaf from `tree`, the leaf read
/// from `blob` and hashed again.
pub(crate) fn chunk_path(
    blob: &File,
    tree: &File,
    size: u64,
    index: u64,
) -> Result<(Vec<u8>, Vec<ChainingValue>), TreeError> {
    let target = index.checked_mul(CHUNK_LEN).filter(|t| *t < size).ok_or(TreeError::Shape)?;
    let lens = level_lens(size);
    if tree.metadata()?.len() != tree_len(size) {
        return Err(TreeError::Shape);
    }
    let mut top_down = Vec::new();
    // Above the leaf: from the root down to the leaf holding the chunk.
    let (mut start, mut len) = (0u64, size);
    while len > LEAF {
        let left = left_subtree_len(len);
        let (sib_start, sib_len) = if target < start + left {
            let s = (start + left, len - left);
            len = left;
            s
        } else {
            let s = (start, left);
            start += left;
            len -= left;
            s
        };
        let count = sib_len.div_ceil(LEAF);
        let level = 64 - count.saturating_sub(1).leading_zeros();
        top_down.push(entry(tree, &lens, level as usize, (sib_start / LEAF) >> level)?);
    }
    // Inside the leaf.
    let mut leaf = vec![0u8; usize::try_from(len).map_err(|_| TreeError::Shape)?];
    blob.read_exact_at(&mut leaf, start)?;
    let mut data = leaf.as_slice();
    while data.len() as u64 > CHUNK_LEN {
        let left = usize::try_from(left_subtree_len(data.len() as u64)).map_err(|_| TreeError::Shape)?;
        let (l, r) = data.split_at(left);
        if target < start + left as u64 {
            top_down.push(subtree_cv(r, start + left as u64));
            data = l;
        } else {
            top_down.push(subtree_cv(l, start));
            start += left as u64;
            data = r;
        }
    }
    top_down.reverse();
    Ok((data.to_vec(), top_down))
}

/// Level `level` of a `size`-byte blob's tree, whole.
pub(crate) fn level(tree: &File, size: u64, level: usize) -> Result<Vec<ChainingValue>, TreeError> {
    let lens = level_lens(size);
    if tree.metadata()?.len() != tree_len(size) {
        return Err(TreeError::Shape);
    }
    let n = *lens.get(level).ok_or(TreeError::Shape)?;
    let before: u64 = lens.iter().take(level).sum();
    let mut bytes = vec![0u8; usize::try_from(n.saturating_mul(32)).map_err(|_| TreeError::Shape)?];
    tree.read_exact_at(&mut bytes, before.saturating_mul(32))?;
    Ok(bytes
        .chunks_exact(32)
        .map(|c| {
            let mut cv = [0u8; 32];
            cv.copy_from_slice(c);
            cv
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect()
    }

    #[test]
    fn the_tree_root_is_the_blake3_hash_for_every_shape() {
        let leaf = LEAF as usize;
        for n in
            [0, 1, 1024, leaf - 1, leaf, leaf + 1, 2 * leaf, 3 * leaf + 5, 5 * leaf, 6 * leaf, 17 * leaf - 3]
        {
            let bytes = data(n);
            // Fed in awkward pieces and whole.
            for piece in [1000usize, leaf + 7, n.max(1)] {
                let mut b = TreeBuilder::default();
                for p in bytes.chunks(piece) {
                    b.update(p);
                }
                let (hash, tree) = b.finish();
                assert_eq!(hash, blake3::hash(&bytes), "{n} bytes in pieces of {piece}");
                assert_eq!(tree.len() as u64, tree_len(n as u64));
            }
        }
    }
}
