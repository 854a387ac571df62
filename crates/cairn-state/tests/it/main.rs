//! Integration tests of the state machine, driven block by block.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::arithmetic_side_effects)]

mod bad_input;
mod common;
mod leases;
mod lifecycle;
mod properties;
mod render;
mod staking_rewards;
mod storage;
mod streams;
mod training;
mod verification;
