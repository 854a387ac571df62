//! The job lifecycle, scenario by scenario.

use cairn_state::model::TaskState;
use cairn_state::testkit::TestChain;
use cairn_types::{
    Bid, CancelJob, CommitResult, ContentId, ErrorCode, Event, Hash32, Metering, Offer, RefundReason, TaskId,
    TxBody, TxStatus,
};

use crate::common::*;

fn commit(chain: &mut cairn_state::testkit::TestChain, who: u64, task: TaskId) -> TxStatus {
    let r = chain.run(
        &provider_key(who),
        TxBody::CommitResult(CommitResult {
            task,
            output: ContentId::of(b"out"),
            metering: Metering { units: 10, output_bytes: 3 },
            streams: Vec::new(),
        }),
    );
    status(&r)
}

#[test]
fn a_job_with_posted_prices_is_matched_to_the_cheapest_provider_in_the_block_it_lands() {
    let mut chain = market(&["0.5", "0.2", "0.3"]);
    let job = submit(&mut chain, spec(1, "1", 0));
    match chain.task_state(&job, 0) {
        TaskState::Assigned { provider, price, .. } => {
            assert_eq!(provider, provider_key(1).address());
            assert_eq!(price, crn("0.2"));
        }
        other => panic!("expected assigned, got {other:?}"),
    }
    checks(&chain);
}

#[test]
fn a_committed_task_settles_after_the_challenge_window_and_pays_provider_fee_and_refund() {
    let mut chain = market(&["0.5"]);
    let client_before = chain.state.account(&client().address()).unwrap().balance;
    let job = submit(&mut chain, spec(1, "1", 0));
    let p0 = provider_key(0).address();
    let provider_before = chain.state.account(&p0).unwrap().balance;
    assert_eq!(commit(&mut chain, 0, TaskId::derive(&job, 0)), TxStatus::Ok);
    let provider_mid = chain.state.account(&p0).unwrap().balance;
    assert_eq!(
        provider_mid,
        provider_before.checked_sub(chain.fee).unwrap(),
        "nothing paid before the window ends"
    );
    let receipts = chain.advance(5);
    let settled = receipts.iter().flat_map(|r| r.events()).find_map(|e| match e {
        Event::TaskSettled { paid, protocol_fee, refunded, .. } => Some((*paid, *protocol_fee, *refunded)),
        _ => None,
    });
    // price 0.5, protocol fee 2% = 0.01, reserve = 1 + 10% verification fee = 1.1; the
    // verification fee goes to the audit pool, refund 0.5.
    assert_eq!(settled, Some((crn("0.49"), crn("0.01"), crn("0.5"))));
    assert_eq!(chain.state.totals().unwrap().audit_pool, crn("0.1"));
    assert!(matches!(chain.task_state(&job, 0), TaskState::Settled { .. }));
    assert!(chain.state.escrow(&job).unwrap().is_zero());
    // The client paid exactly the price, the verification fee and its one tx fee.
    let client_after = chain.state.account(&client().address()).unwrap().balance;
    assert_eq!(client_before.checked_sub(client_after).unwrap(), crn("0.6").checked_add(chain.fee).unwrap());
    assert_eq!(chain.state.provider(&p0).unwrap().unwrap().reputation.total_valid, 1);
    checks(&chain);
}

fn salt(who: u64) -> Hash32 {
    Hash32([who as u8 + 1; 32])
}

/// Provider `who`'s sealed bid of `price` on `task`.
fn sealed(task: TaskId, who: u64, price: &str) -> TxBody {
    let c = Bid::commitment(&task, &provider_key(who).address(), crn(price), &salt(who));
    TxBody::Bid(Bid { task, offer: Offer::Sealed(c) })
}

/// Its opening.
fn reveal(task: TaskId, who: u64, price: &str) -> TxBody {
    TxBody::Bid(Bid { task, offer: Offer::Reveal { price: crn(price), salt: salt(who) } })
}

#[test]
fn the_lowest_reputation_weighted_bid_wins_a_sealed_auction() {
    let mut chain = market(&["0.9", "0.9", "0.9"]);
    let job = submit(&mut chain, spec(1, "1", 3));
    let task = TaskId::derive(&job, 0);
    assert!(matches!(chain.task_state(&job, 0), TaskState::Open { .. }));
    let bids = [(0, "0.6"), (1, "0.4"), (2, "0.5")];
    for (who, price) in bids {
        chain.send(&provider_key(who), sealed(task, who, price));
    }
    let receipts = chain.next_block();
    // While sealed, the chain shows who bid but no price.
    match chain.task_state(&job, 0) {
        TaskState::Open { bids, .. } => assert!(bids.is_empty(), "no price is visible: {bids:?}"),
        other => panic!("expected open, got {other:?}"),
    }
    let events: Vec<Event> = receipts.iter().flat_map(|r| r.events().iter().cloned()).collect();
    assert_eq!(events.iter().filter(|e| matches!(e, Event::BidSealed { .. })).count(), 3);
    // Too early to reveal.
    assert_eq!(
        status(&chain.run(&provider_key(0), reveal(task, 0, "0.6"))),
        TxStatus::Failed(ErrorCode::NotRevealTime)
    );
    chain.advance(2);
    for (who, price) in bids {
        chain.send(&provider_key(who), reveal(task, who, price));
    }
    chain.next_block();
    chain.advance(u64::from(params().reveal_blocks));
    match chain.task_state(&job, 0) {
        TaskState::Assigned { provider, price, .. } => {
            assert_eq!(provider, provider_key(1).address());
            assert_eq!(price, crn("0.4"));
        }
        other => panic!("expected assigned, got {other:?}"),
    }
    checks(&chain);
}

#[test]
fn bad_seals_and_reveals_are_refused_with_typed_errors() {
    let reveal_blocks = 10;
    let mut chain = market_with(cairn_state::Params { reveal_blocks, ..params() }, &["0.9", "0.9", "0.9"]);
    let job = submit(&mut chain, spec(1, "1", 4));
    let task = TaskId::derive(&job, 0);
    let run = |chain: &mut TestChain, who: u64, body: TxBody| status(&chain.run(&provider_key(who), body));
    assert_eq!(run(&mut chain, 0, sealed(task, 0, "1.5")), TxStatus::Ok);
    assert_eq!(run(&mut chain, 0, sealed(task, 0, "0.5")), TxStatus::Failed(ErrorCode::DuplicateBid));
    assert_eq!(run(&mut chain, 1, sealed(task, 1, "0.5")), TxStatus::Ok);
    let by_client = TxBody::Bid(Bid { task, offer: Offer::Sealed(Hash32([1; 32])) });
    assert_eq!(status(&chain.run(&client(), by_client)), TxStatus::Failed(ErrorCode::ClientCannotBid));
    // Sealing is over: no new seals; reveals must open the seal, with a price within the max.
    assert_eq!(run(&mut chain, 2, sealed(task, 2, "0.4")), TxStatus::Failed(ErrorCode::AuctionClosed));
    assert_eq!(run(&mut chain, 2, reveal(task, 2, "0.4")), TxStatus::Failed(ErrorCode::BidNotSealed));
    assert_eq!(run(&mut chain, 1, reveal(task, 1, "0.3")), TxStatus::Failed(ErrorCode::RevealMismatch));
    assert_eq!(run(&mut chain, 0, reveal(task, 0, "1.5")), TxStatus::Failed(ErrorCode::PriceAboveMax));
    assert_eq!(run(&mut chain, 1, reveal(task, 1, "0.5")), TxStatus::Ok);
    assert_eq!(run(&mut chain, 1, reveal(task, 1, "0.5")), TxStatus::Failed(ErrorCode::DuplicateBid));
    for _ in 0..reveal_blocks {
        if !matches!(chain.task_state(&job, 0), TaskState::Open { .. }) {
            break;
        }
        chain.advance(1);
    }
    // Closed: provider 1 won at its revealed price; the task takes no more bids.
    assert!(
        matches!(chain.task_state(&job, 0), TaskState::Assigned { provider, .. } if provider == provider_key(1).address())
    );
    assert_eq!(run(&mut chain, 0, reveal(task, 0, "0.5")), TxStatus::Failed(ErrorCode::TaskNotOpen));
    checks(&chain);
}

#[test]
fn a_missed_deadline_reauctions_the_task_to_another_provider() {
    let mut chain = market(&["0.2", "0.3"]);
    let job = submit(&mut chain, spec(1, "1", 0));
    let first = provider_key(0).address();
    assert!(matches!(chain.task_state(&job, 0), TaskState::Assigned { provider, .. } if provider == first));
    let receipts = chain.advance(4);
    assert!(receipts.iter().flat_map(|r| r.events()).any(|e| matches!(e, Event::TaskMissedDeadline { .. })));
    let task = chain.state.task(&TaskId::derive(&job, 0)).unwrap().unwrap();
    assert_eq!(task.attempt, 2);
    assert!(
        matches!(task.state, TaskState::Assigned { provider, .. } if provider == provider_key(1).address())
    );
    let p0 = chain.state.provider(&first).unwrap().unwrap();
    assert_eq!((p0.reputation.total_failed, p0.open_tasks, p0.reserved.cpu_millis), (1, 0, 0));
    // The late provider can no longer commit.
    assert_eq!(
        commit(&mut chain, 0, TaskId::derive(&job, 0)),
        TxStatus::Failed(ErrorCode::NotAssignedProvider)
    );
    assert_eq!(commit(&mut chain, 1, TaskId::derive(&job, 0)), TxStatus::Ok);
    chain.advance(6);
    assert!(matches!(chain.task_state(&job, 0), TaskState::Settled { .. }));
    checks(&chain);
}

#[test]
fn a_task_is_refunded_after_max_attempts_of_missed_deadlines() {
    let mut chain = market(&["0.2", "0.3", "0.4"]);
    let client_before = chain.state.account(&client().address()).unwrap().balance;
    let job = submit(&mut chain, spec(1, "1", 0));
    chain.advance(3 * 4 + 1);
    assert!(matches!(
        chain.task_state(&job, 0),
        TaskState::Refunded { reason: RefundReason::MaxAttempts, .. }
    ));
    let client_after = chain.state.account(&client().address()).unwrap().balance;
    assert_eq!(client_before.checked_sub(client_after).unwrap(), chain.fee, "only the fee is spent");
    assert!(chain.state.escrow(&job).unwrap().is_zero());
    checks(&chain);
}

#[test]
fn a_job_nobody_can_take_waits_without_using_attempts_then_is_refunded() {
    let mut chain = market(&["2"]);
    let job = submit(&mut chain, spec(2, "1", 0));
    assert!(matches!(chain.task_state(&job, 0), TaskState::Open { .. }));
    chain.advance(10);
    let t = chain.state.task(&cairn_types::TaskId::derive(&job, 0)).unwrap().unwrap();
    assert_eq!(t.attempt, 1, "waiting for a provider is not an attempt");
    assert!(matches!(t.state, TaskState::Open { .. }));
    // Each re-opened auction seals for `rematch_blocks` and takes reveals for `reveal_blocks`.
    chain.advance(12);
    for i in 0..2 {
        assert!(matches!(
            chain.task_state(&job, i),
            TaskState::Refunded { reason: RefundReason::NoProvider, .. }
        ));
    }
    checks(&chain);
}

#[test]
fn cancel_refunds_open_and_running_tasks_but_committed_ones_still_settle() {
    let mut chain = market(&["0.2"]);
    let mut s = spec(3, "1", 0);
    s.resources.cpu_millis = 2_000; // the provider has room for two at a time
    let job = submit(&mut chain, s);
    assert!(matches!(chain.task_state(&job, 2), TaskState::Open { .. }));
    assert_eq!(commit(&mut chain, 0, TaskId::derive(&job, 0)), TxStatus::Ok);
    let r = chain.run(&client(), TxBody::CancelJob(CancelJob { job }));
    assert_eq!(status(&r), TxStatus::Ok);
    assert!(matches!(chain.task_state(&job, 0), TaskState::Committed { .. }));
    assert!(matches!(chain.task_state(&job, 1), TaskState::Refunded { reason: RefundReason::Cancelled, .. }));
    assert!(matches!(chain.task_state(&job, 2), TaskState::Refunded { reason: RefundReason::Cancelled, .. }));
    let p = chain.state.provider(&provider_key(0).address()).unwrap().unwrap();
    assert_eq!(p.reserved.cpu_millis, 0, "cancel frees the running task's capacity");
    let again = chain.run(&client(), TxBody::CancelJob(CancelJob { job }));
    assert_eq!(status(&again), TxStatus::Failed(ErrorCode::JobFinished));
    chain.advance(5);
    assert!(matches!(chain.task_state(&job, 0), TaskState::Settled { .. }));
    assert!(chain.all_tasks_final());
    checks(&chain);
}

#[test]
fn only_the_client_can_cancel_and_only_the_assigned_provider_can_commit() {
    let mut chain = market(&["0.2", "0.3"]);
    let job = submit(&mut chain, spec(1, "1", 0));
    let r = chain.run(&provider_key(0), TxBody::CancelJob(CancelJob { job }));
    assert_eq!(status(&r), TxStatus::Failed(ErrorCode::NotJobClient));
    assert_eq!(
        commit(&mut chain, 1, TaskId::derive(&job, 0)),
        TxStatus::Failed(ErrorCode::NotAssignedProvider)
    );
    assert_eq!(commit(&mut chain, 0, TaskId([9; 32])), TxStatus::Failed(ErrorCode::TaskNotFound));
    checks(&chain);
}

#[test]
fn a_job_spreads_over_providers_when_the_cheapest_runs_out_of_capacity() {
    let mut chain = market(&["0.2", "0.3"]);
    let job = submit(&mut chain, spec(6, "1", 0));
    let mut by = std::collections::BTreeMap::new();
    for i in 0..6 {
        if let TaskState::Assigned { provider, .. } = chain.task_state(&job, i) {
            *by.entry(provider).or_insert(0) += 1;
        }
    }
    assert_eq!(by.get(&provider_key(0).address()), Some(&4), "4 cores, 1 core per task");
    assert_eq!(by.get(&provider_key(1).address()), Some(&2));
    checks(&chain);
}

#[test]
fn region_constraints_exclude_providers_elsewhere() {
    let mut chain = market(&["0.1", "0.5", "0.3"]); // DE, US, SG
    let mut s = spec(1, "1", 0);
    s.constraints.regions = vec!["SG".parse().unwrap()];
    let job = submit(&mut chain, s);
    assert!(
        matches!(chain.task_state(&job, 0), TaskState::Assigned { provider, .. } if provider == provider_key(2).address())
    );
}

#[test]
fn the_stake_exposure_rule_keeps_an_understaked_provider_from_big_tasks() {
    // 1,000 CRN bonded at exposure 20× covers at most 50 CRN of open work.
    let mut chain = market(&["40", "60"]);
    let job = submit(&mut chain, spec(2, "60", 0));
    let p0 = provider_key(0).address();
    let assigned: Vec<_> = (0..2)
        .map(|i| match chain.task_state(&job, i) {
            TaskState::Assigned { provider, .. } => Some(provider),
            _ => None,
        })
        .collect();
    assert_eq!(assigned[0], Some(p0), "the first 40 CRN task fits");
    assert_ne!(assigned[1], Some(p0), "a second would need 1,600 CRN of stake");
    checks(&chain);
}

#[test]
fn a_task_waiting_for_room_takes_it_in_the_block_a_provider_frees_it() {
    // One provider with 4 cores; 6 one-core tasks: 4 run, 2 wait.
    let mut chain = market(&["0.2"]);
    let job = submit(&mut chain, spec(6, "1", 0));
    let assigned = |chain: &TestChain| {
        (0..6).filter(|i| matches!(chain.task_state(&job, *i), TaskState::Assigned { .. })).count()
    };
    assert_eq!(assigned(&chain), 4);
    let waiting: Vec<u32> =
        (0..6).filter(|i| matches!(chain.task_state(&job, *i), TaskState::Open { .. })).collect();
    assert_eq!(waiting.len(), 2);
    // A commit frees a core: the first waiting task is assigned at the end of that very block,
    // not after an auction's sealing and reveal windows.
    let first = (0..6).find(|i| matches!(chain.task_state(&job, *i), TaskState::Assigned { .. })).unwrap();
    let h = chain.height();
    assert_eq!(commit(&mut chain, 0, TaskId::derive(&job, first)), TxStatus::Ok);
    assert_eq!(chain.height(), h + 1);
    assert!(
        matches!(chain.task_state(&job, waiting[0]), TaskState::Assigned { .. }),
        "matched in the commit's block"
    );
    assert!(matches!(chain.task_state(&job, waiting[1]), TaskState::Open { .. }), "one freed core, one task");
    assert_eq!(assigned(&chain), 4);
    checks(&chain);
}
