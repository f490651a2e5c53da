//! Building blocks shared by the UNet and the VAE: diffusers' `ResnetBlock2D` (with or
//! without a time embedding), `Downsample2D`, `Upsample2D` and scaled dot-product attention
//! computed in slices ([`attention`], [`AttentionSlicing`]).

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, Linear};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::Tensor;
use cielr_core::layout::contiguous;
use cielr_core::norm::group_norm_silu;

use crate::error::Result;
use crate::weights::Weights;
use cielr_core::conv::conv2d_module;

/// The shape of a [`ResnetBlock2d`]: channels, normalisation and the optional time embedding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResnetBlockConfig {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// GroupNorm groups.
    pub groups: usize,
    /// GroupNorm epsilon.
    pub eps: f64,
    /// Width of the time embedding, or `None` for a block without one (`time_emb_proj`).
    pub temb_channels: Option<usize>,
    /// The output is divided by this (`output_scale_factor`; 1 leaves it as is).
    pub output_scale_factor: f64,
}

/// `ResnetBlock2D`: GroupNorm, SiLU, 3x3 conv, `+ time_emb_proj(temb)` when the block has a
/// time embedding, GroupNorm, SiLU, 3x3 conv, plus the input (through a 1x1 shortcut
/// convolution when the channel count changes), divided by `output_scale_factor`.
#[derive(Module, Debug)]
pub struct ResnetBlock2d<B: Backend> {
    norm1: GroupNorm<B>,
    conv1: Conv2d<B>,
    time_emb_proj: Option<Linear<B>>,
    norm2: GroupNorm<B>,
    conv2: Conv2d<B>,
    conv_shortcut: Option<Conv2d<B>>,
    output_scale_factor: f64,
}

impl<B: Backend> ResnetBlock2d<B> {
    /// Loads the block from `norm1`, `conv1`, `time_emb_proj` (only with a time embedding),
    /// `norm2`, `conv2` and `conv_shortcut` (only when the channel count changes) under `w`.
    pub(crate) fn load(w: &Weights, cfg: ResnetBlockConfig, device: &B::Device) -> Result<Self> {
        let (c_in, c_out, g, eps) = (cfg.c_in, cfg.c_out, cfg.groups, cfg.eps);
        Ok(ResnetBlock2d {
            norm1: w.pp("norm1").group_norm(g, c_in, eps, device)?,
            conv1: w
                .pp("conv1")
                .conv2d(c_in, c_out, 3, 1, (1, 1, 1, 1), device)?,
            time_emb_proj: match cfg.temb_channels {
                Some(t) => Some(w.pp("time_emb_proj").linear(t, c_out, true, device)?),
                None => None,
            },
            norm2: w.pp("norm2").group_norm(g, c_out, eps, device)?,
            conv2: w
                .pp("conv2")
                .conv2d(c_out, c_out, 3, 1, (1, 1, 1, 1), device)?,
            conv_shortcut: if c_in != c_out {
                Some(
                    w.pp("conv_shortcut")
                        .conv2d(c_in, c_out, 1, 1, (0, 0, 0, 0), device)?,
                )
            } else {
                None
            },
            output_scale_factor: cfg.output_scale_factor,
        })
    }

    /// Applies the block; `temb` is the time embedding after SiLU, `[B, temb_channels]`, and is
    /// only used by a block with a time embedding.
    pub fn forward(&self, x: Tensor<B, 4>, temb: Option<Tensor<B, 2>>) -> Tensor<B, 4> {
        let h = conv2d_module(&self.conv1, group_norm_silu(&self.norm1, x.clone()));
        let h = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(temb)) => {
                let [b, c] = [h.dims()[0], h.dims()[1]];
                h + proj.forward(temb).reshape([b, c, 1, 1])
            }
            _ => h,
        };
        let h = conv2d_module(&self.conv2, group_norm_silu(&self.norm2, h));
        let shortcut = match &self.conv_shortcut {
            Some(c) => conv2d_module(c, x),
            None => x,
        };
        let out = shortcut + h;
        if self.output_scale_factor != 1.0 {
            out / self.output_scale_factor
        } else {
            out
        }
    }
}

/// `Downsample2D`: a stride-2 3x3 convolution.
#[derive(Module, Debug)]
pub struct Downsample2d<B: Backend> {
    conv: Conv2d<B>,
}

impl<B: Backend> Downsample2d<B> {
    /// Loads the convolution from `w` (the `downsamplers.0.conv` prefix); `padding` is
    /// `(top, left, bottom, right)`.
    pub(crate) fn load(
        w: &Weights,
        channels: usize,
        padding: (usize, usize, usize, usize),
        device: &B::Device,
    ) -> Result<Self> {
        Ok(Downsample2d {
            conv: w.conv2d(channels, channels, 3, 2, padding, device)?,
        })
    }

    /// Applies the block.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        conv2d_module(&self.conv, x)
    }
}

/// `Upsample2D`: nearest 2x upsampling, then a 3x3 convolution.
#[derive(Module, Debug)]
pub struct Upsample2d<B: Backend> {
    conv: Conv2d<B>,
}

impl<B: Backend> Upsample2d<B> {
    /// Loads the convolution from `w` (the `upsamplers.0.conv` prefix).
    pub(crate) fn load(w: &Weights, channels: usize, device: &B::Device) -> Result<Self> {
        Ok(Upsample2d {
            conv: w.conv2d(channels, channels, 3, 1, (1, 1, 1, 1), device)?,
        })
    }

    /// Applies the block.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        conv2d_module(&self.conv, upsample_nearest2x(x))
    }
}

/// Nearest-neighbour 2x upsampling of NCHW tensors.
pub(crate) fn upsample_nearest2x<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    // The expanded view copied by `contiguous` (Burn's reshape would walk it per element).
    contiguous(x.reshape([b, c, h, 1, w, 1]).expand([b, c, h, 2, w, 2])).reshape([
        b,
        c,
        2 * h,
        2 * w,
    ])
}

/// How [`attention`] bounds its memory: the `[rows, keys]` score matrices of all heads at
/// once, or in slices of at most a given number of scores.
///
/// A 512x512 inpaint with SD 1.5 attends over 4096 latent positions with 8 heads and a
/// batch of 2 (guidance): 268M scores (1 GiB in f32, several with softmax's temporaries) at
/// once; a checkpoint whose VAE downsamples less attends over far more positions (a VAE with
/// factor 2 gives 65536 positions at 512x512: 16 GiB per head). Slicing computes the same
/// values (each query row's softmax sees all keys) a group of heads or rows at a time.
///
/// The default, [`AttentionSlicing::Auto`], runs the fused kernel of `cielr_core::attention` on
/// the CPU backend (one tile of scores per thread, never the whole matrix) and slices of
/// [`AttentionSlicing::DEFAULT_MAX_SCORES`] elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionSlicing {
    /// Fused on the CPU backend, `MaxScores(DEFAULT_MAX_SCORES)` on others (the default).
    #[default]
    Auto,
    /// All heads and rows at once, as separate matrix products and a softmax (fastest
    /// where it fits in memory, on backends without a fused kernel).
    Off,
    /// At most this many scores per slice: whole heads when a head fits, else rows of one
    /// head (at least one row per slice).
    MaxScores(usize),
    /// The backend's fused attention (`cielr_core::attention::attention`: the CPU kernel on
    /// the CPU backend, Burn's flash attention on CUDA), which never materialises the scores.
    Fused,
}

impl AttentionSlicing {
    /// The default bound: 2^25 scores (128 MiB of f32) per slice.
    pub const DEFAULT_MAX_SCORES: usize = 1 << 25;

    /// The bound as stored in modules (0 = off).
    pub(crate) fn as_limit(self) -> usize {
        match self {
            AttentionSlicing::Off => 0,
            AttentionSlicing::MaxScores(n) => n.clamp(1, usize::MAX - 2),
            AttentionSlicing::Auto => usize::MAX - 1,
            AttentionSlicing::Fused => usize::MAX,
        }
    }

    /// The setting a stored bound stands for (0 = off, the two largest values auto and fused).
    pub(crate) fn from_limit(limit: usize) -> Self {
        match limit {
            0 => AttentionSlicing::Off,
            usize::MAX => AttentionSlicing::Fused,
            n if n == usize::MAX - 1 => AttentionSlicing::Auto,
            n => AttentionSlicing::MaxScores(n),
        }
    }
}

impl AttentionSlicing {
    /// What this setting does on backend `B`: [`AttentionSlicing::Auto`] becomes
    /// [`AttentionSlicing::Fused`] on the CPU backend and `MaxScores(DEFAULT_MAX_SCORES)`
    /// elsewhere; the others stay as they are.
    pub fn resolve<B: Backend>(self) -> Self {
        match self {
            AttentionSlicing::Auto if cielr_core::backend::is_cpu_backend::<B>() => {
                AttentionSlicing::Fused
            }
            AttentionSlicing::Auto => AttentionSlicing::MaxScores(Self::DEFAULT_MAX_SCORES),
            other => other,
        }
    }
}

/// Scaled dot-product attention `softmax(q k^T * scale) v` over `[batch * heads, rows, dim]`
/// queries and `[batch * heads, keys, dim]` keys and values, fused or in slices bounded by
/// `slicing`.
pub fn attention<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    scale: f64,
    slicing: AttentionSlicing,
) -> Tensor<B, 3> {
    let [bh, n, _] = q.dims();
    let s = k.dims()[1];
    let slicing = slicing.resolve::<B>();
    if slicing == AttentionSlicing::Fused {
        let options = AttentionModuleOptions {
            scale: Some(scale),
            ..Default::default()
        };
        let [_, _, dv] = v.dims();
        let four = |t: Tensor<B, 3>| t.unsqueeze_dim::<4>(0);
        return cielr_core::attention::attention(four(q), four(k), four(v), None, None, options)
            .reshape([bh, n, dv]);
    }
    let kt = k.swap_dims(1, 2);
    let full = |q: Tensor<B, 3>, kt: Tensor<B, 3>, v: Tensor<B, 3>| {
        softmax(q.matmul(kt) * scale, 2).matmul(v)
    };
    let max = match slicing {
        AttentionSlicing::MaxScores(m) => m.max(1),
        _ => return full(q, kt, v),
    };
    let per_head = n.saturating_mul(s);
    if bh.saturating_mul(per_head) <= max || bh == 0 || n == 0 {
        return full(q, kt, v);
    }
    let [_, _, dq] = q.dims();
    let [_, _, dv] = v.dims();
    let mut outs = Vec::new();
    if per_head <= max {
        let group = (max / per_head).max(1);
        for start in (0..bh).step_by(group) {
            let end = (start + group).min(bh);
            outs.push(full(
                q.clone().slice([start..end, 0..n, 0..dq]),
                kt.clone().slice([start..end, 0..dq, 0..s]),
                v.clone().slice([start..end, 0..s, 0..dv]),
            ));
        }
        return Tensor::cat(outs, 0);
    }
    let rows = (max / s.max(1)).max(1);
    for i in 0..bh {
        let kt_i = kt.clone().slice([i..i + 1, 0..dq, 0..s]);
        let v_i = v.clone().slice([i..i + 1, 0..s, 0..dv]);
        let mut head = Vec::new();
        for start in (0..n).step_by(rows) {
            let end = (start + rows).min(n);
            head.push(full(
                q.clone().slice([i..i + 1, start..end, 0..dq]),
                kt_i.clone(),
                v_i.clone(),
            ));
        }
        outs.push(Tensor::cat(head, 1));
    }
    Tensor::cat(outs, 0)
}
