//! The simulator's default run without the CLI: `cargo run --release -p cairn-sim --example sim -- [SEEDS]`.
//! (`cairn sim` is the same run with flags for every knob.)

fn main() {
    let seeds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut all = cairn_sim::SimReport::default();
    for seed in 1..=seeds {
        let started = std::time::Instant::now();
        let r = cairn_sim::run(cairn_sim::SimConfig { seed, ..cairn_sim::SimConfig::default() });
        println!("{}", cairn_sim::report_text(&r, seed, started.elapsed()));
        all.q_bps = r.q_bps;
        all.detection.extend(r.detection);
    }
    print!("{}", cairn_sim::detection_text(&all));
}
