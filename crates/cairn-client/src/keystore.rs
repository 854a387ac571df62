//! An encrypted keystore: one JSON file per key, the 32-byte seed sealed with
//! ChaCha20-Poly1305 under a key derived from a password by Argon2id.
//!
//! ```no_run
//! use cairn_client::keystore::Keystore;
//! let ks = Keystore::open("/tmp/cairn-keys").unwrap();
//! let key = ks.create("alice", "correct horse battery staple").unwrap();
//! assert_eq!(ks.load("alice", "correct horse battery staple").unwrap().address(), key.address());
//! ```

use std::path::{Path, PathBuf};

use argon2::Argon2;
use cairn_types::{Address, SecretKey};
use chacha20poly1305::aead::{Aead as _, KeyInit as _};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};

/// Keystore errors.
#[derive(Debug, thiserror::Error)]
pub enum KeystoreError {
    /// No key by that name.
    #[error("no key named {0:?} in the keystore")]
    NotFound(String),
    /// A key by that name exists.
    #[error("a key named {0:?} already exists")]
    Exists(String),
    /// The password does not open the key (or the file was altered).
    #[error("wrong password for key {0:?} (or its file was altered)")]
    WrongPassword(String),
    /// Names are letters, digits, `-` and `_`.
    #[error("key names are 1-64 letters, digits, '-' or '_': {0:?}")]
    BadName(String),
    /// The file is not a keystore entry.
    #[error("{0}: not a keystore file: {1}")]
    Malformed(PathBuf, String),
    /// Disk or random source.
    #[error("keystore: {0}")]
    Io(String),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    version: u32,
    address: Address,
    kdf: String,
    m_kib: u32,
    t: u32,
    p: u32,
    salt: String,
    cipher: String,
    nonce: String,
    ciphertext: String,
}

/// A directory of encrypted keys.
#[derive(Debug, Clone)]
pub struct Keystore {
    dir: PathBuf,
}

fn io(e: impl std::fmt::Display) -> KeystoreError {
    KeystoreError::Io(e.to_string())
}

fn derive(password: &str, salt: &[u8], m: u32, t: u32, p: u32) -> Result<[u8; 32], KeystoreError> {
    let params = argon2::Params::new(m, t, p, Some(32)).map_err(io)?;
    let mut out = [0u8; 32];
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password_into(password.as_bytes(), salt, &mut out)
        .map_err(io)?;
    Ok(out)
}

fn check_name(name: &str) -> Result<(), KeystoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok { Ok(()) } else { Err(KeystoreError::BadName(name.into())) }
}

impl Keystore {
    /// Open (creating) a keystore directory.
    ///
    /// # Errors
    /// [`KeystoreError::Io`].
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, KeystoreError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io)?;
        Ok(Keystore { dir })
    }

    /// The keystore's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Generate and store a new key.
    ///
    /// # Errors
    /// [`KeystoreError`].
    pub fn create(&self, name: &str, password: &str) -> Result<SecretKey, KeystoreError> {
        let key = SecretKey::generate().map_err(io)?;
        self.import(name, &key, password)?;
        Ok(key)
    }

    /// Store an existing key.
    ///
    /// # Errors
    /// [`KeystoreError`].
    pub fn import(&self, name: &str, key: &SecretKey, password: &str) -> Result<(), KeystoreError> {
        check_name(name)?;
        let path = self.path(name);
        if path.exists() {
            return Err(KeystoreError::Exists(name.into()));
        }
        let (m, t, p) = (19_456, 2, 1);
        let mut salt = [0u8; 16];
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut salt).map_err(io)?;
        getrandom::fill(&mut nonce).map_err(io)?;
        let k = derive(password, &salt, m, t, p)?;
        let cipher = ChaCha20Poly1305::new(&Key::from(k));
        let ct = cipher.encrypt(&Nonce::from(nonce), key.seed().as_slice()).map_err(io)?;
        let entry = Entry {
            version: 1,
            address: key.address(),
            kdf: "argon2id".into(),
            m_kib: m,
            t,
            p,
            salt: hex::encode(salt),
            cipher: "chacha20poly1305".into(),
            nonce: hex::encode(nonce),
            ciphertext: hex::encode(ct),
        };
        let text = serde_json::to_string_pretty(&entry).map_err(io)?;
        use std::io::Write as _;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        opts.open(&path).and_then(|mut f| f.write_all(text.as_bytes())).map_err(io)
    }

    fn entry(&self, name: &str) -> Result<Entry, KeystoreError> {
        check_name(name)?;
        let path = self.path(name);
        let text = std::fs::read_to_string(&path).map_err(|_| KeystoreError::NotFound(name.into()))?;
        serde_json::from_str(&text).map_err(|e| KeystoreError::Malformed(path, e.to_string()))
    }

    /// A key's address, without the password.
    ///
    /// # Errors
    /// [`KeystoreError::NotFound`] or [`KeystoreError::Malformed`].
    pub fn address(&self, name: &str) -> Result<Address, KeystoreError> {
        Ok(self.entry(name)?.address)
    }

    /// Decrypt a key.
    ///
    /// # Errors
    /// [`KeystoreError::WrongPassword`] if the password (or file) is wrong.
    pub fn load(&self, name: &str, password: &str) -> Result<SecretKey, KeystoreError> {
        let e = self.entry(name)?;
        let bad = |why: &str| KeystoreError::Malformed(self.path(name), why.into());
        if e.version != 1 || e.kdf != "argon2id" || e.cipher != "chacha20poly1305" {
            return Err(bad("unsupported version or algorithm"));
        }
        if e.m_kib > 1 << 22 || e.t > 64 || e.p > 16 {
            return Err(bad("key derivation parameters out of range"));
        }
        let salt = hex::decode(&e.salt).map_err(|_| bad("salt"))?;
        let nonce = hex::decode(&e.nonce).map_err(|_| bad("nonce"))?;
        let ct = hex::decode(&e.ciphertext).map_err(|_| bad("ciphertext"))?;
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| bad("nonce length"))?;
        let k = derive(password, &salt, e.m_kib, e.t, e.p)?;
        let cipher = ChaCha20Poly1305::new(&Key::from(k));
        let seed = cipher
            .decrypt(&Nonce::from(nonce), ct.as_slice())
            .map_err(|_| KeystoreError::WrongPassword(name.into()))?;
        let seed: [u8; 32] = seed.try_into().map_err(|_| bad("seed length"))?;
        let key = SecretKey::from_seed(seed);
        if key.address() != e.address {
            return Err(KeystoreError::WrongPassword(name.into()));
        }
        Ok(key)
    }

    /// Names of all keys, sorted.
    ///
    /// # Errors
    /// [`KeystoreError::Io`].
    pub fn list(&self) -> Result<Vec<(String, Address)>, KeystoreError> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir).map_err(io)? {
            let p = e.map_err(io)?.path();
            if p.extension().and_then(|x| x.to_str()) == Some("json")
                && let Some(name) = p.file_stem().and_then(|s| s.to_str())
                && let Ok(addr) = self.address(name)
            {
                out.push((name.to_string(), addr));
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_round_trip_and_refuse_a_wrong_password_or_a_tampered_file() {
        let dir = std::env::temp_dir().join(format!("cairn-ks-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ks = Keystore::open(&dir).unwrap();
        let k = ks.create("alice", "pw").unwrap();
        assert_eq!(ks.load("alice", "pw").unwrap().address(), k.address());
        assert!(matches!(ks.load("alice", "nope"), Err(KeystoreError::WrongPassword(_))));
        assert!(matches!(ks.create("alice", "pw"), Err(KeystoreError::Exists(_))));
        assert!(matches!(ks.create("../evil", "pw"), Err(KeystoreError::BadName(_))));
        assert_eq!(ks.list().unwrap(), vec![("alice".to_string(), k.address())]);
        let path = dir.join("alice.json");
        let mut text = std::fs::read_to_string(&path).unwrap();
        let i = text.find("\"ciphertext\": \"").unwrap() + 16;
        let c = if &text[i..=i] == "0" { "1" } else { "0" };
        text.replace_range(i..=i, c);
        std::fs::write(&path, text).unwrap();
        assert!(matches!(ks.load("alice", "pw"), Err(KeystoreError::WrongPassword(_))));
    }
}
