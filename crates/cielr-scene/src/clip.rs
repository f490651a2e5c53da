//! CLIP (Radford et al. 2021) in Burn, loading HuggingFace checkpoints.
//!
//! One file per model, in the style of candle-transformers: the configs read the
//! checkpoint's `config.json` (`CLIPConfig` with `text_config` / `vision_config`, or a bare
//! `CLIPTextConfig` / `CLIPVisionConfig` as Stable Diffusion's `text_encoder/config.json`),
//! every weight name is spelled once in the `load` functions below (transformers' names,
//! `text_model.` / `vision_model.` prefixes), and the modules are Burn modules generic over
//! the backend.
//!
//! - [`ClipModel`]: `CLIPModel` (both towers, projections, `logit_scale`): normalised
//!   `image_embeds` / `text_embeds` and `logits_per_image`.
//! - [`ClipVisionTransformer`]: `CLIPVisionModel` (patch embedding, class embedding,
//!   positions, pre-LayerNorm, encoder, post-LayerNorm on the CLS token); its full
//!   `last_hidden_state` and every layer's hidden state are exposed for OWLv2, LLaVA and
//!   others.
//! - [`ClipTextTransformer`]: `CLIPTextModel` (causal encoder, final LayerNorm, pooled at
//!   EOS), loadable from a text config alone for Stable Diffusion's text encoder.
//! - [`ClipTextModelWithProjection`], [`ClipVisionModelWithProjection`].
//! - [`ClipTokenizer`]: CLIP's BPE tokenizer from a `tokenizer.json`, padded and truncated
//!   as transformers does.
//! - [`Checkpoint`] / [`Weights`]: safetensors reading (single file or sharded; f32, f16,
//!   bf16, f64 converted to f32), errors naming the tensor, from [`cielr_core::weights`].
//!
//! Parity with transformers 5.24 is checked by the `clip_*` tests against fixtures written by
//! `tools/parity/clip.py`. Not supported: `interpolate_pos_encoding` (inputs must have the
//! config's `image_size`; OWLv2 does not need it either, its checkpoints carry position
//! embeddings for their own 960/1008 input), non-square image or patch sizes.

use std::fmt::Display;
use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, LayerNorm, Linear, PaddingConfig2d};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Int, Tensor, TensorData};
use cielr_core::activation::gelu;
use cielr_core::attention::attention;
use cielr_core::layout::contiguous;
use cielr_core::weights::TensorStore;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Result, SceneError};

// ============================================================================ configs

/// The MLP activation (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ClipActivation {
    /// `quick_gelu`: `x * sigmoid(1.702 x)` (OpenAI's CLIP).
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// `gelu`: exact, with erf (LAION / OpenCLIP conversions).
    #[serde(rename = "gelu")]
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh` / `gelu_fast`: the tanh approximation.
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluTanh,
}

impl ClipActivation {
    /// Applies the activation element-wise.
    pub fn forward<B: Backend, const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            ClipActivation::QuickGelu => cielr_core::activation::quick_gelu(x),
            ClipActivation::Gelu => gelu(x),
            ClipActivation::GeluTanh => {
                let inner = (x.clone() + x.clone().powi_scalar(3) * 0.044715)
                    * (2.0 / std::f64::consts::PI).sqrt();
                x * (inner.tanh() + 1.0) * 0.5
            }
        }
    }
}

/// A token id or a list of them (`eos_token_id` may be either in transformers' configs).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum IdOrList {
    One(i64),
    List(Vec<i64>),
}

/// An integer or a `[height, width]` pair (`image_size`, `patch_size`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum SizeOrPair {
    One(usize),
    Pair(Vec<usize>),
}

fn square(value: &SizeOrPair, key: &str, context: &str) -> Result<usize> {
    match value {
        SizeOrPair::One(n) => Ok(*n),
        SizeOrPair::Pair(v) if v.len() == 2 && v[0] == v[1] => Ok(v[0]),
        SizeOrPair::Pair(v) => Err(SceneError::config(
            context,
            format!("`{key}` {v:?} is not square; only square sizes are supported"),
        )),
    }
}

mod defaults {
    pub fn text_vocab() -> usize {
        49408
    }
    pub fn text_hidden() -> usize {
        512
    }
    pub fn text_intermediate() -> usize {
        2048
    }
    pub fn projection() -> usize {
        512
    }
    pub fn layers() -> usize {
        12
    }
    pub fn text_heads() -> usize {
        8
    }
    pub fn max_positions() -> usize {
        77
    }
    pub fn act() -> super::ClipActivation {
        super::ClipActivation::QuickGelu
    }
    pub fn eps() -> f64 {
        1e-5
    }
    pub fn pad() -> Option<i64> {
        Some(1)
    }
    pub fn bos() -> Option<i64> {
        Some(49406)
    }
    pub fn eos() -> Option<super::IdOrList> {
        Some(super::IdOrList::One(49407))
    }
    pub fn vision_hidden() -> usize {
        768
    }
    pub fn vision_intermediate() -> usize {
        3072
    }
    pub fn vision_heads() -> usize {
        12
    }
    pub fn channels() -> usize {
        3
    }
    pub fn image_size() -> super::SizeOrPair {
        super::SizeOrPair::One(224)
    }
    pub fn patch_size() -> super::SizeOrPair {
        super::SizeOrPair::One(32)
    }
    pub fn logit_scale() -> f64 {
        2.6592
    }
}

#[derive(Debug, Clone, Deserialize)]
struct RawTextConfig {
    #[serde(default = "defaults::text_vocab")]
    vocab_size: usize,
    #[serde(default = "defaults::text_hidden")]
    hidden_size: usize,
    #[serde(default = "defaults::text_intermediate")]
    intermediate_size: usize,
    #[serde(default = "defaults::projection")]
    projection_dim: usize,
    #[serde(default = "defaults::layers")]
    num_hidden_layers: usize,
    #[serde(default = "defaults::text_heads")]
    num_attention_heads: usize,
    #[serde(default = "defaults::max_positions")]
    max_position_embeddings: usize,
    #[serde(default = "defaults::act")]
    hidden_act: ClipActivation,
    #[serde(default = "defaults::eps")]
    layer_norm_eps: f64,
    #[serde(default = "defaults::pad")]
    pad_token_id: Option<i64>,
    #[serde(default = "defaults::bos")]
    bos_token_id: Option<i64>,
    #[serde(default = "defaults::eos")]
    eos_token_id: Option<IdOrList>,
}

#[derive(Debug, Clone, Deserialize)]
struct RawVisionConfig {
    #[serde(default = "defaults::vision_hidden")]
    hidden_size: usize,
    #[serde(default = "defaults::vision_intermediate")]
    intermediate_size: usize,
    #[serde(default = "defaults::projection")]
    projection_dim: usize,
    #[serde(default = "defaults::layers")]
    num_hidden_layers: usize,
    #[serde(default = "defaults::vision_heads")]
    num_attention_heads: usize,
    #[serde(default = "defaults::channels")]
    num_channels: usize,
    #[serde(default = "defaults::image_size")]
    image_size: SizeOrPair,
    #[serde(default = "defaults::patch_size")]
    patch_size: SizeOrPair,
    #[serde(default = "defaults::act")]
    hidden_act: ClipActivation,
    #[serde(default = "defaults::eps")]
    layer_norm_eps: f64,
}

/// How the text tower picks the token whose state becomes the pooled output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextPooling {
    /// `eos_token_id == 2` (the value in OpenAI's original configs): the position of the
    /// largest input id, CLIP's EOS having the largest id in its vocabulary.
    ArgmaxId,
    /// The first position holding this EOS id (position 0 if a row has none, as transformers'
    /// `argmax` of an all-false row gives).
    FirstEos(i64),
}

/// `CLIPTextConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipTextConfig {
    /// Vocabulary size (`vocab_size`).
    pub vocab_size: usize,
    /// Width of the transformer (`hidden_size`).
    pub hidden_size: usize,
    /// MLP width (`intermediate_size`).
    pub intermediate_size: usize,
    /// Output width of `text_projection` (`projection_dim`).
    pub projection_dim: usize,
    /// Number of encoder layers (`num_hidden_layers`).
    pub num_hidden_layers: usize,
    /// Number of attention heads (`num_attention_heads`).
    pub num_attention_heads: usize,
    /// Longest sequence (`max_position_embeddings`).
    pub max_position_embeddings: usize,
    /// MLP activation (`hidden_act`).
    pub hidden_act: ClipActivation,
    /// LayerNorm epsilon (`layer_norm_eps`).
    pub layer_norm_eps: f64,
    /// Padding id (`pad_token_id`), informational.
    pub pad_token_id: Option<i64>,
    /// Start-of-text id (`bos_token_id`), informational.
    pub bos_token_id: Option<i64>,
    /// End-of-text id (`eos_token_id`), which decides [`TextPooling`].
    pub eos_token_id: i64,
}

/// `CLIPVisionConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipVisionConfig {
    /// Width of the transformer (`hidden_size`).
    pub hidden_size: usize,
    /// MLP width (`intermediate_size`).
    pub intermediate_size: usize,
    /// Output width of `visual_projection` (`projection_dim`).
    pub projection_dim: usize,
    /// Number of encoder layers (`num_hidden_layers`).
    pub num_hidden_layers: usize,
    /// Number of attention heads (`num_attention_heads`).
    pub num_attention_heads: usize,
    /// Input channels (`num_channels`).
    pub num_channels: usize,
    /// Input side length in pixels (`image_size`).
    pub image_size: usize,
    /// Patch side length in pixels (`patch_size`).
    pub patch_size: usize,
    /// MLP activation (`hidden_act`).
    pub hidden_act: ClipActivation,
    /// LayerNorm epsilon (`layer_norm_eps`).
    pub layer_norm_eps: f64,
}

/// `CLIPConfig`: both towers and the shared embedding width.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipConfig {
    /// The text tower.
    pub text_config: ClipTextConfig,
    /// The vision tower.
    pub vision_config: ClipVisionConfig,
    /// Width of the joint embedding space (`projection_dim`, top level).
    pub projection_dim: usize,
    /// Initial value of `logit_scale` (`logit_scale_init_value`); the checkpoint's
    /// `logit_scale` tensor is what is used.
    pub logit_scale_init_value: f64,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| SceneError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| SceneError::json(path.display().to_string(), e))
}

/// `section` of a `CLIPConfig` JSON with `section_dict` merged over it, as transformers
/// does for old configs that carry `text_config_dict` / `vision_config_dict`.
fn merged_section(root: &serde_json::Map<String, Value>, section: &str) -> Value {
    let mut out = match root.get(section) {
        Some(Value::Object(m)) => m.clone(),
        _ => serde_json::Map::new(),
    };
    if let Some(Value::Object(extra)) = root.get(&format!("{section}_dict")) {
        for (k, v) in extra {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

fn positive(context: &str, pairs: &[(&str, usize)]) -> Result<()> {
    for (name, v) in pairs {
        if *v == 0 {
            return Err(SceneError::config(
                context,
                format!("`{name}` must be positive"),
            ));
        }
    }
    Ok(())
}

/// Parses the `section` of a whole `CLIPConfig` (merged with its legacy `{section}_dict`), or
/// `value` itself when it has neither; `ctx` names the config in errors.
fn parse_section<T: DeserializeOwned>(value: &Value, section: &str, ctx: &str) -> Result<T> {
    let obj = value
        .as_object()
        .ok_or_else(|| SceneError::config(ctx, "not a JSON object"))?;
    let section = if obj.contains_key(section) || obj.contains_key(&format!("{section}_dict")) {
        merged_section(obj, section)
    } else {
        value.clone()
    };
    serde_json::from_value(section).map_err(|e| SceneError::json(ctx, e))
}

/// Checks that `heads` divides `hidden`.
fn check_heads(ctx: &str, hidden: usize, heads: usize) -> Result<()> {
    if !hidden.is_multiple_of(heads) {
        return Err(SceneError::config(
            ctx,
            format!("hidden_size {hidden} is not divisible by num_attention_heads {heads}"),
        ));
    }
    Ok(())
}

/// Checks that `layer_norm_eps` is finite and non-negative.
fn check_eps(ctx: &str, eps: f64) -> Result<()> {
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(SceneError::config(
            ctx,
            "layer_norm_eps must be finite and >= 0",
        ));
    }
    Ok(())
}

impl ClipTextConfig {
    /// Parses a text config: either a `CLIPTextConfig` object or a whole `CLIPConfig`, whose
    /// `text_config` (and legacy `text_config_dict`) is taken.
    pub fn from_json(value: &Value) -> Result<Self> {
        let raw: RawTextConfig = parse_section(value, "text_config", "text config")?;
        let eos = match raw.eos_token_id {
            Some(IdOrList::One(id)) => id,
            Some(IdOrList::List(ids)) if ids.len() == 1 => ids[0],
            other => {
                return Err(SceneError::config(
                    "text config",
                    format!("`eos_token_id` must be one id, got {other:?}"),
                ))
            }
        };
        let c = ClipTextConfig {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            projection_dim: raw.projection_dim,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            max_position_embeddings: raw.max_position_embeddings,
            hidden_act: raw.hidden_act,
            layer_norm_eps: raw.layer_norm_eps,
            pad_token_id: raw.pad_token_id,
            bos_token_id: raw.bos_token_id,
            eos_token_id: eos,
        };
        c.validate()?;
        Ok(c)
    }

    /// Reads a `config.json` (see [`ClipTextConfig::from_json`]).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_json(&read_json(path.as_ref())?)
    }

    /// Checks that the sizes are positive and the heads divide the width.
    pub fn validate(&self) -> Result<()> {
        let ctx = "text config";
        positive(
            ctx,
            &[
                ("vocab_size", self.vocab_size),
                ("hidden_size", self.hidden_size),
                ("intermediate_size", self.intermediate_size),
                ("projection_dim", self.projection_dim),
                ("num_attention_heads", self.num_attention_heads),
                ("max_position_embeddings", self.max_position_embeddings),
            ],
        )?;
        check_heads(ctx, self.hidden_size, self.num_attention_heads)?;
        check_eps(ctx, self.layer_norm_eps)
    }

    /// The pooling rule transformers applies for this config.
    pub fn pooling(&self) -> TextPooling {
        if self.eos_token_id == 2 {
            TextPooling::ArgmaxId
        } else {
            TextPooling::FirstEos(self.eos_token_id)
        }
    }
}

impl ClipVisionConfig {
    /// Parses a vision config: either a `CLIPVisionConfig` object or a whole `CLIPConfig`,
    /// whose `vision_config` (and legacy `vision_config_dict`) is taken.
    pub fn from_json(value: &Value) -> Result<Self> {
        let ctx = "vision config";
        let raw: RawVisionConfig = parse_section(value, "vision_config", ctx)?;
        let c = ClipVisionConfig {
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            projection_dim: raw.projection_dim,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_channels: raw.num_channels,
            image_size: square(&raw.image_size, "image_size", ctx)?,
            patch_size: square(&raw.patch_size, "patch_size", ctx)?,
            hidden_act: raw.hidden_act,
            layer_norm_eps: raw.layer_norm_eps,
        };
        c.validate()?;
        Ok(c)
    }

    /// Reads a `config.json` (see [`ClipVisionConfig::from_json`]).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_json(&read_json(path.as_ref())?)
    }

    /// Checks sizes: positive, heads divide the width, patches tile the image.
    pub fn validate(&self) -> Result<()> {
        let ctx = "vision config";
        positive(
            ctx,
            &[
                ("hidden_size", self.hidden_size),
                ("intermediate_size", self.intermediate_size),
                ("projection_dim", self.projection_dim),
                ("num_attention_heads", self.num_attention_heads),
                ("num_channels", self.num_channels),
                ("image_size", self.image_size),
                ("patch_size", self.patch_size),
            ],
        )?;
        check_heads(ctx, self.hidden_size, self.num_attention_heads)?;
        if self.patch_size > self.image_size {
            return Err(SceneError::config(
                ctx,
                format!(
                    "patch_size {} is larger than image_size {}",
                    self.patch_size, self.image_size
                ),
            ));
        }
        check_eps(ctx, self.layer_norm_eps)
    }

    /// Patches per side (`image_size / patch_size`; a remainder is cut off by the conv).
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens in the vision sequence: one per patch plus the class token.
    pub fn num_positions(&self) -> usize {
        self.grid_size() * self.grid_size() + 1
    }
}

impl ClipConfig {
    /// Parses a `CLIPConfig` JSON.
    pub fn from_json(value: &Value) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| SceneError::config("CLIP config", "not a JSON object"))?;
        if !obj.contains_key("text_config") && !obj.contains_key("text_config_dict") {
            return Err(SceneError::config(
                "CLIP config",
                "no `text_config`: this is not a CLIPConfig (a text-only or vision-only \
                 checkpoint loads with ClipTextTransformer / ClipVisionTransformer)",
            ));
        }
        let projection_dim = match obj.get("projection_dim") {
            None | Some(Value::Null) => defaults::projection(),
            Some(v) => v.as_u64().filter(|&n| n > 0).ok_or_else(|| {
                SceneError::config("CLIP config", format!("bad `projection_dim` {v}"))
            })? as usize,
        };
        let logit_scale_init_value = obj
            .get("logit_scale_init_value")
            .and_then(Value::as_f64)
            .unwrap_or_else(defaults::logit_scale);
        Ok(ClipConfig {
            text_config: ClipTextConfig::from_json(value)?,
            vision_config: ClipVisionConfig::from_json(value)?,
            projection_dim,
            logit_scale_init_value,
        })
    }

    /// Reads a `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_json(&read_json(path.as_ref())?)
    }
}

// ============================================================================ checkpoints

pub use cielr_core::weights::Weights;

/// The tensors of a safetensors checkpoint (memory-mapped by [`cielr_core::weights`]): one
/// file, or the shards listed in a `model.safetensors.index.json`. Tensors are converted to
/// f32 when read.
#[derive(Debug)]
pub struct Checkpoint(TensorStore);

impl Checkpoint {
    /// Opens a checkpoint: a `.safetensors` file, a `model.safetensors.index.json`, or a
    /// folder holding either (`model.safetensors` first).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Checkpoint(TensorStore::open(path)?))
    }

    /// A checkpoint from safetensors bytes already in memory, each with a label used in
    /// error messages.
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

    /// Reads `name` as f32, checking its shape against `expected` (an empty `expected`
    /// also accepts a one-element tensor of any rank, for scalars such as `logit_scale`).
    pub fn read_f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        Ok(self.0.read_f32(name, expected)?)
    }

    /// The root of the tensor names, to build modules from.
    pub fn weights(&self) -> Weights<'_> {
        self.0.weights()
    }
}

// ============================================================================ shared layers

/// Score elements (`batch * heads * rows * seq`) one attention block may hold: 2^24 f32 =
/// 64 MiB.
const ATTENTION_BLOCK_ELEMENTS: usize = 1 << 24;

/// `softmax(q k^T * scale + mask) v` for `[batch, heads, seq, head_dim]` inputs (additive
/// `mask` `[batch, 1, seq, seq]`), `rows` query rows at a time; each row's softmax is the
/// same whatever `rows` is.
fn blocked_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Option<Tensor<B, 4>>,
    scale: f64,
    rows: usize,
) -> Tensor<B, 4> {
    let s = q.dims()[2];
    let rows = rows.max(1);
    let kt = k.swap_dims(2, 3);
    let attend = |q: Tensor<B, 4>, mask: Option<Tensor<B, 4>>| {
        let mut scores = q.matmul(kt.clone()) * scale;
        if let Some(mask) = mask {
            scores = scores + mask;
        }
        softmax(scores, 3).matmul(v.clone())
    };
    if rows >= s {
        return attend(q, mask);
    }
    let blocks = (0..s)
        .step_by(rows)
        .map(|start| {
            let n = rows.min(s - start);
            let m = mask.as_ref().map(|m| m.clone().narrow(2, start, n));
            attend(q.clone().narrow(2, start, n), m)
        })
        .collect();
    Tensor::cat(blocks, 2)
}

/// Multi-head self-attention (`CLIPAttention`).
#[derive(Module, Debug)]
pub struct ClipAttention<B: Backend> {
    q_proj: Linear<B>,
    k_proj: Linear<B>,
    v_proj: Linear<B>,
    out_proj: Linear<B>,
    num_heads: usize,
    head_dim: usize,
    scale: f64,
}

impl<B: Backend> ClipAttention<B> {
    fn load(w: &Weights, hidden: usize, heads: usize, device: &B::Device) -> Result<Self> {
        Ok(ClipAttention {
            q_proj: w.pp("q_proj").linear(hidden, hidden, true, device)?,
            k_proj: w.pp("k_proj").linear(hidden, hidden, true, device)?,
            v_proj: w.pp("v_proj").linear(hidden, hidden, true, device)?,
            out_proj: w.pp("out_proj").linear(hidden, hidden, true, device)?,
            num_heads: heads,
            head_dim: hidden / heads,
            scale: ((hidden / heads) as f64).powf(-0.5),
        })
    }

    /// `x`: `[batch, seq, hidden]`; `mask`: additive `[batch, 1, seq, seq]`.
    fn forward(&self, x: Tensor<B, 3>, mask: Option<Tensor<B, 4>>) -> Tensor<B, 3> {
        let [b, s, d] = x.dims();
        let heads = |t: Tensor<B, 3>| {
            t.reshape([b, s, self.num_heads, self.head_dim])
                .swap_dims(1, 2)
        };
        let q = heads(self.q_proj.forward(x.clone()));
        let k = heads(self.k_proj.forward(x.clone()));
        let v = heads(self.v_proj.forward(x));
        let out = match mask {
            // Unmasked (vision tower, OWLv2's 3601 tokens at 960 px): fused attention
            // (cielr-core's CPU kernel, the backend's elsewhere; no score tensor held).
            None => attention(
                q,
                k,
                v,
                None,
                None,
                AttentionModuleOptions {
                    scale: Some(self.scale),
                    softcap: None,
                    is_causal: false,
                },
            ),
            // Masked (text tower, short sequences whose additive mask may add two
            // `f32::MIN`s): query rows in blocks so that no score tensor is too large.
            Some(mask) => {
                let rows = (ATTENTION_BLOCK_ELEMENTS / (b * self.num_heads * s).max(1)).max(1);
                blocked_attention(q, k, v, Some(mask), self.scale, rows)
            }
        };
        self.out_proj
            .forward(contiguous(out.swap_dims(1, 2)).reshape([b, s, d]))
    }
}

/// The feed-forward block (`CLIPMLP`).
#[derive(Module, Debug)]
pub struct ClipMlp<B: Backend> {
    fc1: Linear<B>,
    fc2: Linear<B>,
    activation: ClipActivation,
}

impl<B: Backend> ClipMlp<B> {
    fn load(
        w: &Weights,
        hidden: usize,
        intermediate: usize,
        activation: ClipActivation,
        device: &B::Device,
    ) -> Result<Self> {
        Ok(ClipMlp {
            fc1: w.pp("fc1").linear(hidden, intermediate, true, device)?,
            fc2: w.pp("fc2").linear(intermediate, hidden, true, device)?,
            activation,
        })
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.fc2
            .forward(self.activation.forward(self.fc1.forward(x)))
    }
}

/// A pre-norm transformer layer (`CLIPEncoderLayer`).
#[derive(Module, Debug)]
pub struct ClipEncoderLayer<B: Backend> {
    self_attn: ClipAttention<B>,
    layer_norm1: LayerNorm<B>,
    mlp: ClipMlp<B>,
    layer_norm2: LayerNorm<B>,
}

/// The layer stack (`CLIPEncoder`).
#[derive(Module, Debug)]
pub struct ClipEncoder<B: Backend> {
    layers: Vec<ClipEncoderLayer<B>>,
}

/// Sizes shared by both towers' encoders.
struct EncoderDims {
    hidden: usize,
    intermediate: usize,
    heads: usize,
    layers: usize,
    eps: f64,
    act: ClipActivation,
}

impl<B: Backend> ClipEncoder<B> {
    fn load(w: &Weights, d: &EncoderDims, device: &B::Device) -> Result<Self> {
        let mut layers = Vec::with_capacity(d.layers);
        for i in 0..d.layers {
            let l = w.pp("layers").pp(i);
            layers.push(ClipEncoderLayer {
                self_attn: ClipAttention::load(&l.pp("self_attn"), d.hidden, d.heads, device)?,
                layer_norm1: l.pp("layer_norm1").layer_norm(d.hidden, d.eps, device)?,
                mlp: ClipMlp::load(&l.pp("mlp"), d.hidden, d.intermediate, d.act, device)?,
                layer_norm2: l.pp("layer_norm2").layer_norm(d.hidden, d.eps, device)?,
            });
        }
        Ok(ClipEncoder { layers })
    }

    /// Runs the layers; with `all`, returns the input and every layer's output
    /// (transformers' `hidden_states`), else only the last.
    fn forward(
        &self,
        mut x: Tensor<B, 3>,
        mask: Option<Tensor<B, 4>>,
        all: bool,
    ) -> Vec<Tensor<B, 3>> {
        let mut states = Vec::new();
        for layer in &self.layers {
            if all {
                states.push(x.clone());
            }
            let h = layer
                .self_attn
                .forward(layer.layer_norm1.forward(x.clone()), mask.clone());
            x = x + h;
            let h = layer.mlp.forward(layer.layer_norm2.forward(x.clone()));
            x = x + h;
        }
        states.push(x);
        states
    }
}

// ============================================================================ vision tower

/// Output of [`ClipVisionTransformer::forward`].
#[derive(Debug, Clone)]
pub struct ClipVisionOutput<B: Backend> {
    /// Encoder output for every token, `[batch, 1 + patches, hidden]` (no post-LayerNorm,
    /// as transformers' `last_hidden_state`).
    pub last_hidden_state: Tensor<B, 3>,
    /// The class token after `post_layernorm`, `[batch, hidden]` (`pooler_output`).
    pub pooler_output: Tensor<B, 2>,
}

/// `CLIPVisionModel`: patch embedding, class and position embeddings, pre-LayerNorm,
/// encoder, post-LayerNorm on the class token.
#[derive(Module, Debug)]
pub struct ClipVisionTransformer<B: Backend> {
    class_embedding: Param<Tensor<B, 1>>,
    patch_embedding: Conv2d<B>,
    position_embedding: Embedding<B>,
    pre_layrnorm: LayerNorm<B>,
    encoder: ClipEncoder<B>,
    post_layernorm: LayerNorm<B>,
    image_size: usize,
    num_channels: usize,
    hidden_size: usize,
}

impl<B: Backend> ClipVisionTransformer<B> {
    /// Builds the tower from the tensors under `w` (`vision_model` in transformers'
    /// checkpoints).
    pub fn load(w: &Weights, config: &ClipVisionConfig, device: &B::Device) -> Result<Self> {
        config.validate()?;
        let c = config;
        let (d, p) = (c.hidden_size, c.patch_size);
        let e = w.pp("embeddings");
        let mut patch_embedding = Conv2dConfig::new([c.num_channels, d], [p, p])
            .with_stride([p, p])
            .with_padding(PaddingConfig2d::Valid)
            .with_bias(false)
            .init(device);
        patch_embedding.weight = Param::from_tensor(e.pp("patch_embedding").tensor(
            "weight",
            [d, c.num_channels, p, p],
            device,
        )?);
        Ok(ClipVisionTransformer {
            class_embedding: Param::from_tensor(e.tensor("class_embedding", [d], device)?),
            patch_embedding,
            position_embedding: e.pp("position_embedding").embedding(
                c.num_positions(),
                d,
                device,
            )?,
            // CLIP spells it `pre_layrnorm`; OWL-ViT / OWLv2 checkpoints `pre_layernorm`.
            pre_layrnorm: w
                .pp(
                    if !w.contains("pre_layrnorm.weight") && w.contains("pre_layernorm.weight") {
                        "pre_layernorm"
                    } else {
                        "pre_layrnorm"
                    },
                )
                .layer_norm(d, c.layer_norm_eps, device)?,
            encoder: ClipEncoder::load(
                &w.pp("encoder"),
                &EncoderDims {
                    hidden: d,
                    intermediate: c.intermediate_size,
                    heads: c.num_attention_heads,
                    layers: c.num_hidden_layers,
                    eps: c.layer_norm_eps,
                    act: c.hidden_act,
                },
                device,
            )?,
            post_layernorm: w
                .pp("post_layernorm")
                .layer_norm(d, c.layer_norm_eps, device)?,
            image_size: c.image_size,
            num_channels: c.num_channels,
            hidden_size: d,
        })
    }

    /// Loads a vision tower from a checkpoint folder (`config.json` + safetensors) of a
    /// `CLIPModel`, `CLIPVisionModel` or `CLIPVisionModelWithProjection`.
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let dir = dir.as_ref();
        let config = ClipVisionConfig::from_file(dir.join("config.json"))?;
        let ckpt = Checkpoint::open(dir)?;
        Self::load(&ckpt.weights().pp("vision_model"), &config, device)
    }

    fn check_input(&self, pixel_values: &Tensor<B, 4>) -> Result<()> {
        let [b, c, h, w] = pixel_values.dims();
        if b == 0 || c != self.num_channels || h != self.image_size || w != self.image_size {
            return Err(SceneError::InvalidInput(format!(
                "pixel_values has shape [{b}, {c}, {h}, {w}], the model takes [batch >= 1, {}, \
                 {}, {}] (interpolate_pos_encoding is not supported)",
                self.num_channels, self.image_size, self.image_size
            )));
        }
        Ok(())
    }

    fn embed(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 3> {
        let b = pixel_values.dims()[0];
        let d = self.hidden_size;
        let patches = self.patch_embedding.forward(pixel_values);
        let [_, _, gh, gw] = patches.dims();
        let patches = contiguous(patches.reshape([b, d, gh * gw]).swap_dims(1, 2));
        let class = self
            .class_embedding
            .val()
            .reshape([1, 1, d])
            .expand([b, 1, d]);
        let x = Tensor::cat(vec![class, patches], 1);
        let pos = self.position_embedding.weight.val().unsqueeze_dim::<3>(0);
        self.pre_layrnorm.forward(x + pos)
    }

    /// `last_hidden_state` and `pooler_output` for `pixel_values` `[batch, channels, size,
    /// size]` (see [`crate::preprocess::ClipImageProcessor`]).
    pub fn forward(&self, pixel_values: Tensor<B, 4>) -> Result<ClipVisionOutput<B>> {
        self.check_input(&pixel_values)?;
        let x = self.embed(pixel_values);
        let last = self
            .encoder
            .forward(x, None, false)
            .pop()
            .ok_or_else(|| SceneError::InvalidInput("empty encoder".into()))?;
        let pooled = self.pool(last.clone());
        Ok(ClipVisionOutput {
            last_hidden_state: last,
            pooler_output: pooled,
        })
    }

    /// transformers' `hidden_states`: the encoder input (after `pre_layrnorm`) and every
    /// layer's output, `num_hidden_layers + 1` tensors `[batch, tokens, hidden]`. LLaVA-style
    /// models take the second-to-last.
    pub fn forward_hidden_states(&self, pixel_values: Tensor<B, 4>) -> Result<Vec<Tensor<B, 3>>> {
        self.check_input(&pixel_values)?;
        let x = self.embed(pixel_values);
        Ok(self.encoder.forward(x, None, true))
    }

    /// `post_layernorm` applied to the class token of a `last_hidden_state`.
    pub fn pool(&self, last_hidden_state: Tensor<B, 3>) -> Tensor<B, 2> {
        let [b, _, d] = last_hidden_state.dims();
        self.post_layernorm
            .forward(last_hidden_state.narrow(1, 0, 1).reshape([b, d]))
    }

    /// `post_layernorm` on any tensor (OWL-ViT / OWLv2 apply it to every token).
    pub fn post_layernorm<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.post_layernorm.forward(x)
    }

    /// Width of the hidden states.
    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// The input side length the position embeddings were trained for.
    pub fn image_size(&self) -> usize {
        self.image_size
    }
}

// ============================================================================ text tower

/// Output of [`ClipTextTransformer::forward`].
#[derive(Debug, Clone)]
pub struct ClipTextOutput<B: Backend> {
    /// Every token after `final_layer_norm`, `[batch, seq, hidden]` (what Stable Diffusion's
    /// UNet attends to).
    pub last_hidden_state: Tensor<B, 3>,
    /// The state at the pooling position ([`TextPooling`]), `[batch, hidden]`.
    pub pooler_output: Tensor<B, 2>,
}

/// `CLIPTextModel`: token and position embeddings, causal encoder, final LayerNorm, pooled at
/// the EOS token.
#[derive(Module, Debug)]
pub struct ClipTextTransformer<B: Backend> {
    token_embedding: Embedding<B>,
    position_embedding: Embedding<B>,
    encoder: ClipEncoder<B>,
    final_layer_norm: LayerNorm<B>,
    vocab_size: usize,
    max_positions: usize,
    hidden_size: usize,
    /// `eos_token_id`; 2 selects the legacy argmax pooling.
    eos_token_id: i64,
    /// Pool at `argmax(input_ids)` whatever `eos_token_id` says (OWL-ViT / OWLv2 do).
    argmax_pooling: bool,
}

/// Token ids (and a padding mask) read back to the host and checked.
struct TextBatch {
    ids: Vec<i64>,
    mask: Option<Vec<i64>>,
    batch: usize,
    seq: usize,
}

impl<B: Backend> ClipTextTransformer<B> {
    /// Builds the tower from the tensors under `w` (`text_model` in transformers'
    /// checkpoints, Stable Diffusion's `text_encoder` included).
    pub fn load(w: &Weights, config: &ClipTextConfig, device: &B::Device) -> Result<Self> {
        config.validate()?;
        let c = config;
        let d = c.hidden_size;
        let e = w.pp("embeddings");
        Ok(ClipTextTransformer {
            token_embedding: e.pp("token_embedding").embedding(c.vocab_size, d, device)?,
            position_embedding: e.pp("position_embedding").embedding(
                c.max_position_embeddings,
                d,
                device,
            )?,
            encoder: ClipEncoder::load(
                &w.pp("encoder"),
                &EncoderDims {
                    hidden: d,
                    intermediate: c.intermediate_size,
                    heads: c.num_attention_heads,
                    layers: c.num_hidden_layers,
                    eps: c.layer_norm_eps,
                    act: c.hidden_act,
                },
                device,
            )?,
            final_layer_norm: w
                .pp("final_layer_norm")
                .layer_norm(d, c.layer_norm_eps, device)?,
            vocab_size: c.vocab_size,
            max_positions: c.max_position_embeddings,
            hidden_size: d,
            eos_token_id: c.eos_token_id,
            argmax_pooling: false,
        })
    }

    /// Pools at the position of the largest input id in every case, as OWL-ViT and OWLv2's
    /// text towers do (their pad id 0 and EOS 49407 make that the first EOS).
    pub fn with_argmax_pooling(mut self) -> Self {
        self.argmax_pooling = true;
        self
    }

    /// Loads a text tower from a checkpoint folder (`config.json` + safetensors) of a
    /// `CLIPModel`, `CLIPTextModel` or `CLIPTextModelWithProjection` (Stable Diffusion's
    /// `text_encoder/` folder).
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let dir = dir.as_ref();
        let config = ClipTextConfig::from_file(dir.join("config.json"))?;
        let ckpt = Checkpoint::open(dir)?;
        Self::load(&ckpt.weights().pp("text_model"), &config, device)
    }

    fn read_batch(
        &self,
        input_ids: &Tensor<B, 2, Int>,
        attention_mask: Option<&Tensor<B, 2, Int>>,
    ) -> Result<TextBatch> {
        let [batch, seq] = input_ids.dims();
        if batch == 0 || seq == 0 || seq > self.max_positions {
            return Err(SceneError::InvalidInput(format!(
                "input_ids has shape [{batch}, {seq}]; the model takes [batch >= 1, 1..={}]",
                self.max_positions
            )));
        }
        let ids: Vec<i64> = input_ids.to_data().iter::<i64>().collect();
        if let Some((i, id)) = ids
            .iter()
            .enumerate()
            .find(|(_, &id)| id < 0 || id as usize >= self.vocab_size)
        {
            return Err(SceneError::InvalidInput(format!(
                "token id {id} at position {} of sequence {} is outside the vocabulary \
                 (size {})",
                i % seq,
                i / seq,
                self.vocab_size
            )));
        }
        let mask = match attention_mask {
            None => None,
            Some(m) => {
                if m.dims() != [batch, seq] {
                    return Err(SceneError::InvalidInput(format!(
                        "attention_mask has shape {:?}, input_ids [{batch}, {seq}]",
                        m.dims()
                    )));
                }
                Some(m.to_data().iter::<i64>().collect())
            }
        };
        Ok(TextBatch {
            ids,
            mask,
            batch,
            seq,
        })
    }

    /// Causal mask combined with the padding mask, additive `[batch, 1, seq, seq]`.
    fn mask(&self, t: &TextBatch, device: &B::Device) -> Tensor<B, 4> {
        let (b, s) = (t.batch, t.seq);
        let mut m = vec![0f32; b * s * s];
        for bi in 0..b {
            for i in 0..s {
                for j in 0..s {
                    let padded = t.mask.as_ref().is_some_and(|mask| mask[bi * s + j] == 0);
                    if j > i || padded {
                        m[(bi * s + i) * s + j] = f32::MIN;
                    }
                }
            }
        }
        Tensor::from_data(TensorData::new(m, [b, 1, s, s]), device)
    }

    fn embed(&self, input_ids: Tensor<B, 2, Int>, seq: usize) -> Tensor<B, 3> {
        let tokens = self.token_embedding.forward(input_ids);
        let pos = self
            .position_embedding
            .weight
            .val()
            .narrow(0, 0, seq)
            .unsqueeze_dim::<3>(0);
        tokens + pos
    }

    /// The pooling positions transformers uses for each row.
    fn pool_positions(&self, t: &TextBatch) -> Vec<usize> {
        (0..t.batch)
            .map(|bi| {
                let row = &t.ids[bi * t.seq..(bi + 1) * t.seq];
                if self.argmax_pooling || self.eos_token_id == 2 {
                    // torch.argmax: the first maximum.
                    let mut best = 0;
                    for (i, &id) in row.iter().enumerate() {
                        if id > row[best] {
                            best = i;
                        }
                    }
                    best
                } else {
                    row.iter()
                        .position(|&id| id == self.eos_token_id)
                        .unwrap_or(0)
                }
            })
            .collect()
    }

    /// `last_hidden_state` and `pooler_output` for `input_ids` `[batch, seq]` with an
    /// optional `attention_mask` (1 = token, 0 = padding; Stable Diffusion passes none).
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> Result<ClipTextOutput<B>> {
        let t = self.read_batch(&input_ids, attention_mask.as_ref())?;
        let device = input_ids.device();
        let mask = self.mask(&t, &device);
        let x = self.embed(input_ids, t.seq);
        let last = self
            .encoder
            .forward(x, Some(mask), false)
            .pop()
            .ok_or_else(|| SceneError::InvalidInput("empty encoder".into()))?;
        let last = self.final_layer_norm.forward(last);
        let positions = self.pool_positions(&t);
        let flat: Vec<i64> = positions
            .iter()
            .enumerate()
            .map(|(bi, &p)| (bi * t.seq + p) as i64)
            .collect();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(flat, [t.batch]), &device);
        let pooled = last
            .clone()
            .reshape([t.batch * t.seq, self.hidden_size])
            .select(0, index);
        Ok(ClipTextOutput {
            last_hidden_state: last,
            pooler_output: pooled,
        })
    }

    /// transformers' `hidden_states`: the embeddings and every layer's output
    /// (`num_hidden_layers + 1` tensors, without `final_layer_norm`). Stable Diffusion 2 and
    /// "clip skip" use the second-to-last through [`ClipTextTransformer::final_layer_norm`].
    pub fn forward_hidden_states(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> Result<Vec<Tensor<B, 3>>> {
        let t = self.read_batch(&input_ids, attention_mask.as_ref())?;
        let mask = self.mask(&t, &input_ids.device());
        let x = self.embed(input_ids, t.seq);
        Ok(self.encoder.forward(x, Some(mask), true))
    }

    /// `final_layer_norm` on any tensor.
    pub fn final_layer_norm<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.final_layer_norm.forward(x)
    }

    /// Width of the hidden states.
    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// The longest sequence the position embeddings cover.
    pub fn max_position_embeddings(&self) -> usize {
        self.max_positions
    }
}

// ============================================================================ models

fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = (x.clone() * x.clone()).sum_dim(1).sqrt();
    x / norm
}

/// The bias-free projection `name` from `hidden` to the width its weight has in `ckpt` (in a
/// `CLIPModel` that is the top-level `projection_dim`), else to `projection_dim`.
fn load_projection<B: Backend>(
    ckpt: &Checkpoint,
    name: &str,
    hidden: usize,
    projection_dim: usize,
    device: &B::Device,
) -> Result<Linear<B>> {
    let proj = ckpt
        .shape(&format!("{name}.weight"))
        .map(|s| s[0])
        .unwrap_or(projection_dim);
    Ok(ckpt
        .weights()
        .pp(name)
        .linear(hidden, proj, false, device)?)
}

/// `CLIPTextModelWithProjection` (e.g. SDXL's second text encoder).
#[derive(Module, Debug)]
pub struct ClipTextModelWithProjection<B: Backend> {
    /// The text tower.
    pub text_model: ClipTextTransformer<B>,
    text_projection: Linear<B>,
}

impl<B: Backend> ClipTextModelWithProjection<B> {
    /// Loads `config.json` + safetensors of a `CLIPTextModelWithProjection` (or a whole
    /// `CLIPModel`).
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let dir = dir.as_ref();
        let config = ClipTextConfig::from_file(dir.join("config.json"))?;
        let ckpt = Checkpoint::open(dir)?;
        let root = ckpt.weights();
        let text_model = ClipTextTransformer::load(&root.pp("text_model"), &config, device)?;
        let text_projection = load_projection(
            &ckpt,
            "text_projection",
            config.hidden_size,
            config.projection_dim,
            device,
        )?;
        Ok(ClipTextModelWithProjection {
            text_model,
            text_projection,
        })
    }

    /// The tower's outputs plus `text_embeds` (projected, not normalised), `[batch, proj]`.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> Result<(ClipTextOutput<B>, Tensor<B, 2>)> {
        let out = self.text_model.forward(input_ids, attention_mask)?;
        let embeds = self.text_projection.forward(out.pooler_output.clone());
        Ok((out, embeds))
    }
}

/// `CLIPVisionModelWithProjection` (e.g. IP-Adapter image encoders).
#[derive(Module, Debug)]
pub struct ClipVisionModelWithProjection<B: Backend> {
    /// The vision tower.
    pub vision_model: ClipVisionTransformer<B>,
    visual_projection: Linear<B>,
}

impl<B: Backend> ClipVisionModelWithProjection<B> {
    /// Loads `config.json` + safetensors of a `CLIPVisionModelWithProjection` (or a whole
    /// `CLIPModel`).
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let dir = dir.as_ref();
        let config = ClipVisionConfig::from_file(dir.join("config.json"))?;
        let ckpt = Checkpoint::open(dir)?;
        let root = ckpt.weights();
        let vision_model = ClipVisionTransformer::load(&root.pp("vision_model"), &config, device)?;
        let visual_projection = load_projection(
            &ckpt,
            "visual_projection",
            config.hidden_size,
            config.projection_dim,
            device,
        )?;
        Ok(ClipVisionModelWithProjection {
            vision_model,
            visual_projection,
        })
    }

    /// The tower's outputs plus `image_embeds` (projected, not normalised), `[batch, proj]`.
    pub fn forward(
        &self,
        pixel_values: Tensor<B, 4>,
    ) -> Result<(ClipVisionOutput<B>, Tensor<B, 2>)> {
        let out = self.vision_model.forward(pixel_values)?;
        let embeds = self.visual_projection.forward(out.pooler_output.clone());
        Ok((out, embeds))
    }
}

/// Output of [`ClipModel::forward`].
#[derive(Debug, Clone)]
pub struct ClipOutput<B: Backend> {
    /// `logit_scale.exp() * image_embeds @ text_embeds.T`, `[images, texts]`.
    pub logits_per_image: Tensor<B, 2>,
    /// The transpose, `[texts, images]`.
    pub logits_per_text: Tensor<B, 2>,
    /// L2-normalised projected image features, `[images, projection_dim]`.
    pub image_embeds: Tensor<B, 2>,
    /// L2-normalised projected text features, `[texts, projection_dim]`.
    pub text_embeds: Tensor<B, 2>,
    /// The vision tower's outputs.
    pub vision_output: ClipVisionOutput<B>,
    /// The text tower's outputs.
    pub text_output: ClipTextOutput<B>,
}

/// `CLIPModel`.
#[derive(Module, Debug)]
pub struct ClipModel<B: Backend> {
    /// The text tower.
    pub text_model: ClipTextTransformer<B>,
    /// The vision tower.
    pub vision_model: ClipVisionTransformer<B>,
    visual_projection: Linear<B>,
    text_projection: Linear<B>,
    logit_scale: Param<Tensor<B, 1>>,
}

impl<B: Backend> ClipModel<B> {
    /// Builds the model from a checkpoint's root.
    pub fn load(w: &Weights, config: &ClipConfig, device: &B::Device) -> Result<Self> {
        let (t, v, p) = (
            &config.text_config,
            &config.vision_config,
            config.projection_dim,
        );
        let scale = w.read_f32("logit_scale", &[])?;
        Ok(ClipModel {
            text_model: ClipTextTransformer::load(&w.pp("text_model"), t, device)?,
            vision_model: ClipVisionTransformer::load(&w.pp("vision_model"), v, device)?,
            visual_projection: w
                .pp("visual_projection")
                .linear(v.hidden_size, p, false, device)?,
            text_projection: w
                .pp("text_projection")
                .linear(t.hidden_size, p, false, device)?,
            logit_scale: Param::from_tensor(Tensor::from_data(TensorData::new(scale, [1]), device)),
        })
    }

    /// Loads a checkpoint folder: `config.json` and `model.safetensors` (or a sharded index).
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let dir = dir.as_ref();
        let config = ClipConfig::from_file(dir.join("config.json"))?;
        let ckpt = Checkpoint::open(dir)?;
        Self::load(&ckpt.weights(), &config, device)
    }

    /// Projected image features (`get_image_features`, not normalised), `[batch, proj]`.
    pub fn get_image_features(&self, pixel_values: Tensor<B, 4>) -> Result<Tensor<B, 2>> {
        let out = self.vision_model.forward(pixel_values)?;
        Ok(self.visual_projection.forward(out.pooler_output))
    }

    /// Projected text features (`get_text_features`, not normalised), `[batch, proj]`.
    pub fn get_text_features(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> Result<Tensor<B, 2>> {
        let out = self.text_model.forward(input_ids, attention_mask)?;
        Ok(self.text_projection.forward(out.pooler_output))
    }

    /// `exp(logit_scale)`, the temperature applied to cosine similarities.
    pub fn logit_scale_exp(&self) -> Tensor<B, 1> {
        self.logit_scale.val().exp()
    }

    /// Both towers, normalised embeddings and similarity logits.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        pixel_values: Tensor<B, 4>,
    ) -> Result<ClipOutput<B>> {
        let vision_output = self.vision_model.forward(pixel_values)?;
        let text_output = self.text_model.forward(input_ids, attention_mask)?;
        let image_embeds = l2_normalize(
            self.visual_projection
                .forward(vision_output.pooler_output.clone()),
        );
        let text_embeds = l2_normalize(
            self.text_projection
                .forward(text_output.pooler_output.clone()),
        );
        let scale = self.logit_scale_exp().unsqueeze_dim::<2>(0);
        let logits_per_text = text_embeds.clone().matmul(image_embeds.clone().transpose()) * scale;
        let logits_per_image = logits_per_text.clone().transpose();
        Ok(ClipOutput {
            logits_per_image,
            logits_per_text,
            image_embeds,
            text_embeds,
            vision_output,
            text_output,
        })
    }
}

// ============================================================================ tokenizer

/// How [`ClipTokenizer::encode`] pads a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipPadding {
    /// To `max_length` (transformers' `padding="max_length"`, what Stable Diffusion uses).
    MaxLength,
    /// To the longest sequence in the batch (`padding=True`).
    Longest,
}

/// Token ids of a batch, padded to one length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    /// Ids, one row per text.
    pub ids: Vec<Vec<u32>>,
    /// 1 for tokens, 0 for padding.
    pub attention_mask: Vec<Vec<u32>>,
}

impl TokenBatch {
    fn tensor<B: Backend>(rows: &[Vec<u32>], device: &B::Device) -> Tensor<B, 2, Int> {
        let seq = rows.first().map_or(0, Vec::len);
        let flat: Vec<i64> = rows.iter().flatten().map(|&x| x as i64).collect();
        Tensor::from_data(TensorData::new(flat, [rows.len(), seq]), device)
    }

    /// `input_ids` as a `[batch, seq]` tensor.
    pub fn input_ids<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2, Int> {
        Self::tensor(&self.ids, device)
    }

    /// `attention_mask` as a `[batch, seq]` tensor.
    pub fn attention_mask<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2, Int> {
        Self::tensor(&self.attention_mask, device)
    }
}

/// CLIP's tokenizer from a `tokenizer.json` (which real checkpoints ship; it carries CLIP's
/// normaliser, split regex, byte-level BPE with `</w>` and the BOS/EOS post-processor),
/// truncating to `max_length` (keeping BOS and EOS) and padding as transformers does.
pub struct ClipTokenizer {
    tokenizer: tokenizers::Tokenizer,
    max_length: usize,
    pad_id: u32,
    padding: ClipPadding,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("max_length", &self.max_length)
            .field("pad_id", &self.pad_id)
            .field("padding", &self.padding)
            .finish()
    }
}

fn tok_err(context: &str, e: impl Display) -> SceneError {
    SceneError::Tokenizer {
        context: context.to_string(),
        message: e.to_string(),
    }
}

impl ClipTokenizer {
    /// Loads `tokenizer.json`; sequences are cut to `max_length` (the text config's
    /// `max_position_embeddings`, 77 for CLIP) and padded with `<|endoftext|>` (change with
    /// [`ClipTokenizer::with_pad_token`]; Stable Diffusion 2 and LAION checkpoints pad with `!`).
    pub fn from_file(path: impl AsRef<Path>, max_length: usize) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| SceneError::io(path, e))?;
        Self::from_bytes(&bytes, max_length)
    }

    /// As [`ClipTokenizer::from_file`], from the JSON bytes.
    pub fn from_bytes(json: &[u8], max_length: usize) -> Result<Self> {
        if max_length < 2 {
            return Err(SceneError::config(
                "tokenizer",
                "max_length must leave room for BOS and EOS",
            ));
        }
        let mut tokenizer =
            tokenizers::Tokenizer::from_bytes(json).map_err(|e| tok_err("loading", e))?;
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length,
                ..Default::default()
            }))
            .map_err(|e| tok_err("truncation", e))?;
        tokenizer.with_padding(None);
        let pad_id = tokenizer
            .token_to_id("<|endoftext|>")
            .ok_or_else(|| tok_err("loading", "no <|endoftext|> token"))?;
        Ok(ClipTokenizer {
            tokenizer,
            max_length,
            pad_id,
            padding: ClipPadding::MaxLength,
        })
    }

    /// Pads with `token` instead of `<|endoftext|>`.
    pub fn with_pad_token(mut self, token: &str) -> Result<Self> {
        self.pad_id = self
            .tokenizer
            .token_to_id(token)
            .ok_or_else(|| tok_err("pad token", format!("`{token}` is not in the vocabulary")))?;
        Ok(self)
    }

    /// Sets the padding strategy (default [`ClipPadding::MaxLength`]).
    pub fn with_padding(mut self, padding: ClipPadding) -> Self {
        self.padding = padding;
        self
    }

    /// The id used for padding.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The id of `token`, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Tokenises `texts` with BOS/EOS, truncates and pads them.
    pub fn encode(&self, texts: &[&str]) -> Result<TokenBatch> {
        let mut rows = Vec::with_capacity(texts.len());
        for text in texts {
            let enc = self
                .tokenizer
                .encode(*text, true)
                .map_err(|e| tok_err("encoding", e))?;
            rows.push(enc.get_ids().to_vec());
        }
        let len = match self.padding {
            ClipPadding::MaxLength => self.max_length,
            ClipPadding::Longest => rows.iter().map(Vec::len).max().unwrap_or(0),
        };
        let mut ids = Vec::with_capacity(rows.len());
        let mut attention_mask = Vec::with_capacity(rows.len());
        for mut row in rows {
            let n = row.len().min(len);
            row.truncate(len);
            row.resize(len, self.pad_id);
            let mut m = vec![1u32; n];
            m.resize(len, 0);
            ids.push(row);
            attention_mask.push(m);
        }
        Ok(TokenBatch {
            ids,
            attention_mask,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = cielr_core::backend::CpuBackend;

    #[test]
    fn activations_match_transformers_values() {
        let x = [-3.0f32, -1.0, -0.1, 0.0, 0.5, 1.0, 2.5];
        // transformers.activations.ACT2FN on these inputs (torch 2.15).
        let cases = [
            (
                ClipActivation::QuickGelu,
                [
                    -0.0180713, -0.1542042, -0.0457552, 0.0, 0.3503884, 0.8457958, 2.465014,
                ],
            ),
            (
                ClipActivation::Gelu,
                [
                    -0.0040502, -0.1586553, -0.0460172, 0.0, 0.3457312, 0.8413447, 2.4844759,
                ],
            ),
            (
                ClipActivation::GeluTanh,
                [
                    -0.0036374, -0.158808, -0.0460172, 0.0, 0.345714, 0.841192, 2.4849157,
                ],
            ),
        ];
        let device = Default::default();
        for (act, expected) in cases {
            let t = Tensor::<B, 1>::from_data(TensorData::new(x.to_vec(), [x.len()]), &device);
            let y: Vec<f32> = act.forward(t).into_data().iter::<f32>().collect();
            for (a, b) in y.iter().zip(expected) {
                assert!((a - b).abs() < 1e-6, "{act:?}: {a} vs {b}");
            }
        }
        for name in ["gelu_pytorch_tanh", "gelu_fast", "gelu_new"] {
            let a: ClipActivation = serde_json::from_value(Value::from(name)).unwrap();
            assert_eq!(a, ClipActivation::GeluTanh);
        }
    }

    #[test]
    fn blocked_attention_equals_whole() {
        let device = Default::default();
        let dist = burn::tensor::Distribution::Normal(0.0, 1.0);
        let q = Tensor::<B, 4>::random([2, 3, 7, 4], dist, &device);
        let k = Tensor::<B, 4>::random([2, 3, 7, 4], dist, &device);
        let v = Tensor::<B, 4>::random([2, 3, 7, 4], dist, &device);
        // A causal mask, so that a wrongly sliced mask shows.
        let m: Vec<f32> = (0..2 * 49)
            .map(|i| if (i % 7) > (i / 7) % 7 { f32::MIN } else { 0.0 })
            .collect();
        let mask = Tensor::<B, 4>::from_data(TensorData::new(m, [2, 1, 7, 7]), &device);
        let run = |rows| {
            blocked_attention(
                q.clone(),
                k.clone(),
                v.clone(),
                Some(mask.clone()),
                0.5,
                rows,
            )
            .into_data()
            .iter::<f32>()
            .collect::<Vec<_>>()
        };
        let whole = run(7);
        for rows in [1, 3, 5] {
            let blocked = run(rows);
            let err = whole
                .iter()
                .zip(&blocked)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err < 1e-6, "rows {rows}: {err}");
        }
        // Row 0 of a causal mask attends to key 0 only.
        let v0: Vec<f32> = v.narrow(2, 0, 1).into_data().iter::<f32>().collect();
        assert!((whole[0] - v0[0]).abs() < 1e-6);
    }

    #[test]
    fn legacy_eos_selects_argmax_pooling() {
        let mut c = ClipTextConfig::from_json(&serde_json::json!({})).unwrap();
        assert_eq!(c.pooling(), TextPooling::FirstEos(49407));
        c.eos_token_id = 2;
        assert_eq!(c.pooling(), TextPooling::ArgmaxId);
    }
}
