//! Codec tests: golden vectors, round trips and hostile bytes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::arithmetic_side_effects)]

mod codec;
