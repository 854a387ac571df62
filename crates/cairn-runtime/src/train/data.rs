//! Datasets: the two formats, the held-out split, the shards and the deterministic sampler.
//!
//! - **CSV** (the MLP's): every non-empty line is numeric features then an integer class label
//!   last (scikit-learn's `digits.csv` as is: labels may be written `3` or `3.0e+00`). All rows
//!   have the same column count; labels are `0..=255`; classes = the largest label + 1. Each
//!   feature is divided by its column's largest absolute value over the whole file (1 where a
//!   column is all zero), so inputs lie in `[-1, 1]`; [`Csv::scale`] is written into `model.json`.
//! - **Text** (the GPT's): UTF-8; the vocabulary is the sorted distinct characters (at most
//!   [`MAX_VOCAB`]); tokens are character indices.
//!
//! The held-out split is the last 10% of rows (at least one) or of characters (at least
//! `context + 1`). Training row `i` belongs to shard `i % W`; training text is cut into `W`
//! contiguous pieces of `⌊len / W⌋` characters (the remainder is unused), each of which must
//! hold a full window of `context + 1` characters.

use cairn_types::{ModelArch, TrainSpec, train_limits};

/// Most distinct characters a text dataset may have.
pub const MAX_VOCAB: usize = 512;

/// A reason the dataset does not fit the job: committed as `invalid dataset: <reason>`.
pub(crate) type Invalid = String;

/// A SplitMix64 generator: tiny, fast and the same everywhere.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// A generator keyed by a purpose and some numbers (BLAKE3 of them, so streams for
    /// different keys are unrelated).
    pub fn keyed(purpose: &str, parts: &[&[u8]]) -> Self {
        let mut h = blake3::Hasher::new_derive_key("cairn train rng v1");
        h.update(&(purpose.len() as u64).to_le_bytes());
        h.update(purpose.as_bytes());
        for p in parts {
            h.update(&(p.len() as u64).to_le_bytes());
            h.update(p);
        }
        let mut s = [0u8; 8];
        s.copy_from_slice(&h.finalize().as_bytes()[..8]);
        SplitMix64(u64::from_le_bytes(s))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`), by multiply-shift.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A uniform `f32` in `[0, 1)` with 24 random bits.
    pub fn unit_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / 16_777_216.0
    }
}

/// The sampler of one optimizer step: keyed by the job's seed, the shard and the global step
/// (the round is implied by the step), so a `W = 1` job and [`super::reference_loop`] draw the
/// same batches.
pub(crate) fn batch_rng(seed: u64, shard: u32, step: u64) -> SplitMix64 {
    SplitMix64::keyed("batch", &[&seed.to_le_bytes(), &shard.to_le_bytes(), &step.to_le_bytes()])
}

/// A classification table.
#[derive(Clone, Debug)]
pub struct Csv {
    /// Features per row.
    pub n_inputs: usize,
    /// Classes (largest label + 1).
    pub n_classes: usize,
    /// What each feature column was divided by.
    pub scale: Vec<f32>,
    /// Scaled features, row-major.
    pub features: Vec<f32>,
    /// Labels.
    pub labels: Vec<u32>,
    /// Rows `0..n_train` train; the rest are held out.
    pub n_train: usize,
}

/// A character-level corpus.
#[derive(Clone, Debug)]
pub struct Text {
    /// Sorted distinct characters.
    pub vocab: Vec<char>,
    /// Character indices.
    pub tokens: Vec<u32>,
    /// Tokens `0..n_train` train; the rest are held out.
    pub n_train: usize,
}

/// A parsed dataset.
#[derive(Clone, Debug)]
pub enum Dataset {
    /// For an MLP.
    Csv(Csv),
    /// For a GPT.
    Text(Text),
}

/// Rows (or windows) of one shard, or of the whole training split.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Part {
    /// Shard `s` of `w`.
    Shard(u32, u32),
    /// Every training row / the whole training text.
    All,
}

/// One batch, ready for the model.
#[derive(Clone, Debug)]
pub(crate) enum Batch {
    /// `rows × n_inputs` features and `rows` labels.
    Rows { x: Vec<f32>, y: Vec<u32>, rows: usize },
    /// `seqs × len` input tokens and the same number of targets (shifted by one).
    Windows { x: Vec<u32>, y: Vec<u32>, seqs: usize, len: usize },
}

impl Dataset {
    /// Parse `bytes` in the format `spec`'s architecture reads, and check the splits fit.
    ///
    /// # Errors
    /// Why the dataset does not fit the job (committed as `invalid dataset: <reason>`).
    pub fn parse(spec: &TrainSpec, bytes: &[u8]) -> Result<Dataset, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 text ({e})"))?;
        let width = spec.width as usize;
        let ds = match &spec.model {
            ModelArch::Mlp { .. } => Dataset::Csv(parse_csv(text, width)?),
            ModelArch::Gpt { context, .. } => Dataset::Text(parse_text(text, width, *context as usize)?),
        };
        let (inputs, classes) = match &ds {
            Dataset::Csv(c) => (c.n_inputs as u64, c.n_classes as u64),
            Dataset::Text(t) => (0, t.vocab.len() as u64),
        };
        let positions = match spec.model {
            ModelArch::Mlp { .. } => 1,
            ModelArch::Gpt { context, .. } => u64::from(context),
        };
        let work = spec
            .parameters(inputs, classes)
            .saturating_mul(positions)
            .saturating_mul(u64::from(spec.batch_size))
            .saturating_mul(u64::from(spec.local_steps));
        if work / 1_000_000_000 > train_limits::MAX_WORK_GIGA {
            return Err(format!(
                "with this dataset one shard task would take {} × 10^9 parameter-examples; at most {} × 10^9",
                work / 1_000_000_000,
                train_limits::MAX_WORK_GIGA
            ));
        }
        Ok(ds)
    }

    /// Draw the batch of one optimizer step from `part`.
    pub(crate) fn batch(&self, part: Part, batch_size: usize, context: usize, rng: &mut SplitMix64) -> Batch {
        match self {
            Dataset::Csv(c) => {
                // Row `first + k * stride` for k in 0..count (parse checked every shard has one).
                let (first, stride) = match part {
                    Part::All => (0, 1),
                    Part::Shard(s, w) => (s as usize, w.max(1) as usize),
                };
                let count = (c.n_train - first).div_ceil(stride);
                let mut x = Vec::with_capacity(batch_size * c.n_inputs);
                let mut y = Vec::with_capacity(batch_size);
                for _ in 0..batch_size {
                    let r = first + rng.below(count as u64) as usize * stride;
                    x.extend_from_slice(&c.features[r * c.n_inputs..(r + 1) * c.n_inputs]);
                    y.push(c.labels[r]);
                }
                Batch::Rows { x, y, rows: batch_size }
            }
            Dataset::Text(t) => {
                let (lo, len) = match part {
                    Part::All => (0, t.n_train),
                    Part::Shard(s, w) => {
                        let piece = t.n_train / w.max(1) as usize;
                        (s as usize * piece, piece)
                    }
                };
                let starts = (len - context) as u64; // parse checked len ≥ context + 1
                let mut x = Vec::with_capacity(batch_size * context);
                let mut y = Vec::with_capacity(batch_size * context);
                for _ in 0..batch_size {
                    let at = lo + rng.below(starts) as usize;
                    x.extend_from_slice(&t.tokens[at..at + context]);
                    y.extend_from_slice(&t.tokens[at + 1..at + 1 + context]);
                }
                Batch::Windows { x, y, seqs: batch_size, len: context }
            }
        }
    }

    /// The held-out split as fixed batches: all held-out rows in chunks of 256, or at most 64
    /// evenly spaced windows of the held-out text in chunks of 16.
    pub(crate) fn eval_batches(&self, context: usize) -> Vec<Batch> {
        match self {
            Dataset::Csv(c) => {
                let rows: Vec<usize> = (c.n_train..c.labels.len()).collect();
                rows.chunks(256)
                    .map(|chunk| Batch::Rows {
                        x: chunk
                            .iter()
                            .flat_map(|&r| c.features[r * c.n_inputs..(r + 1) * c.n_inputs].iter().copied())
                            .collect(),
                        y: chunk.iter().map(|&r| c.labels[r]).collect(),
                        rows: chunk.len(),
                    })
                    .collect()
            }
            Dataset::Text(t) => {
                let held = &t.tokens[t.n_train..];
                let starts = held.len() - context; // ≥ 1
                let k = starts.min(64);
                let offsets: Vec<usize> =
                    (0..k).map(|i| if k == 1 { 0 } else { i * (starts - 1) / (k - 1) }).collect();
                offsets
                    .chunks(16)
                    .map(|chunk| Batch::Windows {
                        x: chunk.iter().flat_map(|&o| held[o..o + context].iter().copied()).collect(),
                        y: chunk.iter().flat_map(|&o| held[o + 1..o + 1 + context].iter().copied()).collect(),
                        seqs: chunk.len(),
                        len: context,
                    })
                    .collect()
            }
        }
    }
}

fn short(field: &str) -> String {
    let mut s: String = field.chars().take(24).collect();
    if s.len() < field.len() {
        s.push('…');
    }
    s
}

fn parse_csv(text: &str, width: usize) -> Result<Csv, Invalid> {
    let mut columns = 0usize;
    let mut raw: Vec<f32> = Vec::new();
    let mut labels: Vec<u32> = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if columns == 0 {
            if fields.len() < 2 {
                return Err(format!("line {n} has {} column; rows need features and a label", fields.len()));
            }
            columns = fields.len();
        } else if fields.len() != columns {
            return Err(format!("line {n} has {} columns, expected {columns}", fields.len()));
        }
        let (label, features) = fields.split_last().ok_or_else(|| format!("line {n} is empty"))?;
        for (j, f) in features.iter().enumerate() {
            match f.parse::<f32>() {
                Ok(v) if v.is_finite() => raw.push(v),
                _ => return Err(format!("line {n} column {}: {:?} is not a finite number", j + 1, short(f))),
            }
        }
        let l = label
            .parse::<f64>()
            .ok()
            .filter(|l| l.is_finite() && l.fract() == 0.0 && (0.0..=255.0).contains(l));
        match l {
            Some(l) => labels.push(l as u32),
            None => {
                return Err(format!("line {n}: label {:?} is not an integer class 0..=255", short(label)));
            }
        }
    }
    if labels.is_empty() {
        return Err("no rows".into());
    }
    let n_inputs = columns - 1;
    let rows = labels.len();
    let n_eval = (rows / 10).max(1);
    let n_train = rows.saturating_sub(n_eval);
    if n_train < width {
        return Err(format!(
            "{n_train} training rows for {width} shards (the last {n_eval} of {rows} rows are held out)"
        ));
    }
    let mut scale = vec![0f32; n_inputs];
    for row in raw.chunks(n_inputs) {
        for (s, v) in scale.iter_mut().zip(row) {
            *s = s.max(v.abs());
        }
    }
    for s in &mut scale {
        if *s == 0.0 {
            *s = 1.0;
        }
    }
    let features = raw.chunks(n_inputs).flat_map(|row| row.iter().zip(&scale).map(|(v, s)| v / s)).collect();
    let n_classes = labels.iter().max().map_or(1, |m| *m as usize + 1);
    Ok(Csv { n_inputs, n_classes, scale, features, labels, n_train })
}

fn parse_text(text: &str, width: usize, context: usize) -> Result<Text, Invalid> {
    let chars: Vec<char> = text.chars().collect();
    let mut vocab = chars.clone();
    vocab.sort_unstable();
    vocab.dedup();
    if vocab.len() > MAX_VOCAB {
        return Err(format!("{} distinct characters; at most {MAX_VOCAB}", vocab.len()));
    }
    let tokens: Vec<u32> = chars.iter().map(|c| vocab.binary_search(c).map_or(0, |i| i as u32)).collect();
    let n = tokens.len();
    let n_eval = (n / 10).max(context + 1);
    let n_train = n.saturating_sub(n_eval);
    let piece = n_train / width.max(1);
    if piece < context + 1 {
        return Err(format!(
            "{n} characters leave {n_train} to train on ({n_eval} held out): each of the {width} shards would hold {piece}, fewer than context + 1 = {}",
            context + 1
        ));
    }
    Ok(Text { vocab, tokens, n_train })
}
