//! Storage end to end: `cairn store put` places a file on two providers, both prove it, and
//! `cairn store get` brings it back verified; a provider that deletes its replica is caught
//! within one epoch, slashed, and the replica restored on another provider within two.

use std::time::Duration;

use cairn_client::Client;
use cairn_types::{Address, DealId, Event};

use crate::harness::*;

/// Every storage event about `deal`, in order.
async fn deal_events(c: &Client, deal: &DealId) -> Vec<Event> {
    let tip = c.status().await.unwrap().height;
    let mut out = Vec::new();
    for h in 1..=tip {
        let Ok(v) = c.get::<serde_json::Value>(&format!("/api/blocks/{h}/receipts")).await else { continue };
        for r in v["receipts"].as_array().unwrap() {
            for e in r["events"].as_array().unwrap() {
                let e: Event = serde_json::from_value(e.clone()).unwrap();
                let about = match &e {
                    Event::ReplicaAssigned { deal: d, .. }
                    | Event::StorageProven { deal: d, .. }
                    | Event::ReplicaFailed { deal: d, .. }
                    | Event::DealEpochSettled { deal: d, .. } => d == deal,
                    _ => false,
                };
                if about {
                    out.push(e);
                }
            }
        }
    }
    out
}

#[test]
fn a_stored_file_comes_back_verified_and_a_dropped_replica_is_caught_and_restored() {
    let dir = TempDir::new("storage");
    let base = create_network(&dir.0, 1, 3);
    // Provider 0 posts the lowest storage price, so it holds a replica; it drops it after its
    // first proof.
    let path = dir.0.join("provider-0/provider.toml");
    let mut cfg: toml::Value = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg.as_table_mut()
        .unwrap()
        .insert("behaviour".into(), toml::from_str("kind = \"drops_replicas\"").unwrap());
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    let node = NodeProc::start(&dir.0.join("validator-0"), base + 100);
    let providers: Vec<ProviderProc> =
        (0..3).map(|i| ProviderProc::start(&dir.0.join(format!("provider-{i}")))).collect();
    wait_for_providers(&node, &providers);
    // The chain lists them from the network's first run: wait until each endpoint answers.
    rt().block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        for p in &providers {
            while p.status().await.is_null() {
                assert!(tokio::time::Instant::now() < deadline, "a provider did not start:\n{}", p.log());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    let api = format!("http://127.0.0.1:{}", base + 100);
    let faucet = dir.0.join("faucet.key");
    let logs = || providers.iter().map(ProviderProc::log).collect::<Vec<_>>().join("\n----\n");

    let file = dir.0.join("dataset.bin");
    let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    std::fs::write(&file, &bytes).unwrap();
    let store = |args: &[&str]| {
        let mut all = vec!["store"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--api", &api]);
        cairn(&all, &[])
    };
    let paid = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--key-file", faucet.to_str().unwrap()]);
        store(&all)
    };

    // Bad requests are refused before anything is paid.
    let f = file.to_str().unwrap();
    let (ok, _, err) = paid(&["put", f, "--replicas", "0", "--max-price", "0.002CRN"]);
    assert!(!ok && err.contains("invalid_deal"), "{err}");
    let (ok, _, err) = paid(&["put", f, "--replicas", "4", "--max-price", "0.002CRN"]);
    assert!(!ok && err.contains("no_storage_provider"), "{err}");
    let (ok, _, err) = store(&["get", "not-an-id"]);
    assert!(!ok && err.contains("not a deal id or blob id"), "{err}");

    let (ok, out, err) =
        paid(&["put", f, "--replicas", "2", "--epochs", "12", "--max-price", "0.002CRN", "--json"]);
    assert!(ok, "{err}\n{}", logs());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let deal: DealId = v["deal"].as_str().unwrap().parse().unwrap();

    let back = dir.0.join("back.bin");
    let (ok, _, err) = store(&["get", &deal.to_string(), "-o", back.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(&back).unwrap(), bytes, "the file comes back as stored");

    let (dropper, p1, p2) = (address_of(&dir.0, 0), address_of(&dir.0, 1), address_of(&dir.0, 2));
    let c = node.client();
    let events = rt().block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        loop {
            let events = deal_events(&c, &deal).await;
            let restored =
                events.iter().any(|e| matches!(e, Event::StorageProven { provider, .. } if *provider == p2));
            if restored {
                return events;
            }
            assert!(tokio::time::Instant::now() < deadline, "no repair: {events:?}\n{}", logs());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let assigned: Vec<(Address, u32)> = events
        .iter()
        .filter_map(|e| match e {
            Event::ReplicaAssigned { provider, epoch, .. } => Some((*provider, *epoch)),
            _ => None,
        })
        .collect();
    assert_eq!(assigned[..2], [(dropper, 0), (p1, 0)], "the two cheapest hold it first");
    let last_proof = events
        .iter()
        .filter_map(|e| match e {
            Event::StorageProven { provider, epoch, .. } if *provider == dropper => Some(*epoch),
            _ => None,
        })
        .max()
        .unwrap();
    let (failed_epoch, slashed) = events
        .iter()
        .find_map(|e| match e {
            Event::ReplicaFailed { provider, epoch, slashed, .. } if *provider == dropper => {
                Some((*epoch, *slashed))
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(failed_epoch, last_proof + 1, "caught in the first epoch it did not prove");
    assert!(!slashed.is_zero(), "its collateral is slashed");
    let restored_epoch = events
        .iter()
        .find_map(|e| match e {
            Event::StorageProven { provider, epoch, .. } if *provider == p2 => Some(*epoch),
            _ => None,
        })
        .unwrap();
    assert_eq!(assigned[2], (p2, failed_epoch + 1), "the slot is re-offered as the next epoch begins");
    assert!(restored_epoch <= last_proof + 2, "restored within two epochs of the drop");
    // The honest replica kept proving throughout.
    let p1_epochs: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            Event::StorageProven { provider, epoch, .. } if *provider == p1 => Some(*epoch),
            _ => None,
        })
        .collect();
    assert!((0..=restored_epoch).all(|e| p1_epochs.contains(&e)), "{p1_epochs:?}");

    // A job names a stored file as its input; its provider fetches it from the replicas (the
    // node never had it).
    let csv: String = (0..32)
        .map(|r| {
            (0..16)
                .map(|c| format!("{:.3}", ((r * 16 + c) % 17) as f64 / 10.0 - 0.8))
                .collect::<Vec<_>>()
                .join(",")
                + "\n"
        })
        .collect();
    let features = dir.0.join("features.csv");
    std::fs::write(&features, &csv).unwrap();
    let (ok, out, err) = paid(&[
        "put",
        features.to_str().unwrap(),
        "--replicas",
        "2",
        "--epochs",
        "12",
        "--max-price",
        "0.002CRN",
        "--json",
    ]);
    assert!(ok, "{err}");
    let stored: DealId =
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["deal"].as_str().unwrap().parse().unwrap();
    std::fs::copy(testdata("wasm/nn.wasm"), dir.0.join("nn.wasm")).unwrap();
    let spec = dir.0.join("classify.yaml");
    std::fs::write(
        &spec,
        format!(
            "kind: wasm\nworkload: nn.wasm\nargs: [\"features.csv\", \"64\", \"4\", \"7\"]\ninputs:\n  - name: features.csv\n    stored: {stored}\nmax_price_per_task: 0.2 CRN\ndeadline_blocks: 300\n"
        ),
    )
    .unwrap();
    let job = submit_spec(&spec, &api, &faucet);
    let blob = cairn_types::ContentId::of(csv.as_bytes());
    rt().block_on(async {
        let head = reqwest::Client::new().head(format!("{api}/blobs/{blob}")).send().await.unwrap();
        assert_eq!(head.status(), 404, "the node does not hold the stored file");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
        loop {
            let v: serde_json::Value = c.get(&format!("/api/jobs/{job}")).await.unwrap();
            let tasks: Vec<cairn_state::model::Task> = serde_json::from_value(v["tasks"].clone()).unwrap();
            if tasks.iter().all(|t| {
                matches!(
                    t.state,
                    cairn_state::model::TaskState::Committed { .. }
                        | cairn_state::model::TaskState::Settled { .. }
                )
            }) {
                break;
            }
            assert!(
                tasks.iter().all(|t| !t.state.is_final()
                    || matches!(t.state, cairn_state::model::TaskState::Settled { .. })),
                "{v}\n{}",
                logs()
            );
            assert!(tokio::time::Instant::now() < deadline, "the job did not run: {v}\n{}", logs());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });

    // The restored replica serves the file too.
    std::fs::remove_file(&back).unwrap();
    let (ok, _, err) = store(&["get", &deal.to_string(), "-o", back.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(&back).unwrap(), bytes);
}
