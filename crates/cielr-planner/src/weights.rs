//! Loading Llama-family weights: from a HuggingFace checkpoint folder (`config.json` plus
//! `model.safetensors` or a sharded `model.safetensors.index.json`, in f32, f16 or bf16) or
//! from a GGUF file (any type [`GgufFile::tensor_f32`] dequantises).
//!
//! The model is always assembled by HuggingFace parameter name ([`hf`]); a GGUF file's
//! names are translated in one table ([`gguf_name`]). Parameters are kept in `f32`, except
//! with [`Llama::from_gguf_compact`], which holds block-quantised matrices only as stored.
//!
//! llama.cpp's converter permutes the rows of the query and key projections of `llama`
//! models to the interleaved ("GPT-J") rotary layout; [`GgufWeights`] undoes that
//! permutation, so the same decoder (with the "rotate half" layout) runs both formats.

use std::path::{Path, PathBuf};

use burn::nn::{Embedding, Linear, RmsNorm};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use cielr_core::weights::{TensorStore, DEFAULT_FILES};

use crate::error::PlannerError;
use crate::gguf::{GgufFile, GgufValue};
use crate::llama::{
    elided_weight, param, Llama, LlamaAttention, LlamaConfig, LlamaDecoderLayer, LlamaMlp,
    LlamaModel, QuantDecode, QuantLayer, RopeScaling, RotaryEmbedding,
};
use crate::quant::QuantMatrix;

type Result<T, E = PlannerError> = std::result::Result<T, E>;

fn model_err(msg: impl Into<String>) -> PlannerError {
    PlannerError::Model(msg.into())
}

/// HuggingFace parameter names of a Llama-family checkpoint.
pub mod hf {
    /// The token embedding, `[vocab, hidden]`.
    pub const EMBED: &str = "model.embed_tokens.weight";
    /// The final RMSNorm.
    pub const NORM: &str = "model.norm.weight";
    /// The language-model head, `[vocab, hidden]` (absent or ignored when tied).
    pub const LM_HEAD: &str = "lm_head.weight";

    /// A parameter of decoder layer `i`, e.g. `layer(3, "self_attn.q_proj.weight")`.
    pub fn layer(i: usize, suffix: &str) -> String {
        format!("model.layers.{i}.{suffix}")
    }
}

/// HuggingFace module names inside a layer and their llama.cpp (GGUF) counterparts.
const GGUF_LAYER_NAMES: &[(&str, &str)] = &[
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("self_attn.q_norm", "attn_q_norm"),
    ("self_attn.k_norm", "attn_k_norm"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "ffn_norm"),
];

/// The GGUF tensor name of a HuggingFace parameter name (`None` for names outside the
/// Llama layout).
pub fn gguf_name(hf_name: &str) -> Option<String> {
    match hf_name {
        hf::EMBED => return Some("token_embd.weight".into()),
        hf::NORM => return Some("output_norm.weight".into()),
        hf::LM_HEAD => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf_name.strip_prefix("model.layers.")?;
    let (i, rest) = rest.split_once('.')?;
    let i: usize = i.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    let (_, g) = GGUF_LAYER_NAMES.iter().find(|(h, _)| *h == module)?;
    Some(format!("blk.{i}.{g}.{kind}"))
}

/// Where parameters come from, addressed by HuggingFace name.
pub trait TensorSource {
    /// A description for error messages (the folder or file).
    fn origin(&self) -> String;
    /// The named tensor with its PyTorch-order shape, or `None` when the source lacks it.
    fn load(&self, hf_name: &str) -> Result<Option<TensorData>>;
}

/// The tensors of a safetensors checkpoint (one file or several shards), memory-mapped by
/// [`cielr_core::weights::TensorStore`].
pub struct SafetensorsWeights {
    store: TensorStore,
    origin: String,
}

impl std::fmt::Debug for SafetensorsWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsWeights")
            .field("origin", &self.origin)
            .field("tensors", &self.store.len())
            .finish()
    }
}

impl SafetensorsWeights {
    /// Opens the weights of a checkpoint folder: `model.safetensors`, or the shards listed
    /// in `model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if !single.is_file() && !index.is_file() {
            return Err(model_err(format!(
                "{} holds neither model.safetensors nor model.safetensors.index.json",
                dir.display()
            )));
        }
        Ok(SafetensorsWeights {
            store: TensorStore::open_in_dir(dir, DEFAULT_FILES)?,
            origin: dir.display().to_string(),
        })
    }

    /// Opens one or more safetensors files as one set of tensors.
    pub fn open_files(paths: &[PathBuf], origin: String) -> Result<Self> {
        Ok(SafetensorsWeights {
            store: TensorStore::open_files(paths)?,
            origin,
        })
    }

    /// Names of all tensors.
    pub fn names(&self) -> Vec<&str> {
        self.store.names()
    }
}

impl TensorSource for SafetensorsWeights {
    fn origin(&self) -> String {
        self.origin.clone()
    }

    fn load(&self, name: &str) -> Result<Option<TensorData>> {
        if !self.store.contains(name) {
            return Ok(None);
        }
        let (shape, values) = self.store.read(name)?;
        Ok(Some(TensorData::new(values, shape)))
    }
}

/// The tensors of a GGUF file, addressed by HuggingFace name, dequantised to `f32`, with
/// llama.cpp's query/key row permutation undone for `llama` models.
#[derive(Debug)]
pub struct GgufWeights<'a> {
    file: &'a GgufFile,
    /// `(query heads, key/value heads)` when the q/k rows must be un-permuted.
    unpermute: Option<(usize, usize)>,
}

impl<'a> GgufWeights<'a> {
    /// Wraps an open GGUF file; `config` must come from [`LlamaConfig::from_gguf`].
    pub fn new(file: &'a GgufFile, config: &LlamaConfig) -> Self {
        let llama = file.get_str("general.architecture") == Some("llama");
        GgufWeights {
            file,
            unpermute: llama.then_some((config.num_attention_heads, config.num_key_value_heads)),
        }
    }
}

/// The row order that undoes llama.cpp's `permute` of `rows` query/key rows in `heads`
/// heads: within each head, rows stored as `[head_dim / 2, 2]` (interleaved pairs) go back to
/// `[2, head_dim / 2]` (halves). Row `i` of the result is stored row `order[i]`; `None` when
/// the rows cannot be split into heads of even width.
fn unpermute_order(rows: usize, heads: usize) -> Option<Vec<usize>> {
    if heads == 0 || rows == 0 || !rows.is_multiple_of(2 * heads) {
        return None;
    }
    let hd = rows / heads;
    let half = hd / 2;
    let mut order = vec![0; rows];
    for h in 0..heads {
        for j in 0..half {
            for s in 0..2 {
                order[h * hd + s * half + j] = h * hd + j * 2 + s;
            }
        }
    }
    Some(order)
}

/// [`unpermute_order`] applied to weights (`[rows, cols]`) or biases (`[rows]`).
fn unpermute_rows(data: &[f32], rows: usize, heads: usize) -> Option<Vec<f32>> {
    if rows == 0 || !data.len().is_multiple_of(rows) {
        return None;
    }
    let cols = data.len() / rows;
    let order = unpermute_order(rows, heads)?;
    Some(
        order
            .iter()
            .flat_map(|&from| &data[from * cols..(from + 1) * cols])
            .copied()
            .collect(),
    )
}

impl GgufWeights<'_> {
    /// The heads to un-permute a tensor's rows over (`attn_q`/`attn_k` of `llama` files).
    fn unpermute_heads(&self, gguf_name: &str) -> Option<usize> {
        match self.unpermute {
            Some((nh, _)) if gguf_name.contains(".attn_q.") => Some(nh),
            Some((_, nkv)) if gguf_name.contains(".attn_k.") => Some(nkv),
            _ => None,
        }
    }

    /// One matrix as stored, when its type is one [`QuantMatrix`] multiplies (`None`
    /// otherwise, or when the file lacks it), rows un-permuted like [`TensorSource::load`].
    fn quant_matrix(&self, hf_name: &str) -> Result<Option<QuantMatrix>> {
        let Some(gname) = gguf_name(hf_name) else {
            return Ok(None);
        };
        let Some(info) = self.file.tensor_info(&gname) else {
            return Ok(None);
        };
        let &[rows, cols] = info.shape.as_slice() else {
            return Ok(None);
        };
        if !QuantMatrix::supports(info.dtype) {
            return Ok(None);
        }
        let (_, bytes) = self.file.tensor_bytes(&gname)?;
        let err = |m: String| model_err(format!("{}, tensor {gname}: {m}", self.origin()));
        let q = QuantMatrix::from_gguf(info.dtype, rows, cols, &bytes).map_err(err)?;
        match self.unpermute_heads(&gname) {
            Some(heads) => {
                let order = unpermute_order(rows, heads).ok_or_else(|| {
                    err(format!(
                        "{rows} rows cannot be split into {heads} heads of even width"
                    ))
                })?;
                Ok(Some(q.reorder_rows(&order).map_err(err)?))
            }
            None => Ok(Some(q)),
        }
    }

    /// The model's projection and head matrices as stored in the file, for
    /// [`Llama::with_quantized_decode`]: every matrix stored in a block format
    /// ([`QuantMatrix::supports`]); the others keep their `f32` weights
    /// ([`QuantDecode::coverage`] counts them).
    pub fn quantized_decode(&self, config: &LlamaConfig) -> Result<QuantDecode> {
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let m = |module: &str| self.quant_matrix(&hf::layer(i, &format!("{module}.weight")));
            layers.push(QuantLayer {
                q_proj: m("self_attn.q_proj")?,
                k_proj: m("self_attn.k_proj")?,
                v_proj: m("self_attn.v_proj")?,
                o_proj: m("self_attn.o_proj")?,
                gate_proj: m("mlp.gate_proj")?,
                up_proj: m("mlp.up_proj")?,
                down_proj: m("mlp.down_proj")?,
            });
        }
        let head = if config.tie_word_embeddings {
            self.quant_matrix(hf::EMBED)?
        } else {
            self.quant_matrix(hf::LM_HEAD)?
        };
        Ok(QuantDecode {
            layers,
            head,
            embed: None,
        })
    }
}

impl TensorSource for GgufWeights<'_> {
    fn origin(&self) -> String {
        self.file.path().display().to_string()
    }

    fn load(&self, name: &str) -> Result<Option<TensorData>> {
        let Some(gname) = gguf_name(name) else {
            return Ok(None);
        };
        if self.file.tensor_info(&gname).is_none() {
            return Ok(None);
        }
        let (shape, data) = self.file.tensor_f32(&gname)?;
        let data = match self.unpermute_heads(&gname) {
            Some(heads) => {
                let rows = shape.first().copied().unwrap_or(0);
                unpermute_rows(&data, rows, heads).ok_or_else(|| {
                    model_err(format!(
                        "{}, tensor {gname}: {rows} rows cannot be split into {heads} heads \
                         of even width",
                        self.origin()
                    ))
                })?
            }
            None => data,
        };
        Ok(Some(TensorData::new(data, shape)))
    }
}

impl LlamaConfig {
    /// The hyper-parameters of a GGUF file's model, from its metadata
    /// (`general.architecture` = `llama`, `qwen2` or `qwen3`, and the `<arch>.*` keys) and
    /// which tensors it holds (tied head, biases).
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let path = file.path().display().to_string();
        let err = |m: String| model_err(format!("{path}: {m}"));
        let arch = file
            .get_str("general.architecture")
            .ok_or_else(|| err("no general.architecture".into()))?
            .to_string();
        if !matches!(arch.as_str(), "llama" | "qwen2" | "qwen3") {
            return Err(err(format!(
                "architecture {arch:?} is not a supported Llama-family decoder (llama, qwen2, qwen3)"
            )));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let int = |k: &str| -> Result<Option<usize>> {
            match file.get(&key(k)) {
                None => Ok(None),
                Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
                    err(format!(
                        "{} must be an integer, found {}",
                        key(k),
                        v.type_name()
                    ))
                }),
            }
        };
        let need = |k: &str| -> Result<usize> {
            int(k)?.ok_or_else(|| err(format!("the metadata lacks {}", key(k))))
        };
        // GGUF stores these as f32: read 1e-5f32 back as 1e-5, as config.json says.
        let float = |k: &str| match file.get(&key(k)) {
            Some(GgufValue::F32(x)) => x.to_string().parse::<f64>().ok(),
            Some(v) => v.as_f64(),
            None => None,
        };
        let hidden_size = need("embedding_length")?;
        let heads = need("attention.head_count")?;
        if heads == 0 {
            return Err(err("attention.head_count is 0".into()));
        }
        let head_dim = int("attention.key_length")?.unwrap_or(hidden_size / heads);
        if let Some(rot) = int("rope.dimension_count")? {
            if rot != head_dim {
                return Err(err(format!(
                    "partial rotary embedding ({rot} of {head_dim} channels) is not supported"
                )));
            }
        }
        let embd = file
            .tensor_shape("token_embd.weight")
            .ok_or_else(|| err("no tensor token_embd.weight".into()))?;
        let vocab_size = match int("vocab_size")? {
            Some(v) => v,
            None => embd.first().copied().unwrap_or(0),
        };
        let rope_scaling = match file.get_str(&key("rope.scaling.type")) {
            None | Some("none") => RopeScaling::None,
            Some("linear") => RopeScaling::Linear {
                factor: float("rope.scaling.factor")
                    .ok_or_else(|| err("linear rope scaling without a factor".into()))?,
            },
            Some(other) => {
                return Err(err(format!("rope scaling type {other:?} is not supported")))
            }
        };
        let has = |n: &str| file.tensor_info(n).is_some();
        let token = |k: &str| file.get_u64(k).map(|x| x as u32);
        let config = LlamaConfig {
            model_type: arch.clone(),
            vocab_size,
            hidden_size,
            intermediate_size: need("feed_forward_length")?,
            num_hidden_layers: need("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: int("attention.head_count_kv")?.unwrap_or(heads),
            head_dim,
            rms_norm_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
            rope_theta: float("rope.freq_base").unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: int("context_length")?.unwrap_or(2048),
            tie_word_embeddings: !has("output.weight"),
            qkv_bias: has("blk.0.attn_q.bias"),
            o_bias: has("blk.0.attn_output.bias"),
            mlp_bias: has("blk.0.ffn_gate.bias"),
            qk_norm: has("blk.0.attn_q_norm.weight"),
            bos_token_id: token("tokenizer.ggml.bos_token_id"),
            eos_token_ids: token("tokenizer.ggml.eos_token_id").into_iter().collect(),
        };
        config.validate().map_err(|e| err(e.to_string()))?;
        Ok(config)
    }
}

/// Builds the model from a source of named tensors, checking every shape; a missing or
/// misshapen tensor gives an error naming it.
pub fn load_llama<B: Backend>(
    config: &LlamaConfig,
    source: &dyn TensorSource,
    rope: RotaryEmbedding,
    device: &B::Device,
) -> Result<Llama<B>> {
    let model = load_model(config, source, None, device)?;
    Llama::from_parts_with_rope(config.clone(), model, rope, device)
}

/// The parameters of [`load_llama`]; with `quant`, every matrix it holds (projections, the
/// head, the embedding) gets an elided weight ([`elided_weight`]) and is never read from
/// `source`.
fn load_model<B: Backend>(
    config: &LlamaConfig,
    source: &dyn TensorSource,
    quant: Option<&QuantDecode>,
    device: &B::Device,
) -> Result<LlamaModel<B>> {
    config.validate()?;
    let c = config;
    let (h, hd) = (c.hidden_size, c.head_dim);
    let q_out = c.num_attention_heads * hd;
    let kv_out = c.num_key_value_heads * hd;
    let fetch = |name: &str, shape: &[usize]| -> Result<TensorData> {
        let data = source.load(name)?.ok_or_else(|| {
            model_err(format!("{}: the tensor {name} is missing", source.origin()))
        })?;
        if data.shape.as_slice() != shape {
            return Err(model_err(format!(
                "{}: the tensor {name} has shape {:?}, expected {shape:?}",
                source.origin(),
                data.shape.as_slice()
            )));
        }
        Ok(data)
    };
    let tensor2 = |name: &str, rows: usize, cols: usize| -> Result<Tensor<B, 2>> {
        Ok(Tensor::from_data(fetch(name, &[rows, cols])?, device))
    };
    let vector = |name: &str, n: usize| -> Result<Tensor<B, 1>> {
        Ok(Tensor::from_data(fetch(name, &[n])?, device))
    };
    // PyTorch stores linear weights as [out, in]; Burn's `Linear` takes [in, out]. The
    // transpose is materialised once here: `Linear` on a 3-d input broadcasts the weight,
    // and a strided weight is then copied on every call (6x slower decoding).
    let linear = |prefix: &str,
                  q: Option<&QuantMatrix>,
                  i: usize,
                  o: usize,
                  bias: bool|
     -> Result<Linear<B>> {
        let weight = if q.is_some() {
            elided_weight(device)
        } else {
            let weight = tensor2(&format!("{prefix}.weight"), o, i)?.transpose();
            param(Tensor::from_data(weight.into_data(), device))
        };
        let bias = if bias {
            Some(param(vector(&format!("{prefix}.bias"), o)?))
        } else {
            None
        };
        Ok(Linear { weight, bias })
    };
    let norm = |name: &str, d: usize| -> Result<RmsNorm<B>> {
        Ok(RmsNorm {
            gamma: param(vector(name, d)?),
            epsilon: c.rms_norm_eps,
        })
    };
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for i in 0..c.num_hidden_layers {
        let p = |s: &str| hf::layer(i, s);
        let ql = quant.and_then(|q| q.layers.get(i));
        let q = |pick: fn(&QuantLayer) -> Option<&QuantMatrix>| ql.and_then(pick);
        layers.push(LlamaDecoderLayer {
            input_layernorm: norm(&p("input_layernorm.weight"), h)?,
            self_attn: LlamaAttention {
                q_proj: linear(
                    &p("self_attn.q_proj"),
                    q(|l| l.q_proj.as_ref()),
                    h,
                    q_out,
                    c.qkv_bias,
                )?,
                k_proj: linear(
                    &p("self_attn.k_proj"),
                    q(|l| l.k_proj.as_ref()),
                    h,
                    kv_out,
                    c.qkv_bias,
                )?,
                v_proj: linear(
                    &p("self_attn.v_proj"),
                    q(|l| l.v_proj.as_ref()),
                    h,
                    kv_out,
                    c.qkv_bias,
                )?,
                o_proj: linear(
                    &p("self_attn.o_proj"),
                    q(|l| l.o_proj.as_ref()),
                    q_out,
                    h,
                    c.o_bias,
                )?,
                q_norm: c
                    .qk_norm
                    .then(|| norm(&p("self_attn.q_norm.weight"), hd))
                    .transpose()?,
                k_norm: c
                    .qk_norm
                    .then(|| norm(&p("self_attn.k_norm.weight"), hd))
                    .transpose()?,
                num_heads: c.num_attention_heads,
                num_kv_heads: c.num_key_value_heads,
                head_dim: hd,
            },
            post_attention_layernorm: norm(&p("post_attention_layernorm.weight"), h)?,
            mlp: LlamaMlp {
                gate_proj: linear(
                    &p("mlp.gate_proj"),
                    q(|l| l.gate_proj.as_ref()),
                    h,
                    c.intermediate_size,
                    c.mlp_bias,
                )?,
                up_proj: linear(
                    &p("mlp.up_proj"),
                    q(|l| l.up_proj.as_ref()),
                    h,
                    c.intermediate_size,
                    c.mlp_bias,
                )?,
                down_proj: linear(
                    &p("mlp.down_proj"),
                    q(|l| l.down_proj.as_ref()),
                    c.intermediate_size,
                    h,
                    c.mlp_bias,
                )?,
            },
        });
    }
    let head_q = quant.and_then(|q| q.head.as_ref());
    let embed_q = if c.tie_word_embeddings {
        head_q
    } else {
        quant.and_then(|q| q.embed.as_ref())
    };
    Ok(LlamaModel {
        embed_tokens: Embedding {
            weight: if embed_q.is_some() {
                elided_weight(device)
            } else {
                param(tensor2(hf::EMBED, c.vocab_size, h)?)
            },
        },
        layers,
        norm: norm(hf::NORM, h)?,
        lm_head: if c.tie_word_embeddings {
            None
        } else {
            Some(linear("lm_head", head_q, h, c.vocab_size, false)?)
        },
    })
}

/// The rotary frequencies of a GGUF file's model: Llama 3's rescaling, stored by llama.cpp
/// as the `rope_freqs.weight` tensor, applied.
fn gguf_rope(file: &GgufFile, config: &LlamaConfig) -> Result<RotaryEmbedding> {
    let rope = RotaryEmbedding::new(config);
    if file.tensor_info("rope_freqs.weight").is_none() {
        return Ok(rope);
    }
    let (_, factors) = file.tensor_f32("rope_freqs.weight")?;
    rope.with_freq_factors(&factors)
}

impl<B: Backend> Llama<B> {
    /// Loads a HuggingFace checkpoint folder: `config.json` and `model.safetensors` (or
    /// `model.safetensors.index.json` with its shards).
    pub fn from_hf_dir(dir: &Path, device: &B::Device) -> Result<Self> {
        let config = LlamaConfig::from_file(&dir.join("config.json"))?;
        let weights = SafetensorsWeights::open_dir(dir)?;
        load_llama(&config, &weights, RotaryEmbedding::new(&config), device)
    }

    /// Loads the model of an open GGUF file (`llama`, `qwen2` or `qwen3` architecture).
    /// Llama 3's rotary rescaling, stored by llama.cpp as the `rope_freqs.weight` tensor, is
    /// applied.
    pub fn from_gguf(file: &GgufFile, device: &B::Device) -> Result<Self> {
        let config = LlamaConfig::from_gguf(file)?;
        let rope = gguf_rope(file, &config)?;
        load_llama(&config, &GgufWeights::new(file, &config), rope, device)
    }

    /// Opens a GGUF file and loads its model.
    pub fn from_gguf_path(path: &Path, device: &B::Device) -> Result<Self> {
        Self::from_gguf(&GgufFile::open(path)?, device)
    }

    /// [`Llama::from_gguf`], with the matrices stored in a block format
    /// ([`QuantMatrix::supports`]) also kept as stored for decode steps
    /// ([`Llama::with_quantized_decode`]; for CPU backends).
    pub fn from_gguf_quantized(file: &GgufFile, device: &B::Device) -> Result<Self> {
        let model = Self::from_gguf(file, device)?;
        let quant = GgufWeights::new(file, model.config()).quantized_decode(model.config())?;
        model.with_quantized_decode(quant)
    }

    /// [`Llama::from_gguf_quantized`] without the `f32` copies: every matrix stored in a
    /// block format ([`QuantMatrix::supports`]) is held only as stored, its `Linear` /
    /// `Embedding` weight elided ([`crate::llama::is_elided`]); norms, biases and matrices
    /// in other types are loaded as `f32`. Nothing is dequantised at load. Inputs of at most
    /// [`crate::llama::QUANT_MAX_ROWS`] rows use the quantised products; longer ones
    /// (prefill) dequantise one matrix at a time into a temporary `f32` copy; the embedding
    /// dequantises only the looked-up rows (from the tied head, or from a quantised copy of
    /// `token_embd` added as [`QuantDecode::embed`]). For CPU backends.
    pub fn from_gguf_compact(file: &GgufFile, device: &B::Device) -> Result<Self> {
        let config = LlamaConfig::from_gguf(file)?;
        let rope = gguf_rope(file, &config)?;
        let weights = GgufWeights::new(file, &config);
        let mut quant = weights.quantized_decode(&config)?;
        if !config.tie_word_embeddings {
            quant.embed = weights.quant_matrix(hf::EMBED)?;
        }
        let model = load_model(&config, &weights, Some(&quant), device)?;
        Llama::from_parts_quantized(config, model, rope, quant, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names_map() {
        assert_eq!(gguf_name(hf::EMBED).as_deref(), Some("token_embd.weight"));
        assert_eq!(
            gguf_name("model.layers.12.self_attn.q_proj.bias").as_deref(),
            Some("blk.12.attn_q.bias")
        );
        assert_eq!(
            gguf_name("model.layers.0.post_attention_layernorm.weight").as_deref(),
            Some("blk.0.ffn_norm.weight")
        );
        assert_eq!(gguf_name("model.layers.x.mlp.up_proj.weight"), None);
        assert_eq!(gguf_name("something.else"), None);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: reshape(heads, 2, hd/2, cols).swapaxes(1, 2)
        let (heads, hd, cols) = (2, 4, 3);
        let rows = heads * hd;
        let hf: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
        let mut permuted = vec![0.0; hf.len()];
        for h in 0..heads {
            for s in 0..2 {
                for j in 0..hd / 2 {
                    let from = h * hd + s * (hd / 2) + j;
                    let to = h * hd + j * 2 + s;
                    permuted[to * cols..(to + 1) * cols]
                        .copy_from_slice(&hf[from * cols..(from + 1) * cols]);
                }
            }
        }
        assert_eq!(unpermute_rows(&permuted, rows, heads).unwrap(), hf);
        assert!(unpermute_rows(&permuted, rows, 3).is_none());
    }

    #[test]
    fn the_qk_permutation_matters() {
        // The tiny Llama GGUF loaded without undoing llama.cpp's permutation gives other
        // logits than with it (the parity tests show that with it they match transformers).
        use cielr_core::backend::CpuBackend;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/llama-tiny-llama3");
        let file = GgufFile::open(&dir.join("model.gguf")).unwrap();
        let config = LlamaConfig::from_gguf(&file).unwrap();
        let (_, factors) = file.tensor_f32("rope_freqs.weight").unwrap();
        let rope = || {
            RotaryEmbedding::new(&config)
                .with_freq_factors(&factors)
                .unwrap()
        };
        let device = Default::default();
        let right = GgufWeights::new(&file, &config);
        let wrong = GgufWeights {
            file: &file,
            unpermute: None,
        };
        let logits = |w: &GgufWeights| {
            let m = load_llama::<CpuBackend>(&config, w, rope(), &device).unwrap();
            m.next_token_logits(&[3, 1, 4, 1, 5], &mut m.new_cache())
                .unwrap()
        };
        let (a, b) = (logits(&right), logits(&wrong));
        let diff = a
            .iter()
            .zip(&b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(diff > 1e-2, "{diff}");
    }
}
