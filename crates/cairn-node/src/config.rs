//! A node's home directory: `config.toml`, `genesis.toml`, the validator key and the database.
//!
//! ```text
//! <home>/config.toml     ports, peers, timing, limits
//! <home>/genesis.toml    the chain's genesis
//! <home>/node.key        this node's ed25519 seed (hex), readable by its owner only
//! <home>/db/             the block store and state database
//! <home>/node.lock       held while the node runs
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_state::{Genesis, GenesisAccount, GenesisValidator};
use cairn_types::{Address, Amount, SecretKey};
use serde::{Deserialize, Serialize};

use crate::block::BlockCfg;
use crate::engine::Timing;

/// Errors reading or writing a home directory.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file's content is invalid.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The home directory already holds a node.
    #[error("{0} already holds a node; use another --home or remove it")]
    Exists(PathBuf),
}

/// A validator peer: its address (public key) and where its p2p port listens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// The validator's address (its ed25519 public key).
    pub address: Address,
    /// Its p2p socket address.
    pub p2p: SocketAddr,
}

/// Consensus timing in milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsensusConfig {
    /// Wait for a leader's proposal.
    pub leader_timeout_ms: u64,
    /// Wait for certification of a notarized block.
    pub certification_timeout_ms: u64,
    /// Rebroadcast period when stuck.
    pub timeout_retry_ms: u64,
    /// With an empty mempool, how long a leader waits before an empty block.
    pub empty_block_wait_ms: u64,
}

impl Default for ConsensusConfig {
    fn default() -> Self {
        let t = Timing::default();
        ConsensusConfig {
            leader_timeout_ms: t.leader_timeout.as_millis() as u64,
            certification_timeout_ms: t.certification_timeout.as_millis() as u64,
            timeout_retry_ms: t.timeout_retry.as_millis() as u64,
            empty_block_wait_ms: t.empty_block_wait.as_millis() as u64,
        }
    }
}

impl ConsensusConfig {
    /// As engine timing.
    pub fn timing(&self) -> Timing {
        Timing {
            leader_timeout: Duration::from_millis(self.leader_timeout_ms),
            certification_timeout: Duration::from_millis(self.certification_timeout_ms),
            timeout_retry: Duration::from_millis(self.timeout_retry_ms),
            empty_block_wait: Duration::from_millis(self.empty_block_wait_ms),
        }
    }
}

/// Mempool limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MempoolLimits {
    /// Bytes held.
    pub max_bytes: usize,
    /// Transactions per sender.
    pub max_per_sender: usize,
}

impl Default for MempoolLimits {
    fn default() -> Self {
        MempoolLimits { max_bytes: 64 * 1024 * 1024, max_per_sender: 4_096 }
    }
}

/// `config.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// A name for logs.
    pub moniker: String,
    /// Where this node's p2p port listens.
    pub p2p_listen: SocketAddr,
    /// Where the HTTP API listens.
    pub api_listen: SocketAddr,
    /// Every validator, this one included.
    pub validators: Vec<Peer>,
    /// Consensus timing.
    #[serde(default)]
    pub consensus: ConsensusConfig,
    /// Mempool limits.
    #[serde(default)]
    pub mempool: MempoolLimits,
    /// Transactions per block.
    #[serde(default = "default_max_txs")]
    pub max_block_txs: usize,
    /// Tokio worker threads.
    #[serde(default = "default_threads")]
    pub worker_threads: usize,
    /// Largest blob a client may upload to this node's blob endpoint, in bytes.
    #[serde(default = "default_blob_limit")]
    pub blob_upload_limit: usize,
    /// Who may upload to the blob endpoint, and how much (`[uploads]`).
    #[serde(default)]
    pub uploads: crate::uploads::UploadLimits,
}

fn default_blob_limit() -> usize {
    1 << 30
}

fn default_max_txs() -> usize {
    BlockCfg::default().max_txs
}

fn default_threads() -> usize {
    2
}

impl NodeConfig {
    /// Block limits from this config.
    pub fn block_cfg(&self) -> BlockCfg {
        BlockCfg { max_txs: self.max_block_txs, ..BlockCfg::default() }
    }
}

/// Paths of a home directory.
#[derive(Clone, Debug)]
pub struct Home(pub PathBuf);

impl Home {
    /// `config.toml`.
    pub fn config(&self) -> PathBuf {
        self.0.join("config.toml")
    }
    /// `genesis.toml`.
    pub fn genesis(&self) -> PathBuf {
        self.0.join("genesis.toml")
    }
    /// `node.key`.
    pub fn key(&self) -> PathBuf {
        self.0.join("node.key")
    }
    /// `db/`.
    pub fn db(&self) -> PathBuf {
        self.0.join("db")
    }
    /// `receipts.log`: receipts of finalized blocks, for lookups after a restart.
    pub fn receipts(&self) -> PathBuf {
        self.0.join("receipts.log")
    }
    /// `blobs/`: the node's blob endpoint store.
    pub fn blobs(&self) -> PathBuf {
        self.0.join("blobs")
    }
    /// `uploads/`: uploads no transaction names yet (account, size, time each).
    pub fn uploads(&self) -> PathBuf {
        self.0.join("uploads")
    }
    /// `node.lock`.
    pub fn lock(&self) -> PathBuf {
        self.0.join("node.lock")
    }

    /// Load the config.
    ///
    /// # Errors
    /// [`ConfigError`] if missing or invalid.
    pub fn load_config(&self) -> Result<NodeConfig, ConfigError> {
        let path = self.config();
        let text = read(&path)?;
        let cfg: NodeConfig = toml::from_str(&text)
            .map_err(|e| ConfigError::Invalid { path: path.clone(), reason: e.to_string() })?;
        if cfg.validators.is_empty() {
            return Err(ConfigError::Invalid {
                path,
                reason: "validators must list at least this node".into(),
            });
        }
        Ok(cfg)
    }

    /// Load the genesis.
    ///
    /// # Errors
    /// [`ConfigError`] if missing or invalid.
    pub fn load_genesis(&self) -> Result<Genesis, ConfigError> {
        let path = self.genesis();
        Genesis::load(&path).map_err(|e| ConfigError::Invalid { path, reason: e.to_string() })
    }

    /// Load the validator key.
    ///
    /// # Errors
    /// [`ConfigError`] if missing or invalid.
    pub fn load_key(&self) -> Result<SecretKey, ConfigError> {
        let path = self.key();
        let text = read(&path)?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut seed)
            .map_err(|_| ConfigError::Invalid { path, reason: "expected 64 hex characters".into() })?;
        Ok(SecretKey::from_seed(seed))
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })
}

fn write(path: &Path, text: &str) -> Result<(), ConfigError> {
    std::fs::write(path, text).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })
}

fn write_secret(path: &Path, text: &str) -> Result<(), ConfigError> {
    use std::io::Write as _;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
    f.write_all(text.as_bytes()).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })
}

/// What `init` lays out for one node.
#[derive(Clone, Debug)]
pub struct InitPlan {
    /// Home directory.
    pub home: PathBuf,
    /// The node's key.
    pub key: SecretKey,
    /// Its config.
    pub config: NodeConfig,
}

/// Write a home directory: key, config and genesis. Refuses a directory that already holds
/// a node.
///
/// # Errors
/// [`ConfigError`] on I/O failure or an existing node.
pub fn write_home(plan: &InitPlan, genesis: &Genesis) -> Result<(), ConfigError> {
    let home = Home(plan.home.clone());
    if home.config().exists() || home.key().exists() {
        return Err(ConfigError::Exists(plan.home.clone()));
    }
    std::fs::create_dir_all(&plan.home)
        .map_err(|source| ConfigError::Io { path: plan.home.clone(), source })?;
    write_secret(&home.key(), &format!("{}\n", hex::encode(plan.key.seed())))?;
    let cfg = toml::to_string_pretty(&plan.config)
        .map_err(|e| ConfigError::Invalid { path: home.config(), reason: e.to_string() })?;
    write(&home.config(), &format!("# Cairn node configuration\n{cfg}"))?;
    write(&home.genesis(), &genesis.to_toml())
}

/// A genesis for a local network: the validators with 10,000 CRN stake each, and each
/// `funded` account with its balance.
pub fn local_genesis(
    chain_id: &str,
    validators: &[Address],
    funded: &[(Address, Amount)],
    params: cairn_state::Params,
) -> Genesis {
    let stake = Amount::from_base_units(10_000 * 1_000_000);
    Genesis {
        chain_id: chain_id.to_owned(),
        params,
        accounts: funded.iter().map(|(a, b)| GenesisAccount { address: *a, balance: *b }).collect(),
        validators: validators.iter().map(|a| GenesisValidator { address: *a, stake }).collect(),
    }
}
