//! Whole-file transfers: a file streamed to an endpoint without holding it in memory, and a
//! blob brought into a file verified slice by slice, resuming where an earlier try stopped.

use std::path::{Path, PathBuf};

use cairn_types::ContentId;
use tokio::io::AsyncReadExt as _;

use crate::fetch::{open_partial_file, source_error};
use crate::{Error, Fetcher, Result};

/// Bytes per request when a whole blob is brought into a file.
pub const FILE_SLICE: u64 = 8 << 20;

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
            .map_err(|e| source_error(url, e))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            return Err(source_error(url, format!("{status}: {text}")));
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
            match self.copy_verified(id, size, &mut file, base, FILE_SLICE, progress).await {
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
}
