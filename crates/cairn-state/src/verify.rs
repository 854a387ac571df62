//! Verification: result commitments, random audits, disputes, canaries and slashing.
//!
//! A provider commits `(task, output root, metering)`. At the end of the *next* block — whose
//! beacon the worker could not know while computing — the chain decides whether to audit, with
//! probability `p = max(p_min, 1/(consecutive_valid+1))` (every result for a provider's first
//! `audit_first_results`, every result of a `strict` job), and draws the auditor by stake among
//! eligible providers other than the worker and the client. The auditor re-runs the task and
//! submits its own output root within `audit_window` blocks:
//!
//! - the same root: confirmed; the auditor is paid from the audit pool and the result settles
//!   when its challenge window ends;
//! - another root: a dispute; `k` more auditors are drawn, and the root a majority of them
//!   report decides. A worker who loses is slashed (`exposure_multiplier ×` the task's price,
//!   capped by its stake): a share to the auditors who found the fault, a share to the client,
//!   the rest burned; its task re-runs on another provider, or is refunded. An auditor whose
//!   mismatch loses is slashed only by a unanimous panel; panelists on the losing side are not
//!   paid and take a reputation failure;
//! - no verdict: the auditor's reputation takes a failure and another auditor is drawn, up to
//!   `audit_max_draws`; then the result settles unaudited.
//!
//! The client of a committed task may also open a dispute itself, with a bond. With rate `φ`
//! an auditor is handed a canary: a verified task shown with a wrong claimed output. An auditor
//! that re-runs reports the known answer; one that echoes the claim is slashed.

use cairn_types::{
    Address, AuditKind, AuditOutcome, CommitResult, ContentId, ErrorCode, Event, JobSpec, SlashReason,
    SubmitAudit, TaskId, VerificationLevel, WorkloadKind, hash_domain,
};

use crate::ctx::{Ctx, Exec, invariant};
use crate::escrow;
use crate::keys;
use crate::market;
use crate::model::{Audit, Due, Job, KnownAnswer, Task, TaskState};
use crate::penalty::{mark_failed, pay_auditor, slash};
use crate::registry;
use crate::rewards;
use crate::sortition::{BPS, audit_probability_bps, draw, draw_auditors};

pub(crate) fn commit(ctx: &mut Ctx<'_>, who: &Address, c: &CommitResult) -> Exec<()> {
    let mut t = market::task(ctx, &c.task)?.ok_or(ErrorCode::TaskNotFound)?;
    let TaskState::Assigned { provider, price, deadline, .. } = t.state.clone() else {
        return Err(ErrorCode::TaskNotAssigned.into());
    };
    if provider != *who {
        return Err(ErrorCode::NotAssignedProvider.into());
    }
    if ctx.height > deadline {
        return Err(ErrorCode::DeadlinePassed.into());
    }
    let spec = market::spec(ctx, &t.job)?;
    if c.metering.units > spec.limits.fuel || c.metering.output_bytes > spec.limits.output_bytes {
        return Err(ErrorCode::InvalidBody.into());
    }
    check_streams(&spec, &c.streams)?;
    // Running is over: the capacity is free again; the stake exposure stays until payment.
    let mut p = registry::get(ctx, who)?.ok_or_else(|| invariant("assigned provider missing"))?;
    registry::release_capacity(&mut p, &spec)?;
    registry::put(ctx, &p)?;
    let window = match spec.verification {
        VerificationLevel::None => 1,
        _ => ctx.params.challenge_window,
    };
    let next = ctx.height.checked_add(1).ok_or_else(|| invariant("height overflow"))?;
    let settle_at = ctx.height.checked_add(window).ok_or_else(|| invariant("height overflow"))?;
    t.state = TaskState::Committed {
        provider,
        price,
        output: c.output,
        metering: c.metering.clone(),
        streams: c.streams.clone(),
        committed_at: ctx.height,
        settle_at,
    };
    market::put_task(ctx, &t)?;
    if spec.verification != VerificationLevel::None {
        // Scheduled before the settlement, so it runs first when both fall in one block.
        ctx.schedule(next, Due::AuditDraw { task: t.id })?;
    }
    ctx.schedule(settle_at, Due::Settle { task: t.id })?;
    ctx.emit(Event::TaskCommitted { task: t.id, provider, output: c.output, settle_at });
    if spec.verification == VerificationLevel::None {
        market::accept(ctx, &t.id)?;
    }
    Ok(())
}

/// Stream ends come with inference results only, one per reply at most up to the cap.
fn check_streams(spec: &JobSpec, ends: &[cairn_types::stream::StreamEnd]) -> Exec<()> {
    let allowed = if spec.kind == WorkloadKind::Inference { cairn_types::stream::MAX_STREAM_ENDS } else { 0 };
    if ends.len() > allowed || ends.iter().any(|e| e.n > spec.limits.fuel) {
        return Err(ErrorCode::InvalidBody.into());
    }
    Ok(())
}

/// What audits of a committed task compare: its output, bound to its stream ends.
pub(crate) fn claim_of(state: &TaskState) -> Option<ContentId> {
    match state {
        TaskState::Committed { output, streams, .. } => Some(cairn_types::stream::claim(output, streams)),
        _ => None,
    }
}

pub(crate) fn on_settle(ctx: &mut Ctx<'_>, id: &TaskId) -> Exec<()> {
    let mut t = market::task(ctx, id)?.ok_or_else(|| invariant("scheduled task missing"))?;
    let TaskState::Committed { provider, price, output, settle_at, .. } = t.state.clone() else {
        return Ok(());
    };
    if settle_at != ctx.height || audit(ctx, id)?.is_some() {
        // An audit or dispute in progress settles the task itself when it confirms the result.
        return Ok(());
    }
    let mut j = market::job(ctx, &t.job)?.ok_or_else(|| invariant("task without job"))?;
    let vfee = j.reserve_per_task.checked_sub(j.max_price).ok_or_else(|| invariant("reserve below price"))?;
    let payout = escrow::pay_task(ctx, &j, &provider, price, vfee)?;
    if !vfee.is_zero() {
        let mut totals = ctx.totals()?;
        totals.audit_pool = totals.audit_pool.checked_add(vfee).ok_or_else(|| invariant("pool overflow"))?;
        ctx.set_totals(&totals)?;
    }
    let mut p = registry::get(ctx, &provider)?.ok_or_else(|| invariant("assigned provider missing"))?;
    registry::release_exposure(&mut p, price)?;
    p.reputation.consecutive_valid = p.reputation.consecutive_valid.saturating_add(1);
    p.reputation.total_valid = p.reputation.total_valid.saturating_add(1);
    rewards::record_work(ctx, &mut p, price)?;
    registry::put(ctx, &p)?;
    t.state = TaskState::Settled { provider, price, output, settled_at: ctx.height };
    market::put_task(ctx, &t)?;
    ctx.emit(Event::TaskSettled {
        task: t.id,
        job: t.job,
        provider,
        paid: payout.paid,
        protocol_fee: payout.protocol_fee,
        refunded: payout.refunded,
    });
    market::finish_task(ctx, &mut j)?;
    market::accept(ctx, id)
}

pub(crate) fn audit(ctx: &Ctx<'_>, id: &TaskId) -> Exec<Option<Audit>> {
    ctx.get(&keys::audit(id))
}

fn canary(ctx: &Ctx<'_>, id: &TaskId) -> Exec<Option<Audit>> {
    ctx.get(&keys::canary(id))
}

pub(crate) fn put_record(ctx: &mut Ctx<'_>, a: &Audit) -> Exec<()> {
    let key = if a.kind == AuditKind::Canary { keys::canary(&a.task) } else { keys::audit(&a.task) };
    ctx.put(key, a)
}

pub(crate) fn delete_record(ctx: &mut Ctx<'_>, a: &Audit) {
    let key = if a.kind == AuditKind::Canary { keys::canary(&a.task) } else { keys::audit(&a.task) };
    ctx.delete(key);
}

/// The worker whose result a random audit or its panel checks (the first address drawn).
fn worker_of(a: &Audit) -> Exec<Address> {
    a.tried.first().copied().ok_or_else(|| invariant("audit without its worker"))
}

pub(crate) fn window_end(ctx: &Ctx<'_>) -> Exec<u64> {
    ctx.height.checked_add(ctx.params.audit_window).ok_or_else(|| invariant("height overflow"))
}

/// The beacon of the block after a commit decides on an audit and, with rate `φ`, a canary.
pub(crate) fn on_audit_draw(ctx: &mut Ctx<'_>, id: &TaskId) -> Exec<()> {
    let t = market::task(ctx, id)?.ok_or_else(|| invariant("scheduled task missing"))?;
    let TaskState::Committed { provider, price, .. } = t.state.clone() else { return Ok(()) };
    let output = claim_of(&t.state).ok_or_else(|| invariant("committed task without claim"))?;
    if audit(ctx, id)?.is_some() {
        return Ok(());
    }
    let j = market::job(ctx, &t.job)?.ok_or_else(|| invariant("task without job"))?;
    let spec = market::spec(ctx, &t.job)?;
    let worker = registry::get(ctx, &provider)?.ok_or_else(|| invariant("assigned provider missing"))?;
    let p = audit_probability_bps(&ctx.params, &worker.reputation, spec.verification);
    if draw(ctx, "cairn audit draw v1", id, 0, u128::from(BPS)) < u128::from(p) {
        let a = Audit {
            task: *id,
            kind: AuditKind::Random,
            claimed: output,
            answer: None,
            first: None,
            challenger: None,
            auditors: Vec::new(),
            verdicts: Vec::new(),
            due: 0,
            round: 0,
            tried: vec![provider],
            price,
        };
        assign_random(ctx, a, &spec, &j)?;
    }
    if draw(ctx, "cairn canary draw v1", id, 0, u128::from(BPS)) < u128::from(ctx.params.canary_rate_bps) {
        hand_out_canary(ctx, id)?;
    }
    if audit(ctx, id)?.is_none() {
        // Not drawn (or no auditor could be drawn): tasks reading this result may start.
        market::accept(ctx, id)?;
    }
    Ok(())
}

/// Draw the next auditor for a random audit, or give up: the result then settles unaudited.
fn assign_random(ctx: &mut Ctx<'_>, mut a: Audit, spec: &JobSpec, j: &Job) -> Exec<()> {
    let round = a.round.checked_add(1).ok_or_else(|| invariant("round overflow"))?;
    let drawn = u32::try_from(a.tried.len().saturating_sub(1)).unwrap_or(u32::MAX);
    let picked = if drawn < ctx.params.audit_max_draws {
        draw_auditors(ctx, spec, &j.client, &worker_of(&a)?, &a.tried, &a.task, round, 1)?
    } else {
        Vec::new()
    };
    let Some(auditor) = picked.first().copied() else {
        delete_record(ctx, &a);
        ctx.emit(Event::AuditResolved { task: a.task, outcome: AuditOutcome::Unanswered });
        return release_settlement(ctx, &a.task);
    };
    a.round = round;
    a.auditors = vec![auditor];
    a.verdicts = vec![None];
    a.tried.push(auditor);
    a.due = window_end(ctx)?;
    ctx.schedule(a.due, Due::AuditDue { task: a.task, canary: false, round })?;
    ctx.emit(Event::AuditAssigned { task: a.task, auditor, claimed: a.claimed, due: a.due });
    put_record(ctx, &a)
}

/// Hand a canary to a drawn auditor: a verified task, shown with a wrong claimed output.
fn hand_out_canary(ctx: &mut Ctx<'_>, seed_task: &TaskId) -> Exec<()> {
    let known: Vec<KnownAnswer> = ctx.get_or_default(keys::KNOWN_ANSWERS)?;
    if known.is_empty() {
        return Ok(());
    }
    let n = u128::try_from(known.len()).map_err(|_| invariant("known answers"))?;
    let pick = usize::try_from(draw(ctx, "cairn canary pick v1", seed_task, 0, n)).unwrap_or(0);
    let Some(k) = known.get(pick).cloned() else { return Ok(()) };
    if canary(ctx, &k.task)?.is_some() {
        return Ok(());
    }
    let j = market::job(ctx, &k.job)?.ok_or_else(|| invariant("known answer without job"))?;
    let spec = market::spec(ctx, &k.job)?;
    let picked = draw_auditors(ctx, &spec, &j.client, &k.worker, &[], seed_task, 1_000, 1)?;
    let Some(auditor) = picked.first().copied() else { return Ok(()) };
    let claimed = ContentId(hash_domain("cairn canary claim v1", &[&ctx.beacon.0, &k.task.0, &k.output.0]));
    let due = window_end(ctx)?;
    let a = Audit {
        task: k.task,
        kind: AuditKind::Canary,
        claimed,
        answer: Some(k.output),
        first: None,
        challenger: None,
        auditors: vec![auditor],
        verdicts: vec![None],
        due,
        round: 1,
        tried: vec![auditor],
        price: k.price,
    };
    ctx.schedule(due, Due::AuditDue { task: k.task, canary: true, round: 1 })?;
    ctx.emit(Event::AuditAssigned { task: k.task, auditor, claimed, due });
    put_record(ctx, &a)
}

pub(crate) fn submit_audit(ctx: &mut Ctx<'_>, who: &Address, s: &SubmitAudit) -> Exec<()> {
    let t = market::task(ctx, &s.task)?.ok_or(ErrorCode::TaskNotFound)?;
    // The sender's pending assignment: the task's audit or dispute first, then a canary.
    let mut record = None;
    for r in [audit(ctx, &s.task)?, canary(ctx, &s.task)?].into_iter().flatten() {
        if let Some(i) = r.auditors.iter().position(|a| a == who) {
            let pending = r.verdicts.get(i).is_some_and(Option::is_none);
            if record.is_none() || pending {
                record = Some((r, i));
            }
        }
    }
    let Some((mut a, i)) = record else {
        // An auditor replaced after its window ended is late, not a stranger.
        if let Some(r) = audit(ctx, &s.task)?
            && r.tried.iter().skip(1).any(|x| x == who)
        {
            return Err(ErrorCode::AuditLate.into());
        }
        return Err(ErrorCode::AuditNotAssigned.into());
    };
    if a.verdicts.get(i).is_some_and(Option::is_some) {
        return Err(ErrorCode::DuplicateVerdict.into());
    }
    if ctx.height > a.due {
        return Err(ErrorCode::AuditLate.into());
    }
    let spec = market::spec(ctx, &t.job)?;
    if s.metering.units > spec.limits.fuel || s.metering.output_bytes > spec.limits.output_bytes {
        return Err(ErrorCode::InvalidBody.into());
    }
    check_streams(&spec, &s.streams)?;
    let slot = a.verdicts.get_mut(i).ok_or_else(|| invariant("verdict slot missing"))?;
    *slot = Some(cairn_types::stream::claim(&s.output, &s.streams));
    ctx.emit(Event::AuditSubmitted { task: s.task, auditor: *who });
    if a.verdicts.iter().all(Option::is_some) { resolve(ctx, a) } else { put_record(ctx, &a) }
}

pub(crate) fn on_audit_due(ctx: &mut Ctx<'_>, id: &TaskId, is_canary: bool, round: u32) -> Exec<()> {
    let a = if is_canary { canary(ctx, id)? } else { audit(ctx, id)? };
    match a {
        Some(a) if a.round == round && a.due == ctx.height => resolve(ctx, a),
        _ => Ok(()),
    }
}

/// Decide an audit whose verdicts are all in, or whose window ended.
fn resolve(ctx: &mut Ctx<'_>, mut a: Audit) -> Exec<()> {
    for (auditor, v) in a.auditors.clone().iter().zip(a.verdicts.clone()) {
        if v.is_none() {
            missed(ctx, &a.task, auditor)?;
        }
    }
    match a.kind {
        AuditKind::Canary => {
            delete_record(ctx, &a);
            let (auditor, verdict) = single(&a)?;
            match verdict {
                None => Ok(()),
                Some(v) if Some(v) == a.answer => {
                    pay_auditor(ctx, &a.task, &auditor, a.price)?;
                    ctx.emit(Event::AuditResolved { task: a.task, outcome: AuditOutcome::CanaryPassed });
                    Ok(())
                }
                Some(v) if v == a.claimed => {
                    // The claim is a random root nobody computes: only an auditor that echoes
                    // claims without re-running reports it.
                    slash(ctx, &auditor, &a.task, SlashReason::Canary, a.price, &[], None)?;
                    ctx.emit(Event::AuditResolved { task: a.task, outcome: AuditOutcome::CanaryFailed });
                    Ok(())
                }
                Some(_) => {
                    // Neither the claim nor the known answer: not paid, not slashed (a known
                    // answer confirmed by a lazy auditor may itself be wrong).
                    mark_failed(ctx, &auditor)?;
                    ctx.emit(Event::AuditResolved { task: a.task, outcome: AuditOutcome::Undecided });
                    Ok(())
                }
            }
        }
        AuditKind::Random => {
            let (auditor, verdict) = single(&a)?;
            let t = market::task(ctx, &a.task)?.ok_or_else(|| invariant("audited task missing"))?;
            let j = market::job(ctx, &t.job)?.ok_or_else(|| invariant("task without job"))?;
            let spec = market::spec(ctx, &t.job)?;
            match verdict {
                None => assign_random(ctx, a, &spec, &j),
                Some(v) if v == a.claimed => {
                    delete_record(ctx, &a);
                    pay_auditor(ctx, &a.task, &auditor, a.price)?;
                    ctx.emit(Event::AuditResolved { task: a.task, outcome: AuditOutcome::Confirmed });
                    confirmed(ctx, &t)
                }
                Some(v) => {
                    // A mismatch: k more auditors decide between the worker and the auditor.
                    let round = a.round.checked_add(1).ok_or_else(|| invariant("round overflow"))?;
                    let k = ctx.params.dispute_auditors;
                    let picked =
                        draw_auditors(ctx, &spec, &j.client, &worker_of(&a)?, &a.tried, &a.task, round, k)?;
                    a.first = Some((auditor, v));
                    if picked.is_empty() {
                        delete_record(ctx, &a);
                        return crate::dispute::undecided(ctx, &a, t, &j, &spec);
                    }
                    a.kind = AuditKind::Dispute;
                    a.round = round;
                    a.tried.extend(picked.iter().copied());
                    a.verdicts = vec![None; picked.len()];
                    a.auditors = picked.clone();
                    a.due = window_end(ctx)?;
                    ctx.schedule(a.due, Due::AuditDue { task: a.task, canary: false, round })?;
                    for auditor in &picked {
                        ctx.emit(Event::AuditAssigned {
                            task: a.task,
                            auditor: *auditor,
                            claimed: a.claimed,
                            due: a.due,
                        });
                    }
                    ctx.emit(Event::DisputeOpened { task: a.task, by: None, auditors: picked, due: a.due });
                    put_record(ctx, &a)
                }
            }
        }
        AuditKind::Dispute => {
            delete_record(ctx, &a);
            crate::dispute::decide_dispute(ctx, a)
        }
    }
}

fn single(a: &Audit) -> Exec<(Address, Option<ContentId>)> {
    match (a.auditors.first(), a.verdicts.first()) {
        (Some(x), Some(v)) if a.auditors.len() == 1 => Ok((*x, *v)),
        _ => Err(invariant("single-auditor record holds several")),
    }
}

/// A confirmed result joins the known answers and settles at the end of its challenge window
/// (or in the next block if that has passed).
pub(crate) fn confirmed(ctx: &mut Ctx<'_>, t: &Task) -> Exec<()> {
    // Only a deterministic result can serve as a canary's known answer.
    let deterministic = market::spec(ctx, &t.job)?.deterministic;
    if let (TaskState::Committed { provider, price, .. }, Some(output), true) =
        (&t.state, claim_of(&t.state), deterministic)
    {
        let mut known: Vec<KnownAnswer> = ctx.get_or_default(keys::KNOWN_ANSWERS)?;
        known.push(KnownAnswer { task: t.id, job: t.job, worker: *provider, output, price: *price });
        let cap = ctx.params.known_answers as usize;
        if known.len() > cap {
            let extra = known.len().saturating_sub(cap);
            known.drain(..extra);
        }
        ctx.put(keys::KNOWN_ANSWERS.to_vec(), &known)?;
    }
    release_settlement(ctx, &t.id)
}

fn release_settlement(ctx: &mut Ctx<'_>, id: &TaskId) -> Exec<()> {
    let mut t = market::task(ctx, id)?.ok_or_else(|| invariant("task missing"))?;
    if let TaskState::Committed { settle_at, .. } = &mut t.state
        && *settle_at <= ctx.height
    {
        *settle_at = ctx.height.checked_add(1).ok_or_else(|| invariant("height overflow"))?;
        let at = *settle_at;
        market::put_task(ctx, &t)?;
        ctx.schedule(at, Due::Settle { task: *id })?;
    }
    // The audit is over and the result stands.
    market::accept(ctx, id)
}

fn missed(ctx: &mut Ctx<'_>, task: &TaskId, auditor: &Address) -> Exec<()> {
    mark_failed(ctx, auditor)?;
    ctx.emit(Event::AuditorMissed { task: *task, auditor: *auditor });
    Ok(())
}
