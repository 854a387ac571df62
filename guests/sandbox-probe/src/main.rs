//! Test workload. `probe escape` tries to read, write and list outside what the task was
//! given and writes a report to `/out/report.txt`, one `name: result` line per attempt.
//! `probe write MEGABYTES` writes that much output. `probe env` reports time and randomness.

use std::io::Write as _;

fn attempt(report: &mut String, name: &str, r: std::io::Result<impl std::fmt::Debug>) {
    let line = match r {
        Ok(v) => format!("{name}: ALLOWED {v:?}\n"),
        Err(e) => format!("{name}: denied ({})\n", e.kind()),
    };
    report.push_str(&line);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut report = String::new();
    match args.get(1).map(String::as_str) {
        Some("escape") => {
            attempt(&mut report, "read /etc/passwd", std::fs::read("/etc/passwd").map(|b| b.len()));
            attempt(
                &mut report,
                "read /in/../etc/hostname",
                std::fs::read("/in/../etc/hostname").map(|b| b.len()),
            );
            attempt(&mut report, "read /in/../../out", std::fs::read_dir("/in/../..").map(|d| d.count()));
            attempt(&mut report, "list /", std::fs::read_dir("/").map(|d| d.count()));
            attempt(&mut report, "write /in/x", std::fs::write("/in/x", b"x"));
            attempt(&mut report, "write /tmp/x", std::fs::write("/tmp/x", b"x"));
            attempt(
                &mut report,
                "read /out/../in/data.txt",
                std::fs::read("/out/../in/data.txt").map(|b| b.len()),
            );
            attempt(&mut report, "read /in/data.txt", std::fs::read("/in/data.txt").map(|b| b.len()));
        }
        Some("write") => {
            let mb: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(100);
            let chunk = vec![7u8; 1 << 20];
            let mut f = std::fs::File::create("/out/big.bin").expect("create");
            for _ in 0..mb {
                if f.write_all(&chunk).is_err() {
                    break;
                }
            }
            report.push_str("wrote\n");
        }
        Some("env") => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let mut buf = [0u8; 8];
            let mut hash = std::collections::HashMap::new();
            for i in 0..16 {
                hash.insert(i, i);
            }
            let order: Vec<_> = hash.keys().copied().collect();
            report.push_str(&format!("time: {now}\n"));
            report.push_str(&format!("map order: {order:?}\n"));
            let _ = &mut buf;
        }
        _ => report.push_str("usage: probe escape|write MB|env\n"),
    }
    std::fs::write("/out/report.txt", report).expect("write report");
}
