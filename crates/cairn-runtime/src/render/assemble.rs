//! Assembly on the client's side: a render job's committed tiles stitched into frames, and the
//! frames into an animation and a video.
//!
//! Every input is a task's output bundle fetched by its committed content id (and so verified
//! against the chain before it gets here). The frames are Cairn's PNGs of the stitched pixels,
//! so the same committed tiles always assemble to the same frame files; `frames.json` records
//! which committed outputs each frame was made from. The animated PNG is written here; the
//! MP4 needs `ffmpeg` (libx264, one thread so the bytes are reproducible) and is skipped, with
//! a note, where it is not installed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_types::{ContentId, OutputBundle, RenderSpec};

use super::frames;
use crate::{Result, RunError, io};

/// What [`assemble`] wrote.
#[derive(Clone, Debug, Default)]
pub struct Assembled {
    /// The frames written, in order.
    pub frames: Vec<PathBuf>,
    /// Frames that could not be made yet (a tile with no output, or one that failed), with why.
    pub missing: Vec<(u32, String)>,
    /// The animated PNG, once every frame is there.
    pub animation: Option<PathBuf>,
    /// The MP4, once every frame is there and where `ffmpeg` is installed.
    pub video: Option<PathBuf>,
    /// Why there is no video, when there is none.
    pub video_note: Option<String>,
}

/// The frame number of each file [`assemble`] writes.
pub fn frame_file(frame: u32) -> String {
    format!("frame-{frame:06}.png")
}

/// Stitch the tiles in `outputs` (task index → its committed output id and bundle) into frames
/// under `out/frames`, then the animation and video under `out` once every frame is there.
///
/// # Errors
/// [`RunError::Io`] when files cannot be written; a tile that does not decode or fit is
/// reported in [`Assembled::missing`] instead.
pub fn assemble(
    spec: &RenderSpec,
    outputs: &BTreeMap<u32, (ContentId, OutputBundle)>,
    out: &Path,
) -> Result<Assembled> {
    let dir = out.join("frames");
    std::fs::create_dir_all(&dir).map_err(io)?;
    let mut done = Assembled::default();
    let mut manifest = Vec::new();
    let count = u32::try_from(spec.frame_count()).unwrap_or(u32::MAX);
    for k in 0..count {
        let frame = spec.frames.start.saturating_add(k);
        let mut tiles = Vec::new();
        let mut made_from = Vec::new();
        let mut why = None;
        for t in 0..spec.tiles {
            let index = k.saturating_mul(spec.tiles).saturating_add(t);
            let Some((id, b)) = outputs.get(&index) else {
                why = Some(format!("task {index} has no output yet"));
                break;
            };
            if b.exit() != Some("ok") {
                let reason =
                    b.files.get(OutputBundle::STDERR).map(|r| String::from_utf8_lossy(r).into_owned());
                why =
                    Some(format!("task {index}: {} {}", b.exit().unwrap_or("?"), reason.unwrap_or_default()));
                break;
            }
            match b.files.get(&spec.file_name(index)).map(|png| frames::decode(png)) {
                Some(Ok(img)) => tiles.push(img),
                Some(Err(e)) => {
                    why = Some(format!("task {index}: {e}"));
                    break;
                }
                None => {
                    why = Some(format!("task {index}: no {} in its output", spec.file_name(index)));
                    break;
                }
            }
            made_from.push(id.to_string());
        }
        if let Some(w) = why {
            done.missing.push((frame, w.trim().to_string()));
            continue;
        }
        let img = frames::stitch(&tiles)?;
        if (img.width, img.height) != (spec.resolution.width, spec.resolution.height) {
            done.missing.push((frame, format!("tiles stitch to {} × {}", img.width, img.height)));
            continue;
        }
        let path = dir.join(frame_file(frame));
        let bytes = frames::encode(&img);
        std::fs::write(&path, &bytes).map_err(io)?;
        manifest.push(serde_json::json!({ "frame": frame, "file": frame_file(frame), "id": ContentId::of(&bytes), "tiles": made_from }));
        done.frames.push(path);
    }
    let json = serde_json::json!({ "fps": spec.fps, "resolution": [spec.resolution.width, spec.resolution.height], "frames": manifest });
    std::fs::write(out.join("frames.json"), serde_json::to_vec_pretty(&json).unwrap_or_default())
        .map_err(io)?;
    if !done.missing.is_empty() || done.frames.is_empty() {
        done.video_note = Some("the animation and video are made once every frame is rendered".into());
        return Ok(done);
    }
    let animation = out.join("animation.png");
    let file = std::fs::File::create(&animation).map_err(io)?;
    let paths = done.frames.clone();
    let size = (spec.resolution.width, spec.resolution.height);
    frames::write_apng(std::io::BufWriter::new(file), size, spec.fps, paths.len(), |i| {
        frames::decode(&std::fs::read(&paths[i]).map_err(io)?)
    })?;
    done.animation = Some(animation);
    match video(spec, &dir, &out.join("video.mp4")) {
        Ok(p) => done.video = Some(p),
        Err(e) => done.video_note = Some(e.to_string()),
    }
    Ok(done)
}

/// The frames in `dir` as an H.264 MP4 at the job's frame rate.
fn video(spec: &RenderSpec, dir: &Path, to: &Path) -> Result<PathBuf> {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-y", "-nostdin", "-loglevel", "error", "-framerate"])
        .arg(spec.fps.to_string())
        .arg("-start_number")
        .arg(spec.frames.start.to_string())
        .arg("-i")
        .arg(dir.join("frame-%06d.png"))
        // H.264 in 4:2:0 needs even sides; one thread makes the bytes reproducible.
        .args([
            "-vf",
            "pad=ceil(iw/2)*2:ceil(ih/2)*2",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-threads",
            "1",
        ])
        .args(["-movflags", "+faststart"])
        .arg(to);
    match cmd.output() {
        Ok(o) if o.status.success() => Ok(to.to_path_buf()),
        Ok(o) => Err(RunError::Runtime(format!("ffmpeg: {}", String::from_utf8_lossy(&o.stderr).trim()))),
        Err(_) => Err(RunError::Runtime("no video: ffmpeg is not installed (apt-get install ffmpeg)".into())),
    }
}
