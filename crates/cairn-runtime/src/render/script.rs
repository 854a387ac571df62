//! The Python that sets a scene up for one task, run by Blender inside the sandbox with
//! `--python-expr` (the scene's own scripts stay off: `--factory-startup -Y`).
//!
//! It refuses a file Blender could not read, a scene without a camera, and a scene that
//! references files the job does not provide (Blender would render those magenta and exit 0);
//! each such failure prints one `CAIRN-ERROR:` line and exits 3, a deterministic result every
//! honest provider reaches. Otherwise it forces what makes a render reproducible and safe —
//! Cycles on the CPU, the job's samples and fixed seed, no denoising (Debian's Blender has no
//! denoiser), no dithering (tiles then stitch to exactly the whole frame), stamps off, 8-bit
//! RGBA PNG, compositor File Output nodes muted (they write wherever the scene says) — crops to
//! the task's band and renders one still to `/out/frame.png`.

use cairn_types::RenderSpec;

/// Marks the one line of a deterministic failure in Blender's output.
pub(crate) const ERROR_MARK: &str = "CAIRN-ERROR: ";

/// Exit status of a failure the script detected.
pub(crate) const EXIT_REFUSED: i32 = 3;

/// The script for task `index` of `spec`, rendering with `threads` threads to `out` (the
/// sandbox's `/out/frame.png`; elsewhere when a benchmark runs Blender directly), expecting
/// the scene at `scene`.
pub fn script(spec: &RenderSpec, index: u32, threads: u32, scene: &str, out: &str) -> String {
    let (frame, tile) = spec.part(index);
    let (top, bottom) = spec.tile_rows(tile);
    let cropped = spec.tiles > 1;
    format!(
        r#"import os, sys, bpy
def fail(msg):
    print("{ERROR_MARK}" + msg)
    sys.stdout.flush()
    os._exit({EXIT_REFUSED})
if os.path.abspath(bpy.data.filepath or "") != {scene:?}:
    fail("the workload could not be read as a .blend file by Blender " + bpy.app.version_string)
missing = sorted(set(p for p in bpy.utils.blend_paths(absolute=True, packed=False) if not os.path.exists(p)))
if missing:
    fail("the scene references files the job does not provide (add them as inputs beside the .blend, or pack them): " + ", ".join(missing[:8]))
s = bpy.context.scene
if s.camera is None:
    fail("the scene has no active camera")
r = s.render
r.engine = "CYCLES"
s.cycles.device = "CPU"
s.cycles.samples = {samples}
s.cycles.seed = {seed}
s.cycles.use_animated_seed = False
s.cycles.use_denoising = False
for vl in s.view_layers:
    vl.cycles.use_denoising = False
r.resolution_x, r.resolution_y, r.resolution_percentage = {width}, {height}, 100
r.pixel_aspect_x = r.pixel_aspect_y = 1.0
r.dither_intensity = 0.0
r.use_stamp = False
r.threads_mode = "FIXED"
r.threads = {threads}
if s.node_tree:
    for n in s.node_tree.nodes:
        if n.type == "OUTPUT_FILE":
            n.mute = True
if {cropped}:
    r.use_border = True
    r.use_crop_to_border = True
    r.border_min_x, r.border_max_x = 0.0, 1.0
    r.border_min_y, r.border_max_y = {ymin} / {height}, {ymax} / {height}
else:
    r.use_border = False
f = r.image_settings
f.file_format, f.color_mode, f.color_depth = "PNG", "RGBA", "8"
s.frame_set({frame})
r.filepath = {out:?}
bpy.ops.render.render(write_still=True)
"#,
        samples = spec.samples,
        seed = spec.seed,
        width = spec.resolution.width,
        height = spec.resolution.height,
        cropped = if cropped { "True" } else { "False" },
        ymin = spec.resolution.height - bottom,
        ymax = spec.resolution.height - top,
    )
}
