//! Choosing the key a command signs with: a keystore name, or a file holding a hex seed.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use cairn_client::keystore::Keystore;
use cairn_types::SecretKey;
use clap::Args;

/// Key selection.
#[derive(Debug, Args, Clone)]
pub(crate) struct KeyArgs {
    /// Name of a key in the keystore.
    #[arg(long, env = "CAIRN_KEY")]
    pub(crate) key: Option<String>,
    /// A file holding a hex-encoded key seed (as devnet writes them).
    #[arg(long, env = "CAIRN_KEY_FILE", conflicts_with = "key")]
    pub(crate) key_file: Option<PathBuf>,
    /// The keystore directory.
    #[arg(long, env = "CAIRN_KEYSTORE", default_value_os_t = default_keystore())]
    pub(crate) keystore: PathBuf,
}

pub(crate) fn default_keystore() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".cairn")
        .join("keys")
}

/// The password from `CAIRN_PASSWORD`, or asked for on the terminal.
pub(crate) fn password(prompt: &str) -> Result<String> {
    if let Ok(p) = std::env::var("CAIRN_PASSWORD") {
        return Ok(p);
    }
    rpassword::prompt_password(prompt).context("reading the password (or set CAIRN_PASSWORD)")
}

pub(crate) fn read_seed_file(path: &std::path::Path) -> Result<SecretKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed)
        .with_context(|| format!("{}: expected 64 hex characters", path.display()))?;
    Ok(SecretKey::from_seed(seed))
}

impl KeyArgs {
    /// Load the selected key.
    pub(crate) fn load(&self) -> Result<SecretKey> {
        match (&self.key, &self.key_file) {
            (_, Some(path)) => read_seed_file(path),
            (Some(name), None) => {
                let ks = Keystore::open(&self.keystore)?;
                let pw = password(&format!("password for {name}: "))?;
                Ok(ks.load(name, &pw)?)
            }
            (None, None) => bail!("choose a key: --key NAME (keystore) or --key-file PATH"),
        }
    }
}
