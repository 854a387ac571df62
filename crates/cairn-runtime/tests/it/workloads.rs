//! Real workloads give the same bytes and the same fuel every time.

use cairn_runtime::{Executor as _, TaskRun};
use cairn_types::Limits;

use crate::*;

#[test]
fn the_sieve_counts_primes_and_repeats_bit_for_bit_with_the_same_fuel() {
    let wasm = guest("sieve");
    let (a, id) = load("sieve-a", &wasm);
    let (b, _) = load("sieve-b", &wasm);
    let task = TaskRun::new(id, Limits::default()).arg("1000000");
    let x = a.run(&task).unwrap();
    let y = b.run(&task).unwrap();
    assert!(x.bundle.succeeded(), "{:?}", x.bundle.exit());
    let report = String::from_utf8(x.bundle.files["primes-0.json"].clone()).unwrap();
    assert!(report.contains("\"primes\":78498"), "{report}");
    assert_eq!(x.bundle.id(), y.bundle.id(), "outputs are bit-identical across executors");
    assert_eq!(x.units, y.units, "fuel repeats exactly");
    assert!(x.units > 1_000_000);
    // A different task index sieves a different slice: different output.
    let mut second = task.clone();
    (second.task_index, second.tasks) = (1, 2);
    assert_ne!(a.run(&second).unwrap().bundle.id(), x.bundle.id());
}

#[test]
fn the_mandelbrot_renderer_writes_a_png_frame_per_task() {
    let (exec, id) = load("mandel", &guest("mandelbrot"));
    let mut task = TaskRun::new(id, Limits::default()).arg("64").arg("48").arg("4").arg("64");
    task.task_index = 2;
    task.tasks = 4;
    let out = exec.run(&task).unwrap();
    let png = &out.bundle.files["frame-2.png"];
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(exec.run(&task).unwrap().bundle.id(), out.bundle.id());
}

#[test]
fn the_neural_network_reads_its_input_file_and_predicts_every_row() {
    let dir = scratch("nn-input");
    let rows = cairn_guest_nn::demo_rows(20, 16, 7);
    let csv: String =
        rows.iter().map(|r| r.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",") + "\n").collect();
    std::fs::write(dir.join("features.csv"), csv).unwrap();
    let (exec, id) = load("nn", &guest("nn"));
    let task = TaskRun::new(id, Limits::default())
        .arg("features.csv")
        .input("features.csv", dir.join("features.csv"));
    let out = exec.run(&task).unwrap();
    assert!(out.bundle.succeeded(), "{:?} {:?}", out.bundle.exit(), out.bundle.files.get(".cairn/stderr"));
    let preds = String::from_utf8(out.bundle.files["predictions.csv"].clone()).unwrap();
    assert_eq!(preds.lines().count(), 21);
    // The same numbers as the same code compiled natively.
    let native = cairn_guest_nn::infer(&rows, 16, 256, 10, 42);
    let first: Vec<&str> = preds.lines().nth(1).unwrap().split(',').collect();
    let best = native[0]
        .iter()
        .enumerate()
        .fold((0, f32::MIN), |acc, (j, v)| if *v > acc.1 { (j, *v) } else { acc });
    assert_eq!(first[1], best.0.to_string());
    assert_eq!(first[2], format!("{:.6}", best.1));
}

#[test]
fn a_missing_input_is_a_deterministic_failure_with_its_message() {
    let (exec, id) = load("nn-missing", &guest("nn"));
    let out = exec.run(&TaskRun::new(id, Limits::default()).arg("nope.csv")).unwrap();
    assert_eq!(out.bundle.exit(), Some("exit 1"));
    let err = String::from_utf8_lossy(&out.bundle.files[".cairn/stderr"]).to_string();
    assert!(err.contains("cannot read /in/nope.csv"), "{err}");
}

#[test]
fn a_real_third_party_program_renders_an_svg_scene_to_png_identically_twice() {
    let wasm = std::fs::read(testdata("wasm/third-party/resvg.wasm")).unwrap();
    let dir = scratch("svg");
    std::fs::write(
        dir.join("scene.svg"),
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="120" height="80">
  <rect width="120" height="80" fill="#0b3d91"/>
  <circle cx="60" cy="40" r="28" fill="#fc3d21" stroke="white" stroke-width="4"/>
  <path d="M10 70 L60 10 L110 70 Z" fill="none" stroke="#ffd700" stroke-width="3"/>
</svg>"##,
    )
    .unwrap();
    let (exec, id) = load("resvg", &wasm);
    let task = TaskRun::new(id, Limits::default())
        .arg("/in/scene.svg")
        .arg("/out/scene.png")
        .input("scene.svg", dir.join("scene.svg"));
    let a = exec.run(&task).unwrap();
    assert!(
        a.bundle.succeeded(),
        "{:?} {:?}",
        a.bundle.exit(),
        a.bundle.files.get(".cairn/stderr").map(|e| String::from_utf8_lossy(e).to_string())
    );
    let png = &a.bundle.files["scene.png"];
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 120, "PNG width");
    let b = exec.run(&task).unwrap();
    assert_eq!(a.bundle.id(), b.bundle.id());
    assert_eq!(a.units, b.units);
}

/// The committed guests are what the sources build to (when the wasm target is installed).
#[test]
fn committed_guest_modules_match_a_fresh_build() {
    let sysroot = std::process::Command::new("rustc").args(["--print", "sysroot"]).output().unwrap();
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_string();
    if !std::path::Path::new(&sysroot).join("lib/rustlib/wasm32-wasip1").exists() {
        eprintln!("wasm32-wasip1 target not installed: skipping the rebuild comparison");
        return;
    }
    let out = scratch("guest-rebuild");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let status = std::process::Command::new("bash")
        .arg(root.join("scripts/build-guests.sh"))
        .arg(&out)
        .env("CARGO_TARGET_DIR", root.join("target"))
        .status()
        .unwrap();
    assert!(status.success(), "scripts/build-guests.sh failed");
    for g in ["mandelbrot", "sieve", "nn", "sandbox-probe"] {
        let fresh = std::fs::read(out.join(format!("{g}.wasm"))).unwrap();
        assert!(
            fresh == guest(g),
            "testdata/wasm/{g}.wasm differs from a fresh build: run scripts/build-guests.sh"
        );
    }
}
