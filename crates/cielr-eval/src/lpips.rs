//! LPIPS with the SqueezeNet backbone, as torchmetrics'
//! `LearnedPerceptualImagePatchSimilarity(net_type="squeeze", normalize=False)` computes it
//! (the `lpips` package's v0.1 metric), and its [`Metric`] wrapper.
//!
//! The network: LPIPS' scaling layer (`(x - shift) / scale` on inputs in `[-1, 1]`),
//! torchvision's `squeezenet1_1().features` cut into LPIPS' seven stages (`features[0..2]`,
//! `[2..5]`, `[5..8]`, `[8..10]`, `[10]`, `[11]`, `[12]`; 64, 128, 256, 384, 384, 512, 512
//! channels), each stage's output normalised to unit length over channels
//! (`x / sqrt(1e-8 + sum x^2)`, torchmetrics' form), the squared difference of the two images'
//! features weighted by a bias-free 1x1 head (`lin0..lin6`), averaged over space, summed over
//! the stages.
//!
//! # Weights file
//!
//! One safetensors file (any float dtype; read as f32) holding:
//! * torchvision's SqueezeNet 1.1 feature weights under torchvision's own names:
//!   `features.0.{weight,bias}` (`[64, 3, 3, 3]`) and, for the Fire modules
//!   `i` in 3, 4, 6, 7, 9, 10, 11, 12, `features.{i}.squeeze.*`, `features.{i}.expand1x1.*`,
//!   `features.{i}.expand3x3.*`;
//! * the LPIPS v0.1 squeeze heads as `lin{k}.weight`, `k = 0..6`, shape `[1, C_k, 1, 1]` (the
//!   `lpips` package stores them as `lin{k}.model.1.weight` in `weights/v0.1/squeeze.pth`).
//!
//! `tools/eval/convert_lpips.py` writes it from torchvision's `squeezenet1_1-b8a52dc0.pth` and
//! the `lpips` package's `squeeze.pth`. Nothing is downloaded here.
//!
//! # Protocol and clean variants
//!
//! Protocol ([`Variant::Protocol`]): both images go through [`prepare`] (resize, multiply by
//! `w = 1 - mask / 255`), are scaled to `[-1, 1]` (`2 x - 1`) and compared: the LPIPS value.
//! Clean ([`Variant::Clean`]): the same prepared images, LPIPS' spatial map (`spatial=True`:
//! each stage's head output bilinearly upsampled, `align_corners=False`, to the input size and
//! summed; its mean over all pixels is the protocol value) averaged over the pixels whose
//! resized mask is 0 only. Receptive fields near the mask still see the zeroed region, which
//! is identical in both images, so the edit itself does not leak into the clean number.

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::module::max_pool2d;
use burn::tensor::{Tensor, TensorData};
use cielr_core::backend::CpuBackend;
use cielr_core::error::{CoreError, Result};
use cielr_core::traits::{Metric, MetricInput};
use cielr_core::weights::{TensorStore, Weights, WeightsError};
use image::{GrayImage, RgbImage};

use crate::metrics::{MetricConfig, Variant};
use crate::prepare::{prepare, Prepared, RgbF32};

/// LPIPS' scaling layer shift, per RGB channel.
pub const LPIPS_SHIFT: [f32; 3] = [-0.030, -0.088, -0.188];
/// LPIPS' scaling layer scale, per RGB channel.
pub const LPIPS_SCALE: [f32; 3] = [0.458, 0.448, 0.450];
/// Channels of the seven SqueezeNet stages LPIPS compares.
pub const SQUEEZE_CHANNELS: [usize; 7] = [64, 128, 256, 384, 384, 512, 512];
/// The smallest side SqueezeNet's three poolings accept (as in torch).
pub const LPIPS_MIN_SIDE: u32 = 31;
/// The `eps` under the square root of torchmetrics' channel normalisation.
const NORM_EPS: f32 = 1e-8;

/// `(features index, in, squeeze, expand)` of SqueezeNet 1.1's Fire modules.
const FIRES: [(usize, usize, usize, usize); 8] = [
    (3, 64, 16, 64),
    (4, 128, 16, 64),
    (6, 128, 32, 128),
    (7, 256, 32, 128),
    (9, 256, 48, 192),
    (10, 384, 48, 192),
    (11, 384, 64, 256),
    (12, 512, 64, 256),
];

fn weights_error(e: WeightsError) -> CoreError {
    CoreError::Model(format!("LPIPS weights: {e}"))
}

/// torchvision's `Fire` module: a 1x1 squeeze, then 1x1 and 3x3 expands concatenated, each
/// followed by ReLU.
#[derive(Module, Debug)]
pub struct Fire<B: Backend> {
    squeeze: Conv2d<B>,
    expand1x1: Conv2d<B>,
    expand3x3: Conv2d<B>,
}

impl<B: Backend> Fire<B> {
    /// Loads `squeeze`, `expand1x1` and `expand3x3` under `w`.
    pub fn load(
        w: &Weights,
        c_in: usize,
        squeeze: usize,
        expand: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let none = (0, 0, 0, 0);
        Ok(Fire {
            squeeze: w
                .pp("squeeze")
                .conv2d(c_in, squeeze, 1, 1, none, device)
                .map_err(weights_error)?,
            expand1x1: w
                .pp("expand1x1")
                .conv2d(squeeze, expand, 1, 1, none, device)
                .map_err(weights_error)?,
            expand3x3: w
                .pp("expand3x3")
                .conv2d(squeeze, expand, 3, 1, (1, 1, 1, 1), device)
                .map_err(weights_error)?,
        })
    }

    /// `[batch, in, h, w]` to `[batch, 2 * expand, h, w]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let s = relu(self.squeeze.forward(x));
        let a = relu(self.expand1x1.forward(s.clone()));
        let b = relu(self.expand3x3.forward(s));
        Tensor::cat(vec![a, b], 1)
    }
}

/// torchvision's `squeezenet1_1().features`, returning the outputs of LPIPS' seven stages.
#[derive(Module, Debug)]
pub struct SqueezeNetFeatures<B: Backend> {
    conv0: Conv2d<B>,
    fires: Vec<Fire<B>>,
}

/// `MaxPool2d(3, stride=2, ceil_mode=True)`.
fn pool<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    max_pool2d(x, [3, 3], [2, 2], [0, 0], [1, 1], true)
}

impl<B: Backend> SqueezeNetFeatures<B> {
    /// Loads `features.*` under `w` (torchvision's names).
    pub fn load(w: &Weights, device: &B::Device) -> Result<Self> {
        let features = w.pp("features");
        let conv0 = features
            .pp(0)
            .conv2d(3, 64, 3, 2, (0, 0, 0, 0), device)
            .map_err(weights_error)?;
        let fires = FIRES
            .iter()
            .map(|&(i, c_in, sq, ex)| Fire::load(&features.pp(i), c_in, sq, ex, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(SqueezeNetFeatures { conv0, fires })
    }

    /// The seven stage outputs for `x` `[batch, 3, h, w]` (already through the scaling
    /// layer); `h, w >=` [`LPIPS_MIN_SIDE`] (as in torch, smaller inputs leave a pooling
    /// window larger than its input).
    pub fn forward(&self, x: Tensor<B, 4>) -> Vec<Tensor<B, 4>> {
        let f = &self.fires;
        let s1 = relu(self.conv0.forward(x));
        let s2 = f[1].forward(f[0].forward(pool(s1.clone())));
        let s3 = f[3].forward(f[2].forward(pool(s2.clone())));
        let s4 = f[4].forward(pool(s3.clone()));
        let s5 = f[5].forward(s4.clone());
        let s6 = f[6].forward(s5.clone());
        let s7 = f[7].forward(s6.clone());
        vec![s1, s2, s3, s4, s5, s6, s7]
    }
}

/// The LPIPS network with the SqueezeNet backbone and its seven linear heads.
#[derive(Module, Debug)]
pub struct LpipsSqueeze<B: Backend> {
    features: SqueezeNetFeatures<B>,
    /// `lin{k}.weight` as `[1, C_k, 1, 1]`.
    heads: Vec<Param<Tensor<B, 4>>>,
}

/// Per-stage head outputs of one image pair, read back to the host.
#[derive(Debug, Clone, PartialEq)]
pub struct LpipsMaps {
    /// `(height, width, values)` of each stage's weighted squared feature difference
    /// (`lin_k(diff_k)`), row-major.
    pub stages: Vec<(usize, usize, Vec<f32>)>,
}

impl LpipsMaps {
    /// Each stage's spatial mean (torchmetrics' `retperlayer` values).
    pub fn stage_means(&self) -> Vec<f64> {
        self.stages
            .iter()
            .map(|(_, _, v)| v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64)
            .collect()
    }

    /// The LPIPS value: the sum of the stage means.
    pub fn value(&self) -> f64 {
        self.stage_means().iter().sum()
    }

    /// LPIPS' spatial map (`spatial=True`) at `width x height`: each stage bilinearly
    /// upsampled like `nn.Upsample(mode="bilinear", align_corners=False)` and summed;
    /// row-major. A stage whose values do not fill its `height x width` (or that is empty) is
    /// an error (the fields are public).
    pub fn spatial(&self, width: usize, height: usize) -> Result<Vec<f64>> {
        let mut out = vec![0f64; width * height];
        for (k, (h, w, v)) in self.stages.iter().enumerate() {
            if *h == 0 || *w == 0 || v.len() != h * w {
                return Err(CoreError::Metric(format!(
                    "LPIPS stage {k} is {w}x{h} with {} values",
                    v.len()
                )));
            }
            let ys = bilinear_taps(*h, height);
            let xs = bilinear_taps(*w, width);
            for (oy, &(y0, y1, ly)) in ys.iter().enumerate() {
                for (ox, &(x0, x1, lx)) in xs.iter().enumerate() {
                    let at = |y: usize, x: usize| v[y * w + x] as f64;
                    let top = (1.0 - lx) * at(y0, x0) + lx * at(y0, x1);
                    let bottom = (1.0 - lx) * at(y1, x0) + lx * at(y1, x1);
                    out[oy * width + ox] += (1.0 - ly) * top + ly * bottom;
                }
            }
        }
        Ok(out)
    }
}

/// torch's `area_pixel_compute_source_index` for bilinear, `align_corners=False`: per output
/// index the two source indices and the weight of the second.
fn bilinear_taps(input: usize, output: usize) -> Vec<(usize, usize, f64)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|o| {
            let src = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src as usize).min(input - 1);
            let i1 = (i0 + 1).min(input - 1);
            (i0, i1, (src - i0 as f32) as f64)
        })
        .collect()
}

impl<B: Backend> LpipsSqueeze<B> {
    /// Builds the network from a checkpoint root in the format of the module docs.
    pub fn load(w: &Weights, device: &B::Device) -> Result<Self> {
        let features = SqueezeNetFeatures::load(w, device)?;
        let heads = SQUEEZE_CHANNELS
            .iter()
            .enumerate()
            .map(|(k, &c)| {
                w.pp(format!("lin{k}"))
                    .tensor::<B, 4>("weight", [1, c, 1, 1], device)
                    .map(Param::from_tensor)
                    .map_err(weights_error)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(LpipsSqueeze { features, heads })
    }

    /// Opens a weights file (see the module docs) and builds the network.
    pub fn from_file(path: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let store = TensorStore::open(path.as_ref()).map_err(weights_error)?;
        Self::load(&store.weights(), device)
    }

    /// LPIPS' scaling layer.
    fn scale(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let device = x.device();
        let shift = Tensor::<B, 1>::from_floats(LPIPS_SHIFT, &device).reshape([1, 3, 1, 1]);
        let scale = Tensor::<B, 1>::from_floats(LPIPS_SCALE, &device).reshape([1, 3, 1, 1]);
        (x - shift) / scale
    }

    /// Each stage's head output `lin_k((n(f_k(a)) - n(f_k(b)))^2)`, `[batch, 1, h_k, w_k]`,
    /// for `a`, `b` `[batch, 3, h, w]` in `[-1, 1]`.
    pub fn stage_maps(&self, a: Tensor<B, 4>, b: Tensor<B, 4>) -> Vec<Tensor<B, 4>> {
        let fa = self.features.forward(self.scale(a));
        let fb = self.features.forward(self.scale(b));
        let norm = |x: Tensor<B, 4>| {
            let n = x
                .clone()
                .powi_scalar(2)
                .sum_dim(1)
                .add_scalar(NORM_EPS)
                .sqrt();
            x / n
        };
        fa.into_iter()
            .zip(fb)
            .zip(&self.heads)
            .map(|((x, y), head)| {
                let d = (norm(x) - norm(y)).powi_scalar(2);
                (d * head.val()).sum_dim(1)
            })
            .collect()
    }

    /// LPIPS per pair, `[batch]` (torchmetrics' `reduction="none"`).
    pub fn forward(&self, a: Tensor<B, 4>, b: Tensor<B, 4>) -> Tensor<B, 1> {
        let [batch, _, _, _] = a.dims();
        let zero = Tensor::<B, 1>::zeros([batch], &a.device());
        self.stage_maps(a, b).into_iter().fold(zero, |acc, m| {
            acc + m.mean_dim(3).mean_dim(2).reshape([batch])
        })
    }

    /// The per-stage maps of one pair of `[0, 1]` images (scaled to `[-1, 1]` here), read back
    /// to the host.
    pub fn maps(&self, a: &RgbF32, b: &RgbF32, device: &B::Device) -> Result<LpipsMaps> {
        a.check_pair(b)?;
        if a.width < LPIPS_MIN_SIDE || a.height < LPIPS_MIN_SIDE {
            return Err(CoreError::Metric(format!(
                "LPIPS (SqueezeNet) needs images of at least {LPIPS_MIN_SIDE}x{LPIPS_MIN_SIDE} \
                 pixels, got {}x{}",
                a.width, a.height
            )));
        }
        let maps = self.stage_maps(to_tensor(a, device), to_tensor(b, device));
        let stages = maps
            .into_iter()
            .map(|m| {
                let [_, _, h, w] = m.dims();
                let v = cielr_core::backend::read_f32(m)
                    .map_err(|e| CoreError::Model(format!("LPIPS: reading a map back: {e:?}")))?;
                Ok((h, w, v))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(LpipsMaps { stages })
    }
}

/// An interleaved `[0, 1]` image as a `[1, 3, h, w]` tensor scaled to `[-1, 1]`.
fn to_tensor<B: Backend>(img: &RgbF32, device: &B::Device) -> Tensor<B, 4> {
    let (w, h) = (img.width as usize, img.height as usize);
    let mut planar = vec![0f32; 3 * w * h];
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            planar[c * w * h + i] = 2.0 * px[c] - 1.0;
        }
    }
    Tensor::from_data(TensorData::new(planar, [1, 3, h, w]), device)
}

/// The protocol LPIPS and its clean variant for one prepared pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LpipsScores {
    /// LPIPS of the `w`-weighted images (the protocol's number).
    pub lpips: f64,
    /// The spatial map's mean over pixels whose resized mask is 0; `None` when none is.
    pub clean_lpips: Option<f64>,
}

/// Computes both LPIPS numbers for images already through [`prepare`].
pub fn lpips_prepared<B: Backend>(
    net: &LpipsSqueeze<B>,
    prepared: &Prepared,
    device: &B::Device,
) -> Result<LpipsScores> {
    let maps = net.maps(&prepared.edited, &prepared.original, device)?;
    scores_from_maps(&maps, &prepared.mask)
}

/// Both LPIPS numbers from one pair's stage maps and the resized greyscale mask (its size is
/// the input size; 0 = unmasked). Fails on a malformed stage (see [`LpipsMaps::spatial`]).
pub fn scores_from_maps(maps: &LpipsMaps, mask: &GrayImage) -> Result<LpipsScores> {
    let spatial = maps.spatial(mask.width() as usize, mask.height() as usize)?;
    let (mut sum, mut n) = (0.0f64, 0usize);
    for (&v, &m) in spatial.iter().zip(mask.as_raw()) {
        if m == 0 {
            sum += v;
            n += 1;
        }
    }
    Ok(LpipsScores {
        lpips: maps.value(),
        clean_lpips: (n > 0).then(|| sum / n as f64),
    })
}

/// Prepares the inputs like [`prepare`] (greyscale mask, 0 = keep) and computes both LPIPS
/// numbers.
pub fn lpips_scores<B: Backend>(
    net: &LpipsSqueeze<B>,
    original: &RgbImage,
    edited: &RgbImage,
    mask: &GrayImage,
    size: Option<u32>,
    device: &B::Device,
) -> Result<LpipsScores> {
    let p = prepare(original, edited, mask, size)?;
    lpips_prepared(net, &p, device)
}

/// LPIPS (SqueezeNet) as a [`Metric`] on the CPU backend: `lpips`, or `lpips_clean` for the
/// clean variant. Lower is better. Built without weights ([`Lpips::unavailable`]) it reports
/// an error for every sample instead of a number.
pub struct Lpips {
    net: std::result::Result<LpipsSqueeze<CpuBackend>, String>,
    config: MetricConfig,
}

impl std::fmt::Debug for Lpips {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lpips")
            .field("loaded", &self.net.is_ok())
            .field("config", &self.config)
            .finish()
    }
}

impl Lpips {
    /// Loads the weights file (see the module docs).
    pub fn from_file(path: impl AsRef<Path>, config: MetricConfig) -> Result<Self> {
        let device = Default::default();
        Ok(Lpips {
            net: Ok(LpipsSqueeze::from_file(path, &device)?),
            config,
        })
    }

    /// Loads the weights when a path is given, else a metric that explains it has none.
    pub fn new(path: Option<&Path>, config: MetricConfig) -> Result<Self> {
        match path {
            Some(p) => Self::from_file(p, config),
            None => Ok(Self::unavailable(
                "no LPIPS weights file was given (make one with tools/eval/convert_lpips.py \
                 from torchvision's squeezenet1_1 and the lpips package's squeeze heads)",
                config,
            )),
        }
    }

    /// A metric that cannot be computed; `compute` fails with `reason`.
    pub fn unavailable(reason: impl Into<String>, config: MetricConfig) -> Self {
        Lpips {
            net: Err(reason.into()),
            config,
        }
    }

    /// A metric around an already built network.
    pub fn with_network(net: LpipsSqueeze<CpuBackend>, config: MetricConfig) -> Self {
        Lpips {
            net: Ok(net),
            config,
        }
    }
}

impl Metric for Lpips {
    fn name(&self) -> String {
        match self.config.variant {
            Variant::Protocol => "lpips".into(),
            Variant::Clean => "lpips_clean".into(),
        }
    }

    fn higher_is_better(&self) -> bool {
        false
    }

    fn compute(&self, input: MetricInput<'_>) -> Result<f64> {
        let net = self
            .net
            .as_ref()
            .map_err(|reason| CoreError::Metric(format!("{}: {reason}", self.name())))?;
        let (w, h) = input.original.dimensions();
        let gray = match input.mask {
            Some(m) => m.to_gray(),
            None => GrayImage::new(w, h),
        };
        let scores = lpips_scores(
            net,
            input.original,
            input.edited,
            &gray,
            self.config.size,
            &Default::default(),
        )?;
        match self.config.variant {
            Variant::Protocol => Ok(scores.lpips),
            Variant::Clean => scores.clean_lpips.ok_or_else(|| {
                CoreError::Metric("clean lpips: no unmasked pixel to measure".into())
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_upsampling_matches_torch() {
        // torch: F.interpolate(tensor([[[[0., 1.]]]]), size=(1, 4), mode="bilinear",
        // align_corners=False) == [0, 0.25, 0.75, 1].
        let maps = LpipsMaps {
            stages: vec![(1, 2, vec![0.0, 1.0])],
        };
        assert_eq!(maps.spatial(4, 1).unwrap(), vec![0.0, 0.25, 0.75, 1.0]);
        assert_eq!(maps.value(), 0.5);
        let mask = GrayImage::from_fn(4, 1, |x, _| image::Luma([if x < 2 { 0 } else { 255 }]));
        let s = scores_from_maps(&maps, &mask).unwrap();
        assert_eq!(s.clean_lpips, Some(0.125));
        let all = GrayImage::from_pixel(4, 1, image::Luma([9]));
        assert_eq!(scores_from_maps(&maps, &all).unwrap().clean_lpips, None);
    }

    /// Regression: a stage whose values do not fill its shape (or an empty stage) used to
    /// panic on indexing (`v[y * w + x]`) or underflow (`input - 1`).
    #[test]
    fn malformed_stages_are_errors() {
        let mask = GrayImage::new(4, 1);
        for stage in [(1, 3, vec![0.0, 1.0]), (0, 2, vec![]), (1, 0, vec![])] {
            let maps = LpipsMaps {
                stages: vec![stage],
            };
            let e = maps.spatial(4, 1).expect_err("malformed stage");
            assert!(e.to_string().contains("LPIPS stage 0"), "{e}");
            assert!(scores_from_maps(&maps, &mask).is_err());
        }
    }
}
