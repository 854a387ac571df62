//! Frames as pixels: decoding what Blender writes, encoding what Cairn commits, stitching tiles
//! into frames and frames into an animation.
//!
//! A committed frame is a PNG Cairn encodes itself from the decoded 8-bit RGBA pixels, with
//! fixed settings and no metadata: Blender's own files carry render times and dates in text
//! chunks, so two honest renders of the same pixels would not match byte for byte. The bytes
//! depend only on the pixels (and this encoder's revision, part of the render class).

use crate::{Result, RunError};

/// Largest image this module decodes (pixels), as a guard against hostile PNG headers.
pub const MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// An 8-bit RGBA image, rows top to bottom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width × height × 4` bytes.
    pub rgba: Vec<u8>,
}

fn bad(what: impl std::fmt::Display) -> RunError {
    RunError::InvalidWorkload(format!("image: {what}"))
}

/// Decode a PNG (8- or 16-bit, grey, RGB or RGBA, palette) to 8-bit RGBA.
///
/// # Errors
/// [`RunError::InvalidWorkload`] for a file that is not a PNG this decodes, or one over
/// [`MAX_PIXELS`].
pub fn decode(bytes: &[u8]) -> Result<Image> {
    let mut dec = png::Decoder::new(bytes);
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    dec.set_limits(png::Limits { bytes: usize::try_from(MAX_PIXELS * 8).unwrap_or(usize::MAX) });
    let mut reader = dec.read_info().map_err(bad)?;
    let (w, h) = (reader.info().width, reader.info().height);
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(bad(format!("{w} × {h} is over {MAX_PIXELS} pixels")));
    }
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).map_err(bad)?;
    buf.truncate(info.buffer_size());
    let px = (w as usize) * (h as usize);
    let rgba = match info.color_type {
        png::ColorType::Rgba => buf,
        png::ColorType::Rgb => buf.chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect(),
        png::ColorType::GrayscaleAlpha => {
            buf.chunks_exact(2).flat_map(|p| [p[0], p[0], p[0], p[1]]).collect()
        }
        png::ColorType::Grayscale => buf.iter().flat_map(|&g| [g, g, g, 255]).collect(),
        png::ColorType::Indexed => return Err(bad("an indexed PNG was not expanded")),
    };
    if rgba.len() != px * 4 {
        return Err(bad("pixel data of the wrong size"));
    }
    Ok(Image { width: w, height: h, rgba })
}

fn encoder<W: std::io::Write>(w: W, width: u32, height: u32) -> png::Encoder<'static, W> {
    let mut e = png::Encoder::new(w, width, height);
    e.set_color(png::ColorType::Rgba);
    e.set_depth(png::BitDepth::Eight);
    e.set_compression(png::Compression::Default);
    e.set_filter(png::FilterType::Paeth);
    e.set_adaptive_filter(png::AdaptiveFilterType::NonAdaptive);
    e
}

/// Cairn's PNG of `img`: the same pixels always give the same bytes.
pub fn encode(img: &Image) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = encoder(&mut out, img.width, img.height).write_header().expect("PNG header to memory");
        w.write_image_data(&img.rgba).expect("PNG data to memory");
    }
    out
}

/// Tiles (horizontal bands, top first) joined into one image.
///
/// # Errors
/// [`RunError::InvalidWorkload`] when there are none or their widths differ.
pub fn stitch(tiles: &[Image]) -> Result<Image> {
    let width = tiles.first().ok_or_else(|| bad("no tiles to stitch"))?.width;
    if tiles.iter().any(|t| t.width != width) {
        return Err(bad("tiles of different widths"));
    }
    let height = tiles.iter().map(|t| t.height).sum();
    let rgba = tiles.iter().flat_map(|t| t.rgba.iter().copied()).collect();
    Ok(Image { width, height, rgba })
}

/// An animated PNG of `frames` at `fps`, looping: plays in any browser, written without
/// external tools.
///
/// # Errors
/// [`RunError::InvalidWorkload`] when there are no frames or their sizes differ.
pub fn apng(frames: &[Image], fps: u32) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let first = frames.first().ok_or_else(|| bad("no frames"))?;
    write_apng(&mut out, (first.width, first.height), fps, frames.len(), |i| Ok(frames[i].clone()))?;
    Ok(out)
}

/// [`apng`] written to `w`, frame `i` of `n` from `frame(i)` (one frame in memory at a time).
///
/// # Errors
/// [`RunError::InvalidWorkload`] when a frame is not `size`, or what `frame` returns.
pub fn write_apng<W: std::io::Write>(
    w: W,
    size: (u32, u32),
    fps: u32,
    n: usize,
    mut frame: impl FnMut(usize) -> Result<Image>,
) -> Result<()> {
    let count = u32::try_from(n).map_err(|_| bad("too many frames"))?;
    if count == 0 {
        return Err(bad("no frames"));
    }
    let mut e = encoder(w, size.0, size.1);
    e.set_animated(count, 0).map_err(bad)?;
    e.set_frame_delay(1, u16::try_from(fps.max(1)).unwrap_or(u16::MAX)).map_err(bad)?;
    let mut out = e.write_header().map_err(bad)?;
    for i in 0..n {
        let f = frame(i)?;
        if (f.width, f.height) != size {
            return Err(bad("frames of different sizes"));
        }
        out.write_image_data(&f.rgba).map_err(bad)?;
    }
    out.finish().map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(w: u32, h: u32, seed: u8) -> Image {
        let rgba = (0..w * h * 4).map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed)).collect();
        Image { width: w, height: h, rgba }
    }

    #[test]
    fn encoding_is_a_function_of_the_pixels_and_round_trips() {
        let a = img(7, 5, 3);
        let bytes = encode(&a);
        assert_eq!(encode(&a), bytes);
        assert_eq!(decode(&bytes).unwrap(), a);
        assert_ne!(encode(&img(7, 5, 4)), bytes);
    }

    #[test]
    fn tiles_stitch_into_the_whole_image() {
        let whole = img(4, 6, 9);
        let top = Image { width: 4, height: 2, rgba: whole.rgba[..32].to_vec() };
        let rest = Image { width: 4, height: 4, rgba: whole.rgba[32..].to_vec() };
        assert_eq!(stitch(&[top.clone(), rest]).unwrap(), whole);
        assert!(stitch(&[top, img(3, 1, 1)]).is_err());
        assert!(stitch(&[]).is_err());
    }

    #[test]
    fn an_animation_holds_every_frame() {
        let frames = [img(3, 2, 1), img(3, 2, 2), img(3, 2, 3)];
        let bytes = apng(&frames, 12).unwrap();
        let dec = png::Decoder::new(bytes.as_slice()).read_info().unwrap();
        assert_eq!(dec.info().animation_control.map(|a| a.num_frames), Some(3));
        assert!(apng(&[img(3, 2, 1), img(2, 3, 1)], 12).is_err());
    }

    #[test]
    fn garbage_and_huge_headers_are_refused() {
        assert!(decode(b"not a png").is_err());
        // A valid header that claims 100000 × 100000 pixels.
        let mut bytes = encode(&img(1, 1, 1));
        bytes[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        assert!(decode(&bytes).is_err());
    }
}
