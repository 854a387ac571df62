//! Cairn's node: runs the chain on commonware consensus, holds the mempool and block store,
//! and serves the API.

#![deny(clippy::unwrap_used)]

pub mod app;
pub mod block;
pub mod engine;
pub mod mempool;
pub mod node;
pub mod state;
