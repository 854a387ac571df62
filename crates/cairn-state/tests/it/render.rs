//! Render jobs go only to providers that render with the Blender version they name, and their
//! audits are drawn from the same providers.

use cairn_state::model::TaskState;
use cairn_types::{
    BLENDER_ATTRIBUTE, CommitResult, ContentId, Event, JobSpec, Metering, TaskId, TxBody, UpdateProvider,
    WorkloadKind,
};

use crate::common::*;

fn render_spec(blender: &str) -> JobSpec {
    JobSpec::from_yaml(&format!(
        "kind: render\nworkload: {}\nmax_price_per_task: 1 CRN\ndeadline_blocks: 4\nresources: {{ cpu_millis: 1000 }}\nrender: {{ blender: '{blender}', frames: {{ start: 1, end: 2 }}, resolution: {{ width: 64, height: 32 }}, tiles: 2 }}\n",
        ContentId::of(b"scene.blend")
    ))
    .unwrap()
}

#[test]
fn render_tasks_and_their_audits_stay_with_providers_of_the_named_blender() {
    let mut chain = market(&["0.1", "0.2", "0.3", "0.4"]);
    // Provider 0 (the cheapest) renders with another version; 1 and 3 with 3.4.1; 2 renders not at all.
    for (i, version) in [(0, Some("3.6.0")), (1, Some("3.4.1")), (3, Some("3.4.1"))] {
        let mut inf = info(["DE", "US", "SG", "DE"][i as usize], "0.5");
        inf.prices.0.insert(WorkloadKind::Render, crn(&format!("0.{}", i + 1)));
        if let Some(v) = version {
            inf.attributes.insert(BLENDER_ATTRIBUTE.into(), v.into());
        }
        chain.ok(&provider_key(i), TxBody::UpdateProvider(UpdateProvider { info: inf }));
    }
    let right = [provider_key(1).address(), provider_key(3).address()];
    let job = submit(&mut chain, render_spec("3.4.1"));
    let mut workers = Vec::new();
    for index in 0..4 {
        match chain.task_state(&job, index) {
            TaskState::Assigned { provider, .. } => {
                assert!(right.contains(&provider), "task {index} went to a provider without Blender 3.4.1");
                workers.push(provider);
            }
            s => panic!("task {index} not assigned: {s:?}"),
        }
    }
    // The worker's result is audited by the other 3.4.1 provider, the only one that can re-render it.
    let w = workers[0];
    let key = (0..4).map(provider_key).find(|k| k.address() == w).unwrap();
    let task = TaskId::derive(&job, 0);
    chain.ok(
        &key,
        TxBody::CommitResult(CommitResult {
            task,
            output: ContentId::of(b"frame"),
            metering: Metering { units: 10, output_bytes: 3 },
            streams: Vec::new(),
        }),
    );
    let drawn = chain.next_block();
    let auditors: Vec<_> = drawn
        .iter()
        .flat_map(|r| r.events().iter().cloned())
        .filter_map(|e| match e {
            Event::AuditAssigned { auditor, task: t, .. } if t == task => Some(auditor),
            _ => None,
        })
        .collect();
    assert_eq!(auditors.len(), 1, "a newcomer's result is audited");
    assert!(right.contains(&auditors[0]) && auditors[0] != w, "auditor {:?}", auditors[0]);
    // A version nobody runs is never assigned.
    let none = submit(&mut chain, render_spec("4.0.0"));
    assert!(matches!(chain.task_state(&none, 0), TaskState::Open { .. }));
    checks(&chain);
}
