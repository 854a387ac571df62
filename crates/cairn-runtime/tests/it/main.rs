//! The wasm executor against real guests, a real third-party program and hostile modules.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::arithmetic_side_effects)]

mod container;
mod inference;
mod render;
mod sandbox;
mod services;
mod train;
mod volumes;
mod workloads;

use std::path::PathBuf;

use cairn_runtime::{Executor as _, WasmConfig, WasmExecutor};
use cairn_types::ContentId;

pub(crate) fn testdata(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata").join(rel)
}

/// A fresh directory for one test, `cairn-runtime-it-<pid>-<name>` in the temporary directory.
/// The first call removes the directories of earlier runs whose process has ended (a model
/// package copy alone is 88 MB a run).
pub(crate) fn scratch(name: &str) -> PathBuf {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| {
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
        for e in entries.flatten() {
            let file = e.file_name();
            let Some(rest) = file.to_str().and_then(|n| n.strip_prefix("cairn-runtime-it-")) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
            if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    });
    let dir = std::env::temp_dir().join(format!("cairn-runtime-it-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An executor with `wasm` prepared; returns the executor and the module's id.
pub(crate) fn load(name: &str, wasm: &[u8]) -> (WasmExecutor, ContentId) {
    let exec = WasmExecutor::new(WasmConfig { work_dir: scratch(name), cache_dir: None }).unwrap();
    let id = ContentId::of(wasm);
    exec.prepare(&id, wasm).unwrap();
    (exec, id)
}

pub(crate) fn guest(name: &str) -> Vec<u8> {
    std::fs::read(testdata(&format!("wasm/{name}.wasm"))).unwrap()
}
