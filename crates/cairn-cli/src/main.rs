//! `cairn`: run a devnet, a node, and (as the network grows) wallets, jobs and providers.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};

mod bench;
mod bench_batching;
mod bench_container;
mod bench_embeddings;
mod bench_inference;
mod bench_render;
mod bench_service;
mod bench_storage;
mod bench_train;
mod catalog;
mod demo;
mod devnet;
mod gateway;
mod image;
mod job;
mod keys;
mod manifest;
mod model;
mod node;
mod provider;
mod render;
mod service;
mod sim;
mod store;
mod train;
mod wallet;

/// Cairn: verified AI compute on a decentralized network.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole network on this machine.
    Devnet(devnet::DevnetArgs),
    /// Set up, run and inspect a node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Keys, balances and transfers.
    #[command(subcommand)]
    Wallet(wallet::WalletCommand),
    /// Submit and follow jobs.
    #[command(subcommand)]
    Job(job::JobCommand),
    /// Run a provider: sell this machine's compute.
    #[command(subcommand)]
    Provider(provider::ProviderCommand),
    /// Model packages: import weights, list, install the demo models, run locally.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Long-running services: leases with an on-chain SLA.
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// Keep files on the network under storage deals with possession proofs, and fetch them back.
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// Container images for `kind: container` jobs.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Serve an OpenAI-compatible API whose requests run as paid jobs on the network.
    Gateway(gateway::GatewayArgs),
    /// Measure the network.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Simulate verification economics at scale on the real state machine: cheaters,
    /// colluders and lazy auditors against random audits, disputes and canaries.
    Sim(sim::SimArgs),
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Write a node's home directory: key, config and genesis.
    Init(node::InitArgs),
    /// Run the node in a home directory.
    Run(HomeArg),
    /// Show a node's chain id, height and state root.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
struct HomeArg {
    /// The node's home directory.
    #[arg(long, env = "CAIRN_HOME", default_value = ".cairn/node")]
    home: PathBuf,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// The node's API address.
    #[arg(long, env = "CAIRN_API", default_value = "http://127.0.0.1:8080")]
    api: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,commonware=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The engine's kernels ask for their thread count on every matrix product; without
/// `RAYON_NUM_THREADS` each ask reads `/proc/cpuinfo` (a fifth of a decode step under load).
/// Fix the count once, before any thread starts, by re-executing this same process image with
/// it set (same pid, so signals and exit codes are untouched).
#[cfg(unix)]
fn pin_engine_threads() {
    use std::os::unix::process::CommandExt as _;
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let n = cairn_runtime::inference::engine_threads();
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("RAYON_NUM_THREADS", n.to_string())
        .exec();
    // Only reached when the exec failed: carry on with the slower default.
    eprintln!("warning: could not fix the engine's thread count ({err}); continuing");
}

fn main() {
    #[cfg(unix)]
    pin_engine_threads();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Devnet(args) => devnet::run(args),
        Command::Node(NodeCommand::Init(args)) => node::init(args),
        Command::Node(NodeCommand::Run(h)) => {
            init_logging();
            node::run(&h.home)
        }
        Command::Node(NodeCommand::Status(s)) => node::status(&s.api, s.json),
        Command::Bench(b) => bench::run(b),
        Command::Wallet(w) => wallet::run(w),
        Command::Job(j) => job::run(j),
        Command::Provider(p) => provider::run(p),
        Command::Model(m) => model::run(m),
        Command::Image(i) => image::run(i),
        Command::Service(c) => service::run(c),
        Command::Store(c) => store::run(c),
        Command::Gateway(g) => gateway::run(g),
        Command::Sim(s) => sim::run(s),
    }
}

/// A tokio runtime for client-side commands.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn parse_addr(s: &str) -> Result<SocketAddr> {
    match s.parse() {
        Ok(a) => Ok(a),
        Err(_) => bail!("{s:?} is not a socket address like 127.0.0.1:8080"),
    }
}
