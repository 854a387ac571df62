//! What a provider declares when it registers: where it is, what it has, what it charges.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

use crate::job::{WorkloadKind, check_attributes, check_text};
use crate::{Amount, Error, Result};

/// The provider attribute naming the class its inference runs in (CPU instruction-set class, or
/// `gpu:` and the device). Inference is bitwise reproducible only within a class, so the chain
/// draws an inference result's auditors from its worker's class.
pub const INFERENCE_CLASS_ATTRIBUTE: &str = "inference.class";

/// An ISO 3166-1 alpha-2 country code, upper case (`DE`, `US`, `SG`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize)]
pub struct Region(pub [u8; 2]);

impl Region {
    /// True if both bytes are upper-case ASCII letters.
    pub fn is_valid(&self) -> bool {
        self.0.iter().all(u8::is_ascii_uppercase)
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.0).unwrap_or("??"))
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Region({self})")
    }
}

impl FromStr for Region {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let b = s.as_bytes();
        let r = match b {
            [a, c] => Region([a.to_ascii_uppercase(), c.to_ascii_uppercase()]),
            _ => Region([0, 0]),
        };
        if r.is_valid() {
            Ok(r)
        } else {
            Err(Error::InvalidProviderInfo(format!("region {s:?} is not a two-letter ISO country code")))
        }
    }
}

crate::serde_as_text!(Region);

/// One GPU.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct Gpu {
    /// Model name, e.g. `H100`.
    pub model: String,
    /// Memory in MiB.
    pub vram_mb: u64,
}

/// Compute capacity.
#[derive(Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    /// CPU in thousandths of a core.
    pub cpu_millis: u64,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// GPUs.
    #[serde(default)]
    pub gpus: Vec<Gpu>,
}

/// Posted prices: per task for batch kinds, per block for `service` leases.
#[derive(Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PriceSheet(pub BTreeMap<WorkloadKind, Amount>);

impl PriceSheet {
    /// The posted price for a kind, if the provider serves it.
    pub fn get(&self, kind: WorkloadKind) -> Option<Amount> {
        self.0.get(&kind).copied()
    }
}

/// A provider's registration: endpoint, region, attributes, capacity and prices.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderInfo {
    /// Where clients and other providers reach its blob endpoint (`http://host:port`).
    pub endpoint: String,
    /// Where the hardware is.
    pub region: Region,
    /// `key=value` attributes such as `gpu.model=H100` or `tier=datacenter`.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// What it offers.
    pub capacity: Capacity,
    /// What it charges.
    pub prices: PriceSheet,
    /// Room and price for storage deals, where it stores blobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<crate::StorageOffer>,
}

/// Limits on registration data.
pub mod provider_limits {
    /// Endpoint length.
    pub const MAX_ENDPOINT: usize = 256;
    /// GPUs per provider.
    pub const MAX_GPUS: usize = 64;
    /// GPU model name length.
    pub const MAX_GPU_MODEL: usize = 64;
    /// Storage a provider may offer, in GiB (1 PiB).
    pub const MAX_STORAGE_GIB: u64 = 1 << 20;
}

impl ProviderInfo {
    /// Check sizes and formats.
    ///
    /// # Errors
    /// [`Error::InvalidProviderInfo`] naming the first broken rule.
    pub fn validate(&self) -> Result<()> {
        use provider_limits::*;
        let bad = |m: String| Err(Error::InvalidProviderInfo(m));
        if self.endpoint.is_empty() || self.endpoint.len() > MAX_ENDPOINT {
            return bad(format!("endpoint must be 1..={MAX_ENDPOINT} bytes"));
        }
        if !self.region.is_valid() {
            return bad("region must be a two-letter ISO country code".into());
        }
        check_attributes(&self.attributes).map_err(Error::InvalidProviderInfo)?;
        if self.capacity.gpus.len() > MAX_GPUS {
            return bad(format!("at most {MAX_GPUS} GPUs"));
        }
        for g in &self.capacity.gpus {
            check_text("gpu model", &g.model, MAX_GPU_MODEL).map_err(Error::InvalidProviderInfo)?;
        }
        if self.prices.0.is_empty() && self.storage.is_none() {
            return bad("the price sheet must name at least one workload kind, or storage be offered".into());
        }
        if let Some(s) = &self.storage {
            if s.capacity_gib == 0 || s.capacity_gib > MAX_STORAGE_GIB {
                return bad(format!("storage capacity_gib must be 1..={MAX_STORAGE_GIB}"));
            }
            if s.price_per_gib_epoch.is_zero()
                || s.price_per_gib_epoch.base_units() > crate::limits::MAX_PRICE
            {
                return bad(
                    "the storage price must be above zero and at most the protocol's maximum price".into()
                );
            }
        }
        if self.prices.0.values().any(|p| p.is_zero() || p.base_units() > crate::limits::MAX_PRICE) {
            return bad("prices must be above zero and at most the protocol's maximum price".into());
        }
        Ok(())
    }
}
