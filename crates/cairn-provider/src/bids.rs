//! The bid engine's pricing: given an open task and its job, what to ask (or not to bid).

use cairn_types::{Amount, JobSpec};

/// Decides a bid for an open task. Screening for kind, resources and constraints happens
/// before; a policy only prices.
pub trait PricingPolicy: Send + Sync + std::fmt::Debug {
    /// The price to ask, or `None` to stay out. `posted` is this provider's posted price for
    /// the job's kind.
    fn price(&self, spec: &JobSpec, posted: Amount) -> Option<Amount>;
}

/// Ask the posted price when the job pays at least that.
#[derive(Debug, Clone, Copy, Default)]
pub struct Posted;

impl PricingPolicy for Posted {
    fn price(&self, spec: &JobSpec, posted: Amount) -> Option<Amount> {
        (posted <= spec.max_price_per_task).then_some(posted)
    }
}

/// Ask a fraction of the job's maximum, but never less than a floor (the posted price): wins
/// auctions against posted-price bidders while it stays profitable.
#[derive(Debug, Clone, Copy)]
pub struct Undercut {
    /// Share of the maximum to ask, in basis points.
    pub bps_of_max: u32,
}

impl PricingPolicy for Undercut {
    fn price(&self, spec: &JobSpec, posted: Amount) -> Option<Amount> {
        let ask = spec.max_price_per_task.checked_bps(self.bps_of_max)?;
        let ask = if ask < posted { posted } else { ask };
        (ask <= spec.max_price_per_task && !ask.is_zero()).then_some(ask)
    }
}

/// Build a policy by name: `posted`, or `undercut:<bps>`.
///
/// # Errors
/// A message for an unknown name.
pub fn policy(name: &str) -> Result<Box<dyn PricingPolicy>, String> {
    match name.split_once(':') {
        None if name == "posted" => Ok(Box::new(Posted)),
        Some(("undercut", bps)) => {
            let bps = bps.parse().map_err(|_| format!("undercut:{bps}: expected basis points"))?;
            Ok(Box::new(Undercut { bps_of_max: bps }))
        }
        _ => Err(format!("unknown pricing policy {name:?} (use \"posted\" or \"undercut:<bps>\")")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(max: &str) -> JobSpec {
        JobSpec::from_yaml(&format!(
            "kind: wasm\nworkload: af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262\nmax_price_per_task: {max}\n"
        ))
        .unwrap()
    }

    #[test]
    fn posted_pricing_stays_out_of_jobs_that_pay_too_little() {
        let posted = "0.5 CRN".parse().unwrap();
        assert_eq!(Posted.price(&spec("1 CRN"), posted), Some(posted));
        assert_eq!(Posted.price(&spec("0.4 CRN"), posted), None);
    }

    #[test]
    fn undercut_pricing_asks_a_share_of_the_maximum_but_not_below_its_floor() {
        let p = policy("undercut:8000").unwrap();
        assert_eq!(p.price(&spec("1 CRN"), "0.1 CRN".parse().unwrap()), Some("0.8 CRN".parse().unwrap()));
        assert_eq!(p.price(&spec("1 CRN"), "0.9 CRN".parse().unwrap()), Some("0.9 CRN".parse().unwrap()));
        assert!(policy("free").is_err());
    }
}
