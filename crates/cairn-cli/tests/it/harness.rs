//! Start devnets and nodes as processes, on free ports, in fresh directories.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cairn_client::Client;
use cairn_types::SecretKey;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_cairn");

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh directory under the target dir, removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("cairn-it-{}-{name}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        cairn_runtime::container::volume::unmount_all_under(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A base port with `n` (at most 16) free ports above it for each role: p2p at base, API at
/// base + 100, provider endpoints at base + 200, gateways at base + 300.
///
/// Tests run concurrently in one process, so bases are handed out from a process-wide counter
/// in slots that cannot overlap (six 16-port slots per 400-port block), each checked free
/// against other processes. All stay below Linux's ephemeral range (32768 and up), so an
/// outgoing connection cannot take a port between the check and its use.
pub(crate) fn free_base(n: u16) -> u16 {
    static SLOT: AtomicU32 = AtomicU32::new(0);
    assert!(n <= 16, "at most 16 ports per role");
    let start = 20_000 + (std::process::id() % 14) as u16 * 700;
    loop {
        let k = SLOT.fetch_add(1, Ordering::SeqCst) as u16;
        assert!(k < 36, "no free ports");
        let base = start + 400 * (k / 6) + 16 * (k % 6);
        let ok = (0..n).all(|i| {
            [0, 100, 200, 300].iter().all(|role| TcpListener::bind(("127.0.0.1", base + role + i)).is_ok())
        });
        if ok {
            return base;
        }
    }
}

/// Lay out a devnet of `n` validators in `root` (the processes are started, checked and
/// stopped once), returning the base port (p2p at base, API at base + 100).
pub(crate) fn create_devnet(root: &Path, n: usize) -> u16 {
    create_network(root, n, 0)
}

/// Like [`create_devnet`] with `providers` providers too (endpoints at base + 200).
pub(crate) fn create_network(root: &Path, n: usize, providers: usize) -> u16 {
    create_network_with(root, n, providers, &["--no-models"])
}

/// Like [`create_network`], with every provider serving the demo models.
pub(crate) fn create_network_with_models(root: &Path, n: usize, providers: usize) -> u16 {
    create_network_with(root, n, providers, &[])
}

pub(crate) fn create_network_with(root: &Path, n: usize, providers: usize, extra: &[&str]) -> u16 {
    let base = free_base(n.max(providers) as u16);
    let out = Command::new(BIN)
        .args(["devnet", "--validators", &n.to_string(), "--providers", &providers.to_string()])
        .args(extra)
        .args(["--no-demo", "--exit-when-done", "--fresh", "--home"])
        .arg(root)
        .args(["--p2p-port", &base.to_string(), "--api-port", &(base + 100).to_string()])
        .args(["--provider-port", &(base + 200).to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "devnet failed: {}", String::from_utf8_lossy(&out.stderr));
    base
}

/// A `cairn` child process (a node or a provider) with its log in its home directory.
pub(crate) struct Proc {
    pub(crate) home: PathBuf,
    pub(crate) child: Option<Child>,
    args: [&'static str; 2],
    log: &'static str,
}

impl Proc {
    fn new(home: &Path, args: [&'static str; 2], log: &'static str) -> Self {
        let mut p = Proc { home: home.to_path_buf(), child: None, args, log };
        p.spawn();
        p
    }

    pub(crate) fn spawn(&mut self) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.home.join(self.log)).unwrap();
        let child = Command::new(BIN)
            .args(self.args)
            .arg("--home")
            .arg(&self.home)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL: no chance to flush anything.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.home.join(self.log)).unwrap_or_default()
    }
}

impl Drop for Proc {
    /// SIGTERM first (a provider then stops its services' containers), SIGKILL after 5 s.
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let until = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < until && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill9();
    }
}

/// One node process.
pub(crate) struct NodeProc {
    pub(crate) proc_: Proc,
    pub(crate) api: String,
}

impl NodeProc {
    pub(crate) fn start(home: &Path, api_port: u16) -> Self {
        NodeProc {
            proc_: Proc::new(home, ["node", "run"], "test-node.log"),
            api: format!("http://127.0.0.1:{api_port}"),
        }
    }

    pub(crate) fn spawn(&mut self) {
        self.proc_.spawn();
    }

    pub(crate) fn kill9(&mut self) {
        self.proc_.kill9();
    }

    pub(crate) fn client(&self) -> Client {
        Client::new(&self.api)
    }

    pub(crate) fn log(&self) -> String {
        self.proc_.log()
    }
}

pub(crate) fn faucet(root: &Path) -> SecretKey {
    let text = std::fs::read_to_string(root.join("faucet.key")).unwrap();
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed).unwrap();
    SecretKey::from_seed(seed)
}

pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

pub(crate) const READY: Duration = Duration::from_secs(60);

/// Held by the tests that load both CPU cores for long (model inference, a validator set under
/// load), so they do not starve each other's timing on a two-core machine.
pub(crate) fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One provider process.
pub(crate) struct ProviderProc {
    pub(crate) proc_: Proc,
    pub(crate) endpoint: String,
}

impl ProviderProc {
    pub(crate) fn start(home: &Path) -> Self {
        let text = std::fs::read_to_string(home.join("provider.toml")).unwrap();
        let cfg: toml::Value = toml::from_str(&text).unwrap();
        let endpoint = cfg["endpoint"].as_str().unwrap().to_string();
        ProviderProc { proc_: Proc::new(home, ["provider", "run"], "test-provider.log"), endpoint }
    }

    pub(crate) fn spawn(&mut self) {
        self.proc_.spawn();
    }

    pub(crate) fn kill9(&mut self) {
        self.proc_.kill9();
    }

    /// Whether this provider has started running a task (its ledger says when).
    pub(crate) async fn started_a_task(&self) -> bool {
        let s = self.status().await;
        s["tasks"].as_object().is_some_and(|t| t.values().any(|e| !e["started_ms"].is_null()))
    }

    pub(crate) async fn status(&self) -> serde_json::Value {
        Client::new(&self.endpoint).get("/provider/status").await.unwrap_or_default()
    }

    pub(crate) fn log(&self) -> String {
        self.proc_.log()
    }
}

/// Wait until the node is past height 2 and lists every one of `providers` (failing with the
/// first one's log after a minute).
pub(crate) fn wait_for_providers(node: &NodeProc, providers: &[ProviderProc]) {
    rt().block_on(async {
        let c = node.client();
        c.wait_for_height(2, READY).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let v: serde_json::Value = c.get("/api/providers").await.unwrap_or_default();
            if v["providers"].as_array().is_some_and(|l| l.len() >= providers.len()) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "providers did not register:\n{}",
                providers.first().map(ProviderProc::log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

/// Run `cairn` with arguments; returns (success, stdout, stderr).
/// Submit the job spec at `spec` (paying with `key`) without watching it; returns its id.
pub(crate) fn submit_spec(spec: &Path, api: &str, key: &Path) -> cairn_types::JobId {
    let (ok, out, err) = cairn(
        &[
            "job",
            "submit",
            spec.to_str().unwrap(),
            "--no-watch",
            "--json",
            "--key-file",
            key.to_str().unwrap(),
            "--api",
            api,
        ],
        &[],
    );
    assert!(ok, "{err}");
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["job"].as_str().unwrap().parse().unwrap()
}

pub(crate) fn cairn(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub(crate) fn testdata(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata").join(rel)
}

/// runc and a static busybox (installed from Debian on first use, as root).
pub(crate) fn container_tools() {
    static ONCE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    ONCE.get_or_init(install_container_tools);
}

/// Blender and ffmpeg for the render demo (installed from Debian on first use), beside the
/// container tools its sandbox needs.
pub(crate) fn render_tools() {
    static ONCE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    container_tools();
    ONCE.get_or_init(|| {
        let have = |p: &str| Command::new(p).arg("-version").output().is_ok();
        if cairn_runtime::render::blender_version(Path::new("blender")).is_none() || !have("ffmpeg") {
            let ok = Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends", "blender", "ffmpeg"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "the render demo needs `apt-get install --no-install-recommends blender ffmpeg`");
        }
    });
}

fn install_container_tools() {
    let runc = Path::new("runc");
    if cairn_runtime::container::image::find_busybox().is_none()
        || !cairn_runtime::container::available(runc)
        || !cairn_runtime::container::egress::available()
    {
        let ok = Command::new("apt-get")
            .args(["install", "-y", "-q", "runc", "busybox-static", "slirp4netns"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "the container tests need root and `apt-get install runc busybox-static slirp4netns`");
    }
    assert!(cairn_runtime::container::available(runc), "runc does not run here (root needed)");
}

/// The address of provider `i` of the network in `root`.
pub(crate) fn address_of(root: &Path, i: usize) -> cairn_types::Address {
    let text = std::fs::read_to_string(root.join(format!("provider-{i}/provider.key"))).unwrap();
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed).unwrap();
    SecretKey::from_seed(seed).address()
}
