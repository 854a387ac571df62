//! `cairn provider …`: set up and run a provider.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use cairn_provider::{ProviderConfig, ProviderHome};
use cairn_types::{Amount, Region, SecretKey, WorkloadKind};
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub(crate) enum ProviderCommand {
    /// Write a provider's home: key and provider.toml.
    Init(InitArgs),
    /// Run the provider daemon.
    Run(HomeArgs),
    /// Show what a running provider is doing.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub(crate) struct HomeArgs {
    /// The provider's home directory.
    #[arg(long, env = "CAIRN_PROVIDER_HOME", default_value = ".cairn/provider")]
    home: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    #[command(flatten)]
    home: HomeArgs,
    /// Node API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    node: String,
    /// Blob endpoint listen address.
    #[arg(long, default_value = "127.0.0.1:7100")]
    listen: String,
    /// Region (ISO country code).
    #[arg(long, default_value = "DE")]
    region: Region,
    /// Posted price, KIND=AMOUNT (repeat), e.g. wasm=0.05CRN.
    #[arg(long = "price", default_values_t = ["wasm=0.05CRN".to_string(), "render=0.05CRN".to_string()])]
    prices: Vec<String>,
    /// Stake to bond.
    #[arg(long, default_value = "1000 CRN")]
    stake: Amount,
    /// Bid pricing: posted, or undercut:<bps of max>.
    #[arg(long, default_value = "posted")]
    pricing: String,
    /// Serve a model from the local store for inference jobs (name or content id; repeat).
    /// Give an `inference=` price too.
    #[arg(long = "model")]
    models: Vec<String>,
    /// Run inference on the GPU (a build with the `cuda` feature).
    #[arg(long)]
    gpu: bool,
    /// Offer this many GiB for storage deals (with --storage-price).
    #[arg(long, requires = "storage_price")]
    storage_gib: Option<u64>,
    /// Price per GiB stored for one epoch, e.g. 0.001CRN.
    #[arg(long, requires = "storage_gib")]
    storage_price: Option<Amount>,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The provider's endpoint.
    #[arg(long, default_value = "http://127.0.0.1:7100")]
    endpoint: String,
}

pub(crate) fn parse_prices(list: &[String]) -> Result<BTreeMap<WorkloadKind, Amount>> {
    let mut out = BTreeMap::new();
    for p in list {
        let (k, v) = p.split_once('=').with_context(|| format!("--price {p:?}: expected KIND=AMOUNT"))?;
        let kind: WorkloadKind = serde_json::from_value(serde_json::Value::String(k.to_string()))
            .map_err(|_| anyhow::anyhow!("--price {p:?}: unknown workload kind {k:?}"))?;
        out.insert(kind, v.parse::<Amount>()?);
    }
    if out.is_empty() {
        bail!("give at least one --price");
    }
    Ok(out)
}

pub(crate) fn run(cmd: ProviderCommand) -> Result<()> {
    match cmd {
        ProviderCommand::Init(a) => {
            let listen = crate::parse_addr(&a.listen)?;
            let prices = parse_prices(&a.prices)?;
            let mut models = Vec::new();
            if !a.models.is_empty() {
                if !prices.contains_key(&WorkloadKind::Inference) {
                    bail!("--model needs an inference price too, e.g. --price inference=0.02CRN");
                }
                let store = crate::model::ModelStore::open_default()?;
                let blobs = cairn_blobs::BlobStore::open(a.home.home.join("blobs"))?;
                for m in &a.models {
                    let m = store.resolve(m)?;
                    if !blobs.has(&m.id) {
                        blobs.put_file(&m.path)?;
                    }
                    models.push(m.id);
                }
            }
            let cfg = ProviderConfig {
                node: a.node,
                listen,
                endpoint: format!("http://{listen}"),
                region: a.region,
                stake: a.stake,
                prices,
                attributes: BTreeMap::new(),
                capacity: None,
                pricing: a.pricing,
                max_parallel: 2,
                heartbeat_secs: 30,
                models,
                gpu: a.gpu,
                storage: a.storage_gib.zip(a.storage_price).map(|(capacity_gib, price_per_gib_epoch)| {
                    cairn_types::StorageOffer { capacity_gib, price_per_gib_epoch }
                }),
                behaviour: Default::default(),
            };
            let key = SecretKey::generate()?;
            ProviderHome(a.home.home.clone()).init(&cfg, &key)?;
            println!(
                "provider home {} ready; its account {} needs {} bonded plus fees",
                a.home.home.display(),
                key.address(),
                cfg.stake
            );
            Ok(())
        }
        ProviderCommand::Run(h) => {
            crate::init_logging();
            crate::runtime()?
                .block_on(cairn_provider::run(&h.home))
                .with_context(|| format!("running the provider in {}", h.home.display()))
        }
        ProviderCommand::Status(a) => {
            let client = cairn_client::Client::new(a.endpoint.trim_end_matches('/'));
            let v: serde_json::Value = crate::runtime()?.block_on(client.get("/provider/status"))?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
    }
}
