//! Who audits: the audit probability of a result and the stake-weighted draw of auditors, both
//! from the block's beacon.

use cairn_types::{
    Address, INFERENCE_CLASS_ATTRIBUTE, JobSpec, TaskId, VerificationLevel, WorkloadKind, hash_domain,
};

use crate::ctx::{Ctx, Exec, invariant};
use crate::registry;
use crate::staking;

/// Basis points in one.
pub(crate) const BPS: u64 = 10_000;

/// A number in `0..n` from this block's beacon (`n > 0`).
pub(crate) fn draw(ctx: &Ctx<'_>, domain: &'static str, task: &TaskId, round: u32, n: u128) -> u128 {
    let h = hash_domain(domain, &[&ctx.beacon.0, &task.0, &round.to_le_bytes()]);
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    u128::from_le_bytes(b).checked_rem(n).unwrap_or(0)
}

/// Audit probability in basis points for a result of `worker` at `level`.
pub fn audit_probability_bps(
    params: &crate::Params,
    worker: &crate::model::Reputation,
    level: VerificationLevel,
) -> u64 {
    match level {
        VerificationLevel::None => 0,
        VerificationLevel::Strict => BPS,
        VerificationLevel::Standard => {
            let results = worker.total_valid.saturating_add(worker.total_failed);
            if results < params.audit_first_results {
                return BPS;
            }
            let by_streak = BPS.checked_div(worker.consecutive_valid.saturating_add(1)).unwrap_or(BPS);
            by_streak.max(u64::from(params.audit_p_min_bps)).min(BPS)
        }
    }
}

/// Draw up to `count` auditors by bonded stake, without replacement, among live providers that
/// could run `spec` for `client`, leaving out `exclude`. An inference or training result is
/// re-run only in its `worker`'s class ([`INFERENCE_CLASS_ATTRIBUTE`]): bitwise equality, which alone may slash,
/// holds only there.
#[allow(clippy::too_many_arguments)]
pub(crate) fn draw_auditors(
    ctx: &Ctx<'_>,
    spec: &JobSpec,
    client: &Address,
    worker: &Address,
    exclude: &[Address],
    task: &TaskId,
    round: u32,
    count: u32,
) -> Exec<Vec<Address>> {
    let classed = matches!(spec.kind, WorkloadKind::Inference | WorkloadKind::Train);
    let class = if classed {
        registry::get(ctx, worker)?.and_then(|w| w.info.attributes.get(INFERENCE_CLASS_ATTRIBUTE).cloned())
    } else {
        None
    };
    let mut pool: Vec<(Address, u128)> = Vec::new();
    for addr in registry::index(ctx)? {
        if exclude.contains(&addr) || addr == *worker {
            continue;
        }
        let p = registry::get(ctx, &addr)?.ok_or_else(|| invariant("indexed provider missing"))?;
        if !registry::fits(ctx, &p, spec, client) {
            continue;
        }
        if classed && p.info.attributes.get(INFERENCE_CLASS_ATTRIBUTE) != class.as_ref() {
            continue;
        }
        let stake = staking::stake(ctx, &addr)?.bonded.base_units();
        if stake > 0 {
            pool.push((addr, stake));
        }
    }
    let mut picked = Vec::new();
    for i in 0..count {
        let total = pool.iter().try_fold(0u128, |acc, (_, s)| acc.checked_add(*s));
        let Some(total) = total.filter(|t| *t > 0) else { break };
        let seed = round.checked_mul(128).and_then(|r| r.checked_add(i)).unwrap_or(u32::MAX);
        let mut r = draw(ctx, "cairn auditor sortition v1", task, seed, total);
        let mut at = 0;
        for (j, (_, s)) in pool.iter().enumerate() {
            if r < *s {
                at = j;
                break;
            }
            r = r.saturating_sub(*s);
        }
        picked.push(pool.remove(at).0);
    }
    Ok(picked)
}
