//! 32-byte identifiers: content ids (BLAKE3 of the bytes) and the ids the chain derives.

use std::fmt;
use std::str::FromStr;

use borsh::{BorshDeserialize, BorshSerialize};

use crate::{Error, Result};

/// A domain-separated BLAKE3 hash of several byte strings, each length-prefixed so that
/// `("ab", "c")` and `("a", "bc")` never collide.
pub fn hash_domain(domain: &'static str, parts: &[&[u8]]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(domain);
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    *h.finalize().as_bytes()
}

macro_rules! hash32 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash,
            BorshSerialize, BorshDeserialize,
        )]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// All zero bytes.
            pub const ZERO: $name = $name([0; 32]);

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Lower-case hex, 64 characters.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// First 8 hex characters, for logs and tables.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                let bad = || Error::InvalidId { input: s.to_owned() };
                let mut out = [0u8; 32];
                hex::decode_to_slice(s.trim(), &mut out).map_err(|_| bad())?;
                Ok($name(out))
            }
        }

        crate::serde_as_text!($name);
    };
}

hash32!(
    /// A generic 32-byte hash.
    Hash32
);
hash32!(
    /// The id of a blob: the BLAKE3 hash of its bytes (modules, models, inputs, outputs).
    ContentId
);
hash32!(
    /// The hash of a transaction's canonical encoding.
    TxHash
);
hash32!(
    /// A job's id, derived from its client, the client's nonce and the spec.
    JobId
);
hash32!(
    /// A task's id, derived from its job id and index.
    TaskId
);
hash32!(
    /// A lease's id.
    LeaseId
);
hash32!(
    /// A storage deal's id.
    DealId
);
hash32!(
    /// The authenticated root of the chain state after a block.
    StateRoot
);
hash32!(
    /// The hash of a block.
    BlockHash
);

impl ContentId {
    /// The content id of some bytes: their BLAKE3 hash.
    pub fn of(bytes: &[u8]) -> Self {
        ContentId(*blake3::hash(bytes).as_bytes())
    }
}

impl TaskId {
    /// The id of task `index` of `job`.
    pub fn derive(job: &JobId, index: u32) -> Self {
        TaskId(hash_domain("cairn task id v1", &[&job.0, &index.to_le_bytes()]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_id_is_plain_blake3_of_the_bytes() {
        assert_eq!(
            ContentId::of(b"").to_hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn ids_parse_from_hex_and_refuse_anything_else() {
        let id = ContentId::of(b"cairn");
        assert_eq!(id.to_hex().parse::<ContentId>().unwrap(), id);
        assert!("xyz".parse::<ContentId>().is_err());
        assert!(id.to_hex()[..62].parse::<ContentId>().is_err());
    }

    #[test]
    fn domain_hash_length_prefixes_parts() {
        assert_ne!(hash_domain("t", &[b"ab", b"c"]), hash_domain("t", &[b"a", b"bc"]));
    }
}
