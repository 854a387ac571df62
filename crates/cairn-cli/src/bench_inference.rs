//! `cairn bench inference`: the same models in-process (straight on the engine), through the
//! provider's executor, and as market jobs; and, with `--reference`, llama.cpp on the same GGUF
//! file, prompt and thread count beside Cairn's engine.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use cairn_client::Client;
use cairn_types::SecretKey;
use clap::Args;

use crate::bench::{median, provider_run_secs};

/// `cairn bench inference`.
#[derive(Debug, Args)]
pub(crate) struct InferenceArgs {
    /// Sentences embedded per measurement.
    #[arg(long, default_value_t = 64)]
    embeddings: usize,
    /// Tokens generated per measurement.
    #[arg(long, default_value_t = 128)]
    tokens: usize,
    /// Skip the market measurement (in-process and executor only).
    #[arg(long)]
    no_market: bool,
    /// Repetitions of each warm measurement (medians are reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Where the network lives while measured.
    #[arg(long, default_value = ".cairn/bench-inference")]
    home: PathBuf,
    /// The chat model (a name or id in the model store; default: the demo's Gemma 3 270M).
    #[arg(long)]
    chat_model: Option<String>,
    /// A Python with `llama_cpp` (llama-cpp-python): also time llama.cpp on the same GGUF file,
    /// prompt and thread count, and print the ratios.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Only the engine-vs-reference comparison and the concurrency table (skips embeddings,
    /// the executor and the market).
    #[arg(long)]
    reference_only: bool,
    /// Only the embedding table (skips chat, the executor's chat runs and the market).
    #[arg(long)]
    embeddings_only: bool,
    /// Concurrent chat requests to one provider's executor (continuous batching), e.g. 1,4,16.
    #[arg(long, value_delimiter = ',')]
    concurrency: Vec<usize>,
}

/// The reference runner, shipped inside the binary so the benchmark runs from anywhere.
const LLAMA_REFERENCE: &str = include_str!("../../../scripts/bench/llama_reference.py");

pub(crate) const BENCH_PROMPT: &str =
    "Write a long story about a hiker who builds cairns along a mountain trail.";

pub(crate) fn bench_sentence(i: usize) -> String {
    format!("Sentence number {i} describes stones, trails and the weather on day {}.", i * 7 % 31)
}

pub(crate) fn requests_file(dir: &std::path::Path, lines: &[serde_json::Value]) -> Result<PathBuf> {
    let path = dir.join("requests.jsonl");
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Submit `lines` as a one-task inference job and time it from submission to a committed result.
async fn market_job(
    client: &Client,
    key: &SecretKey,
    dir: &std::path::Path,
    model: &crate::catalog::ServedModel,
    lines: &[serde_json::Value],
) -> Result<(f64, cairn_types::JobId)> {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("batch.jsonl"), &text)?;
    let manifest = format!(
        "kind: inference\nworkload: {}\nrequests: batch.jsonl\nrequests_per_task: {}\nmax_price_per_task: 1 CRN\nverification: none\ndeadline_blocks: 600\nlimits:\n  wall_ms: 600000\n",
        model.id,
        lines.len()
    );
    crate::bench::until_committed(client, key, dir, &manifest, Duration::from_secs(900)).await
}

pub(crate) async fn run(a: InferenceArgs) -> Result<()> {
    use cairn_runtime::inference::import::{GEMMA, MINILM};
    use cairn_runtime::inference::{Engine, ModelPackage};
    use cairn_runtime::{Executor as _, InferenceConfig, InferenceExecutor, TaskRun};
    let store = crate::model::ModelStore::open_default()?;
    let models = store.install_demo(false)?;
    let find = |n: &str| models.iter().find(|m| m.header.name == n).cloned().context("demo model missing");
    let minilm = find(MINILM)?;
    let gemma = match &a.chat_model {
        Some(name) => store.resolve(name)?,
        None => find(GEMMA)?,
    };
    let chat_name = gemma.header.name.clone();
    let dir = a.home.join("work");
    std::fs::create_dir_all(&dir)?;
    let device = cairn_runtime::inference::Device::Cpu;
    if let Some(python) = &a.reference {
        reference(python, &gemma, &dir, a.tokens, a.reps)?;
    }
    if !a.concurrency.is_empty() {
        crate::bench_batching::concurrency(&gemma, &dir, a.tokens, &a.concurrency, a.reps)?;
    }
    if a.reference_only {
        return Ok(());
    }
    crate::bench_embeddings::embeddings(&minilm, &dir, a.embeddings, a.reps)?;
    if a.embeddings_only {
        return Ok(());
    }
    let embed_lines: Vec<serde_json::Value> =
        (0..a.embeddings).map(|i| serde_json::json!({ "input": bench_sentence(i) })).collect();
    let chat_line = serde_json::json!({
        "messages": [{ "role": "user", "content": BENCH_PROMPT }], "max_tokens": a.tokens, "temperature": 0,
    });

    // In process, straight on candle (`Engine`), against the provider's executor (task files
    // in; JSON results, commitments and the bundle out), interleaved rep by rep so both see the
    // same machine state; medians reported.
    let exec = InferenceExecutor::new(InferenceConfig::cpu(dir.join("exec")));
    let mut loads = Vec::new();
    let mut timings: Vec<(f64, f64)> = Vec::new();
    let mut generated = 0;
    for (m, lines) in [(&minilm, embed_lines.clone()), (&gemma, vec![chat_line.clone()])] {
        let t = Instant::now();
        let engine = Engine::load(&ModelPackage::open(&m.path)?, &device)?;
        let direct_load = t.elapsed().as_secs_f64();
        let t = Instant::now();
        exec.prepare_file(&m.id, &m.path)?;
        exec.preload(&m.id)?;
        let exec_load = t.elapsed().as_secs_f64();
        let t = Instant::now();
        cairn_runtime::inference::ModelTokenizer::load(&ModelPackage::open(&m.path)?)?;
        let tokenizer_load = t.elapsed().as_secs_f64();
        loads.push((direct_load, exec_load, tokenizer_load));
        let req = requests_file(&dir, &lines)?;
        let mut task = TaskRun::new(m.id, cairn_types::Limits { wall_ms: 600_000, ..Default::default() });
        task.inputs.push(("requests.jsonl".into(), req));
        let (mut direct, mut executor) = (Vec::new(), Vec::new());
        for _ in 0..a.reps.max(1) {
            let t = Instant::now();
            if m.header.name == MINILM {
                for i in 0..a.embeddings {
                    engine.embed(&bench_sentence(i))?;
                }
            } else {
                generated = engine.chat(BENCH_PROMPT, a.tokens)?.1;
            }
            direct.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            exec.run(&task)?;
            executor.push(t.elapsed().as_secs_f64());
        }
        timings.push((median(&mut direct), median(&mut executor)));
    }
    drop(exec);

    // The market: a devnet with one provider serving both models.
    let mut market = None;
    let mut market_added = None;
    let mut streamed = None;
    if !a.no_market {
        let layout = crate::devnet::Layout {
            validators: 1,
            providers: 1,
            p2p_port: 27_500,
            api_port: 27_510,
            provider_port: 27_520,
            models: vec![(minilm.id, minilm.path.clone()), (gemma.id, gemma.path.clone())],
            params: Vec::new(),
        };
        let mut net = crate::devnet::start(&a.home.join("net"), &layout, true, &[])?;
        crate::devnet::wait_ready(&mut net, 2, Duration::from_secs(60)).await?;
        crate::devnet::start_providers(&mut net, 1, Duration::from_secs(120)).await?;
        let client = Client::new(&net.apis[0]);
        let faucet = crate::keys::read_seed_file(&net.root.join("faucet.key"))?;
        let served = crate::catalog::served_models(&client).await?;
        let (sm, sg) = (
            crate::catalog::find(&served, MINILM)?.clone(),
            crate::catalog::find(&served, &chat_name)?.clone(),
        );
        // Each warm job's time minus the provider's own run time (from its log) is what the
        // market adds: transactions, blocks, fetching inputs, committing.
        let log = net.root.join("provider-0").join("provider.log");
        let mut runs = Vec::new();
        for (m, lines) in [(&sm, embed_lines.as_slice()), (&sg, std::slice::from_ref(&chat_line))] {
            let cold = market_job(&client, &faucet, &dir, m, lines).await?.0;
            let mut warm = Vec::new();
            let mut added = Vec::new();
            for _ in 0..a.reps.max(1) {
                let (secs, job) = market_job(&client, &faucet, &dir, m, lines).await?;
                warm.push(secs);
                if let Some(ran) = provider_run_secs(&log, &cairn_types::TaskId::derive(&job, 0)) {
                    added.push(secs - ran);
                }
            }
            runs.push((cold, median(&mut warm), median(&mut added)));
        }
        let ((embed_cold, embed_warm, embed_added), (gen_cold, gen_warm, gen_added)) = (runs[0], runs[1]);
        market_added = Some((embed_added, gen_added));
        market = Some((embed_cold, embed_warm, gen_cold, gen_warm));
        streamed = Some(gateway_first_token(&mut net, &chat_name, a.tokens, a.reps).await?);
        drop(net);
    }

    let n = a.embeddings as f64;
    let k = generated as f64;
    if let Some((first, total, n)) = streamed {
        let engine = cairn_runtime::inference::Engine::load(&ModelPackage::open(&gemma.path)?, &device)?;
        let prompt = engine.chat_prompt(BENCH_PROMPT)?;
        let mut pass = Vec::new();
        for _ in 0..a.reps.max(1) {
            pass.push(engine.generate_exact(&prompt, 1)?.1.as_secs_f64());
        }
        let pass = median(&mut pass);
        println!(
            "Streamed through the gateway (a devnet, one provider), {chat_name}, medians of {}:",
            a.reps.max(1)
        );
        println!();
        println!("| measure | time |");
        println!("|---|---:|");
        println!("| in-process prompt pass ({} tokens) | {:.0} ms |", prompt.len(), pass * 1e3);
        println!("| gateway: request to first token | {:.0} ms |", first * 1e3);
        println!("| gateway: first token minus prompt pass | {:.0} ms |", (first - pass) * 1e3);
        println!("| gateway: whole stream ({n} tokens) | {:.0} ms |", total * 1e3);
        println!();
    }
    println!("Medians of {} rep(s).", a.reps.max(1));
    println!();
    println!(
        "| model | measure | in-process (candle) | provider executor | ratio | market job, warm | market adds (job − provider's run) | budget (1.05× + 200 ms) | market job, cold |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let row = |name: &str, what: &str, direct: f64, exec: f64, units: f64, m: Option<(f64, f64, f64)>| {
        let (warm, over, cold) = m.map_or(("–".into(), "–".into(), "–".into()), |(c, w, added)| {
            (format!("{:.0} ms", w * 1e3), format!("{:.0} ms", added * 1e3), format!("{:.0} ms", c * 1e3))
        });
        println!(
            "| {name} | {what} | {:.1}/s ({:.0} ms) | {:.1}/s ({:.0} ms) | {:.2}× | {warm} | {over} | {:.0} ms | {cold} |",
            units / direct,
            direct * 1e3,
            units / exec,
            exec * 1e3,
            exec / direct,
            (direct * 1.05 + 0.2) * 1e3,
        );
    };
    row(
        MINILM,
        &format!("{} embeddings", a.embeddings),
        timings[0].0,
        timings[0].1,
        n,
        market.zip(market_added).map(|(m, x)| (m.0, m.1, x.0)),
    );
    row(
        &chat_name,
        &format!("{generated} tokens"),
        timings[1].0,
        timings[1].1,
        k,
        market.zip(market_added).map(|(m, x)| (m.2, m.3, x.1)),
    );
    println!();
    println!(
        "| model | cold load in-process | executor cold start (hash check + load) | tokenizer only (gateway) |"
    );
    println!("|---|---:|---:|---:|");
    for (name, (d, e, t)) in [MINILM, chat_name.as_str()].iter().zip(&loads) {
        println!("| {name} | {:.0} ms | {:.0} ms | {:.0} ms |", d * 1e3, e * 1e3, t * 1e3);
    }
    Ok(())
}

/// Cairn's engine and llama.cpp on the same GGUF file, prompt ids and thread count, generating
/// exactly `tokens` greedy tokens each (end tokens banned), interleaved rep by rep.
fn reference(
    python: &std::path::Path,
    model: &crate::model::StoredModel,
    dir: &std::path::Path,
    tokens: usize,
    reps: usize,
) -> Result<()> {
    use cairn_runtime::inference::{Engine, ModelPackage};
    let pkg = ModelPackage::open(&model.path)?;
    let gguf = dir.join("reference-model.gguf");
    let mut src = pkg.reader("model.gguf").context("the chat model is not a GGUF package")?;
    std::io::copy(&mut src, &mut std::fs::File::create(&gguf)?)?;
    let script = dir.join("llama_reference.py");
    std::fs::write(&script, LLAMA_REFERENCE)?;
    let engine = Engine::load(&pkg, &cairn_runtime::inference::Device::Cpu)?;
    let prompt = engine.chat_prompt(BENCH_PROMPT)?;
    let threads = cairn_runtime::inference::engine_threads();
    let (mut ours_prompt, mut ours_gen, mut ref_prompt, mut ref_gen) = (vec![], vec![], vec![], vec![]);
    let (mut ours_ids, mut ref_ids, mut engine_name) = (Vec::new(), Vec::<u32>::new(), String::new());
    for rep in 0..reps.max(1) {
        let (ids, p, g) = engine.generate_exact(&prompt, tokens)?;
        ours_prompt.push(p.as_secs_f64());
        ours_gen.push(g.as_secs_f64());
        ours_ids = ids;
        let req = serde_json::json!({
            "model": gguf, "threads": threads, "prompt": prompt, "tokens": tokens, "reps": 1,
        });
        let mut child = std::process::Command::new(python)
            .arg(&script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", python.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            std::io::Write::write_all(&mut stdin, req.to_string().as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "the llama.cpp reference failed ({}); is llama-cpp-python installed in {}?",
                out.status,
                python.display()
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("the reference's output")?;
        ref_prompt.push(v["prompt_ms"].as_f64().unwrap_or(0.0) / 1e3);
        ref_gen.push(v["gen_ms"].as_f64().unwrap_or(0.0) / 1e3);
        ref_ids = serde_json::from_value(v["ids"].clone()).unwrap_or_default();
        engine_name = v["engine"].as_str().unwrap_or("llama.cpp").to_string();
        eprintln!(
            "rep {}: cairn {:.1} tok/s, reference {:.1} tok/s",
            rep + 1,
            tokens as f64 / ours_gen[rep],
            tokens as f64 / ref_gen[rep]
        );
    }
    let same = ours_ids.iter().zip(&ref_ids).take_while(|(a, b)| a == b).count();
    let forced = engine.agreement(&prompt, &ref_ids)?;
    let (op, og, rp, rg) =
        (median(&mut ours_prompt), median(&mut ours_gen), median(&mut ref_prompt), median(&mut ref_gen));
    println!(
        "{} ({} B), {} prompt tokens, {tokens} generated greedily, {threads} thread(s), medians of {}:",
        model.header.name,
        model.size,
        prompt.len(),
        reps.max(1)
    );
    println!();
    println!("| engine | prompt pass | prompt tok/s | generation tok/s | generation vs llama.cpp |");
    println!("|---|---:|---:|---:|---:|");
    let n = prompt.len() as f64;
    println!(
        "| Cairn (candle, in-process) | {:.0} ms | {:.0} | {:.1} | {:.2}× |",
        op * 1e3,
        n / op,
        tokens as f64 / og,
        rg / og
    );
    println!("| {engine_name} | {:.0} ms | {:.0} | {:.1} | 1.00× |", rp * 1e3, n / rp, tokens as f64 / rg);
    println!();
    println!(
        "The two engines' greedy tokens agree for the first {same} of {tokens}; fed llama.cpp's tokens, Cairn picks the same next token {forced} times of {}.",
        ref_ids.len()
    );
    println!();
    Ok(())
}

/// Streamed chat completions through a gateway on the bench network: the time to the first
/// content chunk and to the end (medians), and the tokens of the last stream.
async fn gateway_first_token(
    net: &mut crate::devnet::Network,
    model: &str,
    tokens: usize,
    reps: usize,
) -> Result<(f64, f64, u64)> {
    let base = crate::devnet::start_gateway(net, 27_530, Duration::from_secs(60)).await?;
    let http = reqwest::Client::new();
    let (mut firsts, mut totals, mut n) = (Vec::new(), Vec::new(), 0u64);
    // One warm-up, then the measured reps.
    for rep in 0..=reps.max(1) {
        let body = serde_json::json!({
            "model": model, "max_tokens": tokens, "temperature": 0, "stream": true,
            "messages": [{ "role": "user", "content": BENCH_PROMPT }],
        });
        let t0 = Instant::now();
        let mut resp = http.post(format!("{base}/chat/completions")).json(&body).send().await?;
        if !resp.status().is_success() {
            bail!("the gateway answered {}", resp.status());
        }
        let (mut first, mut buf, mut chunks) = (None, String::new(), 0u64);
        while let Some(bytes) = resp.chunk().await? {
            buf.push_str(&String::from_utf8_lossy(&bytes));
            while let Some(end) = buf.find("\n\n") {
                let frame: String = buf.drain(..end + 2).collect();
                let Some(data) = frame.trim().strip_prefix("data: ") else { continue };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else { continue };
                if v["choices"][0]["delta"]["content"].as_str().is_some_and(|c| !c.is_empty()) {
                    chunks += 1;
                    first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
                }
                if let Some(s) = v["cairn"]["stream"]["tokens"].as_u64() {
                    n = s;
                }
            }
        }
        let total = t0.elapsed().as_secs_f64();
        eprintln!(
            "stream {rep}: first token {:.0} ms, {chunks} chunks, {total:.2} s",
            first.unwrap_or(0.0) * 1e3
        );
        if rep > 0 {
            firsts.push(first.unwrap_or(total));
            totals.push(total);
        }
    }
    Ok((median(&mut firsts), median(&mut totals), n))
}
