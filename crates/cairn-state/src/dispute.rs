//! Disputes: a client's challenge of a committed result, and the decision of a dispute panel.
//!
//! A client of a committed task may open a dispute with a bond; `k` auditors re-run the task. A
//! random audit's mismatch escalates to the same panel (see [`crate::verify`]). The root a
//! majority reports decides: a worker who loses is slashed (a job that declared itself
//! non-deterministic only loses the result, unpaid) and its task re-runs or is refunded; no
//! majority drops the result without slashing anyone.

use std::collections::BTreeMap;

use cairn_types::{
    Address, AuditKind, AuditOutcome, ContentId, ErrorCode, Event, JobSpec, OpenDispute, SlashReason,
    WorkloadKind,
};

use crate::ctx::{Ctx, Exec, invariant};
use crate::market;
use crate::model::{Audit, Due, Job, Task, TaskState};
use crate::penalty::{add_to_pool, mark_failed, pay_auditor, slash};
use crate::registry;
use crate::sortition::draw_auditors;
use crate::verify::{audit, claim_of, confirmed, put_record, window_end};

/// A client disputes its committed task with a bond; `k` auditors re-run it.
pub(crate) fn open_dispute(ctx: &mut Ctx<'_>, who: &Address, d: &OpenDispute) -> Exec<()> {
    let t = market::task(ctx, &d.task)?.ok_or(ErrorCode::TaskNotFound)?;
    let j = market::job(ctx, &t.job)?.ok_or_else(|| invariant("task without job"))?;
    if j.client != *who {
        return Err(ErrorCode::NotJobClient.into());
    }
    let TaskState::Committed { provider, price, .. } = t.state.clone() else {
        return Err(ErrorCode::DisputeNotAllowed.into());
    };
    let output = claim_of(&t.state).ok_or_else(|| invariant("committed task without claim"))?;
    if t.accepted && j.kind == WorkloadKind::Train {
        // Later rounds already train on it: only the random audit before acceptance decides.
        return Err(ErrorCode::DisputeNotAllowed.into());
    }
    if d.bond.is_zero() {
        return Err(ErrorCode::ZeroAmount.into());
    }
    if audit(ctx, &d.task)?.is_some() {
        return Err(ErrorCode::DisputeExists.into());
    }
    let min_bond = price.checked_bps(ctx.params.dispute_bond_bps).ok_or(ErrorCode::Overflow)?;
    if d.bond < min_bond {
        return Err(ErrorCode::DisputeBondTooLow.into());
    }
    let spec = market::spec(ctx, &t.job)?;
    let auditors =
        draw_auditors(ctx, &spec, &j.client, &provider, &[], &d.task, 1, ctx.params.dispute_auditors)?;
    if auditors.is_empty() {
        return Err(ErrorCode::NoAuditors.into());
    }
    crate::bank::debit(ctx, who, d.bond)?;
    let due = window_end(ctx)?;
    let a = Audit {
        task: d.task,
        kind: AuditKind::Dispute,
        claimed: output,
        answer: None,
        first: None,
        challenger: Some((*who, d.bond)),
        verdicts: vec![None; auditors.len()],
        tried: [vec![provider], auditors.clone()].concat(),
        auditors: auditors.clone(),
        due,
        round: 1,
        price,
    };
    ctx.schedule(due, Due::AuditDue { task: d.task, canary: false, round: 1 })?;
    for auditor in &auditors {
        ctx.emit(Event::AuditAssigned { task: d.task, auditor: *auditor, claimed: output, due });
    }
    ctx.emit(Event::DisputeOpened { task: d.task, by: Some(*who), auditors, due });
    put_record(ctx, &a)
}

pub(crate) fn decide_dispute(ctx: &mut Ctx<'_>, a: Audit) -> Exec<()> {
    let t = market::task(ctx, &a.task)?.ok_or_else(|| invariant("disputed task missing"))?;
    let j = market::job(ctx, &t.job)?.ok_or_else(|| invariant("task without job"))?;
    let spec = market::spec(ctx, &t.job)?;
    let TaskState::Committed { provider: worker, .. } = t.state.clone() else {
        return Err(invariant("disputed task not committed"));
    };
    let mut counts: BTreeMap<ContentId, u32> = BTreeMap::new();
    for v in a.verdicts.iter().flatten() {
        let c = counts.entry(*v).or_insert(0);
        *c = c.saturating_add(1);
    }
    let majority = ctx.params.dispute_auditors.checked_div(2).unwrap_or(0).saturating_add(1);
    let winner = counts.iter().find(|(_, c)| **c >= majority).map(|(v, _)| *v);
    let Some(winner) = winner else { return undecided(ctx, &a, t, &j, &spec) };

    // Verdicts that agree with the majority are paid; the others take a reputation failure.
    // Only the worker can be slashed by a majority: no strategy gains by reporting a wrong root
    // against an honest worker, while lazy or colluding panelists can echo a cheater's root.
    // The auditor whose mismatch opened the dispute is slashed only by a unanimous panel.
    let mut right: Vec<Address> = Vec::new();
    for (auditor, v) in a.auditors.iter().zip(&a.verdicts) {
        match v {
            Some(v) if *v == winner => right.push(*auditor),
            Some(_) => mark_failed(ctx, auditor)?,
            None => {}
        }
    }
    let unanimous = a.verdicts.iter().all(|v| *v == Some(winner));
    if let Some((first, v)) = a.first
        && v == winner
    {
        right.insert(0, first);
    }
    for auditor in &right {
        pay_auditor(ctx, &a.task, auditor, a.price)?;
    }
    // A job that declared itself non-deterministic is only ever escalated: nobody is slashed.
    let may_slash = spec.deterministic;
    if winner == a.claimed {
        if let Some((first, _)) = a.first {
            if unanimous && may_slash {
                slash(ctx, &first, &a.task, SlashReason::WrongVerdict, a.price, &right, None)?;
            } else {
                mark_failed(ctx, &first)?;
            }
        }
        if let Some((_, bond)) = a.challenger {
            // The client's challenge failed: its bond pays for the re-runs.
            add_to_pool(ctx, bond)?;
        }
        ctx.emit(Event::AuditResolved { task: a.task, outcome: AuditOutcome::Confirmed });
        return confirmed(ctx, &t);
    }
    if let Some((first, v)) = a.first
        && v != winner
    {
        mark_failed(ctx, &first)?;
    }
    if may_slash {
        slash(ctx, &worker, &a.task, SlashReason::WrongResult, a.price, &right, Some(j.client))?;
    } else {
        mark_failed(ctx, &worker)?;
    }
    return_bond(ctx, &a)?;
    ctx.emit(Event::AuditResolved { task: a.task, outcome: AuditOutcome::WorkerFaulted });
    abandon(ctx, t, &j, &spec)
}

/// No majority: nobody is slashed, the bond goes back, and the unverified result is not paid —
/// the task re-runs elsewhere or is refunded.
pub(crate) fn undecided(ctx: &mut Ctx<'_>, a: &Audit, t: Task, j: &Job, spec: &JobSpec) -> Exec<()> {
    return_bond(ctx, a)?;
    ctx.emit(Event::AuditResolved { task: a.task, outcome: AuditOutcome::Undecided });
    abandon(ctx, t, j, spec)
}

pub(crate) fn return_bond(ctx: &mut Ctx<'_>, a: &Audit) -> Exec<()> {
    match a.challenger {
        Some((client, bond)) => crate::bank::credit(ctx, &client, bond),
        None => Ok(()),
    }
}

/// Drop a committed result without paying: release the worker's exposure, keep it off the
/// task, and re-run or refund.
pub(crate) fn abandon(ctx: &mut Ctx<'_>, mut t: Task, j: &Job, spec: &JobSpec) -> Exec<()> {
    let TaskState::Committed { provider, price, .. } = t.state.clone() else {
        return Err(invariant("abandoning a task that is not committed"));
    };
    let mut p = registry::get(ctx, &provider)?.ok_or_else(|| invariant("assigned provider missing"))?;
    registry::release_exposure(&mut p, price)?;
    registry::put(ctx, &p)?;
    t.excluded.push(provider);
    market::retry_or_refund(ctx, &mut t, j, spec)?;
    market::put_task(ctx, &t)
}
