//! The node as users run it.

use std::time::Duration;

use cairn_types::api::TxLookup;
use cairn_types::{Amount, Canonical, Heartbeat, Receipt, SecretKey, Transfer, Tx, TxBody, TxStatus};

use crate::harness::*;

fn transfer(from: &SecretKey, nonce: u64, to: &SecretKey, amount: u128) -> Tx {
    Tx::sign(
        from,
        "cairn-devnet",
        nonce,
        Amount::from_base_units(1_000),
        TxBody::Transfer(Transfer { to: to.address(), amount: Amount::from_base_units(amount) }),
    )
}

#[test]
fn a_single_validator_serves_its_api_and_finalizes_transfers() {
    let dir = TempDir::new("single");
    let base = create_devnet(&dir.0, 1);
    let node = NodeProc::start(&dir.0.join("validator-0"), base + 100);
    let faucet = faucet(&dir.0);
    let bob = SecretKey::from_seed([7; 32]);
    rt().block_on(async {
        let c = node.client();
        let s = c.wait_for_height(3, READY).await.expect("node ready");
        assert_eq!(s.chain_id, "cairn-devnet");
        assert_eq!(s.state_root.len(), 64);
        let start = c.account(&faucet.address()).await.unwrap();
        let mut events = Box::pin(c.events(None).await.unwrap());
        let mut hashes = Vec::new();
        for i in 0..20 {
            hashes.push(c.submit(&transfer(&faucet, start.nonce + i, &bob, 5)).await.unwrap());
        }
        for h in &hashes {
            let (_, receipt) = c.wait_for(h, Duration::from_secs(30)).await.unwrap();
            assert!(matches!(receipt, Receipt::Tx { status: TxStatus::Ok, .. }), "{receipt:?}");
        }
        assert_eq!(c.account(&bob.address()).await.unwrap().balance, Amount::from_base_units(100));
        // The event stream told of every transfer.
        let mut transfers = 0;
        while transfers < 20 {
            let ev = tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut events))
                .await
                .unwrap()
                .unwrap();
            if ev["event"]["event"] == "transferred" && ev["event"]["to"] == bob.address().to_string() {
                transfers += 1;
            }
        }
        // State values come with proofs against the state root: present and absent keys.
        let key = hex::encode(cairn_state::keys::account(&bob.address()));
        let p: cairn_node::node::StateProof = c.get(&format!("/api/proofs/{key}")).await.unwrap();
        assert!(p.value.is_some());
        assert!(cairn_node::node::verify_state_proof(&p));
        let mut forged = p.clone();
        forged.value.as_mut().unwrap()[0] ^= 1;
        assert!(!cairn_node::node::verify_state_proof(&forged), "a changed value must not verify");
        let absent = hex::encode(cairn_state::keys::account(&SecretKey::from_seed([99; 32]).address()));
        let q: cairn_node::node::StateProof = c.get(&format!("/api/proofs/{absent}")).await.unwrap();
        assert!(q.value.is_none());
        assert!(cairn_node::node::verify_state_proof(&q));
        assert!(matches!(c.tx(&hashes[0]).await.unwrap(), TxLookup::Committed { .. }));
        // A committed transaction replayed is refused.
        let replay = transfer(&faucet, start.nonce, &bob, 5);
        assert_eq!(c.submit(&replay).await.unwrap_err().code(), Some("nonce_replayed"));
    });
    // `cairn node status --json` prints the same fixed points as the API.
    let out = std::process::Command::new(BIN)
        .args(["node", "status", "--json", "--api", &node.api])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["chain_id"], "cairn-devnet");
    assert!(v["height"].as_u64().unwrap() >= 3);
    assert_eq!(v["state_root"].as_str().unwrap().len(), 64);
}

#[test]
fn bad_requests_get_typed_json_errors_and_the_node_keeps_finalizing() {
    // Its flood must finalize within a minute: not while a training run holds both cores.
    let _heavy = heavy();
    let dir = TempDir::new("bad");
    let base = create_devnet(&dir.0, 1);
    let node = NodeProc::start(&dir.0.join("validator-0"), base + 100);
    let faucet = faucet(&dir.0);
    rt().block_on(async {
        let c = node.client();
        let before = c.wait_for_height(2, READY).await.unwrap().height;
        let http = reqwest::Client::new();
        let url = |p: &str| format!("{}{p}", node.api);
        let code = |v: &serde_json::Value| v["error"]["code"].as_str().unwrap_or("").to_string();
        let post = |path: &str, body: Vec<u8>, ct: &'static str| {
            let req = http.post(url(path)).header("content-type", ct).body(body);
            async move {
                let r = req.send().await.unwrap();
                let status = r.status().as_u16();
                (status, r.json::<serde_json::Value>().await.unwrap_or_default())
            }
        };
        let (s, v) = post("/api/txs", b"{not json".to_vec(), "application/json").await;
        assert_eq!((s, code(&v).as_str()), (400, "malformed_json"));
        let (s, v) = post("/api/txs", br#"{"tx":"zz"}"#.to_vec(), "application/json").await;
        assert_eq!((s, code(&v).as_str()), (400, "malformed_tx"));
        let (s, v) = post("/api/txs", br#"{"tx":"01","extra":1}"#.to_vec(), "application/json").await;
        assert_eq!((s, code(&v).as_str()), (400, "malformed_json"));
        // An oversized body is refused with 413 (the server may also close the connection while
        // the client is still sending, which the client sees as a reset: retry for the answer).
        let mut saw_413 = false;
        for _ in 0..5 {
            let sent = http
                .post(url("/api/txs"))
                .header("content-type", "application/json")
                .body(vec![b'a'; 600 * 1024])
                .send()
                .await;
            if let Ok(r) = sent {
                assert_eq!(r.status().as_u16(), 413);
                let v: serde_json::Value = r.json().await.unwrap_or_default();
                assert_eq!(code(&v), "payload_too_large", "{v}");
                saw_413 = true;
                break;
            }
        }
        assert!(saw_413, "never got the 413 answer");
        // The event stream is a WebSocket; a plain GET is told so, in JSON.
        let r = http.get(url("/api/events")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 426);
        assert_eq!(code(&r.json::<serde_json::Value>().await.unwrap()), "websocket_required");
        let mut forged = transfer(&faucet, 0, &faucet, 1);
        forged.signature.0[3] ^= 1;
        let (s, v) = post("/api/txs", forged.encode(), "application/octet-stream").await;
        assert_eq!((s, code(&v).as_str()), (400, "bad_signature"));
        let other = Tx::sign(
            &faucet,
            "other-chain",
            0,
            Amount::from_base_units(1_000),
            TxBody::Heartbeat(Heartbeat {}),
        );
        assert_eq!(c.submit(&other).await.unwrap_err().code(), Some("wrong_chain_id"));
        let r = http.get(url("/api/nope")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 404);
        assert_eq!(code(&r.json().await.unwrap()), "unknown_route");
        let r = http.delete(url("/api/status")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 405);
        let r = http.get(url("/api/accounts/cairn1nope")).send().await.unwrap();
        assert_eq!((r.status().as_u16(), code(&r.json().await.unwrap()).as_str()), (400, "bad_address"));
        let r = http.get(url("/api/blocks/notanumber")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let r = http.get(url("/api/jobs/00")).send().await.unwrap();
        assert_eq!((r.status().as_u16(), code(&r.json().await.unwrap()).as_str()), (400, "bad_id"));
        // An unfunded sender cannot queue anything.
        let poor = SecretKey::from_seed([8; 32]);
        for n in 0..500u64 {
            let code =
                c.submit(&transfer(&poor, n, &faucet, 1)).await.unwrap_err().code().map(str::to_string);
            // Past the mempool's nonce window the nonce is refused first.
            let ok = match code.as_deref() {
                Some("cannot_pay_fees") => n <= 256,
                Some("nonce_too_far_ahead") => n >= 256,
                _ => false,
            };
            assert!(ok, "nonce {n}: {code:?}");
        }
        // A flood from one funded sender: the mempool takes a bounded window of its nonces and
        // refuses the rest with a typed code; what it took is finalized and the node goes on.
        let rich = SecretKey::from_seed([12; 32]);
        let fnonce = c.account(&faucet.address()).await.unwrap().nonce;
        let fund = c.submit(&transfer(&faucet, fnonce, &rich, 10_000_000)).await.unwrap();
        c.wait_for(&fund, Duration::from_secs(30)).await.unwrap();
        let (mut taken, mut refused) = (0u64, std::collections::BTreeMap::<String, u64>::new());
        // Highest nonces first: they arrive while the account's next nonce is still 0, so the
        // window is exceeded however fast the node finalizes what it took (in nonce order, a
        // fast node can include each part before the next arrives and move the window along).
        let flood: Vec<Tx> = (0..1_000u64).rev().map(|n| transfer(&rich, n, &faucet, 1)).collect();
        for r in c.submit_batch(&flood).await.unwrap() {
            match r {
                Ok(_) => taken += 1,
                Err(code) => *refused.entry(code).or_default() += 1,
            }
        }
        assert!((100..1_000).contains(&taken), "taken {taken}, refused {refused:?}");
        assert!(refused.keys().all(|k| k == "nonce_too_far_ahead" || k == "sender_full"), "{refused:?}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while c.account(&rich.address()).await.unwrap().nonce < taken {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the flood's accepted transactions were not all finalized"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let after = c.wait_for_height(before + 3, Duration::from_secs(30)).await.unwrap();
        assert!(after.height > before);
        // The API documents itself, and exports metrics.
        let doc: serde_json::Value =
            http.get(url("/api/openapi.json")).send().await.unwrap().json().await.unwrap();
        assert!(doc["paths"]["/api/status"].is_object());
        let metrics = http.get(url("/metrics")).send().await.unwrap().text().await.unwrap();
        assert!(metrics.contains("height"), "{metrics}");
    });
}

#[test]
fn a_validator_killed_with_sigkill_under_load_restarts_to_the_same_root() {
    let _heavy = heavy();
    let dir = TempDir::new("kill");
    let n = 4;
    let base = create_devnet(&dir.0, n);
    let mut nodes: Vec<NodeProc> = (0..n)
        .map(|i| NodeProc::start(&dir.0.join(format!("validator-{i}")), base + 100 + i as u16))
        .collect();
    let faucet = faucet(&dir.0);
    let bob = SecretKey::from_seed([9; 32]);
    rt().block_on(async {
        for node in &nodes {
            node.client().wait_for_height(2, READY).await.expect("validator ready");
        }
        let c0 = nodes[0].client();
        let mut nonce = c0.account(&faucet.address()).await.unwrap().nonce;
        let mut last = None;
        for round in 0..6 {
            // The mempool takes nonces at most 256 past the committed one: on a loaded
            // machine blocks come slower, so a client keeps its batches inside that window.
            let paced = tokio::time::Instant::now() + Duration::from_secs(60);
            while c0.account(&faucet.address()).await.unwrap().nonce + 256 < nonce + 50 {
                assert!(tokio::time::Instant::now() < paced, "the chain stopped committing transfers");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let batch: Vec<Tx> = (0..50).map(|i| transfer(&faucet, nonce + i, &bob, 1)).collect();
            nonce += 50;
            for r in c0.submit_batch(&batch).await.unwrap() {
                last = Some(r.expect("accepted"));
            }
            if round == 2 {
                nodes[3].kill9();
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        c0.wait_for(&last.unwrap(), Duration::from_secs(60)).await.unwrap();
        nodes[3].spawn();
        let target = c0.status().await.unwrap().height + 2;
        let back = nodes[3]
            .client()
            .wait_for_height(target, Duration::from_secs(90))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", nodes[3].log()));
        // Same height, same block, same state root as a validator that never stopped.
        let mut tries = 0;
        loop {
            let b3: serde_json::Value =
                nodes[3].client().get(&format!("/api/blocks/{}", back.height)).await.unwrap();
            let b0: serde_json::Value = c0.get(&format!("/api/blocks/{}", back.height)).await.unwrap();
            if b3["state_root"] == b0["state_root"] && b3["digest"] == b0["digest"] {
                break;
            }
            tries += 1;
            assert!(tries < 20, "roots differ at {}: {b0} vs {b3}", back.height);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let a0 = c0.account(&bob.address()).await.unwrap();
        let s3 = nodes[3]
            .client()
            .wait_for_height(c0.status().await.unwrap().height, Duration::from_secs(30))
            .await
            .unwrap();
        assert!(s3.ready);
        assert_eq!(nodes[3].client().account(&bob.address()).await.unwrap().balance, a0.balance);
        assert_eq!(a0.balance, Amount::from_base_units(300));
    });
}

#[test]
fn receipts_of_transactions_finalized_before_a_sigkill_are_still_served_after_the_restart() {
    let dir = TempDir::new("receipts");
    let base = create_devnet(&dir.0, 1);
    let mut node = NodeProc::start(&dir.0.join("validator-0"), base + 100);
    let faucet = faucet(&dir.0);
    let bob = SecretKey::from_seed([11; 32]);
    let (hashes, before) = rt().block_on(async {
        let c = node.client();
        c.wait_for_height(2, READY).await.unwrap();
        let nonce = c.account(&faucet.address()).await.unwrap().nonce;
        let mut hashes = Vec::new();
        for i in 0..5 {
            hashes.push(c.submit(&transfer(&faucet, nonce + i, &bob, 3)).await.unwrap());
        }
        let mut before = Vec::new();
        for h in &hashes {
            c.wait_for(h, Duration::from_secs(30)).await.unwrap();
            before.push(c.tx(h).await.unwrap());
        }
        let last = before.iter().map(|t| match t {
            TxLookup::Committed { height, .. } => *height,
            TxLookup::Pending { .. } => 0,
        });
        let top = last.max().unwrap();
        let receipts: serde_json::Value = c.get(&format!("/api/blocks/{top}/receipts")).await.unwrap();
        (hashes, (before, top, receipts))
    });
    node.kill9();
    node.spawn();
    rt().block_on(async {
        let c = node.client();
        c.wait_for_height(before.1 + 2, READY).await.unwrap_or_else(|e| panic!("{e}\n{}", node.log()));
        for (h, was) in hashes.iter().zip(&before.0) {
            assert_eq!(&c.tx(h).await.unwrap(), was, "the same receipt, at the same height and index");
        }
        let receipts: serde_json::Value = c.get(&format!("/api/blocks/{}/receipts", before.1)).await.unwrap();
        assert_eq!(receipts, before.2);
    });
}

#[test]
fn a_truncated_store_file_makes_the_node_refuse_to_start() {
    let dir = TempDir::new("corrupt");
    let base = create_devnet(&dir.0, 1);
    let home = dir.0.join("validator-0");
    {
        let node = NodeProc::start(&home, base + 100);
        rt().block_on(node.client().wait_for_height(5, READY)).unwrap();
    }
    let data = home.join("db/cairn-state-log_data/0000000000000000");
    let len = std::fs::metadata(&data).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&data).unwrap().set_len(len / 3).unwrap();
    let out = std::process::Command::new(BIN).args(["node", "run", "--home"]).arg(&home).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("store is damaged"), "{stderr}");
}
