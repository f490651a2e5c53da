//! Depth Anything (V1 and V2 share the architecture) as transformers'
//! `DepthAnythingForDepthEstimation` defines it: a [`Dinov2Backbone`] whose feature maps go
//! through the DPT-style neck (reassemble: 1x1 projection then a transposed-convolution,
//! identity or strided-convolution resize; 3x3 convolutions to the fusion width; feature
//! fusion from the deepest map up with pre-activation residual units and bilinear upsampling)
//! and the head (3x3 convolution, bilinear upsampling to the patch grid times the patch size,
//! 3x3 convolution, ReLU, 1x1 convolution, ReLU for relative depth or sigmoid times `max_depth`
//! for metric depth).
//!
//! Also here: `DPTImageProcessor` as the Depth Anything V2 checkpoints configure it (keep the
//! aspect ratio, sizes a multiple of 14 with Python's round-half-even, Pillow bicubic on `u8`,
//! rescale, ImageNet normalisation; transformers' PIL backend, which `AutoImageProcessor`
//! gives without torchvision; the torchvision backend resizes with torch's antialiased bicubic
//! and can differ by a `u8` level on some pixels), its
//! `post_process_depth_estimation` (torch bicubic back to the original size), the
//! [`DepthAnything`] pipeline whose [`DepthAnything::estimate`] gives a [`DepthMap`] in the
//! original pixels, and the per-mask depth read-outs the SSR builder uses.
//!
//! Relative depth is an inverse depth (disparity): larger values are nearer the camera.

use std::path::Path;

use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::backend::Backend;
use burn::tensor::module::conv_transpose2d;
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{Tensor, TensorData};
use cielr_core::conv::conv2d;
use cielr_core::mask::Mask;
use cielr_core::weights::{TensorStore, Weights};
use image::DynamicImage;
use serde::Deserialize;
use serde_json::Value;

use crate::dinov2::{bicubic_resize, Dinov2Backbone, Dinov2Config, Dinov2Output};
use crate::error::{Result, SceneError};
use crate::preprocess::{resize, to_rgb, PixelValues, Resample};

fn cfg_err(message: impl Into<String>) -> SceneError {
    SceneError::config("depth_anything config", message)
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| SceneError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| SceneError::json(path.display().to_string(), e))
}

mod defaults {
    pub fn patch() -> usize {
        14
    }
    pub fn reassemble_hidden() -> usize {
        384
    }
    pub fn factors() -> Vec<f64> {
        vec![4.0, 2.0, 1.0, 0.5]
    }
    pub fn neck() -> Vec<usize> {
        vec![48, 96, 192, 384]
    }
    pub fn fusion() -> usize {
        64
    }
    pub fn head_in() -> i64 {
        -1
    }
    pub fn head_hidden() -> usize {
        32
    }
    pub fn kind() -> String {
        "relative".into()
    }
}

/// The neck and head settings of a `DepthAnythingConfig` (`config.json`), with transformers'
/// defaults for absent keys.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct RawConfig {
    #[serde(default = "defaults::patch")]
    patch_size: usize,
    #[serde(default = "defaults::reassemble_hidden")]
    reassemble_hidden_size: usize,
    #[serde(default = "defaults::factors")]
    reassemble_factors: Vec<f64>,
    #[serde(default = "defaults::neck")]
    neck_hidden_sizes: Vec<usize>,
    #[serde(default = "defaults::fusion")]
    fusion_hidden_size: usize,
    #[serde(default = "defaults::head_in")]
    head_in_index: i64,
    #[serde(default = "defaults::head_hidden")]
    head_hidden_size: usize,
    #[serde(default = "defaults::kind")]
    depth_estimation_type: String,
    #[serde(default)]
    max_depth: Option<f64>,
}

/// Relative (inverse) or metric depth, which picks the head's last activation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DepthKind {
    /// `relative`: ReLU (times `max_depth`, normally 1).
    Relative,
    /// `metric`: sigmoid times `max_depth` (metres).
    Metric,
}

/// `DepthAnythingConfig`, read from the checkpoint's `config.json` including its nested
/// `backbone_config` (DINOv2).
#[derive(Debug, Clone, PartialEq)]
pub struct DepthAnythingConfig {
    /// The DINOv2 backbone (`backbone_config`; transformers' Small-sized defaults if absent).
    pub backbone: Dinov2Config,
    /// Patch size used by the neck and head (`patch_size`).
    pub patch_size: usize,
    /// Width of the backbone features entering the neck (`reassemble_hidden_size`).
    pub reassemble_hidden_size: usize,
    /// Resize factor of each reassembled map (`reassemble_factors`: >1 transposed conv,
    /// 1 identity, <1 strided conv).
    pub reassemble_factors: Vec<f64>,
    /// Channels of each reassembled map (`neck_hidden_sizes`).
    pub neck_hidden_sizes: Vec<usize>,
    /// Channels in the fusion stage (`fusion_hidden_size`).
    pub fusion_hidden_size: usize,
    /// Which fused map the head reads (`head_in_index`, negative from the end).
    pub head_in_index: i64,
    /// Channels of the head's second convolution (`head_hidden_size`).
    pub head_hidden_size: usize,
    /// Relative or metric (`depth_estimation_type`).
    pub kind: DepthKind,
    /// The output scale (`max_depth`; 1 when null).
    pub max_depth: f64,
}

impl DepthAnythingConfig {
    /// Reads `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_json(&read_json(path.as_ref())?)
    }

    /// Parses the JSON of a `config.json` and validates it.
    pub fn from_json(value: &Value) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| cfg_err("the config is not a JSON object"))?;
        if let Some(t) = obj.get("model_type").and_then(Value::as_str) {
            if t != "depth_anything" {
                return Err(cfg_err(format!(
                    "model_type is {t:?}, expected \"depth_anything\""
                )));
            }
        }
        let backbone = match obj.get("backbone_config") {
            Some(v @ Value::Object(_)) => Dinov2Config::from_json(v)?,
            None | Some(Value::Null) => {
                if obj.get("backbone").is_some_and(|b| !b.is_null()) {
                    return Err(cfg_err(
                        "a named `backbone` without `backbone_config` is not supported",
                    ));
                }
                // transformers' defaults for a missing backbone_config (Small-sized).
                Dinov2Config::from_json(&serde_json::json!({
                    "image_size": 518, "hidden_size": 384, "num_attention_heads": 6,
                    "out_indices": [9, 10, 11, 12], "reshape_hidden_states": false
                }))?
            }
            Some(other) => {
                return Err(cfg_err(format!(
                    "`backbone_config` must be an object, got {other}"
                )))
            }
        };
        let raw: RawConfig = serde_json::from_value(value.clone())
            .map_err(|e| SceneError::json("depth_anything config", e))?;
        let kind = match raw.depth_estimation_type.as_str() {
            "relative" => DepthKind::Relative,
            "metric" => DepthKind::Metric,
            other => {
                return Err(cfg_err(format!(
                    "depth_estimation_type {other:?} (expected \"relative\" or \"metric\")"
                )))
            }
        };
        let config = DepthAnythingConfig {
            backbone,
            patch_size: raw.patch_size,
            reassemble_hidden_size: raw.reassemble_hidden_size,
            reassemble_factors: raw.reassemble_factors,
            neck_hidden_sizes: raw.neck_hidden_sizes,
            fusion_hidden_size: raw.fusion_hidden_size,
            head_in_index: raw.head_in_index,
            head_hidden_size: raw.head_hidden_size,
            kind,
            max_depth: raw.max_depth.unwrap_or(1.0),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks that the neck fits the backbone and the sizes are usable.
    pub fn validate(&self) -> Result<()> {
        self.backbone.validate()?;
        let n = self.neck_hidden_sizes.len();
        let stages = self.backbone.stage_indices()?.len();
        if n == 0 || self.reassemble_factors.len() != n || stages != n {
            return Err(cfg_err(format!(
                "neck_hidden_sizes ({n}), reassemble_factors ({}) and the backbone's out_indices \
                 ({stages}) must have the same, non-zero length",
                self.reassemble_factors.len()
            )));
        }
        if self.reassemble_hidden_size != self.backbone.hidden_size {
            return Err(cfg_err(format!(
                "reassemble_hidden_size {} differs from the backbone's hidden_size {}",
                self.reassemble_hidden_size, self.backbone.hidden_size
            )));
        }
        if self.patch_size == 0
            || self.fusion_hidden_size < 2
            || self.head_hidden_size == 0
            || self.neck_hidden_sizes.contains(&0)
        {
            return Err(cfg_err(
                "patch_size, fusion_hidden_size (>= 2), head_hidden_size and \
                 neck_hidden_sizes must be positive",
            ));
        }
        for &f in &self.reassemble_factors {
            reassemble_kind(f)?;
        }
        self.head_index()?;
        if !self.max_depth.is_finite() {
            return Err(cfg_err("max_depth must be finite"));
        }
        Ok(())
    }

    /// The fused map the head reads, as an index from the first fused map.
    pub fn head_index(&self) -> Result<usize> {
        let n = self.neck_hidden_sizes.len() as i64;
        let i = if self.head_in_index < 0 {
            self.head_in_index + n
        } else {
            self.head_in_index
        };
        if (0..n).contains(&i) {
            Ok(i as usize)
        } else {
            Err(cfg_err(format!(
                "head_in_index {} is outside the {n} fused maps",
                self.head_in_index
            )))
        }
    }
}

/// How a reassembled map is resized.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Resize {
    /// `ConvTranspose2d(kernel = stride = factor)`.
    Up(usize),
    /// Identity.
    Keep,
    /// `Conv2d(kernel 3, stride = int(1 / factor), padding 1)`.
    Down(usize),
}

fn reassemble_kind(factor: f64) -> Result<Resize> {
    if factor > 1.0 && factor.fract() == 0.0 && factor < 1e6 {
        Ok(Resize::Up(factor as usize))
    } else if factor == 1.0 {
        Ok(Resize::Keep)
    } else if factor > 0.0 && factor < 1.0 && (1.0 / factor) < 1e6 {
        Ok(Resize::Down((1.0 / factor) as usize))
    } else {
        Err(cfg_err(format!(
            "reassemble factor {factor} is not supported (an integer > 1, 1, or in (0, 1))"
        )))
    }
}

/// A 2-D convolution with torch's weight layout and optional bias.
#[derive(Debug)]
struct Conv<B: Backend> {
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    stride: usize,
    padding: usize,
}

impl<B: Backend> Conv<B> {
    #[allow(clippy::too_many_arguments)]
    fn load(
        w: &Weights,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
        device: &B::Device,
    ) -> Result<Self> {
        Ok(Conv {
            weight: w.tensor("weight", [c_out, c_in, kernel, kernel], device)?,
            bias: if bias {
                Some(w.tensor("bias", [c_out], device)?)
            } else {
                None
            },
            stride,
            padding,
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        conv2d(
            x,
            self.weight.clone(),
            self.bias.clone(),
            ConvOptions::new([self.stride; 2], [self.padding; 2], [1, 1], 1),
        )
    }
}

#[derive(Debug)]
enum ResizeLayer<B: Backend> {
    Up {
        weight: Tensor<B, 4>,
        bias: Tensor<B, 1>,
        factor: usize,
    },
    Keep,
    Down(Conv<B>),
}

#[derive(Debug)]
struct Reassemble<B: Backend> {
    projection: Conv<B>,
    resize: ResizeLayer<B>,
}

impl<B: Backend> Reassemble<B> {
    fn load(w: &Weights, c_in: usize, ch: usize, factor: f64, device: &B::Device) -> Result<Self> {
        let projection = Conv::load(&w.pp("projection"), c_in, ch, 1, 1, 0, true, device)?;
        let r = w.pp("resize");
        let resize = match reassemble_kind(factor)? {
            Resize::Up(f) => ResizeLayer::Up {
                // ConvTranspose2d keeps torch's [in, out, k, k] layout in Burn.
                weight: r.tensor("weight", [ch, ch, f, f], device)?,
                bias: r.tensor("bias", [ch], device)?,
                factor: f,
            },
            Resize::Keep => ResizeLayer::Keep,
            Resize::Down(s) => ResizeLayer::Down(Conv::load(&r, ch, ch, 3, s, 1, true, device)?),
        };
        Ok(Reassemble { projection, resize })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = self.projection.forward(x);
        match &self.resize {
            ResizeLayer::Up {
                weight,
                bias,
                factor,
            } => conv_transpose2d(
                x,
                weight.clone(),
                Some(bias.clone()),
                ConvTransposeOptions::new([*factor; 2], [0, 0], [0, 0], [1, 1], 1),
            ),
            ResizeLayer::Keep => x,
            ResizeLayer::Down(conv) => conv.forward(x),
        }
    }
}

/// `DepthAnythingPreActResidualLayer`: `x + conv2(relu(conv1(relu(x))))`.
#[derive(Debug)]
struct Residual<B: Backend> {
    conv1: Conv<B>,
    conv2: Conv<B>,
}

impl<B: Backend> Residual<B> {
    fn load(w: &Weights, c: usize, device: &B::Device) -> Result<Self> {
        Ok(Residual {
            conv1: Conv::load(&w.pp("convolution1"), c, c, 3, 1, 1, true, device)?,
            conv2: Conv::load(&w.pp("convolution2"), c, c, 3, 1, 1, true, device)?,
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let h = self
            .conv2
            .forward(relu(self.conv1.forward(relu(x.clone()))));
        h + x
    }
}

/// Bilinear resizing (cielr-core's CPU kernel; Burn's `interpolate` elsewhere).
fn bilinear<B: Backend>(x: Tensor<B, 4>, size: [usize; 2], align_corners: bool) -> Tensor<B, 4> {
    cielr_core::resize::bilinear(x, size, align_corners)
}

/// `DepthAnythingFeatureFusionLayer`.
#[derive(Debug)]
struct Fusion<B: Backend> {
    projection: Conv<B>,
    residual1: Residual<B>,
    residual2: Residual<B>,
}

impl<B: Backend> Fusion<B> {
    fn load(w: &Weights, c: usize, device: &B::Device) -> Result<Self> {
        Ok(Fusion {
            projection: Conv::load(&w.pp("projection"), c, c, 1, 1, 0, true, device)?,
            residual1: Residual::load(&w.pp("residual_layer1"), c, device)?,
            residual2: Residual::load(&w.pp("residual_layer2"), c, device)?,
        })
    }

    fn forward(
        &self,
        x: Tensor<B, 4>,
        residual: Option<Tensor<B, 4>>,
        size: Option<[usize; 2]>,
    ) -> Tensor<B, 4> {
        let mut x = x;
        if let Some(r) = residual {
            let [_, _, h, w] = x.dims();
            let [_, _, rh, rw] = r.dims();
            let r = if (rh, rw) != (h, w) {
                bilinear(r, [h, w], false)
            } else {
                r
            };
            x = x + self.residual1.forward(r);
        }
        let x = self.residual2.forward(x);
        let [_, _, h, w] = x.dims();
        // transformers: `size` when given, else `scale_factor=2` (floor(2 * n) = 2 * n).
        let size = size.unwrap_or([2 * h, 2 * w]);
        self.projection.forward(bilinear(x, size, true))
    }
}

/// `DepthAnythingDepthEstimationHead`.
#[derive(Debug)]
struct Head<B: Backend> {
    conv1: Conv<B>,
    conv2: Conv<B>,
    conv3: Conv<B>,
    kind: DepthKind,
    max_depth: f64,
    patch: usize,
}

impl<B: Backend> Head<B> {
    fn load(w: &Weights, c: &DepthAnythingConfig, device: &B::Device) -> Result<Self> {
        let f = c.fusion_hidden_size;
        Ok(Head {
            conv1: Conv::load(&w.pp("conv1"), f, f / 2, 3, 1, 1, true, device)?,
            conv2: Conv::load(
                &w.pp("conv2"),
                f / 2,
                c.head_hidden_size,
                3,
                1,
                1,
                true,
                device,
            )?,
            conv3: Conv::load(&w.pp("conv3"), c.head_hidden_size, 1, 1, 1, 0, true, device)?,
            kind: c.kind,
            max_depth: c.max_depth,
            patch: c.patch_size,
        })
    }

    fn forward(&self, x: Tensor<B, 4>, grid: (usize, usize)) -> Tensor<B, 3> {
        let x = self.conv1.forward(x);
        let x = bilinear(x, [grid.0 * self.patch, grid.1 * self.patch], true);
        let x = self.conv3.forward(relu(self.conv2.forward(x)));
        let x = match self.kind {
            DepthKind::Relative => relu(x),
            DepthKind::Metric => sigmoid(x),
        } * self.max_depth;
        let [b, _, h, w] = x.dims();
        x.reshape([b, h, w])
    }
}

/// The outputs of [`DepthAnythingModel::forward_with_features`].
#[derive(Debug, Clone)]
pub struct DepthAnythingOutput<B: Backend> {
    /// `[batch, grid_h * patch, grid_w * patch]` depth (`predicted_depth`).
    pub predicted_depth: Tensor<B, 3>,
    /// The backbone's feature maps and patch grid.
    pub backbone: Dinov2Output<B>,
}

/// `DepthAnythingForDepthEstimation`.
#[derive(Debug)]
pub struct DepthAnythingModel<B: Backend> {
    config: DepthAnythingConfig,
    backbone: Dinov2Backbone<B>,
    reassemble: Vec<Reassemble<B>>,
    convs: Vec<Conv<B>>,
    fusion: Vec<Fusion<B>>,
    head: Head<B>,
}

impl<B: Backend> DepthAnythingModel<B> {
    /// Builds the model from the checkpoint's tensors (`backbone.*`, `neck.*`, `head.*`).
    pub fn load(w: &Weights, config: &DepthAnythingConfig, device: &B::Device) -> Result<Self> {
        config.validate()?;
        let backbone = Dinov2Backbone::load(&w.pp("backbone"), &config.backbone, device)?;
        let neck = w.pp("neck");
        let f = config.fusion_hidden_size;
        let mut reassemble = Vec::new();
        let mut convs = Vec::new();
        let mut fusion = Vec::new();
        for (i, (&ch, &factor)) in config
            .neck_hidden_sizes
            .iter()
            .zip(&config.reassemble_factors)
            .enumerate()
        {
            reassemble.push(Reassemble::load(
                &neck.pp(format!("reassemble_stage.layers.{i}")),
                config.reassemble_hidden_size,
                ch,
                factor,
                device,
            )?);
            convs.push(Conv::load(
                &neck.pp(format!("convs.{i}")),
                ch,
                f,
                3,
                1,
                1,
                false,
                device,
            )?);
            fusion.push(Fusion::load(
                &neck.pp(format!("fusion_stage.layers.{i}")),
                f,
                device,
            )?);
        }
        Ok(DepthAnythingModel {
            config: config.clone(),
            backbone,
            reassemble,
            convs,
            fusion,
            head: Head::load(&w.pp("head"), config, device)?,
        })
    }

    /// Loads `config.json` and `model.safetensors` (or a sharded index) from a folder.
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let dir = dir.as_ref();
        let config = DepthAnythingConfig::from_file(dir.join("config.json"))?;
        let store = TensorStore::open(dir)?;
        Self::load(&store.weights(), &config, device)
    }

    /// The configuration.
    pub fn config(&self) -> &DepthAnythingConfig {
        &self.config
    }

    /// The backbone.
    pub fn backbone(&self) -> &Dinov2Backbone<B> {
        &self.backbone
    }

    /// `predicted_depth` `[batch, grid_h * patch, grid_w * patch]` for `pixel_values`
    /// `[batch, 3, height, width]`.
    pub fn forward(&self, pixel_values: Tensor<B, 4>) -> Result<Tensor<B, 3>> {
        Ok(self.forward_with_features(pixel_values)?.predicted_depth)
    }

    /// Like [`forward`](Self::forward), also returning the backbone's feature maps.
    pub fn forward_with_features(
        &self,
        pixel_values: Tensor<B, 4>,
    ) -> Result<DepthAnythingOutput<B>> {
        let out = self.backbone.forward(pixel_values)?;
        let grid = out.grid;
        let features: Vec<Tensor<B, 4>> = out
            .feature_maps
            .iter()
            .zip(&self.reassemble)
            .zip(&self.convs)
            .map(|((t, r), conv)| conv.forward(r.forward(Dinov2Backbone::spatial(t.clone(), grid))))
            .collect();
        // Fusion from the deepest map up; each step upsamples to the next map's size.
        let n = features.len();
        let mut fused: Vec<Tensor<B, 4>> = Vec::with_capacity(n);
        for (j, layer) in self.fusion.iter().enumerate() {
            let i = n - 1 - j;
            let size = (i > 0).then(|| {
                let [_, _, h, w] = features[i - 1].dims();
                [h, w]
            });
            let next = match fused.last() {
                None => layer.forward(features[i].clone(), None, size),
                Some(prev) => layer.forward(prev.clone(), Some(features[i].clone()), size),
            };
            fused.push(next);
        }
        let head_in = fused[self.config.head_index()?].clone();
        Ok(DepthAnythingOutput {
            predicted_depth: self.head.forward(head_in, grid),
            backbone: out,
        })
    }
}

/// `DPTImageProcessor` settings (`preprocessor_config.json`), as Depth Anything uses them.
#[derive(Debug, Clone, PartialEq)]
pub struct DptProcessorConfig {
    /// `do_resize`.
    pub do_resize: bool,
    /// `size`: target `(height, width)`.
    pub size: (usize, usize),
    /// `keep_aspect_ratio`: scale both sides by the factor closer to 1.
    pub keep_aspect_ratio: bool,
    /// `ensure_multiple_of`: output sides are rounded (half to even) to a multiple of this.
    pub ensure_multiple_of: usize,
    /// `resample` (Pillow filter code; 3 = bicubic).
    pub resample: Resample,
    /// `do_rescale`.
    pub do_rescale: bool,
    /// `rescale_factor`.
    pub rescale_factor: f64,
    /// `do_normalize`.
    pub do_normalize: bool,
    /// `image_mean`.
    pub image_mean: [f32; 3],
    /// `image_std`.
    pub image_std: [f32; 3],
}

impl Default for DptProcessorConfig {
    /// The settings of the Depth-Anything-V2-{Small,Base,Large}-hf checkpoints.
    fn default() -> Self {
        DptProcessorConfig {
            do_resize: true,
            size: (518, 518),
            keep_aspect_ratio: true,
            ensure_multiple_of: 14,
            resample: Resample::Bicubic,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: [0.485, 0.456, 0.406],
            image_std: [0.229, 0.224, 0.225],
        }
    }
}

fn pp_err(message: impl Into<String>) -> SceneError {
    SceneError::config("preprocessor_config.json (DPT)", message)
}

impl DptProcessorConfig {
    /// Reads `preprocessor_config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_json(&read_json(path.as_ref())?)
    }

    /// Parses a `preprocessor_config.json`; absent keys take `DPTImageProcessor`'s defaults
    /// (size 384x384, no aspect ratio, multiple 1, bicubic, ImageNet-standard 0.5 mean/std).
    /// Padding (`do_pad` with `size_divisor`) is not supported.
    pub fn from_json(value: &Value) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| pp_err("the file is not a JSON object"))?;
        let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
        let boolean = |k: &str, d: bool| -> Result<bool> {
            match get(k) {
                None => Ok(d),
                Some(v) => v
                    .as_bool()
                    .ok_or_else(|| pp_err(format!("`{k}` must be a boolean, got {v}"))),
            }
        };
        let positive = |v: &Value, k: &str| -> Result<usize> {
            v.as_u64()
                .filter(|&n| n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| pp_err(format!("`{k}` must be a positive integer, got {v}")))
        };
        let triple = |k: &str, d: [f32; 3]| -> Result<[f32; 3]> {
            match get(k) {
                None => Ok(d),
                Some(Value::Number(n)) => Ok([n.as_f64().unwrap_or(f64::NAN) as f32; 3]),
                Some(Value::Array(a)) if a.len() == 3 => {
                    let mut out = [0f32; 3];
                    for (o, x) in out.iter_mut().zip(a) {
                        *o = x
                            .as_f64()
                            .ok_or_else(|| pp_err(format!("`{k}` must hold numbers")))?
                            as f32;
                    }
                    Ok(out)
                }
                Some(v) => Err(pp_err(format!(
                    "`{k}` must be a number or 3 numbers, got {v}"
                ))),
            }
        };
        let size = match get("size") {
            None => (384, 384),
            Some(v @ Value::Number(_)) => {
                let n = positive(v, "size")?;
                (n, n)
            }
            Some(Value::Object(m)) => match (m.get("height"), m.get("width")) {
                (Some(h), Some(w)) => (positive(h, "size.height")?, positive(w, "size.width")?),
                _ => return Err(pp_err("`size` needs `height` and `width`")),
            },
            Some(v) => return Err(pp_err(format!("`size` has an unknown form: {v}"))),
        };
        if boolean("do_pad", false)? && get("size_divisor").is_some() {
            return Err(pp_err(
                "padding (`do_pad` with `size_divisor`) is not supported",
            ));
        }
        let resample = match get("resample") {
            None => Resample::Bicubic,
            Some(v) => Resample::from_code(
                v.as_i64()
                    .ok_or_else(|| pp_err(format!("`resample` must be an integer, got {v}")))?,
            )?,
        };
        let config = DptProcessorConfig {
            do_resize: boolean("do_resize", true)?,
            size,
            keep_aspect_ratio: boolean("keep_aspect_ratio", false)?,
            ensure_multiple_of: match get("ensure_multiple_of") {
                None => 1,
                Some(v) => positive(v, "ensure_multiple_of")?,
            },
            resample,
            do_rescale: boolean("do_rescale", true)?,
            rescale_factor: match get("rescale_factor") {
                None => 1.0 / 255.0,
                Some(v) => v
                    .as_f64()
                    .ok_or_else(|| pp_err(format!("`rescale_factor` must be a number, got {v}")))?,
            },
            do_normalize: boolean("do_normalize", true)?,
            image_mean: triple("image_mean", [0.5; 3])?,
            image_std: triple("image_std", [0.5; 3])?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if self.image_std.iter().any(|s| !s.is_finite() || *s == 0.0)
            || self.image_mean.iter().any(|m| !m.is_finite())
            || !self.rescale_factor.is_finite()
        {
            return Err(pp_err(
                "image_mean, image_std (non-zero) and rescale_factor must be finite",
            ));
        }
        if self.size.0 == 0 || self.size.1 == 0 || self.ensure_multiple_of == 0 {
            return Err(pp_err("size and ensure_multiple_of must be positive"));
        }
        let max = crate::MAX_PROCESSOR_SIDE;
        if self.size.0 > max || self.size.1 > max || self.ensure_multiple_of > max {
            return Err(pp_err(format!(
                "size {:?} / ensure_multiple_of {} exceed {max}",
                self.size, self.ensure_multiple_of
            )));
        }
        Ok(())
    }

    /// The `(height, width)` an image of `(height, width)` is resized to, as transformers'
    /// `get_resize_output_image_size` for DPT computes it: with `keep_aspect_ratio` both
    /// sides are scaled by whichever of the two factors is closer to 1, then each side is
    /// `round(side / multiple) * multiple` with Python's round-half-even (never below 0). A
    /// side can come out 0 for extreme aspect ratios; [`DptImageProcessor::preprocess`]
    /// rejects that.
    pub fn output_size(&self, height: usize, width: usize) -> (usize, usize) {
        let (th, tw) = self.size;
        let mut sh = th as f64 / height as f64;
        let mut sw = tw as f64 / width as f64;
        if self.keep_aspect_ratio {
            if (1.0 - sw).abs() < (1.0 - sh).abs() {
                sh = sw;
            } else {
                sw = sh;
            }
        }
        let m = self.ensure_multiple_of as f64;
        let constrain = |v: f64| -> usize {
            let x = (v / m).round_ties_even() * m;
            if x < 0.0 {
                ((v / m).ceil() * m) as usize
            } else {
                x as usize
            }
        };
        (constrain(sh * height as f64), constrain(sw * width as f64))
    }
}

/// `DPTImageProcessor` (transformers' PIL backend) and its depth post-processing.
#[derive(Debug, Clone, PartialEq)]
pub struct DptImageProcessor {
    config: DptProcessorConfig,
}

impl DptImageProcessor {
    /// A processor with validated settings.
    pub fn new(config: DptProcessorConfig) -> Result<Self> {
        config.validate()?;
        Ok(DptImageProcessor { config })
    }

    /// Reads `preprocessor_config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::new(DptProcessorConfig::from_file(path)?)
    }

    /// The settings.
    pub fn config(&self) -> &DptProcessorConfig {
        &self.config
    }

    /// RGB conversion (alpha composited onto white), resize with Pillow's filter on `u8`,
    /// rescale (f64 product rounded to f32) and normalise (f32), channel-major.
    pub fn preprocess(&self, image: &DynamicImage) -> Result<PixelValues> {
        let c = &self.config;
        let rgb = to_rgb(image);
        let (w0, h0) = (rgb.width() as usize, rgb.height() as usize);
        if w0 == 0 || h0 == 0 {
            return Err(SceneError::InvalidInput("the image is empty".into()));
        }
        let rgb = if c.do_resize {
            let (h, w) = c.output_size(h0, w0);
            if h == 0 || w == 0 {
                return Err(SceneError::InvalidInput(format!(
                    "a {w0}x{h0} image resizes to {w}x{h} under DPT's size rule"
                )));
            }
            resize(&rgb, w, h, c.resample)?
        } else {
            rgb
        };
        let (w, h) = (rgb.width() as usize, rgb.height() as usize);
        let raw = rgb.as_raw();
        let mut data = vec![0f32; 3 * h * w];
        for ch in 0..3 {
            for (i, out) in data[ch * h * w..(ch + 1) * h * w].iter_mut().enumerate() {
                let v = raw[i * 3 + ch];
                let mut x = if c.do_rescale {
                    (v as f64 * c.rescale_factor) as f32
                } else {
                    v as f32
                };
                if c.do_normalize {
                    x = (x - c.image_mean[ch]) / c.image_std[ch];
                }
                *out = x;
            }
        }
        Ok(PixelValues {
            data,
            height: h,
            width: w,
        })
    }

    /// `post_process_depth_estimation` for one image: `depth` (`height x width`, row-major)
    /// resized to `target` `(height, width)` with torch's bicubic (`align_corners=False`).
    pub fn post_process(
        &self,
        depth: &[f32],
        height: usize,
        width: usize,
        target: (usize, usize),
    ) -> Result<DepthMap> {
        if depth.len() != height * width || height == 0 || width == 0 {
            return Err(SceneError::InvalidInput(format!(
                "{} depth values for a {width}x{height} map",
                depth.len()
            )));
        }
        if target.0 == 0 || target.1 == 0 {
            return Err(SceneError::InvalidInput("empty target size".into()));
        }
        Ok(DepthMap {
            width: target.1,
            height: target.0,
            data: bicubic_resize(depth, 1, height, width, target.0, target.1),
        })
    }
}

/// A depth map in image pixels: row-major `height x width` values. For relative-depth
/// checkpoints the values are inverse depths (larger is nearer).
#[derive(Debug, Clone, PartialEq)]
pub struct DepthMap {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// The values, row by row.
    pub data: Vec<f32>,
}

impl DepthMap {
    /// The value at pixel `(x, y)`, `None` outside the map (or past the end of a `data`
    /// shorter than `width * height`: the fields are public).
    pub fn get(&self, x: usize, y: usize) -> Option<f32> {
        if x < self.width && y < self.height {
            self.data.get(y * self.width + x).copied()
        } else {
            None
        }
    }

    fn check_mask(&self, mask: &Mask) -> Result<()> {
        if (mask.width() as usize, mask.height() as usize) != (self.width, self.height) {
            return Err(SceneError::InvalidInput(format!(
                "a {}x{} mask on a {}x{} depth map",
                mask.width(),
                mask.height(),
                self.width,
                self.height
            )));
        }
        Ok(())
    }

    /// The depth at the pixel under the mask's centroid (pixel-centre coordinates, as
    /// [`Mask::centroid`]); `Ok(None)` for an empty mask. The centroid of a non-convex mask
    /// may fall outside it: see [`DepthMap::median_in_mask`] for a robust read-out.
    pub fn at_mask_centroid(&self, mask: &Mask) -> Result<Option<f32>> {
        self.check_mask(mask)?;
        Ok(mask.centroid().and_then(|(cx, cy)| {
            let x = (cx.floor() as usize).min(self.width - 1);
            let y = (cy.floor() as usize).min(self.height - 1);
            self.get(x, y)
        }))
    }

    /// The median depth over the mask's pixels (the lower middle value for an even count);
    /// `Ok(None)` for an empty mask.
    pub fn median_in_mask(&self, mask: &Mask) -> Result<Option<f32>> {
        self.check_mask(mask)?;
        let mut values: Vec<f32> = mask
            .pixels()
            .filter_map(|(x, y)| self.get(x as usize, y as usize))
            .collect();
        if values.is_empty() {
            return Ok(None);
        }
        let mid = (values.len() - 1) / 2;
        let (_, m, _) = values.select_nth_unstable_by(mid, |a, b| a.total_cmp(b));
        Ok(Some(*m))
    }
}

/// A loaded Depth Anything checkpoint with its processor: image in, [`DepthMap`] out.
#[derive(Debug)]
pub struct DepthAnything<B: Backend> {
    model: DepthAnythingModel<B>,
    processor: DptImageProcessor,
    device: B::Device,
}

impl<B: Backend> DepthAnything<B> {
    /// Loads `config.json`, `model.safetensors` and `preprocessor_config.json` from a
    /// HuggingFace checkpoint folder (e.g. depth-anything/Depth-Anything-V2-Small-hf).
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let dir = dir.as_ref();
        Ok(DepthAnything {
            model: DepthAnythingModel::from_pretrained(dir, device)?,
            processor: DptImageProcessor::from_file(dir.join("preprocessor_config.json"))?,
            device: device.clone(),
        })
    }

    /// Joins a model and a processor.
    pub fn new(
        model: DepthAnythingModel<B>,
        processor: DptImageProcessor,
        device: B::Device,
    ) -> Self {
        DepthAnything {
            model,
            processor,
            device,
        }
    }

    /// The model.
    pub fn model(&self) -> &DepthAnythingModel<B> {
        &self.model
    }

    /// The processor.
    pub fn processor(&self) -> &DptImageProcessor {
        &self.processor
    }

    /// Preprocesses `image`, runs the model and resizes the depth back to the image's size.
    pub fn estimate(&self, image: &DynamicImage) -> Result<DepthMap> {
        let pv = self.processor.preprocess(image)?;
        let input = Tensor::<B, 4>::from_data(
            TensorData::new(pv.data, [1, 3, pv.height, pv.width]),
            &self.device,
        );
        let depth = self.model.forward(input)?;
        let [_, h, w] = depth.dims();
        let values = cielr_core::backend::read_finite_f32(depth, "Depth Anything's depth map")?;
        self.processor.post_process(
            &values,
            h,
            w,
            (image.height() as usize, image.width() as usize),
        )
    }
}
