//! Training end to end: a real node, real providers training on candle, the chain's rounds.
//! One network serves every scenario (it is the expensive part).

use std::path::Path;
use std::time::Duration;

use cairn_state::model::{Task, TaskState};
use cairn_types::{ContentId, JobId, SecretKey};

use crate::harness::*;

fn examples(rel: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples").join(rel)
}

/// The digits classifier: 3 rounds, 2 shards. Light (each task well under a second).
fn digits_spec(dir: &Path) -> std::path::PathBuf {
    std::fs::copy(examples("train-digits/digits.csv"), dir.join("digits.csv")).unwrap();
    let spec = dir.join("digits.yaml");
    std::fs::write(
        &spec,
        "kind: train\nworkload: digits.csv\nmax_price_per_task: 0.05 CRN\ndeadline_blocks: 60\ntrain:\n  model: { arch: mlp, hidden: 64 }\n  optimizer: { learning_rate: 0.01 }\n  rounds: 3\n  width: 2\n  local_steps: 25\n  batch_size: 32\n  seed: 7\n",
    )
    .unwrap();
    spec
}

/// The language model on Macbeth: shard tasks of a few seconds, so one can be killed mid-run;
/// a deadline of a minute or so, after which a killed provider's task is re-auctioned.
fn lm_spec(dir: &Path) -> std::path::PathBuf {
    std::fs::copy(examples("train-shakespeare/macbeth.txt"), dir.join("macbeth.txt")).unwrap();
    let spec = dir.join("lm.yaml");
    std::fs::write(
        &spec,
        "kind: train\nworkload: macbeth.txt\nmax_price_per_task: 0.1 CRN\ndeadline_blocks: 240\nmax_attempts: 4\nlimits: { wall_ms: 600000 }\ntrain:\n  model: { arch: gpt, layers: 2, d_model: 64, heads: 4, context: 64 }\n  optimizer: { learning_rate: 0.003 }\n  rounds: 3\n  width: 2\n  local_steps: 20\n  batch_size: 16\n  seed: 1\n",
    )
    .unwrap();
    spec
}

fn tasks(node: &NodeProc, job: &JobId) -> Vec<Task> {
    let v: serde_json::Value = rt().block_on(node.client().get(&format!("/api/jobs/{job}"))).unwrap();
    serde_json::from_value(v["tasks"].clone()).unwrap()
}

/// Wait until every task of `job` is final.
fn wait_final(node: &NodeProc, job: &JobId, providers: &[ProviderProc], secs: u64) -> Vec<Task> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let t = tasks(node, job);
        if t.iter().all(|t| t.state.is_final()) {
            return t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job {job} did not finish: {:?}\n{}",
            t.iter().map(|t| t.state.name()).collect::<Vec<_>>(),
            providers.iter().map(|p| p.log()).collect::<Vec<_>>().join("\n----\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The final checkpoint's commitment: the last aggregation's output.
fn final_output(tasks: &[Task]) -> ContentId {
    match &tasks.last().unwrap().state {
        TaskState::Settled { output, .. } => *output,
        other => panic!("the last round did not settle: {other:?}"),
    }
}

#[test]
fn a_training_job_converges_repeats_bit_for_bit_and_survives_a_provider_killed_mid_round() {
    let _heavy = heavy();
    let dir = TempDir::new("train");
    let base = create_network(&dir.0, 1, 3);
    let node = NodeProc::start(&dir.0.join("validator-0"), base + 100);
    let mut providers: Vec<ProviderProc> =
        (0..3).map(|i| ProviderProc::start(&dir.0.join(format!("provider-{i}")))).collect();
    wait_for_providers(&node, &providers);
    let client_key = SecretKey::from_seed([7; 32]);
    let key = dir.0.join("me.key");
    std::fs::write(&key, hex::encode(client_key.seed())).unwrap();
    let (ok, _, err) = cairn(
        &[
            "wallet",
            "send",
            &client_key.address().to_string(),
            "500 CRN",
            "--key-file",
            dir.0.join("faucet.key").to_str().unwrap(),
            "--api",
            &node.api,
        ],
        &[],
    );
    assert!(ok, "funding failed: {err}");

    // 0. Bad input is refused before anything is paid: a dataset that does not fit, a
    //    learning rate that is not a number, a round count of 0.
    let before = rt().block_on(node.client().account(&client_key.address())).unwrap().balance;
    std::fs::write(dir.0.join("ragged.csv"), "1,2,3,0\n4,5,1\n6,7,8,1\n").unwrap();
    let bad = [
        (
            "ragged.yaml",
            "workload: ragged.csv\ntrain:\n  model: { arch: mlp, hidden: 8 }\n  optimizer: { learning_rate: 0.01 }\n  rounds: 2\n  width: 1\n",
            "line 2",
        ),
        (
            "lr.yaml",
            "workload: ragged.csv\ntrain:\n  model: { arch: mlp, hidden: 8 }\n  optimizer: { learning_rate: fast }\n  rounds: 2\n  width: 1\n",
            "learning_rate",
        ),
        (
            "zero.yaml",
            "workload: ragged.csv\ntrain:\n  model: { arch: mlp, hidden: 8 }\n  optimizer: { learning_rate: 0.01 }\n  rounds: 0\n  width: 1\n",
            "rounds",
        ),
    ];
    for (name, body, why) in bad {
        let path = dir.0.join(name);
        std::fs::write(&path, format!("kind: train\nmax_price_per_task: 0.05 CRN\n{body}")).unwrap();
        let (ok, _, err) = cairn(
            &[
                "job",
                "submit",
                path.to_str().unwrap(),
                "--key-file",
                key.to_str().unwrap(),
                "--api",
                &node.api,
            ],
            &[],
        );
        assert!(!ok && err.contains(why), "{name} is refused naming {why}: {err}");
    }
    let after = rt().block_on(node.client().account(&client_key.address())).unwrap().balance;
    assert_eq!(before, after, "nothing was paid for refused jobs");

    // 1. The classifier, followed by `cairn job submit`: rounds and their loss as they land.
    let spec = digits_spec(&dir.0);
    let (ok, out, err) = cairn(
        &["job", "submit", spec.to_str().unwrap(), "--key-file", key.to_str().unwrap(), "--api", &node.api],
        &[],
    );
    assert!(ok, "submit failed: {err}");
    for r in 1..=3 {
        assert!(err.contains(&format!("round {r}: step")), "round {r} is reported:\n{err}");
    }
    let job: JobId = out
        .lines()
        .find_map(|l| l.strip_prefix("submitted job "))
        .expect("the job id is printed")
        .trim()
        .parse()
        .unwrap();
    let first = wait_final(&node, &job, &providers, 60);
    let results = dir.0.join("digits-results");
    let (ok, out, err) = cairn(
        &["job", "result", &job.to_hex(), "--out", results.to_str().unwrap(), "--api", &node.api, "--json"],
        &[],
    );
    assert!(ok, "result failed: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rounds = v["training"]["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 3, "{v}");
    let loss = |r: &serde_json::Value| r["eval_loss"].as_f64().unwrap();
    assert!(loss(&rounds[2]) < loss(&rounds[0]), "held-out loss falls: {rounds:?}");
    let accuracy = rounds[2]["eval_accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.8, "a trained digit classifier: {accuracy}");
    assert_eq!(&std::fs::read(results.join("loss.png")).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(std::fs::read_to_string(results.join("metrics.csv")).unwrap().lines().count(), 4);
    assert!(
        results.join("model/model.json").exists() && results.join("model/checkpoint.safetensors").exists()
    );

    // 2. The same job again: other providers, other blocks, the same final weights.
    let again = submit_spec(&spec, &node.api, &key);
    let second = wait_final(&node, &again, &providers, 60);
    assert_eq!(final_output(&first), final_output(&second), "bit-identical final checkpoint");

    // 3. The language model, undisturbed, then with the provider running a round-2 shard
    //    SIGKILLed mid-run: its task is re-auctioned from the committed checkpoint, and the
    //    job ends with the same weights.
    let lm = lm_spec(&dir.0);
    let calm = submit_spec(&lm, &node.api, &key);
    let calm = final_output(&wait_final(&node, &calm, &providers, 240));
    let stormy = submit_spec(&lm, &node.api, &key);
    let victim = 'found: loop {
        let t = tasks(&node, &stormy);
        // Task 3 and 4 are round 2's shards.
        for task in &t[3..5] {
            if let TaskState::Assigned { provider, .. } = task.state {
                for (i, p) in providers.iter().enumerate() {
                    let status = rt().block_on(p.status());
                    let running = status["provider"].as_str() == Some(&provider.to_string())
                        && status["tasks"][task.id.to_hex()]["started_ms"].is_u64();
                    if running {
                        break 'found i;
                    }
                }
            }
        }
        assert!(t.iter().all(|t| !t.state.is_final() || t.index < 3), "round 2 finished before a kill");
        std::thread::sleep(Duration::from_millis(30));
    };
    providers[victim].kill9();
    let after = wait_final(&node, &stormy, &providers, 300);
    assert!(after[3..5].iter().any(|t| t.attempt > 1), "the killed shard ran again elsewhere: {after:?}");
    assert_eq!(final_output(&after), calm, "the same final weights as the undisturbed run");

    // 4. Train → serve, on a provider still standing.
    let alive = (victim + 1) % providers.len();
    serve_the_trained_model(&dir.0, &node, &stormy, &mut providers[alive]);
}

/// Train → serve: the language model a job trained is packaged, served by a provider and
/// answers a chat completion through the gateway, asked with the official `openai` client.
fn serve_the_trained_model(root: &Path, node: &NodeProc, job: &JobId, provider: &mut ProviderProc) {
    let py = crate::inference::python_with_openai();
    let out = root.join("lm-results");
    let (ok, _, err) =
        cairn(&["job", "result", &job.to_hex(), "--out", out.to_str().unwrap(), "--api", &node.api], &[]);
    assert!(ok, "result failed: {err}");
    let models = root.join("models");
    let env = [("CAIRN_MODELS", models.to_str().unwrap())];
    let (ok, stdout, err) = cairn(
        &["model", "import", out.join("model").to_str().unwrap(), "--name", "macbeth-gpt", "--json"],
        &env,
    );
    assert!(ok, "import failed: {err}");
    let imported: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let id = imported["id"].as_str().unwrap().to_string();
    // The provider now also serves the model (as `cairn provider init --model` would set it up).
    provider.kill9();
    let home = &provider.proc_.home;
    let package = cairn_blobs::BlobStore::open(&models).unwrap().read(&id.parse().unwrap()).unwrap();
    cairn_blobs::BlobStore::open(home.join("blobs")).unwrap().put_bytes(&package).unwrap();
    let path = home.join("provider.toml");
    let mut cfg: toml::Value = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let table = cfg.as_table_mut().unwrap();
    table.insert("models".into(), toml::Value::Array(vec![toml::Value::String(id.clone())]));
    let prices = table.get_mut("prices").and_then(toml::Value::as_table_mut).unwrap();
    prices.insert("inference".into(), toml::Value::String("0.01 CRN".into()));
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    provider.spawn();
    rt().block_on(async {
        let c = node.client();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let v: serde_json::Value = c.get("/api/providers").await.unwrap_or_default();
            let serving = v["providers"].as_array().into_iter().flatten().any(|p| {
                p["info"]["attributes"].as_object().is_some_and(|a| a.contains_key(&format!("model:{id}")))
            });
            if serving {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the model is not served:\n{}", provider.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let port = free_base(1) + 300;
    let gw = crate::inference::start_gateway(root, &node.api, port);
    let out = std::process::Command::new(&py)
        .arg(testdata("openai/trained_check.py"))
        .args(["macbeth-gpt", "MACBETH.\n"])
        .env("OPENAI_BASE_URL", &gw.url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["models"].as_array().unwrap().contains(&serde_json::json!("macbeth-gpt")), "{report}");
    let text = report["content"].as_str().unwrap();
    assert_eq!(text.chars().count(), 60, "60 characters generated: {report}");
    assert_eq!(report["finish_reason"], "length");
    assert_eq!(report["repeats"], true, "temperature 0 repeats exactly: {report}");
    // A model that learned Macbeth writes mostly letters and spaces, not noise.
    let letters = text.chars().filter(|c| c.is_ascii_alphabetic() || *c == ' ' || *c == '\n').count();
    assert!(letters * 10 >= text.chars().count() * 7, "{text:?}");
}
