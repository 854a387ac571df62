//! `cairn bench container`: a CPU-bound program run directly on this machine against the same
//! program in the container executor (runc sandbox, read-only root, no network, cgroup caps),
//! side by side in one run, with the sandbox's start-up measured apart.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use cairn_runtime::container::image;
use cairn_runtime::{ContainerConfig, ContainerExecutor, Executor as _, TaskRun};
use cairn_types::{ContentId, Limits};
use clap::Args;

#[derive(Debug, Args)]
pub(crate) struct ContainerArgs {
    /// Size of the input the program hashes, in MiB (sets the run's length).
    #[arg(long, default_value_t = 768)]
    mib: u64,
    /// Repetitions (medians are reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Scratch directory.
    #[arg(long, default_value = ".cairn/bench-container")]
    home: PathBuf,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub(crate) fn run(a: ContainerArgs) -> Result<()> {
    let Some(busybox) = image::find_busybox() else {
        bail!("no static busybox here: apt-get install busybox-static")
    };
    if !cairn_runtime::container::available(std::path::Path::new("runc")) {
        bail!("runc does not run here (install runc, run as root)");
    }
    let _ = std::fs::remove_dir_all(&a.home);
    let tree = a.home.join("rootfs");
    image::busybox_tree(&busybox, &tree)?;
    let bytes = image::build(&tree)?;
    let id = ContentId::of(&bytes);
    let exec = ContainerExecutor::new(ContainerConfig::in_dir(a.home.join("exec")))?;
    exec.prepare(&id, &bytes)?;
    // A deterministic input: the same bytes every run.
    let input = a.home.join("input.bin");
    {
        use std::io::Write as _;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&input)?);
        let block: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for _ in 0..a.mib {
            f.write_all(&block)?;
        }
    }
    let limits = Limits { wall_ms: 600_000, output_bytes: 1 << 20, ..Limits::default() };
    let task = |script: &str| {
        TaskRun { memory_mb: 256, cpu_millis: 0, ..TaskRun::new(id, limits.clone()) }
            .arg("/bin/sh")
            .arg("-c")
            .arg(script)
            .input("input.bin", &input)
    };
    let hash = task("sha256sum /in/input.bin > /out/sum");
    let empty = task("true");
    let (mut direct, mut boxed, mut start) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..a.reps.max(1) {
        let t = Instant::now();
        let out = std::process::Command::new(&busybox).arg("sha256sum").arg(&input).output()?;
        direct.push(t.elapsed().as_secs_f64());
        if !out.status.success() {
            bail!("busybox sha256sum failed");
        }
        let t = Instant::now();
        let r = exec.run(&hash).context("the container run")?;
        boxed.push(t.elapsed().as_secs_f64());
        let want = String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("").to_string();
        let got = String::from_utf8_lossy(r.bundle.files.get("sum").map(Vec::as_slice).unwrap_or_default())
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string();
        if want != got || r.bundle.exit() != Some("ok") {
            bail!("the sandboxed run gave {got:?} ({:?}), directly {want:?}", r.bundle.exit());
        }
        let t = Instant::now();
        exec.run(&empty)?;
        start.push(t.elapsed().as_secs_f64());
        eprintln!("rep {}: direct {:.2} s, container {:.2} s", rep + 1, direct[rep], boxed[rep]);
    }
    let (d, b, s) = (median(direct), median(boxed), median(start));
    println!("busybox sha256sum of {} MiB, medians of {}:\n", a.mib, a.reps.max(1));
    println!("| run | time | vs direct |");
    println!("|---|---:|---:|");
    println!("| directly on this machine | {d:.2} s | 1.00× |");
    println!("| container executor (runc sandbox) | {b:.2} s | {:.3}× |", b / d);
    println!("| container executor, an empty program (start-up and teardown) | {:.0} ms | |", s * 1e3);
    let _ = std::fs::remove_dir_all(&a.home);
    Ok(())
}
