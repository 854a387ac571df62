//! The train executor: jobs run task by task as the chain would chain them, determinism, the
//! single-process reference, and every bad input as a committed failure.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use cairn_runtime::train::{
    CHECKPOINT_FILE, METRICS_FILE, MODEL_FILE, RECORD_FILE, STATE_FILE, decode_record, load_trained,
    reference_run,
};
use cairn_runtime::{
    Executor as _, Metrics, RunError, TaskRun, TrainExecutor, decode_metrics, reference_loop,
};
use cairn_types::{
    Canonical, ContentId, Decimal, Limits, ModelArch, Optimizer, OutputBundle, TrainRole, TrainSpec,
    WorkloadKind,
};

use crate::scratch;

/// A tiny deterministic generator for the test data.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn unit(&mut self) -> f32 {
        (self.next() % 10_000) as f32 / 10_000.0
    }
}

/// 300 rows of 8 noisy features around one of 3 class centres, label last.
fn csv() -> Vec<u8> {
    let mut rng = Lcg(7);
    let mut out = String::new();
    for _ in 0..300 {
        let class = rng.next() % 3;
        let row: Vec<String> = (0..8)
            .map(|j| {
                let centre = ((class * 5 + j * 3) % 7) as f32 - 3.0;
                format!("{:.3}", centre + (rng.unit() - 0.5) * 3.0)
            })
            .collect();
        out.push_str(&format!("{},{class}\n", row.join(",")));
    }
    out.into_bytes()
}

/// About 20 KB of repetitive English.
fn text() -> Vec<u8> {
    const SENTENCES: [&str; 6] = [
        "the quick brown fox jumps over the lazy dog. ",
        "a cat sat on the mat and looked at the moon. ",
        "we walk to the market in the morning. ",
        "she reads a book by the window every day. ",
        "the river runs down to the sea. ",
        "birds sing in the old oak tree. ",
    ];
    let mut rng = Lcg(11);
    let mut out = String::new();
    while out.len() < 20_000 {
        out.push_str(SENTENCES[(rng.next() % 6) as usize]);
    }
    out.into_bytes()
}

#[allow(clippy::too_many_arguments)]
fn spec(
    model: ModelArch,
    lr: &str,
    wd: &str,
    rounds: u32,
    width: u32,
    local_steps: u32,
    batch_size: u32,
    seed: u64,
) -> TrainSpec {
    let t = TrainSpec {
        model,
        optimizer: Optimizer {
            learning_rate: Decimal::new(lr).unwrap(),
            weight_decay: Decimal::new(wd).unwrap(),
        },
        rounds,
        width,
        local_steps,
        batch_size,
        seed,
    };
    t.validate().unwrap();
    t
}

fn mlp(rounds: u32, width: u32) -> TrainSpec {
    spec(ModelArch::Mlp { hidden: 16 }, "0.02", "0.01", rounds, width, 8, 16, 5)
}

fn gpt(rounds: u32, width: u32) -> TrainSpec {
    spec(
        ModelArch::Gpt { layers: 1, d_model: 32, heads: 4, context: 16 },
        "0.01",
        "0",
        rounds,
        width,
        8,
        8,
        9,
    )
}

/// A job's dataset on an executor, and a place for its dependency files.
struct Job {
    exec: TrainExecutor,
    data: ContentId,
    spec: TrainSpec,
    dir: PathBuf,
}

static JOBS: AtomicU32 = AtomicU32::new(0);

impl Job {
    fn new(spec: TrainSpec, data: &[u8]) -> Job {
        let exec = TrainExecutor::new();
        let id = ContentId::of(data);
        exec.prepare(&id, data).unwrap();
        assert!(exec.is_prepared(&id));
        let dir = scratch(&format!("train-{}", JOBS.fetch_add(1, Ordering::Relaxed)));
        Job { exec, data: id, spec, dir }
    }

    fn task(&self, index: u32, deps: &[Vec<u8>]) -> TaskRun {
        let mut t = TaskRun::new(self.data, Limits::default());
        t.task_index = index;
        t.tasks = self.spec.tasks();
        t.seed = [index as u8; 32];
        t.train = Some(self.spec.clone());
        for (i, bytes) in deps.iter().enumerate() {
            let path = self.dir.join(format!("{index}-dep-{i}"));
            std::fs::write(&path, bytes).unwrap();
            t = t.input(format!("dep-{i}"), path);
        }
        t
    }

    /// Run task `index` reading `deps` (encoded bundles or any bytes).
    fn run(&self, index: u32, deps: &[Vec<u8>]) -> OutputBundle {
        self.exec.run(&self.task(index, deps)).unwrap().bundle
    }

    /// Every task in order, each fed the bundles of its dependencies.
    fn run_all(&self) -> Vec<OutputBundle> {
        let mut out: Vec<OutputBundle> = Vec::new();
        for i in 0..self.spec.tasks() {
            let deps: Vec<Vec<u8>> =
                self.spec.dependencies(i).iter().map(|d| out[*d as usize].encode()).collect();
            out.push(self.run(i, &deps));
        }
        out
    }

    fn aggregate(&self, round: u32) -> u32 {
        self.spec.index(round, TrainRole::Aggregate)
    }
}

fn names(b: &OutputBundle) -> Vec<&str> {
    b.files.keys().map(String::as_str).collect()
}

fn exit(b: &OutputBundle) -> &str {
    b.exit().unwrap()
}

fn round_metrics(job: &Job, bundles: &[OutputBundle]) -> Vec<Metrics> {
    (0..job.spec.rounds).map(|r| decode_metrics(&bundles[job.aggregate(r) as usize]).unwrap()).collect()
}

#[test]
fn a_classifier_job_learns_round_by_round() {
    let data = csv();
    let job = Job::new(mlp(3, 2), &data);
    assert_eq!(job.exec.kind(), WorkloadKind::Train);
    let bundles = job.run_all();
    for (i, b) in bundles.iter().enumerate() {
        let expected = match job.spec.role(i as u32).1 {
            TrainRole::Shard(_) => vec![".cairn/exit", STATE_FILE, RECORD_FILE],
            TrainRole::Aggregate => {
                vec![".cairn/exit", CHECKPOINT_FILE, METRICS_FILE, MODEL_FILE, RECORD_FILE]
            }
        };
        assert_eq!(names(b), expected, "task {i}");
        assert!(b.succeeded());
    }
    // Round 1's shards record the aggregation bundle they started from.
    let rec = decode_record(&bundles[3]).unwrap();
    assert_eq!(rec.start.as_deref(), Some(bundles[2].id().to_hex().as_str()));
    assert_eq!((rec.round, rec.shard, rec.step), (1, Some(0), Some(16)));
    assert_eq!(decode_record(&bundles[0]).unwrap().start.unwrap(), ContentId::ZERO.to_hex());

    let m = round_metrics(&job, &bundles);
    let init = reference_loop(&job.spec, &data, 0).unwrap();
    eprintln!("init {init:?}\nrounds {m:#?}");
    assert_eq!(m.iter().map(|m| (m.round, m.step)).collect::<Vec<_>>(), [(0, 8), (1, 16), (2, 24)]);
    assert!(m[2].eval_loss < m[0].eval_loss && m[0].eval_loss < init.eval_loss);
    assert!(m[2].eval_accuracy.unwrap() > 0.8, "well above chance (1/3)");
    assert_eq!(m[2].parameters, (8 + 1) * 16 + (16 + 1) * 3);

    // The checkpoint is an ordinary safetensors file, and the model loads back for serving.
    let last = &bundles[8];
    let st = candle_core::safetensors::load_buffer(&last.files[CHECKPOINT_FILE], &candle_core::Device::Cpu)
        .unwrap();
    assert_eq!(st["w.fc1.weight"].dims(), [16, 8]);
    assert_eq!(st["v.fc2.bias"].dims(), [3]);
    let trained =
        load_trained(&last.files[MODEL_FILE], &last.files[CHECKPOINT_FILE], &candle_core::Device::Cpu)
            .unwrap();
    assert_eq!(trained.step, 24);
    let first_row: Vec<f32> = std::str::from_utf8(&data)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .split(',')
        .map(|f| f.parse().unwrap())
        .collect();
    let logits = trained.classify(&first_row[..8]).unwrap();
    assert_eq!(logits.len(), 3);
    assert!(trained.logits(&[0]).is_err(), "a classifier has no next-token logits");
}

#[test]
fn a_language_model_job_learns_and_serves() {
    let data = text();
    let job = Job::new(gpt(3, 2), &data);
    let bundles = job.run_all();
    assert!(bundles.iter().all(OutputBundle::succeeded));
    let m = round_metrics(&job, &bundles);
    let init = reference_loop(&job.spec, &data, 0).unwrap();
    eprintln!("init {init:?}\nrounds {m:#?}");
    assert!(m[2].eval_loss < m[0].eval_loss && m[0].eval_loss < init.eval_loss);
    assert!(m[2].eval_loss < init.eval_loss - 0.5, "{} → {}", init.eval_loss, m[2].eval_loss);
    assert!(m.iter().all(|m| m.eval_accuracy.is_none()));
    let model_json: serde_json::Value = serde_json::from_slice(&bundles[8].files[MODEL_FILE]).unwrap();
    assert_eq!(model_json["arch"], "gpt");
    let mut vocab: Vec<char> = std::str::from_utf8(&data).unwrap().chars().collect();
    vocab.sort_unstable();
    vocab.dedup();
    assert_eq!(model_json["vocab"].as_str().unwrap(), vocab.iter().collect::<String>());

    let last = &bundles[8];
    let trained =
        load_trained(&last.files[MODEL_FILE], &last.files[CHECKPOINT_FILE], &candle_core::Device::Cpu)
            .unwrap();
    let prompt = trained.encode("the quick brown fox jumps over the lazy do").unwrap();
    let logits = trained.logits(&prompt).unwrap();
    assert_eq!(logits.len(), vocab.len());
    assert!(trained.encode("ünïcode").is_none());
    assert_eq!(trained.decode(&prompt), "the quick brown fox jumps over the lazy do");
}

#[test]
fn shard_bundles_are_the_same_every_time_and_for_every_task_seed() {
    let data = text();
    let job = Job::new(gpt(2, 2), &data);
    let a = job.run(1, &[]);
    let mut task = job.task(1, &[]);
    task.seed = [0xAB; 32];
    let b = job.exec.run(&task).unwrap().bundle;
    assert_eq!(a.id(), b.id(), "the task seed must not matter");
    assert_eq!(a.encode(), job.run(1, &[]).encode());
    // Another job seed is another run.
    let mut other = job.spec.clone();
    other.seed += 1;
    task.train = Some(other);
    assert_ne!(job.exec.run(&task).unwrap().bundle.id(), a.id());
}

/// The shard task the thread-count test runs (big enough that matrix products are split
/// across threads).
fn threads_job() -> (Job, u32) {
    let s =
        spec(ModelArch::Gpt { layers: 1, d_model: 64, heads: 4, context: 32 }, "0.01", "0", 1, 2, 3, 16, 3);
    (Job::new(s, &text()), 1)
}

/// Not a test by itself: prints the bundle id for `shard_bundles_do_not_depend_on_the_thread_count`,
/// which runs it in a child process under another `RAYON_NUM_THREADS`.
#[test]
#[ignore = "run by shard_bundles_do_not_depend_on_the_thread_count"]
fn child_prints_shard_bundle_id() {
    let (job, index) = threads_job();
    println!("bundle-id={}", job.run(index, &[]).id());
}

#[test]
fn shard_bundles_do_not_depend_on_the_thread_count() {
    let (job, index) = threads_job();
    let here = job.run(index, &[]).id().to_hex();
    for threads in ["1", "3"] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "train::child_prints_shard_bundle_id",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let id = stdout.split("bundle-id=").nth(1).and_then(|rest| rest.get(..64)).unwrap_or_else(|| {
            panic!(
                "child with {threads} threads printed no id: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert_eq!(id, here, "RAYON_NUM_THREADS={threads}");
    }
}

#[test]
fn a_width_one_job_is_the_reference_loop_bit_for_bit() {
    for (spec, data) in [(mlp(3, 1), csv()), (gpt(3, 1), text())] {
        let job = Job::new(spec.clone(), &data);
        let bundles = job.run_all();
        let last = bundles.last().unwrap();
        let steps = spec.rounds * spec.local_steps;
        let (reference, checkpoint) = reference_run(&spec, &data, steps).unwrap();
        assert_eq!(last.files[CHECKPOINT_FILE], checkpoint, "{:?}", spec.model);
        // Compare through the same JSON codec the bundle went through.
        let reference: Metrics = serde_json::from_slice(&serde_json::to_vec(&reference).unwrap()).unwrap();
        let ours = decode_metrics(last).unwrap();
        assert_eq!(ours.eval_loss.to_bits(), reference.eval_loss.to_bits());
        assert_eq!(ours, reference);
    }
}

#[test]
fn datasets_that_do_not_fit_are_committed_failures() {
    let mut ragged = csv();
    let second_line_end = ragged.iter().enumerate().filter(|(_, b)| **b == b'\n').nth(1).unwrap().0;
    ragged.splice(second_line_end..second_line_end, b",1.5,2.5".iter().copied());
    let cases: Vec<(TrainSpec, Vec<u8>, &str)> = vec![
        (mlp(1, 2), ragged, "invalid dataset: line 2 has 11 columns, expected 9"),
        (
            mlp(1, 2),
            b"1,2,0\n3,4,nan\n".to_vec(),
            "invalid dataset: line 2: label \"nan\" is not an integer class 0..=255",
        ),
        (mlp(1, 2), b"1,x,0\n".to_vec(), "invalid dataset: line 1 column 2: \"x\" is not a finite number"),
        (mlp(1, 2), b"1,2,0\n3,4,1\n".to_vec(), "invalid dataset: 1 training rows for 2 shards"),
        (mlp(1, 2), vec![0xff, 0xfe, 0x00], "invalid dataset: not UTF-8 text"),
        (mlp(1, 2), Vec::new(), "invalid dataset: no rows"),
        (
            gpt(1, 2),
            b"too short for two shards".to_vec(),
            "invalid dataset: 24 characters leave 7 to train on",
        ),
        (
            gpt(1, 64),
            text()[..1000].to_vec(),
            "invalid dataset: 1000 characters leave 900 to train on (100 held out): each of the 64 shards would hold 14, fewer than context + 1 = 17",
        ),
    ];
    for (spec, data, expected) in cases {
        let job = Job::new(spec, &data);
        let out = job.exec.run(&job.task(0, &[])).unwrap();
        assert!(exit(&out.bundle).starts_with(expected), "{:?} vs {expected:?}", exit(&out.bundle));
        assert_eq!(names(&out.bundle), [".cairn/exit", ".cairn/stderr"]);
        assert_eq!(out.units, 0);
    }
    // Digits written the way scikit-learn writes them parse, labels included.
    let job = Job::new(mlp(1, 1), b"0.0e+00,1.6e+01,3.000000000000000000e+00\n1.0e+00,2.0e+00,7.0e+00\n");
    assert!(job.run(0, &[]).succeeded());
}

#[test]
fn failures_propagate_as_upstream_failures_without_nesting() {
    let job = Job::new(mlp(2, 2), b"1,2,0\n3,4,1,5\n");
    let shard = job.run(0, &[]);
    assert!(exit(&shard).starts_with("invalid dataset: line 2 has 4 columns"));
    let agg = job.run(2, &[shard.encode(), shard.encode()]);
    assert_eq!(exit(&agg), format!("upstream failed: {}", exit(&shard)));
    let next = job.run(3, &[agg.encode()]);
    assert_eq!(exit(&next), exit(&agg));
    assert_eq!(names(&next), [".cairn/exit", ".cairn/stderr"]);
}

#[test]
fn an_aggregation_checks_the_shards_it_is_given() {
    let data = csv();
    let job = Job::new(mlp(2, 2), &data);
    let (s0, s1) = (job.run(0, &[]), job.run(1, &[]));
    assert!(job.run(2, &[s0.encode(), s1.encode()]).succeeded());

    // A shard of another run (another seed).
    let mut other = mlp(2, 2);
    other.seed = 99;
    let foreign = Job::new(other, &data).run(1, &[]);
    let out = job.run(2, &[s0.encode(), foreign.encode()]);
    assert_eq!(exit(&out), "invalid dependency: dep-1 is not shard 1 of round 0 of this run");
    // Round 0's shards given to round 1's aggregation.
    let out = job.run(5, &[s0.encode(), s1.encode()]);
    assert_eq!(exit(&out), "invalid dependency: dep-0 is not shard 0 of round 1 of this run");
    // The right shards in the wrong order.
    let out = job.run(2, &[s1.encode(), s0.encode()]);
    assert_eq!(exit(&out), "invalid dependency: dep-0 is not shard 0 of round 0 of this run");
    // A failed upstream task.
    let failed = OutputBundle {
        files: BTreeMap::from([(
            ".cairn/exit".to_string(),
            b"diverged: loss is not finite at step 3".to_vec(),
        )]),
    };
    let out = job.run(2, &[s0.encode(), failed.encode()]);
    assert_eq!(exit(&out), "upstream failed: diverged: loss is not finite at step 3");
    // Bytes that are not a bundle at all, as an aggregation's and as a shard's input.
    let out = job.run(2, &[b"not a bundle".to_vec(), s1.encode()]);
    assert_eq!(exit(&out), "invalid dependency: dep-0 is not an output bundle");
    let out = job.run(3, &[b"not a bundle".to_vec()]);
    assert_eq!(exit(&out), "invalid dependency: dep-0 is not an output bundle");
    // A shard bundle where a checkpoint belongs.
    let out = job.run(3, &[s0.encode()]);
    assert_eq!(exit(&out), "invalid dependency: dep-0 is not the checkpoint of round 0 of this run");
    // A shard whose state was swapped for another shard's (same record, foreign weights).
    let mut forged = s1.clone();
    forged.files.insert(STATE_FILE.into(), b"garbage".to_vec());
    let out = job.run(2, &[s0.encode(), forged.encode()]);
    assert_eq!(exit(&out), "invalid dependency: dep-1's state does not fit this model");
}

#[test]
fn divergence_and_fuel_are_committed_failures() {
    let data = csv();
    let mut wild = mlp(1, 1);
    wild.optimizer.learning_rate = Decimal::new("1e30").unwrap();
    let job = Job::new(wild, &data);
    let out = job.exec.run(&job.task(0, &[])).unwrap();
    assert!(exit(&out.bundle).starts_with("diverged: loss is not finite at step "), "{}", exit(&out.bundle));
    assert_eq!(out.units % 16, 0);

    let job = Job::new(mlp(1, 1), &data);
    let mut task = job.task(0, &[]);
    task.limits.fuel = 100; // 8 steps × 16 examples = 128
    let out = job.exec.run(&task).unwrap();
    assert_eq!(exit(&out.bundle), "over the fuel limit");
    task.limits.fuel = 128;
    let out = job.exec.run(&task).unwrap();
    assert!(out.bundle.succeeded());
    assert_eq!(out.units, 128);
}

#[test]
fn problems_of_the_machine_are_errors() {
    let data = text();
    let job = Job::new(gpt(2, 2), &data);
    let mut task = job.task(0, &[]);
    task.train = None;
    assert!(matches!(job.exec.run(&task), Err(RunError::InvalidWorkload(_))));

    let fresh = TrainExecutor::new();
    assert!(matches!(fresh.run(&job.task(0, &[])), Err(RunError::NotPrepared(_))));
    assert!(matches!(fresh.prepare(&ContentId::of(b"other"), &data), Err(RunError::WorkloadMismatch { .. })));

    // A round-1 shard whose input is missing.
    assert!(matches!(job.exec.run(&job.task(3, &[])), Err(RunError::Io(_))));

    // The wall clock, checked between steps.
    let mut long = gpt(1, 1);
    long.local_steps = 100_000;
    let job = Job::new(long, &data);
    let mut task = job.task(0, &[]);
    task.limits.wall_ms = 50;
    assert!(matches!(job.exec.run(&task), Err(RunError::WallTimeout(50))));
}
