//! `SamPromptEncoder` for points, boxes and mask prompts (low-resolution logits, as the
//! decoder outputs them), and the shared random-Fourier positional embedding
//! (`SamPositionalEmbedding`).

use burn::nn::conv::Conv2d;
use burn::nn::LayerNorm;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use cielr_core::activation::gelu;
use cielr_core::weights::Weights;

use super::config::{SamConfig, SamPromptEncoderConfig};
use super::image_encoder::layer_norm_channels_first;
use crate::error::{Result, SceneError};

/// Label of a point that is padding and is ignored (transformers' `-10`).
pub const LABEL_PAD: i64 = -10;
/// Label of a "not a point" point (the official `-1`, also used for the implicit padding
/// point appended when there is no box).
pub const LABEL_NOT_A_POINT: i64 = -1;

/// `SamPositionalEmbedding`: `[.., 2]` coordinates in `[0, 1]` -> `[.., 2 * num_pos_feats]`.
#[derive(Debug)]
pub struct SamPositionalEmbedding<B: Backend> {
    gaussian: Tensor<B, 2>,
}

impl<B: Backend> SamPositionalEmbedding<B> {
    /// Loads `shared_image_embedding.positional_embedding` (or the tied copy under
    /// `prompt_encoder.shared_embedding`).
    pub fn load(root: &Weights<'_>, num_pos_feats: usize, device: &B::Device) -> Result<Self> {
        let name = if root.contains("shared_image_embedding.positional_embedding")
            || !root.contains("prompt_encoder.shared_embedding.positional_embedding")
        {
            "shared_image_embedding.positional_embedding"
        } else {
            "prompt_encoder.shared_embedding.positional_embedding"
        };
        Ok(Self {
            gaussian: root.tensor(name, [2, num_pos_feats], device)?,
        })
    }

    /// Encodes `[N, P, 2]` normalised coordinates (x, y) in `[0, 1]`.
    pub fn forward(&self, coords: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_centered(coords * 2.0 - 1.0)
    }

    /// Encodes `[N, P, 2]` coordinates already mapped to `[-1, 1]` (`2 c - 1`).
    pub fn forward_centered(&self, centered: Tensor<B, 3>) -> Tensor<B, 3> {
        let [n, p, _] = centered.dims();
        let f = self.gaussian.dims()[1];
        let c = centered.reshape([n * p, 2]).matmul(self.gaussian.clone())
            * (2.0 * std::f64::consts::PI);
        Tensor::cat(vec![c.clone().sin(), c.cos()], 1).reshape([n, p, 2 * f])
    }

    /// The dense positional embedding of the image-embedding grid, `[C, size, size]`.
    pub fn image_wide(&self, size: usize, device: &B::Device) -> Tensor<B, 3> {
        let mut coords = Vec::with_capacity(size * size * 2);
        for y in 0..size {
            for x in 0..size {
                coords.push((x as f32 + 1.0 - 0.5) / size as f32);
                coords.push((y as f32 + 1.0 - 0.5) / size as f32);
            }
        }
        let c = Tensor::<B, 3>::from_data(TensorData::new(coords, [1, size * size, 2]), device);
        let pe = self.forward(c);
        let ch = pe.dims()[2];
        pe.reshape([size, size, ch]).permute([2, 0, 1])
    }
}

/// `SamMaskEmbedding`: a mask prompt `[N, 1, 4g, 4g]` -> dense embedding `[N, C, g, g]`.
#[derive(Debug)]
struct SamMaskEmbedding<B: Backend> {
    conv1: Conv2d<B>,
    layer_norm1: LayerNorm<B>,
    conv2: Conv2d<B>,
    layer_norm2: LayerNorm<B>,
    conv3: Conv2d<B>,
}

impl<B: Backend> SamMaskEmbedding<B> {
    fn load(w: &Weights<'_>, p: &SamPromptEncoderConfig, device: &B::Device) -> Result<Self> {
        let c = p.mask_input_channels;
        let eps = p.layer_norm_eps;
        Ok(Self {
            conv1: w.pp("conv1").conv2d(1, c / 4, 2, 2, (0, 0, 0, 0), device)?,
            layer_norm1: w.pp("layer_norm1").layer_norm(c / 4, eps, device)?,
            conv2: w.pp("conv2").conv2d(c / 4, c, 2, 2, (0, 0, 0, 0), device)?,
            layer_norm2: w.pp("layer_norm2").layer_norm(c, eps, device)?,
            conv3: w
                .pp("conv3")
                .conv2d(c, p.hidden_size, 1, 1, (0, 0, 0, 0), device)?,
        })
    }

    fn forward(&self, masks: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = gelu(layer_norm_channels_first(
            &self.layer_norm1,
            self.conv1.forward(masks),
        ));
        let x = gelu(layer_norm_channels_first(
            &self.layer_norm2,
            self.conv2.forward(x),
        ));
        self.conv3.forward(x)
    }
}

/// The prompt encoder's learned embeddings.
#[derive(Debug)]
pub struct SamPromptEncoder<B: Backend> {
    mask_embed: SamMaskEmbedding<B>,
    point_embed: Vec<Tensor<B, 1>>,
    not_a_point_embed: Tensor<B, 1>,
    no_mask_embed: Tensor<B, 1>,
    hidden: usize,
    image_size: usize,
    grid: usize,
}

/// Sparse prompts in the model's input frame (the resized, padded image's pixels), for a
/// batch of `n` prompts: every prompt has the same number of points and either all or none
/// have a box.
#[derive(Debug, Clone, Default)]
pub struct EncodedPromptInput {
    /// `n * points` (x, y) pairs.
    pub points: Vec<[f64; 2]>,
    /// `n * points` labels (1 foreground, 0 background, -1 not a point, -10 padding).
    pub labels: Vec<i64>,
    /// Points per prompt.
    pub points_per_prompt: usize,
    /// `n` boxes (x0, y0, x1, y1), or empty.
    pub boxes: Vec<[f64; 4]>,
    /// Number of prompts.
    pub n: usize,
}

impl<B: Backend> SamPromptEncoder<B> {
    /// Loads `prompt_encoder.*`.
    pub fn load(w: &Weights<'_>, c: &SamConfig, device: &B::Device) -> Result<Self> {
        let p: &SamPromptEncoderConfig = &c.prompt_encoder_config;
        let d = p.hidden_size;
        let point_embed = (0..p.num_point_embeddings)
            .map(|i| {
                w.pp(format!("point_embed.{i}"))
                    .tensor::<B, 2>("weight", [1, d], device)
                    .map(|t| t.reshape([d]))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if p.hidden_act != "gelu"
            || p.mask_input_channels < 4
            || !p.mask_input_channels.is_multiple_of(4)
        {
            return Err(SceneError::config(
                "prompt_encoder_config",
                format!(
                    "hidden_act `{}` / mask_input_channels {} unsupported (gelu, a multiple of 4)",
                    p.hidden_act, p.mask_input_channels
                ),
            ));
        }
        Ok(Self {
            mask_embed: SamMaskEmbedding::load(&w.pp("mask_embed"), p, device)?,
            point_embed,
            not_a_point_embed: w
                .pp("not_a_point_embed")
                .tensor::<B, 2>("weight", [1, d], device)?
                .reshape([d]),
            no_mask_embed: w
                .pp("no_mask_embed")
                .tensor::<B, 2>("weight", [1, d], device)?
                .reshape([d]),
            hidden: d,
            image_size: p.image_size,
            grid: p.image_embedding_size(),
        })
    }

    /// Sparse embeddings `[n, tokens, C]` (points, then the box corners) and the dense
    /// embedding `[1 or n, C, grid, grid]`: `no_mask_embed`, or the embedding of `mask_input`
    /// (`[1 or n, 1, 4 grid, 4 grid]` low-resolution logits).
    pub fn forward(
        &self,
        pe: &SamPositionalEmbedding<B>,
        input: &EncodedPromptInput,
        mask_input: Option<Tensor<B, 4>>,
        device: &B::Device,
    ) -> Result<(Option<Tensor<B, 3>>, Tensor<B, 4>)> {
        let n = input.n;
        let d = self.hidden;
        let s = self.image_size as f64;
        if input.points.len() != n * input.points_per_prompt
            || input.labels.len() != input.points.len()
        {
            return Err(SceneError::InvalidInput(format!(
                "{} points / {} labels for {n} prompts of {} points",
                input.points.len(),
                input.labels.len(),
                input.points_per_prompt
            )));
        }
        if !input.boxes.is_empty() && input.boxes.len() != n {
            return Err(SceneError::InvalidInput(format!(
                "{} boxes for {n} prompts",
                input.boxes.len()
            )));
        }
        // Shift to the pixel centre, normalise and map to [-1, 1] in f64, as transformers
        // does with the processor's float64 coordinates, then round to f32.
        let centre = |v: f64| (2.0 * ((v + 0.5) / s) - 1.0) as f32;
        let mut parts = Vec::new();
        if input.points_per_prompt > 0 {
            let pad = input.boxes.is_empty();
            let ppp = input.points_per_prompt + usize::from(pad);
            let mut coords = Vec::with_capacity(n * ppp * 2);
            let mut labels = Vec::with_capacity(n * ppp);
            for i in 0..n {
                for j in 0..input.points_per_prompt {
                    let [x, y] = input.points[i * input.points_per_prompt + j];
                    coords.push((centre(x), centre(y)));
                    labels.push(input.labels[i * input.points_per_prompt + j]);
                }
                if pad {
                    coords.push((-1.0, -1.0));
                    labels.push(LABEL_NOT_A_POINT);
                }
            }
            let flat: Vec<f32> = coords.iter().flat_map(|&(x, y)| [x, y]).collect();
            let pts = pe.forward_centered(Tensor::from_data(
                TensorData::new(flat, [n, ppp, 2]),
                device,
            ));
            let mask = |f: &dyn Fn(i64) -> bool| {
                let v: Vec<f32> = labels
                    .iter()
                    .map(|&l| if f(l) { 1.0 } else { 0.0 })
                    .collect();
                Tensor::<B, 3>::from_data(TensorData::new(v, [n, ppp, 1]), device)
            };
            let is_not = mask(&|l| l == LABEL_NOT_A_POINT);
            let keep = mask(&|l| l != LABEL_PAD && l != LABEL_NOT_A_POINT);
            let is_neg = mask(&|l| l == 0);
            let is_pos = mask(&|l| l == 1);
            let row = |t: &Tensor<B, 1>| t.clone().reshape([1, 1, d]);
            let emb = pts * keep
                + is_not * row(&self.not_a_point_embed)
                + is_neg * row(&self.point_embed[0])
                + is_pos * row(&self.point_embed[1]);
            parts.push(emb);
        }
        if !input.boxes.is_empty() {
            let mut flat = Vec::with_capacity(n * 4);
            for b in &input.boxes {
                for v in b {
                    flat.push(centre(*v));
                }
            }
            let corners =
                pe.forward_centered(Tensor::from_data(TensorData::new(flat, [n, 2, 2]), device));
            let add = Tensor::cat(
                vec![
                    self.point_embed[2].clone().reshape([1, 1, d]),
                    self.point_embed[3].clone().reshape([1, 1, d]),
                ],
                1,
            );
            parts.push(corners + add);
        }
        let sparse = if parts.is_empty() {
            None
        } else {
            Some(Tensor::cat(parts, 1))
        };
        let g = self.grid;
        let dense = match mask_input {
            Some(m) => {
                let [b, ch, h, w] = m.dims();
                if ch != 1 || h != 4 * g || w != 4 * g || (b != 1 && b != n) {
                    return Err(SceneError::InvalidInput(format!(
                        "mask input is {:?}; expected [1 or {n}, 1, {s4}, {s4}]",
                        [b, ch, h, w],
                        s4 = 4 * g
                    )));
                }
                self.mask_embed.forward(m)
            }
            None => self
                .no_mask_embed
                .clone()
                .reshape([1, d, 1, 1])
                .repeat_dim(2, g)
                .repeat_dim(3, g),
        };
        Ok((sparse, dense))
    }
}
