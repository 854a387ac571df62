//! The render executor with this machine's Blender, in the sandbox: frames that match bit for
//! bit whatever the thread count and however they are tiled, and hostile scenes that fail the
//! same way everywhere without reaching outside.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use cairn_runtime::render::{self, assemble, frames};
use cairn_runtime::{Executor as _, RenderExecutor, RunError, TaskRun};
use cairn_types::{ContentId, Frames, Limits, OutputBundle, RenderEngine, RenderSpec, Resolution};

use crate::scratch;

/// Blender (and the sandbox's runc), installed from Debian on first use.
fn blender() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        crate::container::busybox_image();
        if render::blender_version(Path::new("blender")).is_none() {
            let ok = Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends", "blender"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "the render tests need `apt-get install --no-install-recommends blender`");
        }
        render::blender_version(Path::new("blender")).expect("blender --version")
    })
}

/// Run `python` in the host's Blender to write a scene to `out`.
fn make_scene(python: &str, out: &Path) {
    let script = out.with_extension("py");
    std::fs::write(&script, python).unwrap();
    let o = Command::new("blender")
        .args(["-b", "--factory-startup", "-noaudio", "--python-exit-code", "1", "--python"])
        .arg(&script)
        .arg("--")
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success() && out.is_file(), "{}", String::from_utf8_lossy(&o.stdout));
}

/// The demo scene, made once per run.
fn demo_scene() -> (Vec<u8>, ContentId) {
    static SCENE: OnceLock<(Vec<u8>, ContentId)> = OnceLock::new();
    SCENE
        .get_or_init(|| {
            blender();
            let dir = scratch("render-scene");
            let script =
                std::fs::read_to_string(crate::testdata("../examples/render-scene/make_scene.py")).unwrap();
            make_scene(&script, &dir.join("scene.blend"));
            let bytes = std::fs::read(dir.join("scene.blend")).unwrap();
            let id = ContentId::of(&bytes);
            (bytes, id)
        })
        .clone()
}

fn executor(name: &str) -> (RenderExecutor, PathBuf) {
    blender();
    let dir = scratch(name);
    (RenderExecutor::new(&dir).unwrap(), dir)
}

fn spec(tiles: u32) -> RenderSpec {
    RenderSpec {
        blender: blender().to_string(),
        engine: RenderEngine::Cycles,
        frames: Frames { start: 1, end: 24 },
        resolution: Resolution { width: 96, height: 54 },
        samples: 8,
        seed: 0,
        tiles,
        fps: 12,
    }
}

fn task(id: ContentId, spec: &RenderSpec, index: u32, cpu_millis: u64) -> TaskRun {
    let limits = Limits { wall_ms: 60_000, output_bytes: 1 << 22, ..Limits::default() };
    TaskRun {
        memory_mb: 1024,
        cpu_millis,
        task_index: index,
        tasks: u32::try_from(spec.tasks()).unwrap(),
        render: Some(spec.clone()),
        ..TaskRun::new(id, limits)
    }
}

fn exit(b: &OutputBundle) -> String {
    format!(
        "{} {}",
        b.exit().unwrap_or("?"),
        String::from_utf8_lossy(b.files.get(OutputBundle::STDERR).map(Vec::as_slice).unwrap_or_default())
    )
}

#[test]
fn a_frame_renders_bit_identically_at_any_thread_count_and_tiles_stitch_to_it() {
    let (bytes, id) = demo_scene();
    let (exec, _dir) = executor("render-frames");
    assert_eq!(exec.version(), blender());
    exec.prepare(&id, &bytes).unwrap();
    // Frame 13 (index 12) whole, with one thread and with two.
    let whole = spec(1);
    let one = exec.run(&task(id, &whole, 12, 1000)).unwrap().bundle;
    let two = exec.run(&task(id, &whole, 12, 2000)).unwrap().bundle;
    assert_eq!(one.exit(), Some("ok"), "{}", exit(&one));
    assert_eq!(one.id(), two.id(), "the committed bundle does not depend on the thread count");
    let png = &one.files["frame-000013.png"];
    let frame = frames::decode(png).unwrap();
    assert_eq!((frame.width, frame.height), (96, 54));
    let distinct: std::collections::BTreeSet<_> = frame.rgba.chunks(4).collect();
    assert!(distinct.len() > 500, "a real picture, not a flat fill ({} colours)", distinct.len());
    assert_eq!(one.files.len(), 2, "the frame and the exit status only: {:?}", one.files.keys());
    // The same frame in three bands (54 rows: 18 each), stitched.
    let banded = spec(3);
    let tiles: Vec<_> = (36..39)
        .map(|i| {
            let b = exec.run(&task(id, &banded, i, 2000)).unwrap().bundle;
            assert_eq!(b.exit(), Some("ok"), "{}", exit(&b));
            frames::decode(&b.files[&banded.file_name(i)]).unwrap()
        })
        .collect();
    assert!(tiles.iter().all(|t| t.height == 18));
    assert_eq!(frames::stitch(&tiles).unwrap(), frame, "tiles stitch to exactly the whole frame");
    // Another frame differs (the animation moves).
    let other = exec.run(&task(id, &whole, 0, 2000)).unwrap().bundle;
    assert_ne!(other.files["frame-000001.png"], *png);
}

#[test]
fn hostile_and_broken_scenes_fail_the_same_way_everywhere_and_reach_nothing() {
    let (exec, dir) = executor("render-hostile");
    // Not a .blend at all: refused before it runs.
    let junk = b"this is not a scene".to_vec();
    assert!(matches!(exec.prepare(&ContentId::of(&junk), &junk), Err(RunError::InvalidWorkload(_))));
    // A .blend header over garbage: Blender cannot read it; a deterministic failure.
    let mut corrupt = b"BLENDER-v304".to_vec();
    corrupt.extend((0..4096u32).map(|i| (i * 7919 % 251) as u8));
    let cid = ContentId::of(&corrupt);
    exec.prepare(&cid, &corrupt).unwrap();
    let b = exec.run(&task(cid, &spec(1), 0, 1000)).unwrap().bundle;
    assert_eq!(b.exit(), Some("exit 1"), "{}", exit(&b));
    assert!(exit(&b).contains("Failed to read blend file '/in/scene.blend'"), "{}", exit(&b));
    // A texture the job does not provide, and one naming a host file by absolute path: the
    // sandbox sees neither, and the task says so rather than rendering magenta.
    let scene = dir.join("missing.blend");
    make_scene(
        r#"
import sys, bpy
bpy.ops.mesh.primitive_plane_add()
m = bpy.data.materials.new("m"); m.use_nodes = True
t = m.node_tree.nodes.new("ShaderNodeTexImage")
t.image = bpy.data.images.new("wood", 4, 4); t.image.source = "FILE"; t.image.filepath = "//wood.png"
u = m.node_tree.nodes.new("ShaderNodeTexImage")
u.image = bpy.data.images.new("host", 4, 4); u.image.source = "FILE"; u.image.filepath = "/etc/hostname"
bpy.context.object.data.materials.append(m)
bpy.ops.object.camera_add(location=(0, 0, 5)); bpy.context.scene.camera = bpy.context.object
bpy.ops.wm.save_as_mainfile(filepath=sys.argv[-1])
"#,
        &scene,
    );
    let bytes = std::fs::read(&scene).unwrap();
    let mid = ContentId::of(&bytes);
    exec.prepare(&mid, &bytes).unwrap();
    let once = exec.run(&task(mid, &spec(1), 0, 1000)).unwrap().bundle;
    assert_eq!(once.exit(), Some("exit 3"), "{}", exit(&once));
    assert!(exit(&once).contains("/in/wood.png") && exit(&once).contains("/etc/hostname"), "{}", exit(&once));
    assert_eq!(exec.run(&task(mid, &spec(1), 0, 2000)).unwrap().bundle.id(), once.id());
    // A client with Blender can see the same before it pays.
    let blender = Path::new("blender");
    // (Blender saved the host path relative to where the scene was written.)
    let paths = render::scene_paths(blender, &scene).unwrap();
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert!(paths[0].ends_with("/etc/hostname") && paths[1] == "//wood.png", "{paths:?}");
    let corrupt_file = dir.join("corrupt.blend");
    std::fs::write(&corrupt_file, &corrupt).unwrap();
    assert!(render::scene_paths(blender, &corrupt_file).unwrap_err().contains("Failed to read blend file"));
    // Given as an input beside the .blend, the texture is found (the host file still is not).
    let wood = dir.join("wood.png");
    std::fs::write(
        &wood,
        frames::encode(&frames::Image { width: 1, height: 1, rgba: vec![200, 120, 40, 255] }),
    )
    .unwrap();
    let mut with = task(mid, &spec(1), 0, 1000);
    with.inputs.push(("wood.png".into(), wood));
    let b = exec.run(&with).unwrap().bundle;
    assert!(!exit(&b).contains("/in/wood.png") && exit(&b).contains("/etc/hostname"), "{}", exit(&b));
    // A scene carrying code: a text block that would run on load, a frame-change handler's
    // script, and a compositor File Output node aimed at the output directory. Its scripts never
    // run, the node writes nothing, and the frame renders.
    let scene = dir.join("scripted.blend");
    make_scene(
        r#"
import sys, bpy
code = "import os\nopen('/out/pwned.txt', 'w').write('ran')\nos.makedirs('/tmp/pwned', exist_ok=True)\n"
t = bpy.data.texts.new("autorun.py"); t.write(code); t.use_module = True
s = bpy.context.scene
s.use_nodes = True
n = s.node_tree.nodes.new("CompositorNodeOutputFile"); n.base_path = "/out/leak"
s.node_tree.links.new(s.node_tree.nodes["Render Layers"].outputs["Image"], n.inputs[0])
bpy.ops.mesh.primitive_cube_add()
bpy.ops.object.camera_add(location=(0, -6, 2), rotation=(1.3, 0, 0)); s.camera = bpy.context.object
bpy.ops.wm.save_as_mainfile(filepath=sys.argv[-1])
"#,
        &scene,
    );
    let bytes = std::fs::read(&scene).unwrap();
    let sid = ContentId::of(&bytes);
    exec.prepare(&sid, &bytes).unwrap();
    let b = exec.run(&task(sid, &spec(1), 0, 1000)).unwrap().bundle;
    assert_eq!(b.exit(), Some("ok"), "{}", exit(&b));
    let names: Vec<_> = b.files.keys().cloned().collect();
    assert_eq!(names, vec![".cairn/exit".to_string(), "frame-000001.png".to_string()]);
    assert!(!Path::new("/tmp/pwned").exists() && !Path::new("/out").exists(), "nothing reached the host");
}

#[test]
fn committed_tiles_assemble_into_frames_an_animation_and_a_video() {
    let (bytes, id) = demo_scene();
    let (exec, dir) = executor("render-assemble");
    exec.prepare(&id, &bytes).unwrap();
    // Frames 1 and 2 of a two-frame job in two bands each: four tasks.
    let mut banded = spec(2);
    banded.frames = Frames { start: 1, end: 2 };
    let mut outputs = std::collections::BTreeMap::new();
    for i in 0..4 {
        let b = exec.run(&task(id, &banded, i, 2000)).unwrap().bundle;
        assert_eq!(b.exit(), Some("ok"), "{}", exit(&b));
        outputs.insert(i, (b.id(), b));
    }
    // Frame 2's bottom band missing: frame 1 is made, frame 2 is named missing, no video yet.
    let mut partial = outputs.clone();
    partial.remove(&3);
    let out = dir.join("partial");
    let a = assemble::assemble(&banded, &partial, &out).unwrap();
    assert_eq!(a.frames.len(), 1);
    assert_eq!(a.missing.len(), 1);
    assert!(a.missing[0].1.contains("task 3"), "{:?}", a.missing);
    assert!(a.animation.is_none() && a.video.is_none());
    // All there: both frames, equal to rendering each frame whole.
    let out = dir.join("all");
    let a = assemble::assemble(&banded, &outputs, &out).unwrap();
    assert!(a.missing.is_empty(), "{:?}", a.missing);
    let whole = spec(1);
    for (k, path) in a.frames.iter().enumerate() {
        let b = exec.run(&task(id, &whole, u32::try_from(k).unwrap(), 2000)).unwrap().bundle;
        let want = frames::decode(&b.files[&whole.file_name(u32::try_from(k).unwrap())]).unwrap();
        assert_eq!(frames::decode(&std::fs::read(path).unwrap()).unwrap(), want, "frame {}", k + 1);
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("frames.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["frames"][1]["tiles"][1],
        outputs[&3].0.to_string(),
        "each frame names the outputs it was made from"
    );
    let apng = std::fs::read(a.animation.as_ref().unwrap()).unwrap();
    assert!(apng.windows(4).any(|w| w == b"acTL"), "an animated PNG");
    // The video where ffmpeg is installed, a note saying why not otherwise.
    match (&a.video, &a.video_note) {
        (Some(v), _) => assert!(std::fs::metadata(v).unwrap().len() > 500),
        (None, Some(note)) => assert!(note.contains("ffmpeg"), "{note}"),
        (None, None) => panic!("neither a video nor a reason"),
    }
}
