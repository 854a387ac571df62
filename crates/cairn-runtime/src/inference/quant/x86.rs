//! The AVX-512 and AVX2 kernels, on `pulp`'s safe intrinsics; both reproduce
//! `dot_portable` bit for bit.

use super::{BLOCK, Format, PANEL, Q8Row};
use pulp::x86::{V3, V4};
use std::arch::x86_64::{__m256, __m256i, __m512, __m512i};

/// The AVX-512 feature set with VNNI's byte dot products (`vpdpbusd`): four unsigned × signed
/// byte products summed into each 32-bit lane in one instruction, exactly (no saturation), where
/// AVX-512BW needs `vpmaddubsw` + `vpmaddwd` + `vpaddd`. The integer block sums are the same
/// numbers either way, so the bits of every product are too.
#[allow(unsafe_code, missing_docs, unreachable_pub)]
mod token {
    pulp::simd_type! {
        pub struct V4Vnni {
            pub sse: "sse",
            pub sse2: "sse2",
            pub fxsr: "fxsr",
            pub sse3: "sse3",
            pub ssse3: "ssse3",
            pub sse4_1: "sse4.1",
            pub sse4_2: "sse4.2",
            pub popcnt: "popcnt",
            pub avx: "avx",
            pub avx2: "avx2",
            pub bmi1: "bmi1",
            pub bmi2: "bmi2",
            pub fma: "fma",
            pub lzcnt: "lzcnt",
            pub avx512f: "avx512f",
            pub avx512bw: "avx512bw",
            pub avx512cd: "avx512cd",
            pub avx512dq: "avx512dq",
            pub avx512vl: "avx512vl",
            pub avx512vnni: "avx512vnni",
        }
    }
}
pub(super) use token::V4Vnni;

/// How a lane's 32 byte products are summed: AVX-512BW's multiply-add pairs, or VNNI.
pub(super) trait Products: Copy {
    /// `Σ_g Σ_j w[g]_j · y[g]_j` per 32-bit lane; `w` bytes unsigned: `Q5_0`'s `q < 32`, or
    /// (only where [`Products::offset_q8`]) `Q8_0`'s `w + 128`.
    fn q5(self, s: V4, w: &[__m512i; 8], y: &[__m512i; 8]) -> __m512i;
    /// The same with `w` unsigned up to 128 (`|w|` of `Q8_0`, the sign moved onto `y`).
    fn q8(self, s: V4, w: &[__m512i; 8], y: &[__m512i; 8]) -> __m512i;
    /// Whether `Q8_0` weights go in as `w + 128` (unsigned up to 255, summed without
    /// saturation), the offset taken off after as `128 · Σy`, rather than as `|w|` with the sign
    /// moved onto each input row: the same integers, fewer instructions per row.
    fn offset_q8(self) -> bool {
        false
    }
}

/// AVX-512BW: `vpmaddubsw` pairs into i16, `vpmaddwd` by one into i32.
#[derive(Clone, Copy)]
pub(super) struct Madd;

impl Products for Madd {
    #[inline(always)]
    fn q5(self, s: V4, w: &[__m512i; 8], y: &[__m512i; 8]) -> __m512i {
        // Four pair-sums per i16 lane stay within 4·2·31·127 < 2^15.
        let one16 = s.avx512f._mm512_set1_epi16(1);
        let zero = s.avx512f._mm512_setzero_si512();
        let mut halves = [zero; 2];
        for g in 0..8 {
            halves[g / 4] =
                s.avx512bw._mm512_add_epi16(halves[g / 4], s.avx512bw._mm512_maddubs_epi16(w[g], y[g]));
        }
        s.avx512f._mm512_add_epi32(
            s.avx512bw._mm512_madd_epi16(halves[0], one16),
            s.avx512bw._mm512_madd_epi16(halves[1], one16),
        )
    }

    #[inline(always)]
    fn q8(self, s: V4, w: &[__m512i; 8], y: &[__m512i; 8]) -> __m512i {
        // A pair is at most 2·128·127 < 2^15: `vpmaddubsw` never saturates.
        let one16 = s.avx512f._mm512_set1_epi16(1);
        let mut sums = s.avx512f._mm512_setzero_si512();
        for g in 0..8 {
            let pairs = s.avx512bw._mm512_maddubs_epi16(w[g], y[g]);
            sums = s.avx512f._mm512_add_epi32(sums, s.avx512bw._mm512_madd_epi16(pairs, one16));
        }
        sums
    }
}

/// VNNI: `vpdpbusd`, held only with pulp's proof that the CPU has it.
#[derive(Clone, Copy)]
pub(super) struct Vnni(pub(super) V4Vnni);

impl Vnni {
    #[inline(always)]
    fn dpbusd(self, acc: __m512i, u: __m512i, s: __m512i) -> __m512i {
        let _proof = self.0;
        // SAFETY: a `V4Vnni` exists only where pulp detected AVX-512 VNNI on this CPU (or was
        // created unchecked by code that did), which is all `_mm512_dpbusd_epi32` requires.
        #[allow(unsafe_code)]
        unsafe {
            std::arch::x86_64::_mm512_dpbusd_epi32(acc, u, s)
        }
    }

    #[inline(always)]
    fn sum(self, s: V4, w: &[__m512i; 8], y: &[__m512i; 8]) -> __m512i {
        let mut acc = s.avx512f._mm512_setzero_si512();
        for g in 0..8 {
            acc = self.dpbusd(acc, w[g], y[g]);
        }
        acc
    }
}

impl Products for Vnni {
    #[inline(always)]
    fn offset_q8(self) -> bool {
        true
    }

    #[inline(always)]
    fn q5(self, s: V4, w: &[__m512i; 8], y: &[__m512i; 8]) -> __m512i {
        self.sum(s, w, y)
    }

    #[inline(always)]
    fn q8(self, s: V4, w: &[__m512i; 8], y: &[__m512i; 8]) -> __m512i {
        self.sum(s, w, y)
    }
}

/// Four input bytes `4g..4g+4` of block `b`, as one 32-bit lane.
#[inline(always)]
fn four(a: &Q8Row, b: usize, g: usize) -> i32 {
    let y = &a.q[b * BLOCK + 4 * g..][..4];
    i32::from_le_bytes([y[0] as u8, y[1] as u8, y[2] as u8, y[3] as u8])
}

/// One panel against `R` input rows, 512 bits: a lane per weight row.
#[inline(always)]
pub(super) fn dot512<const R: usize>(
    s: V4,
    products: impl Products,
    format: Format,
    panel: &[u8],
    a: [&Q8Row; R],
) -> [[f32; PANEL]; R] {
    let q5 = format == Format::Q5_0;
    let low = s.avx512f._mm512_set1_epi8(0x0f);
    let bit4 = s.avx512f._mm512_set1_epi8(0x10);
    let zero = s.avx512f._mm512_setzero_si512();
    let mut acc: [__m512; R] = [s.avx512f._mm512_setzero_ps(); R];
    for (b, pb) in panel.chunks_exact(PANEL * format.block_bytes()).enumerate() {
        let h: [u8; 32] = pb[..32].try_into().unwrap_or([0; 32]);
        let dw = s.avx512f._mm512_cvtph_ps(pulp::cast(h));
        let vec = |at: usize| -> __m512i {
            let v: [u8; 64] = pb[at..at + 64].try_into().unwrap_or([0; 64]);
            pulp::cast(v)
        };
        // The eight value vectors (`Q5_0`: q in 0..32; `Q8_0`: |w|) and, for `Q8_0`, where
        // w is negative.
        let mut w = [zero; 8];
        let mut negative = [0u64; 8];
        if q5 {
            for g in 0..4 {
                let chunk = vec(2 * PANEL + 64 + 64 * g);
                w[g] = s.avx512f._mm512_and_si512(chunk, low);
                w[g + 4] = s.avx512f._mm512_and_si512(s.avx512bw._mm512_srli_epi16::<4>(chunk), low);
            }
            for (g, w) in w.iter_mut().enumerate() {
                let at = 2 * PANEL + 8 * g;
                let mask = u64::from_le_bytes(pb[at..at + 8].try_into().unwrap_or([0; 8]));
                *w = s.avx512f._mm512_or_si512(*w, s.avx512bw._mm512_maskz_mov_epi8(mask, bit4));
            }
        } else if products.offset_q8() {
            let flip = s.avx512f._mm512_set1_epi8(i8::MIN);
            for (g, w) in w.iter_mut().enumerate() {
                *w = s.avx512f._mm512_xor_si512(vec(2 * PANEL + 64 * g), flip);
            }
        } else {
            for g in 0..8 {
                let v = vec(2 * PANEL + 64 * g);
                negative[g] = s.avx512bw._mm512_movepi8_mask(v);
                w[g] = s.avx512bw._mm512_abs_epi8(v);
            }
        }
        for r in 0..R {
            let sums = if q5 {
                let y: [__m512i; 8] = std::array::from_fn(|g| s.avx512f._mm512_set1_epi32(four(a[r], b, g)));
                let sums = products.q5(s, &w, &y);
                s.avx512f._mm512_sub_epi32(sums, s.avx512f._mm512_set1_epi32(a[r].sum16[b]))
            } else if products.offset_q8() {
                // `Σ (w + 128) y − 128 Σy`, with `sum16 = 16 Σy`.
                let y: [__m512i; 8] = std::array::from_fn(|g| s.avx512f._mm512_set1_epi32(four(a[r], b, g)));
                let sums = products.q5(s, &w, &y);
                s.avx512f._mm512_sub_epi32(sums, s.avx512f._mm512_set1_epi32(8 * a[r].sum16[b]))
            } else {
                let y: [__m512i; 8] = std::array::from_fn(|g| {
                    let y = s.avx512f._mm512_set1_epi32(four(a[r], b, g));
                    s.avx512bw._mm512_mask_sub_epi8(y, negative[g], zero, y)
                });
                products.q8(s, &w, &y)
            };
            let d = s.avx512f._mm512_mul_ps(dw, s.avx512f._mm512_set1_ps(a[r].d[b]));
            acc[r] = s.avx512f._mm512_fmadd_ps(d, s.avx512f._mm512_cvtepi32_ps(sums), acc[r]);
        }
    }
    acc.map(pulp::cast)
}

/// The same, 256 bits: the panel in two halves of eight weight rows.
#[inline(always)]
pub(super) fn dot256<const R: usize>(
    s: V3,
    format: Format,
    panel: &[u8],
    a: [&Q8Row; R],
) -> [[f32; PANEL]; R] {
    let mut out = [[0f32; PANEL]; R];
    for half in 0..2 {
        let part = dot256_half::<R>(s, format, panel, &a, half);
        for (o, p) in out.iter_mut().zip(part) {
            o[8 * half..8 * half + 8].copy_from_slice(&p);
        }
    }
    out
}

#[inline(always)]
fn dot256_half<const R: usize>(
    s: V3,
    format: Format,
    panel: &[u8],
    a: &[&Q8Row; R],
    half: usize,
) -> [[f32; 8]; R] {
    let q5 = format == Format::Q5_0;
    let one16 = s.avx._mm256_set1_epi16(1);
    let low = s.avx._mm256_set1_epi8(0x0f);
    let bit4 = s.avx._mm256_set1_epi8(0x10);
    let ones = s.avx._mm256_set1_epi8(-1);
    // Byte i of each 8: every bit set but bit i, so `| bits == !0` exactly when bit i is set.
    let all_but_one: __m256i = pulp::cast([0x7fbf_dfef_f7fb_fdfeu64; 4]);
    let spread: __m256i =
        pulp::cast([0u64, 0x0101_0101_0101_0101, 0x0202_0202_0202_0202, 0x0303_0303_0303_0303]);
    let zero = s.avx._mm256_setzero_si256();
    let mut acc: [__m256; R] = [s.avx._mm256_setzero_ps(); R];
    for (b, pb) in panel.chunks_exact(PANEL * format.block_bytes()).enumerate() {
        let dw: [f32; 8] = std::array::from_fn(|c| super::scale(pb, 8 * half + c));
        let dw: __m256 = pulp::cast(dw);
        let vec = |at: usize| -> __m256i {
            let v: [u8; 32] = pb[at + 32 * half..at + 32 * half + 32].try_into().unwrap_or([0; 32]);
            pulp::cast(v)
        };
        let mut w = [zero; 8];
        let mut signed = [zero; 8];
        if q5 {
            for g in 0..4 {
                let chunk = vec(2 * PANEL + 64 + 64 * g);
                w[g] = s.avx2._mm256_and_si256(chunk, low);
                w[g + 4] = s.avx2._mm256_and_si256(s.avx2._mm256_srli_epi16::<4>(chunk), low);
            }
            for (g, w) in w.iter_mut().enumerate() {
                let at = 2 * PANEL + 8 * g + 4 * half;
                let mask = u32::from_le_bytes(pb[at..at + 4].try_into().unwrap_or([0; 4]));
                let bits = s.avx2._mm256_shuffle_epi8(s.avx._mm256_set1_epi32(mask as i32), spread);
                let set = s.avx2._mm256_cmpeq_epi8(s.avx2._mm256_or_si256(bits, all_but_one), ones);
                *w = s.avx2._mm256_or_si256(*w, s.avx2._mm256_and_si256(set, bit4));
            }
        } else {
            for g in 0..8 {
                signed[g] = vec(2 * PANEL + 64 * g);
                w[g] = s.avx2._mm256_sign_epi8(signed[g], signed[g]);
            }
        }
        for r in 0..R {
            let sums = if q5 {
                let mut halves = [zero; 2];
                for (g, w) in w.iter().enumerate() {
                    let y = s.avx._mm256_set1_epi32(four(a[r], b, g));
                    halves[g / 4] =
                        s.avx2._mm256_add_epi16(halves[g / 4], s.avx2._mm256_maddubs_epi16(*w, y));
                }
                let sums = s.avx2._mm256_add_epi32(
                    s.avx2._mm256_madd_epi16(halves[0], one16),
                    s.avx2._mm256_madd_epi16(halves[1], one16),
                );
                s.avx2._mm256_sub_epi32(sums, s.avx._mm256_set1_epi32(a[r].sum16[b]))
            } else {
                let mut sums = zero;
                for g in 0..8 {
                    let y = s.avx._mm256_set1_epi32(four(a[r], b, g));
                    let pairs = s.avx2._mm256_maddubs_epi16(w[g], s.avx2._mm256_sign_epi8(y, signed[g]));
                    sums = s.avx2._mm256_add_epi32(sums, s.avx2._mm256_madd_epi16(pairs, one16));
                }
                sums
            };
            let d = s.avx._mm256_mul_ps(dw, s.avx._mm256_set1_ps(a[r].d[b]));
            acc[r] = s.fma._mm256_fmadd_ps(d, s.avx._mm256_cvtepi32_ps(sums), acc[r]);
        }
    }
    acc.map(pulp::cast)
}
