//! The `inference` executor: real models on candle, run in a deterministic mode so auditors can
//! re-execute a task and compare.
//!
//! A job's workload is a [model package](package) (its content id names the model); each task
//! reads `requests.jsonl` (one OpenAI-shaped request per line) and commits `results.jsonl` (one
//! [`ResultLine`] per request, in order) plus `.cairn/isa`, the instruction-set class it ran on.
//!
//! Determinism: every kernel gives a row the same bits however many rows share its product (an
//! embedding input or a chat reply is the same alone or batched; on candle's BERT, used on a
//! GPU, batches follow from the request alone), sampling is seeded (the request's `seed`, else
//! one derived from the task seed and the request's position), and CPU kernels give the same
//! bits for any thread count. Within an
//! instruction-set class results must match bit for bit; across classes [`compare`] applies a
//! tolerance that can only escalate to a same-class re-run, never convict by itself.

pub mod audit;
pub mod batch;
pub(crate) mod encoder;
pub mod import;
pub mod llm;
pub mod models;
pub(crate) mod numeric;
pub mod package;
pub(crate) mod quant;
pub mod request;
pub mod tokenize;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cairn_types::{ContentId, OutputBundle, WorkloadKind};
pub use candle_core::Device;

pub use audit::{COSINE_TOLERANCE, Verdict, compare};
pub use models::ModelTokenizer;
pub use package::{Family, ModelPackage, PackageHeader, hash_file, write_package};
pub use request::{
    ChatMessage, ChatRequest, EmbeddingRequest, ReqError, RequestLine, ResultLine, commit_embeddings,
    commit_tokens, parse_results,
};
pub use tokenize::ChatTokenizer;

use crate::{Executor, Outcome, Result, RunError, TaskRun, lock};
use models::{GenParams, Loaded};

/// The task input holding the requests.
pub const REQUESTS_FILE: &str = "requests.jsonl";
/// The output holding the results.
pub const RESULTS_FILE: &str = "results.jsonl";
/// The output naming the instruction-set class the task ran on.
pub const ISA_FILE: &str = ".cairn/isa";

/// The engine's numerics revision, part of the class: raised whenever a kernel change alters
/// results (2: `Q5_0` and unpadded `Q8_0` decoding steps through Cairn's own kernel, activations
/// quantized per 32 values there; 3: decoding steps' attention in Cairn's own loops; 4: embeddings
/// on Cairn's encoder, `Q8_0` products; prompt rows of those formats through Cairn's kernel too).
pub const NUMERICS: &str = "n4";

/// Default tokens a chat reply may use when the request does not say.
pub const DEFAULT_MAX_TOKENS: usize = 256;

/// The instruction-set class of this machine, as candle's kernels see it (they pick code paths
/// by these features, so bitwise equality is promised only within a class).
pub fn isa_class() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let mut f = vec!["x86_64"];
        if std::arch::is_x86_feature_detected!("avx") {
            f.push("avx");
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            f.push("avx2");
        }
        if std::arch::is_x86_feature_detected!("fma") {
            f.push("fma");
        }
        if std::arch::is_x86_feature_detected!("f16c") {
            f.push("f16c");
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            f.push("avx512f");
        }
        if std::arch::is_x86_feature_detected!("avx512bw") {
            f.push("avx512bw");
        }
        if std::arch::is_x86_feature_detected!("avx512vnni") {
            f.push("avx512vnni");
        }
        f.join("+")
    }
    #[cfg(target_arch = "aarch64")]
    {
        "aarch64+neon".to_string()
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        std::env::consts::ARCH.to_string()
    }
}

/// Threads the engine's CPU kernels use (`RAYON_NUM_THREADS`, else every core).
pub fn engine_threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// Where the executor keeps its files and what it runs on.
#[derive(Clone, Debug)]
pub struct InferenceConfig {
    /// Packages handed over as bytes are written here.
    pub work_dir: PathBuf,
    /// The device.
    pub device: Device,
}

impl InferenceConfig {
    /// CPU execution, files under `dir`.
    pub fn cpu(dir: impl Into<PathBuf>) -> Self {
        InferenceConfig { work_dir: dir.into(), device: Device::Cpu }
    }

    /// GPU `ordinal` (NVIDIA, the `cuda` feature).
    ///
    /// # Errors
    /// [`RunError::Runtime`] when no such GPU can be opened.
    #[cfg(feature = "cuda")]
    pub fn cuda(dir: impl Into<PathBuf>, ordinal: usize) -> Result<Self> {
        let device = Device::new_cuda(ordinal)
            .map_err(|e| RunError::Runtime(format!("CUDA device {ordinal}: {e}")))?;
        Ok(InferenceConfig { work_dir: dir.into(), device })
    }
}

/// Where a task's generated tokens go as they are made: the task's seed (its id), the
/// request's index in the task, and the event.
pub type TaskTokenSink = Arc<dyn Fn(&[u8; 32], u64, &batch::TokenEvent) + Send + Sync>;

/// A loaded model and, for GGUF chat models, its decode loop.
type LoadedModel = (Arc<Loaded>, Option<batch::Batcher>);

/// The `inference` executor.
pub struct InferenceExecutor {
    cfg: InferenceConfig,
    packages: Mutex<BTreeMap<ContentId, ModelPackage>>,
    loaded: Mutex<BTreeMap<ContentId, LoadedModel>>,
    loading: Mutex<()>,
    sink: Mutex<Option<TaskTokenSink>>,
}

impl std::fmt::Debug for InferenceExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferenceExecutor").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl InferenceExecutor {
    /// An executor.
    pub fn new(cfg: InferenceConfig) -> Self {
        InferenceExecutor {
            cfg,
            packages: Mutex::new(BTreeMap::new()),
            loaded: Mutex::new(BTreeMap::new()),
            loading: Mutex::new(()),
            sink: Mutex::new(None),
        }
    }

    /// What the decode loop of a loaded chat model has done.
    pub fn batch_stats(&self, id: &ContentId) -> Option<Arc<batch::BatchStats>> {
        lock(&self.loaded).get(id).and_then(|(_, b)| b.as_ref().map(|b| b.stats.clone()))
    }

    /// Send every generated token to `sink` as it is made (a provider's live streams).
    pub fn set_token_sink(&self, sink: TaskTokenSink) {
        *lock(&self.sink) = Some(sink);
    }

    /// True when it runs on a GPU.
    pub fn on_gpu(&self) -> bool {
        !self.cfg.device.is_cpu()
    }

    /// The class its results are reproducible in, bit for bit: written into every output bundle
    /// and advertised by providers as `inference.class`. It names the engine's numerics
    /// revision too, so providers on engines that compute differently are never compared bit
    /// for bit.
    pub fn class(&self) -> String {
        let isa = isa_class();
        if self.on_gpu() { format!("gpu:{NUMERICS}:{isa}") } else { format!("{NUMERICS}:{isa}") }
    }

    /// The header of a prepared model.
    pub fn header(&self, id: &ContentId) -> Option<PackageHeader> {
        lock(&self.packages).get(id).map(|p| p.header.clone())
    }

    /// Load a prepared model now (otherwise the first task loads it).
    ///
    /// # Errors
    /// [`RunError::NotPrepared`], or the loader's error.
    pub fn preload(&self, id: &ContentId) -> Result<()> {
        self.model(id).map(|_| ())
    }

    fn model(&self, id: &ContentId) -> Result<LoadedModel> {
        if let Some(m) = lock(&self.loaded).get(id) {
            return Ok(m.clone());
        }
        let _one_at_a_time = lock(&self.loading);
        if let Some(m) = lock(&self.loaded).get(id) {
            return Ok(m.clone());
        }
        let pkg = lock(&self.packages).get(id).cloned().ok_or(RunError::NotPrepared(*id))?;
        let started = Instant::now();
        let m = Arc::new(Loaded::load(&pkg, &self.cfg.device)?);
        tracing::info!(model = %pkg.header.name, ms = started.elapsed().as_millis() as u64, "model loaded");
        // GGUF chat models decode in one shared loop, so concurrent tasks batch together.
        let batcher = matches!(&*m, Loaded::Llm { .. }).then(|| batch::Batcher::start(m.clone()));
        lock(&self.loaded).insert(*id, (m.clone(), batcher.clone()));
        Ok((m, batcher))
    }

    fn serve_line(
        &self,
        (model, batcher): &LoadedModel,
        family: Family,
        line: &RequestLine,
        index: u64,
        task_seed: &[u8; 32],
    ) -> Result<ResultLine> {
        let custom_id = line.custom_id.clone();
        Ok(match family {
            Family::Bert => match line.embedding() {
                Err(e) => ResultLine::failed(index, custom_id, e),
                Ok(req) => match model.embed_many(&req.input.to_vec())? {
                    Err(e) => {
                        ResultLine::failed(index, custom_id, ReqError { param: Some("input".into()), ..e })
                    }
                    Ok(done) => {
                        let tokens = done.iter().map(|(_, n)| *n as u64).fold(0u64, u64::saturating_add);
                        let vecs: Vec<Vec<f32>> = done.into_iter().map(|(v, _)| v).collect();
                        ResultLine {
                            index,
                            custom_id,
                            commitment: Some(commit_embeddings(&vecs)),
                            embeddings: Some(vecs),
                            text: None,
                            token_ids: None,
                            finish_reason: None,
                            prompt_tokens: tokens,
                            completion_tokens: 0,
                            error: None,
                        }
                    }
                },
            },
            Family::Gemma3 | Family::Qwen2 | Family::CairnGpt => match line.chat() {
                Err(e) => ResultLine::failed(index, custom_id, e),
                Ok(req) => {
                    let seed = req.seed.unwrap_or_else(|| derive_seed(task_seed, index));
                    let params = GenParams {
                        max_tokens: Some(
                            req.max_new_tokens()
                                .map_or(DEFAULT_MAX_TOKENS, |n| usize::try_from(n).unwrap_or(usize::MAX)),
                        ),
                        temperature: req.temperature.unwrap_or(1.0),
                        top_p: req.top_p.unwrap_or(1.0),
                        seed,
                        stop: req.stop.as_ref().map(request::OneOrMany::to_vec).unwrap_or_default(),
                    };
                    let generated = match (&**model, batcher) {
                        (Loaded::Llm { tokenizer, .. }, Some(b)) => {
                            match tokenizer.chat_prompt(&req.messages) {
                                Err(e) => Ok(Err(e)),
                                Ok(prompt) => {
                                    let on_token = lock(&self.sink).clone().map(|sink| {
                                        let task = *task_seed;
                                        let f: batch::TokenFn = Arc::new(move |e| sink(&task, index, e));
                                        f
                                    });
                                    b.generate(prompt, params, on_token)
                                }
                            }
                        }
                        _ => model.chat(&req.messages, &params),
                    };
                    match generated? {
                        Err(e) => ResultLine::failed(index, custom_id, e),
                        Ok(g) => ResultLine {
                            index,
                            custom_id,
                            embeddings: None,
                            commitment: Some(commit_tokens(&g.ids)),
                            completion_tokens: g.ids.len() as u64,
                            token_ids: Some(g.ids),
                            text: Some(g.text),
                            finish_reason: Some(g.finish.to_string()),
                            prompt_tokens: g.prompt_tokens as u64,
                            error: None,
                        },
                    }
                }
            },
        })
    }
}

/// The stream ends a provider commits with an inference result (see
/// [`cairn_types::stream`]): one per result line, in order, from the reply's token ids. A
/// bundle without results (a committed failure) streams nothing.
pub fn stream_ends(task: &cairn_types::TaskId, bundle: &OutputBundle) -> Vec<cairn_types::stream::StreamEnd> {
    let Some(text) = bundle.files.get(RESULTS_FILE).and_then(|b| std::str::from_utf8(b).ok()) else {
        return Vec::new();
    };
    let Ok(lines) = parse_results(text) else { return Vec::new() };
    cairn_types::stream::ends_of(task, lines.iter().map(|l| l.token_ids.as_deref()))
}

/// A request's sampling seed when it gives none: from the task seed and its position.
pub fn derive_seed(task_seed: &[u8; 32], index: u64) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(b"cairn sampling seed v1");
    h.update(task_seed);
    h.update(&index.to_le_bytes());
    let b = h.finalize();
    let mut s = [0u8; 8];
    s.copy_from_slice(&b.as_bytes()[..8]);
    u64::from_le_bytes(s)
}

impl Executor for InferenceExecutor {
    fn kind(&self) -> WorkloadKind {
        WorkloadKind::Inference
    }

    fn prepare(&self, id: &ContentId, bytes: &[u8]) -> Result<()> {
        let actual = ContentId::of(bytes);
        if actual != *id {
            return Err(RunError::WorkloadMismatch { expected: *id, actual });
        }
        let path = self.cfg.work_dir.join("models").join(id.to_hex());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| RunError::Io(e.to_string()))?;
        }
        std::fs::write(&path, bytes).map_err(|e| RunError::Io(e.to_string()))?;
        self.prepare_file(id, &path)
    }

    fn prepare_file(&self, id: &ContentId, path: &Path) -> Result<()> {
        let pkg = ModelPackage::open_verified(path, id)?;
        lock(&self.packages).insert(*id, pkg);
        Ok(())
    }

    fn is_prepared(&self, id: &ContentId) -> bool {
        lock(&self.packages).contains_key(id)
    }

    fn run(&self, task: &TaskRun) -> Result<Outcome> {
        let started = Instant::now();
        let family = lock(&self.packages)
            .get(&task.workload)
            .map(|p| p.header.family)
            .ok_or(RunError::NotPrepared(task.workload))?;
        let model = self.model(&task.workload)?;
        let input = task
            .inputs
            .iter()
            .find(|(n, _)| n == REQUESTS_FILE)
            .or(if task.inputs.len() == 1 { task.inputs.first() } else { None })
            .ok_or_else(|| RunError::Io(format!("the task has no {REQUESTS_FILE} input")))?;
        let text =
            std::fs::read(&input.1).map_err(|e| RunError::Io(format!("{}: {e}", input.1.display())))?;
        let text = String::from_utf8_lossy(&text);
        let mut results = String::new();
        let mut units = 0u64;
        for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
            let index = i as u64;
            let r = if units >= task.limits.fuel {
                ResultLine::failed(
                    index,
                    None,
                    ReqError {
                        code: Some("budget_exhausted".into()),
                        ..ReqError::invalid("the task's token budget (limits.fuel) is used up")
                    },
                )
            } else {
                match RequestLine::parse(line) {
                    Err(e) => ResultLine::failed(index, None, e),
                    Ok(l) => self.serve_line(&model, family, &l, index, &task.seed)?,
                }
            };
            units = units.saturating_add(r.prompt_tokens).saturating_add(r.completion_tokens);
            results.push_str(&serde_json::to_string(&r).map_err(|e| RunError::Runtime(e.to_string()))?);
            results.push('\n');
            if results.len() as u64 > task.limits.output_bytes {
                return Err(RunError::OutputTooLarge(task.limits.output_bytes));
            }
            if started.elapsed().as_millis() > u128::from(task.limits.wall_ms) {
                return Err(RunError::WallTimeout(task.limits.wall_ms));
            }
        }
        let mut files = BTreeMap::new();
        files.insert(RESULTS_FILE.to_string(), results.into_bytes());
        files.insert(OutputBundle::EXIT.to_string(), b"ok".to_vec());
        files.insert(ISA_FILE.to_string(), self.class().into_bytes());
        Ok(Outcome {
            bundle: OutputBundle { files },
            units,
            wall_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }
}

/// A model loaded in this process and called directly (no task files, no JSON, no
/// commitments): the baseline the executor's overhead is measured against.
#[derive(Debug)]
pub struct Engine(Loaded);

impl Engine {
    /// Load a package onto `device`.
    ///
    /// # Errors
    /// As the executor's loading.
    pub fn load(pkg: &ModelPackage, device: &Device) -> Result<Self> {
        Loaded::load(pkg, device).map(Engine)
    }

    /// Load a package on candle's own implementation where Cairn has its own (BERT on the
    /// CPU): the reference Cairn's encoder is measured against.
    ///
    /// # Errors
    /// As the executor's loading.
    pub fn load_reference(pkg: &ModelPackage, device: &Device) -> Result<Self> {
        Loaded::load_with(pkg, device, true).map(Engine)
    }

    /// One sentence embedding.
    ///
    /// # Errors
    /// [`RunError::Runtime`] for anything the model refuses.
    pub fn embed(&self, text: &str) -> Result<Vec<f32>> {
        self.0.embed(text)?.map(|(v, _)| v).map_err(|e| RunError::Runtime(e.message))
    }

    /// Embeddings of several sentences in padded batches (as the executor runs one request's
    /// inputs).
    ///
    /// # Errors
    /// [`RunError::Runtime`] for anything the model refuses.
    pub fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let done = self.0.embed_many(texts)?.map_err(|e| RunError::Runtime(e.message))?;
        Ok(done.into_iter().map(|(v, _)| v).collect())
    }

    /// The language model inside, for GGUF chat models.
    pub fn llm(&self) -> Option<&llm::Llm> {
        match &self.0 {
            Loaded::Llm { llm, .. } => Some(llm),
            _ => None,
        }
    }

    /// The prompt ids of a one-message chat, as the model sees it (for a reference engine).
    ///
    /// # Errors
    /// [`RunError::Runtime`] for a model that does not chat or a prompt it refuses.
    pub fn chat_prompt(&self, prompt: &str) -> Result<Vec<u32>> {
        let Loaded::Llm { tokenizer, .. } = &self.0 else {
            return Err(RunError::Runtime("not a GGUF chat model".into()));
        };
        let messages = [ChatMessage { role: "user".into(), content: prompt.into(), name: None }];
        tokenizer.chat_prompt(&messages).map_err(|e| RunError::Runtime(e.message))
    }

    /// Greedy generation of exactly `tokens` tokens after `prompt` (end tokens banned), the
    /// way a reference engine is timed: returns the ids, the prompt pass and the generation time.
    ///
    /// # Errors
    /// [`RunError::Runtime`] for a model that does not chat or an engine failure.
    pub fn generate_exact(
        &self,
        prompt: &[u32],
        tokens: usize,
    ) -> Result<(Vec<u32>, std::time::Duration, std::time::Duration)> {
        let Loaded::Llm { llm, tokenizer } = &self.0 else {
            return Err(RunError::Runtime("not a GGUF chat model".into()));
        };
        let banned: Vec<usize> = (0..llm.cfg.vocab).filter(|i| tokenizer.is_stop(*i as u32)).collect();
        let t0 = Instant::now();
        let mut seq = llm.sequence();
        let mut row = llm.forward(&mut [(&mut seq, prompt)])?.pop().unwrap_or_default();
        let prompt_time = t0.elapsed();
        let mut ids = Vec::with_capacity(tokens);
        while ids.len() < tokens {
            for i in &banned {
                row[*i] = f32::NEG_INFINITY;
            }
            let next = llm::Llm::argmax(&row);
            ids.push(next);
            row = llm.forward(&mut [(&mut seq, &[next])])?.pop().unwrap_or_default();
        }
        Ok((ids, prompt_time, t0.elapsed() - prompt_time))
    }

    /// Fed `prompt` and then another engine's greedy tokens `ids`, how many of those tokens this
    /// engine would also have picked (end tokens banned as in [`Engine::generate_exact`]): a
    /// check of the numerics that one early near-tie cannot derail.
    ///
    /// # Errors
    /// [`RunError::Runtime`] for a model that does not chat or an engine failure.
    pub fn agreement(&self, prompt: &[u32], ids: &[u32]) -> Result<usize> {
        let Loaded::Llm { llm, tokenizer } = &self.0 else {
            return Err(RunError::Runtime("not a GGUF chat model".into()));
        };
        let banned: Vec<usize> = (0..llm.cfg.vocab).filter(|i| tokenizer.is_stop(*i as u32)).collect();
        let mut seq = llm.sequence();
        let mut row = llm.forward(&mut [(&mut seq, prompt)])?.pop().unwrap_or_default();
        let mut same = 0;
        for id in ids {
            for i in &banned {
                row[*i] = f32::NEG_INFINITY;
            }
            same += usize::from(llm::Llm::argmax(&row) == *id);
            row = llm.forward(&mut [(&mut seq, &[*id])])?.pop().unwrap_or_default();
        }
        Ok(same)
    }

    /// A greedy chat reply of at most `max_tokens`; returns the text and the tokens generated.
    ///
    /// # Errors
    /// [`RunError::Runtime`] for anything the model refuses.
    pub fn chat(&self, prompt: &str, max_tokens: usize) -> Result<(String, usize)> {
        let messages = [ChatMessage { role: "user".into(), content: prompt.into(), name: None }];
        let p = GenParams {
            max_tokens: Some(max_tokens),
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop: Vec::new(),
        };
        let g = self.0.chat(&messages, &p)?.map_err(|e| RunError::Runtime(e.message))?;
        Ok((g.text, g.ids.len()))
    }
}
