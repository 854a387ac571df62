//! A task's output: named files, canonically encoded, so the whole output has one content id
//! that a provider commits to and an auditor recomputes.

use std::collections::BTreeMap;

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

use crate::{Canonical, ContentId};

/// Files a task produced, by relative path. Entries under `.cairn/` are written by the runtime
/// (exit status, standard output and error), not by the workload.
#[derive(Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct OutputBundle {
    /// Path → bytes.
    pub files: BTreeMap<String, Vec<u8>>,
}

impl Canonical for OutputBundle {
    const WHAT: &'static str = "output bundle";
    const MAX_BYTES: usize = 1 << 30;
}

impl OutputBundle {
    /// The runtime's record of how the task ended.
    pub const EXIT: &'static str = ".cairn/exit";
    /// The task's standard output.
    pub const STDOUT: &'static str = ".cairn/stdout";
    /// The task's standard error.
    pub const STDERR: &'static str = ".cairn/stderr";

    /// The content id of the encoded bundle.
    pub fn id(&self) -> ContentId {
        ContentId::of(&self.encode())
    }

    /// How the task ended (`ok`, `exit 3`, `out of fuel`…), if recorded.
    pub fn exit(&self) -> Option<&str> {
        self.files.get(Self::EXIT).and_then(|b| std::str::from_utf8(b).ok())
    }

    /// True if the task ended successfully.
    pub fn succeeded(&self) -> bool {
        self.exit() == Some("ok")
    }

    /// Total bytes of all files.
    pub fn size(&self) -> usize {
        self.files.values().map(Vec::len).sum()
    }
}
