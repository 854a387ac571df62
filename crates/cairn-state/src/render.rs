//! Chain rules of `render` jobs (see [`cairn_types::RenderSpec`]).
//!
//! A render task runs only on a provider that renders with the Blender version the job names,
//! advertised in its [`BLENDER_ATTRIBUTE`]: the same rule picks its auditors, so an audit re-renders
//! with the same version and compares pixels bitwise. Cycles on the CPU gives identical 8-bit
//! pixels for the same version and settings at any thread count, so a render result is
//! deterministic like a WASM one — a mismatch that a dispute upholds slashes.

use cairn_types::{BLENDER_ATTRIBUTE, JobSpec, WorkloadKind};

use crate::model::Provider;

/// Whether `p` renders with the Blender version a `render` job names (true for other kinds).
pub(crate) fn fits(p: &Provider, spec: &JobSpec) -> bool {
    if spec.kind != WorkloadKind::Render {
        return true;
    }
    match spec.render.as_deref() {
        Some(r) => p.info.attributes.get(BLENDER_ATTRIBUTE) == Some(&r.blender),
        None => false,
    }
}
