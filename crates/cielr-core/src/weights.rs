//! Weight loading shared by the model crates: safetensors checkpoints (one file, or the
//! shards listed in a `*.safetensors.index.json`, or a folder holding either), memory-mapped,
//! with f32, f16, bf16 and f64 tensors converted to f32; and [`Weights`], a position in the
//! tensor-name tree that builds Burn layers in torch's layouts (candle's `VarBuilder` idea).
//!
//! Files are checked before anything is allocated from them: the header length against the
//! file size, every tensor's data offsets against the data that follows the header, and the
//! byte count against the shape and dtype. Every error about a tensor names it; the model
//! crates convert [`WeightsError`] into their own error types.
//!
//! Model-specific name mapping (HuggingFace, diffusers, llama.cpp names) stays with each model.

use std::collections::HashMap;
use std::fmt::Display;
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{
    Embedding, GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig, Linear, PaddingConfig2d,
};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;
use serde_json::Value;

/// What can go wrong reading a checkpoint or building a layer from it.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// A file could not be opened or read (or a folder holds no checkpoint).
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A `*.safetensors.index.json` is not valid JSON.
    #[error("JSON error in {path}: {source}")]
    Json {
        /// The index file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// An index file or a layer's parameters are malformed (no `weight_map`, a shard name that
    /// leaves the folder, channels that cannot be split into groups).
    #[error("{context}: {message}")]
    Config {
        /// The file or the tensor-name prefix.
        context: String,
        /// What is wrong.
        message: String,
    },
    /// A safetensors file is malformed (bad header, data outside the file).
    #[error("safetensors file {path}: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A tensor is not in the checkpoint.
    #[error("tensor `{name}` is missing from the checkpoint {checkpoint}")]
    MissingTensor {
        /// The tensor's full name.
        name: String,
        /// The checkpoint's file(s).
        checkpoint: String,
    },
    /// A tensor has another shape than expected.
    #[error("tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    TensorShape {
        /// The tensor's full name.
        name: String,
        /// The shape expected.
        expected: Vec<usize>,
        /// The shape in the checkpoint.
        actual: Vec<usize>,
    },
    /// A tensor is stored in a dtype that is not converted to f32.
    #[error("tensor `{name}` has unsupported dtype {dtype} (supported: F32, F16, BF16, F64)")]
    TensorDtype {
        /// The tensor's full name.
        name: String,
        /// The dtype in the checkpoint.
        dtype: String,
    },
}

/// Result alias for [`weights`](self).
pub type Result<T, E = WeightsError> = std::result::Result<T, E>;

/// The files a folder is searched for by [`TensorStore::open`], in order.
pub const DEFAULT_FILES: &[&str] = &["model.safetensors", "model.safetensors.index.json"];

enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

struct StoreFile {
    path: PathBuf,
    bytes: Bytes,
    data_start: usize,
    metadata: Metadata,
}

/// The tensors of a safetensors checkpoint (one file or several shards), addressed by name
/// and read as f32.
pub struct TensorStore {
    files: Vec<StoreFile>,
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for TensorStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorStore")
            .field("files", &self.describe())
            .field("tensors", &self.index.len())
            .finish()
    }
}

fn safetensors_err(path: &Path, message: impl Into<String>) -> WeightsError {
    WeightsError::Safetensors {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Byte width of the dtypes read as f32.
fn dtype_width(dtype: Dtype) -> Option<usize> {
    match dtype {
        Dtype::F32 => Some(4),
        Dtype::F16 | Dtype::BF16 => Some(2),
        Dtype::F64 => Some(8),
        _ => None,
    }
}

impl TensorStore {
    /// Opens a checkpoint: a `.safetensors` file, a `*.safetensors.index.json` (its shards
    /// are read from the same folder), or a folder holding one of [`DEFAULT_FILES`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            return Self::open_in_dir(path, DEFAULT_FILES);
        }
        if path.extension().is_some_and(|e| e == "json") {
            return Self::open_index(path);
        }
        Self::open_files(&[path.to_path_buf()])
    }

    /// Opens the first of `candidates` (file names, `.safetensors` or `.index.json`) found in
    /// `dir`; an I/O "not found" error naming them when there is none.
    pub fn open_in_dir(dir: &Path, candidates: &[&str]) -> Result<Self> {
        for name in candidates {
            let p = dir.join(name);
            if p.is_file() {
                return Self::open(p);
            }
        }
        Err(WeightsError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("none of {} is in this folder", candidates.join(", ")),
            ),
        })
    }

    /// Opens the shards listed in the `weight_map` of a `*.safetensors.index.json`; shard
    /// names must be plain file names in the index's folder.
    pub fn open_index(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| WeightsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let index: Value = serde_json::from_str(&text).map_err(|source| WeightsError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let config_err = |message: String| WeightsError::Config {
            context: path.display().to_string(),
            message,
        };
        let map = index
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| config_err("no weight_map".into()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut shards: Vec<PathBuf> = Vec::new();
        for file in map.values() {
            let name = file
                .as_str()
                .ok_or_else(|| config_err("weight_map values must be file names".into()))?;
            if name.is_empty() || name.contains('/') || name.contains('\\') || name == ".." {
                return Err(config_err(format!("shard name {name:?} leaves the folder")));
            }
            let p = dir.join(name);
            if !shards.contains(&p) {
                shards.push(p);
            }
        }
        Self::open_files(&shards)
    }

    /// Opens one or more safetensors files, memory-mapped, as one set of tensors.
    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            let io = |source| WeightsError::Io {
                path: path.clone(),
                source,
            };
            let file = File::open(path).map_err(io)?;
            let len = file.metadata().map_err(io)?.len();
            if len < 8 {
                return Err(safetensors_err(
                    path,
                    format!("{len} bytes is too short for a safetensors header"),
                ));
            }
            // SAFETY: the mapping is read-only; like every memory-mapped reader we rely on the
            // checkpoint not being modified while it is open.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
            files.push((path.clone(), Bytes::Mapped(map)));
        }
        Self::from_bytes(files)
    }

    /// A checkpoint from safetensors bytes already in memory, each with a label used in error
    /// messages.
    pub fn from_buffers(buffers: Vec<(PathBuf, Vec<u8>)>) -> Result<Self> {
        Self::from_bytes(
            buffers
                .into_iter()
                .map(|(p, b)| (p, Bytes::Owned(b)))
                .collect(),
        )
    }

    fn from_bytes(buffers: Vec<(PathBuf, Bytes)>) -> Result<Self> {
        let mut files = Vec::with_capacity(buffers.len());
        let mut index = HashMap::new();
        for (i, (path, bytes)) in buffers.into_iter().enumerate() {
            // The header length is checked against the file size before the header is parsed.
            let Some(head) = bytes.get(..8) else {
                return Err(safetensors_err(
                    &path,
                    format!(
                        "{} bytes is too short for a safetensors header",
                        bytes.len()
                    ),
                ));
            };
            let n = u64::from_le_bytes(head.try_into().expect("8 bytes"));
            let available = (bytes.len() - 8) as u64;
            if n > available {
                return Err(safetensors_err(
                    &path,
                    format!("the header claims {n} bytes, but only {available} follow"),
                ));
            }
            let (n, metadata) = SafeTensors::read_metadata(&bytes)
                .map_err(|e| safetensors_err(&path, e.to_string()))?;
            let data_start = 8 + n;
            let data_len = bytes.len() - data_start.min(bytes.len());
            for (name, info) in metadata.tensors() {
                let (start, end) = info.data_offsets;
                if start > end || end > data_len {
                    return Err(safetensors_err(
                        &path,
                        format!(
                            "data of `{name}` ({start}..{end}) lies outside the file \
                             ({data_len} data bytes)"
                        ),
                    ));
                }
                index.insert(name.clone(), i);
            }
            files.push(StoreFile {
                path,
                bytes,
                data_start,
                metadata,
            });
        }
        Ok(TensorStore { files, index })
    }

    /// The checkpoint's file(s), comma-separated, for messages.
    pub fn describe(&self) -> String {
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

    /// The number of tensors.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the checkpoint holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
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

    fn missing(&self, name: &str) -> WeightsError {
        WeightsError::MissingTensor {
            name: name.to_string(),
            checkpoint: self.describe(),
        }
    }

    /// Reads `name` as f32 with any shape: `(shape, values)`.
    pub fn read(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let file = &self.files[*self.index.get(name).ok_or_else(|| self.missing(name))?];
        let info = file.metadata.info(name).ok_or_else(|| self.missing(name))?;
        let width = dtype_width(info.dtype).ok_or_else(|| WeightsError::TensorDtype {
            name: name.to_string(),
            dtype: format!("{:?}", info.dtype),
        })?;
        let (start, end) = info.data_offsets;
        let bytes = file
            .data_start
            .checked_add(start)
            .zip(file.data_start.checked_add(end))
            .and_then(|(s, e)| file.bytes.get(s..e))
            .ok_or_else(|| {
                safetensors_err(
                    &file.path,
                    format!("data of `{name}` lies outside the file"),
                )
            })?;
        let count = info
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if count.and_then(|c| c.checked_mul(width)) != Some(bytes.len()) {
            return Err(safetensors_err(
                &file.path,
                format!(
                    "`{name}` has {} bytes for shape {:?} of {:?}",
                    bytes.len(),
                    info.shape,
                    info.dtype
                ),
            ));
        }
        Ok((info.shape.clone(), to_f32(info.dtype, bytes)))
    }

    /// Reads `name` as f32, checking its shape against `expected` (an empty `expected` also
    /// accepts a one-element tensor of any rank, for scalars such as `logit_scale`).
    pub fn read_f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let actual = self.shape(name).ok_or_else(|| self.missing(name))?;
        let scalar_ok = expected.is_empty() && actual.iter().product::<usize>() == 1;
        if actual != expected && !scalar_ok {
            return Err(WeightsError::TensorShape {
                name: name.to_string(),
                expected: expected.to_vec(),
                actual,
            });
        }
        Ok(self.read(name)?.1)
    }

    /// Reads `name` as a Burn tensor of the given shape.
    pub fn tensor<B: Backend, const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>> {
        let data = self.read_f32(name, &shape)?;
        Ok(Tensor::from_data(TensorData::new(data, shape), device))
    }

    /// The root of the tensor names, to build modules from.
    pub fn weights(&self) -> Weights<'_> {
        Weights {
            store: self,
            prefix: String::new(),
        }
    }
}

/// Little-endian `bytes` of a supported `dtype` (length already checked) as f32.
fn to_f32(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    match dtype {
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
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
    }
}

/// A position in a checkpoint's name tree: [`Weights::pp`] descends, the typed readers build
/// Burn layers from the tensors below, in torch's layouts.
#[derive(Clone)]
pub struct Weights<'a> {
    store: &'a TensorStore,
    prefix: String,
}

impl std::fmt::Debug for Weights<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl<'a> Weights<'a> {
    /// The sub-tree `prefix.name`.
    pub fn pp(&self, name: impl Display) -> Weights<'a> {
        Weights {
            store: self.store,
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

    /// The prefix of this position (empty at the root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The checkpoint.
    pub fn store(&self) -> &'a TensorStore {
        self.store
    }

    /// Whether the tensor `leaf` exists here.
    pub fn contains(&self, leaf: impl Display) -> bool {
        self.store.contains(&self.name(leaf))
    }

    /// Reads `leaf` as f32, checking its shape (see [`TensorStore::read_f32`]).
    pub fn read_f32(&self, leaf: impl Display, expected: &[usize]) -> Result<Vec<f32>> {
        self.store.read_f32(&self.name(leaf), expected)
    }

    /// Reads `leaf` with the given shape.
    pub fn tensor<B: Backend, const D: usize>(
        &self,
        leaf: &str,
        shape: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>> {
        self.store.tensor(&self.name(leaf), shape, device)
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
        let w = match self.store.shape(&name) {
            Some(s) if s == [d_out, d_in, 1, 1] => self.store.read(&name)?.1,
            _ => self.store.read_f32(&name, &[d_out, d_in])?,
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
            return Err(WeightsError::Config {
                context: self.prefix.clone(),
                message: format!("{channels} channels cannot be split into {groups} groups"),
            });
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

    /// `nn.Embedding(n, d)`.
    pub fn embedding<B: Backend>(
        &self,
        n: usize,
        d: usize,
        device: &B::Device,
    ) -> Result<Embedding<B>> {
        Ok(Embedding {
            weight: Param::from_tensor(self.tensor("weight", [n, d], device)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use safetensors::tensor::TensorView;

    fn serialize(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
        let views: Vec<(&str, TensorView)> = tensors
            .iter()
            .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize(views, None).unwrap()
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cielr-weights-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn dtypes_convert_to_f32() {
        let values = [1.5f32, -0.25, 3.0e-3, 1234.0];
        let f16: Vec<u8> = values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        let bf16: Vec<u8> = values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect();
        let f64s: Vec<u8> = values
            .iter()
            .flat_map(|&v| (v as f64).to_le_bytes())
            .collect();
        let bytes = serialize(&[
            ("a", Dtype::F32, vec![2, 2], f32_bytes(&values)),
            ("b", Dtype::F16, vec![4], f16),
            ("c", Dtype::BF16, vec![1, 4], bf16),
            ("d", Dtype::F64, vec![4], f64s),
            ("e", Dtype::I32, vec![1], 7i32.to_le_bytes().to_vec()),
        ]);
        let store = TensorStore::from_buffers(vec![("mem".into(), bytes)]).unwrap();
        assert_eq!(store.names(), ["a", "b", "c", "d", "e"]);
        assert_eq!(store.read("a").unwrap(), (vec![2, 2], values.to_vec()));
        let f16s: Vec<f32> = values
            .iter()
            .map(|&v| half::f16::from_f32(v).to_f32())
            .collect();
        assert_eq!(store.read_f32("b", &[4]).unwrap(), f16s);
        let bf16s: Vec<f32> = values
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect();
        assert_eq!(store.read("c").unwrap(), (vec![1, 4], bf16s));
        assert_eq!(store.read_f32("d", &[4]).unwrap(), values.to_vec());
        let err = store.read("e").unwrap_err();
        assert!(matches!(err, WeightsError::TensorDtype { .. }), "{err}");
        assert!(err.to_string().contains("`e`"), "{err}");
        let err = store.read_f32("a", &[4]).unwrap_err();
        assert!(matches!(err, WeightsError::TensorShape { .. }), "{err}");
        let t: Tensor<CpuBackend, 2> = store
            .weights()
            .tensor("a", [2, 2], &Default::default())
            .unwrap();
        assert_eq!(t.into_data().to_vec::<f32>().unwrap(), values.to_vec());
    }

    #[test]
    fn sharded_index_and_folder_lookup() {
        let dir = temp_dir("sharded");
        let one = serialize(&[("x.weight", Dtype::F32, vec![2], f32_bytes(&[1.0, 2.0]))]);
        let two = serialize(&[("y.bias", Dtype::F32, vec![1], f32_bytes(&[3.0]))]);
        std::fs::write(dir.join("m-1.safetensors"), one).unwrap();
        std::fs::write(dir.join("m-2.safetensors"), two).unwrap();
        let index = serde_json::json!({"weight_map": {
            "x.weight": "m-1.safetensors", "y.bias": "m-2.safetensors"}});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
        let store = TensorStore::open(&dir).unwrap();
        assert_eq!(store.names(), ["x.weight", "y.bias"]);
        assert_eq!(store.read("y.bias").unwrap(), (vec![1], vec![3.0]));
        let w = store.weights().pp("x");
        assert_eq!(w.read_f32("weight", &[2]).unwrap(), [1.0, 2.0]);

        // A shard outside the folder is refused; a folder without a checkpoint is an I/O error.
        let bad = serde_json::json!({"weight_map": {"x.weight": "../m-1.safetensors"}});
        let bad_path = dir.join("bad.safetensors.index.json");
        std::fs::write(&bad_path, bad.to_string()).unwrap();
        let err = TensorStore::open(&bad_path).unwrap_err();
        assert!(matches!(err, WeightsError::Config { .. }), "{err}");
        let err = TensorStore::open_in_dir(&dir, &["nothing.safetensors"]).unwrap_err();
        assert!(matches!(err, WeightsError::Io { .. }), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn truncated_and_lying_files_are_errors() {
        let bytes = serialize(&[("t", Dtype::F32, vec![4], f32_bytes(&[1.0, 2.0, 3.0, 4.0]))]);
        // Truncated: the last tensor's data lies past the end.
        let cut = bytes[..bytes.len() - 4].to_vec();
        let err = TensorStore::from_buffers(vec![("cut".into(), cut)]).unwrap_err();
        assert!(matches!(err, WeightsError::Safetensors { .. }), "{err}");
        assert!(err.to_string().contains("cut"), "{err}");
        // A header length far beyond the file.
        let mut lying = bytes.clone();
        lying[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        let err = TensorStore::from_buffers(vec![("lying".into(), lying)]).unwrap_err();
        assert!(matches!(err, WeightsError::Safetensors { .. }), "{err}");
        // Too short to hold the header length at all, from a file.
        let dir = temp_dir("short");
        let short = dir.join("short.safetensors");
        std::fs::write(&short, b"abc").unwrap();
        let err = TensorStore::open(&short).unwrap_err();
        assert!(matches!(err, WeightsError::Safetensors { .. }), "{err}");
        // A truncated file on disk.
        let trunc = dir.join("trunc.safetensors");
        std::fs::write(&trunc, &bytes[..bytes.len() - 1]).unwrap();
        assert!(TensorStore::open(&trunc).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn missing_tensors_and_bad_layers_are_named() {
        let bytes = serialize(&[
            (
                "enc.fc.weight",
                Dtype::F32,
                vec![3, 2],
                f32_bytes(&[1., 2., 3., 4., 5., 6.]),
            ),
            (
                "enc.fc.bias",
                Dtype::F32,
                vec![3],
                f32_bytes(&[0.5, 0.0, -0.5]),
            ),
        ]);
        let store = TensorStore::from_buffers(vec![("mem.safetensors".into(), bytes)]).unwrap();
        let device = Default::default();
        let w = store.weights().pp("enc");
        let lin = w
            .pp("fc")
            .linear::<CpuBackend>(2, 3, true, &device)
            .unwrap();
        assert_eq!(
            lin.weight.val().into_data().to_vec::<f32>().unwrap(),
            [1., 3., 5., 2., 4., 6.]
        );
        let err = w
            .pp("norm")
            .layer_norm::<CpuBackend>(3, 1e-5, &device)
            .unwrap_err();
        assert!(
            matches!(&err, WeightsError::MissingTensor { name, .. } if name == "enc.norm.weight"),
            "{err}"
        );
        assert!(err.to_string().contains("mem.safetensors"), "{err}");
        let err = w
            .pp("fc")
            .linear::<CpuBackend>(3, 2, true, &device)
            .unwrap_err();
        assert!(err.to_string().contains("enc.fc.weight"), "{err}");
        let err = w
            .pp("fc")
            .group_norm::<CpuBackend>(2, 3, 1e-5, &device)
            .unwrap_err();
        assert!(matches!(err, WeightsError::Config { .. }), "{err}");
    }
}
