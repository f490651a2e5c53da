//! Helpers shared by the CLIP parity tests: fixture paths, reading reference safetensors,
//! and comparing tensors with printed error statistics.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

pub type B = cielr_core::backend::CpuBackend;

pub fn device() -> Device<B> {
    Default::default()
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The workspace's `assets/` folder (coffee.png).
pub fn asset(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../assets")
        .join(name)
}

/// A tensor read from a reference file: shape and values (floats or integers as f64).
#[derive(Debug, Clone)]
pub struct Ref {
    pub shape: Vec<usize>,
    pub f32: Vec<f32>,
    pub i64: Vec<i64>,
}

pub fn read_refs(path: PathBuf) -> HashMap<String, Ref> {
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let (f, i) = match view.dtype() {
            Dtype::F32 => (
                data.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                vec![],
            ),
            Dtype::I64 => (
                vec![],
                data.chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
            ),
            other => panic!("unexpected dtype {other:?} for {name}"),
        };
        out.insert(
            name,
            Ref {
                shape: view.shape().to_vec(),
                f32: f,
                i64: i,
            },
        );
    }
    out
}

pub fn float_tensor<const D: usize>(r: &Ref) -> Tensor<B, D> {
    let shape: [usize; D] = r.shape.clone().try_into().expect("rank");
    Tensor::from_data(TensorData::new(r.f32.clone(), shape), &device())
}

pub fn int_tensor<const D: usize>(r: &Ref) -> Tensor<B, D, Int> {
    let shape: [usize; D] = r.shape.clone().try_into().expect("rank");
    Tensor::from_data(TensorData::new(r.i64.clone(), shape), &device())
}

/// Max absolute error and max relative error (|a - b| / max(|b|, 1e-3)).
pub fn errors(ours: &[f32], reference: &[f32]) -> (f32, f32) {
    assert_eq!(ours.len(), reference.len(), "length");
    let mut abs = 0f32;
    let mut rel = 0f32;
    for (a, b) in ours.iter().zip(reference) {
        assert!(a.is_finite(), "non-finite output");
        let d = (a - b).abs();
        abs = abs.max(d);
        rel = rel.max(d / b.abs().max(1e-3));
    }
    (abs, rel)
}

/// Compares, prints the errors, and asserts max abs error <= `tol`.
pub fn compare<const D: usize>(label: &str, ours: Tensor<B, D>, reference: &Ref, tol: f32) {
    assert_eq!(ours.dims().to_vec(), reference.shape, "{label}: shape");
    let ours: Vec<f32> = ours.into_data().iter::<f32>().collect();
    compare_slices(label, &ours, &reference.f32, tol);
}

pub fn compare_slices(label: &str, ours: &[f32], reference: &[f32], tol: f32) {
    let (abs, rel) = errors(ours, reference);
    println!(
        "{label:<48} max abs {abs:.3e}  max rel {rel:.3e}  (n = {})",
        ours.len()
    );
    assert!(abs <= tol, "{label}: max abs error {abs} > {tol}");
}
