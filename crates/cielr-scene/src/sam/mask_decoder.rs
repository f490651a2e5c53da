//! `SamMaskDecoder`: the two-way transformer between prompt tokens and the image embedding,
//! the upscaling of the image embedding, the hypernetwork MLPs that turn mask tokens into
//! mask weights, and the IoU prediction head. The two-way transformer, the mask head and the
//! MLP are also SAM 2's ([`crate::sam2::decoder`]), which passes its names in a `TwoWaySpec`.

use burn::nn::{LayerNorm, Linear};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::module::conv_transpose2d;
use burn::tensor::ops::{AttentionModuleOptions, ConvTransposeOptions};
use burn::tensor::Tensor;
use cielr_core::activation::gelu;
use cielr_core::attention::attention;
use cielr_core::layout::contiguous;
use cielr_core::weights::Weights;

use super::config::SamMaskDecoderConfig;
use super::image_encoder::layer_norm_channels_first;
use crate::error::Result;

/// What differs between the two-way transformers of SAM's and SAM 2's mask decoders (their
/// layout and forward are the same): sizes, names and the blocks' layer-norm epsilon. Each
/// decoder fills it from its config; the weights are read by name only in this module.
#[derive(Debug, Clone)]
pub(crate) struct TwoWaySpec {
    /// Width of tokens and image features.
    pub hidden_size: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Two-way blocks.
    pub num_layers: usize,
    /// The cross-attentions work at `hidden_size / downsample_rate`.
    pub downsample_rate: usize,
    /// Hidden width of the blocks' MLP.
    pub mlp_dim: usize,
    /// Epsilon of the blocks' four layer norms (the final one uses torch's default, 1e-5).
    pub layer_norm_eps: f64,
    /// Name of the attention output projection: `out_proj` (SAM) or `o_proj` (SAM 2).
    pub out_proj: &'static str,
    /// `None`: SAM's block MLP `mlp.lin1`, `mlp.lin2`; `Some(layers)`: SAM 2's
    /// `Sam2FeedForward` (`mlp.proj_in`, `mlp.layers.*`, `mlp.proj_out`) of that many layers.
    pub feed_forward_layers: Option<usize>,
}

/// `SamAttention` / `Sam2Attention`: multi-head attention whose inner width is
/// `hidden / downsample`.
#[derive(Debug)]
struct Attention<B: Backend> {
    q_proj: Linear<B>,
    k_proj: Linear<B>,
    v_proj: Linear<B>,
    out_proj: Linear<B>,
    heads: usize,
    scale: f64,
}

impl<B: Backend> Attention<B> {
    fn load(
        w: &Weights<'_>,
        s: &TwoWaySpec,
        downsample: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let d = s.hidden_size;
        let inner = d / downsample;
        Ok(Self {
            q_proj: w.pp("q_proj").linear(d, inner, true, device)?,
            k_proj: w.pp("k_proj").linear(d, inner, true, device)?,
            v_proj: w.pp("v_proj").linear(d, inner, true, device)?,
            out_proj: w.pp(s.out_proj).linear(inner, d, true, device)?,
            heads: s.num_heads,
            scale: ((inner / s.num_heads) as f64).powf(-0.5),
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
        let options = AttentionModuleOptions {
            scale: Some(self.scale),
            ..Default::default()
        };
        let out = contiguous(attention(q, k, v, None, None, options).swap_dims(1, 2));
        let [n, t, h, hd] = out.dims();
        self.out_proj.forward(out.reshape([n, t, h * hd]))
    }
}

/// `SamTwoWayAttentionBlock` / `Sam2TwoWayAttentionBlock`.
#[derive(Debug)]
struct TwoWayBlock<B: Backend> {
    self_attn: Attention<B>,
    layer_norm1: LayerNorm<B>,
    cross_attn_token_to_image: Attention<B>,
    layer_norm2: LayerNorm<B>,
    mlp: FeedForward<B>,
    layer_norm3: LayerNorm<B>,
    layer_norm4: LayerNorm<B>,
    cross_attn_image_to_token: Attention<B>,
    skip_first_layer_pe: bool,
}

impl<B: Backend> TwoWayBlock<B> {
    fn load(w: &Weights<'_>, s: &TwoWaySpec, skip_pe: bool, device: &B::Device) -> Result<Self> {
        let d = s.hidden_size;
        let eps = s.layer_norm_eps;
        let r = s.downsample_rate;
        let m = w.pp("mlp");
        let mlp = match s.feed_forward_layers {
            None => FeedForward::from_layers(
                m.pp("lin1").linear(d, s.mlp_dim, true, device)?,
                Vec::new(),
                m.pp("lin2").linear(s.mlp_dim, d, true, device)?,
            ),
            Some(layers) => FeedForward::load(&m, d, s.mlp_dim, d, layers, device)?,
        };
        Ok(Self {
            self_attn: Attention::load(&w.pp("self_attn"), s, 1, device)?,
            layer_norm1: w.pp("layer_norm1").layer_norm(d, eps, device)?,
            cross_attn_token_to_image: Attention::load(
                &w.pp("cross_attn_token_to_image"),
                s,
                r,
                device,
            )?,
            layer_norm2: w.pp("layer_norm2").layer_norm(d, eps, device)?,
            mlp,
            layer_norm3: w.pp("layer_norm3").layer_norm(d, eps, device)?,
            layer_norm4: w.pp("layer_norm4").layer_norm(d, eps, device)?,
            cross_attn_image_to_token: Attention::load(
                &w.pp("cross_attn_image_to_token"),
                s,
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
        let mlp = self.mlp.forward(queries.clone());
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

/// The two-way transformer of SAM's and SAM 2's mask decoders (`transformer.*`): the blocks,
/// then a final token-to-image attention and layer norm.
#[derive(Debug)]
pub(crate) struct TwoWayTransformer<B: Backend> {
    layers: Vec<TwoWayBlock<B>>,
    final_attn_token_to_image: Attention<B>,
    layer_norm_final_attn: LayerNorm<B>,
}

impl<B: Backend> TwoWayTransformer<B> {
    /// Loads `transformer.*` (`w` is the `transformer` prefix).
    pub(crate) fn load(w: &Weights<'_>, s: &TwoWaySpec, device: &B::Device) -> Result<Self> {
        Ok(Self {
            layers: (0..s.num_layers)
                .map(|i| TwoWayBlock::load(&w.pp(format!("layers.{i}")), s, i == 0, device))
                .collect::<Result<Vec<_>>>()?,
            final_attn_token_to_image: Attention::load(
                &w.pp("final_attn_token_to_image"),
                s,
                s.downsample_rate,
                device,
            )?,
            // `nn.LayerNorm(hidden_size)`: torch's default epsilon.
            layer_norm_final_attn: w.pp("layer_norm_final_attn").layer_norm(
                s.hidden_size,
                1e-5,
                device,
            )?,
        })
    }

    /// Runs `tokens` `[n, T, C]` against the image: `image_embedding` `[C, g, g]` plus `dense`
    /// `[1 or n, C, g, g]`, with positions `image_pe` `[C, g, g]`. Returns the tokens
    /// `[n, T, C]` and the image features `[n, g * g, C]`.
    pub(crate) fn forward(
        &self,
        tokens: Tensor<B, 3>,
        image_embedding: &Tensor<B, 3>,
        dense: Tensor<B, 4>,
        image_pe: &Tensor<B, 3>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let [c, g, _] = image_embedding.dims();
        let n = tokens.dims()[0];
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
        (self.layer_norm_final_attn.forward(queries), keys)
    }
}

/// The mask head shared by SAM's and SAM 2's decoders: two transposed convolutions upscale the
/// image features 4x (`upscale_conv1`, `upscale_layer_norm`, `upscale_conv2`), and one
/// hypernetwork MLP per mask token (`output_hypernetworks_mlps.*`) turns that token into the
/// weights of its mask.
#[derive(Debug)]
pub(crate) struct MaskHead<B: Backend> {
    upscale_conv1_w: Tensor<B, 4>,
    upscale_conv1_b: Tensor<B, 1>,
    upscale_layer_norm: LayerNorm<B>,
    upscale_conv2_w: Tensor<B, 4>,
    upscale_conv2_b: Tensor<B, 1>,
    hypernetworks: Vec<FeedForward<B>>,
}

impl<B: Backend> MaskHead<B> {
    /// Loads the upscaling and `num_mask_tokens` hypernetworks under `mask_decoder.`
    pub(crate) fn load(
        w: &Weights<'_>,
        d: usize,
        num_mask_tokens: usize,
        device: &B::Device,
    ) -> Result<Self> {
        Ok(Self {
            upscale_conv1_w: w.tensor("upscale_conv1.weight", [d, d / 4, 2, 2], device)?,
            upscale_conv1_b: w.tensor("upscale_conv1.bias", [d / 4], device)?,
            upscale_layer_norm: w.pp("upscale_layer_norm").layer_norm(d / 4, 1e-6, device)?,
            upscale_conv2_w: w.tensor("upscale_conv2.weight", [d / 4, d / 8, 2, 2], device)?,
            upscale_conv2_b: w.tensor("upscale_conv2.bias", [d / 8], device)?,
            hypernetworks: (0..num_mask_tokens)
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
        })
    }

    /// Mask logits `[n, m, 4g, 4g]` from the transformer's image features `keys`
    /// `[n, g * g, C]` and the `m` mask tokens `[n, m, C]`. SAM 2 adds its high-resolution
    /// features `skips` = (`feat_s0` `[C/8, 4g, 4g]`, `feat_s1` `[C/4, 2g, 2g]`) after each
    /// upscaling step.
    pub(crate) fn forward(
        &self,
        keys: Tensor<B, 3>,
        g: usize,
        mask_tokens: Tensor<B, 3>,
        skips: Option<(&Tensor<B, 3>, &Tensor<B, 3>)>,
    ) -> Tensor<B, 4> {
        let [n, _, c] = keys.dims();
        let m = mask_tokens.dims()[1];
        let x = keys.swap_dims(1, 2).reshape([n, c, g, g]);
        let opts = || ConvTransposeOptions::new([2, 2], [0, 0], [0, 0], [1, 1], 1);
        let x = conv_transpose2d(
            x,
            self.upscale_conv1_w.clone(),
            Some(self.upscale_conv1_b.clone()),
            opts(),
        );
        let x = match skips {
            Some((_, s1)) => x + s1.clone().unsqueeze_dim::<4>(0),
            None => x,
        };
        let x = gelu(layer_norm_channels_first(&self.upscale_layer_norm, x));
        let x = conv_transpose2d(
            x,
            self.upscale_conv2_w.clone(),
            Some(self.upscale_conv2_b.clone()),
            opts(),
        );
        let x = gelu(match skips {
            Some((s0, _)) => x + s0.clone().unsqueeze_dim::<4>(0),
            None => x,
        });
        let [_, c8, h4, w4] = x.dims();
        let hyper = Tensor::cat(
            self.hypernetworks
                .iter()
                .enumerate()
                .map(|(i, mlp)| mlp.forward(mask_tokens.clone().narrow(1, i, 1)))
                .collect(),
            1,
        );
        hyper
            .matmul(x.reshape([n, c8, h4 * w4]))
            .reshape([n, m, h4, w4])
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
    /// The MLP of these layers (first, middle, last).
    pub(crate) fn from_layers(
        proj_in: Linear<B>,
        layers: Vec<Linear<B>>,
        proj_out: Linear<B>,
    ) -> Self {
        Self {
            proj_in,
            layers,
            proj_out,
        }
    }

    /// Loads `proj_in`, `layers.*` and `proj_out` under `w`: `num_layers` layers in all (at
    /// least two).
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
    transformer: TwoWayTransformer<B>,
    head: MaskHead<B>,
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
        let spec = TwoWaySpec {
            hidden_size: d,
            num_heads: c.num_attention_heads,
            num_layers: c.num_hidden_layers,
            downsample_rate: c.attention_downsample_rate,
            mlp_dim: c.mlp_dim,
            layer_norm_eps: c.layer_norm_eps,
            out_proj: "out_proj",
            feed_forward_layers: None,
        };
        Ok(Self {
            output_tokens: Tensor::cat(vec![iou_token, mask_tokens], 0),
            transformer: TwoWayTransformer::load(&w.pp("transformer"), &spec, device)?,
            head: MaskHead::load(w, d, m, device)?,
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
        let (queries, keys) = self
            .transformer
            .forward(tokens, image_embedding, dense, image_pe);
        let iou_token = queries.clone().narrow(1, 0, 1).reshape([n, c]);
        let mask_tokens = queries.narrow(1, 1, m);
        let masks = self.head.forward(keys, g, mask_tokens, None);
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
