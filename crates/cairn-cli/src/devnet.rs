//! `cairn devnet`: a whole network on this machine, each validator its own process with its
//! own data directory and ports, configured exactly as a multi-machine network would be.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use cairn_node::config::{
    ConsensusConfig, Home, InitPlan, MempoolLimits, NodeConfig, Peer, local_genesis, write_home,
};
use cairn_state::Params;
use cairn_types::{Amount, SecretKey};
use clap::Args;

/// `cairn devnet`.
#[derive(Debug, Args)]
pub(crate) struct DevnetArgs {
    /// Number of validators.
    #[arg(long, default_value_t = 1)]
    validators: usize,
    /// Where the network's data lives (reused across runs).
    #[arg(long, default_value = ".cairn/devnet")]
    home: PathBuf,
    /// Delete existing data first.
    #[arg(long)]
    fresh: bool,
    /// First p2p port; validator i uses base + i.
    #[arg(long, default_value_t = 26650)]
    p2p_port: u16,
    /// First API port; validator i uses base + i.
    #[arg(long, default_value_t = 8080)]
    api_port: u16,
    /// Stop after this many finalized blocks (default: run until interrupted).
    #[arg(long)]
    blocks: Option<u64>,
}

pub(crate) const CHAIN_ID: &str = "cairn-devnet";

fn validator_home(root: &Path, i: usize) -> PathBuf {
    root.join(format!("validator-{i}"))
}

/// Params suited to a devnet: short windows so demos finish in seconds.
pub(crate) fn devnet_params() -> Params {
    Params {
        challenge_window: 5,
        unbonding_blocks: 60,
        reward_epoch_blocks: 60,
        heartbeat_timeout: 600,
        storage_epoch_blocks: 60,
        min_provider_stake: Amount::from_base_units(100_000_000),
        ..Params::default()
    }
}

/// Create the validators' homes with one shared genesis.
fn create(
    root: &Path,
    n: usize,
    p2p_port: u16,
    api_port: u16,
    extra: &[(cairn_types::Address, Amount)],
) -> Result<()> {
    let keys: Vec<SecretKey> = (0..n).map(|_| SecretKey::generate()).collect::<Result<_, _>>()?;
    let port = |base: u16, i: usize| -> Result<u16> {
        base.checked_add(u16::try_from(i)?).context("port out of range")
    };
    let mut peers = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        peers.push(Peer { address: k.address(), p2p: format!("127.0.0.1:{}", port(p2p_port, i)?).parse()? });
    }
    let faucet = SecretKey::generate()?;
    std::fs::create_dir_all(root)?;
    std::fs::write(root.join("faucet.key"), format!("{}\n", hex_seed(&faucet)))?;
    let mut funded: Vec<_> =
        keys.iter().map(|k| (k.address(), Amount::from_base_units(1_000_000_000_000))).collect();
    funded.push((faucet.address(), Amount::from_base_units(1_000_000_000_000_000)));
    funded.extend_from_slice(extra);
    let validators: Vec<_> = keys.iter().map(SecretKey::address).collect();
    let genesis = local_genesis(CHAIN_ID, &validators, &funded, devnet_params());
    for (i, k) in keys.iter().enumerate() {
        let config = NodeConfig {
            moniker: format!("validator-{i}"),
            p2p_listen: peers[i].p2p,
            api_listen: format!("127.0.0.1:{}", port(api_port, i)?).parse()?,
            validators: peers.clone(),
            consensus: ConsensusConfig { empty_block_wait_ms: 200, ..ConsensusConfig::default() },
            mempool: MempoolLimits::default(),
            max_block_txs: 20_000,
            worker_threads: 2,
        };
        write_home(&InitPlan { home: validator_home(root, i), key: k.clone(), config }, &genesis)?;
    }
    Ok(())
}

fn hex_seed(k: &SecretKey) -> String {
    k.seed().iter().map(|b| format!("{b:02x}")).collect()
}

/// The running validator processes; killed when dropped.
pub(crate) struct Network {
    children: Vec<(usize, Child)>,
    /// API base URLs, by validator.
    pub(crate) apis: Vec<String>,
    /// The network's data directory.
    pub(crate) root: PathBuf,
}

impl Drop for Network {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Network {
    /// A validator process that exited, if any.
    fn exited(&mut self) -> Option<(usize, std::process::ExitStatus)> {
        for (i, c) in &mut self.children {
            if let Ok(Some(status)) = c.try_wait() {
                return Some((*i, status));
            }
        }
        None
    }
}

/// Lay out (or reuse) the devnet and start every validator.
pub(crate) fn start(
    root: &Path,
    n: usize,
    fresh: bool,
    p2p_port: u16,
    api_port: u16,
    extra: &[(cairn_types::Address, Amount)],
) -> Result<Network> {
    if n == 0 || n > 64 {
        bail!("--validators must be 1..=64");
    }
    if fresh && root.exists() {
        std::fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))?;
    }
    let existing = (0..).take_while(|i| validator_home(root, *i).join("config.toml").exists()).count();
    if existing == 0 {
        create(root, n, p2p_port, api_port, extra)?;
    } else if existing != n {
        bail!(
            "{} holds a devnet of {existing} validators; pass --fresh to start a new one with {n}",
            root.display()
        );
    }
    let exe = std::env::current_exe().context("locating the cairn binary")?;
    let mut net = Network { children: Vec::new(), apis: Vec::new(), root: root.to_path_buf() };
    for i in 0..n {
        let home = validator_home(root, i);
        let cfg = Home(home.clone()).load_config()?;
        let log = std::fs::File::create(home.join("node.log")).context("creating the node log")?;
        let child = Command::new(&exe)
            .args(["node", "run", "--home"])
            .arg(&home)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting a validator process")?;
        net.children.push((i, child));
        net.apis.push(format!("http://{}", cfg.api_listen));
    }
    Ok(net)
}

/// Wait for every validator to serve its state and finalize `height`.
pub(crate) async fn wait_ready(net: &mut Network, height: u64, timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    for (i, api) in net.apis.clone().iter().enumerate() {
        let client = cairn_client::Client::new(api);
        loop {
            if let Some((j, status)) = net.exited() {
                bail!(
                    "validator {j} exited ({status}); see {}",
                    validator_home(&net.root, j).join("node.log").display()
                );
            }
            if let Ok(s) = client.status().await
                && s.ready
                && s.height >= height
            {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("validator {i} did not become ready within {timeout:?}; see its node.log");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

pub(crate) fn run(a: DevnetArgs) -> Result<()> {
    let rt = crate::runtime()?;
    let mut net = start(&a.home, a.validators, a.fresh, a.p2p_port, a.api_port, &[])?;
    rt.block_on(async {
        wait_ready(&mut net, 1, Duration::from_secs(60)).await?;
        println!(
            "Cairn devnet: {} validator(s), chain {CHAIN_ID}, data in {}",
            a.validators,
            a.home.display()
        );
        for (i, api) in net.apis.iter().enumerate() {
            println!(
                "  validator-{i}  API {api}   logs {}",
                validator_home(&a.home, i).join("node.log").display()
            );
        }
        println!("  API address: {}", net.apis[0]);
        let client = cairn_client::Client::new(&net.apis[0]);
        let mut last = 0;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => { println!("stopping"); break; }
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
            if let Some((i, status)) = net.exited() {
                bail!("validator {i} exited ({status}); see its node.log");
            }
            if let Ok(s) = client.status().await
                && s.height != last
            {
                last = s.height;
                println!(
                    "height {:>6}  state root {}…  txs {}",
                    s.height,
                    &s.state_root[..16.min(s.state_root.len())],
                    s.txs_finalized
                );
                if a.blocks.is_some_and(|b| s.height >= b) {
                    break;
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    drop(net);
    Ok(())
}
