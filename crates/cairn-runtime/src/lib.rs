//! Cairn's workload executors.
//!
//! An [`Executor`] prepares a workload (compiles and caches it by content id), runs a task of
//! it under limits (metered units, memory, wall time, output size), and returns the output as
//! an [`OutputBundle`] whose content id is the result commitment. Runs are deterministic: the
//! same workload and inputs give bit-identical outputs and the same metered units on any
//! machine, which is what lets an auditor re-run a task and compare commitments.
//!
//! ```no_run
//! use cairn_runtime::{Executor, WasmExecutor, WasmConfig, TaskRun};
//! use cairn_types::{ContentId, Limits};
//! let wasm = std::fs::read("sieve.wasm").unwrap();
//! let id = ContentId::of(&wasm);
//! let exec = WasmExecutor::new(WasmConfig::in_dir("/tmp/cairn-work")).unwrap();
//! exec.prepare(&id, &wasm).unwrap();
//! let out = exec.run(&TaskRun::new(id, Limits::default()).arg("1000000")).unwrap();
//! println!("{} fuel, output {}", out.units, out.bundle.id());
//! ```

pub mod container;
pub mod inference;
pub mod render;
pub mod train;
mod wasm;

use std::path::{Path, PathBuf};

use cairn_types::{ContentId, Limits, OutputBundle, WorkloadKind};

pub use container::{ContainerConfig, ContainerExecutor};
pub use inference::{InferenceConfig, InferenceExecutor};
pub use render::RenderExecutor;
pub use train::{Metrics, TrainExecutor, decode_metrics, reference_loop};
pub use wasm::cgi::{CgiReply, CgiRequest};
pub use wasm::{WasmConfig, WasmExecutor};

/// Why a task could not produce a result to commit. Deterministic failures of the workload
/// (a non-zero exit, running out of fuel or memory) are not errors: they are results, recorded
/// in the bundle's `.cairn/exit`.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The workload bytes do not hash to the id they were announced with.
    #[error("workload does not match its content id (expected {expected}, got {actual})")]
    WorkloadMismatch {
        /// Announced id.
        expected: ContentId,
        /// Actual hash.
        actual: ContentId,
    },
    /// The workload is not a valid module.
    #[error("invalid workload: {0}")]
    InvalidWorkload(String),
    /// `run` was called before `prepare` for this workload.
    #[error("workload {0} is not prepared")]
    NotPrepared(ContentId),
    /// The task ran past its wall-clock cap (not deterministic, so not committable).
    #[error("task exceeded its wall-clock limit of {0} ms")]
    WallTimeout(u64),
    /// The task wrote more output than allowed.
    #[error("task output exceeds {0} bytes")]
    OutputTooLarge(u64),
    /// The task's output directory held something other than regular files.
    #[error("task output is not plain files: {0}")]
    BadOutput(String),
    /// Host I/O failed (work directory, inputs).
    #[error("host I/O: {0}")]
    Io(String),
    /// The runtime itself failed.
    #[error("runtime: {0}")]
    Runtime(String),
}

impl RunError {
    /// For a failure that is a property of the job itself — the same on every honest machine,
    /// so an auditor re-running the task reaches it too — the exit status to commit as the
    /// task's result (`.cairn/exit` of an otherwise empty bundle). `None` for failures of this
    /// machine or this moment (wall clock, I/O), which must not be committed.
    pub fn committable_exit(&self) -> Option<String> {
        match self {
            RunError::InvalidWorkload(_) => Some("invalid workload".to_string()),
            RunError::OutputTooLarge(limit) => Some(format!("output over the {limit}-byte limit")),
            _ => None,
        }
    }
}

/// A host I/O failure as a [`RunError`].
pub(crate) fn io(e: impl std::fmt::Display) -> RunError {
    RunError::Io(e.to_string())
}

/// A mutex's guard, poisoned or not (executors keep only caches behind their locks).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Result type of this crate.
pub type Result<T, E = RunError> = std::result::Result<T, E>;

/// One task to run.
#[derive(Clone, Debug)]
pub struct TaskRun {
    /// The prepared workload.
    pub workload: ContentId,
    /// Input files: the name the workload sees under `/in`, and the host file.
    pub inputs: Vec<(String, PathBuf)>,
    /// Arguments after the program name.
    pub args: Vec<String>,
    /// Environment (the runtime adds `CAIRN_TASK_INDEX` and `CAIRN_TASKS`).
    pub env: Vec<(String, String)>,
    /// This task's index in its job.
    pub task_index: u32,
    /// Tasks in the job.
    pub tasks: u32,
    /// Limits.
    pub limits: Limits,
    /// Memory cap in MiB.
    pub memory_mb: u64,
    /// CPU cap in thousandths of a core (containers; 0: none).
    pub cpu_millis: u64,
    /// Seed of the workload's (deterministic) random source.
    pub seed: [u8; 32],
    /// For `train` jobs: the job's training plan (the task's round and role follow from
    /// `task_index`; its inputs are the output bundles of the tasks it reads, in order).
    pub train: Option<cairn_types::TrainSpec>,
    /// For `container` jobs that ask for it: outbound network (user-mode NAT; see
    /// [`container::egress`]).
    pub network: bool,
    /// For `render` jobs: what to render (the task's frame and tile follow from `task_index`).
    pub render: Option<cairn_types::RenderSpec>,
}

impl TaskRun {
    /// A single task with no inputs, 256 MiB of memory and a zero seed.
    pub fn new(workload: ContentId, limits: Limits) -> Self {
        TaskRun {
            workload,
            inputs: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            task_index: 0,
            tasks: 1,
            limits,
            memory_mb: 256,
            cpu_millis: 0,
            seed: [0; 32],
            train: None,
            network: false,
            render: None,
        }
    }

    /// Add an argument.
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Add an input file.
    pub fn input(mut self, name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        self.inputs.push((name.into(), path.into()));
        self
    }
}

/// What a task produced.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The output files (plus the runtime's `.cairn/` records).
    pub bundle: OutputBundle,
    /// Metered units used (fuel for WASM).
    pub units: u64,
    /// Wall time, for operators' information only.
    pub wall_ms: u64,
}

/// A workload executor.
pub trait Executor: Send + Sync {
    /// The kind of workload it runs.
    fn kind(&self) -> WorkloadKind;

    /// Check and compile a workload, caching it by content id.
    ///
    /// # Errors
    /// [`RunError::WorkloadMismatch`] or [`RunError::InvalidWorkload`].
    fn prepare(&self, id: &ContentId, bytes: &[u8]) -> Result<()>;

    /// [`prepare`](Self::prepare) from a file (large workloads such as models override this
    /// to read in place).
    ///
    /// # Errors
    /// As [`prepare`](Self::prepare), or [`RunError::Io`] when the file cannot be read.
    fn prepare_file(&self, id: &ContentId, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|e| RunError::Io(format!("{}: {e}", path.display())))?;
        self.prepare(id, &bytes)
    }

    /// True if the workload is prepared.
    fn is_prepared(&self, id: &ContentId) -> bool;

    /// Run one task.
    ///
    /// # Errors
    /// [`RunError`] when no committable result exists (see its variants).
    fn run(&self, task: &TaskRun) -> Result<Outcome>;
}
