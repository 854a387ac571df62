//! Training jobs: rounds of shard tasks and an aggregation, each opening only once what it reads
//! is committed and past its audit.

use cairn_state::model::TaskState;
use cairn_state::testkit::TestChain;
use cairn_types::{
    Address, CommitResult, ContentId, ErrorCode, Event, JobId, JobSpec, Metering, OpenDispute, Receipt,
    RefundReason, SecretKey, SubmitAudit, TaskId, TxBody, TxStatus,
};

use crate::common::*;

const PROVIDERS: usize = 5;

fn train_spec(rounds: u32, width: u32, verification: &str, attempts: u32) -> JobSpec {
    JobSpec::from_yaml(&format!(
        "kind: train\nworkload: {}\nmax_price_per_task: 1 CRN\ntasks: {}\ndeadline_blocks: 4\nmax_attempts: {attempts}\nverification: {verification}\ntrain:\n  model: {{ arch: mlp, hidden: 16 }}\n  optimizer: {{ learning_rate: 0.01 }}\n  rounds: {rounds}\n  width: {width}\n",
        ContentId::of(b"digits.csv"),
        rounds * (width + 1),
    ))
    .unwrap()
}

fn key_of(a: &Address) -> SecretKey {
    (0..PROVIDERS as u64).map(provider_key).find(|k| k.address() == *a).expect("a provider's address")
}

/// Each task's output is distinct, so the order of a task's inputs can be checked.
fn output(job: &JobId, index: u32) -> ContentId {
    ContentId::of(&TaskId::derive(job, index).0)
}

fn worker(chain: &TestChain, job: &JobId, index: u32) -> Address {
    match chain.task_state(job, index) {
        TaskState::Assigned { provider, .. } => provider,
        other => panic!("task {index} should be assigned, is {other:?}"),
    }
}

fn commit(chain: &mut TestChain, job: &JobId, index: u32) -> Receipt {
    let who = key_of(&worker(chain, job, index));
    let r = chain.run(
        &who,
        TxBody::CommitResult(CommitResult {
            task: TaskId::derive(job, index),
            output: output(job, index),
            metering: Metering { units: 10, output_bytes: 3 },
            streams: Vec::new(),
        }),
    );
    assert_eq!(status(&r), TxStatus::Ok);
    r
}

fn inputs(chain: &TestChain, job: &JobId, index: u32) -> Vec<ContentId> {
    let id = TaskId::derive(job, index);
    chain.all_tasks().into_iter().find(|t| t.id == id).unwrap().inputs
}

fn states(chain: &TestChain, job: &JobId, n: u32) -> Vec<&'static str> {
    (0..n).map(|i| chain.task_state(job, i).name()).collect()
}

#[test]
fn each_round_opens_when_the_one_before_is_committed_and_reads_exactly_its_outputs() {
    let mut chain = market(&["0.5"; PROVIDERS]);
    let job = submit(&mut chain, train_spec(2, 2, "none", 3));
    // Round 0's shards start at once; its aggregation and round 1 wait.
    assert_eq!(states(&chain, &job, 6), ["assigned", "assigned", "waiting", "waiting", "waiting", "waiting"]);
    commit(&mut chain, &job, 1);
    assert_eq!(chain.task_state(&job, 2).name(), "waiting", "one shard is not enough");
    commit(&mut chain, &job, 0);
    assert_eq!(chain.task_state(&job, 2).name(), "assigned");
    assert_eq!(inputs(&chain, &job, 2), [output(&job, 0), output(&job, 1)], "shards in shard order");
    assert_eq!(states(&chain, &job, 6)[3..], ["waiting", "waiting", "waiting"]);
    commit(&mut chain, &job, 2);
    assert_eq!(states(&chain, &job, 6)[3..], ["assigned", "assigned", "waiting"]);
    assert_eq!(inputs(&chain, &job, 3), [output(&job, 2)], "round 1 starts from round 0's checkpoint");
    assert_eq!(inputs(&chain, &job, 4), [output(&job, 2)]);
    commit(&mut chain, &job, 3);
    commit(&mut chain, &job, 4);
    assert_eq!(inputs(&chain, &job, 5), [output(&job, 3), output(&job, 4)]);
    commit(&mut chain, &job, 5);
    chain.advance(3);
    assert!(chain.all_tasks_final());
    assert_eq!(states(&chain, &job, 6), ["settled"; 6]);
    assert!(chain.state.escrow(&job).unwrap().is_zero());
    checks(&chain);
}

#[test]
fn an_audited_shard_holds_its_round_until_the_audit_confirms_it_and_then_cannot_be_disputed() {
    let mut chain = market(&["0.5"; PROVIDERS]);
    // New providers are audited on every result.
    let job = submit(&mut chain, train_spec(1, 1, "standard", 3));
    commit(&mut chain, &job, 0);
    let drawn = chain.next_block();
    let (auditor, claimed) = drawn
        .iter()
        .flat_map(|r| r.events())
        .find_map(|e| match e {
            Event::AuditAssigned { auditor, claimed, .. } => Some((*auditor, *claimed)),
            _ => None,
        })
        .expect("the shard is audited");
    assert_eq!(chain.task_state(&job, 1).name(), "waiting", "not while its input is under audit");
    let task = TaskId::derive(&job, 0);
    let r = chain.run(
        &key_of(&auditor),
        TxBody::SubmitAudit(SubmitAudit {
            task,
            output: claimed,
            metering: Metering::default(),
            streams: Vec::new(),
        }),
    );
    assert_eq!(status(&r), TxStatus::Ok);
    chain.next_block();
    assert_eq!(chain.task_state(&job, 1).name(), "assigned", "the confirmed shard feeds the aggregation");
    assert_eq!(inputs(&chain, &job, 1), [claimed]);
    // Round 1 already reads it: the client can no longer dispute it.
    let r = chain.run(&client(), TxBody::OpenDispute(OpenDispute { task, bond: crn("5") }));
    assert_eq!(status(&r), TxStatus::Failed(ErrorCode::DisputeNotAllowed));
    checks(&chain);
}

#[test]
fn a_shard_that_runs_out_of_attempts_refunds_every_task_after_it() {
    let mut chain = market(&["0.5"; PROVIDERS]);
    let before = chain.state.account(&client().address()).unwrap().balance;
    let job = submit(&mut chain, train_spec(3, 2, "none", 1));
    commit(&mut chain, &job, 0);
    // Shard 1's provider never commits: after its deadline the round cannot finish.
    let receipts = chain.advance(6);
    let upstream = receipts
        .iter()
        .flat_map(|r| r.events())
        .filter(|e| matches!(e, Event::TaskRefunded { reason: RefundReason::Upstream, .. }))
        .count();
    assert_eq!(upstream, 7, "the aggregation and both later rounds");
    assert!(matches!(
        chain.task_state(&job, 1),
        TaskState::Refunded { reason: RefundReason::MaxAttempts, .. }
    ));
    chain.advance(3);
    assert!(chain.all_tasks_final(), "{:?}", states(&chain, &job, 9));
    assert!(chain.state.escrow(&job).unwrap().is_zero(), "nothing stays in escrow");
    // The client paid for one shard only (price, fees) and got the rest back.
    let paid = before.checked_sub(chain.state.account(&client().address()).unwrap().balance).unwrap();
    assert!(paid < crn("1"), "paid {paid}");
    checks(&chain);
}

#[test]
fn cancelling_a_training_job_refunds_the_waiting_rounds() {
    let mut chain = market(&["0.5"; PROVIDERS]);
    let job = submit(&mut chain, train_spec(2, 1, "none", 3));
    let r = chain.run(&client(), TxBody::CancelJob(cairn_types::CancelJob { job }));
    assert_eq!(status(&r), TxStatus::Ok);
    assert!(
        (0..4).all(|i| matches!(
            chain.task_state(&job, i),
            TaskState::Refunded { reason: RefundReason::Cancelled, .. }
        )),
        "{:?}",
        states(&chain, &job, 4)
    );
    assert!(chain.state.escrow(&job).unwrap().is_zero());
    checks(&chain);
}

#[test]
fn a_train_spec_that_breaks_its_rules_is_refused_with_a_typed_code() {
    let mut chain = market(&["0.5"; PROVIDERS]);
    let mut bad = train_spec(2, 2, "none", 3);
    bad.tasks = 5;
    let r = chain.run(&client(), TxBody::SubmitJob(cairn_types::SubmitJob { spec: bad }));
    assert_eq!(status(&r), TxStatus::Failed(ErrorCode::InvalidJobSpec));
    let mut bad = train_spec(2, 2, "none", 3);
    bad.train = None;
    let r = chain.run(&client(), TxBody::SubmitJob(cairn_types::SubmitJob { spec: bad }));
    assert!(matches!(status(&r), TxStatus::Failed(ErrorCode::InvalidJobSpec) | TxStatus::Rejected(_)));
    checks(&chain);
}
