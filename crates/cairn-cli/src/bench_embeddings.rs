//! The embedding table of `cairn bench inference`: Cairn's encoder against candle's f32 BERT
//! (one input at a time, as the engine ran every input before batching, and in padded
//! batches), and one request of many inputs through the provider's executor.

use std::time::Instant;

use anyhow::Result;

use crate::bench::median;
use crate::bench_inference::{bench_sentence, requests_file};

/// `n` sentences each way, the ways interleaved within each of `reps` rounds; medians.
pub(crate) fn embeddings(
    model: &crate::model::StoredModel,
    dir: &std::path::Path,
    n: usize,
    reps: usize,
) -> Result<()> {
    use cairn_runtime::inference::{Device, Engine, ModelPackage};
    use cairn_runtime::{Executor as _, InferenceConfig, InferenceExecutor, TaskRun};
    let pkg = ModelPackage::open(&model.path)?;
    let engine = Engine::load(&pkg, &Device::Cpu)?;
    let reference = Engine::load_reference(&pkg, &Device::Cpu)?;
    let texts: Vec<String> = (0..n).map(bench_sentence).collect();
    let exec = InferenceExecutor::new(InferenceConfig::cpu(dir.join("embed-batch")));
    exec.prepare_file(&model.id, &model.path)?;
    exec.preload(&model.id)?;
    let req = requests_file(dir, &[serde_json::json!({ "input": texts })])?;
    let mut task = TaskRun::new(model.id, cairn_types::Limits { wall_ms: 600_000, ..Default::default() });
    task.inputs.push(("requests.jsonl".into(), req));
    let one_at_a_time = |e: &Engine| -> Result<()> {
        for s in &texts {
            e.embed(s)?;
        }
        Ok(())
    };
    let ways: [(&str, &dyn Fn() -> Result<()>); 5] = [
        ("candle's f32 BERT, one at a time (the engine before batching)", &|| one_at_a_time(&reference)),
        ("candle's f32 BERT, padded batches of 32", &|| {
            reference.embed_batch(&texts).map(drop).map_err(Into::into)
        }),
        ("Cairn's encoder, one at a time", &|| one_at_a_time(&engine)),
        ("Cairn's encoder, the inputs together", &|| {
            engine.embed_batch(&texts).map(drop).map_err(Into::into)
        }),
        ("Cairn's encoder, provider executor (one request)", &|| {
            exec.run(&task).map(drop).map_err(Into::into)
        }),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); ways.len()];
    for _ in 0..reps.max(1) {
        for (t, (_, way)) in times.iter_mut().zip(&ways) {
            let start = Instant::now();
            way()?;
            t.push(start.elapsed().as_secs_f64());
        }
    }
    let medians: Vec<f64> = times.iter_mut().map(|t| median(t)).collect();
    let base = medians[0];
    println!("{} embeddings of {n} sentences, medians of {}:", model.header.name, reps.max(1));
    println!();
    println!("| path | time | embeddings/s | vs candle one at a time |");
    println!("|---|---:|---:|---:|");
    for ((name, _), m) in ways.iter().zip(&medians) {
        println!("| {name} | {:.0} ms | {:.1} | {:.2}× |", m * 1e3, n as f64 / m, base / m);
    }
    println!();
    Ok(())
}
