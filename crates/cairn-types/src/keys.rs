//! Accounts are ed25519 keys: an [`Address`] is the 32-byte public key, shown as bech32m
//! (`cairn1…`); a [`SecretKey`] signs.

use std::fmt;
use std::str::FromStr;

use bech32::{Bech32m, Hrp};
use borsh::{BorshDeserialize, BorshSerialize};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::{Error, Result};

const HRP: Hrp = Hrp::parse_unchecked("cairn");

/// An account address: an ed25519 public key.
///
/// ```
/// use cairn_types::{Address, SecretKey};
/// let a = SecretKey::from_seed([7; 32]).address();
/// let text = a.to_string();
/// assert!(text.starts_with("cairn1"));
/// assert_eq!(text.parse::<Address>().unwrap(), a);
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize)]
pub struct Address(pub [u8; 32]);

impl Address {
    /// The raw public-key bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A reserved module address (escrow, fee pool…) that no key can sign for: derived from a
    /// name by hashing, so it is not a valid curve point with overwhelming probability and is
    /// never used to verify anything.
    pub fn module(name: &str) -> Address {
        Address(crate::hash_domain("cairn module account v1", &[name.as_bytes()]))
    }

    fn verifying_key(&self) -> Result<VerifyingKey> {
        VerifyingKey::from_bytes(&self.0).map_err(|_| Error::BadSignature)
    }

    /// Verify `sig` over `msg` with this address's key (strict: rejects weak keys and
    /// malleable signatures).
    ///
    /// # Errors
    /// [`Error::BadSignature`] if the key is not a valid point or the signature fails.
    pub fn verify(&self, msg: &[u8], sig: &Signature) -> Result<()> {
        let key = self.verifying_key()?;
        let sig = ed25519_dalek::Signature::from_bytes(&sig.0);
        key.verify_strict(msg, &sig).map_err(|_| Error::BadSignature)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match bech32::encode::<Bech32m>(HRP, &self.0) {
            Ok(s) => f.write_str(&s),
            Err(_) => Err(fmt::Error),
        }
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.to_string();
        let tail = s.get(s.len().saturating_sub(8)..).unwrap_or(&s);
        write!(f, "Address(…{tail})")
    }
}

impl FromStr for Address {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: String| Error::InvalidAddress { input: s.to_owned(), reason };
        let (hrp, data) = bech32::decode(s.trim()).map_err(|e| bad(e.to_string()))?;
        if hrp != HRP {
            return Err(bad(format!("prefix is {hrp:?}, expected \"cairn\"")));
        }
        let bytes: [u8; 32] =
            data.try_into().map_err(|d: Vec<u8>| bad(format!("{} bytes, expected 32", d.len())))?;
        Ok(Address(bytes))
    }
}

crate::serde_as_text!(Address);

/// An ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Signature(pub [u8; 64]);

impl Signature {
    /// The all-zero signature (never valid), used for the signing pre-image.
    pub const EMPTY: Signature = Signature([0; 64]);
}

impl Default for Signature {
    fn default() -> Self {
        Signature::EMPTY
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", hex::encode(&self.0[..6]))
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl FromStr for Signature {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let mut out = [0u8; 64];
        hex::decode_to_slice(s.trim(), &mut out).map_err(|_| Error::BadSignature)?;
        Ok(Signature(out))
    }
}

crate::serde_as_text!(Signature);

/// A secret signing key. Its `Debug` never prints the secret.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A fresh key from the operating system's random source.
    ///
    /// # Errors
    /// [`Error::Randomness`] if the OS random source fails.
    pub fn generate() -> Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::Randomness(e.to_string()))?;
        Ok(Self::from_seed(seed))
    }

    /// The key with this 32-byte seed (deterministic; for tests and keystores).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        SecretKey(SigningKey::from_bytes(&seed))
    }

    /// The 32-byte seed, for an encrypted keystore.
    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// This key's address.
    pub fn address(&self) -> Address {
        Address(self.0.verifying_key().to_bytes())
    }

    /// Sign a message.
    pub fn sign(&self, msg: &[u8]) -> Signature {
        Signature(self.0.sign(msg).to_bytes())
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({:?})", self.address())
    }
}

/// Whether `r` encodes a point of small order (any of the eight torsion points, under either
/// sign bit, canonical or not): a byte comparison, so the batch path stays cheap.
fn is_small_order_encoding(r: &[u8; 32]) -> bool {
    static Y: std::sync::OnceLock<Vec<[u8; 32]>> = std::sync::OnceLock::new();
    let ys = Y.get_or_init(|| {
        let mut ys: Vec<[u8; 32]> = curve25519_dalek::constants::EIGHT_TORSION
            .iter()
            .map(|t| {
                let mut y = t.compress().to_bytes();
                y[31] &= 0x7f;
                y
            })
            .collect();
        // Non-canonical encodings: y = 0 + p and y = 1 + p still fit in 255 bits.
        for low in [0xed, 0xee] {
            let mut y = [0xff; 32];
            y[0] = low;
            y[31] = 0x7f;
            ys.push(y);
        }
        ys
    });
    let mut y = *r;
    y[31] &= 0x7f;
    ys.contains(&y)
}

/// Verify many `(address, message, signature)` triples at once (about twice as fast as one by
/// one). Deterministic: the batch's random coefficients come from a transcript of its inputs.
///
/// # Errors
/// [`Error::BadSignature`] if any key is invalid or any signature fails; callers that need to
/// know which one fall back to [`Address::verify`].
pub fn verify_batch(items: &[(Address, &[u8], Signature)]) -> Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let mut keys = Vec::with_capacity(items.len());
    let mut msgs = Vec::with_capacity(items.len());
    let mut sigs = Vec::with_capacity(items.len());
    for (addr, msg, sig) in items {
        let key = addr.verifying_key()?;
        // The batch equation is not the strict one: refuse what strict verification refuses
        // outright (weak keys, small-order R), so a batch never accepts a signature that one-by-one
        // verification would not.
        let r: [u8; 32] = sig.0[..32].try_into().map_err(|_| Error::BadSignature)?;
        let r_small = is_small_order_encoding(&r);
        if key.is_weak() || r_small {
            return Err(Error::BadSignature);
        }
        keys.push(key);
        msgs.push(*msg);
        sigs.push(ed25519_dalek::Signature::from_bytes(&sig.0));
    }
    ed25519_dalek::verify_batch(&msgs, &sigs, &keys).map_err(|_| Error::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_weak_key_or_small_order_r_fails_the_batch_as_it_fails_alone() {
        let good = SecretKey::from_seed([9; 32]);
        let msg = b"pay".as_slice();
        // The identity point: a weak (small-order) key anyone could "sign" for.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = Address(identity);
        // With R = identity and s = 0 the cofactorless equation holds for the identity key.
        let mut forged = [0u8; 64];
        forged[..32].copy_from_slice(&identity);
        let forged = Signature(forged);
        assert!(weak.verify(msg, &forged).is_err());
        let items = vec![(good.address(), msg, good.sign(msg)), (weak, msg, forged)];
        assert_eq!(verify_batch(&items), Err(Error::BadSignature));
        // Every small-order R, in every encoding strict decoding accepts, is recognised.
        for t in curve25519_dalek::constants::EIGHT_TORSION {
            for sign in [0u8, 0x80] {
                let mut r = t.compress().to_bytes();
                r[31] |= sign;
                let decoded = curve25519_dalek::edwards::CompressedEdwardsY(r).decompress();
                assert_eq!(
                    is_small_order_encoding(&r),
                    decoded.is_some_and(|p| p.is_small_order()) || decoded.is_none()
                );
            }
        }
        let mut r = [0xff; 32];
        r[0] = 0xee;
        r[31] = 0x7f; // y = p + 1, a non-canonical identity
        assert!(
            curve25519_dalek::edwards::CompressedEdwardsY(r).decompress().is_some_and(|p| p.is_small_order())
        );
        assert!(is_small_order_encoding(&r));
        assert!(!is_small_order_encoding(&good.sign(msg).0[..32].try_into().unwrap()));
        // A small-order R under a strong key is refused too.
        let mut small_r = good.sign(msg);
        small_r.0[..32].copy_from_slice(&identity);
        assert_eq!(verify_batch(&[(good.address(), msg, small_r)]), Err(Error::BadSignature));
        assert!(good.address().verify(msg, &small_r).is_err());
    }

    #[test]
    fn batch_verification_accepts_good_and_refuses_one_bad() {
        let keys: Vec<_> = (0u8..8).map(|i| SecretKey::from_seed([i; 32])).collect();
        let msgs: Vec<Vec<u8>> = (0u8..8).map(|i| vec![i; 10]).collect();
        let mut items: Vec<_> =
            keys.iter().zip(&msgs).map(|(k, m)| (k.address(), m.as_slice(), k.sign(m))).collect();
        assert!(verify_batch(&items).is_ok());
        items[3].2.0[0] ^= 1;
        assert_eq!(verify_batch(&items), Err(Error::BadSignature));
        assert!(items[3].0.verify(items[3].1, &items[3].2).is_err());
        assert!(items[2].0.verify(items[2].1, &items[2].2).is_ok());
    }

    #[test]
    fn address_text_refuses_other_prefixes_and_lengths() {
        let a = SecretKey::from_seed([1; 32]).address();
        let other = bech32::encode::<Bech32m>(Hrp::parse_unchecked("cosmos"), &a.0).unwrap();
        assert!(other.parse::<Address>().is_err());
        let short = bech32::encode::<Bech32m>(HRP, &a.0[..20]).unwrap();
        assert!(short.parse::<Address>().is_err());
        let mut s = a.to_string();
        s.pop();
        s.push('q');
        assert!(s.parse::<Address>().is_err(), "checksum must catch a typo");
    }

    #[test]
    fn module_addresses_are_not_signing_keys() {
        let m = Address::module("escrow");
        assert_ne!(m, Address::module("fees"));
        assert!(m.verify(b"x", &Signature::EMPTY).is_err());
    }
}
