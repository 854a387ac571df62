//! The feed-forward gate, `act(g) · u`, in one vectorised pass shared out over candle's
//! worker pool.
//!
//! Both activations are written through one exponential: tanh-GELU is exactly
//! `v · σ(2u)` with `u = √(2/π)(v + 0.044715 v³)` (since `1 + tanh u = 2σ(2u)`), and SiLU is
//! `v · σ(v)`. The exponential is Cairn's own (Cody–Waite reduction by ln 2 and a degree-6
//! polynomial, ≈ 2 ulp): the C library's `tanhf` per value took a tenth of every decoding step
//! and a quarter of a prompt pass. It is plain f32 arithmetic in one order on every path, so
//! its bits do not depend on the vector width or on how the values are shared out.

use candle_core::Tensor;

use super::{Arch, engine};
use crate::Result;
use crate::inference::numeric::{exp, for_rows};

/// Values per unit of work.
const CHUNK: usize = 4096;

/// `√(2/π)`.
const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;

#[inline(always)]
fn gelu(v: f32) -> f32 {
    let u = SQRT_TWO_OVER_PI * v * (1.0 + 0.044715 * v * v);
    v / (1.0 + exp(-2.0 * u))
}

#[inline(always)]
fn silu(v: f32) -> f32 {
    v / (1.0 + exp(-v))
}

/// `act(g) · u` element by element; `g` and `u` of one shape.
pub(super) fn gated(arch: Arch, g: &Tensor, u: &Tensor) -> Result<Tensor> {
    let values = |t: &Tensor| t.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(engine);
    let (gs, us) = (values(g)?, values(u)?);
    if gs.len() != us.len() {
        return Err(crate::RunError::Runtime("gate and up differ in shape".into()));
    }
    let mut out = vec![0f32; gs.len()];
    for_rows(
        1,
        &mut out,
        CHUNK,
        #[inline(always)]
        |c, slot| {
            let at = c * CHUNK;
            let (g, u) = (&gs[at..at + slot.len()], &us[at..at + slot.len()]);
            match arch {
                Arch::Gemma3 => slot.iter_mut().zip(g).zip(u).for_each(|((o, g), u)| *o = gelu(*g) * u),
                Arch::Qwen2 => slot.iter_mut().zip(g).zip(u).for_each(|((o, g), u)| *o = silu(*g) * u),
            }
        },
    );
    Tensor::from_vec(out, g.shape(), g.device()).map_err(engine)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_exponential_and_the_gates_are_close_to_the_libraries_and_keep_their_bits() {
        let mut worst = 0f64;
        for i in -87_000..88_000 {
            let x = i as f32 / 1000.0;
            let want = f64::from(x).exp();
            worst = worst.max(((f64::from(exp(x)) - want) / want).abs());
        }
        assert!(worst < 4e-7, "relative error {worst}");
        assert_eq!(exp(-1e9), exp(-87.0));
        assert!(exp(1e9).is_finite());
        let n = 3 * CHUNK + 17;
        let g: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.013).sin() * 12.0).collect();
        let u: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.007).cos()).collect();
        let dev = Device::Cpu;
        let (gt, ut) = (
            Tensor::from_vec(g.clone(), (1, n), &dev).unwrap(),
            Tensor::from_vec(u.clone(), (1, n), &dev).unwrap(),
        );
        let values = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (arch, candle) in [(Arch::Gemma3, gt.gelu().unwrap()), (Arch::Qwen2, gt.silu().unwrap())] {
            let want = values((candle * &ut).unwrap());
            let got = values(gated(arch, &gt, &ut).unwrap());
            for (i, ((a, b), (gv, uv))) in got.iter().zip(&want).zip(g.iter().zip(&u)).enumerate() {
                // Against the exact value in f64 (closer than candle's `1 + tanh`, which
                // cancels for negative inputs), and near candle's.
                let v = f64::from(*gv);
                let s = if arch == Arch::Gemma3 {
                    2.0 * 0.797_884_560_802_865_4 * v * (1.0 + 0.044715 * v * v)
                } else {
                    v
                };
                let exact = v / (1.0 + (-s).exp()) * f64::from(*uv);
                // (An f32 argument `s` is off by up to an ulp, which `e^-s` turns into `|s|` ulps.)
                let bound = 4e-7 * (1.0 + s.abs()) * exact.abs().max(1e-30);
                assert!((f64::from(*a) - exact).abs() <= bound, "{arch:?} at {i}: {a} vs {exact}");
                assert!((a - b).abs() <= 1e-6 * gv.abs().max(1.0), "{arch:?} at {i}: {a} vs candle {b}");
            }
            // The vectorised pass gives the plain loop's bits.
            let plain = |v: f32| if arch == Arch::Gemma3 { gelu(v) } else { silu(v) };
            assert!(
                got.iter().zip(g.iter().zip(&u)).all(|(o, (g, u))| o.to_bits() == (plain(*g) * u).to_bits())
            );
        }
    }
}
