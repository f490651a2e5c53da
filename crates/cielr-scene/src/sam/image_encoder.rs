//! `SamVisionEncoder`: a ViT with windowed and global attention, decomposed relative position
//! terms (MViTv2), an absolute position embedding and a convolutional neck.

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, Linear, PaddingConfig2d};
use burn::tensor::backend::Backend;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Int, Tensor, TensorData};
use cielr_core::activation::gelu;
use cielr_core::attention::attention;
use cielr_core::layout::contiguous;
use cielr_core::weights::Weights;

use super::config::SamVisionConfig;
use crate::error::{Result, SceneError};

/// A bias-free `nn.Conv2d` (the neck's convolutions).
pub(crate) fn conv_no_bias<B: Backend>(
    w: &Weights<'_>,
    c_in: usize,
    c_out: usize,
    kernel: usize,
    padding: usize,
    device: &B::Device,
) -> Result<Conv2d<B>> {
    let mut conv = Conv2dConfig::new([c_in, c_out], [kernel, kernel])
        .with_padding(PaddingConfig2d::Explicit(
            padding, padding, padding, padding,
        ))
        .with_bias(false)
        .init(device);
    conv.weight = Param::from_tensor(w.tensor("weight", [c_out, c_in, kernel, kernel], device)?);
    Ok(conv)
}

/// `SamLayerNorm(data_format="channels_first")`: LayerNorm over the channels of `[B, C, H, W]`.
pub(crate) fn layer_norm_channels_first<B: Backend>(
    ln: &LayerNorm<B>,
    x: Tensor<B, 4>,
) -> Tensor<B, 4> {
    ln.forward(x.permute([0, 2, 3, 1])).permute([0, 3, 1, 2])
}

/// One attention of the image encoder, with its relative position tables gathered for its
/// (fixed) window or grid size.
#[derive(Debug)]
pub struct SamVisionAttention<B: Backend> {
    qkv: Linear<B>,
    proj: Linear<B>,
    /// `rel_pos_h[relative index]` laid out as `[size(q), size(k), head_dim]`.
    rel_h: Option<Tensor<B, 3>>,
    rel_w: Option<Tensor<B, 3>>,
    /// `[1, size * size, 2 * size]`: for key token `(ky, kx)`, one-hot of `ky` then of `kx`
    /// (the key-side half of the folded rel-pos term).
    key_onehot: Option<Tensor<B, 3>>,
    heads: usize,
    scale: f64,
}

/// `get_rel_pos` for equal query and key sizes, when the table already has `2 * size - 1`
/// rows (the resize is then the identity): `[size, size, head_dim]` with
/// `out[q, k] = table[q - k + size - 1]`.
fn gather_rel_pos<B: Backend>(
    table: Tensor<B, 2>,
    size: usize,
    device: &B::Device,
) -> Tensor<B, 3> {
    let head_dim = table.dims()[1];
    let idx: Vec<i64> = (0..size)
        .flat_map(|q| (0..size).map(move |k| (q + size - 1 - k) as i64))
        .collect();
    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [size * size]), device);
    table.select(0, idx).reshape([size, size, head_dim])
}

/// `[1, size * size, 2 * size]`: row `t = ky * size + kx` is one-hot at `ky` in its first
/// `size` columns and at `kx` in its last `size` columns.
fn key_onehot<B: Backend>(size: usize, device: &B::Device) -> Tensor<B, 3> {
    let n = size * size;
    let mut v = vec![0f32; n * 2 * size];
    for t in 0..n {
        v[t * 2 * size + t / size] = 1.0;
        v[t * 2 * size + size + t % size] = 1.0;
    }
    Tensor::from_data(TensorData::new(v, [1, n, 2 * size]), device)
}

impl<B: Backend> SamVisionAttention<B> {
    fn load(
        w: &Weights<'_>,
        c: &SamVisionConfig,
        input_size: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let d = c.hidden_size;
        let head_dim = d / c.num_attention_heads;
        let (rel_h, rel_w, key_onehot) = if c.use_rel_pos {
            let n = 2 * input_size - 1;
            let h = w.tensor("rel_pos_h", [n, head_dim], device)?;
            let ww = w.tensor("rel_pos_w", [n, head_dim], device)?;
            (
                Some(gather_rel_pos(h, input_size, device)),
                Some(gather_rel_pos(ww, input_size, device)),
                Some(key_onehot(input_size, device)),
            )
        } else {
            (None, None, None)
        };
        Ok(Self {
            qkv: w.pp("qkv").linear(d, 3 * d, c.qkv_bias, device)?,
            proj: w.pp("proj").linear(d, d, true, device)?,
            rel_h,
            rel_w,
            key_onehot,
            heads: c.num_attention_heads,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    /// `[B, H, W, C]` -> `[B, H, W, C]`.
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, h, w, c] = x.dims();
        let nh = self.heads;
        let hd = c / nh;
        let qkv = contiguous(
            self.qkv
                .forward(x)
                .reshape([b, h * w, 3, nh, hd])
                .permute([2, 0, 3, 1, 4]),
        )
        .reshape([3, b * nh, h * w, hd]);
        let q = qkv.clone().narrow(0, 0, 1).reshape([b * nh, h * w, hd]);
        let k = qkv.clone().narrow(0, 1, 1).reshape([b * nh, h * w, hd]);
        let v = qkv.narrow(0, 2, 1).reshape([b * nh, h * w, hd]);
        let split = |t: Tensor<B, 3>| {
            let d = t.dims()[2];
            t.reshape([b, nh, h * w, d])
        };
        let (q, k, scale) = match (&self.rel_h, &self.rel_w, &self.key_onehot) {
            (Some(rh), Some(rw), Some(onehot)) => {
                let bh = b * nh;
                let q4 = q.clone().reshape([bh, h, w, hd]);
                // rel_h[b, y, x, ky] = sum_c q[b, y, x, c] * rh[y, ky, c]
                let qh = contiguous(q4.clone().permute([1, 0, 2, 3])).reshape([h, bh * w, hd]);
                let rel_h = contiguous(
                    qh.matmul(rh.clone().swap_dims(1, 2))
                        .reshape([h, bh, w, h])
                        .permute([1, 0, 2, 3]),
                )
                .reshape([bh, h * w, h]);
                // rel_w[b, y, x, kx] = sum_c q[b, y, x, c] * rw[x, kx, c]
                let qw = contiguous(q4.permute([2, 0, 1, 3])).reshape([w, bh * h, hd]);
                let rel_w = contiguous(
                    qw.matmul(rw.clone().swap_dims(1, 2))
                        .reshape([w, bh, h, w])
                        .permute([1, 2, 0, 3]),
                )
                .reshape([bh, h * w, w]);
                // Folded rel-pos: with q' = [q * scale, rel_h(q), rel_w(q)] and
                // k' = [k, onehot(ky), onehot(kx)], q'.k' = scale q.k + rel_h[q, ky] +
                // rel_w[q, kx], so the fused attention runs without an `[N, N]` bias (and
                // with scale 1, the scale being applied to q as the reference does).
                let q = Tensor::cat(vec![q.mul_scalar(self.scale), rel_h, rel_w], 2);
                let k = Tensor::cat(vec![k, onehot.clone().expand([bh, h * w, h + w])], 2);
                (q, k, 1.0)
            }
            _ => (q, k, self.scale),
        };
        // Fused attention (cielr-core's CPU kernel, the backend's elsewhere; the 4096-token
        // global layers): neither the scores nor a rel-pos bias are materialised.
        let options = AttentionModuleOptions {
            scale: Some(scale),
            softcap: None,
            is_causal: false,
        };
        let out = contiguous(
            attention(split(q), split(k), split(v), None, None, options)
                .reshape([b, nh, h, w, hd])
                .permute([0, 2, 3, 1, 4]),
        )
        .reshape([b, h, w, c]);
        self.proj.forward(out)
    }
}

/// One transformer block (`SamVisionLayer`).
#[derive(Debug)]
pub struct SamVisionLayer<B: Backend> {
    layer_norm1: LayerNorm<B>,
    attn: SamVisionAttention<B>,
    layer_norm2: LayerNorm<B>,
    lin1: Linear<B>,
    lin2: Linear<B>,
    window_size: usize,
}

/// Splits `[B, H, W, C]` into `[B * nWindows, ws, ws, C]` windows, zero-padding H and W up to a
/// multiple of `ws`; returns the padded size.
fn window_partition<B: Backend>(x: Tensor<B, 4>, ws: usize) -> (Tensor<B, 4>, (usize, usize)) {
    let [b, h, w, c] = x.dims();
    let ph = (ws - h % ws) % ws;
    let pw = (ws - w % ws) % ws;
    let device = x.device();
    let mut x = x;
    if pw > 0 {
        x = Tensor::cat(vec![x, Tensor::zeros([b, h, pw, c], &device)], 2);
    }
    if ph > 0 {
        x = Tensor::cat(vec![x, Tensor::zeros([b, ph, w + pw, c], &device)], 1);
    }
    let (hp, wp) = (h + ph, w + pw);
    let windows = contiguous(
        x.reshape([b, hp / ws, ws, wp / ws, ws, c])
            .permute([0, 1, 3, 2, 4, 5]),
    )
    .reshape([b * (hp / ws) * (wp / ws), ws, ws, c]);
    (windows, (hp, wp))
}

/// Inverse of [`window_partition`], cropping the padding.
fn window_unpartition<B: Backend>(
    windows: Tensor<B, 4>,
    ws: usize,
    (hp, wp): (usize, usize),
    (h, w): (usize, usize),
) -> Tensor<B, 4> {
    let [n, _, _, c] = windows.dims();
    let b = n / ((hp / ws) * (wp / ws));
    let x = contiguous(
        windows
            .reshape([b, hp / ws, wp / ws, ws, ws, c])
            .permute([0, 1, 3, 2, 4, 5]),
    )
    .reshape([b, hp, wp, c]);
    if hp != h || wp != w {
        x.narrow(1, 0, h).narrow(2, 0, w)
    } else {
        x
    }
}

impl<B: Backend> SamVisionLayer<B> {
    fn load(
        w: &Weights<'_>,
        c: &SamVisionConfig,
        window_size: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let d = c.hidden_size;
        let input_size = if window_size == 0 {
            c.grid()
        } else {
            window_size
        };
        Ok(Self {
            layer_norm1: w
                .pp("layer_norm1")
                .layer_norm(d, c.layer_norm_eps, device)?,
            attn: SamVisionAttention::load(&w.pp("attn"), c, input_size, device)?,
            layer_norm2: w
                .pp("layer_norm2")
                .layer_norm(d, c.layer_norm_eps, device)?,
            lin1: w.pp("mlp.lin1").linear(d, c.mlp_dim(), true, device)?,
            lin2: w.pp("mlp.lin2").linear(c.mlp_dim(), d, true, device)?,
            window_size,
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, h, w, _] = x.dims();
        let residual = x.clone();
        let y = self.layer_norm1.forward(x);
        let y = if self.window_size > 0 {
            let (win, padded) = window_partition(y, self.window_size);
            let out = self.attn.forward(win);
            window_unpartition(out, self.window_size, padded, (h, w))
        } else {
            self.attn.forward(y)
        };
        let x = residual + y;
        let m = self
            .lin2
            .forward(gelu(self.lin1.forward(self.layer_norm2.forward(x.clone()))));
        x + m
    }
}

/// The image encoder: `pixel_values` `[B, 3, S, S]` -> image embeddings `[B, C_out, S/p, S/p]`.
#[derive(Debug)]
pub struct SamVisionEncoder<B: Backend> {
    patch_embed: Conv2d<B>,
    pos_embed: Option<Tensor<B, 4>>,
    layers: Vec<SamVisionLayer<B>>,
    neck_conv1: Conv2d<B>,
    neck_ln1: LayerNorm<B>,
    neck_conv2: Conv2d<B>,
    neck_ln2: LayerNorm<B>,
    image_size: usize,
}

impl<B: Backend> SamVisionEncoder<B> {
    /// Loads `vision_encoder.*`.
    pub fn load(w: &Weights<'_>, c: &SamVisionConfig, device: &B::Device) -> Result<Self> {
        let d = c.hidden_size;
        let g = c.grid();
        let p = c.patch_size;
        let pos_embed = if c.use_abs_pos {
            Some(w.tensor("pos_embed", [1, g, g, d], device)?)
        } else {
            None
        };
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let ws = if c.global_attn_indexes.contains(&i) {
                    0
                } else {
                    c.window_size
                };
                SamVisionLayer::load(&w.pp(format!("layers.{i}")), c, ws, device)
            })
            .collect::<Result<Vec<_>>>()?;
        let oc = c.output_channels;
        Ok(Self {
            patch_embed: w.pp("patch_embed.projection").conv2d(
                c.num_channels,
                d,
                p,
                p,
                (0, 0, 0, 0),
                device,
            )?,
            pos_embed,
            layers,
            neck_conv1: conv_no_bias(&w.pp("neck.conv1"), d, oc, 1, 0, device)?,
            neck_ln1: w.pp("neck.layer_norm1").layer_norm(oc, 1e-6, device)?,
            neck_conv2: conv_no_bias(&w.pp("neck.conv2"), oc, oc, 3, 1, device)?,
            neck_ln2: w.pp("neck.layer_norm2").layer_norm(oc, 1e-6, device)?,
            image_size: c.image_size,
        })
    }

    /// Runs the encoder. `pixel_values` must be `[B, 3, image_size, image_size]`.
    pub fn forward(&self, pixel_values: Tensor<B, 4>) -> Result<Tensor<B, 4>> {
        let [_, _, h, w] = pixel_values.dims();
        if h != self.image_size || w != self.image_size {
            return Err(SceneError::InvalidInput(format!(
                "SAM image encoder expects {s}x{s} pixel values, got {w}x{h}",
                s = self.image_size
            )));
        }
        let mut x = contiguous(self.patch_embed.forward(pixel_values).permute([0, 2, 3, 1]));
        if let Some(pe) = &self.pos_embed {
            x = x + pe.clone();
        }
        for layer in &self.layers {
            x = layer.forward(x);
        }
        let x = x.permute([0, 3, 1, 2]);
        let x = layer_norm_channels_first(&self.neck_ln1, self.neck_conv1.forward(x));
        Ok(layer_norm_channels_first(
            &self.neck_ln2,
            self.neck_conv2.forward(x),
        ))
    }
}
