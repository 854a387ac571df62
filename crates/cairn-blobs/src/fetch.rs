//! Fetching blobs from other endpoints, verifying as they arrive, resuming partial transfers.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_types::ContentId;
use cairn_types::upload::{BLOB_HEADER, UploadAuth};
use tracing::warn;

use crate::{BlobStore, Error, Result};

/// Fetches and uploads blobs over HTTP. Clones share one set of in-flight fetches: two
/// fetches of the same blob wait for each other instead of racing on its partial file.
#[derive(Debug, Clone)]
pub struct Fetcher {
    pub(crate) http: reqwest::Client,
    in_flight: Arc<Mutex<BTreeMap<ContentId, Arc<tokio::sync::Mutex<()>>>>>,
    uploader: Option<Arc<UploadAuth>>,
}

impl Default for Fetcher {
    fn default() -> Self {
        Self::new()
    }
}

/// Open (creating) a partial download, dropping it when it is longer than the blob.
pub(crate) fn open_partial_file(part: &std::path::Path, total: u64) -> Result<std::fs::File> {
    if std::fs::metadata(part).map(|m| m.len()).unwrap_or(0) > total {
        std::fs::remove_file(part)?;
    }
    Ok(std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(part)?)
}

/// How much a failure says about the blob's sources (higher: more telling).
fn severity(e: &Error) -> u8 {
    match e {
        Error::NotFound(_) => 0,
        Error::Source { .. } => 1,
        Error::Io(_) => 2,
        Error::TooLarge { .. } => 3,
        Error::Corrupt { .. } => 4,
    }
}

pub(crate) fn source_err(url: &str, reason: impl std::fmt::Display) -> Error {
    Error::Source { url: url.to_owned(), reason: reason.to_string() }
}

impl Fetcher {
    /// A fetcher with sensible timeouts.
    pub fn new() -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // Silence, not length, ends a transfer: a large blob may take as long as it moves.
            .read_timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        Fetcher { http, in_flight: Arc::default(), uploader: None }
    }

    /// This fetcher signing its uploads as `auth`'s account (validators keep only signed
    /// uploads from funded accounts).
    #[must_use]
    pub fn with_uploader(mut self, auth: UploadAuth) -> Self {
        self.uploader = Some(Arc::new(auth));
        self
    }

    async fn remote_size(&self, base: &str, id: &ContentId) -> Result<u64> {
        let url = format!("{}/blobs/{id}", base.trim_end_matches('/'));
        let resp = self.http.head(&url).send().await.map_err(|e| source_err(&url, e))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(Error::NotFound(*id));
        }
        resp.headers()
            .get("x-blob-size")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| source_err(&url, "no x-blob-size header"))
    }

    /// Bring blob `id` into `store` from the first source that has it, checking every chunk.
    /// `size` (if known, e.g. from a job spec) must match; blobs over `max` bytes are refused.
    /// Returns the local path.
    ///
    /// # Errors
    /// [`Error::NotFound`] if no source has it, [`Error::Corrupt`] if every source that had it
    /// sent bad data, [`Error::TooLarge`] over `max`.
    pub async fn fetch(
        &self,
        store: &BlobStore,
        id: &ContentId,
        size: Option<u64>,
        max: u64,
        sources: &[String],
    ) -> Result<PathBuf> {
        if store.has(id) {
            return Ok(store.path(id));
        }
        let gate = self
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(*id)
            .or_default()
            .clone();
        let _one_at_a_time = gate.lock().await;
        let out = self.fetch_sources(store, id, size, max, sources).await;
        let mut map = self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Drop the entry once nobody else holds or waits on it.
        if Arc::strong_count(&gate) <= 2 {
            map.remove(id);
        }
        out
    }

    async fn fetch_sources(
        &self,
        store: &BlobStore,
        id: &ContentId,
        size: Option<u64>,
        max: u64,
        sources: &[String],
    ) -> Result<PathBuf> {
        if store.has(id) {
            return Ok(store.path(id));
        }
        // Report the most telling failure, not merely the last: a source that served corrupt
        // data matters more than one that did not have the blob.
        let mut worst = Error::NotFound(*id);
        for base in sources {
            match self.fetch_from(store, id, size, max, base).await {
                Ok(p) => return Ok(p),
                // The spec's own size is over the limit: no source can help.
                Err(e @ Error::TooLarge { .. }) if size.is_some() => return Err(e),
                Err(e) => {
                    warn!(%id, source = %base, error = %e, "blob source failed");
                    if severity(&e) >= severity(&worst) {
                        worst = e;
                    }
                }
            }
        }
        Err(worst)
    }

    async fn fetch_from(
        &self,
        store: &BlobStore,
        id: &ContentId,
        size: Option<u64>,
        max: u64,
        base: &str,
    ) -> Result<PathBuf> {
        let total = self.remote_size(base, id).await?;
        if let Some(expected) = size
            && expected != total
        {
            return Err(source_err(base, format!("has {total} bytes, the spec says {expected}")));
        }
        if total > max {
            return Err(Error::TooLarge { id: *id, size: total, max });
        }
        let part = store.partial_path(id);
        let mut file = open_partial_file(&part, total)?;
        self.copy_groups(id, total, &mut file, base, &|_| {}).await?;
        file.sync_all()?;
        drop(file);
        store.adopt(id, &part)?;
        Ok(store.path(id))
    }

    /// Upload bytes to an endpoint (unless it already holds them) and check it kept them under
    /// the same id.
    ///
    /// # Errors
    /// [`Error::Source`] if it refused or answered with another id.
    pub async fn upload(&self, base: &str, bytes: Vec<u8>) -> Result<ContentId> {
        let id = ContentId::of(&bytes);
        // Already there: nothing to send.
        if self.remote_size(base, &id).await.ok() == Some(bytes.len() as u64) {
            return Ok(id);
        }
        let url = format!("{}/blobs", base.trim_end_matches('/'));
        let mut req = self.http.post(&url).header(BLOB_HEADER, id.to_hex());
        if let Some(auth) = &self.uploader {
            for (name, value) in auth.headers(&id, bytes.len() as u64) {
                req = req.header(name, value);
            }
        }
        let resp = req.body(bytes).send().await.map_err(|e| source_err(&url, e))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return Err(source_err(&url, format!("{status}: {body}")));
        }
        let text = resp.text().await.map_err(|e| source_err(&url, e))?;
        if !text.contains(&id.to_hex()) {
            return Err(source_err(&url, format!("stored the upload under another id ({text})")));
        }
        Ok(id)
    }
}
