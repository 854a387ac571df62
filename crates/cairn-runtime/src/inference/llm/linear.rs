//! The engine's matrix products, and which kernel each row goes through.
//!
//! Decoding steps (one new token per sequence) read every weight once per token and are bound
//! by bytes read, so formats candle holds wastefully (`Q5_0` widened to `Q8_0`, rows padded
//! for its tile kernels) go through Cairn's own kernel there. Prompt passes (many tokens of one
//! sequence) are bound by arithmetic, where candle's VNNI tile kernels are faster. A row's
//! kernel is fixed by its role — a row of a prompt segment, or a one-token step — never by
//! what else is in the batch, so a request gets the same bits alone or batched, and an
//! auditor re-running it alone gets them too.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Tensor};

use super::load::invalid;
use crate::Result;
use crate::inference::quant::QMatrix;

/// Which rows of a forward pass belong to prompt segments (more than one token).
pub(crate) struct Rows {
    /// Every row is a prompt row, or none is.
    all: Option<bool>,
    /// Mixed: the prompt rows, the step rows, and where each original row lands after the
    /// prompt results are followed by the step results.
    split: Option<(Tensor, Tensor, Tensor)>,
}

impl Rows {
    /// From each segment's length, in row order.
    pub(crate) fn new(lengths: &[usize], device: &Device) -> candle_core::Result<Self> {
        let prompt_rows: usize = lengths.iter().filter(|l| **l > 1).sum();
        let total: usize = lengths.iter().sum();
        if prompt_rows == 0 || prompt_rows == total {
            return Ok(Rows { all: Some(prompt_rows > 0), split: None });
        }
        let (mut prompt, mut step) = (Vec::new(), Vec::new());
        let mut row = 0u32;
        for &len in lengths {
            for _ in 0..len {
                if len > 1 {
                    prompt.push(row)
                } else {
                    step.push(row)
                }
                row += 1;
            }
        }
        let mut order = vec![0u32; total];
        for (at, r) in prompt.iter().chain(&step).enumerate() {
            order[*r as usize] = at as u32;
        }
        let t = |v: Vec<u32>| {
            let n = v.len();
            Tensor::from_vec(v, n, device)
        };
        Ok(Rows { all: None, split: Some((t(prompt)?, t(step)?, t(order)?)) })
    }

    /// Rows that are all one-token steps (the output product, which sees one row per sequence).
    pub(crate) fn steps() -> Self {
        Rows { all: Some(false), split: None }
    }

    fn apply(
        &self,
        x: &Tensor,
        prompt: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
        step: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        match (&self.all, &self.split) {
            (Some(true), _) => prompt(x),
            (Some(false), _) | (None, None) => step(x),
            (None, Some((p, s, order))) => {
                let yp = prompt(&x.index_select(p, 0)?)?;
                let ys = step(&x.index_select(s, 0)?)?;
                Tensor::cat(&[&yp, &ys], 0)?.index_select(order, 0)
            }
        }
    }
}

/// A quantized matrix product that gives each input row the same bits however many rows it
/// is given with.
pub(crate) enum Linear {
    /// Candle's product; rows may be padded past the input width.
    Candle {
        mm: QMatMul,
        k: usize,
        padded: usize,
        /// The engine runs a single row of this type through another kernel than several rows
        /// (x86 `Q6_K`: a compact dot product for one row, tiles for more); such a row is given
        /// a twin so every row takes the tiled kernel.
        twin_single_row: bool,
    },
    /// Cairn's own kernel for every row.
    Own(Arc<QMatrix>),
    /// Cairn's kernel for one-token steps, candle's for prompt rows (the same weights held
    /// twice: more memory for both speeds).
    Dual { own: Arc<QMatrix>, prompt: Box<Linear> },
}

impl Linear {
    pub(crate) fn new(t: Arc<QTensor>, k: usize, padded: usize) -> Result<Self> {
        let twin_single_row = cfg!(target_arch = "x86_64") && t.dtype() == GgmlDType::Q6K;
        let mm = QMatMul::from_arc(t).map_err(|e| invalid(super::super::models::one_line(e)))?;
        Ok(Linear::Candle { mm, k, padded, twin_single_row })
    }

    /// `x`: `(rows, k)`.
    pub(crate) fn forward(&self, x: &Tensor, rows: &Rows) -> candle_core::Result<Tensor> {
        use candle_core::Module as _;
        match self {
            Linear::Own(m) => m.forward(x),
            Linear::Dual { own, prompt } => {
                rows.apply(x, |x| prompt.forward(x, &Rows::steps()), |x| own.forward(x))
            }
            Linear::Candle { mm, k, padded, twin_single_row } => {
                let x = if padded > k {
                    x.pad_with_zeros(candle_core::D::Minus1, 0, padded - k)?
                } else {
                    x.clone()
                };
                if *twin_single_row && x.dim(0)? == 1 {
                    return mm.forward(&Tensor::cat(&[&x, &x], 0)?)?.narrow(0, 0, 1);
                }
                mm.forward(&x)
            }
        }
    }
}

/// Projections of one input: stacked into one product, or apart.
pub(crate) enum Proj {
    /// One product; the output columns of each part, in order.
    Fused(Linear, Vec<usize>),
    /// Separate products.
    Split(Vec<Linear>),
}

impl Proj {
    /// Each part's output, `(rows, n_part)`.
    pub(crate) fn forward(&self, x: &Tensor, rows: &Rows) -> candle_core::Result<Vec<Tensor>> {
        match self {
            Proj::Split(ls) => ls.iter().map(|l| l.forward(x, rows)).collect(),
            Proj::Fused(l, sizes) => {
                let y = l.forward(x, rows)?;
                let mut at = 0;
                let mut out = Vec::with_capacity(sizes.len());
                for n in sizes {
                    out.push(y.narrow(1, at, *n)?.contiguous()?);
                    at += n;
                }
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prompt rows get +100, step rows −100.
    fn roles(lengths: &[usize], x: &Tensor) -> Vec<f32> {
        let rows = Rows::new(lengths, &Device::Cpu).unwrap();
        rows.apply(x, |x| x + 100.0, |x| x - 100.0).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn mixed_rows_each_take_their_role_and_keep_their_place() {
        // Segments of 3 (prompt), 1 (step), 2 (prompt), 1 (step) tokens; row i holds i.
        let x = Tensor::from_vec((0..7).map(|i| i as f32).collect::<Vec<_>>(), (7, 1), &Device::Cpu).unwrap();
        assert_eq!(roles(&[3, 1, 2, 1], &x), vec![100.0, 101.0, 102.0, -97.0, 104.0, 105.0, -94.0]);
        let x2 = x.narrow(0, 0, 2).unwrap();
        assert_eq!(roles(&[1, 1], &x2), vec![-100.0, -99.0]);
        assert_eq!(roles(&[2], &x2), vec![100.0, 101.0]);
    }
}
