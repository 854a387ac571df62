//! Verified transfer over loopback HTTP: good, lying, flaky and missing sources.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::arithmetic_side_effects)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use cairn_blobs::{BlobStore, Error, Fetcher, router};
use cairn_types::ContentId;

fn dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("cairn-blobs-it-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

async fn serve(app: Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}")
}

#[derive(serde::Deserialize)]
struct Raw {
    offset: Option<u64>,
}

/// How a test source misbehaves on raw bytes (its group values are the real ones).
#[derive(Clone, Copy)]
enum Fault {
    /// One byte flipped: in the second group it sends (the first when it sends one).
    Flip,
    /// The stream ends one group and 1000 bytes in.
    Cut,
    /// The real bytes, then more without end.
    Flood,
}

fn faulty(store: Arc<BlobStore>, fault: Fault) -> Router {
    async fn head(
        State((s, _)): State<(Arc<BlobStore>, Fault)>,
        Path(id): Path<String>,
    ) -> impl IntoResponse {
        let id: ContentId = id.parse().unwrap();
        [("x-blob-size", s.size(&id).unwrap().to_string())]
    }
    async fn get(
        State((s, fault)): State<(Arc<BlobStore>, Fault)>,
        Path(id): Path<String>,
        Query(r): Query<Raw>,
    ) -> axum::response::Response {
        let id: ContentId = id.parse().unwrap();
        let mut bytes = s.read(&id).unwrap().split_off(r.offset.unwrap_or(0) as usize);
        match fault {
            Fault::Flip => {
                let first =
                    (cairn_blobs::FILE_SLICE - r.offset.unwrap_or(0) % cairn_blobs::FILE_SLICE) as usize;
                let at = (first + 5).min(bytes.len() - 10);
                bytes[at] ^= 0x55;
            }
            Fault::Cut => bytes.truncate(cairn_blobs::FILE_SLICE as usize + 1000),
            Fault::Flood => {
                let first =
                    futures::stream::once(
                        async move { Ok::<_, std::io::Error>(axum::body::Bytes::from(bytes)) },
                    );
                let chunk = axum::body::Bytes::from(vec![7u8; 64 * 1024]);
                let endless = futures::stream::repeat_with(move || Ok(chunk.clone()));
                return axum::body::Body::from_stream(futures::StreamExt::chain(first, endless))
                    .into_response();
            }
        }
        bytes.into_response()
    }
    async fn groups(
        State((s, _)): State<(Arc<BlobStore>, Fault)>,
        Path(id): Path<String>,
    ) -> impl IntoResponse {
        let id: ContentId = id.parse().unwrap();
        s.group_cvs(&id, cairn_blobs::GROUP_LOG).unwrap().concat()
    }
    Router::new()
        .route("/blobs/{id}", axum::routing::get(get).head(head))
        .route("/blobs/{id}/groups", axum::routing::get(groups))
        .with_state((store, fault))
}

#[tokio::test]
async fn a_blob_crosses_over_http_verified_group_by_group() {
    let a = Arc::new(BlobStore::open(dir("a")).unwrap());
    let bytes = data(3 * 1024 * 1024 + 12_345);
    let id = a.put_bytes(&bytes).unwrap();
    assert_eq!(id, ContentId::of(&bytes), "the id is the plain BLAKE3 of the bytes");
    let url = serve(router(a.clone())).await;
    let b = BlobStore::open(dir("b")).unwrap();
    let path = Fetcher::new().fetch(&b, &id, Some(bytes.len() as u64), 1 << 30, &[url]).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), bytes);
    b.verify(&id).unwrap();
    // Empty blobs work too.
    let empty = a.put_bytes(b"").unwrap();
    let url = serve(router(a)).await;
    Fetcher::new().fetch(&b, &empty, Some(0), 10, &[url]).await.unwrap();
    assert!(b.has(&empty));
}

#[tokio::test]
async fn corrupted_data_is_discarded_and_the_next_source_is_used() {
    let a = Arc::new(BlobStore::open(dir("c-src")).unwrap());
    let bytes = data(2 * 1024 * 1024 + 7);
    let id = a.put_bytes(&bytes).unwrap();
    let liar = serve(faulty(a.clone(), Fault::Flip)).await;
    let good = serve(router(a)).await;
    let b = BlobStore::open(dir("c-dst")).unwrap();
    let err = Fetcher::new().fetch(&b, &id, None, 1 << 30, std::slice::from_ref(&liar)).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(!b.has(&id), "nothing unverified is kept");
    Fetcher::new().fetch(&b, &id, None, 1 << 30, &[liar, good]).await.unwrap();
    assert_eq!(b.read(&id).unwrap(), bytes);
}

#[tokio::test]
async fn the_most_telling_failure_is_reported_and_a_flooding_source_is_cut_off() {
    let a = Arc::new(BlobStore::open(dir("t-src")).unwrap());
    let bytes = data(300_000);
    let id = a.put_bytes(&bytes).unwrap();
    let liar = serve(faulty(a.clone(), Fault::Flip)).await;
    let empty = serve(router(Arc::new(BlobStore::open(dir("t-empty")).unwrap()))).await;
    let b = BlobStore::open(dir("t-dst")).unwrap();
    // Corrupt data from one source is named even though the last source merely lacked the blob.
    let err = Fetcher::new().fetch(&b, &id, None, 1 << 30, &[liar, empty]).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    // A source streaming on past the blob is cut off, and what it sent is not kept.
    let flood = serve(faulty(a.clone(), Fault::Flood)).await;
    let err = Fetcher::new().fetch(&b, &id, None, 1 << 30, &[flood]).await.unwrap_err();
    assert!(err.to_string().contains("longer than the blob"), "{err}");
    assert!(!b.has(&id));
}

#[tokio::test]
async fn an_interrupted_transfer_resumes_from_what_was_verified() {
    let a = Arc::new(BlobStore::open(dir("r-src")).unwrap());
    let bytes = data(20 * 1024 * 1024 + 5);
    let id = a.put_bytes(&bytes).unwrap();
    let cut = serve(faulty(a.clone(), Fault::Cut)).await;
    let b = BlobStore::open(dir("r-dst")).unwrap();
    assert!(Fetcher::new().fetch(&b, &id, None, 1 << 30, &[cut]).await.is_err());
    assert!(!b.has(&id));
    let partial = b.root().join("partial").join(id.to_hex());
    assert_eq!(
        std::fs::metadata(&partial).unwrap().len(),
        cairn_blobs::FILE_SLICE,
        "one verified group kept"
    );
    let offsets = Arc::new(std::sync::Mutex::new(Vec::new()));
    let counting = router(a).layer(axum::middleware::from_fn({
        let offsets = offsets.clone();
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let offsets = offsets.clone();
            async move {
                if let Some(q) = req.uri().query().and_then(|q| q.strip_prefix("offset=")) {
                    offsets.lock().unwrap().push(q.parse::<u64>().unwrap());
                }
                next.run(req).await
            }
        }
    }));
    let good = serve(counting).await;
    Fetcher::new().fetch(&b, &id, None, 1 << 30, &[good]).await.unwrap();
    assert_eq!(
        *offsets.lock().unwrap(),
        vec![cairn_blobs::FILE_SLICE],
        "the kept group is not fetched again"
    );
    assert_eq!(b.read(&id).unwrap(), bytes);
    b.verify(&id).unwrap();
}

#[tokio::test]
async fn size_limits_missing_blobs_and_uploads_are_checked() {
    let a = Arc::new(BlobStore::open(dir("l-src")).unwrap());
    let bytes = data(100_000);
    let id = a.put_bytes(&bytes).unwrap();
    let gate = Arc::new(Gate::default());
    let url = serve(cairn_blobs::router_with_uploads(a.clone(), 50_000, gate.clone())).await;
    let b = BlobStore::open(dir("l-dst")).unwrap();
    let f = Fetcher::new();
    assert!(matches!(
        f.fetch(&b, &id, None, 99_999, std::slice::from_ref(&url)).await,
        Err(Error::TooLarge { .. })
    ));
    assert!(matches!(
        f.fetch(&b, &id, Some(5), 1 << 30, std::slice::from_ref(&url)).await,
        Err(Error::Source { .. })
    ));
    let missing = ContentId::of(b"nobody has this");
    assert!(matches!(
        f.fetch(&b, &missing, None, 1 << 30, std::slice::from_ref(&url)).await,
        Err(Error::NotFound(_))
    ));
    let small = data(1_000);
    let up = f.upload(&url, small.clone()).await.unwrap();
    assert_eq!(a.read(&up).unwrap(), small);
    assert!(f.upload(&url, data(60_000)).await.is_err(), "uploads over the server's limit are refused");
    // The same blob again: the fetcher sees it is there and sends nothing; a client that
    // sends it anyway is answered (its body read, nothing new stored).
    f.upload(&url, small.clone()).await.unwrap();
    assert_eq!(*gate.done.lock().unwrap(), vec![(up, true)]);
    let resp = reqwest::Client::new()
        .post(format!("{url}/blobs"))
        .header(cairn_types::upload::BLOB_HEADER, up.to_hex())
        .body(small.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(*gate.done.lock().unwrap(), vec![(up, true), (up, false)]);
    // The gate's refusal is what the uploader hears, and nothing is read or kept.
    gate.refuse.store(true, Ordering::SeqCst);
    let err = f.upload(&url, data(2_000)).await.unwrap_err();
    assert!(err.to_string().contains("403") && err.to_string().contains("not today"), "{err}");
    assert!(!a.has(&ContentId::of(&data(2_000))));
    gate.refuse.store(false, Ordering::SeqCst);
    // A body that is not the blob it names, one without a name, and one that runs short.
    let http = reqwest::Client::new();
    let named = ContentId::of(b"what was promised");
    let resp = http
        .post(format!("{url}/blobs"))
        .header(cairn_types::upload::BLOB_HEADER, named.to_hex())
        .body(b"something else entirely".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("wrong_blob"));
    assert!(!a.has(&named) && !a.has(&ContentId::of(b"something else entirely")));
    let resp = http.post(format!("{url}/blobs")).body(b"anonymous".to_vec()).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(!a.has(&ContentId::of(b"anonymous")));
    // A read-only endpoint (a provider's) takes no uploads at all.
    let read_only = serve(router(a.clone())).await;
    assert!(f.upload(&read_only, data(3_000)).await.is_err());
    assert!(!a.has(&ContentId::of(&data(3_000))));
}

/// A gate that admits everyone (or, when told to, no one) and records what it heard.
#[derive(Default)]
struct Gate {
    refuse: std::sync::atomic::AtomicBool,
    done: std::sync::Mutex<Vec<(ContentId, bool)>>,
}

impl cairn_blobs::UploadGate for Gate {
    fn admit(
        &self,
        _: &axum::http::HeaderMap,
        _: &ContentId,
        _: u64,
    ) -> Result<String, cairn_blobs::Refusal> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(cairn_blobs::Refusal {
                status: axum::http::StatusCode::FORBIDDEN,
                code: "unfunded",
                message: "not today".into(),
            });
        }
        Ok("anyone".into())
    }
    fn done(&self, _: String, id: &ContentId, _: u64, stored: bool) {
        self.done.lock().unwrap().push((*id, stored));
    }
}

/// Regression: two tasks of one job on one provider fetched the same workload at once and
/// raced on its partial file (one failed with "does not match" / "No such file").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fetches_of_one_blob_all_succeed() {
    let a = Arc::new(BlobStore::open(dir("conc-src")).unwrap());
    let bytes = data(4 * 1024 * 1024 + 3);
    let id = a.put_bytes(&bytes).unwrap();
    let url = serve(router(a)).await;
    let b = Arc::new(BlobStore::open(dir("conc-dst")).unwrap());
    let fetcher = Fetcher::new();
    let len = bytes.len() as u64;
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let (f, b, url) = (fetcher.clone(), b.clone(), url.clone());
            tokio::spawn(async move { f.fetch(&b, &id, Some(len), 1 << 30, &[url]).await })
        })
        .collect();
    for r in runs {
        let path = r.await.unwrap().unwrap();
        assert_eq!(std::fs::read(path).unwrap(), bytes);
    }
    b.verify(&id).unwrap();
}

#[tokio::test]
async fn a_file_download_skips_a_corrupt_source_resumes_after_a_cut_and_keeps_nothing_unverified() {
    let a = Arc::new(BlobStore::open(dir("f-src")).unwrap());
    let bytes = data(20 * 1024 * 1024 + 99);
    let id = a.put_bytes(&bytes).unwrap();
    let out = dir("f-dst");
    std::fs::create_dir_all(&out).unwrap();
    let dest = out.join("file.bin");
    let size = bytes.len() as u64;
    let partial = || std::fs::metadata(cairn_blobs::partial_of(&dest)).map(|m| m.len()).unwrap_or(0);
    // A source whose second group is corrupt: the first group is kept, nothing after it.
    let liar = serve(faulty(a.clone(), Fault::Flip)).await;
    let err = Fetcher::new()
        .fetch_to_file(&id, size, std::slice::from_ref(&liar), &dest, &|_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(!dest.exists());
    assert_eq!(partial(), cairn_blobs::FILE_SLICE);
    // A source that cuts the stream inside the next group: that group is not kept.
    let cut = serve(faulty(a.clone(), Fault::Cut)).await;
    assert!(Fetcher::new().fetch_to_file(&id, size, &[cut], &dest, &|_| {}).await.is_err());
    assert_eq!(partial(), 2 * cairn_blobs::FILE_SLICE);
    // Group values that do not add up to the id are refused before any byte is taken.
    let wrong = a.put_bytes(&data(9 * 1024 * 1024)).unwrap();
    let good = serve(router(a.clone())).await;
    let elsewhere = out.join("other.bin");
    let err = Fetcher::new()
        .fetch_to_file(&wrong, 20 * 1024 * 1024 + 99, std::slice::from_ref(&good), &elsewhere, &|_| {})
        .await
        .unwrap_err();
    assert!(!elsewhere.exists(), "{err}");
    // A byte of the kept part goes bad on disk (it was never forced there): the resumed fetch
    // checks the kept groups again and takes that group anew.
    {
        use std::io::{Seek as _, Write as _};
        let mut f = std::fs::OpenOptions::new().write(true).open(cairn_blobs::partial_of(&dest)).unwrap();
        f.seek(std::io::SeekFrom::Start(cairn_blobs::FILE_SLICE + 100)).unwrap();
        f.write_all(&[bytes[(cairn_blobs::FILE_SLICE + 100) as usize] ^ 1]).unwrap();
    }
    // The rest comes from a good source, resuming after the verified group.
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let progress = move |n: u64| {
        s.store(n as usize, Ordering::SeqCst);
    };
    Fetcher::new().fetch_to_file(&id, size, &[liar, good.clone()], &dest, &progress).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    assert_eq!(seen.load(Ordering::SeqCst) as u64, size);
    assert!(!cairn_blobs::partial_of(&dest).exists());
    // A blob of one group (its id checks it directly).
    let small = data(5_000);
    let sid = a.put_bytes(&small).unwrap();
    let sdest = out.join("small.bin");
    Fetcher::new().fetch_to_file(&sid, 5_000, &[good], &sdest, &|_| {}).await.unwrap();
    assert_eq!(std::fs::read(&sdest).unwrap(), small);
}

#[tokio::test]
async fn a_streamed_upload_is_kept_only_when_it_is_exactly_the_expected_blob() {
    let store = BlobStore::open(dir("up")).unwrap();
    let bytes = data(300_000);
    let id = ContentId::of(&bytes);
    let size = bytes.len() as u64;
    let stream = |b: Vec<u8>| {
        futures::stream::iter(
            b.chunks(7_000)
                .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        )
    };
    // Other bytes of the same size: refused, nothing kept under any id.
    let other = data(300_001)[1..].to_vec();
    let err = cairn_blobs::put_stream_as(&store, stream(other.clone()), id, size).await.unwrap_err();
    assert!(matches!(err, cairn_blobs::UploadError::WrongBlob(_)), "{err}");
    assert!(!store.has(&id) && !store.has(&ContentId::of(&other)));
    // More bytes than the deal's size: cut off and refused.
    let mut long = bytes.clone();
    long.extend_from_slice(b"and more");
    let err = cairn_blobs::put_stream_as(&store, stream(long), id, size).await.unwrap_err();
    assert!(matches!(err, cairn_blobs::UploadError::TooLong(_)), "{err}");
    assert!(!store.has(&id));
    // Too few bytes: not the blob.
    let err = cairn_blobs::put_stream_as(&store, stream(bytes[..1000].to_vec()), id, size).await.unwrap_err();
    assert!(matches!(err, cairn_blobs::UploadError::WrongBlob(_)), "{err}");
    // The blob itself: kept, with a tree that proves its chunks.
    cairn_blobs::put_stream_as(&store, stream(bytes.clone()), id, size).await.unwrap();
    assert_eq!(store.read(&id).unwrap(), bytes);
    store.possession_proof(&id, &[0, 100, 292]).unwrap();
    assert!(std::fs::read_dir(store.root().join("blobs")).unwrap().count() == 2, "no temporary files left");
}
