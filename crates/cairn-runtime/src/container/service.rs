//! Long-running services (`kind: service`) in the container sandbox, reachable over one link.
//!
//! A service runs like a batch container (read-only image root, `/in` read-only, `/tmp` a small
//! tmpfs, an unprivileged user, no capabilities, memory/pids/CPU cgroups) but without `/out`
//! and without a wall-clock cap, in a network namespace of its own whose only link is a veth
//! pair to the host: the host side `10.89.a.b+1/30`, the service `10.89.a.b+2/30`, no default
//! route. So the service can answer the provider's proxy and reach nothing beyond that /30.
//! The provider forwards `/lease/<id>/…` to it.
//!
//! [`ServiceHost::start`] returns once the service accepts TCP connections on its port (or
//! fails with its standard error when it exits or does not listen within the start timeout).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_types::{ContentId, hash_domain};

use super::{ContainerExecutor, PIDS_LIMIT, TMP_MB, ip, oci, volume};
use crate::{Result, RunError, io, lock};

/// How long a service has to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// The services' address block: one /30 per service.
const NET: [u8; 2] = [10, 89];
const SLOTS: u32 = 16_384;

/// What to run for one lease.
#[derive(Clone, Debug)]
pub struct ServiceRun {
    /// A name unique on this host for the service's life (the lease id).
    pub name: String,
    /// The image (prepared through the container executor).
    pub image: ContentId,
    /// Program and arguments.
    pub args: Vec<String>,
    /// Environment (beyond `PATH`, `HOME`, `LANG`, `TZ`).
    pub env: BTreeMap<String, String>,
    /// Files to place under `/in`, by name.
    pub inputs: Vec<(String, PathBuf)>,
    /// The port it listens on.
    pub port: u16,
    /// Memory cap in MiB.
    pub memory_mb: u64,
    /// CPU cap in thousandths of a core.
    pub cpu_millis: u64,
    /// Outbound network (user-mode NAT), beside the link to the provider.
    pub network: bool,
    /// A writable volume kept across restarts of the service on this host.
    pub volume: Option<super::volume::VolumeRun>,
}

struct Instance {
    child: Option<Child>,
    egress: Option<super::egress::Egress>,
    id: String,
    netns: String,
    bundle: PathBuf,
    addr: SocketAddr,
}

/// Starts, watches and stops services.
#[derive(Debug)]
pub struct ServiceHost {
    images: Arc<ContainerExecutor>,
    dir: PathBuf,
    state_dir: PathBuf,
    tag: String,
    running: Mutex<BTreeMap<String, Instance>>,
    /// Volumes by service name: they outlive a restart of the service, not its stop.
    volumes: Mutex<BTreeMap<String, PathBuf>>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance").field("id", &self.id).field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// IPv4 addresses in use on this host's links.
fn used_addresses() -> Vec<Ipv4Addr> {
    let Ok(out) = Command::new("ip").args(["-o", "-4", "addr", "show"]).output() else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.split('/').next()?.parse().ok())
        .collect()
}

fn slot_addr(slot: u32, host: u8) -> Ipv4Addr {
    let base = slot.saturating_mul(4);
    let [_, _, c, d] = base.to_be_bytes();
    Ipv4Addr::new(NET[0], NET[1], c, d.saturating_add(host))
}

impl ServiceHost {
    /// A host keeping its bundles and runc state under `dir`; services a previous run of this
    /// host left behind (containers, namespaces) are removed.
    ///
    /// # Errors
    /// [`RunError::Io`] when the directories cannot be made.
    pub fn new(images: Arc<ContainerExecutor>, dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        let state_dir = dir.join("runc");
        std::fs::create_dir_all(&state_dir).map_err(io)?;
        let dir = std::fs::canonicalize(&dir).map_err(io)?;
        let state_dir = std::fs::canonicalize(&state_dir).map_err(io)?;
        let h = hash_domain("cairn service host tag v1", &[dir.to_string_lossy().as_bytes()]);
        let tag: String = h.iter().take(3).map(|b| format!("{b:02x}")).collect();
        let host = ServiceHost {
            images,
            dir,
            state_dir,
            tag,
            running: Mutex::new(BTreeMap::new()),
            volumes: Mutex::new(BTreeMap::new()),
        };
        host.clean_up_stale();
        Ok(host)
    }

    fn runc(&self) -> Command {
        let mut c = Command::new(&self.images.cfg.runc);
        c.arg("--root").arg(&self.state_dir);
        c
    }

    fn clean_up_stale(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.state_dir) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().to_string();
                let _ = self.runc().args(["delete", "--force", &id]).stderr(Stdio::null()).status();
            }
        }
        if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
            let prefix = format!("cs{}", self.tag);
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(name) = line.split_whitespace().next().filter(|n| n.starts_with(&prefix)) {
                    let _ = ip(&["netns", "del", name]);
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with("vol-") {
                    volume::unmount(&e.path());
                } else if name.starts_with("svc-") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }

    /// Start `run` and wait until it listens; returns where the provider reaches it.
    ///
    /// # Errors
    /// [`RunError::NotPrepared`] without the image; [`RunError::Runtime`] when the sandbox
    /// cannot be made or the service exits or never listens (its standard error included).
    pub fn start(&self, run: &ServiceRun) -> Result<SocketAddr> {
        self.halt(&run.name);
        let rootfs = match run.volume {
            Some(_) => self.images.service_rootfs(&run.image)?,
            None => self.images.rootfs(&run.image).ok_or(RunError::NotPrepared(run.image))?,
        };
        if run.args.is_empty() {
            return Err(RunError::InvalidWorkload(
                "a service needs args: the program and its arguments".into(),
            ));
        }
        let key = hash_domain("cairn service slot v1", &[self.tag.as_bytes(), run.name.as_bytes()]);
        let used = used_addresses();
        let first = u32::from_le_bytes([key[0], key[1], key[2], key[3]]) % SLOTS;
        let slot = (0..SLOTS)
            .map(|i| (first + i) % SLOTS)
            .find(|s| *s != 0 && !used.contains(&slot_addr(*s, 1)) && !used.contains(&slot_addr(*s, 2)))
            .ok_or_else(|| RunError::Runtime("no free service address".into()))?;
        let short: String = key.iter().take(3).map(|b| format!("{b:02x}")).collect();
        let netns = format!("cs{}{short}", self.tag);
        let (vh, vc) = (format!("vh{}{short}", &self.tag[..2]), format!("vc{}{short}", &self.tag[..2]));
        let (host_ip, svc_ip) = (slot_addr(slot, 1), slot_addr(slot, 2));
        let id = format!("svc-{}-{short}", self.tag);
        let bundle = self.dir.join(&id);
        let vol = match &run.volume {
            Some(v) => Some((self.volume(run, v, &format!("vol-{}-{short}", self.tag))?, v.path.as_str())),
            None => None,
        };
        let mut inst = Instance {
            child: None,
            egress: None,
            id: id.clone(),
            netns: netns.clone(),
            bundle: bundle.clone(),
            addr: SocketAddr::V4(SocketAddrV4::new(svc_ip, run.port)),
        };
        let made = (|| -> Result<()> {
            // A link of this name left by a namespace still going away (a quick restart).
            let _ = ip(&["link", "del", &vh]);
            ip(&["netns", "add", &netns])?;
            ip(&["link", "add", &vh, "type", "veth", "peer", "name", &vc])?;
            ip(&["link", "set", &vc, "netns", &netns])?;
            ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &vh])?;
            ip(&["link", "set", &vh, "up"])?;
            ip(&["-n", &netns, "addr", "add", &format!("{svc_ip}/30"), "dev", &vc])?;
            ip(&["-n", &netns, "link", "set", &vc, "up"])?;
            ip(&["-n", &netns, "link", "set", "lo", "up"])?;
            if run.network {
                inst.egress = Some(super::egress::Egress::attach(&netns)?);
            }
            super::link_inputs(&bundle.join("in"), &run.inputs)?;
            let mut env = super::base_env();
            env.extend(run.env.iter().map(|(k, v)| format!("{k}={v}")));
            env.push(format!("PORT={}", run.port));
            let ns_path = PathBuf::from("/var/run/netns").join(&netns);
            let cfg = oci::config(&oci::Sandbox {
                rootfs: &rootfs,
                inputs: &bundle.join("in"),
                outputs: None,
                netns: Some(&ns_path),
                args: &run.args,
                env: &env,
                memory_bytes: run.memory_mb.saturating_mul(1024 * 1024).max(16 * 1024 * 1024),
                pids: PIDS_LIMIT,
                cpu_millis: run.cpu_millis,
                tmp_mb: TMP_MB,
                volume: vol.as_ref().map(|(d, at)| (d.as_path(), *at)),
            });
            inst.child = Some(super::spawn(self.runc(), &bundle, &id, &cfg)?);
            Ok(())
        })();
        if let Err(e) = made {
            self.tear_down(&mut inst);
            return Err(e);
        }
        let started = Instant::now();
        loop {
            if TcpStream::connect_timeout(&inst.addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            let exited = match inst.child.as_mut() {
                Some(c) => c.try_wait().map_err(io)?.is_some(),
                None => true,
            };
            if exited || started.elapsed() > START_TIMEOUT {
                let err = std::fs::read_to_string(bundle.join("stderr")).unwrap_or_default();
                let tail: String =
                    err.chars().rev().take(2_000).collect::<Vec<_>>().into_iter().rev().collect();
                self.tear_down(&mut inst);
                let why = if exited { "exited" } else { "did not listen in time" };
                return Err(RunError::Runtime(format!(
                    "the service {why} on port {}: {}",
                    run.port,
                    tail.trim()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let addr = inst.addr;
        lock(&self.running).insert(run.name.clone(), inst);
        Ok(addr)
    }

    /// Where a running service is reached, if it runs (its process has not exited).
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        let mut running = lock(&self.running);
        let inst = running.get_mut(name)?;
        match inst.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => Some(inst.addr),
            _ => None,
        }
    }

    /// Names of the services started here and not stopped (running, exited, or holding a
    /// volume).
    pub fn names(&self) -> Vec<String> {
        let mut out: std::collections::BTreeSet<String> = lock(&self.running).keys().cloned().collect();
        out.extend(lock(&self.volumes).keys().cloned());
        out.into_iter().collect()
    }

    /// Stop a service and remove its sandbox and volume; a name not running is ignored.
    pub fn stop(&self, name: &str) {
        self.halt(name);
        if let Some(dir) = lock(&self.volumes).remove(name) {
            volume::unmount(&dir);
        }
    }

    /// Stop a service's process and sandbox, keeping its volume.
    fn halt(&self, name: &str) {
        let inst = lock(&self.running).remove(name);
        if let Some(mut inst) = inst {
            self.tear_down(&mut inst);
        }
    }

    /// The service's volume on this host: the one it had, or a new one (restored from the
    /// archive the run names).
    fn volume(&self, run: &ServiceRun, v: &volume::VolumeRun, dirname: &str) -> Result<PathBuf> {
        if let Some(dir) = lock(&self.volumes).get(&run.name) {
            return Ok(dir.clone());
        }
        let dir = self.dir.join(dirname);
        volume::unmount(&dir);
        volume::mount(&dir, v.max_bytes)?;
        if let Some(archive) = &v.restore {
            let restored = std::fs::File::open(archive).map_err(io).and_then(|f| volume::unpack(f, &dir));
            if let Err(e) = restored {
                volume::unmount(&dir);
                return Err(e);
            }
        }
        lock(&self.volumes).insert(run.name.clone(), dir.clone());
        Ok(dir)
    }

    /// Whether the service has a volume on this host (kept from an earlier start).
    pub fn has_volume(&self, name: &str) -> bool {
        lock(&self.volumes).contains_key(name)
    }

    /// A summary of the service's volume that changes whenever it is written (`None`: it has
    /// no volume here).
    pub fn volume_fingerprint(&self, name: &str) -> Option<Result<[u8; 32]>> {
        let dir = lock(&self.volumes).get(name).cloned()?;
        Some(volume::fingerprint(&dir))
    }

    /// Save the service's volume as a tar archive (see [`volume::pack`]), its processes frozen
    /// meanwhile so the copy is one instant of it.
    ///
    /// # Errors
    /// [`RunError::Runtime`] when it has no volume here; [`RunError::Io`] when it cannot be
    /// read.
    pub fn save_volume(&self, name: &str) -> Result<Vec<u8>> {
        let dir = lock(&self.volumes)
            .get(name)
            .cloned()
            .ok_or_else(|| RunError::Runtime(format!("{name} has no volume on this host")))?;
        let id = lock(&self.running).get(name).map(|i| i.id.clone());
        let frozen = id.as_ref().is_some_and(|id| {
            self.runc().args(["pause", id]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
        });
        if id.is_some() && !frozen {
            tracing::warn!(service = name, "cannot freeze the service for its volume save; saving it live");
        }
        let mut out = Vec::new();
        let packed = volume::pack(&dir, &mut out);
        if let (true, Some(id)) = (frozen, &id) {
            let _ = self.runc().args(["resume", id]).stderr(Stdio::null()).status();
        }
        packed.map(|_| out)
    }

    /// Stop every service.
    pub fn stop_all(&self) {
        for name in self.names() {
            self.stop(&name);
        }
    }

    fn tear_down(&self, inst: &mut Instance) {
        let _ = self.runc().args(["kill", "--all", &inst.id, "KILL"]).stderr(Stdio::null()).status();
        if let Some(c) = inst.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.runc().args(["delete", "--force", &inst.id]).stderr(Stdio::null()).status();
        inst.egress = None;
        let _ = ip(&["netns", "del", &inst.netns]);
        let _ = std::fs::remove_dir_all(&inst.bundle);
    }

    /// The host's directory (bundles, runc state).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for ServiceHost {
    fn drop(&mut self) {
        self.stop_all();
    }
}
