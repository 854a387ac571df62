//! `cairn bench inference --concurrency`: one provider's executor with several chat tasks at
//! once, which its decode loop batches (continuous batching).

use std::time::Instant;

use anyhow::Result;

use crate::bench_inference::BENCH_PROMPT;

/// Aggregate generation throughput of one provider's executor with `n` chat tasks at once (each
/// one request of `tokens` greedy tokens): its decode loop batches them. The levels run in
/// turn `reps` times (1, 4, 16, 1, 4, 16, …) so a noisy spell on the machine does not land on
/// one level only; medians are reported.
pub(crate) fn concurrency(
    model: &crate::model::StoredModel,
    dir: &std::path::Path,
    tokens: usize,
    levels: &[usize],
    reps: usize,
) -> Result<()> {
    use cairn_runtime::{Executor as _, InferenceConfig, InferenceExecutor, TaskRun};
    use std::sync::Arc;
    let exec = Arc::new(InferenceExecutor::new(InferenceConfig::cpu(dir.join("concurrency"))));
    exec.prepare_file(&model.id, &model.path)?;
    exec.preload(&model.id)?;
    let task = |i: usize| -> Result<TaskRun> {
        let req = dir.join(format!("concurrent-{i}.jsonl"));
        let line = serde_json::json!({
            "messages": [{ "role": "user", "content": format!("{BENCH_PROMPT} Story number {i}.") }],
            "max_tokens": tokens, "temperature": 0,
        });
        std::fs::write(&req, format!("{line}\n"))?;
        let mut t = TaskRun::new(model.id, cairn_types::Limits { wall_ms: 3_600_000, ..Default::default() });
        t.inputs.push(("requests.jsonl".into(), req));
        t.seed = [i as u8; 32];
        Ok(t)
    };
    // Warm the loop once.
    exec.run(&task(0)?)?;
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); levels.len()];
    for _ in 0..reps.max(1) {
        for (level, &n) in levels.iter().enumerate() {
            let run = concurrent_run(&exec, &model.id, &task, n)?;
            eprintln!(
                "{n} concurrent: {} tokens in {:.1} s ({:.1} s of it feeding prompts)",
                run.generated, run.wall, run.prompts
            );
            runs[level].push(run);
        }
    }
    // The median run of each level by its rate.
    let rate = |r: &Run| r.generated as f64 / r.wall;
    let decode_rate = |r: &Run| r.generated as f64 / (r.wall - r.prompts).max(1e-9);
    let rows: Vec<(usize, Run)> = levels
        .iter()
        .zip(runs)
        .map(|(&n, mut r)| {
            r.sort_by(|a, b| rate(a).total_cmp(&rate(b)));
            (n, r[r.len() / 2])
        })
        .collect();
    let (single, single_decode) = rows.first().map_or((1.0, 1.0), |(_, r)| (rate(r), decode_rate(r)));
    println!(
        "{} on one provider's executor, {tokens} greedy tokens per request, median of {} runs per level:",
        model.header.name,
        reps.max(1)
    );
    println!();
    println!(
        "| concurrent requests | tokens generated | wall | of which prompts | aggregate tok/s | vs first row | decoding only, tok/s | vs first row | slowest request |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (n, r) in rows {
        println!(
            "| {n} | {} | {:.1} s | {:.1} s | {:.1} | {:.2}× | {:.1} | {:.2}× | {:.1} s |",
            r.generated,
            r.wall,
            r.prompts,
            rate(&r),
            rate(&r) / single,
            decode_rate(&r),
            decode_rate(&r) / single_decode,
            r.slowest
        );
    }
    println!();
    Ok(())
}

/// One level's run.
#[derive(Clone, Copy)]
struct Run {
    /// Tokens generated.
    generated: u64,
    /// Seconds from the first submission to the last answer.
    wall: f64,
    /// Of which the decode loop spent feeding prompts.
    prompts: f64,
    /// The slowest task's own seconds.
    slowest: f64,
}

/// `n` chat tasks at once.
fn concurrent_run(
    exec: &std::sync::Arc<cairn_runtime::InferenceExecutor>,
    model: &cairn_types::ContentId,
    task: &dyn Fn(usize) -> Result<cairn_runtime::TaskRun>,
    n: usize,
) -> Result<Run> {
    use cairn_runtime::Executor as _;
    use std::sync::atomic::Ordering::Relaxed;
    let tasks: Vec<cairn_runtime::TaskRun> = (0..n.max(1)).map(task).collect::<Result<_>>()?;
    let prompt_micros = || exec.batch_stats(model).map_or(0, |s| s.prompt_micros.load(Relaxed));
    let prompts_before = prompt_micros();
    let t0 = Instant::now();
    let outs: Vec<Result<cairn_runtime::Outcome, cairn_runtime::RunError>> = std::thread::scope(|s| {
        let hs: Vec<_> = tasks
            .iter()
            .map(|t| {
                let e = exec.clone();
                s.spawn(move || e.run(t))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(cairn_runtime::RunError::Runtime("panicked".into()))))
            .collect()
    });
    let wall = t0.elapsed().as_secs_f64();
    let mut generated = 0u64;
    let mut slowest = 0f64;
    for o in outs {
        let o = o?;
        slowest = slowest.max(o.wall_ms as f64 / 1e3);
        let text =
            String::from_utf8_lossy(o.bundle.files.get("results.jsonl").map_or(&[][..], Vec::as_slice))
                .to_string();
        for r in cairn_runtime::inference::parse_results(&text)? {
            generated += r.completion_tokens;
        }
    }
    let prompts = prompt_micros().saturating_sub(prompts_before) as f64 / 1e6;
    Ok(Run { generated, wall, prompts, slowest })
}
