//! What this machine has: CPU, memory, and NVIDIA GPUs when `nvidia-smi` is present.

use cairn_types::{Capacity, Gpu};

/// Detect the machine's capacity.
pub fn detect() -> Capacity {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as u64;
    Capacity {
        cpu_millis: cores.saturating_mul(1_000),
        memory_mb: memory_mb().unwrap_or(1_024),
        gpus: gpus(),
    }
}

fn memory_mb() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

/// GPUs reported by `nvidia-smi` (none when it is absent or fails).
pub fn gpus() -> Vec<Gpu> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name,memory.total", "--format=csv,noheader,nounits"])
        .output();
    match out {
        Ok(o) if o.status.success() => parse_nvidia_smi(&String::from_utf8_lossy(&o.stdout)),
        _ => Vec::new(),
    }
}

/// Parse `name, memory_mib` lines.
pub fn parse_nvidia_smi(text: &str) -> Vec<Gpu> {
    text.lines()
        .filter_map(|l| {
            let (name, mem) = l.rsplit_once(',')?;
            let model = name.trim().trim_start_matches("NVIDIA ").to_string();
            Some(Gpu { model, vram_mb: mem.trim().parse().ok()? })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_smi_lines_become_gpus() {
        let g = parse_nvidia_smi("NVIDIA H100 80GB HBM3, 81559\nNVIDIA H100 80GB HBM3, 81559\nbad line\n");
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].model, "H100 80GB HBM3");
        assert_eq!(g[0].vram_mb, 81_559);
    }

    #[test]
    fn this_machine_has_some_cpu_and_memory() {
        let c = detect();
        assert!(c.cpu_millis >= 1_000);
        assert!(c.memory_mb > 0);
    }
}
