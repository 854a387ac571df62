//! Render one frame of a Mandelbrot zoom as an RGB PNG.
//!
//! Frame `i` of `n` zooms toward a fixed point; each frame is independent, so a job splits an
//! animation into one task per frame.

/// Render frame `frame` of `frames` at `width × height`, as PNG bytes.
pub fn render(width: u32, height: u32, frame: u32, frames: u32, max_iter: u32) -> Vec<u8> {
    let (cx, cy) = (-0.743_643_887_037_151, 0.131_825_904_205_33);
    let t = if frames > 1 { f64::from(frame) / f64::from(frames - 1) } else { 0.0 };
    let scale = 3.0 * (0.000_5f64).powf(t);
    let mut rgb = Vec::with_capacity((width * height * 3) as usize);
    for py in 0..height {
        for px in 0..width {
            let x0 = cx + (f64::from(px) / f64::from(width) - 0.5) * scale;
            let y0 =
                cy + (f64::from(py) / f64::from(height) - 0.5) * scale * f64::from(height) / f64::from(width);
            let (mut x, mut y, mut i) = (0.0f64, 0.0f64, 0u32);
            while x * x + y * y <= 4.0 && i < max_iter {
                let xt = x * x - y * y + x0;
                y = 2.0 * x * y + y0;
                x = xt;
                i += 1;
            }
            let (r, g, b) = if i == max_iter {
                (0, 0, 0)
            } else {
                let v = (i * 255 / max_iter) as u8;
                (v, v.wrapping_mul(3), 255 - v)
            };
            rgb.extend_from_slice(&[r, g, b]);
        }
    }
    png(width, height, &rgb)
}

fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, slot) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
        *slot = c;
    }
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc = table[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc ^ 0xFFFF_FFFF
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    (b << 16) | a
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A minimal PNG: 8-bit RGB, no filtering, zlib with stored (uncompressed) blocks.
fn png(width: u32, height: u32, rgb: &[u8]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(rgb.len() + height as usize);
    for row in rgb.chunks((width * 3) as usize) {
        raw.push(0);
        raw.extend_from_slice(row);
    }
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&(!len).to_le_bytes());
        z.extend_from_slice(block);
    }
    z.extend_from_slice(&adler32(&raw).to_be_bytes());
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}
