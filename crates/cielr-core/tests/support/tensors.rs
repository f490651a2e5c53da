//! Building CPU-backend tensors from values and reading them back as f32 (shared by the CPU
//! kernel tests through `#[path]`).

use burn::tensor::{Tensor, TensorData};
use cielr_core::backend::CpuBackend as B;

/// A tensor of `shape` holding `data` (row-major).
pub fn tensor<const D: usize>(data: Vec<f32>, shape: [usize; D]) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(data, shape), &Default::default())
}

/// The values of `t` as f32, whatever its float dtype.
pub fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    cielr_core::backend::read_f32(t).expect("float data")
}
