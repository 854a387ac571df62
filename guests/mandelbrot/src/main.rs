//! WASI entry point: `mandelbrot [WIDTH HEIGHT FRAMES MAX_ITER]`; the frame is the task index
//! (`CAIRN_TASK_INDEX`). Writes `/out/frame-<i>.png`.

fn arg(args: &[String], i: usize, default: u32) -> u32 {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (w, h, frames, iter) = (arg(&args, 1, 320), arg(&args, 2, 240), arg(&args, 3, 1), arg(&args, 4, 256));
    let frame: u32 = std::env::var("CAIRN_TASK_INDEX").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let png = cairn_guest_mandelbrot::render(w, h, frame, frames.max(1), iter.max(1));
    if let Err(e) = std::fs::write(format!("/out/frame-{frame}.png"), png) {
        eprintln!("cannot write the frame: {e}");
        std::process::exit(1);
    }
}
