//! The variational autoencoder of Stable Diffusion, diffusers' `AutoencoderKL`, in Burn.
//!
//! One file per model, in the style of candle-transformers: [`AutoencoderKlConfig`] reads the
//! checkpoint's own `vae/config.json`, every weight name is spelled once in the `load`
//! functions below (diffusers' names; the pre-0.14 attention names `query` / `key` / `value` /
//! `proj_attn` and 1x1-convolution attention weights are accepted too), and the modules are
//! Burn modules generic over the backend.
//!
//! - Encoder: `conv_in`, `DownEncoderBlock2D`s (ResNet blocks with GroupNorm + SiLU, a
//!   stride-2 convolution after a `(0, 1, 0, 1)` pad between blocks), a mid block (ResNet,
//!   single-head self-attention, ResNet), GroupNorm + SiLU + `conv_out` to the mean and
//!   log-variance, then `quant_conv`.
//! - Decoder: `post_quant_conv`, `conv_in`, mid block, `UpDecoderBlock2D`s (ResNet blocks,
//!   nearest 2x upsampling + convolution between blocks), GroupNorm + SiLU + `conv_out`.
//!
//! [`AutoencoderKl::encode`] returns the [`LatentDistribution`] (mean, clamped log-variance);
//! take its [`mode`](LatentDistribution::mode) or [`sample`](LatentDistribution::sample) it
//! with given noise, then [`scale_latents`](AutoencoderKl::scale_latents) by `scaling_factor`
//! before diffusion; [`unscale_latents`](AutoencoderKl::unscale_latents) before
//! [`decode`](AutoencoderKl::decode). Images are NCHW in `[-1, 1]`.
//!
//! Parity with diffusers 0.42 is checked by the `vae_parity` test (a tiny random checkpoint
//! from `tools/parity/diffusers_sched_vae.py`) and, at SD's full size, by
//! `tools/parity/vae_full.sh`. Not supported: tiled and sliced encoding / decoding, the
//! `spatial` norm of MoVQ-style decoders, `act_fn` other than `silu`.

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use cielr_core::norm::{group_norm, group_norm_silu};
use serde::Deserialize;
use serde_json::Value;

pub use crate::blocks::ResnetBlock2d;
use crate::blocks::{attention, AttentionSlicing, Downsample2d, ResnetBlockConfig, Upsample2d};
use crate::error::{DiffusionError, Result};
use crate::schedulers::NoiseSource;
use crate::weights::{read_json, Checkpoint, Weights};
use cielr_core::conv::conv2d_module;
use cielr_core::layout::contiguous;

/// GroupNorm's epsilon everywhere in the VAE.
const EPS: f64 = 1e-6;

// ============================================================================ config

/// An integer or a `[height, width]` pair (`sample_size`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum SizeOrPair {
    One(usize),
    Pair(Vec<usize>),
}

mod defaults {
    pub fn three() -> usize {
        3
    }
    pub fn blocks() -> Vec<usize> {
        vec![64]
    }
    pub fn one() -> usize {
        1
    }
    pub fn latent() -> usize {
        4
    }
    pub fn groups() -> usize {
        32
    }
    pub fn sample_size() -> super::SizeOrPair {
        super::SizeOrPair::One(32)
    }
    pub fn scaling() -> f64 {
        0.18215
    }
    pub fn yes() -> bool {
        true
    }
    pub fn silu() -> String {
        "silu".into()
    }
    pub fn down() -> Vec<String> {
        vec!["DownEncoderBlock2D".into()]
    }
    pub fn up() -> Vec<String> {
        vec!["UpDecoderBlock2D".into()]
    }
}

#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    #[serde(default = "defaults::three")]
    in_channels: usize,
    #[serde(default = "defaults::three")]
    out_channels: usize,
    #[serde(default = "defaults::down")]
    down_block_types: Vec<String>,
    #[serde(default = "defaults::up")]
    up_block_types: Vec<String>,
    #[serde(default = "defaults::blocks")]
    block_out_channels: Vec<usize>,
    #[serde(default = "defaults::one")]
    layers_per_block: usize,
    #[serde(default = "defaults::silu")]
    act_fn: String,
    #[serde(default = "defaults::latent")]
    latent_channels: usize,
    #[serde(default = "defaults::groups")]
    norm_num_groups: usize,
    #[serde(default = "defaults::sample_size")]
    sample_size: SizeOrPair,
    #[serde(default = "defaults::scaling")]
    scaling_factor: f64,
    #[serde(default)]
    shift_factor: Option<f64>,
    #[serde(default = "defaults::yes")]
    use_quant_conv: bool,
    #[serde(default = "defaults::yes")]
    use_post_quant_conv: bool,
    #[serde(default = "defaults::yes")]
    mid_block_add_attention: bool,
    #[serde(default)]
    norm_type: Option<String>,
}

/// The configuration of an [`AutoencoderKl`], read from diffusers' `vae/config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoencoderKlConfig {
    /// Image channels in (`in_channels`, 3).
    pub in_channels: usize,
    /// Image channels out (`out_channels`, 3).
    pub out_channels: usize,
    /// Channels of each encoder block (`block_out_channels`; SD: `[128, 256, 512, 512]`); the
    /// decoder uses them reversed. There is one 2x down/upsampling between consecutive blocks.
    pub block_out_channels: Vec<usize>,
    /// ResNet blocks per encoder block (`layers_per_block`; SD: 2); decoder blocks have one
    /// more.
    pub layers_per_block: usize,
    /// Latent channels (`latent_channels`, 4).
    pub latent_channels: usize,
    /// GroupNorm groups (`norm_num_groups`, 32).
    pub norm_num_groups: usize,
    /// The training image size (`sample_size`; informational).
    pub sample_size: usize,
    /// Latents are multiplied by this before diffusion (`scaling_factor`; SD: 0.18215).
    pub scaling_factor: f64,
    /// Subtracted from latents before scaling (`shift_factor`; none in SD).
    pub shift_factor: Option<f64>,
    /// Whether `quant_conv` exists (`use_quant_conv`, true).
    pub use_quant_conv: bool,
    /// Whether `post_quant_conv` exists (`use_post_quant_conv`, true).
    pub use_post_quant_conv: bool,
    /// Whether the mid blocks have self-attention (`mid_block_add_attention`, true).
    pub mid_block_add_attention: bool,
}

impl AutoencoderKlConfig {
    /// Parses and validates a `config.json` value; `context` names it in errors.
    pub fn from_json(value: &Value, context: &str) -> Result<Self> {
        let raw: RawConfig = serde_json::from_value(value.clone())
            .map_err(|e| DiffusionError::config(context, e.to_string()))?;
        let err = |m: String| DiffusionError::config(context, m);
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
        if let Some(t) = raw
            .down_block_types
            .iter()
            .find(|t| t.as_str() != "DownEncoderBlock2D")
        {
            return Err(err(format!(
                "down block type {t:?} is not supported (DownEncoderBlock2D)"
            )));
        }
        if let Some(t) = raw
            .up_block_types
            .iter()
            .find(|t| t.as_str() != "UpDecoderBlock2D")
        {
            return Err(err(format!(
                "up block type {t:?} is not supported (UpDecoderBlock2D)"
            )));
        }
        if raw.act_fn != "silu" {
            return Err(err(format!(
                "act_fn {:?} is not supported (silu)",
                raw.act_fn
            )));
        }
        if let Some(t) = raw.norm_type.as_deref() {
            if t != "group" {
                return Err(err(format!("norm_type {t:?} is not supported (group)")));
            }
        }
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
        if raw.in_channels == 0 || raw.out_channels == 0 || raw.latent_channels == 0 {
            return Err(err("channel counts must be positive".into()));
        }
        if raw.layers_per_block == 0 {
            return Err(err("layers_per_block is 0".into()));
        }
        let sample_size = match raw.sample_size {
            SizeOrPair::One(s) => s,
            SizeOrPair::Pair(v) if !v.is_empty() => v[0],
            SizeOrPair::Pair(_) => return Err(err("sample_size is an empty list".into())),
        };
        Ok(AutoencoderKlConfig {
            in_channels: raw.in_channels,
            out_channels: raw.out_channels,
            block_out_channels: raw.block_out_channels,
            layers_per_block: raw.layers_per_block,
            latent_channels: raw.latent_channels,
            norm_num_groups: g,
            sample_size,
            scaling_factor: raw.scaling_factor,
            shift_factor: raw.shift_factor,
            use_quant_conv: raw.use_quant_conv,
            use_post_quant_conv: raw.use_post_quant_conv,
            mid_block_add_attention: raw.mid_block_add_attention,
        })
    }

    /// Reads a `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_json(&read_json(path)?, &path.display().to_string())
    }

    /// The spatial downsampling factor, `2^(blocks - 1)` (8 for SD).
    pub fn downsampling_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

// ============================================================================ layers

/// The VAE's `ResnetBlock2D` shape: no time embedding, epsilon 1e-6, no output scaling.
fn resnet_config(c_in: usize, c_out: usize, groups: usize) -> ResnetBlockConfig {
    ResnetBlockConfig {
        c_in,
        c_out,
        groups,
        eps: EPS,
        temb_channels: None,
        output_scale_factor: 1.0,
    }
}

/// The mid block's single-head self-attention over all positions (`Attention` with one head
/// of the full channel width, GroupNorm first, residual connection).
#[derive(Module, Debug)]
pub struct VaeAttention<B: Backend> {
    group_norm: GroupNorm<B>,
    to_q: Linear<B>,
    to_k: Linear<B>,
    to_v: Linear<B>,
    to_out: Linear<B>,
    scale: f64,
    /// [`AttentionSlicing`] as a score bound (0 = off).
    max_scores: usize,
}

impl<B: Backend> VaeAttention<B> {
    fn load(w: &Weights, c: usize, groups: usize, device: &B::Device) -> Result<Self> {
        // diffusers >= 0.14 names, else the deprecated attention-block names.
        let (q, k, v, o) = if w.contains("to_q.weight") || !w.contains("query.weight") {
            ("to_q", "to_k", "to_v", "to_out.0")
        } else {
            ("query", "key", "value", "proj_attn")
        };
        Ok(VaeAttention {
            group_norm: w.pp("group_norm").group_norm(groups, c, EPS, device)?,
            to_q: w.pp(q).linear(c, c, true, device)?,
            to_k: w.pp(k).linear(c, c, true, device)?,
            to_v: w.pp(v).linear(c, c, true, device)?,
            to_out: w.pp(o).linear(c, c, true, device)?,
            scale: 1.0 / (c as f64).sqrt(),
            max_scores: AttentionSlicing::default().as_limit(),
        })
    }

    /// Sets how the attention is sliced (see [`AttentionSlicing`]).
    pub fn set_attention_slicing(&mut self, slicing: AttentionSlicing) {
        self.max_scores = slicing.as_limit();
    }

    /// Applies attention with its residual connection.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, c, h, w] = x.dims();
        let seq = contiguous(
            group_norm(&self.group_norm, x.clone())
                .reshape([b, c, h * w])
                .swap_dims(1, 2),
        );
        let q = self.to_q.forward(seq.clone());
        let k = self.to_k.forward(seq.clone());
        let v = self.to_v.forward(seq);
        let slicing = AttentionSlicing::from_limit(self.max_scores);
        let out = self.to_out.forward(attention(q, k, v, self.scale, slicing));
        contiguous(out.swap_dims(1, 2)).reshape([b, c, h, w]) + x
    }
}

/// `UNetMidBlock2D` without a time embedding: ResNet, attention (optional), ResNet.
#[derive(Module, Debug)]
pub struct MidBlock<B: Backend> {
    resnet0: ResnetBlock2d<B>,
    attention: Option<VaeAttention<B>>,
    resnet1: ResnetBlock2d<B>,
}

impl<B: Backend> MidBlock<B> {
    fn load(
        w: &Weights,
        c: usize,
        groups: usize,
        attention: bool,
        device: &B::Device,
    ) -> Result<Self> {
        Ok(MidBlock {
            resnet0: ResnetBlock2d::load(&w.pp("resnets.0"), resnet_config(c, c, groups), device)?,
            attention: if attention {
                Some(VaeAttention::load(
                    &w.pp("attentions.0"),
                    c,
                    groups,
                    device,
                )?)
            } else {
                None
            },
            resnet1: ResnetBlock2d::load(&w.pp("resnets.1"), resnet_config(c, c, groups), device)?,
        })
    }

    /// Sets how the attention (if any) is sliced.
    pub fn set_attention_slicing(&mut self, slicing: AttentionSlicing) {
        if let Some(a) = &mut self.attention {
            a.set_attention_slicing(slicing);
        }
    }

    /// Applies the block.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = self.resnet0.forward(x, None);
        let x = match &self.attention {
            Some(a) => a.forward(x),
            None => x,
        };
        self.resnet1.forward(x, None)
    }
}

/// `DownEncoderBlock2D`: ResNet blocks, then (except in the last block) `Downsample2D`, a
/// stride-2 3x3 convolution after padding one row and column at the bottom and right.
#[derive(Module, Debug)]
pub struct DownEncoderBlock<B: Backend> {
    resnets: Vec<ResnetBlock2d<B>>,
    downsample: Option<Downsample2d<B>>,
}

impl<B: Backend> DownEncoderBlock<B> {
    /// Applies the block.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = x;
        for r in &self.resnets {
            x = r.forward(x, None);
        }
        match &self.downsample {
            Some(d) => d.forward(x),
            None => x,
        }
    }
}

/// `UpDecoderBlock2D`: ResNet blocks, then (except in the last block) `Upsample2D`, nearest
/// 2x upsampling and a 3x3 convolution.
#[derive(Module, Debug)]
pub struct UpDecoderBlock<B: Backend> {
    resnets: Vec<ResnetBlock2d<B>>,
    upsample: Option<Upsample2d<B>>,
}

impl<B: Backend> UpDecoderBlock<B> {
    /// Applies the block.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = x;
        for r in &self.resnets {
            x = r.forward(x, None);
        }
        match &self.upsample {
            Some(u) => u.forward(x),
            None => x,
        }
    }
}

/// The encoder: image to the parameters (mean and log-variance) of the latent distribution.
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    conv_in: Conv2d<B>,
    down_blocks: Vec<DownEncoderBlock<B>>,
    mid_block: MidBlock<B>,
    conv_norm_out: GroupNorm<B>,
    conv_out: Conv2d<B>,
}

impl<B: Backend> Encoder<B> {
    fn load(w: &Weights, cfg: &AutoencoderKlConfig, device: &B::Device) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let g = cfg.norm_num_groups;
        let mut down_blocks = Vec::new();
        let mut c_out = ch[0];
        for (i, &c) in ch.iter().enumerate() {
            let c_in = c_out;
            c_out = c;
            let bw = w.pp(format!("down_blocks.{i}"));
            let mut resnets = Vec::new();
            for j in 0..cfg.layers_per_block {
                let cin = if j == 0 { c_in } else { c_out };
                resnets.push(ResnetBlock2d::load(
                    &bw.pp(format!("resnets.{j}")),
                    resnet_config(cin, c_out, g),
                    device,
                )?);
            }
            let downsample = if i + 1 < ch.len() {
                Some(Downsample2d::load(
                    &bw.pp("downsamplers.0.conv"),
                    c_out,
                    (0, 0, 1, 1),
                    device,
                )?)
            } else {
                None
            };
            down_blocks.push(DownEncoderBlock {
                resnets,
                downsample,
            });
        }
        let last = ch[ch.len() - 1];
        Ok(Encoder {
            conv_in: w
                .pp("conv_in")
                .conv2d(cfg.in_channels, ch[0], 3, 1, (1, 1, 1, 1), device)?,
            down_blocks,
            mid_block: MidBlock::load(
                &w.pp("mid_block"),
                last,
                g,
                cfg.mid_block_add_attention,
                device,
            )?,
            conv_norm_out: w.pp("conv_norm_out").group_norm(g, last, EPS, device)?,
            conv_out: w.pp("conv_out").conv2d(
                last,
                2 * cfg.latent_channels,
                3,
                1,
                (1, 1, 1, 1),
                device,
            )?,
        })
    }

    /// Image `[B, in_channels, H, W]` to `[B, 2 * latent_channels, H / f, W / f]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = conv2d_module(&self.conv_in, x);
        for b in &self.down_blocks {
            x = b.forward(x);
        }
        let x = self.mid_block.forward(x);
        conv2d_module(&self.conv_out, group_norm_silu(&self.conv_norm_out, x))
    }
}

/// The decoder: latents to an image.
#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    conv_in: Conv2d<B>,
    mid_block: MidBlock<B>,
    up_blocks: Vec<UpDecoderBlock<B>>,
    conv_norm_out: GroupNorm<B>,
    conv_out: Conv2d<B>,
}

impl<B: Backend> Decoder<B> {
    fn load(w: &Weights, cfg: &AutoencoderKlConfig, device: &B::Device) -> Result<Self> {
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let g = cfg.norm_num_groups;
        let mut up_blocks = Vec::new();
        let mut c_out = rev[0];
        for (i, &c) in rev.iter().enumerate() {
            let c_prev = c_out;
            c_out = c;
            let bw = w.pp(format!("up_blocks.{i}"));
            let mut resnets = Vec::new();
            for j in 0..=cfg.layers_per_block {
                let cin = if j == 0 { c_prev } else { c_out };
                resnets.push(ResnetBlock2d::load(
                    &bw.pp(format!("resnets.{j}")),
                    resnet_config(cin, c_out, g),
                    device,
                )?);
            }
            let upsample = if i + 1 < rev.len() {
                Some(Upsample2d::load(
                    &bw.pp("upsamplers.0.conv"),
                    c_out,
                    device,
                )?)
            } else {
                None
            };
            up_blocks.push(UpDecoderBlock { resnets, upsample });
        }
        let first = rev[0];
        let last = rev[rev.len() - 1];
        Ok(Decoder {
            conv_in: w.pp("conv_in").conv2d(
                cfg.latent_channels,
                first,
                3,
                1,
                (1, 1, 1, 1),
                device,
            )?,
            mid_block: MidBlock::load(
                &w.pp("mid_block"),
                first,
                g,
                cfg.mid_block_add_attention,
                device,
            )?,
            up_blocks,
            conv_norm_out: w.pp("conv_norm_out").group_norm(g, last, EPS, device)?,
            conv_out: w.pp("conv_out").conv2d(
                last,
                cfg.out_channels,
                3,
                1,
                (1, 1, 1, 1),
                device,
            )?,
        })
    }

    /// Latents `[B, latent_channels, h, w]` to an image `[B, out_channels, h * f, w * f]`.
    pub fn forward(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = self.mid_block.forward(conv2d_module(&self.conv_in, z));
        for b in &self.up_blocks {
            x = b.forward(x);
        }
        conv2d_module(&self.conv_out, group_norm_silu(&self.conv_norm_out, x))
    }
}

// ============================================================================ the model

/// The latent distribution `encode` returns (diffusers' `DiagonalGaussianDistribution`).
#[derive(Debug, Clone)]
pub struct LatentDistribution<B: Backend> {
    /// The mean, `[B, latent_channels, h, w]`.
    pub mean: Tensor<B, 4>,
    /// The log-variance, clamped to `[-30, 20]` as diffusers does.
    pub logvar: Tensor<B, 4>,
}

impl<B: Backend> LatentDistribution<B> {
    /// The standard deviation, `exp(logvar / 2)`.
    pub fn std(&self) -> Tensor<B, 4> {
        (self.logvar.clone() * 0.5).exp()
    }

    /// The mode (the mean), what SD pipelines use with `sample_mode="argmax"`.
    pub fn mode(&self) -> Tensor<B, 4> {
        self.mean.clone()
    }

    /// `mean + std * noise` for given standard-normal noise of the mean's shape.
    pub fn sample_with_noise(&self, noise: Tensor<B, 4>) -> Result<Tensor<B, 4>> {
        if noise.dims() != self.mean.dims() {
            return Err(DiffusionError::input_shape(
                "latent noise",
                format!(
                    "shape {:?}, the latents are {:?}",
                    noise.dims(),
                    self.mean.dims()
                ),
            ));
        }
        Ok(self.mean.clone() + self.std() * noise)
    }

    /// A sample with noise from `source` (seeded noise cannot match torch's generator).
    pub fn sample(&self, source: &mut dyn NoiseSource<B>) -> Result<Tensor<B, 4>> {
        let noise = source.noise(self.mean.dims(), &self.mean.device())?;
        self.sample_with_noise(noise)
    }
}

/// diffusers' `AutoencoderKL`.
#[derive(Module, Debug)]
pub struct AutoencoderKl<B: Backend> {
    encoder: Encoder<B>,
    decoder: Decoder<B>,
    quant_conv: Option<Conv2d<B>>,
    post_quant_conv: Option<Conv2d<B>>,
    #[module(skip)]
    config: AutoencoderKlConfig,
}

impl<B: Backend> AutoencoderKl<B> {
    /// Sets how the encoder's and decoder's mid-block attention is sliced
    /// ([`AttentionSlicing::default`] after loading).
    pub fn set_attention_slicing(&mut self, slicing: AttentionSlicing) {
        self.encoder.mid_block.set_attention_slicing(slicing);
        self.decoder.mid_block.set_attention_slicing(slicing);
    }

    /// Builds the model from a checkpoint's tensors (diffusers' names, from the root).
    pub fn load(w: &Weights, config: &AutoencoderKlConfig, device: &B::Device) -> Result<Self> {
        let l2 = 2 * config.latent_channels;
        let l = config.latent_channels;
        Ok(AutoencoderKl {
            encoder: Encoder::load(&w.pp("encoder"), config, device)?,
            decoder: Decoder::load(&w.pp("decoder"), config, device)?,
            quant_conv: if config.use_quant_conv {
                Some(
                    w.pp("quant_conv")
                        .conv2d(l2, l2, 1, 1, (0, 0, 0, 0), device)?,
                )
            } else {
                None
            },
            post_quant_conv: if config.use_post_quant_conv {
                Some(
                    w.pp("post_quant_conv")
                        .conv2d(l, l, 1, 1, (0, 0, 0, 0), device)?,
                )
            } else {
                None
            },
            config: config.clone(),
        })
    }

    /// Loads a diffusers `vae` folder: `config.json` and `diffusion_pytorch_model.safetensors`
    /// (f32, f16 or bf16; see [`Checkpoint::open`]).
    pub fn from_dir(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let dir = dir.as_ref();
        let config = AutoencoderKlConfig::from_file(dir.join("config.json"))?;
        let checkpoint = Checkpoint::open(dir)?;
        Self::load(&checkpoint.weights(), &config, device)
    }

    /// The configuration.
    pub fn config(&self) -> &AutoencoderKlConfig {
        &self.config
    }

    /// Encodes images `[B, in_channels, H, W]` in `[-1, 1]` to the latent distribution,
    /// `[B, latent_channels, H / f, W / f]` (f = 8 for SD).
    pub fn encode(&self, images: Tensor<B, 4>) -> Result<LatentDistribution<B>> {
        let [b, c, h, w] = images.dims();
        if c != self.config.in_channels || b == 0 || h == 0 || w == 0 {
            return Err(DiffusionError::input_shape(
                "AutoencoderKl::encode",
                format!(
                    "images must be [batch, {}, height, width] with nothing empty, got {:?}",
                    self.config.in_channels,
                    images.dims()
                ),
            ));
        }
        let mut moments = self.encoder.forward(images);
        if let Some(q) = &self.quant_conv {
            moments = conv2d_module(q, moments);
        }
        let [b, c2, h, w] = moments.dims();
        let l = c2 / 2;
        let mean = moments.clone().slice([0..b, 0..l, 0..h, 0..w]);
        let logvar = moments.slice([0..b, l..c2, 0..h, 0..w]).clamp(-30.0, 20.0);
        Ok(LatentDistribution { mean, logvar })
    }

    /// Decodes latents `[B, latent_channels, h, w]` (unscaled: divide diffusion latents by
    /// `scaling_factor` first, see [`unscale_latents`](Self::unscale_latents)) to images
    /// `[B, out_channels, h * f, w * f]`, roughly in `[-1, 1]`.
    pub fn decode(&self, latents: Tensor<B, 4>) -> Result<Tensor<B, 4>> {
        let [b, c, h, w] = latents.dims();
        if c != self.config.latent_channels || b == 0 || h == 0 || w == 0 {
            return Err(DiffusionError::input_shape(
                "AutoencoderKl::decode",
                format!(
                    "latents must be [batch, {}, height, width] with nothing empty, got {:?}",
                    self.config.latent_channels,
                    latents.dims()
                ),
            ));
        }
        let z = match &self.post_quant_conv {
            Some(p) => conv2d_module(p, latents),
            None => latents,
        };
        Ok(self.decoder.forward(z))
    }

    /// VAE latents to diffusion latents: `(z - shift_factor) * scaling_factor`.
    pub fn scale_latents(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let z = match self.config.shift_factor {
            Some(s) => z - s,
            None => z,
        };
        z * self.config.scaling_factor
    }

    /// Diffusion latents back to VAE latents: `z / scaling_factor + shift_factor`.
    pub fn unscale_latents(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let z = z / self.config.scaling_factor;
        match self.config.shift_factor {
            Some(s) => z + s,
            None => z,
        }
    }
}
