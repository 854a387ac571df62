//! Long-running services (`kind: service`): what a lease runs and the SLA it is held to.
//!
//! A service is a job spec of kind `service` with a `service` section. The workload is a
//! container image (as for `kind: container`), `args` its command, `inputs` files it reads at
//! `/in`. It listens on `port` inside a network namespace of its own; the provider exposes it at
//! `<provider endpoint>/lease/<lease id>/…`. The lease is paid per block from escrow, in probe
//! rounds: each round, auditors drawn by the beacon request `sla.probe_path` through that public
//! address and report what they saw; a round the probes call failed is refunded to the client,
//! a window of rounds below `sla.uptime_bps` slashes the provider, and failed rounds in a row
//! move the lease to another provider.
//!
//! ```
//! use cairn_types::JobSpec;
//! let spec = JobSpec::from_yaml(
//!     "kind: service
//! workload: af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262
//! args: [/bin/httpd, -f, -p, '8080', -h, /in]
//! service:
//!   port: 8080
//!   max_price_per_block: 0.001 CRN
//!   sla: { uptime_bps: 9500, latency_ms: 500, probe_path: /index.html }
//! ",
//! )
//! .unwrap();
//! assert_eq!(spec.service.as_ref().unwrap().sla.window_rounds, 10);
//! ```

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

use crate::Amount;

/// Limits on service specs.
pub mod service_limits {
    /// Longest probe path.
    pub const MAX_PROBE_PATH: usize = 256;
    /// Most rounds in an SLA window.
    pub const MAX_WINDOW_ROUNDS: u32 = 1_000;
    /// Largest latency target, in milliseconds.
    pub const MAX_LATENCY_MS: u32 = 60_000;
    /// Largest state volume, in MiB.
    pub const MAX_VOLUME_MB: u64 = 256;
    /// Longest volume mount path.
    pub const MAX_VOLUME_PATH: usize = 128;
    /// Files and directories a volume may hold.
    pub const VOLUME_INODES: u64 = 4_096;
}

fn default_window() -> u32 {
    10
}

/// The service level a lease is held to.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sla {
    /// Share of probed rounds that must pass in each window, in basis points (9500 = 95%).
    pub uptime_bps: u32,
    /// A probe answered slower than this (or not with a 2xx status) fails.
    pub latency_ms: u32,
    /// What probes request (an absolute path with its query, as a client would).
    pub probe_path: String,
    /// Probe rounds per SLA window.
    #[serde(default = "default_window")]
    pub window_rounds: u32,
}

/// What runs a service.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
#[borsh(use_discriminant = true)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum ServiceRuntime {
    /// A long-running container from the image, listening on `port`.
    #[default]
    Container = 0,
    /// A WASI module run once per request, CGI-style: the request in its environment and
    /// standard input, the response on its standard output (`limits` cap each request).
    Wasm = 1,
}

/// The `service` section of a `kind: service` job spec.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// What runs it: a container (the default) or a WASM module per request.
    #[serde(default)]
    pub runtime: ServiceRuntime,
    /// The TCP port a container service listens on inside its sandbox (WASM services: none).
    #[serde(default)]
    pub port: u16,
    /// The most the client pays per block; the lease pays the chosen provider's posted price.
    pub max_price_per_block: Amount,
    /// The service level.
    pub sla: Sla,
    /// A writable directory whose contents move with the lease (containers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeSpec>,
}

/// A service's state volume: a writable directory at `path` in the container, at most
/// `max_mb` MiB. The provider saves it as a blob the chain records (`SaveVolume`) whenever it
/// changed, and a provider the lease moves to starts the service on the last saved copy.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    /// Where it is mounted in the container (an absolute path outside `/in`, `/tmp`, `/dev`,
    /// `/proc`, `/sys` and `/out`).
    pub path: String,
    /// Its size cap in MiB (writes past it fail with "no space left").
    pub max_mb: u64,
}

/// Top-level directories a volume may not be mounted on or under.
const RESERVED: &[&str] = &["in", "out", "tmp", "dev", "proc", "sys"];

impl VolumeSpec {
    /// The cap in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_mb.saturating_mul(1 << 20)
    }

    /// The largest saved copy (a tar archive of the volume) the chain records: the cap plus
    /// room for one header and padding per file and the archive's end.
    pub fn max_archive_bytes(&self) -> u64 {
        self.max_bytes()
            .saturating_add(service_limits::VOLUME_INODES.saturating_mul(4 << 10))
            .saturating_add(1 << 10)
    }

    fn check(&self) -> std::result::Result<(), String> {
        use service_limits::*;
        if self.max_mb == 0 || self.max_mb > MAX_VOLUME_MB {
            return Err(format!("service.volume.max_mb must be 1..={MAX_VOLUME_MB}"));
        }
        let p = &self.path;
        let parts: Vec<&str> = p.split('/').skip(1).collect();
        let well_formed = p.starts_with('/')
            && p.len() <= MAX_VOLUME_PATH
            && parts.iter().all(|c| {
                !c.is_empty()
                    && *c != "."
                    && *c != ".."
                    && c.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
            });
        if !well_formed {
            return Err(format!(
                "service.volume.path must be an absolute path of at most {MAX_VOLUME_PATH} bytes of letters, digits, `-`, `_` and `.`, without `.` or `..` parts"
            ));
        }
        if parts.first().is_some_and(|top| RESERVED.contains(top)) {
            return Err(
                "service.volume.path may not be /in, /out, /tmp, /dev, /proc, /sys or under them".into()
            );
        }
        Ok(())
    }
}

impl ServiceSpec {
    /// Check the section's own rules.
    ///
    /// # Errors
    /// A message naming the first broken rule.
    pub fn check(&self) -> std::result::Result<(), String> {
        use service_limits::*;
        match (self.runtime, self.port) {
            (ServiceRuntime::Container, 0) => return Err("service.port must be 1..=65535".into()),
            (ServiceRuntime::Wasm, p) if p != 0 => {
                return Err("a WASM service answers each request itself: leave service.port out".into());
            }
            _ => {}
        }
        let price = self.max_price_per_block.base_units();
        if price == 0 || price > crate::limits::MAX_PRICE {
            return Err("service.max_price_per_block must be above zero and at most 10^12 CRN".into());
        }
        let s = &self.sla;
        if s.uptime_bps == 0 || s.uptime_bps > 10_000 {
            return Err("sla.uptime_bps must be 1..=10000".into());
        }
        if s.latency_ms == 0 || s.latency_ms > MAX_LATENCY_MS {
            return Err(format!("sla.latency_ms must be 1..={MAX_LATENCY_MS}"));
        }
        if s.window_rounds == 0 || s.window_rounds > MAX_WINDOW_ROUNDS {
            return Err(format!("sla.window_rounds must be 1..={MAX_WINDOW_ROUNDS}"));
        }
        match (&self.volume, self.runtime) {
            (Some(_), ServiceRuntime::Wasm) => {
                return Err("service.volume is for container services; a WASM service keeps no state".into());
            }
            (Some(v), _) => v.check()?,
            (None, _) => {}
        }
        let p = &s.probe_path;
        if !p.starts_with('/')
            || p.len() > MAX_PROBE_PATH
            || p.contains("..")
            || p.chars().any(|c| c.is_control() || c.is_whitespace() || c == '#')
        {
            return Err(format!(
                "sla.probe_path must be an absolute URL path of at most {MAX_PROBE_PATH} bytes, without `..`, spaces or a fragment"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{Error, JobSpec, VolumeSpec};

    #[test]
    fn a_volume_sits_at_a_plain_path_outside_the_sandbox_mounts_within_its_cap_for_containers_only() {
        let y = "kind: service\nworkload: af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262\nargs: [/bin/httpd]\nservice:\n  port: 8080\n  max_price_per_block: 0.001 CRN\n  sla: { uptime_bps: 9000, latency_ms: 500, probe_path: / }\n  volume: { path: /var/lib/app-data, max_mb: 64 }\n";
        let s = JobSpec::from_yaml(y).unwrap();
        assert_eq!(JobSpec::from_yaml(&s.to_yaml()).unwrap(), s);
        let v = s.service.as_ref().unwrap().volume.clone().unwrap();
        assert_eq!((v.max_bytes(), v.path.as_str()), (64 << 20, "/var/lib/app-data"));
        assert!(v.max_archive_bytes() > v.max_bytes());
        let refused = |f: &dyn Fn(&mut JobSpec), word: &str| {
            let mut t = s.clone();
            f(&mut t);
            assert!(matches!(t.validate(), Err(Error::InvalidJobSpec(m)) if m.contains(word)), "{word}");
        };
        let vol = |path: &str, max_mb| Some(VolumeSpec { path: path.into(), max_mb });
        for bad in [
            "data",
            "/",
            "/data/",
            "/a/../etc",
            "/./a",
            "/in",
            "/tmp/x",
            "/proc",
            "/dev/shm",
            "/a b",
            "/a\\b",
        ] {
            refused(&|t| t.service.as_mut().unwrap().volume = vol(bad, 8), "volume.path");
        }
        refused(&|t| t.service.as_mut().unwrap().volume = vol("/data", 0), "max_mb");
        refused(&|t| t.service.as_mut().unwrap().volume = vol("/data", 257), "max_mb");
        refused(
            &|t| {
                let svc = t.service.as_mut().unwrap();
                svc.runtime = crate::ServiceRuntime::Wasm;
                svc.port = 0;
            },
            "keeps no state",
        );
    }
}
