//! The devnet's demo: fund a client, submit real jobs (the guests in `testdata/wasm`, and
//! resvg, a third-party WASI program), follow each task from submission to settlement, and
//! fetch the verified outputs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context as _, Result};
use cairn_blobs::BlobStore;
use cairn_client::Client;
use cairn_state::model::{Task, TaskState};
use cairn_types::{Address, Amount, JobId, SecretKey, Transfer, TxBody};
use serde_json::{Value, json};

use crate::devnet::{Network, say};
use crate::job::{JobView, fetch_output, job_view, output_of, write_bundle};

const SIEVE: &[u8] = include_bytes!("../../../testdata/wasm/sieve.wasm");
const MANDELBROT: &[u8] = include_bytes!("../../../testdata/wasm/mandelbrot.wasm");
const NN: &[u8] = include_bytes!("../../../testdata/wasm/nn.wasm");
const RESVG: &[u8] = include_bytes!("../../../testdata/wasm/third-party/resvg.wasm");
/// The training demo is the example a user can submit as is.
const TRAIN_DIGITS: &str = include_str!("../../../examples/train-digits/train.yaml");
const DIGITS: &[u8] = include_bytes!("../../../examples/train-digits/digits.csv");
const WORDFREQ: &str = include_str!("../../../examples/container-wordfreq/job.yaml");
const RENDER: &str = include_str!("../../../examples/render-scene/job.yaml");
const MAKE_SCENE: &str = include_str!("../../../examples/render-scene/make_scene.py");
const MACBETH: &str = include_str!("../../../examples/train-shakespeare/macbeth.txt");

const SCENE: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" width="256" height="160">
  <rect width="256" height="160" fill="#10223f"/>
  <circle cx="128" cy="80" r="52" fill="#f26b38" stroke="#ffffff" stroke-width="6"/>
  <path d="M20 150 L128 20 L236 150 Z" fill="none" stroke="#ffd166" stroke-width="5"/>
</svg>
"##;

/// The demo's result.
pub(crate) struct Summary {
    pub(crate) all_settled: bool,
    pub(crate) json: Value,
}

fn features_csv() -> String {
    let mut s = String::new();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..32 {
        let row: Vec<String> = (0..16)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                format!("{:.4}", (x % 20_000) as f64 / 10_000.0 - 1.0)
            })
            .collect();
        s.push_str(&row.join(","));
        s.push('\n');
    }
    s
}

/// The embedding batch: sentences to embed, four requests per task.
fn embedding_requests() -> String {
    [
        "Cairn pays providers only for verified work.",
        "A cairn is a pile of stones that marks a trail.",
        "Providers bond stake and sell GPU time.",
        "Auditors re-run sampled tasks deterministically.",
        "The market matches each job to the cheapest eligible provider.",
        "Mountains are cold at the top.",
        "Escrowed deposits end paid or refunded.",
        "Sentence embeddings map text to vectors.",
    ]
    .iter()
    .map(|s| format!("{}\n", json!({ "input": s })))
    .collect()
}

const EMBEDDINGS_JOB: &str = "kind: inference\nworkload: all-MiniLM-L6-v2\nrequests: embeddings.jsonl\nrequests_per_task: 4\nresources:\n  cpu_millis: 2000\nmax_price_per_task: 0.1 CRN\ndeadline_blocks: 300\n";

/// The demo jobs as (name, manifest YAML). Files are written next to the manifests.
fn jobs(dir: &std::path::Path, models: bool) -> Result<Vec<(&'static str, String)>> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("sieve.wasm"), SIEVE)?;
    std::fs::write(dir.join("mandelbrot.wasm"), MANDELBROT)?;
    std::fs::write(dir.join("nn.wasm"), NN)?;
    std::fs::write(dir.join("resvg.wasm"), RESVG)?;
    std::fs::write(dir.join("scene.svg"), SCENE)?;
    std::fs::write(dir.join("features.csv"), features_csv())?;
    std::fs::write(dir.join("embeddings.jsonl"), embedding_requests())?;
    std::fs::write(dir.join("digits.csv"), DIGITS)?;
    let mut list = vec![
        (
            "primes",
            "kind: wasm\nworkload: sieve.wasm\nargs: [\"20000000\"]\ntasks: 4\nmax_price_per_task: 0.2 CRN\ndeadline_blocks: 300\n".into(),
        ),
        (
            "mandelbrot",
            "kind: wasm\nworkload: mandelbrot.wasm\nargs: [\"320\", \"240\", \"4\", \"256\"]\ntasks: 4\nmax_price_per_task: 0.3 CRN\nbid_window: 4\ndeadline_blocks: 300\n".into(),
        ),
        (
            "classifier",
            "kind: wasm\nworkload: nn.wasm\nargs: [\"features.csv\", \"64\", \"4\", \"7\"]\ninputs:\n  - name: features.csv\n    path: features.csv\nmax_price_per_task: 0.2 CRN\ndeadline_blocks: 300\nconstraints:\n  regions: [DE, US]\n".into(),
        ),
        (
            "svg-render",
            "kind: wasm\nworkload: resvg.wasm\nargs: [\"/in/scene.svg\", \"/out/scene.png\"]\ninputs:\n  - name: scene.svg\n    path: scene.svg\nmax_price_per_task: 0.3 CRN\ndeadline_blocks: 300\n".into(),
        ),
        ("training", TRAIN_DIGITS.into()),
    ];
    if models {
        list.push(("embeddings", EMBEDDINGS_JOB.into()));
    }
    // A sandboxed native program, where this machine runs containers (runc as root, a static
    // busybox for the image).
    if let Some(busybox) = cairn_runtime::container::image::find_busybox()
        && cairn_runtime::container::available(std::path::Path::new("runc"))
    {
        let tree = dir.join("busybox-rootfs");
        let _ = std::fs::remove_dir_all(&tree);
        cairn_runtime::container::image::busybox_tree(&busybox, &tree)?;
        std::fs::write(dir.join("busybox.tar"), cairn_runtime::container::image::build(&tree)?)?;
        std::fs::remove_dir_all(&tree)?;
        std::fs::write(dir.join("macbeth.txt"), MACBETH)?;
        list.push(("wordfreq", WORDFREQ.into()));
        // A Blender animation, where Blender is installed: the example's scene script makes
        // the .blend, and the job names this machine's Blender version.
        if let Some(version) = cairn_runtime::render::blender_version(std::path::Path::new("blender")) {
            make_scene(dir)?;
            list.push(("render", RENDER.replace("blender: \"3.4.1\"", &format!("blender: \"{version}\""))));
        }
    }
    Ok(list)
}

/// Run the example's scene script in this machine's Blender, writing `dir/scene.blend`.
fn make_scene(dir: &std::path::Path) -> Result<()> {
    // Blender saves only to an absolute path (the devnet's data directory may be relative).
    let dir = std::path::absolute(dir).context("resolving the demo directory")?;
    let script = dir.join("make_scene.py");
    std::fs::write(&script, MAKE_SCENE)?;
    let out = std::process::Command::new("blender")
        .args(["-b", "--factory-startup", "-noaudio", "--python-exit-code", "1", "--python"])
        .arg(&script)
        .arg("--")
        .arg(dir.join("scene.blend"))
        .output()
        .context("running blender to make the demo scene")?;
    if !out.status.success() {
        anyhow::bail!("blender could not make the demo scene: {}", String::from_utf8_lossy(&out.stdout));
    }
    Ok(())
}

/// A short chat completion through the gateway; returns the reply and the job it ran as.
async fn chat_via_gateway(gateway: &str, json_out: bool) -> Result<(String, JobId, Value)> {
    let body = json!({
        "model": cairn_runtime::inference::import::QWEN,
        "messages": [{ "role": "user", "content": "Write one short sentence about mountains." }],
        "max_tokens": 32,
        "temperature": 0,
    });
    say(json_out, &format!("[chat] POST {gateway}/chat/completions (model {})", body["model"]));
    let resp = reqwest::Client::new()
        .post(format!("{gateway}/chat/completions"))
        .json(&body)
        .timeout(Duration::from_secs(300))
        .send()
        .await
        .context("calling the gateway")?;
    let status = resp.status();
    let v: Value = resp.json().await.context("reading the gateway's answer")?;
    if !status.is_success() {
        anyhow::bail!("the gateway answered {status}: {v}");
    }
    let reply = v["choices"][0]["message"]["content"].as_str().unwrap_or("").to_string();
    let job: JobId = serde_json::from_value(v["cairn"]["job"].clone()).context("the answer names no job")?;
    Ok((reply, job, v))
}

fn short(a: &Address) -> String {
    let s = a.to_string();
    format!("{}…{}", &s[..10], &s[s.len() - 4..])
}

/// One line describing a task's state, for printing when it changes.
fn describe(
    t: &Task,
    job: &cairn_state::model::Job,
    names: &BTreeMap<Address, String>,
    params: &cairn_state::Params,
) -> String {
    let reserve = job.reserve_per_task;
    // What the metered units are: fuel for WASM, tokens for inference.
    let unit = match job.kind {
        cairn_types::WorkloadKind::Inference => "tokens",
        cairn_types::WorkloadKind::Train => "examples",
        cairn_types::WorkloadKind::Container | cairn_types::WorkloadKind::Render => "ms",
        _ => "fuel",
    };
    let who = |p: &Address| names.get(p).cloned().unwrap_or_else(|| short(p));
    match &t.state {
        TaskState::Open { auction_end, bids } if bids.is_empty() => {
            format!("open for bids until block {auction_end}")
        }
        TaskState::Open { bids, .. } => {
            let list: Vec<String> =
                bids.iter().map(|b| format!("{} {}", who(&b.provider), b.price)).collect();
            format!("bids: {}", list.join(", "))
        }
        TaskState::Assigned { provider, price, deadline, .. } => {
            format!("assigned to {} at {price} (attempt {}, due block {deadline})", who(provider), t.attempt)
        }
        TaskState::Committed { provider, output, settle_at, metering, .. } => {
            format!(
                "committed by {}: output {}, {} {unit}; settles at block {settle_at}",
                who(provider),
                output.short(),
                metering.units
            )
        }
        TaskState::Settled { provider, price, .. } => {
            let fee = price.checked_bps(params.protocol_fee_bps).unwrap_or_default();
            let paid = price.checked_sub(fee).unwrap_or_default();
            let vfee = reserve.checked_sub(job.max_price).unwrap_or_default();
            let refund = reserve.checked_sub(*price).and_then(|r| r.checked_sub(vfee)).unwrap_or_default();
            format!(
                "settled: {} paid {paid}, protocol fee {fee}, verification fee {vfee} to the audit pool, {refund} back to the client",
                who(provider)
            )
        }
        TaskState::Refunded { reason, .. } => format!("refunded to the client ({reason:?})"),
        TaskState::Waiting {} => "waiting for the round before it".to_string(),
    }
}

async fn started_tasks(endpoints: &[String]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in endpoints {
        let c = Client::new(e);
        if let Ok(v) = c.get::<Value>("/provider/status").await
            && let Some(tasks) = v["tasks"].as_object()
        {
            for (id, t) in tasks {
                if !t["started_ms"].is_null() {
                    out.insert(id.clone());
                }
            }
        }
    }
    out
}

/// Run the demo against a started network.
pub(crate) async fn run(net: &Network, json: bool, gateway: Option<&str>) -> Result<Summary> {
    let client = Client::new(&net.apis[0]);
    let (_, _, params) = crate::job::fee_and_chain(&client).await?;
    let faucet = crate::keys::read_seed_file(&net.root.join("faucet.key"))?;
    let key = crate::keys::read_seed_file(&net.root.join("client.key"))?;

    // Fund the client from the faucet with a real transfer.
    let want = Amount::from_base_units(10_000_000_000);
    if client.account(&key.address()).await?.balance < want {
        crate::job::send(&client, &faucet, TxBody::Transfer(Transfer { to: key.address(), amount: want }))
            .await?;
        say(json, &format!("funded the client {} with {want}", key.address()));
    }

    let mut names = BTreeMap::new();
    let listed: Value = client.get("/api/providers").await?;
    for p in listed["providers"].as_array().cloned().unwrap_or_default() {
        let owner: Address = serde_json::from_value(p["owner"].clone())?;
        let endpoint = p["info"]["endpoint"].as_str().unwrap_or("");
        let i = net.providers.iter().position(|e| e == endpoint).unwrap_or(usize::MAX);
        names.insert(owner, format!("provider-{i} ({})", p["info"]["region"].as_str().unwrap_or("?")));
    }

    let dir = net.root.join("demo");
    let list = jobs(&dir, gateway.is_some())?;
    // A long-running service (a lease) beside the jobs, where containers run; opened first, so
    // the jobs' tasks do not hold every provider's CPU when it looks for one.
    let website = crate::service::demo_open(&client, &key, &dir, json).await?;
    let mut submitted: Vec<(&str, JobId)> = Vec::new();
    for (name, manifest) in list {
        let resolved = crate::manifest::resolve(&manifest, &dir, &client, &key)
            .await
            .with_context(|| format!("demo job {name}"))?;
        let kind = resolved.spec.kind;
        let tasks = resolved.spec.tasks;
        let id = crate::job::submit(&client, &key, resolved.spec)
            .await
            .with_context(|| format!("submitting demo job {name}"))?;
        say(json, &format!("[{name}] submitted job {} ({kind}, {tasks} task(s))", id.short()));
        submitted.push((name, id));
    }

    // The chat request runs alongside the jobs above; its job joins the list once answered.
    let mut chat = Value::Null;
    let mut chat_call = gateway.map(|g| {
        let g = g.to_string();
        tokio::spawn(async move { chat_via_gateway(&g, json).await })
    });

    let mut last: BTreeMap<(JobId, u32), String> = BTreeMap::new();
    let mut running: BTreeSet<(JobId, u32)> = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let views: Vec<(String, JobView)> = loop {
        if chat_call.as_ref().is_some_and(tokio::task::JoinHandle::is_finished)
            && let Some(call) = chat_call.take()
        {
            let (reply, job, answer) = call.await.context("the chat request")??;
            say(
                json,
                &format!(
                    "[chat] job {}: {:?} ({} tokens)",
                    job.short(),
                    reply,
                    answer["usage"]["total_tokens"]
                ),
            );
            chat = json!({ "reply": reply, "job": job, "usage": answer["usage"], "provider": answer["cairn"]["provider"] });
            submitted.push(("chat", job));
        }
        let mut views = Vec::new();
        let started = started_tasks(&net.providers).await;
        for (name, id) in &submitted {
            let v = job_view(&client, id).await?;
            for t in &v.tasks {
                let line = describe(t, &v.job, &names, &params);
                if last.get(&(*id, t.index)) != Some(&line) {
                    say(json, &format!("[{name}] task {}: {line}", t.index));
                    last.insert((*id, t.index), line);
                }
                if started.contains(&t.id.to_hex())
                    && matches!(t.state, TaskState::Assigned { .. })
                    && running.insert((*id, t.index))
                {
                    let p = match &t.state {
                        TaskState::Assigned { provider, .. } => {
                            names.get(provider).cloned().unwrap_or_default()
                        }
                        _ => String::new(),
                    };
                    say(json, &format!("[{name}] task {}: running on {p}", t.index));
                }
            }
            views.push((name.to_string(), v));
        }
        if chat_call.is_none() && views.iter().all(|(_, v)| crate::job::finished(v)) {
            break views;
        }
        if tokio::time::Instant::now() >= deadline {
            break views;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    };

    // Fetch and verify every output.
    let store = BlobStore::open(net.root.join("client-blobs"))?;
    // A chat request still unanswered at the deadline counts as unsettled.
    let mut all_settled = chat_call.is_none();
    let mut jobs_json = Vec::new();
    for (name, v) in &views {
        let settled = v.tasks.iter().all(|t| matches!(t.state, TaskState::Settled { .. }));
        all_settled &= settled;
        let mut tasks_json = Vec::new();
        let mut bundles = Vec::new();
        let mut paid = Amount::ZERO;
        for t in &v.tasks {
            let (provider, price) = match &t.state {
                TaskState::Settled { provider, price, .. } | TaskState::Committed { provider, price, .. } => {
                    (Some(*provider), Some(*price))
                }
                _ => (None, None),
            };
            paid = paid.checked_add(price.unwrap_or_default()).unwrap_or(paid);
            let mut files = Vec::new();
            let output = output_of(t).map(|(_, o)| o);
            if let Some((p, o)) = output_of(t) {
                let bundle = fetch_output(&client, &store, &p, &o).await?;
                let out_dir = net.root.join("results").join(name).join(format!("task-{}", t.index));
                files = write_bundle(&out_dir, &bundle)?;
                bundles.push((t.index, bundle));
            }
            tasks_json.push(json!({
                "index": t.index, "state": t.state.name(), "provider": provider, "price": price,
                "output": output, "files": files,
            }));
        }
        let mut combined = Value::Null;
        if v.job.kind == cairn_types::WorkloadKind::Inference && bundles.len() == v.tasks.len() {
            let path = net.root.join("results").join(name).join(cairn_runtime::inference::RESULTS_FILE);
            let n = crate::job::write_results(&path, &mut bundles)?;
            combined = json!({ "file": path, "results": n });
        }
        let mut training = Value::Null;
        if v.job.kind == cairn_types::WorkloadKind::Train {
            let w = crate::train::result(&client, v, &net.root.join("results").join(name)).await?;
            if let Some(m) = w.rounds.last() {
                let acc = crate::train::accuracy(m);
                say(
                    json,
                    &format!(
                        "[{name}] {} rounds: held-out loss {:.4}{acc}; loss curve {}",
                        w.rounds.len(),
                        m.eval_loss,
                        w.curve.as_ref().map(|c| c.display().to_string()).unwrap_or_default()
                    ),
                );
            }
            training =
                json!({ "rounds": w.rounds, "curve": w.curve, "model": w.model, "metrics": w.metrics });
        }
        let mut render = Value::Null;
        if v.job.kind == cairn_types::WorkloadKind::Render {
            let out = net.root.join("results").join(name);
            let r = crate::render::result(&client, v, &out).await?;
            let made = match (&r.video, &r.animation) {
                (Some(p), _) | (None, Some(p)) => p.display().to_string(),
                _ => r.video_note.clone().unwrap_or_default(),
            };
            say(json, &format!("[{name}] {} frame(s) assembled: {made}", r.frames.len()));
            render = crate::render::json(&r);
        }
        let first = tasks_json.first().cloned().unwrap_or_default();
        say(
            json,
            &format!(
                "[{name}] {}: outputs verified in {}",
                if settled { "settled" } else { "not settled" },
                net.root.join("results").join(name).display()
            ),
        );
        // The job's state: its tasks' common state, or "mixed".
        let states: std::collections::BTreeSet<&str> = v.tasks.iter().map(|t| t.state.name()).collect();
        let state = if states.len() == 1 { states.first().copied().unwrap_or("mixed") } else { "mixed" };
        let providers: std::collections::BTreeSet<String> =
            tasks_json.iter().filter_map(|t| t["provider"].as_str().map(str::to_string)).collect();
        jobs_json.push(json!({
            "name": name,
            "id": v.job.id,
            "kind": v.job.kind,
            "state": state,
            // Task 0's provider and output; every task's are under "tasks".
            "provider": first["provider"],
            "providers": providers,
            "price_paid": paid,
            "output": first["output"],
            "tasks": tasks_json,
            "results": combined,
            "training": training,
            "render": render,
        }));
    }
    let mut website_json = Value::Null;
    if let Some(w) = &website {
        let (served, v) = crate::service::demo_finish(&client, &key, w, json).await?;
        all_settled &= served;
        website_json = v;
    }
    let client_key: &SecretKey = &key;
    let verification = verification_summary(&client, &names).await;
    say(json, &verification.0);
    Ok(Summary {
        all_settled,
        json: json!({
            "verification": verification.1,
            "api": client.base(),
            "chain_id": crate::devnet::CHAIN_ID,
            "client": client_key.address(),
            "results": net.root.join("results"),
            "gateway": gateway,
            "chat": chat,
            "jobs": jobs_json,
            "service": website_json,
        }),
    })
}

/// What verification did during the demo, read from the blocks' receipts: audits, their
/// outcomes, canaries, slashes.
async fn verification_summary(
    client: &cairn_client::Client,
    names: &BTreeMap<Address, String>,
) -> (String, Value) {
    use cairn_types::{AuditOutcome, Event};
    let tip = client.status().await.map(|s| s.height).unwrap_or(0);
    let (mut assigned, mut confirmed, mut canaries, mut disputes) = (0u64, 0u64, 0u64, 0u64);
    let mut auditors: BTreeMap<String, u64> = BTreeMap::new();
    let mut slashed = Vec::new();
    for h in 1..=tip {
        let Ok(v) = client.get::<Value>(&format!("/api/blocks/{h}/receipts")).await else { continue };
        let events = v["receipts"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r["events"].as_array().into_iter().flatten());
        for e in events {
            let Ok(e) = serde_json::from_value::<Event>(e.clone()) else { continue };
            match e {
                Event::AuditAssigned { auditor, .. } => {
                    assigned += 1;
                    *auditors
                        .entry(names.get(&auditor).cloned().unwrap_or_else(|| short(&auditor)))
                        .or_default() += 1;
                }
                Event::AuditResolved { outcome: AuditOutcome::Confirmed, .. } => confirmed += 1,
                Event::AuditResolved {
                    outcome: AuditOutcome::CanaryPassed | AuditOutcome::CanaryFailed,
                    ..
                } => canaries += 1,
                Event::DisputeOpened { .. } => disputes += 1,
                Event::Slashed { who, reason, amount, .. } => slashed.push(json!({
                    "who": who, "reason": reason, "amount": amount,
                })),
                _ => {}
            }
        }
    }
    let by: Vec<String> = auditors.iter().map(|(n, c)| format!("{n} ×{c}")).collect();
    let line = format!(
        "verification: {assigned} audit re-runs assigned ({}), {confirmed} results confirmed by an independent re-run, {canaries} canaries, {disputes} disputes, {} slashed",
        if by.is_empty() { "none".to_string() } else { by.join(", ") },
        slashed.len()
    );
    let json = json!({
        "audits_assigned": assigned, "confirmed": confirmed, "canaries": canaries,
        "disputes": disputes, "slashed": slashed,
    });
    (line, json)
}
