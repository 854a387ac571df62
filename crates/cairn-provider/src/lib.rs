//! The provider daemon.
//!
//! A provider detects what its machine has, registers it on chain with a bond and a price
//! sheet, keeps a heartbeat, watches for open tasks (its bid engine prices them through a
//! pluggable [`PricingPolicy`]) and for tasks assigned to it, and runs each assigned task:
//! fetch the workload and inputs (verified), run them in the sandboxed executor, keep the
//! output in its blob store (served to clients from its endpoint), commit the output's content
//! id, and let the chain settle the payment. What it is doing is written to disk as it goes,
//! so a restarted provider resumes or releases each task instead of silently dropping it, and
//! a node that is briefly unreachable delays commits but never stops running work.
//!
//! Beside tasks it runs the leases the chain assigns it (`services`: long-running containers
//! exposed at `<endpoint>/lease/<id>/…`) and answers the chain's probe draws (`probes`: it
//! requests other providers' services as a client would and reports what it saw). Where the
//! operator prices `render` work, it renders Blender scenes with the machine's Blender in the
//! container sandbox (`render`), advertising the version so only matching jobs come to it.

mod audit;
mod bidding;
pub mod bids;
pub mod config;
pub mod daemon;
pub mod inventory;
pub mod ledger;
mod models;
mod pipeline;
mod probes;
mod render;
pub mod sender;
mod services;
mod storage;
mod streams;
mod train;
mod volumes;

pub use bids::{Posted, PricingPolicy, Undercut};
pub use config::{ProviderConfig, ProviderHome};
pub use daemon::run;

/// What can stop a provider.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration or home directory problems.
    #[error("{0}")]
    Config(String),
    /// The node refused or could not be reached.
    #[error(transparent)]
    Node(#[from] cairn_client::Error),
    /// Blob store problems.
    #[error(transparent)]
    Blobs(#[from] cairn_blobs::Error),
    /// Executor problems.
    #[error(transparent)]
    Runtime(#[from] cairn_runtime::RunError),
    /// Local I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
