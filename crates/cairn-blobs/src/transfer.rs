//! Whole-file transfers: a file streamed to an endpoint without holding it in memory, and a
//! blob brought into a file verified slice by slice, resuming where an earlier try stopped.

use std::path::{Path, PathBuf};

use blake3::hazmat::HasherExt as _;
use cairn_types::ContentId;
use cairn_types::storage::CHUNK_LEN;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::fetch::{open_partial_file, source_err};
use crate::{Error, Fetcher, Result};

/// Chunks per verified group when a whole blob is brought into a file, as a power of two
/// (2^13 KiB = 8 MiB): each group's raw bytes are hashed at full speed and checked against its
/// chaining value, and the groups' values against the blob id.
pub const GROUP_LOG: u32 = 13;
/// Bytes in such a group.
pub const FILE_SLICE: u64 = CHUNK_LEN << GROUP_LOG;

/// Where a download to `dest` keeps what it has verified so far.
pub fn partial_of(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".cairn-partial");
    dest.with_file_name(name)
}

impl Fetcher {
    /// `PUT` the file at `path` to `url`, streamed; `progress` hears the bytes sent so far.
    ///
    /// # Errors
    /// [`Error::Io`] reading the file; [`Error::Source`] when the endpoint refuses it (its
    /// answer included).
    pub async fn upload_file(
        &self,
        url: &str,
        path: &Path,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<()> {
        let file = tokio::fs::File::open(path).await?;
        let len = file.metadata().await?.len();
        let chunks = futures::stream::unfold(file, |mut file| async move {
            let mut buf = vec![0u8; 1 << 20];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<_, std::io::Error>(http_body::Frame::data(bytes::Bytes::from(buf))), file))
                }
                Err(e) => Some((Err(e), file)),
            }
        });
        let mut sent = 0u64;
        let counted = futures::StreamExt::map(chunks, move |frame| {
            if let Ok(f) = &frame
                && let Some(d) = f.data_ref()
            {
                sent += d.len() as u64;
                progress(sent);
            }
            frame
        });
        let body = reqwest::Body::wrap(http_body_util::StreamBody::new(counted));
        let resp = self
            .http
            .put(url)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(body)
            .send()
            .await
            .map_err(|e| source_err(url, e))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            return Err(source_err(url, format!("{status}: {text}")));
        }
        Ok(())
    }

    /// Bring blob `id` (`size` bytes) into the file `dest` from the first of `sources` that has
    /// it, checking every chunk against the id; a download cut short resumes from its verified
    /// part (`<dest>.cairn-partial`) the next time. `progress` hears the bytes held.
    ///
    /// # Errors
    /// [`Error::NotFound`] when no source has it; [`Error::Corrupt`] when every source that had
    /// it sent bad data (a corrupt source is left for the next); [`Error::Io`] writing.
    pub async fn fetch_to_file(
        &self,
        id: &ContentId,
        size: u64,
        sources: &[String],
        dest: &Path,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<()> {
        let part = partial_of(dest);
        let mut worst = Error::NotFound(*id);
        for base in sources {
            let mut file = open_partial_file(&part, size)?;
            match self.copy_groups(id, size, &mut file, base, progress).await {
                Ok(()) => {
                    drop(file);
                    std::fs::rename(&part, dest)?;
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(%id, source = %base, error = %e, "blob source failed");
                    if matches!(e, Error::Corrupt { .. }) || matches!(worst, Error::NotFound(_)) {
                        worst = e;
                    }
                }
            }
        }
        Err(worst)
    }

    /// Append blob `id`'s bytes from `base` to `file` group by group (see [`GROUP_LOG`]),
    /// from the last whole group it holds; only verified groups are written.
    pub(crate) async fn copy_groups(
        &self,
        id: &ContentId,
        size: u64,
        file: &mut std::fs::File,
        base: &str,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<()> {
        let root = base.trim_end_matches('/');
        let corrupt = || Error::Corrupt { id: *id, from: base.to_owned() };
        let mut have = file.metadata()?.len().min(size);
        have -= have % FILE_SLICE;
        // The groups' chaining values, checked against the id (one group: the id checks it).
        let cvs = if size > FILE_SLICE {
            let url = format!("{root}/blobs/{id}/groups?log={GROUP_LOG}");
            let resp = self.http.get(&url).send().await.map_err(|e| source_err(&url, e))?;
            if !resp.status().is_success() {
                return Err(if resp.status() == reqwest::StatusCode::NOT_FOUND {
                    Error::NotFound(*id)
                } else {
                    source_err(&url, resp.status())
                });
            }
            let bytes = resp.bytes().await.map_err(|e| source_err(&url, e))?;
            let groups = size.div_ceil(FILE_SLICE);
            if bytes.len() as u64 != groups * 32 {
                return Err(corrupt());
            }
            let cvs: Vec<[u8; 32]> = bytes
                .chunks_exact(32)
                .map(|c| {
                    let mut a = [0u8; 32];
                    a.copy_from_slice(c);
                    a
                })
                .collect();
            if crate::tree::levels(cvs.clone()).0.as_bytes() != &id.0 {
                return Err(corrupt());
            }
            Some(cvs)
        } else {
            None
        };
        // What an earlier try kept is checked again (it was never forced to disk): kept up to
        // the first group that does not match.
        have = verified_prefix(file, have, &cvs)?;
        // Cut only when there is something to cut: truncating a file (even an empty one to
        // nothing) makes ext4 write all of its new data back when it is closed, which costs
        // a large download half a second at its end.
        if file.metadata()?.len() != have {
            file.set_len(have)?;
        }
        if have >= size && size > 0 {
            return Ok(());
        }
        let url = format!("{root}/blobs/{id}?offset={have}");
        let mut resp = self.http.get(&url).send().await.map_err(|e| source_err(&url, e))?;
        if !resp.status().is_success() {
            return Err(source_err(&url, resp.status()));
        }
        // Bytes are written as they arrive (as a plain copy would) and hashed on the way; at
        // each group's end its value is checked, and on any failure the file is cut back to
        // its last verified group. (A crash can leave unverified bytes after that group: the
        // next try checks the kept groups again before it trusts them.)
        std::io::Seek::seek(file, std::io::SeekFrom::Start(have))?;
        let mut out = tokio::fs::File::from_std(file.try_clone()?);
        let mut received = have;
        let mut hasher = group_hasher(have);
        let outcome: Result<()> = async {
            while received < size {
                let Some(mut piece) = resp.chunk().await.map_err(|e| source_err(&url, e))? else {
                    return Err(source_err(&url, "the stream ended before the blob did"));
                };
                while !piece.is_empty() {
                    let group_end = (have + FILE_SLICE).min(size);
                    if received == group_end {
                        return Err(source_err(&url, "the stream is longer than the blob"));
                    }
                    let take = piece.len().min((group_end - received) as usize);
                    let part = piece.split_to(take);
                    hasher.update(&part);
                    out.write_all(&part).await?;
                    received += take as u64;
                    if received == group_end {
                        let ok = match cvs.as_ref() {
                            None => *hasher.finalize().as_bytes() == id.0,
                            Some(cvs) => {
                                cvs.get((have / FILE_SLICE) as usize) == Some(&hasher.finalize_non_root())
                            }
                        };
                        if !ok {
                            return Err(corrupt());
                        }
                        have = received;
                        progress(have);
                        if have < size {
                            hasher = group_hasher(have);
                        }
                    }
                }
            }
            if size == 0 && *hasher.finalize().as_bytes() != id.0 {
                return Err(corrupt());
            }
            if resp.chunk().await.ok().flatten().is_some_and(|c| !c.is_empty()) {
                return Err(source_err(&url, "the stream is longer than the blob"));
            }
            Ok(())
        }
        .await;
        out.flush().await?;
        drop(out);
        if outcome.is_err() {
            file.set_len(have)?;
        }
        outcome
    }
}

/// A hasher for the group starting at byte `start`.
fn group_hasher(start: u64) -> blake3::Hasher {
    let mut h = blake3::Hasher::new();
    if start > 0 {
        h.set_input_offset(start);
    }
    h
}

/// Whether `bytes`, the group starting at byte `start`, has its chaining value in `cvs`.
fn group_ok(cvs: &[[u8; 32]], start: u64, bytes: &[u8]) -> bool {
    cvs.get((start / FILE_SLICE) as usize) == Some(&crate::tree::subtree_cv(bytes, start))
}

/// How much of the first `have` bytes of `file` (whole groups) still verifies.
fn verified_prefix(file: &mut std::fs::File, have: u64, cvs: &Option<Vec<[u8; 32]>>) -> Result<u64> {
    use std::io::{Read as _, Seek as _};
    let Some(cvs) = cvs else { return Ok(0) };
    file.seek(std::io::SeekFrom::Start(0))?;
    let mut buf = vec![0u8; FILE_SLICE as usize];
    let mut ok = 0u64;
    while ok < have {
        file.read_exact(&mut buf)?;
        if !group_ok(cvs, ok, &buf) {
            break;
        }
        ok += FILE_SLICE;
    }
    Ok(ok)
}

/// Why a streamed upload was not kept.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The body ran past the size it was taken for.
    #[error("the upload is longer than {0} bytes")]
    TooLong(u64),
    /// The bytes are not the expected blob.
    #[error("the upload is not blob {0}")]
    WrongBlob(ContentId),
    /// The body broke off, or the store failed.
    #[error("{0}")]
    Failed(String),
}

/// Store a streamed body as blob `expected` of `size` bytes: hashed into its tree and written
/// on a blocking thread as it arrives, kept only if it is exactly that blob.
///
/// # Errors
/// [`UploadError`]; nothing is kept on any of them.
pub async fn put_stream_as<S, E>(
    store: &crate::BlobStore,
    mut body: S,
    expected: ContentId,
    size: u64,
) -> std::result::Result<(), UploadError>
where
    S: futures::Stream<Item = std::result::Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    use futures::StreamExt as _;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(64);
    let mut w = store.writer().map_err(|e| UploadError::Failed(e.to_string()))?;
    let writer = tokio::task::spawn_blocking(move || {
        while let Some(piece) = rx.blocking_recv() {
            w.write(&piece)?;
        }
        w.finish(Some(&expected)).map(|_| ())
    });
    let mut got: u64 = 0;
    let mut broke = None;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                broke = Some(e.to_string());
                break;
            }
        };
        got = got.saturating_add(chunk.len() as u64);
        if got > size {
            broke = Some(String::new());
            break;
        }
        if tx.send(chunk).await.is_err() {
            break;
        }
    }
    drop(tx);
    let stored = writer.await.map_err(|e| UploadError::Failed(e.to_string()))?;
    match (broke, stored) {
        (Some(why), _) if why.is_empty() => Err(UploadError::TooLong(size)),
        (Some(why), _) => Err(UploadError::Failed(format!("the upload broke off: {why}"))),
        (None, Ok(())) => Ok(()),
        (None, Err(Error::Corrupt { .. })) => Err(UploadError::WrongBlob(expected)),
        (None, Err(e)) => Err(UploadError::Failed(e.to_string())),
    }
}
