//! Escrow: job deposits paid out per task, and leases drawn per block.
//!
//! Every path ends paid or refunded: a job's escrow holds exactly `reserve_per_task` for
//! each unfinished task, and a lease's escrow is its whole deposit until it closes.

use cairn_types::{
    Address, Amount, CloseLease, ErrorCode, Event, JobId, LeaseId, OpenLease, WorkloadKind, hash_domain,
};

use crate::bank;
use crate::ctx::{Ctx, Exec, invariant};
use crate::keys;
use crate::model::{Due, Job, Lease};
use crate::registry;

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

pub(crate) fn lease(ctx: &Ctx<'_>, id: &LeaseId) -> Exec<Option<Lease>> {
    ctx.get(&keys::lease(id))
}

pub(crate) fn open_lease(ctx: &mut Ctx<'_>, client: &Address, nonce: u64, o: &OpenLease) -> Exec<()> {
    if o.price_per_block.is_zero() || o.deposit.is_zero() {
        return Err(ErrorCode::ZeroAmount.into());
    }
    if o.provider == *client {
        return Err(ErrorCode::ClientCannotBid.into());
    }
    let p = registry::get(ctx, &o.provider)?.ok_or(ErrorCode::ProviderNotRegistered)?;
    let posted = registry::posted_price(&p, WorkloadKind::Service).ok_or(ErrorCode::KindNotServed)?;
    if o.price_per_block < posted {
        return Err(ErrorCode::PriceBelowPosted.into());
    }
    let blocks = o.deposit.base_units().checked_div(o.price_per_block.base_units()).unwrap_or(0);
    if blocks == 0 {
        return Err(ErrorCode::InvalidBody.into());
    }
    let blocks = u64::try_from(blocks).map_err(|_| ErrorCode::InvalidBody)?;
    let ends_at = ctx.height.checked_add(blocks).ok_or(ErrorCode::InvalidBody)?;
    let id = LeaseId(hash_domain("cairn lease id v1", &[&client.0, &nonce.to_le_bytes()]));
    bank::debit(ctx, client, o.deposit)?;
    let l = Lease {
        id,
        client: *client,
        provider: o.provider,
        workload: o.workload,
        price_per_block: o.price_per_block,
        escrow: o.deposit,
        opened_at: ctx.height,
        ends_at,
        closed_at: None,
    };
    ctx.put(keys::lease(&id), &l)?;
    ctx.schedule(ends_at, Due::LeaseEnd { lease: id })?;
    ctx.emit(Event::LeaseOpened { lease: id, client: *client, provider: o.provider, ends_at });
    Ok(())
}

/// Settle a lease to `at`: the provider gets the blocks served (less the protocol fee), the
/// client the rest.
fn settle_lease(ctx: &mut Ctx<'_>, mut l: Lease, at: u64) -> Exec<()> {
    let served = at.min(l.ends_at).saturating_sub(l.opened_at);
    let due = l.price_per_block.checked_mul(u128::from(served)).ok_or_else(|| invariant("lease overflow"))?;
    let due = due.min(l.escrow);
    let fee = due.checked_bps(ctx.params.protocol_fee_bps).ok_or_else(|| invariant("fee overflow"))?;
    let paid = due.checked_sub(fee).ok_or_else(|| invariant("fee above due"))?;
    let refunded = l.escrow.checked_sub(due).ok_or_else(|| invariant("lease underflow"))?;
    bank::credit(ctx, &l.provider, paid)?;
    bank::add_fees(ctx, fee)?;
    bank::credit(ctx, &l.client, refunded)?;
    l.escrow = Amount::ZERO;
    l.closed_at = Some(at);
    ctx.put(keys::lease(&l.id), &l)?;
    ctx.emit(Event::LeaseClosed { lease: l.id, paid, refunded });
    Ok(())
}

pub(crate) fn close_lease(ctx: &mut Ctx<'_>, who: &Address, c: &CloseLease) -> Exec<()> {
    let l = lease(ctx, &c.lease)?.ok_or(ErrorCode::LeaseNotFound)?;
    if *who != l.client && *who != l.provider {
        return Err(ErrorCode::NotLeaseParty.into());
    }
    if l.closed_at.is_some() {
        return Err(ErrorCode::LeaseClosed.into());
    }
    settle_lease(ctx, l, ctx.height)
}

pub(crate) fn on_lease_end(ctx: &mut Ctx<'_>, id: &LeaseId) -> Exec<()> {
    let l = lease(ctx, id)?.ok_or_else(|| invariant("scheduled lease missing"))?;
    if l.closed_at.is_some() {
        return Ok(());
    }
    let end = l.ends_at;
    settle_lease(ctx, l, end)
}
