//! WASI entry point: `nn INPUT.csv [HIDDEN CLASSES SEED]`. Reads `/in/INPUT.csv`, writes
//! `/out/predictions.csv` (argmax and probability per row).

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let input = args.get(1).map(String::as_str).unwrap_or("features.csv");
    let num = |i: usize, d: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (hidden, classes, seed) = (num(2, 256) as usize, num(3, 10) as usize, num(4, 42));
    let text = match std::fs::read_to_string(format!("/in/{input}")) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot read /in/{input}: {e}");
            std::process::exit(1);
        }
    };
    let rows = match cairn_guest_nn::parse_csv(&text) {
        Ok(r) if !r.is_empty() => r,
        Ok(_) => {
            eprintln!("no rows in /in/{input}");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let features = rows[0].len();
    let probs = cairn_guest_nn::infer(&rows, features, hidden, classes, seed);
    let mut out = String::from("row,class,probability\n");
    for (i, p) in probs.iter().enumerate() {
        let (best, pb) =
            p.iter().enumerate().fold((0, f32::MIN), |acc, (j, v)| if *v > acc.1 { (j, *v) } else { acc });
        out.push_str(&format!("{i},{best},{pb:.6}\n"));
    }
    if let Err(e) = std::fs::write("/out/predictions.csv", out) {
        eprintln!("cannot write predictions: {e}");
        std::process::exit(1);
    }
}
