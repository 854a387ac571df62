//! Escrow: job deposits paid out per task (leases hold their own escrow: [`crate::lease`]).
//!
//! Every path ends paid or refunded: a job's escrow holds exactly `reserve_per_task` for
//! each unfinished task.

use cairn_types::{Address, Amount, JobId};

use crate::bank;
use crate::ctx::{Ctx, Exec, invariant};
use crate::keys;
use crate::model::Job;

pub(crate) fn balance(ctx: &Ctx<'_>, job: &JobId) -> Exec<Amount> {
    ctx.get_or_default(&keys::escrow(job))
}

pub(crate) fn deposit(ctx: &mut Ctx<'_>, client: &Address, job: &JobId, amount: Amount) -> Exec<()> {
    bank::debit(ctx, client, amount)?;
    let held = balance(ctx, job)?.checked_add(amount).ok_or_else(|| invariant("escrow overflow"))?;
    ctx.put(keys::escrow(job), &held)
}

fn take(ctx: &mut Ctx<'_>, job: &JobId, amount: Amount) -> Exec<()> {
    let left = balance(ctx, job)?.checked_sub(amount).ok_or_else(|| invariant("escrow underflow"))?;
    if left.is_zero() {
        ctx.delete(keys::escrow(job));
        Ok(())
    } else {
        ctx.put(keys::escrow(job), &left)
    }
}

/// Remove a finished job's escrow entry, which must be empty.
pub(crate) fn close(ctx: &mut Ctx<'_>, job: &JobId) -> Exec<()> {
    if !balance(ctx, job)?.is_zero() {
        return Err(invariant("finished job still holds escrow"));
    }
    Ok(())
}

/// Split of one settled task.
pub(crate) struct Payout {
    pub(crate) paid: Amount,
    pub(crate) protocol_fee: Amount,
    pub(crate) refunded: Amount,
}

/// Pay a settled task: the provider its price less the protocol fee, the fee to validators,
/// `kept` (the verification fee, which the caller moves to the audit pool) stays out, and the
/// rest of the task's reserve goes back to the client.
pub(crate) fn pay_task(
    ctx: &mut Ctx<'_>,
    job: &Job,
    provider: &Address,
    price: Amount,
    kept: Amount,
) -> Exec<Payout> {
    take(ctx, &job.id, job.reserve_per_task)?;
    let protocol_fee =
        price.checked_bps(ctx.params.protocol_fee_bps).ok_or_else(|| invariant("fee overflow"))?;
    let paid = price.checked_sub(protocol_fee).ok_or_else(|| invariant("fee above price"))?;
    let refunded = job
        .reserve_per_task
        .checked_sub(price)
        .and_then(|r| r.checked_sub(kept))
        .ok_or_else(|| invariant("price and fee above reserve"))?;
    bank::credit(ctx, provider, paid)?;
    bank::add_fees(ctx, protocol_fee)?;
    bank::credit(ctx, &job.client, refunded)?;
    Ok(Payout { paid, protocol_fee, refunded })
}

/// Return a task's reserve to the client.
pub(crate) fn refund_task(ctx: &mut Ctx<'_>, job: &Job) -> Exec<Amount> {
    take(ctx, &job.id, job.reserve_per_task)?;
    bank::credit(ctx, &job.client, job.reserve_per_task)?;
    Ok(job.reserve_per_task)
}
