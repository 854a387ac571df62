//! Block rewards: each block mints `block_reward`; validators get their share plus the fee
//! pool every block, by bonded stake; providers' share accumulates and is paid at the end of
//! each reward epoch in proportion to verified (settled) work.

use cairn_types::{Address, Amount, Event};

use crate::ctx::{Ctx, Exec, invariant};
use crate::keys;
use crate::model::Provider;
use crate::{bank, registry, staking};

fn epoch_of(ctx: &Ctx<'_>, height: u64) -> u64 {
    height.saturating_sub(1).checked_div(ctx.params.reward_epoch_blocks).unwrap_or(0)
}

/// Count settled work toward the provider's share of this epoch's rewards.
pub(crate) fn record_work(ctx: &mut Ctx<'_>, p: &mut Provider, value: Amount) -> Exec<()> {
    let epoch = epoch_of(ctx, ctx.height);
    if p.work_epoch != epoch {
        p.work_epoch = epoch;
        p.epoch_work = Amount::ZERO;
    }
    p.epoch_work = p.epoch_work.checked_add(value).ok_or_else(|| invariant("work overflow"))?;
    let mut t = ctx.totals()?;
    t.epoch_work = t.epoch_work.checked_add(value).ok_or_else(|| invariant("work overflow"))?;
    ctx.set_totals(&t)
}

/// `amount × part / whole`, exact when the product fits and close otherwise; never more than
/// `amount × part / whole`.
fn share(amount: Amount, part: u128, whole: u128) -> Amount {
    let a = amount.base_units();
    let v = match a.checked_mul(part) {
        Some(p) => p.checked_div(whole).unwrap_or(0),
        None => a.checked_div(whole).unwrap_or(0).saturating_mul(part),
    };
    Amount::from_base_units(v)
}

pub(crate) fn end_block(ctx: &mut Ctx<'_>) -> Exec<()> {
    let mut t = ctx.totals()?;
    let reward = ctx.params.block_reward;
    t.emitted = t.emitted.checked_add(reward).ok_or_else(|| invariant("emission overflow"))?;
    let to_validators =
        reward.checked_bps(ctx.params.validator_reward_bps).ok_or_else(|| invariant("reward overflow"))?;
    let to_providers = reward.checked_sub(to_validators).ok_or_else(|| invariant("reward split"))?;
    t.provider_pool = t.provider_pool.checked_add(to_providers).ok_or_else(|| invariant("pool overflow"))?;
    t.fee_pool = t.fee_pool.checked_add(to_validators).ok_or_else(|| invariant("pool overflow"))?;

    // Validators: the whole fee pool, by bonded stake; rounding dust stays in the pool.
    let validators: Vec<Address> = ctx.get_or_default(keys::VALIDATORS)?;
    let mut stakes = Vec::with_capacity(validators.len());
    let mut total_stake: u128 = 0;
    for v in &validators {
        let s = staking::stake(ctx, v)?.bonded.base_units();
        total_stake = total_stake.checked_add(s).ok_or_else(|| invariant("stake overflow"))?;
        stakes.push((*v, s));
    }
    let pool = t.fee_pool;
    let mut paid_validators = Amount::ZERO;
    if total_stake > 0 {
        for (v, s) in stakes {
            let amount = share(pool, s, total_stake);
            bank::credit(ctx, &v, amount)?;
            paid_validators =
                paid_validators.checked_add(amount).ok_or_else(|| invariant("payout overflow"))?;
        }
    }
    t.fee_pool = pool.checked_sub(paid_validators).ok_or_else(|| invariant("payout above pool"))?;

    // Providers: at the epoch's last block, the pool by verified work.
    let mut paid_providers = Amount::ZERO;
    let epoch_ends = ctx.height.checked_rem(ctx.params.reward_epoch_blocks) == Some(0);
    if epoch_ends && !t.epoch_work.is_zero() {
        let epoch = epoch_of(ctx, ctx.height);
        let whole = t.epoch_work.base_units();
        let pool = t.provider_pool;
        for addr in registry::index(ctx)? {
            let p = registry::get(ctx, &addr)?.ok_or_else(|| invariant("indexed provider missing"))?;
            if p.work_epoch == epoch && !p.epoch_work.is_zero() {
                let amount = share(pool, p.epoch_work.base_units(), whole);
                bank::credit(ctx, &addr, amount)?;
                paid_providers =
                    paid_providers.checked_add(amount).ok_or_else(|| invariant("payout overflow"))?;
            }
        }
        t.provider_pool = pool.checked_sub(paid_providers).ok_or_else(|| invariant("payout above pool"))?;
        t.epoch_work = Amount::ZERO;
        ctx.emit(Event::RewardsPaid { validators: paid_validators, providers: paid_providers });
    } else if epoch_ends {
        t.epoch_work = Amount::ZERO;
    }
    ctx.set_totals(&t)
}
