//! Hostile and broken workloads: the sandbox holds and every failure is typed.

use cairn_runtime::{Executor as _, RunError, TaskRun, WasmConfig, WasmExecutor};
use cairn_types::{ContentId, Limits};

use crate::*;

fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap()
}

#[test]
fn an_infinite_loop_runs_out_of_fuel_deterministically() {
    let m = wat(r#"(module (memory (export "memory") 1) (func (export "_start") (loop (br 0))))"#);
    let (exec, id) = load("loop", &m);
    let limits = Limits { fuel: 5_000_000, ..Limits::default() };
    let a = exec.run(&TaskRun::new(id, limits.clone())).unwrap();
    assert_eq!(a.bundle.exit(), Some("out of fuel"));
    assert_eq!(a.units, 5_000_000);
    assert_eq!(exec.run(&TaskRun::new(id, limits)).unwrap().bundle.id(), a.bundle.id());
}

#[test]
fn an_infinite_loop_with_ample_fuel_is_stopped_by_the_wall_clock_cap() {
    let m = wat(r#"(module (memory (export "memory") 1) (func (export "_start") (loop (br 0))))"#);
    let (exec, id) = load("loop-wall", &m);
    let limits = Limits { fuel: u64::MAX / 2, wall_ms: 300, ..Limits::default() };
    let started = std::time::Instant::now();
    let err = exec.run(&TaskRun::new(id, limits)).unwrap_err();
    assert!(matches!(err, RunError::WallTimeout(300)), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn a_memory_bomb_hits_the_memory_cap() {
    let m = wat(r#"(module (memory (export "memory") 1)
             (func (export "_start") (loop (drop (memory.grow (i32.const 16))) (br 0))))"#);
    let (exec, id) = load("bomb", &m);
    let mut task = TaskRun::new(id, Limits::default());
    task.memory_mb = 64;
    let out = exec.run(&task).unwrap();
    assert_eq!(out.bundle.exit(), Some("out of memory"));
}

#[test]
fn a_module_with_several_memories_cannot_multiply_the_memory_cap() {
    let m = wat(r#"(module (memory 1) (memory (export "memory") 1) (func (export "_start")))"#);
    let exec = WasmExecutor::new(WasmConfig { work_dir: scratch("multi-memory"), cache_dir: None }).unwrap();
    let err = exec.prepare(&ContentId::of(&m), &m).unwrap_err();
    assert!(matches!(err, RunError::InvalidWorkload(_)), "{err}");
}

#[test]
fn a_table_bomb_hits_the_table_cap() {
    let m = wat(r#"(module (memory (export "memory") 1) (table 1 funcref)
             (func (export "_start") (loop (drop (table.grow (ref.null func) (i32.const 100000))) (br 0))))"#);
    let (exec, id) = load("table-bomb", &m);
    let out = exec.run(&TaskRun::new(id, Limits::default())).unwrap();
    assert_eq!(out.bundle.exit(), Some("out of memory"));
}

#[test]
fn reads_and_writes_outside_the_task_directories_are_denied() {
    let dir = scratch("probe-in");
    std::fs::write(dir.join("data.txt"), b"hello").unwrap();
    let (exec, id) = load("probe", &guest("sandbox-probe"));
    let out = exec
        .run(&TaskRun::new(id, Limits::default()).arg("escape").input("data.txt", dir.join("data.txt")))
        .unwrap();
    let report = String::from_utf8(out.bundle.files["report.txt"].clone()).unwrap();
    for line in report.lines() {
        if line.starts_with("read /in/data.txt") {
            assert!(line.contains("ALLOWED 5"), "{line}");
        } else {
            assert!(line.contains("denied"), "escaped the sandbox: {line}\n{report}");
        }
    }
    assert_eq!(report.lines().count(), 8);
    assert!(!dir.join("x").exists());
}

#[test]
fn the_clock_is_fixed_and_even_hash_map_order_repeats() {
    let (exec, id) = load("probe-env", &guest("sandbox-probe"));
    let a = exec.run(&TaskRun::new(id, Limits::default()).arg("env")).unwrap();
    let report = String::from_utf8(a.bundle.files["report.txt"].clone()).unwrap();
    assert!(report.contains("time: 1767225600"), "{report}");
    let b = exec.run(&TaskRun::new(id, Limits::default()).arg("env")).unwrap();
    assert_eq!(a.bundle.id(), b.bundle.id());
}

#[test]
fn huge_output_is_stopped_at_the_output_cap() {
    let (exec, id) = load("probe-big", &guest("sandbox-probe"));
    let limits = Limits { output_bytes: 4 << 20, ..Limits::default() };
    let err = exec.run(&TaskRun::new(id, limits).arg("write").arg("2000")).unwrap_err();
    assert!(matches!(err, RunError::OutputTooLarge(_)), "{err}");
    // Nothing is left behind in the work directory.
    let work = std::env::temp_dir().join(format!("cairn-runtime-it-{}-probe-big", std::process::id()));
    assert_eq!(std::fs::read_dir(work).unwrap().count(), 0);
}

#[test]
fn invalid_modules_and_mismatched_ids_are_refused_before_anything_runs() {
    let exec = WasmExecutor::new(WasmConfig { work_dir: scratch("invalid"), cache_dir: None }).unwrap();
    let junk = b"\0asm\x01\0\0\0garbage".to_vec();
    assert!(matches!(exec.prepare(&ContentId::of(&junk), &junk), Err(RunError::InvalidWorkload(_))));
    assert!(exec.validate(&junk).is_err());
    let good = guest("sieve");
    assert!(matches!(exec.prepare(&ContentId::of(b"other"), &good), Err(RunError::WorkloadMismatch { .. })));
    assert!(matches!(
        exec.run(&TaskRun::new(ContentId::of(&good), Limits::default())),
        Err(RunError::NotPrepared(_))
    ));
    let no_start = wat(r#"(module (func (export "main")))"#);
    let id = ContentId::of(&no_start);
    exec.prepare(&id, &no_start).unwrap();
    let out = exec.run(&TaskRun::new(id, Limits::default())).unwrap();
    assert!(out.bundle.exit().unwrap().contains("no _start"));
}
