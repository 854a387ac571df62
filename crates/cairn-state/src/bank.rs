//! Balances, transfers and fees.

use cairn_types::{Address, Amount, ErrorCode, Event, Transfer};

use crate::ctx::{Ctx, Exec, invariant};
use crate::keys;
use crate::model::Account;

pub(crate) fn account(ctx: &Ctx<'_>, who: &Address) -> Exec<Account> {
    ctx.get_or_default(&keys::account(who))
}

pub(crate) fn set_account(ctx: &mut Ctx<'_>, who: &Address, acct: &Account) -> Exec<()> {
    if acct.balance.is_zero() && acct.nonce == 0 {
        ctx.delete(keys::account(who));
        Ok(())
    } else {
        ctx.put(keys::account(who), acct)
    }
}

/// Add to a balance. Cannot overflow while supply is conserved, so overflow is an invariant
/// failure.
pub(crate) fn credit(ctx: &mut Ctx<'_>, who: &Address, amount: Amount) -> Exec<()> {
    if amount.is_zero() {
        return Ok(());
    }
    let mut acct = account(ctx, who)?;
    acct.balance = acct.balance.checked_add(amount).ok_or_else(|| invariant("balance overflow"))?;
    set_account(ctx, who, &acct)
}

/// Take from a balance, or fail with [`ErrorCode::InsufficientFunds`].
pub(crate) fn debit(ctx: &mut Ctx<'_>, who: &Address, amount: Amount) -> Exec<()> {
    let mut acct = account(ctx, who)?;
    acct.balance = acct.balance.checked_sub(amount).ok_or(ErrorCode::InsufficientFunds)?;
    set_account(ctx, who, &acct)
}

pub(crate) fn transfer(ctx: &mut Ctx<'_>, from: &Address, t: &Transfer) -> Exec<()> {
    if t.amount.is_zero() {
        return Err(ErrorCode::ZeroAmount.into());
    }
    debit(ctx, from, t.amount)?;
    credit(ctx, &t.to, t.amount)?;
    ctx.emit(Event::Transferred { from: *from, to: t.to, amount: t.amount });
    Ok(())
}

/// Move `amount` into the fee pool (validators' income).
pub(crate) fn add_fees(ctx: &mut Ctx<'_>, amount: Amount) -> Exec<()> {
    if amount.is_zero() {
        return Ok(());
    }
    let mut t = ctx.totals()?;
    t.fee_pool = t.fee_pool.checked_add(amount).ok_or_else(|| invariant("fee pool overflow"))?;
    ctx.set_totals(&t)
}
