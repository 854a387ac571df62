//! The two roles of a training task, their input checks, and the single-process reference.

use std::collections::BTreeMap;
use std::time::Instant;

use cairn_types::{Canonical, ContentId, OutputBundle, TrainSpec};
use candle_core::Device;
use serde::Serialize;

use super::data::{Dataset, Part, batch_rng};
use super::models::{Model, ModelCard, Weights};
use super::optim::{Average, Trainer, fresh_state};
use super::state::{TensorFile, TrainState};
use super::{CHECKPOINT_FILE, METRICS_FILE, MODEL_FILE, Metrics, RECORD_FILE, STATE_FILE, TrainRecord};
use crate::{RunError, TaskRun};

/// Longest exit message committed (the detail goes to `.cairn/stderr`).
const MAX_EXIT: usize = 300;

/// Why a task has no `ok` bundle.
#[derive(Debug)]
pub(crate) enum Fail {
    /// A property of the job: committed as a failure bundle.
    Commit {
        /// `.cairn/exit`.
        exit: String,
        /// `.cairn/stderr`.
        detail: String,
        /// Examples processed before it.
        units: u64,
    },
    /// A problem of this machine: not committed.
    Run(RunError),
}

impl Fail {
    pub(crate) fn commit(exit: impl Into<String>, detail: impl Into<String>) -> Fail {
        let mut exit: String = exit.into();
        if exit.len() > MAX_EXIT {
            let mut cut = MAX_EXIT;
            while !exit.is_char_boundary(cut) {
                cut -= 1;
            }
            exit.truncate(cut);
            exit.push('…');
        }
        Fail::Commit { exit, detail: detail.into(), units: 0 }
    }
}

impl From<RunError> for Fail {
    fn from(e: RunError) -> Self {
        Fail::Run(e)
    }
}

impl From<candle_core::Error> for Fail {
    fn from(e: candle_core::Error) -> Self {
        Fail::Run(RunError::Runtime(e.to_string()))
    }
}

type Files = BTreeMap<String, Vec<u8>>;

/// One task's surroundings.
pub(crate) struct Ctx<'a> {
    pub(crate) spec: &'a TrainSpec,
    pub(crate) dataset: &'a [u8],
    pub(crate) run: String,
    pub(crate) task: &'a TaskRun,
    pub(crate) started: Instant,
    pub(crate) device: &'a Device,
}

/// Optimizer settings parsed from the spec's decimals.
#[derive(Clone, Copy, Debug)]
struct Hyper {
    lr: f64,
    wd: f64,
}

fn hyper(spec: &TrainSpec) -> Result<Hyper, Fail> {
    let parse = |what: &str, d: &cairn_types::Decimal| {
        d.as_str()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| Fail::commit(format!("invalid spec: {what} {d} is not a finite number"), ""))
    };
    Ok(Hyper {
        lr: parse("learning_rate", &spec.optimizer.learning_rate)?,
        wd: parse("weight_decay", &spec.optimizer.weight_decay)?,
    })
}

fn parse_dataset(spec: &TrainSpec, bytes: &[u8]) -> Result<(Dataset, Model), Fail> {
    let data = Dataset::parse(spec, bytes).map_err(|e| Fail::commit(format!("invalid dataset: {e}"), e))?;
    let model = Model::new(spec, &data)
        .ok_or_else(|| Fail::Run(RunError::Runtime("dataset parsed for another architecture".into())))?;
    Ok((data, model))
}

fn json(value: &impl Serialize) -> Result<Vec<u8>, Fail> {
    let mut out =
        serde_json::to_vec_pretty(value).map_err(|e| Fail::Run(RunError::Runtime(e.to_string())))?;
    out.push(b'\n');
    Ok(out)
}

/// `upstream failed: <exit>`, not nested when the upstream failure was itself inherited.
fn upstream(exit: Option<&str>) -> Fail {
    let exit = exit.unwrap_or("no exit record");
    let msg = if exit.starts_with("upstream failed: ") {
        exit.to_string()
    } else {
        format!("upstream failed: {exit}")
    };
    Fail::commit(msg, format!("a task this one reads ended with {exit:?}"))
}

impl Ctx<'_> {
    fn check_wall(&self) -> Result<(), Fail> {
        if self.started.elapsed().as_millis() > u128::from(self.task.limits.wall_ms) {
            return Err(Fail::Run(RunError::WallTimeout(self.task.limits.wall_ms)));
        }
        Ok(())
    }

    /// Input `dep-<i>`: its bytes and the bundle they encode, which must have succeeded.
    fn dep(&self, i: u32) -> Result<(Vec<u8>, OutputBundle), Fail> {
        let name = format!("dep-{i}");
        let path = self
            .task
            .inputs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| p)
            .ok_or_else(|| Fail::Run(RunError::Io(format!("the task has no {name} input"))))?;
        let bytes =
            std::fs::read(path).map_err(|e| Fail::Run(RunError::Io(format!("{}: {e}", path.display()))))?;
        let bundle = OutputBundle::decode(&bytes).map_err(|e| {
            Fail::commit(format!("invalid dependency: {name} is not an output bundle"), e.to_string())
        })?;
        if !bundle.succeeded() {
            return Err(upstream(bundle.exit()));
        }
        Ok((bytes, bundle))
    }

    /// Train `state` for `steps` steps on `part`; returns the state, the mean loss and the
    /// losses of every step.
    fn train(
        &self,
        model: Model,
        data: &Dataset,
        state: &TrainState,
        part: Part,
        steps: u32,
    ) -> Result<(TrainState, Vec<f32>), Fail> {
        train(self.spec, model, data, state, part, steps, self.device, &|| self.check_wall())
    }
}

#[allow(clippy::too_many_arguments)]
fn train(
    spec: &TrainSpec,
    model: Model,
    data: &Dataset,
    state: &TrainState,
    part: Part,
    steps: u32,
    device: &Device,
    check: &dyn Fn() -> Result<(), Fail>,
) -> Result<(TrainState, Vec<f32>), Fail> {
    let h = hyper(spec)?;
    let shard = match part {
        Part::Shard(s, _) => s,
        Part::All => 0,
    };
    let context = match model {
        Model::Gpt(g) => g.context,
        Model::Mlp(_) => 0,
    };
    let batch_size = spec.batch_size as usize;
    let mut trainer = Trainer::new(model, state, device)?;
    let mut losses = Vec::with_capacity(steps as usize);
    for _ in 0..steps {
        check()?;
        let step = trainer.step_count();
        let batch = data.batch(part, batch_size, context, &mut batch_rng(spec.seed, shard, step));
        let loss = trainer.step(&batch, h.lr, h.wd)?;
        if !loss.is_finite() {
            let units = losses.len() as u64 * u64::from(spec.batch_size);
            return Err(Fail::Commit {
                exit: format!("diverged: loss is not finite at step {}", step + 1),
                detail: format!("the training loss was {loss} at global step {}", step + 1),
                units,
            });
        }
        losses.push(loss);
    }
    Ok((trainer.state()?, losses))
}

fn mean(losses: &[f32]) -> f64 {
    if losses.is_empty() {
        0.0
    } else {
        losses.iter().map(|l| f64::from(*l)).sum::<f64>() / losses.len() as f64
    }
}

/// Held-out cross-entropy (and accuracy for classifiers) of `w`.
fn evaluate(
    model: Model,
    w: &Weights,
    data: &Dataset,
    device: &Device,
    check: &dyn Fn() -> Result<(), Fail>,
) -> Result<(f64, Option<f64>), Fail> {
    let context = match model {
        Model::Gpt(g) => g.context,
        Model::Mlp(_) => 0,
    };
    let (mut sum, mut correct, mut n) = (0f64, 0usize, 0usize);
    for b in data.eval_batches(context) {
        check()?;
        let (s, c, k) = model.eval(w, &b, device)?;
        sum += f64::from(s);
        correct += c;
        n += k;
    }
    let loss = sum / n.max(1) as f64;
    if !loss.is_finite() {
        return Err(Fail::commit("diverged: eval loss is not finite", format!("held-out loss {loss}")));
    }
    let accuracy = matches!(data, Dataset::Csv(_)).then(|| correct as f64 / n.max(1) as f64);
    Ok((loss, accuracy))
}

/// Shard `s` of `round`.
pub(crate) fn shard(ctx: &Ctx<'_>, round: u32, s: u32) -> Result<Files, Fail> {
    let spec = ctx.spec;
    let start = if round == 0 {
        None
    } else {
        let (bytes, bundle) = ctx.dep(0)?;
        let rec = super::decode_record(&bundle);
        let fits =
            rec.as_ref().is_some_and(|r| r.run == ctx.run && r.role == "aggregate" && r.round == round - 1);
        if !fits {
            return Err(Fail::commit(
                format!("invalid dependency: dep-0 is not the checkpoint of round {} of this run", round - 1),
                format!("its train.json: {rec:?}"),
            ));
        }
        let file = bundle
            .files
            .get(CHECKPOINT_FILE)
            .ok_or_else(|| "no checkpoint.safetensors".to_string())
            .and_then(|b| TensorFile::decode(b))
            .map_err(|e| Fail::commit("invalid dependency: dep-0 has no readable checkpoint", e))?;
        Some((ContentId::of(&bytes), file))
    };
    let (data, model) = parse_dataset(spec, ctx.dataset)?;
    let shapes = model.shapes();
    let (start_id, state) = match start {
        None => (ContentId::ZERO, fresh_state(model.init(spec.seed))),
        Some((id, file)) => {
            let state = TrainState::from_file(&file, &shapes).map_err(|e| {
                Fail::commit("invalid dependency: dep-0's checkpoint does not fit this model", e)
            })?;
            let expect = u64::from(round) * u64::from(spec.local_steps);
            if state.step != expect {
                return Err(Fail::commit(
                    "invalid dependency: dep-0's checkpoint is at the wrong step",
                    format!("step {}, expected {expect}", state.step),
                ));
            }
            (id, state)
        }
    };
    let (state, losses) = ctx.train(model, &data, &state, Part::Shard(s, spec.width), spec.local_steps)?;
    let record = TrainRecord {
        run: ctx.run.clone(),
        round,
        role: "shard".into(),
        shard: Some(s),
        start: Some(start_id.to_hex()),
        step: Some(state.step),
        train_loss: Some(mean(&losses)),
    };
    let mut files = Files::new();
    files.insert(STATE_FILE.into(), state.to_file().encode());
    files.insert(RECORD_FILE.into(), json(&record)?);
    files.insert(OutputBundle::EXIT.into(), b"ok".to_vec());
    Ok(files)
}

/// The aggregation of `round`.
pub(crate) fn aggregate(ctx: &Ctx<'_>, round: u32) -> Result<Files, Fail> {
    let spec = ctx.spec;
    // Pass 1, cheap: every input is a successful shard bundle of this run, this round and its
    // position, and all started from the same checkpoint at the same step.
    let mut first: Option<TrainRecord> = None;
    let mut losses = Vec::new();
    for i in 0..spec.width {
        let (_, bundle) = ctx.dep(i)?;
        let rec = super::decode_record(&bundle);
        let fits = rec.as_ref().is_some_and(|r| {
            r.run == ctx.run
                && r.role == "shard"
                && r.round == round
                && r.shard == Some(i)
                && r.train_loss.is_some_and(f64::is_finite)
        });
        let rec = match rec {
            Some(rec) if fits => rec,
            other => {
                return Err(Fail::commit(
                    format!("invalid dependency: dep-{i} is not shard {i} of round {round} of this run"),
                    format!("its train.json: {other:?}"),
                ));
            }
        };
        if let Some(f) = &first
            && (f.start != rec.start || f.step != rec.step)
        {
            return Err(Fail::commit(
                format!("invalid dependency: shards 0 and {i} did not start from the same checkpoint"),
                format!("{:?}/{:?} against {:?}/{:?}", f.start, f.step, rec.start, rec.step),
            ));
        }
        losses.push(rec.train_loss.unwrap_or_default());
        first.get_or_insert(rec);
    }
    let (data, model) = parse_dataset(spec, ctx.dataset)?;
    let shapes = model.shapes();
    let step = u64::from(round).saturating_add(1).saturating_mul(u64::from(spec.local_steps));
    // Pass 2: read the states one at a time into the running sum.
    let mut avg = Average::default();
    for i in 0..spec.width {
        ctx.check_wall()?;
        let (_, bundle) = ctx.dep(i)?;
        let state = bundle
            .files
            .get(STATE_FILE)
            .ok_or_else(|| "no state.safetensors".to_string())
            .and_then(|b| TensorFile::decode(b))
            .and_then(|f| TrainState::from_file(&f, &shapes))
            .map_err(|e| {
                Fail::commit(format!("invalid dependency: dep-{i}'s state does not fit this model"), e)
            })?;
        if state.step != step {
            return Err(Fail::commit(
                format!("invalid dependency: dep-{i}'s state is at the wrong step"),
                format!("step {}, expected {step}", state.step),
            ));
        }
        avg.add(state);
    }
    let state = avg.finish().ok_or_else(|| Fail::commit("invalid spec: no shards", ""))?;
    let weights = Weights::from_host(&state.w, ctx.device)?;
    let (eval_loss, eval_accuracy) = evaluate(model, &weights, &data, ctx.device, &|| ctx.check_wall())?;
    let metrics = Metrics {
        round,
        step,
        train_loss: losses.iter().sum::<f64>() / f64::from(spec.width),
        eval_loss,
        eval_accuracy,
        parameters: model.parameters(),
    };
    let card = ModelCard::new(&model, &data)
        .ok_or_else(|| Fail::Run(RunError::Runtime("model and dataset disagree".into())))?;
    let record = TrainRecord {
        run: ctx.run.clone(),
        round,
        role: "aggregate".into(),
        shard: None,
        start: None,
        step: Some(step),
        train_loss: None,
    };
    let mut files = Files::new();
    files.insert(CHECKPOINT_FILE.into(), state.to_file().encode());
    files.insert(MODEL_FILE.into(), json(&card)?);
    files.insert(METRICS_FILE.into(), json(&metrics)?);
    files.insert(RECORD_FILE.into(), json(&record)?);
    files.insert(OutputBundle::EXIT.into(), b"ok".to_vec());
    Ok(files)
}

/// The single-process reference (see [`super::reference_loop`]).
pub(crate) fn reference(spec: &TrainSpec, dataset: &[u8], steps: u32) -> Result<(Metrics, Vec<u8>), Fail> {
    spec.validate().map_err(|e| Fail::commit(format!("invalid spec: {e}"), e))?;
    let device = Device::Cpu;
    let (data, model) = parse_dataset(spec, dataset)?;
    let state = fresh_state(model.init(spec.seed));
    let (state, losses) = train(spec, model, &data, &state, Part::All, steps, &device, &|| Ok(()))?;
    let weights = Weights::from_host(&state.w, &device)?;
    let (eval_loss, eval_accuracy) = evaluate(model, &weights, &data, &device, &|| Ok(()))?;
    let local = spec.local_steps.max(1);
    let round = steps.saturating_sub(1) / local;
    let last_round = &losses[(round * local) as usize..];
    let metrics = Metrics {
        round,
        step: state.step,
        train_loss: mean(last_round),
        eval_loss,
        eval_accuracy,
        parameters: model.parameters(),
    };
    Ok((metrics, state.to_file().encode()))
}
