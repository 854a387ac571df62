//! `cairn store …`: keep a file on the network under a storage deal, fetch it back verified, and
//! follow a deal's replicas and proofs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use cairn_client::Client;
use cairn_state::model::Deal;
use cairn_types::storage::{GIB, replica_epoch_price, storage_limits};
use cairn_types::{Address, Amount, ContentId, CreateStorageDeal, DealId, Event, Region, TxBody};
use clap::{Args, Subcommand};
use serde::Deserialize;

use crate::job::{ApiArgs, progress_bar};
use crate::keys::KeyArgs;

#[derive(Debug, Subcommand)]
pub(crate) enum StoreCommand {
    /// Store a file: a deal places its replicas, the file is uploaded to one and copied by the
    /// others, and the command waits until every replica has proven it holds the file.
    Put(PutArgs),
    /// Fetch a stored file (by deal id or blob id) from any replica, verified chunk by chunk;
    /// an interrupted fetch resumes.
    Get(GetArgs),
    /// Show a deal: its replicas, the epochs each proved, what was paid and refunded.
    Status(StatusArgs),
    /// List the deals a key made.
    Ls(LsArgs),
}

#[derive(Debug, Args)]
pub(crate) struct PutArgs {
    /// The file.
    file: PathBuf,
    /// Copies to keep.
    #[arg(long, default_value_t = 2)]
    replicas: u32,
    /// Epochs to keep it.
    #[arg(long, default_value_t = 10)]
    epochs: u32,
    /// Most paid per GiB per replica per epoch, e.g. 0.002CRN.
    #[arg(long)]
    max_price: Amount,
    /// Allowed regions (repeat; any when absent).
    #[arg(long = "region")]
    regions: Vec<Region>,
    /// No two replicas with one operator.
    #[arg(long)]
    distinct_operators: bool,
    /// Return once the file is uploaded, without waiting for the replicas' first proofs.
    #[arg(long)]
    no_wait: bool,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Debug, Args)]
pub(crate) struct GetArgs {
    /// A deal id, or a stored blob's id.
    id: String,
    /// Where to write the file (default: the blob id in the current directory).
    #[arg(long, short)]
    out: Option<PathBuf>,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The deal id.
    deal: DealId,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Debug, Args)]
pub(crate) struct LsArgs {
    /// The client whose deals to list (default: the key's address).
    #[arg(long)]
    client: Option<Address>,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    api: ApiArgs,
}

/// One replica as the node shows it.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ReplicaView {
    pub(crate) provider: Address,
    pub(crate) endpoint: Option<String>,
    pub(crate) proven_epochs: u32,
    pub(crate) proven: bool,
}

/// `GET /api/deals/{id}`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct DealView {
    pub(crate) deal: Deal,
    pub(crate) replicas: Vec<ReplicaView>,
}

#[derive(Debug, Deserialize)]
struct BlobReplicas {
    size: Option<u64>,
    endpoints: Vec<String>,
}

pub(crate) async fn deal_view(client: &Client, id: &DealId) -> Result<DealView> {
    client.get(&format!("/api/deals/{id}")).await.with_context(|| format!("reading deal {id}"))
}

/// The BLAKE3 id and size of a file, read once.
pub(crate) fn hash_file(path: &Path) -> Result<(ContentId, u64)> {
    let size = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
    // Memory-mapped and hashed on every core: a GiB takes a fraction of a second.
    let mut h = blake3::Hasher::new();
    h.update_mmap_rayon(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((ContentId(*h.finalize().as_bytes()), size))
}

/// Create the deal for `file`, upload it, and (unless `no_wait`) wait for every replica's first
/// proof. Returns the deal.
pub(crate) async fn put(client: &Client, a: &PutArgs, quiet: bool) -> Result<DealView> {
    let key = a.key.load()?;
    let file = a.file.clone();
    let (blob, size) = tokio::task::spawn_blocking(move || hash_file(&file)).await??;
    if size == 0 {
        bail!("{} is empty: there is nothing to store", a.file.display());
    }
    if size > storage_limits::MAX_DEAL_BYTES {
        bail!(
            "{} is {size} bytes; a deal stores at most {} bytes",
            a.file.display(),
            storage_limits::MAX_DEAL_BYTES
        );
    }
    let reserve = replica_epoch_price(a.max_price, size).context("the price overflows")?;
    let escrow = reserve
        .checked_mul(u128::from(a.replicas))
        .and_then(|v| v.checked_mul(u128::from(a.epochs)))
        .context("the deal's escrow overflows")?;
    if !quiet {
        eprintln!(
            "storing {} ({size} bytes, blob {}) on {} replicas for {} epochs; escrow at most {escrow}",
            a.file.display(),
            blob.short(),
            a.replicas,
            a.epochs
        );
    }
    let events = crate::job::send(
        client,
        &key,
        TxBody::CreateStorageDeal(CreateStorageDeal {
            blob,
            size,
            replicas: a.replicas,
            epochs: a.epochs,
            max_price_per_gib_epoch: a.max_price,
            regions: a.regions.clone(),
            distinct_operators: a.distinct_operators,
        }),
    )
    .await
    .context("creating the storage deal")?;
    let deal = events
        .iter()
        .find_map(|e| match e {
            Event::DealCreated { deal, .. } => Some(*deal),
            _ => None,
        })
        .context("the chain took the deal but reported no id")?;
    let view = deal_view(client, &deal).await?;
    upload(&view, &a.file, quiet).await?;
    if a.no_wait {
        return Ok(view);
    }
    wait_for_proofs(client, &deal, &a.file, quiet).await
}

/// Upload the file to the deal's first replica that takes it (the others copy it from there).
/// Replicas that cannot be reached yet (a provider starting or restarting) are tried again for
/// about half a minute.
async fn upload(view: &DealView, file: &Path, quiet: bool) -> Result<()> {
    let fetcher = cairn_blobs::Fetcher::new();
    let mut last = None;
    let mut delay = Duration::from_millis(500);
    for round in 0..6 {
        for r in &view.replicas {
            let Some(endpoint) = &r.endpoint else { continue };
            let url = format!("{}/deals/{}/blob", endpoint.trim_end_matches('/'), view.deal.id);
            let bar = progress_bar(quiet, "uploading {bar:30} {bytes}/{total_bytes} {bytes_per_sec}");
            bar.set_length(view.deal.size);
            let b = bar.clone();
            match fetcher.upload_file(&url, file, move |n| b.set_position(n)).await {
                Ok(()) => {
                    bar.finish_and_clear();
                    return Ok(());
                }
                Err(e) => {
                    bar.abandon();
                    if !quiet {
                        eprintln!("replica {} did not take the upload: {e}", r.provider);
                    }
                    last = Some(e);
                }
            }
        }
        if round < 5 {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(8));
        }
    }
    match last {
        Some(e) => Err(e).context("no replica took the upload"),
        None => bail!("the deal's replicas have no endpoints"),
    }
}

/// Wait until every replica proved the deal's current epoch; a replica that has not copied the
/// file from the others after a while is sent it directly.
async fn wait_for_proofs(client: &Client, deal: &DealId, file: &Path, quiet: bool) -> Result<DealView> {
    let bar = progress_bar(quiet, "{spinner} {msg}");
    bar.enable_steady_tick(Duration::from_millis(200));
    let started = Instant::now();
    let mut nudged = false;
    loop {
        let v = deal_view(client, deal).await?;
        let proven = v.replicas.iter().filter(|r| r.proven_epochs > 0).count();
        bar.set_message(format!("{proven}/{} replicas proved they hold it", v.deal.replicas));
        if v.deal.ended {
            bar.finish_and_clear();
            bail!("the deal ended before its replicas proved the file (refunded: {})", v.deal.refunded);
        }
        if proven as u64 >= u64::from(v.deal.replicas) {
            bar.finish_and_clear();
            return Ok(v);
        }
        // A replica that has neither proven nor copied the file a few seconds on is sent it
        // directly (its source may be slow, or gone).
        if !nudged && started.elapsed() > Duration::from_secs(5) {
            nudged = true;
            let fetcher = cairn_blobs::Fetcher::new();
            let http = reqwest::Client::new();
            for r in v.replicas.iter().filter(|r| r.proven_epochs == 0) {
                let Some(e) = &r.endpoint else { continue };
                let base = e.trim_end_matches('/');
                let has = http
                    .head(format!("{base}/blobs/{}", v.deal.blob))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if !has {
                    let _ = fetcher.upload_file(&format!("{base}/deals/{deal}/blob"), file, |_| {}).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Where blob `id` can be fetched: the replicas of the deal `id` names, or of any running deal
/// storing the blob `id`; with its id and size.
async fn sources(client: &Client, id: &str) -> Result<(ContentId, u64, Vec<String>)> {
    if let Ok(deal) = id.parse::<DealId>()
        && let Ok(v) = client.get::<DealView>(&format!("/api/deals/{deal}")).await
    {
        let mut reps = v.replicas.clone();
        // Replicas that proved the blob first.
        reps.sort_by_key(|r| std::cmp::Reverse(r.proven_epochs));
        let endpoints = reps.into_iter().filter_map(|r| r.endpoint).collect();
        return Ok((v.deal.blob, v.deal.size, endpoints));
    }
    let blob: ContentId = id.parse().with_context(|| format!("{id:?} is not a deal id or blob id"))?;
    let r: BlobReplicas = client.get(&format!("/api/blobs/{blob}/replicas")).await?;
    let size = r.size.with_context(|| format!("no running deal stores blob {blob}"))?;
    Ok((blob, size, r.endpoints))
}

pub(crate) async fn get(
    client: &Client,
    id: &str,
    out: Option<PathBuf>,
    quiet: bool,
) -> Result<(PathBuf, u64)> {
    let (blob, size, endpoints) = sources(client, id).await?;
    if endpoints.is_empty() {
        bail!("no replica of blob {blob} can be reached");
    }
    let dest = out.unwrap_or_else(|| PathBuf::from(blob.to_hex()));
    let bar = progress_bar(quiet, "fetching {bar:30} {bytes}/{total_bytes} {bytes_per_sec}");
    bar.set_length(size);
    let b = bar.clone();
    let progress = move |n: u64| b.set_position(n);
    cairn_blobs::Fetcher::new()
        .fetch_to_file(&blob, size, &endpoints, &dest, &progress)
        .await
        .with_context(|| format!("fetching blob {blob}"))?;
    bar.finish_and_clear();
    Ok((dest, size))
}

fn print_deal(v: &DealView) {
    let d = &v.deal;
    println!("deal      {}", d.id);
    println!("blob      {} ({} bytes, {:.3} GiB)", d.blob, d.size, d.size as f64 / GIB as f64);
    let state = if d.ended { "ended".to_string() } else { format!("epoch {} of {}", d.epoch, d.epochs) };
    println!("state     {state}");
    println!("escrow    {}   paid {}   refunded {}", d.escrow, d.paid, d.refunded);
    println!("replicas  {} wanted", d.replicas);
    for r in &v.replicas {
        println!(
            "  {}  {}  proved {} epochs{}",
            r.provider,
            r.endpoint.as_deref().unwrap_or("-"),
            r.proven_epochs,
            if r.proven { " (this epoch too)" } else { "" }
        );
    }
    if !d.failed.is_empty() {
        println!("failed    {}", d.failed.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "));
    }
}

pub(crate) fn run(cmd: StoreCommand) -> Result<()> {
    let rt = crate::runtime()?;
    match cmd {
        StoreCommand::Put(a) => rt.block_on(async {
            let client = Client::new(&a.api.api);
            let v = put(&client, &a, a.api.json).await?;
            if a.api.json {
                println!(
                    "{}",
                    serde_json::json!({ "deal": v.deal.id, "blob": v.deal.blob, "size": v.deal.size })
                );
            } else {
                println!("stored {} as deal {}", a.file.display(), v.deal.id);
                println!("fetch it with: cairn store get {}", v.deal.id);
            }
            Ok(())
        }),
        StoreCommand::Get(a) => rt.block_on(async {
            let client = Client::new(&a.api.api);
            let (path, size) = get(&client, &a.id, a.out, a.api.json).await?;
            if a.api.json {
                println!("{}", serde_json::json!({ "path": path, "size": size }));
            } else {
                println!("wrote {} ({size} bytes, verified)", path.display());
            }
            Ok(())
        }),
        StoreCommand::Status(a) => rt.block_on(async {
            let v = deal_view(&Client::new(&a.api.api), &a.deal).await?;
            if a.api.json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "deal": v.deal }))?);
            } else {
                print_deal(&v);
            }
            Ok(())
        }),
        StoreCommand::Ls(a) => rt.block_on(async {
            let who = match a.client {
                Some(c) => c,
                None => a.key.load()?.address(),
            };
            #[derive(Deserialize)]
            struct List {
                deals: Vec<DealView>,
            }
            let l: List = Client::new(&a.api.api).get(&format!("/api/clients/{who}/deals")).await?;
            for v in &l.deals {
                let d = &v.deal;
                let proven = v.replicas.iter().filter(|r| r.proven_epochs > 0).count();
                let state =
                    if d.ended { "ended".to_string() } else { format!("epoch {}/{}", d.epoch, d.epochs) };
                println!(
                    "{}  {}  {:>12} B  {}/{} replicas  {state}",
                    d.id,
                    d.blob.short(),
                    d.size,
                    proven,
                    d.replicas
                );
            }
            Ok(())
        }),
    }
}
