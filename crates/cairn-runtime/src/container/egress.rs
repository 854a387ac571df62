//! Outbound network for containers that ask for it (`network: true`): a network namespace of
//! its own whose default route goes through slirp4netns, a user-mode NAT that opens the
//! connections from the provider's own sockets. Nothing reaches in, and the provider's
//! loopback (`127.0.0.1` on the host) is out of reach (`--disable-host-loopback`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::ip;
use crate::{Result, RunError};

/// Whether this host can give containers outbound network.
pub fn available() -> bool {
    Command::new("slirp4netns")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A namespace with outbound network; its NAT process stopped (and the namespace removed, if
/// this made it) when dropped.
#[derive(Debug)]
pub(crate) struct Egress {
    name: String,
    slirp: Option<Child>,
    owned: bool,
}

impl Egress {
    /// Make namespace `name` and start its NAT; returns once the interface is up.
    pub(crate) fn new(name: &str) -> Result<Self> {
        ip(&["netns", "add", name])?;
        let mut e = Egress { name: name.to_string(), slirp: None, owned: true };
        e.start()?;
        Ok(e)
    }

    /// Give the existing namespace `name` outbound network (it stays when this is dropped).
    pub(crate) fn attach(name: &str) -> Result<Self> {
        let mut e = Egress { name: name.to_string(), slirp: None, owned: false };
        e.start()?;
        Ok(e)
    }

    fn start(&mut self) -> Result<()> {
        let name = self.name.clone();
        let name = name.as_str();
        let path = self.path();
        self.slirp = Some(
            Command::new("slirp4netns")
                .args(["--configure", "--mtu=65520", "--disable-host-loopback", "--netns-type=path"])
                .arg(&path)
                .arg("tap0")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|err| {
                    RunError::Runtime(format!("slirp4netns: {err} (install Debian's slirp4netns)"))
                })?,
        );
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        let started = Instant::now();
        loop {
            let out = Command::new("ip").args(["-n", name, "-4", "route", "show", "default"]).output();
            if out.is_ok_and(|o| !o.stdout.is_empty()) {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(5) {
                return Err(RunError::Runtime("slirp4netns did not bring the network up".into()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The namespace's path, for runc.
    pub(crate) fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }
}

impl Drop for Egress {
    fn drop(&mut self) {
        if let Some(c) = self.slirp.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.owned {
            let _ = Command::new("ip").args(["netns", "del", &self.name]).stderr(Stdio::null()).status();
        }
    }
}
