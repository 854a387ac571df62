//! Verified work end to end: adversarial providers on a real devnet are caught by random
//! audits, disputes and canaries, and honest providers never lose stake.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use cairn_client::Client;
use cairn_state::model::TaskState;
use cairn_types::{Address, Event, JobId, SecretKey, SlashReason};

use crate::harness::*;

/// Make provider `i` of the network in `root` follow `behaviour` (a TOML table body) and post
/// `wasm_price` for WASM work.
fn configure(root: &Path, i: usize, behaviour: Option<&str>, wasm_price: &str) {
    let path = root.join(format!("provider-{i}/provider.toml"));
    let mut cfg: toml::Value = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["prices"]["wasm"] = toml::Value::String(wasm_price.into());
    if let Some(b) = behaviour {
        cfg.as_table_mut().unwrap().insert("behaviour".into(), toml::from_str(b).unwrap());
    }
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
}

/// Every event of every block this node run has indexed (blocks from before a restart have no
/// receipts here).
async fn all_events(c: &Client) -> Vec<Event> {
    let tip = c.status().await.unwrap().height;
    let mut out = Vec::new();
    for h in 1..=tip {
        let Ok(v) = c.get::<serde_json::Value>(&format!("/api/blocks/{h}/receipts")).await else { continue };
        for r in v["receipts"].as_array().unwrap() {
            for e in r["events"].as_array().unwrap() {
                out.push(serde_json::from_value(e.clone()).unwrap());
            }
        }
    }
    out
}

/// Who was slashed, and why, in order.
fn slashes(events: &[Event]) -> Vec<(Address, SlashReason)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Slashed { who, reason, .. } => Some((*who, *reason)),
            _ => None,
        })
        .collect()
}

fn submit(root: &Path, api: &str, key: &Path, yaml: &str) -> JobId {
    let spec = root.join("job.yaml");
    std::fs::copy(testdata("wasm/sieve.wasm"), root.join("sieve.wasm")).unwrap();
    std::fs::write(&spec, yaml).unwrap();
    submit_spec(&spec, api, key)
}

async fn wait_final(
    c: &Client,
    job: &JobId,
    secs: u64,
    logs: impl Fn() -> String,
) -> Vec<cairn_state::model::Task> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let v: serde_json::Value = c.get(&format!("/api/jobs/{job}")).await.unwrap();
        let tasks: Vec<cairn_state::model::Task> = serde_json::from_value(v["tasks"].clone()).unwrap();
        if tasks.iter().all(|t| t.state.is_final()) {
            return tasks;
        }
        assert!(tokio::time::Instant::now() < deadline, "the job did not finish: {v}\n{}", logs());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Start the network's node and providers; fund a client key; wait for `n` providers.
fn boot(root: &Path, base: u16, n: usize) -> (NodeProc, Vec<ProviderProc>, std::path::PathBuf) {
    let node = NodeProc::start(&root.join("validator-0"), base + 100);
    let providers: Vec<ProviderProc> =
        (0..n).map(|i| ProviderProc::start(&root.join(format!("provider-{i}")))).collect();
    let client_key = SecretKey::from_seed([77; 32]);
    let key_file = root.join("me.key");
    std::fs::write(&key_file, hex::encode(client_key.seed())).unwrap();
    rt().block_on(async {
        let c = node.client();
        c.wait_for_height(2, READY).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let v: serde_json::Value = c.get("/api/providers").await.unwrap();
            if v["providers"].as_array().unwrap().len() == n {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "providers did not register");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let (ok, _, err) = cairn(
        &[
            "wallet",
            "send",
            &client_key.address().to_string(),
            "1000 CRN",
            "--key-file",
            root.join("faucet.key").to_str().unwrap(),
            "--api",
            &node.api,
        ],
        &[],
    );
    assert!(ok, "funding failed: {err}");
    (node, providers, key_file)
}

#[test]
fn cheating_workers_are_caught_slashed_and_never_paid_and_their_tasks_rerun_on_honest_providers() {
    let _heavy = heavy();
    let dir = TempDir::new("cheaters");
    let root = &dir.0;
    let base = create_network(root, 1, 6);
    // Providers 0-2 are honest; 3 commits wrong outputs, 4 skips the work, 5 commits a wrong
    // output and vanishes. The cheaters post the lowest prices, so they win the work first.
    configure(root, 3, Some("kind = \"wrong_always\""), "0.01 CRN");
    configure(root, 4, Some("kind = \"skip_work\""), "0.01 CRN");
    configure(root, 5, Some("kind = \"commit_then_vanish\""), "0.01 CRN");
    let names: BTreeMap<Address, &str> = [
        (address_of(root, 0), "honest-0"),
        (address_of(root, 1), "honest-1"),
        (address_of(root, 2), "honest-2"),
        (address_of(root, 3), "wrong_always"),
        (address_of(root, 4), "skip_work"),
        (address_of(root, 5), "commit_then_vanish"),
    ]
    .into();
    let (node, providers, key) = boot(root, base, 6);
    let job = submit(
        root,
        &node.api,
        &key,
        "kind: wasm\nworkload: sieve.wasm\nargs: [\"200000\"]\ntasks: 6\nmax_price_per_task: 0.2 CRN\ndeadline_blocks: 120\nmax_attempts: 6\n",
    );
    let logs = || providers.iter().map(ProviderProc::log).collect::<Vec<_>>().join("\n----\n");
    rt().block_on(async {
        let c = node.client();
        let tasks = wait_final(&c, &job, 400, &logs).await;
        let events = all_events(&c).await;
        // Every task ends paid to an honest provider, with the honest output.
        let mut outputs = Vec::new();
        for t in &tasks {
            let TaskState::Settled { provider, output, .. } = &t.state else { panic!("not settled: {t:?}") };
            assert!(names[provider].starts_with("honest"), "a cheater was paid: {t:?}");
            outputs.push(*output);
        }
        let slashed = slashes(&events);
        for (who, reason) in &slashed {
            assert!(!names[who].starts_with("honest"), "an honest provider was slashed: {slashed:?}");
            assert_eq!(*reason, SlashReason::WrongResult);
        }
        // Each cheater that committed a result was caught.
        let committed: Vec<Address> = events
            .iter()
            .filter_map(|e| match e {
                Event::TaskCommitted { provider, .. } => Some(*provider),
                _ => None,
            })
            .collect();
        for cheater in ["wrong_always", "skip_work", "commit_then_vanish"] {
            let who = names.iter().find(|(_, n)| **n == cheater).map(|(a, _)| *a).unwrap();
            if committed.contains(&who) {
                assert!(
                    slashed.iter().any(|(w, _)| *w == who),
                    "{cheater} committed but was not slashed: {slashed:?}\n{}",
                    logs()
                );
            }
        }
        assert!(slashed.len() >= 2, "the cheaters won work and were caught: {slashed:?}\n{}", logs());
        // Honest stake is whole; a slashed cheater's is not.
        for (who, name) in &names {
            let a = c.account(who).await.unwrap();
            let stake: cairn_state::model::Stake = serde_json::from_value(a.stake).unwrap();
            let whole = stake.bonded == cairn_types::Amount::from_base_units(1_000_000_000);
            assert_eq!(whole, !slashed.iter().any(|(w, _)| w == who), "{name}: {stake:?}");
        }
    });
}

#[test]
fn colluders_are_paid_only_when_their_partner_audits_and_a_partial_cheater_only_for_honest_results() {
    let _heavy = heavy();
    let dir = TempDir::new("colluders");
    let root = &dir.0;
    let base = create_network(root, 1, 6);
    let (c3, c4) = (address_of(root, 3), address_of(root, 4));
    // 3 and 4 cheat on every task and approve each other's results without re-running; 5 cheats
    // on half its tasks. They post the lowest prices.
    let ring = format!("kind = \"colluder\"\nring = [\"{c3}\", \"{c4}\"]");
    configure(root, 3, Some(&ring), "0.01 CRN");
    configure(root, 4, Some(&ring), "0.01 CRN");
    configure(root, 5, Some("kind = \"wrong_sometimes\"\nrate_bps = 5000"), "0.01 CRN");
    let partial = address_of(root, 5);
    let honest: Vec<Address> = (0..3).map(|i| address_of(root, i)).collect();
    let (node, providers, key) = boot(root, base, 6);
    let job = submit(
        root,
        &node.api,
        &key,
        "kind: wasm\nworkload: sieve.wasm\nargs: [\"300000\"]\ntasks: 10\nmax_price_per_task: 0.2 CRN\ndeadline_blocks: 120\nmax_attempts: 6\n",
    );
    let logs = || providers.iter().map(ProviderProc::log).collect::<Vec<_>>().join("\n----\n");
    rt().block_on(async {
        let c = node.client();
        let tasks = wait_final(&c, &job, 400, &logs).await;
        let events = all_events(&c).await;
        // Who audited each task's final result (the last assignment before its settlement).
        let mut auditor_of: BTreeMap<cairn_types::TaskId, Address> = BTreeMap::new();
        let mut slashed: Vec<(Address, cairn_types::TaskId)> = Vec::new();
        for e in &events {
            match e {
                Event::AuditAssigned { task, auditor, .. } => {
                    auditor_of.insert(*task, *auditor);
                }
                Event::Slashed { who, task, reason, .. } => {
                    assert!(!honest.contains(who), "an honest provider was slashed: {e:?}");
                    assert_eq!(*reason, SlashReason::WrongResult, "{e:?}");
                    slashed.push((*who, *task));
                }
                _ => {}
            }
        }
        let cheats = cairn_types::Behaviour::WrongSometimes { rate_bps: 5_000 };
        for t in &tasks {
            let TaskState::Settled { provider, .. } = &t.state else {
                panic!("not settled: {t:?}\n{}", logs())
            };
            if *provider == c3 || *provider == c4 {
                let partner = if *provider == c3 { c4 } else { c3 };
                assert_eq!(
                    auditor_of.get(&t.id),
                    Some(&partner),
                    "a colluder was paid without its partner's approval: {t:?}"
                );
            }
            if *provider == partial {
                assert!(!cheats.cheats_on(&t.id), "a wrong result of the partial cheater was paid: {t:?}");
            }
        }
        // A ring member's result drawn to anyone but its partner is caught: honest auditors and
        // the partial cheater re-run it, and a dispute panel holds at most one ring member.
        let mut committer: BTreeMap<cairn_types::TaskId, Address> = BTreeMap::new();
        let mut first_audit: Vec<(cairn_types::TaskId, Address, Address)> = Vec::new();
        for e in &events {
            match e {
                Event::TaskCommitted { task, provider, .. } => {
                    committer.insert(*task, *provider);
                }
                Event::AuditAssigned { task, auditor, .. } => {
                    if let Some(worker) = committer.remove(task)
                        && (worker == c3 || worker == c4)
                    {
                        first_audit.push((*task, worker, *auditor));
                    }
                }
                _ => {}
            }
        }
        assert!(!first_audit.is_empty(), "the ring won no work: {events:?}");
        let mut caught = 0;
        for (task, worker, auditor) in &first_audit {
            let partner = if *worker == c3 { c4 } else { c3 };
            if *auditor != partner {
                assert!(
                    slashed.iter().any(|(w, t)| w == worker && t == task),
                    "a ring member's wrong result went to an honest auditor and was not caught: {task:?}\n{}",
                    logs()
                );
                caught += 1;
            }
        }
        eprintln!(
            "ring results: {} audited, {caught} by someone outside the ring (all caught)",
            first_audit.len()
        );
    });
}

#[test]
fn a_lazy_auditor_that_approves_without_rerunning_is_slashed_by_a_canary() {
    let _heavy = heavy();
    let dir = TempDir::new("lazy");
    let root = &dir.0;
    // Every committed result also hands out a canary, so the lazy auditor meets one soon.
    let base = create_network_with(root, 1, 4, &["--no-models", "--param", "canary_rate_bps=10000"]);
    configure(root, 3, Some("kind = \"lazy_auditor\""), "0.05 CRN");
    let lazy = address_of(root, 3);
    let (node, providers, key) = boot(root, base, 4);
    let logs = || providers.iter().map(ProviderProc::log).collect::<Vec<_>>().join("\n----\n");
    rt().block_on(async {
        let c = node.client();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        let mut round = 0;
        loop {
            let job = submit(
                root,
                &node.api,
                &key,
                &format!(
                    "kind: wasm\nworkload: sieve.wasm\nargs: [\"{}\"]\ntasks: 4\nmax_price_per_task: 0.2 CRN\ndeadline_blocks: 120\n",
                    100_000 + round
                ),
            );
            wait_final(&c, &job, 300, &logs).await;
            let events = all_events(&c).await;
            let slashes = slashes(&events);
            assert!(slashes.iter().all(|(w, _)| *w == lazy), "only the lazy auditor loses stake: {slashes:?}");
            if slashes.iter().any(|(w, r)| *w == lazy && *r == SlashReason::Canary) {
                assert!(providers[3].log().contains("audit submitted"), "{}", providers[3].log());
                break;
            }
            round += 1;
            assert!(
                tokio::time::Instant::now() < deadline,
                "no canary caught the lazy auditor after {round} jobs:\n{}",
                logs()
            );
        }
    });
}

#[test]
fn cairn_sim_reports_as_json_and_refuses_impossible_mixes() {
    let (ok, out, err) = cairn(
        &[
            "sim",
            "--providers",
            "30",
            "--blocks",
            "20",
            "--tasks-per-block",
            "10",
            "--tasks-per-job",
            "5",
            "--cheat-after",
            "1",
            "--json",
        ],
        &[],
    );
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["false_slashes"], 0);
    let r = &v["reports"][0];
    assert_eq!(r["invariants_held"], true);
    assert_eq!(r["tasks"], 200);
    assert!(r["strategies"].as_array().unwrap().iter().any(|s| s["behaviour"] == "honest"));
    let (ok, _, err) = cairn(&["sim", "--wrong-always-bps", "9000", "--lazy-auditor-bps", "9000"], &[]);
    assert!(!ok);
    assert!(err.contains("more than 10000 basis points"), "{err}");
    let (ok, _, err) = cairn(&["sim", "--dispute-k", "2"], &[]);
    assert!(!ok);
    assert!(err.contains("dispute_auditors must be odd"), "{err}");
    // A devnet refuses bad parameter overrides before writing anything.
    let dir = TempDir::new("bad-param");
    let home = dir.0.join("net");
    for (param, why) in [
        ("nope=1", "no chain parameter named \"nope\""),
        ("canary_rate_bps=abc", "wrong type"),
        ("noequals", "expected NAME=VALUE"),
        ("canary_rate_bps=20000", "at most 10000"),
    ] {
        let (ok, _, err) =
            cairn(&["devnet", "--no-models", "--home", home.to_str().unwrap(), "--param", param], &[]);
        assert!(!ok && err.contains(why), "{param}: {err}");
        assert!(!home.exists(), "{param}: nothing is written");
    }
}
