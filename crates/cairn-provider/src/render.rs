//! The render role: Blender scenes (`kind: render`) rendered with this machine's Blender in
//! the container sandbox, offered where the operator prices `render` work.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use cairn_runtime::RenderExecutor;
use cairn_types::{BLENDER_ATTRIBUTE, WorkloadKind};
use tracing::info;

use crate::config::ProviderConfig;
use crate::{Error, Result};

/// The render executor, when `render` is priced: Blender must run here, and runc as root.
///
/// # Errors
/// [`Error::Config`] when `render` is priced but this machine cannot render.
pub(crate) async fn executor(cfg: &ProviderConfig, dir: &Path) -> Result<Option<Arc<RenderExecutor>>> {
    if !cfg.prices.contains_key(&WorkloadKind::Render) {
        return Ok(None);
    }
    if !cairn_runtime::container::available(Path::new("runc")) {
        return Err(Error::Config(
            "`render` is priced, but runc does not run here (install runc and run as root)".into(),
        ));
    }
    let dir = dir.to_path_buf();
    let exec = tokio::task::spawn_blocking(move || RenderExecutor::new(&dir))
        .await
        .map_err(|e| Error::Config(format!("render set-up: {e}")))?
        .map_err(|e| Error::Config(format!("`render` is priced, but {e}")))?;
    info!(blender = exec.version(), "rendering Blender scenes");
    Ok(Some(Arc::new(exec)))
}

/// The attribute that matches this provider to render jobs naming its Blender version.
pub(crate) fn attributes(exec: Option<&RenderExecutor>, attrs: &mut BTreeMap<String, String>) {
    if let Some(e) = exec {
        attrs.insert(BLENDER_ATTRIBUTE.to_string(), e.version().to_string());
    }
}
