//! The `wasm` executor: WASI preview 1 modules on wasmtime, metered by fuel, with every source
//! of nondeterminism pinned (NaN canonicalization, no threads, deterministic relaxed SIMD, a
//! fixed clock, seeded randomness, no network) and only the task's inputs visible.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_types::{ContentId, OutputBundle, WorkloadKind};
use wasmtime::{Config, Engine, Linker, Module, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, HostMonotonicClock, HostWallClock, I32Exit, WasiCtxBuilder};

use crate::{Executor, Outcome, Result, RunError, TaskRun, io};

pub(crate) mod cgi;

/// Captured standard output and error per stream.
const LOG_CAP: usize = 64 * 1024;
/// The epoch ticks every 10 ms.
const TICK: Duration = Duration::from_millis(10);
/// 2026-01-01T00:00:00Z: the only time a workload ever sees.
const FIXED_EPOCH_SECS: u64 = 1_767_225_600;

/// Where the executor keeps its files.
#[derive(Clone, Debug)]
pub struct WasmConfig {
    /// Per-task scratch directories are created here.
    pub work_dir: PathBuf,
    /// Compiled modules are cached here across restarts (none: memory only).
    pub cache_dir: Option<PathBuf>,
}

impl WasmConfig {
    /// Scratch and cache under one directory.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        WasmConfig { work_dir: dir.join("work"), cache_dir: Some(dir.join("module-cache")) }
    }
}

struct FixedWall;
impl HostWallClock for FixedWall {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::from_secs(FIXED_EPOCH_SECS)
    }
}

struct FixedMonotonic;
impl HostMonotonicClock for FixedMonotonic {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Why the epoch callback stopped a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Wall,
    Output,
}

struct Host {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
    deadline: Instant,
    out_dir: PathBuf,
    out_limit: u64,
    stopped: Option<Stop>,
}

/// The `wasm` executor.
pub struct WasmExecutor {
    engine: Engine,
    modules: Mutex<HashMap<ContentId, Module>>,
    work_dir: PathBuf,
    stop: Arc<AtomicBool>,
    counter: AtomicU64,
}

impl std::fmt::Debug for WasmExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WasmExecutor({})", self.work_dir.display())
    }
}

impl Drop for WasmExecutor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn rt(e: impl std::fmt::Display) -> RunError {
    RunError::Runtime(e.to_string())
}

/// The engine configuration every Cairn node uses; it is part of the determinism contract.
/// Tables a module may define (WASI guests use one, for indirect calls).
const MAX_TABLES: usize = 4;
/// Elements a table may grow to (a table-growth bomb stops here; real guests use a few thousand).
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// One instance, one memory of at most `memory_mb`, a few bounded tables; growth past a cap traps.
fn store_limits(memory_mb: u64) -> StoreLimits {
    let memory = usize::try_from(memory_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
    StoreLimitsBuilder::new()
        .memory_size(memory)
        .memories(1)
        .tables(MAX_TABLES)
        .table_elements(MAX_TABLE_ELEMENTS)
        .instances(1)
        .trap_on_grow_failure(true)
        .build()
}

fn engine_config(cache_dir: Option<&Path>) -> Result<Config> {
    let mut c = Config::new();
    c.consume_fuel(true);
    c.epoch_interruption(true);
    c.cranelift_nan_canonicalization(true);
    // Shared-memory threads are not compiled in (wasmtime's `threads` feature is off).
    c.relaxed_simd_deterministic(true);
    // One linear memory per module: the memory cap is per memory, so several would multiply it.
    c.wasm_multi_memory(false);
    if let Some(dir) = cache_dir {
        std::fs::create_dir_all(dir).map_err(io)?;
        let dir = std::path::absolute(dir).map_err(io)?;
        let mut cc = wasmtime::CacheConfig::new();
        cc.with_directory(&dir);
        c.cache(Some(wasmtime::Cache::new(cc).map_err(rt)?));
    }
    Ok(c)
}

impl WasmExecutor {
    /// A new executor.
    ///
    /// # Errors
    /// [`RunError::Io`] if its directories cannot be created, [`RunError::Runtime`] if the
    /// engine cannot start.
    pub fn new(cfg: WasmConfig) -> Result<Self> {
        std::fs::create_dir_all(&cfg.work_dir).map_err(io)?;
        let engine = Engine::new(&engine_config(cfg.cache_dir.as_deref())?).map_err(rt)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ticker, flag) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("cairn-wasm-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    ticker.increment_epoch();
                }
            })
            .map_err(io)?;
        Ok(WasmExecutor {
            engine,
            modules: Mutex::new(HashMap::new()),
            work_dir: cfg.work_dir,
            stop,
            counter: AtomicU64::new(0),
        })
    }

    /// Check that bytes are a valid module without compiling it (for clients, before they
    /// pay to submit it).
    ///
    /// # Errors
    /// [`RunError::InvalidWorkload`] with the validator's reason.
    pub fn validate(&self, bytes: &[u8]) -> Result<()> {
        Module::validate(&self.engine, bytes).map_err(|e| RunError::InvalidWorkload(format!("{e:#}")))
    }

    fn module(&self, id: &ContentId) -> Option<Module> {
        self.modules.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    /// A store for one run: its limits, `fuel`, and an epoch check that stops it at its wall
    /// deadline or (where it has one) when its output grows past its limit.
    fn store(&self, host: Host, fuel: u64) -> Result<Store<Host>> {
        let mut store = Store::new(&self.engine, host);
        store.limiter(|h| &mut h.limits);
        store.set_fuel(fuel).map_err(rt)?;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            let h = ctx.data_mut();
            if Instant::now() >= h.deadline {
                h.stopped = Some(Stop::Wall);
                return Ok(UpdateDeadline::Interrupt);
            }
            if h.out_limit < u64::MAX && dir_size(&h.out_dir) > h.out_limit {
                h.stopped = Some(Stop::Output);
                return Ok(UpdateDeadline::Interrupt);
            }
            Ok(UpdateDeadline::Continue(1))
        });
        Ok(store)
    }

    /// WASI preview 1, the only imports a module gets.
    fn linker(&self) -> Result<Linker<Host>> {
        let mut linker: Linker<Host> = Linker::new(&self.engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |h| &mut h.wasi).map_err(rt)?;
        Ok(linker)
    }

    fn scratch(&self) -> Result<PathBuf> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let dir = self.work_dir.join(format!("task-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("in")).map_err(io)?;
        std::fs::create_dir_all(dir.join("out")).map_err(io)?;
        Ok(dir)
    }
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total = total.saturating_add(m.len()),
                Err(_) => {}
            }
        }
    }
    total
}

/// Read the output directory into a bundle: regular files only, paths relative to `/out`.
pub(crate) fn collect(dir: &Path, limit: u64) -> Result<OutputBundle> {
    let mut bundle = OutputBundle::default();
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io)? {
            let e = e.map_err(io)?;
            let ty = e.file_type().map_err(io)?;
            let path = e.path();
            let rel = path.strip_prefix(dir).map_err(io)?.to_string_lossy().replace('\\', "/");
            if ty.is_dir() {
                stack.push(path);
            } else if ty.is_file() {
                let bytes = std::fs::read(&path).map_err(io)?;
                total = total.saturating_add(bytes.len() as u64);
                if total > limit {
                    return Err(RunError::OutputTooLarge(limit));
                }
                if rel.starts_with(".cairn/") || rel == ".cairn" {
                    return Err(RunError::BadOutput(format!("{rel}: the .cairn/ directory is reserved")));
                }
                bundle.files.insert(rel, bytes);
            } else {
                return Err(RunError::BadOutput(format!("{rel} is not a regular file")));
            }
        }
    }
    Ok(bundle)
}

impl Executor for WasmExecutor {
    fn kind(&self) -> WorkloadKind {
        WorkloadKind::Wasm
    }

    fn prepare(&self, id: &ContentId, bytes: &[u8]) -> Result<()> {
        let actual = ContentId::of(bytes);
        if actual != *id {
            return Err(RunError::WorkloadMismatch { expected: *id, actual });
        }
        if self.module(id).is_some() {
            return Ok(());
        }
        let module =
            Module::new(&self.engine, bytes).map_err(|e| RunError::InvalidWorkload(format!("{e:#}")))?;
        self.modules.lock().unwrap_or_else(|p| p.into_inner()).insert(*id, module);
        Ok(())
    }

    fn is_prepared(&self, id: &ContentId) -> bool {
        self.module(id).is_some()
    }

    fn run(&self, task: &TaskRun) -> Result<Outcome> {
        let module = self.module(&task.workload).ok_or(RunError::NotPrepared(task.workload))?;
        let dir = self.scratch()?;
        let result = self.run_in(&dir, &module, task);
        let _ = std::fs::remove_dir_all(&dir);
        result
    }
}

impl WasmExecutor {
    fn run_in(&self, dir: &Path, module: &Module, task: &TaskRun) -> Result<Outcome> {
        let (in_dir, out_dir) = (dir.join("in"), dir.join("out"));
        for (name, path) in &task.inputs {
            if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
                return Err(RunError::Io(format!("input name {name:?} is not a plain file name")));
            }
            let dest = in_dir.join(name);
            if std::fs::hard_link(path, &dest).is_err() {
                std::fs::copy(path, &dest).map_err(|e| RunError::Io(format!("input {name}: {e}")))?;
            }
        }
        let stdout = MemoryOutputPipe::new(LOG_CAP);
        let stderr = MemoryOutputPipe::new(LOG_CAP);
        let mut b = WasiCtxBuilder::new();
        b.arg("task");
        for a in &task.args {
            b.arg(a);
        }
        for (k, v) in &task.env {
            b.env(k, v);
        }
        b.env("CAIRN_TASK_INDEX", task.task_index.to_string());
        b.env("CAIRN_TASKS", task.tasks.to_string());
        b.stdout(stdout.clone()).stderr(stderr.clone());
        b.preopened_dir(&in_dir, "/in", FsPerms::ReadOnly).map_err(rt)?;
        b.preopened_dir(&out_dir, "/out", FsPerms::ReadWrite).map_err(rt)?;
        b.wall_clock(FixedWall).monotonic_clock(FixedMonotonic);
        b.secure_random(wasmtime_wasi::Deterministic::new(task.seed.to_vec()));
        b.insecure_random(wasmtime_wasi::Deterministic::new(task.seed.iter().rev().copied().collect()));
        b.insecure_random_seed(u128::from_le_bytes(task.seed[..16].try_into().unwrap_or([0; 16])));
        let host = Host {
            wasi: b.build_p1(),
            limits: store_limits(task.memory_mb),
            deadline: Instant::now() + Duration::from_millis(task.limits.wall_ms),
            out_dir: out_dir.clone(),
            out_limit: task.limits.output_bytes,
            stopped: None,
        };
        let mut store = self.store(host, task.limits.fuel)?;
        let linker = self.linker()?;

        let started = Instant::now();
        let exit = match linker.instantiate(&mut store, module) {
            Err(e) => format!("cannot instantiate: {e:#}"),
            Ok(instance) => match instance.get_typed_func::<(), ()>(&mut store, "_start") {
                Err(_) => "no _start function (not a WASI command)".to_string(),
                Ok(start) => match start.call(&mut store, ()) {
                    Ok(()) => "ok".to_string(),
                    Err(e) => {
                        if let Some(code) = e.downcast_ref::<I32Exit>() {
                            if code.0 == 0 { "ok".to_string() } else { format!("exit {}", code.0) }
                        } else if matches!(
                            e.downcast_ref::<wasmtime::Trap>(),
                            Some(wasmtime::Trap::OutOfFuel)
                        ) {
                            "out of fuel".to_string()
                        } else if let Some(stop) = store.data().stopped {
                            return Err(match stop {
                                Stop::Wall => RunError::WallTimeout(task.limits.wall_ms),
                                Stop::Output => RunError::OutputTooLarge(task.limits.output_bytes),
                            });
                        } else if format!("{e:#}").contains("forcing trap when growing") {
                            "out of memory".to_string()
                        } else {
                            match e.downcast_ref::<wasmtime::Trap>() {
                                Some(t) => format!("trap: {t}"),
                                None => format!("error: {e:#}"),
                            }
                        }
                    }
                },
            },
        };
        let wall_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let units = task.limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        drop(store);
        let mut bundle = collect(&out_dir, task.limits.output_bytes)?;
        bundle.files.insert(OutputBundle::EXIT.into(), exit.into_bytes());
        let (so, se) = (stdout.contents(), stderr.contents());
        if !so.is_empty() {
            bundle.files.insert(OutputBundle::STDOUT.into(), so.to_vec());
        }
        if !se.is_empty() {
            bundle.files.insert(OutputBundle::STDERR.into(), se.to_vec());
        }
        Ok(Outcome { bundle, units, wall_ms })
    }
}
