//! Errors of this crate: parsing and decoding failures, each with a clear message.

/// What can go wrong when reading Cairn values from bytes or text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The bytes are not a canonical encoding of the expected type.
    #[error("malformed encoding: {0}")]
    Malformed(String),
    /// The encoding names a codec version this build does not know.
    #[error("unsupported codec version {found} (this build reads version {expected})")]
    UnsupportedVersion {
        /// Version byte found.
        found: u8,
        /// Version this build reads.
        expected: u8,
    },
    /// An encoding or field exceeds a protocol size limit.
    #[error("{what} is too large: {size} > {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// The size found.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// An amount string could not be parsed, or overflowed.
    #[error("invalid amount {input:?}: {reason}")]
    InvalidAmount {
        /// The text given.
        input: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// An address string could not be parsed.
    #[error("invalid address {input:?}: {reason}")]
    InvalidAddress {
        /// The text given.
        input: String,
        /// Why it was refused.
        reason: String,
    },
    /// A hex-encoded 32-byte id could not be parsed.
    #[error("invalid id {input:?}: expected 64 hex characters")]
    InvalidId {
        /// The text given.
        input: String,
    },
    /// A signature did not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// A job spec is syntactically valid but breaks a rule.
    #[error("invalid job spec: {0}")]
    InvalidJobSpec(String),
    /// Provider registration data breaks a rule.
    #[error("invalid provider info: {0}")]
    InvalidProviderInfo(String),
    /// YAML could not be parsed into a job spec (unknown fields are refused here).
    #[error("job spec YAML: {0}")]
    Yaml(String),
    /// The operating system's random source failed while generating a key.
    #[error("random source unavailable: {0}")]
    Randomness(String),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
