//! `SamMaskDecoder`: the two-way transformer between prompt tokens and the image embedding,
//! the upscaling of the image embedding, the hypernetwork MLPs that turn mask tokens into
//! mask weights, and the IoU prediction head.

use burn::nn::{LayerNorm, Linear};
use burn::tensor::activation::{gelu, relu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::module::conv_transpose2d;
use burn::tensor::ops::ConvTransposeOptions;
use burn::tensor::Tensor;
use cielr_core::weights::Weights;

use super::config::SamMaskDecoderConfig;
use super::image_encoder::layer_norm_channels_first;
use crate::error::Result;

/// `SamAttention`: multi-head attention whose inner width is `hidden / downsample_rate`.
#[derive(Debug)]
struct SamAttention<B: Backend> {
    q_proj: Linear<B>,
    k_proj: Linear<B>,
    v_proj: Linear<B>,
    out_proj: Linear<B>,
    heads: usize,
    scale: f64,
}

impl<B: Backend> SamAttention<B> {
    fn load(
        w: &Weights<'_>,
        c: &SamMaskDecoderConfig,
        downsample: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let d = c.hidden_size;
        let inner = d / downsample;
        Ok(Self {
            q_proj: w.pp("q_proj").linear(d, inner, true, device)?,
            k_proj: w.pp("k_proj").linear(d, inner, true, device)?,
            v_proj: w.pp("v_proj").linear(d, inner, true, device)?,
            out_proj: w.pp("out_proj").linear(inner, d, true, device)?,
            heads: c.num_attention_heads,
            scale: ((inner / c.num_attention_heads) as f64).powf(-0.5),
        })
    }

    /// `[N, Tq, C]`, `[N, Tk, C]`, `[N, Tk, C]` -> `[N, Tq, C]`.
    fn forward(&self, q: Tensor<B, 3>, k: Tensor<B, 3>, v: Tensor<B, 3>) -> Tensor<B, 3> {
        let split = |x: Tensor<B, 3>| {
            let [n, t, c] = x.dims();
            x.reshape([n, t, self.heads, c / self.heads])
                .swap_dims(1, 2)
        };
        let q = split(self.q_proj.forward(q));
        let k = split(self.k_proj.forward(k));
        let v = split(self.v_proj.forward(v));
        let probs = softmax(q.matmul(k.swap_dims(2, 3)) * self.scale, 3);
        let out = probs.matmul(v).swap_dims(1, 2);
        let [n, t, h, hd] = out.dims();
        self.out_proj.forward(out.reshape([n, t, h * hd]))
    }
}

/// `SamTwoWayAttentionBlock`.
#[derive(Debug)]
struct TwoWayBlock<B: Backend> {
    self_attn: SamAttention<B>,
    layer_norm1: LayerNorm<B>,
    cross_attn_token_to_image: SamAttention<B>,
    layer_norm2: LayerNorm<B>,
    lin1: Linear<B>,
    lin2: Linear<B>,
    layer_norm3: LayerNorm<B>,
    layer_norm4: LayerNorm<B>,
    cross_attn_image_to_token: SamAttention<B>,
    skip_first_layer_pe: bool,
}

impl<B: Backend> TwoWayBlock<B> {
    fn load(
        w: &Weights<'_>,
        c: &SamMaskDecoderConfig,
        skip_pe: bool,
        device: &B::Device,
    ) -> Result<Self> {
        let d = c.hidden_size;
        let eps = c.layer_norm_eps;
        let r = c.attention_downsample_rate;
        Ok(Self {
            self_attn: SamAttention::load(&w.pp("self_attn"), c, 1, device)?,
            layer_norm1: w.pp("layer_norm1").layer_norm(d, eps, device)?,
            cross_attn_token_to_image: SamAttention::load(
                &w.pp("cross_attn_token_to_image"),
                c,
                r,
                device,
            )?,
            layer_norm2: w.pp("layer_norm2").layer_norm(d, eps, device)?,
            lin1: w.pp("mlp.lin1").linear(d, c.mlp_dim, true, device)?,
            lin2: w.pp("mlp.lin2").linear(c.mlp_dim, d, true, device)?,
            layer_norm3: w.pp("layer_norm3").layer_norm(d, eps, device)?,
            layer_norm4: w.pp("layer_norm4").layer_norm(d, eps, device)?,
            cross_attn_image_to_token: SamAttention::load(
                &w.pp("cross_attn_image_to_token"),
                c,
                r,
                device,
            )?,
            skip_first_layer_pe: skip_pe,
        })
    }

    fn forward(
        &self,
        queries: Tensor<B, 3>,
        keys: Tensor<B, 3>,
        query_pe: &Tensor<B, 3>,
        key_pe: &Tensor<B, 3>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let queries = if self.skip_first_layer_pe {
            self.self_attn
                .forward(queries.clone(), queries.clone(), queries)
        } else {
            let q = queries.clone() + query_pe.clone();
            queries.clone() + self.self_attn.forward(q.clone(), q, queries)
        };
        let queries = self.layer_norm1.forward(queries);
        let q = queries.clone() + query_pe.clone();
        let k = keys.clone() + key_pe.clone();
        let queries = queries + self.cross_attn_token_to_image.forward(q, k, keys.clone());
        let queries = self.layer_norm2.forward(queries);
        let mlp = self.lin2.forward(relu(self.lin1.forward(queries.clone())));
        let queries = self.layer_norm3.forward(queries + mlp);
        let q = queries.clone() + query_pe.clone();
        let k = keys.clone() + key_pe.clone();
        let keys = keys
            + self
                .cross_attn_image_to_token
                .forward(k, q, queries.clone());
        let keys = self.layer_norm4.forward(keys);
        (queries, keys)
    }
}

/// `SamFeedForward` (and SAM 2's `Sam2FeedForward`): `proj_in`, ReLU, `layers` (each
/// followed by ReLU), `proj_out`.
#[derive(Debug)]
pub(crate) struct FeedForward<B: Backend> {
    proj_in: Linear<B>,
    layers: Vec<Linear<B>>,
    proj_out: Linear<B>,
}

impl<B: Backend> FeedForward<B> {
    pub(crate) fn load(
        w: &Weights<'_>,
        d_in: usize,
        hidden: usize,
        d_out: usize,
        num_layers: usize,
        device: &B::Device,
    ) -> Result<Self> {
        Ok(Self {
            proj_in: w.pp("proj_in").linear(d_in, hidden, true, device)?,
            layers: (0..num_layers.saturating_sub(2))
                .map(|i| {
                    w.pp(format!("layers.{i}"))
                        .linear(hidden, hidden, true, device)
                })
                .collect::<std::result::Result<Vec<_>, _>>()?,
            proj_out: w.pp("proj_out").linear(hidden, d_out, true, device)?,
        })
    }

    pub(crate) fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let mut x = relu(self.proj_in.forward(x));
        for l in &self.layers {
            x = relu(l.forward(x));
        }
        self.proj_out.forward(x)
    }
}

/// The mask decoder.
#[derive(Debug)]
pub struct SamMaskDecoder<B: Backend> {
    output_tokens: Tensor<B, 2>,
    layers: Vec<TwoWayBlock<B>>,
    final_attn_token_to_image: SamAttention<B>,
    layer_norm_final_attn: LayerNorm<B>,
    upscale_conv1_w: Tensor<B, 4>,
    upscale_conv1_b: Tensor<B, 1>,
    upscale_layer_norm: LayerNorm<B>,
    upscale_conv2_w: Tensor<B, 4>,
    upscale_conv2_b: Tensor<B, 1>,
    hypernetworks: Vec<FeedForward<B>>,
    iou_head: FeedForward<B>,
    num_mask_tokens: usize,
}

/// What the decoder predicts for `n` prompts.
#[derive(Debug, Clone)]
pub struct DecoderOutput<B: Backend> {
    /// Low-resolution mask logits `[n, masks, 4 * grid, 4 * grid]`.
    pub masks: Tensor<B, 4>,
    /// Predicted IoU `[n, masks]`.
    pub iou: Tensor<B, 2>,
}

impl<B: Backend> SamMaskDecoder<B> {
    /// Loads `mask_decoder.*`.
    pub fn load(w: &Weights<'_>, c: &SamMaskDecoderConfig, device: &B::Device) -> Result<Self> {
        let d = c.hidden_size;
        let m = c.num_multimask_outputs + 1;
        let iou_token = w.tensor::<B, 2>("iou_token.weight", [1, d], device)?;
        let mask_tokens = w.tensor::<B, 2>("mask_tokens.weight", [m, d], device)?;
        let t = w.pp("transformer");
        let layers = (0..c.num_hidden_layers)
            .map(|i| TwoWayBlock::load(&t.pp(format!("layers.{i}")), c, i == 0, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            output_tokens: Tensor::cat(vec![iou_token, mask_tokens], 0),
            layers,
            final_attn_token_to_image: SamAttention::load(
                &t.pp("final_attn_token_to_image"),
                c,
                c.attention_downsample_rate,
                device,
            )?,
            // `nn.LayerNorm(hidden_size)`: torch's default epsilon.
            layer_norm_final_attn: t.pp("layer_norm_final_attn").layer_norm(d, 1e-5, device)?,
            upscale_conv1_w: w.tensor("upscale_conv1.weight", [d, d / 4, 2, 2], device)?,
            upscale_conv1_b: w.tensor("upscale_conv1.bias", [d / 4], device)?,
            upscale_layer_norm: w.pp("upscale_layer_norm").layer_norm(d / 4, 1e-6, device)?,
            upscale_conv2_w: w.tensor("upscale_conv2.weight", [d / 4, d / 8, 2, 2], device)?,
            upscale_conv2_b: w.tensor("upscale_conv2.bias", [d / 8], device)?,
            hypernetworks: (0..m)
                .map(|i| {
                    FeedForward::load(
                        &w.pp(format!("output_hypernetworks_mlps.{i}")),
                        d,
                        d,
                        d / 8,
                        3,
                        device,
                    )
                })
                .collect::<Result<Vec<_>>>()?,
            iou_head: FeedForward::load(
                &w.pp("iou_prediction_head"),
                d,
                c.iou_head_hidden_dim,
                m,
                c.iou_head_depth,
                device,
            )?,
            num_mask_tokens: m,
        })
    }

    /// Predicts masks for `n` prompts over one image.
    ///
    /// `image_embedding` `[C, g, g]`, `image_pe` `[C, g, g]`, `sparse` `[n, T, C]` (or `None`
    /// with `n` given), `dense` `[1 or n, C, g, g]`.
    pub fn forward(
        &self,
        image_embedding: &Tensor<B, 3>,
        image_pe: &Tensor<B, 3>,
        sparse: Option<Tensor<B, 3>>,
        dense: Tensor<B, 4>,
        n: usize,
        multimask: bool,
    ) -> DecoderOutput<B> {
        let [c, g, _] = image_embedding.dims();
        let m = self.num_mask_tokens;
        let out_tokens = self
            .output_tokens
            .clone()
            .unsqueeze_dim::<3>(0)
            .repeat_dim(0, n);
        let tokens = match sparse {
            Some(s) => Tensor::cat(vec![out_tokens, s], 1),
            None => out_tokens,
        };
        let src = image_embedding.clone().unsqueeze_dim::<4>(0) + dense;
        let src = if src.dims()[0] == n {
            src
        } else {
            src.repeat_dim(0, n)
        };
        let src = src.reshape([n, c, g * g]).swap_dims(1, 2);
        let pos = image_pe
            .clone()
            .reshape([1, c, g * g])
            .swap_dims(1, 2)
            .repeat_dim(0, n);

        let mut queries = tokens.clone();
        let mut keys = src;
        for layer in &self.layers {
            let (q, k) = layer.forward(queries, keys, &tokens, &pos);
            queries = q;
            keys = k;
        }
        let q = queries.clone() + tokens;
        let k = keys.clone() + pos;
        let queries = queries + self.final_attn_token_to_image.forward(q, k, keys.clone());
        let queries = self.layer_norm_final_attn.forward(queries);

        let iou_token = queries.clone().narrow(1, 0, 1).reshape([n, c]);
        let mask_tokens = queries.narrow(1, 1, m);

        let x = keys.swap_dims(1, 2).reshape([n, c, g, g]);
        let opts = || ConvTransposeOptions::new([2, 2], [0, 0], [0, 0], [1, 1], 1);
        let x = conv_transpose2d(
            x,
            self.upscale_conv1_w.clone(),
            Some(self.upscale_conv1_b.clone()),
            opts(),
        );
        let x = gelu(layer_norm_channels_first(&self.upscale_layer_norm, x));
        let x = gelu(conv_transpose2d(
            x,
            self.upscale_conv2_w.clone(),
            Some(self.upscale_conv2_b.clone()),
            opts(),
        ));
        let [_, c8, h4, w4] = x.dims();

        let hyper = Tensor::cat(
            self.hypernetworks
                .iter()
                .enumerate()
                .map(|(i, mlp)| mlp.forward(mask_tokens.clone().narrow(1, i, 1)))
                .collect(),
            1,
        );
        let masks = hyper
            .matmul(x.reshape([n, c8, h4 * w4]))
            .reshape([n, m, h4, w4]);
        let iou = self.iou_head.forward(iou_token);
        if multimask {
            DecoderOutput {
                masks: masks.narrow(1, 1, m - 1),
                iou: iou.narrow(1, 1, m - 1),
            }
        } else {
            DecoderOutput {
                masks: masks.narrow(1, 0, 1),
                iou: iou.narrow(1, 0, 1),
            }
        }
    }
}
