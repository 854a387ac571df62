//! A provider's home directory and `provider.toml`.
//!
//! ```text
//! <home>/provider.toml   node, endpoint, region, prices, stake, pricing policy
//! <home>/provider.key    the provider's account key (hex seed), owner-readable only
//! <home>/ledger.json     tasks in flight (survives restarts)
//! <home>/blobs/          inputs, workloads and outputs (outputs are served from here)
//! <home>/runtime/        executor scratch space and compiled-module cache
//! ```
//!
//! ```toml
//! models = ["<model package id>"]   # served for inference jobs
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use cairn_types::{Amount, Capacity, PriceSheet, Region, SecretKey, WorkloadKind};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

fn default_parallel() -> usize {
    2
}
fn default_heartbeat() -> u64 {
    30
}
fn default_pricing() -> String {
    "posted".into()
}

/// `provider.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// The node API the provider talks to.
    pub node: String,
    /// Where the provider's blob endpoint listens.
    pub listen: SocketAddr,
    /// The endpoint's public URL (registered on chain).
    pub endpoint: String,
    /// Where the hardware is (ISO country code).
    pub region: Region,
    /// Stake to keep bonded.
    pub stake: Amount,
    /// Posted prices by workload kind (per task; per block for `service`).
    pub prices: BTreeMap<WorkloadKind, Amount>,
    /// `key = value` attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Offered capacity; detected from the machine when absent.
    #[serde(default)]
    pub capacity: Option<Capacity>,
    /// Bid pricing: `posted` or `undercut:<bps of max>`.
    #[serde(default = "default_pricing")]
    pub pricing: String,
    /// Tasks run at once.
    #[serde(default = "default_parallel")]
    pub max_parallel: usize,
    /// Seconds between heartbeats.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_secs: u64,
    /// Model packages served for `inference` jobs (content ids). Each is taken from `blobs/`,
    /// or fetched from the node (verified) at start, and advertised as the attribute
    /// `model:<id>` = `<task>:<name>`.
    #[serde(default)]
    pub models: Vec<cairn_types::ContentId>,
    /// Room and price for storage deals (`[storage] capacity_gib = 100`,
    /// `price_per_gib_epoch = "0.001 CRN"`); no storage deals without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<cairn_types::StorageOffer>,
    /// Run inference on GPU 0 (a `cuda` build); otherwise, or when no GPU opens, on the CPU.
    #[serde(default)]
    pub gpu: bool,
    /// How this provider behaves: honest (the default), or an adversary for tests and drills
    /// (`[behaviour] kind = "wrong_always"`…) — see [`cairn_types::Behaviour`].
    #[serde(default, skip_serializing_if = "is_honest")]
    pub behaviour: cairn_types::Behaviour,
}

fn is_honest(b: &cairn_types::Behaviour) -> bool {
    *b == cairn_types::Behaviour::Honest
}

impl ProviderConfig {
    /// The posted price sheet.
    pub fn price_sheet(&self) -> PriceSheet {
        PriceSheet(self.prices.clone())
    }
}

/// Paths in a provider's home directory.
#[derive(Clone, Debug)]
pub struct ProviderHome(pub PathBuf);

impl ProviderHome {
    /// `provider.toml`.
    pub fn config(&self) -> PathBuf {
        self.0.join("provider.toml")
    }
    /// `provider.key`.
    pub fn key(&self) -> PathBuf {
        self.0.join("provider.key")
    }
    /// `ledger.json`.
    pub fn ledger(&self) -> PathBuf {
        self.0.join("ledger.json")
    }
    /// `blobs/`.
    pub fn blobs(&self) -> PathBuf {
        self.0.join("blobs")
    }
    /// `runtime/`.
    pub fn runtime(&self) -> PathBuf {
        self.0.join("runtime")
    }

    /// Load `provider.toml`.
    ///
    /// # Errors
    /// [`Error::Config`] naming the file and the problem.
    pub fn load_config(&self) -> Result<ProviderConfig> {
        let path = self.config();
        let text =
            std::fs::read_to_string(&path).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let cfg: ProviderConfig =
            toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        if cfg.prices.is_empty() {
            return Err(Error::Config(format!(
                "{}: [prices] must name at least one workload kind",
                path.display()
            )));
        }
        if cfg.max_parallel == 0 {
            return Err(Error::Config(format!("{}: max_parallel must be at least 1", path.display())));
        }
        crate::bids::policy(&cfg.pricing).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        Ok(cfg)
    }

    /// Load the key.
    ///
    /// # Errors
    /// [`Error::Config`] if missing or malformed.
    pub fn load_key(&self) -> Result<SecretKey> {
        let path = self.key();
        let text =
            std::fs::read_to_string(&path).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut seed)
            .map_err(|_| Error::Config(format!("{}: expected 64 hex characters", path.display())))?;
        Ok(SecretKey::from_seed(seed))
    }

    /// Write a new home: config and a key. Refuses an existing one.
    ///
    /// # Errors
    /// [`Error::Config`] if the home exists, [`Error::Io`] on write failure.
    pub fn init(&self, cfg: &ProviderConfig, key: &SecretKey) -> Result<()> {
        if self.config().exists() || self.key().exists() {
            return Err(Error::Config(format!("{} already holds a provider", self.0.display())));
        }
        std::fs::create_dir_all(&self.0)?;
        let text = toml::to_string_pretty(cfg).map_err(|e| Error::Config(e.to_string()))?;
        std::fs::write(self.config(), format!("# Cairn provider configuration\n{text}"))?;
        use std::io::Write as _;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(self.key())?;
        f.write_all(format!("{}\n", hex::encode(key.seed())).as_bytes())?;
        Ok(())
    }
}
