//! Providers: registration, updates, heartbeats, capacity and eligibility.

use cairn_types::{Address, Amount, ErrorCode, Event, JobSpec, ProviderInfo, Resources, WorkloadKind};

use crate::ctx::{Ctx, Exec, invariant};
use crate::keys;
use crate::model::{Provider, Reserved};
use crate::staking;

pub(crate) fn get(ctx: &Ctx<'_>, who: &Address) -> Exec<Option<Provider>> {
    ctx.get(&keys::provider(who))
}

pub(crate) fn put(ctx: &mut Ctx<'_>, p: &Provider) -> Exec<()> {
    ctx.put(keys::provider(&p.owner), p)
}

pub(crate) fn index(ctx: &Ctx<'_>) -> Exec<Vec<Address>> {
    ctx.get_or_default(keys::PROVIDER_INDEX)
}

pub(crate) fn register(ctx: &mut Ctx<'_>, who: &Address, info: &ProviderInfo) -> Exec<()> {
    info.validate().map_err(|_| ErrorCode::InvalidProviderInfo)?;
    if get(ctx, who)?.is_some() {
        return Err(ErrorCode::ProviderAlreadyRegistered.into());
    }
    if staking::stake(ctx, who)?.bonded < ctx.params.min_provider_stake {
        return Err(ErrorCode::InsufficientStake.into());
    }
    let mut idx = index(ctx)?;
    if idx.len() >= ctx.params.max_providers as usize {
        return Err(ErrorCode::RegistryFull.into());
    }
    match idx.binary_search(who) {
        Ok(_) => return Err(invariant("provider index out of step")),
        Err(pos) => idx.insert(pos, *who),
    }
    ctx.put(keys::PROVIDER_INDEX.to_vec(), &idx)?;
    let p = Provider {
        owner: *who,
        info: info.clone(),
        reserved: Reserved::default(),
        open_value: Amount::ZERO,
        open_tasks: 0,
        heartbeat: ctx.height,
        registered_at: ctx.height,
        reputation: Default::default(),
        epoch_work: Amount::ZERO,
        work_epoch: 0,
    };
    put(ctx, &p)?;
    ctx.emit(Event::ProviderRegistered { provider: *who });
    Ok(())
}

pub(crate) fn update(ctx: &mut Ctx<'_>, who: &Address, info: &ProviderInfo) -> Exec<()> {
    info.validate().map_err(|_| ErrorCode::InvalidProviderInfo)?;
    let mut p = get(ctx, who)?.ok_or(ErrorCode::ProviderNotRegistered)?;
    let c = &info.capacity;
    if c.cpu_millis < p.reserved.cpu_millis
        || c.memory_mb < p.reserved.memory_mb
        || (c.gpus.len() as u64) < u64::from(p.reserved.gpus)
    {
        return Err(ErrorCode::CapacityInUse.into());
    }
    p.info = info.clone();
    p.heartbeat = ctx.height;
    put(ctx, &p)?;
    ctx.emit(Event::ProviderUpdated { provider: *who });
    Ok(())
}

pub(crate) fn heartbeat(ctx: &mut Ctx<'_>, who: &Address) -> Exec<()> {
    let mut p = get(ctx, who)?.ok_or(ErrorCode::ProviderNotRegistered)?;
    p.heartbeat = ctx.height;
    put(ctx, &p)
}

/// Static fit: kind served at a posted price (if `need_posted`), region, attributes, total
/// capacity, liveness, not the client. Does not look at free capacity or stake.
pub(crate) fn fits(ctx: &Ctx<'_>, p: &Provider, spec: &JobSpec, client: &Address) -> bool {
    if p.owner == *client {
        return false;
    }
    if ctx.height.saturating_sub(p.heartbeat) > ctx.params.heartbeat_timeout {
        return false;
    }
    if p.info.prices.get(spec.kind).is_none() {
        return false;
    }
    let c = &spec.constraints;
    if !c.regions.is_empty() && !c.regions.contains(&p.info.region) {
        return false;
    }
    if c.attributes.iter().any(|(k, v)| p.info.attributes.get(k) != Some(v)) {
        return false;
    }
    if !crate::render::fits(p, spec) {
        return false;
    }
    if spec.network
        && p.info.attributes.get(cairn_types::NETWORK_ATTRIBUTE).map(String::as_str) != Some("egress")
    {
        return false;
    }
    let r = &spec.resources;
    let cap = &p.info.capacity;
    cap.cpu_millis >= r.cpu_millis
        && cap.memory_mb >= r.memory_mb
        && usable_gpus(p, spec) >= u64::from(r.gpus)
}

fn usable_gpus(p: &Provider, spec: &JobSpec) -> u64 {
    p.info.capacity.gpus.iter().filter(|g| g.vram_mb >= spec.resources.gpu_vram_mb).count() as u64
}

/// Whether `p` can take one more task of `spec` at `price` now: free capacity and the
/// stake-exposure rule (`stake ≥ exposure_multiplier × open task value`).
pub(crate) fn has_room(
    ctx: &Ctx<'_>,
    p: &Provider,
    spec: &JobSpec,
    price: Amount,
) -> Exec<Result<(), ErrorCode>> {
    let r = &spec.resources;
    let cap = &p.info.capacity;
    let cpu_ok = p.reserved.cpu_millis.checked_add(r.cpu_millis).is_some_and(|v| v <= cap.cpu_millis);
    let mem_ok = p.reserved.memory_mb.checked_add(r.memory_mb).is_some_and(|v| v <= cap.memory_mb);
    let gpu_ok =
        u64::from(p.reserved.gpus).checked_add(u64::from(r.gpus)).is_some_and(|v| v <= usable_gpus(p, spec));
    if !(cpu_ok && mem_ok && gpu_ok) {
        return Ok(Err(ErrorCode::NotEligible));
    }
    let exposure = p
        .open_value
        .checked_add(price)
        .and_then(|v| v.checked_mul(u128::from(ctx.params.exposure_multiplier)));
    let bonded = staking::stake(ctx, &p.owner)?.bonded;
    match exposure {
        Some(need) if bonded >= need => Ok(Ok(())),
        _ => Ok(Err(ErrorCode::InsufficientStake)),
    }
}

/// Hold capacity and exposure for an assigned task.
pub(crate) fn reserve(ctx: &mut Ctx<'_>, who: &Address, spec: &JobSpec, price: Amount) -> Exec<()> {
    let mut p = get(ctx, who)?.ok_or_else(|| invariant("assigned provider missing"))?;
    let r = &spec.resources;
    let overflow = || invariant("reservation overflow");
    p.reserved.cpu_millis = p.reserved.cpu_millis.checked_add(r.cpu_millis).ok_or_else(overflow)?;
    p.reserved.memory_mb = p.reserved.memory_mb.checked_add(r.memory_mb).ok_or_else(overflow)?;
    p.reserved.gpus = p.reserved.gpus.checked_add(r.gpus).ok_or_else(overflow)?;
    p.open_value = p.open_value.checked_add(price).ok_or_else(overflow)?;
    p.open_tasks = p.open_tasks.checked_add(1).ok_or_else(overflow)?;
    put(ctx, &p)
}

/// Give back the capacity a task held (when it commits or is abandoned).
/// Whether `p` has `r` free (CPU, memory, GPUs of the size asked).
pub(crate) fn has_resources(p: &Provider, r: &Resources) -> Result<(), ErrorCode> {
    let cap = &p.info.capacity;
    let gpus = cap.gpus.iter().filter(|g| g.vram_mb >= r.gpu_vram_mb).count() as u64;
    let cpu_ok = p.reserved.cpu_millis.checked_add(r.cpu_millis).is_some_and(|v| v <= cap.cpu_millis);
    let mem_ok = p.reserved.memory_mb.checked_add(r.memory_mb).is_some_and(|v| v <= cap.memory_mb);
    let gpu_ok = u64::from(p.reserved.gpus).checked_add(u64::from(r.gpus)).is_some_and(|v| v <= gpus);
    if cpu_ok && mem_ok && gpu_ok { Ok(()) } else { Err(ErrorCode::NotEligible) }
}

/// Hold `r` of `who`'s capacity for a lease (no task exposure: a lease is paid per round).
pub(crate) fn reserve_resources(ctx: &mut Ctx<'_>, who: &Address, r: &Resources) -> Exec<()> {
    let mut p = get(ctx, who)?.ok_or_else(|| invariant("lease provider missing"))?;
    let overflow = || invariant("reservation overflow");
    p.reserved.cpu_millis = p.reserved.cpu_millis.checked_add(r.cpu_millis).ok_or_else(overflow)?;
    p.reserved.memory_mb = p.reserved.memory_mb.checked_add(r.memory_mb).ok_or_else(overflow)?;
    p.reserved.gpus = p.reserved.gpus.checked_add(r.gpus).ok_or_else(overflow)?;
    put(ctx, &p)
}

pub(crate) fn release_capacity(p: &mut Provider, spec: &JobSpec) -> Exec<()> {
    let r = &spec.resources;
    let underflow = || invariant("capacity release underflow");
    p.reserved.cpu_millis = p.reserved.cpu_millis.checked_sub(r.cpu_millis).ok_or_else(underflow)?;
    p.reserved.memory_mb = p.reserved.memory_mb.checked_sub(r.memory_mb).ok_or_else(underflow)?;
    p.reserved.gpus = p.reserved.gpus.checked_sub(r.gpus).ok_or_else(underflow)?;
    Ok(())
}

/// Drop a task's exposure (when it settles or is abandoned).
pub(crate) fn release_exposure(p: &mut Provider, price: Amount) -> Exec<()> {
    let underflow = || invariant("exposure release underflow");
    p.open_value = p.open_value.checked_sub(price).ok_or_else(underflow)?;
    p.open_tasks = p.open_tasks.checked_sub(1).ok_or_else(underflow)?;
    Ok(())
}

/// The posted price of `p` for `kind`.
pub(crate) fn posted_price(p: &Provider, kind: WorkloadKind) -> Option<Amount> {
    p.info.prices.get(kind)
}
