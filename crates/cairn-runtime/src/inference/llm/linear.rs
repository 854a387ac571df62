//! The engine's matrix products, and which kernel each weight goes through.
//!
//! Formats candle holds wastefully (`Q5_0` widened to `Q8_0`, `Q8_0` rows padded for its tile
//! kernels) go through Cairn's own kernel for every row: decoding steps are bound by the bytes
//! they read, and with many rows (prompt passes) the kernel splits the rows among the threads
//! and keeps pace with candle's tiles. Other formats (`Q4_K`, `Q6_K`, …) stay on candle's
//! kernels. Either way a row's result depends on that row alone, never on what else is in the
//! batch, so a request gets the same bits alone or batched, and an auditor re-running it alone
//! gets them too.

use std::sync::Arc;

use candle_core::Tensor;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};

use super::load::invalid;
use crate::Result;
use crate::inference::quant::QMatrix;

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
}

impl Linear {
    pub(crate) fn new(t: Arc<QTensor>, k: usize, padded: usize) -> Result<Self> {
        let twin_single_row = cfg!(target_arch = "x86_64") && t.dtype() == GgmlDType::Q6K;
        let mm = QMatMul::from_arc(t).map_err(|e| invalid(super::super::models::one_line(e)))?;
        Ok(Linear::Candle { mm, k, padded, twin_single_row })
    }

    /// `x`: `(rows, k)`.
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        use candle_core::Module as _;
        match self {
            Linear::Own(m) => m.forward(x),
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
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        match self {
            Proj::Split(ls) => ls.iter().map(|l| l.forward(x)).collect(),
            Proj::Fused(l, sizes) => {
                let y = l.forward(x)?;
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
