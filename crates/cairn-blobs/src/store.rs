//! The on-disk store: `blobs/<id>` and its bao outboard `blobs/<id>.obao`, written through a
//! temporary file and renamed, so a crash never leaves a half-written blob under its id.

use std::fs::File;
use std::io::{BufReader, Read, Seek as _, Write as _};
use std::path::{Path, PathBuf};

use cairn_types::storage::CHUNK_LEN;
use cairn_types::{ChunkProof, ContentId, PossessionProof};

use crate::{Error, Result};

/// A content-addressed blob store in a directory.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

fn tmp_name(dir: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    dir.join(format!(".tmp-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
}

impl BlobStore {
    /// Open (creating) a store.
    ///
    /// # Errors
    /// [`Error::Io`] if the directories cannot be created.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(root.join("blobs"))?;
        std::fs::create_dir_all(root.join("partial"))?;
        Ok(BlobStore { root })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a blob's bytes live (whether or not it is present).
    pub fn path(&self, id: &ContentId) -> PathBuf {
        self.root.join("blobs").join(id.to_hex())
    }

    fn outboard_path(&self, id: &ContentId) -> PathBuf {
        self.root.join("blobs").join(format!("{}.obao", id.to_hex()))
    }

    pub(crate) fn partial_path(&self, id: &ContentId) -> PathBuf {
        self.root.join("partial").join(id.to_hex())
    }

    /// True if the blob and its outboard are present.
    pub fn has(&self, id: &ContentId) -> bool {
        self.path(id).is_file() && self.outboard_path(id).is_file()
    }

    /// A present blob's size.
    pub fn size(&self, id: &ContentId) -> Option<u64> {
        if !self.has(id) {
            return None;
        }
        std::fs::metadata(self.path(id)).ok().map(|m| m.len())
    }

    /// Store bytes; returns their id.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<ContentId> {
        self.put_reader_checked(bytes, None, Some(bytes.len() as u64))
    }

    /// Store a file's contents; returns their id.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn put_file(&self, path: &Path) -> Result<ContentId> {
        let size = std::fs::metadata(path)?.len();
        self.put_reader_checked(BufReader::with_capacity(1 << 20, File::open(path)?), None, Some(size))
    }

    /// Store what a reader yields, hashing as it streams.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn put_reader(&self, reader: impl Read) -> Result<ContentId> {
        self.put_reader_checked(reader, None, None)
    }

    /// Store what a reader yields (about `size` bytes) only if it hashes to `expected`
    /// (nothing is kept otherwise).
    ///
    /// # Errors
    /// [`Error::Corrupt`] when the bytes are another blob; [`Error::Io`].
    pub fn put_reader_as(&self, reader: impl Read, expected: &ContentId, size: u64) -> Result<()> {
        self.put_reader_checked(reader, Some(expected), Some(size)).map(|_| ())
    }

    fn put_reader_checked(
        &self,
        reader: impl Read,
        expected: Option<&ContentId>,
        size_hint: Option<u64>,
    ) -> Result<ContentId> {
        let dir = self.root.join("blobs");
        let data_tmp = tmp_name(&dir);
        let mut data = File::create(&data_tmp)?;
        let obao_tmp = tmp_name(&dir);
        let hash = if size_hint.is_some_and(|s| s <= MEMORY_OUTBOARD_MAX) {
            // The outboard is built in memory (1/16 of the blob) and written once: the encoder's
            // many 64-byte writes would otherwise each be a system call.
            let (hash, out) = encode(reader, Some(&mut data), std::io::Cursor::new(Vec::new()))?;
            std::fs::write(&obao_tmp, out.into_inner())?;
            hash
        } else {
            let out = File::options().read(true).write(true).create(true).truncate(true).open(&obao_tmp)?;
            encode(reader, Some(&mut data), out)?.0
        };
        let id = ContentId(*hash.as_bytes());
        if let Some(want) = expected.filter(|want| **want != id) {
            let _ = std::fs::remove_file(&data_tmp);
            let _ = std::fs::remove_file(&obao_tmp);
            return Err(Error::Corrupt { id: *want, from: "upload".into() });
        }
        data.sync_all()?;
        std::fs::rename(&obao_tmp, self.outboard_path(&id))?;
        std::fs::rename(&data_tmp, self.path(&id))?;
        Ok(id)
    }

    /// Adopt a file that was verified against `id`: moved into place (not copied) once its
    /// outboard is computed from it and its hash checked once more.
    pub(crate) fn adopt(&self, id: &ContentId, file: &Path) -> Result<()> {
        let dir = self.root.join("blobs");
        let obao_tmp = tmp_name(&dir);
        let reader = BufReader::with_capacity(1 << 20, File::open(file)?);
        let size = std::fs::metadata(file)?.len();
        let hash = if size <= MEMORY_OUTBOARD_MAX {
            let (hash, out) = encode(reader, None, std::io::Cursor::new(Vec::new()))?;
            std::fs::write(&obao_tmp, out.into_inner())?;
            hash
        } else {
            let out = File::options().read(true).write(true).create(true).truncate(true).open(&obao_tmp)?;
            encode(reader, None, out)?.0
        };
        if hash.as_bytes() != &id.0 {
            let _ = std::fs::remove_file(&obao_tmp);
            let _ = std::fs::remove_file(file);
            return Err(Error::Corrupt { id: *id, from: "local verification".into() });
        }
        std::fs::rename(&obao_tmp, self.outboard_path(id))?;
        std::fs::rename(file, self.path(id))?;
        Ok(())
    }

    /// A blob's bytes.
    ///
    /// # Errors
    /// [`Error::Io`] (not found included).
    pub fn read(&self, id: &ContentId) -> Result<Vec<u8>> {
        Ok(std::fs::read(self.path(id))?)
    }

    /// A bao slice proving `[start, start + len)` of a blob.
    ///
    /// # Errors
    /// [`Error::Io`] (not found included).
    pub fn slice(&self, id: &ContentId, start: u64, len: u64) -> Result<Vec<u8>> {
        let data = File::open(self.path(id))?;
        let outboard = File::open(self.outboard_path(id))?;
        let mut ex = bao::encode::SliceExtractor::new_outboard(data, outboard, start, len);
        let mut out = Vec::new();
        ex.read_to_end(&mut out)?;
        Ok(out)
    }

    /// The possession proof for chunks `challenged` of a stored blob, read from its outboard:
    /// per chunk one bao slice (the parents on its path and its bytes), reduced to the sibling
    /// chaining values the chain checks. Microseconds and two small reads per chunk, whatever
    /// the blob's size.
    ///
    /// # Errors
    /// [`Error::Io`] (not found included); [`Error::Corrupt`] when the outboard's slice does not
    /// have the shape of the blob's tree.
    pub fn possession_proof(&self, id: &ContentId, challenged: &[u64]) -> Result<PossessionProof> {
        let size = self.size(id).ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
        let corrupt = || Error::Corrupt { id: *id, from: "outboard".into() };
        let mut chunks = Vec::with_capacity(challenged.len());
        for &index in challenged {
            let start = index.checked_mul(CHUNK_LEN).filter(|s| *s < size).ok_or_else(corrupt)?;
            let len = CHUNK_LEN.min(size - start);
            let slice = self.slice(id, start, len)?;
            // The slice: the length header, the parents from the root down (64 bytes: left and
            // right chaining values), then the chunk.
            let dirs = tree_path(size, index);
            let parents = dirs.len().checked_mul(64).ok_or_else(corrupt)?;
            let expected = 8usize.checked_add(parents).and_then(|n| n.checked_add(len as usize));
            if Some(slice.len()) != expected {
                return Err(corrupt());
            }
            let mut siblings = Vec::with_capacity(dirs.len());
            for (level, left) in dirs.iter().enumerate() {
                let at = 8 + level * 64 + if *left { 32 } else { 0 };
                let mut cv = [0u8; 32];
                cv.copy_from_slice(slice.get(at..at + 32).ok_or_else(corrupt)?);
                siblings.push(cv);
            }
            siblings.reverse();
            chunks.push(ChunkProof {
                index,
                data: slice.get(8 + parents..).ok_or_else(corrupt)?.to_vec(),
                siblings,
            });
        }
        Ok(PossessionProof { chunks })
    }

    /// The chaining values of the blob's groups of `2^log` chunks, in order, read from its
    /// outboard (empty when the whole blob is one group: its id is then the check).
    ///
    /// # Errors
    /// [`Error::Io`]; [`Error::Corrupt`] when the outboard does not have the blob's shape.
    pub fn group_cvs(&self, id: &ContentId, log: u32) -> Result<Vec<[u8; 32]>> {
        let size = self.size(id).ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
        let group = CHUNK_LEN << log;
        if size <= group {
            return Ok(Vec::new());
        }
        let corrupt = || Error::Corrupt { id: *id, from: "outboard".into() };
        let mut out = Vec::new();
        let mut g = 0u64;
        while g < size {
            // The path to the group's first chunk passes through the parent whose child is the
            // group: that child's chaining value is the group's.
            let slice = self.slice(id, g, 1)?;
            let (mut start, mut len, mut level) = (0u64, size, 0usize);
            let cv = loop {
                if len <= CHUNK_LEN {
                    return Err(corrupt());
                }
                let left = blake3::hazmat::left_subtree_len(len);
                let go_left = g < start + left;
                let (child_start, child_len) =
                    if go_left { (start, left) } else { (start + left, len - left) };
                let at = 8 + level * 64 + if go_left { 0 } else { 32 };
                if child_start == g && child_len <= group {
                    let mut cv = [0u8; 32];
                    cv.copy_from_slice(slice.get(at..at + 32).ok_or_else(corrupt)?);
                    break cv;
                }
                start = child_start;
                len = child_len;
                level += 1;
            };
            out.push(cv);
            g += group;
        }
        Ok(out)
    }

    /// Delete a blob and its outboard (a no-op when absent).
    ///
    /// # Errors
    /// [`Error::Io`] when a present file cannot be removed.
    pub fn remove(&self, id: &ContentId) -> Result<()> {
        for p in [self.path(id), self.outboard_path(id)] {
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }

    /// Re-hash a stored blob and compare with its id.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if the bytes changed on disk.
    pub fn verify(&self, id: &ContentId) -> Result<()> {
        let mut f = File::open(self.path(id))?;
        f.rewind()?;
        let mut h = blake3::Hasher::new();
        std::io::copy(&mut f, &mut h)?;
        if *h.finalize().as_bytes() == id.0 {
            Ok(())
        } else {
            Err(Error::Corrupt { id: *id, from: "disk".into() })
        }
    }
}

/// Blobs up to this size get their outboard built in memory (at most 1 GiB of it).
const MEMORY_OUTBOARD_MAX: u64 = 16 << 30;

/// Hash what `reader` yields into the bao outboard `out`, copying it to `data` when given.
fn encode<O: Read + std::io::Write + std::io::Seek>(
    mut reader: impl Read,
    mut data: Option<&mut File>,
    out: O,
) -> Result<(bao::Hash, O)> {
    let mut encoder = bao::encode::Encoder::new_outboard(out);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = buf.get(..n).unwrap_or_default();
        if let Some(d) = data.as_mut() {
            d.write_all(chunk)?;
        }
        encoder.write_all(chunk)?;
    }
    let hash = encoder.finalize()?;
    Ok((hash, encoder.into_inner()))
}

/// For each level from the root down, whether chunk `index` of a `size`-byte blob lies in the
/// left subtree (BLAKE3's tree: the left side holds the largest power of two of chunks that
/// leaves at least one byte on the right).
fn tree_path(size: u64, index: u64) -> Vec<bool> {
    let target = index.saturating_mul(CHUNK_LEN);
    let (mut start, mut len) = (0u64, size);
    let mut out = Vec::new();
    while len > CHUNK_LEN {
        let left = blake3::hazmat::left_subtree_len(len);
        let go_left = target < start + left;
        out.push(go_left);
        if go_left {
            len = left;
        } else {
            start += left;
            len -= left;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use cairn_types::storage::{chunk_count, verify_possession};

    use super::*;

    #[test]
    fn proofs_from_the_outboard_verify_and_match_the_reference() {
        let dir = std::env::temp_dir().join(format!("cairn-blobs-proof-{}", std::process::id()));
        let store = BlobStore::open(&dir).unwrap();
        for size in [1usize, 1024, 1025, 5000, 64 * 1024 + 3, 300_000] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 + i / 1024) as u8).collect();
            let id = store.put_bytes(&data).unwrap();
            let n = chunk_count(size as u64);
            let picks = vec![0, n / 3, n - 1];
            let proof = store.possession_proof(&id, &picks).unwrap();
            assert_eq!(proof, cairn_types::storage::prove_from_bytes(&data, &picks), "size {size}");
            assert_eq!(verify_possession(&id, size as u64, &picks, &proof), Ok(()));
            assert!(store.possession_proof(&id, &[n]).is_err(), "a chunk past the end");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
