//! Job manifests: a job spec in YAML where the workload and inputs may be local files. Files
//! are uploaded to the node's blob endpoint and replaced by their content ids and sizes; the
//! node is added as a location hint; the result must then parse as a strict job spec.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use cairn_blobs::Fetcher;
use cairn_types::{ContentId, JobSpec};
use serde_yaml_ng::{Mapping, Value};

/// A resolved manifest.
pub(crate) struct Resolved {
    /// The spec to submit.
    pub(crate) spec: JobSpec,
    /// The workload's bytes, when it was a local file (for validation before paying).
    pub(crate) workload: Option<Vec<u8>>,
    /// For inference jobs: the model and the number of requests.
    pub(crate) model: Option<(crate::catalog::ServedModel, usize)>,
}

/// Requests per task when a manifest does not say.
const DEFAULT_REQUESTS_PER_TASK: u64 = 32;

/// Check every line of a request file for `task` (`embeddings` or `chat`) and cut it into
/// chunks of `per_task` lines. A bad line refuses the whole job before anything is paid.
pub(crate) fn split_requests(text: &str, task: &str, per_task: usize) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed = cairn_runtime::inference::RequestLine::parse(line)
            .and_then(|l| if task == "chat" { l.chat().map(|_| ()) } else { l.embedding().map(|_| ()) });
        if let Err(e) = parsed {
            bail!("request line {}: {}", i + 1, e.message);
        }
        lines.push(line);
    }
    if lines.is_empty() {
        bail!("the request file has no requests");
    }
    Ok(lines.chunks(per_task.max(1)).map(|c| format!("{}\n", c.join("\n"))).collect())
}

/// `kind: inference`: resolve the model against what the network serves, and cut `requests`
/// (a JSONL file) into one `requests.jsonl` task input per `requests_per_task` lines.
async fn resolve_inference(
    fetcher: &Fetcher,
    node: &str,
    dir: &Path,
    m: &mut Mapping,
) -> Result<(crate::catalog::ServedModel, usize)> {
    let client = cairn_client::Client::new(node);
    let models = crate::catalog::served_models(&client).await?;
    let wl = m
        .get("workload")
        .and_then(Value::as_str)
        .context("the job spec needs a workload: a model name or content id")?;
    let model = crate::catalog::find(&models, wl)?.clone();
    m.insert("workload".into(), model.id.to_hex().into());
    let per_task = match m.remove("requests_per_task") {
        None => DEFAULT_REQUESTS_PER_TASK,
        Some(v) => v.as_u64().filter(|n| *n > 0).context("requests_per_task must be a positive integer")?,
    };
    let mut count = 0;
    if let Some(req) = m.remove("requests") {
        let rel = req.as_str().context("requests must be a path to a JSONL file")?;
        if m.contains_key("task_inputs") || m.contains_key("tasks") {
            bail!("with `requests`, tasks and task_inputs are derived; leave them out");
        }
        let path = dir.join(rel);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let chunks = split_requests(&text, &model.task, usize::try_from(per_task).unwrap_or(usize::MAX))?;
        count = text.lines().filter(|l| !l.trim().is_empty()).count();
        let mut inputs = Vec::new();
        for c in &chunks {
            let id = fetcher.upload(node, c.clone().into_bytes()).await.context("uploading requests")?;
            let mut e = Mapping::new();
            e.insert("name".into(), cairn_runtime::inference::REQUESTS_FILE.into());
            e.insert("id".into(), id.to_hex().into());
            e.insert("size".into(), (c.len() as u64).into());
            inputs.push(Value::Mapping(e));
        }
        m.insert("tasks".into(), (chunks.len() as u64).into());
        m.insert("task_inputs".into(), Value::Sequence(inputs));
    }
    let constraints = m.entry("constraints".into()).or_insert_with(|| Value::Mapping(Mapping::new()));
    let Some(c) = constraints.as_mapping_mut() else { bail!("constraints must be a mapping") };
    let attrs = c.entry("attributes".into()).or_insert_with(|| Value::Mapping(Mapping::new()));
    let Some(a) = attrs.as_mapping_mut() else { bail!("constraints.attributes must be a mapping") };
    let (k, v) = model.attribute();
    a.insert(k.into(), v.into());
    Ok((model, count))
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

async fn upload_path(
    fetcher: &Fetcher,
    node: &str,
    dir: &Path,
    rel: &str,
) -> Result<(ContentId, u64, Vec<u8>)> {
    let path = dir.join(rel);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let id =
        fetcher.upload(node, bytes.clone()).await.with_context(|| format!("uploading {}", path.display()))?;
    Ok((id, bytes.len() as u64, bytes))
}

/// True if the node's blob endpoint holds `id`.
async fn node_has(node: &str, id: &str) -> bool {
    let url = format!("{}/blobs/{id}", node.trim_end_matches('/'));
    reqwest::Client::new().head(url).send().await.is_ok_and(|r| r.status().is_success())
}

/// The size of blob `id` when a running storage deal keeps it on replicas that proved it.
async fn stored_size(node: &str, id: &str) -> Option<u64> {
    let v: serde_json::Value =
        cairn_client::Client::new(node).get(&format!("/api/blobs/{id}/replicas")).await.ok()?;
    let has_replicas = v["endpoints"].as_array().is_some_and(|e| !e.is_empty());
    v["size"].as_u64().filter(|_| has_replicas)
}

async fn resolve_inputs(
    fetcher: &Fetcher,
    node: &str,
    dir: &Path,
    list: &mut Value,
    field: &str,
) -> Result<()> {
    let Some(seq) = list.as_sequence_mut() else { bail!("{field} must be a list") };
    for item in seq {
        let Some(m) = item.as_mapping_mut() else { bail!("each entry of {field} must be a mapping") };
        // `stored: <deal id>`: a file kept under a storage deal; providers fetch it from its
        // replicas.
        if let Some(stored) = m.remove("stored") {
            let deal: cairn_types::DealId = stored
                .as_str()
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("{field}: `stored` must be a storage deal id"))?;
            let client = cairn_client::Client::new(node);
            let v = crate::store::deal_view(&client, &deal).await?;
            if v.deal.ended {
                bail!("{field}: storage deal {deal} has ended; its file is no longer kept");
            }
            m.insert("id".into(), v.deal.blob.to_hex().into());
            m.insert("size".into(), v.deal.size.into());
            if !m.contains_key("name") {
                m.insert("name".into(), v.deal.blob.to_hex().into());
            }
            continue;
        }
        if let Some(id) = m.get("id").and_then(Value::as_str).map(str::to_string)
            && !m.contains_key("path")
            && !node_has(node, &id).await
        {
            // A blob kept under a running storage deal is fetched from its replicas.
            match stored_size(node, &id).await {
                Some(size) => {
                    if !m.contains_key("size") {
                        m.insert("size".into(), size.into());
                    }
                }
                None => bail!(
                    "{field}: blob {id} is not at {node} nor under a running storage deal; upload it first or give its local `path` instead"
                ),
            }
        }
        if let Some(p) = m.remove("path") {
            let p = p.as_str().with_context(|| format!("{field}: path must be a string"))?.to_string();
            let (id, size, _) = upload_path(fetcher, node, dir, &p).await?;
            m.insert("id".into(), id.to_hex().into());
            m.insert("size".into(), size.into());
            if !m.contains_key("name") {
                let name = Path::new(&p).file_name().and_then(|n| n.to_str()).unwrap_or("input").to_string();
                m.insert("name".into(), name.into());
            }
        }
    }
    Ok(())
}

/// `kind: train`: the task count follows from the plan (`rounds × (width + 1)`), so a manifest
/// may leave it out; a wrong one is refused.
fn fill_train_tasks(m: &mut Mapping) -> Result<()> {
    let train =
        m.get("train").context("a train job needs a `train` section (model, optimizer, rounds, width)")?;
    // Parsed from text, so an error names the field (`optimizer.learning_rate: …`).
    let text = serde_yaml_ng::to_string(train)?;
    let plan: cairn_types::TrainSpec =
        serde_yaml_ng::from_str(&text).map_err(|e| anyhow::anyhow!("train.{e}"))?;
    plan.validate().map_err(anyhow::Error::msg)?;
    match m.get("tasks").and_then(Value::as_u64) {
        None => {
            m.insert("tasks".into(), u64::from(plan.tasks()).into());
        }
        Some(n) if n == u64::from(plan.tasks()) => {}
        Some(n) => {
            bail!("a train job has rounds × (width + 1) = {} tasks, not {n}; leave `tasks` out", plan.tasks())
        }
    }
    Ok(())
}

/// Resolve a manifest's local files against `dir`, uploading them to `client`'s node signed
/// by `key` (the node keeps uploads only from funded accounts).
pub(crate) async fn resolve(
    text: &str,
    dir: &Path,
    client: &cairn_client::Client,
    key: &cairn_types::SecretKey,
) -> Result<Resolved> {
    let chain_id = client.status().await.context("reading the node's chain id")?.chain_id;
    let fetcher =
        Fetcher::new().with_uploader(cairn_types::upload::UploadAuth { key: key.clone(), chain_id });
    let node = client.base();
    let mut v: Value = serde_yaml_ng::from_str(text).context("the job spec is not valid YAML")?;
    let Some(m) = v.as_mapping_mut() else { bail!("the job spec must be a YAML mapping") };
    let mut workload = None;
    let mut model = None;
    let wl = m.get("workload").and_then(Value::as_str).map(str::to_string);
    let inference = m.get("kind").and_then(Value::as_str) == Some("inference");
    match wl {
        _ if inference => model = Some(resolve_inference(&fetcher, node, dir, m).await?),
        Some(w) if is_id(&w) => {}
        Some(w) => {
            let (id, _, bytes) = upload_path(&fetcher, node, dir, &w).await?;
            m.insert("workload".into(), id.to_hex().into());
            workload = Some(bytes);
        }
        None => bail!("the job spec needs a workload (a file path or a content id)"),
    }
    if m.get("kind").and_then(Value::as_str) == Some("train") {
        fill_train_tasks(m)?;
    }
    // `kind: render`: frames × tiles tasks, unless the manifest says (then they must agree).
    if m.get("kind").and_then(Value::as_str) == Some("render")
        && !m.contains_key("tasks")
        && let Some(r) =
            m.get("render").and_then(|r| serde_yaml_ng::from_value::<cairn_types::RenderSpec>(r.clone()).ok())
    {
        m.insert("tasks".into(), r.tasks().into());
    }
    for field in ["inputs", "task_inputs"] {
        if let Some(list) = m.get_mut(field) {
            resolve_inputs(&fetcher, node, dir, list, field).await?;
        }
    }
    let hints = m.entry("hints".into()).or_insert_with(|| Value::Sequence(Vec::new()));
    if let Some(seq) = hints.as_sequence_mut()
        && !seq.iter().any(|h| h.as_str() == Some(node))
    {
        seq.push(node.into());
    }
    let spec: JobSpec = serde_yaml_ng::from_value(Value::Mapping(std::mem::take(m) as Mapping))
        .context("invalid job spec")?;
    spec.validate()?;
    Ok(Resolved { spec, workload, model })
}
