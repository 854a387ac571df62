//! The kernels against the portable reference and the stored weights.

use super::*;

/// A block's values as GGUF stores it (`Q5_0` with its offset taken off).
fn gguf_values(format: Format, blk: &[u8]) -> impl Iterator<Item = i32> + '_ {
    (0..BLOCK).map(move |i| match format {
        Format::Q8_0 => i32::from(blk[2 + i] as i8),
        Format::Q5_0 => {
            let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
            let nibble = if i < 16 { blk[6 + i] & 0x0f } else { blk[6 + i - 16] >> 4 };
            (i32::from(nibble) | (((qh >> i) & 1) << 4) as i32) - 16
        }
    })
}

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

fn bits(t: Tensor) -> Vec<Vec<u32>> {
    t.to_vec2::<f32>().unwrap().iter().map(|r| r.iter().map(|v| v.to_bits()).collect()).collect()
}

#[test]
fn every_kernel_gives_the_portable_bits_and_the_exact_products() {
    for format in [Format::Q5_0, Format::Q8_0] {
        let (k, rows, size) = (896, 32, format.block_bytes());
        let mut raw = blocks(format, rows * k / BLOCK, 0x9e37_79b9_7f4a_7c15);
        if format == Format::Q8_0 {
            raw[2] = 0x80; // -128, the extreme byte
        }
        let m = QMatrix::new(format, &raw, rows, k).unwrap();
        // 19 input rows: a tile of sixteen (AVX-512) or four tiles of four (AVX2), and the rest
        // one by one.
        let n = 19;
        let xs: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 97.0).collect();
        let x = Tensor::from_vec(xs.clone(), (n, k), &Device::Cpu).unwrap();
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
                // Against the stored weights (as GGUF holds them) and the activations in f64.
                let w = &raw[j * row_bytes..][..row_bytes];
                let mut exact = 0f64;
                for (b, blk) in w.chunks_exact(size).enumerate() {
                    let dw = f64::from(f16_to_f32(u16::from_le_bytes([blk[0], blk[1]])));
                    for (i, v) in gguf_values(format, blk).enumerate() {
                        let wv = dw * f64::from(v);
                        assert_eq!(wv as f32, dense[j][b * BLOCK + i], "the lookup gives the weight");
                        exact += wv * f64::from(a.d[b]) * f64::from(a.q[b * BLOCK + i]);
                    }
                }
                let got = f64::from(y[r][j]);
                assert!((got - exact).abs() <= 1e-4 * exact.abs().max(1.0), "{format:?} {got} vs {exact}");
            }
        }
        // Every instruction set this machine has gives the portable bits.
        let mut paths = vec![Simd::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            paths.extend(pulp::x86::V3::try_new().map(Simd::Avx2));
            paths.extend(pulp::x86::V4::try_new().map(Simd::Avx512));
            if let (Some(v4), Some(vnni)) = (pulp::x86::V4::try_new(), x86::V4Vnni::try_new()) {
                paths.push(Simd::Avx512Vnni(v4, x86::Vnni(vnni)));
            }
        }
        let want = bits(m.forward_with(&x, Simd::Portable).unwrap());
        for p in &paths {
            assert_eq!(bits(m.forward_with(&x, *p).unwrap()), want, "{format:?}");
        }
        eprintln!("{format:?}: {} instruction sets compared", paths.len());
        // A row alone, or in a pair, gets the bits it gets in the batch of eleven.
        let all = bits(m.forward(&x).unwrap());
        for r in [0, 5, 9, 10] {
            assert_eq!(
                bits(m.forward(&x.narrow(0, r, 1).unwrap()).unwrap())[0],
                all[r],
                "{format:?} row {r}"
            );
            let from = r.min(n - 2);
            assert_eq!(bits(m.forward(&x.narrow(0, from, 2).unwrap()).unwrap())[r - from], all[r]);
        }
    }
}

#[test]
fn a_wrong_shape_or_scale_is_refused() {
    assert!(QMatrix::new(Format::Q5_0, &[0; 16 * 22 - 1], 16, 32).is_err(), "short");
    assert!(QMatrix::new(Format::Q5_0, &[0; 22], 1, 32).is_err(), "not a whole panel");
    assert!(QMatrix::new(Format::Q8_0, &[0; 16 * 34], 16, 31).is_err(), "not whole blocks");
    let mut inf = vec![0; 16 * 22];
    inf[22..24].copy_from_slice(&0x7c00u16.to_le_bytes());
    assert!(QMatrix::new(Format::Q5_0, &inf, 16, 32).is_err(), "an infinite scale");
    let m = QMatrix::new(Format::Q8_0, &[0; 16 * 34], 16, 32).unwrap();
    let x = Tensor::zeros((1, 64), DType::F32, &Device::Cpu).unwrap();
    assert!(m.forward(&x).is_err());
    assert!(m.rows_f32(&[16], &Device::Cpu).is_err(), "a row past the end");
}

/// Cairn's kernel against candle's tiles on a Qwen-sized projection, by rows per product (run
/// with `cargo test --release -p cairn-runtime --lib kernel_speed -- --ignored --nocapture`).
#[test]
#[ignore = "a timing, not a check"]
fn kernel_speed() {
    use candle_core::Module as _;
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    let (k, rows) = (1024, 4864);
    let w: Vec<f32> = (0..rows * k).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0).collect();
    let wt = Tensor::from_vec(w, (rows, k), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&wt, GgmlDType::Q8_0).unwrap();
    let raw = q.data().unwrap().to_vec();
    let own = QMatrix::new(Format::Q8_0, &raw, rows, k).unwrap();
    let candle = QMatMul::from_qtensor(q).unwrap();
    for m in [1, 16, 64, 256, 800] {
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 104_729 % 997) as f32 - 498.0) / 498.0).collect();
        let x = Tensor::from_vec(x, (m, k), &Device::Cpu).unwrap();
        let time = |f: &dyn Fn() -> Tensor| {
            let _ = f();
            let reps = (2000 / m).max(3);
            let t = std::time::Instant::now();
            for _ in 0..reps {
                let _ = f();
            }
            t.elapsed().as_secs_f64() / reps as f64
        };
        let (a, b) = (time(&|| own.forward(&x).unwrap()), time(&|| candle.forward(&x).unwrap()));
        eprintln!("m={m}: cairn {:.3} ms, candle {:.3} ms, ratio {:.2}", a * 1e3, b * 1e3, b / a);
    }
}

#[test]
fn rounding_is_the_librarys_halves_away_from_zero() {
    for i in -300_000..300_000 {
        let x = i as f32 / 997.0;
        assert_eq!(round_half_away(x).to_bits(), x.round().to_bits(), "{x}");
    }
    for x in [0.5f32, -0.5, 1.5, -2.5, 0.499_999_97, -0.499_999_97, 126.5, -127.0, 0.0, -0.0, 8_388_609.0] {
        assert_eq!(round_half_away(x), x.round(), "{x}");
    }
}
