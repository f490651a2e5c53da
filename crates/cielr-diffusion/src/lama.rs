//! LaMa (Suvorov et al., "Resolution-robust Large Mask Inpainting with Fourier Convolutions"),
//! the big-lama generator, in Burn.
//!
//! The generator is LaMa's `FFCResNetGenerator`: a reflection-padded 7x7 fast Fourier
//! convolution (FFC) block, `n_downsampling` stride-2 FFC blocks (the last one splitting the
//! features into a local and a global part), `n_blocks` residual FFC blocks whose global
//! branch is a spectral transform (1x1 conv, BN, ReLU, then a Fourier unit: `rfft2` with ortho
//! norm, a 1x1 conv on the interleaved real/imaginary channels, BN, ReLU, `irfft2`, then a
//! 1x1 conv of the sum), the parts concatenated, `n_downsampling` transposed convolutions with
//! BN and ReLU, a reflection-padded 7x7 convolution and a sigmoid. BatchNorm runs in eval mode,
//! folded into a per-channel scale and shift at load time. The FFTs are DFTs by matrix
//! multiplication ([`crate::fft`]).
//!
//! [`LamaConfig`] holds the generator's keyword arguments (big-lama's by default) and is read
//! from the `config.json` next to the weights, which `tools/lama/convert_checkpoint.py` writes
//! with the generator's weights (names as in the checkpoint under its `generator.` prefix)
//! from the released PyTorch Lightning checkpoint; the weight names are spelled once, in
//! [`names`]. [`LamaInpainter::inpaint`] does what LaMa's `bin/predict.py` does: the image in
//! `[0, 1]` times `1 - mask`, concatenated with the mask, padded symmetrically to a multiple of
//! 8, run, composited with the input outside the mask and cropped. [`LamaEditor`] is the
//! [`Editor`] for removals: it runs the model on a window around the mask, scaled down to
//! `model_size` when larger, and pastes the result inside the mask only.
//!
//! Parity with the official code on a tiny random generator is checked by the `lama_parity`
//! test (`tools/parity/lama.py`), at big-lama's size by `tools/parity/lama_full.sh`.
//! Not supported (rejected with a configuration error): LaMa's local Fourier unit
//! (`enable_lfu`, off in big-lama), gated FFCs, spectral positional encoding, squeeze and
//! excitation, learnable spatial transforms, `out_ffc`, stride-2 spectral transforms,
//! dilation, and padding modes other than `reflect` and `zeros`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::PaddingConfig2d;
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use cielr_core::imageops::{crop, crop_mask, paste_window_inside, window_around};
use cielr_core::weights::TensorStore;
use cielr_core::{EditOp, EditRequest, Editor, Mask};
use image::imageops::FilterType;
use image::{Rgb, RgbImage};
use serde::Deserialize;

use crate::error::{DiffusionError, Result};
use crate::fft::{irfft2_interleaved, rfft2_interleaved};
use crate::inpaint::check_mask;
use crate::weights::{read_json, Weights};
use cielr_core::conv::{conv2d_module, conv2d_module_reflect};

/// The keyword arguments of one kind of FFC block (`init_conv_kwargs`,
/// `downsample_conv_kwargs`, `resnet_conv_kwargs` in LaMa's configs).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FfcKwargs {
    /// Share of the input channels in the global (spectral) branch.
    #[serde(default)]
    pub ratio_gin: f64,
    /// Share of the output channels in the global branch.
    #[serde(default)]
    pub ratio_gout: f64,
    /// LaMa's local Fourier unit; only `false` is supported where a spectral transform exists.
    #[serde(default = "default_true")]
    pub enable_lfu: bool,
    /// Gated FFCs; only `false` is supported.
    #[serde(default)]
    pub gated: bool,
}

fn default_true() -> bool {
    true
}

impl FfcKwargs {
    fn new(ratio_gin: f64, ratio_gout: f64) -> Self {
        FfcKwargs {
            ratio_gin,
            ratio_gout,
            enable_lfu: false,
            gated: false,
        }
    }
}

/// The output activation (`add_out_act`: `"sigmoid"`, `"tanh"`, `true` for tanh, `false` for
/// none).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum OutAct {
    /// `true` (tanh) or `false` (none).
    Flag(bool),
    /// `"sigmoid"` or `"tanh"`.
    Name(String),
}

/// The configuration of LaMa's `FFCResNetGenerator` (its keyword arguments), big-lama's by
/// default (`configs/training/big-lama.yaml`), read from the `config.json` next to the weights.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LamaConfig {
    /// The generator kind; only `ffc_resnet`.
    pub kind: String,
    /// Input channels (3 image + 1 mask).
    pub input_nc: usize,
    /// Output channels.
    pub output_nc: usize,
    /// Channels after the first convolution.
    pub ngf: usize,
    /// Stride-2 stages (and transposed-convolution stages).
    pub n_downsampling: usize,
    /// Residual FFC blocks at the bottleneck.
    pub n_blocks: usize,
    /// The most channels any stage has.
    pub max_features: usize,
    /// Padding of the residual blocks' 3x3 convolutions: `reflect` or `zeros`.
    pub padding_type: String,
    /// The output activation.
    pub add_out_act: OutAct,
    /// The first 7x7 FFC block.
    pub init_conv_kwargs: FfcKwargs,
    /// The stride-2 FFC blocks (the last one's `ratio_gout` is `resnet_conv_kwargs.ratio_gin`).
    pub downsample_conv_kwargs: FfcKwargs,
    /// The residual FFC blocks.
    pub resnet_conv_kwargs: FfcKwargs,
    /// LaMa's output FFC block; only `false` is supported.
    pub out_ffc: bool,
    /// Learnable spatial transforms on some blocks; only none is supported.
    pub spatial_transform_layers: Option<Vec<usize>>,
    /// Inputs are padded (symmetrically, at the bottom and right) to a multiple of this before
    /// the generator runs, as LaMa's prediction config does (`pad_out_to_modulo: 8`).
    pub pad_out_to_modulo: usize,
}

impl Default for LamaConfig {
    fn default() -> Self {
        LamaConfig {
            kind: "ffc_resnet".into(),
            input_nc: 4,
            output_nc: 3,
            ngf: 64,
            n_downsampling: 3,
            n_blocks: 18,
            max_features: 1024,
            padding_type: "reflect".into(),
            add_out_act: OutAct::Name("sigmoid".into()),
            init_conv_kwargs: FfcKwargs::new(0.0, 0.0),
            downsample_conv_kwargs: FfcKwargs::new(0.0, 0.0),
            resnet_conv_kwargs: FfcKwargs::new(0.75, 0.75),
            out_ffc: false,
            spatial_transform_layers: None,
            pad_out_to_modulo: 8,
        }
    }
}

/// The activation after the last convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Sigmoid,
    Tanh,
    Identity,
}

/// The largest `n_downsampling` [`LamaConfig::check`] accepts.
pub const MAX_DOWNSAMPLING: usize = 16;

impl LamaConfig {
    /// Reads a `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let value = read_json(path)?;
        let config: LamaConfig = serde_json::from_value(value)
            .map_err(|e| DiffusionError::config(path.display().to_string(), e.to_string()))?;
        config
            .check()
            .map_err(|m| DiffusionError::config(path.display().to_string(), m))?;
        Ok(config)
    }

    /// Checks that the configuration is one this port runs.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.kind != "ffc_resnet" {
            return Err(format!(
                "generator kind {:?} is not supported (only ffc_resnet, LaMa's FFC generator)",
                self.kind
            ));
        }
        if self.input_nc == 0 || self.output_nc == 0 || self.ngf == 0 || self.max_features == 0 {
            return Err("input_nc, output_nc, ngf and max_features must be positive".into());
        }
        if self.out_ffc {
            return Err("out_ffc is not supported".into());
        }
        if self
            .spatial_transform_layers
            .as_ref()
            .is_some_and(|l| !l.is_empty())
        {
            return Err(
                "spatial_transform_layers (learnable spatial transforms) are not supported".into(),
            );
        }
        if self.padding_type != "reflect" && self.padding_type != "zeros" {
            return Err(format!(
                "padding_type {:?} is not supported (reflect or zeros)",
                self.padding_type
            ));
        }
        if self.pad_out_to_modulo == 0 {
            return Err("pad_out_to_modulo must be positive".into());
        }
        // Channel counts are `ngf << i` and the input side unit is `2 << n_downsampling`: keep
        // both shifts far from overflowing (LaMa uses 3 downsamplings).
        if self.n_downsampling > MAX_DOWNSAMPLING
            || self.ngf.checked_shl(self.n_downsampling as u32).is_none()
            || (self.ngf << self.n_downsampling) >> self.n_downsampling != self.ngf
        {
            return Err(format!(
                "n_downsampling {} is too large (at most {MAX_DOWNSAMPLING}, with ngf {} << n_downsampling fitting in usize)",
                self.n_downsampling, self.ngf
            ));
        }
        self.act()?;
        for (what, k) in [
            ("init_conv_kwargs", &self.init_conv_kwargs),
            ("downsample_conv_kwargs", &self.downsample_conv_kwargs),
            ("resnet_conv_kwargs", &self.resnet_conv_kwargs),
        ] {
            for r in [k.ratio_gin, k.ratio_gout] {
                if !(0.0..1.0).contains(&r) {
                    return Err(format!("{what}: ratios must be in [0, 1), got {r}"));
                }
            }
            if k.gated {
                return Err(format!("{what}: gated FFCs are not supported"));
            }
        }
        Ok(())
    }

    fn act(&self) -> std::result::Result<Act, String> {
        match &self.add_out_act {
            OutAct::Flag(true) => Ok(Act::Tanh),
            OutAct::Flag(false) => Ok(Act::Identity),
            OutAct::Name(n) if n == "sigmoid" => Ok(Act::Sigmoid),
            OutAct::Name(n) if n == "tanh" => Ok(Act::Tanh),
            OutAct::Name(n) => Err(format!("add_out_act {n:?} is not supported")),
        }
    }

    /// `min(max_features, c)`.
    fn feat(&self, c: usize) -> usize {
        c.min(self.max_features)
    }

    /// The channels of the bottleneck.
    pub fn bottleneck_channels(&self) -> usize {
        self.feat(self.ngf << self.n_downsampling)
    }

    /// The smallest input side the generator accepts (every reflection pad needs a side
    /// longer than the pad, down to the bottleneck).
    pub fn min_side(&self) -> usize {
        (2usize << self.n_downsampling).max(4)
    }
}

/// The checkpoint's tensor names (LaMa's `FFCResNetGenerator.state_dict()`, i.e. the released
/// checkpoint's names without their `generator.` prefix), spelled once.
pub mod names {
    /// The first FFC block: `model.1` (`model.0` is the reflection pad).
    pub fn init() -> String {
        "model.1".into()
    }
    /// The `i`-th stride-2 FFC block.
    pub fn down(i: usize) -> String {
        format!("model.{}", 2 + i)
    }
    /// The `j`-th residual FFC block.
    pub fn block(n_down: usize, j: usize) -> String {
        format!("model.{}", 2 + n_down + j)
    }
    /// The `i`-th transposed convolution (after the concatenation layer).
    pub fn up_conv(n_down: usize, n_blocks: usize, i: usize) -> String {
        format!("model.{}", 3 + n_down + n_blocks + 3 * i)
    }
    /// The BatchNorm after the `i`-th transposed convolution.
    pub fn up_bn(n_down: usize, n_blocks: usize, i: usize) -> String {
        format!("model.{}", 4 + n_down + n_blocks + 3 * i)
    }
    /// The last 7x7 convolution (after its reflection pad).
    pub fn out_conv(n_down: usize, n_blocks: usize) -> String {
        format!("model.{}", 4 + 4 * n_down + n_blocks)
    }
    /// The two FFC blocks of a residual block.
    pub const BLOCK_CONVS: [&str; 2] = ["conv1", "conv2"];
    /// Inside an FFC block (`FFC_BN_ACT`): the FFC and the local / global BatchNorms.
    pub const FFC: &str = "ffc";
    /// Local-to-local convolution.
    pub const L2L: &str = "convl2l";
    /// Local-to-global convolution.
    pub const L2G: &str = "convl2g";
    /// Global-to-local convolution.
    pub const G2L: &str = "convg2l";
    /// Global-to-global spectral transform.
    pub const G2G: &str = "convg2g";
    /// Local BatchNorm.
    pub const BN_L: &str = "bn_l";
    /// Global BatchNorm.
    pub const BN_G: &str = "bn_g";
    /// Spectral transform: 1x1 conv and its BatchNorm (`conv1.0`, `conv1.1`).
    pub const ST_CONV1: &str = "conv1.0";
    /// See [`ST_CONV1`].
    pub const ST_BN1: &str = "conv1.1";
    /// Spectral transform: the Fourier unit's 1x1 conv and BatchNorm.
    pub const FU_CONV: &str = "fu.conv_layer";
    /// See [`FU_CONV`].
    pub const FU_BN: &str = "fu.bn";
    /// Spectral transform: the last 1x1 conv.
    pub const ST_CONV2: &str = "conv2";
    /// The local Fourier unit (unsupported; its presence is an error).
    pub const LFU: &str = "lfu.conv_layer.weight";
}

/// BatchNorm2d in eval mode, folded: `x * scale + shift` per channel.
#[derive(Module, Debug)]
struct BatchNorm<B: Backend> {
    scale: Param<Tensor<B, 1>>,
    shift: Param<Tensor<B, 1>>,
}

impl<B: Backend> BatchNorm<B> {
    fn load(w: &Weights, c: usize, device: &B::Device) -> Result<Self> {
        let gamma = w.read_f32("weight", &[c])?;
        let beta = w.read_f32("bias", &[c])?;
        let mean = w.read_f32("running_mean", &[c])?;
        let var = w.read_f32("running_var", &[c])?;
        let eps = 1e-5f64;
        let mut scale = vec![0f32; c];
        let mut shift = vec![0f32; c];
        for i in 0..c {
            let s = gamma[i] as f64 / (var[i] as f64 + eps).sqrt();
            scale[i] = s as f32;
            shift[i] = (beta[i] as f64 - mean[i] as f64 * s) as f32;
        }
        let t =
            |v: Vec<f32>| Param::from_tensor(Tensor::from_data(TensorData::new(v, [c]), device));
        Ok(BatchNorm {
            scale: t(scale),
            shift: t(shift),
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let c = x.dims()[1];
        x * self.scale.val().reshape([1, c, 1, 1]) + self.shift.val().reshape([1, c, 1, 1])
    }
}

/// A convolution with reflection or zero padding.
#[derive(Module, Debug)]
struct PadConv<B: Backend> {
    /// The convolution, with its padding amounts (filled by reflection when `reflect`).
    conv: Conv2d<B>,
    reflect: bool,
}

/// How a convolution's padding is done.
#[derive(Debug, Clone, Copy)]
struct ConvSpec {
    kernel: usize,
    stride: usize,
    padding: usize,
    reflect: bool,
    bias: bool,
}

impl<B: Backend> PadConv<B> {
    fn load(
        w: &Weights,
        c_in: usize,
        c_out: usize,
        spec: ConvSpec,
        device: &B::Device,
    ) -> Result<Self> {
        let (k, p) = (spec.kernel, spec.padding);
        let mut conv = Conv2dConfig::new([c_in, c_out], [k, k])
            .with_stride([spec.stride, spec.stride])
            .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
            .with_bias(false)
            .init(device);
        conv.weight = Param::from_tensor(w.tensor("weight", [c_out, c_in, k, k], device)?);
        if spec.bias {
            conv.bias = Some(Param::from_tensor(w.tensor("bias", [c_out], device)?));
        }
        Ok(PadConv {
            conv,
            reflect: spec.reflect && p > 0,
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        if self.reflect {
            conv2d_module_reflect(&self.conv, x)
        } else {
            conv2d_module(&self.conv, x)
        }
    }
}

/// LaMa's `SpectralTransform` (stride 1, no local Fourier unit) with its `FourierUnit`.
#[derive(Module, Debug)]
struct SpectralTransform<B: Backend> {
    conv1: PadConv<B>,
    bn1: BatchNorm<B>,
    fu_conv: PadConv<B>,
    fu_bn: BatchNorm<B>,
    conv2: PadConv<B>,
}

const ONE_BY_ONE: ConvSpec = ConvSpec {
    kernel: 1,
    stride: 1,
    padding: 0,
    reflect: false,
    bias: false,
};

impl<B: Backend> SpectralTransform<B> {
    fn load(w: &Weights, c_in: usize, c_out: usize, device: &B::Device) -> Result<Self> {
        use names::*;
        let half = c_out / 2;
        if half == 0 {
            return Err(DiffusionError::config(
                w.prefix().to_string(),
                "a spectral transform needs at least 2 output channels",
            ));
        }
        if w.contains(LFU) {
            return Err(DiffusionError::config(
                w.prefix().to_string(),
                "the checkpoint has a local Fourier unit (enable_lfu), which is not supported",
            ));
        }
        Ok(SpectralTransform {
            conv1: PadConv::load(&w.pp(ST_CONV1), c_in, half, ONE_BY_ONE, device)?,
            bn1: BatchNorm::load(&w.pp(ST_BN1), half, device)?,
            fu_conv: PadConv::load(&w.pp(FU_CONV), 2 * half, 2 * half, ONE_BY_ONE, device)?,
            fu_bn: BatchNorm::load(&w.pp(FU_BN), 2 * half, device)?,
            conv2: PadConv::load(&w.pp(ST_CONV2), half, c_out, ONE_BY_ONE, device)?,
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Result<Tensor<B, 4>> {
        let x = relu(self.bn1.forward(self.conv1.forward(x)));
        let [_, _, h, w] = x.dims();
        // Fourier unit: real and imaginary parts interleaved per channel (c0 re, c0 im, ...).
        let f = rfft2_interleaved(x.clone());
        let f = relu(self.fu_bn.forward(self.fu_conv.forward(f)));
        let fu = irfft2_interleaved(f, h, w)?;
        Ok(self.conv2.forward(x + fu))
    }
}

/// A pair of local and global feature maps; `None` is LaMa's integer 0 (no such part).
type Parts<B> = (Option<Tensor<B, 4>>, Option<Tensor<B, 4>>);

fn add<B: Backend>(a: Option<Tensor<B, 4>>, b: Option<Tensor<B, 4>>) -> Option<Tensor<B, 4>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, None) => a,
        (None, b) => b,
    }
}

/// LaMa's `FFC_BN_ACT` with ReLU: an FFC (local/global convolutions and the spectral
/// transform), BatchNorm and ReLU on each part.
#[derive(Module, Debug)]
struct FfcBnAct<B: Backend> {
    l2l: Option<PadConv<B>>,
    l2g: Option<PadConv<B>>,
    g2l: Option<PadConv<B>>,
    g2g: Option<SpectralTransform<B>>,
    bn_l: Option<BatchNorm<B>>,
    bn_g: Option<BatchNorm<B>>,
}

/// `int(c * ratio)` as Python computes it, checked to be non-zero when the ratio is.
fn split(what: &str, c: usize, ratio: f64) -> Result<(usize, usize)> {
    let g = (c as f64 * ratio).floor() as usize;
    if ratio > 0.0 && g == 0 {
        return Err(DiffusionError::config(
            what.to_string(),
            format!("{c} channels with ratio {ratio} leave the global part empty"),
        ));
    }
    Ok((c - g, g))
}

impl<B: Backend> FfcBnAct<B> {
    fn load(
        w: &Weights,
        c_in: usize,
        c_out: usize,
        kwargs: &FfcKwargs,
        spec: ConvSpec,
        device: &B::Device,
    ) -> Result<Self> {
        use names::*;
        let (in_cl, in_cg) = split(w.prefix(), c_in, kwargs.ratio_gin)?;
        let (out_cl, out_cg) = split(w.prefix(), c_out, kwargs.ratio_gout)?;
        let f = w.pp(FFC);
        let conv = |name: &str, ci: usize, co: usize| -> Result<Option<PadConv<B>>> {
            if ci == 0 || co == 0 {
                Ok(None)
            } else {
                PadConv::load(&f.pp(name), ci, co, spec, device).map(Some)
            }
        };
        let g2g = if in_cg > 0 && out_cg > 0 {
            if spec.stride != 1 {
                return Err(DiffusionError::config(
                    w.prefix().to_string(),
                    "stride-2 spectral transforms are not supported",
                ));
            }
            if kwargs.enable_lfu {
                return Err(DiffusionError::config(
                    w.prefix().to_string(),
                    "enable_lfu (the local Fourier unit) is not supported; big-lama disables it",
                ));
            }
            Some(SpectralTransform::load(&f.pp(G2G), in_cg, out_cg, device)?)
        } else {
            None
        };
        Ok(FfcBnAct {
            l2l: conv(L2L, in_cl, out_cl)?,
            l2g: conv(L2G, in_cl, out_cg)?,
            g2l: conv(G2L, in_cg, out_cl)?,
            g2g,
            bn_l: if out_cl > 0 {
                Some(BatchNorm::load(&w.pp(BN_L), out_cl, device)?)
            } else {
                None
            },
            bn_g: if out_cg > 0 {
                Some(BatchNorm::load(&w.pp(BN_G), out_cg, device)?)
            } else {
                None
            },
        })
    }

    fn forward(&self, (x_l, x_g): Parts<B>) -> Result<Parts<B>> {
        let apply = |c: &Option<PadConv<B>>, x: &Option<Tensor<B, 4>>| match (c, x) {
            (Some(c), Some(x)) => Some(c.forward(x.clone())),
            _ => None,
        };
        let out_l = if self.bn_l.is_some() {
            add(apply(&self.l2l, &x_l), apply(&self.g2l, &x_g))
        } else {
            None
        };
        let out_g = if self.bn_g.is_some() {
            let spectral = match (&self.g2g, x_g) {
                (Some(st), Some(x)) => Some(st.forward(x)?),
                _ => None,
            };
            add(apply(&self.l2g, &x_l), spectral)
        } else {
            None
        };
        let norm = |bn: &Option<BatchNorm<B>>, x: Option<Tensor<B, 4>>| match (bn, x) {
            (Some(bn), Some(x)) => Some(relu(bn.forward(x))),
            _ => None,
        };
        Ok((norm(&self.bn_l, out_l), norm(&self.bn_g, out_g)))
    }
}

/// LaMa's `FFCResnetBlock`: two 3x3 FFC blocks and a residual connection on both parts.
#[derive(Module, Debug)]
struct FfcResnetBlock<B: Backend> {
    conv1: FfcBnAct<B>,
    conv2: FfcBnAct<B>,
}

impl<B: Backend> FfcResnetBlock<B> {
    fn forward(&self, x: Parts<B>) -> Result<Parts<B>> {
        let (id_l, id_g) = x.clone();
        let (l, g) = self.conv2.forward(self.conv1.forward(x)?)?;
        Ok((add(id_l, l), add(id_g, g)))
    }
}

/// A transposed convolution (3x3, stride 2, padding 1, output padding 1) with BN and ReLU.
#[derive(Module, Debug)]
struct UpBlock<B: Backend> {
    conv: ConvTranspose2d<B>,
    bn: BatchNorm<B>,
}

/// LaMa's `FFCResNetGenerator` (see the module documentation).
#[derive(Module, Debug)]
pub struct LamaGenerator<B: Backend> {
    init: FfcBnAct<B>,
    down: Vec<FfcBnAct<B>>,
    blocks: Vec<FfcResnetBlock<B>>,
    up: Vec<UpBlock<B>>,
    out_conv: PadConv<B>,
}

impl<B: Backend> LamaGenerator<B> {
    /// Builds the generator from `w` (positioned at the generator's names, `model.*`).
    pub fn load(w: &Weights, cfg: &LamaConfig, device: &B::Device) -> Result<Self> {
        cfg.check()
            .map_err(|m| DiffusionError::config("LaMa config", m))?;
        let (nd, nb) = (cfg.n_downsampling, cfg.n_blocks);
        let init = FfcBnAct::load(
            &w.pp(names::init()),
            cfg.input_nc,
            cfg.ngf,
            &cfg.init_conv_kwargs,
            ConvSpec {
                kernel: 7,
                stride: 1,
                padding: 3,
                reflect: true,
                bias: false,
            },
            device,
        )?;
        let mut down = Vec::with_capacity(nd);
        for i in 0..nd {
            let mut kwargs = cfg.downsample_conv_kwargs.clone();
            if i == nd - 1 {
                kwargs.ratio_gout = cfg.resnet_conv_kwargs.ratio_gin;
            }
            let spec = ConvSpec {
                kernel: 3,
                stride: 2,
                padding: 1,
                reflect: true,
                bias: false,
            };
            let (c_in, c_out) = (cfg.feat(cfg.ngf << i), cfg.feat(cfg.ngf << (i + 1)));
            down.push(FfcBnAct::load(
                &w.pp(names::down(i)),
                c_in,
                c_out,
                &kwargs,
                spec,
                device,
            )?);
        }
        let dim = cfg.bottleneck_channels();
        let spec = ConvSpec {
            kernel: 3,
            stride: 1,
            padding: 1,
            reflect: cfg.padding_type == "reflect",
            bias: false,
        };
        let mut blocks = Vec::with_capacity(nb);
        for j in 0..nb {
            let b = w.pp(names::block(nd, j));
            let [c1, c2] = names::BLOCK_CONVS
                .map(|n| FfcBnAct::load(&b.pp(n), dim, dim, &cfg.resnet_conv_kwargs, spec, device));
            blocks.push(FfcResnetBlock {
                conv1: c1?,
                conv2: c2?,
            });
        }
        let mut up = Vec::with_capacity(nd);
        for i in 0..nd {
            let mult = 1usize << (nd - i);
            let (c_in, c_out) = (cfg.feat(cfg.ngf * mult), cfg.feat(cfg.ngf * mult / 2));
            let wc = w.pp(names::up_conv(nd, nb, i));
            let mut conv = ConvTranspose2dConfig::new([c_in, c_out], [3, 3])
                .with_stride([2, 2])
                .with_padding([1, 1])
                .with_padding_out([1, 1])
                .with_bias(false)
                .init(device);
            conv.weight = Param::from_tensor(wc.tensor("weight", [c_in, c_out, 3, 3], device)?);
            conv.bias = Some(Param::from_tensor(wc.tensor("bias", [c_out], device)?));
            up.push(UpBlock {
                conv,
                bn: BatchNorm::load(&w.pp(names::up_bn(nd, nb, i)), c_out, device)?,
            });
        }
        let out_conv = PadConv::load(
            &w.pp(names::out_conv(nd, nb)),
            cfg.ngf,
            cfg.output_nc,
            ConvSpec {
                kernel: 7,
                stride: 1,
                padding: 3,
                reflect: true,
                bias: true,
            },
            device,
        )?;
        Ok(LamaGenerator {
            init,
            down,
            blocks,
            up,
            out_conv,
        })
    }

    /// The generator's output before its final activation, for `input` `[batch, input_nc,
    /// h, w]` (masked image and mask), `h` and `w` multiples of `2^n_downsampling` and at
    /// least [`LamaConfig::min_side`].
    pub fn forward_logits(&self, input: Tensor<B, 4>) -> Result<Tensor<B, 4>> {
        let [_, c, h, w] = input.dims();
        let n = self.down.len();
        let min = (2usize << n).max(4);
        let unit = 1usize << n;
        let expected = self.init.input_channels();
        if c != expected || h < min || w < min || h % unit != 0 || w % unit != 0 {
            return Err(DiffusionError::input_shape(
                "LaMa input",
                format!(
                    "got [_, {c}, {h}, {w}]: expected {expected} channels and sides that are \
                     multiples of {unit}, at least {min}"
                ),
            ));
        }
        let mut x: Parts<B> = self.init.forward((Some(input), None))?;
        for d in &self.down {
            x = d.forward(x)?;
        }
        for b in &self.blocks {
            x = b.forward(x)?;
        }
        let mut y = match x {
            (Some(l), Some(g)) => Tensor::cat(vec![l, g], 1),
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => {
                return Err(DiffusionError::config(
                    "LaMa",
                    "the bottleneck has no channels",
                ));
            }
        };
        for u in &self.up {
            y = relu(u.bn.forward(u.conv.forward(y)));
        }
        Ok(self.out_conv.forward(y))
    }
}

impl<B: Backend> FfcBnAct<B> {
    /// The input channels of the block (local plus global).
    fn input_channels(&self) -> usize {
        let c = |p: &Option<PadConv<B>>| p.as_ref().map(|p| p.conv.weight.dims()[1]);
        let local = c(&self.l2l).or(c(&self.l2g)).unwrap_or(0);
        let global = c(&self.g2l)
            .or(self.g2g.as_ref().map(|s| s.conv1.conv.weight.dims()[1]))
            .unwrap_or(0);
        local + global
    }
}

/// The files [`LamaInpainter::load`] looks for in a folder.
const WEIGHT_FILES: &[&str] = &[
    "model.safetensors",
    "big-lama.safetensors",
    "lama.safetensors",
];

/// LaMa inpainting: [`LamaGenerator`] with LaMa's prediction steps around it.
#[derive(Debug)]
pub struct LamaInpainter<B: Backend> {
    generator: LamaGenerator<B>,
    config: LamaConfig,
    act: Act,
    device: B::Device,
}

impl<B: Backend> LamaInpainter<B> {
    /// Loads converted weights on the default device; see [`LamaInpainter::load_on`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_on(path, &Default::default())
    }

    /// Loads converted weights: `path` is a folder holding `model.safetensors` and
    /// `config.json` (what `tools/lama/convert_checkpoint.py` writes), or a `.safetensors`
    /// file with `config.json` beside it. Names may carry the checkpoint's `generator.` prefix.
    pub fn load_on(path: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let path = path.as_ref();
        let (store, dir): (TensorStore, PathBuf) = if path.is_dir() {
            (
                TensorStore::open_in_dir(path, WEIGHT_FILES)?,
                path.to_path_buf(),
            )
        } else {
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            (TensorStore::open(path)?, dir)
        };
        let config_path = dir.join("config.json");
        let config = LamaConfig::from_file(&config_path)?;
        Self::from_store(&store, config, device)
    }

    /// Builds the inpainter from tensors already opened and a configuration.
    pub fn from_store(store: &TensorStore, config: LamaConfig, device: &B::Device) -> Result<Self> {
        let root = store.weights();
        let w = if store.names().iter().any(|n| n.starts_with("generator.")) {
            root.pp("generator")
        } else {
            root
        };
        let act = config
            .act()
            .map_err(|m| DiffusionError::config("LaMa config", m))?;
        Ok(LamaInpainter {
            generator: LamaGenerator::load(&w, &config, device)?,
            config,
            act,
            device: device.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LamaConfig {
        &self.config
    }

    /// The generator.
    pub fn generator(&self) -> &LamaGenerator<B> {
        &self.generator
    }

    /// The generator's output (after its activation) for `input` `[batch, input_nc, h, w]`
    /// (see [`LamaGenerator::forward_logits`]).
    pub fn forward(&self, input: Tensor<B, 4>) -> Result<Tensor<B, 4>> {
        let y = self.generator.forward_logits(input)?;
        Ok(match self.act {
            Act::Sigmoid => sigmoid(y),
            Act::Tanh => y.tanh(),
            Act::Identity => y,
        })
    }

    /// LaMa's prediction on tensors: `image` `[1, 3, h, w]` in `[0, 1]` and a binary `mask`
    /// `[1, 1, h, w]` (1 = fill) of any size of at least [`LamaConfig::min_side`]; both are
    /// padded symmetrically at the bottom and right to a multiple of `pad_out_to_modulo`, the
    /// generator runs on `image * (1 - mask)` concatenated with the mask, and its output is
    /// composited with the image outside the mask and cropped back: `[1, 3, h, w]`.
    pub fn predict(&self, image: Tensor<B, 4>, mask: Tensor<B, 4>) -> Result<Tensor<B, 4>> {
        let [b, c, h, w] = image.dims();
        if mask.dims() != [b, 1, h, w] || c + 1 != self.config.input_nc {
            return Err(DiffusionError::input_shape(
                "LaMa predict",
                format!(
                    "image {:?} and mask {:?}: expected [b, {}, h, w] and [b, 1, h, w]",
                    image.dims(),
                    mask.dims(),
                    self.config.input_nc.saturating_sub(1)
                ),
            ));
        }
        let m = lcm(
            self.config.pad_out_to_modulo,
            1 << self.config.n_downsampling,
        );
        let min = self.config.min_side();
        let (ph, pw) = (h.div_ceil(m) * m - h, w.div_ceil(m) * m - w);
        if h < min || w < min || ph > h || pw > w {
            return Err(DiffusionError::input_shape(
                "LaMa predict",
                format!(
                    "the image is {w}x{h}; LaMa needs at least {}x{0} here",
                    min.max(m)
                ),
            ));
        }
        let img = pad_symmetric(image.clone(), ph, pw);
        let msk = pad_symmetric(mask.clone(), ph, pw);
        let masked = img * (msk.clone().neg() + 1.0);
        let out = self.forward(Tensor::cat(vec![masked, msk], 1))?;
        let out = out.slice([0..b, 0..self.config.output_nc, 0..h, 0..w]);
        Ok(out * mask.clone() + image * (mask.neg() + 1.0))
    }

    /// Inpaints `mask` in `image` as LaMa's `bin/predict.py` does (without its optional
    /// refinement): the result inside the mask, the input pixels outside it (bit-identical).
    /// Values are turned back into bytes as LaMa does (`clip(x * 255, 0, 255)`, truncated).
    /// The model runs at the image's own size: crop large images first (as [`LamaEditor`]
    /// does).
    pub fn inpaint(&self, image: &RgbImage, mask: &Mask) -> Result<RgbImage> {
        check_mask(image, mask)?;
        if mask.is_empty() {
            return Ok(image.clone());
        }
        let (w, h) = (image.width() as usize, image.height() as usize);
        let mut px = vec![0f32; 3 * h * w];
        for (x, y, p) in image.enumerate_pixels() {
            for ch in 0..3 {
                px[ch * h * w + y as usize * w + x as usize] = p.0[ch] as f32 / 255.0;
            }
        }
        let mut mk = vec![0f32; h * w];
        for (x, y) in mask.pixels() {
            mk[y as usize * w + x as usize] = 1.0;
        }
        let img = Tensor::<B, 4>::from_data(TensorData::new(px, [1, 3, h, w]), &self.device);
        let msk = Tensor::<B, 4>::from_data(TensorData::new(mk, [1, 1, h, w]), &self.device);
        let out = self.predict(img, msk)?;
        let v = cielr_core::backend::read_finite_f32(out, "LaMa's output")?;
        let mut result = image.clone();
        for (x, y) in mask.pixels() {
            let i = y as usize * w + x as usize;
            let q = |ch: usize| (v[ch * h * w + i] * 255.0).clamp(0.0, 255.0) as u8;
            result.put_pixel(x, y, Rgb([q(0), q(1), q(2)]));
        }
        Ok(result)
    }
}

fn lcm(a: usize, b: usize) -> usize {
    let (mut x, mut y) = (a, b);
    while y != 0 {
        (x, y) = (y, x % y);
    }
    a / x * b
}

/// numpy's `np.pad(mode="symmetric")` at the bottom (`ph` rows) and right (`pw` columns),
/// for pads no longer than the side.
fn pad_symmetric<B: Backend>(x: Tensor<B, 4>, ph: usize, pw: usize) -> Tensor<B, 4> {
    let [_, _, h, w] = x.dims();
    let x = if ph > 0 {
        let tail = x.clone().narrow(2, h - ph, ph).flip([2]);
        Tensor::cat(vec![x, tail], 2)
    } else {
        x
    };
    if pw > 0 {
        let tail = x.clone().narrow(3, w - pw, pw).flip([3]);
        Tensor::cat(vec![x, tail], 3)
    } else {
        x
    }
}

/// The settings of [`LamaEditor`].
#[derive(Debug, Clone, PartialEq)]
pub struct LamaEditorOptions {
    /// The longest side the model runs at: a window around the mask larger than this is scaled
    /// down to it (512, big-lama's training resolution scale, by default).
    pub model_size: u32,
    /// The window around the mask's box is at least `context` times the box's longer side
    /// (and at least `model_size`, where the image allows), so the model sees surroundings.
    pub context: f64,
}

impl Default for LamaEditorOptions {
    fn default() -> Self {
        LamaEditorOptions {
            model_size: 512,
            context: 2.0,
        }
    }
}

/// The removal [`Editor`] on LaMa: a window around the mask's box ([`window_around`]) is
/// cropped, scaled down to `model_size` when larger (never run at the full size of a large
/// image), inpainted, scaled back and pasted inside the mask only, so every pixel outside the
/// mask is bit-identical to the input. It performs `remove` only.
#[derive(Debug)]
pub struct LamaEditor<B: Backend> {
    inpainter: Mutex<LamaInpainter<B>>,
    options: LamaEditorOptions,
}

impl<B: Backend> LamaEditor<B> {
    /// An editor around a loaded inpainter.
    pub fn new(inpainter: LamaInpainter<B>, options: LamaEditorOptions) -> Result<Self> {
        let min = inpainter.config().min_side() as u32;
        if options.model_size < min {
            return Err(DiffusionError::InvalidOption(format!(
                "LaMa model_size {} is below the model's minimum side {min}",
                options.model_size
            )));
        }
        if !(options.context.is_finite() && options.context >= 1.0) {
            return Err(DiffusionError::InvalidOption(format!(
                "context {} must be at least 1",
                options.context
            )));
        }
        Ok(LamaEditor {
            inpainter: Mutex::new(inpainter),
            options,
        })
    }

    /// Loads converted weights (see [`LamaInpainter::load_on`]).
    pub fn load(
        path: impl AsRef<Path>,
        options: LamaEditorOptions,
        device: &B::Device,
    ) -> Result<Self> {
        Self::new(LamaInpainter::load_on(path, device)?, options)
    }

    /// The options.
    pub fn options(&self) -> &LamaEditorOptions {
        &self.options
    }

    /// Removes what `mask` covers from `image` (the synchronous form of [`Editor::edit`]).
    pub fn remove(&self, image: &RgbImage, mask: &Mask) -> Result<RgbImage> {
        check_mask(image, mask)?;
        if mask.is_empty() {
            return Ok(image.clone());
        }
        let (iw, ih) = image.dimensions();
        if mask.area() == iw as u64 * ih as u64 {
            return Err(DiffusionError::NothingToInpaintFrom {
                width: iw,
                height: ih,
            });
        }
        let inpainter = self
            .inpainter
            .lock()
            .map_err(|_| DiffusionError::InvalidOption("the LaMa lock is poisoned".into()))?;
        let min = inpainter.config().min_side() as u32;
        let o = &self.options;
        let window = window_around(mask, o.model_size, o.context)?;
        let patch = crop(image, window);
        let patch_mask = crop_mask(mask, window)?;
        let (mw, mh) = model_dims(window.width, window.height, o.model_size, min);
        let resized = (mw, mh) != (window.width, window.height);
        let (model_image, model_mask) = if resized {
            (
                image::imageops::resize(&patch, mw, mh, FilterType::Lanczos3),
                // Grown by one model pixel first, so that thin parts of the mask survive the
                // nearest-neighbour downscale and the model fills all of it.
                patch_mask
                    .dilate((window.width as f64 / mw as f64).ceil())
                    .resize_nearest(mw, mh)?,
            )
        } else {
            (patch, patch_mask)
        };
        let out = inpainter.inpaint(&model_image, &model_mask)?;
        let back = if resized {
            image::imageops::resize(&out, window.width, window.height, FilterType::Lanczos3)
        } else {
            out
        };
        Ok(paste_window_inside(image, &back, window, mask)?)
    }
}

/// The size a `width` x `height` window runs at: unchanged when its longer side is at most
/// `model_size`, else scaled so that it is `model_size`; never below `min` on either side.
fn model_dims(width: u32, height: u32, model_size: u32, min: u32) -> (u32, u32) {
    let long = width.max(height);
    let (w, h) = if long <= model_size {
        (width, height)
    } else {
        let s = model_size as f64 / long as f64;
        (
            ((width as f64 * s).round() as u32).max(1),
            ((height as f64 * s).round() as u32).max(1),
        )
    };
    (w.max(min), h.max(min))
}

#[async_trait]
impl<B: Backend> Editor for LamaEditor<B> {
    fn name(&self) -> String {
        "lama".into()
    }

    fn supports(&self, op: EditOp) -> bool {
        op == EditOp::Remove
    }

    async fn edit(&self, request: EditRequest<'_>) -> cielr_core::Result<RgbImage> {
        if request.action.op != EditOp::Remove {
            return Err(DiffusionError::EditorUnsupported {
                editor: "lama".into(),
                op: request.action.op.to_string(),
                hint: "LaMa only removes; use the classical editor for recolor and a Stable \
                       Diffusion editor for replace and add"
                    .into(),
            }
            .into());
        }
        Ok(self.remove(request.image, request.mask)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_big_lamas_sequential_layout() {
        // big-lama: 3 downsamplings, 18 blocks: blocks at model.5..22, ups at 24/27/30, out 34.
        assert_eq!(names::block(3, 0), "model.5");
        assert_eq!(names::block(3, 17), "model.22");
        assert_eq!(names::up_conv(3, 18, 0), "model.24");
        assert_eq!(names::up_bn(3, 18, 2), "model.31");
        assert_eq!(names::out_conv(3, 18), "model.34");
    }

    #[test]
    fn model_dims_only_shrink() {
        assert_eq!(model_dims(300, 200, 512, 16), (300, 200));
        assert_eq!(model_dims(1024, 768, 512, 16), (512, 384));
        assert_eq!(model_dims(2000, 20, 512, 16), (512, 16));
    }

    #[test]
    fn big_lama_is_the_default_config() {
        let c = LamaConfig::default();
        assert!(c.check().is_ok());
        assert_eq!(c.bottleneck_channels(), 512);
        assert_eq!(c.min_side(), 16);
        let bad: std::result::Result<LamaConfig, _> = serde_json::from_str(
            r#"{"resnet_conv_kwargs": {"ratio_gin": 0.75, "spectral_pos_encoding": true}}"#,
        );
        assert!(bad.is_err());
    }

    #[test]
    fn huge_n_downsampling_is_a_config_error_not_a_shift_overflow() {
        for n in [MAX_DOWNSAMPLING + 1, 64, 200] {
            let c = LamaConfig {
                n_downsampling: n,
                ..LamaConfig::default()
            };
            let e = c.check().expect_err("n_downsampling out of range");
            assert!(e.contains("n_downsampling"), "{e}");
        }
        let wide = LamaConfig {
            ngf: usize::MAX / 2,
            n_downsampling: 2,
            ..LamaConfig::default()
        };
        assert!(wide.check().is_err());
    }
}
