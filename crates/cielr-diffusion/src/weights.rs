//! Reading diffusers checkpoints: safetensors files (one file, or the shards listed in a
//! `*.safetensors.index.json`), tensors converted to f32 (f32, f16, bf16, f64 stored), and
//! [`Weights`], a position in the tensor-name tree that builds Burn layers (candle's
//! `VarBuilder` idea). Every error names the tensor.

use std::collections::HashMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig, Linear, PaddingConfig2d};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;
use serde_json::Value;

use crate::error::{DiffusionError, Result};

struct CheckpointFile {
    path: PathBuf,
    bytes: Vec<u8>,
    data_start: usize,
    metadata: Metadata,
}

/// The tensors of a safetensors checkpoint, read into memory.
pub struct Checkpoint {
    files: Vec<CheckpointFile>,
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("files", &self.describe())
            .field("tensors", &self.index.len())
            .finish()
    }
}

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
        if path.is_dir() {
            for name in [
                "diffusion_pytorch_model.safetensors",
                "diffusion_pytorch_model.safetensors.index.json",
                "diffusion_pytorch_model.fp16.safetensors",
                "diffusion_pytorch_model.fp16.safetensors.index.json",
                "model.safetensors",
            ] {
                let p = path.join(name);
                if p.is_file() {
                    return Self::open(p);
                }
            }
            return Err(DiffusionError::Io {
                path: path.display().to_string(),
                message: "no diffusion_pytorch_model.safetensors (or .index.json, or .fp16 \
                          variant) in this folder"
                    .into(),
            });
        }
        if path.extension().is_some_and(|e| e == "json") {
            let index = read_json(path)?;
            let map = index
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| {
                    DiffusionError::config(path.display().to_string(), "no weight_map")
                })?;
            let dir = path.parent().unwrap_or(Path::new("."));
            let mut shards: Vec<PathBuf> = Vec::new();
            for file in map.values() {
                let name = file.as_str().ok_or_else(|| {
                    DiffusionError::config(
                        path.display().to_string(),
                        "weight_map values must be file names",
                    )
                })?;
                let p = dir.join(name);
                if !shards.contains(&p) {
                    shards.push(p);
                }
            }
            let mut buffers = Vec::new();
            for p in shards {
                buffers.push((p.clone(), read_bytes(&p)?));
            }
            return Self::from_buffers(buffers);
        }
        Self::from_buffers(vec![(path.to_path_buf(), read_bytes(path)?)])
    }

    /// A checkpoint from safetensors bytes already in memory, each with a label used in error
    /// messages.
    pub fn from_buffers(buffers: Vec<(PathBuf, Vec<u8>)>) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for (i, (path, bytes)) in buffers.into_iter().enumerate() {
            let (n, metadata) =
                SafeTensors::read_metadata(&bytes).map_err(|e| DiffusionError::Safetensors {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
            for name in metadata.tensors().keys() {
                index.insert(name.clone(), i);
            }
            files.push(CheckpointFile {
                path,
                bytes,
                data_start: 8 + n,
                metadata,
            });
        }
        Ok(Checkpoint { files, index })
    }

    fn describe(&self) -> String {
        self.files
            .iter()
            .map(|f| f.path.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.index.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Whether the checkpoint holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The shape of `name`, if present.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let f = &self.files[*self.index.get(name)?];
        f.metadata.info(name).map(|i| i.shape.clone())
    }

    /// Reads `name` as f32 with any shape, returning the values and the shape.
    pub fn read_any(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let missing = || DiffusionError::MissingTensor {
            name: name.to_string(),
            checkpoint: self.describe(),
        };
        let file = &self.files[*self.index.get(name).ok_or_else(missing)?];
        let info = file.metadata.info(name).ok_or_else(missing)?;
        let count: usize = info.shape.iter().product();
        let (start, end) = info.data_offsets;
        let bytes = file
            .bytes
            .get(file.data_start + start..file.data_start + end)
            .ok_or_else(|| DiffusionError::Safetensors {
                path: file.path.display().to_string(),
                message: format!("data of `{name}` lies outside the file"),
            })?;
        let width = match info.dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::F64 => 8,
            other => {
                return Err(DiffusionError::TensorDtype {
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        if bytes.len() != count * width {
            return Err(DiffusionError::Safetensors {
                path: file.path.display().to_string(),
                message: format!(
                    "`{name}` has {} bytes for {count} {:?} values",
                    bytes.len(),
                    info.dtype
                ),
            });
        }
        let values = match info.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            _ => bytes
                .chunks_exact(8)
                .map(|b| {
                    f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
                })
                .collect(),
        };
        Ok((values, info.shape.clone()))
    }

    /// Reads `name` as f32, checking that its shape is `expected`.
    pub fn read_f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        if let Some(actual) = self.shape(name) {
            if actual != expected {
                return Err(DiffusionError::TensorShape {
                    name: name.to_string(),
                    expected: expected.to_vec(),
                    actual,
                });
            }
        }
        Ok(self.read_any(name)?.0)
    }

    /// The root of the tensor names, to build modules from.
    pub fn weights(&self) -> Weights<'_> {
        Weights {
            checkpoint: self,
            prefix: String::new(),
        }
    }
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| DiffusionError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// A position in a checkpoint's name tree: [`Weights::pp`] descends, the typed readers build
/// Burn layers from the tensors below, in torch's layouts.
#[derive(Clone)]
pub struct Weights<'a> {
    checkpoint: &'a Checkpoint,
    prefix: String,
}

impl<'a> Weights<'a> {
    /// The sub-tree `prefix.name`.
    pub fn pp(&self, name: impl Display) -> Weights<'a> {
        Weights {
            checkpoint: self.checkpoint,
            prefix: self.name(name),
        }
    }

    /// The full name of `leaf` here.
    pub fn name(&self, leaf: impl Display) -> String {
        if self.prefix.is_empty() {
            leaf.to_string()
        } else {
            format!("{}.{leaf}", self.prefix)
        }
    }

    /// Whether the tensor `leaf` exists here.
    pub fn contains(&self, leaf: impl Display) -> bool {
        self.checkpoint.contains(&self.name(leaf))
    }

    /// Reads `leaf` with the given shape.
    pub fn tensor<B: Backend, const D: usize>(
        &self,
        leaf: &str,
        shape: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>> {
        let data = self.checkpoint.read_f32(&self.name(leaf), &shape)?;
        Ok(Tensor::from_data(TensorData::new(data, shape), device))
    }

    /// `nn.Linear(d_in, d_out)`: torch's `[d_out, d_in]` weight (a `[d_out, d_in, 1, 1]` 1x1
    /// convolution weight, as in original LDM checkpoints, is accepted too), transposed to
    /// Burn's `[d_in, d_out]`.
    pub fn linear<B: Backend>(
        &self,
        d_in: usize,
        d_out: usize,
        bias: bool,
        device: &B::Device,
    ) -> Result<Linear<B>> {
        let name = self.name("weight");
        let w = match self.checkpoint.shape(&name) {
            Some(s) if s == [d_out, d_in, 1, 1] => self.checkpoint.read_any(&name)?.0,
            _ => self.checkpoint.read_f32(&name, &[d_out, d_in])?,
        };
        let mut t = vec![0f32; w.len()];
        for o in 0..d_out {
            for i in 0..d_in {
                t[i * d_out + o] = w[o * d_in + i];
            }
        }
        let weight = Tensor::from_data(TensorData::new(t, [d_in, d_out]), device);
        let bias = if bias {
            Some(Param::from_tensor(self.tensor("bias", [d_out], device)?))
        } else {
            None
        };
        Ok(Linear {
            weight: Param::from_tensor(weight),
            bias,
        })
    }

    /// `nn.Conv2d(c_in, c_out, k, stride, padding)` with a bias; `padding` is
    /// `(top, left, bottom, right)`.
    pub fn conv2d<B: Backend>(
        &self,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: (usize, usize, usize, usize),
        device: &B::Device,
    ) -> Result<Conv2d<B>> {
        let mut conv = Conv2dConfig::new([c_in, c_out], [kernel, kernel])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(
                padding.0, padding.1, padding.2, padding.3,
            ))
            .with_bias(false)
            .init(device);
        conv.weight =
            Param::from_tensor(self.tensor("weight", [c_out, c_in, kernel, kernel], device)?);
        conv.bias = Some(Param::from_tensor(self.tensor("bias", [c_out], device)?));
        Ok(conv)
    }

    /// `nn.GroupNorm(groups, channels, eps)` with its affine weight and bias.
    pub fn group_norm<B: Backend>(
        &self,
        groups: usize,
        channels: usize,
        eps: f64,
        device: &B::Device,
    ) -> Result<GroupNorm<B>> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            return Err(DiffusionError::config(
                self.prefix.clone(),
                format!("{channels} channels cannot be split into {groups} groups"),
            ));
        }
        let mut gn = GroupNormConfig::new(groups, channels)
            .with_epsilon(eps)
            .with_affine(false)
            .init(device);
        gn.gamma = Some(Param::from_tensor(self.tensor(
            "weight",
            [channels],
            device,
        )?));
        gn.beta = Some(Param::from_tensor(self.tensor(
            "bias",
            [channels],
            device,
        )?));
        gn.affine = true;
        Ok(gn)
    }

    /// `nn.LayerNorm(d, eps)` with its affine weight and bias.
    pub fn layer_norm<B: Backend>(
        &self,
        d: usize,
        eps: f64,
        device: &B::Device,
    ) -> Result<LayerNorm<B>> {
        let mut ln = LayerNormConfig::new(d).with_epsilon(eps).init(device);
        ln.gamma = Param::from_tensor(self.tensor("weight", [d], device)?);
        ln.beta = Some(Param::from_tensor(self.tensor("bias", [d], device)?));
        Ok(ln)
    }
}
