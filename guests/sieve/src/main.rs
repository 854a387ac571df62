//! WASI entry point: `sieve LIMIT`; task `i` of `n` sieves the i-th slice of `[0, LIMIT)` and
//! writes `/out/primes-<i>.json`.

fn main() {
    let limit: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10_000_000);
    let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let (i, n) = (env("CAIRN_TASK_INDEX", 0), env("CAIRN_TASKS", 1).max(1));
    let step = limit.div_ceil(n);
    let (lo, hi) = (i * step, ((i + 1) * step).min(limit));
    let r = cairn_guest_sieve::sieve(lo, hi);
    let json = format!(
        "{{\"from\":{lo},\"to\":{hi},\"primes\":{},\"largest\":{},\"checksum\":\"{:016x}\"}}\n",
        r.count, r.largest, r.checksum
    );
    if let Err(e) = std::fs::write(format!("/out/primes-{i}.json"), json) {
        eprintln!("cannot write the result: {e}");
        std::process::exit(1);
    }
}
