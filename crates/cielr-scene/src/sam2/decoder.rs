//! SAM 2's prompt encoder (`Sam2PromptEncoder`: points, boxes, mask prompts) and mask decoder
//! (`Sam2MaskDecoder`: two-way transformer, high-resolution skip connections from
//! `conv_s0`/`conv_s1`, object-score head, dynamic multimask selection via stability).
//!
//! The two-way transformer and the upscaling/hypernetwork mask head are SAM 1's
//! ([`crate::sam::mask_decoder`], with SAM 2's names and epsilons given there by a
//! `TwoWaySpec`). The rest differs from SAM 1 (the extra object-score token, the skip
//! connections, the sigmoid IoU head, the padding point added to boxes), so it is here.

use burn::nn::conv::Conv2d;
use burn::nn::LayerNorm;
use burn::tensor::activation::sigmoid;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use cielr_core::activation::gelu;
use cielr_core::weights::Weights;

use super::config::{Sam2MaskDecoderConfig, Sam2PromptEncoderConfig};
use crate::error::{Result, SceneError};
use crate::sam::image_encoder::layer_norm_channels_first;
use crate::sam::mask_decoder::{FeedForward, MaskHead, TwoWaySpec, TwoWayTransformer};

/// The point labels are SAM's: padding (ignored) and "not a point".
pub use crate::sam::prompt_encoder::{LABEL_NOT_A_POINT, LABEL_PAD};

/// `Sam2PositionalEmbedding`: random Fourier features of `[.., 2]` coordinates in `[0, 1]`.
#[derive(Debug)]
pub struct FourierEmbedding<B: Backend> {
    gaussian: Tensor<B, 2>,
}

impl<B: Backend> FourierEmbedding<B> {
    /// Loads `positional_embedding` `[2, d / 2]` under `w`.
    pub fn load(w: &Weights<'_>, d: usize, device: &B::Device) -> Result<Self> {
        Ok(Self {
            gaussian: w.tensor("positional_embedding", [2, d / 2], device)?,
        })
    }

    /// `[N, P, 2]` in `[0, 1]` -> `[N, P, d]`.
    pub fn forward(&self, coords: Tensor<B, 3>) -> Tensor<B, 3> {
        let [n, p, _] = coords.dims();
        let c = (coords * 2.0 - 1.0).reshape([n * p, 2]);
        let c = c.matmul(self.gaussian.clone()) * (2.0 * std::f64::consts::PI);
        let [_, h] = c.dims();
        Tensor::cat(vec![c.clone().sin(), c.cos()], 1).reshape([n, p, 2 * h])
    }

    /// The image-wide embedding of a `g x g` grid of cell centres, `[d, g, g]`.
    pub fn image_wide(&self, g: usize, device: &B::Device) -> Tensor<B, 3> {
        let mut v = Vec::with_capacity(g * g * 2);
        for y in 0..g {
            for x in 0..g {
                v.push((x as f32 + 0.5) / g as f32);
                v.push((y as f32 + 0.5) / g as f32);
            }
        }
        let pe = self.forward(Tensor::from_data(TensorData::new(v, [1, g * g, 2]), device));
        let d = pe.dims()[2];
        pe.reshape([g, g, d]).permute([2, 0, 1])
    }
}

/// Prompts already mapped into the model's input frame, for `n` prompts: SAM's
/// [`EncodedPromptInput`](crate::sam::prompt_encoder::EncodedPromptInput).
pub type Sam2EncodedPrompts = crate::sam::prompt_encoder::EncodedPromptInput;

/// `Sam2MaskEmbedding` + the rest of `Sam2PromptEncoder`.
#[derive(Debug)]
pub struct Sam2PromptEncoder<B: Backend> {
    pe: FourierEmbedding<B>,
    conv1: Conv2d<B>,
    ln1: LayerNorm<B>,
    conv2: Conv2d<B>,
    ln2: LayerNorm<B>,
    conv3: Conv2d<B>,
    no_mask_embed: Tensor<B, 1>,
    point_embed: Tensor<B, 2>,
    not_a_point_embed: Tensor<B, 1>,
    input_size: f64,
    grid: usize,
    d: usize,
}

impl<B: Backend> Sam2PromptEncoder<B> {
    /// Loads `prompt_encoder.*`.
    pub fn load(w: &Weights<'_>, c: &Sam2PromptEncoderConfig, device: &B::Device) -> Result<Self> {
        let d = c.hidden_size;
        let mc = c.mask_input_channels;
        let eps = c.layer_norm_eps;
        let m = w.pp("mask_embed");
        let (is, _) = c.image_size.pair("image_size")?;
        let (ps, _) = c.patch_size.pair("patch_size")?;
        Ok(Self {
            pe: FourierEmbedding::load(&w.pp("shared_embedding"), d, device)?,
            conv1: m
                .pp("conv1")
                .conv2d(1, mc / 4, 2, 2, (0, 0, 0, 0), device)?,
            ln1: m.pp("layer_norm1").layer_norm(mc / 4, eps, device)?,
            conv2: m
                .pp("conv2")
                .conv2d(mc / 4, mc, 2, 2, (0, 0, 0, 0), device)?,
            ln2: m.pp("layer_norm2").layer_norm(mc, eps, device)?,
            conv3: m.pp("conv3").conv2d(mc, d, 1, 1, (0, 0, 0, 0), device)?,
            no_mask_embed: w
                .tensor::<B, 2>("no_mask_embed.weight", [1, d], device)?
                .reshape([d]),
            point_embed: w.tensor("point_embed.weight", [c.num_point_embeddings, d], device)?,
            not_a_point_embed: w
                .tensor::<B, 2>("not_a_point_embed.weight", [1, d], device)?
                .reshape([d]),
            input_size: is as f64,
            grid: is / ps,
            d,
        })
    }

    /// Sparse `[n, T, d]` and dense `[1 or n, d, g, g]` embeddings. `mask_input`: low-resolution
    /// logits `[1 or n, 1, 4g, 4g]`.
    pub fn forward(
        &self,
        input: &Sam2EncodedPrompts,
        mask_input: Option<Tensor<B, 4>>,
        device: &B::Device,
    ) -> Result<(Tensor<B, 3>, Tensor<B, 4>)> {
        let n = input.n;
        let d = self.d;
        let s = self.input_size;
        let mut parts = Vec::new();
        let pad_point = input.boxes.is_empty();
        let ppp = input.points_per_prompt;
        let rows = self.point_embed.dims()[0];
        if ppp > 0 || pad_point {
            let tp = ppp + usize::from(pad_point);
            let mut coords = Vec::with_capacity(n * tp * 2);
            let mut labels = Vec::with_capacity(n * tp);
            for i in 0..n {
                for j in 0..ppp {
                    let p = input.points[i * ppp + j];
                    coords.push(((p[0] + 0.5) / s) as f32);
                    coords.push(((p[1] + 0.5) / s) as f32);
                    labels.push(input.labels[i * ppp + j]);
                }
                if pad_point {
                    coords.push(0.0);
                    coords.push(0.0);
                    labels.push(LABEL_NOT_A_POINT);
                }
            }
            if let Some(&l) = labels.iter().find(|&&l| l >= rows as i64) {
                return Err(SceneError::InvalidInput(format!(
                    "point label {l} has no embedding ({rows} rows)"
                )));
            }
            let pts = self.pe.forward(Tensor::from_data(
                TensorData::new(coords, [n, tp, 2]),
                device,
            ));
            let sel = |f: &dyn Fn(i64) -> bool| {
                let v: Vec<f32> = labels.iter().map(|&l| f32::from(u8::from(f(l)))).collect();
                Tensor::<B, 3>::from_data(TensorData::new(v, [n, tp, 1]), device)
            };
            let keep = sel(&|l| l != LABEL_PAD && l != LABEL_NOT_A_POINT);
            let is_not = sel(&|l| l == LABEL_NOT_A_POINT);
            let mut emb = pts * keep + is_not * self.not_a_point_embed.clone().reshape([1, 1, d]);
            for r in 0..rows {
                let row = self.point_embed.clone().narrow(0, r, 1).reshape([1, 1, d]);
                emb = emb + sel(&|l| l == r as i64) * row;
            }
            parts.push(emb);
        }
        if !input.boxes.is_empty() {
            let mut coords = Vec::with_capacity(n * 6);
            for b in &input.boxes {
                coords.extend_from_slice(&[
                    ((b[0] + 0.5) / s) as f32,
                    ((b[1] + 0.5) / s) as f32,
                    ((b[2] + 0.5) / s) as f32,
                    ((b[3] + 0.5) / s) as f32,
                ]);
            }
            let corners = self.pe.forward(Tensor::from_data(
                TensorData::new(coords, [n, 2, 2]),
                device,
            ));
            let add = self.point_embed.clone().narrow(0, 2, 2).reshape([1, 2, d]);
            let pad = self
                .not_a_point_embed
                .clone()
                .reshape([1, 1, d])
                .repeat_dim(0, n);
            parts.push(Tensor::cat(vec![corners + add, pad], 1));
        }
        let sparse = Tensor::cat(parts, 1);
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
                let x = gelu(layer_norm_channels_first(&self.ln1, self.conv1.forward(m)));
                let x = gelu(layer_norm_channels_first(&self.ln2, self.conv2.forward(x)));
                self.conv3.forward(x)
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

/// What the decoder predicts for `n` prompts.
#[derive(Debug, Clone)]
pub struct Sam2DecoderOutput<B: Backend> {
    /// Low-resolution mask logits `[n, m, 4g, 4g]`.
    pub masks: Tensor<B, 4>,
    /// Predicted IoU `[n, m]`.
    pub iou: Tensor<B, 2>,
    /// Object-score logits `[n, 1]`.
    pub object_score_logits: Tensor<B, 2>,
}

/// `Sam2MaskDecoder`.
#[derive(Debug)]
pub struct Sam2MaskDecoder<B: Backend> {
    output_tokens: Tensor<B, 2>,
    transformer: TwoWayTransformer<B>,
    head: MaskHead<B>,
    iou_head: FeedForward<B>,
    obj_head: FeedForward<B>,
    /// `conv_s0` (applied to FPN level 0 when the image is embedded).
    pub(crate) conv_s0: Conv2d<B>,
    /// `conv_s1` (applied to FPN level 1).
    pub(crate) conv_s1: Conv2d<B>,
    num_mask_tokens: usize,
    dynamic: bool,
    delta: f32,
    thresh: f32,
}

impl<B: Backend> Sam2MaskDecoder<B> {
    /// Loads `mask_decoder.*`.
    pub fn load(w: &Weights<'_>, c: &Sam2MaskDecoderConfig, device: &B::Device) -> Result<Self> {
        let d = c.hidden_size;
        let m = c.num_multimask_outputs + 1;
        let t = w.pp("transformer");
        let output_tokens = Tensor::cat(
            vec![
                w.tensor::<B, 2>("obj_score_token.weight", [1, d], device)?,
                w.tensor::<B, 2>("iou_token.weight", [1, d], device)?,
                w.tensor::<B, 2>("mask_tokens.weight", [m, d], device)?,
            ],
            0,
        );
        let spec = TwoWaySpec {
            hidden_size: d,
            num_heads: c.num_attention_heads,
            num_layers: c.num_hidden_layers,
            downsample_rate: c.attention_downsample_rate,
            mlp_dim: c.mlp_dim,
            // `nn.LayerNorm(hidden_size)`: torch's default epsilon.
            layer_norm_eps: 1e-5,
            out_proj: "o_proj",
            // `Sam2FeedForward(.., num_layers=num_hidden_layers)`.
            feed_forward_layers: Some(c.num_hidden_layers),
        };
        Ok(Self {
            output_tokens,
            transformer: TwoWayTransformer::load(&t, &spec, device)?,
            head: MaskHead::load(w, d, m, device)?,
            iou_head: FeedForward::load(
                &w.pp("iou_prediction_head"),
                d,
                c.iou_head_hidden_dim,
                m,
                c.iou_head_depth,
                device,
            )?,
            obj_head: FeedForward::load(&w.pp("pred_obj_score_head"), d, d, 1, 3, device)?,
            conv_s0: w
                .pp("conv_s0")
                .conv2d(d, d / 8, 1, 1, (0, 0, 0, 0), device)?,
            conv_s1: w
                .pp("conv_s1")
                .conv2d(d, d / 4, 1, 1, (0, 0, 0, 0), device)?,
            num_mask_tokens: m,
            dynamic: c.dynamic_multimask_via_stability,
            delta: c.dynamic_multimask_stability_delta as f32,
            thresh: c.dynamic_multimask_stability_thresh as f32,
        })
    }

    /// Decodes `n` prompts against one image. `embedding` `[d, g, g]` (with the
    /// no-memory embedding added), `image_pe` `[d, g, g]`, `feat_s0` `[d/8, 4g, 4g]`,
    /// `feat_s1` `[d/4, 2g, 2g]`, `sparse` `[n, T, d]`, `dense` `[1 or n, d, g, g]`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        embedding: &Tensor<B, 3>,
        image_pe: &Tensor<B, 3>,
        feat_s0: &Tensor<B, 3>,
        feat_s1: &Tensor<B, 3>,
        sparse: Tensor<B, 3>,
        dense: Tensor<B, 4>,
        multimask: bool,
    ) -> Result<Sam2DecoderOutput<B>> {
        let [c, g, _] = embedding.dims();
        let n = sparse.dims()[0];
        let m = self.num_mask_tokens;
        let out_tokens = self
            .output_tokens
            .clone()
            .unsqueeze_dim::<3>(0)
            .repeat_dim(0, n);
        let tokens = Tensor::cat(vec![out_tokens, sparse], 1);
        let (queries, keys) = self.transformer.forward(tokens, embedding, dense, image_pe);
        let obj_token = queries.clone().narrow(1, 0, 1).reshape([n, c]);
        let iou_token = queries.clone().narrow(1, 1, 1).reshape([n, c]);
        let mask_tokens = queries.narrow(1, 2, m);
        let masks = self
            .head
            .forward(keys, g, mask_tokens, Some((feat_s0, feat_s1)));
        let iou = sigmoid(self.iou_head.forward(iou_token));
        let object_score_logits = self.obj_head.forward(obj_token);
        let (masks, iou) = if multimask {
            (masks.narrow(1, 1, m - 1), iou.narrow(1, 1, m - 1))
        } else if self.dynamic {
            self.dynamic_multimask(masks, iou)?
        } else {
            (masks.narrow(1, 0, 1), iou.narrow(1, 0, 1))
        };
        Ok(Sam2DecoderOutput {
            masks,
            iou,
            object_score_logits,
        })
    }

    /// `_dynamic_multimask_via_stability`: keep the single-mask output where its stability
    /// score reaches the threshold, else the multimask output with the highest IoU.
    fn dynamic_multimask(
        &self,
        masks: Tensor<B, 4>,
        iou: Tensor<B, 2>,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 2>)> {
        let [n, m, h, w] = masks.dims();
        let device = masks.device();
        let md = cielr_core::backend::read_finite_f32(masks, "SAM 2's mask logits")?;
        let io = cielr_core::backend::read_finite_f32(iou, "SAM 2's IoU predictions")?;
        let hw = h * w;
        let mut out_m = Vec::with_capacity(n * hw);
        let mut out_i = Vec::with_capacity(n);
        for p in 0..n {
            let single = &md[p * m * hw..p * m * hw + hw];
            let ai = single.iter().filter(|&&v| v > self.delta).count();
            let au = single.iter().filter(|&&v| v > -self.delta).count();
            let stab = if au > 0 { ai as f32 / au as f32 } else { 1.0 };
            let pick = if stab >= self.thresh {
                0
            } else {
                // torch.argmax: the first maximum.
                let mut best = 1;
                for j in 2..m {
                    if io[p * m + j] > io[p * m + best] {
                        best = j;
                    }
                }
                best
            };
            out_m.extend_from_slice(&md[(p * m + pick) * hw..(p * m + pick + 1) * hw]);
            out_i.push(io[p * m + pick]);
        }
        Ok((
            Tensor::from_data(TensorData::new(out_m, [n, 1, h, w]), &device),
            Tensor::from_data(TensorData::new(out_i, [n, 1]), &device),
        ))
    }
}
