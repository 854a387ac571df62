//! The simulator without the CLI (a quick release build):
//! `cargo run --release -p cairn-sim --example sim -- [SEEDS] [detection]`.
//! `cairn sim` runs the same code with a flag for every knob; `detection` here is
//! `cairn sim --providers 300 --tasks-per-block 150 --blocks 600 --cheat-after 40` with only
//! persistent cheaters (10% wrong_always, 10% skip_work) and honest auditors.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seeds: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    let detection = args.iter().any(|a| a == "detection");
    let mut reports = Vec::new();
    for seed in 1..=seeds {
        let mut cfg = cairn_sim::SimConfig { seed, ..cairn_sim::SimConfig::default() };
        if detection {
            cfg.providers = 300;
            cfg.tasks_per_block = 150;
            cfg.blocks = 600;
            cfg.cheat_after = 40;
            cfg.mix = cairn_sim::Mix { wrong_always: 1_000, skip_work: 1_000, ..cairn_sim::Mix::default() };
        }
        let started = std::time::Instant::now();
        let r = cairn_sim::run(cfg);
        println!("{}", cairn_sim::report_text(&r, seed, started.elapsed()));
        reports.push(r);
    }
    let all = cairn_sim::SimReport::pooled(&reports);
    println!("all {seeds} seeds:");
    print!("{}", cairn_sim::detection_text(&all));
    for (k, sim, theory) in all.detection_curve(&(0..=200).step_by(5).collect::<Vec<_>>()) {
        eprintln!("{k},{sim:.4},{theory:.4}");
    }
}
