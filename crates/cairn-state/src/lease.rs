//! Leases: long-running services paid per block in probe rounds, held to an on-chain SLA.
//!
//! - **Open.** The chain picks the provider at once: the cheapest live one whose posted
//!   `service` price is within the spec's `max_price_per_block` and that has room for its
//!   resources (ties broken by the beacon). The deposit must cover one round.
//! - **Rounds.** A round is `probe_interval` blocks (fewer when the escrow covers fewer). For
//!   each, `lease_probers` other providers are drawn from the beacon; each requests the SLA's
//!   probe path through the provider's public address and reports `ok` and the latency. At the
//!   round's end its blocks are paid to the provider (the probes passed, or none was reported)
//!   or refunded to the client (most reports failed: no 2xx answer, or slower than the SLA).
//!   So the client pays exactly for the rounds the service was seen up.
//! - **SLA.** Every `window_rounds` rounds, the probed rounds' pass rate is compared with the
//!   spec's `uptime_bps`; below it, the provider is slashed `exposure_multiplier ×` the window's
//!   value (a share to the client, the rest burned) and the lease moves.
//! - **Migration.** After `lease_migrate_after` failed rounds in a row, a window below the SLA,
//!   or the provider closing the lease, it moves to the next provider the open rule picks (never
//!   one it left); its first round there is `fresh` (a failure is refunded, not counted). With
//!   nowhere to go the lease closes and the escrow goes back.
//! - **Volume.** A spec with a `volume` has its provider save it (`SaveVolume`: a tar archive
//!   uploaded as a blob) whenever it changed; the lease keeps the last save, a provider it moves
//!   to starts the service on it, and the client can download it, also after the close.
//! - **Close.** The client may close at any block: the round so far is settled by its reports
//!   and the rest of the escrow refunded. A lease whose escrow no longer covers a block closes
//!   itself: it never runs unpaid.

use cairn_types::{
    Address, Amount, CloseLease, ErrorCode, Event, LeaseEnd, LeaseId, OpenLease, ReportProbe, RoundVerdict,
    SaveVolume, WorkloadKind, hash_domain,
};

use crate::bank;
use crate::ctx::{Ctx, Exec, invariant};
use crate::keys;
use crate::model::{Due, Lease, ProbeReport, Provider, SavedVolume, SlaWindow};
use crate::registry;
use crate::sortition::BPS;
use crate::staking;

/// Providers a lease remembers having left.
const MAX_LEFT: usize = 16;

pub(crate) fn get(ctx: &Ctx<'_>, id: &LeaseId) -> Exec<Option<Lease>> {
    ctx.get(&keys::lease(id))
}

fn put(ctx: &mut Ctx<'_>, l: &Lease) -> Exec<()> {
    ctx.put(keys::lease(&l.id), l)
}

/// The cheapest live provider that serves `spec` within its price and has room, not in `skip`.
fn choose(ctx: &Ctx<'_>, l: &Lease, skip: &[Address]) -> Exec<Option<(Provider, Amount)>> {
    let Some(svc) = l.spec.service.as_deref() else { return Ok(None) };
    let mut best: Option<(Amount, [u8; 32], Provider)> = None;
    for addr in registry::index(ctx)? {
        if skip.contains(&addr) {
            continue;
        }
        let p = registry::get(ctx, &addr)?.ok_or_else(|| invariant("indexed provider missing"))?;
        if !registry::fits(ctx, &p, &l.spec, &l.client) {
            continue;
        }
        let Some(price) = registry::posted_price(&p, WorkloadKind::Service) else { continue };
        if price > svc.max_price_per_block || registry::has_resources(&p, &l.spec.resources).is_err() {
            continue;
        }
        if staking::stake(ctx, &addr)?.bonded < ctx.params.min_provider_stake {
            continue;
        }
        let tie = hash_domain("cairn lease pick v1", &[&ctx.beacon.0, &l.id.0, &addr.0]);
        if best.as_ref().is_none_or(|(bp, bt, _)| (price, tie) < (*bp, *bt)) {
            best = Some((price, tie, p));
        }
    }
    Ok(best.map(|(price, _, p)| (p, price)))
}

/// Blocks the escrow pays for at `price`, up to one round.
fn round_len(ctx: &Ctx<'_>, escrow: Amount, price: Amount) -> u64 {
    let affordable = escrow.base_units().checked_div(price.base_units()).unwrap_or(0);
    u64::try_from(affordable).unwrap_or(u64::MAX).min(ctx.params.probe_interval)
}

/// Draw this round's probers: live providers other than the lease's provider and client,
/// ordered by a beacon hash.
fn draw_probers(ctx: &Ctx<'_>, l: &Lease) -> Exec<Vec<Address>> {
    let mut pool = Vec::new();
    for addr in registry::index(ctx)? {
        if addr == l.provider || addr == l.client {
            continue;
        }
        let p = registry::get(ctx, &addr)?.ok_or_else(|| invariant("indexed provider missing"))?;
        if ctx.height.saturating_sub(p.heartbeat) > ctx.params.heartbeat_timeout {
            continue;
        }
        if staking::stake(ctx, &addr)?.bonded.is_zero() {
            continue;
        }
        let rank =
            hash_domain("cairn prober draw v1", &[&ctx.beacon.0, &l.id.0, &l.round.to_le_bytes(), &addr.0]);
        pool.push((rank, addr));
    }
    pool.sort();
    Ok(pool.into_iter().take(ctx.params.lease_probers as usize).map(|(_, a)| a).collect())
}

/// Start round `l.round` at the current height on `l.provider`, or close the lease when the
/// escrow no longer covers a block.
fn start_round(ctx: &mut Ctx<'_>, mut l: Lease) -> Exec<()> {
    let len = round_len(ctx, l.escrow, l.price_per_block);
    if len == 0 {
        return close(ctx, l, LeaseEnd::Escrow);
    }
    l.round_start = ctx.height;
    l.round_end = ctx.height.checked_add(len).ok_or_else(|| invariant("round end overflow"))?;
    l.reports.clear();
    l.probers = draw_probers(ctx, &l)?;
    ctx.schedule(l.round_end, Due::LeaseRound { lease: l.id, round: l.round })?;
    ctx.emit(Event::LeaseRound {
        lease: l.id,
        round: l.round,
        provider: l.provider,
        probers: l.probers.clone(),
        ends: l.round_end,
    });
    put(ctx, &l)
}

pub(crate) fn open(ctx: &mut Ctx<'_>, client: &Address, nonce: u64, o: &OpenLease) -> Exec<()> {
    if o.spec.kind != WorkloadKind::Service || o.spec.validate().is_err() {
        return Err(ErrorCode::InvalidJobSpec.into());
    }
    if o.deposit.is_zero() {
        return Err(ErrorCode::ZeroAmount.into());
    }
    let id = LeaseId(hash_domain("cairn lease id v1", &[&client.0, &nonce.to_le_bytes()]));
    let mut l = Lease {
        id,
        client: *client,
        provider: *client,
        spec: o.spec.clone(),
        price_per_block: Amount::ZERO,
        deposit: o.deposit,
        escrow: o.deposit,
        opened_at: ctx.height,
        closed_at: None,
        end: None,
        round: 0,
        round_start: ctx.height,
        round_end: ctx.height,
        probers: Vec::new(),
        reports: Vec::new(),
        fresh: true,
        failed_streak: 0,
        window: SlaWindow::default(),
        paid: Amount::ZERO,
        refunded: Amount::ZERO,
        paid_blocks: 0,
        refunded_blocks: 0,
        migrations: 0,
        left: Vec::new(),
        volume: None,
    };
    let (p, price) = choose(ctx, &l, &[*client])?.ok_or(ErrorCode::NoServiceProvider)?;
    let round = price
        .checked_mul(u128::from(ctx.params.probe_interval))
        .ok_or_else(|| invariant("round value overflow"))?;
    if o.deposit < round {
        return Err(ErrorCode::LeaseDepositTooSmall.into());
    }
    bank::debit(ctx, client, o.deposit)?;
    registry::reserve_resources(ctx, &p.owner, &l.spec.resources)?;
    l.provider = p.owner;
    l.price_per_block = price;
    ctx.emit(Event::LeaseOpened { lease: id, client: *client, provider: p.owner, price_per_block: price });
    start_round(ctx, l)
}

fn verdict(l: &Lease) -> RoundVerdict {
    let n = l.reports.len();
    if n == 0 {
        return RoundVerdict::Unprobed;
    }
    let latency = l.spec.service.as_deref().map_or(0, |s| s.sla.latency_ms);
    let failed = l.reports.iter().filter(|r| !r.ok || r.latency_ms > latency).count();
    if failed.saturating_mul(2) > n { RoundVerdict::Failed } else { RoundVerdict::Passed }
}

/// Pay or refund the blocks of the current round up to `at`, by its reports so far.
fn settle_round(ctx: &mut Ctx<'_>, l: &mut Lease, at: u64) -> Exec<RoundVerdict> {
    let v = verdict(l);
    let blocks = at.min(l.round_end).saturating_sub(l.round_start);
    let cost = l
        .price_per_block
        .checked_mul(u128::from(blocks))
        .ok_or_else(|| invariant("round cost overflow"))?
        .min(l.escrow);
    l.escrow = l.escrow.checked_sub(cost).ok_or_else(|| invariant("lease escrow underflow"))?;
    let (paid, refunded) = if v == RoundVerdict::Failed {
        bank::credit(ctx, &l.client, cost)?;
        l.refunded = l.refunded.checked_add(cost).ok_or_else(|| invariant("refund overflow"))?;
        l.refunded_blocks = l.refunded_blocks.saturating_add(blocks);
        (Amount::ZERO, cost)
    } else {
        let fee = cost.checked_bps(ctx.params.protocol_fee_bps).ok_or_else(|| invariant("fee overflow"))?;
        let net = cost.checked_sub(fee).ok_or_else(|| invariant("fee above cost"))?;
        bank::credit(ctx, &l.provider, net)?;
        bank::add_fees(ctx, fee)?;
        l.paid = l.paid.checked_add(cost).ok_or_else(|| invariant("paid overflow"))?;
        l.paid_blocks = l.paid_blocks.saturating_add(blocks);
        (cost, Amount::ZERO)
    };
    ctx.emit(Event::LeaseRoundSettled { lease: l.id, round: l.round, verdict: v, blocks, paid, refunded });
    Ok(v)
}

/// The lease ends: the rest of its escrow goes back and the provider's resources are freed.
fn close(ctx: &mut Ctx<'_>, mut l: Lease, why: LeaseEnd) -> Exec<()> {
    let rest = l.escrow;
    bank::credit(ctx, &l.client, rest)?;
    l.refunded = l.refunded.checked_add(rest).ok_or_else(|| invariant("refund overflow"))?;
    l.escrow = Amount::ZERO;
    release(ctx, &l)?;
    l.closed_at = Some(ctx.height);
    l.end = Some(why);
    l.probers.clear();
    ctx.emit(Event::LeaseClosed { lease: l.id, paid: l.paid, refunded: l.refunded, reason: why });
    put(ctx, &l)
}

fn release(ctx: &mut Ctx<'_>, l: &Lease) -> Exec<()> {
    if let Some(mut p) = registry::get(ctx, &l.provider)? {
        registry::release_capacity(&mut p, &l.spec)?;
        registry::put(ctx, &p)?;
    }
    Ok(())
}

/// Move the lease off its provider (which it never comes back to) and start a round on the
/// next one; close it when there is none.
fn migrate(ctx: &mut Ctx<'_>, mut l: Lease) -> Exec<()> {
    release(ctx, &l)?;
    let from = l.provider;
    if l.left.len() >= MAX_LEFT {
        l.left.remove(0);
    }
    l.left.push(from);
    let mut skip = l.left.clone();
    skip.push(l.client);
    let Some((p, price)) = choose(ctx, &l, &skip)? else {
        // Nothing was reserved on another provider: close without releasing twice.
        let rest = l.escrow;
        bank::credit(ctx, &l.client, rest)?;
        l.refunded = l.refunded.checked_add(rest).ok_or_else(|| invariant("refund overflow"))?;
        l.escrow = Amount::ZERO;
        l.closed_at = Some(ctx.height);
        l.end = Some(LeaseEnd::NoProvider);
        l.probers.clear();
        ctx.emit(Event::LeaseClosed {
            lease: l.id,
            paid: l.paid,
            refunded: l.refunded,
            reason: LeaseEnd::NoProvider,
        });
        return put(ctx, &l);
    };
    registry::reserve_resources(ctx, &p.owner, &l.spec.resources)?;
    l.provider = p.owner;
    l.price_per_block = price;
    l.fresh = true;
    l.failed_streak = 0;
    l.window = SlaWindow::default();
    l.migrations = l.migrations.saturating_add(1);
    l.round = l.round.saturating_add(1);
    ctx.emit(Event::LeaseMigrated { lease: l.id, from, to: p.owner, price_per_block: price });
    start_round(ctx, l)
}

/// Slash the provider for a window below its SLA: `exposure_multiplier ×` the window's value,
/// a share to the client, the rest burned.
fn slash_breach(ctx: &mut Ctx<'_>, l: &Lease, uptime_bps: u32) -> Exec<()> {
    let window_blocks = ctx.params.probe_interval.saturating_mul(u64::from(l.window.rounds));
    let want = l
        .price_per_block
        .checked_mul(u128::from(window_blocks))
        .and_then(|v| v.checked_mul(u128::from(ctx.params.exposure_multiplier)))
        .unwrap_or(Amount::MAX);
    let (slashed, to_client, burned) = crate::penalty::slash_to_client(ctx, &l.provider, &l.client, want)?;
    ctx.emit(Event::SlaBreached {
        lease: l.id,
        provider: l.provider,
        uptime_bps,
        slashed,
        to_client,
        burned,
    });
    Ok(())
}

/// End of a round's last block: settle it, count the SLA, move or go on.
pub(crate) fn on_round_end(ctx: &mut Ctx<'_>, id: &LeaseId, round: u32) -> Exec<()> {
    let Some(mut l) = get(ctx, id)? else { return Err(invariant("scheduled lease missing")) };
    if l.closed_at.is_some() || l.round != round {
        return Ok(());
    }
    let end = l.round_end;
    let v = settle_round(ctx, &mut l, end)?;
    l.failed_streak = if v == RoundVerdict::Failed { l.failed_streak.saturating_add(1) } else { 0 };
    l.window.rounds = l.window.rounds.saturating_add(1);
    if !l.fresh && v != RoundVerdict::Unprobed {
        l.window.probed = l.window.probed.saturating_add(1);
        if v == RoundVerdict::Passed {
            l.window.passed = l.window.passed.saturating_add(1);
        }
    }
    l.fresh = false;
    let target = l.spec.service.as_deref().map_or(0, |s| s.sla.uptime_bps);
    let window_rounds = l.spec.service.as_deref().map_or(1, |s| s.sla.window_rounds);
    let mut moving = l.failed_streak >= ctx.params.lease_migrate_after;
    if l.window.rounds >= window_rounds {
        let w = std::mem::take(&mut l.window);
        if w.probed > 0 {
            let uptime =
                u64::from(w.passed).saturating_mul(BPS).checked_div(u64::from(w.probed)).unwrap_or(0);
            if uptime < u64::from(target) {
                l.window = w;
                slash_breach(ctx, &l, u32::try_from(uptime).unwrap_or(u32::MAX))?;
                l.window = SlaWindow::default();
                moving = true;
            }
        }
    }
    if moving {
        return migrate(ctx, l);
    }
    l.round = l.round.saturating_add(1);
    start_round(ctx, l)
}

pub(crate) fn report_probe(ctx: &mut Ctx<'_>, who: &Address, r: &ReportProbe) -> Exec<()> {
    let mut l = get(ctx, &r.lease)?.ok_or(ErrorCode::LeaseNotFound)?;
    if l.closed_at.is_some() {
        return Err(ErrorCode::LeaseClosed.into());
    }
    if r.round != l.round {
        return Err(ErrorCode::ProbeRoundClosed.into());
    }
    if !l.probers.contains(who) {
        return Err(ErrorCode::ProbeNotAssigned.into());
    }
    if l.reports.iter().any(|p| p.prober == *who) {
        return Err(ErrorCode::ProbeDuplicate.into());
    }
    l.reports.push(ProbeReport { prober: *who, ok: r.ok, latency_ms: r.latency_ms });
    ctx.emit(Event::ProbeReported {
        lease: l.id,
        round: l.round,
        prober: *who,
        ok: r.ok,
        latency_ms: r.latency_ms,
    });
    put(ctx, &l)
}

/// The client closes (settled to this block, the rest refunded); the provider leaving hands
/// the lease on to another provider instead.
pub(crate) fn close_by(ctx: &mut Ctx<'_>, who: &Address, c: &CloseLease) -> Exec<()> {
    let mut l = get(ctx, &c.lease)?.ok_or(ErrorCode::LeaseNotFound)?;
    if *who != l.client && *who != l.provider {
        return Err(ErrorCode::NotLeaseParty.into());
    }
    if l.closed_at.is_some() {
        return Err(ErrorCode::LeaseClosed.into());
    }
    let at = ctx.height;
    settle_round(ctx, &mut l, at)?;
    if *who == l.client { close(ctx, l, LeaseEnd::Client) } else { migrate(ctx, l) }
}

/// The lease's current provider records a new save of its volume.
pub(crate) fn save_volume(ctx: &mut Ctx<'_>, who: &Address, v: &SaveVolume) -> Exec<()> {
    let mut l = get(ctx, &v.lease)?.ok_or(ErrorCode::LeaseNotFound)?;
    if l.closed_at.is_some() {
        return Err(ErrorCode::LeaseClosed.into());
    }
    if *who != l.provider {
        return Err(ErrorCode::NotLeaseProvider.into());
    }
    let cap = l.spec.service.as_deref().and_then(|s| s.volume.as_ref()).ok_or(ErrorCode::NoVolume)?;
    if v.size == 0 || v.size > cap.max_archive_bytes() {
        return Err(ErrorCode::VolumeTooLarge.into());
    }
    l.volume = Some(SavedVolume { blob: v.blob, size: v.size, at: ctx.height, by: *who });
    ctx.emit(Event::VolumeSaved { lease: l.id, provider: *who, blob: v.blob, size: v.size });
    put(ctx, &l)
}
