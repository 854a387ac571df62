//! Token amounts: `u128` base units, shown as CRN with six decimals.

use std::fmt;
use std::str::FromStr;

use borsh::{BorshDeserialize, BorshSerialize};

use crate::{Error, Result};

/// Decimal places of one CRN.
pub const DECIMALS: u32 = 6;
/// Base units ("ucrn") in one CRN.
pub const BASE_UNITS_PER_CRN: u128 = 1_000_000;

/// An amount of CRN in base units (1 CRN = 1,000,000 ucrn).
///
/// Text form always names its unit, so `"1.5 CRN"` and `"1500000 ucrn"` are the same amount and
/// a bare number is refused rather than guessed at.
///
/// ```
/// use cairn_types::Amount;
/// let a: Amount = "1.5 CRN".parse().unwrap();
/// assert_eq!(a.base_units(), 1_500_000);
/// assert_eq!(a.to_string(), "1.5 CRN");
/// assert_eq!("1500000 ucrn".parse::<Amount>().unwrap(), a);
/// assert!("1.5".parse::<Amount>().is_err());
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize)]
pub struct Amount(u128);

impl Amount {
    /// Zero.
    pub const ZERO: Amount = Amount(0);
    /// The largest amount.
    pub const MAX: Amount = Amount(u128::MAX);

    /// An amount of base units.
    pub const fn from_base_units(units: u128) -> Self {
        Amount(units)
    }

    /// Whole CRN, or `None` on overflow.
    pub fn from_crn(crn: u128) -> Option<Self> {
        crn.checked_mul(BASE_UNITS_PER_CRN).map(Amount)
    }

    /// The amount in base units.
    pub const fn base_units(self) -> u128 {
        self.0
    }

    /// True for zero.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// `self + other`, or `None` on overflow.
    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        self.0.checked_add(other.0).map(Amount)
    }

    /// `self - other`, or `None` when `other > self`.
    pub fn checked_sub(self, other: Amount) -> Option<Amount> {
        self.0.checked_sub(other.0).map(Amount)
    }

    /// `self × n`, or `None` on overflow.
    pub fn checked_mul(self, n: u128) -> Option<Amount> {
        self.0.checked_mul(n).map(Amount)
    }

    /// `self ÷ n` rounded down, or `None` when `n` is zero.
    pub fn checked_div(self, n: u128) -> Option<Amount> {
        self.0.checked_div(n).map(Amount)
    }

    /// `self × bps / 10_000` rounded down, or `None` on overflow.
    pub fn checked_bps(self, bps: u32) -> Option<Amount> {
        self.0.checked_mul(u128::from(bps)).and_then(|v| v.checked_div(10_000)).map(Amount)
    }

    /// The smaller of two amounts.
    pub fn min(self, other: Amount) -> Amount {
        if self <= other { self } else { other }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / BASE_UNITS_PER_CRN;
        let frac = self.0 % BASE_UNITS_PER_CRN;
        if frac == 0 {
            write!(f, "{whole} CRN")
        } else {
            let digits = format!("{frac:06}");
            write!(f, "{whole}.{} CRN", digits.trim_end_matches('0'))
        }
    }
}

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ucrn", self.0)
    }
}

impl FromStr for Amount {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason| Error::InvalidAmount { input: s.to_owned(), reason };
        let t = s.trim();
        let (number, unit) = if let Some(n) = t.strip_suffix("ucrn") {
            (n.trim_end(), "ucrn")
        } else if let Some(n) = t.strip_suffix("CRN").or_else(|| t.strip_suffix("crn")) {
            (n.trim_end(), "CRN")
        } else {
            return Err(bad("name the unit: \"CRN\" or \"ucrn\" (e.g. \"1.5 CRN\")"));
        };
        if number.is_empty() {
            return Err(bad("missing number"));
        }
        let (whole, frac) = match number.split_once('.') {
            Some((w, f)) => (w, Some(f)),
            None => (number, None),
        };
        let digits_only = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
        if !digits_only(whole) {
            return Err(bad("not a non-negative decimal number"));
        }
        let whole: u128 = whole.parse().map_err(|_| bad("too large"))?;
        match unit {
            "ucrn" => {
                if frac.is_some() {
                    return Err(bad("ucrn is the smallest unit; no fractions"));
                }
                Ok(Amount(whole))
            }
            _ => {
                let mut frac_units: u128 = 0;
                if let Some(f) = frac {
                    if !digits_only(f) {
                        return Err(bad("not a non-negative decimal number"));
                    }
                    if f.len() > DECIMALS as usize {
                        return Err(bad("more than 6 decimal places"));
                    }
                    let padded = format!("{f:0<6}");
                    frac_units = padded.parse().map_err(|_| bad("bad fraction"))?;
                }
                whole
                    .checked_mul(BASE_UNITS_PER_CRN)
                    .and_then(|w| w.checked_add(frac_units))
                    .map(Amount)
                    .ok_or_else(|| bad("too large"))
            }
        }
    }
}

crate::serde_as_text!(Amount);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_shows_crn_with_six_decimals() {
        assert_eq!("0.000001 CRN".parse::<Amount>().unwrap(), Amount(1));
        assert_eq!("12 CRN".parse::<Amount>().unwrap(), Amount(12_000_000));
        assert_eq!("7ucrn".parse::<Amount>().unwrap(), Amount(7));
        assert_eq!(Amount(1).to_string(), "0.000001 CRN");
        assert_eq!(Amount(12_340_000).to_string(), "12.34 CRN");
    }

    #[test]
    fn refuses_ambiguous_or_invalid_text() {
        for s in ["", "1", "CRN", "-1 CRN", "1.0000001 CRN", "1.5 ucrn", "1e3 CRN", "1..2 CRN", ".5 CRN"] {
            assert!(s.parse::<Amount>().is_err(), "{s:?} should be refused");
        }
        let huge = format!("{} CRN", u128::MAX);
        assert!(huge.parse::<Amount>().is_err());
    }

    proptest! {
        #[test]
        fn display_round_trips(units in any::<u128>()) {
            let a = Amount(units);
            prop_assert_eq!(a.to_string().parse::<Amount>().unwrap(), a);
        }
    }
}
