//! The blob endpoint: `GET /blobs/{id}` (the bytes, streamed; `?offset=` from there on),
//! `GET /blobs/{id}/groups?log=` (the chaining values a client checks them against),
//! `HEAD /blobs/{id}` (size in `x-blob-size`) and `POST /blobs` (upload; the answer is the id
//! the server computed).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cairn_types::ContentId;
use serde::Deserialize;

use crate::BlobStore;

#[derive(Clone)]
struct Ctx {
    store: Arc<BlobStore>,
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

/// The blob routes, to merge into a server; uploads are capped at `max_upload` bytes.
pub fn router(store: Arc<BlobStore>, max_upload: usize) -> Router {
    Router::new()
        .route("/blobs/{id}", get(get_blob).head(head_blob))
        .route("/blobs/{id}/groups", get(get_groups))
        .route("/blobs", post(put_blob))
        .layer(DefaultBodyLimit::max(max_upload))
        .with_state(Ctx { store })
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

async fn put_blob(State(c): State<Ctx>, body: Bytes) -> Response {
    let store = c.store.clone();
    match tokio::task::spawn_blocking(move || store.put_bytes(&body)).await {
        Ok(Ok(id)) => {
            (StatusCode::CREATED, [("content-type", "application/json")], format!("{{\"id\":\"{id}\"}}"))
                .into_response()
        }
        _ => err(StatusCode::INTERNAL_SERVER_ERROR, "io", "cannot store the blob"),
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
