//! The on-disk store: `blobs/<id>` and its bao outboard `blobs/<id>.obao`, written through a
//! temporary file and renamed, so a crash never leaves a half-written blob under its id.

use std::fs::File;
use std::io::{BufReader, Read, Seek as _, Write as _};
use std::path::{Path, PathBuf};

use cairn_types::ContentId;

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
        self.put_reader(bytes)
    }

    /// Store a file's contents; returns their id.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn put_file(&self, path: &Path) -> Result<ContentId> {
        self.put_reader(BufReader::new(File::open(path)?))
    }

    /// Store what a reader yields, hashing as it streams.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn put_reader(&self, mut reader: impl Read) -> Result<ContentId> {
        let dir = self.root.join("blobs");
        let data_tmp = tmp_name(&dir);
        let mut data = File::create(&data_tmp)?;
        let obao_tmp = tmp_name(&dir);
        let mut encoder = bao::encode::Encoder::new_outboard(
            File::options().read(true).write(true).create(true).truncate(true).open(&obao_tmp)?,
        );
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            let chunk = buf.get(..n).unwrap_or_default();
            data.write_all(chunk)?;
            encoder.write_all(chunk)?;
        }
        let hash = encoder.finalize()?;
        data.sync_all()?;
        let id = ContentId(*hash.as_bytes());
        std::fs::rename(&obao_tmp, self.outboard_path(&id))?;
        std::fs::rename(&data_tmp, self.path(&id))?;
        Ok(id)
    }

    /// Adopt a file that was verified against `id` (moved, not copied).
    pub(crate) fn adopt(&self, id: &ContentId, file: &Path) -> Result<()> {
        let got = self.put_file(file)?;
        let _ = std::fs::remove_file(file);
        if got == *id {
            Ok(())
        } else {
            let _ = std::fs::remove_file(self.path(&got));
            let _ = std::fs::remove_file(self.outboard_path(&got));
            Err(Error::Corrupt { id: *id, from: "local verification".into() })
        }
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
