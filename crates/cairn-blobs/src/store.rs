//! The on-disk store: `blobs/<id>` and its tree `blobs/<id>.tree` (see [`crate::tree`]),
//! written through temporary files and renamed, so a crash never leaves a half-written blob
//! under its id.

use std::fs::File;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};

use cairn_types::storage::CHUNK_LEN;
use cairn_types::{ChunkProof, ContentId, PossessionProof};

use crate::tree::{self, LEAF_LOG, TreeBuilder, TreeError};
use crate::{Error, Result};

/// A content-addressed blob store in a directory.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

/// A file's BLAKE3 hash and tree, read once.
fn tree_of_file(path: &Path) -> Result<(blake3::Hash, Vec<u8>)> {
    let mut b = TreeBuilder::default();
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        b.update(buf.get(..n).unwrap_or_default());
    }
    Ok(b.finish())
}

fn tmp_name(dir: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    dir.join(format!(".tmp-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
}

/// Bytes written between nudges to start their write-back (see [`BlobWriter::write`]).
const WRITEBACK_EVERY: u64 = 32 << 20;

/// A blob being written: its bytes go to a temporary file and through the tree builder; it
/// takes its id's name only once finished (and, given one, only if it is the expected blob).
pub(crate) struct BlobWriter {
    store: BlobStore,
    tmp: PathBuf,
    file: File,
    tree: TreeBuilder,
    written: u64,
    flushed: u64,
    kept: bool,
}

impl BlobWriter {
    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.file.write_all(bytes)?;
        self.tree.update(bytes);
        self.written = self.written.saturating_add(bytes.len() as u64);
        // Start writing back what has arrived so far (without waiting for it), so the disk
        // works while the rest streams in and the final sync has little left to do.
        if self.written - self.flushed >= WRITEBACK_EVERY {
            let len = self.written - self.flushed;
            let _ = rustix::fs::fadvise(
                &self.file,
                self.flushed,
                std::num::NonZeroU64::new(len),
                rustix::fs::Advice::DontNeed,
            );
            self.flushed = self.written;
        }
        Ok(())
    }

    /// Keep the blob under its id (forced to disk), unless it is not `expected`.
    pub(crate) fn finish(mut self, expected: Option<&ContentId>) -> Result<ContentId> {
        let (hash, tree) = std::mem::take(&mut self.tree).finish();
        let id = ContentId(*hash.as_bytes());
        if let Some(want) = expected.filter(|want| **want != id) {
            return Err(Error::Corrupt { id: *want, from: "upload".into() });
        }
        self.file.sync_all()?;
        self.store.write_tree(&id, &tree)?;
        std::fs::rename(&self.tmp, self.store.path(&id))?;
        self.kept = true;
        Ok(id)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl BlobStore {
    /// Open (creating) a store. Blobs kept by an earlier version beside a bao outboard
    /// (`<id>.obao`) get their tree built once and the old outboard removed.
    ///
    /// # Errors
    /// [`Error::Io`] if the directories cannot be created.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(root.join("blobs"))?;
        std::fs::create_dir_all(root.join("partial"))?;
        let store = BlobStore { root };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&self) -> Result<()> {
        for entry in std::fs::read_dir(self.root.join("blobs"))? {
            let path = entry?.path();
            let Some(hex) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".obao"))
            else {
                continue;
            };
            if let Ok(id) = hex.parse::<ContentId>()
                && self.path(&id).is_file()
                && !self.tree_path(&id).is_file()
            {
                tracing::info!(%id, "building the blob's tree (stored by an earlier version)");
                let (hash, tree) = tree_of_file(&self.path(&id))?;
                if hash.as_bytes() == &id.0 {
                    self.write_tree(&id, &tree)?;
                } else {
                    tracing::warn!(%id, "a stored blob does not match its id: dropped");
                    let _ = std::fs::remove_file(self.path(&id));
                }
            }
            std::fs::remove_file(&path)?;
        }
        Ok(())
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a blob's bytes live (whether or not it is present).
    pub fn path(&self, id: &ContentId) -> PathBuf {
        self.root.join("blobs").join(id.to_hex())
    }

    fn tree_path(&self, id: &ContentId) -> PathBuf {
        self.root.join("blobs").join(format!("{}.tree", id.to_hex()))
    }

    pub(crate) fn partial_path(&self, id: &ContentId) -> PathBuf {
        self.root.join("partial").join(id.to_hex())
    }

    /// Write a blob's tree (forced to disk) under its name.
    fn write_tree(&self, id: &ContentId, tree: &[u8]) -> Result<()> {
        let tmp = tmp_name(&self.root.join("blobs"));
        let mut f = File::create(&tmp)?;
        f.write_all(tree)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, self.tree_path(id))?;
        Ok(())
    }

    /// True if the blob and its tree are present.
    pub fn has(&self, id: &ContentId) -> bool {
        self.path(id).is_file() && self.tree_path(id).is_file()
    }

    /// A present blob's size.
    pub fn size(&self, id: &ContentId) -> Option<u64> {
        if !self.has(id) {
            return None;
        }
        std::fs::metadata(self.path(id)).ok().map(|m| m.len())
    }

    pub(crate) fn writer(&self) -> Result<BlobWriter> {
        let dir = self.root.join("blobs");
        let tmp = tmp_name(&dir);
        let file = File::create(&tmp)?;
        Ok(BlobWriter {
            store: self.clone(),
            tmp,
            file,
            tree: TreeBuilder::default(),
            written: 0,
            flushed: 0,
            kept: false,
        })
    }

    /// Store bytes; returns their id.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<ContentId> {
        let mut w = self.writer()?;
        w.write(bytes)?;
        w.finish(None)
    }

    /// Store a file's contents; returns their id.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn put_file(&self, path: &Path) -> Result<ContentId> {
        self.put_reader(File::open(path)?)
    }

    /// Store what a reader yields, hashing as it streams.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn put_reader(&self, mut reader: impl Read) -> Result<ContentId> {
        let mut w = self.writer()?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            w.write(buf.get(..n).unwrap_or_default())?;
        }
        w.finish(None)
    }

    /// Adopt a file that was verified against `id`: moved into place (not copied) once its
    /// tree is computed from it and its hash checked once more.
    pub(crate) fn adopt(&self, id: &ContentId, file: &Path) -> Result<()> {
        let (hash, tree) = tree_of_file(file)?;
        if hash.as_bytes() != &id.0 {
            let _ = std::fs::remove_file(file);
            return Err(Error::Corrupt { id: *id, from: "local verification".into() });
        }
        self.write_tree(id, &tree)?;
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

    /// The possession proof for chunks `challenged` of a stored blob: per chunk its bytes and
    /// the sibling chaining values on its path to the root, the levels above its 16 KiB leaf
    /// read from the tree and the four inside it hashed again from the leaf. Microseconds and
    /// a few small reads per chunk, whatever the blob's size.
    ///
    /// # Errors
    /// [`Error::Io`] (not found included); [`Error::Corrupt`] when a chunk is past the end or
    /// the tree does not have the blob's shape.
    pub fn possession_proof(&self, id: &ContentId, challenged: &[u64]) -> Result<PossessionProof> {
        let size = self.size(id).ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
        let blob = File::open(self.path(id))?;
        let tree = File::open(self.tree_path(id))?;
        let mut chunks = Vec::with_capacity(challenged.len());
        for &index in challenged {
            let (data, siblings) =
                tree::chunk_path(&blob, &tree, size, index).map_err(|e| self.tree_err(id, e))?;
            chunks.push(ChunkProof { index, data, siblings });
        }
        Ok(PossessionProof { chunks })
    }

    fn tree_err(&self, id: &ContentId, e: TreeError) -> Error {
        match e {
            TreeError::Io(e) => Error::Io(e),
            TreeError::Shape => Error::Corrupt { id: *id, from: "its tree".into() },
        }
    }

    /// The chaining values of the blob's groups of `2^log` chunks (`log` at least 4), in
    /// order, read from its tree (empty when the whole blob is one group: its id is then the
    /// check).
    ///
    /// # Errors
    /// [`Error::Io`] (`log` under 4 included); [`Error::Corrupt`] when the tree does not have
    /// the blob's shape.
    pub fn group_cvs(&self, id: &ContentId, log: u32) -> Result<Vec<[u8; 32]>> {
        let size = self.size(id).ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
        let level = log.checked_sub(LEAF_LOG).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "groups are at least 16 KiB")
        })?;
        if size <= CHUNK_LEN << log {
            return Ok(Vec::new());
        }
        let tree = File::open(self.tree_path(id))?;
        tree::level(&tree, size, level as usize).map_err(|e| self.tree_err(id, e))
    }

    /// Delete a blob and its tree (a no-op when absent).
    ///
    /// # Errors
    /// [`Error::Io`] when a present file cannot be removed.
    pub fn remove(&self, id: &ContentId) -> Result<()> {
        for p in [self.path(id), self.tree_path(id)] {
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
        let mut h = blake3::Hasher::new();
        std::io::copy(&mut f, &mut h)?;
        if *h.finalize().as_bytes() == id.0 {
            Ok(())
        } else {
            Err(Error::Corrupt { id: *id, from: "disk".into() })
        }
    }
}

#[cfg(test)]
mod tests {
    use cairn_types::storage::{chunk_count, verify_possession};

    use super::*;

    #[test]
    fn proofs_from_the_tree_verify_and_match_the_reference() {
        let dir = std::env::temp_dir().join(format!("cairn-blobs-proof-{}", std::process::id()));
        let store = BlobStore::open(&dir).unwrap();
        for size in [1usize, 1024, 1025, 5000, 16_384, 16_385, 5 * 16_384, 64 * 1024 + 3, 300_000, 1_100_000]
        {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 + i / 1024) as u8).collect();
            let id = store.put_bytes(&data).unwrap();
            let n = chunk_count(size as u64);
            let picks = vec![0, n / 3, n - 1];
            let proof = store.possession_proof(&id, &picks).unwrap();
            assert_eq!(proof, cairn_types::storage::prove_from_bytes(&data, &picks), "size {size}");
            assert_eq!(verify_possession(&id, size as u64, &picks, &proof), Ok(()));
            assert!(store.possession_proof(&id, &[n]).is_err(), "a chunk past the end");
        }
        // A tree cut short on disk: a typed error, not a wrong proof or a panic.
        let data = vec![9u8; 300_000];
        let id = store.put_bytes(&data).unwrap();
        let tree = store.tree_path(&id);
        let len = std::fs::metadata(&tree).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&tree).unwrap().set_len(len - 32).unwrap();
        assert!(matches!(store.possession_proof(&id, &[200]), Err(Error::Corrupt { .. })));
        assert!(matches!(store.group_cvs(&id, 5), Err(Error::Corrupt { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_store_from_an_earlier_version_gets_its_trees_built_on_open() {
        let dir = std::env::temp_dir().join(format!("cairn-blobs-migrate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = BlobStore::open(&dir).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let id = store.put_bytes(&data).unwrap();
        // As an earlier version left it: the blob and a bao outboard, no tree.
        std::fs::remove_file(store.tree_path(&id)).unwrap();
        std::fs::write(dir.join("blobs").join(format!("{}.obao", id.to_hex())), b"old").unwrap();
        // And one whose bytes went bad: dropped, not served.
        let bad = store.put_bytes(b"bad bytes").unwrap();
        std::fs::remove_file(store.tree_path(&bad)).unwrap();
        std::fs::write(store.path(&bad), b"bad bytez").unwrap();
        std::fs::write(dir.join("blobs").join(format!("{}.obao", bad.to_hex())), b"old").unwrap();
        assert!(!store.has(&id));
        let store = BlobStore::open(&dir).unwrap();
        assert!(store.has(&id) && !store.has(&bad));
        let proof = store.possession_proof(&id, &[3, 97]).unwrap();
        assert_eq!(verify_possession(&id, 100_000, &[3, 97], &proof), Ok(()));
        assert_eq!(std::fs::read_dir(dir.join("blobs")).unwrap().count(), 2, "old outboards are gone");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
