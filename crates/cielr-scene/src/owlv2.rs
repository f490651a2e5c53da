//! OWLv2 open-vocabulary detection (Minderer et al. 2023) in Burn, loading HuggingFace
//! `Owlv2ForObjectDetection` checkpoints (google/owlv2-base-patch16-ensemble and kin).
//!
//! The towers are [`crate::clip`]'s: a CLIP vision transformer whose every output token goes
//! through `post_layernorm`, is multiplied by the class token and layer-normed again
//! (`layer_norm`), giving one feature per patch; a CLIP text transformer pooled at
//! `argmax(input_ids)` and projected. Per patch, three heads: the class head (`dense0`
//! into the text space, L2-normalised, cosine similarity with the normalised query embeddings,
//! then `(logits + logit_shift) * (elu(logit_scale) + 1)`), the box head (3-layer GELU MLP plus
//! a bias from the patch's grid position, sigmoid, `cx cy w h` relative to the padded square)
//! and the objectness head (same MLP, one output).
//!
//! - [`Owlv2Config`]: the checkpoint's `config.json`, with OWLv2's own defaults for absent keys
//!   (text `max_position_embeddings` 16, pad id 0, vision `image_size` 768, `patch_size` 16).
//! - [`Owlv2ImageProcessor`]: transformers' `Owlv2ImageProcessor` numpy/PIL backend
//!   (`Owlv2ImageProcessorPil`): rescale, pad to a square at the bottom/right, Gaussian
//!   anti-aliasing and linear zoom as scipy's `ndimage` computes them ("mirror" borders), clip
//!   to the input range, normalise.
//! - [`Owlv2ForObjectDetection`]: the model; weight names (`owlv2.text_model.`,
//!   `owlv2.vision_model.`, `owlv2.text_projection`, `class_head.`, `box_head.`,
//!   `objectness_head.`, `layer_norm`) are spelled in [`Owlv2ForObjectDetection::load`] only.
//! - [`Owlv2Detector`]: the API the scene builder uses: [`Owlv2Detector::embed_image`] once per
//!   image, [`Owlv2Detector::embed_queries`] (cached per query string),
//!   [`Owlv2Detector::detect`] (transformers' `post_process_grounded_object_detection`).
//!
//! Parity with transformers 5.24 is checked by `tests/owlv2_parity.rs` against
//! `tools/parity/owlv2.py`. Not supported: `interpolate_pos_encoding` (inputs have the
//! config's `image_size`, as the processor makes them), image-guided detection, padded query
//! slots (`query_mask`: every query given here is a real one), batches of several images.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use burn::module::Module;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::activation::sigmoid;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use cielr_core::activation::gelu;
use cielr_core::backend::read_finite_f32;
use image::DynamicImage;
use serde_json::{json, Map, Value};

use crate::clip::{
    Checkpoint, ClipTextConfig, ClipTextTransformer, ClipTokenizer, ClipVisionConfig,
    ClipVisionTransformer, Weights,
};
use crate::error::{Result, SceneError};
use crate::preprocess::{to_rgb, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD};

// ============================================================================ config

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| SceneError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| SceneError::json(path.display().to_string(), e))
}

/// `Owlv2Config`: both towers and the joint embedding width.
#[derive(Debug, Clone, PartialEq)]
pub struct Owlv2Config {
    /// The text tower (`text_config`).
    pub text_config: ClipTextConfig,
    /// The vision tower (`vision_config`).
    pub vision_config: ClipVisionConfig,
    /// Width of `text_projection` / `visual_projection` (`projection_dim`).
    pub projection_dim: usize,
}

/// `section` of an OWLv2 config with `defaults` (OWLv2's class defaults) under it, and the
/// top-level `projection_dim` copied in.
fn owl_section(
    obj: &Map<String, Value>,
    section: &str,
    defaults: Value,
    projection_dim: usize,
) -> Result<Value> {
    let mut out = match defaults {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    // The section, then its legacy `{section}_dict` over it (as transformers merges them).
    for key in [section.to_string(), format!("{section}_dict")] {
        match obj.get(&key) {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    if !v.is_null() {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
            Some(other) => {
                return Err(SceneError::config(
                    "OWLv2 config",
                    format!("`{key}` is not an object: {other}"),
                ))
            }
        }
    }
    out.insert("projection_dim".into(), json!(projection_dim));
    Ok(Value::Object(out))
}

impl Owlv2Config {
    /// Parses an `Owlv2Config` JSON (absent keys take `Owlv2TextConfig` /
    /// `Owlv2VisionConfig`'s defaults, which differ from CLIP's).
    pub fn from_json(value: &Value) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| SceneError::config("OWLv2 config", "not a JSON object"))?;
        let projection_dim = match obj.get("projection_dim") {
            None | Some(Value::Null) => 512,
            Some(v) => v.as_u64().filter(|&n| n > 0).ok_or_else(|| {
                SceneError::config("OWLv2 config", format!("bad `projection_dim` {v}"))
            })? as usize,
        };
        let text = owl_section(
            obj,
            "text_config",
            json!({
                "vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048,
                "num_hidden_layers": 12, "num_attention_heads": 8,
                "max_position_embeddings": 16, "hidden_act": "quick_gelu",
                "layer_norm_eps": 1e-5, "pad_token_id": 0, "bos_token_id": 49406,
                "eos_token_id": 49407,
            }),
            projection_dim,
        )?;
        let vision = owl_section(
            obj,
            "vision_config",
            json!({
                "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                "num_attention_heads": 12, "num_channels": 3, "image_size": 768,
                "patch_size": 16, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
            }),
            projection_dim,
        )?;
        let c = Owlv2Config {
            text_config: ClipTextConfig::from_json(&text)?,
            vision_config: ClipVisionConfig::from_json(&vision)?,
            projection_dim,
        };
        c.validate()?;
        Ok(c)
    }

    /// Reads a `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_json(&read_json(path.as_ref())?)
    }

    /// Checks what the heads need: the class head maps patches to the text width, which must
    /// be the query embeddings' width (`projection_dim`).
    pub fn validate(&self) -> Result<()> {
        if self.text_config.hidden_size != self.projection_dim {
            return Err(SceneError::config(
                "OWLv2 config",
                format!(
                    "the class head compares text hidden_size {} with query embeddings of \
                     projection_dim {}; they must be equal",
                    self.text_config.hidden_size, self.projection_dim
                ),
            ));
        }
        Ok(())
    }

    /// Patches per side of the feature grid.
    pub fn grid_size(&self) -> usize {
        self.vision_config.grid_size()
    }
}

// ============================================================================ preprocessing

/// transformers' `Owlv2ImageProcessor` (numpy/PIL backend, `Owlv2ImageProcessorPil`), from a
/// `preprocessor_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Owlv2ImageProcessor {
    /// Output height (`size.height`, 960 for the base checkpoints).
    pub height: usize,
    /// Output width (`size.width`).
    pub width: usize,
    /// Multiply the 8-bit values by `rescale_factor` (`do_rescale`, legacy `rescale`).
    pub do_rescale: bool,
    /// The rescale factor (1/255).
    pub rescale_factor: f64,
    /// Pad to a square at the bottom and right (`do_pad`).
    pub do_pad: bool,
    /// The padding value after rescaling; transformers 5.24 pads with 0.0 (black).
    pub pad_value: f32,
    /// Resize to `height` x `width` (`do_resize`).
    pub do_resize: bool,
    /// Gaussian anti-aliasing before the zoom. transformers passes the config's `resample`
    /// where the resize expects `anti_aliasing`, so it is on unless `resample` is 0 (nearest).
    pub anti_aliasing: bool,
    /// Normalise with `image_mean` / `image_std` (`do_normalize`).
    pub do_normalize: bool,
    /// Per-channel mean.
    pub image_mean: [f32; 3],
    /// Per-channel standard deviation.
    pub image_std: [f32; 3],
}

impl Default for Owlv2ImageProcessor {
    fn default() -> Self {
        Owlv2ImageProcessor {
            height: 960,
            width: 960,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_pad: true,
            pad_value: 0.0,
            do_resize: true,
            anti_aliasing: true,
            do_normalize: true,
            image_mean: OPENAI_CLIP_MEAN,
            image_std: OPENAI_CLIP_STD,
        }
    }
}

/// Preprocessed pixels: `[3, height, width]`, channel-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Owlv2Pixels {
    /// `3 * height * width` values.
    pub data: Vec<f32>,
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
}

impl Owlv2Pixels {
    /// As a `[1, 3, height, width]` tensor.
    pub fn tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 4> {
        Tensor::from_data(
            TensorData::new(self.data.clone(), [1, 3, self.height, self.width]),
            device,
        )
    }
}

fn bool_key(obj: &Map<String, Value>, key: &str, default: bool) -> Result<bool> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(SceneError::config(
            "OWLv2 preprocessor config",
            format!("`{key}` must be a boolean, got {v}"),
        )),
    }
}

fn triple(obj: &Map<String, Value>, key: &str, default: [f32; 3]) -> Result<[f32; 3]> {
    let bad = |v: &Value| {
        SceneError::config(
            "OWLv2 preprocessor config",
            format!("`{key}` must be a number or 3 numbers, got {v}"),
        )
    };
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => {
            let x = n.as_f64().ok_or_else(|| bad(&Value::Number(n.clone())))? as f32;
            Ok([x; 3])
        }
        Some(v @ Value::Array(a)) if a.len() == 3 => {
            let mut out = [0f32; 3];
            for (o, x) in out.iter_mut().zip(a) {
                *o = x.as_f64().ok_or_else(|| bad(v))? as f32;
            }
            Ok(out)
        }
        Some(v) => Err(bad(v)),
    }
}

/// scipy.ndimage's "mirror" extension of index or coordinate `x` into `[0, n - 1]`
/// (`d c b | a b c d | c b a`).
fn mirror(x: f64, n: usize) -> f64 {
    if n <= 1 {
        return 0.0;
    }
    let period = 2.0 * (n as f64 - 1.0);
    let r = x.abs() % period;
    if r > n as f64 - 1.0 {
        period - r
    } else {
        r
    }
}

/// One axis (0 = rows, 1 = columns) of an `[h, w, 3]` image, as `(length, stride)` plus the
/// offsets of the lines along it.
fn axis_lines(dims: [usize; 2], axis: usize) -> (usize, usize, Vec<usize>) {
    let [h, w] = dims;
    if axis == 0 {
        (h, w * 3, (0..w * 3).collect())
    } else {
        (
            w,
            3,
            (0..h)
                .flat_map(|y| (0..3).map(move |c| y * w * 3 + c))
                .collect(),
        )
    }
}

/// `scipy.ndimage.gaussian_filter1d(mode="mirror", truncate=4.0)` along `axis` of an
/// `[h, w, 3]` f32 image, accumulated in f64 and stored as f32 (as scipy does for f32 input).
fn gaussian_axis(src: &[f32], dims: [usize; 2], axis: usize, sigma: f64) -> Vec<f32> {
    let radius = (4.0 * sigma + 0.5) as usize;
    let mut kernel: Vec<f64> = (0..=radius)
        .map(|k| (-0.5 / (sigma * sigma) * (k * k) as f64).exp())
        .collect();
    let total: f64 = kernel[0] + 2.0 * kernel[1..].iter().sum::<f64>();
    for k in kernel.iter_mut() {
        *k /= total;
    }
    let (n, stride, starts) = axis_lines(dims, axis);
    let mut out = vec![0f32; src.len()];
    let mut line = vec![0f64; n];
    for start in starts {
        for (i, v) in line.iter_mut().enumerate() {
            *v = src[start + i * stride] as f64;
        }
        for i in 0..n {
            let at = |j: isize| line[mirror(j as f64, n) as usize];
            let mut acc = line[i] * kernel[0];
            for (k, wk) in kernel.iter().enumerate().skip(1) {
                acc += (at(i as isize - k as isize) + at(i as isize + k as isize)) * wk;
            }
            out[start + i * stride] = acc as f32;
        }
    }
    out
}

/// `scipy.ndimage.zoom(order=1, mode="mirror", grid_mode=True)` along `axis` of an `[h, w, 3]`
/// f64 image to `m` samples: output sample `o` reads input coordinate
/// `(o + 0.5) * n / m - 0.5`, mirrored into range, linearly interpolated.
fn zoom_axis(src: &[f64], dims: [usize; 2], axis: usize, m: usize) -> (Vec<f64>, [usize; 2]) {
    let [h, w] = dims;
    let n = dims[axis];
    let out_dims = if axis == 0 { [m, w] } else { [h, m] };
    let (_, in_stride, in_starts) = axis_lines(dims, axis);
    let (_, out_stride, out_starts) = axis_lines(out_dims, axis);
    let zoom = n as f64 / m as f64;
    let taps: Vec<(usize, usize, f64)> = (0..m)
        .map(|o| {
            let c = mirror((o as f64 + 0.5) * zoom - 0.5, n);
            let f = c.floor();
            let t = c - f;
            let i0 = f as usize;
            let i1 = mirror(f + 1.0, n) as usize;
            (i0, i1, t)
        })
        .collect();
    let mut out = vec![0f64; out_dims[0] * out_dims[1] * 3];
    for (a, b) in in_starts.iter().zip(&out_starts) {
        for (o, &(i0, i1, t)) in taps.iter().enumerate() {
            let v0 = src[a + i0 * in_stride];
            let v = if t > 0.0 {
                (1.0 - t) * v0 + t * src[a + i1 * in_stride]
            } else {
                v0
            };
            out[b + o * out_stride] = v;
        }
    }
    (out, out_dims)
}

impl Owlv2ImageProcessor {
    /// Parses a `preprocessor_config.json` (`size` as `{height, width}` or one number).
    pub fn from_json(value: &Value) -> Result<Self> {
        let ctx = "OWLv2 preprocessor config";
        let obj = value
            .as_object()
            .ok_or_else(|| SceneError::config(ctx, "not a JSON object"))?;
        let d = Owlv2ImageProcessor::default();
        let (height, width) = match obj.get("size") {
            None | Some(Value::Null) => (d.height, d.width),
            Some(Value::Number(n)) => {
                let s = n.as_u64().unwrap_or(0) as usize;
                (s, s)
            }
            Some(Value::Object(m)) => {
                let get = |k: &str| m.get(k).and_then(Value::as_u64).unwrap_or(0) as usize;
                (get("height"), get("width"))
            }
            Some(v) => return Err(SceneError::config(ctx, format!("bad `size` {v}"))),
        };
        if height == 0 || width == 0 {
            return Err(SceneError::config(
                ctx,
                "`size` needs a positive height and width",
            ));
        }
        if height > crate::MAX_PROCESSOR_SIDE || width > crate::MAX_PROCESSOR_SIDE {
            return Err(SceneError::config(
                ctx,
                format!(
                    "`size` {height}x{width} exceeds {}",
                    crate::MAX_PROCESSOR_SIDE
                ),
            ));
        }
        let do_rescale = match obj.get("do_rescale") {
            Some(Value::Bool(b)) => *b,
            _ => bool_key(obj, "rescale", true)?,
        };
        let rescale_factor = match obj.get("rescale_factor") {
            None | Some(Value::Null) => d.rescale_factor,
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| SceneError::config(ctx, format!("bad `rescale_factor` {v}")))?,
        };
        let anti_aliasing = match obj.get("resample") {
            None | Some(Value::Null) => true,
            Some(v) => v.as_i64().map(|r| r != 0).unwrap_or(true),
        };
        let p = Owlv2ImageProcessor {
            height,
            width,
            do_rescale,
            rescale_factor,
            do_pad: bool_key(obj, "do_pad", true)?,
            pad_value: 0.0,
            do_resize: bool_key(obj, "do_resize", true)?,
            anti_aliasing,
            do_normalize: bool_key(obj, "do_normalize", true)?,
            image_mean: triple(obj, "image_mean", OPENAI_CLIP_MEAN)?,
            image_std: triple(obj, "image_std", OPENAI_CLIP_STD)?,
        };
        if p.image_std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
            return Err(SceneError::config(ctx, "`image_std` must be non-zero"));
        }
        Ok(p)
    }

    /// Reads a `preprocessor_config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_json(&read_json(path.as_ref())?)
    }

    /// The side of the square the image is padded to (before the resize), which is what the
    /// relative boxes are scaled by.
    pub fn padded_side(&self, height: usize, width: usize) -> usize {
        if self.do_pad {
            height.max(width)
        } else {
            height
        }
    }

    /// Preprocesses one image into `pixel_values`.
    pub fn preprocess(&self, image: &DynamicImage) -> Result<Owlv2Pixels> {
        let rgb = to_rgb(image);
        let (w, h) = (rgb.width() as usize, rgb.height() as usize);
        if w == 0 || h == 0 {
            return Err(SceneError::InvalidInput("empty image".into()));
        }
        let scale = if self.do_rescale {
            self.rescale_factor
        } else {
            1.0
        };
        // rescale: f64 product stored as f32, [h, w, 3].
        let rescaled: Vec<f32> = rgb
            .as_raw()
            .iter()
            .map(|&v| (v as f64 * scale) as f32)
            .collect();
        // pad to a square at the bottom / right.
        let (ph, pw) = if self.do_pad {
            let s = h.max(w);
            (s, s)
        } else {
            (h, w)
        };
        let mut x = vec![self.pad_value; ph * pw * 3];
        for y in 0..h {
            x[y * pw * 3..y * pw * 3 + w * 3]
                .copy_from_slice(&rescaled[y * w * 3..(y + 1) * w * 3]);
        }
        let (lo, hi) = x
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        let (mut data, out_h, out_w) = if self.do_resize {
            let dims = [ph, pw];
            let mut filtered = x;
            if self.anti_aliasing {
                for (axis, (n, m)) in [(ph, self.height), (pw, self.width)]
                    .into_iter()
                    .enumerate()
                {
                    let sigma = ((n as f64 / m as f64) - 1.0) / 2.0;
                    if sigma > 1e-15 {
                        filtered = gaussian_axis(&filtered, dims, axis, sigma);
                    }
                }
            }
            let f64s: Vec<f64> = filtered.iter().map(|&v| v as f64).collect();
            let (rows, d1) = zoom_axis(&f64s, dims, 0, self.height);
            let (both, _) = zoom_axis(&rows, d1, 1, self.width);
            let out: Vec<f32> = both.iter().map(|&v| (v as f32).clamp(lo, hi)).collect();
            (out, self.height, self.width)
        } else {
            (x, ph, pw)
        };
        if self.do_normalize {
            for (i, v) in data.iter_mut().enumerate() {
                let c = i % 3;
                *v = (*v - self.image_mean[c]) / self.image_std[c];
            }
        }
        // [h, w, 3] -> [3, h, w]
        let mut chw = vec![0f32; data.len()];
        for (i, v) in data.iter().enumerate() {
            let (p, c) = (i / 3, i % 3);
            chw[c * out_h * out_w + p] = *v;
        }
        Ok(Owlv2Pixels {
            data: chw,
            height: out_h,
            width: out_w,
        })
    }
}

// ============================================================================ model

/// `Owlv2BoxPredictionHead`: `dense0 -> GELU -> dense1 -> GELU -> dense2`.
#[derive(Module, Debug)]
pub struct Owlv2BoxHead<B: Backend> {
    dense0: Linear<B>,
    dense1: Linear<B>,
    dense2: Linear<B>,
}

impl<B: Backend> Owlv2BoxHead<B> {
    fn load(w: &Weights, width: usize, out: usize, device: &B::Device) -> Result<Self> {
        Ok(Owlv2BoxHead {
            dense0: w.pp("dense0").linear(width, width, true, device)?,
            dense1: w.pp("dense1").linear(width, width, true, device)?,
            dense2: w.pp("dense2").linear(width, out, true, device)?,
        })
    }

    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let x = gelu(self.dense0.forward(x));
        let x = gelu(self.dense1.forward(x));
        self.dense2.forward(x)
    }
}

/// `Owlv2ClassPredictionHead`: `dense0` into the text space, `logit_shift`, `logit_scale`.
#[derive(Module, Debug)]
pub struct Owlv2ClassHead<B: Backend> {
    dense0: Linear<B>,
    logit_shift: Linear<B>,
    logit_scale: Linear<B>,
}

fn elu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone().clamp_min(0.0) + (x.clamp_max(0.0).exp() - 1.0)
}

fn l2_normalize<B: Backend>(x: Tensor<B, 2>, eps: f64) -> Tensor<B, 2> {
    let norm = (x.clone() * x.clone()).sum_dim(1).sqrt() + eps;
    x / norm
}

/// `logit(v)` as OWL's box bias computes it: `ln(v + 1e-4) - ln1p(-v + 1e-4)`.
fn box_logit(v: f64) -> f64 {
    (v + 1e-4).ln() - (-v + 1e-4).ln_1p()
}

/// `compute_box_bias`: per patch (row-major), `[logit(cx), logit(cy), logit(1/gw),
/// logit(1/gh)]` with the patch's lower-right corner `((col + 1) / gw, (row + 1) / gh)` as its
/// centre prior.
pub fn box_bias(grid_h: usize, grid_w: usize) -> Vec<[f32; 4]> {
    let (gw, gh) = (grid_w as f64, grid_h as f64);
    let (sw, sh) = (box_logit(1.0 / gw) as f32, box_logit(1.0 / gh) as f32);
    (0..grid_h)
        .flat_map(|r| {
            (0..grid_w).map(move |c| {
                let x = ((c as f32 + 1.0) / grid_w as f32).clamp(0.0, 1.0) as f64;
                let y = ((r as f32 + 1.0) / grid_h as f32).clamp(0.0, 1.0) as f64;
                [box_logit(x) as f32, box_logit(y) as f32, sw, sh]
            })
        })
        .collect()
}

/// `Owlv2ForObjectDetection`.
#[derive(Module, Debug)]
pub struct Owlv2ForObjectDetection<B: Backend> {
    /// The text tower (pooled at `argmax(input_ids)`).
    pub text_model: ClipTextTransformer<B>,
    text_projection: Linear<B>,
    /// The vision tower.
    pub vision_model: ClipVisionTransformer<B>,
    layer_norm: LayerNorm<B>,
    class_head: Owlv2ClassHead<B>,
    box_head: Owlv2BoxHead<B>,
    objectness_head: Owlv2BoxHead<B>,
    grid: usize,
    image_size: usize,
}

/// What one image contributes to detection, computed once ([`Owlv2Detector::embed_image`]):
/// everything but the query-dependent class logits.
#[derive(Debug, Clone)]
pub struct Owlv2ImageEmbedding<B: Backend> {
    /// Per-patch features after the class-token merge and `layer_norm`, `[patches, hidden]`
    /// (transformers' `image_embeds`, flattened row-major from `[grid_h, grid_w, hidden]`).
    pub image_feats: Tensor<B, 2>,
    /// `class_head.dense0` of the features, L2-normalised (+1e-6), `[patches, text_hidden]`
    /// (transformers' `class_embeds`).
    pub class_embeds: Tensor<B, 2>,
    /// `logit_shift`, `[patches, 1]`.
    pub logit_shift: Tensor<B, 2>,
    /// `elu(logit_scale) + 1`, `[patches, 1]`.
    pub logit_scale: Tensor<B, 2>,
    /// Objectness logits, `[patches]`.
    pub objectness_logits: Tensor<B, 1>,
    /// Boxes `cx, cy, w, h` relative to the padded square, `[patches, 4]` (`pred_boxes`).
    pub pred_boxes: Tensor<B, 2>,
    /// Patch rows and columns.
    pub grid: (usize, usize),
    /// The original image's `(height, width)`.
    pub original_size: (usize, usize),
    /// The side of the padded square in original pixels (boxes are scaled by it).
    pub padded_side: usize,
}

impl<B: Backend> Owlv2ForObjectDetection<B> {
    /// Builds the model from a checkpoint's root.
    pub fn load(w: &Weights, config: &Owlv2Config, device: &B::Device) -> Result<Self> {
        config.validate()?;
        let (t, v) = (&config.text_config, &config.vision_config);
        let owl = w.pp("owlv2");
        let (vd, td) = (v.hidden_size, t.hidden_size);
        let ch = w.pp("class_head");
        Ok(Owlv2ForObjectDetection {
            text_model: ClipTextTransformer::load(&owl.pp("text_model"), t, device)?
                .with_argmax_pooling(),
            text_projection: owl.pp("text_projection").linear(
                td,
                config.projection_dim,
                false,
                device,
            )?,
            vision_model: ClipVisionTransformer::load(&owl.pp("vision_model"), v, device)?,
            layer_norm: w
                .pp("layer_norm")
                .layer_norm(vd, v.layer_norm_eps, device)?,
            class_head: Owlv2ClassHead {
                dense0: ch.pp("dense0").linear(vd, td, true, device)?,
                logit_shift: ch.pp("logit_shift").linear(vd, 1, true, device)?,
                logit_scale: ch.pp("logit_scale").linear(vd, 1, true, device)?,
            },
            box_head: Owlv2BoxHead::load(&w.pp("box_head"), vd, 4, device)?,
            objectness_head: Owlv2BoxHead::load(&w.pp("objectness_head"), vd, 1, device)?,
            grid: v.grid_size(),
            image_size: v.image_size,
        })
    }

    /// Loads `config.json` + `model.safetensors` (or a sharded index) from a folder.
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let dir = dir.as_ref();
        let config = Owlv2Config::from_file(dir.join("config.json"))?;
        let ckpt = Checkpoint::open(dir)?;
        Self::load(&ckpt.weights(), &config, device)
    }

    /// The input side length (`vision_config.image_size`).
    pub fn image_size(&self) -> usize {
        self.image_size
    }

    /// Runs the vision tower and the query-independent heads on `pixel_values`
    /// `[1, 3, size, size]` of an image of `original_size` (height, width) that was padded to
    /// a square of side `padded_side`.
    pub fn embed_pixels(
        &self,
        pixel_values: Tensor<B, 4>,
        original_size: (usize, usize),
        padded_side: usize,
    ) -> Result<Owlv2ImageEmbedding<B>> {
        if pixel_values.dims()[0] != 1 {
            return Err(SceneError::InvalidInput(format!(
                "embed_pixels takes one image, got a batch of {}",
                pixel_values.dims()[0]
            )));
        }
        let device = pixel_values.device();
        let out = self.vision_model.forward(pixel_values)?;
        let tokens = self.vision_model.post_layernorm(out.last_hidden_state);
        let [_, n, d] = tokens.dims();
        let class = tokens.clone().narrow(1, 0, 1);
        let patches = tokens.narrow(1, 1, n - 1) * class;
        let feats = self.layer_norm.forward(patches).reshape([n - 1, d]);

        let class_embeds = l2_normalize(self.class_head.dense0.forward(feats.clone()), 1e-6);
        let logit_shift = self.class_head.logit_shift.forward(feats.clone());
        let logit_scale = elu(self.class_head.logit_scale.forward(feats.clone())) + 1.0;
        let objectness_logits = self.objectness_head.forward(feats.clone()).reshape([n - 1]);
        let bias: Vec<f32> = box_bias(self.grid, self.grid)
            .into_iter()
            .flatten()
            .collect();
        let bias = Tensor::<B, 2>::from_data(TensorData::new(bias, [n - 1, 4]), &device);
        let pred_boxes = sigmoid(self.box_head.forward(feats.clone()) + bias);
        Ok(Owlv2ImageEmbedding {
            image_feats: feats,
            class_embeds,
            logit_shift,
            logit_scale,
            objectness_logits,
            pred_boxes,
            grid: (self.grid, self.grid),
            original_size,
            padded_side,
        })
    }

    /// Query embeddings (`text_embeds`: projected pooled text states, L2-normalised) for token
    /// ids `[queries, seq]` and their attention mask.
    pub fn embed_text(
        &self,
        input_ids: Tensor<B, 2, burn::tensor::Int>,
        attention_mask: Tensor<B, 2, burn::tensor::Int>,
    ) -> Result<Tensor<B, 2>> {
        let out = self.text_model.forward(input_ids, Some(attention_mask))?;
        Ok(l2_normalize(
            self.text_projection.forward(out.pooler_output),
            0.0,
        ))
    }

    /// Class logits `[patches, queries]` of an image against query embeddings `[queries, d]`
    /// (`text_embeds` as [`Owlv2ForObjectDetection::embed_text`] gives them).
    pub fn class_logits(
        &self,
        image: &Owlv2ImageEmbedding<B>,
        query_embeds: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let q = l2_normalize(query_embeds, 1e-6);
        let sim = image.class_embeds.clone().matmul(q.transpose());
        (sim + image.logit_shift.clone()) * image.logit_scale.clone()
    }
}

// ============================================================================ detector

/// Embedded text queries: the strings and their `text_embeds` (L2-normalised), row by row.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryEmbeddings {
    /// The query strings.
    pub labels: Vec<String>,
    /// `labels.len() * dim` values.
    pub embeds: Vec<f32>,
    /// Embedding width (`projection_dim`).
    pub dim: usize,
}

impl QueryEmbeddings {
    /// Number of queries.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no queries.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// As a `[queries, dim]` tensor.
    pub fn tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2> {
        Tensor::from_data(
            TensorData::new(self.embeds.clone(), [self.len(), self.dim]),
            device,
        )
    }
}

/// One detected box, as `post_process_grounded_object_detection` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// The patch (box proposal) index, row-major on the feature grid.
    pub patch: usize,
    /// Index of the best-scoring query (transformers' `labels`).
    pub query: usize,
    /// That query's text (`text_labels`).
    pub label: String,
    /// `sigmoid` of the best class logit.
    pub score: f32,
    /// `sigmoid` of the patch's objectness logit.
    pub objectness: f32,
    /// `[x0, y0, x1, y1]` in original image pixels (may extend past the image, as
    /// transformers' boxes do).
    pub bbox: [f32; 4],
}

/// OWLv2 with its processor, tokenizer and a query-embedding cache.
pub struct Owlv2Detector<B: Backend> {
    model: Owlv2ForObjectDetection<B>,
    processor: Owlv2ImageProcessor,
    tokenizer: ClipTokenizer,
    cache: Mutex<HashMap<String, Vec<f32>>>,
    dim: usize,
    device: B::Device,
}

impl<B: Backend> std::fmt::Debug for Owlv2Detector<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owlv2Detector")
            .field("processor", &self.processor)
            .field("tokenizer", &self.tokenizer)
            .field("dim", &self.dim)
            .finish()
    }
}

/// The `pad_token` of a `tokenizer_config.json` (a string or `{"content": ...}`).
fn pad_token(dir: &Path) -> Result<Option<String>> {
    let path = dir.join("tokenizer_config.json");
    if !path.exists() {
        return Ok(None);
    }
    let v = read_json(&path)?;
    Ok(match v.get("pad_token") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(m)) => m.get("content").and_then(Value::as_str).map(String::from),
        _ => None,
    })
}

impl<B: Backend> Owlv2Detector<B> {
    /// Loads a checkpoint folder: `config.json`, safetensors, `preprocessor_config.json`,
    /// `tokenizer.json` (and `tokenizer_config.json` for the pad token, `!` if absent).
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let dir = dir.as_ref();
        let config = Owlv2Config::from_file(dir.join("config.json"))?;
        let ckpt = Checkpoint::open(dir)?;
        let model = Owlv2ForObjectDetection::load(&ckpt.weights(), &config, device)?;
        let processor = Owlv2ImageProcessor::from_file(dir.join("preprocessor_config.json"))?;
        let pad = pad_token(dir)?.unwrap_or_else(|| "!".to_string());
        let tokenizer = ClipTokenizer::from_file(
            dir.join("tokenizer.json"),
            config.text_config.max_position_embeddings,
        )?
        .with_pad_token(&pad)?;
        Self::new(model, processor, tokenizer, config.projection_dim, device)
    }

    /// Assembles a detector; the processor must produce the model's input size.
    pub fn new(
        model: Owlv2ForObjectDetection<B>,
        processor: Owlv2ImageProcessor,
        tokenizer: ClipTokenizer,
        projection_dim: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let s = model.image_size();
        if !processor.do_resize || processor.height != s || processor.width != s {
            return Err(SceneError::config(
                "OWLv2 preprocessor config",
                format!(
                    "the processor must resize to the model's {s}x{s} input, it gives {}x{} \
                     (do_resize {})",
                    processor.height, processor.width, processor.do_resize
                ),
            ));
        }
        Ok(Owlv2Detector {
            model,
            processor,
            tokenizer,
            cache: Mutex::new(HashMap::new()),
            dim: projection_dim,
            device: device.clone(),
        })
    }

    /// The model.
    pub fn model(&self) -> &Owlv2ForObjectDetection<B> {
        &self.model
    }

    /// The image processor.
    pub fn processor(&self) -> &Owlv2ImageProcessor {
        &self.processor
    }

    /// The tokenizer (max length 16, padded with the checkpoint's pad token).
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// Preprocesses `image` and runs the vision tower and box/objectness heads once.
    pub fn embed_image(&self, image: &DynamicImage) -> Result<Owlv2ImageEmbedding<B>> {
        let (h, w) = (image.height() as usize, image.width() as usize);
        let pixels = self.processor.preprocess(image)?;
        self.model.embed_pixels(
            pixels.tensor(&self.device),
            (h, w),
            self.processor.padded_side(h, w),
        )
    }

    /// Embeds text queries; strings seen before (by this detector) come from the cache and
    /// only new ones run through the text tower (in one batch).
    pub fn embed_queries(&self, queries: &[&str]) -> Result<QueryEmbeddings> {
        let mut cache = self
            .cache
            .lock()
            .map_err(|_| SceneError::InvalidInput("query cache poisoned".into()))?;
        let mut missing: Vec<&str> = queries
            .iter()
            .copied()
            .filter(|q| !cache.contains_key(*q))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            let batch = self.tokenizer.encode(&missing)?;
            let embeds = self.model.embed_text(
                batch.input_ids(&self.device),
                batch.attention_mask(&self.device),
            )?;
            let values = read_finite_f32(embeds, "OWLv2's query embeddings")?;
            for (q, row) in missing.iter().zip(values.chunks_exact(self.dim)) {
                cache.insert((*q).to_string(), row.to_vec());
            }
        }
        let mut embeds = Vec::with_capacity(queries.len() * self.dim);
        for q in queries {
            let row = cache
                .get(*q)
                .ok_or_else(|| SceneError::InvalidInput(format!("query `{q}` not embedded")))?;
            embeds.extend_from_slice(row);
        }
        Ok(QueryEmbeddings {
            labels: queries.iter().map(|q| q.to_string()).collect(),
            embeds,
            dim: self.dim,
        })
    }

    /// How many distinct query strings are cached.
    pub fn cached_queries(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Class logits `[patches, queries]` (transformers' `logits[0]`).
    pub fn logits(
        &self,
        image: &Owlv2ImageEmbedding<B>,
        queries: &QueryEmbeddings,
    ) -> Result<Tensor<B, 2>> {
        if queries.dim != self.dim || queries.embeds.len() != queries.len() * self.dim {
            return Err(SceneError::InvalidInput(format!(
                "query embeddings of width {} do not fit the model's {}",
                queries.dim, self.dim
            )));
        }
        Ok(self.model.class_logits(image, queries.tensor(&self.device)))
    }

    /// Boxes whose best query scores above `threshold` (`sigmoid(max logit) > threshold`), in
    /// patch order, with boxes in original pixels: transformers'
    /// `post_process_grounded_object_detection(threshold, target_sizes=[(h, w)])`.
    pub fn detect(
        &self,
        image: &Owlv2ImageEmbedding<B>,
        queries: &QueryEmbeddings,
        threshold: f32,
    ) -> Result<Vec<Detection>> {
        if queries.is_empty() {
            return Ok(Vec::new());
        }
        let q = queries.len();
        let logits = read_finite_f32(self.logits(image, queries)?, "OWLv2's class logits")?;
        let boxes = read_finite_f32(image.pred_boxes.clone(), "OWLv2's boxes")?;
        let objectness =
            read_finite_f32(image.objectness_logits.clone(), "OWLv2's objectness logits")?;
        let side = image.padded_side as f32;
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        let mut out = Vec::new();
        for (p, row) in logits.chunks_exact(q).enumerate() {
            let (best, &logit) =
                row.iter().enumerate().fold(
                    (0, &row[0]),
                    |acc, (i, v)| if *v > *acc.1 { (i, v) } else { acc },
                );
            let score = sig(logit);
            if score <= threshold {
                continue;
            }
            let b = &boxes[p * 4..p * 4 + 4];
            let (cx, cy, w, h) = (b[0], b[1], b[2], b[3]);
            out.push(Detection {
                patch: p,
                query: best,
                label: queries.labels[best].clone(),
                score,
                objectness: sig(objectness[p]),
                bbox: [
                    (cx - 0.5 * w) * side,
                    (cy - 0.5 * h) * side,
                    (cx + 0.5 * w) * side,
                    (cy + 0.5 * h) * side,
                ],
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_matches_scipy_convention() {
        // d c b | a b c d | c b a for n = 4.
        let got: Vec<f64> = (-3..7).map(|i| mirror(i as f64, 4)).collect();
        assert_eq!(got, vec![3.0, 2.0, 1.0, 0.0, 1.0, 2.0, 3.0, 2.0, 1.0, 0.0]);
        assert_eq!(mirror(-0.25, 5), 0.25);
        assert_eq!(mirror(7.0, 1), 0.0);
    }

    #[test]
    fn box_bias_of_a_2x2_grid() {
        let b = box_bias(2, 2);
        let l = |v: f64| ((v + 1e-4).ln() - (-v + 1e-4).ln_1p()) as f32;
        assert_eq!(b.len(), 4);
        assert_eq!(b[1], [l(1.0), l(0.5), l(0.5), l(0.5)]);
        assert_eq!(b[2], [l(0.5), l(1.0), l(0.5), l(0.5)]);
    }

    #[test]
    fn preprocessor_config_variants() {
        let p = Owlv2ImageProcessor::from_json(&json!({
            "size": 768, "resample": 0, "rescale": false, "image_mean": 0.5
        }))
        .unwrap();
        assert_eq!((p.height, p.width), (768, 768));
        assert!(
            !p.anti_aliasing,
            "resample 0 turns anti-aliasing off in transformers"
        );
        assert!(!p.do_rescale);
        assert_eq!(p.image_mean, [0.5; 3]);
        let d = Owlv2ImageProcessor::from_json(&json!({})).unwrap();
        assert_eq!(d, Owlv2ImageProcessor::default());
        assert!(Owlv2ImageProcessor::from_json(&json!({"size": {"height": 0}})).is_err());
        assert!(Owlv2ImageProcessor::from_json(&json!({"image_std": [1, 0, 1]})).is_err());
        // Regression: a huge `size` used to allocate `size^2 * 3` floats per image.
        let e = Owlv2ImageProcessor::from_json(&json!({"size": 1_000_000})).unwrap_err();
        assert!(e.to_string().contains("exceeds"), "{e}");
    }

    #[test]
    fn owl_defaults_fill_missing_keys() {
        let c = Owlv2Config::from_json(&json!({"text_config": {}, "vision_config": {}})).unwrap();
        assert_eq!(c.text_config.max_position_embeddings, 16);
        assert_eq!(c.text_config.pad_token_id, Some(0));
        assert_eq!(c.vision_config.image_size, 768);
        assert_eq!(c.vision_config.patch_size, 16);
        let legacy = json!({"text_config_dict": {"max_position_embeddings": 20},
                            "vision_config": {"image_size": 960}});
        let c = Owlv2Config::from_json(&legacy).unwrap();
        assert_eq!(c.text_config.max_position_embeddings, 20);
        assert_eq!(c.grid_size(), 60);
        let bad = json!({"projection_dim": 64, "text_config": {}, "vision_config": {}});
        assert!(Owlv2Config::from_json(&bad).is_err());
    }
}
