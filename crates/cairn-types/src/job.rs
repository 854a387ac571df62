//! Job specs: YAML for humans, canonical binary on chain.
//!
//! ```
//! use cairn_types::JobSpec;
//! let yaml = r#"
//! kind: wasm
//! workload: af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262
//! tasks: 4
//! max_price_per_task: 0.25 CRN
//! "#;
//! let spec = JobSpec::from_yaml(yaml).unwrap();
//! assert_eq!(spec.tasks, 4);
//! // Unknown fields are refused, never ignored.
//! assert!(JobSpec::from_yaml(&format!("{yaml}\ncolour: blue\n")).is_err());
//! ```

use std::collections::BTreeMap;
use std::fmt;

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

use crate::{Amount, Canonical, ContentId, Error, Region, Result};

/// Protocol limits on job specs and other user data.
pub mod limits {
    /// Tasks per job.
    pub const MAX_TASKS: u32 = 4_096;
    /// Shared inputs per job.
    pub const MAX_INPUTS: usize = 64;
    /// Command-line arguments.
    pub const MAX_ARGS: usize = 64;
    /// Bytes per argument, environment value or attribute value.
    pub const MAX_VALUE: usize = 1_024;
    /// Bytes per name (input names, env and attribute keys).
    pub const MAX_NAME: usize = 128;
    /// Environment variables.
    pub const MAX_ENV: usize = 64;
    /// Attributes (on providers and in constraints).
    pub const MAX_ATTRIBUTES: usize = 32;
    /// Regions in a constraint.
    pub const MAX_REGIONS: usize = 64;
    /// Location hints.
    pub const MAX_HINTS: usize = 8;
    /// Encoded job spec size.
    pub const MAX_SPEC_BYTES: usize = 96 * 1024;
    /// The most a task may pay (10^12 CRN), which keeps price × weight products in `u128`.
    pub const MAX_PRICE: u128 = 1_000_000_000_000_000_000;
    /// Deadline per attempt, in blocks.
    pub const MAX_DEADLINE_BLOCKS: u64 = 1_000_000;
    /// Auction window, in blocks.
    pub const MAX_BID_WINDOW: u32 = 10_000;
    /// Attempts before a task is refunded.
    pub const MAX_ATTEMPTS: u32 = 16;
}

/// What kind of work a job is.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    BorshSerialize,
    BorshDeserialize,
    Serialize,
    Deserialize,
)]
#[borsh(use_discriminant = true)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum WorkloadKind {
    /// A sandboxed WASI module.
    Wasm = 0,
    /// AI inference on a named model.
    Inference = 1,
    /// Rendering frames.
    Render = 2,
    /// A long-running service (leases).
    Service = 3,
    /// Data-parallel training in audited rounds (see [`crate::TrainSpec`]).
    Train = 4,
    /// A native program in a sandboxed container, from a root filesystem image.
    Container = 5,
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WorkloadKind::Wasm => "wasm",
            WorkloadKind::Inference => "inference",
            WorkloadKind::Render => "render",
            WorkloadKind::Service => "service",
            WorkloadKind::Train => "train",
            WorkloadKind::Container => "container",
        })
    }
}

/// How much checking a job's results get.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
#[borsh(use_discriminant = true)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum VerificationLevel {
    /// Random audits at the protocol's rate; a challenge window before payment.
    #[default]
    Standard = 0,
    /// Every result audited.
    Strict = 1,
    /// No audits and no challenge window: for trusted, private providers.
    None = 2,
}

/// A named input blob.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputRef {
    /// File name the workload sees (a plain name, no directories).
    pub name: String,
    /// The blob's content id.
    pub id: ContentId,
    /// The blob's size in bytes (fetches stop past it).
    pub size: u64,
}

/// Resources one task needs.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    /// CPU in thousandths of a core.
    pub cpu_millis: u64,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// Number of GPUs.
    pub gpus: u32,
    /// Memory per GPU in MiB.
    pub gpu_vram_mb: u64,
}

impl Default for Resources {
    fn default() -> Self {
        Resources { cpu_millis: 1_000, memory_mb: 256, gpus: 0, gpu_vram_mb: 0 }
    }
}

/// Execution limits per task, enforced by the provider's runtime and checked by auditors.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Fuel (the metered unit of WASM execution).
    pub fuel: u64,
    /// Wall-clock cap in milliseconds.
    pub wall_ms: u64,
    /// Largest output in bytes.
    pub output_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { fuel: 10_000_000_000, wall_ms: 60_000, output_bytes: 64 * 1024 * 1024 }
    }
}

/// Where a job may run.
#[derive(Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Constraints {
    /// Allowed regions; empty means anywhere.
    pub regions: Vec<Region>,
    /// Attributes a provider must have, with these exact values.
    pub attributes: BTreeMap<String, String>,
}

fn default_tasks() -> u32 {
    1
}
fn default_deadline() -> u64 {
    120
}
fn default_attempts() -> u32 {
    3
}

/// A job: what to run, on what, how many times, and for how much.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Workload kind.
    pub kind: WorkloadKind,
    /// The workload's content id: WASM module, model, or image digest.
    pub workload: ContentId,
    /// Inputs every task sees.
    #[serde(default)]
    pub inputs: Vec<InputRef>,
    /// One extra input per task (frame, shard, batch); empty, or exactly `tasks` entries.
    #[serde(default)]
    pub task_inputs: Vec<InputRef>,
    /// Arguments passed to the workload.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment passed to the workload.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Number of tasks.
    #[serde(default = "default_tasks")]
    pub tasks: u32,
    /// Resources per task.
    #[serde(default)]
    pub resources: Resources,
    /// Execution limits per task.
    #[serde(default)]
    pub limits: Limits,
    /// The most the client pays per task (services price per block in `service` instead).
    #[serde(default)]
    pub max_price_per_task: Amount,
    /// Blocks a provider has, once assigned, to commit a result.
    #[serde(default = "default_deadline")]
    pub deadline_blocks: u64,
    /// Blocks bids are collected for; 0 matches at once against posted prices.
    #[serde(default)]
    pub bid_window: u32,
    /// Assignments tried before a task's deposit is refunded.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Region and attribute constraints.
    #[serde(default)]
    pub constraints: Constraints,
    /// How results are checked.
    #[serde(default)]
    pub verification: VerificationLevel,
    /// Where the client serves the inputs (`http://host:port`).
    #[serde(default)]
    pub hints: Vec<String>,
    /// For `train` jobs: the model, optimizer and rounds (the workload is the dataset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<Box<crate::TrainSpec>>,
    /// Whether the same inputs give the same output bytes on every honest machine (the
    /// default). A `container` job may declare `false`: its auditors then compare outputs
    /// loosely (same exit status, same output files) and a mismatch only escalates — a dispute
    /// that upholds it drops the result unpaid, but nobody is slashed.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub deterministic: bool,
    /// For `container` and `service` specs: outbound network (user-mode NAT on providers that
    /// offer it, see [`NETWORK_ATTRIBUTE`]). Off by default: the sandbox has no network.
    #[serde(default, skip_serializing_if = "is_false")]
    pub network: bool,
    /// For `service` specs: the port, the price per block and the SLA (see [`crate::ServiceSpec`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Box<crate::ServiceSpec>>,
    /// For `render` jobs: the Blender version, frames, resolution, samples and tiles (see
    /// [`crate::RenderSpec`]; the workload is the `.blend`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub render: Option<Box<crate::RenderSpec>>,
}

/// The provider attribute (value `egress`) that says its containers may have outbound network.
pub const NETWORK_ATTRIBUTE: &str = "container.network";

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_false(b: &bool) -> bool {
    !*b
}

fn default_true() -> bool {
    true
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_true(b: &bool) -> bool {
    *b
}

impl Canonical for JobSpec {
    const WHAT: &'static str = "job spec";
    const MAX_BYTES: usize = limits::MAX_SPEC_BYTES;
}

pub(crate) fn check_text(what: &str, s: &str, max: usize) -> std::result::Result<(), String> {
    if s.is_empty() || s.len() > max {
        return Err(format!("{what} must be 1..={max} bytes"));
    }
    if s.chars().any(char::is_control) {
        return Err(format!("{what} must not contain control characters"));
    }
    Ok(())
}

pub(crate) fn check_attributes(attrs: &BTreeMap<String, String>) -> std::result::Result<(), String> {
    if attrs.len() > limits::MAX_ATTRIBUTES {
        return Err(format!("at most {} attributes", limits::MAX_ATTRIBUTES));
    }
    for (k, v) in attrs {
        check_text("attribute key", k, limits::MAX_NAME)?;
        check_text("attribute value", v, limits::MAX_VALUE)?;
    }
    Ok(())
}

fn check_file_name(name: &str) -> std::result::Result<(), String> {
    check_text("input name", name, limits::MAX_NAME)?;
    if name == "." || name == ".." || name.contains(['/', '\\']) {
        return Err(format!("input name {name:?} must be a plain file name"));
    }
    Ok(())
}

impl JobSpec {
    /// Every blob the job names: its workload, then its inputs and per-task inputs.
    pub fn blobs(&self) -> impl Iterator<Item = &ContentId> {
        std::iter::once(&self.workload)
            .chain(self.inputs.iter().map(|i| &i.id))
            .chain(self.task_inputs.iter().map(|i| &i.id))
    }

    /// Parse YAML, refusing unknown fields, then [`validate`](Self::validate).
    ///
    /// # Errors
    /// [`Error::Yaml`] for syntax, types or unknown fields; [`Error::InvalidJobSpec`] for
    /// broken rules.
    pub fn from_yaml(text: &str) -> Result<Self> {
        if text.len() > limits::MAX_SPEC_BYTES {
            return Err(Error::TooLarge {
                what: "job spec YAML",
                size: text.len(),
                max: limits::MAX_SPEC_BYTES,
            });
        }
        let value: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(text).map_err(|e| Error::Yaml(e.to_string()))?;
        let tasks_given = value.get("tasks").is_some();
        let mut spec: JobSpec = serde_yaml_ng::from_value(value).map_err(|e| Error::Yaml(e.to_string()))?;
        // A render job's task count follows from its frames and tiles: fill it in when left out.
        if let (false, Some(r)) = (tasks_given, spec.render.as_deref()) {
            spec.tasks = u32::try_from(r.tasks()).unwrap_or(u32::MAX);
        }
        spec.validate()?;
        Ok(spec)
    }

    /// The spec as YAML.
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).unwrap_or_default()
    }

    /// Check every protocol limit.
    ///
    /// # Errors
    /// [`Error::InvalidJobSpec`] naming the first broken rule.
    pub fn validate(&self) -> Result<()> {
        self.check().map_err(Error::InvalidJobSpec)
    }

    fn check(&self) -> std::result::Result<(), String> {
        use limits::*;
        crate::render::check(self)?;
        if self.tasks == 0 || self.tasks > MAX_TASKS {
            return Err(format!("tasks must be 1..={MAX_TASKS}"));
        }
        if self.inputs.len() > MAX_INPUTS {
            return Err(format!("at most {MAX_INPUTS} inputs"));
        }
        if !self.task_inputs.is_empty() && self.task_inputs.len() != self.tasks as usize {
            return Err(format!(
                "task_inputs has {} entries; it must be empty or have one per task ({})",
                self.task_inputs.len(),
                self.tasks
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for i in &self.inputs {
            check_file_name(&i.name)?;
            if !names.insert(i.name.as_str()) {
                return Err(format!("input name {:?} is used twice", i.name));
            }
        }
        for i in &self.task_inputs {
            check_file_name(&i.name)?;
            if names.contains(i.name.as_str()) {
                return Err(format!("task input name {:?} clashes with a shared input", i.name));
            }
        }
        if self.args.len() > MAX_ARGS {
            return Err(format!("at most {MAX_ARGS} args"));
        }
        if self.args.iter().any(|a| a.len() > MAX_VALUE) {
            return Err(format!("each arg must be at most {MAX_VALUE} bytes"));
        }
        if self.env.len() > MAX_ENV {
            return Err(format!("at most {MAX_ENV} env variables"));
        }
        for (k, v) in &self.env {
            check_text("env name", k, MAX_NAME)?;
            if k.contains('=') {
                return Err(format!("env name {k:?} must not contain '='"));
            }
            if v.len() > MAX_VALUE {
                return Err(format!("env value of {k:?} is over {MAX_VALUE} bytes"));
            }
        }
        let price = self.max_price_per_task.base_units();
        if self.kind == WorkloadKind::Service {
            if price != 0 {
                return Err(
                    "a service is priced per block: set service.max_price_per_block, not max_price_per_task"
                        .into(),
                );
            }
        } else if price == 0 || price > MAX_PRICE {
            return Err("max_price_per_task must be above zero and at most 10^12 CRN".into());
        }
        if self.deadline_blocks == 0 || self.deadline_blocks > MAX_DEADLINE_BLOCKS {
            return Err(format!("deadline_blocks must be 1..={MAX_DEADLINE_BLOCKS}"));
        }
        if self.bid_window > MAX_BID_WINDOW {
            return Err(format!("bid_window must be at most {MAX_BID_WINDOW}"));
        }
        if self.max_attempts == 0 || self.max_attempts > MAX_ATTEMPTS {
            return Err(format!("max_attempts must be 1..={MAX_ATTEMPTS}"));
        }
        if self.constraints.regions.len() > MAX_REGIONS {
            return Err(format!("at most {MAX_REGIONS} regions"));
        }
        if self.constraints.regions.iter().any(|r| !r.is_valid()) {
            return Err("regions must be two-letter ISO country codes".into());
        }
        check_attributes(&self.constraints.attributes)?;
        if self.hints.len() > MAX_HINTS {
            return Err(format!("at most {MAX_HINTS} hints"));
        }
        for h in &self.hints {
            check_text("hint", h, MAX_VALUE)?;
        }
        if self.limits.fuel == 0 || self.limits.wall_ms == 0 || self.limits.output_bytes == 0 {
            return Err("limits must be above zero".into());
        }
        match (&self.service, self.kind) {
            (Some(svc), WorkloadKind::Service) => {
                svc.check()?;
                if self.tasks != 1 || !self.task_inputs.is_empty() {
                    return Err("a service runs as one lease: leave tasks and task_inputs out".into());
                }
            }
            (None, WorkloadKind::Service) => {
                return Err(
                    "a service spec needs a `service` section (port, max_price_per_block, sla)".into()
                );
            }
            (Some(_), _) => return Err("only `kind: service` specs take a `service` section".into()),
            (None, _) => {}
        }
        let wasm_service = self.service.as_deref().is_some_and(|s| s.runtime == crate::ServiceRuntime::Wasm);
        if (self.kind == WorkloadKind::Container || (self.kind == WorkloadKind::Service && !wasm_service))
            && self.args.is_empty()
        {
            return Err(
                "a container job needs args: the program (a path inside the image) and its arguments".into(),
            );
        }
        if self.network
            && (wasm_service || !matches!(self.kind, WorkloadKind::Container | WorkloadKind::Service))
        {
            return Err(
                "only `kind: container` specs and container services may ask for `network: true`".into()
            );
        }
        if !self.deterministic && self.kind != WorkloadKind::Container {
            return Err("only `kind: container` jobs may declare `deterministic: false`".into());
        }
        match (&self.train, self.kind) {
            (Some(t), WorkloadKind::Train) => {
                t.validate()?;
                if self.tasks != t.tasks() {
                    return Err(format!(
                        "a train job has rounds × (width + 1) = {} tasks, not {}",
                        t.tasks(),
                        self.tasks
                    ));
                }
                if !self.inputs.is_empty() || !self.task_inputs.is_empty() {
                    return Err("a train job reads only its dataset (the workload) and its own checkpoints; leave inputs and task_inputs out".into());
                }
            }
            (None, WorkloadKind::Train) => return Err("a train job needs a `train` section".into()),
            (Some(_), _) => return Err("only `kind: train` jobs take a `train` section".into()),
            (None, _) => {}
        }
        if self.encode().len() > MAX_SPEC_BYTES {
            return Err(format!("encoded spec is over {MAX_SPEC_BYTES} bytes"));
        }
        Ok(())
    }

    /// Total escrow for the tasks alone: `max_price_per_task × tasks`.
    pub fn max_total_price(&self) -> Option<Amount> {
        self.max_price_per_task.checked_mul(u128::from(self.tasks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> JobSpec {
        JobSpec::from_yaml(
            "kind: wasm\nworkload: af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262\nmax_price_per_task: 1 CRN\n",
        )
        .unwrap()
    }

    #[test]
    fn yaml_defaults_are_filled_in() {
        let s = base();
        assert_eq!(s.tasks, 1);
        assert_eq!(s.max_attempts, 3);
        assert_eq!(s.verification, VerificationLevel::Standard);
        assert_eq!(JobSpec::from_yaml(&s.to_yaml()).unwrap(), s);
    }

    #[test]
    fn unknown_fields_are_refused_at_every_level() {
        let y = base().to_yaml();
        assert!(JobSpec::from_yaml(&format!("{y}extra: 1\n")).is_err());
        let nested = y.replace("cpu_millis: 1000", "cpu_millis: 1000\n  cpus: 4");
        assert_ne!(nested, y);
        assert!(matches!(JobSpec::from_yaml(&nested), Err(Error::Yaml(_))));
    }

    #[test]
    fn container_specs_need_a_command_and_only_they_may_be_non_deterministic() {
        let mut s = base();
        s.deterministic = false;
        assert!(matches!(s.validate(), Err(Error::InvalidJobSpec(m)) if m.contains("deterministic")));
        s.kind = WorkloadKind::Container;
        assert!(matches!(s.validate(), Err(Error::InvalidJobSpec(m)) if m.contains("args")));
        s.args = vec!["/bin/sh".into()];
        s.validate().unwrap();
        let y = s.to_yaml();
        assert!(y.contains("deterministic: false") && y.contains("kind: container"), "{y}");
        assert_eq!(JobSpec::from_yaml(&y).unwrap(), s);
    }

    #[test]
    fn rule_breaking_specs_are_refused_with_a_reason() {
        let mut s = base();
        s.tasks = 0;
        assert!(matches!(s.validate(), Err(Error::InvalidJobSpec(m)) if m.contains("tasks")));
        let mut s = base();
        s.inputs.push(InputRef { name: "../etc/passwd".into(), id: ContentId::ZERO, size: 1 });
        assert!(s.validate().is_err());
        let mut s = base();
        s.task_inputs.push(InputRef { name: "a".into(), id: ContentId::ZERO, size: 1 });
        s.tasks = 2;
        assert!(s.validate().is_err());
        let mut s = base();
        s.max_price_per_task = Amount::from_base_units(limits::MAX_PRICE + 1);
        assert!(s.validate().is_err());
        let mut s = base();
        s.kind = WorkloadKind::Service;
        assert!(s.validate().is_err());
    }

    #[test]
    fn service_specs_need_their_section_a_command_and_a_sane_sla() {
        let y = "kind: service\nworkload: af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262\nargs: [/bin/httpd]\nservice:\n  port: 8080\n  max_price_per_block: 0.001 CRN\n  sla: { uptime_bps: 9000, latency_ms: 500, probe_path: / }\n";
        let s = JobSpec::from_yaml(y).unwrap();
        assert_eq!(JobSpec::from_yaml(&s.to_yaml()).unwrap(), s);
        let refused = |f: &dyn Fn(&mut JobSpec), word: &str| {
            let mut t = s.clone();
            f(&mut t);
            assert!(matches!(t.validate(), Err(Error::InvalidJobSpec(m)) if m.contains(word)), "{word}");
        };
        refused(&|t| t.service = None, "service");
        refused(&|t| t.args.clear(), "args");
        refused(&|t| t.max_price_per_task = Amount::from_base_units(1), "per block");
        refused(&|t| t.tasks = 2, "one lease");
        refused(&|t| t.service.as_mut().unwrap().port = 0, "port");
        refused(&|t| t.service.as_mut().unwrap().max_price_per_block = Amount::ZERO, "max_price_per_block");
        refused(&|t| t.service.as_mut().unwrap().sla.uptime_bps = 10_001, "uptime_bps");
        refused(&|t| t.service.as_mut().unwrap().sla.latency_ms = 0, "latency_ms");
        refused(&|t| t.service.as_mut().unwrap().sla.window_rounds = 0, "window_rounds");
        refused(&|t| t.service.as_mut().unwrap().sla.probe_path = "x/../../etc".into(), "probe_path");
        refused(&|t| t.service.as_mut().unwrap().sla.probe_path = "/a b".into(), "probe_path");
        // A WASM service answers each request itself: no port, no command needed.
        let mut wasm = s.clone();
        wasm.args.clear();
        wasm.service.as_mut().unwrap().runtime = crate::ServiceRuntime::Wasm;
        refused(&|t| *t = wasm.clone(), "leave service.port out");
        wasm.service.as_mut().unwrap().port = 0;
        wasm.validate().unwrap();
        let mut w = base();
        w.service = s.service.clone();
        assert!(matches!(w.validate(), Err(Error::InvalidJobSpec(m)) if m.contains("only `kind: service`")));
    }
}
