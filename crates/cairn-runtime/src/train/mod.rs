//! The `train` executor: deterministic data-parallel training on candle, in audited rounds.
//!
//! A job ([`TrainSpec`]) runs `rounds` rounds of `W = width` shard tasks and one aggregation
//! task each; its workload is the dataset (a CSV table for an MLP, UTF-8 text for a GPT, see
//! [`data`]). Every task is a pure function of the dataset, the spec and the bundles it reads,
//! so an auditor re-running it gets the same bundle id.
//!
//! # Round protocol
//!
//! - **Shard `s` of round `r`** starts from the initial weights (`r = 0`, drawn from
//!   `TrainSpec.seed`, see [`models`]) or from the checkpoint in `dep-0`, the aggregation bundle
//!   of round `r − 1`. It runs `local_steps` AdamW steps ([`optim`]) on batches of `batch_size`
//!   drawn from its shard with a SplitMix64 stream keyed by (`TrainSpec.seed`, `s`, global
//!   step), and commits its weights and optimizer state.
//! - **The aggregation of round `r`** reads the round's `W` shard bundles (`dep-0 … dep-(W−1)`),
//!   checks that each is shard `i` of round `r` of this run and that all started from the same
//!   checkpoint, averages weights, first and second moments elementwise (summed in shard order,
//!   then divided by `W`, in `f32`), evaluates the result on the held-out split and commits it.
//!   The next round's shards record the content id of the whole aggregation bundle they start
//!   from as `start`.
//!
//! The run id is `hash_domain("cairn train run v1", [dataset id, borsh(TrainSpec)])`, in hex.
//!
//! # Bundles
//!
//! | task        | files |
//! |-------------|-------|
//! | shard       | `state.safetensors` (`w.*`, `m.*`, `v.*`, `__metadata__.step`), `train.json` {run, round, role: "shard", shard, start, step, train_loss}, `.cairn/exit` = `ok` |
//! | aggregation | `checkpoint.safetensors` (same layout), `model.json` ([`ModelCard`]), `metrics.json` ([`Metrics`]), `train.json` {run, round, role: "aggregate", step}, `.cairn/exit` = `ok` |
//! | failure     | `.cairn/exit` = a short message (`invalid dataset: …`, `invalid dependency: …`, `upstream failed: …`, `diverged: …`, `over the fuel limit`, `invalid spec: …`), `.cairn/stderr` = detail |
//!
//! Failures that are properties of the job are committed results; a task reading a failed
//! bundle commits `upstream failed: <its exit>` without training. Only problems of this machine
//! are errors: unreadable inputs ([`RunError::Io`]), the wall clock ([`RunError::WallTimeout`],
//! checked between steps), an unprepared dataset. A bundle over `limits.output_bytes` is
//! [`RunError::OutputTooLarge`], which the caller commits.
//!
//! Metered units are examples: `local_steps × batch_size` for a shard, `W` for an aggregation
//! (a task whose units would pass `limits.fuel` commits `over the fuel limit` without running;
//! a diverged shard reports the examples of the steps it completed).
//!
//! # Determinism
//!
//! Same inputs give the same bundle bytes for any thread count: candle's CPU kernels give the
//! same bits whatever `RAYON_NUM_THREADS` is; nothing that reaches the output iterates a hash
//! map; JSON is written from structs (fixed field order) and the safetensors files by hand
//! (sorted names); random numbers come only from SplitMix64 streams keyed by the spec's seed,
//! never from candle's generators or the task seed; batch composition (and the evaluation's
//! chunking) is fixed. As for inference, bitwise equality is promised within one
//! instruction-set class.

pub mod data;
pub mod models;
pub mod optim;
mod roles;
pub mod state;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cairn_types::{ContentId, OutputBundle, TrainRole, TrainSpec, WorkloadKind};
use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::{Executor, Outcome, Result, RunError, TaskRun, lock};
pub use data::{Dataset, SplitMix64};
pub use models::{Gpt, Mlp, Model, ModelCard, Trained, Weights, load_trained};
pub use state::{HostTensor, TensorFile, TrainState};

/// A shard's weights and optimizer state.
pub const STATE_FILE: &str = "state.safetensors";
/// An aggregation's averaged weights and optimizer state.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// An aggregation's [`ModelCard`].
pub const MODEL_FILE: &str = "model.json";
/// An aggregation's [`Metrics`].
pub const METRICS_FILE: &str = "metrics.json";
/// Every successful task's [`TrainRecord`].
pub const RECORD_FILE: &str = "train.json";

/// What an aggregation measured (`metrics.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Round (0-based).
    pub round: u32,
    /// Global optimizer steps taken.
    pub step: u64,
    /// Mean training loss of the round's steps (the mean of the shards' means).
    pub train_loss: f64,
    /// Mean cross-entropy on the held-out split.
    pub eval_loss: f64,
    /// Held-out accuracy (classifiers; `null` for language models).
    pub eval_accuracy: Option<f64>,
    /// Scalar parameters of the model.
    pub parameters: u64,
}

/// `train.json`: who made a bundle, in which run and round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainRecord {
    /// The run id (hex).
    pub run: String,
    /// Round.
    pub round: u32,
    /// `shard` or `aggregate`.
    pub role: String,
    /// Shard index (shards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<u32>,
    /// Content id (hex) of the aggregation bundle the shard started from; all zeros in round 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// Global optimizer steps taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    /// Mean loss of the shard's steps (shards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_loss: Option<f64>,
}

/// The run id of training `spec` on dataset `dataset`.
pub fn run_id(dataset: &ContentId, spec: &TrainSpec) -> String {
    let spec_bytes = borsh::to_vec(spec).unwrap_or_default();
    cairn_types::Hash32(cairn_types::hash_domain("cairn train run v1", &[dataset.as_bytes(), &spec_bytes]))
        .to_hex()
}

/// The metrics of an aggregation bundle (`None` for anything else, failures included).
pub fn decode_metrics(bundle: &OutputBundle) -> Option<Metrics> {
    if !bundle.succeeded() {
        return None;
    }
    serde_json::from_slice(bundle.files.get(METRICS_FILE)?).ok()
}

/// The `train.json` of a successful train bundle.
pub fn decode_record(bundle: &OutputBundle) -> Option<TrainRecord> {
    if !bundle.succeeded() {
        return None;
    }
    serde_json::from_slice(bundle.files.get(RECORD_FILE)?).ok()
}

/// Train `spec`'s model in one process for `steps` steps on the whole training split (no
/// shards, no bundles), with the same initialization, optimizer, batch size and sampler (as
/// shard 0), then evaluate it as an aggregation does. `train_loss` is the mean over the last
/// round's worth of steps and `round` the round those steps would end, so a `W = 1` job of
/// `rounds × local_steps` steps reports the same metrics.
///
/// # Errors
/// [`RunError::InvalidWorkload`] for a spec or dataset the job would fail on, including a
/// diverging loss.
pub fn reference_loop(spec: &TrainSpec, dataset: &[u8], steps: u32) -> Result<Metrics> {
    reference_run(spec, dataset, steps).map(|(m, _)| m)
}

/// [`reference_loop`], also returning the final `checkpoint.safetensors` bytes.
///
/// # Errors
/// As [`reference_loop`].
pub fn reference_run(spec: &TrainSpec, dataset: &[u8], steps: u32) -> Result<(Metrics, Vec<u8>)> {
    roles::reference(spec, dataset, steps).map_err(|f| match f {
        roles::Fail::Commit { exit, .. } => RunError::InvalidWorkload(exit),
        roles::Fail::Run(e) => e,
    })
}

/// The `train` executor.
pub struct TrainExecutor {
    datasets: Mutex<BTreeMap<ContentId, Arc<Vec<u8>>>>,
    device: Device,
}

impl std::fmt::Debug for TrainExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainExecutor").field("device", &self.device).finish_non_exhaustive()
    }
}

impl Default for TrainExecutor {
    fn default() -> Self {
        Self::new()
    }
}

impl TrainExecutor {
    /// An executor training on the CPU.
    pub fn new() -> Self {
        TrainExecutor { datasets: Mutex::new(BTreeMap::new()), device: Device::Cpu }
    }
}

/// A failure bundle: only the exit message and its detail.
fn failure(exit: &str, detail: &str) -> OutputBundle {
    let mut files = BTreeMap::new();
    files.insert(OutputBundle::EXIT.to_string(), exit.as_bytes().to_vec());
    files.insert(OutputBundle::STDERR.to_string(), detail.as_bytes().to_vec());
    OutputBundle { files }
}

impl Executor for TrainExecutor {
    fn kind(&self) -> WorkloadKind {
        WorkloadKind::Train
    }

    fn prepare(&self, id: &ContentId, bytes: &[u8]) -> Result<()> {
        let actual = ContentId::of(bytes);
        if actual != *id {
            return Err(RunError::WorkloadMismatch { expected: *id, actual });
        }
        lock(&self.datasets).entry(*id).or_insert_with(|| Arc::new(bytes.to_vec()));
        Ok(())
    }

    fn is_prepared(&self, id: &ContentId) -> bool {
        lock(&self.datasets).contains_key(id)
    }

    fn run(&self, task: &TaskRun) -> Result<Outcome> {
        let started = Instant::now();
        let spec = task
            .train
            .as_ref()
            .ok_or_else(|| RunError::InvalidWorkload("a train task needs its job's training plan".into()))?;
        let dataset =
            lock(&self.datasets).get(&task.workload).cloned().ok_or(RunError::NotPrepared(task.workload))?;
        let (round, role) = spec.role(task.task_index);
        let planned = match role {
            TrainRole::Shard(_) => u64::from(spec.local_steps).saturating_mul(u64::from(spec.batch_size)),
            TrainRole::Aggregate => u64::from(spec.width),
        };
        let ctx = roles::Ctx {
            spec,
            dataset: &dataset,
            run: run_id(&task.workload, spec),
            task,
            started,
            device: &self.device,
        };
        let result = if let Err(e) = spec.validate() {
            Err(roles::Fail::commit(format!("invalid spec: {e}"), e))
        } else if task.task_index >= spec.tasks() {
            let msg = format!("task {} of a job of {} tasks", task.task_index, spec.tasks());
            Err(roles::Fail::commit(format!("invalid task: {msg}"), msg))
        } else if planned > task.limits.fuel {
            Err(roles::Fail::commit(
                "over the fuel limit",
                format!("the task processes {planned} examples; limits.fuel is {}", task.limits.fuel),
            ))
        } else {
            match role {
                TrainRole::Shard(s) => roles::shard(&ctx, round, s),
                TrainRole::Aggregate => roles::aggregate(&ctx, round),
            }
        };
        let (bundle, units) = match result {
            Ok(files) => (OutputBundle { files }, planned),
            Err(roles::Fail::Commit { exit, detail, units }) => (failure(&exit, &detail), units),
            Err(roles::Fail::Run(e)) => return Err(e),
        };
        if bundle.size() as u64 > task.limits.output_bytes {
            return Err(RunError::OutputTooLarge(task.limits.output_bytes));
        }
        Ok(Outcome {
            bundle,
            units,
            wall_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }
}
