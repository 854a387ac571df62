//! The compute path end to end: real node, real providers, real wasmtime, real blob transfer.

use std::time::Duration;

use cairn_state::model::TaskState;
use cairn_types::{Amount, SecretKey};

use crate::harness::*;

#[test]
fn the_devnet_runs_its_demo_jobs_to_settled_verified_outputs() {
    let _heavy = heavy();
    // The container demo runs where runc and a static busybox are installed, the render demo
    // where Blender is too: here, always.
    render_tools();
    let dir = TempDir::new("demo");
    let base = free_base(3);
    let (ok, stdout, stderr) = cairn(
        &[
            "devnet",
            "--fresh",
            "--exit-when-done",
            "--json",
            "--home",
            dir.0.to_str().unwrap(),
            "--p2p-port",
            &base.to_string(),
            "--api-port",
            &(base + 100).to_string(),
            "--provider-port",
            &(base + 200).to_string(),
            "--gateway-port",
            &(base + 300).to_string(),
        ],
        &[],
    );
    assert!(ok, "devnet failed:\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert!(v["api"].as_str().unwrap().starts_with("http://127.0.0.1:"));
    let jobs = v["jobs"].as_array().unwrap();
    let names: Vec<&str> = jobs.iter().map(|j| j["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "primes",
            "mandelbrot",
            "classifier",
            "svg-render",
            "training",
            "embeddings",
            "wordfreq",
            "render",
            "chat"
        ]
    );
    assert!(v["gateway"].as_str().unwrap().ends_with("/v1"));
    assert!(!v["chat"]["reply"].as_str().unwrap().trim().is_empty(), "{}", v["chat"]);
    let embeddings = std::fs::read_to_string(dir.0.join("results/embeddings/results.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> =
        embeddings.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 8);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["index"], i as u64);
        assert_eq!(l["embeddings"][0].as_array().unwrap().len(), 384);
    }
    assert!(stderr.contains("curl -N http://127.0.0.1:"), "a streaming curl example is shown: {stderr}");
    for j in jobs {
        assert_eq!(j["state"], "settled", "{j}");
        let providers = j["providers"].as_array().unwrap();
        assert!(providers.contains(&j["provider"]), "{j}");
        for t in j["tasks"].as_array().unwrap() {
            assert!(providers.contains(&t["provider"]), "every task's provider is listed: {j}");
        }
        assert_eq!(j["id"].as_str().unwrap().len(), 64);
        assert_eq!(j["output"].as_str().unwrap().len(), 64);
        assert!(j["price_paid"].as_str().unwrap().ends_with("CRN"));
        assert!(j["provider"].as_str().unwrap().starts_with("cairn1"));
        for t in j["tasks"].as_array().unwrap() {
            for f in t["files"].as_array().unwrap() {
                assert!(std::path::Path::new(f.as_str().unwrap()).exists(), "{f}");
            }
        }
    }
    let words = std::fs::read_to_string(dir.0.join("results/wordfreq/task-0/top-words.txt")).unwrap();
    assert!(words.lines().next().is_some_and(|l| l.ends_with(" the")), "the container demo's table: {words}");
    let frame = dir.0.join("results/mandelbrot/task-2/frame-2.png");
    assert_eq!(&std::fs::read(frame).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
    let curve = dir.0.join("results/training/loss.png");
    assert_eq!(&std::fs::read(curve).unwrap()[..8], b"\x89PNG\r\n\x1a\n", "the training demo's loss curve");
    let training = jobs.iter().find(|j| j["name"] == "training").unwrap();
    let last = training["training"]["rounds"].as_array().unwrap().last().unwrap().clone();
    assert!(last["eval_accuracy"].as_f64().unwrap() > 0.8, "{last}");
    // The Blender animation: every frame assembled from verified tiles, and the video.
    let render = dir.0.join("results/render");
    let frames: Vec<_> = std::fs::read_dir(render.join("frames")).unwrap().flatten().collect();
    assert_eq!(frames.len(), 16, "one frame per task");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(render.join("frames.json")).unwrap()).unwrap();
    assert_eq!(manifest["frames"].as_array().unwrap().len(), 16);
    let first = cairn_runtime::render::frames::decode(&std::fs::read(frames[0].path()).unwrap()).unwrap();
    assert_eq!((first.width, first.height), (320, 180));
    assert!(std::fs::metadata(render.join("video.mp4")).unwrap().len() > 1000, "the video is written");
    assert_eq!(&std::fs::read(render.join("animation.png")).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
    let svg = dir.0.join("results/svg-render/task-0/scene.png");
    assert_eq!(&std::fs::read(svg).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
    assert!(stderr.contains("settled:"), "the path is shown: {stderr}");
    // Newcomers' results are all audited: other providers re-ran them, and nobody was slashed.
    let verification = &v["verification"];
    assert!(verification["confirmed"].as_u64().unwrap() > 0, "{verification}");
    assert_eq!(verification["slashed"], serde_json::json!([]), "{verification}");
    assert!(stderr.contains("results confirmed by an independent re-run"), "{stderr}");
    // Providers competed on price: the WASM jobs' tasks went at more than one posted price.
    let wasm_prices: std::collections::BTreeSet<String> = jobs
        .iter()
        .filter(|j| j["kind"] == "wasm")
        .flat_map(|j| j["tasks"].as_array().unwrap().iter().map(|t| t["price"].as_str().unwrap().to_string()))
        .collect();
    assert!(wasm_prices.contains("0.05 CRN") && wasm_prices.len() >= 2, "{wasm_prices:?}");
}

fn fund(api: &str, root: &std::path::Path, to: &SecretKey, amount: &str) {
    let (ok, _, err) = cairn(
        &[
            "wallet",
            "send",
            &to.address().to_string(),
            amount,
            "--key-file",
            root.join("faucet.key").to_str().unwrap(),
            "--api",
            api,
        ],
        &[],
    );
    assert!(ok, "funding failed: {err}");
}

#[test]
fn a_provider_killed_mid_task_is_replaced_after_the_deadline_and_the_client_still_gets_its_output() {
    let dir = TempDir::new("kill-provider");
    let base = create_network(&dir.0, 1, 2);
    let node = NodeProc::start(&dir.0.join("validator-0"), base + 100);
    let mut providers =
        [ProviderProc::start(&dir.0.join("provider-0")), ProviderProc::start(&dir.0.join("provider-1"))];
    let client_key = SecretKey::from_seed([42; 32]);
    std::fs::write(dir.0.join("me.key"), hex::encode(client_key.seed())).unwrap();
    let rt = rt();
    rt.block_on(async {
        let c = node.client();
        c.wait_for_height(2, READY).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let v: serde_json::Value = c.get("/api/providers").await.unwrap();
            if v["providers"].as_array().unwrap().len() == 2 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "providers did not register:\n{}",
                providers[0].log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    fund(&node.api, &dir.0, &client_key, "100 CRN");
    let spec = dir.0.join("frame.yaml");
    std::fs::copy(testdata("wasm/mandelbrot.wasm"), dir.0.join("mandelbrot.wasm")).unwrap();
    std::fs::write(
        &spec,
        "kind: wasm\nworkload: mandelbrot.wasm\nargs: [\"1280\", \"960\", \"1\", \"1024\"]\nmax_price_per_task: 1 CRN\ndeadline_blocks: 40\nlimits:\n  fuel: 200000000000\n",
    )
    .unwrap();
    let before = rt.block_on(node.client().account(&client_key.address())).unwrap().balance;
    let job = submit_spec(&spec, &node.api, &dir.0.join("me.key"));
    rt.block_on(async {
        // Kill whichever provider starts running it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let victim = 'found: loop {
            for (i, p) in providers.iter().enumerate() {
                if p.started_a_task().await {
                    break 'found i;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "no provider started the task");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        providers[victim].kill9();
        let c = node.client();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let mut respawned = false;
        let view = loop {
            let v: serde_json::Value = c.get(&format!("/api/jobs/{job}")).await.unwrap();
            let task: cairn_state::model::Task = serde_json::from_value(v["tasks"][0].clone()).unwrap();
            // The killed provider comes back once the task has moved on: it releases what it
            // no longer holds, and it is the only other provider to audit the new result.
            if task.attempt == 2 && !respawned {
                providers[victim].spawn();
                respawned = true;
            }
            if task.state.is_final() {
                break (v, task);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the task never settled: {v}\n{}",
                providers[1 - victim].log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let (v, task) = view;
        assert_eq!(task.attempt, 2, "re-auctioned after the missed deadline");
        let TaskState::Settled { price, .. } = task.state else { panic!("not settled: {v}") };
        assert_eq!(v["escrow"], "0 CRN", "escrow balanced: nothing left held");
        let after = c.account(&client_key.address()).await.unwrap().balance;
        let fee = Amount::from_base_units(1_000);
        let verification_fee = Amount::from_base_units(100_000);
        assert_eq!(
            before.checked_sub(after).unwrap(),
            price.checked_add(verification_fee).unwrap().checked_add(fee).unwrap(),
            "the client paid the price, the verification fee and one tx fee, no more"
        );
        let audited = v["tasks"][0]["id"].as_str().unwrap().to_string();
        // The auditor logs its verdict once its receipt arrives, which may be after settlement.
        let line = format!("audit submitted task={}", &audited[..8]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !providers[victim].log().contains(&line) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            providers[victim].log().contains(&line),
            "the restarted provider audited the new result:\n{}",
            providers[victim].log()
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let s = providers[victim].status().await;
            if s["tasks"].as_object().is_some_and(|t| t.is_empty()) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the restarted provider kept a dead task: {s}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let out_dir = dir.0.join("out");
    let (ok, out, err) = cairn(
        &["job", "result", &job.to_hex(), "--out", out_dir.to_str().unwrap(), "--api", &node.api],
        &[("HOME", dir.0.to_str().unwrap())],
    );
    assert!(ok, "{out}{err}");
    let png = std::fs::read(out_dir.join("task-0/frame-0.png")).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(&png[..4], b"\x89PNG");
}

#[test]
fn bad_jobs_and_bad_data_get_clear_errors_and_lose_nothing() {
    let dir = TempDir::new("bad-jobs");
    let base = create_network(&dir.0, 1, 1);
    let node = NodeProc::start(&dir.0.join("validator-0"), base + 100);
    let provider = ProviderProc::start(&dir.0.join("provider-0"));
    rt().block_on(async { node.client().wait_for_height(2, READY).await.unwrap() });
    let key = dir.0.join("client.key");
    let home = [("HOME", dir.0.to_str().unwrap())];
    let submit = |yaml: &str| {
        let spec = dir.0.join("job.yaml");
        std::fs::write(&spec, yaml).unwrap();
        cairn(
            &[
                "job",
                "submit",
                spec.to_str().unwrap(),
                "--no-watch",
                "--key-file",
                key.to_str().unwrap(),
                "--api",
                &node.api,
            ],
            &home,
        )
    };
    // A client without funds is told so: the node keeps no upload from an unfunded account.
    let (ok, _, err) = submit(&format!(
        "kind: wasm\nworkload: {}\nmax_price_per_task: 1 CRN\n",
        testdata("wasm/sieve.wasm").display()
    ));
    assert!(!ok && err.contains("unfunded") && err.contains("uploading needs at least"), "{err}");
    fund(&node.api, &dir.0, &cairn_node_key(&key), "50 CRN");
    let before = rt().block_on(node.client().account(&cairn_node_key(&key).address())).unwrap();
    // Not WebAssembly.
    std::fs::write(dir.0.join("junk.wasm"), b"\0asm\x01\0\0\0junk").unwrap();
    let (ok, _, err) = submit("kind: wasm\nworkload: junk.wasm\nmax_price_per_task: 1 CRN\n");
    assert!(!ok && err.contains("not a valid WebAssembly module"), "{err}");
    // An input that no one has.
    let missing = cairn_types::ContentId::of(b"nobody has this").to_hex();
    let (ok, _, err) = submit(&format!(
        "kind: wasm\nworkload: {}\nmax_price_per_task: 1 CRN\ninputs:\n  - name: x\n    id: {missing}\n    size: 5\n",
        testdata("wasm/sieve.wasm").display()
    ));
    assert!(!ok && err.contains("is not at"), "ok={ok} {err}");
    // A spec that breaks a rule, or names an unknown field.
    let (ok, _, err) = submit(&format!(
        "kind: wasm\nworkload: {}\nmax_price_per_task: 1 CRN\ntasks: 0\n",
        testdata("wasm/sieve.wasm").display()
    ));
    assert!(!ok && err.contains("tasks must be"), "{err}");
    let (ok, _, err) = submit(&format!(
        "kind: wasm\nworkload: {}\nmax_price_per_task: 1 CRN\ncolour: blue\n",
        testdata("wasm/sieve.wasm").display()
    ));
    assert!(!ok && err.contains("unknown field"), "{err}");
    // Render jobs: a workload that is not a .blend, a billion frames, a 100k × 100k frame.
    std::fs::write(dir.0.join("scene.blend"), b"PK\x03\x04 a zip, not a scene").unwrap();
    let render =
        |r: &str| format!("kind: render\nworkload: scene.blend\nmax_price_per_task: 1 CRN\nrender: {r}\n");
    let (ok, _, err) = submit(&render(
        "{ blender: '3.4.1', frames: { start: 1, end: 2 }, resolution: { width: 64, height: 64 } }",
    ));
    assert!(!ok && err.contains("not a .blend file"), "{err}");
    std::fs::write(dir.0.join("scene.blend"), b"BLENDER-v304 and then some").unwrap();
    let (ok, _, err) = submit(&render(
        "{ blender: '3.4.1', frames: { start: 1, end: 1000000000 }, resolution: { width: 64, height: 64 } }",
    ));
    assert!(!ok && err.contains("render.frames"), "{err}");
    let (ok, _, err) = submit(&render(
        "{ blender: '3.4.1', frames: { start: 1, end: 2 }, resolution: { width: 100000, height: 100000 } }",
    ));
    assert!(!ok && err.contains("render.resolution"), "{err}");
    // With Blender on the client's machine, a scene Blender cannot read, or one that refers to
    // a texture the job does not carry, is refused before it is paid for.
    render_tools();
    let small = "{ blender: '3.4.1', frames: { start: 1, end: 2 }, resolution: { width: 64, height: 64 } }";
    let (ok, _, err) = submit(&render(small));
    assert!(
        !ok && err.contains("the scene cannot be rendered") && err.contains("Failed to read blend file"),
        "{err}"
    );
    let script = dir.0.join("textured.py");
    std::fs::write(
        &script,
        "import sys, bpy\nm = bpy.data.materials.new('m'); m.use_nodes = True\nt = m.node_tree.nodes.new('ShaderNodeTexImage')\nt.image = bpy.data.images.new('wood', 4, 4); t.image.source = 'FILE'; t.image.filepath = '//wood.png'\nbpy.ops.mesh.primitive_plane_add(); bpy.context.object.data.materials.append(m)\nbpy.ops.wm.save_as_mainfile(filepath=sys.argv[-1])\n",
    )
    .unwrap();
    let made = std::process::Command::new("blender")
        .args(["-b", "--factory-startup", "-noaudio", "--python"])
        .arg(&script)
        .arg("--")
        .arg(dir.0.join("scene.blend"))
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stdout));
    let (ok, _, err) = submit(&render(small));
    assert!(!ok && err.contains("//wood.png (add an input named \"wood.png\")"), "{err}");
    // Nothing was spent on refused jobs.
    let after = rt().block_on(node.client().account(&cairn_node_key(&key).address())).unwrap();
    assert_eq!(before.balance, after.balance);
    // A real job settles; then the provider's copy of the output is corrupted on disk: the
    // client's fetch detects it instead of handing over bad data.
    let (ok, out, err) = submit(&format!(
        "kind: wasm\nworkload: {}\nargs: [\"100000\"]\nmax_price_per_task: 1 CRN\n",
        testdata("wasm/sieve.wasm").display()
    ));
    assert!(ok, "{out}{err}");
    let job = out.split_whitespace().last().unwrap().to_string();
    let (ok, out, err) = cairn(&["job", "watch", &job, "--json", "--api", &node.api], &home);
    assert!(ok, "{out}{err}\n{}", provider.log());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let output = v["tasks"][0]["state"]["output"].as_str().unwrap().to_string();
    let blob = dir.0.join("provider-0/blobs/blobs").join(&output);
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let (ok, out, err) = cairn(
        &["job", "result", &job, "--out", dir.0.join("res").to_str().unwrap(), "--api", &node.api],
        &home,
    );
    assert!(!ok, "corrupted output must not be accepted: {out}");
    assert!(err.contains("does not match"), "the corruption is named, not hidden behind a miss: {err}");
    assert!(!dir.0.join("res/task-0").exists());
    // A workload named by id that is not WebAssembly (the CLI cannot check bytes it does not
    // have): the provider finds out, commits the failure as the task's result instead of
    // retrying it forever, and the client reads why.
    let chain_id = rt().block_on(node.client().status()).unwrap().chain_id;
    let uploader = cairn_types::upload::UploadAuth { key: cairn_node_key(&key), chain_id };
    let junk = rt()
        .block_on(
            cairn_blobs::Fetcher::new()
                .with_uploader(uploader)
                .upload(&node.api, b"\0asm\x01\0\0\0junk".to_vec()),
        )
        .unwrap();
    let (ok, out, err) = submit(&format!("kind: wasm\nworkload: {junk}\nmax_price_per_task: 1 CRN\n"));
    assert!(ok, "{out}{err}");
    let job = out.split_whitespace().last().unwrap().to_string();
    let (ok, out, err) = cairn(&["job", "watch", &job, "--json", "--api", &node.api], &home);
    assert!(ok, "{out}{err}\n{}", provider.log());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tasks"][0]["state"]["state"], "settled", "{v}");
    let (ok, out, err) = cairn(
        &["job", "result", &job, "--out", dir.0.join("junk-res").to_str().unwrap(), "--api", &node.api],
        &home,
    );
    assert!(ok, "{out}{err}");
    let exit = std::fs::read_to_string(dir.0.join("junk-res/task-0/.cairn/exit")).unwrap();
    assert_eq!(exit, "invalid workload");
    assert_eq!(provider.log().matches("the job cannot run").count(), 1, "run once, not in a loop");
}

fn cairn_node_key(path: &std::path::Path) -> SecretKey {
    let text = std::fs::read_to_string(path).unwrap();
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed).unwrap();
    SecretKey::from_seed(seed)
}

/// One validator and one provider, running a long frame: returns them and the job once the
/// provider has started the task.
fn one_provider_running_a_frame(name: &str) -> (TempDir, NodeProc, ProviderProc, cairn_types::JobId) {
    let dir = TempDir::new(name);
    let base = create_network(&dir.0, 1, 1);
    let node = NodeProc::start(&dir.0.join("validator-0"), base + 100);
    let provider = ProviderProc::start(&dir.0.join("provider-0"));
    let client_key = SecretKey::from_seed([43; 32]);
    std::fs::write(dir.0.join("me.key"), hex::encode(client_key.seed())).unwrap();
    wait_for_providers(&node, std::slice::from_ref(&provider));
    fund(&node.api, &dir.0, &client_key, "100 CRN");
    std::fs::copy(testdata("wasm/mandelbrot.wasm"), dir.0.join("mandelbrot.wasm")).unwrap();
    let spec = dir.0.join("frame.yaml");
    std::fs::write(
        &spec,
        "kind: wasm\nworkload: mandelbrot.wasm\nargs: [\"1280\", \"960\", \"1\", \"1024\"]\nmax_price_per_task: 1 CRN\ndeadline_blocks: 600\nlimits:\n  fuel: 200000000000\n",
    )
    .unwrap();
    let job = submit_spec(&spec, &node.api, &dir.0.join("me.key"));
    rt().block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !provider.started_a_task().await {
            assert!(tokio::time::Instant::now() < deadline, "the task never started:\n{}", provider.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (dir, node, provider, job)
}

/// Wait until the job's only task is final; returns it.
fn final_task(
    node: &NodeProc,
    job: &cairn_types::JobId,
    provider: &ProviderProc,
) -> cairn_state::model::Task {
    rt().block_on(async {
        let c = node.client();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        loop {
            if let Ok(v) = c.get::<serde_json::Value>(&format!("/api/jobs/{job}")).await {
                let task: cairn_state::model::Task = serde_json::from_value(v["tasks"][0].clone()).unwrap();
                if task.state.is_final() {
                    return task;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "the task never settled:\n{}", provider.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

#[test]
fn a_node_outage_does_not_stop_running_work_and_the_commit_lands_after_it() {
    let (_dir, mut node, provider, job) = one_provider_running_a_frame("node-outage");
    // The node goes away while the task runs, and stays away past the task's run time.
    node.kill9();
    std::thread::sleep(Duration::from_secs(5));
    let s = rt().block_on(provider.status());
    assert!(
        s["tasks"].as_object().is_some_and(|t| !t.is_empty()),
        "the provider dropped its task during the outage: {s}"
    );
    node.spawn();
    let task = final_task(&node, &job, &provider);
    assert!(matches!(task.state, TaskState::Settled { .. }), "{task:?}");
    assert_eq!(task.attempt, 1, "the same provider finished it; nothing was re-auctioned");
}

#[test]
fn a_provider_restarted_mid_task_resumes_its_own_task_before_the_deadline() {
    let (_dir, node, mut provider, job) = one_provider_running_a_frame("resume-provider");
    // SIGKILL the provider while the task runs, and start it again at once.
    provider.kill9();
    provider.spawn();
    let task = final_task(&node, &job, &provider);
    assert!(matches!(task.state, TaskState::Settled { .. }), "{task:?}");
    assert_eq!(task.attempt, 1, "the restarted provider finished its own task; no re-auction");
}

#[test]
fn a_devnet_whose_provider_cannot_start_says_which_and_why() {
    let dir = TempDir::new("provider-fails");
    let base = free_base(2);
    // Something else already listens on provider-1's endpoint.
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", base + 201)).unwrap();
    let (ok, _, stderr) = cairn(
        &[
            "devnet",
            "--fresh",
            "--no-demo",
            "--no-models",
            "--exit-when-done",
            "--providers",
            "2",
            "--home",
            dir.0.to_str().unwrap(),
            "--p2p-port",
            &base.to_string(),
            "--api-port",
            &(base + 100).to_string(),
            "--provider-port",
            &(base + 200).to_string(),
        ],
        &[],
    );
    assert!(!ok, "the devnet cannot run without provider-1");
    assert!(stderr.contains("provider-1 exited"), "{stderr}");
    // The end of the provider's own log is shown, so the user need not go looking for it.
    assert!(stderr.contains("provider.log") && stderr.contains("in use"), "{stderr}");
}

#[test]
fn sigterm_to_the_devnet_stops_every_process_it_started() {
    let dir = TempDir::new("sigterm");
    let base = free_base(2);
    let log = std::fs::File::create(dir.0.join("devnet.log")).unwrap();
    let mut devnet = std::process::Command::new(BIN)
        .args(["devnet", "--fresh", "--no-demo", "--no-models", "--providers", "1", "--home"])
        .arg(&dir.0)
        .args(["--p2p-port", &base.to_string(), "--api-port", &(base + 100).to_string()])
        .args(["--provider-port", &(base + 200).to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let api = format!("http://127.0.0.1:{}", base + 100);
    let provider = format!("http://127.0.0.1:{}", base + 200);
    let up = |url: &str| {
        rt().block_on(async {
            reqwest::Client::new()
                .get(url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !(up(&format!("{api}/api/status")) && up(&format!("{provider}/provider/status"))) {
        assert!(
            std::time::Instant::now() < deadline,
            "the devnet did not come up: {}",
            std::fs::read_to_string(dir.0.join("devnet.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &devnet.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let status = devnet.wait().unwrap();
    assert_eq!(status.code(), Some(143), "exits as a SIGTERM'd process would: {status:?}");
    // Its validator and provider went with it: neither answers any more.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!up(&format!("{api}/api/status")), "the validator still runs");
    assert!(!up(&format!("{provider}/provider/status")), "the provider still runs");
}
