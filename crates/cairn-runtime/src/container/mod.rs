//! Native workloads in a sandbox (`kind: container`), run with runc.
//!
//! The workload is an image ([`image`]): a root filesystem tar named by its content id,
//! verified and unpacked once per provider. Each task runs in a fresh container:
//!
//! - the image's root, **read-only**; `/in` holds the task's inputs (read-only), `/out` is a
//!   size-capped tmpfs of the task's output limit, `/tmp` a small tmpfs;
//! - **no network**: a network namespace of its own with only loopback;
//! - an unprivileged user (65534), no capabilities, `no_new_privileges`, runc's masked and
//!   read-only `/proc` and `/sys` paths;
//! - cgroup limits on memory (the job's `memory_mb`, no swap), processes (`pids`) and CPU
//!   (the job's `cpu_millis`), and a wall-clock cap after which the whole container is killed.
//!
//! The command is the job's `args` (the program first, as a path inside the image); the
//! environment is the job's plus `CAIRN_TASK_INDEX` and `CAIRN_TASKS`. The output bundle is
//! `/out`'s regular files (a symlink or device there is refused, never followed) plus the exit
//! status and the captured standard output and error. Metered units are milliseconds of wall
//! time.

pub mod debian;
pub mod egress;
pub mod image;
mod oci;
pub mod service;
pub mod volume;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cairn_types::{ContentId, OutputBundle, WorkloadKind};

use crate::{Executor, Outcome, Result, RunError, TaskRun, io, lock};

/// Processes a task may have at once.
pub const PIDS_LIMIT: i64 = 128;
/// Size of a task's `/tmp`.
pub const TMP_MB: u64 = 64;
/// Standard output and error kept per stream.
const MAX_LOG: u64 = 64 * 1024;

/// Where the container executor keeps images and task bundles.
#[derive(Clone, Debug)]
pub struct ContainerConfig {
    /// Unpacked images, by content id.
    pub images_dir: PathBuf,
    /// Per-task bundles (configuration, inputs, the output tmpfs).
    pub work_dir: PathBuf,
    /// runc's state directory.
    pub state_dir: PathBuf,
    /// The runc binary.
    pub runc: PathBuf,
}

impl ContainerConfig {
    /// Everything under one directory, with `runc` from the `PATH`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        ContainerConfig {
            images_dir: dir.join("images"),
            work_dir: dir.join("runs"),
            state_dir: dir.join("runc"),
            runc: PathBuf::from("runc"),
        }
    }
}

/// Runs `container` workloads with runc.
#[derive(Debug)]
pub struct ContainerExecutor {
    cfg: ContainerConfig,
    prepared: Mutex<BTreeMap<ContentId, PathBuf>>,
    counter: AtomicU64,
    /// Held while a service root is made.
    service_roots: Mutex<()>,
}

/// Whether this host can run containers: runc answers and we are root.
pub fn available(runc: &Path) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Uid:")).map(|u| u.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false);
    root && Command::new(runc).arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success())
}

impl ContainerExecutor {
    /// An executor over `cfg`'s directories (created if missing). Containers a previous run
    /// left behind are removed.
    ///
    /// # Errors
    /// [`RunError::Io`] when the directories cannot be made.
    pub fn new(mut cfg: ContainerConfig) -> Result<Self> {
        // runc reads paths in a bundle's configuration relative to the bundle: keep them absolute.
        for d in [&mut cfg.images_dir, &mut cfg.work_dir, &mut cfg.state_dir] {
            std::fs::create_dir_all(&*d).map_err(io)?;
            *d = std::fs::canonicalize(&*d).map_err(io)?;
        }
        let exec = ContainerExecutor {
            cfg,
            prepared: Mutex::new(BTreeMap::new()),
            counter: AtomicU64::new(0),
            service_roots: Mutex::new(()),
        };
        exec.clean_up_stale();
        Ok(exec)
    }

    pub(crate) fn runc(&self) -> Command {
        let mut c = Command::new(&self.cfg.runc);
        c.arg("--root").arg(&self.cfg.state_dir);
        c
    }

    fn clean_up_stale(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.cfg.state_dir) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().to_string();
                let _ = self.runc().args(["delete", "--force", &id]).stderr(Stdio::null()).status();
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.cfg.work_dir) {
            for e in entries.flatten() {
                let out = e.path().join("out");
                let _ = Command::new("umount").arg(&out).stderr(Stdio::null()).status();
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    pub(crate) fn rootfs(&self, id: &ContentId) -> Option<PathBuf> {
        if let Some(p) = lock(&self.prepared).get(id) {
            return Some(p.clone());
        }
        let dir = self.cfg.images_dir.join(id.to_string());
        if dir.join(".complete").is_file() {
            let root = dir.join("rootfs");
            lock(&self.prepared).insert(*id, root.clone());
            return Some(root);
        }
        None
    }

    /// The root for services that mount a volume: a copy of the image's root made of hard
    /// links (directories its own, files shared), made once. runc makes a volume's mount point
    /// in the root it is given; here that never reaches the root batch tasks run on, whose
    /// outputs must not depend on which services ran on this provider before.
    pub(crate) fn service_rootfs(&self, id: &ContentId) -> Result<PathBuf> {
        let root = self.rootfs(id).ok_or(RunError::NotPrepared(*id))?;
        let dir = self.cfg.images_dir.join(id.to_string());
        let copy = dir.join("service-rootfs");
        let done = dir.join(".service-complete");
        let _held = lock(&self.service_roots);
        if done.is_file() {
            return Ok(copy);
        }
        let _ = std::fs::remove_dir_all(&copy);
        link_tree(&root, &copy)?;
        std::fs::write(&done, b"").map_err(io)?;
        Ok(copy)
    }

    fn unpack(&self, id: &ContentId, archive: impl std::io::Read) -> Result<()> {
        let dir = self.cfg.images_dir.join(id.to_string());
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.join("rootfs");
        if let Err(e) = image::unpack(archive, &root) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        if let Err(e) = ready_root(&root) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        std::fs::write(dir.join(".complete"), b"").map_err(io)?;
        lock(&self.prepared).insert(*id, root);
        Ok(())
    }
}

/// Every entry under `dir` (symlinks not followed), as paths relative to it with their
/// metadata, sorted (a directory before what it holds).
pub(crate) fn tree(dir: &Path) -> Result<Vec<(PathBuf, std::fs::Metadata)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io)? {
            let path = e.map_err(io)?.path();
            let meta = std::fs::symlink_metadata(&path).map_err(io)?;
            if meta.is_dir() {
                stack.push(path.clone());
            }
            out.push((path.strip_prefix(dir).map_err(io)?.to_path_buf(), meta));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Copy the tree at `from` to `to` (new) as hard links: directories (with their modes) and
/// symlinks made anew, regular files linked.
fn link_tree(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(to).map_err(io)?;
    for (rel, meta) in tree(from)? {
        let (src, dst) = (from.join(&rel), to.join(&rel));
        let ty = meta.file_type();
        if ty.is_dir() {
            std::fs::create_dir(&dst).map_err(io)?;
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(meta.permissions().mode()))
                .map_err(io)?;
        } else if ty.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).map_err(io)?, &dst).map_err(io)?;
        } else if ty.is_file() {
            std::fs::hard_link(&src, &dst).map_err(io)?;
        }
    }
    Ok(())
}

/// Mount a tmpfs at `dir` (which exists) with `options` (`size=…` and the rest).
pub(crate) fn mount_tmpfs(dir: &Path, options: &str) -> Result<()> {
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", options, "tmpfs"])
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .map_err(|e| RunError::Io(format!("mount: {e}")))?;
    if !status.success() {
        return Err(RunError::Io(format!("cannot mount a tmpfs at {}", dir.display())));
    }
    Ok(())
}

/// Make the mount points the sandbox needs in `root` (it is read-only in the container).
fn ready_root(root: &Path) -> Result<()> {
    for m in ["in", "out", "tmp", "proc", "dev", "sys"] {
        let p = root.join(m);
        match std::fs::symlink_metadata(&p) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(RunError::InvalidWorkload(format!("image: /{m} must be a directory"))),
            Err(_) => std::fs::create_dir_all(&p).map_err(io)?,
        }
    }
    // runc gives a tmpfs the mode of the directory it covers: keep `/tmp` writable by the
    // unprivileged user, whatever the image says.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).map_err(io)
}

impl ContainerExecutor {
    /// Run tasks of image `id` in the root filesystem tree at `root`, made on this machine
    /// rather than unpacked from an image file (the Blender root of [`crate::render`]).
    ///
    /// # Errors
    /// [`RunError::Io`] when the mount points cannot be made.
    pub fn adopt(&self, id: &ContentId, root: &Path) -> Result<()> {
        ready_root(root)?;
        let root = std::fs::canonicalize(root).map_err(io)?;
        lock(&self.prepared).insert(*id, root);
        Ok(())
    }
}

/// A task's container, removed (with its output tmpfs) when dropped.
struct Run<'a> {
    exec: &'a ContainerExecutor,
    id: String,
    bundle: PathBuf,
    mounted: bool,
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        let _ = self.exec.runc().args(["delete", "--force", &self.id]).stderr(Stdio::null()).status();
        if self.mounted {
            let _ = Command::new("umount").arg(self.bundle.join("out")).stderr(Stdio::null()).status();
        }
        let _ = std::fs::remove_dir_all(&self.bundle);
    }
}

impl Executor for ContainerExecutor {
    fn kind(&self) -> WorkloadKind {
        WorkloadKind::Container
    }

    fn prepare(&self, id: &ContentId, bytes: &[u8]) -> Result<()> {
        let actual = ContentId::of(bytes);
        if actual != *id {
            return Err(RunError::WorkloadMismatch { expected: *id, actual });
        }
        if self.rootfs(id).is_some() {
            return Ok(());
        }
        self.unpack(id, bytes)
    }

    fn is_prepared(&self, id: &ContentId) -> bool {
        self.rootfs(id).is_some()
    }

    fn run(&self, task: &TaskRun) -> Result<Outcome> {
        let rootfs = self.rootfs(&task.workload).ok_or(RunError::NotPrepared(task.workload))?;
        if task.args.is_empty() {
            return Err(RunError::InvalidWorkload(
                "a container job needs args: the program and its arguments".into(),
            ));
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let id = format!("cairn-{}-{}-{n}", std::process::id(), hex_prefix(&task.seed));
        let bundle = self.cfg.work_dir.join(&id);
        std::fs::create_dir_all(bundle.join("in")).map_err(io)?;
        std::fs::create_dir_all(bundle.join("out")).map_err(io)?;
        let mut run = Run { exec: self, id: id.clone(), bundle: bundle.clone(), mounted: false };
        link_inputs(&bundle.join("in"), &task.inputs)?;
        // The output directory: a tmpfs of the output limit, so a task cannot fill the disk.
        let out_bytes = task.limits.output_bytes.max(4096);
        mount_tmpfs(&bundle.join("out"), &format!("size={out_bytes},mode=0777,nosuid,nodev,noexec"))?;
        run.mounted = true;
        // Outbound network only where the job asks for it.
        let egress = if task.network {
            {
                let h = cairn_types::hash_domain("cairn egress netns v1", &[id.as_bytes()]);
                let tag: String = h.iter().take(6).map(|b| format!("{b:02x}")).collect();
                Some(egress::Egress::new(&format!("cn{tag}"))?)
            }
        } else {
            None
        };
        let netns = egress.as_ref().map(egress::Egress::path);
        let mut env = base_env();
        env.extend(task.env.iter().map(|(k, v)| format!("{k}={v}")));
        env.push(format!("CAIRN_TASK_INDEX={}", task.task_index));
        env.push(format!("CAIRN_TASKS={}", task.tasks));
        let cfg = oci::config(&oci::Sandbox {
            rootfs: &rootfs,
            inputs: &bundle.join("in"),
            outputs: Some(&bundle.join("out")),
            netns: netns.as_deref(),
            args: &task.args,
            env: &env,
            memory_bytes: task.memory_mb.saturating_mul(1024 * 1024).max(16 * 1024 * 1024),
            pids: PIDS_LIMIT,
            cpu_millis: task.cpu_millis,
            tmp_mb: TMP_MB,
            volume: None,
        });
        let started = Instant::now();
        let mut child = spawn(self.runc(), &bundle, &id, &cfg)?;
        let cap = Duration::from_millis(task.limits.wall_ms);
        let code = loop {
            if let Some(s) = child.try_wait().map_err(io)? {
                break s.code();
            }
            if started.elapsed() > cap {
                let _ = self.runc().args(["kill", "--all", &id, "KILL"]).stderr(Stdio::null()).status();
                let _ = child.kill();
                let _ = child.wait();
                return Err(RunError::WallTimeout(task.limits.wall_ms));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let wall_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut bundle_out = crate::wasm::collect(&bundle.join("out"), task.limits.output_bytes)?;
        let exit = match code {
            Some(0) => "ok".to_string(),
            Some(137) => "killed (out of memory or by signal 9)".to_string(),
            Some(c) if c > 128 => format!("killed by signal {}", c - 128),
            Some(c) => format!("exit {c}"),
            None => "killed".to_string(),
        };
        bundle_out.files.insert(OutputBundle::EXIT.into(), exit.into_bytes());
        bundle_out.files.insert(OutputBundle::STDOUT.into(), read_capped(&bundle.join("stdout"))?);
        bundle_out.files.insert(OutputBundle::STDERR.into(), read_capped(&bundle.join("stderr"))?);
        drop(run);
        Ok(Outcome { bundle: bundle_out, units: wall_ms.max(1), wall_ms })
    }
}

/// Run `ip` with `args`; its error output becomes the error.
pub(crate) fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| RunError::Runtime(format!("ip: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(RunError::Runtime(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Place `inputs` (plain names only) in `dir`: hard links where possible, copies otherwise.
///
/// # Errors
/// [`RunError::InvalidWorkload`] for a name that is not a plain file name; [`RunError::Io`].
pub fn link_inputs(dir: &Path, inputs: &[(String, PathBuf)]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io)?;
    for (name, src) in inputs {
        if name.contains('/') || name == ".." || name == "." || name.is_empty() {
            return Err(RunError::InvalidWorkload(format!("input name {name:?}")));
        }
        let dst = dir.join(name);
        if std::fs::hard_link(src, &dst).is_err() {
            std::fs::copy(src, &dst).map_err(|e| RunError::Io(format!("input {name}: {e}")))?;
        }
    }
    Ok(())
}

/// The environment every container starts from.
fn base_env() -> Vec<String> {
    ["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME=/tmp", "LANG=C.UTF-8", "TZ=UTC"]
        .map(String::from)
        .to_vec()
}

/// Write `cfg` as the bundle's `config.json` and start `runc run` on it (standard output and
/// error to the bundle's files; runc's own timestamped messages to a log of their own, never
/// into the workload's output).
fn spawn(mut runc: Command, bundle: &Path, id: &str, cfg: &serde_json::Value) -> Result<std::process::Child> {
    std::fs::write(bundle.join("config.json"), cfg.to_string()).map_err(io)?;
    let stdout = std::fs::File::create(bundle.join("stdout")).map_err(io)?;
    let stderr = std::fs::File::create(bundle.join("stderr")).map_err(io)?;
    runc.arg("--log")
        .arg(bundle.join("runc.log"))
        .args(["--log-format", "json", "run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .map_err(|e| RunError::Runtime(format!("runc: {e}")))
}

fn hex_prefix(seed: &[u8; 32]) -> String {
    seed.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

fn read_capped(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let f = std::fs::File::open(path).map_err(io)?;
    let mut out = Vec::new();
    f.take(MAX_LOG).read_to_end(&mut out).map_err(io)?;
    Ok(out)
}
