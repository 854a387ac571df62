//! The same guest code natively and as sandboxed, metered WASM.
//!
//! Run: `cargo bench -p cairn-runtime --bench wasm_vs_native`. Prints a Markdown table of the
//! median of 5 runs each (modules compiled beforehand; WASM time includes instantiation,
//! fuel metering and collecting the output).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::arithmetic_side_effects)]

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cairn_runtime::{Executor as _, TaskRun, WasmConfig, WasmExecutor};
use cairn_types::{ContentId, Limits};

const RUNS: usize = 5;

fn median(mut f: impl FnMut()) -> Duration {
    f();
    let mut t: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort();
    t[RUNS / 2]
}

fn testdata(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata").join(rel)
}

fn main() {
    let dir = std::env::temp_dir().join(format!("cairn-bench-wasm-{}", std::process::id()));
    let exec = WasmExecutor::new(WasmConfig { work_dir: dir.clone(), cache_dir: None }).unwrap();
    let load = |name: &str| {
        let wasm = std::fs::read(testdata(&format!("wasm/{name}.wasm"))).unwrap();
        let id = ContentId::of(&wasm);
        exec.prepare(&id, &wasm).unwrap();
        id
    };
    let limits = Limits { fuel: u64::MAX / 4, wall_ms: 600_000, output_bytes: 1 << 30 };
    let mut rows = Vec::new();

    let sieve = load("sieve");
    let task = TaskRun::new(sieve, limits.clone()).arg("20000000");
    let w = median(|| assert!(exec.run(&task).unwrap().bundle.succeeded()));
    let n = median(|| {
        black_box(cairn_guest_sieve::sieve(black_box(0), black_box(20_000_000)));
    });
    rows.push(("prime sieve to 2×10⁷", n, w));

    let mandel = load("mandelbrot");
    let task = TaskRun::new(mandel, limits.clone()).arg("640").arg("480").arg("1").arg("512");
    let w = median(|| assert!(exec.run(&task).unwrap().bundle.succeeded()));
    let n = median(|| {
        black_box(cairn_guest_mandelbrot::render(640, 480, 0, 1, 512));
    });
    rows.push(("Mandelbrot frame 640×480, 512 iterations", n, w));

    let nn = load("nn");
    let rows_in = cairn_guest_nn::demo_rows(2_000, 64, 7);
    let csv: String = rows_in
        .iter()
        .map(|r| r.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",") + "\n")
        .collect();
    std::fs::write(dir.join("features.csv"), &csv).unwrap();
    let task = TaskRun::new(nn, limits).arg("features.csv").input("features.csv", dir.join("features.csv"));
    let w = median(|| assert!(exec.run(&task).unwrap().bundle.succeeded()));
    let n = median(|| {
        let parsed = cairn_guest_nn::parse_csv(black_box(&csv)).unwrap();
        black_box(cairn_guest_nn::infer(&parsed, 64, 256, 10, 42));
    });
    rows.push(("MLP forward pass, 2,000 rows × 64 → 256 → 10", n, w));

    println!("| workload | native (ms) | wasm (ms) | wasm / native |");
    println!("|---|---:|---:|---:|");
    for (name, n, w) in rows {
        println!(
            "| {name} | {:.1} | {:.1} | {:.2}× |",
            n.as_secs_f64() * 1e3,
            w.as_secs_f64() * 1e3,
            w.as_secs_f64() / n.as_secs_f64()
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}
