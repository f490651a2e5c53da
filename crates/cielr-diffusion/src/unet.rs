//! The denoiser of Stable Diffusion, diffusers' `UNet2DConditionModel`, in Burn.
//!
//! One file per model, in the style of candle-transformers: [`UNet2DConditionConfig`] reads
//! the checkpoint's own `unet/config.json`, every weight name is spelled once in the `load`
//! functions below (diffusers' names), and the modules are Burn modules generic over the
//! backend.
//!
//! What is ported is what SD 1.x / 2.x (and their inpainting variants, 9 input channels:
//! latents, mask, masked-image latents) use:
//!
//! - sinusoidal timestep features (`flip_sin_to_cos`, `freq_shift`) and the two-layer
//!   `TimestepEmbedding`;
//! - `CrossAttnDownBlock2D` / `DownBlock2D` (ResNet blocks with the time embedding added after
//!   the first convolution, `Transformer2DModel`s, a stride-2 downsampling convolution),
//!   `UNetMidBlock2DCrossAttn`, `UpBlock2D` / `CrossAttnUpBlock2D` (skip connections
//!   concatenated on channels, nearest 2x upsampling + convolution);
//! - `Transformer2DModel` with continuous input: GroupNorm, 1x1-convolution or linear
//!   (`use_linear_projection`, SD 2) projections, `BasicTransformerBlock`s (LayerNorm,
//!   self-attention, cross-attention to the text states, GEGLU feed-forward);
//! - `attention_head_dim` as diffusers reads it for this model: the number of heads per block
//!   (an int or a list: 8 for SD 1.x, `[5, 10, 20, 20]` for SD 2.x); `transformer_layers_per_block`,
//!   `layers_per_block` and `cross_attention_dim` as ints or per-block lists.
//!
//! Rejected with [`DiffusionError::Config`]: class / addition embeddings (SDXL, unCLIP),
//! `time_cond_proj_dim` (LCM), dual or only-cross attention, `resnet_time_scale_shift`
//! other than `default`, GLIGEN, other block types. Inputs must have heights and widths
//! divisible by `2^(blocks - 1)` (diffusers' `upsample_size` path for other sizes is not
//! ported). `upcast_attention` only changes precision in f16 and is accepted; everything runs
//! in f32. Parity with diffusers 0.42 is checked by the `unet_parity` test on tiny random
//! checkpoints written by `tools/parity/diffusers_unet.py`.

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, LayerNorm, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Tensor, TensorData};
use cielr_core::activation::{geglu, silu};
use cielr_core::layout::contiguous;
use cielr_core::norm::{group_norm, group_norm_silu};
use serde::Deserialize;
use serde_json::Value;

use crate::blocks::{
    attention, AttentionSlicing, Downsample2d, ResnetBlock2d, ResnetBlockConfig, Upsample2d,
};
use crate::error::{DiffusionError, Result};
use crate::weights::{read_json, Checkpoint, Weights};
use cielr_core::conv::conv2d_module;

// ============================================================================ config

/// An int or a per-block list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum IntOrList {
    One(usize),
    List(Vec<usize>),
}

/// A bool or a per-block list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum BoolOrList {
    One(bool),
    List(Vec<bool>),
}

mod defaults {
    use super::{BoolOrList, IntOrList};
    pub fn four() -> usize {
        4
    }
    pub fn yes() -> bool {
        true
    }
    pub fn down() -> Vec<String> {
        [
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ]
        .map(String::from)
        .to_vec()
    }
    pub fn up() -> Vec<String> {
        [
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ]
        .map(String::from)
        .to_vec()
    }
    pub fn mid() -> Option<String> {
        Some("UNetMidBlock2DCrossAttn".into())
    }
    pub fn blocks() -> Vec<usize> {
        vec![320, 640, 1280, 1280]
    }
    pub fn layers() -> IntOrList {
        IntOrList::One(2)
    }
    pub fn one_int() -> IntOrList {
        IntOrList::One(1)
    }
    pub fn one() -> usize {
        1
    }
    pub fn f_one() -> f64 {
        1.0
    }
    pub fn silu() -> String {
        "silu".into()
    }
    pub fn groups() -> usize {
        32
    }
    pub fn eps() -> f64 {
        1e-5
    }
    pub fn cross() -> IntOrList {
        IntOrList::One(1280)
    }
    pub fn heads() -> IntOrList {
        IntOrList::One(8)
    }
    pub fn no() -> BoolOrList {
        BoolOrList::One(false)
    }
    pub fn default_str() -> String {
        "default".into()
    }
    pub fn positional() -> String {
        "positional".into()
    }
    pub fn three() -> usize {
        3
    }
}

#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    #[serde(default)]
    sample_size: Option<Value>,
    #[serde(default = "defaults::four")]
    in_channels: usize,
    #[serde(default = "defaults::four")]
    out_channels: usize,
    #[serde(default)]
    center_input_sample: bool,
    #[serde(default = "defaults::yes")]
    flip_sin_to_cos: bool,
    #[serde(default)]
    freq_shift: f64,
    #[serde(default = "defaults::down")]
    down_block_types: Vec<String>,
    #[serde(default = "defaults::mid")]
    mid_block_type: Option<String>,
    #[serde(default = "defaults::up")]
    up_block_types: Vec<String>,
    #[serde(default = "defaults::no")]
    only_cross_attention: BoolOrList,
    #[serde(default = "defaults::blocks")]
    block_out_channels: Vec<usize>,
    #[serde(default = "defaults::layers")]
    layers_per_block: IntOrList,
    #[serde(default = "defaults::one")]
    downsample_padding: usize,
    #[serde(default = "defaults::f_one")]
    mid_block_scale_factor: f64,
    #[serde(default = "defaults::silu")]
    act_fn: String,
    #[serde(default = "defaults::groups")]
    norm_num_groups: usize,
    #[serde(default = "defaults::eps")]
    norm_eps: f64,
    #[serde(default = "defaults::cross")]
    cross_attention_dim: IntOrList,
    #[serde(default = "defaults::one_int")]
    transformer_layers_per_block: IntOrList,
    #[serde(default)]
    reverse_transformer_layers_per_block: Option<Value>,
    #[serde(default)]
    encoder_hid_dim: Option<usize>,
    #[serde(default)]
    encoder_hid_dim_type: Option<String>,
    #[serde(default = "defaults::heads")]
    attention_head_dim: IntOrList,
    #[serde(default)]
    num_attention_heads: Option<Value>,
    #[serde(default)]
    dual_cross_attention: bool,
    #[serde(default)]
    use_linear_projection: bool,
    #[serde(default)]
    class_embed_type: Option<String>,
    #[serde(default)]
    addition_embed_type: Option<String>,
    #[serde(default)]
    num_class_embeds: Option<usize>,
    #[serde(default)]
    upcast_attention: bool,
    #[serde(default = "defaults::default_str")]
    resnet_time_scale_shift: String,
    #[serde(default)]
    resnet_skip_time_act: bool,
    #[serde(default = "defaults::f_one")]
    resnet_out_scale_factor: f64,
    #[serde(default = "defaults::positional")]
    time_embedding_type: String,
    #[serde(default)]
    time_embedding_dim: Option<usize>,
    #[serde(default)]
    time_embedding_act_fn: Option<String>,
    #[serde(default)]
    timestep_post_act: Option<String>,
    #[serde(default)]
    time_cond_proj_dim: Option<usize>,
    #[serde(default = "defaults::three")]
    conv_in_kernel: usize,
    #[serde(default = "defaults::three")]
    conv_out_kernel: usize,
    #[serde(default)]
    projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default = "defaults::default_str")]
    attention_type: String,
    #[serde(default)]
    class_embeddings_concat: bool,
    #[serde(default)]
    mid_block_only_cross_attention: Option<bool>,
    #[serde(default)]
    cross_attention_norm: Option<String>,
}

/// The two kinds of down / up block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// `CrossAttnDownBlock2D` / `CrossAttnUpBlock2D`: ResNet blocks each followed by a
    /// `Transformer2DModel`.
    CrossAttention,
    /// `DownBlock2D` / `UpBlock2D`: ResNet blocks only.
    Plain,
}

/// The configuration of a [`UNet2DConditionModel`], read from diffusers' `unet/config.json`,
/// with per-block lists expanded.
#[derive(Debug, Clone, PartialEq)]
pub struct UNet2DConditionConfig {
    /// Input channels (`in_channels`: 4, or 9 for inpainting models).
    pub in_channels: usize,
    /// Output channels (`out_channels`, 4).
    pub out_channels: usize,
    /// `center_input_sample`: the input is mapped by `2x - 1` first.
    pub center_input_sample: bool,
    /// `flip_sin_to_cos` of the timestep features (true).
    pub flip_sin_to_cos: bool,
    /// `freq_shift` of the timestep features (0).
    pub freq_shift: f64,
    /// Kinds of the down blocks (`down_block_types`).
    pub down_blocks: Vec<BlockKind>,
    /// Kinds of the up blocks (`up_block_types`).
    pub up_blocks: Vec<BlockKind>,
    /// Whether there is a `UNetMidBlock2DCrossAttn` (`mid_block_type`).
    pub mid_block: bool,
    /// Channels per block (`block_out_channels`).
    pub block_out_channels: Vec<usize>,
    /// ResNet blocks per down block (`layers_per_block`; up blocks have one more).
    pub layers_per_block: Vec<usize>,
    /// Transformer layers per block (`transformer_layers_per_block`).
    pub transformer_layers_per_block: Vec<usize>,
    /// Attention heads per block (diffusers' `attention_head_dim`, which this model reads as
    /// the number of heads).
    pub attention_heads: Vec<usize>,
    /// Width of the text states per block (`cross_attention_dim`: 768 for SD 1.x, 1024 for
    /// SD 2.x).
    pub cross_attention_dim: Vec<usize>,
    /// `downsample_padding` (1).
    pub downsample_padding: usize,
    /// `mid_block_scale_factor` (1).
    pub mid_block_scale_factor: f64,
    /// `norm_num_groups` (32).
    pub norm_num_groups: usize,
    /// `norm_eps` of the ResNet and output GroupNorms (1e-5).
    pub norm_eps: f64,
    /// `use_linear_projection` in the transformers (SD 2.x).
    pub use_linear_projection: bool,
    /// The time embedding width (`time_embedding_dim`, default `4 * block_out_channels[0]`).
    pub time_embed_dim: usize,
    /// `conv_in_kernel` (3).
    pub conv_in_kernel: usize,
    /// `conv_out_kernel` (3).
    pub conv_out_kernel: usize,
    /// `sample_size` (informational; 64 for SD 1.x at 512 px).
    pub sample_size: Option<usize>,
}

fn per_block(v: &IntOrList, n: usize, key: &str, ctx: &str) -> Result<Vec<usize>> {
    match v {
        IntOrList::One(x) => Ok(vec![*x; n]),
        IntOrList::List(l) if l.len() == n => Ok(l.clone()),
        IntOrList::List(l) => Err(DiffusionError::config(
            ctx,
            format!("`{key}` has {} entries for {n} blocks", l.len()),
        )),
    }
}

impl UNet2DConditionConfig {
    /// Parses and validates a `config.json` value; `context` names it in errors.
    pub fn from_json(value: &Value, context: &str) -> Result<Self> {
        let raw: RawConfig = serde_json::from_value(value.clone())
            .map_err(|e| DiffusionError::config(context, e.to_string()))?;
        let err = |m: String| DiffusionError::config(context, m);
        let unsupported = |what: &str| err(format!("{what} is not supported by this port"));
        if raw.class_embed_type.is_some() || raw.num_class_embeds.is_some() {
            return Err(unsupported(
                "class embeddings (class_embed_type / num_class_embeds)",
            ));
        }
        if raw.addition_embed_type.is_some() || raw.projection_class_embeddings_input_dim.is_some()
        {
            return Err(unsupported(
                "addition embeddings (addition_embed_type, SDXL)",
            ));
        }
        if raw.encoder_hid_dim.is_some() || raw.encoder_hid_dim_type.is_some() {
            return Err(unsupported("encoder_hid_dim"));
        }
        if raw.time_cond_proj_dim.is_some() {
            return Err(unsupported("time_cond_proj_dim"));
        }
        if raw.time_embedding_act_fn.is_some() || raw.timestep_post_act.is_some() {
            return Err(unsupported("time_embedding_act_fn / timestep_post_act"));
        }
        if raw.time_embedding_type != "positional" {
            return Err(unsupported(&format!(
                "time_embedding_type {:?}",
                raw.time_embedding_type
            )));
        }
        if raw.dual_cross_attention {
            return Err(unsupported("dual_cross_attention"));
        }
        let only_cross = match &raw.only_cross_attention {
            BoolOrList::One(b) => *b,
            BoolOrList::List(l) => l.iter().any(|&b| b),
        };
        if only_cross || raw.mid_block_only_cross_attention == Some(true) {
            return Err(unsupported("only_cross_attention"));
        }
        if raw.resnet_time_scale_shift != "default" {
            return Err(unsupported(&format!(
                "resnet_time_scale_shift {:?}",
                raw.resnet_time_scale_shift
            )));
        }
        if raw.resnet_skip_time_act || raw.resnet_out_scale_factor != 1.0 {
            return Err(unsupported(
                "resnet_skip_time_act / resnet_out_scale_factor",
            ));
        }
        if raw.attention_type != "default" {
            return Err(unsupported(&format!(
                "attention_type {:?}",
                raw.attention_type
            )));
        }
        if raw.class_embeddings_concat || raw.cross_attention_norm.is_some() {
            return Err(unsupported(
                "class_embeddings_concat / cross_attention_norm",
            ));
        }
        if raw
            .reverse_transformer_layers_per_block
            .as_ref()
            .is_some_and(|v| !v.is_null())
        {
            return Err(unsupported("reverse_transformer_layers_per_block"));
        }
        if raw
            .num_attention_heads
            .as_ref()
            .is_some_and(|v| !v.is_null())
        {
            return Err(err(
                "`num_attention_heads` is not read by UNet2DConditionModel (diffusers rejects it \
                 too); the head count is `attention_head_dim`"
                    .into(),
            ));
        }
        if raw.act_fn != "silu" {
            return Err(unsupported(&format!("act_fn {:?}", raw.act_fn)));
        }
        let n = raw.block_out_channels.len();
        if n == 0 {
            return Err(err("block_out_channels is empty".into()));
        }
        if raw.down_block_types.len() != n || raw.up_block_types.len() != n {
            return Err(err(format!(
                "{} down and {} up block types for {n} block_out_channels",
                raw.down_block_types.len(),
                raw.up_block_types.len()
            )));
        }
        let mut down_blocks = Vec::new();
        for t in &raw.down_block_types {
            down_blocks.push(match t.as_str() {
                "CrossAttnDownBlock2D" => BlockKind::CrossAttention,
                "DownBlock2D" => BlockKind::Plain,
                other => return Err(unsupported(&format!("down block type {other:?}"))),
            });
        }
        let mut up_blocks = Vec::new();
        for t in &raw.up_block_types {
            up_blocks.push(match t.as_str() {
                "CrossAttnUpBlock2D" => BlockKind::CrossAttention,
                "UpBlock2D" => BlockKind::Plain,
                other => return Err(unsupported(&format!("up block type {other:?}"))),
            });
        }
        let mid_block = match raw.mid_block_type.as_deref() {
            Some("UNetMidBlock2DCrossAttn") => true,
            None => false,
            Some(other) => return Err(unsupported(&format!("mid_block_type {other:?}"))),
        };
        let g = raw.norm_num_groups;
        if g == 0 {
            return Err(err("norm_num_groups is 0".into()));
        }
        if let Some(c) = raw
            .block_out_channels
            .iter()
            .find(|&&c| c == 0 || c % g != 0)
        {
            return Err(err(format!(
                "block_out_channels entry {c} is not a positive multiple of norm_num_groups {g}"
            )));
        }
        let layers_per_block = per_block(&raw.layers_per_block, n, "layers_per_block", context)?;
        let transformer_layers_per_block = per_block(
            &raw.transformer_layers_per_block,
            n,
            "transformer_layers_per_block",
            context,
        )?;
        let attention_heads = per_block(&raw.attention_head_dim, n, "attention_head_dim", context)?;
        let cross_attention_dim =
            per_block(&raw.cross_attention_dim, n, "cross_attention_dim", context)?;
        for (i, (&c, &h)) in raw
            .block_out_channels
            .iter()
            .zip(&attention_heads)
            .enumerate()
        {
            let uses = down_blocks[i] == BlockKind::CrossAttention
                || up_blocks[n - 1 - i] == BlockKind::CrossAttention
                || (mid_block && i == n - 1);
            if uses && (h == 0 || c % h != 0) {
                return Err(err(format!(
                    "block {i}: {c} channels cannot be split into {h} attention heads"
                )));
            }
        }
        if layers_per_block.contains(&0) {
            return Err(err("layers_per_block has a 0".into()));
        }
        for (k, key) in [
            (raw.conv_in_kernel, "conv_in_kernel"),
            (raw.conv_out_kernel, "conv_out_kernel"),
        ] {
            if k % 2 == 0 {
                return Err(err(format!("{key} must be odd, got {k}")));
            }
        }
        if raw.in_channels == 0 || raw.out_channels == 0 {
            return Err(err("channel counts must be positive".into()));
        }
        let sample_size = match &raw.sample_size {
            Some(Value::Number(x)) => x.as_u64().map(|x| x as usize),
            Some(Value::Array(a)) => a.first().and_then(Value::as_u64).map(|x| x as usize),
            _ => None,
        };
        let _ = raw.upcast_attention;
        Ok(UNet2DConditionConfig {
            in_channels: raw.in_channels,
            out_channels: raw.out_channels,
            center_input_sample: raw.center_input_sample,
            flip_sin_to_cos: raw.flip_sin_to_cos,
            freq_shift: raw.freq_shift,
            down_blocks,
            up_blocks,
            mid_block,
            time_embed_dim: raw
                .time_embedding_dim
                .unwrap_or(4 * raw.block_out_channels[0]),
            block_out_channels: raw.block_out_channels,
            layers_per_block,
            transformer_layers_per_block,
            attention_heads,
            cross_attention_dim,
            downsample_padding: raw.downsample_padding,
            mid_block_scale_factor: raw.mid_block_scale_factor,
            norm_num_groups: g,
            norm_eps: raw.norm_eps,
            use_linear_projection: raw.use_linear_projection,
            conv_in_kernel: raw.conv_in_kernel,
            conv_out_kernel: raw.conv_out_kernel,
            sample_size,
        })
    }

    /// Reads a `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_json(&read_json(path)?, &path.display().to_string())
    }

    /// The factor latent sizes must be divisible by, `2^(blocks - 1)`.
    pub fn size_multiple(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

// ============================================================================ layers

/// `ResnetBlock2D` with a time embedding (see [`ResnetBlock2d`]).
pub type UnetResnet<B> = ResnetBlock2d<B>;

/// The UNet's `ResnetBlock2D` shape: with the time embedding and the configured norm.
fn resnet_config(
    c_in: usize,
    c_out: usize,
    cfg: &UNet2DConditionConfig,
    output_scale_factor: f64,
) -> ResnetBlockConfig {
    ResnetBlockConfig {
        c_in,
        c_out,
        groups: cfg.norm_num_groups,
        eps: cfg.norm_eps,
        temb_channels: Some(cfg.time_embed_dim),
        output_scale_factor,
    }
}

/// Multi-head attention (`Attention` with `AttnProcessor2_0`): self-attention when no context
/// is given, cross-attention to the context otherwise.
#[derive(Module, Debug)]
pub struct CrossAttention<B: Backend> {
    to_q: Linear<B>,
    to_k: Linear<B>,
    to_v: Linear<B>,
    to_out: Linear<B>,
    heads: usize,
    head_dim: usize,
    /// [`AttentionSlicing`] as a score bound (0 = off).
    max_scores: usize,
}

impl<B: Backend> CrossAttention<B> {
    fn load(
        w: &Weights,
        dim: usize,
        context_dim: usize,
        heads: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let head_dim = dim / heads;
        let inner = heads * head_dim;
        let bias = w.contains("to_q.bias");
        Ok(CrossAttention {
            to_q: w.pp("to_q").linear(dim, inner, bias, device)?,
            to_k: w.pp("to_k").linear(context_dim, inner, bias, device)?,
            to_v: w.pp("to_v").linear(context_dim, inner, bias, device)?,
            to_out: w.pp("to_out.0").linear(inner, dim, true, device)?,
            heads,
            head_dim,
            max_scores: AttentionSlicing::default().as_limit(),
        })
    }

    /// `[B, N, heads * head_dim]` to `[B * heads, N, head_dim]`.
    fn split_heads(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, n, _] = x.dims();
        x.reshape([b, n, self.heads, self.head_dim])
            .swap_dims(1, 2)
            .reshape([b * self.heads, n, self.head_dim])
    }

    /// Sets how the attention is sliced (see [`AttentionSlicing`]).
    pub fn set_attention_slicing(&mut self, slicing: AttentionSlicing) {
        self.max_scores = slicing.as_limit();
    }

    /// `x` `[B, N, dim]`, `context` `[B, S, context_dim]` (or none for self-attention).
    pub fn forward(&self, x: Tensor<B, 3>, context: Option<Tensor<B, 3>>) -> Tensor<B, 3> {
        let [b, n, _] = x.dims();
        let context = context.unwrap_or_else(|| x.clone());
        let slicing = AttentionSlicing::from_limit(self.max_scores).resolve::<B>();
        if slicing == AttentionSlicing::Fused {
            // Heads as views (`[b, heads, len, head_dim]`, no copy): the fused attention reads
            // strided inputs in place.
            let heads = |t: Tensor<B, 3>| {
                let [_, len, _] = t.dims();
                t.reshape([b, len, self.heads, self.head_dim])
                    .swap_dims(1, 2)
            };
            let options = AttentionModuleOptions {
                scale: Some(1.0 / (self.head_dim as f64).sqrt()),
                ..Default::default()
            };
            let out = cielr_core::attention::attention(
                heads(self.to_q.forward(x)),
                heads(self.to_k.forward(context.clone())),
                heads(self.to_v.forward(context)),
                None,
                None,
                options,
            );
            return self
                .to_out
                .forward(contiguous(out.swap_dims(1, 2)).reshape([
                    b,
                    n,
                    self.heads * self.head_dim,
                ]));
        }
        let q = self.split_heads(self.to_q.forward(x));
        let k = self.split_heads(self.to_k.forward(context.clone()));
        let v = self.split_heads(self.to_v.forward(context));
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let out = attention(q, k, v, scale, slicing);
        let out = out
            .reshape([b, self.heads, n, self.head_dim])
            .swap_dims(1, 2)
            .reshape([b, n, self.heads * self.head_dim]);
        self.to_out.forward(out)
    }
}

/// `BasicTransformerBlock`: LayerNorm + self-attention, LayerNorm + cross-attention,
/// LayerNorm + GEGLU feed-forward, each with a residual connection.
#[derive(Module, Debug)]
pub struct BasicTransformerBlock<B: Backend> {
    norm1: LayerNorm<B>,
    attn1: CrossAttention<B>,
    norm2: LayerNorm<B>,
    attn2: CrossAttention<B>,
    norm3: LayerNorm<B>,
    ff_proj: Linear<B>,
    ff_out: Linear<B>,
}

impl<B: Backend> BasicTransformerBlock<B> {
    fn load(
        w: &Weights,
        dim: usize,
        context_dim: usize,
        heads: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let ff_inner = 4 * dim;
        let ff_bias = w.contains("ff.net.0.proj.bias");
        Ok(BasicTransformerBlock {
            norm1: w.pp("norm1").layer_norm(dim, 1e-5, device)?,
            attn1: CrossAttention::load(&w.pp("attn1"), dim, dim, heads, device)?,
            norm2: w.pp("norm2").layer_norm(dim, 1e-5, device)?,
            attn2: CrossAttention::load(&w.pp("attn2"), dim, context_dim, heads, device)?,
            norm3: w.pp("norm3").layer_norm(dim, 1e-5, device)?,
            ff_proj: w
                .pp("ff.net.0.proj")
                .linear(dim, 2 * ff_inner, ff_bias, device)?,
            ff_out: w.pp("ff.net.2").linear(ff_inner, dim, ff_bias, device)?,
        })
    }

    /// Sets how both attentions are sliced.
    pub fn set_attention_slicing(&mut self, slicing: AttentionSlicing) {
        self.attn1.set_attention_slicing(slicing);
        self.attn2.set_attention_slicing(slicing);
    }

    /// Applies the block to `[B, N, dim]` tokens with text states `[B, S, context_dim]`.
    pub fn forward(&self, x: Tensor<B, 3>, context: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = self.attn1.forward(self.norm1.forward(x.clone()), None) + x;
        let x = self
            .attn2
            .forward(self.norm2.forward(x.clone()), Some(context))
            + x;
        let h = self.ff_proj.forward(self.norm3.forward(x.clone()));
        self.ff_out.forward(geglu(h)) + x
    }
}

/// `Transformer2DModel` on a feature map: GroupNorm, projection in (1x1 conv, or linear with
/// `use_linear_projection`), transformer blocks over the `H * W` tokens, projection out, plus
/// the input.
#[derive(Module, Debug)]
pub struct Transformer2d<B: Backend> {
    norm: GroupNorm<B>,
    proj_in_conv: Option<Conv2d<B>>,
    proj_in_linear: Option<Linear<B>>,
    blocks: Vec<BasicTransformerBlock<B>>,
    proj_out_conv: Option<Conv2d<B>>,
    proj_out_linear: Option<Linear<B>>,
}

impl<B: Backend> Transformer2d<B> {
    #[allow(clippy::too_many_arguments)]
    fn load(
        w: &Weights,
        channels: usize,
        heads: usize,
        layers: usize,
        context_dim: usize,
        cfg: &UNet2DConditionConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let inner = channels; // heads * (channels / heads)
        let linear = cfg.use_linear_projection;
        let mut blocks = Vec::new();
        for i in 0..layers {
            blocks.push(BasicTransformerBlock::load(
                &w.pp(format!("transformer_blocks.{i}")),
                inner,
                context_dim,
                heads,
                device,
            )?);
        }
        Ok(Transformer2d {
            norm: w
                .pp("norm")
                .group_norm(cfg.norm_num_groups, channels, 1e-6, device)?,
            proj_in_conv: if linear {
                None
            } else {
                Some(
                    w.pp("proj_in")
                        .conv2d(channels, inner, 1, 1, (0, 0, 0, 0), device)?,
                )
            },
            proj_in_linear: if linear {
                Some(w.pp("proj_in").linear(channels, inner, true, device)?)
            } else {
                None
            },
            blocks,
            proj_out_conv: if linear {
                None
            } else {
                Some(
                    w.pp("proj_out")
                        .conv2d(inner, channels, 1, 1, (0, 0, 0, 0), device)?,
                )
            },
            proj_out_linear: if linear {
                Some(w.pp("proj_out").linear(inner, channels, true, device)?)
            } else {
                None
            },
        })
    }

    /// Sets how every block's attention is sliced.
    pub fn set_attention_slicing(&mut self, slicing: AttentionSlicing) {
        for b in &mut self.blocks {
            b.set_attention_slicing(slicing);
        }
    }

    /// Applies the transformer to `[B, C, H, W]` with text states `[B, S, context_dim]`.
    pub fn forward(&self, x: Tensor<B, 4>, context: Tensor<B, 3>) -> Tensor<B, 4> {
        let [b, c, h, w] = x.dims();
        let mut y = group_norm(&self.norm, x.clone());
        if let Some(p) = &self.proj_in_conv {
            y = conv2d_module(p, y);
        }
        let inner = y.dims()[1];
        // Tokens `[b, h·w, inner]`, copied contiguous once (every block reads them).
        let mut t = contiguous(y.reshape([b, inner, h * w]).swap_dims(1, 2));
        if let Some(p) = &self.proj_in_linear {
            t = p.forward(t);
        }
        for block in &self.blocks {
            t = block.forward(t, context.clone());
        }
        if let Some(p) = &self.proj_out_linear {
            t = p.forward(t);
        }
        let c_t = t.dims()[2];
        let mut y = contiguous(t.swap_dims(1, 2)).reshape([b, c_t, h, w]);
        if let Some(p) = &self.proj_out_conv {
            y = conv2d_module(p, y);
        }
        debug_assert_eq!(y.dims()[1], c);
        y + x
    }
}

/// A down or up block's ResNets and (in cross-attention blocks) their transformers.
type BlockLayers<B> = (Vec<UnetResnet<B>>, Vec<Transformer2d<B>>);

/// The transformer settings of one down or up block.
struct AttentionSpec {
    heads: usize,
    layers: usize,
    context_dim: usize,
}

/// Loads a down or up block's ResNets (`resnets.{j}`, with the `(in, out)` channels of
/// `channels[j]`) and, when `attention` is given, a transformer after each (`attentions.{j}`).
fn load_layers<B: Backend>(
    bw: &Weights,
    channels: &[(usize, usize)],
    attention: Option<AttentionSpec>,
    cfg: &UNet2DConditionConfig,
    device: &B::Device,
) -> Result<BlockLayers<B>> {
    let mut resnets = Vec::new();
    let mut attentions = Vec::new();
    for (j, &(cin, c_out)) in channels.iter().enumerate() {
        resnets.push(ResnetBlock2d::load(
            &bw.pp(format!("resnets.{j}")),
            resnet_config(cin, c_out, cfg, 1.0),
            device,
        )?);
        if let Some(a) = &attention {
            attentions.push(Transformer2d::load(
                &bw.pp(format!("attentions.{j}")),
                c_out,
                a.heads,
                a.layers,
                a.context_dim,
                cfg,
                device,
            )?);
        }
    }
    Ok((resnets, attentions))
}

/// A ResNet, then (in cross-attention blocks) its transformer.
fn resnet_then_attention<B: Backend>(
    resnet: &UnetResnet<B>,
    attention: Option<&Transformer2d<B>>,
    x: Tensor<B, 4>,
    temb: &Tensor<B, 2>,
    context: &Tensor<B, 3>,
) -> Tensor<B, 4> {
    let x = resnet.forward(x, Some(temb.clone()));
    match attention {
        Some(a) => a.forward(x, context.clone()),
        None => x,
    }
}

/// A down block: ResNet blocks (each followed by a transformer in `CrossAttnDownBlock2D`),
/// then a stride-2 convolution except in the last block.
#[derive(Module, Debug)]
pub struct UnetDownBlock<B: Backend> {
    resnets: Vec<UnetResnet<B>>,
    attentions: Vec<Transformer2d<B>>,
    downsample: Option<Downsample2d<B>>,
}

impl<B: Backend> UnetDownBlock<B> {
    /// Applies the block, pushing every intermediate state onto `skips`.
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        temb: &Tensor<B, 2>,
        context: &Tensor<B, 3>,
        skips: &mut Vec<Tensor<B, 4>>,
    ) -> Tensor<B, 4> {
        let mut x = x;
        for (i, r) in self.resnets.iter().enumerate() {
            x = resnet_then_attention(r, self.attentions.get(i), x, temb, context);
            skips.push(x.clone());
        }
        if let Some(d) = &self.downsample {
            x = d.forward(x);
            skips.push(x.clone());
        }
        x
    }
}

/// An up block: ResNet blocks on the input concatenated with a skip state (each followed by a
/// transformer in `CrossAttnUpBlock2D`), then nearest 2x upsampling and a convolution except
/// in the last block.
#[derive(Module, Debug)]
pub struct UnetUpBlock<B: Backend> {
    resnets: Vec<UnetResnet<B>>,
    attentions: Vec<Transformer2d<B>>,
    upsample: Option<Upsample2d<B>>,
}

impl<B: Backend> UnetUpBlock<B> {
    /// Applies the block, popping its skip states from `skips`; an error if there are too few.
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        temb: &Tensor<B, 2>,
        context: &Tensor<B, 3>,
        skips: &mut Vec<Tensor<B, 4>>,
    ) -> Result<Tensor<B, 4>> {
        let mut x = x;
        for (i, r) in self.resnets.iter().enumerate() {
            // The skip states come back in the reverse of the order the down path made them;
            // the configuration fixes one per up ResNet.
            let skip = skips.pop().ok_or_else(|| {
                DiffusionError::config("UNet2DConditionModel", "the up path ran out of skip states")
            })?;
            let x_skip = Tensor::cat(vec![x, skip], 1);
            x = resnet_then_attention(r, self.attentions.get(i), x_skip, temb, context);
        }
        if let Some(u) = &self.upsample {
            x = u.forward(x);
        }
        Ok(x)
    }
}

/// `UNetMidBlock2DCrossAttn`: ResNet, then (transformer, ResNet) pairs.
#[derive(Module, Debug)]
pub struct UnetMidBlock<B: Backend> {
    resnets: Vec<UnetResnet<B>>,
    attentions: Vec<Transformer2d<B>>,
}

impl<B: Backend> UnetMidBlock<B> {
    /// Applies the block.
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        temb: &Tensor<B, 2>,
        context: &Tensor<B, 3>,
    ) -> Tensor<B, 4> {
        let mut x = self.resnets[0].forward(x, Some(temb.clone()));
        for (a, r) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = a.forward(x, context.clone());
            x = r.forward(x, Some(temb.clone()));
        }
        x
    }
}

// ============================================================================ the model

/// diffusers' `UNet2DConditionModel` (SD 1.x / 2.x, inpainting variants included).
#[derive(Module, Debug)]
pub struct UNet2DConditionModel<B: Backend> {
    conv_in: Conv2d<B>,
    time_linear_1: Linear<B>,
    time_linear_2: Linear<B>,
    down_blocks: Vec<UnetDownBlock<B>>,
    mid_block: Option<UnetMidBlock<B>>,
    up_blocks: Vec<UnetUpBlock<B>>,
    conv_norm_out: GroupNorm<B>,
    conv_out: Conv2d<B>,
    #[module(skip)]
    config: UNet2DConditionConfig,
}

/// diffusers' `get_timestep_embedding` in f32, as torch computes it: `exp(-ln(10000) * i /
/// (half - freq_shift))` frequencies, `[sin, cos]` (or `[cos, sin]` with `flip_sin_to_cos`),
/// zero-padded to odd `dim`. Returns `timesteps.len() * dim` values.
pub fn timestep_embedding(
    timesteps: &[f64],
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
) -> Vec<f32> {
    let half = dim / 2;
    let ln = -(10000f64.ln()) as f32;
    let denom = (half as f64 - freq_shift) as f32;
    let freqs: Vec<f32> = (0..half).map(|i| ((ln * i as f32) / denom).exp()).collect();
    let mut out = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        let t = t as f32;
        let args: Vec<f32> = freqs.iter().map(|&f| t * f).collect();
        let sin = args.iter().map(|a| a.sin());
        let cos = args.iter().map(|a| a.cos());
        if flip_sin_to_cos {
            out.extend(cos);
            out.extend(sin);
        } else {
            out.extend(sin);
            out.extend(cos);
        }
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    out
}

impl<B: Backend> UNet2DConditionModel<B> {
    /// Builds the model from a checkpoint's tensors (diffusers' names, from the root).
    pub fn load(w: &Weights, cfg: &UNet2DConditionConfig, device: &B::Device) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let temb = cfg.time_embed_dim;
        let k_in = cfg.conv_in_kernel;
        let p_in = (k_in - 1) / 2;
        let conv_in = w.pp("conv_in").conv2d(
            cfg.in_channels,
            ch[0],
            k_in,
            1,
            (p_in, p_in, p_in, p_in),
            device,
        )?;
        let time_linear_1 = w
            .pp("time_embedding.linear_1")
            .linear(ch[0], temb, true, device)?;
        let time_linear_2 = w
            .pp("time_embedding.linear_2")
            .linear(temb, temb, true, device)?;

        let mut down_blocks = Vec::new();
        let mut c_out = ch[0];
        for (i, &c) in ch.iter().enumerate() {
            let c_in = c_out;
            c_out = c;
            let bw = w.pp(format!("down_blocks.{i}"));
            let channels: Vec<(usize, usize)> = (0..cfg.layers_per_block[i])
                .map(|j| (if j == 0 { c_in } else { c_out }, c_out))
                .collect();
            let attention =
                (cfg.down_blocks[i] == BlockKind::CrossAttention).then(|| AttentionSpec {
                    heads: cfg.attention_heads[i],
                    layers: cfg.transformer_layers_per_block[i],
                    context_dim: cfg.cross_attention_dim[i],
                });
            let (resnets, attentions) = load_layers(&bw, &channels, attention, cfg, device)?;
            let downsample = if i + 1 < n {
                let p = cfg.downsample_padding;
                // padding 0 means diffusers' asymmetric (0, 1, 0, 1) pad.
                let pad = if p == 0 { (0, 0, 1, 1) } else { (p, p, p, p) };
                Some(Downsample2d::load(
                    &bw.pp("downsamplers.0.conv"),
                    c_out,
                    pad,
                    device,
                )?)
            } else {
                None
            };
            down_blocks.push(UnetDownBlock {
                resnets,
                attentions,
                downsample,
            });
        }

        let last = ch[n - 1];
        let mid_block = if cfg.mid_block {
            let mw = w.pp("mid_block");
            let layers = cfg.transformer_layers_per_block[n - 1];
            Some(UnetMidBlock {
                resnets: vec![
                    ResnetBlock2d::load(
                        &mw.pp("resnets.0"),
                        resnet_config(last, last, cfg, cfg.mid_block_scale_factor),
                        device,
                    )?,
                    ResnetBlock2d::load(
                        &mw.pp("resnets.1"),
                        resnet_config(last, last, cfg, cfg.mid_block_scale_factor),
                        device,
                    )?,
                ],
                attentions: vec![Transformer2d::load(
                    &mw.pp("attentions.0"),
                    last,
                    cfg.attention_heads[n - 1],
                    layers,
                    cfg.cross_attention_dim[n - 1],
                    cfg,
                    device,
                )?],
            })
        } else {
            None
        };

        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let rev_heads: Vec<usize> = cfg.attention_heads.iter().rev().copied().collect();
        let rev_layers: Vec<usize> = cfg.layers_per_block.iter().rev().copied().collect();
        let rev_cross: Vec<usize> = cfg.cross_attention_dim.iter().rev().copied().collect();
        let rev_tlayers: Vec<usize> = cfg
            .transformer_layers_per_block
            .iter()
            .rev()
            .copied()
            .collect();
        let mut up_blocks = Vec::new();
        let mut c_out = rev[0];
        for i in 0..n {
            let c_prev = c_out;
            c_out = rev[i];
            let c_in = rev[(i + 1).min(n - 1)];
            let bw = w.pp(format!("up_blocks.{i}"));
            let layers = rev_layers[i] + 1;
            let channels: Vec<(usize, usize)> = (0..layers)
                .map(|j| {
                    let skip = if j == layers - 1 { c_in } else { c_out };
                    let cin = if j == 0 { c_prev } else { c_out };
                    (cin + skip, c_out)
                })
                .collect();
            let attention =
                (cfg.up_blocks[i] == BlockKind::CrossAttention).then(|| AttentionSpec {
                    heads: rev_heads[i],
                    layers: rev_tlayers[i],
                    context_dim: rev_cross[i],
                });
            let (resnets, attentions) = load_layers(&bw, &channels, attention, cfg, device)?;
            let upsample = if i + 1 < n {
                Some(Upsample2d::load(
                    &bw.pp("upsamplers.0.conv"),
                    c_out,
                    device,
                )?)
            } else {
                None
            };
            up_blocks.push(UnetUpBlock {
                resnets,
                attentions,
                upsample,
            });
        }
        let k_out = cfg.conv_out_kernel;
        let p_out = (k_out - 1) / 2;
        Ok(UNet2DConditionModel {
            conv_in,
            time_linear_1,
            time_linear_2,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: w.pp("conv_norm_out").group_norm(
                cfg.norm_num_groups,
                ch[0],
                cfg.norm_eps,
                device,
            )?,
            conv_out: w.pp("conv_out").conv2d(
                ch[0],
                cfg.out_channels,
                k_out,
                1,
                (p_out, p_out, p_out, p_out),
                device,
            )?,
            config: cfg.clone(),
        })
    }

    /// Sets how every attention layer is sliced ([`AttentionSlicing::default`] after loading:
    /// at most 2^25 scores at once; [`AttentionSlicing::Off`] computes all heads at once).
    pub fn set_attention_slicing(&mut self, slicing: AttentionSlicing) {
        let down = self.down_blocks.iter_mut().map(|b| &mut b.attentions);
        let up = self.up_blocks.iter_mut().map(|b| &mut b.attentions);
        let mid = self.mid_block.iter_mut().map(|b| &mut b.attentions);
        for attentions in down.chain(up).chain(mid) {
            for t in attentions.iter_mut() {
                t.set_attention_slicing(slicing);
            }
        }
    }

    /// Loads a diffusers `unet` folder: `config.json` and `diffusion_pytorch_model.safetensors`
    /// (or its sharded index; f32, f16 or bf16).
    pub fn from_dir(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let dir = dir.as_ref();
        let config = UNet2DConditionConfig::from_file(dir.join("config.json"))?;
        let checkpoint = Checkpoint::open(dir)?;
        Self::load(&checkpoint.weights(), &config, device)
    }

    /// The configuration.
    pub fn config(&self) -> &UNet2DConditionConfig {
        &self.config
    }

    /// Predicts the noise (or velocity) for latents `[B, in_channels, h, w]` at timestep `t`
    /// (the same for the whole batch) given text states `[B, S, cross_attention_dim]`.
    pub fn forward(
        &self,
        sample: Tensor<B, 4>,
        t: f64,
        encoder_hidden_states: Tensor<B, 3>,
    ) -> Result<Tensor<B, 4>> {
        let b = sample.dims()[0];
        self.forward_timesteps(sample, &vec![t; b], encoder_hidden_states)
    }

    /// As [`forward`](Self::forward) with one timestep per batch element.
    pub fn forward_timesteps(
        &self,
        sample: Tensor<B, 4>,
        timesteps: &[f64],
        encoder_hidden_states: Tensor<B, 3>,
    ) -> Result<Tensor<B, 4>> {
        let cfg = &self.config;
        let [b, c, h, w] = sample.dims();
        let m = cfg.size_multiple();
        if c != cfg.in_channels || b == 0 || h == 0 || w == 0 || h % m != 0 || w % m != 0 {
            return Err(DiffusionError::input_shape(
                "UNet2DConditionModel sample",
                format!(
                    "must be [batch, {}, height, width] with height and width positive multiples \
                     of {m}, got {:?}",
                    cfg.in_channels,
                    sample.dims()
                ),
            ));
        }
        let [eb, _, ed] = encoder_hidden_states.dims();
        if eb != b || cfg.cross_attention_dim.iter().any(|&d| d != ed) {
            return Err(DiffusionError::input_shape(
                "UNet2DConditionModel encoder_hidden_states",
                format!(
                    "must be [{b}, tokens, {}], got {:?}",
                    cfg.cross_attention_dim[0],
                    encoder_hidden_states.dims()
                ),
            ));
        }
        if timesteps.len() != b {
            return Err(DiffusionError::input_shape(
                "UNet2DConditionModel timesteps",
                format!("{} timesteps for a batch of {b}", timesteps.len()),
            ));
        }
        let device = sample.device();
        let sample = if cfg.center_input_sample {
            sample * 2.0 - 1.0
        } else {
            sample
        };
        let dim0 = cfg.block_out_channels[0];
        let t_emb = timestep_embedding(timesteps, dim0, cfg.flip_sin_to_cos, cfg.freq_shift);
        let t_emb = Tensor::<B, 2>::from_data(TensorData::new(t_emb, [b, dim0]), &device);
        let emb = self
            .time_linear_2
            .forward(silu(self.time_linear_1.forward(t_emb)));
        // Every ResNet applies SiLU to the embedding first.
        let temb = silu(emb);
        let context = encoder_hidden_states;

        let mut x = conv2d_module(&self.conv_in, sample);
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            x = block.forward(x, &temb, &context, &mut skips);
        }
        if let Some(mid) = &self.mid_block {
            x = mid.forward(x, &temb, &context);
        }
        for block in &self.up_blocks {
            x = block.forward(x, &temb, &context, &mut skips)?;
        }
        Ok(conv2d_module(
            &self.conv_out,
            group_norm_silu(&self.conv_norm_out, x),
        ))
    }
}
