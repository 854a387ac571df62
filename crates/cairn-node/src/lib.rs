//! Cairn's node: runs the chain on commonware consensus, holds the mempool and block store,
//! and serves the API.

#![deny(clippy::unwrap_used)]

pub mod api;
pub mod app;
pub mod block;
pub mod certs;
pub mod config;
pub mod engine;
pub mod gossip;
pub mod mempool;
pub mod node;
pub mod receipt_log;
pub mod run;
pub mod state;
pub mod uploads;
