//! DINOv2 vision transformer as transformers' `Dinov2Backbone` defines it (the backbone of
//! Depth Anything V2, reusable on its own): patch embedding, CLS token, learned position
//! embeddings interpolated bicubically to the input's patch grid (torch's
//! `interpolate(mode="bicubic", align_corners=False)`, reproduced on the host), pre-norm
//! encoder layers with layer scale, and feature maps taken after the layers named by
//! `out_indices` (optionally through the final layer norm).
//!
//! Weights load from HuggingFace checkpoints in both name layouts: the published one
//! (`attention.attention.query`, `attention.output.dense`, as on the Hub and as
//! `save_pretrained` writes) and transformers 5's in-memory one (`attention.q_proj`,
//! `attention.o_proj`). The SwiGLU feed-forward of DINOv2-giant is not supported (a config
//! error says so); Depth Anything V2 Small/Base/Large do not use it.

use burn::nn::conv::Conv2d;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Tensor, TensorData};
use cielr_core::activation::gelu;
use cielr_core::attention::attention;
use cielr_core::layout::contiguous;
use cielr_core::weights::Weights;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Result, SceneError};

/// An integer, or a `[height, width]` pair (how transformers configs write sizes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum SizeOrPair {
    /// One value for both sides.
    One(usize),
    /// `[height, width]`.
    Pair([usize; 2]),
}

impl SizeOrPair {
    /// The value when both sides are equal; a config error naming `key` otherwise.
    pub fn square(self, key: &str) -> Result<usize> {
        match self {
            SizeOrPair::One(n) => Ok(n),
            SizeOrPair::Pair([h, w]) if h == w => Ok(h),
            SizeOrPair::Pair([h, w]) => Err(SceneError::config(
                "dinov2 config",
                format!("`{key}` must be square, got [{h}, {w}]"),
            )),
        }
    }
}

mod defaults {
    pub fn hidden() -> usize {
        768
    }
    pub fn layers() -> usize {
        12
    }
    pub fn heads() -> usize {
        12
    }
    pub fn mlp_ratio() -> f64 {
        4.0
    }
    pub fn act() -> String {
        "gelu".into()
    }
    pub fn eps() -> f64 {
        1e-6
    }
    pub fn image_size() -> super::SizeOrPair {
        super::SizeOrPair::One(224)
    }
    pub fn patch_size() -> super::SizeOrPair {
        super::SizeOrPair::One(14)
    }
    pub fn channels() -> usize {
        3
    }
    pub fn yes() -> bool {
        true
    }
    pub fn layerscale() -> f64 {
        1.0
    }
}

/// `Dinov2Config` (`model_type: "dinov2"`), with transformers' defaults for absent keys.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Dinov2Config {
    /// Width of the tokens (`hidden_size`).
    #[serde(default = "defaults::hidden")]
    pub hidden_size: usize,
    /// Number of encoder layers (`num_hidden_layers`).
    #[serde(default = "defaults::layers")]
    pub num_hidden_layers: usize,
    /// Attention heads per layer (`num_attention_heads`).
    #[serde(default = "defaults::heads")]
    pub num_attention_heads: usize,
    /// MLP width over `hidden_size` (`mlp_ratio`).
    #[serde(default = "defaults::mlp_ratio")]
    pub mlp_ratio: f64,
    /// MLP activation (`hidden_act`); only `gelu` (exact, erf) is supported.
    #[serde(default = "defaults::act")]
    pub hidden_act: String,
    /// Layer-norm epsilon (`layer_norm_eps`).
    #[serde(default = "defaults::eps")]
    pub layer_norm_eps: f64,
    /// Training image size; the position embeddings cover its patch grid (`image_size`).
    #[serde(default = "defaults::image_size")]
    pub image_size: SizeOrPair,
    /// Patch size (`patch_size`).
    #[serde(default = "defaults::patch_size")]
    pub patch_size: SizeOrPair,
    /// Input channels (`num_channels`).
    #[serde(default = "defaults::channels")]
    pub num_channels: usize,
    /// Whether q/k/v projections have biases (`qkv_bias`).
    #[serde(default = "defaults::yes")]
    pub qkv_bias: bool,
    /// Initial layer-scale value (`layerscale_value`); the checkpoint's `lambda1` is used.
    #[serde(default = "defaults::layerscale")]
    pub layerscale_value: f64,
    /// SwiGLU feed-forward (`use_swiglu_ffn`, DINOv2-giant); unsupported here.
    #[serde(default)]
    pub use_swiglu_ffn: bool,
    /// Hidden-state indices returned as feature maps: 0 is the embedding output, `i` the
    /// output of layer `i` (`out_indices`, else derived from `out_features`, else the last).
    #[serde(default)]
    pub out_indices: Option<Vec<i64>>,
    /// Stage names (`stem`, `stage1`, ...) returned as feature maps (`out_features`).
    #[serde(default)]
    pub out_features: Option<Vec<String>>,
    /// Whether feature maps go through the final layer norm (`apply_layernorm`).
    #[serde(default = "defaults::yes")]
    pub apply_layernorm: bool,
    /// Whether feature maps are reshaped to `[batch, hidden, h, w]` without the CLS token
    /// (`reshape_hidden_states`); see [`Dinov2Backbone::spatial`].
    #[serde(default = "defaults::yes")]
    pub reshape_hidden_states: bool,
}

fn cfg_err(message: impl Into<String>) -> SceneError {
    SceneError::config("dinov2 config", message)
}

impl Dinov2Config {
    /// Parses the JSON of a `Dinov2Config` (a `config.json`, or the `backbone_config` section
    /// of a Depth Anything config) and validates it.
    pub fn from_json(value: &Value) -> Result<Self> {
        if let Some(t) = value.get("model_type").and_then(Value::as_str) {
            if t != "dinov2" {
                return Err(cfg_err(format!("model_type is {t:?}, expected \"dinov2\"")));
            }
        }
        let config: Dinov2Config = serde_json::from_value(value.clone())
            .map_err(|e| SceneError::json("dinov2 config", e))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks sizes and the supported options.
    pub fn validate(&self) -> Result<()> {
        if self.hidden_size == 0 || self.num_attention_heads == 0 || self.num_channels == 0 {
            return Err(cfg_err(
                "hidden_size, num_attention_heads and num_channels must be positive",
            ));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(cfg_err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if self.hidden_act != "gelu" {
            return Err(cfg_err(format!(
                "hidden_act {:?} is not supported (only \"gelu\")",
                self.hidden_act
            )));
        }
        if self.use_swiglu_ffn {
            return Err(cfg_err(
                "use_swiglu_ffn (DINOv2-giant's SwiGLU feed-forward) is not supported",
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(cfg_err("layer_norm_eps must be positive"));
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0) || self.intermediate_size() == 0 {
            return Err(cfg_err("mlp_ratio must be positive"));
        }
        let patch = self.patch()?;
        let image = self.image_size.square("image_size")?;
        if patch == 0 || image < patch {
            return Err(cfg_err(format!(
                "image_size {image} must be at least patch_size {patch} (> 0)"
            )));
        }
        self.stage_indices()?;
        Ok(())
    }

    /// The square patch size.
    pub fn patch(&self) -> Result<usize> {
        self.patch_size.square("patch_size")
    }

    /// The MLP width, `int(hidden_size * mlp_ratio)`.
    pub fn intermediate_size(&self) -> usize {
        (self.hidden_size as f64 * self.mlp_ratio) as usize
    }

    /// The side of the position-embedding grid (`image_size / patch_size`).
    pub fn position_grid(&self) -> Result<usize> {
        Ok(self.image_size.square("image_size")? / self.patch()?)
    }

    /// The hidden-state indices of the feature maps, in order (negative `out_indices` count
    /// from the end, as in transformers).
    pub fn stage_indices(&self) -> Result<Vec<usize>> {
        let n = self.num_hidden_layers as i64 + 1;
        let raw: Vec<i64> = match (&self.out_indices, &self.out_features) {
            (Some(ix), _) => ix.clone(),
            (None, Some(names)) => names
                .iter()
                .map(|s| match s.as_str() {
                    "stem" => Ok(0),
                    _ => s
                        .strip_prefix("stage")
                        .and_then(|d| d.parse::<i64>().ok())
                        .ok_or_else(|| {
                            cfg_err(format!("unknown stage name {s:?} in out_features"))
                        }),
                })
                .collect::<Result<_>>()?,
            (None, None) => vec![n - 1],
        };
        raw.iter()
            .map(|&i| {
                let j = if i < 0 { i + n } else { i };
                if (0..n).contains(&j) {
                    Ok(j as usize)
                } else {
                    Err(cfg_err(format!(
                        "out index {i} is outside the {n} hidden states (stem + {} layers)",
                        n - 1
                    )))
                }
            })
            .collect()
    }
}

/// The tensor names of one layer's attention projections, in the checkpoint's layout.
struct AttnNames {
    q: String,
    k: String,
    v: String,
    o: String,
}

/// Weight-name mapping: the published layout (`attention.attention.query`,
/// `attention.output.dense`) or transformers 5's (`attention.q_proj`, `attention.o_proj`).
fn attn_names(layer: &Weights) -> AttnNames {
    if layer.contains("attention.q_proj.weight") {
        AttnNames {
            q: "attention.q_proj".into(),
            k: "attention.k_proj".into(),
            v: "attention.v_proj".into(),
            o: "attention.o_proj".into(),
        }
    } else {
        AttnNames {
            q: "attention.attention.query".into(),
            k: "attention.attention.key".into(),
            v: "attention.attention.value".into(),
            o: "attention.output.dense".into(),
        }
    }
}

#[derive(Debug)]
struct Layer<B: Backend> {
    norm1: LayerNorm<B>,
    q: Linear<B>,
    k: Linear<B>,
    v: Linear<B>,
    o: Linear<B>,
    scale1: Tensor<B, 1>,
    norm2: LayerNorm<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
    scale2: Tensor<B, 1>,
    heads: usize,
}

impl<B: Backend> Layer<B> {
    fn load(w: &Weights, c: &Dinov2Config, device: &B::Device) -> Result<Self> {
        let d = c.hidden_size;
        let n = attn_names(w);
        Ok(Layer {
            norm1: w.pp("norm1").layer_norm(d, c.layer_norm_eps, device)?,
            q: w.pp(&n.q).linear(d, d, c.qkv_bias, device)?,
            k: w.pp(&n.k).linear(d, d, c.qkv_bias, device)?,
            v: w.pp(&n.v).linear(d, d, c.qkv_bias, device)?,
            o: w.pp(&n.o).linear(d, d, true, device)?,
            scale1: w.pp("layer_scale1").tensor("lambda1", [d], device)?,
            norm2: w.pp("norm2").layer_norm(d, c.layer_norm_eps, device)?,
            fc1: w
                .pp("mlp.fc1")
                .linear(d, c.intermediate_size(), true, device)?,
            fc2: w
                .pp("mlp.fc2")
                .linear(c.intermediate_size(), d, true, device)?,
            scale2: w.pp("layer_scale2").tensor("lambda1", [d], device)?,
            heads: c.num_attention_heads,
        })
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, s, d] = x.dims();
        let hd = d / self.heads;
        let h = self.norm1.forward(x.clone());
        let split = |t: Tensor<B, 3>| t.reshape([b, s, self.heads, hd]).swap_dims(1, 2);
        let q = split(self.q.forward(h.clone()));
        let k = split(self.k.forward(h.clone()));
        let v = split(self.v.forward(h));
        // Fused attention (cielr-core's CPU kernel, the backend's elsewhere): no score
        // tensor held.
        let options = AttentionModuleOptions {
            scale: Some((hd as f64).powf(-0.5)),
            softcap: None,
            is_causal: false,
        };
        let attn =
            contiguous(attention(q, k, v, None, None, options).swap_dims(1, 2)).reshape([b, s, d]);
        let attn = self.o.forward(attn) * self.scale1.clone().reshape([1, 1, d]);
        let x = x + attn;
        let m = self
            .fc2
            .forward(gelu(self.fc1.forward(self.norm2.forward(x.clone()))));
        x + m * self.scale2.clone().reshape([1, 1, d])
    }
}

/// The output of [`Dinov2Backbone::forward`].
#[derive(Debug, Clone)]
pub struct Dinov2Output<B: Backend> {
    /// One `[batch, 1 + h * w, hidden]` token map (CLS first) per entry of
    /// [`Dinov2Config::stage_indices`], through the final layer norm when `apply_layernorm`.
    pub feature_maps: Vec<Tensor<B, 3>>,
    /// The patch grid `(h, w)`: `(height / patch, width / patch)`, rounded down.
    pub grid: (usize, usize),
}

/// `Dinov2Backbone`: embeddings, encoder and final layer norm.
#[derive(Debug)]
pub struct Dinov2Backbone<B: Backend> {
    config: Dinov2Config,
    patch_embed: Conv2d<B>,
    cls_token: Tensor<B, 3>,
    /// Position embeddings `[1 + g * g, hidden]` on the host, for the bicubic interpolation.
    positions: Vec<f32>,
    position_grid: usize,
    layers: Vec<Layer<B>>,
    layernorm: LayerNorm<B>,
    stages: Vec<usize>,
}

impl<B: Backend> Dinov2Backbone<B> {
    /// Builds the backbone from the tensors under `w` (`embeddings.*`, `encoder.layer.*`,
    /// `layernorm.*`; e.g. `backbone` in a Depth Anything checkpoint).
    pub fn load(w: &Weights, config: &Dinov2Config, device: &B::Device) -> Result<Self> {
        config.validate()?;
        let d = config.hidden_size;
        let p = config.patch()?;
        let g = config.position_grid()?;
        let e = w.pp("embeddings");
        let patch_embed = e.pp("patch_embeddings.projection").conv2d(
            config.num_channels,
            d,
            p,
            p,
            (0, 0, 0, 0),
            device,
        )?;
        let cls_token = e.tensor("cls_token", [1, 1, d], device)?;
        let positions = e.read_f32("position_embeddings", &[1, 1 + g * g, d])?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::load(&w.pp(format!("encoder.layer.{i}")), config, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Dinov2Backbone {
            config: config.clone(),
            patch_embed,
            cls_token,
            positions,
            position_grid: g,
            layers,
            layernorm: w
                .pp("layernorm")
                .layer_norm(d, config.layer_norm_eps, device)?,
            stages: config.stage_indices()?,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Dinov2Config {
        &self.config
    }

    /// The position embeddings for a `grid_h x grid_w` patch grid, `[1, 1 + h * w, hidden]`:
    /// the stored ones when the pixel input is square and its grid equals the stored grid
    /// (transformers' shortcut), else the patch part resized with torch's bicubic
    /// (`align_corners=False`, A = -0.75, edge-clamped taps) and the CLS entry kept.
    pub fn position_embeddings(
        &self,
        grid_h: usize,
        grid_w: usize,
        square_input: bool,
        device: &B::Device,
    ) -> Tensor<B, 3> {
        let d = self.config.hidden_size;
        let g = self.position_grid;
        if square_input && grid_h * grid_w == g * g {
            return Tensor::from_data(
                TensorData::new(self.positions.clone(), [1, 1 + g * g, d]),
                device,
            );
        }
        // Channel planes [d, g, g] from the token-major layout [g * g, d].
        let mut planes = vec![0f32; d * g * g];
        for t in 0..g * g {
            for c in 0..d {
                planes[c * g * g + t] = self.positions[(1 + t) * d + c];
            }
        }
        let resized = bicubic_resize(&planes, d, g, g, grid_h, grid_w);
        let mut out = vec![0f32; (1 + grid_h * grid_w) * d];
        out[..d].copy_from_slice(&self.positions[..d]);
        for t in 0..grid_h * grid_w {
            for c in 0..d {
                out[(1 + t) * d + c] = resized[c * grid_h * grid_w + t];
            }
        }
        Tensor::from_data(TensorData::new(out, [1, 1 + grid_h * grid_w, d]), device)
    }

    /// Runs the backbone on `pixel_values` `[batch, channels, height, width]` (at least one
    /// patch each way; a remainder smaller than a patch is ignored, as by torch's conv).
    pub fn forward(&self, pixel_values: Tensor<B, 4>) -> Result<Dinov2Output<B>> {
        let [b, ch, h, w] = pixel_values.dims();
        let p = self.config.patch()?;
        if ch != self.config.num_channels || h < p || w < p {
            return Err(SceneError::InvalidInput(format!(
                "pixel_values of shape [{b}, {ch}, {h}, {w}]: need {} channels and at least \
                 {p}x{p} pixels",
                self.config.num_channels
            )));
        }
        let device = pixel_values.device();
        let d = self.config.hidden_size;
        let x = self.patch_embed.forward(pixel_values);
        let [_, _, gh, gw] = x.dims();
        let x = contiguous(x.reshape([b, d, gh * gw]).swap_dims(1, 2));
        let cls = self.cls_token.clone().expand([b, 1, d]);
        let pos = self.position_embeddings(gh, gw, h == w, &device);
        let mut x = Tensor::cat(vec![cls, x], 1) + pos;
        let mut hidden = Vec::with_capacity(self.layers.len() + 1);
        let last_needed = self.stages.iter().copied().max().unwrap_or(0);
        hidden.push(x.clone());
        for layer in self.layers.iter().take(last_needed) {
            x = layer.forward(x);
            hidden.push(x.clone());
        }
        let feature_maps = self
            .stages
            .iter()
            .map(|&i| {
                let t = hidden[i].clone();
                if self.config.apply_layernorm {
                    self.layernorm.forward(t)
                } else {
                    t
                }
            })
            .collect();
        Ok(Dinov2Output {
            feature_maps,
            grid: (gh, gw),
        })
    }

    /// A token map `[batch, 1 + h * w, hidden]` as `[batch, hidden, h, w]` without the CLS
    /// token (what `reshape_hidden_states` does).
    pub fn spatial(tokens: Tensor<B, 3>, grid: (usize, usize)) -> Tensor<B, 4> {
        let [b, s, d] = tokens.dims();
        tokens
            .slice([0..b, 1..s, 0..d])
            .reshape([b, grid.0, grid.1, d])
            .permute([0, 3, 1, 2])
    }
}

/// Cubic convolution weights of torch's bicubic (A = -0.75) for the fraction `t`.
fn cubic_coefficients(t: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// Per output index: the four (edge-clamped) source indices and their weights, as torch's
/// `upsample_bicubic2d` computes them for `align_corners=False` with an output size given
/// (scale `in / out`, source `scale * (o + 0.5) - 0.5`, f32 arithmetic).
fn bicubic_taps(input: usize, output: usize) -> Vec<([usize; 4], [f32; 4])> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|o| {
            let real = scale * (o as f32 + 0.5) - 0.5;
            let floor = real.floor();
            let t = real - floor;
            let i0 = floor as i64;
            let idx = [i0 - 1, i0, i0 + 1, i0 + 2].map(|i| i.clamp(0, input as i64 - 1) as usize);
            (idx, cubic_coefficients(t))
        })
        .collect()
}

/// Resizes `channels` planes of `in_h x in_w` (channel-major) to `out_h x out_w` exactly as
/// torch's `interpolate(mode="bicubic", align_corners=False, size=...)`: each output is the
/// weighted sum over four rows of the weighted sums over four columns, in f32.
pub fn bicubic_resize(
    data: &[f32],
    channels: usize,
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
) -> Vec<f32> {
    let ys = bicubic_taps(in_h, out_h);
    let xs = bicubic_taps(in_w, out_w);
    let mut out = vec![0f32; channels * out_h * out_w];
    for c in 0..channels {
        let plane = &data[c * in_h * in_w..(c + 1) * in_h * in_w];
        let dst = &mut out[c * out_h * out_w..(c + 1) * out_h * out_w];
        for (oy, (yi, yw)) in ys.iter().enumerate() {
            for (ox, (xi, xw)) in xs.iter().enumerate() {
                let mut acc = 0f32;
                for k in 0..4 {
                    let row = &plane[yi[k] * in_w..];
                    let r = row[xi[0]] * xw[0]
                        + row[xi[1]] * xw[1]
                        + row[xi[2]] * xw[2]
                        + row[xi[3]] * xw[3];
                    acc += r * yw[k];
                }
                dst[oy * out_w + ox] = acc;
            }
        }
    }
    out
}
