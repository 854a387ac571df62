//! The blob endpoint: `GET /blobs/{id}` (the bytes, streamed; `?offset=` from there on),
//! `GET /blobs/{id}/groups?log=` (the chaining values a client checks them against),
//! `HEAD /blobs/{id}` (size in `x-blob-size`) and, where an [`UploadGate`] admits them,
//! `POST /blobs` (an upload: the blob named in `x-cairn-blob`, `content-length` bytes, signed
//! as the gate asks; streamed to disk and kept only if it is that blob).

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cairn_types::ContentId;
use cairn_types::upload::BLOB_HEADER;
use serde::Deserialize;

use crate::{BlobStore, UploadError};

/// Why an upload is refused: an HTTP status, a stable code and a message for the uploader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The status answered.
    pub status: StatusCode,
    /// A stable error code.
    pub code: &'static str,
    /// What the uploader should know.
    pub message: String,
}

/// Who may upload, and how much. Asked before any byte of an upload's body is read.
pub trait UploadGate: Send + Sync + 'static {
    /// Admit an upload of blob `id` (`size` bytes) given the request's headers, reserving room
    /// for it. `Ok` carries who it is charged to, handed back to [`UploadGate::done`].
    ///
    /// # Errors
    /// The [`Refusal`] answered instead.
    fn admit(&self, headers: &HeaderMap, id: &ContentId, size: u64) -> Result<String, Refusal>;
    /// The admitted upload ended: `stored` when its bytes were kept (not when the blob was
    /// already there, nor when the upload failed).
    fn done(&self, charged: String, id: &ContentId, size: u64, stored: bool);
}

#[derive(Clone)]
struct Ctx {
    store: Arc<BlobStore>,
    uploads: Option<(u64, Arc<dyn UploadGate>)>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Range {
    /// Raw bytes from this offset (to the end): checked by the client against the chunk
    /// groups' chaining values of `GET /blobs/{id}/groups`.
    offset: Option<u64>,
}

fn err(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!("{{\"error\":{{\"code\":\"{code}\",\"message\":\"{}\"}}}}", message.replace('"', "'"));
    (status, [("content-type", "application/json")], body).into_response()
}

/// The blob routes, read-only, to merge into a server.
pub fn router(store: Arc<BlobStore>) -> Router {
    routes(Ctx { store, uploads: None })
}

/// The blob routes with `POST /blobs`: uploads of at most `max_upload` bytes that `gate` admits.
pub fn router_with_uploads(store: Arc<BlobStore>, max_upload: u64, gate: Arc<dyn UploadGate>) -> Router {
    routes(Ctx { store, uploads: Some((max_upload, gate)) })
}

fn routes(ctx: Ctx) -> Router {
    let read = Router::new()
        .route("/blobs/{id}", get(get_blob).head(head_blob))
        .route("/blobs/{id}/groups", get(get_groups));
    let app = if ctx.uploads.is_some() { read.route("/blobs", post(put_blob)) } else { read };
    app.with_state(ctx)
}

fn parse(id: &str) -> Option<ContentId> {
    id.parse().ok()
}

fn bad_id() -> Response {
    err(StatusCode::BAD_REQUEST, "bad_id", "blob id must be 64 hex characters")
}

fn size_header(size: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&size.to_string()) {
        h.insert("x-blob-size", v);
    }
    h
}

async fn head_blob(State(c): State<Ctx>, Path(id): Path<String>) -> Response {
    let Some(id) = parse(&id) else { return bad_id() };
    match c.store.size(&id) {
        Some(size) => (StatusCode::OK, size_header(size)).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn get_blob(State(c): State<Ctx>, Path(id): Path<String>, Query(range): Query<Range>) -> Response {
    let Some(id) = parse(&id) else { return bad_id() };
    let Some(size) = c.store.size(&id) else {
        return err(StatusCode::NOT_FOUND, "not_found", "no such blob");
    };
    raw_from(&c.store, &id, size, range.offset.unwrap_or(0)).await
}

fn stored(status: StatusCode, id: &ContentId) -> Response {
    (status, [("content-type", "application/json")], format!("{{\"id\":\"{id}\"}}")).into_response()
}

/// How much of a refused upload's body is read (and dropped) before the refusal is answered.
const REFUSED_DRAIN: u64 = 16 << 20;

/// Read and drop up to `limit` bytes of a body the answer does not need, so the client, still
/// sending it, reads the answer rather than a reset connection.
async fn drain(body: Body, limit: u64) {
    use futures::StreamExt as _;
    let mut stream = body.into_data_stream();
    let mut seen = 0u64;
    while seen < limit
        && let Some(Ok(piece)) = stream.next().await
    {
        seen = seen.saturating_add(piece.len() as u64);
    }
}

async fn put_blob(State(c): State<Ctx>, headers: HeaderMap, body: Body) -> Response {
    let Some((max, gate)) = c.uploads.clone() else {
        return err(StatusCode::METHOD_NOT_ALLOWED, "read_only", "this endpoint takes no uploads");
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(id) = header(BLOB_HEADER).and_then(parse) else {
        drain(body, REFUSED_DRAIN).await;
        return err(
            StatusCode::BAD_REQUEST,
            "bad_id",
            &format!("name the blob (64 hex characters) in {BLOB_HEADER}"),
        );
    };
    let Some(size) = header("content-length").and_then(|v| v.parse::<u64>().ok()) else {
        drain(body, REFUSED_DRAIN).await;
        return err(StatusCode::LENGTH_REQUIRED, "length_required", "give the upload's content-length");
    };
    if size > max {
        drain(body, size.min(REFUSED_DRAIN)).await;
        return err(StatusCode::PAYLOAD_TOO_LARGE, "too_large", &format!("uploads are at most {max} bytes"));
    }
    let charged = match gate.admit(&headers, &id, size) {
        Ok(c) => c,
        Err(r) => {
            drain(body, size.min(REFUSED_DRAIN)).await;
            return err(r.status, r.code, &r.message);
        }
    };
    if c.store.has(&id) {
        gate.done(charged, &id, size, false);
        drain(body, size).await;
        return stored(StatusCode::OK, &id);
    }
    let r = crate::put_stream_as(&c.store, body.into_data_stream(), id, size).await;
    gate.done(charged, &id, size, r.is_ok());
    match r {
        Ok(()) => stored(StatusCode::CREATED, &id),
        Err(e @ (UploadError::WrongBlob(_) | UploadError::TooLong(_))) => err(
            StatusCode::BAD_REQUEST,
            "wrong_blob",
            &format!("{e}: the body must be the {size} bytes that hash to {BLOB_HEADER}"),
        ),
        Err(UploadError::Failed(e)) => err(StatusCode::BAD_REQUEST, "upload_failed", &e),
    }
}

/// A file's bytes from where it stands to its end, 1 MiB at a time.
pub fn file_stream(
    f: tokio::fs::File,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    use tokio::io::AsyncReadExt as _;
    futures::stream::unfold(f, |mut f| async move {
        let mut buf = vec![0u8; 1 << 20];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
}

/// The blob's bytes from `offset` to its end, streamed from the file.
async fn raw_from(store: &BlobStore, id: &ContentId, size: u64, offset: u64) -> Response {
    use tokio::io::AsyncSeekExt as _;
    if offset > size {
        return err(StatusCode::BAD_REQUEST, "bad_range", "offset is past the end of the blob");
    }
    let Ok(mut f) = tokio::fs::File::open(store.path(id)).await else {
        return err(StatusCode::INTERNAL_SERVER_ERROR, "io", "cannot read the blob");
    };
    if f.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
        return err(StatusCode::INTERNAL_SERVER_ERROR, "io", "cannot read the blob");
    }
    (StatusCode::OK, size_header(size), axum::body::Body::from_stream(file_stream(f))).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Groups {
    /// Chunks per group, as a power of two (4..=20).
    log: u32,
}

/// The chaining values of the blob's chunk groups (32 bytes each, in order), read from its
/// tree: what a client checks raw bytes against, group by group.
async fn get_groups(State(c): State<Ctx>, Path(id): Path<String>, Query(g): Query<Groups>) -> Response {
    let Some(id) = parse(&id) else { return bad_id() };
    if !(4..=20).contains(&g.log) {
        return err(StatusCode::BAD_REQUEST, "bad_range", "log must be from 4 to 20");
    }
    let Some(size) = c.store.size(&id) else {
        return err(StatusCode::NOT_FOUND, "not_found", "no such blob");
    };
    let store = c.store.clone();
    match tokio::task::spawn_blocking(move || store.group_cvs(&id, g.log)).await {
        Ok(Ok(cvs)) => (StatusCode::OK, size_header(size), cvs.concat()).into_response(),
        _ => err(StatusCode::INTERNAL_SERVER_ERROR, "io", "cannot read the blob's tree"),
    }
}
