//! The models a provider serves: its inference engine's configuration, and the model packages
//! brought into its blob store (fetched from the node and verified when absent) at start.

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_blobs::{BlobStore, Fetcher};
use cairn_runtime::{Executor as _, InferenceConfig, InferenceExecutor};
use cairn_types::{ContentId, WorkloadKind};
use tracing::{info, warn};

use crate::config::{ProviderConfig, ProviderHome};
use crate::daemon::MAX_BLOB;
use crate::{Error, Result};

pub(crate) fn inference_config(cfg: &ProviderConfig, home: &ProviderHome) -> InferenceConfig {
    let dir = home.runtime().join("inference");
    if cfg.gpu {
        #[cfg(feature = "cuda")]
        match InferenceConfig::cuda(&dir, 0) {
            Ok(c) => return c,
            Err(e) => warn!(error = %e, "no usable GPU; inference runs on the CPU"),
        }
        #[cfg(not(feature = "cuda"))]
        warn!("gpu = true, but this build has no `cuda` feature; inference runs on the CPU");
    }
    InferenceConfig::cpu(dir)
}

/// Bring each configured model into the blob store (from the node if absent), verify it, and
/// return the attributes that advertise it.
pub(crate) async fn prepare_models(
    cfg: &ProviderConfig,
    blobs: &BlobStore,
    fetcher: &Fetcher,
    infer: &Arc<InferenceExecutor>,
) -> Result<BTreeMap<String, String>> {
    let mut attrs = BTreeMap::new();
    for id in &cfg.models {
        if !blobs.has(id) {
            info!(model = %id.short(), "fetching a model package from the node");
        }
        let path = fetcher
            .fetch(blobs, id, None, MAX_BLOB, std::slice::from_ref(&cfg.node))
            .await
            .map_err(|e| Error::Config(format!("model {id}: {e}")))?;
        let exec = infer.clone();
        let model = *id;
        let header = tokio::task::spawn_blocking(move || {
            exec.prepare_file(&model, &path)?;
            Ok::<_, Error>(exec.header(&model))
        })
        .await
        .map_err(|e| Error::Config(format!("model check: {e}")))??
        .ok_or_else(|| Error::Config(format!("model {id} did not prepare")))?;
        info!(model = %header.name, id = %id.short(), family = ?header.family, "serving model");
        attrs.insert(model_attribute(id), format!("{}:{}", header.family.task(), header.name));
    }
    if !cfg.models.is_empty() || cfg.prices.contains_key(&WorkloadKind::Train) {
        // Auditors of this provider's inference and training results are drawn from the same
        // class: candle's kernels give the same bits only within one.
        attrs.insert(cairn_types::INFERENCE_CLASS_ATTRIBUTE.to_string(), infer.class());
    }
    Ok(attrs)
}

/// The provider attribute that says a model is served here.
pub fn model_attribute(id: &ContentId) -> String {
    format!("model:{id}")
}
