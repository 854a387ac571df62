//! What verification moves: auditors paid from the audit pool, reputation failures, and slashes
//! split between the auditors who found the fault, the client and the burn.

use cairn_types::{Address, Amount, Event, SlashReason, TaskId};

use crate::ctx::{Ctx, Exec, invariant};
use crate::model::Provider;
use crate::registry;
use crate::staking;

pub(crate) fn mark_failed(ctx: &mut Ctx<'_>, who: &Address) -> Exec<()> {
    if let Some(mut p) = registry::get(ctx, who)? {
        fail(&mut p);
        registry::put(ctx, &p)?;
    }
    Ok(())
}

pub(crate) fn fail(p: &mut Provider) {
    p.reputation.consecutive_valid = 0;
    p.reputation.total_failed = p.reputation.total_failed.saturating_add(1);
}

/// Slash up to `want` from `provider` for failing `client`: `slash_client_bps` of it to the
/// client, the rest burned, and a failure on the provider's record. Returns (slashed, to the
/// client, burned).
pub(crate) fn slash_to_client(
    ctx: &mut Ctx<'_>,
    provider: &Address,
    client: &Address,
    want: Amount,
) -> Exec<(Amount, Amount, Amount)> {
    let slashed = crate::staking::slash(ctx, provider, want)?;
    let to_client =
        slashed.checked_bps(ctx.params.slash_client_bps).ok_or_else(|| invariant("slash share"))?;
    crate::bank::credit(ctx, client, to_client)?;
    let burned = slashed.checked_sub(to_client).ok_or_else(|| invariant("slash split"))?;
    let mut totals = ctx.totals()?;
    totals.burned = totals.burned.checked_add(burned).ok_or_else(|| invariant("burn overflow"))?;
    ctx.set_totals(&totals)?;
    mark_failed(ctx, provider)?;
    Ok((slashed, to_client, burned))
}

pub(crate) fn add_to_pool(ctx: &mut Ctx<'_>, amount: Amount) -> Exec<()> {
    let mut totals = ctx.totals()?;
    totals.audit_pool = totals.audit_pool.checked_add(amount).ok_or_else(|| invariant("pool overflow"))?;
    ctx.set_totals(&totals)
}

/// Pay an auditor whose verdict matched the outcome: the task's price (it did the same work),
/// as far as the audit pool reaches.
pub(crate) fn pay_auditor(ctx: &mut Ctx<'_>, task: &TaskId, auditor: &Address, price: Amount) -> Exec<()> {
    let mut totals = ctx.totals()?;
    let amount = price.min(totals.audit_pool);
    totals.audit_pool =
        totals.audit_pool.checked_sub(amount).ok_or_else(|| invariant("audit pool underflow"))?;
    ctx.set_totals(&totals)?;
    crate::bank::credit(ctx, auditor, amount)?;
    ctx.emit(Event::AuditorPaid { task: *task, auditor: *auditor, amount });
    Ok(())
}

/// Slash `exposure_multiplier × price` (capped by the stake, bonded and unbonding): a share
/// to `finders`, a share to `client`, the rest burned.
pub(crate) fn slash(
    ctx: &mut Ctx<'_>,
    who: &Address,
    task: &TaskId,
    reason: SlashReason,
    price: Amount,
    finders: &[Address],
    client: Option<Address>,
) -> Exec<()> {
    let want = price.checked_mul(u128::from(ctx.params.exposure_multiplier)).unwrap_or(Amount::MAX);
    let amount = staking::slash(ctx, who, want)?;
    let mut to_auditors = Amount::ZERO;
    if let Ok(n) = u128::try_from(finders.len())
        && n > 0
    {
        let share =
            amount.checked_bps(ctx.params.slash_auditor_bps).ok_or_else(|| invariant("slash share"))?;
        let each = share.checked_div(n).unwrap_or(Amount::ZERO);
        for f in finders {
            crate::bank::credit(ctx, f, each)?;
            to_auditors = to_auditors.checked_add(each).ok_or_else(|| invariant("slash overflow"))?;
        }
    }
    let to_client = match client {
        Some(c) => {
            let share =
                amount.checked_bps(ctx.params.slash_client_bps).ok_or_else(|| invariant("slash share"))?;
            crate::bank::credit(ctx, &c, share)?;
            share
        }
        None => Amount::ZERO,
    };
    let burned = amount
        .checked_sub(to_auditors)
        .and_then(|a| a.checked_sub(to_client))
        .ok_or_else(|| invariant("slash split above amount"))?;
    let mut totals = ctx.totals()?;
    totals.burned = totals.burned.checked_add(burned).ok_or_else(|| invariant("burn overflow"))?;
    ctx.set_totals(&totals)?;
    mark_failed(ctx, who)?;
    ctx.emit(Event::Slashed { who: *who, task: *task, reason, amount, to_auditors, to_client, burned });
    Ok(())
}
