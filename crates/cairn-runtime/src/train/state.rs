//! Training state on the host and its file format.
//!
//! Files are [safetensors](https://huggingface.co/docs/safetensors): an 8-byte little-endian
//! header length, a JSON header, then the tensors' little-endian `f32` data. This module
//! writes them itself so that the bytes are a function of the values only: header keys in
//! sorted order (`__metadata__` first, then tensor names), data in the same order, the header
//! padded with spaces to a multiple of 8. `__metadata__` holds `format` and the optimizer
//! `step`. Any safetensors reader (candle's included) reads them.

use std::collections::BTreeMap;

use serde_json::Value;

/// The `format` written into `__metadata__`.
pub const FORMAT: &str = "cairn-train-v1";

/// Largest header accepted when reading.
const MAX_HEADER: u64 = 64 << 20;

/// A dense `f32` tensor in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// A tensor filled with `value`.
    pub fn filled(shape: &[usize], value: f32) -> Self {
        HostTensor { shape: shape.to_vec(), data: vec![value; shape.iter().product()] }
    }
}

/// Named tensors plus the optimizer step, as one safetensors file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TensorFile {
    /// Optimizer steps taken to reach these values.
    pub step: u64,
    /// Tensors by name.
    pub tensors: BTreeMap<String, HostTensor>,
}

impl TensorFile {
    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        // Written by hand (not through serde_json's map, whose key order depends on its
        // features): `__metadata__` first, then the tensors in sorted order, fixed field order.
        let mut text = format!(r#"{{"__metadata__":{{"format":"{FORMAT}","step":"{}"}}"#, self.step);
        let mut offset = 0usize;
        for (name, t) in &self.tensors {
            let end = offset + t.data.len() * 4;
            let shape: Vec<String> = t.shape.iter().map(usize::to_string).collect();
            text.push_str(&format!(
                r#",{}:{{"dtype":"F32","shape":[{}],"data_offsets":[{offset},{end}]}}"#,
                Value::String(name.clone()),
                shape.join(",")
            ));
            offset = end;
        }
        text.push('}');
        while text.len() % 8 != 0 {
            text.push(' ');
        }
        let mut out = Vec::with_capacity(8 + text.len() + offset);
        out.extend_from_slice(&(text.len() as u64).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
        for t in self.tensors.values() {
            for v in &t.data {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    /// Read a file (any safetensors file of `F32` tensors; the step defaults to 0).
    ///
    /// # Errors
    /// A message saying what is malformed.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let len_bytes: [u8; 8] =
            bytes.get(..8).and_then(|b| b.try_into().ok()).ok_or("shorter than a safetensors header")?;
        let len = u64::from_le_bytes(len_bytes);
        if len > MAX_HEADER || len > (bytes.len() as u64).saturating_sub(8) {
            return Err(format!("header length {len} does not fit the file"));
        }
        let (header, data) = bytes[8..].split_at(len as usize);
        let header: BTreeMap<String, Value> =
            serde_json::from_slice(header).map_err(|e| format!("header is not a JSON object: {e}"))?;
        let mut out = TensorFile::default();
        for (name, entry) in header {
            if name == "__metadata__" {
                if let Some(step) = entry.get("step") {
                    out.step = step
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| format!("metadata step {step} is not a number"))?;
                }
                continue;
            }
            let bad = |what: &str| format!("tensor {name:?}: {what}");
            if entry.get("dtype").and_then(Value::as_str) != Some("F32") {
                return Err(bad("dtype is not F32"));
            }
            let shape: Vec<usize> = entry
                .get("shape")
                .and_then(Value::as_array)
                .and_then(|a| a.iter().map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok())).collect())
                .ok_or_else(|| bad("bad shape"))?;
            let offsets: Vec<usize> = entry
                .get("data_offsets")
                .and_then(Value::as_array)
                .and_then(|a| a.iter().map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok())).collect())
                .filter(|o: &Vec<usize>| o.len() == 2)
                .ok_or_else(|| bad("bad data_offsets"))?;
            let (start, end) = (offsets[0], offsets[1]);
            let count =
                shape.iter().try_fold(1usize, |a, d| a.checked_mul(*d)).ok_or_else(|| bad("too large"))?;
            if start > end || end > data.len() || Some(end - start) != count.checked_mul(4) {
                return Err(bad("data_offsets do not match its shape and the file"));
            }
            let values = data[start..end]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            out.tensors.insert(name, HostTensor { shape, data: values });
        }
        Ok(out)
    }

    /// The tensors whose names start with `prefix`, with the prefix removed.
    pub fn with_prefix(&self, prefix: &str) -> BTreeMap<String, HostTensor> {
        self.tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v.clone())))
            .collect()
    }
}

/// Model weights and AdamW's moments, all keyed by parameter name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrainState {
    /// Optimizer steps taken.
    pub step: u64,
    /// Weights.
    pub w: BTreeMap<String, HostTensor>,
    /// First moments.
    pub m: BTreeMap<String, HostTensor>,
    /// Second moments.
    pub v: BTreeMap<String, HostTensor>,
}

impl TrainState {
    /// As a file: `w.<name>`, `m.<name>`, `v.<name>`.
    pub fn to_file(&self) -> TensorFile {
        let mut tensors = BTreeMap::new();
        for (prefix, map) in [("w.", &self.w), ("m.", &self.m), ("v.", &self.v)] {
            for (k, t) in map {
                tensors.insert(format!("{prefix}{k}"), t.clone());
            }
        }
        TensorFile { step: self.step, tensors }
    }

    /// From a file, checking it holds exactly `shapes` (name → dimensions) for each of the
    /// three groups.
    ///
    /// # Errors
    /// A message naming the first tensor that is missing, extra or of another shape.
    pub fn from_file(file: &TensorFile, shapes: &BTreeMap<String, Vec<usize>>) -> Result<Self, String> {
        let mut out = TrainState { step: file.step, ..TrainState::default() };
        for (prefix, map) in [("w.", &mut out.w), ("m.", &mut out.m), ("v.", &mut out.v)] {
            *map = file.with_prefix(prefix);
            check_shapes(map, shapes).map_err(|e| format!("{prefix}{e}"))?;
        }
        let known = 3 * shapes.len();
        if file.tensors.len() != known {
            return Err(format!("{} tensors, expected {known}", file.tensors.len()));
        }
        Ok(out)
    }
}

/// Check `map` holds exactly the tensors `shapes` names, with those shapes.
pub(crate) fn check_shapes(
    map: &BTreeMap<String, HostTensor>,
    shapes: &BTreeMap<String, Vec<usize>>,
) -> Result<(), String> {
    for (name, shape) in shapes {
        match map.get(name) {
            None => return Err(format!("{name} is missing")),
            Some(t) if &t.shape != shape => {
                return Err(format!("{name} has shape {:?}, expected {shape:?}", t.shape));
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = map.keys().find(|k| !shapes.contains_key(*k)) {
        return Err(format!("{extra} is not a parameter of this model"));
    }
    Ok(())
}
