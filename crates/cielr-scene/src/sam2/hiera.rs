//! The SAM 2 image encoder: the Hiera backbone (`Sam2HieraDetModel`: patch embedding,
//! windowed positional embedding, multi-scale blocks with windowed or global attention and
//! query pooling between stages) and the FPN neck (`Sam2VisionNeck`). Activations are kept
//! channels-last (`[B, H, W, C]`) inside the backbone, as in transformers.

use burn::nn::conv::Conv2d;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Tensor, TensorData};
use cielr_core::activation::gelu;
use cielr_core::attention::attention;
use cielr_core::layout::contiguous;
use cielr_core::weights::Weights;

use super::config::{Sam2HieraConfig, Sam2VisionConfig};
use crate::error::{Result, SceneError};

/// torch's cubic convolution weights (A = -0.75) for a fractional offset `t`.
fn cubic_weights(t: f64) -> [f64; 4] {
    let a = -0.75;
    let c1 = |x: f64| ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    let c2 = |x: f64| ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
    [c2(t + 1.0), c1(t), c1(1.0 - t), c2(2.0 - t)]
}

/// `F.interpolate(x, size, mode="bicubic", align_corners=False)` of a `[C, h, w]` plane stack
/// (host data), as torch computes it (border-clamped taps).
fn bicubic_resize(src: &[f32], c: usize, h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    let taps = |out: usize, inp: usize| -> Vec<(i64, [f64; 4])> {
        let scale = inp as f64 / out as f64;
        (0..out)
            .map(|o| {
                let real = scale * (o as f64 + 0.5) - 0.5;
                let i0 = real.floor();
                (i0 as i64, cubic_weights(real - i0))
            })
            .collect()
    };
    let ty = taps(oh, h);
    let tx = taps(ow, w);
    let clamp = |v: i64, n: usize| v.clamp(0, n as i64 - 1) as usize;
    let mut out = vec![0f32; c * oh * ow];
    for ch in 0..c {
        let plane = &src[ch * h * w..(ch + 1) * h * w];
        for (oy, (y0, wy)) in ty.iter().enumerate() {
            for (ox, (x0, wx)) in tx.iter().enumerate() {
                let mut acc = 0f64;
                for (dy, wyv) in wy.iter().enumerate() {
                    let yy = clamp(y0 - 1 + dy as i64, h);
                    let mut row = 0f64;
                    for (dx, wxv) in wx.iter().enumerate() {
                        let xx = clamp(x0 - 1 + dx as i64, w);
                        row += wxv * plane[yy * w + xx] as f64;
                    }
                    acc += wyv * row;
                }
                out[ch * oh * ow + oy * ow + ox] = acc as f32;
            }
        }
    }
    out
}

/// Zero-pads a `[B, H, W, C]` tensor at the bottom/right.
fn pad_hw<B: Backend>(x: Tensor<B, 4>, ph: usize, pw: usize) -> Tensor<B, 4> {
    let [b, h, w, c] = x.dims();
    let device = x.device();
    let x = if pw > 0 {
        Tensor::cat(vec![x, Tensor::zeros([b, h, pw, c], &device)], 2)
    } else {
        x
    };
    if ph > 0 {
        Tensor::cat(vec![x, Tensor::zeros([b, ph, w + pw, c], &device)], 1)
    } else {
        x
    }
}

/// `window_partition`: `[B, H, W, C]` -> `[B * nW, ws, ws, C]` and the padded (H, W).
fn window_partition<B: Backend>(x: Tensor<B, 4>, ws: usize) -> (Tensor<B, 4>, (usize, usize)) {
    let [b, h, w, c] = x.dims();
    let ph = (ws - h % ws) % ws;
    let pw = (ws - w % ws) % ws;
    let x = pad_hw(x, ph, pw);
    let (hp, wp) = (h + ph, w + pw);
    let (nh, nw) = (hp / ws, wp / ws);
    let x = contiguous(
        x.reshape([b, nh, ws, nw, ws, c])
            .permute([0, 1, 3, 2, 4, 5]),
    )
    .reshape([b * nh * nw, ws, ws, c]);
    (x, (hp, wp))
}

/// `window_unpartition`: the inverse of [`window_partition`], cropping the padding.
fn window_unpartition<B: Backend>(
    x: Tensor<B, 4>,
    ws: usize,
    padded: (usize, usize),
    size: (usize, usize),
) -> Tensor<B, 4> {
    let (hp, wp) = padded;
    let (nh, nw) = (hp / ws, wp / ws);
    let [bw, _, _, c] = x.dims();
    let b = bw / (nh * nw);
    contiguous(
        x.reshape([b, nh, nw, ws, ws, c])
            .permute([0, 1, 3, 2, 4, 5]),
    )
    .reshape([b, hp, wp, c])
    .narrow(1, 0, size.0)
    .narrow(2, 0, size.1)
}

/// `do_pool`: `max_pool2d(kernel = stride = s, ceil_mode=False)` over a `[B, H, W, C]` tensor.
fn max_pool_nhwc<B: Backend>(x: Tensor<B, 4>, s: (usize, usize)) -> Tensor<B, 4> {
    let [b, h, w, c] = x.dims();
    let (h2, w2) = (h / s.0, w / s.1);
    x.narrow(1, 0, h2 * s.0)
        .narrow(2, 0, w2 * s.1)
        .reshape([b, h2, s.0, w2, s.1, c])
        .max_dim(4)
        .max_dim(2)
        .reshape([b, h2, w2, c])
}

/// `Sam2MultiScaleAttention`.
#[derive(Debug)]
struct MultiScaleAttention<B: Backend> {
    qkv: Linear<B>,
    proj: Linear<B>,
    heads: usize,
    dim_out: usize,
    query_stride: Option<(usize, usize)>,
}

impl<B: Backend> MultiScaleAttention<B> {
    /// `[B, H, W, dim]` -> `[B, H', W', dim_out]`.
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, h, w, _] = x.dims();
        let hd = self.dim_out / self.heads;
        let qkv = self.qkv.forward(x).reshape([b, h * w, 3, self.heads, hd]);
        let part = |i: usize| {
            qkv.clone()
                .narrow(2, i, 1)
                .reshape([b, h * w, self.heads, hd])
        };
        let (mut q, k, v) = (part(0), part(1), part(2));
        let (mut h, mut w) = (h, w);
        if let Some(s) = self.query_stride {
            let pooled = max_pool_nhwc(q.reshape([b, h, w, self.heads * hd]), s);
            let [_, h2, w2, _] = pooled.dims();
            h = h2;
            w = w2;
            q = pooled.reshape([b, h * w, self.heads, hd]);
        }
        let q = q.swap_dims(1, 2);
        let k = k.swap_dims(1, 2);
        let v = v.swap_dims(1, 2);
        let scale = (hd as f64).powf(-0.5);
        let options = AttentionModuleOptions {
            scale: Some(scale),
            ..Default::default()
        };
        let out = contiguous(attention(q, k, v, None, None, options).swap_dims(1, 2)).reshape([
            b,
            h,
            w,
            self.dim_out,
        ]);
        self.proj.forward(out)
    }
}

/// `Sam2MultiScaleBlock`.
#[derive(Debug)]
struct MultiScaleBlock<B: Backend> {
    layer_norm1: LayerNorm<B>,
    attn: MultiScaleAttention<B>,
    layer_norm2: LayerNorm<B>,
    mlp_in: Linear<B>,
    mlp_out: Linear<B>,
    proj: Option<Linear<B>>,
    window_size: usize,
    query_stride: Option<(usize, usize)>,
}

impl<B: Backend> MultiScaleBlock<B> {
    fn load(
        w: &Weights<'_>,
        c: &Sam2HieraConfig,
        stage: usize,
        block: usize,
        total: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let first = stage > 0 && block == 0;
        let dim = if first {
            c.embed_dim_per_stage[stage - 1]
        } else {
            c.embed_dim_per_stage[stage]
        };
        let dim_out = c.embed_dim_per_stage[stage];
        let window = if c.global_attention_blocks.contains(&total) {
            0
        } else if first {
            c.window_size_per_stage[stage - 1]
        } else {
            c.window_size_per_stage[stage]
        };
        let query_stride = (stage > 0 && stage <= c.num_query_pool_stages && block == 0)
            .then_some((c.query_stride[0], c.query_stride[1]));
        if let Some(s) = query_stride {
            if window > 0 && (window % s.0 != 0 || s.0 != s.1) {
                return Err(SceneError::config(
                    "sam2 config.json",
                    format!("block {total}: window {window} is not divisible by the query stride"),
                ));
            }
        }
        let eps = c.layer_norm_eps;
        let hidden = (dim_out as f64 * c.mlp_ratio) as usize;
        Ok(Self {
            layer_norm1: w.pp("layer_norm1").layer_norm(dim, eps, device)?,
            attn: MultiScaleAttention {
                qkv: w.pp("attn.qkv").linear(dim, 3 * dim_out, true, device)?,
                proj: w.pp("attn.proj").linear(dim_out, dim_out, true, device)?,
                heads: c.num_attention_heads_per_stage[stage],
                dim_out,
                query_stride,
            },
            layer_norm2: w.pp("layer_norm2").layer_norm(dim_out, eps, device)?,
            mlp_in: w.pp("mlp.proj_in").linear(dim_out, hidden, true, device)?,
            mlp_out: w.pp("mlp.proj_out").linear(hidden, dim_out, true, device)?,
            proj: if dim != dim_out {
                Some(w.pp("proj").linear(dim, dim_out, true, device)?)
            } else {
                None
            },
            window_size: window,
            query_stride,
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut residual = x.clone();
        let x = self.layer_norm1.forward(x);
        if let Some(p) = &self.proj {
            residual = p.forward(x.clone());
            if let Some(s) = self.query_stride {
                residual = max_pool_nhwc(residual, s);
            }
        }
        let [_, h, w, _] = x.dims();
        let mut ws = self.window_size;
        let (x, mut padded) = if ws > 0 {
            window_partition(x, ws)
        } else {
            (x, (h, w))
        };
        let x = self.attn.forward(x);
        let [_, mut oh, mut ow, _] = [0, h, w, 0];
        if let Some(s) = self.query_stride {
            let [_, rh, rw, _] = residual.dims();
            oh = rh;
            ow = rw;
            if ws > 0 {
                ws /= s.0;
                padded = (rh + (ws - rh % ws) % ws, rw + (ws - rw % ws) % ws);
            }
        }
        let x = if self.window_size > 0 {
            window_unpartition(x, ws, padded, (oh, ow))
        } else {
            x
        };
        let x = residual + x;
        let mlp = self.mlp_out.forward(gelu(
            self.mlp_in.forward(self.layer_norm2.forward(x.clone())),
        ));
        x + mlp
    }
}

/// `Sam2HieraDetModel`: pixels `[B, 3, S, S]` -> the output of each stage, `[B, H_s, W_s, C_s]`.
#[derive(Debug)]
pub struct Sam2Hiera<B: Backend> {
    patch_embed: Conv2d<B>,
    /// The background + window positional embedding at the patch grid, `[1, H, W, C]`.
    pos_embed: Tensor<B, 4>,
    blocks: Vec<MultiScaleBlock<B>>,
    stage_ends: Vec<usize>,
}

impl<B: Backend> Sam2Hiera<B> {
    /// Loads `vision_encoder.backbone.*`.
    pub fn load(w: &Weights<'_>, c: &Sam2HieraConfig, device: &B::Device) -> Result<Self> {
        let d = c.hidden_size;
        let k = c.patch_kernel_size[0];
        let s = c.patch_stride[0];
        let p = c.patch_padding[0];
        let patch_embed =
            w.pp("patch_embed.projection")
                .conv2d(c.num_channels, d, k, s, (p, p, p, p), device)?;
        let grid = |n: usize| (n + 2 * p).checked_sub(k).map(|v| v / s + 1);
        let (gh, gw) = match (grid(c.image_size[0]), grid(c.image_size[1])) {
            (Some(a), Some(b)) => (a, b),
            _ => {
                return Err(SceneError::config(
                    "sam2 config.json",
                    "image_size is smaller than the patch kernel",
                ))
            }
        };
        let (bh, bw) = (
            c.window_positional_embedding_background_size[0],
            c.window_positional_embedding_background_size[1],
        );
        let bg = w.read_f32("pos_embed", &[1, d, bh, bw])?;
        let win = c.window_size_per_stage[0];
        let we = w.read_f32("pos_embed_window", &[1, d, win, win])?;
        if win == 0 || gh % win != 0 || gw % win != 0 {
            return Err(SceneError::config(
                "sam2 config.json",
                format!("the {gh}x{gw} patch grid is not a multiple of the stage-0 window {win}"),
            ));
        }
        let mut pe = bicubic_resize(&bg, d, bh, bw, gh, gw);
        for ch in 0..d {
            for y in 0..gh {
                for x in 0..gw {
                    pe[ch * gh * gw + y * gw + x] += we[ch * win * win + (y % win) * win + x % win];
                }
            }
        }
        let pos_embed = contiguous(
            Tensor::<B, 4>::from_data(TensorData::new(pe, [1, d, gh, gw]), device)
                .permute([0, 2, 3, 1]),
        );
        let mut blocks = Vec::new();
        let mut stage_ends = Vec::new();
        let mut total = 0;
        for (stage, &n) in c.blocks_per_stage.iter().enumerate() {
            for block in 0..n {
                blocks.push(MultiScaleBlock::load(
                    &w.pp(format!("blocks.{total}")),
                    c,
                    stage,
                    block,
                    total,
                    device,
                )?);
                total += 1;
            }
            stage_ends.push(total.wrapping_sub(1));
        }
        Ok(Self {
            patch_embed,
            pos_embed,
            blocks,
            stage_ends,
        })
    }

    /// Runs the backbone; returns the output of each stage (high to low resolution).
    pub fn forward(&self, pixel_values: Tensor<B, 4>) -> Vec<Tensor<B, 4>> {
        let x = contiguous(self.patch_embed.forward(pixel_values).permute([0, 2, 3, 1]));
        let mut x = x + self.pos_embed.clone();
        let mut out = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            x = b.forward(x);
            if self.stage_ends.contains(&i) {
                out.push(x.clone());
            }
        }
        out
    }
}

/// `Sam2VisionNeck` (features only; the sine position encodings it also returns are used by
/// the video memory path, which is out of scope).
#[derive(Debug)]
pub struct Sam2Neck<B: Backend> {
    /// `convs[j]` takes backbone stage `n - j`.
    convs: Vec<Conv2d<B>>,
    top_down: Vec<usize>,
    levels: usize,
}

impl<B: Backend> Sam2Neck<B> {
    /// Loads `vision_encoder.neck.*`.
    pub fn load(w: &Weights<'_>, c: &Sam2VisionConfig, device: &B::Device) -> Result<Self> {
        let convs = c
            .backbone_channel_list
            .iter()
            .enumerate()
            .map(|(j, &cin)| {
                w.pp(format!("convs.{j}")).conv2d(
                    cin,
                    c.fpn_hidden_size,
                    1,
                    1,
                    (0, 0, 0, 0),
                    device,
                )
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Self {
            convs,
            top_down: c.fpn_top_down_levels.clone(),
            levels: c.num_feature_levels,
        })
    }

    /// Stage outputs (`[B, H, W, C]`, high to low resolution) -> the last `num_feature_levels`
    /// FPN levels, `[B, fpn, H, W]`, high to low resolution.
    pub fn forward(&self, stages: &[Tensor<B, 4>]) -> Vec<Tensor<B, 4>> {
        let n = self.convs.len() - 1;
        let mut outs: Vec<Tensor<B, 4>> = Vec::new();
        let mut prev: Option<Tensor<B, 4>> = None;
        for i in (0..=n).rev() {
            let lateral = self.convs[n - i].forward(stages[i].clone().permute([0, 3, 1, 2]));
            let cur = match prev.take() {
                Some(p) if self.top_down.contains(&i) && i != n => {
                    let [b, c, h, w] = p.dims();
                    let up = p
                        .reshape([b, c, h, 1, w, 1])
                        .repeat_dim(3, 2)
                        .repeat_dim(5, 2)
                        .reshape([b, c, 2 * h, 2 * w]);
                    lateral + up
                }
                _ => lateral,
            };
            outs.push(cur.clone());
            prev = Some(cur);
        }
        let k = self.levels.min(outs.len());
        let mut last: Vec<_> = outs.split_off(outs.len() - k);
        last.reverse();
        last
    }
}
