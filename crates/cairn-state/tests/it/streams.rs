//! Live-stream evidence: a provider is slashed on its own signature when the stream it signed
//! is not the reply it committed, and never for a stream that agrees with its commitment.

use cairn_state::Params;
use cairn_state::model::TaskState;
use cairn_state::testkit::TestChain;
use cairn_types::stream::{StreamEnd, StreamEvent, chain_of, claim, ends_of};
use cairn_types::{
    Address, CommitResult, ContentId, ErrorCode, Event, Hash32, JobId, Metering, ReportStream, SecretKey,
    SlashReason, SubmitAudit, TaskId, TxBody, TxStatus, UpdateProvider, WorkloadKind,
};

use crate::common::*;

const PROVIDERS: usize = 4;
/// The committed reply of request 0.
const REPLY: [u32; 5] = [101, 102, 103, 104, 105];

fn net() -> TestChain {
    let mut chain =
        market_with(Params { audit_window: 20, challenge_window: 30, ..params() }, &["0.5"; PROVIDERS]);
    for i in 0..PROVIDERS {
        let mut info = info(["DE", "US", "SG"][i % 3], "0.5");
        info.prices.0.insert(WorkloadKind::Inference, crn("0.5"));
        chain.ok(&provider_key(i as u64), TxBody::UpdateProvider(UpdateProvider { info }));
    }
    chain
}

fn key_of(a: &Address) -> SecretKey {
    (0..PROVIDERS as u64).map(provider_key).find(|k| k.address() == *a).expect("a provider's address")
}

fn inference_job(chain: &mut TestChain) -> (JobId, TaskId, Address) {
    let mut s = cairn_types::JobSpec::from_yaml(&format!(
        "kind: inference\nworkload: {}\nmax_price_per_task: 1 CRN\ndeadline_blocks: 4\n",
        ContentId::of(b"a model")
    ))
    .unwrap();
    s.resources.cpu_millis = 1_000;
    let job = submit(chain, s);
    let task = TaskId::derive(&job, 0);
    let TaskState::Assigned { provider, .. } = chain.task_state(&job, 0) else { panic!("not assigned") };
    (job, task, provider)
}

fn commit(chain: &mut TestChain, w: &Address, task: TaskId, streams: Vec<StreamEnd>) -> TxStatus {
    let body = TxBody::CommitResult(CommitResult {
        task,
        output: ContentId::of(&task.0),
        metering: Metering { units: 10, output_bytes: 3 },
        streams,
    });
    status(&chain.run(&key_of(w), body))
}

/// The honest ends of the task's two requests: a chat reply, then an embeddings request.
fn honest_ends(task: &TaskId) -> Vec<StreamEnd> {
    ends_of(task, [Some(&REPLY[..]), None])
}

/// `signer`'s signed point of reply 0 after `ids`, as a report carrying `tokens`.
fn point(signer: &SecretKey, task: TaskId, ids: &[u32], last: bool, tokens: &[u32]) -> TxBody {
    let chain = chain_of(&task, 0, ids);
    let n = ids.len() as u64;
    let sig = signer.sign(&StreamEvent::signed_bytes(&task, 0, n, &chain, last));
    TxBody::ReportStream(ReportStream { task, index: 0, n, chain, last, sig, tokens: tokens.to_vec() })
}

fn failed(code: ErrorCode) -> TxStatus {
    TxStatus::Failed(code)
}

#[test]
fn a_provider_that_streamed_other_tokens_than_it_committed_is_slashed_on_its_own_signature() {
    let mut chain = net();
    let (_, task, w) = inference_job(&mut chain);
    assert_eq!(commit(&mut chain, &w, task, honest_ends(&task)), TxStatus::Ok);
    // The next block draws the audit of a newcomer's result.
    chain.next_block();
    assert_eq!(chain.audits().len(), 1, "a newcomer's result is audited");
    let wk = key_of(&w);
    let stake_before = chain.state.stake(&w).unwrap().bonded;
    let reporter = client();

    // Points of the committed reply are no fault: a prefix, and the signed end.
    for (ids, last) in [(&REPLY[..2], false), (&REPLY[..0], false), (&REPLY[..], true), (&REPLY[..], false)] {
        let r = chain.run(&reporter, point(&wk, task, ids, last, &REPLY));
        assert_eq!(status(&r), failed(ErrorCode::StreamConsistent), "{ids:?} last {last}");
    }
    // Evidence the chain cannot use changes nothing.
    let lie = [101, 999];
    let r = chain.run(&reporter, point(&wk, task, &lie, false, &[101, 999, 103, 104, 105]));
    assert_eq!(
        status(&r),
        failed(ErrorCode::StreamEvidenceInvalid),
        "tokens that are not the committed reply"
    );
    let r = chain.run(&reporter, point(&wk, task, &lie, false, &[]));
    assert_eq!(
        status(&r),
        failed(ErrorCode::StreamEvidenceInvalid),
        "no tokens for a point inside the reply"
    );
    let r = chain.run(&reporter, point(&provider_key(9), task, &lie, false, &REPLY));
    assert_eq!(status(&r), failed(ErrorCode::BadSignature), "signed by someone else");
    let TxBody::ReportStream(mut other) = point(&wk, task, &lie, false, &REPLY) else { unreachable!() };
    other.index = 2;
    assert_eq!(
        status(&chain.run(&reporter, TxBody::ReportStream(other))),
        failed(ErrorCode::StreamNotCommitted)
    );
    let TxBody::ReportStream(mut moved) = point(&wk, task, &lie, false, &REPLY) else { unreachable!() };
    moved.index = 1;
    assert_eq!(
        status(&chain.run(&reporter, TxBody::ReportStream(moved))),
        failed(ErrorCode::BadSignature),
        "the signature binds the reply's index"
    );
    assert_eq!(
        chain.state.stake(&w).unwrap().bonded,
        stake_before,
        "no slash for evidence that proves nothing"
    );
    checks(&chain);

    // The provider signed a second token it did not commit.
    let r = chain.run(&reporter, point(&wk, task, &lie, false, &REPLY));
    assert_eq!(status(&r), TxStatus::Ok);
    let slashed: Vec<_> = r
        .events()
        .iter()
        .filter_map(|e| match e {
            Event::Slashed { who, reason, amount, to_auditors, to_client, .. } => {
                Some((*who, *reason, *amount, *to_auditors, *to_client))
            }
            _ => None,
        })
        .collect();
    assert_eq!(slashed.len(), 1, "{:?}", r.events());
    let (who, reason, amount, _, to_client) = slashed[0];
    assert_eq!((who, reason), (w, SlashReason::StreamMismatch));
    assert!(!amount.is_zero() && !to_client.is_zero());
    assert!(r.events().iter().any(|e| matches!(e, Event::StreamMismatch { task: t, provider, index: 0, .. } if *t == task && *provider == w)));
    assert_eq!(chain.state.stake(&w).unwrap().bonded.checked_add(amount).unwrap(), stake_before);
    // The audit in progress is over; the task runs again elsewhere (or waits for a provider).
    assert!(chain.audits().is_empty(), "the evidence ended the audit");
    let t = chain.all_tasks().into_iter().find(|t| t.id == task).unwrap();
    assert!(t.excluded.contains(&w), "the cheater does not get the task back");
    assert!(!matches!(t.state, TaskState::Committed { .. } | TaskState::Settled { .. }), "{:?}", t.state);
    checks(&chain);

    // The same evidence again: the commitment it contradicted is gone.
    let r = chain.run(&reporter, point(&wk, task, &lie, false, &REPLY));
    assert_eq!(status(&r), failed(ErrorCode::DisputeNotAllowed));
    chain.advance(40);
    checks(&chain);
}

#[test]
fn an_end_signed_early_or_a_reply_longer_than_committed_is_a_mismatch() {
    for (ids, last) in [(&REPLY[..3], true), (&[101, 102, 103, 104, 105, 106][..], false)] {
        let mut chain = net();
        let (_, task, w) = inference_job(&mut chain);
        assert_eq!(commit(&mut chain, &w, task, honest_ends(&task)), TxStatus::Ok);
        // Neither point needs the committed tokens.
        let r = chain.run(&client(), point(&key_of(&w), task, ids, last, &[]));
        assert_eq!(status(&r), TxStatus::Ok, "{ids:?} last {last}");
        assert!(
            r.events()
                .iter()
                .any(|e| matches!(e, Event::Slashed { reason: SlashReason::StreamMismatch, .. }))
        );
        checks(&chain);
    }
}

#[test]
fn stream_ends_are_part_of_what_auditors_compare() {
    let mut chain = net();
    let (_, task, w) = inference_job(&mut chain);
    // Ends forged to cover a stream other than the output's replies.
    let forged = ends_of(&task, [Some(&[101, 999][..]), None]);
    assert_eq!(commit(&mut chain, &w, task, forged.clone()), TxStatus::Ok);
    let drawn = chain.next_block();
    let (auditor, claimed) = drawn
        .iter()
        .flat_map(|r| r.events().iter())
        .find_map(|e| match e {
            Event::AuditAssigned { auditor, claimed, .. } => Some((*auditor, *claimed)),
            _ => None,
        })
        .expect("an audit");
    let output = ContentId::of(&task.0);
    assert_eq!(claimed, claim(&output, &forged), "the audit checks the output bound to its ends");
    assert_ne!(claimed, output);
    // The auditor re-ran: same output, the honest ends. That is a mismatch, and a dispute.
    let body = TxBody::SubmitAudit(SubmitAudit {
        task,
        output,
        metering: Metering { units: 10, output_bytes: 3 },
        streams: honest_ends(&task),
    });
    let r = chain.run(&key_of(&auditor), body);
    assert_eq!(status(&r), TxStatus::Ok);
    assert!(
        r.events().iter().any(|e| matches!(e, Event::DisputeOpened { .. })),
        "forged ends are caught by a re-run: {:?}",
        r.events()
    );
    checks(&chain);
}

#[test]
fn stream_ends_come_only_with_inference_and_within_the_cap() {
    let mut chain = net();
    // A WASM task has no streams.
    let job = submit(&mut chain, spec(1, "1", 0));
    let task = TaskId::derive(&job, 0);
    let TaskState::Assigned { provider, .. } = chain.task_state(&job, 0) else { panic!("not assigned") };
    let one = vec![StreamEnd { n: 0, chain: Hash32::ZERO }];
    assert_eq!(commit(&mut chain, &provider, task, one), failed(ErrorCode::InvalidBody));
    // An inference task: at most MAX_STREAM_ENDS ends.
    let (_, task, w) = inference_job(&mut chain);
    let many = vec![StreamEnd { n: 0, chain: Hash32::ZERO }; cairn_types::stream::MAX_STREAM_ENDS + 1];
    assert_eq!(commit(&mut chain, &w, task, many), failed(ErrorCode::InvalidBody));
    assert_eq!(commit(&mut chain, &w, task, honest_ends(&task)), TxStatus::Ok);
    checks(&chain);
}

#[test]
fn a_settled_task_cannot_be_reported() {
    let mut chain = net();
    let (_, task, w) = inference_job(&mut chain);
    assert_eq!(commit(&mut chain, &w, task, honest_ends(&task)), TxStatus::Ok);
    // Confirm the audit so the result settles at the end of its challenge window.
    let drawn = chain.next_block();
    for e in drawn.iter().flat_map(|r| r.events().iter()) {
        if let Event::AuditAssigned { auditor, .. } = e {
            let body = TxBody::SubmitAudit(SubmitAudit {
                task,
                output: ContentId::of(&task.0),
                metering: Metering { units: 10, output_bytes: 3 },
                streams: honest_ends(&task),
            });
            assert_eq!(status(&chain.run(&key_of(auditor), body)), TxStatus::Ok);
        }
    }
    chain.advance(40);
    let t = chain.all_tasks().into_iter().find(|t| t.id == task).unwrap();
    assert!(matches!(t.state, TaskState::Settled { .. }), "{:?}", t.state);
    let r = chain.run(&client(), point(&key_of(&w), task, &[101, 999], false, &REPLY));
    assert_eq!(status(&r), failed(ErrorCode::DisputeNotAllowed));
    checks(&chain);
}
