//! Blender scenes (`kind: render`), rendered in the container sandbox.
//!
//! The workload is the `.blend` (verified by content id, and by its header); the job's inputs
//! are its assets. Each task renders one frame, or one horizontal band of one, with this
//! machine's Blender inside a runc sandbox ([`crate::container`]): the root is a read-only tree
//! of the installed `blender` package and its dependencies only ([`crate::container::debian`],
//! hard-linked, so it costs no disk), the job directory is `/in`, there is no network, and the
//! process runs unprivileged under the job's memory, CPU and wall-clock caps. The scene's own
//! scripts never run (`--factory-startup -Y`); [`script`] sets the render up.
//!
//! The output bundle holds the frame (or tile) as Cairn's PNG of its pixels ([`frames`]), the
//! exit status, and — only for a deterministic failure — the one-line reason. Blender's own
//! log (render times) is left out so that two honest renders commit the same bundle; Cycles on
//! the CPU gives the same 8-bit pixels at any thread count for the same Blender version, which
//! the chain matches providers on ([`cairn_types::BLENDER_ATTRIBUTE`]).

pub mod assemble;
pub mod frames;
pub mod script;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use cairn_types::{ContentId, OutputBundle, SCENE_FILE, WorkloadKind};

use crate::container::{ContainerConfig, ContainerExecutor};
use crate::{Executor, Outcome, Result, RunError, TaskRun, io, lock};

/// The Blender version `blender` reports (`3.4.1`), or `None` when it does not run.
pub fn blender_version(blender: &Path) -> Option<String> {
    let out = Command::new(blender).args(["--factory-startup", "-noaudio", "--version"]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find_map(|l| l.trim().strip_prefix("Blender "))?;
    let v = line.split_whitespace().next()?;
    (!v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.')).then(|| v.to_string())
}

/// Whether `bytes` start like a `.blend` file: plain, gzip- or zstd-compressed.
pub fn looks_like_blend(bytes: &[u8]) -> bool {
    bytes.starts_with(b"BLENDER")
        || bytes.starts_with(&[0x1f, 0x8b])
        || bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
}

/// The external files a scene refers to, as Blender writes them (`//wood.png` relative to the
/// `.blend`, or absolute), read by running `blender` on `scene` with the scene's own scripts off.
/// For a client checking its scene before paying; providers find the same in their sandbox.
///
/// # Errors
/// Blender's own message when it cannot read the file, or a note when it does not run.
pub fn scene_paths(blender: &Path, scene: &Path) -> std::result::Result<Vec<String>, String> {
    const MARK: &str = "CAIRN-PATH: ";
    let expr = format!(
        "import bpy\nfor p in sorted(set(bpy.utils.blend_paths(absolute=False, packed=False))): print({MARK:?} + p)"
    );
    let out = Command::new(blender)
        .args(["-b", "--factory-startup", "-Y", "-noaudio"])
        .arg(scene)
        .args(["--python-exit-code", "3", "--python-expr", &expr])
        .output()
        .map_err(|e| format!("blender: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let why = text.lines().find(|l| l.starts_with("Error: ")).unwrap_or("Blender could not read it");
        return Err(why.trim().to_string());
    }
    Ok(text.lines().filter_map(|l| l.strip_prefix(MARK)).map(str::to_string).collect())
}

/// Runs `render` tasks with this machine's Blender.
#[derive(Debug)]
pub struct RenderExecutor {
    sandbox: ContainerExecutor,
    image: ContentId,
    version: String,
    scenes_dir: PathBuf,
    scenes: Mutex<BTreeMap<ContentId, PathBuf>>,
}

impl RenderExecutor {
    /// An executor keeping its Blender root, scenes and sandboxes under `dir`. The root is made
    /// from the installed packages the first time (seconds: files are hard-linked).
    ///
    /// # Errors
    /// [`RunError::Runtime`] when Blender is not installed, [`RunError::Io`] otherwise.
    pub fn new(dir: &Path) -> Result<Self> {
        let version = blender_version(Path::new("blender"))
            .ok_or_else(|| RunError::Runtime("Blender does not run here (apt-get install blender)".into()))?;
        let sandbox = ContainerExecutor::new(ContainerConfig::in_dir(dir.join("containers")))?;
        let image = ContentId(cairn_types::hash_domain("cairn blender root v1", &[version.as_bytes()]));
        let root_dir = dir.join(format!("blender-{version}"));
        if !root_dir.join(".complete").is_file() {
            let _ = std::fs::remove_dir_all(&root_dir);
            crate::container::debian::debian_tree_linked(&["blender"], &root_dir.join("rootfs"))?;
            std::fs::write(root_dir.join(".complete"), b"").map_err(io)?;
        }
        sandbox.adopt(&image, &root_dir.join("rootfs"))?;
        let scenes_dir = dir.join("scenes");
        std::fs::create_dir_all(&scenes_dir).map_err(io)?;
        Ok(RenderExecutor { sandbox, image, version, scenes_dir, scenes: Mutex::new(BTreeMap::new()) })
    }

    /// The Blender version this executor renders with.
    pub fn version(&self) -> &str {
        &self.version
    }

    fn scene(&self, id: &ContentId) -> Option<PathBuf> {
        if let Some(p) = lock(&self.scenes).get(id) {
            return Some(p.clone());
        }
        let p = self.scenes_dir.join(format!("{id}.blend"));
        p.is_file().then(|| {
            lock(&self.scenes).insert(*id, p.clone());
            p
        })
    }
}

impl Executor for RenderExecutor {
    fn kind(&self) -> WorkloadKind {
        WorkloadKind::Render
    }

    fn prepare(&self, id: &ContentId, bytes: &[u8]) -> Result<()> {
        let actual = ContentId::of(bytes);
        if actual != *id {
            return Err(RunError::WorkloadMismatch { expected: *id, actual });
        }
        if !looks_like_blend(bytes) {
            return Err(RunError::InvalidWorkload("the workload is not a .blend file".into()));
        }
        let p = self.scenes_dir.join(format!("{id}.blend"));
        let tmp = p.with_extension("part");
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, &p).map_err(io)?;
        lock(&self.scenes).insert(*id, p);
        Ok(())
    }

    fn is_prepared(&self, id: &ContentId) -> bool {
        self.scene(id).is_some()
    }

    fn run(&self, task: &TaskRun) -> Result<Outcome> {
        let scene = self.scene(&task.workload).ok_or(RunError::NotPrepared(task.workload))?;
        let spec = task.render.as_ref().ok_or_else(|| {
            RunError::InvalidWorkload("a render task needs its job's render section".into())
        })?;
        if task.inputs.iter().any(|(n, _)| n == SCENE_FILE) {
            return Err(RunError::InvalidWorkload(format!("an input may not be named {SCENE_FILE}")));
        }
        let threads = u32::try_from(task.cpu_millis.div_ceil(1000)).unwrap_or(1).clamp(1, 64);
        let mut inputs = vec![(SCENE_FILE.to_string(), scene)];
        inputs.extend(task.inputs.iter().cloned());
        let mut run = TaskRun::new(self.image, task.limits.clone());
        run.inputs = inputs;
        run.args = [
            "/usr/bin/blender",
            "-b",
            "--factory-startup",
            "-Y",
            "-noaudio",
            "/in/scene.blend",
            "--python-exit-code",
            "3",
            "--python-expr",
        ]
        .map(String::from)
        .to_vec();
        run.args.push(script::script(spec, task.task_index, threads, "/in/scene.blend", "/out/frame.png"));
        run.memory_mb = task.memory_mb;
        run.cpu_millis = task.cpu_millis;
        run.task_index = task.task_index;
        run.tasks = task.tasks;
        run.seed = task.seed;
        let ran = self.sandbox.run(&run)?;
        let name = spec.file_name(task.task_index);
        let mut bundle = OutputBundle::default();
        let stdout =
            ran.bundle.files.get(OutputBundle::STDOUT).map(|b| String::from_utf8_lossy(b).into_owned());
        let exit = ran.bundle.exit().unwrap_or("killed").to_string();
        // The reason of a failure: the script's own line, else Blender's first error line (a
        // file it cannot read fails before the script runs).
        let reason = stdout.as_deref().and_then(|s| {
            s.lines()
                .find_map(|l| {
                    l.find(script::ERROR_MARK).map(|at| l[at + script::ERROR_MARK.len()..].to_string())
                })
                .or_else(|| s.lines().find(|l| l.starts_with("Error: ")).map(|l| l.trim().to_string()))
        });
        let (exit, reason) = match (exit.as_str(), ran.bundle.files.get("frame.png")) {
            ("ok", Some(png)) => {
                let img = frames::decode(png)?;
                let (top, bottom) = spec.tile_rows(spec.part(task.task_index).1);
                if (img.width, img.height) != (spec.resolution.width, bottom - top) {
                    (
                        "invalid output".to_string(),
                        Some(format!(
                            "Blender wrote {} × {} pixels, not the {} × {} asked for",
                            img.width,
                            img.height,
                            spec.resolution.width,
                            bottom - top
                        )),
                    )
                } else {
                    bundle.files.insert(name, frames::encode(&img));
                    ("ok".to_string(), None)
                }
            }
            ("ok", None) => {
                ("invalid output".to_string(), Some("Blender exited without writing the frame".into()))
            }
            (_, _) => (exit.clone(), reason),
        };
        bundle.files.insert(OutputBundle::EXIT.into(), exit.into_bytes());
        if let Some(r) = reason {
            bundle.files.insert(OutputBundle::STDERR.into(), r.into_bytes());
        }
        Ok(Outcome { bundle, units: ran.units, wall_ms: ran.wall_ms })
    }
}
