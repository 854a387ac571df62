//! Storage deals: replicas placed by price, possession proven every epoch, paid per proven
//! epoch, slashed and repaired when a proof is missing.
//!
//! - **Create.** The client names the blob (its BLAKE3 id and size), the replicas, the epochs
//!   and the most it pays per GiB-epoch. The chain places each replica at once on the cheapest
//!   live provider whose posted storage price is within it, with room for the blob, in an
//!   allowed region, of another operator where asked, and with free stake for the replica's
//!   collateral (ties broken by the beacon). The escrow is the most the deal can cost:
//!   `replicas × epochs ×` the reserve per slot-epoch.
//! - **Epochs.** Each epoch's seed is the beacon where it starts; it picks
//!   `storage_challenges` chunks per replica ([`cairn_types::storage::challenged_chunks`]).
//!   A replica answers with [`ProveStorage`] by the epoch's last height; the chain checks the
//!   chunks and their paths against the blob id.
//! - **Settlement.** At the epoch's end a proven replica is paid its price (less the protocol
//!   fee; it counts as verified work for rewards); the rest of each slot's reserve goes back to
//!   the client. A replica without a valid proof is dropped; past its first epoch it is also
//!   slashed its collateral (`exposure_multiplier ×` its epoch price: a share to the client, the
//!   rest burned). In its first epoch a miss only drops it: it may never have been sent the data.
//! - **Repair.** An empty slot is re-offered (by the same rule, never to a provider that held a
//!   replica and failed) as the next epoch begins, with the replicas that have proven the blob
//!   as sources to copy from. A deal with no replica left ends and refunds the rest.

use cairn_types::storage::{self, challenged_chunks, replica_epoch_price, storage_limits, verify_possession};
use cairn_types::{
    Address, Amount, CreateStorageDeal, DealId, ErrorCode, Event, OPERATOR_ATTRIBUTE, ProofError,
    ProveStorage, hash_domain,
};

use crate::bank;
use crate::ctx::{Ctx, Exec, invariant};
use crate::keys;
use crate::model::{Deal, Due, Provider, Replica};
use crate::{registry, rewards, staking};

/// Providers a deal remembers as failed.
const MAX_FAILED: usize = 64;

fn get(ctx: &Ctx<'_>, id: &DealId) -> Exec<Deal> {
    ctx.get(&keys::deal(id))?.ok_or_else(|| ErrorCode::DealNotFound.into())
}

fn put(ctx: &mut Ctx<'_>, d: &Deal) -> Exec<()> {
    ctx.put(keys::deal(&d.id), d)
}

/// Who runs `p`: its `operator` attribute, or itself.
fn operator(p: &Provider) -> Vec<u8> {
    match p.info.attributes.get(OPERATOR_ATTRIBUTE) {
        Some(name) => name.as_bytes().to_vec(),
        None => p.owner.0.to_vec(),
    }
}

/// The collateral a replica at `price` per epoch puts at stake.
fn collateral(ctx: &Ctx<'_>, price: Amount) -> Amount {
    price.checked_mul(u128::from(ctx.params.exposure_multiplier)).unwrap_or(Amount::MAX)
}

/// The cheapest provider that may hold a new replica of `d` (see the module docs).
fn choose(ctx: &Ctx<'_>, d: &Deal) -> Exec<Option<(Address, Amount)>> {
    let mut operators = Vec::new();
    for r in &d.holders {
        if let Some(p) = registry::get(ctx, &r.provider)? {
            operators.push(operator(&p));
        }
    }
    let mut best: Option<(Amount, [u8; 32], Address)> = None;
    for addr in registry::index(ctx)? {
        if addr == d.client || d.holders.iter().any(|r| r.provider == addr) || d.failed.contains(&addr) {
            continue;
        }
        let p = registry::get(ctx, &addr)?.ok_or_else(|| invariant("indexed provider missing"))?;
        let Some(offer) = &p.info.storage else { continue };
        if ctx.height.saturating_sub(p.heartbeat) > ctx.params.heartbeat_timeout
            || offer.price_per_gib_epoch > d.max_price_per_gib_epoch
            || (!d.regions.is_empty() && !d.regions.contains(&p.info.region))
            || (d.distinct_operators && operators.contains(&operator(&p)))
        {
            continue;
        }
        let room = offer.capacity_gib.saturating_mul(storage::GIB);
        if p.reserved.storage_bytes.checked_add(d.size).is_none_or(|used| used > room) {
            continue;
        }
        let Some(price) = replica_epoch_price(offer.price_per_gib_epoch, d.size) else { continue };
        let need = p
            .open_value
            .checked_add(price)
            .and_then(|v| v.checked_mul(u128::from(ctx.params.exposure_multiplier)))
            .map(|v| v.max(ctx.params.min_provider_stake));
        let bonded = staking::stake(ctx, &addr)?.bonded;
        if need.is_none_or(|need| bonded < need) {
            continue;
        }
        let tie = hash_domain("cairn replica pick v1", &[&ctx.beacon.0, &d.id.0, &addr.0]);
        let key = (offer.price_per_gib_epoch, tie);
        if best.as_ref().is_none_or(|(bp, bt, _)| key < (*bp, *bt)) {
            best = Some((key.0, key.1, addr));
        }
    }
    Ok(match best {
        Some((per_gib, _, addr)) => replica_epoch_price(per_gib, d.size).map(|price| (addr, price)),
        None => None,
    })
}

/// Hold room and exposure on `provider` for a replica of `d` at `price`, and add it to `d`.
fn place(
    ctx: &mut Ctx<'_>,
    d: &mut Deal,
    provider: Address,
    price: Amount,
    sources: Vec<Address>,
) -> Exec<()> {
    let mut p = registry::get(ctx, &provider)?.ok_or_else(|| invariant("chosen provider missing"))?;
    p.reserved.storage_bytes = p
        .reserved
        .storage_bytes
        .checked_add(d.size)
        .ok_or_else(|| invariant("storage reservation overflow"))?;
    p.open_value = p.open_value.checked_add(price).ok_or_else(|| invariant("exposure overflow"))?;
    registry::put(ctx, &p)?;
    d.holders.push(Replica {
        provider,
        price_per_epoch: price,
        since: d.epoch,
        proven_epochs: 0,
        proven: false,
    });
    ctx.emit(Event::ReplicaAssigned {
        deal: d.id,
        provider,
        epoch: d.epoch,
        price_per_epoch: price,
        sources,
    });
    Ok(())
}

/// Free what a replica held on its provider.
fn unplace(ctx: &mut Ctx<'_>, d: &Deal, r: &Replica) -> Exec<()> {
    if let Some(mut p) = registry::get(ctx, &r.provider)? {
        let underflow = || invariant("storage release underflow");
        p.reserved.storage_bytes = p.reserved.storage_bytes.checked_sub(d.size).ok_or_else(underflow)?;
        p.open_value = p.open_value.checked_sub(r.price_per_epoch).ok_or_else(underflow)?;
        registry::put(ctx, &p)?;
    }
    Ok(())
}

pub(crate) fn create(ctx: &mut Ctx<'_>, client: &Address, nonce: u64, c: &CreateStorageDeal) -> Exec<()> {
    use storage_limits::*;
    if c.size > MAX_DEAL_BYTES {
        return Err(ErrorCode::BlobTooLarge.into());
    }
    if c.size == 0
        || c.replicas == 0
        || c.replicas > MAX_REPLICAS
        || c.epochs == 0
        || c.epochs > MAX_EPOCHS
        || c.regions.len() > MAX_REGIONS
        || c.regions.iter().any(|r| !r.is_valid())
        || c.max_price_per_gib_epoch.base_units() > cairn_types::limits::MAX_PRICE
    {
        return Err(ErrorCode::InvalidDeal.into());
    }
    if c.max_price_per_gib_epoch.is_zero() {
        return Err(ErrorCode::ZeroAmount.into());
    }
    let reserve = replica_epoch_price(c.max_price_per_gib_epoch, c.size).ok_or(ErrorCode::Overflow)?;
    let escrow = reserve
        .checked_mul(u128::from(c.replicas))
        .and_then(|a| a.checked_mul(u128::from(c.epochs)))
        .ok_or(ErrorCode::Overflow)?;
    u64::from(c.epochs)
        .checked_mul(ctx.params.storage_epoch_blocks)
        .and_then(|b| ctx.height.checked_add(b))
        .ok_or(ErrorCode::InvalidDeal)?;
    let epoch_end = ctx.height.checked_add(ctx.params.storage_epoch_blocks).ok_or(ErrorCode::InvalidDeal)?;
    let id = DealId(hash_domain("cairn deal id v1", &[&client.0, &nonce.to_le_bytes()]));
    let mut d = Deal {
        id,
        client: *client,
        blob: c.blob,
        size: c.size,
        replicas: c.replicas,
        epochs: c.epochs,
        max_price_per_gib_epoch: c.max_price_per_gib_epoch,
        reserve_per_epoch: reserve,
        regions: c.regions.clone(),
        distinct_operators: c.distinct_operators,
        escrow,
        paid: Amount::ZERO,
        refunded: Amount::ZERO,
        created_at: ctx.height,
        epoch: 0,
        epoch_end,
        seed: ctx.beacon,
        holders: Vec::new(),
        failed: Vec::new(),
        ended: false,
    };
    bank::debit(ctx, client, escrow)?;
    ctx.emit(Event::DealCreated { deal: id, client: *client });
    for _ in 0..c.replicas {
        let (provider, price) = choose(ctx, &d)?.ok_or(ErrorCode::NoStorageProvider)?;
        place(ctx, &mut d, provider, price, Vec::new())?;
    }
    ctx.schedule(epoch_end, Due::DealEpoch { deal: id, epoch: 0 })?;
    ctx.emit(Event::DealEpoch { deal: id, epoch: 0, ends: epoch_end });
    put(ctx, &d)
}

pub(crate) fn prove(ctx: &mut Ctx<'_>, who: &Address, p: &ProveStorage) -> Exec<()> {
    let mut d = get(ctx, &p.deal)?;
    if d.ended {
        return Err(ErrorCode::DealClosed.into());
    }
    if p.epoch != d.epoch || ctx.height > d.epoch_end {
        return Err(ErrorCode::WrongEpoch.into());
    }
    let challenges = ctx.params.storage_challenges;
    let r = d.holders.iter_mut().find(|r| r.provider == *who).ok_or(ErrorCode::NotReplica)?;
    if r.proven {
        return Err(ErrorCode::AlreadyProven.into());
    }
    let picks = challenged_chunks(&d.seed, &d.id, who, d.epoch, d.size, challenges);
    verify_possession(&d.blob, d.size, &picks, &p.proof).map_err(|e| match e {
        ProofError::NotChallenged { .. } => ErrorCode::ChunksNotChallenged,
        ProofError::Mismatch { .. } => ErrorCode::ProofInvalid,
    })?;
    r.proven = true;
    r.proven_epochs = r.proven_epochs.saturating_add(1);
    ctx.emit(Event::StorageProven { deal: d.id, provider: *who, epoch: d.epoch });
    put(ctx, &d)
}

/// Slash a replica that missed a proof past its first epoch.
fn slash(ctx: &mut Ctx<'_>, d: &Deal, r: &Replica) -> Exec<(Amount, Amount, Amount)> {
    let want = collateral(ctx, r.price_per_epoch);
    crate::penalty::slash_to_client(ctx, &r.provider, &d.client, want)
}

pub(crate) fn on_epoch_end(ctx: &mut Ctx<'_>, id: &DealId, epoch: u32) -> Exec<()> {
    let mut d: Deal = ctx.get(&keys::deal(id))?.ok_or_else(|| invariant("scheduled deal missing"))?;
    if d.ended || d.epoch != epoch {
        return Ok(());
    }
    let overflow = || invariant("deal settlement overflow");
    let (mut paid, mut refunded, mut proven) = (Amount::ZERO, Amount::ZERO, 0u32);
    let mut kept = Vec::new();
    let held = u32::try_from(d.holders.len()).unwrap_or(u32::MAX);
    for r in std::mem::take(&mut d.holders) {
        if r.proven {
            let price = r.price_per_epoch.min(d.reserve_per_epoch);
            let fee = price.checked_bps(ctx.params.protocol_fee_bps).ok_or_else(overflow)?;
            let net = price.checked_sub(fee).ok_or_else(overflow)?;
            bank::credit(ctx, &r.provider, net)?;
            bank::add_fees(ctx, fee)?;
            if let Some(mut p) = registry::get(ctx, &r.provider)? {
                rewards::record_work(ctx, &mut p, price)?;
                registry::put(ctx, &p)?;
            }
            paid = paid.checked_add(price).ok_or_else(overflow)?;
            proven = proven.saturating_add(1);
            let rest = d.reserve_per_epoch.checked_sub(price).ok_or_else(overflow)?;
            refunded = refunded.checked_add(rest).ok_or_else(overflow)?;
            kept.push(Replica { proven: false, ..r });
        } else {
            refunded = refunded.checked_add(d.reserve_per_epoch).ok_or_else(overflow)?;
            unplace(ctx, &d, &r)?;
            let (slashed, to_client, burned) = if r.since < epoch {
                slash(ctx, &d, &r)?
            } else {
                (Amount::ZERO, Amount::ZERO, Amount::ZERO)
            };
            ctx.emit(Event::ReplicaFailed {
                deal: d.id,
                provider: r.provider,
                epoch,
                slashed,
                to_client,
                burned,
            });
            if d.failed.len() >= MAX_FAILED {
                d.failed.remove(0);
            }
            d.failed.push(r.provider);
        }
    }
    // Slots nobody held this epoch give their reserve back too.
    let empty = d.replicas.saturating_sub(held);
    let empty_reserve = d.reserve_per_epoch.checked_mul(u128::from(empty)).ok_or_else(overflow)?;
    refunded = refunded.checked_add(empty_reserve).ok_or_else(overflow)?;
    d.holders = kept;
    let spent = paid.checked_add(refunded).ok_or_else(overflow)?;
    d.escrow = d.escrow.checked_sub(spent).ok_or_else(|| invariant("deal escrow underflow"))?;
    bank::credit(ctx, &d.client, refunded)?;
    d.paid = d.paid.checked_add(paid).ok_or_else(overflow)?;
    d.refunded = d.refunded.checked_add(refunded).ok_or_else(overflow)?;
    ctx.emit(Event::DealEpochSettled { deal: d.id, epoch, proven, paid, refunded });

    let last = epoch.saturating_add(1) >= d.epochs;
    if last || d.holders.is_empty() {
        return finish(ctx, d, !last);
    }
    d.epoch = epoch.saturating_add(1);
    d.seed = ctx.beacon;
    d.epoch_end = ctx.height.checked_add(ctx.params.storage_epoch_blocks).ok_or_else(overflow)?;
    ctx.schedule(d.epoch_end, Due::DealEpoch { deal: d.id, epoch: d.epoch })?;
    ctx.emit(Event::DealEpoch { deal: d.id, epoch: d.epoch, ends: d.epoch_end });
    repair(ctx, &mut d)?;
    put(ctx, &d)
}

/// Offer each empty slot to a new provider, to copy from the replicas that have proven the blob.
fn repair(ctx: &mut Ctx<'_>, d: &mut Deal) -> Exec<()> {
    let sources: Vec<Address> =
        d.holders.iter().filter(|r| r.proven_epochs > 0).map(|r| r.provider).collect();
    if sources.is_empty() {
        return Ok(());
    }
    while (d.holders.len() as u64) < u64::from(d.replicas) {
        let Some((provider, price)) = choose(ctx, d)? else { break };
        place(ctx, d, provider, price, sources.clone())?;
    }
    Ok(())
}

/// End the deal: free its replicas and refund what it still holds.
fn finish(ctx: &mut Ctx<'_>, mut d: Deal, lost: bool) -> Exec<()> {
    for r in std::mem::take(&mut d.holders) {
        unplace(ctx, &d, &r)?;
    }
    let rest = d.escrow;
    bank::credit(ctx, &d.client, rest)?;
    d.refunded = d.refunded.checked_add(rest).ok_or_else(|| invariant("refund overflow"))?;
    d.escrow = Amount::ZERO;
    d.ended = true;
    ctx.emit(Event::DealEnded { deal: d.id, refunded: rest, lost });
    put(ctx, &d)
}
