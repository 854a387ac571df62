//! What an audit concludes when it compares a worker's inference results with its own re-run:
//! bit for bit within an instruction-set class, a tolerance across classes that can only
//! escalate.

use super::ResultLine;

/// What an audit concludes from two runs of the same requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every result is bit-identical.
    Match,
    /// Different instruction-set classes; every difference is within tolerance. Accept.
    Tolerated,
    /// Different classes and a difference past tolerance (or a GPU run): re-run on the
    /// worker's class to decide. Never grounds for slashing by itself.
    Escalate,
    /// Same class, different bits: the deterministic mode was not honoured.
    Mismatch,
}

/// Cosine similarity two embeddings must reach across instruction-set classes.
pub const COSINE_TOLERANCE: f64 = 0.9999;

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        ab += f64::from(*x) * f64::from(*y);
        aa += f64::from(*x) * f64::from(*x);
        bb += f64::from(*y) * f64::from(*y);
    }
    if aa == 0.0 || bb == 0.0 { if aa == bb { 1.0 } else { 0.0 } } else { ab / (aa.sqrt() * bb.sqrt()) }
}

fn within_tolerance(a: &ResultLine, b: &ResultLine) -> bool {
    match (&a.embeddings, &b.embeddings) {
        (Some(x), Some(y)) => {
            x.len() == y.len()
                && x.iter().zip(y).all(|(u, v)| u.len() == v.len() && cosine(u, v) >= COSINE_TOLERANCE)
        }
        // Generated text has no meaningful tolerance: one flipped near-tie changes the rest.
        _ => a.token_ids == b.token_ids && a.error == b.error,
    }
}

/// Compare a worker's results with an auditor's re-run.
pub fn compare(
    worker: &[ResultLine],
    worker_isa: &str,
    auditor: &[ResultLine],
    auditor_isa: &str,
) -> Verdict {
    let same_shape = worker.len() == auditor.len()
        && worker.iter().zip(auditor).all(|(a, b)| a.index == b.index && a.custom_id == b.custom_id);
    let identical = same_shape && worker == auditor;
    let same_class = worker_isa == auditor_isa && !worker_isa.starts_with("gpu:");
    if identical {
        return Verdict::Match;
    }
    if same_class {
        return Verdict::Mismatch;
    }
    if same_shape && worker.iter().zip(auditor).all(|(a, b)| within_tolerance(a, b)) {
        Verdict::Tolerated
    } else {
        Verdict::Escalate
    }
}
