//! End-to-end tests of the `cairn` binary: real processes, real ports, real storage.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::arithmetic_side_effects)]

mod compute;
mod containers;
mod harness;
mod inference;
mod node;
mod services;
mod storage;
mod training;
mod verification;
