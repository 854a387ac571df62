//! Storage deals: the client escrows `price × replicas × epochs`; possession proofs and
//! payouts to storage providers come with the storage proof system, so until then a deal
//! ends by refunding what it holds.

use cairn_types::{Address, Amount, CreateStorageDeal, DealId, ErrorCode, Event, ProveStorage, hash_domain};

use crate::bank;
use crate::ctx::{Ctx, Exec, invariant};
use crate::keys;
use crate::model::{Deal, Due};

/// Replicas per deal.
const MAX_REPLICAS: u32 = 16;
/// Epochs per deal.
const MAX_EPOCHS: u32 = 100_000;

pub(crate) fn create(ctx: &mut Ctx<'_>, client: &Address, nonce: u64, c: &CreateStorageDeal) -> Exec<()> {
    if c.size == 0 || c.replicas == 0 || c.replicas > MAX_REPLICAS || c.epochs == 0 || c.epochs > MAX_EPOCHS {
        return Err(ErrorCode::InvalidDeal.into());
    }
    if c.price_per_epoch.is_zero() {
        return Err(ErrorCode::ZeroAmount.into());
    }
    let escrow = c
        .price_per_epoch
        .checked_mul(u128::from(c.replicas))
        .and_then(|a| a.checked_mul(u128::from(c.epochs)))
        .ok_or(ErrorCode::Overflow)?;
    let ends_at = u64::from(c.epochs)
        .checked_mul(ctx.params.storage_epoch_blocks)
        .and_then(|b| ctx.height.checked_add(b))
        .ok_or(ErrorCode::InvalidDeal)?;
    let id = DealId(hash_domain("cairn deal id v1", &[&client.0, &nonce.to_le_bytes()]));
    bank::debit(ctx, client, escrow)?;
    let d = Deal {
        id,
        client: *client,
        blob: c.blob,
        size: c.size,
        replicas: c.replicas,
        epochs: c.epochs,
        price_per_epoch: c.price_per_epoch,
        escrow,
        created_at: ctx.height,
        ends_at,
        providers: Vec::new(),
        ended: false,
    };
    ctx.put(keys::deal(&id), &d)?;
    ctx.schedule(ends_at, Due::DealEnd { deal: id })?;
    ctx.emit(Event::DealCreated { deal: id, client: *client });
    Ok(())
}

pub(crate) fn prove(ctx: &mut Ctx<'_>, _who: &Address, p: &ProveStorage) -> Exec<()> {
    ctx.get::<Deal>(&keys::deal(&p.deal))?.ok_or(ErrorCode::DealNotFound)?;
    Err(ErrorCode::VerificationNotActive.into())
}

pub(crate) fn on_end(ctx: &mut Ctx<'_>, id: &DealId) -> Exec<()> {
    let mut d: Deal = ctx.get(&keys::deal(id))?.ok_or_else(|| invariant("scheduled deal missing"))?;
    if d.ended {
        return Ok(());
    }
    let refunded = d.escrow;
    bank::credit(ctx, &d.client, refunded)?;
    d.escrow = Amount::ZERO;
    d.ended = true;
    ctx.put(keys::deal(id), &d)?;
    ctx.emit(Event::DealEnded { deal: *id, refunded });
    Ok(())
}
