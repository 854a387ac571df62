//! `cairn service …`: open a lease for a long-running service, follow it, reach it through a
//! stable local address that follows the lease when it moves, and close it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use cairn_client::Client;
use cairn_state::model::Lease;
use cairn_types::{Amount, CloseLease, Event, JobSpec, LeaseId, OpenLease, SecretKey, TxBody};
use clap::{Args, Subcommand};
use serde::Deserialize;

use crate::job::ApiArgs;
use crate::keys::KeyArgs;

/// Blocks of the spec's maximum price a lease deposits unless told otherwise.
pub(crate) const DEFAULT_DEPOSIT_BLOCKS: u128 = 3_600;

#[derive(Debug, Subcommand)]
pub(crate) enum ServiceCommand {
    /// Open a lease from a `kind: service` spec (local files are uploaded); waits until the
    /// service answers its probe path.
    Open(OpenArgs),
    /// Show a lease: provider, price, rounds paid and refunded, the SLA window, its URL.
    Status(LeaseArgs),
    /// Close a lease: the round so far is settled and the rest of the escrow refunded.
    Close(CloseArgs),
    /// Serve a local address that forwards to the lease wherever it runs (it follows moves).
    Proxy(ProxyArgs),
    /// Download the lease's volume as its provider last saved it (a tar archive), checked
    /// against the id the chain recorded; works after the lease closed too.
    Volume(VolumeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct VolumeArgs {
    /// The lease id.
    lease: LeaseId,
    /// Where to write the archive.
    #[arg(long, short)]
    out: PathBuf,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Debug, Args)]
pub(crate) struct OpenArgs {
    /// The service spec (YAML, `kind: service`).
    spec: PathBuf,
    #[command(flatten)]
    open: OpenOptions,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    api: ApiArgs,
}

/// How a lease is opened (also `cairn job submit` on a service spec).
#[derive(Debug, Clone, Args)]
pub(crate) struct OpenOptions {
    /// Escrow to deposit, e.g. `2 CRN` (default: 3600 blocks at the spec's maximum price).
    #[arg(long)]
    pub(crate) deposit: Option<Amount>,
}

#[derive(Debug, Args)]
pub(crate) struct LeaseArgs {
    /// The lease id.
    lease: LeaseId,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Debug, Args)]
pub(crate) struct CloseArgs {
    /// The lease id.
    lease: LeaseId,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ProxyArgs {
    /// The lease id.
    lease: LeaseId,
    /// Local address to serve.
    #[arg(long, default_value = "127.0.0.1:8088", value_parser = crate::parse_addr)]
    listen: SocketAddr,
    #[command(flatten)]
    api: ApiArgs,
}

/// `GET /api/leases/{id}`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct LeaseView {
    pub(crate) lease: Lease,
    pub(crate) url: Option<String>,
}

pub(crate) async fn lease_view(client: &Client, id: &LeaseId) -> Result<LeaseView> {
    client.get(&format!("/api/leases/{id}")).await.with_context(|| format!("reading lease {id}"))
}

/// An opened lease.
#[derive(Debug, Clone)]
pub(crate) struct Opened {
    pub(crate) lease: LeaseId,
    pub(crate) view: LeaseView,
    /// Milliseconds from submitting the lease to its first good answer.
    pub(crate) serving_ms: Option<u128>,
}

/// Open a lease for a resolved service spec and wait (up to `wait`) until its probe path
/// answers with a 2xx status through the provider's public address.
pub(crate) async fn open(
    client: &Client,
    key: &SecretKey,
    spec: JobSpec,
    opts: &OpenOptions,
    wait: Option<Duration>,
) -> Result<Opened> {
    let svc = spec.service.as_deref().context("not a service spec (no `service` section)")?;
    let probe_path = svc.sla.probe_path.clone();
    let deposit = match opts.deposit {
        Some(d) => d,
        None => svc.max_price_per_block.checked_mul(DEFAULT_DEPOSIT_BLOCKS).context("deposit overflows")?,
    };
    let started = Instant::now();
    let events = crate::job::send(client, key, TxBody::OpenLease(OpenLease { spec, deposit })).await?;
    let lease = events
        .iter()
        .find_map(|e| match e {
            Event::LeaseOpened { lease, .. } => Some(*lease),
            _ => None,
        })
        .context("the receipt has no lease id")?;
    let mut view = lease_view(client, &lease).await?;
    let mut serving_ms = None;
    if let Some(limit) = wait {
        let http = reqwest::Client::new();
        while started.elapsed() < limit {
            view = lease_view(client, &lease).await?;
            if let Some(url) = &view.url {
                let target = format!("{}{}", url.trim_end_matches('/'), probe_path);
                if let Ok(r) = http.get(&target).timeout(Duration::from_secs(2)).send().await
                    && r.status().is_success()
                {
                    serving_ms = Some(started.elapsed().as_millis());
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(Opened { lease, view, serving_ms })
}

/// Close a lease; returns what it paid and refunded over its life.
pub(crate) async fn close(client: &Client, key: &SecretKey, lease: LeaseId) -> Result<(Amount, Amount)> {
    let events = crate::job::send(client, key, TxBody::CloseLease(CloseLease { lease })).await?;
    events
        .iter()
        .find_map(|e| match e {
            Event::LeaseClosed { paid, refunded, .. } => Some((*paid, *refunded)),
            _ => None,
        })
        .context("the receipt does not show the lease closing")
}

fn print_status(v: &LeaseView) {
    let l = &v.lease;
    let state = match (l.closed_at, l.end) {
        (Some(h), Some(why)) => format!("closed at {h} ({why:?})"),
        _ => "open".to_string(),
    };
    println!("lease {}: {state}", l.id);
    println!("  provider {} at {} per block; moved {} time(s)", l.provider, l.price_per_block, l.migrations);
    println!(
        "  deposit {}: paid {} ({} blocks), refunded {} ({} blocks), escrow {}",
        l.deposit, l.paid, l.paid_blocks, l.refunded, l.refunded_blocks, l.escrow
    );
    println!(
        "  round {} (blocks {}..={}), SLA window: {} of {} probed rounds passed",
        l.round,
        l.round_start.saturating_add(1),
        l.round_end,
        l.window.passed,
        l.window.probed
    );
    if let Some(url) = &v.url {
        println!("  url {url}");
    }
    if let Some(vol) = &l.volume {
        println!("  volume saved at block {}: {} ({} bytes) by {}", vol.at, vol.blob, vol.size, vol.by);
    }
}

/// Download the lease's last saved volume to `out`.
async fn download_volume(api: &str, lease: &LeaseId, out: &Path) -> Result<cairn_state::model::SavedVolume> {
    if out.is_dir() {
        bail!("--out {} is a directory: name the archive file to write", out.display());
    }
    let v = lease_view(&Client::new(api), lease).await?;
    let Some(saved) = v.lease.volume else {
        if v.lease.spec.service.as_deref().is_some_and(|s| s.volume.is_some()) {
            bail!("lease {lease} has no saved volume yet (its provider saves it within seconds of a change)");
        }
        bail!("lease {lease}'s service has no volume");
    };
    cairn_blobs::Fetcher::new()
        .fetch_to_file(&saved.blob, saved.size, &[api.to_string()], out, &|_| {})
        .await
        .with_context(|| format!("downloading volume {} to {}", saved.blob, out.display()))?;
    Ok(saved)
}

pub(crate) fn run(cmd: ServiceCommand) -> Result<()> {
    let rt = crate::runtime()?;
    match cmd {
        ServiceCommand::Open(a) => rt.block_on(async {
            let client = Client::new(&a.api.api);
            let text =
                std::fs::read_to_string(&a.spec).with_context(|| format!("reading {}", a.spec.display()))?;
            let dir = a.spec.parent().map(Path::to_path_buf).unwrap_or_default();
            let key = a.key.load()?;
            let resolved = crate::manifest::resolve(&text, &dir, &client, &key).await?;
            open_and_report(&client, &key, resolved, &a.open, a.api.json).await
        }),
        ServiceCommand::Status(a) => rt.block_on(async {
            let v = lease_view(&Client::new(&a.api.api), &a.lease).await?;
            if a.api.json {
                println!("{}", serde_json::json!({ "lease": v.lease, "url": v.url }));
            } else {
                print_status(&v);
            }
            Ok(())
        }),
        ServiceCommand::Close(a) => rt.block_on(async {
            let (paid, refunded) = close(&Client::new(&a.api.api), &a.key.load()?, a.lease).await?;
            if a.api.json {
                println!("{}", serde_json::json!({ "lease": a.lease, "paid": paid, "refunded": refunded }));
            } else {
                println!("closed lease {}: paid {paid} to providers, {refunded} refunded", a.lease);
            }
            Ok(())
        }),
        ServiceCommand::Proxy(a) => rt.block_on(proxy(Client::new(&a.api.api), a.lease, a.listen)),
        ServiceCommand::Volume(a) => rt.block_on(async {
            let saved = download_volume(&a.api.api, &a.lease, &a.out).await?;
            if a.api.json {
                println!("{}", serde_json::json!({ "lease": a.lease, "volume": saved, "out": a.out }));
            } else {
                println!(
                    "volume of lease {} saved at block {} ({} bytes) written to {}",
                    a.lease,
                    saved.at,
                    saved.size,
                    a.out.display()
                );
            }
            Ok(())
        }),
    }
}

/// Check the image as a provider would, open the lease and say where it is served.
pub(crate) async fn open_and_report(
    client: &Client,
    key: &SecretKey,
    resolved: crate::manifest::Resolved,
    opts: &OpenOptions,
    json: bool,
) -> Result<()> {
    if let Some(bytes) = &resolved.workload {
        let wasm =
            resolved.spec.service.as_deref().is_some_and(|s| s.runtime == cairn_types::ServiceRuntime::Wasm);
        if wasm {
            crate::job::check_wasm(bytes)?;
        } else {
            crate::job::check_image(bytes)?;
        }
    }
    let opened = open(client, key, resolved.spec, opts, Some(Duration::from_secs(60))).await?;
    let l = &opened.view.lease;
    if json {
        println!(
            "{}",
            serde_json::json!({ "lease": opened.lease, "provider": l.provider, "price_per_block": l.price_per_block,
                "url": opened.view.url, "serving_ms": opened.serving_ms.map(|m| m as u64) })
        );
        return Ok(());
    }
    println!("opened lease {} on {} at {} per block", opened.lease, l.provider, l.price_per_block);
    match (opened.serving_ms, &opened.view.url) {
        (Some(ms), Some(url)) => println!("serving at {url} ({ms} ms after submitting)"),
        (None, Some(url)) => {
            println!("not answering yet at {url}; see `cairn service status {}`", opened.lease)
        }
        _ => {}
    }
    println!(
        "a stable local address that follows the lease: cairn service proxy {} --api {}",
        opened.lease,
        client.base()
    );
    Ok(())
}

/// Where the lease runs now, refreshed when the cached address fails.
struct Target {
    client: Client,
    lease: LeaseId,
    url: Mutex<Option<String>>,
}

impl Target {
    async fn current(&self, refresh: bool) -> Option<String> {
        if !refresh && let Some(u) = self.url.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Some(u);
        }
        let v = lease_view(&self.client, &self.lease).await.ok()?;
        if v.lease.closed_at.is_some() {
            return None;
        }
        *self.url.lock().unwrap_or_else(|p| p.into_inner()) = v.url.clone();
        v.url
    }
}

async fn proxy(client: Client, lease: LeaseId, listen: SocketAddr) -> Result<()> {
    use axum::body::{Body, Bytes};
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use axum::response::{IntoResponse, Response};

    let target = Arc::new(Target { client, lease, url: Mutex::new(None) });
    if target.current(true).await.is_none() {
        bail!("lease {lease} is not open");
    }
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let handler = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        let (target, http) = (target.clone(), http.clone());
        async move {
            let path = uri
                .path_and_query()
                .map(|p| p.as_str().trim_start_matches('/').to_string())
                .unwrap_or_default();
            for refresh in [false, true] {
                let Some(base) = target.current(refresh).await else { break };
                let mut req = http.request(method.clone(), format!("{}/{path}", base.trim_end_matches('/')));
                for (k, v) in &headers {
                    if !matches!(k.as_str(), "host" | "connection" | "transfer-encoding") {
                        req = req.header(k, v);
                    }
                }
                match req.body(body.clone()).send().await {
                    Ok(r) if r.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE || refresh => {
                        let mut out = Response::builder().status(r.status().as_u16());
                        for (k, v) in r.headers() {
                            if !matches!(k.as_str(), "connection" | "transfer-encoding" | "content-length") {
                                out = out.header(k, v);
                            }
                        }
                        let bytes = r.bytes().await.unwrap_or_default();
                        return out
                            .body(Body::from(bytes))
                            .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response());
                    }
                    // Moved, or its provider is gone: look the lease up again and retry once.
                    _ => continue,
                }
            }
            (StatusCode::BAD_GATEWAY, "the lease's provider did not answer\n").into_response()
        }
    };
    let app = axum::Router::new().fallback(handler);
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
    println!("forwarding http://{listen}/ to lease {lease} (following it if it moves)");
    axum::serve(listener, app).await?;
    Ok(())
}

/// The devnet's website: the `hello-service` example, opened as is.
const WEBSITE: &str = include_str!("../../../examples/hello-service/service.yaml");
const WEBSITE_INDEX: &str = include_str!("../../../examples/hello-service/index.html");
const WEBSITE_HEALTH: &str = include_str!("../../../examples/hello-service/health");

/// The demo opens the example website where containers run (its image, `busybox.tar`, is in
/// `dir`), and waits for it to answer.
pub(crate) async fn demo_open(
    client: &Client,
    key: &SecretKey,
    dir: &Path,
    json: bool,
) -> Result<Option<Opened>> {
    if !dir.join("busybox.tar").is_file() {
        return Ok(None);
    }
    std::fs::write(dir.join("index.html"), WEBSITE_INDEX)?;
    std::fs::write(dir.join("health"), WEBSITE_HEALTH)?;
    let resolved = crate::manifest::resolve(WEBSITE, dir, client, key).await.context("demo service")?;
    let opened =
        open(client, key, resolved.spec, &OpenOptions { deposit: None }, Some(Duration::from_secs(60)))
            .await
            .context("opening the demo service's lease")?;
    let url = opened.view.url.clone().unwrap_or_default();
    let line = match opened.serving_ms {
        Some(ms) => {
            format!("[website] lease {}: serving {url} {ms} ms after submitting", opened.lease.short())
        }
        None => format!("[website] lease {}: not answering at {url} after 60 s", opened.lease.short()),
    };
    crate::devnet::say(json, &line);
    Ok(Some(opened))
}

/// The demo's website at the end: fetch its page once more, close the lease and report what
/// the probes saw and what was paid and refunded.
pub(crate) async fn demo_finish(
    client: &Client,
    key: &SecretKey,
    opened: &Opened,
    json: bool,
) -> Result<(bool, serde_json::Value)> {
    let v = lease_view(client, &opened.lease).await?;
    let page = match &v.url {
        Some(url) => reqwest::get(url.clone()).await.ok().filter(|r| r.status().is_success()),
        None => None,
    };
    let page = match page {
        Some(r) => r.text().await.unwrap_or_default(),
        None => String::new(),
    };
    let served = opened.serving_ms.is_some() && page.contains("Hello from a Cairn lease");
    let (paid, refunded) = close(client, key, opened.lease).await?;
    let l = lease_view(client, &opened.lease).await?.lease;
    crate::devnet::say(
        json,
        &format!(
            "[website] {} probe round(s) ended: {} block(s) paid, {} refunded; closed: {paid} paid, {refunded} refunded",
            l.round, l.paid_blocks, l.refunded_blocks
        ),
    );
    if let Some(vol) = &l.volume {
        crate::devnet::say(
            json,
            &format!(
                "[website] its volume as last saved (block {}, {} bytes): cairn service volume {} --out state.tar",
                vol.at, vol.size, l.id
            ),
        );
    }
    Ok((
        served,
        serde_json::json!({
            "lease": opened.lease, "url": v.url, "serving_ms": opened.serving_ms.map(|m| m as u64),
            "provider": l.provider, "price_per_block": l.price_per_block, "rounds": l.round,
            "paid_blocks": l.paid_blocks, "refunded_blocks": l.refunded_blocks, "paid": paid,
            "refunded": refunded, "page_served": served, "volume": l.volume,
        }),
    ))
}
