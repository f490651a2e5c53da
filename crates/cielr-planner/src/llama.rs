//! One decoder for the Llama family as HuggingFace transformers defines it: Llama 2/3.x,
//! SmolLM2, Qwen2/2.5 (bias on q/k/v) and Qwen3 (RMSNorm on q and k per head).
//!
//! The layout follows `transformers`' `modeling_llama.py`: token embedding, `n` pre-norm
//! decoder layers (RMSNorm, grouped-query self-attention with rotary position embedding in the
//! "rotate half" layout, RMSNorm, SwiGLU MLP), a final RMSNorm and the language-model head,
//! optionally tied to the embedding. [`LlamaConfig`] reads the checkpoint's own
//! `config.json`; weights are loaded by [`crate::weights`].
//!
//! Inference keeps a key/value cache per layer ([`LlamaCache`]): a whole prompt goes through
//! one forward pass with a causal mask (prefill), then tokens are fed one at a time.

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::backend::Backend;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use cielr_core::activation::silu;
use cielr_core::attention::attention;
use cielr_core::layout::contiguous;
use rayon::prelude::*;
use serde::Deserialize;
use serde_json::Value;

use crate::error::PlannerError;
use crate::quant::QuantMatrix;

type Result<T, E = PlannerError> = std::result::Result<T, E>;

fn model_err(msg: impl Into<String>) -> PlannerError {
    PlannerError::Model(msg.into())
}

/// How the rotary position embedding's frequencies are rescaled for long contexts.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum RopeScaling {
    /// No rescaling (`rope_type` "default", or no `rope_scaling` entry).
    #[default]
    None,
    /// Every frequency divided by `factor` (`rope_type` "linear").
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// Llama 3.1's piecewise rescaling (`rope_type` "llama3"): long wavelengths divided by
    /// `factor`, short ones kept, the band between interpolated smoothly.
    Llama3 {
        /// Divisor for the low frequencies.
        factor: f64,
        /// Wavelengths longer than `original_max_position_embeddings / low_freq_factor` are
        /// fully rescaled.
        low_freq_factor: f64,
        /// Wavelengths shorter than `original_max_position_embeddings / high_freq_factor` are
        /// kept.
        high_freq_factor: f64,
        /// The context length the model was pre-trained with.
        original_max_position_embeddings: usize,
    },
}

/// The hyper-parameters of a Llama-family decoder, as read from a checkpoint's `config.json`
/// ([`LlamaConfig::from_json_str`]) or a GGUF file's metadata
/// ([`LlamaConfig::from_gguf`], in [`crate::weights`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// `model_type` from `config.json` ("llama", "qwen2", "qwen3", ...).
    pub model_type: String,
    /// Number of tokens in the vocabulary (rows of the embedding).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention when fewer than the query heads).
    pub num_key_value_heads: usize,
    /// Width of one attention head (`hidden_size / num_attention_heads` unless given).
    pub head_dim: usize,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// Base of the rotary position embedding's frequencies.
    pub rope_theta: f64,
    /// Long-context rescaling of the rotary frequencies.
    pub rope_scaling: RopeScaling,
    /// Longest context the model supports; longer inputs are refused.
    pub max_position_embeddings: usize,
    /// Whether the language-model head reuses the token embedding.
    pub tie_word_embeddings: bool,
    /// Bias on the query, key and value projections (always for Qwen2).
    pub qkv_bias: bool,
    /// Bias on the attention output projection (Llama's `attention_bias`).
    pub o_bias: bool,
    /// Bias on the three MLP projections (Llama's `mlp_bias`).
    pub mlp_bias: bool,
    /// RMSNorm on queries and keys per head before the rotary embedding (Qwen3).
    pub qk_norm: bool,
    /// The beginning-of-sequence token, when the config names one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens named by the config (one or several).
    pub eos_token_ids: Vec<u32>,
}

/// `config.json` as written by transformers 4.x and 5.x; only the fields the decoder needs.
#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(default)]
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default)]
    rms_norm_eps: Option<f64>,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_scaling: Option<Value>,
    /// transformers 5 moves `rope_theta` and `rope_scaling` into one `rope_parameters` map.
    #[serde(default)]
    rope_parameters: Option<Value>,
    #[serde(default)]
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    attention_bias: Option<bool>,
    #[serde(default)]
    mlp_bias: Option<bool>,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    #[serde(default)]
    bos_token_id: Option<Value>,
    #[serde(default)]
    eos_token_id: Option<Value>,
}

fn token_ids(v: &Option<Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| x as u32).into_iter().collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().map(|x| x as u32))
            .collect(),
        _ => Vec::new(),
    }
}

impl RopeScaling {
    /// Reads a `rope_scaling` / `rope_parameters` map (`rope_type` or `type`, `factor`, ...).
    pub fn from_json(v: &Value) -> Result<Self> {
        let Some(obj) = v.as_object() else {
            return if v.is_null() {
                Ok(RopeScaling::None)
            } else {
                Err(model_err(format!(
                    "rope_scaling must be an object, found {v}"
                )))
            };
        };
        let kind = obj
            .get("rope_type")
            .or_else(|| obj.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let num = |key: &str| -> Result<f64> {
            obj.get(key).and_then(Value::as_f64).ok_or_else(|| {
                model_err(format!(
                    "rope_scaling of type {kind:?} lacks the number {key:?}"
                ))
            })
        };
        match kind {
            "default" => Ok(RopeScaling::None),
            "linear" => Ok(RopeScaling::Linear {
                factor: num("factor")?,
            }),
            "llama3" => Ok(RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
            }),
            other => Err(model_err(format!(
                "rope scaling type {other:?} is not supported (only default, linear and llama3)"
            ))),
        }
    }
}

impl LlamaConfig {
    /// Parses a checkpoint's `config.json` text (transformers 4.x or 5.x layout).
    pub fn from_json_str(text: &str) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|source| PlannerError::Json {
            context: "config.json".into(),
            source,
        })?;
        let model_type = raw.model_type.unwrap_or_else(|| "llama".into());
        if !matches!(model_type.as_str(), "llama" | "qwen2" | "qwen3") {
            return Err(model_err(format!(
                "model_type {model_type:?} is not a supported Llama-family decoder \
                 (llama, qwen2, qwen3)"
            )));
        }
        if let Some(act) = &raw.hidden_act {
            if act != "silu" {
                return Err(model_err(format!(
                    "hidden_act {act:?} is not supported (only silu)"
                )));
            }
        }
        if raw.use_sliding_window == Some(true)
            || raw
                .layer_types
                .iter()
                .flatten()
                .any(|t| t != "full_attention")
        {
            return Err(model_err(
                "sliding-window attention (use_sliding_window: true) is not supported",
            ));
        }
        let need = |v: Option<usize>, key: &str| {
            v.ok_or_else(|| model_err(format!("config.json lacks {key:?}")))
        };
        let hidden_size = need(raw.hidden_size, "hidden_size")?;
        let num_attention_heads = need(raw.num_attention_heads, "num_attention_heads")?;
        if num_attention_heads == 0 {
            return Err(model_err("num_attention_heads is 0"));
        }
        let params = raw.rope_parameters.as_ref().filter(|v| v.is_object());
        let rope_theta = raw
            .rope_theta
            .or_else(|| {
                params
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(Value::as_f64)
            })
            .unwrap_or(10_000.0);
        let rope_scaling = match (&raw.rope_scaling, params) {
            (Some(v), _) if !v.is_null() => RopeScaling::from_json(v)?,
            (_, Some(p)) => RopeScaling::from_json(p)?,
            _ => RopeScaling::None,
        };
        let qwen2 = model_type == "qwen2";
        let attention_bias = raw.attention_bias.unwrap_or(false);
        let config = LlamaConfig {
            vocab_size: need(raw.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
            num_hidden_layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(num_attention_heads),
            head_dim: raw.head_dim.unwrap_or(hidden_size / num_attention_heads),
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias: qwen2 || attention_bias,
            o_bias: !qwen2 && attention_bias,
            mlp_bias: raw.mlp_bias.unwrap_or(false),
            qk_norm: model_type == "qwen3",
            bos_token_id: token_ids(&raw.bos_token_id).first().copied(),
            eos_token_ids: token_ids(&raw.eos_token_id),
            model_type,
        };
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a `config.json` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| PlannerError::io(path, e))?;
        Self::from_json_str(&text).map_err(|e| match e {
            PlannerError::Json { source, .. } => PlannerError::Json {
                context: path.display().to_string(),
                source,
            },
            PlannerError::Model(m) => model_err(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    /// Checks that the sizes are consistent (non-zero, heads divisible into groups, even
    /// head width for the rotary embedding, positive epsilon and base).
    pub fn validate(&self) -> Result<()> {
        // Upper bounds keep a hostile config.json from asking for absurd allocations.
        let sizes = [
            ("vocab_size", self.vocab_size, 1 << 24),
            ("hidden_size", self.hidden_size, 1 << 20),
            ("intermediate_size", self.intermediate_size, 1 << 20),
            ("num_hidden_layers", self.num_hidden_layers, 1 << 12),
            ("num_attention_heads", self.num_attention_heads, 1 << 12),
            ("num_key_value_heads", self.num_key_value_heads, 1 << 12),
            ("head_dim", self.head_dim, 1 << 16),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                1 << 24,
            ),
        ];
        for (name, v, max) in sizes {
            if v == 0 || v > max {
                return Err(model_err(format!("{name} = {v} is out of range 1..={max}")));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(model_err(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            )));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(model_err(format!(
                "head_dim ({}) must be even for the rotary embedding",
                self.head_dim
            )));
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 {
            return Err(model_err("rms_norm_eps must be positive"));
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return Err(model_err("rope_theta must be positive"));
        }
        match self.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } if factor > 0.0 => {}
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } if factor > 0.0
                && low_freq_factor > 0.0
                && high_freq_factor > low_freq_factor
                && original_max_position_embeddings > 0 => {}
            s => return Err(model_err(format!("invalid rope scaling {s:?}"))),
        }
        Ok(())
    }

    /// Number of query heads sharing one key/value head.
    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Number of parameters of the model these hyper-parameters describe.
    pub fn num_parameters(&self) -> usize {
        let (h, i, hd) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let q = self.num_attention_heads * hd;
        let kv = self.num_key_value_heads * hd;
        let attn = h * q
            + 2 * h * kv
            + q * h
            + if self.qkv_bias { q + 2 * kv } else { 0 }
            + if self.o_bias { h } else { 0 }
            + if self.qk_norm { 2 * hd } else { 0 };
        let mlp = 3 * h * i + if self.mlp_bias { 2 * i + h } else { 0 };
        let layer = attn + mlp + 2 * h;
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * h
        };
        self.vocab_size * h + self.num_hidden_layers * layer + h + head
    }

    /// A model with these hyper-parameters and random weights (Burn's default initialisers;
    /// RMSNorm weights are ones). For tests and benchmarks; real weights come from
    /// [`crate::weights`].
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Llama<B>> {
        self.validate()?;
        let (h, hd) = (self.hidden_size, self.head_dim);
        let linear = |i: usize, o: usize, bias: bool| {
            LinearConfig::new(i, o).with_bias(bias).init::<B>(device)
        };
        let norm = |d: usize| {
            RmsNormConfig::new(d)
                .with_epsilon(self.rms_norm_eps)
                .init::<B>(device)
        };
        let layers = (0..self.num_hidden_layers)
            .map(|_| LlamaDecoderLayer {
                input_layernorm: norm(h),
                self_attn: LlamaAttention {
                    q_proj: linear(h, self.num_attention_heads * hd, self.qkv_bias),
                    k_proj: linear(h, self.num_key_value_heads * hd, self.qkv_bias),
                    v_proj: linear(h, self.num_key_value_heads * hd, self.qkv_bias),
                    o_proj: linear(self.num_attention_heads * hd, h, self.o_bias),
                    q_norm: self.qk_norm.then(|| norm(hd)),
                    k_norm: self.qk_norm.then(|| norm(hd)),
                    num_heads: self.num_attention_heads,
                    num_kv_heads: self.num_key_value_heads,
                    head_dim: hd,
                },
                post_attention_layernorm: norm(h),
                mlp: LlamaMlp {
                    gate_proj: linear(h, self.intermediate_size, self.mlp_bias),
                    up_proj: linear(h, self.intermediate_size, self.mlp_bias),
                    down_proj: linear(self.intermediate_size, h, self.mlp_bias),
                },
            })
            .collect();
        let model = LlamaModel {
            embed_tokens: EmbeddingConfig::new(self.vocab_size, h).init(device),
            layers,
            norm: norm(h),
            lm_head: (!self.tie_word_embeddings).then(|| linear(h, self.vocab_size, false)),
        };
        Llama::from_parts(self.clone(), model, device)
    }
}

/// The rotary position embedding's inverse frequencies, one per pair of head channels, in
/// single precision as transformers computes them.
#[derive(Debug, Clone, PartialEq)]
pub struct RotaryEmbedding {
    inv_freq: Vec<f32>,
}

impl RotaryEmbedding {
    /// The frequencies for a configuration: `theta^(-2i/head_dim)`, rescaled as
    /// `rope_scaling` says.
    pub fn new(config: &LlamaConfig) -> Self {
        let dim = config.head_dim;
        let base = config.rope_theta;
        let mut inv_freq: Vec<f32> = (0..dim / 2)
            .map(|i| (1.0 / base.powf((2 * i) as f64 / dim as f64)) as f32)
            .collect();
        match config.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => {
                for f in &mut inv_freq {
                    *f = (*f as f64 / factor) as f32;
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old = original_max_position_embeddings as f64;
                let low_freq_wavelen = old / low_freq_factor;
                let high_freq_wavelen = old / high_freq_factor;
                for f in &mut inv_freq {
                    let freq = *f as f64;
                    let wavelen = 2.0 * std::f64::consts::PI / freq;
                    *f = if wavelen < high_freq_wavelen {
                        freq
                    } else if wavelen > low_freq_wavelen {
                        freq / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * freq / factor + smooth * freq
                    } as f32;
                }
            }
        }
        RotaryEmbedding { inv_freq }
    }

    /// Divides each frequency by a factor (llama.cpp stores Llama 3's rescaling as such
    /// per-frequency factors, the `rope_freqs` tensor).
    pub fn with_freq_factors(mut self, factors: &[f32]) -> Result<Self> {
        if factors.len() != self.inv_freq.len() {
            return Err(model_err(format!(
                "{} rope frequency factors given for {} frequencies",
                factors.len(),
                self.inv_freq.len()
            )));
        }
        for (f, d) in self.inv_freq.iter_mut().zip(factors) {
            *f /= *d;
        }
        Ok(self)
    }

    /// The inverse frequencies.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// Cosines and sines for cache slots `start..start + len` of rows with `pad[r]` left
    /// padding positions: row `r`'s slot `i` is position `i - pad[r]` (0 for padding), each
    /// `[rows, 1, len, head_dim / 2]`.
    fn cos_sin_padded<B: Backend>(
        &self,
        start: usize,
        len: usize,
        pad: &[usize],
        device: &B::Device,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(pad.len() * len * half);
        let mut sin = Vec::with_capacity(pad.len() * len * half);
        for &p in pad {
            for slot in start..start + len {
                let pos = slot.saturating_sub(p);
                for &f in &self.inv_freq {
                    let angle = (pos as f32 * f) as f64;
                    cos.push(angle.cos() as f32);
                    sin.push(angle.sin() as f32);
                }
            }
        }
        let shape = [pad.len(), 1, len, half];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }

    /// Cosines and sines for positions `start..start + len`, each `[len, head_dim / 2]`.
    fn cos_sin<B: Backend>(
        &self,
        start: usize,
        len: usize,
        device: &B::Device,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for p in start..start + len {
            for &f in &self.inv_freq {
                // The angle in single precision, as transformers forms it.
                let angle = (p as f32 * f) as f64;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        (
            Tensor::from_data(TensorData::new(cos, [len, half]), device),
            Tensor::from_data(TensorData::new(sin, [len, half]), device),
        )
    }
}

/// Applies the rotary embedding in the "rotate half" layout: channel `j` of the first half
/// pairs with channel `j` of the second. `x` is `[batch, heads, seq, head_dim]`, `cos`/`sin`
/// are `[1 or batch, 1, seq, head_dim / 2]` (`cielr_core::rope`, one pass on the CPU).
fn apply_rope<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
    cielr_core::rope::rotate_half(x, cos, sin)
}

/// Below this many multiply-adds the `flex` CPU backend runs a matmul on one thread (its
/// `PARALLEL_THRESHOLD`, 192³).
const FLEX_SERIAL_MATMUL: usize = 192 * 192 * 192;

/// A linear layer on `x` (`[batch, seq, in]`), with its input rows split into `parts`
/// blocks whose partial products are computed on rayon's threads and summed, when the
/// product is small enough that the backend would run it on one thread (the decode step's
/// single-row products on the `flex` CPU backend). Splitting the input rows keeps each
/// weight block contiguous (a column split gives strided blocks, which flex multiplies an
/// order of magnitude slower). `parts <= 1` is the layer's own forward.
fn linear_split<B: Backend>(lin: &Linear<B>, x: Tensor<B, 3>, parts: usize) -> Tensor<B, 3> {
    let [b, s, k] = x.dims();
    let w = lin.weight.val();
    let n = w.dims()[1];
    if parts <= 1 || b * s * k * n >= FLEX_SERIAL_MATMUL || k < parts * 64 {
        return lin.forward(x);
    }
    let chunk = k.div_ceil(parts);
    let partials: Vec<Tensor<B, 3>> = (0..parts)
        .into_par_iter()
        .filter_map(|i| {
            let start = i * chunk;
            (start < k).then(|| {
                let len = chunk.min(k - start);
                let wi = w.clone().narrow(0, start, len);
                x.clone().narrow(2, start, len).matmul(wi.unsqueeze::<3>())
            })
        })
        .collect();
    let Some(y) = partials.into_iter().reduce(|acc, p| acc + p) else {
        return lin.forward(x);
    };
    match &lin.bias {
        Some(bias) => y + bias.val().unsqueeze::<3>(),
        None => y,
    }
}

/// Inputs of at most this many rows (batch x positions) use the block-quantised weights when
/// the model has them ([`Llama::with_quantized_decode`]): decode steps and small batches of
/// them. Longer inputs (prefill) are compute-bound and run Burn's `f32` matmul.
pub const QUANT_MAX_ROWS: usize = 8;

/// `x · Wᵀ` for `x` (`[batch, seq, in]`) with a block-quantised `W`, when `x` has at most
/// [`QUANT_MAX_ROWS`] rows and its values can be read as `f32`; `None` otherwise.
fn quant_forward<B: Backend>(q: &QuantMatrix, x: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
    let [b, s, _] = x.dims();
    if b * s > QUANT_MAX_ROWS {
        return None;
    }
    let v = x
        .clone()
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .ok()?;
    let y = q.matmul(&v).ok()?;
    Some(Tensor::from_data(
        TensorData::new(y, [b, s, q.rows()]),
        &x.device(),
    ))
}

/// A linear layer on `x` (`[batch, seq, in]`): with the layer's block-quantised weights when
/// given and [`quant_forward`] applies, else [`linear_split`] on the `f32` weights.
fn project<B: Backend>(
    lin: &Linear<B>,
    quant: Option<&QuantMatrix>,
    x: Tensor<B, 3>,
    split: usize,
) -> Tensor<B, 3> {
    let y = match (quant.and_then(|q| quant_forward(q, &x)), quant) {
        (Some(y), _) => y,
        (None, Some(q)) if is_elided(&lin.weight) => {
            let device = x.device();
            x.matmul(dense_transposed::<B>(q, &device).unsqueeze::<3>())
        }
        (None, _) => return linear_split(lin, x, split),
    };
    match &lin.bias {
        Some(bias) => y + bias.val().unsqueeze::<3>(),
        None => y,
    }
}

/// Whether a weight is elided: a `[0, 0]` placeholder for a matrix held only as stored
/// ([`Llama::from_gguf_compact`]); its [`QuantMatrix`] stands in for it.
pub fn is_elided<B: Backend>(weight: &Param<Tensor<B, 2>>) -> bool {
    weight.dims() == [0, 0]
}

/// The `[0, 0]` placeholder weight of a matrix held only as stored ([`is_elided`]).
pub fn elided_weight<B: Backend>(device: &B::Device) -> Param<Tensor<B, 2>> {
    param(Tensor::from_data(
        TensorData::new(Vec::<f32>::new(), [0, 0]),
        device,
    ))
}

/// A temporary dense `f32` copy of `q`, transposed to `[in, out]` (for a product of more
/// than [`QUANT_MAX_ROWS`] rows with an elided weight); freed when dropped.
fn dense_transposed<B: Backend>(q: &QuantMatrix, device: &B::Device) -> Tensor<B, 2> {
    Tensor::from_data(
        TensorData::new(q.dequantize_transposed(), [q.cols(), q.rows()]),
        device,
    )
}

/// How one layer's projections run: split across threads ([`Llama::with_matmul_split`]) and
/// with which block-quantised weights ([`Llama::with_quantized_decode`]).
#[derive(Clone, Copy)]
struct Projections<'a> {
    split: usize,
    quant: Option<&'a QuantLayer>,
}

impl Projections<'_> {
    /// `lin` on `x`, with the quantised matrix `pick` selects when there is one.
    fn run<B: Backend>(
        self,
        lin: &Linear<B>,
        pick: fn(&QuantLayer) -> Option<&QuantMatrix>,
        x: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        project(lin, self.quant.and_then(pick), x, self.split)
    }
}

/// Block-quantised copies of one decoder layer's projection weights (`[out, in]`), used by
/// decode steps ([`Llama::with_quantized_decode`]); `None` for a projection that keeps its
/// `f32` weights.
#[derive(Debug, Clone, Default)]
pub struct QuantLayer {
    /// Query projection.
    pub q_proj: Option<QuantMatrix>,
    /// Key projection.
    pub k_proj: Option<QuantMatrix>,
    /// Value projection.
    pub v_proj: Option<QuantMatrix>,
    /// Output projection.
    pub o_proj: Option<QuantMatrix>,
    /// Gate projection.
    pub gate_proj: Option<QuantMatrix>,
    /// Up projection.
    pub up_proj: Option<QuantMatrix>,
    /// Down projection.
    pub down_proj: Option<QuantMatrix>,
}

impl QuantLayer {
    fn matrices(&self) -> [(&'static str, Option<&QuantMatrix>); 7] {
        [
            ("q_proj", self.q_proj.as_ref()),
            ("k_proj", self.k_proj.as_ref()),
            ("v_proj", self.v_proj.as_ref()),
            ("o_proj", self.o_proj.as_ref()),
            ("gate_proj", self.gate_proj.as_ref()),
            ("up_proj", self.up_proj.as_ref()),
            ("down_proj", self.down_proj.as_ref()),
        ]
    }
}

/// Block-quantised weights for the decode steps of a whole model: one [`QuantLayer`] per
/// decoder layer and the language-model head (`[vocab, hidden]`, the embedding when tied).
#[derive(Debug, Clone, Default)]
pub struct QuantDecode {
    /// Per decoder layer.
    pub layers: Vec<QuantLayer>,
    /// The head.
    pub head: Option<QuantMatrix>,
    /// The token embedding (`[vocab, hidden]`) when the model holds it only as stored and
    /// the head is not tied to it ([`Llama::from_gguf_compact`]); `None` otherwise.
    pub embed: Option<QuantMatrix>,
}

impl QuantDecode {
    /// How many matrices are quantised, of how many there are.
    pub fn coverage(&self) -> (usize, usize) {
        let layer = self
            .layers
            .iter()
            .flat_map(|l| l.matrices())
            .filter(|(_, m)| m.is_some())
            .count();
        (
            layer + usize::from(self.head.is_some()),
            7 * self.layers.len() + 1,
        )
    }

    /// Bytes of quantised weight data a decode step reads.
    pub fn weight_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .flat_map(|l| l.matrices())
            .filter_map(|(_, m)| m.map(QuantMatrix::weight_bytes))
            .sum();
        layers + self.head.as_ref().map_or(0, QuantMatrix::weight_bytes)
    }
}

/// Self-attention with grouped-query heads, rotary embedding and an optional per-head
/// RMSNorm on queries and keys.
#[derive(Module, Debug)]
pub struct LlamaAttention<B: Backend> {
    /// Query projection.
    pub q_proj: Linear<B>,
    /// Key projection.
    pub k_proj: Linear<B>,
    /// Value projection.
    pub v_proj: Linear<B>,
    /// Output projection.
    pub o_proj: Linear<B>,
    /// Per-head RMSNorm of the queries (Qwen3).
    pub q_norm: Option<RmsNorm<B>>,
    /// Per-head RMSNorm of the keys (Qwen3).
    pub k_norm: Option<RmsNorm<B>>,
    /// Number of query heads.
    pub num_heads: usize,
    /// Number of key/value heads.
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

impl<B: Backend> LlamaAttention<B> {
    /// `x` is `[batch, seq, hidden]`; `cos`/`sin` are `[1 or batch, 1, seq, head_dim / 2]`
    /// for the new positions; `key_mask` (`[batch, 1, 1, keys]`, `true` = masked out) hides
    /// padding keys; the new keys and values are appended to `cache`.
    fn forward(
        &self,
        x: Tensor<B, 3>,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
        key_mask: Option<&Tensor<B, 4, Bool>>,
        cache: &mut Option<(Tensor<B, 4>, Tensor<B, 4>)>,
        proj: Projections,
    ) -> Tensor<B, 3> {
        let [b, s, _] = x.dims();
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let heads = |t: Tensor<B, 3>, n: usize| t.reshape([b, s, n, hd]).swap_dims(1, 2);
        let mut q = heads(proj.run(&self.q_proj, |l| l.q_proj.as_ref(), x.clone()), nh);
        let mut k = heads(
            proj.run(&self.k_proj, |l| l.k_proj.as_ref(), x.clone()),
            nkv,
        );
        let v = heads(proj.run(&self.v_proj, |l| l.v_proj.as_ref(), x), nkv);
        if let Some(n) = &self.q_norm {
            q = n.forward(q);
        }
        if let Some(n) = &self.k_norm {
            k = n.forward(k);
        }
        let q = apply_rope(q, cos, sin);
        let k = apply_rope(k, cos, sin);
        let (k, v) = match cache.take() {
            Some((ck, cv)) => (Tensor::cat(vec![ck, k], 2), Tensor::cat(vec![cv, v], 2)),
            None => (k, v),
        };
        *cache = Some((k.clone(), v.clone()));
        let t = k.dims()[2];
        let groups = nh / nkv;
        let out = if s == 1 {
            // One new query per head sees every cached position: group the query heads that
            // share a key/value head instead of repeating the cache.
            let q = q.reshape([b, nkv, groups, hd]);
            let mask = key_mask.map(|m| m.clone().expand([b, nkv, groups, t]));
            attention(q, k, v, mask, None, AttentionModuleOptions::default())
                .reshape([b, nh, 1, hd])
        } else {
            let repeat = |t4: Tensor<B, 4>| {
                if groups == 1 {
                    t4
                } else {
                    t4.unsqueeze_dim::<5>(2)
                        .expand([b, nkv, groups, t, hd])
                        .reshape([b, nh, t, hd])
                }
            };
            let options = AttentionModuleOptions {
                is_causal: true,
                ..Default::default()
            };
            let mask = key_mask.map(|m| m.clone().expand([b, nh, s, t]));
            attention(q, repeat(k), repeat(v), mask, None, options)
        };
        proj.run(
            &self.o_proj,
            |l| l.o_proj.as_ref(),
            contiguous(out.swap_dims(1, 2)).reshape([b, s, nh * hd]),
        )
    }
}

/// The SwiGLU feed-forward block: `down(silu(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct LlamaMlp<B: Backend> {
    /// Gate projection.
    pub gate_proj: Linear<B>,
    /// Up projection.
    pub up_proj: Linear<B>,
    /// Down projection.
    pub down_proj: Linear<B>,
}

impl<B: Backend> LlamaMlp<B> {
    fn forward(&self, x: Tensor<B, 3>, proj: Projections) -> Tensor<B, 3> {
        let gate = silu(proj.run(&self.gate_proj, |l| l.gate_proj.as_ref(), x.clone()));
        let up = proj.run(&self.up_proj, |l| l.up_proj.as_ref(), x);
        proj.run(&self.down_proj, |l| l.down_proj.as_ref(), gate * up)
    }
}

/// One pre-norm decoder layer.
#[derive(Module, Debug)]
pub struct LlamaDecoderLayer<B: Backend> {
    /// RMSNorm before attention.
    pub input_layernorm: RmsNorm<B>,
    /// Self-attention.
    pub self_attn: LlamaAttention<B>,
    /// RMSNorm before the MLP.
    pub post_attention_layernorm: RmsNorm<B>,
    /// Feed-forward block.
    pub mlp: LlamaMlp<B>,
}

/// The decoder's parameters: embedding, layers, final norm and (when not tied) the head.
#[derive(Module, Debug)]
pub struct LlamaModel<B: Backend> {
    /// Token embedding, `[vocab, hidden]`.
    pub embed_tokens: Embedding<B>,
    /// The decoder layers.
    pub layers: Vec<LlamaDecoderLayer<B>>,
    /// Final RMSNorm.
    pub norm: RmsNorm<B>,
    /// Language-model head; `None` when tied to the embedding.
    pub lm_head: Option<Linear<B>>,
}

/// The key/value cache of one sequence batch: per layer, keys and values of every position
/// seen so far, `[batch, kv_heads, positions, head_dim]`, and how many of the first positions
/// of each row are left padding (a batch of prompts of different lengths,
/// [`Llama::prefill_batch`]).
///
/// Each forward extends every layer's tensors with `Tensor::cat` (a copy of the cache). A
/// preallocated buffer written with `slice_assign` and a two-block cache were measured slower
/// on the `flex` CPU backend (docs/performance.md, "Language model").
#[derive(Debug, Clone)]
pub struct LlamaCache<B: Backend> {
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    len: usize,
    batch: usize,
    /// Left padding per row; empty when no row is padded.
    pad: Vec<usize>,
}

impl<B: Backend> LlamaCache<B> {
    /// An empty cache for a model with `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        LlamaCache {
            layers: vec![None; num_layers],
            len: 0,
            batch: 0,
            pad: Vec::new(),
        }
    }

    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every cached position.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.len = 0;
        self.batch = 0;
        self.pad.clear();
    }

    /// Number of left-padding positions of each row (empty when no row is padded).
    pub fn padding(&self) -> &[usize] {
        &self.pad
    }
}

/// A Llama-family decoder ready for inference: parameters, configuration and rotary
/// frequencies.
#[derive(Debug)]
pub struct Llama<B: Backend> {
    model: LlamaModel<B>,
    config: LlamaConfig,
    rope: RotaryEmbedding,
    device: B::Device,
    /// Blocks the small (single-row) projections are split into across rayon's threads
    /// ([`Llama::with_matmul_split`]).
    split: usize,
    /// Block-quantised weights for decode steps ([`Llama::with_quantized_decode`]).
    quant: Option<QuantDecode>,
}

impl<B: Backend> Llama<B> {
    /// Assembles a model from its parameters; checks that their shapes match `config`.
    pub fn from_parts(
        config: LlamaConfig,
        model: LlamaModel<B>,
        device: &B::Device,
    ) -> Result<Self> {
        let rope = RotaryEmbedding::new(&config);
        Self::from_parts_with_rope(config, model, rope, device)
    }

    /// As [`Llama::from_parts`], with explicit rotary frequencies.
    pub fn from_parts_with_rope(
        config: LlamaConfig,
        model: LlamaModel<B>,
        rope: RotaryEmbedding,
        device: &B::Device,
    ) -> Result<Self> {
        config.validate()?;
        check_shapes(&config, &model, None)?;
        if rope.inv_freq.len() != config.head_dim / 2 {
            return Err(model_err("rotary frequencies do not match head_dim"));
        }
        Ok(Llama {
            model,
            config,
            rope,
            device: device.clone(),
            split: 1,
            quant: None,
        })
    }

    /// As [`Llama::from_parts_with_rope`], with block-quantised weights attached
    /// ([`Llama::with_quantized_decode`]); `model` may hold elided weights ([`is_elided`])
    /// for the matrices `quant` holds, which are then used for every product, dequantised
    /// one matrix at a time for inputs of more than [`QUANT_MAX_ROWS`] rows.
    ///
    /// # Errors
    /// As [`Llama::with_quantized_decode`], and for any shape `from_parts_with_rope`
    /// refuses.
    pub fn from_parts_quantized(
        config: LlamaConfig,
        model: LlamaModel<B>,
        rope: RotaryEmbedding,
        quant: QuantDecode,
        device: &B::Device,
    ) -> Result<Self> {
        config.validate()?;
        if quant.layers.len() != config.num_hidden_layers {
            return Err(model_err(format!(
                "quantised weights for {} layers, the model has {}",
                quant.layers.len(),
                config.num_hidden_layers
            )));
        }
        check_shapes(&config, &model, Some(&quant))?;
        if rope.inv_freq.len() != config.head_dim / 2 {
            return Err(model_err("rotary frequencies do not match head_dim"));
        }
        Ok(Llama {
            model,
            config,
            rope,
            device: device.clone(),
            split: 1,
            quant: Some(quant),
        })
    }

    /// Sets how many blocks single-row projections (decode steps) are split into across
    /// rayon's threads (1, the default: never split). The `flex` CPU backend runs such small
    /// matmuls on one thread; splitting them is an experiment that did not pay on the shared
    /// 2-core machine it was measured on (docs/performance.md), hence off by default.
    pub fn with_matmul_split(mut self, parts: usize) -> Self {
        self.split = parts.max(1);
        self
    }

    /// Runs decode steps (inputs of at most [`QUANT_MAX_ROWS`] rows) with block-quantised
    /// weights ([`crate::quant`]): on a CPU a decode step reads the weights once, so reading
    /// them as stored in a GGUF file (4 or 8 bits) instead of `f32` is what makes it fast.
    /// Products equal the `f32` ones with the dequantised weights up to summation order.
    /// Prefill keeps the `f32` weights (or, for an elided weight, dequantises its matrix
    /// into a temporary; [`Llama::from_gguf_compact`]). Meant for CPU backends: on a GPU backend each
    /// projection would copy its input to the host and back.
    ///
    /// Replaces the quantised weights attached before; a model with elided weights
    /// ([`Llama::from_gguf_compact`]) needs `quant` to hold every elided matrix.
    ///
    /// # Errors
    /// When the layer count or a matrix's shape does not match the model, or an elided
    /// weight has no quantised matrix.
    pub fn with_quantized_decode(mut self, quant: QuantDecode) -> Result<Self> {
        let c = &self.config;
        if quant.layers.len() != c.num_hidden_layers {
            return Err(model_err(format!(
                "quantised weights for {} layers, the model has {}",
                quant.layers.len(),
                c.num_hidden_layers
            )));
        }
        check_shapes(c, &self.model, Some(&quant))?;
        self.quant = Some(quant);
        Ok(self)
    }

    /// The block-quantised decode weights, when attached.
    pub fn quantized_decode(&self) -> Option<&QuantDecode> {
        self.quant.as_ref()
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The parameters.
    pub fn model(&self) -> &LlamaModel<B> {
        &self.model
    }

    /// The rotary frequencies.
    pub fn rope(&self) -> &RotaryEmbedding {
        &self.rope
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// An empty key/value cache for this model.
    pub fn new_cache(&self) -> LlamaCache<B> {
        LlamaCache::new(self.config.num_hidden_layers)
    }

    /// Runs `tokens` (`[batch, seq]`) through the decoder after what `cache` holds, appends
    /// their keys and values to it and returns the final hidden states `[batch, seq, hidden]`
    /// (after the last RMSNorm).
    ///
    /// When the cache was started by [`Llama::prefill_batch`], padded positions stay masked
    /// and each row's positions count from its first real token.
    pub fn forward_hidden(
        &self,
        tokens: Tensor<B, 2, Int>,
        cache: &mut LlamaCache<B>,
    ) -> Result<Tensor<B, 3>> {
        self.forward_inner(tokens, None, cache)
    }

    /// [`Llama::forward_hidden`], with `pad` (left padding per row) for a first chunk.
    fn forward_inner(
        &self,
        tokens: Tensor<B, 2, Int>,
        pad: Option<Vec<usize>>,
        cache: &mut LlamaCache<B>,
    ) -> Result<Tensor<B, 3>> {
        let [b, s] = tokens.dims();
        if self.quant.is_some()
            && b * s <= QUANT_MAX_ROWS
            && rayon::current_thread_index().is_none()
        {
            // The quantised products split their rows over rayon's threads. Called from
            // outside the pool, each of the ~200 products of a step would wake a worker and
            // block on it (measured: a third of a decode step's time in futex waits); run the
            // whole step on a worker instead, where they are cheap.
            return rayon::scope(|_| self.forward_inner(tokens, pad, cache));
        }
        if s == 0 || b == 0 {
            return Err(model_err("forward needs at least one token"));
        }
        if cache.layers.len() != self.model.layers.len() {
            return Err(model_err(format!(
                "the cache has {} layers, the model {}",
                cache.layers.len(),
                self.model.layers.len()
            )));
        }
        if !cache.is_empty() && cache.batch != b {
            return Err(model_err(format!(
                "the cache holds a batch of {}, the input has {b}",
                cache.batch
            )));
        }
        let ids = tokens
            .to_data()
            .convert::<i64>()
            .into_vec::<i64>()
            .map_err(|e| model_err(format!("reading token ids: {e:?}")))?;
        if let Some(&t) = ids
            .iter()
            .find(|&&t| t < 0 || t as u64 >= self.config.vocab_size as u64)
        {
            return Err(model_err(format!(
                "token id {t} is outside the vocabulary of {}",
                self.config.vocab_size
            )));
        }
        let start = cache.len;
        if start + s > self.config.max_position_embeddings {
            return Err(model_err(format!(
                "{} positions exceed the model's context of {} (max_position_embeddings)",
                start + s,
                self.config.max_position_embeddings
            )));
        }
        if let Some(pad) = pad {
            if !cache.is_empty() {
                return Err(model_err(
                    "padding can only be given for the first chunk of a sequence batch",
                ));
            }
            if pad.len() != b || pad.iter().any(|&p| p >= s) {
                return Err(model_err(format!(
                    "padding {pad:?} does not fit a batch of {b} rows of {s} tokens"
                )));
            }
            cache.pad = if pad.iter().all(|&p| p == 0) {
                Vec::new()
            } else {
                pad
            };
        }
        let t = start + s;
        let (cos, sin, mask) = if cache.pad.is_empty() {
            let (cos, sin) = self.rope.cos_sin::<B>(start, s, &self.device);
            (cos.unsqueeze::<4>(), sin.unsqueeze::<4>(), None)
        } else {
            // Per row: positions count from the first real token; keys that are padding
            // are masked (`true` = masked out). A padding query sees no key at all and gets
            // a zero attention output, which no real position ever reads.
            let (cos, sin) = self
                .rope
                .cos_sin_padded::<B>(start, s, &cache.pad, &self.device);
            let mut mask = Vec::with_capacity(b * t);
            for &p in &cache.pad {
                mask.extend((0..t).map(|j| j < p));
            }
            let mask =
                Tensor::<B, 4, Bool>::from_data(TensorData::new(mask, [b, 1, 1, t]), &self.device);
            (cos, sin, Some(mask))
        };
        let mut x = self.embed(tokens, &ids)?;
        for (i, (layer, kv)) in self
            .model
            .layers
            .iter()
            .zip(cache.layers.iter_mut())
            .enumerate()
        {
            let proj = Projections {
                split: self.split,
                quant: self.quant.as_ref().and_then(|q| q.layers.get(i)),
            };
            let h = layer.self_attn.forward(
                layer.input_layernorm.forward(x.clone()),
                &cos,
                &sin,
                mask.as_ref(),
                kv,
                proj,
            );
            x = x + h;
            let h = layer
                .mlp
                .forward(layer.post_attention_layernorm.forward(x.clone()), proj);
            x = x + h;
        }
        cache.len = start + s;
        cache.batch = b;
        Ok(self.model.norm.forward(x))
    }

    /// The token embeddings of `tokens` (`[batch, seq]`, whose values are `ids`, checked to
    /// lie in the vocabulary): `[batch, seq, hidden]`. An elided embedding dequantises only
    /// the looked-up rows of its quantised matrix.
    fn embed(&self, tokens: Tensor<B, 2, Int>, ids: &[i64]) -> Result<Tensor<B, 3>> {
        if !is_elided(&self.model.embed_tokens.weight) {
            return Ok(self.model.embed_tokens.forward(tokens));
        }
        let [b, s] = tokens.dims();
        let q = self.quant.as_ref().and_then(|q| {
            q.embed
                .as_ref()
                .or(q.head.as_ref().filter(|_| self.config.tie_word_embeddings))
        });
        // `check_shapes` ensures an elided embedding has its quantised matrix.
        let q = q.ok_or_else(|| model_err("the elided embedding has no quantised matrix"))?;
        let rows: Vec<usize> = ids.iter().map(|&t| t as usize).collect();
        let values = q
            .dequantize_rows(&rows)
            .map_err(|e| model_err(format!("embedding lookup: {e}")))?;
        Ok(Tensor::from_data(
            TensorData::new(values, [b, s, q.cols()]),
            &self.device,
        ))
    }

    /// The language-model head: hidden states `[n, hidden]` to logits `[n, vocab]`.
    pub fn logits(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        if let Some(head) = self.quant.as_ref().and_then(|q| q.head.as_ref()) {
            let [n, d] = hidden.dims();
            if let Some(y) = quant_forward(head, &hidden.clone().reshape([1, n, d])) {
                return y.reshape([n, head.rows()]);
            }
            let elided = match &self.model.lm_head {
                Some(l) => is_elided(&l.weight),
                None => is_elided(&self.model.embed_tokens.weight),
            };
            if elided {
                return hidden.matmul(dense_transposed::<B>(head, &self.device));
            }
        }
        match &self.model.lm_head {
            Some(head) => head.forward(hidden),
            None => hidden.matmul(self.model.embed_tokens.weight.val().transpose()),
        }
    }

    /// Logits for every position of `tokens` (`[batch, seq]`), `[batch, seq, vocab]`.
    pub fn forward(
        &self,
        tokens: Tensor<B, 2, Int>,
        cache: &mut LlamaCache<B>,
    ) -> Result<Tensor<B, 3>> {
        let h = self.forward_hidden(tokens, cache)?;
        let [b, s, d] = h.dims();
        Ok(self
            .logits(h.reshape([b * s, d]))
            .reshape([b, s, self.config.vocab_size]))
    }

    /// Converts token ids to a `[1, seq]` tensor, refusing ids outside the vocabulary.
    pub fn token_tensor(&self, tokens: &[u32]) -> Result<Tensor<B, 2, Int>> {
        if tokens.is_empty() {
            return Err(model_err("forward needs at least one token"));
        }
        if let Some(&t) = tokens
            .iter()
            .find(|&&t| t as usize >= self.config.vocab_size)
        {
            return Err(model_err(format!(
                "token id {t} is outside the vocabulary of {}",
                self.config.vocab_size
            )));
        }
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        Ok(Tensor::from_data(
            TensorData::new(ids, [1, tokens.len()]),
            &self.device,
        ))
    }

    /// Logits for every position of one sequence, `[seq, vocab]`.
    pub fn forward_tokens(
        &self,
        tokens: &[u32],
        cache: &mut LlamaCache<B>,
    ) -> Result<Tensor<B, 2>> {
        let logits = self.forward(self.token_tensor(tokens)?, cache)?;
        let [_, s, v] = logits.dims();
        Ok(logits.reshape([s, v]))
    }

    /// Logits of the position after `tokens` only (the head runs on the last position), as
    /// a vector of `vocab_size` numbers. Feeding a prompt this way is the prefill; feeding one
    /// token at a time continues from the cache.
    pub fn next_token_logits(&self, tokens: &[u32], cache: &mut LlamaCache<B>) -> Result<Vec<f32>> {
        let h = self.forward_hidden(self.token_tensor(tokens)?, cache)?;
        let [_, s, d] = h.dims();
        let last = h.narrow(1, s - 1, 1).reshape([1, d]);
        cielr_core::backend::read_finite_f32(self.logits(last), "the language model's logits")
            .map_err(|e| model_err(e.to_string()))
    }
}

impl<B: Backend> Llama<B> {
    /// Runs prompts of different lengths as one batch into an empty `cache`: each is left
    /// padded to the longest (with token 0), padding keys are masked and each row's positions
    /// count from its first real token, so every row's logits equal those of its prompt run
    /// alone (as transformers' `generate` does with an attention mask). Returns the logits
    /// of every slot, `[rows, longest, vocab]`; row `r`'s prompt occupies its last
    /// `prompts[r].len()` slots (the padding slots hold meaningless values). Continue with
    /// [`Llama::decode_batch`].
    pub fn forward_padded(
        &self,
        prompts: &[&[u32]],
        cache: &mut LlamaCache<B>,
    ) -> Result<Tensor<B, 3>> {
        let (tokens, pad) = self.padded_tokens(prompts)?;
        let h = self.forward_inner(tokens, Some(pad), cache)?;
        let [b, s, d] = h.dims();
        Ok(self
            .logits(h.reshape([b * s, d]))
            .reshape([b, s, self.config.vocab_size]))
    }

    /// [`Llama::forward_padded`] with the head on the last slot only: the next-token logits
    /// of each prompt, one vector of `vocab_size` numbers per row.
    pub fn prefill_batch(
        &self,
        prompts: &[&[u32]],
        cache: &mut LlamaCache<B>,
    ) -> Result<Vec<Vec<f32>>> {
        let (tokens, pad) = self.padded_tokens(prompts)?;
        let h = self.forward_inner(tokens, Some(pad), cache)?;
        self.last_logits_rows(h)
    }

    /// One decode step of a batch: token `tokens[r]` appended to row `r` of `cache` (started
    /// by [`Llama::prefill_batch`] or [`Llama::forward_padded`]); the next-token logits of
    /// each row.
    pub fn decode_batch(&self, tokens: &[u32], cache: &mut LlamaCache<B>) -> Result<Vec<Vec<f32>>> {
        if cache.is_empty() {
            return Err(model_err("decode_batch needs a cache started by a prefill"));
        }
        let ids: Vec<&[u32]> = tokens.iter().map(std::slice::from_ref).collect();
        let (tokens, _) = self.padded_tokens(&ids)?;
        let h = self.forward_inner(tokens, None, cache)?;
        self.last_logits_rows(h)
    }

    /// Left-pads prompts with token 0 into a `[rows, longest]` tensor; the padding per row.
    fn padded_tokens(&self, prompts: &[&[u32]]) -> Result<(Tensor<B, 2, Int>, Vec<usize>)> {
        let width = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        if prompts.is_empty() || prompts.iter().any(|p| p.is_empty()) {
            return Err(model_err(
                "every prompt of a batch needs at least one token",
            ));
        }
        let mut ids = Vec::with_capacity(prompts.len() * width);
        let mut pad = Vec::with_capacity(prompts.len());
        for p in prompts {
            if let Some(&t) = p.iter().find(|&&t| t as usize >= self.config.vocab_size) {
                return Err(model_err(format!(
                    "token id {t} is outside the vocabulary of {}",
                    self.config.vocab_size
                )));
            }
            pad.push(width - p.len());
            ids.extend(std::iter::repeat_n(0i64, width - p.len()));
            ids.extend(p.iter().map(|&t| t as i64));
        }
        let tokens = Tensor::from_data(TensorData::new(ids, [prompts.len(), width]), &self.device);
        Ok((tokens, pad))
    }

    /// The head on the last position of each row of `[rows, seq, hidden]` hidden states.
    fn last_logits_rows(&self, h: Tensor<B, 3>) -> Result<Vec<Vec<f32>>> {
        let [b, s, d] = h.dims();
        let last = h.narrow(1, s - 1, 1).reshape([b, d]);
        let flat =
            cielr_core::backend::read_finite_f32(self.logits(last), "the language model's logits")
                .map_err(|e| model_err(e.to_string()))?;
        Ok(flat
            .chunks_exact(self.config.vocab_size)
            .map(<[f32]>::to_vec)
            .collect())
    }
}

/// Checks every parameter's shape against the configuration, and those of the quantised
/// matrices when given. An elided weight ([`is_elided`]) is accepted only when its quantised
/// matrix is present with the configured shape.
fn check_shapes<B: Backend>(
    c: &LlamaConfig,
    m: &LlamaModel<B>,
    quant: Option<&QuantDecode>,
) -> Result<()> {
    let (h, hd) = (c.hidden_size, c.head_dim);
    let q_out = c.num_attention_heads * hd;
    let kv = c.num_key_value_heads * hd;
    let expect = |name: String, got: Vec<usize>, want: Vec<usize>| {
        if got == want {
            Ok(())
        } else {
            Err(model_err(format!(
                "parameter {name} has shape {got:?}, expected {want:?}"
            )))
        }
    };
    // A quantised matrix is [out, in]; Burn's Linear weight [in, out].
    let quantised = |name: &str, q: Option<&QuantMatrix>, i: usize, o: usize, elided: bool| match q
    {
        Some(q) if [q.cols(), q.rows()] != [i, o] => Err(model_err(format!(
            "quantised {name} is {} x {}, expected {o} x {i}",
            q.rows(),
            q.cols()
        ))),
        None if elided => Err(model_err(format!(
            "{name}.weight is elided but no quantised matrix holds it"
        ))),
        _ => Ok(()),
    };
    let lin = |name: String,
               l: &Linear<B>,
               q: Option<&QuantMatrix>,
               i: usize,
               o: usize,
               bias: bool|
     -> Result<()> {
        let elided = is_elided(&l.weight);
        if !elided {
            expect(
                format!("{name}.weight"),
                l.weight.dims().to_vec(),
                vec![i, o],
            )?;
        }
        quantised(&name, q, i, o, elided)?;
        match (&l.bias, bias) {
            (Some(b), true) => expect(format!("{name}.bias"), b.dims().to_vec(), vec![o]),
            (None, false) => Ok(()),
            (Some(_), false) => Err(model_err(format!("{name} has a bias the config excludes"))),
            (None, true) => Err(model_err(format!(
                "{name} lacks the bias the config requires"
            ))),
        }
    };
    let norm = |name: String, n: &RmsNorm<B>, d: usize| {
        expect(format!("{name}.weight"), n.gamma.dims().to_vec(), vec![d])
    };
    let head_q = quant.and_then(|q| q.head.as_ref());
    if is_elided(&m.embed_tokens.weight) {
        // Looked up in the tied head's matrix, else in a quantised copy of the embedding.
        let q = if c.tie_word_embeddings {
            head_q
        } else {
            quant.and_then(|q| q.embed.as_ref())
        };
        quantised("embed_tokens", q, h, c.vocab_size, true)?;
    } else {
        expect(
            "embed_tokens.weight".into(),
            m.embed_tokens.weight.dims().to_vec(),
            vec![c.vocab_size, h],
        )?;
    }
    if let Some(e) = quant.and_then(|q| q.embed.as_ref()) {
        quantised("embed_tokens", Some(e), h, c.vocab_size, false)?;
    }
    if m.layers.len() != c.num_hidden_layers {
        return Err(model_err(format!(
            "{} layers, the config says {}",
            m.layers.len(),
            c.num_hidden_layers
        )));
    }
    for (i, l) in m.layers.iter().enumerate() {
        let p = format!("layers.{i}");
        let ql = quant.and_then(|q| q.layers.get(i));
        let q = |pick: fn(&QuantLayer) -> Option<&QuantMatrix>| ql.and_then(pick);
        norm(format!("{p}.input_layernorm"), &l.input_layernorm, h)?;
        norm(
            format!("{p}.post_attention_layernorm"),
            &l.post_attention_layernorm,
            h,
        )?;
        let a = &l.self_attn;
        if (a.num_heads, a.num_kv_heads, a.head_dim)
            != (c.num_attention_heads, c.num_key_value_heads, hd)
        {
            return Err(model_err(format!(
                "{p}.self_attn has other head counts than the config"
            )));
        }
        lin(
            format!("{p}.self_attn.q_proj"),
            &a.q_proj,
            q(|l| l.q_proj.as_ref()),
            h,
            q_out,
            c.qkv_bias,
        )?;
        lin(
            format!("{p}.self_attn.k_proj"),
            &a.k_proj,
            q(|l| l.k_proj.as_ref()),
            h,
            kv,
            c.qkv_bias,
        )?;
        lin(
            format!("{p}.self_attn.v_proj"),
            &a.v_proj,
            q(|l| l.v_proj.as_ref()),
            h,
            kv,
            c.qkv_bias,
        )?;
        lin(
            format!("{p}.self_attn.o_proj"),
            &a.o_proj,
            q(|l| l.o_proj.as_ref()),
            q_out,
            h,
            c.o_bias,
        )?;
        match (&a.q_norm, &a.k_norm, c.qk_norm) {
            (Some(qn), Some(kn), true) => {
                norm(format!("{p}.self_attn.q_norm"), qn, hd)?;
                norm(format!("{p}.self_attn.k_norm"), kn, hd)?;
            }
            (None, None, false) => {}
            _ => {
                return Err(model_err(format!(
                    "{p}.self_attn: q/k norms do not match the config (qk_norm = {})",
                    c.qk_norm
                )))
            }
        }
        let i_ = c.intermediate_size;
        lin(
            format!("{p}.mlp.gate_proj"),
            &l.mlp.gate_proj,
            q(|l| l.gate_proj.as_ref()),
            h,
            i_,
            c.mlp_bias,
        )?;
        lin(
            format!("{p}.mlp.up_proj"),
            &l.mlp.up_proj,
            q(|l| l.up_proj.as_ref()),
            h,
            i_,
            c.mlp_bias,
        )?;
        lin(
            format!("{p}.mlp.down_proj"),
            &l.mlp.down_proj,
            q(|l| l.down_proj.as_ref()),
            i_,
            h,
            c.mlp_bias,
        )?;
    }
    norm("norm".into(), &m.norm, h)?;
    match (&m.lm_head, c.tie_word_embeddings) {
        (Some(l), false) => lin("lm_head".into(), l, head_q, h, c.vocab_size, false),
        (None, true) => quantised("head", head_q, h, c.vocab_size, false),
        (Some(_), true) => Err(model_err("an lm_head is given but the embeddings are tied")),
        (None, false) => Err(model_err(
            "lm_head is missing and the embeddings are not tied",
        )),
    }
}

/// Wraps a parameter tensor (for building modules from loaded weights).
pub(crate) fn param<B: Backend, const D: usize>(t: Tensor<B, D>) -> Param<Tensor<B, D>> {
    Param::from_tensor(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_frequencies_match_transformers() {
        // Llama 3.1 8B's rope: transformers' `_compute_llama3_parameters` gives these.
        let config = LlamaConfig::from_json_str(
            r#"{"vocab_size": 8, "hidden_size": 4096, "intermediate_size": 8,
                "num_hidden_layers": 1, "num_attention_heads": 32, "rope_theta": 500000.0,
                "max_position_embeddings": 131072,
                "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}"#,
        )
        .unwrap();
        let rope = RotaryEmbedding::new(&config);
        let expected = [
            (0, 1.0),
            (20, 0.016_560_44),
            (40, 3.428_102_4e-5),
            (45, 1.229_763_9e-5),
            (50, 4.411_534_5e-6),
            (63, 3.068_925_9e-7),
        ];
        for (i, want) in expected {
            let got = rope.inv_freq()[i] as f64;
            assert!(((got - want) / want).abs() < 1e-6, "{i}: {got} vs {want}");
        }
        assert!(rope.clone().with_freq_factors(&[1.0]).is_err());
    }

    #[test]
    fn split_projections_match_unsplit() {
        // Input widths 64..256 with uneven blocks (256 / 3, for the down projection); the
        // single-row decode steps go through the split path, the 5-token prefill too.
        let config = LlamaConfig::from_json_str(
            r#"{"model_type": "qwen2", "vocab_size": 50, "hidden_size": 64,
                "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "tie_word_embeddings": false}"#,
        )
        .unwrap();
        let device = Default::default();
        let model = config
            .init::<cielr_core::backend::CpuBackend>(&device)
            .unwrap()
            .with_matmul_split(1);
        let run = |m: &Llama<cielr_core::backend::CpuBackend>| {
            let mut cache = m.new_cache();
            let mut out = m.next_token_logits(&[1, 2, 3, 4, 5], &mut cache).unwrap();
            for t in [6, 7] {
                out.extend(m.next_token_logits(&[t], &mut cache).unwrap());
            }
            out
        };
        let plain = run(&model);
        let split = run(&model.with_matmul_split(3));
        let err = plain
            .iter()
            .zip(&split)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert_eq!(plain.len(), 150);
        assert!(err < 1e-5, "split projections differ by {err}");
    }

    #[test]
    fn random_models_run_and_count_parameters() {
        let config = LlamaConfig::from_json_str(
            r#"{"model_type": "qwen3", "vocab_size": 40, "hidden_size": 16,
                "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "head_dim": 8, "tie_word_embeddings": true}"#,
        )
        .unwrap();
        let model = config
            .init::<cielr_core::backend::CpuBackend>(&Default::default())
            .unwrap();
        let n: usize = model.model().num_params();
        assert_eq!(n, config.num_parameters());
        let mut cache = model.new_cache();
        let logits = model.next_token_logits(&[1, 2, 3], &mut cache).unwrap();
        assert_eq!(logits.len(), 40);
        assert!(logits.iter().all(|l| l.is_finite()));
    }

    type Cpu = cielr_core::backend::CpuBackend;

    /// A `rows x cols` Q8_0 matrix of pseudo-random values.
    fn q8_matrix(rows: usize, cols: usize, seed: u32) -> QuantMatrix {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        let mut bytes = Vec::new();
        for _ in 0..rows * cols / 32 {
            let scale = 0.002 + (next() % 1000) as f32 * 2e-5;
            bytes.extend_from_slice(&half::f16::from_f32(scale).to_bits().to_le_bytes());
            bytes.extend((0..32).map(|_| next() as u8));
        }
        QuantMatrix::from_gguf(crate::gguf::GgufDType::Q8_0, rows, cols, &bytes).unwrap()
    }

    #[test]
    fn compact_untied_model_matches_dense() {
        // An untied Qwen2 model (biases on q/k/v) whose matrices are Q8_0: once with the
        // dequantised values as f32 weights, once with every matrix (head and embedding
        // included) elided and held as stored only.
        let config = LlamaConfig::from_json_str(
            r#"{"model_type": "qwen2", "vocab_size": 40, "hidden_size": 64,
                "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "tie_word_embeddings": false}"#,
        )
        .unwrap();
        let device = Default::default();
        Cpu::seed(&device, 7);
        let base = config.init::<Cpu>(&device).unwrap();
        let (h, i) = (64, 96);
        let mut seed = 0;
        let mut q = |rows: usize, cols: usize| {
            seed += 1;
            Some(q8_matrix(rows, cols, seed))
        };
        let layers: Vec<QuantLayer> = (0..2)
            .map(|_| QuantLayer {
                q_proj: q(64, h),
                k_proj: q(32, h),
                v_proj: q(32, h),
                o_proj: q(h, 64),
                gate_proj: q(i, h),
                up_proj: q(i, h),
                down_proj: q(h, i),
            })
            .collect();
        let quant = QuantDecode {
            layers,
            head: q(40, h),
            embed: q(40, h),
        };
        let dense_w = |m: &Option<QuantMatrix>| {
            let m = m.as_ref().unwrap();
            param(dense_transposed::<Cpu>(m, &device))
        };
        let mut dense = base.model().clone();
        let mut compact = base.model().clone();
        for ((d, c), ql) in dense
            .layers
            .iter_mut()
            .zip(&mut compact.layers)
            .zip(&quant.layers)
        {
            let pairs = [
                (&mut d.self_attn.q_proj, &mut c.self_attn.q_proj, &ql.q_proj),
                (&mut d.self_attn.k_proj, &mut c.self_attn.k_proj, &ql.k_proj),
                (&mut d.self_attn.v_proj, &mut c.self_attn.v_proj, &ql.v_proj),
                (&mut d.self_attn.o_proj, &mut c.self_attn.o_proj, &ql.o_proj),
                (&mut d.mlp.gate_proj, &mut c.mlp.gate_proj, &ql.gate_proj),
                (&mut d.mlp.up_proj, &mut c.mlp.up_proj, &ql.up_proj),
                (&mut d.mlp.down_proj, &mut c.mlp.down_proj, &ql.down_proj),
            ];
            for (dl, cl, m) in pairs {
                dl.weight = dense_w(m);
                cl.weight = elided_weight(&device);
            }
        }
        let embed = quant.embed.as_ref().unwrap();
        dense.embed_tokens.weight = param(Tensor::from_data(
            TensorData::new(embed.dequantize(), [40, h]),
            &device,
        ));
        compact.embed_tokens.weight = elided_weight(&device);
        if let (Some(d), Some(c)) = (&mut dense.lm_head, &mut compact.lm_head) {
            d.weight = dense_w(&quant.head);
            c.weight = elided_weight(&device);
        }
        let dense = Llama::from_parts(config.clone(), dense, &device).unwrap();
        let rope = RotaryEmbedding::new(&config);
        // Without the embedding's matrix the elided embedding is refused.
        let no_embed = QuantDecode {
            embed: None,
            ..quant.clone()
        };
        let refused = Llama::from_parts_quantized(
            config.clone(),
            compact.clone(),
            rope.clone(),
            no_embed,
            &device,
        );
        assert!(matches!(refused, Err(e) if e.to_string().contains("embed_tokens")));
        let compact = Llama::from_parts_quantized(config, compact, rope, quant, &device).unwrap();
        assert!(compact.model().num_params() * 20 < dense.model().num_params());

        let prompt: Vec<u32> = (0..11).map(|t| (t * 7 + 3) % 40).collect();
        let (mut cd, mut cc) = (dense.new_cache(), compact.new_cache());
        let pd = dense.forward_tokens(&prompt, &mut cd).unwrap();
        let pc = compact.forward_tokens(&prompt, &mut cc).unwrap();
        let pd = pd.into_data().into_vec::<f32>().unwrap();
        let pc = pc.into_data().into_vec::<f32>().unwrap();
        let scale = pd.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(scale > 0.1, "degenerate logits ({scale})");
        let mut err = max_abs_diff(&pd, &pc);
        for t in [5u32, 17, 33, 2, 9, 21, 38, 0, 11] {
            let ld = dense.next_token_logits(&[t], &mut cd).unwrap();
            let lc = compact.next_token_logits(&[t], &mut cc).unwrap();
            err = err.max(max_abs_diff(&ld, &lc));
        }
        println!("compact untied vs dense f32: max abs {err:e} (logits up to {scale})");
        // Decode steps sum the quantised products in another order than Burn's matmul; the
        // random weights give logits of ~30, so the bound is relative to them.
        assert!(err < 1e-5 * scale, "compact differs by {err}");
    }

    /// A tiny random model with grouped-query attention and room for 1024 positions.
    fn tiny_gqa_model() -> Llama<Cpu> {
        let config = LlamaConfig::from_json_str(
            r#"{"model_type": "llama", "vocab_size": 48, "hidden_size": 32,
                "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "max_position_embeddings": 1024,
                "tie_word_embeddings": false}"#,
        )
        .unwrap();
        config.init::<Cpu>(&Default::default()).unwrap()
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    }

    #[test]
    fn long_decode_matches_prefill() {
        // 600 positions: decode steps one at a time, a 50-token chunk in the middle and a
        // clone of the cache continued on its own; every position's logits must equal those
        // of one prefill of the same 600 tokens.
        let model = tiny_gqa_model();
        let n = 600;
        let tokens: Vec<u32> = (0..n as u32).map(|i| (i * 31 + 7) % 48).collect();
        let full = model
            .forward_tokens(&tokens, &mut model.new_cache())
            .unwrap()
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        let vocab = 48;
        let want = |i: usize| &full[i * vocab..(i + 1) * vocab];
        let scale = full.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert!(scale > 0.1, "logits too small to compare ({scale})");

        let mut cache = model.new_cache();
        let mut err = 0.0f32;
        let mut clone_at_420 = None;
        let mut i = 0;
        while i < n {
            if i == 300 {
                let chunk = model
                    .forward_tokens(&tokens[300..350], &mut cache)
                    .unwrap()
                    .into_data()
                    .into_vec::<f32>()
                    .unwrap();
                err = err.max(max_abs_diff(&chunk, &full[300 * vocab..350 * vocab]));
                i = 350;
                continue;
            }
            if i == 420 {
                clone_at_420 = Some(cache.clone());
            }
            let got = model.next_token_logits(&tokens[i..=i], &mut cache).unwrap();
            err = err.max(max_abs_diff(&got, want(i)));
            i += 1;
        }
        assert_eq!(cache.len(), n);
        // The clone is unaffected by what the original cached after it was taken.
        let mut clone = clone_at_420.unwrap();
        assert_eq!(clone.len(), 420);
        for i in 420..500 {
            let got = model.next_token_logits(&tokens[i..=i], &mut clone).unwrap();
            err = err.max(max_abs_diff(&got, want(i)));
        }
        println!("600 positions, decode vs prefill: max abs error {err:e} (logits up to {scale})");
        assert!(err < 1e-4, "decode differs from prefill by {err}");
    }

    #[test]
    fn long_padded_batch_decode_matches_rows_alone() {
        // Two prompts of different lengths, decoded together for 150 steps with the padding
        // mask, against each row run alone.
        let model = tiny_gqa_model();
        let prompts: [Vec<u32>; 2] = [vec![3, 1, 4], (0..70).map(|i| (i * 5 + 2) % 48).collect()];
        let steps = 150;
        let next = |r: usize, j: usize| ((j * 7 + r * 11 + 1) % 48) as u32;
        let mut cache = model.new_cache();
        let mut batched = vec![model
            .prefill_batch(&[&prompts[0], &prompts[1]], &mut cache)
            .unwrap()];
        for j in 0..steps {
            batched.push(
                model
                    .decode_batch(&[next(0, j), next(1, j)], &mut cache)
                    .unwrap(),
            );
        }
        let mut err = 0.0f32;
        for (r, prompt) in prompts.iter().enumerate() {
            let mut alone = model.new_cache();
            let got = model.next_token_logits(prompt, &mut alone).unwrap();
            err = err.max(max_abs_diff(&got, &batched[0][r]));
            for j in 0..steps {
                let got = model.next_token_logits(&[next(r, j)], &mut alone).unwrap();
                err = err.max(max_abs_diff(&got, &batched[j + 1][r]));
            }
        }
        println!("padded batch vs rows alone, 150 steps: max abs error {err:e}");
        assert!(
            err < 1e-4,
            "batched decode differs from rows alone by {err}"
        );
    }
}
