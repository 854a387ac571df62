//! Training jobs: data-parallel rounds whose every task can be audited.
//!
//! A `train` job runs `rounds` rounds. Each round is `width` shard tasks — each takes the
//! current checkpoint, runs `local_steps` optimizer steps on its own shard of the dataset and
//! commits the updated weights — then one aggregation task, which averages the shards (in shard
//! order) into the next checkpoint and evaluates it on the held-out split. Task `i` of the job
//! is round `i / (width + 1)`, slot `i % (width + 1)`; slot `width` is the aggregation. The
//! chain opens a task once the tasks it reads are committed and past their audit draw, and
//! records their outputs as its inputs, so an audit re-runs it from exactly those.
//!
//! ```
//! use cairn_types::{TrainRole, TrainSpec};
//! let t: TrainSpec = serde_yaml_ng::from_str(
//!     "model: { arch: mlp, hidden: 32 }\noptimizer: { learning_rate: 0.01 }\nrounds: 3\nwidth: 2\n",
//! ).unwrap();
//! t.validate().unwrap();
//! assert_eq!(t.tasks(), 9);
//! assert_eq!(t.role(4), (1, TrainRole::Shard(1)));
//! assert_eq!(t.role(5), (1, TrainRole::Aggregate));
//! assert_eq!(t.dependencies(5), vec![3, 4]); // round 1's shards
//! assert_eq!(t.dependencies(3), vec![2]);    // round 0's checkpoint
//! // A learning rate must be a number.
//! assert!(serde_yaml_ng::from_str::<TrainSpec>(
//!     "model: { arch: mlp, hidden: 32 }\noptimizer: { learning_rate: fast }\nrounds: 3\nwidth: 2\n",
//! ).is_err());
//! ```

use std::fmt;

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

/// Limits on training specs.
pub mod train_limits {
    /// Rounds per job.
    pub const MAX_ROUNDS: u32 = 1_000;
    /// Data-parallel width.
    pub const MAX_WIDTH: u32 = 64;
    /// Optimizer steps per shard task.
    pub const MAX_LOCAL_STEPS: u32 = 100_000;
    /// Examples (or sequences) per step.
    pub const MAX_BATCH: u32 = 4_096;
    /// Hidden units of an MLP.
    pub const MAX_HIDDEN: u32 = 8_192;
    /// Transformer layers.
    pub const MAX_LAYERS: u32 = 48;
    /// Transformer width.
    pub const MAX_D_MODEL: u32 = 4_096;
    /// Transformer context, in tokens.
    pub const MAX_CONTEXT: u32 = 4_096;
    /// Digits in a decimal hyperparameter.
    pub const MAX_DECIMAL: usize = 32;
    /// Per-task compute bound: parameters × batch × steps, in units of 10^9 (so a
    /// mistyped size fails at submit time, not after hours).
    pub const MAX_WORK_GIGA: u64 = 50_000;
}

/// A non-negative decimal number written as text (`0.001`, `3e-4`), so specs carry exactly what
/// the user wrote and chain code never handles floats. Executors parse it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize)]
pub struct Decimal(String);

impl Decimal {
    /// Parse and check the syntax: digits, an optional fraction, an optional exponent.
    ///
    /// # Errors
    /// A message naming what is wrong.
    pub fn new(text: &str) -> Result<Self, String> {
        let d = Decimal(text.trim().to_string());
        d.check()?;
        Ok(d)
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True if the value is zero (all mantissa digits are `0`).
    pub fn is_zero(&self) -> bool {
        let mantissa = self.0.split(['e', 'E']).next().unwrap_or("");
        mantissa.bytes().all(|b| b == b'0' || b == b'.')
    }

    fn check(&self) -> Result<(), String> {
        let s = self.0.as_str();
        if s.is_empty() || s.len() > train_limits::MAX_DECIMAL {
            return Err(format!("must be a decimal number of 1..={} characters", train_limits::MAX_DECIMAL));
        }
        let (mantissa, exp) = match s.find(['e', 'E']) {
            Some(at) => (&s[..at], Some(&s[at.saturating_add(1)..])),
            None => (s, None),
        };
        let (int, frac) = match mantissa.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (mantissa, None),
        };
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        let ok_mantissa = match frac {
            Some(f) => (int.is_empty() || digits(int)) && digits(f),
            None => digits(int),
        };
        let ok_exp = match exp {
            None => true,
            Some(e) => {
                let e = e.strip_prefix(['-', '+']).unwrap_or(e);
                digits(e) && e.len() <= 3
            }
        };
        if ok_mantissa && ok_exp {
            Ok(())
        } else {
            Err(format!("{s:?} is not a non-negative decimal number"))
        }
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Decimal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Decimal;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative decimal number")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Decimal, E> {
                Decimal::new(v).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Decimal, E> {
                Decimal::new(&v.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Decimal, E> {
                Decimal::new(&v.to_string()).map_err(E::custom)
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Decimal, E> {
                // Shortest text that reads back as the same value; refuses NaN, inf and negatives.
                Decimal::new(&format!("{v:?}")).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// The model a job trains.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "lowercase", deny_unknown_fields)]
#[borsh(use_discriminant = true)]
#[repr(u8)]
pub enum ModelArch {
    /// A classifier: inputs → `hidden` ReLU units → classes. The dataset is a CSV of numeric
    /// features with an integer class label last; the input and class counts come from it.
    Mlp {
        /// Hidden units.
        hidden: u32,
    } = 0,
    /// A character-level decoder-only transformer language model (pre-norm, causal attention,
    /// learned positions). The dataset is UTF-8 text; the vocabulary is its sorted characters.
    Gpt {
        /// Transformer blocks.
        layers: u32,
        /// Width of the residual stream.
        d_model: u32,
        /// Attention heads (must divide `d_model`).
        heads: u32,
        /// Context length in characters.
        context: u32,
    } = 1,
}

fn default_weight_decay() -> Decimal {
    Decimal("0".into())
}

/// Optimizer settings (AdamW, β = 0.9 / 0.999, ε = 1e-8).
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Optimizer {
    /// Step size.
    pub learning_rate: Decimal,
    /// Decoupled weight decay.
    #[serde(default = "default_weight_decay")]
    pub weight_decay: Decimal,
}

fn default_local_steps() -> u32 {
    10
}
fn default_batch() -> u32 {
    32
}

/// A training job's plan: model, optimizer and the shape of its rounds.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// Architecture and size.
    pub model: ModelArch,
    /// Optimizer and hyperparameters.
    pub optimizer: Optimizer,
    /// Rounds (each ends with a checkpoint).
    pub rounds: u32,
    /// Data-parallel width `W`: shard tasks per round.
    pub width: u32,
    /// Optimizer steps each shard task runs from the round's checkpoint.
    #[serde(default = "default_local_steps")]
    pub local_steps: u32,
    /// Examples (classifier) or sequences (language model) per step.
    #[serde(default = "default_batch")]
    pub batch_size: u32,
    /// Seed of the initial weights and the batch order.
    #[serde(default)]
    pub seed: u64,
}

/// What one task of a training job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrainRole {
    /// Local steps on shard `s` from the round's checkpoint.
    Shard(u32),
    /// Average the round's shards into the next checkpoint, then evaluate it.
    Aggregate,
}

impl TrainSpec {
    /// Tasks the job has: `rounds × (width + 1)` (saturating; [`validate`](Self::validate)
    /// bounds it).
    pub fn tasks(&self) -> u32 {
        self.rounds.saturating_mul(self.width.saturating_add(1))
    }

    /// Round and role of task `index`.
    pub fn role(&self, index: u32) -> (u32, TrainRole) {
        let per = self.width.saturating_add(1);
        let (round, slot) = (index.checked_div(per).unwrap_or(0), index.checked_rem(per).unwrap_or(0));
        if slot == self.width { (round, TrainRole::Aggregate) } else { (round, TrainRole::Shard(slot)) }
    }

    /// Index of the task with `round` and `role`.
    pub fn index(&self, round: u32, role: TrainRole) -> u32 {
        let slot = match role {
            TrainRole::Shard(s) => s,
            TrainRole::Aggregate => self.width,
        };
        round.saturating_mul(self.width.saturating_add(1)).saturating_add(slot)
    }

    /// The tasks whose outputs task `index` reads, in the order it reads them: nothing for
    /// round 0's shards, the previous round's aggregation for later shards, and the round's
    /// shards (in shard order) for an aggregation.
    pub fn dependencies(&self, index: u32) -> Vec<u32> {
        match self.role(index) {
            (0, TrainRole::Shard(_)) => Vec::new(),
            (round, TrainRole::Shard(_)) => {
                vec![self.index(round.saturating_sub(1), TrainRole::Aggregate)]
            }
            (round, TrainRole::Aggregate) => {
                (0..self.width).map(|s| self.index(round, TrainRole::Shard(s))).collect()
            }
        }
    }

    /// The tasks that read task `index`'s output.
    pub fn dependents(&self, index: u32) -> Vec<u32> {
        match self.role(index) {
            (round, TrainRole::Shard(_)) => vec![self.index(round, TrainRole::Aggregate)],
            (round, TrainRole::Aggregate) if round.saturating_add(1) < self.rounds => {
                let next = round.saturating_add(1);
                (0..self.width).map(|s| self.index(next, TrainRole::Shard(s))).collect()
            }
            _ => Vec::new(),
        }
    }

    /// Parameters of the model for a dataset of `inputs` features and `classes` classes (MLP)
    /// or `vocab` symbols (GPT; pass it as `classes`).
    pub fn parameters(&self, inputs: u64, classes: u64) -> u64 {
        match &self.model {
            ModelArch::Mlp { hidden } => {
                let h = u64::from(*hidden);
                inputs
                    .saturating_add(1)
                    .saturating_mul(h)
                    .saturating_add(h.saturating_add(1).saturating_mul(classes))
            }
            ModelArch::Gpt { layers, d_model, context, .. } => {
                let d = u64::from(*d_model);
                let per_layer = d.saturating_mul(d).saturating_mul(12).saturating_add(d.saturating_mul(13));
                let embed = classes.saturating_add(u64::from(*context)).saturating_mul(d);
                let head =
                    d.saturating_mul(classes).saturating_add(classes).saturating_add(d.saturating_mul(2));
                per_layer.saturating_mul(u64::from(*layers)).saturating_add(embed).saturating_add(head)
            }
        }
    }

    /// Check every rule that can be known without the dataset.
    ///
    /// # Errors
    /// A message naming the first broken rule.
    pub fn validate(&self) -> Result<(), String> {
        use train_limits::*;
        if self.rounds == 0 || self.rounds > MAX_ROUNDS {
            return Err(format!("train.rounds must be 1..={MAX_ROUNDS}"));
        }
        if self.width == 0 || self.width > MAX_WIDTH {
            return Err(format!("train.width must be 1..={MAX_WIDTH}"));
        }
        if self.local_steps == 0 || self.local_steps > MAX_LOCAL_STEPS {
            return Err(format!("train.local_steps must be 1..={MAX_LOCAL_STEPS}"));
        }
        if self.batch_size == 0 || self.batch_size > MAX_BATCH {
            return Err(format!("train.batch_size must be 1..={MAX_BATCH}"));
        }
        self.optimizer.learning_rate.check().map_err(|e| format!("train.optimizer.learning_rate {e}"))?;
        self.optimizer.weight_decay.check().map_err(|e| format!("train.optimizer.weight_decay {e}"))?;
        if self.optimizer.learning_rate.is_zero() {
            return Err("train.optimizer.learning_rate must be above zero".into());
        }
        // Work per sequence position (GPT) or example (MLP), with a generous dataset guess.
        let (positions, params) = match &self.model {
            ModelArch::Mlp { hidden } => {
                if *hidden == 0 || *hidden > MAX_HIDDEN {
                    return Err(format!("train.model.hidden must be 1..={MAX_HIDDEN}"));
                }
                (1, self.parameters(1_024, 1_000))
            }
            ModelArch::Gpt { layers, d_model, heads, context } => {
                if *layers == 0 || *layers > MAX_LAYERS {
                    return Err(format!("train.model.layers must be 1..={MAX_LAYERS}"));
                }
                if *d_model == 0 || *d_model > MAX_D_MODEL {
                    return Err(format!("train.model.d_model must be 1..={MAX_D_MODEL}"));
                }
                if *heads == 0 || d_model.checked_rem(*heads) != Some(0) {
                    return Err(format!("train.model.heads ({heads}) must divide d_model ({d_model})"));
                }
                if *context < 2 || *context > MAX_CONTEXT {
                    return Err(format!("train.model.context must be 2..={MAX_CONTEXT}"));
                }
                (u64::from(*context), self.parameters(0, 256))
            }
        };
        let work = params
            .saturating_mul(positions)
            .saturating_mul(u64::from(self.batch_size))
            .saturating_mul(u64::from(self.local_steps));
        if work / 1_000_000_000 > MAX_WORK_GIGA {
            return Err(format!(
                "one shard task would take {} × 10^9 parameter-examples (model × batch × local_steps); at most {MAX_WORK_GIGA} × 10^9",
                work / 1_000_000_000
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> Result<TrainSpec, String> {
        let t: TrainSpec = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
        t.validate()?;
        Ok(t)
    }

    const MLP: &str = "model: { arch: mlp, hidden: 32 }\noptimizer: { learning_rate: 0.01 }\n";

    #[test]
    fn decimals_take_what_people_write_and_nothing_else() {
        for ok in ["0.001", "3e-4", "1", "1.5E+2", ".5", "0"] {
            assert!(Decimal::new(ok).is_ok(), "{ok}");
        }
        for bad in ["fast", "-0.1", "1e", "1.", "nan", "inf", "", "1e1000", "0x10", "1,5"] {
            assert!(Decimal::new(bad).is_err(), "{bad}");
        }
        let lr: Optimizer = serde_yaml_ng::from_str("learning_rate: 0.001").unwrap();
        assert_eq!(lr.learning_rate.as_str(), "0.001");
        let lr: Optimizer = serde_yaml_ng::from_str("learning_rate: 3e-4").unwrap();
        assert_eq!(lr.learning_rate.as_str().parse::<f64>().unwrap().to_bits(), 3e-4f64.to_bits());
        assert!(Decimal::new("0.000").unwrap().is_zero());
        assert!(!Decimal::new("1e-9").unwrap().is_zero());
    }

    #[test]
    fn rounds_width_and_shapes_are_bounded_at_submit_time() {
        assert!(spec(&format!("{MLP}rounds: 3\nwidth: 2\n")).is_ok());
        assert!(spec(&format!("{MLP}rounds: 0\nwidth: 2\n")).unwrap_err().contains("rounds"));
        assert!(spec(&format!("{MLP}rounds: 100000\nwidth: 2\n")).unwrap_err().contains("rounds"));
        assert!(spec(&format!("{MLP}rounds: 2\nwidth: 0\n")).unwrap_err().contains("width"));
        let gpt = "model: { arch: gpt, layers: 2, d_model: 30, heads: 4, context: 32 }\noptimizer: { learning_rate: 0.003 }\nrounds: 2\nwidth: 2\n";
        assert!(spec(gpt).unwrap_err().contains("divide"));
        let lr0 = "model: { arch: mlp, hidden: 8 }\noptimizer: { learning_rate: 0 }\nrounds: 1\nwidth: 1\n";
        assert!(spec(lr0).unwrap_err().contains("above zero"));
        let huge = "model: { arch: gpt, layers: 48, d_model: 4096, heads: 32, context: 4096 }\noptimizer: { learning_rate: 0.001 }\nrounds: 1\nwidth: 1\nbatch_size: 4096\nlocal_steps: 100000\n";
        assert!(spec(huge).unwrap_err().contains("parameter-examples"));
        assert!(
            serde_yaml_ng::from_str::<TrainSpec>(&format!("{MLP}rounds: 1\nwidth: 1\nepochs: 3\n")).is_err()
        );
    }

    #[test]
    fn every_task_reads_exactly_the_round_before_it() {
        let t = spec(&format!("{MLP}rounds: 3\nwidth: 2\n")).unwrap();
        assert_eq!(t.tasks(), 9);
        let mut opened = vec![false; 9];
        // Every dependency comes earlier, and every dependent lists it back.
        for i in 0..t.tasks() {
            for d in t.dependencies(i) {
                assert!(d < i);
                assert!(t.dependents(d).contains(&i), "{d} → {i}");
            }
            if t.dependencies(i).is_empty() {
                opened[i as usize] = true;
            }
        }
        assert_eq!(opened, [true, true, false, false, false, false, false, false, false]);
        assert!(t.dependents(8).is_empty(), "the last checkpoint feeds nothing");
        assert_eq!(t.role(8), (2, TrainRole::Aggregate));
        assert_eq!(t.index(2, TrainRole::Shard(1)), 7);
    }
}
