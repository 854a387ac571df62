//! Jobs, tasks and matching: posted-price instant match and sealed reverse auctions (bids
//! committed while the auction seals, revealed before it closes).
//!
//! Ranking: the lowest `price / reputation weight` wins; ties go to the lowest
//! `H(beacon, seed, provider)`, which no one can steer without steering the beacon.

use std::cmp::Ordering;
use std::collections::VecDeque;

use cairn_types::{
    Address, Amount, Bid, Canonical, ErrorCode, Event, JobId, JobSpec, Offer, RefundReason, TaskId,
    VerificationLevel, hash_domain,
};

use crate::ctx::{Ctx, Exec, invariant};
use crate::escrow;
use crate::keys;
use crate::model::{BidEntry, Due, Job, Provider, SealedBid, Task, TaskState};
use crate::registry;

pub(crate) fn job(ctx: &Ctx<'_>, id: &JobId) -> Exec<Option<Job>> {
    ctx.get(&keys::job(id))
}

pub(crate) fn spec(ctx: &Ctx<'_>, id: &JobId) -> Exec<JobSpec> {
    let bytes = ctx.get_raw(&keys::job_spec(id))?.ok_or_else(|| invariant("job spec missing"))?;
    JobSpec::decode(&bytes).map_err(|_| invariant("stored job spec does not decode"))
}

pub(crate) fn task(ctx: &Ctx<'_>, id: &TaskId) -> Exec<Option<Task>> {
    ctx.get(&keys::task(id))
}

pub(crate) fn put_task(ctx: &mut Ctx<'_>, t: &Task) -> Exec<()> {
    ctx.put(keys::task(&t.id), t)
}

/// A candidate's place in the ranking.
struct Ranked {
    provider: Address,
    price: Amount,
    weight: u128,
    tie: [u8; 32],
}

fn rank(a: &Ranked, b: &Ranked) -> Ordering {
    // price_a / w_a vs price_b / w_b, without division: prices ≤ 10^30 and weights ≤ 15,000,
    // so the products fit in u128.
    let lhs = a.price.base_units().saturating_mul(b.weight);
    let rhs = b.price.base_units().saturating_mul(a.weight);
    lhs.cmp(&rhs).then_with(|| a.tie.cmp(&b.tie))
}

fn ranked(ctx: &Ctx<'_>, seed: &[u8], p: &Provider, price: Amount) -> Ranked {
    Ranked {
        provider: p.owner,
        price,
        weight: p.reputation.weight_bps(),
        tie: hash_domain("cairn auction tie v1", &[&ctx.beacon.0, seed, &p.owner.0]),
    }
}

/// Providers whose posted price for the job's kind fits, best first.
fn posted_candidates(
    ctx: &Ctx<'_>,
    spec: &JobSpec,
    client: &Address,
    seed: &[u8],
    excluded: &[Address],
) -> Exec<VecDeque<Ranked>> {
    let mut out = Vec::new();
    for addr in registry::index(ctx)? {
        if excluded.contains(&addr) {
            continue;
        }
        let p = registry::get(ctx, &addr)?.ok_or_else(|| invariant("indexed provider missing"))?;
        let Some(price) = registry::posted_price(&p, spec.kind) else { continue };
        if price <= spec.max_price_per_task && registry::fits(ctx, &p, spec, client) {
            out.push(ranked(ctx, seed, &p, price));
        }
    }
    out.sort_by(rank);
    Ok(out.into())
}

fn assign(ctx: &mut Ctx<'_>, t: &mut Task, spec: &JobSpec, provider: Address, price: Amount) -> Exec<()> {
    registry::reserve(ctx, &provider, spec, price)?;
    let deadline =
        ctx.height.checked_add(spec.deadline_blocks).ok_or_else(|| invariant("height overflow"))?;
    t.state = TaskState::Assigned { provider, price, assigned_at: ctx.height, deadline };
    ctx.schedule(deadline, Due::Deadline { task: t.id, attempt: t.attempt })?;
    ctx.emit(Event::TaskAssigned {
        task: t.id,
        job: t.job,
        index: t.index,
        provider,
        price,
        deadline,
        attempt: t.attempt,
    });
    Ok(())
}

fn open_auction(ctx: &mut Ctx<'_>, t: &mut Task, window: u32) -> Exec<()> {
    let auction_end =
        ctx.height.checked_add(u64::from(window.max(1))).ok_or_else(|| invariant("height overflow"))?;
    t.state = TaskState::Open { auction_end, bids: Vec::new() };
    ctx.schedule(close_height(ctx, auction_end)?, Due::AuctionClose { task: t.id, attempt: t.attempt })?;
    ctx.emit(Event::TaskOpened { task: t.id, job: t.job, index: t.index, attempt: t.attempt, auction_end });
    Ok(())
}

/// Try the ranked candidates in order; the first with room now gets the task. Candidates
/// without room are dropped from the front: room only shrinks while one job is matched, so
/// they stay unusable for the job's later tasks too.
fn take_first_with_room(
    ctx: &mut Ctx<'_>,
    t: &mut Task,
    spec: &JobSpec,
    cands: &mut VecDeque<Ranked>,
) -> Exec<bool> {
    while let Some(c) = cands.front() {
        let (provider, price) = (c.provider, c.price);
        let p = registry::get(ctx, &provider)?.ok_or_else(|| invariant("candidate missing"))?;
        if registry::has_room(ctx, &p, spec, price)?.is_ok() {
            assign(ctx, t, spec, provider, price)?;
            return Ok(true);
        }
        cands.pop_front();
    }
    Ok(false)
}

/// Start a task's current attempt: match at once against posted prices when the job asks
/// for it (`bid_window = 0`), otherwise, or when nobody fits, open an auction.
fn start_attempt(ctx: &mut Ctx<'_>, t: &mut Task, job: &Job, spec: &JobSpec) -> Exec<()> {
    if spec.bid_window == 0 {
        let mut cands = posted_candidates(ctx, spec, &job.client, &t.id.0, &t.excluded)?;
        if take_first_with_room(ctx, t, spec, &mut cands)? {
            return Ok(());
        }
        return wait_for_room(ctx, t);
    }
    open_auction(ctx, t, spec.bid_window)
}

/// A posted-price task that found no room: open for bids, and wait in the waiting room for
/// the first provider with room ([`crate::waiting`]).
fn wait_for_room(ctx: &mut Ctx<'_>, t: &mut Task) -> Exec<()> {
    open_auction(ctx, t, ctx.params.rematch_blocks)?;
    crate::waiting::push(ctx, t.id, t.attempt)
}

/// Match an open task of a posted-price job to the best provider with room now; its sealed
/// bids, if any, are dropped. False when no one has room.
pub(crate) fn match_posted(ctx: &mut Ctx<'_>, t: &mut Task) -> Exec<bool> {
    let j = job(ctx, &t.job)?.ok_or_else(|| invariant("task without job"))?;
    if j.cancelled {
        return Ok(false);
    }
    let spec = spec(ctx, &t.job)?;
    let mut cands = posted_candidates(ctx, &spec, &j.client, &t.id.0, &t.excluded)?;
    if !take_first_with_room(ctx, t, &spec, &mut cands)? {
        return Ok(false);
    }
    ctx.delete(keys::sealed(&t.id));
    Ok(true)
}

pub(crate) fn submit_job(ctx: &mut Ctx<'_>, client: &Address, nonce: u64, spec: &JobSpec) -> Exec<()> {
    spec.validate().map_err(|_| ErrorCode::InvalidJobSpec)?;
    let encoded = spec.encode();
    let id = JobId(hash_domain("cairn job id v1", &[&client.0, &nonce.to_le_bytes(), &encoded]));
    if job(ctx, &id)?.is_some() {
        return Err(ErrorCode::JobExists.into());
    }
    let vfee = match spec.verification {
        VerificationLevel::None => Amount::ZERO,
        _ => {
            spec.max_price_per_task.checked_bps(ctx.params.verification_fee_bps).ok_or(ErrorCode::Overflow)?
        }
    };
    let reserve = spec.max_price_per_task.checked_add(vfee).ok_or(ErrorCode::Overflow)?;
    let deposit = reserve.checked_mul(u128::from(spec.tasks)).ok_or(ErrorCode::Overflow)?;
    escrow::deposit(ctx, client, &id, deposit)?;
    let j = Job {
        id,
        client: *client,
        kind: spec.kind,
        tasks: spec.tasks,
        max_price: spec.max_price_per_task,
        reserve_per_task: reserve,
        submitted_at: ctx.height,
        unfinished: spec.tasks,
        cancelled: false,
    };
    ctx.put(keys::job(&id), &j)?;
    ctx.put(keys::job_spec(&id), &RawBytes(encoded))?;
    ctx.emit(Event::JobSubmitted { job: id, client: *client, tasks: spec.tasks, deposit });

    // Instant match ranks once per job; auctions rank per task.
    let mut cands = if spec.bid_window == 0 {
        posted_candidates(ctx, spec, client, &id.0, &[])?
    } else {
        VecDeque::new()
    };
    for index in 0..spec.tasks {
        let mut t = Task {
            id: TaskId::derive(&id, index),
            job: id,
            index,
            attempt: 1,
            excluded: Vec::new(),
            state: TaskState::Open { auction_end: ctx.height, bids: Vec::new() },
            inputs: Vec::new(),
            ready_at: ctx.height,
            accepted: false,
        };
        if spec.train.as_ref().is_some_and(|plan| !plan.dependencies(index).is_empty()) {
            // A later round: it opens once the results it reads are accepted.
            t.state = TaskState::Waiting {};
        } else if spec.bid_window == 0 {
            if !take_first_with_room(ctx, &mut t, spec, &mut cands)? {
                wait_for_room(ctx, &mut t)?;
            }
        } else {
            open_auction(ctx, &mut t, spec.bid_window)?;
        }
        put_task(ctx, &t)?;
    }
    Ok(())
}

/// Stored as-is (the spec's own canonical bytes), not wrapped in another length prefix.
struct RawBytes(Vec<u8>);

impl borsh::BorshSerialize for RawBytes {
    fn serialize<W: std::io::Write>(&self, w: &mut W) -> std::io::Result<()> {
        w.write_all(&self.0)
    }
}

/// The height an auction whose sealing ends at `auction_end` closes: after the reveal window.
fn close_height(ctx: &Ctx<'_>, auction_end: u64) -> Exec<u64> {
    auction_end.checked_add(u64::from(ctx.params.reveal_blocks)).ok_or_else(|| invariant("height overflow"))
}

/// A sealed bid while the auction seals (`height ≤ auction_end`), its reveal after (until the
/// close). Only revealed bids compete; a sealed bid never revealed is simply out.
pub(crate) fn bid(ctx: &mut Ctx<'_>, provider: &Address, b: &Bid) -> Exec<()> {
    let mut t = task(ctx, &b.task)?.ok_or(ErrorCode::TaskNotFound)?;
    let TaskState::Open { auction_end, bids } = &t.state else {
        return Err(ErrorCode::TaskNotOpen.into());
    };
    let (auction_end, bids) = (*auction_end, bids.clone());
    let j = job(ctx, &t.job)?.ok_or_else(|| invariant("task without job"))?;
    let spec = spec(ctx, &t.job)?;
    if j.client == *provider {
        return Err(ErrorCode::ClientCannotBid.into());
    }
    let p = registry::get(ctx, provider)?.ok_or(ErrorCode::ProviderNotRegistered)?;
    if t.excluded.contains(provider) || !registry::fits(ctx, &p, &spec, &j.client) {
        return Err(ErrorCode::NotEligible.into());
    }
    let mut sealed: Vec<SealedBid> = ctx.get_or_default(&keys::sealed(&t.id))?;
    let (price, salt) = match &b.offer {
        Offer::Sealed(commitment) => {
            if ctx.height > auction_end {
                return Err(ErrorCode::AuctionClosed.into());
            }
            if sealed.iter().any(|s| s.provider == *provider) {
                return Err(ErrorCode::DuplicateBid.into());
            }
            let most = (ctx.params.max_bids_per_task as usize).saturating_mul(4);
            if sealed.len() >= most {
                return Err(ErrorCode::AuctionFull.into());
            }
            sealed.push(SealedBid { provider: *provider, commitment: *commitment });
            ctx.put(keys::sealed(&t.id), &sealed)?;
            ctx.emit(Event::BidSealed { task: b.task, provider: *provider });
            return Ok(());
        }
        Offer::Reveal { price, salt } => (*price, *salt),
    };
    if ctx.height <= auction_end || ctx.height > close_height(ctx, auction_end)? {
        return Err(ErrorCode::NotRevealTime.into());
    }
    if bids.iter().any(|x| x.provider == *provider) {
        return Err(ErrorCode::DuplicateBid.into());
    }
    let Some(at) = sealed.iter().position(|s| s.provider == *provider) else {
        return Err(ErrorCode::BidNotSealed.into());
    };
    if sealed[at].commitment != Bid::commitment(&t.id, provider, price, &salt) {
        return Err(ErrorCode::RevealMismatch.into());
    }
    if price.is_zero() {
        return Err(ErrorCode::ZeroAmount.into());
    }
    if price > j.max_price {
        return Err(ErrorCode::PriceAboveMax.into());
    }
    registry::has_room(ctx, &p, &spec, price)?.map_err(crate::ctx::Fail::Code)?;
    let mut entries = bids;
    if entries.len() >= ctx.params.max_bids_per_task as usize {
        // Full: the new bid replaces the worst one only if it ranks better.
        let mut ranked_bids = Vec::with_capacity(entries.len());
        for e in &entries {
            if let Some(bp) = registry::get(ctx, &e.provider)? {
                ranked_bids.push(ranked(ctx, &t.id.0, &bp, e.price));
            }
        }
        ranked_bids.sort_by(rank);
        let new = ranked(ctx, &t.id.0, &p, price);
        match ranked_bids.last() {
            Some(worst) if rank(&new, worst) == Ordering::Less => {
                let worst = worst.provider;
                entries.retain(|e| e.provider != worst);
            }
            _ => return Err(ErrorCode::AuctionFull.into()),
        }
    }
    sealed.remove(at);
    ctx.put(keys::sealed(&t.id), &sealed)?;
    entries.push(BidEntry { provider: *provider, price });
    t.state = TaskState::Open { auction_end, bids: entries };
    put_task(ctx, &t)?;
    ctx.emit(Event::BidPlaced { task: t.id, provider: *provider, price });
    Ok(())
}

/// Another attempt after a missed deadline if the job allows one, else refund.
pub(crate) fn retry_or_refund(ctx: &mut Ctx<'_>, t: &mut Task, j: &Job, spec: &JobSpec) -> Exec<()> {
    if t.attempt < spec.max_attempts {
        t.attempt = t.attempt.checked_add(1).ok_or_else(|| invariant("attempt overflow"))?;
        start_attempt(ctx, t, j, spec)
    } else {
        refund(ctx, t, RefundReason::MaxAttempts)
    }
}

/// Refund a task's reserve to its client and mark it final. In a training job every task still
/// waiting reads this one, directly or through later rounds, so those are refunded too.
pub(crate) fn refund(ctx: &mut Ctx<'_>, t: &mut Task, reason: RefundReason) -> Exec<()> {
    refund_one(ctx, t, reason)?;
    let j = job(ctx, &t.job)?.ok_or_else(|| invariant("task without job"))?;
    if j.kind != cairn_types::WorkloadKind::Train || reason == RefundReason::Cancelled {
        return Ok(());
    }
    for index in 0..j.tasks {
        let mut w = task(ctx, &TaskId::derive(&j.id, index))?.ok_or_else(|| invariant("job task missing"))?;
        if w.state == (TaskState::Waiting {}) {
            refund_one(ctx, &mut w, RefundReason::Upstream)?;
            put_task(ctx, &w)?;
        }
    }
    Ok(())
}

fn refund_one(ctx: &mut Ctx<'_>, t: &mut Task, reason: RefundReason) -> Exec<()> {
    let mut j = job(ctx, &t.job)?.ok_or_else(|| invariant("task without job"))?;
    let amount = escrow::refund_task(ctx, &j)?;
    t.state = TaskState::Refunded { reason, at: ctx.height };
    ctx.emit(Event::TaskRefunded { task: t.id, job: t.job, amount, reason });
    finish_task(ctx, &mut j)
}

/// A committed result passed its audit draw (and any audit it drew): mark it accepted and,
/// in a training job, open each task that reads it once everything that task reads is
/// accepted, recording those outputs as its inputs.
pub(crate) fn accept(ctx: &mut Ctx<'_>, id: &TaskId) -> Exec<()> {
    let Some(mut t) = task(ctx, id)? else { return Err(invariant("accepted task missing")) };
    let j = job(ctx, &t.job)?.ok_or_else(|| invariant("task without job"))?;
    let committed = matches!(t.state, TaskState::Committed { .. } | TaskState::Settled { .. });
    if t.accepted || !committed || j.kind != cairn_types::WorkloadKind::Train {
        return Ok(());
    }
    t.accepted = true;
    put_task(ctx, &t)?;
    let spec = spec(ctx, &t.job)?;
    let Some(plan) = spec.train.as_ref() else { return Ok(()) };
    if j.cancelled {
        return Ok(());
    }
    'next: for index in plan.dependents(t.index) {
        let mut next =
            task(ctx, &TaskId::derive(&j.id, index))?.ok_or_else(|| invariant("job task missing"))?;
        if next.state != (TaskState::Waiting {}) {
            continue;
        }
        let mut inputs = Vec::new();
        for dep in plan.dependencies(index) {
            let d = task(ctx, &TaskId::derive(&j.id, dep))?.ok_or_else(|| invariant("job task missing"))?;
            match d.state {
                TaskState::Committed { output, .. } | TaskState::Settled { output, .. } if d.accepted => {
                    inputs.push(output)
                }
                _ => continue 'next,
            }
        }
        next.inputs = inputs;
        next.ready_at = ctx.height;
        start_attempt(ctx, &mut next, &j, &spec)?;
        put_task(ctx, &next)?;
    }
    Ok(())
}

/// Count a task as finished; emit `JobFinished` with the last one.
pub(crate) fn finish_task(ctx: &mut Ctx<'_>, j: &mut Job) -> Exec<()> {
    j.unfinished = j.unfinished.checked_sub(1).ok_or_else(|| invariant("job task count underflow"))?;
    ctx.put(keys::job(&j.id), &*j)?;
    if j.unfinished == 0 {
        escrow::close(ctx, &j.id)?;
        ctx.emit(Event::JobFinished { job: j.id });
    }
    Ok(())
}

pub(crate) fn on_auction_close(ctx: &mut Ctx<'_>, id: &TaskId, attempt: u32) -> Exec<()> {
    let Some(mut t) = task(ctx, id)? else { return Err(invariant("scheduled task missing")) };
    let TaskState::Open { auction_end, bids } = &t.state else { return Ok(()) };
    if t.attempt != attempt || close_height(ctx, *auction_end)? != ctx.height {
        return Ok(());
    }
    let bids = bids.clone();
    ctx.delete(keys::sealed(&t.id));
    let j = job(ctx, &t.job)?.ok_or_else(|| invariant("task without job"))?;
    let spec = spec(ctx, &t.job)?;
    let mut cands = Vec::with_capacity(bids.len());
    for b in &bids {
        if let Some(p) = registry::get(ctx, &b.provider)?
            && registry::fits(ctx, &p, &spec, &j.client)
        {
            cands.push(ranked(ctx, &t.id.0, &p, b.price));
        }
    }
    cands.sort_by(rank);
    let mut done = take_first_with_room(ctx, &mut t, &spec, &mut cands.into())?;
    if !done {
        let mut posted = posted_candidates(ctx, &spec, &j.client, &t.id.0, &t.excluded)?;
        done = take_first_with_room(ctx, &mut t, &spec, &mut posted)?;
    }
    if !done {
        // Waiting for a provider does not use up attempts (those count missed deadlines), but
        // no task waits forever: past `max_wait_blocks` since submission it is refunded.
        if ctx.height.saturating_sub(j.submitted_at.max(t.ready_at)) >= ctx.params.max_wait_blocks {
            refund(ctx, &mut t, RefundReason::NoProvider)?;
        } else {
            start_attempt(ctx, &mut t, &j, &spec)?;
        }
    }
    put_task(ctx, &t)
}

pub(crate) fn on_deadline(ctx: &mut Ctx<'_>, id: &TaskId, attempt: u32) -> Exec<()> {
    let Some(mut t) = task(ctx, id)? else { return Err(invariant("scheduled task missing")) };
    let TaskState::Assigned { provider, price, deadline, .. } = t.state.clone() else { return Ok(()) };
    if t.attempt != attempt || deadline != ctx.height {
        return Ok(());
    }
    let j = job(ctx, &t.job)?.ok_or_else(|| invariant("task without job"))?;
    let spec = spec(ctx, &t.job)?;
    let mut p = registry::get(ctx, &provider)?.ok_or_else(|| invariant("assigned provider missing"))?;
    registry::release_capacity(&mut p, &spec)?;
    registry::release_exposure(&mut p, price)?;
    p.reputation.consecutive_valid = 0;
    p.reputation.total_failed = p.reputation.total_failed.saturating_add(1);
    registry::put(ctx, &p)?;
    ctx.emit(Event::TaskMissedDeadline { task: t.id, provider, attempt: t.attempt });
    t.excluded.push(provider);
    retry_or_refund(ctx, &mut t, &j, &spec)?;
    put_task(ctx, &t)
}

pub(crate) fn cancel_job(ctx: &mut Ctx<'_>, client: &Address, id: &JobId) -> Exec<()> {
    let j = job(ctx, id)?.ok_or(ErrorCode::JobNotFound)?;
    if j.client != *client {
        return Err(ErrorCode::NotJobClient.into());
    }
    if j.cancelled || j.unfinished == 0 {
        return Err(ErrorCode::JobFinished.into());
    }
    let spec = spec(ctx, id)?;
    let mut marked = j.clone();
    marked.cancelled = true;
    ctx.put(keys::job(id), &marked)?;
    for index in 0..j.tasks {
        let tid = TaskId::derive(id, index);
        let mut t = task(ctx, &tid)?.ok_or_else(|| invariant("job task missing"))?;
        match t.state.clone() {
            TaskState::Open { .. } | TaskState::Waiting {} => {}
            TaskState::Assigned { provider, price, .. } => {
                let mut p =
                    registry::get(ctx, &provider)?.ok_or_else(|| invariant("assigned provider missing"))?;
                registry::release_capacity(&mut p, &spec)?;
                registry::release_exposure(&mut p, price)?;
                registry::put(ctx, &p)?;
            }
            _ => continue,
        }
        refund(ctx, &mut t, RefundReason::Cancelled)?;
        put_task(ctx, &t)?;
    }
    Ok(())
}
