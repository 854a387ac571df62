//! Render jobs on the command line: follow the frames as they are rendered, and assemble the
//! committed tiles into frames, an animation and a video.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use cairn_client::Client;
use cairn_runtime::render::assemble::{Assembled, assemble};
use cairn_state::model::TaskState;
use cairn_types::{JobId, RenderSpec};

use crate::job::{JobView, fetch_output, finished, job_view, output_of};

/// The render section of a job, or an error naming what the job is.
pub(crate) fn plan(v: &JobView) -> Result<&RenderSpec> {
    v.spec
        .as_ref()
        .and_then(|s| s.render.as_deref())
        .with_context(|| format!("job {} is not a render job", v.job.id))
}

/// Frames whose every tile has a committed (or settled) result, and those all settled.
fn frames_done(v: &JobView, r: &RenderSpec) -> (BTreeSet<u32>, BTreeSet<u32>) {
    let mut tiles_committed: BTreeMap<u32, u32> = BTreeMap::new();
    let mut tiles_settled: BTreeMap<u32, u32> = BTreeMap::new();
    for t in &v.tasks {
        let frame = r.part(t.index).0;
        if output_of(t).is_some() {
            *tiles_committed.entry(frame).or_default() += 1;
        }
        if matches!(t.state, TaskState::Settled { .. }) {
            *tiles_settled.entry(frame).or_default() += 1;
        }
    }
    let full = |m: BTreeMap<u32, u32>| m.into_iter().filter(|(_, n)| *n == r.tiles).map(|(f, _)| f).collect();
    (full(tiles_committed), full(tiles_settled))
}

/// Follow a render job frame by frame until every task is settled or refunded: a line as each
/// frame's tiles are all committed (who rendered it), and when its payment settles.
pub(crate) async fn watch(client: &Client, job: &JobId, quiet: bool) -> Result<JobView> {
    let bar = crate::job::progress_bar(
        quiet,
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} frames rendered  {msg}",
    );
    let mut seen = BTreeSet::new();
    loop {
        let v = job_view(client, job).await?;
        let r = plan(&v)?.clone();
        bar.set_length(r.frame_count());
        let (rendered, settled) = frames_done(&v, &r);
        for f in rendered.difference(&seen).copied().collect::<Vec<_>>() {
            let by: BTreeSet<String> = v
                .tasks
                .iter()
                .filter(|t| r.part(t.index).0 == f)
                .filter_map(|t| output_of(t).map(|(p, _)| p.to_string().chars().take(12).collect()))
                .collect();
            let line = format!("frame {f} rendered by {}", by.into_iter().collect::<Vec<_>>().join(", "));
            if !quiet {
                if bar.is_hidden() { eprintln!("{line}") } else { bar.println(line) }
            }
            seen.insert(f);
        }
        let working = v.tasks.iter().filter(|t| matches!(t.state, TaskState::Assigned { .. })).count();
        bar.set_position(rendered.len() as u64);
        bar.set_message(format!("{} paid, {working} task(s) rendering", settled.len()));
        bar.tick();
        if finished(&v) {
            bar.finish();
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Fetch every committed tile of `v` (verified against its committed id) and assemble the
/// frames, the animation and the video under `out`.
pub(crate) async fn result(client: &Client, v: &JobView, out: &Path) -> Result<Assembled> {
    let r = plan(v)?;
    let store = crate::job::cache()?;
    let mut outputs = BTreeMap::new();
    for t in &v.tasks {
        let Some((provider, output)) = output_of(t) else { continue };
        let b = fetch_output(client, &store, &provider, &output).await?;
        outputs.insert(t.index, (output, b));
    }
    Ok(assemble(r, &outputs, out)?)
}

/// Say what [`result`] wrote.
pub(crate) fn report(a: &Assembled, out: &Path) {
    println!("{} frame(s) in {}", a.frames.len(), out.join("frames").display());
    for (f, why) in &a.missing {
        println!("frame {f} not made: {why}");
    }
    if let Some(p) = &a.animation {
        println!("animation (animated PNG) in {}", p.display());
    }
    match (&a.video, &a.video_note) {
        (Some(p), _) => println!("video in {}", p.display()),
        (None, Some(n)) => println!("{n}"),
        (None, None) => {}
    }
}

/// The JSON form of [`report`].
pub(crate) fn json(a: &Assembled) -> serde_json::Value {
    serde_json::json!({
        "frames": a.frames,
        "missing": a.missing.iter().map(|(f, w)| serde_json::json!({ "frame": f, "why": w })).collect::<Vec<_>>(),
        "animation": a.animation,
        "video": a.video,
        "video_note": a.video_note,
    })
}

/// Check a scene before paying for it, where Blender is installed here: Blender must read it,
/// and every file it refers to must be one of the job's inputs, beside the `.blend` (absolute
/// paths and folders are invisible to providers). Without a local Blender, providers find such
/// problems instead and commit them as the frames' results.
pub(crate) fn check_scene(scene: &[u8], spec: &cairn_types::JobSpec) -> Result<()> {
    if cairn_runtime::render::blender_version(Path::new("blender")).is_none() {
        return Ok(());
    }
    let tmp = std::env::temp_dir().join(format!("cairn-scene-check-{}.blend", std::process::id()));
    std::fs::write(&tmp, scene)?;
    let paths = cairn_runtime::render::scene_paths(Path::new("blender"), &tmp);
    let _ = std::fs::remove_file(&tmp);
    let paths = paths.map_err(|e| anyhow::anyhow!("the scene cannot be rendered: {e}"))?;
    let names: BTreeSet<&str> = spec.inputs.iter().map(|i| i.name.as_str()).collect();
    let mut problems = Vec::new();
    for p in &paths {
        // Frame-numbered sequences and UDIM sets name many files; providers check those.
        if p.contains('#') || p.contains("<UDIM>") {
            continue;
        }
        match p.strip_prefix("//") {
            Some(name) if names.contains(name) => {}
            Some(name) if name.starts_with("..") => problems.push(format!(
                "{p} (outside the scene's folder: put it beside the .blend and give it as an input)"
            )),
            Some(name) if name.contains(['/', '\\']) => {
                problems.push(format!("{p} (in a folder: put it beside the .blend and give it as an input)"))
            }
            Some(name) => problems.push(format!("{p} (add an input named {name:?})")),
            None => problems.push(format!(
                "{p} (an absolute path: providers cannot see it; make paths relative or pack it)"
            )),
        }
    }
    if !problems.is_empty() {
        anyhow::bail!("the scene refers to files the job does not provide: {}", problems.join("; "));
    }
    Ok(())
}
