//! A two-layer perceptron (ReLU hidden layer, softmax output) run over rows of input features.
//! Weights come from a seed, so the model is part of the workload and a verifier re-derives it.

/// A dense layer.
struct Layer {
    w: Vec<f32>,
    b: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

/// xorshift64*: a tiny deterministic generator for the weights.
fn next(state: &mut u64) -> f32 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    let v = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
    (v as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

impl Layer {
    fn new(inputs: usize, outputs: usize, seed: &mut u64) -> Self {
        let scale = (2.0 / inputs as f32).sqrt();
        let w = (0..inputs * outputs).map(|_| next(seed) * scale).collect();
        let b = (0..outputs).map(|_| next(seed) * 0.01).collect();
        Layer { w, b, inputs, outputs }
    }

    fn forward(&self, x: &[f32], relu: bool) -> Vec<f32> {
        (0..self.outputs)
            .map(|o| {
                let row = &self.w[o * self.inputs..(o + 1) * self.inputs];
                let mut acc = self.b[o];
                for (a, b) in row.iter().zip(x) {
                    acc += a * b;
                }
                if relu { acc.max(0.0) } else { acc }
            })
            .collect()
    }
}

/// Run the network (`features → hidden → classes`, weights from `seed`) over `rows`; returns
/// each row's class probabilities.
pub fn infer(rows: &[Vec<f32>], features: usize, hidden: usize, classes: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut s = seed | 1;
    let l1 = Layer::new(features, hidden, &mut s);
    let l2 = Layer::new(hidden, classes, &mut s);
    rows.iter()
        .map(|x| {
            let logits = l2.forward(&l1.forward(x, true), false);
            let max = logits.iter().copied().fold(f32::MIN, f32::max);
            let exp: Vec<f32> = logits.iter().map(|v| (v - max).exp()).collect();
            let sum: f32 = exp.iter().sum();
            exp.iter().map(|v| v / sum).collect()
        })
        .collect()
}

/// Parse CSV rows of numbers (blank lines ignored).
pub fn parse_csv(text: &str) -> Result<Vec<Vec<f32>>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            l.split(',')
                .map(|v| {
                    v.trim().parse::<f32>().map_err(|_| format!("line {}: {v:?} is not a number", i + 1))
                })
                .collect()
        })
        .collect()
}

/// Deterministic input rows for demos and benchmarks.
pub fn demo_rows(n: usize, features: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut s = seed | 1;
    (0..n).map(|_| (0..features).map(|_| next(&mut s)).collect()).collect()
}
