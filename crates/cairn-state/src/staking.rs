//! Bonding, unbonding and slashing.

use cairn_types::{Address, Amount, ErrorCode, Event};

use crate::bank;
use crate::ctx::{Ctx, Exec, invariant};
use crate::keys;
use crate::model::{Due, Stake, Unbonding};
use crate::registry;

pub(crate) fn stake(ctx: &Ctx<'_>, who: &Address) -> Exec<Stake> {
    ctx.get_or_default(&keys::stake(who))
}

pub(crate) fn set_stake(ctx: &mut Ctx<'_>, who: &Address, s: &Stake) -> Exec<()> {
    if s.bonded.is_zero() && s.unbonding.is_empty() {
        ctx.delete(keys::stake(who));
        Ok(())
    } else {
        ctx.put(keys::stake(who), s)
    }
}

pub(crate) fn bond(ctx: &mut Ctx<'_>, who: &Address, amount: Amount) -> Exec<()> {
    if amount.is_zero() {
        return Err(ErrorCode::ZeroAmount.into());
    }
    bank::debit(ctx, who, amount)?;
    let mut s = stake(ctx, who)?;
    s.bonded = s.bonded.checked_add(amount).ok_or_else(|| invariant("stake overflow"))?;
    set_stake(ctx, who, &s)?;
    ctx.emit(Event::Bonded { who: *who, amount });
    Ok(())
}

/// Stake `who` must keep bonded: a provider's registration minimum and its exposure rule.
pub(crate) fn required(ctx: &Ctx<'_>, who: &Address) -> Exec<Amount> {
    match registry::get(ctx, who)? {
        None => Ok(Amount::ZERO),
        Some(p) => {
            let exposure = p
                .open_value
                .checked_mul(u128::from(ctx.params.exposure_multiplier))
                .ok_or_else(|| invariant("exposure overflow"))?;
            Ok(if exposure > ctx.params.min_provider_stake {
                exposure
            } else {
                ctx.params.min_provider_stake
            })
        }
    }
}

pub(crate) fn unbond(ctx: &mut Ctx<'_>, who: &Address, amount: Amount) -> Exec<()> {
    if amount.is_zero() {
        return Err(ErrorCode::ZeroAmount.into());
    }
    let mut s = stake(ctx, who)?;
    let left = s.bonded.checked_sub(amount).ok_or(ErrorCode::UnbondTooMuch)?;
    if left < required(ctx, who)? {
        return Err(ErrorCode::StakeLocked.into());
    }
    if s.unbonding.len() >= ctx.params.max_unbondings as usize {
        return Err(ErrorCode::TooManyUnbondings.into());
    }
    let release_at =
        ctx.height.checked_add(ctx.params.unbonding_blocks).ok_or_else(|| invariant("height overflow"))?;
    s.bonded = left;
    s.unbonding.push(Unbonding { amount, release_at });
    set_stake(ctx, who, &s)?;
    ctx.schedule(release_at, Due::Unbond { who: *who })?;
    ctx.emit(Event::UnbondStarted { who: *who, amount, release_at });
    Ok(())
}

/// Return matured unbondings to the balance.
pub(crate) fn release(ctx: &mut Ctx<'_>, who: &Address) -> Exec<()> {
    let mut s = stake(ctx, who)?;
    let height = ctx.height;
    let (ready, waiting): (Vec<_>, Vec<_>) = s.unbonding.into_iter().partition(|u| u.release_at <= height);
    s.unbonding = waiting;
    let amount = ready
        .iter()
        .try_fold(Amount::ZERO, |acc, u| acc.checked_add(u.amount))
        .ok_or_else(|| invariant("unbonding overflow"))?;
    set_stake(ctx, who, &s)?;
    if !amount.is_zero() {
        bank::credit(ctx, who, amount)?;
        ctx.emit(Event::Unbonded { who: *who, amount });
    }
    Ok(())
}

/// Take up to `amount` from `who`'s stake, bonded first, then the newest unbondings (so
/// unbonding does not shelter a cheater). Returns what was taken; the caller decides where it
/// goes (auditor, client, burn).
#[allow(dead_code)] // used by audits and disputes
pub(crate) fn slash(ctx: &mut Ctx<'_>, who: &Address, amount: Amount) -> Exec<Amount> {
    let mut s = stake(ctx, who)?;
    let mut want = amount;
    let from_bonded = s.bonded.min(want);
    s.bonded = s.bonded.checked_sub(from_bonded).ok_or_else(|| invariant("slash underflow"))?;
    want = want.checked_sub(from_bonded).ok_or_else(|| invariant("slash underflow"))?;
    for u in s.unbonding.iter_mut().rev() {
        if want.is_zero() {
            break;
        }
        let take = u.amount.min(want);
        u.amount = u.amount.checked_sub(take).ok_or_else(|| invariant("slash underflow"))?;
        want = want.checked_sub(take).ok_or_else(|| invariant("slash underflow"))?;
    }
    s.unbonding.retain(|u| !u.amount.is_zero());
    set_stake(ctx, who, &s)?;
    amount.checked_sub(want).ok_or_else(|| invariant("slash underflow"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AuthenticatedKv, MemStore};
    use cairn_types::Hash32;

    #[test]
    fn slashing_takes_bonded_stake_first_then_the_newest_unbonding() {
        let store = MemStore::new();
        let mut ctx = Ctx::new(&store, 10, Hash32::ZERO, crate::Params::default());
        let who = Address([1; 32]);
        let a = Amount::from_base_units;
        let s = Stake {
            bonded: a(100),
            unbonding: vec![
                Unbonding { amount: a(50), release_at: 20 },
                Unbonding { amount: a(30), release_at: 30 },
            ],
        };
        set_stake(&mut ctx, &who, &s).unwrap();
        assert_eq!(slash(&mut ctx, &who, a(120)).unwrap(), a(120));
        let left = stake(&ctx, &who).unwrap();
        assert_eq!(left.bonded, a(0));
        assert_eq!(
            left.unbonding,
            vec![Unbonding { amount: a(50), release_at: 20 }, Unbonding { amount: a(10), release_at: 30 }]
        );
        assert_eq!(slash(&mut ctx, &who, a(1_000)).unwrap(), a(60), "never more than there is");
        assert_eq!(stake(&ctx, &who).unwrap(), Stake::default());
        let _ = store.root();
    }
}
