//! Cairn's own quantized matrix product, for the weights candle's kernels handle badly:
//! `Q5_0` (candle's kernel is scalar, and holding it as `Q8_0` costs 55% more bytes) and `Q8_0`
//! rows whose length is not a multiple of 256 (candle's tile kernels need them padded: +14% on
//! Qwen's 896-wide rows, +20% on Gemma's 640). Decoding reads every weight once per token and
//! is bound by those bytes, so the engine multiplies these as they are stored.
//!
//! A `Q5_0` block is an f16 scale, 32 high bits and 16 bytes of low nibbles: value `i` is
//! `d * (q_i - 16)`, `q_i` in `0..32`. A `Q8_0` block is an f16 scale and 32 signed bytes.
//!
//! The product of one weight row and one input row: the input row is quantized to `Q8_0` (per
//! 32 values, scale rounded to f16, as llama.cpp does); each block's integer products are
//! summed exactly in eight lanes of four; each lane accumulates `scale_w * scale_x * sum` by a
//! fused multiply-add, block after block; the eight lanes are added in a fixed order. The AVX2
//! kernel and the portable one follow exactly these steps, so they give the same bits, and a
//! row's result depends on that row alone: batching never changes it.

use candle_core::{DType, Device, Tensor};
use std::sync::atomic::{AtomicU32, Ordering};

/// Values in one block.
const BLOCK: usize = 32;
/// Blocks regrouped together in memory (the same bytes in another order): four f16 scales,
/// then the four blocks' values, so four scales are converted at once.
const GROUP: usize = 4;
/// Input rows multiplied together against each unpacked weight block.
const TILE: usize = 4;

/// The stored block formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// 5-bit values with an offset of 16.
    Q5_0,
    /// Signed bytes.
    Q8_0,
}

impl Format {
    /// Bytes of one block.
    pub(crate) const fn block_bytes(self) -> usize {
        match self {
            Format::Q5_0 => 22,
            Format::Q8_0 => 34,
        }
    }
}

/// A matrix of `rows` weight rows of `k` values each, regrouped.
pub(crate) struct QMatrix {
    format: Format,
    raw: Vec<u8>,
    rows: usize,
    k: usize,
}

/// One input row quantized to `Q8_0`: a scale per block, the signed bytes, and per block
/// `16 ×` the sum of each lane's four bytes (`Q5_0` weights are multiplied as `q` in `0..32`
/// and the offset of 16 taken off afterwards, exactly).
struct Q8Row {
    d: Vec<f32>,
    q: Vec<i8>,
    offsets: Vec<[i32; 8]>,
}

impl QMatrix {
    /// Whether rows of `k` values can be held (whole groups of blocks).
    pub(crate) fn fits(k: usize) -> bool {
        k > 0 && k.is_multiple_of(BLOCK * GROUP)
    }

    /// `raw` holds `rows` rows of `k / 32` blocks each, as stored in GGUF. Rows must be whole
    /// groups of four blocks and every scale finite.
    pub(crate) fn new(format: Format, raw: &[u8], rows: usize, k: usize) -> Result<Self, String> {
        if !Self::fits(k) {
            return Err(format!("rows of {k} values are not whole groups of {GROUP} blocks"));
        }
        let size = format.block_bytes();
        if rows.checked_mul(k / BLOCK * size) != Some(raw.len()) {
            return Err(format!("{} bytes are not {rows} rows of {k} values", raw.len()));
        }
        let mut grouped = Vec::with_capacity(raw.len());
        for g in raw.chunks_exact(GROUP * size) {
            for b in g.chunks_exact(size) {
                if !f16_to_f32(u16::from_le_bytes([b[0], b[1]])).is_finite() {
                    return Err("a block scale is not a finite number".into());
                }
                grouped.extend_from_slice(&b[..2]);
            }
            for b in g.chunks_exact(size) {
                grouped.extend_from_slice(&b[2..]);
            }
        }
        Ok(QMatrix { format, raw: grouped, rows, k })
    }

    /// Several matrices of one format and row width, one under the other.
    pub(crate) fn stack(parts: Vec<QMatrix>) -> Option<Self> {
        let (format, k) = parts.first().map(|p| (p.format, p.k))?;
        if parts.iter().any(|p| p.k != k || p.format != format) {
            return None;
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        let mut raw = Vec::with_capacity(parts.iter().map(|p| p.raw.len()).sum());
        for p in parts {
            raw.extend_from_slice(&p.raw);
        }
        Some(QMatrix { format, raw, rows, k })
    }

    /// Output rows.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    fn row_bytes(&self) -> usize {
        self.k / BLOCK * self.format.block_bytes()
    }

    /// Rows `ids` as f32, `(ids.len(), k)`: a table lookup (token embeddings). Each value is
    /// `scale * q`, as candle dequantizes.
    pub(crate) fn rows_f32(&self, ids: &[u32], device: &Device) -> candle_core::Result<Tensor> {
        let (size, row_bytes) = (self.format.block_bytes(), self.row_bytes());
        let mut out = Vec::with_capacity(ids.len() * self.k);
        for &id in ids {
            let id = id as usize;
            if id >= self.rows {
                candle_core::bail!("row {id} of {}", self.rows);
            }
            let row = &self.raw[id * row_bytes..][..row_bytes];
            for group in row.chunks_exact(GROUP * size) {
                for j in 0..GROUP {
                    let d = f16_to_f32(u16::from_le_bytes([group[2 * j], group[2 * j + 1]]));
                    let vals = &group[2 * GROUP + (size - 2) * j..][..size - 2];
                    out.extend(block_values(self.format, vals).map(|q| d * q as f32));
                }
            }
        }
        Tensor::from_vec(out, (ids.len(), self.k), device)
    }

    /// `x`: `(m, k)` → `(m, rows)`.
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.k {
            candle_core::bail!("input width {k}, weights {}", self.k);
        }
        let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let acts: Vec<Q8Row> = xs.chunks_exact(k).map(quantize_row).collect();
        let row_bytes = self.row_bytes();
        // Each weight row is read once and multiplied by every input row, on candle's own
        // worker pool (its workers spin between products; a second pool would fight them).
        let out: Vec<AtomicU32> = (0..m * self.rows).map(|_| AtomicU32::new(0)).collect();
        let simd = simd();
        candle_core::utils::barrier_pool().execute_chunked(self.rows, |range| {
            let weights = &self.raw[range.start * row_bytes..range.end * row_bytes];
            let mut by_row = vec![0f32; range.len() * m];
            dot_rows(simd, self.format, weights, row_bytes, &acts, &mut by_row);
            for (j, outs) in range.zip(by_row.chunks_exact(m)) {
                for (r, v) in outs.iter().enumerate() {
                    out[r * self.rows + j].store(v.to_bits(), Ordering::Relaxed);
                }
            }
        });
        // The pool's barrier orders the workers' stores before this read.
        let y: Vec<f32> = out.into_iter().map(|v| f32::from_bits(v.into_inner())).collect();
        Tensor::from_vec(y, (m, self.rows), x.device())
    }
}

/// A block's 32 values (`Q5_0`: `q - 16`).
fn block_values(format: Format, vals: &[u8]) -> impl Iterator<Item = i32> + '_ {
    (0..BLOCK).map(move |i| match format {
        Format::Q8_0 => i32::from(vals[i] as i8),
        Format::Q5_0 => q5_value(vals, i) - 16,
    })
}

/// Value `i` of a `Q5_0` block's high bits and nibbles, `0..32`.
#[inline(always)]
fn q5_value(vals: &[u8], i: usize) -> i32 {
    let qh = u32::from_le_bytes([vals[0], vals[1], vals[2], vals[3]]);
    let qs = &vals[4..];
    let nibble = if i < 16 { qs[i] & 0x0f } else { qs[i - 16] >> 4 };
    i32::from(nibble) | (((qh >> i) & 1) << 4) as i32
}

/// `Q8_0` quantization of one row (llama.cpp's reference rounding: the scale is
/// `max |x| / 127`, values are `round(x / scale)`, and the scale is kept as f16).
fn quantize_row(x: &[f32]) -> Q8Row {
    let blocks = x.len() / BLOCK;
    let mut d = Vec::with_capacity(blocks);
    let mut q = Vec::with_capacity(x.len());
    let mut offsets = Vec::with_capacity(blocks);
    for b in x.chunks_exact(BLOCK) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        let start = q.len();
        // |v * inv| <= 127 by construction, so the cast never saturates (NaN becomes 0).
        q.extend(b.iter().map(|v| (v * inv).round() as i8));
        let mut lanes = [0i32; 8];
        for (lane, four) in lanes.iter_mut().zip(q[start..].chunks_exact(4)) {
            *lane = 16 * four.iter().map(|&v| i32::from(v)).sum::<i32>();
        }
        offsets.push(lanes);
        d.push(f16_to_f32(half::f16::from_f32(scale).to_bits()));
    }
    Q8Row { d, q, offsets }
}

/// The instruction set the kernel runs with on this machine.
#[derive(Clone, Copy)]
enum Simd {
    #[cfg(target_arch = "x86_64")]
    Avx2(pulp::x86::V3),
    Portable,
}

fn simd() -> Simd {
    #[cfg(target_arch = "x86_64")]
    if let Some(v3) = pulp::x86::V3::try_new() {
        return Simd::Avx2(v3);
    }
    Simd::Portable
}

/// Every weight row in `weights` against every input row; `out[j * m + r]`.
fn dot_rows(simd: Simd, format: Format, weights: &[u8], row_bytes: usize, acts: &[Q8Row], out: &mut [f32]) {
    let m = acts.len();
    match simd {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2(v3) => v3.vectorize(
            #[inline(always)]
            || {
                for (w, outs) in weights.chunks_exact(row_bytes).zip(out.chunks_exact_mut(m)) {
                    let mut tiles = acts.chunks_exact(TILE);
                    let mut done = 0;
                    for t in tiles.by_ref() {
                        let v = avx2::dot::<TILE>(v3, format, w, [&t[0], &t[1], &t[2], &t[3]]);
                        outs[done..done + TILE].copy_from_slice(&v);
                        done += TILE;
                    }
                    for a in tiles.remainder() {
                        outs[done] = avx2::dot::<1>(v3, format, w, [a])[0];
                        done += 1;
                    }
                }
            },
        ),
        Simd::Portable => {
            for (w, outs) in weights.chunks_exact(row_bytes).zip(out.chunks_exact_mut(m)) {
                for (a, o) in acts.iter().zip(outs.iter_mut()) {
                    *o = dot_portable(format, w, a);
                }
            }
        }
    }
}

/// The lanes added in a fixed order.
#[inline(always)]
fn lane_sum(l: [f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

/// f16 → f32: the exponent and mantissa moved into place and re-biased by a multiply by
/// 2^112, exact for normal and subnormal values; infinities and NaNs set apart. (The library
/// conversion is a call per block behind a feature check, which cost more than the block.)
#[inline(always)]
fn f16_to_f32(h: u16) -> f32 {
    let sign = (u32::from(h) & 0x8000) << 16;
    let rest = u32::from(h) & 0x7fff;
    let magnitude = if rest >= 0x7c00 {
        (rest << 13) | 0x7f80_0000
    } else {
        (f32::from_bits(rest << 13) * f32::from_bits(0x7780_0000)).to_bits()
    };
    f32::from_bits(sign | magnitude)
}

/// The reference: the same lanes, the same order of operations.
fn dot_portable(format: Format, w: &[u8], a: &Q8Row) -> f32 {
    let size = format.block_bytes();
    let mut acc = [0f32; 8];
    for (g, group) in w.chunks_exact(GROUP * size).enumerate() {
        for j in 0..GROUP {
            let b = g * GROUP + j;
            let d = f16_to_f32(u16::from_le_bytes([group[2 * j], group[2 * j + 1]])) * a.d[b];
            let vals = &group[2 * GROUP + (size - 2) * j..][..size - 2];
            let y = &a.q[b * BLOCK..][..BLOCK];
            for (lane, acc) in acc.iter_mut().enumerate() {
                let mut sum = 0i32;
                for i in lane * 4..lane * 4 + 4 {
                    let w = match format {
                        Format::Q8_0 => i32::from(vals[i] as i8),
                        Format::Q5_0 => q5_value(vals, i),
                    };
                    sum += w * i32::from(y[i]);
                }
                if format == Format::Q5_0 {
                    sum -= a.offsets[b][lane];
                }
                *acc = d.mul_add(sum as f32, *acc);
            }
        }
    }
    lane_sum(acc)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BLOCK, Format, GROUP, Q8Row, lane_sum};
    use pulp::x86::V3;
    use std::arch::x86_64::{__m128, __m128i, __m256, __m256i};

    /// One weight row against `R` input rows: each weight block is unpacked once for all.
    #[inline(always)]
    pub(super) fn dot<const R: usize>(s: V3, format: Format, w: &[u8], a: [&Q8Row; R]) -> [f32; R] {
        match format {
            Format::Q5_0 => dot_format::<R, true>(s, w, a),
            Format::Q8_0 => dot_format::<R, false>(s, w, a),
        }
    }

    #[inline(always)]
    fn dot_format<const R: usize, const Q5: bool>(s: V3, w: &[u8], a: [&Q8Row; R]) -> [f32; R] {
        let size = if Q5 { Format::Q5_0 } else { Format::Q8_0 }.block_bytes();
        let low_nibbles = s.sse2._mm_set1_epi8(0x0f);
        // Byte i of each 8: every bit set but bit i, so `| bits == !0` exactly when bit i is set.
        let all_but_one: __m256i = pulp::cast([0x7fbf_dfef_f7fb_fdfeu64; 4]);
        let spread: __m256i =
            pulp::cast([0u64, 0x0101_0101_0101_0101, 0x0202_0202_0202_0202, 0x0303_0303_0303_0303]);
        let ones = s.avx._mm256_set1_epi8(-1);
        let bit4 = s.avx._mm256_set1_epi8(0x10);
        let one16 = s.avx._mm256_set1_epi16(1);
        let (sign_bit, rest_bits) = (s.sse2._mm_set1_epi32(0x8000), s.sse2._mm_set1_epi32(0x7fff));
        let rebias = s.sse._mm_set1_ps(f32::from_bits(0x7780_0000));
        let mut acc: [__m256; R] = [s.avx._mm256_setzero_ps(); R];
        for (g, group) in w.chunks_exact(GROUP * size).enumerate() {
            // The four scales at once (finite, checked at load): see `f16_to_f32`.
            let mut h = [0u8; 16];
            h[..8].copy_from_slice(&group[..8]);
            let h = s.sse4_1._mm_cvtepu16_epi32(pulp::cast(h));
            let sign = s.sse2._mm_slli_epi32::<16>(s.sse2._mm_and_si128(h, sign_bit));
            let rest = s.sse2._mm_slli_epi32::<13>(s.sse2._mm_and_si128(h, rest_bits));
            let mag: __m128 = s.sse._mm_mul_ps(s.sse2._mm_castsi128_ps(rest), rebias);
            let wd: __m128 = s.sse2._mm_castsi128_ps(s.sse2._mm_or_si128(pulp::cast(mag), sign));
            let mut ds = [[0f32; GROUP]; R];
            for (r, d) in ds.iter_mut().enumerate() {
                let ad: [f32; GROUP] = a[r].d[g * GROUP..][..GROUP].try_into().unwrap_or([0.0; GROUP]);
                *d = pulp::cast(s.sse._mm_mul_ps(wd, pulp::cast(ad)));
            }
            for j in 0..GROUP {
                let b = g * GROUP + j;
                let vals = &group[2 * GROUP + (size - 2) * j..][..size - 2];
                // The weights as bytes: `q` in 0..32 for `Q5_0`, signed values for `Q8_0`.
                let q: __m256i = if Q5 {
                    let qh = u32::from_le_bytes([vals[0], vals[1], vals[2], vals[3]]);
                    let qs: [u8; 16] = vals[4..20].try_into().unwrap_or([0; 16]);
                    let qs: __m128i = pulp::cast(qs);
                    let lo = s.sse2._mm_and_si128(qs, low_nibbles);
                    let hi = s.sse2._mm_and_si128(s.sse2._mm_srli_epi16::<4>(qs), low_nibbles);
                    let nibbles = s.avx._mm256_set_m128i(hi, lo);
                    // 0xff in byte i where bit i of qh is set; q = nibble | 16 there.
                    let bits = s.avx2._mm256_shuffle_epi8(s.avx._mm256_set1_epi32(qh as i32), spread);
                    let set = s.avx2._mm256_cmpeq_epi8(s.avx2._mm256_or_si256(bits, all_but_one), ones);
                    s.avx2._mm256_or_si256(nibbles, s.avx2._mm256_and_si256(set, bit4))
                } else {
                    let v: [u8; BLOCK] = vals[..BLOCK].try_into().unwrap_or([0; BLOCK]);
                    pulp::cast(v)
                };
                // Unsigned by signed: `Q5_0` as is; `Q8_0` as |w| by y with w's sign.
                let unsigned = if Q5 { q } else { s.avx2._mm256_sign_epi8(q, q) };
                for r in 0..R {
                    let y: [i8; BLOCK] = a[r].q[b * BLOCK..][..BLOCK].try_into().unwrap_or([0; BLOCK]);
                    let y: __m256i = pulp::cast(y);
                    let y = if Q5 { y } else { s.avx2._mm256_sign_epi8(y, q) };
                    // Pairs into i16: at most 2·31·127 (`Q5_0`) or 2·128·127 (`Q8_0`).
                    let pairs = s.avx2._mm256_maddubs_epi16(unsigned, y);
                    let mut sums = s.avx2._mm256_madd_epi16(pairs, one16);
                    if Q5 {
                        sums = s.avx2._mm256_sub_epi32(sums, pulp::cast(a[r].offsets[b]));
                    }
                    let lanes = s.avx._mm256_cvtepi32_ps(sums);
                    acc[r] = s.fma._mm256_fmadd_ps(s.avx._mm256_set1_ps(ds[r][j]), lanes, acc[r]);
                }
            }
        }
        acc.map(|v| lane_sum(pulp::cast(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of either format with varied scales and values.
    fn blocks(format: Format, n: usize, mut x: u64) -> Vec<u8> {
        let mut raw = Vec::with_capacity(n * format.block_bytes());
        for i in 0..n {
            let d = half::f16::from_f32(0.001 + (i % 7) as f32 * 0.013);
            raw.extend_from_slice(&d.to_bits().to_le_bytes());
            for _ in 2..format.block_bytes() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                raw.push((x >> 24) as u8);
            }
        }
        raw
    }

    #[test]
    fn the_vector_kernel_gives_the_portable_bits_and_the_exact_products() {
        for format in [Format::Q5_0, Format::Q8_0] {
            let (k, rows, size) = (896, 5, format.block_bytes());
            let mut raw = blocks(format, rows * k / BLOCK, 0x9e37_79b9_7f4a_7c15);
            if format == Format::Q8_0 {
                raw[2] = 0x80; // -128, the extreme byte
            }
            let m = QMatrix::new(format, &raw, rows, k).unwrap();
            let xs: Vec<f32> = (0..6 * k).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 97.0).collect();
            let x = Tensor::from_vec(xs.clone(), (6, k), &Device::Cpu).unwrap();
            let y = m.forward(&x).unwrap().to_vec2::<f32>().unwrap();
            let row_bytes = k / BLOCK * size;
            let dense = m
                .rows_f32(&(0..rows as u32).collect::<Vec<_>>(), &Device::Cpu)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            for (r, xr) in xs.chunks_exact(k).enumerate() {
                let a = quantize_row(xr);
                for j in 0..rows {
                    let portable = dot_portable(format, &m.raw[j * row_bytes..][..row_bytes], &a);
                    assert_eq!(y[r][j].to_bits(), portable.to_bits(), "{format:?} row {r} col {j}");
                    // Against the stored weights (as GGUF holds them) and the activations in f64.
                    let w = &raw[j * row_bytes..][..row_bytes];
                    let mut exact = 0f64;
                    for (b, blk) in w.chunks_exact(size).enumerate() {
                        let dw = f64::from(f16_to_f32(u16::from_le_bytes([blk[0], blk[1]])));
                        for (i, v) in block_values(format, &blk[2..]).enumerate() {
                            let wv = dw * f64::from(v);
                            assert_eq!(wv as f32, dense[j][b * BLOCK + i], "the lookup gives the weight");
                            exact += wv * f64::from(a.d[b]) * f64::from(a.q[b * BLOCK + i]);
                        }
                    }
                    assert!(
                        (f64::from(portable) - exact).abs() <= 1e-4 * exact.abs().max(1.0),
                        "{portable} vs {exact}"
                    );
                }
            }
            // A row alone gets the same bits as in a batch of six (in a tile of four, or after).
            for r in [1, 5] {
                let alone = m.forward(&x.narrow(0, r, 1).unwrap()).unwrap().to_vec2::<f32>().unwrap();
                let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&alone[0]), bits(&y[r]), "{format:?}");
            }
        }
    }

    #[test]
    fn every_f16_converts_as_the_library_does() {
        for h in 0..=u16::MAX {
            let want = half::f16::from_bits(h).to_f32();
            let got = f16_to_f32(h);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{h:#06x}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn a_wrong_shape_or_scale_is_refused() {
        assert!(QMatrix::new(Format::Q5_0, &[0; 87], 1, 128).is_err());
        assert!(QMatrix::new(Format::Q5_0, &[0; 22], 1, 32).is_err(), "not a whole group");
        let mut inf = vec![0; 88];
        inf[22..24].copy_from_slice(&0x7c00u16.to_le_bytes());
        assert!(QMatrix::new(Format::Q5_0, &inf, 1, 128).is_err(), "an infinite scale");
        let m = QMatrix::new(Format::Q8_0, &[0; 136], 1, 128).unwrap();
        let x = Tensor::zeros((1, 64), DType::F32, &Device::Cpu).unwrap();
        assert!(m.forward(&x).is_err());
        assert!(m.rows_f32(&[1], &Device::Cpu).is_err(), "a row past the end");
    }
}
