//! `cairn node …`.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use cairn_node::config::{
    ConsensusConfig, InitPlan, MempoolLimits, NodeConfig, Peer, local_genesis, write_home,
};
use cairn_state::{Genesis, Params};
use cairn_types::{Address, Amount, SecretKey};
use clap::Args;

/// `cairn node init`.
#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// Home directory to create.
    #[arg(long, env = "CAIRN_HOME", default_value = ".cairn/node")]
    home: std::path::PathBuf,
    /// Chain id of a new chain.
    #[arg(long, default_value = "cairn-local")]
    chain_id: String,
    /// p2p listen address.
    #[arg(long, default_value = "127.0.0.1:26650")]
    p2p: String,
    /// API listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    api: String,
    /// Join an existing chain with this genesis file instead of creating one.
    #[arg(long)]
    genesis: Option<std::path::PathBuf>,
    /// Another validator, as ADDRESS@HOST:PORT (repeat for each).
    #[arg(long = "peer")]
    peers: Vec<String>,
}

pub(crate) fn init(a: InitArgs) -> Result<()> {
    let key = SecretKey::generate().context("generating the node key")?;
    let p2p = crate::parse_addr(&a.p2p)?;
    let api = crate::parse_addr(&a.api)?;
    let mut validators = vec![Peer { address: key.address(), p2p }];
    for p in &a.peers {
        let (addr, sock) =
            p.split_once('@').with_context(|| format!("--peer {p:?}: expected ADDRESS@HOST:PORT"))?;
        let address: Address = addr.parse().with_context(|| format!("--peer {p:?}"))?;
        validators.push(Peer { address, p2p: crate::parse_addr(sock)? });
    }
    let genesis = match &a.genesis {
        Some(path) => Genesis::load(path).with_context(|| format!("reading {}", path.display()))?,
        None => {
            if !a.peers.is_empty() {
                bail!("a new chain starts with one validator; to join a chain pass --genesis too");
            }
            let funds = Amount::from_crn(1_000_000).context("amount")?;
            local_genesis(&a.chain_id, &[key.address()], &[(key.address(), funds)], Params::default())
        }
    };
    let config = NodeConfig {
        moniker: "node".into(),
        p2p_listen: p2p,
        api_listen: api,
        validators,
        consensus: ConsensusConfig::default(),
        mempool: MempoolLimits::default(),
        max_block_txs: 20_000,
        worker_threads: 2,
        blob_upload_limit: 1 << 30,
        uploads: Default::default(),
    };
    write_home(&InitPlan { home: a.home.clone(), key: key.clone(), config }, &genesis)?;
    println!("Initialised {} for chain {}", a.home.display(), genesis.chain_id);
    println!("  validator address: {}", key.address());
    println!("  run it with:       cairn node run --home {}", a.home.display());
    Ok(())
}

pub(crate) fn run(home: &Path) -> Result<()> {
    cairn_node::run::run(home).with_context(|| format!("running the node in {}", home.display()))
}

pub(crate) fn status(api: &str, json: bool) -> Result<()> {
    let rt = crate::runtime()?;
    let s = rt.block_on(cairn_client::Client::new(api).status())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!("chain       {}", s.chain_id);
        println!("height      {}", s.height);
        println!("state root  {}", s.state_root);
        println!("block       {}", s.block);
        println!("mempool     {} txs", s.mempool);
        println!("ready       {}", s.ready);
    }
    Ok(())
}
