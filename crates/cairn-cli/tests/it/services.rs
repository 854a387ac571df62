//! A long-running service end to end: the `hello-service` example opened with
//! `cairn job submit`, served through its provider's endpoint and a client-side
//! `cairn service proxy`, probed by drawn auditors and paid per round; its provider SIGKILLed,
//! the lease moved to another provider and serving again through the same proxy address, the
//! dead time refunded to the base unit, its volume restored there from the chain's last save;
//! closed with `cairn service close`, its volume downloaded with `cairn service volume`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cairn_client::Client;
use cairn_state::model::Lease;
use cairn_types::{Event, LeaseId, RoundVerdict, SecretKey};

use crate::harness::*;

const EXAMPLE: &str = "../../examples/hello-service";

struct Bg(Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn lease(c: &Client, id: &LeaseId) -> Lease {
    let v: serde_json::Value = c.get(&format!("/api/leases/{id}")).await.unwrap();
    serde_json::from_value(v["lease"].clone()).unwrap()
}

/// Every event about `id` in the chain so far, with its height.
async fn lease_events(c: &Client, id: &LeaseId) -> Vec<(u64, Event)> {
    let tip = c.status().await.unwrap().height;
    let mut out = Vec::new();
    for h in 1..=tip {
        let v: serde_json::Value = c.get(&format!("/api/blocks/{h}/receipts")).await.unwrap();
        for r in v["receipts"].as_array().unwrap() {
            for e in r["events"].as_array().unwrap() {
                let Ok(ev) = serde_json::from_value::<Event>(e.clone()) else { continue };
                let about = match &ev {
                    Event::LeaseRoundSettled { lease, .. }
                    | Event::LeaseMigrated { lease, .. }
                    | Event::LeaseClosed { lease, .. }
                    | Event::LeaseOpened { lease, .. } => lease == id,
                    _ => false,
                };
                if about {
                    out.push((h, ev));
                }
            }
        }
    }
    out
}

async fn get_page(url: &str) -> Option<String> {
    let r = reqwest::Client::new().get(url).timeout(Duration::from_secs(3)).send().await.ok()?;
    if r.status().is_success() { r.text().await.ok() } else { None }
}

#[test]
fn a_service_is_served_probed_paid_moved_off_a_killed_provider_and_refunded_exactly() {
    container_tools();
    let dir = TempDir::new("services");
    let root = &dir.0;
    let base = create_network(root, 1, 3);
    let node = NodeProc::start(&root.join("validator-0"), base + 100);
    let mut providers: Vec<ProviderProc> =
        (0..3).map(|i| ProviderProc::start(&root.join(format!("provider-{i}")))).collect();
    wait_for_providers(&node, &providers);
    let client_key = SecretKey::from_seed([47; 32]);
    let key_file = root.join("me.key");
    std::fs::write(&key_file, hex::encode(client_key.seed())).unwrap();
    let (ok, _, err) = cairn(
        &["wallet", "send", &client_key.address().to_string(), "100 CRN", "--key-file"]
            .iter()
            .copied()
            .chain([root.join("faucet.key").to_str().unwrap(), "--api", &node.api])
            .collect::<Vec<_>>(),
        &[],
    );
    assert!(ok, "{err}");
    // The example as a user runs it: its spec and files, and the image it names.
    let site = root.join("site");
    std::fs::create_dir_all(&site).unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join(EXAMPLE);
    for f in ["service.yaml", "index.html", "health"] {
        std::fs::copy(example.join(f), site.join(f)).unwrap();
    }
    let (ok, _, err) = cairn(&["image", "busybox", "--out", site.join("busybox.tar").to_str().unwrap()], &[]);
    assert!(ok, "{err}");

    let as_client = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--key-file", key_file.to_str().unwrap(), "--api", &node.api]);
        cairn(&all, &[])
    };
    // A lease with no deposit is refused before anything is paid.
    let spec = site.join("service.yaml");
    let (ok, _, err) = as_client(&["job", "submit", spec.to_str().unwrap(), "--deposit", "0 CRN"]);
    assert!(!ok && err.contains("zero_amount"), "{err}");

    let (ok, out, err) = as_client(&["job", "submit", spec.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let opened: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id: LeaseId = opened["lease"].as_str().unwrap().parse().unwrap();
    assert!(opened["serving_ms"].is_u64(), "the service answered its probe path: {opened}");
    eprintln!("service start: submit to first good answer {} ms", opened["serving_ms"]);
    let direct = opened["url"].as_str().unwrap().to_string();

    let proxy_port = base + 300;
    let proxy = Bg(Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "service",
            "proxy",
            &id.to_string(),
            "--listen",
            &format!("127.0.0.1:{proxy_port}"),
            "--api",
            &node.api,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let via_proxy = format!("http://127.0.0.1:{proxy_port}/index.html");
    let (ok, out, err) = cairn(&["service", "status", &id.to_string(), "--api", &node.api], &[]);
    assert!(ok && out.contains(&format!("lease {id}: open")) && out.contains("/lease/"), "{out}{err}");

    let rt = rt();
    rt.block_on(async {
        let c = node.client();
        let page = get_page(&format!("{direct}index.html")).await.unwrap();
        assert!(page.contains("Hello from a Cairn lease"), "{page}");
        // Paid rounds: drawn probers saw it up.
        let deadline = tokio::time::Instant::now() + READY;
        loop {
            let l = lease(&c, &id).await;
            if l.paid_blocks > 0 && get_page(&via_proxy).await.is_some() {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no paid round: {l:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    // Its volume: the stamp written at the first start, saved on chain by its provider.
    let born = rt.block_on(async {
        let c = node.client();
        let deadline = tokio::time::Instant::now() + READY;
        loop {
            if lease(&c, &id).await.volume.is_some() {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the provider never saved the volume");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        get_page(&format!("{direct}born")).await.unwrap()
    });
    assert_eq!(born.trim().len(), 16, "{born}");

    // SIGKILL the provider serving it.
    let first = rt.block_on(async { lease(&node.client(), &id).await });
    let endpoint = rt.block_on(async {
        let v: serde_json::Value =
            node.client().get(&format!("/api/providers/{}", first.provider)).await.unwrap();
        v["provider"]["info"]["endpoint"].as_str().unwrap().to_string()
    });
    let victim = providers.iter().position(|p| p.endpoint == endpoint).unwrap();
    eprintln!("victim provider-{victim}");
    let killed_at = rt.block_on(async { node.client().status().await.unwrap().height });
    providers[victim].kill9();
    let killed = std::time::Instant::now();

    let (moved, serving_again) = rt.block_on(async {
        let c = node.client();
        let deadline = tokio::time::Instant::now() + READY * 2;
        loop {
            let l = lease(&c, &id).await;
            if l.provider != first.provider
                && let Some(page) = get_page(&via_proxy).await
            {
                assert!(page.contains("Hello from a Cairn lease"));
                // The new provider started it on the saved volume: the same stamp.
                let moved_born = get_page(&via_proxy.replace("index.html", "born")).await.unwrap();
                assert_eq!(moved_born, born, "the volume moved with the lease");
                return (l, c.status().await.unwrap().height);
            }
            assert!(tokio::time::Instant::now() < deadline, "the lease did not move: {l:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    eprintln!(
        "migration: serving again through the same proxy {} ms after SIGKILL ({} blocks)",
        killed.elapsed().as_millis(),
        serving_again - killed_at
    );
    assert_eq!(moved.migrations, 1);
    assert_eq!(moved.left, vec![first.provider]);
    let window_blocks = 10 * 15;
    assert!(serving_again - killed_at <= window_blocks, "serving again within one SLA window of blocks");

    // Close it and check the money: every round after the kill until the move was refunded in
    // full, and the client paid exactly the rounds it was served.
    let (ok, out, err) = as_client(&["service", "close", &id.to_string(), "--json"]);
    assert!(ok, "{err}");
    let closed: serde_json::Value = serde_json::from_str(&out).unwrap();
    rt.block_on(async {
        let c = node.client();
        let l = lease(&c, &id).await;
        assert!(l.closed_at.is_some() && l.escrow.is_zero());
        assert_eq!(l.paid.checked_add(l.refunded).unwrap(), l.deposit);
        assert_eq!(serde_json::to_value(l.paid).unwrap(), closed["paid"]);
        let events = lease_events(&c, &id).await;
        let migrated_at = events
            .iter()
            .find_map(|(h, e)| matches!(e, Event::LeaseMigrated { .. }).then_some(*h))
            .expect("a LeaseMigrated event");
        let mut paid = cairn_types::Amount::ZERO;
        let mut refunded_blocks = 0;
        let mut failed_after_kill = 0;
        let mut price = cairn_types::Amount::ZERO;
        for (h, e) in &events {
            match e {
                Event::LeaseOpened { price_per_block, .. } | Event::LeaseMigrated { price_per_block, .. } => {
                    price = *price_per_block;
                }
                Event::LeaseRoundSettled { verdict, blocks, paid: p, refunded, .. } => {
                    let value = price.checked_mul(u128::from(*blocks)).unwrap();
                    paid = paid.checked_add(*p).unwrap();
                    if *verdict == RoundVerdict::Failed {
                        // A failed round is refunded in full, to the base unit.
                        assert_eq!((*p, *refunded), (cairn_types::Amount::ZERO, value), "{e:?}");
                        refunded_blocks += blocks;
                        if *h > killed_at && *h <= migrated_at {
                            failed_after_kill += 1;
                        }
                    } else if *h <= migrated_at {
                        assert_eq!(*p, value, "{e:?}");
                    }
                }
                _ => {}
            }
        }
        assert!(failed_after_kill >= 1, "the dead rounds failed: {events:?}");
        assert_eq!(paid, l.paid, "the lease paid exactly its passed (or unprobed) rounds");
        assert_eq!(refunded_blocks, l.refunded_blocks);
        eprintln!("lease: {} blocks paid ({}), {} blocks refunded", l.paid_blocks, l.paid, l.refunded_blocks);
    });
    drop(proxy);
    // The client downloads the last saved volume after the close, checked against the chain.
    let saved = root.join("volume.tar");
    let (ok, out, err) = cairn(
        &["service", "volume", &id.to_string(), "--out", saved.to_str().unwrap(), "--api", &node.api],
        &[],
    );
    assert!(ok && out.contains("written to"), "{out}{err}");
    let listed = Command::new("tar").arg("-xOf").arg(&saved).arg("born").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&listed.stdout), born);
    let (ok, _, err) = cairn(
        &[
            "service",
            "volume",
            &LeaseId(cairn_types::ContentId::of(b"none").0).to_string(),
            "--out",
            "x.tar",
            "--api",
            &node.api,
        ],
        &[],
    );
    assert!(!ok && err.contains("lease"), "{err}");

    // A WASM service (the `wasm-service` example): one run of the module per request.
    let wasm_dir = root.join("wasm-site");
    std::fs::create_dir_all(&wasm_dir).unwrap();
    let wasm_example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/wasm-service");
    for f in ["service.yaml", "hello-service.wasm", "motd.txt"] {
        std::fs::copy(wasm_example.join(f), wasm_dir.join(f)).unwrap();
    }
    let (ok, out, err) =
        as_client(&["service", "open", wasm_dir.join("service.yaml").to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let opened: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(opened["serving_ms"].is_u64(), "{opened}");
    let url = opened["url"].as_str().unwrap().to_string();
    let wasm_lease: LeaseId = opened["lease"].as_str().unwrap().parse().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let page = get_page(&url).await.unwrap();
        assert!(page.contains("Hello from a Cairn WASM service") && page.contains("motd.txt"), "{page}");
        let mut x: u64 = 88_172_645_463_325_252;
        for _ in 0..1000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        assert_eq!(get_page(&format!("{url}work?n=1000")).await.unwrap(), format!("{x}\n"));
        let echo = http.post(format!("{url}echo")).body("granite").send().await.unwrap();
        assert_eq!(echo.text().await.unwrap(), "granite");
        let missing = http.get(format!("{url}nowhere")).send().await.unwrap();
        assert_eq!(missing.status(), 404);
        // A request past its fuel gets a 5xx, and the next one is served as usual.
        let heavy = http.get(format!("{url}work?n=100000000000")).send().await.unwrap();
        assert!(heavy.status().is_server_error(), "{}", heavy.status());
        assert_eq!(get_page(&format!("{url}health")).await.unwrap(), "ok\n");
    });
    let (ok, _, err) = as_client(&["service", "close", &wasm_lease.to_string()]);
    assert!(ok, "{err}");

    // The killed provider, restarted, removes the container, namespace and volume it left.
    let services = root.join(format!("provider-{victim}/runtime/services"));
    let state = services.join("runc");
    let left = || {
        let sandboxes = std::fs::read_dir(&services)
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        ["svc-", "vol-"].iter().any(|p| e.file_name().to_string_lossy().starts_with(p))
                    })
                    .count()
            })
            .unwrap_or(0);
        std::fs::read_dir(&state).map(|d| d.count()).unwrap_or(0) + sandboxes
    };
    let mounted =
        || std::fs::read_to_string("/proc/self/mounts").unwrap().contains(services.to_str().unwrap());
    assert!(std::fs::read_dir(&state).unwrap().count() > 0, "SIGKILL left the container running");
    assert!(mounted(), "SIGKILL left the volume mounted");
    providers[victim].spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while left() > 0 || mounted() {
        assert!(std::time::Instant::now() < deadline, "the restarted provider did not clean up");
        std::thread::sleep(Duration::from_millis(200));
    }
}
