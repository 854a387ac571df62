//! Random audits, disputes, canaries and slashing, scenario by scenario.

use cairn_state::model::TaskState;
use cairn_state::testkit::TestChain;
use cairn_state::{Params, audit_probability_bps};
use cairn_types::{
    Address, Amount, AuditOutcome, CommitResult, ContentId, ErrorCode, Event, JobId, Metering, OpenDispute,
    Receipt, SecretKey, SlashReason, SubmitAudit, TaskId, TxBody, TxStatus, VerificationLevel,
};

use crate::common::*;

const PROVIDERS: usize = 6;

fn net() -> TestChain {
    market(&["0.5"; PROVIDERS])
}

/// Windows long enough for several transactions, one per block, inside them.
fn slow_net() -> TestChain {
    market_with(Params { audit_window: 20, challenge_window: 30, ..params() }, &["0.5"; PROVIDERS])
}

fn key_of(a: &Address) -> SecretKey {
    (0..PROVIDERS as u64).map(provider_key).find(|k| k.address() == *a).expect("a provider's address")
}

fn events(receipts: &[Receipt]) -> Vec<Event> {
    receipts.iter().flat_map(|r| r.events().iter().cloned()).collect()
}

/// `(task, auditor, claimed)` of every audit assignment in `receipts`.
fn assignments(receipts: &[Receipt]) -> Vec<(TaskId, Address, ContentId)> {
    events(receipts)
        .into_iter()
        .filter_map(|e| match e {
            Event::AuditAssigned { task, auditor, claimed, .. } => Some((task, auditor, claimed)),
            _ => None,
        })
        .collect()
}

fn outcomes(receipts: &[Receipt]) -> Vec<AuditOutcome> {
    events(receipts)
        .into_iter()
        .filter_map(|e| match e {
            Event::AuditResolved { outcome, .. } => Some(outcome),
            _ => None,
        })
        .collect()
}

fn truth(task: &TaskId) -> ContentId {
    ContentId::of(&task.0)
}

fn lie() -> ContentId {
    ContentId::of(b"a plausible wrong output")
}

fn worker(chain: &TestChain, job: &JobId) -> Address {
    match chain.task_state(job, 0) {
        TaskState::Assigned { provider, .. } => provider,
        s => panic!("expected assigned, got {s:?}"),
    }
}

/// Submit a one-task job, let its worker commit `output`, and return the receipts of the
/// block after the commit (where the audit is drawn).
fn job_committed(chain: &mut TestChain, output: ContentId) -> (JobId, TaskId, Address, Vec<Receipt>) {
    job_committed_with(chain, spec(1, "1", 0), output)
}

/// [`job_committed`] for a job of `spec`.
fn job_committed_with(
    chain: &mut TestChain,
    spec: cairn_types::JobSpec,
    output: ContentId,
) -> (JobId, TaskId, Address, Vec<Receipt>) {
    let job = submit(chain, spec);
    let task = TaskId::derive(&job, 0);
    let w = worker(chain, &job);
    chain.ok(
        &key_of(&w),
        TxBody::CommitResult(CommitResult {
            task,
            output,
            metering: Metering { units: 10, output_bytes: 3 },
            streams: Vec::new(),
        }),
    );
    let drawn = chain.next_block();
    (job, task, w, drawn)
}

fn verdict(chain: &mut TestChain, auditor: &Address, task: TaskId, output: ContentId) -> Receipt {
    chain.run(
        &key_of(auditor),
        TxBody::SubmitAudit(SubmitAudit {
            task,
            output,
            metering: Metering { units: 10, output_bytes: 3 },
            streams: Vec::new(),
        }),
    )
}

fn bonded(chain: &TestChain, who: &Address) -> Amount {
    chain.state.stake(who).unwrap().bonded
}

#[test]
fn the_audit_probability_follows_the_formula() {
    let p = Params::default();
    let rep = |consecutive_valid, total_valid, total_failed| cairn_state::model::Reputation {
        consecutive_valid,
        total_valid,
        total_failed,
    };
    let standard = VerificationLevel::Standard;
    // Every result of a provider's first ten is audited.
    assert_eq!(audit_probability_bps(&p, &rep(9, 9, 0), standard), 10_000);
    // Then p = max(p_min, 1/(consecutive_valid + 1)).
    assert_eq!(audit_probability_bps(&p, &rep(3, 30, 1), standard), 2_500);
    assert_eq!(audit_probability_bps(&p, &rep(19, 30, 1), standard), 500);
    assert_eq!(audit_probability_bps(&p, &rep(1_000, 1_000, 0), standard), 500);
    // A failure resets the streak: audits come back at once.
    assert_eq!(audit_probability_bps(&p, &rep(0, 1_000, 1), standard), 10_000);
    assert_eq!(audit_probability_bps(&p, &rep(1_000, 1_000, 0), VerificationLevel::Strict), 10_000);
    assert_eq!(audit_probability_bps(&p, &rep(0, 0, 0), VerificationLevel::None), 0);
}

#[test]
fn a_newcomers_result_is_audited_by_another_staked_provider_and_a_match_settles_it() {
    let mut chain = market_with(Params { audit_window: 20, ..params() }, &["0.5"; PROVIDERS]);
    let (job, task, w, drawn) = job_committed(&mut chain, ContentId::of(b"placeholder"));
    let a = assignments(&drawn);
    assert_eq!(a.len(), 1, "a newcomer's first result is always audited: {:?}", events(&drawn));
    let (t, auditor, claimed) = a[0];
    assert_eq!((t, claimed), (task, ContentId::of(b"placeholder")));
    assert_ne!(auditor, w, "never the worker");
    assert_ne!(auditor, client().address(), "never the client");
    // The result cannot settle while the audit is open.
    chain.advance(6);
    assert!(matches!(chain.task_state(&job, 0), TaskState::Committed { .. }));
    let r = verdict(&mut chain, &auditor, task, claimed);
    assert_eq!(status(&r), TxStatus::Ok);
    assert_eq!(outcomes(std::slice::from_ref(&r)), vec![AuditOutcome::Confirmed]);
    let ev = events(std::slice::from_ref(&r));
    assert!(ev.iter().any(|e| matches!(e, Event::AuditorPaid { auditor: x, .. } if *x == auditor)), "{ev:?}");
    chain.advance(1);
    assert!(matches!(chain.task_state(&job, 0), TaskState::Settled { .. }));
    let known = chain.state.known_answers().unwrap();
    assert_eq!(known.len(), 1, "a confirmed result becomes a canary's known answer");
    assert_eq!((known[0].task, known[0].output, known[0].worker), (task, claimed, w));
    checks(&chain);
}

#[test]
fn a_wrong_result_loses_the_dispute_the_worker_is_slashed_and_the_task_reruns_elsewhere() {
    let mut chain = net();
    let client_before = chain.state.account(&client().address()).unwrap().balance;
    let (_, task, w, drawn) = job_committed(&mut chain, lie());
    let stake_before = bonded(&chain, &w);
    let (_, first, _) = assignments(&drawn)[0];
    // The auditor re-runs and gets the true root: a mismatch opens a dispute of k = 3.
    let r = verdict(&mut chain, &first, task, truth(&task));
    let extra = assignments(std::slice::from_ref(&r));
    assert_eq!(extra.len(), 3, "{:?}", r.events());
    for (_, a, _) in &extra {
        assert!(*a != w && *a != first && *a != client().address());
    }
    let mut last = Vec::new();
    for (_, a, _) in &extra {
        last = vec![verdict(&mut chain, a, task, truth(&task))];
    }
    assert_eq!(outcomes(&last), vec![AuditOutcome::WorkerFaulted]);
    let slash = events(&last).into_iter().find_map(|e| match e {
        Event::Slashed { who, reason, amount, to_auditors, to_client, burned, .. } => {
            Some((who, reason, amount, to_auditors, to_client, burned))
        }
        _ => None,
    });
    // exposure_multiplier × price = 20 × 0.5: 30% to the four auditors who found it, 20% to
    // the client, 50% burned.
    assert_eq!(
        slash,
        Some((w, SlashReason::WrongResult, crn("10"), crn("3"), crn("2"), crn("5"))),
        "{last:?}"
    );
    assert_eq!(bonded(&chain, &w), stake_before.checked_sub(crn("10")).unwrap());
    let p = chain.state.provider(&w).unwrap().unwrap();
    assert_eq!((p.reputation.consecutive_valid, p.reputation.total_failed, p.open_tasks), (0, 1, 0));
    // The task runs again on someone else, and the cheater is never paid for it.
    let t = chain.state.task(&task).unwrap().unwrap();
    assert_eq!(t.attempt, 2);
    assert!(t.excluded.contains(&w));
    match t.state {
        TaskState::Assigned { provider, .. } => assert_ne!(provider, w),
        s => panic!("expected a re-run, got {s:?}"),
    }
    let client_now = chain.state.account(&client().address()).unwrap().balance;
    assert_eq!(
        client_now.checked_add(crn("1.1")).unwrap().checked_add(chain.fee).unwrap(),
        client_before.checked_add(crn("2")).unwrap(),
        "the client holds its compensation and still has its task's reserve in escrow"
    );
    checks(&chain);
}

#[test]
fn a_non_deterministic_result_that_loses_its_dispute_is_dropped_but_nobody_is_slashed() {
    let mut chain = net();
    // Only container jobs may declare themselves non-deterministic.
    let mut wasm = spec(1, "1", 0);
    wasm.deterministic = false;
    let r = chain.run(&client(), TxBody::SubmitJob(cairn_types::SubmitJob { spec: wasm }));
    assert_eq!(status(&r), TxStatus::Failed(ErrorCode::InvalidJobSpec));
    let mut s = spec(1, "1", 0);
    s.kind = cairn_types::WorkloadKind::Container;
    s.deterministic = false;
    s.args = vec!["/bin/date".into()];
    let (_, task, w, drawn) = job_committed_with(&mut chain, s, lie());
    let stakes: Vec<Amount> =
        (0..PROVIDERS as u64).map(|i| bonded(&chain, &provider_key(i).address())).collect();
    let (_, first, _) = assignments(&drawn)[0];
    // The auditor's loose check failed: it reports its own root, and a panel decides.
    let r = verdict(&mut chain, &first, task, truth(&task));
    let extra = assignments(std::slice::from_ref(&r));
    assert_eq!(extra.len(), 3, "a mismatch escalates: {:?}", r.events());
    let mut last = Vec::new();
    for (_, a, _) in &extra {
        last = vec![verdict(&mut chain, a, task, truth(&task))];
    }
    assert_eq!(outcomes(&last), vec![AuditOutcome::WorkerFaulted]);
    assert!(!events(&last).iter().any(|e| matches!(e, Event::Slashed { .. })), "never slashed: {last:?}");
    let now: Vec<Amount> =
        (0..PROVIDERS as u64).map(|i| bonded(&chain, &provider_key(i).address())).collect();
    assert_eq!(now, stakes, "no stake moved");
    let p = chain.state.provider(&w).unwrap().unwrap();
    assert_eq!(p.reputation.consecutive_valid, 0, "the dropped result costs reputation");
    // The result is dropped unpaid; the task runs again elsewhere.
    let t = chain.state.task(&task).unwrap().unwrap();
    assert_eq!(t.attempt, 2);
    assert!(t.excluded.contains(&w));
    checks(&chain);
}

#[test]
fn an_auditor_that_reports_a_wrong_root_loses_the_dispute_and_the_honest_worker_is_paid() {
    let mut chain = net();
    let (job, task, w, drawn) = job_committed(&mut chain, ContentId::of(b"ok"));
    let (_, liar, _) = assignments(&drawn)[0];
    let worker_stake = bonded(&chain, &w);
    let liar_stake = bonded(&chain, &liar);
    let r = verdict(&mut chain, &liar, task, lie());
    let extra = assignments(std::slice::from_ref(&r));
    let mut last = Vec::new();
    for (_, a, _) in &extra {
        last = vec![verdict(&mut chain, a, task, ContentId::of(b"ok"))];
    }
    assert_eq!(outcomes(&last), vec![AuditOutcome::Confirmed]);
    assert!(
        events(&last).iter().any(
            |e| matches!(e, Event::Slashed { who, reason: SlashReason::WrongVerdict, .. } if *who == liar)
        )
    );
    assert_eq!(bonded(&chain, &liar), liar_stake.checked_sub(crn("10")).unwrap());
    assert_eq!(bonded(&chain, &w), worker_stake, "an honest worker is never slashed");
    chain.advance(6);
    assert!(matches!(chain.task_state(&job, 0), TaskState::Settled { provider, .. } if provider == w));
    checks(&chain);
}

#[test]
fn a_silent_auditor_is_replaced_and_after_the_last_draw_the_result_settles_unaudited() {
    let mut chain = net();
    let (job, _task, w, drawn) = job_committed(&mut chain, ContentId::of(b"ok"));
    let mut seen = vec![assignments(&drawn)[0].1];
    let mut all = Vec::new();
    for _ in 0..12 {
        let r = chain.next_block();
        for (_, a, _) in assignments(&r) {
            assert!(!seen.contains(&a) && a != w, "each draw is a new auditor");
            seen.push(a);
        }
        all.extend(r);
    }
    let missed = events(&all).iter().filter(|e| matches!(e, Event::AuditorMissed { .. })).count();
    assert_eq!(seen.len(), 3, "audit_max_draws auditors tried");
    assert_eq!(missed, 3);
    assert_eq!(outcomes(&all), vec![AuditOutcome::Unanswered]);
    assert!(matches!(chain.task_state(&job, 0), TaskState::Settled { .. }));
    for a in &seen {
        let p = chain.state.provider(a).unwrap().unwrap();
        assert_eq!(p.reputation.total_failed, 1, "a missed verdict counts as a failure");
    }
    checks(&chain);
}

#[test]
fn a_lazy_auditor_that_echoes_a_canarys_claim_is_slashed_and_one_that_reruns_is_paid() {
    // Every commit hands out a canary once a known answer exists.
    let mut chain = market_with(Params { canary_rate_bps: 10_000, ..params() }, &["0.5"; PROVIDERS]);
    let (_, task, _, drawn) = job_committed(&mut chain, ContentId::of(b"verified"));
    let (_, auditor, claimed) = assignments(&drawn)[0];
    verdict(&mut chain, &auditor, task, claimed);
    assert_eq!(chain.state.known_answers().unwrap().len(), 1);

    let mut outcomes_seen = Vec::new();
    for round in 0..2 {
        let (_, other, _, drawn) = job_committed(&mut chain, ContentId::of(&[round]));
        let (known, canary_auditor, canary_claim) =
            assignments(&drawn).into_iter().find(|(t, _, _)| *t != other).expect("a canary");
        let answer = chain.state.canary(&known).unwrap().expect("canary record").answer.unwrap();
        assert_ne!(canary_claim, answer, "the canary shows a wrong claim");
        // Finish the ordinary audit of the other task too.
        for (t, a, c) in assignments(&drawn).into_iter().filter(|(t, _, _)| *t == other) {
            verdict(&mut chain, &a, t, c);
        }
        let stake = bonded(&chain, &canary_auditor);
        let given = if round == 0 { canary_claim } else { answer };
        let r = verdict(&mut chain, &canary_auditor, known, given);
        assert_eq!(status(&r), TxStatus::Ok);
        let o = outcomes(std::slice::from_ref(&r));
        if round == 0 {
            assert_eq!(o, vec![AuditOutcome::CanaryFailed]);
            assert_eq!(bonded(&chain, &canary_auditor), stake.checked_sub(crn("10")).unwrap());
        } else {
            assert_eq!(o, vec![AuditOutcome::CanaryPassed]);
            assert_eq!(bonded(&chain, &canary_auditor), stake);
        }
        outcomes_seen.extend(o);
        chain.advance(6);
    }
    assert_eq!(outcomes_seen.len(), 2);
    checks(&chain);
}

#[test]
fn a_client_dispute_needs_a_bond_and_loses_it_when_the_result_holds() {
    let mut chain = slow_net();
    let job = submit(&mut chain, spec(1, "1", 0));
    let task = TaskId::derive(&job, 0);
    let w = worker(&chain, &job);
    chain.ok(
        &key_of(&w),
        TxBody::CommitResult(CommitResult {
            task,
            output: ContentId::of(b"ok"),
            metering: Metering::default(),
            streams: Vec::new(),
        }),
    );
    // The random audit is drawn in the next block; a dispute waits until it is resolved.
    let drawn = chain.next_block();
    let dispute = |bond| TxBody::OpenDispute(OpenDispute { task, bond });
    assert_eq!(status(&chain.run(&client(), dispute(crn("1")))), TxStatus::Failed(ErrorCode::DisputeExists));
    let (_, a, c) = assignments(&drawn)[0];
    verdict(&mut chain, &a, task, c);
    assert_eq!(status(&chain.run(&client(), dispute(Amount::ZERO))), TxStatus::Failed(ErrorCode::ZeroAmount));
    assert_eq!(
        status(&chain.run(&client(), dispute(crn("0.1")))),
        TxStatus::Failed(ErrorCode::DisputeBondTooLow)
    );
    assert_eq!(
        status(&chain.run(&provider_key(0), dispute(crn("1")))),
        TxStatus::Failed(ErrorCode::NotJobClient)
    );
    let before = chain.state.account(&client().address()).unwrap().balance;
    let r = chain.run(&client(), dispute(crn("0.5")));
    assert_eq!(status(&r), TxStatus::Ok);
    assert_eq!(status(&chain.run(&client(), dispute(crn("1")))), TxStatus::Failed(ErrorCode::DisputeExists));
    checks(&chain);
    let auditors = assignments(std::slice::from_ref(&r));
    assert_eq!(auditors.len(), 3);
    let mut last = Vec::new();
    for (_, a, _) in &auditors {
        last = vec![verdict(&mut chain, a, task, ContentId::of(b"ok"))];
    }
    assert_eq!(outcomes(&last), vec![AuditOutcome::Confirmed]);
    let after = chain.state.account(&client().address()).unwrap().balance;
    assert_eq!(
        before.checked_sub(after).unwrap(),
        crn("0.5").checked_add(chain.fee.checked_mul(2).unwrap()).unwrap(),
        "the bond is lost"
    );
    chain.advance(30);
    assert!(matches!(chain.task_state(&job, 0), TaskState::Settled { .. }));
    checks(&chain);
}

#[test]
fn verdicts_from_strangers_late_or_twice_change_nothing_but_the_fee() {
    let mut chain = slow_net();
    let (_, task, w, drawn) = job_committed(&mut chain, ContentId::of(b"ok"));
    let (_, auditor, claimed) = assignments(&drawn)[0];
    let stranger = (0..PROVIDERS as u64)
        .map(provider_key)
        .map(|k| k.address())
        .find(|a| *a != auditor && *a != w)
        .unwrap();
    let record = chain.state.audit(&task).unwrap();
    for who in [stranger, w] {
        assert_eq!(
            status(&verdict(&mut chain, &who, task, claimed)),
            TxStatus::Failed(ErrorCode::AuditNotAssigned)
        );
    }
    assert_eq!(
        status(&verdict(&mut chain, &auditor, TaskId::derive(&JobId::default(), 0), claimed)),
        TxStatus::Failed(ErrorCode::TaskNotFound)
    );
    assert_eq!(chain.state.audit(&task).unwrap(), record, "refused verdicts change nothing");
    // Past the window, the auditor's verdict is late.
    let due = record.as_ref().unwrap().due;
    chain.advance(due - chain.height());
    assert_eq!(status(&verdict(&mut chain, &auditor, task, claimed)), TxStatus::Failed(ErrorCode::AuditLate));
    checks(&chain);

    // A dispute's auditor cannot vote twice.
    let (_, task2, _, drawn) = job_committed(&mut chain, ContentId::of(b"ok2"));
    let (_, first, _) = assignments(&drawn).into_iter().find(|(t, _, _)| *t == task2).unwrap();
    let r = verdict(&mut chain, &first, task2, lie());
    let (_, a, _) = assignments(std::slice::from_ref(&r))[0];
    assert_eq!(status(&verdict(&mut chain, &a, task2, lie())), TxStatus::Ok);
    assert_eq!(status(&verdict(&mut chain, &a, task2, lie())), TxStatus::Failed(ErrorCode::DuplicateVerdict));
    checks(&chain);
}

#[test]
fn a_cheater_cannot_unbond_the_stake_that_backs_its_result_before_the_dispute_ends() {
    let mut chain = net();
    let (_, task, w, drawn) = job_committed(&mut chain, lie());
    let k = key_of(&w);
    // Everything but the registration minimum leaves; the minimum is locked while the result is open.
    let unbond = |amount| TxBody::Unbond(cairn_types::Unbond { amount });
    assert_eq!(status(&chain.run(&k, unbond(crn("1000")))), TxStatus::Failed(ErrorCode::StakeLocked));
    assert_eq!(status(&chain.run(&k, unbond(crn("900")))), TxStatus::Ok);
    let (_, first, _) = assignments(&drawn)[0];
    let r = verdict(&mut chain, &first, task, truth(&task));
    let mut last = Vec::new();
    for (_, a, _) in assignments(std::slice::from_ref(&r)) {
        last = vec![verdict(&mut chain, &a, task, truth(&task))];
    }
    assert_eq!(outcomes(&last), vec![AuditOutcome::WorkerFaulted]);
    let stake = chain.state.stake(&w).unwrap();
    assert_eq!(stake.bonded, crn("90"), "the slash reached the stake that stayed bonded");
    assert_eq!(stake.unbonding.iter().map(|u| u.amount).collect::<Vec<_>>(), vec![crn("900")]);
    // Below the registration minimum now: no new work until it bonds again.
    assert_eq!(status(&chain.run(&k, unbond(crn("1")))), TxStatus::Failed(ErrorCode::StakeLocked));
    checks(&chain);
}

#[test]
fn an_inference_result_is_audited_only_by_providers_of_its_workers_class() {
    use cairn_types::{INFERENCE_CLASS_ATTRIBUTE, UpdateProvider, WorkloadKind};
    let mut chain = market_with(Params { audit_window: 20, ..params() }, &["0.5"; PROVIDERS]);
    // Even providers run inference in one instruction-set class, odd ones in another: their
    // results need not match bit for bit, so neither may audit (and slash) the other.
    let class = |i: usize| if i.is_multiple_of(2) { "x86_64+avx+avx2" } else { "x86_64+avx+avx2+avx512f" };
    // Cheap providers win the work: first the even ones, then the odd ones.
    let set_prices = |chain: &mut TestChain, cheap: usize| {
        for i in 0..PROVIDERS {
            let mut info = crate::common::info(["DE", "US", "SG"][i % 3], "0.5");
            let price = if i % 2 == cheap { "0.1" } else { "0.5" };
            info.prices.0.insert(WorkloadKind::Inference, crn(price));
            info.attributes.insert(INFERENCE_CLASS_ATTRIBUTE.into(), class(i).into());
            chain.ok(&provider_key(i as u64), TxBody::UpdateProvider(UpdateProvider { info }));
        }
    };
    set_prices(&mut chain, 0);
    let class_of =
        |a: &Address| class((0..PROVIDERS).find(|i| provider_key(*i as u64).address() == *a).unwrap());
    let mut seen = std::collections::BTreeSet::new();
    for n in 0..8 {
        if n == 4 {
            set_prices(&mut chain, 1);
        }
        let mut s = cairn_types::JobSpec::from_yaml(&format!(
            "kind: inference\nworkload: {}\nmax_price_per_task: 1 CRN\ndeadline_blocks: 4\n",
            ContentId::of(format!("model {n}").as_bytes())
        ))
        .unwrap();
        s.resources.cpu_millis = 1_000;
        let job = submit(&mut chain, s);
        let task = TaskId::derive(&job, 0);
        let w = worker(&chain, &job);
        chain.ok(
            &key_of(&w),
            TxBody::CommitResult(CommitResult {
                task,
                output: truth(&task),
                metering: Metering { units: 10, output_bytes: 3 },
                streams: Vec::new(),
            }),
        );
        let drawn = chain.next_block();
        for (t, auditor, _) in assignments(&drawn) {
            assert_eq!(t, task);
            assert_ne!(auditor, w);
            assert_eq!(class_of(&auditor), class_of(&w), "an auditor of another class was drawn");
            seen.insert(class_of(&w));
            assert_eq!(status(&verdict(&mut chain, &auditor, task, truth(&task))), TxStatus::Ok);
        }
        chain.advance(8);
    }
    assert_eq!(seen.len(), 2, "both classes did inference work and were audited: {seen:?}");
    checks(&chain);
}
