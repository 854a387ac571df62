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
        if let Some(id) = m.get("id").and_then(Value::as_str)
            && !m.contains_key("path")
            && !node_has(node, id).await
        {
            bail!("{field}: blob {id} is not at {node}; upload it first or give its local `path` instead");
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

/// Resolve a manifest's local files against `dir`, uploading them to `node`.
pub(crate) async fn resolve(text: &str, dir: &Path, node: &str) -> Result<Resolved> {
    let fetcher = Fetcher::new();
    let mut v: Value = serde_yaml_ng::from_str(text).context("the job spec is not valid YAML")?;
    let Some(m) = v.as_mapping_mut() else { bail!("the job spec must be a YAML mapping") };
    let mut workload = None;
    let wl = m.get("workload").and_then(Value::as_str).map(str::to_string);
    match wl {
        Some(w) if is_id(&w) => {}
        Some(w) => {
            let (id, _, bytes) = upload_path(&fetcher, node, dir, &w).await?;
            m.insert("workload".into(), id.to_hex().into());
            workload = Some(bytes);
        }
        None => bail!("the job spec needs a workload (a file path or a content id)"),
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
    Ok(Resolved { spec, workload })
}
