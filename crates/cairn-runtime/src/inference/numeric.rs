//! Small numeric loops the engine's own kernels share: fixed-order sums, Cairn's
//! exponential, the softmax, and compiling a closure for the CPU's vector extension. Each keeps
//! one order of f32 operations on every path, so results do not depend on the vector width.

/// Lanes of the partial sums in [`dot`] and the norms: one AVX-512 vector.
pub(crate) const LANES: usize = 16;

/// Sixteen partial sums, then folded in halves: a fixed order whatever the vector width.
#[inline(always)]
pub(crate) fn fold(mut acc: [f32; LANES]) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            acc[i] += acc[i + width];
        }
        width /= 2;
    }
    acc[0]
}

#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let ((ca, ta), (cb, tb)) = (a.as_chunks::<LANES>(), b.as_chunks::<LANES>());
    let tail: f32 = ta.iter().zip(tb).map(|(x, y)| x * y).sum();
    for (x, y) in ca.iter().zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    fold(acc) + tail
}

/// `e^x` for `x` in about `[-87, 88]` (clamped there: beyond, the sigmoids below are 0 or 1).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts: `n · LN2_HI` is exact for the `n` that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and taking away 1.5 · 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // 2^n, `n` in -126..=127.
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

/// In place; the largest score is taken off first. The exponential is the gate's (vectorised;
/// the C library's `expf` per score was two thirds of a step's attention).
#[inline(always)]
pub(crate) fn softmax(s: &mut [f32]) {
    let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for v in s.iter_mut() {
        *v = exp(*v - max);
    }
    let mut sum = 0f32;
    for v in s.iter() {
        sum += *v;
    }
    for v in s.iter_mut() {
        *v /= sum;
    }
}

/// `f` compiled for the best x86 vector extension this CPU has. The loops keep one order of
/// operations on every path (no sums across lanes are reassociated, nothing is fused), so the
/// bits do not depend on which one runs.
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(v4) = pulp::x86::V4::try_new() {
            return v4.vectorize(f);
        }
        if let Some(v3) = pulp::x86::V3::try_new() {
            return v3.vectorize(f);
        }
    }
    f()
}

/// `f(row index, row)` for every `width`-value row of `out` (the last may be shorter), `per_unit`
/// rows to a unit of work on candle's worker pool, compiled for the vector extension. Each row is
/// written by one call, so the results do not depend on how the work is shared out.
pub(crate) fn for_rows(per_unit: usize, out: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let slots: Vec<std::sync::Mutex<&mut [f32]>> =
        out.chunks_mut(width * per_unit).map(std::sync::Mutex::new).collect();
    candle_core::utils::barrier_pool().execute_chunked(slots.len(), |range| {
        vectorized(
            #[inline(always)]
            || {
                for u in range.clone() {
                    let Ok(mut slot) = slots[u].lock() else { continue };
                    for (i, row) in slot.chunks_mut(width).enumerate() {
                        f(u * per_unit + i, row);
                    }
                }
            },
        )
    });
}
