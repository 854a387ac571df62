//! What a devnet is: its chain parameters, its layout (validators, providers, ports, models)
//! and the homes, keys and genesis written for it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use cairn_node::config::{
    ConsensusConfig, Home, InitPlan, MempoolLimits, NodeConfig, Peer, local_genesis, write_home,
};
use cairn_provider::{ProviderConfig, ProviderHome};
use cairn_state::Params;
use cairn_types::{Address, Amount, SecretKey, WorkloadKind};

/// Apply `NAME=VALUE` overrides to `params`; values are numbers or amounts ("5 CRN").
pub(crate) fn override_params(params: Params, overrides: &[String]) -> Result<Params> {
    let mut v = serde_json::to_value(&params)?;
    for o in overrides {
        let Some((name, value)) = o.split_once('=') else {
            bail!("--param {o:?}: expected NAME=VALUE");
        };
        let (name, value) = (name.trim(), value.trim());
        let slot = v.get_mut(name).with_context(|| format!("--param: no chain parameter named {name:?}"))?;
        *slot = match value.parse::<u64>() {
            Ok(n) if slot.is_number() => serde_json::json!(n),
            _ => serde_json::json!(value),
        };
    }
    let out: Params = serde_json::from_value(v).context("--param: a value has the wrong type")?;
    out.validate().map_err(|e| anyhow::anyhow!("--param: {e}"))?;
    Ok(out)
}

pub(crate) const CHAIN_ID: &str = "cairn-devnet";
pub(super) const REGIONS: [&str; 3] = ["DE", "US", "SG"];

pub(super) fn validator_home(root: &Path, i: usize) -> PathBuf {
    root.join(format!("validator-{i}"))
}

pub(super) fn provider_home(root: &Path, i: usize) -> PathBuf {
    root.join(format!("provider-{i}"))
}

/// Params suited to a devnet: short windows so demos finish in seconds.
pub(crate) fn devnet_params() -> Params {
    Params {
        challenge_window: 5,
        // A few minutes at devnet block rates: on 2 cores an audit of a demo frame can queue
        // behind several renders. (A verdict settles the task when it lands, so a long window
        // costs nothing when auditors are prompt.)
        audit_window: 900,
        unbonding_blocks: 60,
        reward_epoch_blocks: 60,
        heartbeat_timeout: 600,
        storage_epoch_blocks: 60,
        min_provider_stake: Amount::from_base_units(100_000_000),
        // Providers reveal sealed bids on the next block event; leave room for a busy machine.
        reveal_blocks: 20,
        // Lease rounds of a few seconds: probes and per-round payments show within the demo.
        probe_interval: 15,
        lease_probers: 2,
        lease_migrate_after: 2,
        ..Params::default()
    }
}

fn hex_seed(k: &SecretKey) -> String {
    k.seed().iter().map(|b| format!("{b:02x}")).collect()
}

fn crn(n: u128) -> Amount {
    Amount::from_base_units(n.saturating_mul(1_000_000))
}

fn port(base: u16, i: usize) -> Result<u16> {
    base.checked_add(u16::try_from(i)?).context("port out of range")
}

/// Lay out validators, providers, a faucet and a client with one shared genesis.
pub(super) fn create(root: &Path, a: &Layout, extra: &[(Address, Amount)]) -> Result<()> {
    let keys: Vec<SecretKey> = (0..a.validators).map(|_| SecretKey::generate()).collect::<Result<_, _>>()?;
    let provider_keys: Vec<SecretKey> =
        (0..a.providers).map(|_| SecretKey::generate()).collect::<Result<_, _>>()?;
    let mut peers = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        peers
            .push(Peer { address: k.address(), p2p: format!("127.0.0.1:{}", port(a.p2p_port, i)?).parse()? });
    }
    let faucet = SecretKey::generate()?;
    let client = SecretKey::generate()?;
    let gateway = SecretKey::generate()?;
    std::fs::create_dir_all(root)?;
    std::fs::write(root.join("faucet.key"), format!("{}\n", hex_seed(&faucet)))?;
    std::fs::write(root.join("client.key"), format!("{}\n", hex_seed(&client)))?;
    std::fs::write(root.join("gateway.key"), format!("{}\n", hex_seed(&gateway)))?;
    let mut funded: Vec<_> = keys.iter().map(|k| (k.address(), crn(1_000_000))).collect();
    funded.extend(provider_keys.iter().map(|k| (k.address(), crn(10_000))));
    funded.push((faucet.address(), crn(1_000_000_000)));
    funded.push((gateway.address(), crn(100_000)));
    funded.extend_from_slice(extra);
    let validators: Vec<_> = keys.iter().map(SecretKey::address).collect();
    let genesis = local_genesis(CHAIN_ID, &validators, &funded, override_params(devnet_params(), &a.params)?);
    for (i, k) in keys.iter().enumerate() {
        let config = NodeConfig {
            moniker: format!("validator-{i}"),
            p2p_listen: peers[i].p2p,
            api_listen: format!("127.0.0.1:{}", port(a.api_port, i)?).parse()?,
            validators: peers.clone(),
            consensus: ConsensusConfig { empty_block_wait_ms: 200, ..ConsensusConfig::default() },
            mempool: MempoolLimits::default(),
            max_block_txs: 20_000,
            worker_threads: 2,
            blob_upload_limit: 1 << 30,
            uploads: Default::default(),
        };
        write_home(&InitPlan { home: validator_home(root, i), key: k.clone(), config }, &genesis)?;
    }
    // The models sit in the first validator's blob store, so any provider can fetch them.
    let node_blobs = cairn_blobs::BlobStore::open(Home(validator_home(root, 0)).blobs())?;
    for (_, path) in &a.models {
        node_blobs.put_file(path)?;
    }
    let node = format!("http://127.0.0.1:{}", a.api_port);
    let ucrn = Amount::from_base_units;
    let wasm = [ucrn(50_000), ucrn(80_000), ucrn(120_000)];
    let render = [ucrn(60_000), ucrn(90_000), ucrn(150_000)];
    let inference = [ucrn(20_000), ucrn(30_000), ucrn(45_000)];
    let train = [ucrn(20_000), ucrn(25_000), ucrn(35_000)];
    // Per GiB-epoch of storage.
    let storage = [ucrn(1_000), ucrn(1_200), ucrn(1_500)];
    // Per block.
    let service = [ucrn(100), ucrn(150), ucrn(200)];
    // Native containers where this machine can run them (runc, as root).
    let containers = cairn_runtime::container::available(Path::new("runc"));
    // Blender scenes where Blender is installed too (they render in the container sandbox).
    let blender = containers && cairn_runtime::render::blender_version(Path::new("blender")).is_some();
    for (i, k) in provider_keys.iter().enumerate() {
        let listen: std::net::SocketAddr = format!("127.0.0.1:{}", port(a.provider_port, i)?).parse()?;
        let mut prices = BTreeMap::new();
        prices.insert(WorkloadKind::Wasm, wasm[i % 3]);
        prices.insert(WorkloadKind::Train, train[i % 3]);
        if containers {
            prices.insert(WorkloadKind::Container, wasm[i % 3]);
            prices.insert(WorkloadKind::Service, service[i % 3]);
        }
        if blender {
            prices.insert(WorkloadKind::Render, render[i % 3]);
        }
        if !a.models.is_empty() {
            prices.insert(WorkloadKind::Inference, inference[i % 3]);
            // All but the last provider start with the packages; the last fetches them from
            // the node (verified) when it starts, as a new operator's machine would.
            if i + 1 < a.providers {
                let blobs = cairn_blobs::BlobStore::open(provider_home(root, i).join("blobs"))?;
                for (_, path) in &a.models {
                    blobs.put_file(path)?;
                }
            }
        }
        let mut attributes = BTreeMap::new();
        attributes.insert("tier".to_string(), if i == 0 { "datacenter" } else { "edge" }.to_string());
        let cfg = ProviderConfig {
            node: node.clone(),
            listen,
            endpoint: format!("http://{listen}"),
            region: REGIONS[i % 3].parse()?,
            stake: crn(1_000),
            prices,
            attributes,
            capacity: None,
            pricing: if i == 1 { "undercut:7000".into() } else { "posted".into() },
            max_parallel: 2,
            heartbeat_secs: 20,
            models: a.models.iter().map(|m| m.0).collect(),
            gpu: false,
            storage: Some(cairn_types::StorageOffer { capacity_gib: 8, price_per_gib_epoch: storage[i % 3] }),
            behaviour: Default::default(),
        };
        ProviderHome(provider_home(root, i)).init(&cfg, k)?;
    }
    Ok(())
}

/// What to lay out.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) validators: usize,
    pub(crate) providers: usize,
    pub(crate) p2p_port: u16,
    pub(crate) api_port: u16,
    pub(crate) provider_port: u16,
    /// Model packages every provider serves (id, package file).
    pub(crate) models: Vec<(cairn_types::ContentId, PathBuf)>,
    /// Chain parameter overrides (`NAME=VALUE`).
    pub(crate) params: Vec<String>,
}
