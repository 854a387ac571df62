//! Integration tests of the node.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::arithmetic_side_effects)]

mod sim;
mod uploads;
