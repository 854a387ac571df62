//! Model packages: a model's files in one content-addressed blob.
//!
//! ```text
//! "CAIRNMP1"  u32 LE header length  header (JSON: family, name, files with sizes)  file bytes…
//! ```
//!
//! The package's content id (BLAKE3 of the whole blob) names the model on chain; providers fetch
//! it like any blob, verify it, and read the weights in place (no copies).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use cairn_types::ContentId;
use serde::{Deserialize, Serialize};

use crate::{Result, RunError};

const MAGIC: &[u8; 8] = b"CAIRNMP1";
const MAX_HEADER: u32 = 64 * 1024;
const MAX_FILES: usize = 16;

/// The architectures the inference executor runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// BERT-family sentence embeddings (`config.json`, `model.safetensors`, `tokenizer.json`).
    Bert,
    /// Gemma 3 text generation from a GGUF file (`model.gguf`, tokenizer inside).
    Gemma3,
    /// Qwen 2 / 2.5 chat from a GGUF file (`model.gguf`, tokenizer and template inside).
    Qwen2,
    /// A character-level language model trained on Cairn (`model.json`, `checkpoint.safetensors`:
    /// the final round's output of a `train` job).
    #[serde(rename = "cairn-gpt")]
    CairnGpt,
}

impl Family {
    /// What the family serves: `embeddings` or `chat`.
    pub fn task(self) -> &'static str {
        match self {
            Family::Bert => "embeddings",
            Family::Gemma3 | Family::Qwen2 | Family::CairnGpt => "chat",
        }
    }

    /// The GGUF architecture of a GGUF family.
    pub fn gguf_arch(self) -> Option<&'static str> {
        match self {
            Family::Gemma3 => Some("gemma3"),
            Family::Qwen2 => Some("qwen2"),
            Family::Bert | Family::CairnGpt => None,
        }
    }

    fn required(self) -> &'static [&'static str] {
        match self {
            Family::Bert => &["config.json", "model.safetensors", "tokenizer.json"],
            Family::Gemma3 | Family::Qwen2 => &["model.gguf"],
            Family::CairnGpt => &["model.json", "checkpoint.safetensors"],
        }
    }
}

/// One file in a package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageFile {
    /// Its name (no directories).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A package's header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageHeader {
    /// The architecture.
    pub family: Family,
    /// A human name (`all-MiniLM-L6-v2`), shown in model lists.
    pub name: String,
    /// The files, in the order their bytes follow the header.
    pub files: Vec<PackageFile>,
}

/// A parsed package on disk: where each file's bytes sit inside the blob.
#[derive(Clone, Debug)]
pub struct ModelPackage {
    /// The header.
    pub header: PackageHeader,
    /// The blob's path.
    pub path: PathBuf,
    offsets: Vec<u64>,
}

fn bad(msg: impl Into<String>) -> RunError {
    RunError::InvalidWorkload(format!("model package: {}", msg.into()))
}

fn check_header(h: &PackageHeader) -> Result<()> {
    if h.name.is_empty() || h.name.len() > 128 || h.name.chars().any(|c| c.is_control()) {
        return Err(bad("the name must be 1..=128 printable characters"));
    }
    if h.files.is_empty() || h.files.len() > MAX_FILES {
        return Err(bad(format!("must hold 1..={MAX_FILES} files")));
    }
    for (i, f) in h.files.iter().enumerate() {
        if f.name.is_empty() || f.name.contains(['/', '\\']) || f.name == "." || f.name == ".." {
            return Err(bad(format!("file name {:?} must be a plain name", f.name)));
        }
        if h.files[..i].iter().any(|g| g.name == f.name) {
            return Err(bad(format!("file {:?} appears twice", f.name)));
        }
    }
    for need in h.family.required() {
        if !h.files.iter().any(|f| f.name == *need) {
            return Err(bad(format!("a {:?} model needs {need}", h.family)));
        }
    }
    Ok(())
}

/// Write a package made of `files` (name, host path) to `out`; returns its content id.
///
/// # Errors
/// [`RunError::InvalidWorkload`] for a header that breaks the rules, [`RunError::Io`] when a
/// file cannot be read or the package cannot be written.
pub fn write_package(
    family: Family,
    name: &str,
    files: &[(String, PathBuf)],
    out: &Path,
) -> Result<ContentId> {
    let mut list = Vec::new();
    for (n, p) in files {
        let size = std::fs::metadata(p).map_err(|e| RunError::Io(format!("{}: {e}", p.display())))?.len();
        list.push(PackageFile { name: n.clone(), size });
    }
    let header = PackageHeader { family, name: name.to_string(), files: list };
    check_header(&header)?;
    let json = serde_json::to_vec(&header).map_err(|e| bad(e.to_string()))?;
    let len = u32::try_from(json.len()).map_err(|_| bad("header too large"))?;
    if len > MAX_HEADER {
        return Err(bad("header too large"));
    }
    let io = |e: std::io::Error| RunError::Io(format!("{}: {e}", out.display()));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = out.with_extension("partial");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
    let mut hasher = blake3::Hasher::new();
    let mut put = |w: &mut std::io::BufWriter<std::fs::File>, b: &[u8]| -> Result<()> {
        hasher.update(b);
        std::io::Write::write_all(w, b).map_err(io)
    };
    put(&mut w, MAGIC)?;
    put(&mut w, &len.to_le_bytes())?;
    put(&mut w, &json)?;
    let mut buf = vec![0u8; 1 << 20];
    for (_, p) in files {
        let mut f = std::fs::File::open(p).map_err(|e| RunError::Io(format!("{}: {e}", p.display())))?;
        loop {
            let n = f.read(&mut buf).map_err(|e| RunError::Io(format!("{}: {e}", p.display())))?;
            if n == 0 {
                break;
            }
            put(&mut w, &buf[..n])?;
        }
    }
    let f = w.into_inner().map_err(|e| RunError::Io(e.to_string()))?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, out).map_err(io)?;
    Ok(ContentId(*hasher.finalize().as_bytes()))
}

/// BLAKE3 of a file, streamed.
///
/// # Errors
/// [`RunError::Io`] when it cannot be read.
pub fn hash_file(path: &Path) -> Result<ContentId> {
    // Memory-mapped and hashed on every core.
    let mut h = blake3::Hasher::new();
    h.update_mmap_rayon(path).map_err(|e| RunError::Io(format!("{}: {e}", path.display())))?;
    Ok(ContentId(*h.finalize().as_bytes()))
}

impl ModelPackage {
    /// Parse a package's header and check that its files fill the blob exactly. Does not hash
    /// the blob: see [`ModelPackage::open_verified`].
    ///
    /// # Errors
    /// [`RunError::InvalidWorkload`] for anything that is not a well-formed package.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |e: std::io::Error| RunError::Io(format!("{}: {e}", path.display()));
        let mut f = std::fs::File::open(path).map_err(io)?;
        let total = f.metadata().map_err(io)?.len();
        let mut head = [0u8; 12];
        f.read_exact(&mut head).map_err(|_| bad("too short"))?;
        if &head[..8] != MAGIC {
            return Err(bad("not a Cairn model package (bad magic)"));
        }
        let len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        if len > MAX_HEADER {
            return Err(bad("header too large"));
        }
        let mut json = vec![0u8; len as usize];
        f.read_exact(&mut json).map_err(|_| bad("truncated header"))?;
        let header: PackageHeader = serde_json::from_slice(&json).map_err(|e| bad(format!("header: {e}")))?;
        check_header(&header)?;
        let mut offsets = Vec::with_capacity(header.files.len());
        let mut at = 12u64.checked_add(u64::from(len)).ok_or_else(|| bad("size overflow"))?;
        for file in &header.files {
            offsets.push(at);
            at = at.checked_add(file.size).ok_or_else(|| bad("size overflow"))?;
        }
        if at != total {
            return Err(bad(format!("files add up to {at} bytes but the blob has {total}")));
        }
        Ok(ModelPackage { header, path: path.to_path_buf(), offsets })
    }

    /// [`open`](Self::open), after checking that the blob hashes to `id`.
    ///
    /// # Errors
    /// [`RunError::WorkloadMismatch`] when the bytes are not the ones named.
    pub fn open_verified(path: &Path, id: &ContentId) -> Result<Self> {
        let actual = hash_file(path)?;
        if actual != *id {
            return Err(RunError::WorkloadMismatch { expected: *id, actual });
        }
        Self::open(path)
    }

    fn index(&self, name: &str) -> Result<usize> {
        self.header.files.iter().position(|f| f.name == name).ok_or_else(|| bad(format!("no file {name}")))
    }

    /// A file's bytes.
    ///
    /// # Errors
    /// [`RunError::InvalidWorkload`] if absent, [`RunError::Io`] on read failure.
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        let mut r = self.reader(name)?;
        let mut out = Vec::with_capacity(usize::try_from(r.len).unwrap_or(0));
        r.read_to_end(&mut out).map_err(|e| RunError::Io(e.to_string()))?;
        Ok(out)
    }

    /// A reader over one file, seekable within it.
    ///
    /// # Errors
    /// As [`read`](Self::read).
    pub fn reader(&self, name: &str) -> Result<FileWindow> {
        let i = self.index(name)?;
        let f = std::fs::File::open(&self.path)
            .map_err(|e| RunError::Io(format!("{}: {e}", self.path.display())))?;
        let mut w = FileWindow {
            file: std::io::BufReader::with_capacity(1 << 16, f),
            start: self.offsets[i],
            len: self.header.files[i].size,
            pos: 0,
        };
        w.seek(SeekFrom::Start(0)).map_err(|e| RunError::Io(e.to_string()))?;
        Ok(w)
    }
}

/// One file inside a package: reads and seeks stay within its bytes.
#[derive(Debug)]
pub struct FileWindow {
    file: std::io::BufReader<std::fs::File>,
    start: u64,
    len: u64,
    pos: u64,
}

impl Read for FileWindow {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read(&mut buf[..want])?;
        self.pos = self.pos.saturating_add(n as u64);
        Ok(n)
    }
}

impl Seek for FileWindow {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        };
        let Some(target) = target else {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start"));
        };
        self.file.seek(SeekFrom::Start(self.start.saturating_add(target)))?;
        self.pos = target;
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cairn-pkg-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_package_round_trips_and_reads_files_in_place() {
        let d = dir("roundtrip");
        let gguf = d.join("m.gguf");
        std::fs::write(&gguf, b"0123456789").unwrap();
        let out = d.join("pkg");
        let id = write_package(Family::Gemma3, "tiny", &[("model.gguf".into(), gguf)], &out).unwrap();
        assert_eq!(id, hash_file(&out).unwrap());
        let p = ModelPackage::open_verified(&out, &id).unwrap();
        assert_eq!(p.header.name, "tiny");
        assert_eq!(p.read("model.gguf").unwrap(), b"0123456789");
        let mut r = p.reader("model.gguf").unwrap();
        r.seek(SeekFrom::Start(4)).unwrap();
        let mut b = [0u8; 3];
        r.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"456");
        assert!(r.seek(SeekFrom::Current(-10)).is_err());
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"789", "reads stop at the file's end");
    }

    #[test]
    fn broken_packages_are_refused_with_a_reason() {
        let d = dir("broken");
        let f = d.join("config.json");
        std::fs::write(&f, b"{}").unwrap();
        // A BERT package needs its weights and tokenizer.
        let e =
            write_package(Family::Bert, "x", &[("config.json".into(), f.clone())], &d.join("p")).unwrap_err();
        assert!(e.to_string().contains("model.safetensors"), "{e}");
        let gguf = d.join("m.gguf");
        std::fs::write(&gguf, b"abc").unwrap();
        let out = d.join("ok");
        write_package(Family::Gemma3, "x", &[("model.gguf".into(), gguf)], &out).unwrap();
        let mut bytes = std::fs::read(&out).unwrap();
        bytes.pop();
        let cut = d.join("cut");
        std::fs::write(&cut, &bytes).unwrap();
        assert!(ModelPackage::open(&cut).unwrap_err().to_string().contains("add up"));
        std::fs::write(&cut, b"NOTAPKG").unwrap();
        assert!(ModelPackage::open(&cut).is_err());
        let e = write_package(Family::Gemma3, "", &[("model.gguf".into(), out.clone())], &d.join("q"))
            .unwrap_err();
        assert!(e.to_string().contains("name"), "{e}");
    }
}
