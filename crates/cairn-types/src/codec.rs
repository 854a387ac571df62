//! The canonical, versioned binary codec.
//!
//! Every top-level value that is hashed, signed or stored is encoded as one version byte
//! followed by its [borsh](https://borsh.io) encoding. Borsh was built for consensus-critical
//! hashing: one encoding per value, fixed-width little-endian integers, length-prefixed
//! collections, and (with `de_strict_order`) maps whose keys must come sorted. Decoding also
//! refuses trailing bytes and re-encodes to check the input was the canonical form, so two
//! nodes can never read one value from two byte strings.

use borsh::{BorshDeserialize, BorshSerialize};

use crate::{Error, Result};

/// The codec version written in the first byte of every canonical encoding.
pub const CODEC_VERSION: u8 = 1;

/// A type with one canonical byte encoding.
pub trait Canonical: BorshSerialize + BorshDeserialize + Sized {
    /// A name for error messages.
    const WHAT: &'static str;
    /// The largest encoding accepted by [`Canonical::decode`].
    const MAX_BYTES: usize;

    /// The canonical encoding: version byte, then borsh.
    ///
    /// # Panics
    /// Only if a collection holds more than `u32::MAX` elements, which no value that passed
    /// validation or [`Canonical::decode`] can.
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![CODEC_VERSION];
        #[allow(clippy::expect_used)]
        borsh::to_writer(&mut out, self).expect("collections are bounded far below u32::MAX");
        out
    }

    /// Decode a canonical encoding.
    ///
    /// # Errors
    /// [`Error::TooLarge`] over [`Canonical::MAX_BYTES`], [`Error::UnsupportedVersion`] for an
    /// unknown version byte, [`Error::Malformed`] for anything that is not exactly the
    /// canonical encoding of a value (truncated, trailing bytes, bad tags, unsorted maps…).
    fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > Self::MAX_BYTES {
            return Err(Error::TooLarge { what: Self::WHAT, size: bytes.len(), max: Self::MAX_BYTES });
        }
        let (&version, body) =
            bytes.split_first().ok_or_else(|| Error::Malformed(format!("{}: empty input", Self::WHAT)))?;
        if version != CODEC_VERSION {
            return Err(Error::UnsupportedVersion { found: version, expected: CODEC_VERSION });
        }
        let value: Self =
            borsh::from_slice(body).map_err(|e| Error::Malformed(format!("{}: {e}", Self::WHAT)))?;
        if value.encode() != bytes {
            return Err(Error::Malformed(format!("{}: not the canonical encoding", Self::WHAT)));
        }
        Ok(value)
    }
}
