//! Content-addressed blobs: an on-disk store keyed by BLAKE3, an HTTP endpoint that serves
//! them, and a fetcher that checks every byte against the blob's id before keeping it.
//!
//! A blob's id is the BLAKE3 hash of its bytes, so the id a job spec names, the commitment a
//! provider makes and the transfer's verification root are one value. The store keeps the
//! BLAKE3 tree above 16 KiB leaves beside each blob (see `tree.rs`); the endpoint serves the
//! raw bytes from any offset (`GET /blobs/{id}?offset=`) and the chaining values of the
//! blob's 8 MiB groups (`GET /blobs/{id}/groups?log=13`), which the fetcher checks against
//! the id before it takes a byte and then checks each group against as it arrives. A
//! transfer that fails midway resumes from its last verified group; data that does not
//! verify is discarded and the next source is tried.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cairn_blobs::Error> {
//! use cairn_blobs::{BlobStore, Fetcher};
//! let store = BlobStore::open("/tmp/cairn-blobs")?;
//! let id = store.put_bytes(b"hello")?;
//! let other = BlobStore::open("/tmp/cairn-blobs-2")?;
//! Fetcher::new().fetch(&other, &id, Some(5), 1 << 20, &["http://127.0.0.1:7070".into()]).await?;
//! # Ok(()) }
//! ```

mod fetch;
mod serve;
mod store;
mod transfer;
mod tree;

pub use fetch::Fetcher;
pub use serve::{Refusal, UploadGate, file_stream, router, router_with_uploads};
pub use store::BlobStore;
pub use transfer::{FILE_SLICE, GROUP_LOG, UploadError, partial_of, put_stream_as};

use cairn_types::ContentId;

/// What can go wrong with blobs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No source has the blob.
    #[error("blob {0} not found at any source")]
    NotFound(ContentId),
    /// Data did not verify against the blob's id.
    #[error("data from {from} does not match blob {id}")]
    Corrupt {
        /// The blob.
        id: ContentId,
        /// Where the bad data came from.
        from: String,
    },
    /// The blob is larger than allowed.
    #[error("blob {id} is {size} bytes, over the {max}-byte limit")]
    TooLarge {
        /// The blob.
        id: ContentId,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A source answered with something other than the blob.
    #[error("{url}: {reason}")]
    Source {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// Local storage failed.
    #[error("blob store: {0}")]
    Io(#[from] std::io::Error),
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
