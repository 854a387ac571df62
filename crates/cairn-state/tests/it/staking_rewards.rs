//! Staking, rewards, leases, storage deals and the verification entry points.

use cairn_state::testkit::{TestChain, key};
use cairn_types::{
    Bond, CommitResult, ContentId, ErrorCode, Event, Metering, OpenDispute, RegisterProvider, SubmitAudit,
    TaskId, TxBody, TxStatus, Unbond,
};

use crate::common::*;

#[test]
fn unbonded_stake_returns_only_after_the_unbonding_period() {
    let who = key(7);
    let mut chain = TestChain::new(params(), &[(&who, crn("100"))]);
    chain.ok(&who, TxBody::Bond(Bond { amount: crn("40") }));
    chain.ok(&who, TxBody::Unbond(Unbond { amount: crn("30") }));
    let after_unbond = chain.state.account(&who.address()).unwrap().balance;
    chain.advance(9);
    assert_eq!(chain.state.account(&who.address()).unwrap().balance, after_unbond);
    assert_eq!(chain.state.stake(&who.address()).unwrap().unbonding.len(), 1);
    chain.advance(1);
    let back = chain.state.account(&who.address()).unwrap().balance;
    assert_eq!(back.checked_sub(after_unbond).unwrap(), crn("30"));
    assert_eq!(chain.state.stake(&who.address()).unwrap().bonded, crn("10"));
    let r = chain.run(&who, TxBody::Unbond(Unbond { amount: crn("11") }));
    assert_eq!(status(&r), TxStatus::Failed(ErrorCode::UnbondTooMuch));
    chain.check_supply().unwrap();
}

#[test]
fn a_provider_needs_stake_to_register_and_cannot_unbond_what_backs_open_work() {
    let p = provider_key(0);
    let mut chain = TestChain::new(params(), &[(&p, crn("5000")), (&client(), crn("1000"))]);
    let r = chain.run(&p, TxBody::RegisterProvider(RegisterProvider { info: info("DE", "1") }));
    assert_eq!(status(&r), TxStatus::Failed(ErrorCode::InsufficientStake));
    chain.ok(&p, TxBody::Bond(Bond { amount: crn("1000") }));
    chain.ok(&p, TxBody::RegisterProvider(RegisterProvider { info: info("DE", "20") }));
    let again = chain.run(&p, TxBody::RegisterProvider(RegisterProvider { info: info("DE", "20") }));
    assert_eq!(status(&again), TxStatus::Failed(ErrorCode::ProviderAlreadyRegistered));
    let job = submit(&mut chain, spec(1, "30", 0)); // 20 CRN open × 20 = 400 CRN locked
    let r = chain.run(&p, TxBody::Unbond(Unbond { amount: crn("700") }));
    assert_eq!(status(&r), TxStatus::Failed(ErrorCode::StakeLocked));
    chain.ok(&p, TxBody::Unbond(Unbond { amount: crn("600") }));
    // Once the task settles, the exposure is gone but the registration minimum stays.
    let c = CommitResult {
        task: TaskId::derive(&job, 0),
        output: ContentId::of(b"o"),
        metering: Metering::default(),
        streams: Vec::new(),
    };
    chain.ok(&p, TxBody::CommitResult(c));
    chain.advance(5);
    let r = chain.run(&p, TxBody::Unbond(Unbond { amount: crn("350") }));
    assert_eq!(status(&r), TxStatus::Failed(ErrorCode::StakeLocked));
    chain.ok(&p, TxBody::Unbond(Unbond { amount: crn("300") }));
    checks(&chain);
}

#[test]
fn validators_earn_fees_and_block_rewards_and_providers_earn_by_verified_work() {
    let mut chain = market(&["0.5", "0.5"]);
    let validator = key(0).address();
    let v_before = chain.state.account(&validator).unwrap().balance;
    chain.advance(1);
    let v_after = chain.state.account(&validator).unwrap().balance;
    // 30% of the 1 CRN block reward, all stake is the validator's.
    assert_eq!(v_after.checked_sub(v_before).unwrap(), crn("0.3"));

    let job = submit(&mut chain, spec(2, "1", 0));
    for i in 0..2 {
        let task = TaskId::derive(&job, i);
        let who = match chain.task_state(&job, i) {
            cairn_state::model::TaskState::Assigned { provider, .. } => provider,
            s => panic!("{s:?}"),
        };
        let k = (0..2).map(provider_key).find(|k| k.address() == who).unwrap();
        chain.ok(
            &k,
            TxBody::CommitResult(CommitResult {
                task,
                output: ContentId::of(b"x"),
                metering: Metering::default(),
                streams: Vec::new(),
            }),
        );
    }
    let receipts = chain.advance(20);
    let paid = receipts.iter().flat_map(|r| r.events()).find_map(|e| match e {
        Event::RewardsPaid { providers, .. } if !providers.is_zero() => Some(*providers),
        _ => None,
    });
    assert!(paid.is_some(), "the epoch after settlement pays providers");
    assert!(chain.state.totals().unwrap().epoch_work.is_zero());
    checks(&chain);
}

#[test]
fn verdicts_from_unassigned_auditors_and_disputes_from_strangers_are_refused() {
    let mut chain = market(&["0.5", "0.5"]);
    let job = submit(&mut chain, spec(1, "1", 0));
    let task = TaskId::derive(&job, 0);
    let audit = TxBody::SubmitAudit(SubmitAudit {
        task,
        output: ContentId::of(b"x"),
        metering: Metering::default(),
        streams: Vec::new(),
    });
    assert_eq!(status(&chain.run(&provider_key(1), audit)), TxStatus::Failed(ErrorCode::AuditNotAssigned));
    let dispute = |bond| TxBody::OpenDispute(OpenDispute { task, bond });
    assert_eq!(
        status(&chain.run(&provider_key(1), dispute(crn("1")))),
        TxStatus::Failed(ErrorCode::NotJobClient)
    );
    assert_eq!(
        status(&chain.run(&client(), dispute(crn("1")))),
        TxStatus::Failed(ErrorCode::DisputeNotAllowed)
    );
    checks(&chain);
}

#[test]
fn a_validator_proven_to_equivocate_loses_stake_once_per_view_and_supply_is_conserved() {
    use cairn_types::{Fault, FaultKind};
    let mut chain = TestChain::new(params(), &[]);
    let validator = key(0).address();
    let bonded = chain.state.stake(&validator).unwrap().bonded;
    let burned = chain.state.totals().unwrap().burned;
    let fault = Fault { validator, view: 12, kind: FaultKind::ConflictingNotarize };
    // The same fault twice in one block, a finalize fault in the same view, and a fault of an
    // address that is not a validator: one slash.
    chain.faults = vec![
        fault,
        fault,
        Fault { kind: FaultKind::ConflictingFinalize, ..fault },
        Fault { validator: key(9).address(), ..fault },
    ];
    let receipts = chain.next_block();
    let slashed: Vec<Event> = receipts
        .iter()
        .flat_map(|r| r.events().iter().cloned())
        .filter(|e| matches!(e, Event::ValidatorSlashed { .. }))
        .collect();
    let expected = bonded.checked_bps(params().slash_validator_bps).unwrap();
    assert_eq!(
        slashed,
        vec![Event::ValidatorSlashed {
            validator,
            view: 12,
            kind: FaultKind::ConflictingNotarize,
            amount: expected
        }]
    );
    assert_eq!(chain.state.stake(&validator).unwrap().bonded, bonded.checked_sub(expected).unwrap());
    assert_eq!(chain.state.totals().unwrap().burned, burned.checked_add(expected).unwrap());
    checks(&chain);
    // Carried again in a later block: nothing more. A fault in another view: slashed again.
    chain.faults = vec![fault];
    chain.next_block();
    assert_eq!(chain.state.stake(&validator).unwrap().bonded, bonded.checked_sub(expected).unwrap());
    chain.faults = vec![Fault { view: 13, ..fault }];
    chain.next_block();
    assert!(chain.state.stake(&validator).unwrap().bonded < bonded.checked_sub(expected).unwrap());
    checks(&chain);
}
