//! The provider's service role: run the leases the chain gives it, and expose each at
//! `<endpoint>/lease/<lease id>/…`.
//!
//! Every second (and on lease events) it reads its open leases from the node. A lease without a
//! running service is started: its image and inputs fetched and verified, then the container
//! started and waited on until it listens. A service that stops is started again (with a
//! back-off); one whose lease closed or moved elsewhere is stopped. Requests to
//! `/lease/<id>/<path>` are forwarded to the service as they came (method, path, query,
//! headers, body); probes arrive the same way as any client's requests. A service's volume
//! (see [`crate::volumes`]) starts from the chain's last saved copy.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use cairn_runtime::container::service::{ServiceHost, ServiceRun};
use cairn_state::model::Lease;
use cairn_types::{ContentId, LeaseId};
use serde::Deserialize;
use tracing::{info, warn};

use crate::daemon::Ctx;
use crate::{Error, Result};

/// Largest request body forwarded to a service.
pub(crate) const MAX_BODY: usize = 16 << 20;
/// How long a service has to answer a forwarded request.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);

/// A WASM service: its module (prepared in the WASM executor) and what each request sees.
struct WasmService {
    module: cairn_types::ContentId,
    inputs: std::path::PathBuf,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    memory_mb: u64,
    fuel: u64,
    wall_ms: u64,
}

/// Services this provider runs.
pub(crate) struct Services {
    host: ServiceHost,
    /// WASM services, run per request by this executor.
    wasm_exec: Arc<cairn_runtime::WasmExecutor>,
    wasm: Mutex<BTreeMap<LeaseId, Arc<WasmService>>>,
    wasm_dir: std::path::PathBuf,
    http: reqwest::Client,
    /// Per lease: failed starts in a row and when to try again.
    retry: Mutex<BTreeMap<LeaseId, (u32, Instant)>>,
    /// Leases being started now.
    starting: Mutex<std::collections::BTreeSet<LeaseId>>,
    /// Per lease with a volume: what was last saved of it.
    saved: Mutex<BTreeMap<LeaseId, crate::volumes::Saved>>,
}

impl Services {
    pub(crate) fn new(host: ServiceHost, wasm_exec: Arc<cairn_runtime::WasmExecutor>) -> Result<Self> {
        let wasm_dir = host.dir().join("wasm");
        let _ = std::fs::remove_dir_all(&wasm_dir);
        let http = reqwest::Client::builder()
            .timeout(UPSTREAM_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Config(format!("http client: {e}")))?;
        Ok(Services {
            host,
            wasm_exec,
            wasm: Mutex::default(),
            wasm_dir,
            http,
            retry: Mutex::default(),
            starting: Mutex::default(),
            saved: Mutex::default(),
        })
    }

    pub(crate) fn host(&self) -> &ServiceHost {
        &self.host
    }

    /// The leases with a volume here, and what was last saved of each.
    pub(crate) fn volumes(&self) -> BTreeMap<LeaseId, crate::volumes::Saved> {
        lock(&self.saved).clone()
    }

    /// Note a state of a lease's volume not to save again: saved as (or found unchanged
    /// from) `blob`, or `None` when it could not be saved.
    pub(crate) fn volume_seen(&self, lease: &LeaseId, fingerprint: [u8; 32], blob: Option<ContentId>) {
        if let Some(s) = lock(&self.saved).get_mut(lease) {
            s.fingerprint = Some(fingerprint);
            s.blob = blob.or(s.blob);
        }
    }

    fn addr(&self, lease: &LeaseId) -> Option<SocketAddr> {
        self.host.addr(&lease.to_string())
    }

    fn running(&self, lease: &LeaseId) -> bool {
        self.addr(lease).is_some() || lock(&self.wasm).contains_key(lease)
    }

    /// Stop a service, whichever runtime runs it.
    fn stop(&self, lease: &LeaseId) {
        lock(&self.saved).remove(lease);
        if lock(&self.wasm).remove(lease).is_some() {
            let _ = std::fs::remove_dir_all(self.wasm_dir.join(lease.to_string()));
        }
        self.host.stop(&lease.to_string());
    }

    /// Every service started here and not stopped.
    fn names(&self) -> Vec<LeaseId> {
        let mut out: Vec<LeaseId> = lock(&self.wasm).keys().copied().collect();
        out.extend(self.host.names().iter().filter_map(|n| n.parse::<LeaseId>().ok()));
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Deserialize)]
struct LeasesView {
    leases: Vec<Lease>,
}

/// Keep the running services in step with the chain, forever.
pub(crate) async fn run(ctx: Arc<Ctx>) {
    let Some(svc) = ctx.services.clone() else { return };
    loop {
        reconcile(&ctx, &svc).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// On SIGTERM or SIGINT: stop every service (containers, namespaces) and exit. A provider
/// killed outright leaves them to its next start, which removes them.
pub(crate) async fn stop_on_signal(ctx: Arc<Ctx>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Some(svc) = ctx.services.clone() else { return };
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    info!("stopping: saving volumes and shutting this provider's services down");
    let _ = tokio::time::timeout(Duration::from_secs(20), crate::volumes::save_changed(&ctx, &svc)).await;
    let _ = tokio::task::spawn_blocking(move || svc.host.stop_all()).await;
    std::process::exit(0);
}

async fn reconcile(ctx: &Arc<Ctx>, svc: &Arc<Services>) {
    let me = ctx.me;
    let leases = match ctx.client.get::<LeasesView>(&format!("/api/providers/{me}/leases")).await {
        Ok(v) => v.leases,
        Err(e) => {
            warn!(error = %e, "cannot list this provider's leases; running services go on");
            return;
        }
    };
    let want: BTreeMap<LeaseId, Lease> = leases.into_iter().map(|l| (l.id, l)).collect();
    for id in svc.names() {
        if !want.contains_key(&id) {
            info!(lease = %id.short(), "lease closed or moved; stopping its service");
            let s = svc.clone();
            let _ = tokio::task::spawn_blocking(move || s.stop(&id)).await;
        }
    }
    for l in want.into_values() {
        if svc.running(&l.id) || lock(&svc.starting).contains(&l.id) {
            continue;
        }
        if lock(&svc.retry).get(&l.id).is_some_and(|(_, at)| Instant::now() < *at) {
            continue;
        }
        lock(&svc.starting).insert(l.id);
        let (c, s) = (ctx.clone(), svc.clone());
        tokio::spawn(async move {
            let id = l.id;
            let started = Instant::now();
            match start(&c, &s, l).await {
                Ok(at) => {
                    lock(&s.retry).remove(&id);
                    info!(lease = %id.short(), at, ms = started.elapsed().as_millis() as u64, "service up");
                }
                Err(e) => {
                    let mut retry = lock(&s.retry);
                    let tries = retry.get(&id).map_or(0, |(n, _)| *n).saturating_add(1);
                    let wait = Duration::from_secs(1u64 << tries.min(5));
                    retry.insert(id, (tries, Instant::now() + wait));
                    warn!(lease = %id.short(), error = %e, tries, "service did not start; will retry");
                }
            }
            lock(&s.starting).remove(&id);
        });
    }
}

/// Start a lease's service; returns where it runs (an address, or `wasm`).
async fn start(ctx: &Ctx, svc: &Arc<Services>, l: Lease) -> Result<String> {
    let spec = &l.spec;
    let section = spec.service.as_deref().ok_or_else(|| Error::Config("not a service spec".into()))?;
    let workload = crate::pipeline::fetch(ctx, spec, &spec.workload, None).await?;
    let mut inputs = Vec::new();
    for i in &spec.inputs {
        inputs.push((i.name.clone(), crate::pipeline::fetch(ctx, spec, &i.id, Some(i.size)).await?));
    }
    let id = spec.workload;
    if section.runtime == cairn_types::ServiceRuntime::Wasm {
        let dir = svc.wasm_dir.join(l.id.to_string()).join("in");
        let exec = svc.wasm_exec.clone();
        let d = dir.clone();
        tokio::task::spawn_blocking(move || {
            use cairn_runtime::Executor as _;
            if !exec.is_prepared(&id) {
                exec.prepare_file(&id, &workload)?;
            }
            let _ = std::fs::remove_dir_all(&d);
            cairn_runtime::container::link_inputs(&d, &inputs)?;
            Ok::<_, Error>(())
        })
        .await
        .map_err(|e| Error::Config(format!("service thread: {e}")))??;
        let w = WasmService {
            module: id,
            inputs: dir,
            args: spec.args.clone(),
            env: spec.env.clone(),
            memory_mb: spec.resources.memory_mb,
            fuel: spec.limits.fuel,
            wall_ms: spec.limits.wall_ms,
        };
        lock(&svc.wasm).insert(l.id, Arc::new(w));
        return Ok("wasm".into());
    }
    let images =
        ctx.container.clone().ok_or_else(|| Error::Config("this provider runs no containers".into()))?;
    // The volume starts from the chain's last saved copy (a lease that moved here) or empty.
    let volume = match &section.volume {
        Some(v) => {
            // A restart here keeps the volume it had; only a new one is restored.
            let here = svc.host.has_volume(&l.id.to_string());
            let restore = match &l.volume {
                Some(saved) if !here => {
                    Some(crate::pipeline::fetch(ctx, spec, &saved.blob, Some(saved.size)).await?)
                }
                _ => None,
            };
            lock(&svc.saved).entry(l.id).or_insert_with(|| crate::volumes::Saved {
                fingerprint: None,
                blob: l.volume.as_ref().map(|s| s.blob),
                max_archive: v.max_archive_bytes(),
            });
            Some(cairn_runtime::container::volume::VolumeRun {
                path: v.path.clone(),
                max_bytes: v.max_bytes(),
                restore,
            })
        }
        None => None,
    };
    let run = ServiceRun {
        name: l.id.to_string(),
        image: id,
        args: spec.args.clone(),
        env: spec.env.clone(),
        inputs,
        port: section.port,
        memory_mb: spec.resources.memory_mb,
        cpu_millis: spec.resources.cpu_millis,
        network: spec.network,
        volume,
    };
    let s = svc.clone();
    let addr = tokio::task::spawn_blocking(move || {
        use cairn_runtime::Executor as _;
        if !images.is_prepared(&id) {
            images.prepare_file(&id, &workload)?;
        }
        Ok::<_, Error>(s.host.start(&run)?)
    })
    .await
    .map_err(|e| Error::Config(format!("service thread: {e}")))??;
    Ok(addr.to_string())
}

/// Answer a request with a WASM service (one run of its module).
async fn serve_wasm(
    svc: &Services,
    w: Arc<WasmService>,
    method: &Method,
    rest: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let exec = svc.wasm_exec.clone();
    let (method, path, query) =
        (method.to_string(), format!("/{rest}"), uri.query().unwrap_or_default().to_string());
    let headers: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| !HOP.contains(&k.as_str()))
        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let reply = tokio::task::spawn_blocking(move || {
        exec.serve(&cairn_runtime::CgiRequest {
            module: w.module,
            method: &method,
            path: &path,
            query: &query,
            headers: &headers,
            body: &body,
            args: &w.args,
            env: &w.env,
            inputs: &w.inputs,
            memory_mb: w.memory_mb,
            fuel: w.fuel,
            wall_ms: w.wall_ms,
        })
    })
    .await;
    match reply {
        Ok(Ok(r)) => {
            let mut out = Response::builder().status(r.status);
            for (k, v) in &r.headers {
                out = out.header(k.as_str(), v.as_str());
            }
            out.body(Body::from(r.body)).unwrap_or_else(|_| {
                error(StatusCode::BAD_GATEWAY, "bad_upstream", "the service's answer could not be relayed")
            })
        }
        Ok(Err(e)) => error(StatusCode::BAD_GATEWAY, "service_failed", &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e.to_string()),
    }
}

/// Headers that belong to one hop, not to the request.
const HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
];

pub(crate) fn router(svc: Arc<Services>) -> axum::Router {
    axum::Router::new()
        .route("/lease/{id}", axum::routing::any(forward_root))
        .route("/lease/{id}/", axum::routing::any(forward_root))
        .route("/lease/{id}/{*rest}", axum::routing::any(forward))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(svc)
}

async fn forward_root(
    State(svc): State<Arc<Services>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    relay(&svc, &id, "", method, &uri, headers, body).await
}

async fn forward(
    State(svc): State<Arc<Services>>,
    Path((id, rest)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    relay(&svc, &id, &rest, method, &uri, headers, body).await
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": code, "message": message }))).into_response()
}

async fn relay(
    svc: &Services,
    id: &str,
    rest: &str,
    method: Method,
    uri: &Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(lease) = id.parse::<LeaseId>() else {
        return error(StatusCode::BAD_REQUEST, "bad_lease_id", "the path must be /lease/<lease id>/…");
    };
    let wasm = lock(&svc.wasm).get(&lease).cloned();
    if let Some(w) = wasm {
        return serve_wasm(svc, w, &method, rest, uri, &headers, body).await;
    }
    let Some(addr) = svc.addr(&lease) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "lease_not_served",
            "this provider does not serve that lease now",
        );
    };
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let url = format!("http://{addr}/{rest}{query}");
    let mut req = svc.http.request(method, &url);
    for (k, v) in &headers {
        if !HOP.contains(&k.as_str()) {
            req = req.header(k, v);
        }
    }
    let mut resp = match req.body(body).send().await {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_GATEWAY,
                "service_unreachable",
                &format!("the service did not answer: {e}"),
            );
        }
    };
    let mut out = Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers() {
        if !HOP.contains(&k.as_str()) && k.as_str() != "content-length" {
            out = out.header(k, v);
        }
    }
    let mut data = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) if data.len().saturating_add(c.len()) <= MAX_BODY * 4 => data.extend_from_slice(&c),
            Ok(Some(_)) => {
                return error(
                    StatusCode::BAD_GATEWAY,
                    "answer_too_large",
                    "the service's answer is over 64 MiB",
                );
            }
            Ok(None) => break,
            Err(e) => {
                return error(
                    StatusCode::BAD_GATEWAY,
                    "service_unreachable",
                    &format!("the service's answer broke off: {e}"),
                );
            }
        }
    }
    out.body(Body::from(data)).unwrap_or_else(|_| {
        error(StatusCode::BAD_GATEWAY, "bad_upstream", "the service's answer could not be relayed")
    })
}
