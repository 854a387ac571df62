//! Reading a decoder-only language model from GGUF: its shape from the metadata, its weights
//! from the tensors, kept quantized in memory.
//!
//! `Q5_0` matrices (the common `Q4_K_M` files keep a quarter to a half of their weights in
//! `Q5_0`: rows whose length is not a multiple of 256 cannot be k-quants) and `Q8_0` matrices
//! with such rows are kept as stored and multiplied by Cairn's own kernel ([`super::quant`]).
//! On GPU devices `Q5_0` blocks become `Q8_0` blocks: both are a scale times small integers
//! (5-bit values fit in 8 bits), so the weights are the same numbers.

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor, ggml_file, gguf_file};
use candle_core::{Device, Tensor};

pub(crate) use super::linear::{Linear, Proj};
use crate::inference::quant::{Format, QMatrix};
use crate::{Result, RunError};

/// The architectures read from GGUF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Gemma 3: query/key norms, norms after attention and MLP, GELU, sliding-window layers.
    Gemma3,
    /// Qwen 2 / 2.5: biases on the query, key and value projections, SiLU.
    Qwen2,
}

impl Arch {
    /// The GGUF `general.architecture` name.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Gemma3 => "gemma3",
            Arch::Qwen2 => "qwen2",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "gemma3" => Arch::Gemma3,
            "qwen2" => Arch::Qwen2,
            _ => return None,
        })
    }
}

/// The longest context Cairn serves a GGUF model with, whatever the file allows: it bounds the
/// rotary tables and what one sequence's cache can grow to.
pub const MAX_SERVED_CONTEXT: usize = 4096;

/// A model's shape.
#[derive(Clone, Debug)]
pub struct Config {
    /// The architecture.
    pub arch: Arch,
    /// Transformer blocks.
    pub layers: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMS norm epsilon.
    pub eps: f32,
    /// Rotary base of the global layers.
    pub rope_base: f32,
    /// Rotary base of the sliding-window layers (Gemma 3).
    pub rope_local_base: f32,
    /// The sliding window of the local layers, if any (Gemma 3).
    pub window: Option<usize>,
    /// Every `pattern`-th layer is global, the others slide (Gemma 3).
    pub pattern: usize,
    /// Tokens one sequence may hold (prompt and reply).
    pub context: usize,
    /// Vocabulary size.
    pub vocab: usize,
}

impl Config {
    /// Read the shape from GGUF metadata.
    ///
    /// # Errors
    /// [`RunError::InvalidWorkload`] for an unsupported architecture or missing keys.
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<Self> {
        let arch_name = ct
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        let arch = Arch::parse(&arch_name).ok_or_else(|| {
            invalid(format!("GGUF architecture {arch_name:?} is not supported (Cairn runs gemma3 and qwen2)"))
        })?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let get = |k: &str| ct.metadata.get(&key(k));
        let num = |k: &str| -> Result<usize> {
            get(k)
                .ok_or_else(|| invalid(format!("GGUF has no {}", key(k))))?
                .to_u32()
                .map(|v| v as usize)
                .map_err(|e| invalid(format!("{}: {}", key(k), super::super::models::one_line(e))))
        };
        let float = |k: &str, default: f32| get(k).and_then(|v| v.to_f32().ok()).unwrap_or(default);
        let d_model = num("embedding_length")?;
        let heads = num("attention.head_count")?;
        let kv_heads = num("attention.head_count_kv").unwrap_or(heads);
        let head_dim = match num("attention.key_length") {
            Ok(k) => k,
            Err(_) if heads > 0 => d_model / heads,
            Err(e) => return Err(e),
        };
        let vocab = ct
            .tensor_infos
            .get("token_embd.weight")
            .and_then(|t| t.shape.dims().first().copied())
            .ok_or_else(|| invalid("GGUF has no token_embd.weight"))?;
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || head_dim == 0 || head_dim % 2 != 0 {
            return Err(invalid(format!(
                "inconsistent heads: {heads} query, {kv_heads} key/value, width {head_dim}"
            )));
        }
        let trained = num("context_length").unwrap_or(2048);
        let (window, pattern, rope_local_base) = if arch == Arch::Gemma3 {
            (
                num("attention.sliding_window").ok(),
                num("attention.sliding_window_type").unwrap_or(6),
                float("rope.local_freq_base", 10_000.0),
            )
        } else {
            (None, 1, 0.0)
        };
        Ok(Config {
            arch,
            layers: num("block_count")?,
            d_model,
            heads,
            kv_heads,
            head_dim,
            eps: float("attention.layer_norm_rms_epsilon", 1e-6),
            rope_base: float("rope.freq_base", 10_000.0),
            rope_local_base,
            window,
            pattern: pattern.max(1),
            context: trained.clamp(1, MAX_SERVED_CONTEXT),
            vocab,
        })
    }

    /// Whether layer `i` attends through the sliding window.
    pub fn sliding(&self, i: usize) -> bool {
        self.window.is_some() && !(i + 1).is_multiple_of(self.pattern)
    }
}

pub(crate) fn invalid(msg: impl std::fmt::Display) -> RunError {
    RunError::InvalidWorkload(msg.to_string())
}

/// Tensors read from one GGUF file.
pub(crate) struct Tensors<'a, R> {
    pub(crate) ct: &'a gguf_file::Content,
    pub(crate) reader: &'a mut R,
    pub(crate) device: &'a Device,
}

impl<R: Read + Seek> Tensors<'_, R> {
    pub(crate) fn has(&self, name: &str) -> bool {
        self.ct.tensor_infos.contains_key(name)
    }

    /// A weight kept quantized, and the row length it was padded to. `Q5_0` is rewritten as
    /// `Q8_0`; where the CPU has VNNI, `Q8_0` rows are padded with zero blocks to a multiple of
    /// 256 so the engine's tiled integer kernels take them (a zero block adds exact zeros).
    pub(crate) fn quantized(&mut self, name: &str) -> Result<(Arc<QTensor>, usize)> {
        let info = self.ct.tensor_infos.get(name).ok_or_else(|| invalid(format!("GGUF has no {name}")))?;
        let dims = info.shape.dims().to_vec();
        let (dtype, k) = (info.ggml_dtype, dims.last().copied().unwrap_or(0));
        let pad = pad_to_tiles() && dims.len() == 2 && k % 32 == 0 && k % 256 != 0;
        if dtype == GgmlDType::Q5_0 || (dtype == GgmlDType::Q8_0 && pad) {
            let size = if dtype == GgmlDType::Q5_0 { Q5_0_BYTES } else { Q8_0_BYTES };
            let raw = self.raw_blocks(name, size)?;
            let mut q8 = if dtype == GgmlDType::Q5_0 { q5_0_to_q8_0(&raw) } else { raw };
            let mut dims = dims;
            if pad {
                let padded = k.div_ceil(256) * 256;
                q8 = pad_q8_0_rows(&q8, k, padded);
                if let Some(last) = dims.last_mut() {
                    *last = padded;
                }
            }
            let kk = dims.last().copied().unwrap_or(k);
            return ggml_file::qtensor_from_ggml(GgmlDType::Q8_0, &q8, dims, self.device)
                .map(|t| (Arc::new(t), kk))
                .map_err(|e| invalid(format!("{name}: {}", super::super::models::one_line(e))));
        }
        self.ct
            .tensor(self.reader, name, self.device)
            .map(|t| (Arc::new(t), k))
            .map_err(|e| invalid(format!("{name}: {}", super::super::models::one_line(e))))
    }

    /// A tensor's bytes as stored: blocks of 32 values, `block_bytes` each.
    fn raw_blocks(&mut self, name: &str, block_bytes: usize) -> Result<Vec<u8>> {
        let info = self.ct.tensor_infos.get(name).ok_or_else(|| invalid(format!("GGUF has no {name}")))?;
        let mut raw = vec![0u8; info.shape.elem_count() / 32 * block_bytes];
        self.reader
            .seek(SeekFrom::Start(self.ct.tensor_data_offset + info.offset))
            .and_then(|_| self.reader.read_exact(&mut raw))
            .map_err(|e| invalid(format!("{name}: {e}")))?;
        Ok(raw)
    }

    /// A matrix Cairn's own kernel takes ([`super::quant`]), as stored: on the CPU, `Q5_0`, and
    /// `Q8_0` whose rows candle would pad.
    pub(crate) fn own(&mut self, name: &str) -> Result<Option<QMatrix>> {
        let Some(info) = self.ct.tensor_infos.get(name) else { return Ok(None) };
        let Some(format) = own_format(info) else { return Ok(None) };
        if !self.device.is_cpu() {
            return Ok(None);
        }
        let (rows, k) = (info.shape.dims()[0], info.shape.dims()[1]);
        let raw = self.raw_blocks(name, format.block_bytes())?;
        QMatrix::new(format, &raw, rows, k).map(Some).map_err(|e| invalid(format!("{name}: {e}")))
    }

    /// A weight as candle's matrix product.
    fn candle_linear(&mut self, name: &str) -> Result<Linear> {
        let k = self.ct.tensor_infos.get(name).and_then(|i| i.shape.dims().last().copied()).unwrap_or(0);
        let (t, padded) = self.quantized(name)?;
        Linear::new(t, k, padded)
    }

    /// A weight as a matrix product: Cairn's kernel for the formats it takes (every row,
    /// prompt or step), candle's otherwise.
    pub(crate) fn linear(&mut self, name: &str) -> Result<Linear> {
        match self.own(name)? {
            Some(m) => Ok(Linear::Own(Arc::new(m))),
            None => self.candle_linear(name),
        }
    }

    /// Several weights read by the same input, as one product when they can be stacked (all
    /// `Q8_0` rows of one width after conversion): one pass over the input instead of several.
    /// Each output column is still its own weight row's dot product.
    pub(crate) fn projections(&mut self, names: &[&str]) -> Result<Proj> {
        let formats: Vec<Option<Format>> =
            names.iter().map(|n| self.ct.tensor_infos.get(*n).and_then(own_format)).collect();
        if self.device.is_cpu() && formats.iter().any(Option::is_some) {
            if formats.iter().all(|f| *f == formats[0]) {
                let mut parts = Vec::with_capacity(names.len());
                for n in names {
                    parts.extend(self.own(n)?);
                }
                let sizes: Vec<usize> = parts.iter().map(QMatrix::rows).collect();
                if let Some(own) = QMatrix::stack(parts).filter(|_| sizes.len() == names.len()) {
                    return Ok(Proj::Fused(Linear::Own(Arc::new(own)), sizes));
                }
            }
            return names.iter().map(|n| self.linear(n)).collect::<Result<Vec<_>>>().map(Proj::Split);
        }
        self.candle_projections(names)
    }

    /// [`Self::projections`] with candle's products.
    fn candle_projections(&mut self, names: &[&str]) -> Result<Proj> {
        let k = self.ct.tensor_infos.get(names[0]).and_then(|i| i.shape.dims().last().copied()).unwrap_or(0);
        let mut parts = Vec::with_capacity(names.len());
        for n in names {
            parts.push(self.quantized(n)?);
        }
        let width = parts[0].1;
        let stackable = parts
            .iter()
            .all(|(t, w)| t.dtype() == GgmlDType::Q8_0 && *w == width && t.shape().dims().len() == 2);
        if !stackable || parts.len() < 2 {
            return parts
                .into_iter()
                .map(|(t, w)| Linear::new(t, k, w))
                .collect::<Result<Vec<_>>>()
                .map(Proj::Split);
        }
        let mut bytes = Vec::new();
        let mut sizes = Vec::with_capacity(parts.len());
        for (t, _) in &parts {
            bytes.extend_from_slice(&t.data().map_err(|e| invalid(super::super::models::one_line(e)))?);
            sizes.push(t.shape().dims()[0]);
        }
        drop(parts);
        let rows: usize = sizes.iter().sum();
        let t = ggml_file::qtensor_from_ggml(GgmlDType::Q8_0, &bytes, vec![rows, width], self.device)
            .map_err(|e| invalid(format!("{}: {}", names.join("+"), super::super::models::one_line(e))))?;
        Ok(Proj::Fused(Linear::new(Arc::new(t), k, width)?, sizes))
    }

    /// A small weight (norms, biases) as f32.
    pub(crate) fn dense(&mut self, name: &str) -> Result<Tensor> {
        self.quantized(name)?
            .0
            .dequantize(self.device)
            .map_err(|e| invalid(format!("{name}: {}", super::super::models::one_line(e))))
    }
}

/// Whether batching is known to leave every row's bits alone on this architecture (checked by
/// `one_row_gets_the_same_bits_alone_or_batched` for every weight type the engine uses). On
/// others, sequences are decoded one at a time.
pub fn batch_invariant() -> bool {
    cfg!(target_arch = "x86_64")
}

/// The format Cairn's own kernel takes a weight in, if it does: `Q5_0` matrices, and `Q8_0`
/// matrices whose rows the tile kernels would pad (elsewhere candle's `Q8_0` kernels are faster).
fn own_format(info: &gguf_file::TensorInfo) -> Option<Format> {
    let dims = info.shape.dims();
    let k = *dims.last()?;
    let format = match info.ggml_dtype {
        GgmlDType::Q5_0 => Format::Q5_0,
        GgmlDType::Q8_0 if k % 256 != 0 => Format::Q8_0,
        _ => return None,
    };
    (dims.len() == 2 && QMatrix::fits(dims[0], k)).then_some(format)
}

/// Whether `Q8_0` rows are padded for the tiled VNNI kernels (a property of the instruction-set
/// class, so every run in a class makes the same choice).
fn pad_to_tiles() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Rows of `k` values in `Q8_0` blocks, each extended with zero blocks to `padded` values.
fn pad_q8_0_rows(q8: &[u8], k: usize, padded: usize) -> Vec<u8> {
    let (row, new_row) = (k / 32 * Q8_0_BYTES, padded / 32 * Q8_0_BYTES);
    let mut out = Vec::with_capacity(q8.len() / row.max(1) * new_row);
    for r in q8.chunks_exact(row) {
        out.extend_from_slice(r);
        out.resize(out.len() + new_row - row, 0);
    }
    out
}

const Q5_0_BYTES: usize = 22;
const Q8_0_BYTES: usize = 34;

/// Rewrite `Q5_0` blocks (f16 scale, 32 high bits, 16 bytes of low nibbles) as `Q8_0` blocks
/// (the same f16 scale, 32 signed bytes): value `j` of a block is `d * (q_j - 16)` in both.
pub(crate) fn q5_0_to_q8_0(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() / Q5_0_BYTES * Q8_0_BYTES);
    for b in raw.chunks_exact(Q5_0_BYTES) {
        out.extend_from_slice(&b[..2]);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let qs = &b[6..22];
        let mut vals = [0u8; 32];
        for j in 0..16 {
            let hi0 = ((qh >> j) << 4) & 0x10;
            let hi1 = (qh >> (j + 12)) & 0x10;
            let lo = u32::from(qs[j] & 0x0f) | hi0;
            let up = u32::from(qs[j] >> 4) | hi1;
            // 0..=31 minus 16 fits an i8; stored as its two's-complement byte.
            vals[j] = (lo as i32 - 16) as i8 as u8;
            vals[j + 16] = (up as i32 - 16) as i8 as u8;
        }
        out.extend_from_slice(&vals);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q5_0_blocks_become_the_same_numbers_in_q8_0() {
        // Blocks with varied scales, high bits and nibbles, through candle's own dequantizers.
        let mut raw = Vec::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..64u16 {
            let d = half_bits(0.01 + f32::from(i) * 0.003);
            raw.extend_from_slice(&d.to_le_bytes());
            for _ in 0..20 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                raw.push(x as u8);
            }
        }
        let dev = Device::Cpu;
        let a = ggml_file::qtensor_from_ggml(GgmlDType::Q5_0, &raw, vec![2, 1024], &dev).unwrap();
        let b =
            ggml_file::qtensor_from_ggml(GgmlDType::Q8_0, &q5_0_to_q8_0(&raw), vec![2, 1024], &dev).unwrap();
        let (a, b) = (a.dequantize(&dev).unwrap(), b.dequantize(&dev).unwrap());
        let (a, b) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(a.len(), 2048);
        assert!(a.iter().any(|v| *v != 0.0));
        assert_eq!(
            a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    /// f32 → IEEE half bits for normal values in range (enough for test scales).
    fn half_bits(v: f32) -> u16 {
        let b = v.to_bits();
        let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
        (((b >> 16) & 0x8000) | ((exp as u32) << 10) | ((b >> 13) & 0x3ff)) as u16
    }
}

#[cfg(test)]
mod batch_tests {
    use super::Linear;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};
    use std::sync::Arc;

    #[test]
    fn one_row_gets_the_same_bits_alone_or_batched() {
        let dev = Device::Cpu;
        let cases = [
            (GgmlDType::Q8_0, 640),
            (GgmlDType::Q8_0, 768),
            (GgmlDType::Q4K, 1024),
            (GgmlDType::Q6K, 2048),
            (GgmlDType::Q5K, 512),
            (GgmlDType::Q4_0, 640),
        ];
        for (dtype, k) in cases {
            let n = 64;
            let w: Vec<f32> = (0..n * k).map(|i| (i * 7919 % 1000) as f32 / 500.0 - 1.0).collect();
            let w = Tensor::from_vec(w, (n, k), &dev).unwrap();
            let lin = Linear::new(Arc::new(QTensor::quantize(&w, dtype).unwrap()), k, k).unwrap();
            let x: Vec<f32> = (0..5 * k).map(|i| (i * 104_729 % 997) as f32 / 498.0 - 1.0).collect();
            let x = Tensor::from_vec(x, (5, k), &dev).unwrap();
            let bits = |t: Tensor| -> Vec<Vec<u32>> {
                t.to_vec2::<f32>().unwrap().iter().map(|r| r.iter().map(|v| v.to_bits()).collect()).collect()
            };
            let all = bits(lin.forward(&x).unwrap());
            for r in 0..5 {
                let one = bits(lin.forward(&x.narrow(0, r, 1).unwrap()).unwrap());
                assert!(one[0] == all[r], "{dtype:?} k={k}: row {r} alone differs from batched");
                let two = bits(lin.forward(&x.narrow(0, r.min(3), 2).unwrap()).unwrap());
                assert!(two[r - r.min(3)] == all[r], "{dtype:?} k={k}: row {r} in a pair differs");
            }
        }
    }
}
