//! Verification: result commitments, the challenge window and settlement.
//!
//! A provider commits `(task, output root, metering)`; the result then waits out the
//! challenge window and settles. Random audits, disputes, canaries and slashing hook in at
//! [`commit`] (the audit decision, from a beacon after the commit) and before [`on_settle`]
//! pays; until they are active, verdicts and disputes are refused with typed errors.

use cairn_types::{
    Address, CommitResult, ErrorCode, Event, OpenDispute, SubmitAudit, TaskId, VerificationLevel,
};

use crate::ctx::{Ctx, Exec, invariant};
use crate::escrow;
use crate::market;
use crate::model::{Due, TaskState};
use crate::registry;
use crate::rewards;

pub(crate) fn commit(ctx: &mut Ctx<'_>, who: &Address, c: &CommitResult) -> Exec<()> {
    let mut t = market::task(ctx, &c.task)?.ok_or(ErrorCode::TaskNotFound)?;
    let TaskState::Assigned { provider, price, deadline, .. } = t.state.clone() else {
        return Err(ErrorCode::TaskNotAssigned.into());
    };
    if provider != *who {
        return Err(ErrorCode::NotAssignedProvider.into());
    }
    if ctx.height > deadline {
        return Err(ErrorCode::DeadlinePassed.into());
    }
    let spec = market::spec(ctx, &t.job)?;
    if c.metering.units > spec.limits.fuel || c.metering.output_bytes > spec.limits.output_bytes {
        return Err(ErrorCode::InvalidBody.into());
    }
    // Running is over: the capacity is free again; the stake exposure stays until payment.
    let mut p = registry::get(ctx, who)?.ok_or_else(|| invariant("assigned provider missing"))?;
    registry::release_capacity(&mut p, &spec)?;
    registry::put(ctx, &p)?;
    let window = match spec.verification {
        VerificationLevel::None => 1,
        _ => ctx.params.challenge_window,
    };
    let settle_at = ctx.height.checked_add(window).ok_or_else(|| invariant("height overflow"))?;
    t.state = TaskState::Committed {
        provider,
        price,
        output: c.output,
        metering: c.metering.clone(),
        committed_at: ctx.height,
        settle_at,
    };
    market::put_task(ctx, &t)?;
    ctx.schedule(settle_at, Due::Settle { task: t.id })?;
    ctx.emit(Event::TaskCommitted { task: t.id, provider, output: c.output, settle_at });
    Ok(())
}

pub(crate) fn on_settle(ctx: &mut Ctx<'_>, id: &TaskId) -> Exec<()> {
    let mut t = market::task(ctx, id)?.ok_or_else(|| invariant("scheduled task missing"))?;
    let TaskState::Committed { provider, price, output, settle_at, .. } = t.state.clone() else {
        return Ok(());
    };
    if settle_at != ctx.height {
        return Ok(());
    }
    let mut j = market::job(ctx, &t.job)?.ok_or_else(|| invariant("task without job"))?;
    let payout = escrow::pay_task(ctx, &j, &provider, price)?;
    let mut p = registry::get(ctx, &provider)?.ok_or_else(|| invariant("assigned provider missing"))?;
    registry::release_exposure(&mut p, price)?;
    p.reputation.consecutive_valid = p.reputation.consecutive_valid.saturating_add(1);
    p.reputation.total_valid = p.reputation.total_valid.saturating_add(1);
    rewards::record_work(ctx, &mut p, price)?;
    registry::put(ctx, &p)?;
    t.state = TaskState::Settled { provider, price, output, settled_at: ctx.height };
    market::put_task(ctx, &t)?;
    ctx.emit(Event::TaskSettled {
        task: t.id,
        job: t.job,
        provider,
        paid: payout.paid,
        protocol_fee: payout.protocol_fee,
        refunded: payout.refunded,
    });
    market::finish_task(ctx, &mut j)
}

/// Verdicts are only taken from auditors the chain assigned; none are assigned while audits
/// are inactive, so every verdict is refused.
pub(crate) fn submit_audit(ctx: &mut Ctx<'_>, _who: &Address, a: &SubmitAudit) -> Exec<()> {
    market::task(ctx, &a.task)?.ok_or(ErrorCode::TaskNotFound)?;
    Err(ErrorCode::AuditNotAssigned.into())
}

/// Only the client of a committed task, with a bond, inside the window may dispute; the
/// dispute itself needs auditors, which are not active yet.
pub(crate) fn open_dispute(ctx: &mut Ctx<'_>, who: &Address, d: &OpenDispute) -> Exec<()> {
    let t = market::task(ctx, &d.task)?.ok_or(ErrorCode::TaskNotFound)?;
    let j = market::job(ctx, &t.job)?.ok_or_else(|| invariant("task without job"))?;
    if j.client != *who {
        return Err(ErrorCode::NotJobClient.into());
    }
    if !matches!(t.state, TaskState::Committed { .. }) {
        return Err(ErrorCode::DisputeNotAllowed.into());
    }
    if d.bond.is_zero() {
        return Err(ErrorCode::ZeroAmount.into());
    }
    Err(ErrorCode::VerificationNotActive.into())
}
