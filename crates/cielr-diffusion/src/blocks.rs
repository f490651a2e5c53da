//! Building blocks shared by the UNet and the VAE: diffusers' `ResnetBlock2D` (with or
//! without a time embedding), `Downsample2D` and `Upsample2D`.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, Linear};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::error::Result;
use crate::weights::Weights;

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
        let h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        let h = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(temb)) => {
                let [b, c] = [h.dims()[0], h.dims()[1]];
                h + proj.forward(temb).reshape([b, c, 1, 1])
            }
            _ => h,
        };
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let shortcut = match &self.conv_shortcut {
            Some(c) => c.forward(x),
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
        self.conv.forward(x)
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
        self.conv.forward(upsample_nearest2x(x))
    }
}

/// Nearest-neighbour 2x upsampling of NCHW tensors.
pub(crate) fn upsample_nearest2x<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1])
        .expand([b, c, h, 2, w, 2])
        .reshape([b, c, 2 * h, 2 * w])
}
