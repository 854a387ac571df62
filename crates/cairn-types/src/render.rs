//! Rendering jobs: a Blender scene split into frames and tiles across providers.
//!
//! A `render` job's workload is the `.blend` file; its shared inputs are the scene's assets
//! (textures and the like, beside the `.blend`, referenced by relative paths such as `//wood.png`).
//! The `render` section says what to make: which Blender (providers advertise the version they
//! run in [`BLENDER_ATTRIBUTE`], and tasks match only that version), the frames, resolution,
//! samples and seed, and how many horizontal tiles each frame is cut into. Task `i` renders
//! frame `start + i / tiles`, tile `i % tiles` (tile 0 is the top band), so a job has
//! `frames × tiles` tasks; leave `tasks` out of the YAML and it is filled in.
//!
//! ```
//! use cairn_types::JobSpec;
//! let spec = JobSpec::from_yaml(r#"
//! kind: render
//! workload: af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262
//! max_price_per_task: 0.2 CRN
//! render:
//!   blender: "3.4.1"
//!   frames: { start: 1, end: 24 }
//!   resolution: { width: 320, height: 180 }
//!   samples: 16
//!   tiles: 2
//! "#).unwrap();
//! let r = spec.render.as_deref().unwrap();
//! assert_eq!(spec.tasks, 48);
//! assert_eq!(r.part(5), (3, 1));                  // frame 3, bottom tile
//! assert_eq!(r.tile_rows(1), (90, 180));           // rows 90..180 from the top
//! // A billion frames is refused when the job is written, not after it is paid for.
//! let huge = r#"
//! kind: render
//! workload: af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262
//! max_price_per_task: 0.2 CRN
//! render: { blender: "3.4.1", frames: { start: 1, end: 1000000000 }, resolution: { width: 320, height: 180 } }
//! "#;
//! assert!(JobSpec::from_yaml(huge).unwrap_err().to_string().contains("frames"));
//! ```

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

use crate::job::{JobSpec, WorkloadKind};

/// The provider attribute naming the Blender version it renders with (`3.4.1`).
pub const BLENDER_ATTRIBUTE: &str = "render.blender";

/// The name a render task's `.blend` has inside the sandbox (`/in/scene.blend`): an input may
/// not take it.
pub const SCENE_FILE: &str = "scene.blend";

/// Limits on render specs.
pub mod render_limits {
    /// Pixels on a side.
    pub const MAX_SIDE: u32 = 16_384;
    /// Pixels in a frame (8K UHD is 33 megapixels).
    pub const MAX_PIXELS: u64 = 40_000_000;
    /// Samples per pixel.
    pub const MAX_SAMPLES: u32 = 65_536;
    /// Tiles per frame.
    pub const MAX_TILES: u32 = 64;
    /// Highest frame number (Blender's own limit).
    pub const MAX_FRAME: u32 = 1_048_574;
    /// Frames per second of the assembled video.
    pub const MAX_FPS: u32 = 240;
}

/// The render engine.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
#[borsh(use_discriminant = true)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum RenderEngine {
    /// Cycles, path tracing on the CPU: bit-identical pixels for the same Blender version and
    /// settings, whatever the thread count, so audits compare bitwise.
    #[default]
    Cycles = 0,
}

/// An inclusive frame range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Frames {
    /// First frame.
    pub start: u32,
    /// Last frame (inclusive).
    pub end: u32,
}

/// Output size in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resolution {
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

fn default_samples() -> u32 {
    64
}
fn one() -> u32 {
    1
}
fn default_fps() -> u32 {
    24
}

/// What a `render` job renders (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenderSpec {
    /// The Blender version the scene is rendered with (`3.4.1`); only providers advertising it
    /// in [`BLENDER_ATTRIBUTE`] take or audit its tasks.
    pub blender: String,
    /// The engine.
    #[serde(default)]
    pub engine: RenderEngine,
    /// Frames to render.
    pub frames: Frames,
    /// Output size.
    pub resolution: Resolution,
    /// Samples per pixel.
    #[serde(default = "default_samples")]
    pub samples: u32,
    /// The sampling seed (fixed: a frame renders the same on every machine).
    #[serde(default)]
    pub seed: u32,
    /// Horizontal bands each frame is cut into, one task each.
    #[serde(default = "one")]
    pub tiles: u32,
    /// Frames per second of the assembled video.
    #[serde(default = "default_fps")]
    pub fps: u32,
}

impl RenderSpec {
    /// Frames in the range (0 when it is backwards).
    pub fn frame_count(&self) -> u64 {
        u64::from(self.frames.end).saturating_add(1).saturating_sub(u64::from(self.frames.start))
    }

    /// Tasks the job has: frames × tiles.
    pub fn tasks(&self) -> u64 {
        self.frame_count().saturating_mul(u64::from(self.tiles))
    }

    /// The frame and tile task `index` renders.
    pub fn part(&self, index: u32) -> (u32, u32) {
        let tiles = self.tiles.max(1);
        let (frame, tile) = (index.checked_div(tiles).unwrap_or(0), index.checked_rem(tiles).unwrap_or(0));
        (self.frames.start.saturating_add(frame), tile)
    }

    /// The rows (from the top, end exclusive) of tile `tile`.
    pub fn tile_rows(&self, tile: u32) -> (u32, u32) {
        let (h, n) = (u64::from(self.resolution.height), u64::from(self.tiles.max(1)));
        let at = |k: u64| u32::try_from(h.saturating_mul(k).checked_div(n).unwrap_or(0)).unwrap_or(u32::MAX);
        (at(u64::from(tile)), at(u64::from(tile).saturating_add(1)))
    }

    /// The file a task's frame or tile is written to in its output bundle.
    pub fn file_name(&self, index: u32) -> String {
        let (frame, tile) = self.part(index);
        if self.tiles > 1 {
            format!("frame-{frame:06}-tile-{tile:02}.png")
        } else {
            format!("frame-{frame:06}.png")
        }
    }

    /// Check the section on its own.
    ///
    /// # Errors
    /// A message naming the first broken rule.
    pub fn check(&self) -> Result<(), String> {
        use render_limits::*;
        if self.blender.is_empty()
            || self.blender.len() > 32
            || !self.blender.chars().all(|c| c.is_ascii_digit() || c == '.')
        {
            return Err(format!(
                "render.blender must be a version such as \"3.4.1\", not {:?}",
                self.blender
            ));
        }
        let Frames { start, end } = self.frames;
        if start > end || end > MAX_FRAME {
            return Err(format!(
                "render.frames must satisfy start <= end <= {MAX_FRAME} (got {start}..={end})"
            ));
        }
        let Resolution { width, height } = self.resolution;
        if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
            return Err(format!(
                "render.resolution must be 1..={MAX_SIDE} pixels a side (got {width} × {height})"
            ));
        }
        if u64::from(width).saturating_mul(u64::from(height)) > MAX_PIXELS {
            return Err(format!("render.resolution {width} × {height} is over {MAX_PIXELS} pixels a frame"));
        }
        if self.samples == 0 || self.samples > MAX_SAMPLES {
            return Err(format!("render.samples must be 1..={MAX_SAMPLES}"));
        }
        if self.tiles == 0 || self.tiles > MAX_TILES || self.tiles > height {
            return Err(format!("render.tiles must be 1..={MAX_TILES} and at most the height in pixels"));
        }
        if self.fps == 0 || self.fps > MAX_FPS {
            return Err(format!("render.fps must be 1..={MAX_FPS}"));
        }
        Ok(())
    }

    /// Check a `render` job against its section: its task count, and the fields a render job
    /// does not take.
    pub(crate) fn check_job(&self, spec: &JobSpec) -> Result<(), String> {
        self.check()?;
        let tasks = self.tasks();
        if tasks > u64::from(crate::job::limits::MAX_TASKS) {
            return Err(format!(
                "render.frames × render.tiles is {tasks} tasks; a job has at most {} (split the range into several jobs)",
                crate::job::limits::MAX_TASKS
            ));
        }
        if u64::from(spec.tasks) != tasks {
            return Err(format!("a render job has frames × tiles = {tasks} tasks, not {}", spec.tasks));
        }
        if !spec.args.is_empty() || !spec.env.is_empty() || !spec.task_inputs.is_empty() {
            return Err(
                "a render job takes no args, env or task_inputs: the render section says what to make".into(),
            );
        }
        if spec.inputs.iter().any(|i| i.name == SCENE_FILE) {
            return Err(format!("the input name {SCENE_FILE:?} is the scene itself; name assets otherwise"));
        }
        Ok(())
    }
}

/// The `render` section's rules inside [`JobSpec::validate`].
pub(crate) fn check(spec: &JobSpec) -> Result<(), String> {
    match (&spec.render, spec.kind) {
        (Some(r), WorkloadKind::Render) => r.check_job(spec),
        (None, WorkloadKind::Render) => {
            Err("a render job needs a `render` section (blender version, frames, resolution)".into())
        }
        (Some(_), _) => Err("only `kind: render` jobs take a `render` section".into()),
        (None, _) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(render: &str) -> crate::Result<JobSpec> {
        JobSpec::from_yaml(&format!(
            "kind: render\nworkload: af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262\nmax_price_per_task: 1 CRN\nrender: {render}\n"
        ))
    }

    #[test]
    fn tiles_cover_every_row_once() {
        let s = spec("{ blender: '3.4.1', frames: { start: 10, end: 12 }, resolution: { width: 7, height: 100 }, tiles: 3 }")
            .unwrap();
        let r = s.render.as_deref().unwrap();
        assert_eq!(s.tasks, 9);
        let rows: Vec<_> = (0..3).map(|t| r.tile_rows(t)).collect();
        assert_eq!(rows, vec![(0, 33), (33, 66), (66, 100)]);
        assert_eq!(r.part(8), (12, 2));
        assert_eq!(r.file_name(8), "frame-000012-tile-02.png");
    }

    #[test]
    fn bad_render_sections_get_clear_errors() {
        for (yaml, needle) in [
            (
                "{ blender: '3.4.1', frames: { start: 1, end: 1000000000 }, resolution: { width: 1, height: 1 } }",
                "frames",
            ),
            (
                "{ blender: '3.4.1', frames: { start: 1, end: 2 }, resolution: { width: 100000, height: 100000 } }",
                "resolution",
            ),
            (
                "{ blender: '3.4.1', frames: { start: 1, end: 2 }, resolution: { width: 8000, height: 8000 } }",
                "pixels",
            ),
            (
                "{ blender: '3.4.1', frames: { start: 3, end: 2 }, resolution: { width: 1, height: 1 } }",
                "start <= end",
            ),
            (
                "{ blender: 'latest', frames: { start: 1, end: 2 }, resolution: { width: 1, height: 1 } }",
                "version",
            ),
            (
                "{ blender: '3.4.1', frames: { start: 1, end: 2 }, resolution: { width: 4, height: 4 }, tiles: 5 }",
                "tiles",
            ),
            (
                "{ blender: '3.4.1', frames: { start: 1, end: 2 }, resolution: { width: 4, height: 4 }, samples: 0 }",
                "samples",
            ),
            (
                "{ blender: '3.4.1', frames: { start: 1, end: 4096 }, resolution: { width: 4, height: 4 }, tiles: 2 }",
                "at most 4096",
            ),
        ] {
            let e = spec(yaml).unwrap_err().to_string();
            assert!(e.contains(needle), "{yaml}: {e}");
        }
        // Unknown fields are refused inside the section too.
        assert!(spec("{ blender: '3.4.1', frames: { start: 1, end: 2 }, resolution: { width: 4, height: 4 }, denoise: true }").is_err());
        // A render job says what to make in its section, nowhere else.
        let mut s =
            spec("{ blender: '3.4.1', frames: { start: 1, end: 2 }, resolution: { width: 4, height: 4 } }")
                .unwrap();
        s.args = vec!["--python-expr".into(), "import os".into()];
        assert!(s.validate().unwrap_err().to_string().contains("no args"));
        let s = JobSpec::from_yaml(
            "kind: render\nworkload: af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262\nmax_price_per_task: 1 CRN\n",
        );
        assert!(s.unwrap_err().to_string().contains("render` section"));
    }

    #[test]
    fn an_explicit_task_count_must_agree() {
        let y = "kind: render\nworkload: af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262\nmax_price_per_task: 1 CRN\ntasks: 3\nrender: { blender: '3.4.1', frames: { start: 1, end: 2 }, resolution: { width: 4, height: 4 } }\n";
        assert!(JobSpec::from_yaml(y).unwrap_err().to_string().contains("= 2 tasks"));
        let ok = JobSpec::from_yaml(&y.replace("tasks: 3", "tasks: 2")).unwrap();
        assert_eq!(JobSpec::from_yaml(&ok.to_yaml()).unwrap(), ok);
    }
}
