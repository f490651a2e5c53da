//! Helpers shared by the Llama parity tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use safetensors::SafeTensors;

/// Max absolute error allowed between our f32 logits and transformers'.
pub const TOLERANCE: f32 = 1e-4;

/// A fixture folder under `tests/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The reference tokens and logits written by `tools/parity/llama.py`.
pub struct Reference {
    pub input_ids: Vec<u32>,
    pub decode_ids: Vec<u32>,
    pub prefill: Vec<f32>,
    pub decode: Vec<f32>,
    pub greedy_ids: Vec<u32>,
}

/// The reference of a fixture folder (`reference.safetensors`).
pub fn reference(dir: &Path) -> Reference {
    reference_file(&dir.join("reference.safetensors"))
}

/// A reference file; tensors it lacks come back empty.
pub fn reference_file(path: &Path) -> Reference {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ints = |n: &str| -> Vec<u32> {
        st.tensor(n)
            .map(|t| t.data())
            .unwrap_or(&[])
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect()
    };
    let floats = |n: &str| -> Vec<f32> {
        st.tensor(n)
            .map(|t| t.data())
            .unwrap_or(&[])
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    Reference {
        input_ids: ints("input_ids"),
        decode_ids: ints("decode_ids"),
        prefill: floats("prefill_logits"),
        decode: floats("decode_logits"),
        greedy_ids: ints("greedy_ids"),
    }
}

/// Max absolute error and max relative error (|a - b| / max(|b|, 1e-3)).
pub fn errors(ours: &[f32], theirs: &[f32]) -> (f32, f32) {
    assert_eq!(ours.len(), theirs.len());
    ours.iter()
        .zip(theirs)
        .fold((0.0f32, 0.0f32), |(abs, rel), (a, b)| {
            let d = (a - b).abs();
            (abs.max(d), rel.max(d / b.abs().max(1e-3)))
        })
}

/// Runs the reference prompt (one prefill) and decode tokens (one at a time) through a
/// model; returns the prefill logits of every position and the logits of each decode step.
pub fn run<B: burn::tensor::backend::Backend>(
    model: &cielr_planner::llama::Llama<B>,
    r: &Reference,
) -> (Vec<f32>, Vec<f32>) {
    let mut cache = model.new_cache();
    let prefill = model
        .forward_tokens(&r.input_ids, &mut cache)
        .unwrap()
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap();
    let mut decode = Vec::new();
    for &t in &r.decode_ids {
        decode.extend(model.next_token_logits(&[t], &mut cache).unwrap());
    }
    assert_eq!(cache.len(), r.input_ids.len() + r.decode_ids.len());
    (prefill, decode)
}
