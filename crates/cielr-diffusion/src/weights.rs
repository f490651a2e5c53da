//! Reading diffusers checkpoints with [`cielr_core::weights`]: safetensors files (one file,
//! or the shards listed in a `*.safetensors.index.json`), tensors converted to f32 (f32, f16,
//! bf16, f64 stored), and [`Weights`], a position in the tensor-name tree that builds Burn
//! layers. Every error names the tensor.

use std::path::{Path, PathBuf};

use cielr_core::weights::TensorStore;
pub use cielr_core::weights::Weights;
use serde_json::Value;

use crate::error::{DiffusionError, Result};

/// The files a diffusers model folder is searched for, in order.
const FOLDER_FILES: &[&str] = &[
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.safetensors.index.json",
    "model.safetensors",
];

/// The tensors of a safetensors checkpoint, memory-mapped.
#[derive(Debug)]
pub struct Checkpoint(TensorStore);

/// Reads and parses a JSON file.
pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| DiffusionError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    serde_json::from_str(&text)
        .map_err(|e| DiffusionError::config(path.display().to_string(), e.to_string()))
}

impl Checkpoint {
    /// Opens a checkpoint: a `.safetensors` file, a `*.safetensors.index.json` (its shards
    /// are read from the same folder), or a diffusers model folder holding
    /// `diffusion_pytorch_model.safetensors` (or its `.index.json`, or `.fp16.` variants).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let store = if path.is_dir() {
            TensorStore::open_in_dir(path, FOLDER_FILES)?
        } else {
            TensorStore::open(path)?
        };
        Ok(Checkpoint(store))
    }

    /// A checkpoint from safetensors bytes already in memory, each with a label used in error
    /// messages.
    pub fn from_buffers(buffers: Vec<(PathBuf, Vec<u8>)>) -> Result<Self> {
        Ok(Checkpoint(TensorStore::from_buffers(buffers)?))
    }

    /// The shared tensor store.
    pub fn store(&self) -> &TensorStore {
        &self.0
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.0.names()
    }

    /// Whether the checkpoint holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.0.contains(name)
    }

    /// The shape of `name`, if present.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.0.shape(name)
    }

    /// Reads `name` as f32 with any shape, returning the values and the shape.
    pub fn read_any(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let (shape, values) = self.0.read(name)?;
        Ok((values, shape))
    }

    /// Reads `name` as f32, checking that its shape is `expected`.
    pub fn read_f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        Ok(self.0.read_f32(name, expected)?)
    }

    /// The root of the tensor names, to build modules from.
    pub fn weights(&self) -> Weights<'_> {
        self.0.weights()
    }
}
