//! The OCI runtime configuration of a task's sandbox (what runc reads as `config.json`).

use std::path::Path;

use serde_json::{Value, json};

/// What one task's sandbox is made of.
pub(crate) struct Sandbox<'a> {
    pub(crate) rootfs: &'a Path,
    pub(crate) inputs: &'a Path,
    /// The writable `/out` (services have none).
    pub(crate) outputs: Option<&'a Path>,
    /// A network namespace to join (a service's, with one link to the host); `None`: a new
    /// one with only loopback.
    pub(crate) netns: Option<&'a Path>,
    pub(crate) args: &'a [String],
    pub(crate) env: &'a [String],
    pub(crate) memory_bytes: u64,
    pub(crate) pids: i64,
    /// CPU share in thousandths of a core (0: no cap).
    pub(crate) cpu_millis: u64,
    pub(crate) tmp_mb: u64,
    /// A writable volume: the host directory and where it is mounted (services only).
    pub(crate) volume: Option<(&'a Path, &'a str)>,
}

/// The unprivileged user tasks run as.
pub(crate) const NOBODY: u32 = 65_534;
const PERIOD_US: u64 = 100_000;

pub(crate) fn config(s: &Sandbox<'_>) -> Value {
    let mut resources = json!({
        "memory": { "limit": s.memory_bytes, "swap": s.memory_bytes },
        "pids": { "limit": s.pids },
        "devices": [{ "allow": false, "access": "rwm" }],
    });
    let mut network = json!({ "type": "network" });
    if let Some(ns) = s.netns {
        network["path"] = json!(ns);
    }
    if s.cpu_millis > 0 {
        resources["cpu"] =
            json!({ "quota": s.cpu_millis.saturating_mul(PERIOD_US) / 1000, "period": PERIOD_US });
    }
    let mut mounts = json!([
        { "destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"] },
        { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
          "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
        { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
          "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] },
        { "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
          "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
        { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"] },
        { "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"] },
        { "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
          "options": ["nosuid", "nodev", "mode=1777", format!("size={}m", s.tmp_mb)] },
        { "destination": "/in", "type": "bind", "source": s.inputs, "options": ["rbind", "ro", "nosuid", "nodev"] },
    ]);
    if let (Some(out), Some(list)) = (s.outputs, mounts.as_array_mut()) {
        list.push(json!({ "destination": "/out", "type": "bind", "source": out, "options": ["rbind", "rw", "nosuid", "nodev"] }));
    }
    if let (Some((host, at)), Some(list)) = (s.volume, mounts.as_array_mut()) {
        list.push(json!({ "destination": at, "type": "bind", "source": host, "options": ["rbind", "rw", "nosuid", "nodev"] }));
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": NOBODY, "gid": NOBODY },
            "args": s.args,
            "env": s.env,
            "cwd": "/",
            "capabilities": { "bounding": [], "effective": [], "permitted": [], "ambient": [] },
            "rlimits": [
                { "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 },
                { "type": "RLIMIT_CORE", "hard": 0, "soft": 0 },
            ],
            "noNewPrivileges": true,
        },
        "root": { "path": s.rootfs, "readonly": true },
        "hostname": "cairn",
        "mounts": mounts,
        "linux": {
            "resources": resources,
            "namespaces": [
                { "type": "pid" }, network, { "type": "ipc" },
                { "type": "uts" }, { "type": "mount" }, { "type": "cgroup" },
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi",
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
            ],
        },
    })
}
