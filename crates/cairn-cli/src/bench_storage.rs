//! `cairn bench storage`: what a possession proof costs (generation from the stored tree, size,
//! the chain's check) for a large blob; put/get throughput of the storage data path against a
//! plain file copy through the same HTTP stack (axum server, reqwest client) on loopback; and
//! how often a provider keeping only part of a blob is caught, simulated with the chain's own
//! challenge draw against the derived probability.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use cairn_blobs::{BlobStore, Fetcher};
use cairn_types::storage::{challenged_chunks, verify_possession};
use cairn_types::{Address, ContentId, DealId, Hash32, PossessionProof, hash_domain};
use clap::Args;
use tokio::io::AsyncWriteExt as _;

#[derive(Debug, Args)]
pub(crate) struct StorageArgs {
    /// Blob size in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Proofs generated and checked.
    #[arg(long, default_value_t = 1_000)]
    proofs: u32,
    /// Chunks challenged per proof (the chain's `storage_challenges`).
    #[arg(long, default_value_t = 2)]
    challenges: u32,
    /// Transfers of each kind (the median is reported).
    #[arg(long, default_value_t = 4)]
    runs: usize,
    /// Simulated epochs per kept fraction.
    #[arg(long, default_value_t = 20_000)]
    trials: u32,
    /// Scratch directory (the blob and its copies).
    #[arg(long, default_value = "/tmp/cairn-bench-storage")]
    dir: PathBuf,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

/// A file of `size` pseudo-random bytes (BLAKE3's output stream).
fn make_blob(path: &Path, size: u64) -> Result<()> {
    use std::io::{Read as _, Write as _};
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut xof = blake3::Hasher::new().update(b"cairn bench storage").finalize_xof();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        xof.read_exact(&mut buf[..n])?;
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    Ok(())
}

pub(crate) async fn run(a: StorageArgs) -> Result<()> {
    let _ = std::fs::remove_dir_all(&a.dir);
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let size = a.size_mib << 20;
    let src = a.dir.join("blob.bin");
    eprintln!("writing a {} MiB blob", a.size_mib);
    make_blob(&src, size)?;

    // The proof.
    let store = Arc::new(BlobStore::open(a.dir.join("store"))?);
    let t = Instant::now();
    let id = store.put_file(&src)?;
    let ingest = t.elapsed();
    let (mut made, mut check, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
    let provider = Address(hash_domain("bench provider", &[]));
    for i in 0..a.proofs {
        let seed = Hash32(hash_domain("bench seed", &[&i.to_le_bytes()]));
        let picks = challenged_chunks(&seed, &DealId(seed.0), &provider, i, size, a.challenges);
        let t = Instant::now();
        let proof = store.possession_proof(&id, &picks)?;
        made.push(t.elapsed());
        let encoded = borsh::to_vec(&proof)?;
        bytes.push(encoded.len());
        let t = Instant::now();
        let decoded: PossessionProof = borsh::from_slice(&encoded)?;
        verify_possession(&id, size, &picks, &decoded).map_err(|e| anyhow::anyhow!("{e}"))?;
        check.push(t.elapsed());
    }
    made.sort();
    check.sort();
    bytes.sort();
    println!(
        "## Possession proof: {} MiB blob, {} chunks challenged, {} proofs",
        a.size_mib, a.challenges, a.proofs
    );
    println!();
    println!("| measure | median | p99 | max | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| generation from the stored tree (ms) | {:.3} | {:.3} | {:.3} | ≤ 10 |",
        ms(pct(&made, 0.5)),
        ms(pct(&made, 0.99)),
        ms(*made.last().unwrap_or(&Duration::ZERO))
    );
    println!(
        "| proof size (bytes) | {} | {} | {} | ≤ 4096 |",
        bytes[bytes.len() / 2],
        bytes[(bytes.len() - 1) * 99 / 100],
        bytes.last().copied().unwrap_or(0)
    );
    println!(
        "| chain check: decode + verify (ms) | {:.4} | {:.4} | {:.4} | ≤ 1 |",
        ms(pct(&check, 0.5)),
        ms(pct(&check, 0.99)),
        ms(*check.last().unwrap_or(&Duration::ZERO))
    );
    println!();
    println!(
        "Storing the blob (hash + tree, once per replica): {:.0} MiB/s",
        a.size_mib as f64 / ingest.as_secs_f64()
    );
    println!();

    throughput(&a, &src, size, id).await?;
    simulate(&a);
    let _ = std::fs::remove_dir_all(&a.dir);
    Ok(())
}

#[derive(Clone)]
struct Srv {
    dir: PathBuf,
    store: Arc<BlobStore>,
    size: u64,
}

/// Plain copy, server side: the body written to a file as it comes (`?durable=1`: and forced
/// to disk at the end, as Cairn's put does before it answers).
async fn plain_put(
    State(s): State<Srv>,
    axum::extract::Query(q): axum::extract::Query<std::collections::BTreeMap<String, String>>,
    body: Body,
) -> StatusCode {
    use futures::StreamExt as _;
    let Ok(mut f) = tokio::fs::File::create(s.dir.join("plain-in.bin")).await else {
        return StatusCode::INTERNAL_SERVER_ERROR;
    };
    let mut stream = body.into_data_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        if f.write_all(&chunk).await.is_err() {
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
    }
    let _ = f.flush().await;
    if q.contains_key("durable") && f.sync_all().await.is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    StatusCode::CREATED
}

/// Plain copy, server side: a file streamed out.
async fn plain_get(State(s): State<Srv>) -> axum::response::Response {
    let Ok(f) = tokio::fs::File::open(s.dir.join("blob.bin")).await else {
        return axum::response::IntoResponse::into_response(StatusCode::NOT_FOUND);
    };
    axum::response::Response::new(Body::from_stream(cairn_blobs::file_stream(f)))
}

/// Cairn's put, server side: the same streamed, hashed, checked upload a provider takes.
async fn cairn_put(State(s): State<Srv>, UrlPath(id): UrlPath<String>, body: Body) -> StatusCode {
    let Ok(id) = id.parse::<ContentId>() else { return StatusCode::BAD_REQUEST };
    match cairn_blobs::put_stream_as(&s.store, body.into_data_stream(), id, s.size).await {
        Ok(()) => StatusCode::CREATED,
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

async fn throughput(a: &StorageArgs, src: &Path, size: u64, id: ContentId) -> Result<()> {
    let up = Arc::new(BlobStore::open(a.dir.join("uploaded"))?);
    let srv = Srv { dir: a.dir.clone(), store: up.clone(), size };
    let source = BlobStore::open(a.dir.join("store"))?;
    let app = axum::Router::new()
        .route("/plain", axum::routing::put(plain_put).get(plain_get))
        .route("/deal/{id}", axum::routing::put(cairn_put))
        .with_state(srv)
        .layer(axum::extract::DefaultBodyLimit::disable())
        .merge(cairn_blobs::router(Arc::new(source)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let fetcher = Fetcher::new();
    let http = reqwest::Client::new();
    let (mut plain_up, mut cairn_up, mut plain_down, mut cairn_down) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut durable_up = Vec::new();
    // Each transfer starts with nothing waiting to be written back: the one before must not
    // slow it down.
    let settle = || {
        let _ = std::process::Command::new("sync").status();
    };
    // Runs alternate the order (plain first, then Cairn first), so neither side always meets
    // the other's write-back.
    for run in 0..a.runs {
        eprintln!("transfer run {}/{}", run + 1, a.runs);
        let order: [u8; 5] = if run % 2 == 0 { [0, 4, 1, 2, 3] } else { [1, 4, 0, 3, 2] };
        for op in order {
            settle();
            let t = Instant::now();
            match op {
                0 => {
                    fetcher.upload_file(&format!("{base}/plain"), src, |_| {}).await?;
                    plain_up.push(t.elapsed());
                    std::fs::remove_file(a.dir.join("plain-in.bin"))?;
                }
                4 => {
                    fetcher.upload_file(&format!("{base}/plain?durable=1"), src, |_| {}).await?;
                    durable_up.push(t.elapsed());
                    std::fs::remove_file(a.dir.join("plain-in.bin"))?;
                }
                1 => {
                    let path = src.to_path_buf();
                    let (got, _) =
                        tokio::task::spawn_blocking(move || crate::store::hash_file(&path)).await??;
                    fetcher.upload_file(&format!("{base}/deal/{got}"), src, |_| {}).await?;
                    cairn_up.push(t.elapsed());
                    anyhow::ensure!(up.has(&id), "the upload was not kept");
                    up.remove(&id)?;
                }
                2 => {
                    let dest = a.dir.join("plain-out.bin");
                    let mut resp = http.get(format!("{base}/plain")).send().await?;
                    let mut f = tokio::fs::File::create(&dest).await?;
                    while let Some(chunk) = resp.chunk().await? {
                        f.write_all(&chunk).await?;
                    }
                    f.flush().await?;
                    plain_down.push(t.elapsed());
                    std::fs::remove_file(&dest)?;
                }
                _ => {
                    let dest = a.dir.join("cairn-out.bin");
                    fetcher.fetch_to_file(&id, size, std::slice::from_ref(&base), &dest, &|_| {}).await?;
                    cairn_down.push(t.elapsed());
                    std::fs::remove_file(&dest)?;
                }
            }
        }
    }
    for v in [&mut plain_up, &mut durable_up, &mut cairn_up, &mut plain_down, &mut cairn_down] {
        v.sort();
    }
    let mib = (size >> 20) as f64;
    let rate = |v: &[Duration]| mib / pct(v, 0.5).as_secs_f64();
    println!("## Put and get: {} MiB on loopback, median of {} runs", a.size_mib, a.runs);
    println!();
    println!("| path | plain copy (MiB/s) | Cairn (MiB/s) | Cairn / plain | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| put: id hashed, streamed, hashed into its tree on arrival, kept only if it is the blob | {:.0} | {:.0} | {:.2} | ≥ 0.70 |",
        rate(&plain_up),
        rate(&cairn_up),
        rate(&cairn_up) / rate(&plain_up)
    );
    println!(
        "| put, against a plain copy forced to disk at the end (Cairn's put is durable before it answers) | {:.0} | {:.0} | {:.2} | |",
        rate(&durable_up),
        rate(&cairn_up),
        rate(&cairn_up) / rate(&durable_up)
    );
    println!(
        "| get: raw bytes checked in 8 MiB groups against the blob id's tree, resumable | {:.0} | {:.0} | {:.2} | ≥ 0.70 |",
        rate(&plain_down),
        rate(&cairn_down),
        rate(&cairn_down) / rate(&plain_down)
    );
    println!();
    Ok(())
}

/// A provider keeps a random `kept` share of the chunks; each epoch the chain's draw picks its
/// challenges. The share of epochs it fails, against 1 − kept^k.
fn simulate(a: &StorageArgs) {
    let size = a.size_mib << 20;
    let provider = Address(hash_domain("bench provider", &[]));
    println!(
        "## A provider keeping part of a {} MiB blob: {} simulated epochs per row, {} chunks challenged",
        a.size_mib, a.trials, a.challenges
    );
    println!();
    println!(
        "| kept | caught per epoch (simulated) | derived 1 − kept^k | epochs to 99% detection (derived) |"
    );
    println!("|---|---|---|---|");
    for kept_bps in [0u64, 5_000, 8_000, 9_000, 9_500, 9_900] {
        // Which chunks it kept: a hash of the chunk index below the threshold.
        let keeps = |c: u64| {
            let h = hash_domain("bench kept", &[&c.to_le_bytes()]);
            u64::from(u16::from_le_bytes([h[0], h[1]])) * 10_000 < kept_bps * 65_536
        };
        let mut caught = 0u32;
        for epoch in 0..a.trials {
            let seed = Hash32(hash_domain("bench epoch", &[&epoch.to_le_bytes()]));
            let picks = challenged_chunks(&seed, &DealId([7; 32]), &provider, epoch, size, a.challenges);
            if picks.iter().any(|c| !keeps(*c)) {
                caught += 1;
            }
        }
        let f = kept_bps as f64 / 10_000.0;
        let q = 1.0 - f.powi(a.challenges as i32);
        let k99 = if q >= 1.0 { 1.0 } else { ((1.0f64 - 0.99).ln() / (1.0 - q).ln()).ceil() };
        println!(
            "| {:.0}% | {:.4} | {:.4} | {} |",
            f * 100.0,
            f64::from(caught) / f64::from(a.trials),
            q,
            k99
        );
    }
    println!();
}
