//! Cairn's own quantized matrix product, for the weights candle's kernels handle badly:
//! `Q5_0` (candle's kernel is scalar, and holding it as `Q8_0` costs 55% more bytes) and `Q8_0`
//! rows whose length is not a multiple of 256 (candle's tile kernels need them padded: +14% on
//! Qwen's 896-wide rows, +20% on Gemma's 640). Decoding reads every weight once per token and
//! is bound by those bytes, so the engine multiplies these as they are stored.
//!
//! A `Q5_0` block is an f16 scale, 32 high bits and 16 bytes of low nibbles: value `i` is
//! `d * (q_i - 16)`, `q_i` in `0..32`. A `Q8_0` block is an f16 scale and 32 signed bytes.
//!
//! Layout: weight rows in panels of 16, block by block, interleaved four values at a time (the
//! same bytes in another order), so one vector holds four values of each of 16 rows and the
//! vector lanes are output columns: no sums across lanes.
//!
//! The product of one weight row (column `c`) and one input row, the same bits on every path:
//! the input row is quantized to `Q8_0` (per 32 values, scale rounded to f16, as llama.cpp
//! does); each block's 32 integer products are summed exactly; the column accumulates
//! `fma(scale_w · scale_x, sum, acc)` block after block. The AVX-512 and AVX2 kernels and the
//! portable one follow exactly these steps (tested), and a row's result depends on that row
//! alone: batching never changes it.

use candle_core::{DType, Device, Tensor};
use std::sync::atomic::{AtomicU32, Ordering};

/// Values in one block.
const BLOCK: usize = 32;
/// Weight rows interleaved together.
const PANEL: usize = 16;
/// Input rows per unit of work when a product has many (a multiple of the tiles).
const GROUP_ROWS: usize = 64;
/// Input rows multiplied together against each unpacked panel block.
const TILE_512: usize = 16;
const TILE_256: usize = 4;

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

/// A matrix of `rows` weight rows of `k` values each, in panels.
pub(crate) struct QMatrix {
    format: Format,
    raw: Vec<u8>,
    rows: usize,
    k: usize,
}

/// One input row quantized to `Q8_0`: a scale per block, the signed bytes, and per block
/// `16 ×` the sum of its bytes (`Q5_0` weights are multiplied as `q` in `0..32` and the offset
/// of 16 taken off afterwards, exactly).
struct Q8Row {
    d: Vec<f32>,
    q: Vec<i8>,
    sum16: Vec<i32>,
}

impl QMatrix {
    /// Whether a `rows × k` matrix can be held (whole blocks, whole panels).
    pub(crate) fn fits(rows: usize, k: usize) -> bool {
        k > 0 && k.is_multiple_of(BLOCK) && rows > 0 && rows.is_multiple_of(PANEL)
    }

    /// `raw` holds `rows` rows of `k / 32` blocks each, as stored in GGUF; every scale must be
    /// finite.
    pub(crate) fn new(format: Format, raw: &[u8], rows: usize, k: usize) -> Result<Self, String> {
        if !Self::fits(rows, k) {
            return Err(format!("a {rows} × {k} matrix is not whole panels of {PANEL} rows of whole blocks"));
        }
        let size = format.block_bytes();
        let row_bytes = k / BLOCK * size;
        if rows.checked_mul(row_bytes) != Some(raw.len()) {
            return Err(format!("{} bytes are not {rows} rows of {k} values", raw.len()));
        }
        let mut out = Vec::with_capacity(raw.len());
        for panel in raw.chunks_exact(PANEL * row_bytes) {
            for b in 0..k / BLOCK {
                let blk = |c: usize| &panel[c * row_bytes + b * size..][..size];
                for c in 0..PANEL {
                    if !f16_to_f32(u16::from_le_bytes([blk(c)[0], blk(c)[1]])).is_finite() {
                        return Err("a block scale is not a finite number".into());
                    }
                    out.extend_from_slice(&blk(c)[..2]);
                }
                match format {
                    Format::Q8_0 => {
                        for g in 0..8 {
                            for c in 0..PANEL {
                                out.extend_from_slice(&blk(c)[2 + 4 * g..][..4]);
                            }
                        }
                    }
                    Format::Q5_0 => {
                        // Eight masks: bit `4c + j` of mask `g` is the high bit of value `4g + j`
                        // of row `c`.
                        for g in 0..8 {
                            let mut mask = 0u64;
                            for c in 0..PANEL {
                                let qh = u32::from_le_bytes([blk(c)[2], blk(c)[3], blk(c)[4], blk(c)[5]]);
                                mask |= u64::from((qh >> (4 * g)) & 0xf) << (4 * c);
                            }
                            out.extend_from_slice(&mask.to_le_bytes());
                        }
                        // Four nibble chunks: bytes `4g..4g+4` of every row (values `4g..` in the
                        // low nibbles, `16 + 4g..` in the high).
                        for g in 0..4 {
                            for c in 0..PANEL {
                                out.extend_from_slice(&blk(c)[6 + 4 * g..][..4]);
                            }
                        }
                    }
                }
            }
        }
        Ok(QMatrix { format, raw: out, rows, k })
    }

    /// `rows × k` f32 weights, row after row, quantized to `Q8_0` as llama.cpp does (per 32
    /// values: the scale `max |w| / 127` kept as f16, values rounded).
    pub(crate) fn quantize(w: &[f32], rows: usize, k: usize) -> Result<Self, String> {
        if !Self::fits(rows, k) || rows.checked_mul(k) != Some(w.len()) {
            return Err(format!("{} values are not a {rows} × {k} matrix of whole panels", w.len()));
        }
        if w.iter().any(|v| !v.is_finite()) {
            return Err("a weight is not a finite number".into());
        }
        let mut raw = Vec::with_capacity(w.len() / BLOCK * Format::Q8_0.block_bytes());
        for b in w.chunks_exact(BLOCK) {
            let q = quantize_row(b);
            raw.extend_from_slice(&half::f16::from_f32(q.d[0]).to_bits().to_le_bytes());
            raw.extend(q.q.iter().map(|v| *v as u8));
        }
        Self::new(Format::Q8_0, &raw, rows, k)
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

    fn panel_bytes(&self) -> usize {
        PANEL * self.k / BLOCK * self.format.block_bytes()
    }

    /// Rows `ids` as f32, `(ids.len(), k)`: a table lookup (token embeddings). Each value is
    /// `scale * q`, as candle dequantizes.
    pub(crate) fn rows_f32(&self, ids: &[u32], device: &Device) -> candle_core::Result<Tensor> {
        let step = PANEL * self.format.block_bytes();
        let offset = if self.format == Format::Q5_0 { 16 } else { 0 };
        let mut out = Vec::with_capacity(ids.len() * self.k);
        for &id in ids {
            let id = id as usize;
            if id >= self.rows {
                candle_core::bail!("row {id} of {}", self.rows);
            }
            let panel = &self.raw[id / PANEL * self.panel_bytes()..][..self.panel_bytes()];
            let c = id % PANEL;
            for pb in panel.chunks_exact(step) {
                let d = scale(pb, c);
                out.extend((0..BLOCK).map(|i| d * (value(self.format, pb, c, i) - offset) as f32));
            }
        }
        Tensor::from_vec(out, (ids.len(), self.k), device)
    }

    /// `x`: `(m, k)` → `(m, rows)`.
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_with(x, simd())
    }

    fn forward_with(&self, x: &Tensor, simd: Simd) -> candle_core::Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.k {
            candle_core::bail!("input width {k}, weights {}", self.k);
        }
        let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Tensor::from_vec(self.product_with(&xs, simd), (m, self.rows), x.device())
    }

    /// `x`: `m` rows of `k` values, one after another → `m` rows of [`rows`](Self::rows)
    /// values. Panics if `x` is not whole rows (callers size it).
    pub(crate) fn product(&self, x: &[f32]) -> Vec<f32> {
        self.product_with(x, simd())
    }

    fn product_with(&self, xs: &[f32], simd: Simd) -> Vec<f32> {
        let k = self.k;
        assert!(xs.len().is_multiple_of(k), "{} values are not rows of {k}", xs.len());
        let m = xs.len() / k;
        if m == 0 {
            return Vec::new();
        }
        // Input rows are quantized where they are used (a row's bytes depend on that row alone),
        // compiled for the vector extension.
        #[inline(always)]
        fn quantize(rows: &[f32], k: usize) -> Vec<Q8Row> {
            let mut out = Vec::with_capacity(rows.len() / k);
            for row in rows.chunks_exact(k) {
                out.push(quantize_row(row));
            }
            out
        }
        let quantized = |rows: &[f32]| match simd {
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512(v4) | Simd::Avx512Vnni(v4, _) => v4.vectorize(
                #[inline(always)]
                || quantize(rows, k),
            ),
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2(v3) => v3.vectorize(
                #[inline(always)]
                || quantize(rows, k),
            ),
            Simd::Portable => quantize(rows, k),
        };
        let panel_bytes = self.panel_bytes();
        let panels = self.rows / PANEL;
        let panel = |p: usize| &self.raw[p * panel_bytes..][..panel_bytes];
        if m >= 2 * GROUP_ROWS {
            // (Allocated here only: an untouched buffer of this size left ahead of the few-row
            // path made its products 1.7× slower in `kernel_speed`.)
            let mut out = vec![0f32; m * self.rows];
            // Many rows (prompts, embeddings): each unit of work quantizes a group of rows and
            // takes it through every panel, writing its output rows in place.
            let slots: Vec<std::sync::Mutex<&mut [f32]>> =
                out.chunks_mut(GROUP_ROWS * self.rows).map(std::sync::Mutex::new).collect();
            candle_core::utils::barrier_pool().execute_chunked(slots.len(), |range| {
                let mut by_row = vec![[0f32; PANEL]; GROUP_ROWS];
                for g in range {
                    let Ok(mut slot) = slots[g].lock() else { continue };
                    let acts = quantized(&xs[g * GROUP_ROWS * k..((g + 1) * GROUP_ROWS * k).min(xs.len())]);
                    let by_row = &mut by_row[..acts.len()];
                    for p in 0..panels {
                        panel_product(simd, self.format, panel(p), &acts, by_row);
                        for (row, v) in slot.chunks_exact_mut(self.rows).zip(by_row.iter()) {
                            row[p * PANEL..][..PANEL].copy_from_slice(v);
                        }
                    }
                }
            });
            return out;
        }
        let acts = quantized(xs);
        // Few rows (decoding steps): each panel is read once and multiplied by every input row,
        // on candle's own worker pool (its workers spin between products; a second pool would
        // fight them).
        let cells: Vec<AtomicU32> = (0..m * self.rows).map(|_| AtomicU32::new(0)).collect();
        candle_core::utils::barrier_pool().execute_chunked(panels, |range| {
            let mut by_row = vec![[0f32; PANEL]; m];
            for p in range {
                panel_product(simd, self.format, panel(p), &acts, &mut by_row);
                for (r, cols) in by_row.iter().enumerate() {
                    for (c, v) in cols.iter().enumerate() {
                        cells[r * self.rows + p * PANEL + c].store(v.to_bits(), Ordering::Relaxed);
                    }
                }
            }
        });
        // The pool's barrier orders the workers' stores before this read.
        cells.into_iter().map(|v| f32::from_bits(v.into_inner())).collect()
    }
}

/// Row `c`'s scale in a panel block.
#[inline(always)]
fn scale(pb: &[u8], c: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([pb[2 * c], pb[2 * c + 1]]))
}

/// Value `i` of row `c` in a panel block: `Q8_0` signed, `Q5_0` as `q` in `0..32`.
#[inline(always)]
fn value(format: Format, pb: &[u8], c: usize, i: usize) -> i32 {
    let (g, j) = (i / 4, i % 4);
    match format {
        Format::Q8_0 => i32::from(pb[2 * PANEL + 64 * g + 4 * c + j] as i8),
        Format::Q5_0 => {
            let at = 2 * PANEL + 8 * g;
            let mask = u64::from_le_bytes(pb[at..at + 8].try_into().unwrap_or([0; 8]));
            let high = ((mask >> (4 * c + j)) & 1) as i32;
            let chunk = pb[2 * PANEL + 64 + 64 * (g % 4) + 4 * c + j];
            let nibble = if g < 4 { chunk & 0x0f } else { chunk >> 4 };
            i32::from(nibble) | (high << 4)
        }
    }
}

/// `Q8_0` quantization of one row (llama.cpp's reference rounding: the scale is
/// `max |x| / 127`, values are `round(x / scale)`, and the scale is kept as f16).
#[inline(always)]
fn quantize_row(x: &[f32]) -> Q8Row {
    // Plain loops: iterator adapters compile to out-of-line folds that miss the caller's vector
    // features.
    let blocks = x.len() / BLOCK;
    let mut d = Vec::with_capacity(blocks);
    let mut q = Vec::with_capacity(x.len());
    let mut sum16 = Vec::with_capacity(blocks);
    for b in x.as_chunks::<BLOCK>().0 {
        // The largest magnitude, in 16 lanes and then folded (max is exact: any order gives
        // it). Compare-and-select rather than `f32::max`, whose NaN rule does not vectorise (a
        // NaN input leaves the block's result NaN either way).
        #[inline(always)]
        fn larger(a: f32, b: f32) -> f32 {
            if b > a { b } else { a }
        }
        let mut lanes = [0f32; BLOCK / 2];
        for l in 0..BLOCK / 2 {
            lanes[l] = larger(b[l].abs(), b[l + BLOCK / 2].abs());
        }
        for width in [8, 4, 2, 1] {
            for l in 0..width {
                lanes[l] = larger(lanes[l], lanes[l + width]);
            }
        }
        let scale = lanes[0] / 127.0;
        let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        let mut block = [0i8; BLOCK];
        // |v * inv| <= 127 by construction. Rounded values go to integers by adding 1.5 · 2^23
        // and reading the low bits (exact for integers this small): a saturating `as` cast does
        // not vectorise and cost more than everything else here. Their sum is taken in f32,
        // exact in any order (at most 32 · 127).
        let mut sums = [0f32; BLOCK / 2];
        for l in 0..BLOCK / 2 {
            let (r0, r1) = (round_half_away(b[l] * inv), round_half_away(b[l + BLOCK / 2] * inv));
            block[l] = to_int(r0) as i8;
            block[l + BLOCK / 2] = to_int(r1) as i8;
            sums[l] = r0 + r1;
        }
        for width in [8, 4, 2, 1] {
            for l in 0..width {
                sums[l] += sums[l + width];
            }
        }
        let sum = to_int(sums[0]);
        q.extend_from_slice(&block);
        sum16.push(16 * sum);
        d.push(half::f16::from_f32_const(scale).to_f32_const());
    }
    Q8Row { d, q, sum16 }
}

/// `x.round()` (halves away from zero) in operations that vectorise: the library's `roundf`
/// has no vector instruction and was called once per value.
#[inline(always)]
fn round_half_away(x: f32) -> f32 {
    let t = x.trunc();
    // `x − t` is exact.
    if (x - t).abs() >= 0.5 { t + 1f32.copysign(x) } else { t }
}

/// An integer-valued f32 of magnitude below 2^22 as an integer, in operations that vectorise.
#[inline(always)]
fn to_int(r: f32) -> i32 {
    (r + 12_582_912.0).to_bits() as i32 - 0x4B40_0000
}

/// The instruction set the kernel runs with on this machine.
#[derive(Clone, Copy)]
enum Simd {
    /// AVX-512 with VNNI's byte dot products (the same bits, fewer instructions).
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni(pulp::x86::V4, x86::Vnni),
    #[cfg(target_arch = "x86_64")]
    Avx512(pulp::x86::V4),
    #[cfg(target_arch = "x86_64")]
    Avx2(pulp::x86::V3),
    Portable,
}

fn simd() -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(v4) = pulp::x86::V4::try_new() {
            if let Some(vnni) = x86::V4Vnni::try_new() {
                return Simd::Avx512Vnni(v4, x86::Vnni(vnni));
            }
            return Simd::Avx512(v4);
        }
        if let Some(v3) = pulp::x86::V3::try_new() {
            return Simd::Avx2(v3);
        }
    }
    Simd::Portable
}

/// One panel against every input row: `out[r][c]`.
fn panel_product(simd: Simd, format: Format, panel: &[u8], acts: &[Q8Row], out: &mut [[f32; PANEL]]) {
    // Input rows in tiles, then one at a time.
    macro_rules! tiled {
        ($dot:ident, $s:expr, $tile:expr $(, $products:expr)?) => {{
            let mut tiles = acts.chunks_exact($tile);
            let mut done = 0;
            for t in tiles.by_ref() {
                let v = x86::$dot::<{ $tile }>($s, $($products,)? format, panel, std::array::from_fn(|i| &t[i]));
                out[done..done + $tile].copy_from_slice(&v);
                done += $tile;
            }
            for a in tiles.remainder() {
                out[done] = x86::$dot::<1>($s, $($products,)? format, panel, [a])[0];
                done += 1;
            }
        }};
    }
    match simd {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512Vnni(v4, vnni) => vnni.0.vectorize(
            #[inline(always)]
            || tiled!(dot512, v4, TILE_512, vnni),
        ),
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512(v4) => v4.vectorize(
            #[inline(always)]
            || tiled!(dot512, v4, TILE_512, x86::Madd),
        ),
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2(v3) => v3.vectorize(
            #[inline(always)]
            || tiled!(dot256, v3, TILE_256),
        ),
        Simd::Portable => {
            for (a, o) in acts.iter().zip(out.iter_mut()) {
                *o = dot_portable(format, panel, a);
            }
        }
    }
}

/// f16 bits → f32, exactly (the library's inline conversion: its run-time dispatched one is a
/// call per value, which cost more than the block it scales).
#[inline(always)]
fn f16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32_const()
}

/// The reference, which every vector kernel reproduces bit for bit.
fn dot_portable(format: Format, panel: &[u8], a: &Q8Row) -> [f32; PANEL] {
    let mut acc = [0f32; PANEL];
    for (b, pb) in panel.chunks_exact(PANEL * format.block_bytes()).enumerate() {
        let y = &a.q[b * BLOCK..][..BLOCK];
        for (c, acc) in acc.iter_mut().enumerate() {
            let mut sum: i32 = (0..BLOCK).map(|i| value(format, pb, c, i) * i32::from(y[i])).sum();
            if format == Format::Q5_0 {
                sum -= a.sum16[b];
            }
            *acc = (scale(pb, c) * a.d[b]).mul_add(sum as f32, *acc);
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(test)]
mod tests;
