//! The genesis file: chain id, parameters, funded accounts and validators (TOML or JSON).

use std::collections::BTreeSet;
use std::path::Path;

use cairn_types::{Address, Amount, MAX_CHAIN_ID};
use serde::{Deserialize, Serialize};

use borsh::BorshSerialize;

use crate::keys;
use crate::model::{Account, Meta, Stake, Totals};
use crate::{Error, Params, Result, WriteSet};

/// A funded account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisAccount {
    /// Address.
    pub address: Address,
    /// Starting balance.
    pub balance: Amount,
}

/// A genesis validator with its bonded stake (part of the genesis supply).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisValidator {
    /// Address (also its consensus key).
    pub address: Address,
    /// Bonded stake.
    pub stake: Amount,
}

/// The genesis file.
///
/// ```
/// use cairn_state::Genesis;
/// let g = Genesis::from_toml(r#"
/// chain_id = "cairn-local"
/// [[accounts]]
/// address = "cairn1af9xcclzn3fq40h42pa3xtk9lx25wa4wh6l8hyjzrm4xj9zx6gkqtszesy"
/// balance = "1000 CRN"
/// [[validators]]
/// address = "cairn1af9xcclzn3fq40h42pa3xtk9lx25wa4wh6l8hyjzrm4xj9zx6gkqtszesy"
/// stake = "500 CRN"
/// [params]
/// challenge_window = 10
/// "#).unwrap();
/// assert_eq!(g.params.challenge_window, 10);
/// assert_eq!(g.supply().unwrap().to_string(), "1500 CRN");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genesis {
    /// The chain id every transaction must name.
    pub chain_id: String,
    /// Parameters; omitted ones take their defaults.
    #[serde(default)]
    pub params: Params,
    /// Funded accounts.
    #[serde(default)]
    pub accounts: Vec<GenesisAccount>,
    /// Validators.
    pub validators: Vec<GenesisValidator>,
}

impl Genesis {
    /// Parse TOML and validate.
    ///
    /// # Errors
    /// [`Error::Genesis`] for syntax, unknown fields or broken rules.
    pub fn from_toml(text: &str) -> Result<Self> {
        let g: Genesis = toml::from_str(text).map_err(|e| Error::Genesis(e.to_string()))?;
        g.validate()?;
        Ok(g)
    }

    /// Parse JSON and validate.
    ///
    /// # Errors
    /// [`Error::Genesis`] for syntax, unknown fields or broken rules.
    pub fn from_json(text: &str) -> Result<Self> {
        let g: Genesis = serde_json::from_str(text).map_err(|e| Error::Genesis(e.to_string()))?;
        g.validate()?;
        Ok(g)
    }

    /// Read a `.toml` or `.json` genesis file.
    ///
    /// # Errors
    /// [`Error::Genesis`] if it cannot be read, parsed or validated.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Genesis(format!("cannot read {}: {e}", path.display())))?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Self::from_json(&text),
            _ => Self::from_toml(&text),
        }
    }

    /// The state at height 0, as writes into an empty store.
    ///
    /// # Errors
    /// [`Error::Genesis`] if the genesis is invalid.
    pub fn writes(&self) -> Result<WriteSet> {
        self.validate()?;
        fn enc<T: BorshSerialize>(v: &T) -> Result<Option<Vec<u8>>> {
            borsh::to_vec(v).map(Some).map_err(|e| Error::Invariant(format!("encode genesis: {e}")))
        }
        let mut writes = WriteSet::new();
        writes.insert(keys::META.to_vec(), enc(&Meta { chain_id: self.chain_id.clone(), height: 0 })?);
        writes.insert(keys::PARAMS.to_vec(), enc(&self.params)?);
        writes.insert(
            keys::TOTALS.to_vec(),
            enc(&Totals { genesis_supply: self.supply()?, ..Totals::default() })?,
        );
        for a in &self.accounts {
            writes.insert(keys::account(&a.address), enc(&Account { balance: a.balance, nonce: 0 })?);
        }
        let mut validators: Vec<Address> = Vec::new();
        for v in &self.validators {
            writes.insert(keys::stake(&v.address), enc(&Stake { bonded: v.stake, unbonding: Vec::new() })?);
            validators.push(v.address);
        }
        validators.sort();
        writes.insert(keys::VALIDATORS.to_vec(), enc(&validators)?);
        Ok(writes)
    }

    /// TOML text of this genesis.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Total supply: balances plus validator stakes.
    ///
    /// # Errors
    /// [`Error::Genesis`] on overflow.
    pub fn supply(&self) -> Result<Amount> {
        let balances = self.accounts.iter().map(|a| a.balance);
        let stakes = self.validators.iter().map(|v| v.stake);
        balances.chain(stakes).try_fold(Amount::ZERO, |acc, x| {
            acc.checked_add(x).ok_or_else(|| Error::Genesis("total supply overflows".into()))
        })
    }

    /// Check the file makes a working chain.
    ///
    /// # Errors
    /// [`Error::Genesis`] naming the first broken rule.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Genesis(m));
        let id_ok = !self.chain_id.is_empty()
            && self.chain_id.len() <= MAX_CHAIN_ID
            && self.chain_id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !id_ok {
            return bad(format!("chain_id must be 1..={MAX_CHAIN_ID} characters of a-z, 0-9 and '-'"));
        }
        self.params.validate().map_err(|m| Error::Genesis(format!("params: {m}")))?;
        let mut seen = BTreeSet::new();
        for a in &self.accounts {
            if !seen.insert(a.address) {
                return bad(format!("account {} is listed twice", a.address));
            }
        }
        if self.validators.is_empty() {
            return bad("at least one validator is needed".into());
        }
        let mut vals = BTreeSet::new();
        for v in &self.validators {
            if !vals.insert(v.address) {
                return bad(format!("validator {} is listed twice", v.address));
            }
            if v.stake.is_zero() {
                return bad(format!("validator {} has no stake", v.address));
            }
        }
        self.supply()?;
        Ok(())
    }
}
