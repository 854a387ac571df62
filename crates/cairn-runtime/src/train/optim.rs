//! AdamW with its state in the open (candle-nn's keeps it private), and state averaging.
//!
//! One step at global step `t` (1-based), for every parameter `p` with gradient `g` (zero when
//! the loss does not reach it), in parameter-name order:
//!
//! ```text
//! m ← β1·m + (1−β1)·g          v ← β2·v + (1−β2)·g²
//! m̂ = m / (1−β1^t)            v̂ = v / (1−β2^t)
//! p ← p·(1 − lr·wd) − lr · m̂ / (√v̂ + ε)
//! ```
//!
//! with β1 = 0.9, β2 = 0.999, ε = 1e-8; `β^t` is computed by repeated squaring in `f64`, never
//! by `powf`, so it is the same on every machine. The moments and `t` are saved with the
//! weights and averaged with them.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor, Var};

use super::data::Batch;
use super::models::{Model, Weights};
use super::state::{HostTensor, TrainState};

/// AdamW's β1.
pub const BETA1: f64 = 0.9;
/// AdamW's β2.
pub const BETA2: f64 = 0.999;
/// AdamW's ε.
pub const EPS: f64 = 1e-8;

/// `base^exp` by repeated squaring (exactly reproducible, unlike `powf`).
pub(crate) fn powu(base: f64, mut exp: u64) -> f64 {
    let (mut acc, mut b) = (1.0f64, base);
    while exp > 0 {
        if exp & 1 == 1 {
            acc *= b;
        }
        b *= b;
        exp >>= 1;
    }
    acc
}

/// A model being trained: its parameters as candle variables plus AdamW's moments.
pub(crate) struct Trainer {
    model: Model,
    vars: BTreeMap<String, Var>,
    m: BTreeMap<String, Tensor>,
    v: BTreeMap<String, Tensor>,
    step: u64,
    device: Device,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("model", &self.model)
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

fn to_device(
    map: &BTreeMap<String, HostTensor>,
    device: &Device,
) -> candle_core::Result<BTreeMap<String, Tensor>> {
    Ok(Weights::from_host(map, device)?.0)
}

fn to_host(map: &BTreeMap<String, Tensor>) -> candle_core::Result<BTreeMap<String, HostTensor>> {
    map.iter()
        .map(|(k, t)| {
            Ok((k.clone(), HostTensor { shape: t.dims().to_vec(), data: t.flatten_all()?.to_vec1()? }))
        })
        .collect()
}

impl Trainer {
    /// Start from `state` (whose tensors match `model`'s parameters).
    pub(crate) fn new(model: Model, state: &TrainState, device: &Device) -> candle_core::Result<Self> {
        let vars = to_device(&state.w, device)?
            .into_iter()
            .map(|(k, t)| Ok((k, Var::from_tensor(&t)?)))
            .collect::<candle_core::Result<_>>()?;
        Ok(Trainer {
            model,
            vars,
            m: to_device(&state.m, device)?,
            v: to_device(&state.v, device)?,
            step: state.step,
            device: device.clone(),
        })
    }

    /// The current weights (the variables themselves, so a loss built on them has gradients).
    pub(crate) fn weights(&self) -> Weights {
        Weights(self.vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect())
    }

    /// Global optimizer steps taken.
    pub(crate) fn step_count(&self) -> u64 {
        self.step
    }

    /// One AdamW step on `batch`; returns the batch's loss before the step. A non-finite loss
    /// leaves everything unchanged (the caller stops).
    pub(crate) fn step(&mut self, batch: &Batch, lr: f64, wd: f64) -> candle_core::Result<f32> {
        let loss = self.model.loss(&self.weights(), batch, &self.device)?;
        let value = loss.to_scalar::<f32>()?;
        if !value.is_finite() {
            return Ok(value);
        }
        let grads = loss.backward()?;
        self.step += 1;
        let bc1 = 1.0 - powu(BETA1, self.step);
        let bc2 = 1.0 - powu(BETA2, self.step);
        let decay = 1.0 - lr * wd;
        for (name, var) in &mut self.vars {
            let p = var.as_tensor();
            let g = match grads.get(p) {
                Some(g) => g.detach(),
                None => p.zeros_like()?.detach(),
            };
            let (Some(m), Some(v)) = (self.m.get_mut(name), self.v.get_mut(name)) else {
                candle_core::bail!("no optimizer state for {name}");
            };
            let m_new = ((&*m * BETA1)? + (&g * (1.0 - BETA1))?)?.detach();
            let v_new = ((&*v * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?.detach();
            let m_hat = (&m_new / bc1)?;
            let v_hat = (&v_new / bc2)?;
            let update = m_hat.div(&(v_hat.sqrt()? + EPS)?)?;
            let p_new = (p.detach().affine(decay, 0.0)? - (update * lr)?)?.detach();
            *var = Var::from_tensor(&p_new)?;
            *m = m_new;
            *v = v_new;
        }
        Ok(value)
    }

    /// Weights, moments and step, on the host.
    pub(crate) fn state(&self) -> candle_core::Result<TrainState> {
        let w: BTreeMap<String, Tensor> =
            self.vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
        Ok(TrainState { step: self.step, w: to_host(&w)?, m: to_host(&self.m)?, v: to_host(&self.v)? })
    }
}

/// The zero moments of a fresh start.
pub(crate) fn fresh_state(weights: BTreeMap<String, HostTensor>) -> TrainState {
    let zeros: BTreeMap<String, HostTensor> =
        weights.iter().map(|(k, t)| (k.clone(), HostTensor::filled(&t.shape, 0.0))).collect();
    TrainState { step: 0, m: zeros.clone(), v: zeros, w: weights }
}

/// The elementwise mean of states of one shape: summed in the order they are added (the first
/// is taken as is, so a single state averages to itself bit for bit), then divided by the count,
/// all in `f32`.
#[derive(Debug, Default)]
pub(crate) struct Average {
    sum: Option<TrainState>,
    count: u32,
}

fn add_into(acc: &mut BTreeMap<String, HostTensor>, x: &BTreeMap<String, HostTensor>) {
    for (k, t) in acc.iter_mut() {
        if let Some(o) = x.get(k) {
            for (a, b) in t.data.iter_mut().zip(&o.data) {
                *a += *b;
            }
        }
    }
}

impl Average {
    /// Add a state (its shapes already checked against the model).
    pub(crate) fn add(&mut self, s: TrainState) {
        self.count += 1;
        match &mut self.sum {
            None => self.sum = Some(s),
            Some(acc) => {
                add_into(&mut acc.w, &s.w);
                add_into(&mut acc.m, &s.m);
                add_into(&mut acc.v, &s.v);
            }
        }
    }

    /// The mean, if anything was added.
    pub(crate) fn finish(self) -> Option<TrainState> {
        let n = self.count as f32;
        self.sum.map(|mut s| {
            for map in [&mut s.w, &mut s.m, &mut s.v] {
                for t in map.values_mut() {
                    for a in &mut t.data {
                        *a /= n;
                    }
                }
            }
            s
        })
    }
}
