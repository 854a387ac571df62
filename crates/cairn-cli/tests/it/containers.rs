//! Batch containers on the market: a busybox image built with `cairn image busybox`, a
//! `kind: container` job submitted with `cairn job submit`, run by one provider under runc,
//! re-run bit for bit by an auditor in its own sandbox, settled, and its output fetched; and a
//! job declared non-deterministic, checked loosely by its auditor.

use std::path::Path;
use std::time::Duration;

use cairn_types::SecretKey;

use crate::harness::*;

#[test]
fn a_container_job_runs_sandboxed_is_audited_bit_for_bit_and_settles() {
    container_tools();
    let dir = TempDir::new("containers");
    let root = &dir.0;
    let base = create_network(root, 1, 2);
    let node = NodeProc::start(&root.join("validator-0"), base + 100);
    let _providers =
        [ProviderProc::start(&root.join("provider-0")), ProviderProc::start(&root.join("provider-1"))];
    let rt = rt();
    rt.block_on(async {
        let c = node.client();
        c.wait_for_height(2, READY).await.unwrap();
        let deadline = tokio::time::Instant::now() + READY;
        loop {
            let v: serde_json::Value = c.get("/api/providers").await.unwrap();
            let containers = v["providers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["info"]["prices"]["container"].is_string())
                .count();
            if containers == 2 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "providers did not offer containers: {v}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let client_key = SecretKey::from_seed([43; 32]);
    std::fs::write(root.join("me.key"), hex::encode(client_key.seed())).unwrap();
    let faucet = root.join("faucet.key");
    let addr = client_key.address().to_string();
    let (ok, _, err) = cairn(
        &["wallet", "send", &addr, "100 CRN", "--key-file", faucet.to_str().unwrap(), "--api", &node.api],
        &[],
    );
    assert!(ok, "{err}");
    let image = root.join("busybox.tar");
    let (ok, out, err) = cairn(&["image", "busybox", "--out", image.to_str().unwrap()], &[]);
    assert!(ok, "{err}");
    assert!(out.contains("busybox.tar"), "{out}");
    std::fs::write(root.join("words.txt"), "granite\nbasalt\nslate\n").unwrap();
    let spec = root.join("job.yaml");
    std::fs::write(
        &spec,
        "kind: container\nworkload: busybox.tar\n\
         args: [\"/bin/sh\", \"-c\", \"sort /in/words.txt > /out/sorted.txt && sha256sum /in/words.txt > /out/sum && echo sorted $CAIRN_TASK_INDEX\"]\n\
         inputs:\n  - name: words.txt\n    path: words.txt\n\
         max_price_per_task: 1 CRN\ndeadline_blocks: 120\nverification: strict\n",
    )
    .unwrap();
    let job = submit_spec(&spec, &node.api, &root.join("me.key"));
    rt.block_on(async {
        let c = node.client();
        let t = final_task(&c, &job).await;
        assert!(matches!(t.state, cairn_state::model::TaskState::Settled { .. }), "{:?}", t.state);
        // A strict job is audited: the auditor's re-run in its own sandbox matched bit for bit.
        let task = cairn_types::TaskId::derive(&job, 0);
        let tip = c.status().await.unwrap().height;
        let mut confirmed = false;
        for h in 1..=tip {
            let v: serde_json::Value = c.get(&format!("/api/blocks/{h}/receipts")).await.unwrap();
            for r in v["receipts"].as_array().unwrap() {
                for e in r["events"].as_array().unwrap() {
                    if let Ok(cairn_types::Event::AuditResolved { task: t, outcome }) =
                        serde_json::from_value(e.clone())
                        && t == task
                    {
                        assert_eq!(outcome, cairn_types::AuditOutcome::Confirmed);
                        confirmed = true;
                    }
                }
            }
        }
        assert!(confirmed, "the container result was audited and confirmed");
    });
    // A program whose bytes differ run to run, declared non-deterministic: the auditor checks
    // it loosely (same exit, same files) and the result settles.
    let spec = root.join("clock.yaml");
    std::fs::write(
        &spec,
        "kind: container\nworkload: busybox.tar\ndeterministic: false\n\
         args: [\"/bin/sh\", \"-c\", \"cat /proc/uptime > /out/when\"]\n\
         max_price_per_task: 1 CRN\ndeadline_blocks: 120\nverification: strict\n",
    )
    .unwrap();
    let clock = submit_spec(&spec, &node.api, &root.join("me.key"));
    rt.block_on(async {
        let t = final_task(&node.client(), &clock).await;
        assert!(matches!(t.state, cairn_state::model::TaskState::Settled { .. }), "{:?}", t.state);
        assert_eq!(t.attempt, 1, "settled on its first attempt: the loose check held");
    });
    let out = root.join("result");
    let (ok, _, err) =
        cairn(&["job", "result", &job.to_string(), "--out", out.to_str().unwrap(), "--api", &node.api], &[]);
    assert!(ok, "{err}");
    let sorted = std::fs::read_to_string(find(&out, "sorted.txt")).unwrap();
    assert_eq!(sorted, "basalt\ngranite\nslate\n");
    let stdout = std::fs::read_to_string(find(&out, "stdout")).unwrap_or_default();
    assert!(stdout.contains("sorted 0"), "{stdout}");
}

/// The job's (only) task once it has ended.
async fn final_task(c: &cairn_client::Client, job: &cairn_types::JobId) -> cairn_state::model::Task {
    let deadline = tokio::time::Instant::now() + READY * 2;
    loop {
        let v: serde_json::Value = c.get(&format!("/api/jobs/{job}")).await.unwrap();
        let mut tasks: Vec<cairn_state::model::Task> = serde_json::from_value(v["tasks"].clone()).unwrap();
        if tasks.first().is_some_and(|t| t.state.is_final()) {
            return tasks.remove(0);
        }
        assert!(tokio::time::Instant::now() < deadline, "the container job did not end: {v}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The first file named `name` under `dir`.
fn find(dir: &Path, name: &str) -> std::path::PathBuf {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == name) {
                return p;
            }
        }
    }
    panic!("no {name} under {}", dir.display())
}
