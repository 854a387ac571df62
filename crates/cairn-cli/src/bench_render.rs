//! `cairn bench render`: frames per minute of a Blender animation rendered on a devnet with 1,
//! 2 and 3 providers, against the same frames rendered by `blender -b` directly on this machine
//! (one process per frame, as `blender -b scene.blend -f N` does, with every core); and the
//! share of render compute that audits re-run once the providers' reputations are established.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use cairn_client::Client;
use cairn_types::{Amount, Event, JobId, RenderSpec, SecretKey, Transfer, TxBody};
use clap::Args;

/// `cairn bench render`.
#[derive(Debug, Args)]
pub(crate) struct RenderArgs {
    /// Frames of the measured animation.
    #[arg(long, default_value_t = 8)]
    frames: u32,
    /// Frame width (height is 9/16 of it).
    #[arg(long, default_value_t = 640)]
    width: u32,
    /// Samples per pixel.
    #[arg(long, default_value_t = 32)]
    samples: u32,
    /// Provider counts to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 3])]
    providers: Vec<usize>,
    /// Results each provider gives before the measured job, so its reputation is established
    /// (a newcomer's first 10 results are all audited).
    #[arg(long, default_value_t = 20)]
    warmup: u32,
    /// Small frames rendered after the warm-up at the largest provider count, to count the
    /// audit re-renders of established providers over a larger sample (0: skip).
    #[arg(long, default_value_t = 60)]
    audit_sample: u32,
    /// Skip the run that SIGKILLs a provider in the middle of its frames.
    #[arg(long)]
    no_kill: bool,
    /// Where the networks live while measured.
    #[arg(long, default_value = ".cairn/bench-render")]
    home: PathBuf,
}

const MAKE_SCENE: &str = include_str!("../../../examples/render-scene/make_scene.py");

fn spec_yaml(version: &str, frames: u32, width: u32, samples: u32) -> String {
    spec_with_deadline(version, frames, width, samples, 3000)
}

fn spec_with_deadline(version: &str, frames: u32, width: u32, samples: u32, deadline: u32) -> String {
    let height = width * 9 / 16;
    format!(
        "kind: render\nworkload: scene.blend\nmax_price_per_task: 0.2 CRN\ndeadline_blocks: {deadline}\nresources: {{ cpu_millis: 1000, memory_mb: 1024 }}\nlimits: {{ wall_ms: 600000, output_bytes: 16777216 }}\nrender: {{ blender: '{version}', frames: {{ start: 1, end: {frames} }}, resolution: {{ width: {width}, height: {height} }}, samples: {samples}, fps: 8 }}\n"
    )
}

/// The same frames rendered directly: one `blender -b` per frame with all cores, the same
/// settings (the task's set-up script), written to `dir`. Returns seconds.
fn direct(scene: &Path, spec: &RenderSpec, dir: &Path) -> Result<f64> {
    std::fs::create_dir_all(dir)?;
    let scene_s = scene.to_str().context("UTF-8 path")?;
    let t0 = Instant::now();
    for i in 0..u32::try_from(spec.tasks())? {
        let out = dir.join(spec.file_name(i));
        let script =
            cairn_runtime::render::script::script(spec, i, 2, scene_s, out.to_str().context("UTF-8 path")?);
        let o = std::process::Command::new("blender")
            .args(["-b", "--factory-startup", "-Y", "-noaudio"])
            .arg(scene)
            .args(["--python-exit-code", "3", "--python-expr", &script])
            .output()?;
        if !o.status.success() || !out.is_file() {
            bail!("blender failed on frame {i}: {}", String::from_utf8_lossy(&o.stdout));
        }
    }
    Ok(t0.elapsed().as_secs_f64())
}

async fn until_committed(client: &Client, key: &SecretKey, dir: &Path, yaml: &str) -> Result<(f64, JobId)> {
    crate::bench::until_committed(client, key, dir, yaml, Duration::from_secs(3_600)).await
}

async fn until_settled(client: &Client, job: &JobId) -> Result<()> {
    let t0 = Instant::now();
    while !crate::job::finished(&crate::job::job_view(client, job).await?) {
        if t0.elapsed() > Duration::from_secs(1_800) {
            bail!("job {job} did not settle");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Audit re-renders assigned for `job`'s tasks, read from the blocks.
async fn audits_of(client: &Client, job: &JobId, tasks: u32) -> Result<u64> {
    let ids: std::collections::BTreeSet<_> =
        (0..tasks).map(|i| cairn_types::TaskId::derive(job, i)).collect();
    let tip = client.status().await?.height;
    let mut n = 0;
    for h in 1..=tip {
        let v: serde_json::Value = client.get(&format!("/api/blocks/{h}/receipts")).await?;
        for r in v["receipts"].as_array().cloned().unwrap_or_default() {
            for e in r["events"].as_array().cloned().unwrap_or_default() {
                if let Ok(Event::AuditAssigned { task, .. }) = serde_json::from_value::<Event>(e)
                    && ids.contains(&task)
                {
                    n += 1;
                }
            }
        }
    }
    Ok(n)
}

pub(crate) async fn run(a: RenderArgs) -> Result<()> {
    let version = cairn_runtime::render::blender_version(Path::new("blender"))
        .context("needs Blender: apt-get install --no-install-recommends blender")?;
    if !cairn_runtime::container::available(Path::new("runc")) {
        bail!("needs runc, as root");
    }
    if a.providers.iter().any(|p| !(1..=3).contains(p)) {
        bail!("--providers takes counts from 1 to 3");
    }
    let scratch = a.home.join("scene");
    std::fs::create_dir_all(&scratch)?;
    let scene = std::fs::canonicalize(&scratch)?.join("scene.blend");
    std::fs::write(scratch.join("make_scene.py"), MAKE_SCENE)?;
    let made = std::process::Command::new("blender")
        .args(["-b", "--factory-startup", "-noaudio", "--python-exit-code", "1", "--python"])
        .arg(scratch.join("make_scene.py"))
        .arg("--")
        .arg(&scene)
        .output()?;
    if !made.status.success() {
        bail!("blender could not make the scene: {}", String::from_utf8_lossy(&made.stdout));
    }
    let yaml = spec_yaml(&version, a.frames, a.width, a.samples);
    let spec: RenderSpec = cairn_types::JobSpec::from_yaml(
        &yaml.replace("workload: scene.blend", &format!("workload: {}", cairn_types::ContentId::of(b"x"))),
    )?
    .render
    .map(|r| *r)
    .context("a render section")?;
    eprintln!(
        "rendering {} frames of {} × {} at {} samples directly…",
        a.frames, spec.resolution.width, spec.resolution.height, a.samples
    );
    let direct_s = direct(&scene, &spec, &scratch.join("direct"))?;
    let direct_fpm = f64::from(a.frames) * 60.0 / direct_s;
    eprintln!("directly: {direct_s:.1} s, {direct_fpm:.2} frames/min");

    let mut rows = Vec::new();
    let mut killed = None;
    let mut sample = None;
    for (k, &p) in a.providers.iter().enumerate() {
        let home = a.home.join(format!("net-{p}"));
        let port = 27_800 + u16::try_from(k)? * 40;
        let layout = crate::devnet::Layout {
            validators: 1,
            providers: p,
            p2p_port: port,
            api_port: port + 10,
            provider_port: port + 20,
            models: Vec::new(),
            params: Vec::new(),
        };
        let mut net = crate::devnet::start(&home, &layout, true, &[])?;
        crate::devnet::wait_ready(&mut net, 2, Duration::from_secs(60)).await?;
        crate::devnet::start_providers(&mut net, p, Duration::from_secs(120)).await?;
        let client = Client::new(&net.apis[0]);
        let faucet = crate::keys::read_seed_file(&net.root.join("faucet.key"))?;
        let key = SecretKey::generate()?;
        crate::job::send(
            &client,
            &faucet,
            TxBody::Transfer(Transfer {
                to: key.address(),
                amount: Amount::from_base_units(1_000_000_000_000),
            }),
        )
        .await?;
        let dir = net.root.join("bench");
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(&scene, dir.join("scene.blend"))?;
        // Warm-up: tiny frames until each provider has a record (and a streak of valid results).
        if p > 1 && a.warmup > 0 {
            let n = a.warmup.saturating_mul(u32::try_from(p)?);
            eprintln!("[{p} provider(s)] warm-up: {n} small frames…");
            let (_, job) = until_committed(&client, &key, &dir, &spec_yaml(&version, n, 64, 1)).await?;
            until_settled(&client, &job).await?;
        }
        eprintln!("[{p} provider(s)] rendering {} frames…", a.frames);
        let (secs, job) = until_committed(&client, &key, &dir, &yaml).await?;
        until_settled(&client, &job).await?;
        let audits = audits_of(&client, &job, a.frames).await?;
        let fpm = f64::from(a.frames) * 60.0 / secs;
        eprintln!("[{p} provider(s)] {secs:.1} s, {fpm:.2} frames/min, {audits} audit re-render(s)");
        rows.push((p, secs, fpm, audits));
        if a.audit_sample > 0 && p > 1 && k + 1 == a.providers.len() {
            eprintln!("[{p} provider(s)] audit sample: {} small frames…", a.audit_sample);
            let (_, job) =
                until_committed(&client, &key, &dir, &spec_yaml(&version, a.audit_sample, 64, 1)).await?;
            until_settled(&client, &job).await?;
            let n = audits_of(&client, &job, a.audit_sample).await?;
            sample = Some((p, n));
        }
        if !a.no_kill && p > 1 && k + 1 == a.providers.len() {
            killed = Some(kill_mid_frame(&mut net, &client, &key, &dir, &version, &a).await?);
        }
        drop(net);
    }
    println!(
        "| run | frames | time (s) | frames/min | vs direct | audit re-renders | verification overhead |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    println!(
        "| `blender -b`, one process per frame, 2 threads | {} | {direct_s:.1} | {direct_fpm:.2} | 1.00× | – | – |",
        a.frames
    );
    for (p, secs, fpm, audits) in rows {
        println!(
            "| devnet, {p} provider(s) | {} | {secs:.1} | {fpm:.2} | {:.2}× | {audits} | {:.1}% |",
            a.frames,
            fpm / direct_fpm,
            100.0 * audits as f64 / f64::from(a.frames)
        );
    }
    if let Some((p, n)) = sample {
        println!(
            "\naudit re-renders among {} frames from {p} established providers: {n} ({:.1}% of render tasks)",
            a.audit_sample,
            100.0 * n as f64 / f64::from(a.audit_sample)
        );
    }
    if let Some(k) = killed {
        println!("\n{k}");
    }
    Ok(())
}

/// SIGKILL the provider rendering a job's frames (and its sandboxes, as a machine that dies
/// takes them along) once it has started them; report which frames were rendered again.
async fn kill_mid_frame(
    net: &mut crate::devnet::Network,
    client: &Client,
    key: &SecretKey,
    dir: &Path,
    version: &str,
    a: &RenderArgs,
) -> Result<String> {
    // A deadline a few frame times long (devnet blocks come about 5 a second), so the chain
    // hands the dead provider's frames on within a minute.
    let yaml = spec_with_deadline(version, a.frames, a.width, a.samples, 300);
    let resolved = crate::manifest::resolve(&yaml, dir, client, key).await?;
    let t0 = Instant::now();
    let job = crate::job::submit(client, key, resolved.spec).await?;
    // Wait until some provider has been rendering for a second.
    let (victim, held) = loop {
        let v = crate::job::job_view(client, &job).await?;
        let mut by: std::collections::BTreeMap<cairn_types::Address, Vec<u32>> = Default::default();
        for t in &v.tasks {
            if let cairn_state::model::TaskState::Assigned { provider, .. } = t.state {
                by.entry(provider).or_default().push(t.index);
            }
        }
        if t0.elapsed() > Duration::from_secs(2)
            && let Some((p, tasks)) = by.into_iter().next()
        {
            break (p, tasks);
        }
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("no frame started");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let info: serde_json::Value = client.get(&format!("/api/providers/{victim}")).await?;
    let endpoint = info["provider"]["info"]["endpoint"].as_str().unwrap_or_default().to_string();
    let i = net.providers.iter().position(|e| *e == endpoint).context("the victim is not in this network")?;
    net.kill_provider(i);
    let state = net.root.join(format!("provider-{i}/runtime/render/containers/runc"));
    for e in std::fs::read_dir(&state).into_iter().flatten().flatten() {
        let id = e.file_name().to_string_lossy().to_string();
        let runc = |args: &[&str]| {
            std::process::Command::new("runc")
                .arg("--root")
                .arg(&state)
                .args(args)
                .stderr(std::process::Stdio::null())
                .status()
        };
        let _ = runc(&["kill", "--all", &id, "KILL"]);
        let _ = runc(&["delete", "--force", &id]);
    }
    let killed_at = t0.elapsed().as_secs_f64();
    loop {
        let v = crate::job::job_view(client, &job).await?;
        if v.tasks.iter().all(|t| crate::job::output_of(t).is_some()) || crate::job::finished(&v) {
            let again: Vec<u32> = v.tasks.iter().filter(|t| t.attempt > 1).map(|t| t.index).collect();
            return Ok(format!(
                "SIGKILL of the provider rendering frames {held:?} at {killed_at:.1} s: {} of {} frames rendered again ({again:?}); all {} committed after {:.1} s",
                again.len(),
                a.frames,
                a.frames,
                t0.elapsed().as_secs_f64()
            ));
        }
        if t0.elapsed() > Duration::from_secs(1_800) {
            bail!("the job did not finish after the kill");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
