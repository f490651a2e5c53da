//! A direct (im2col-free) 2-D convolution for the `flex` CPU backend, with zero or reflection
//! padding.
//!
//! [`conv2d`] has the semantics of `burn::tensor::module::conv2d`, and [`conv2d_module`]
//! those of `burn::nn::conv::Conv2d::forward`; [`conv2d_module_reflect`] is the same
//! convolution with the border filled by reflection (torch's `padding_mode="reflect"`). For
//! [`CpuBackend`] with `f32` tensors, dilation 1 and one group (any stride) they run our
//! kernel; everything else (other backends or dtypes, dilated or grouped convolutions, shapes
//! the kernel does not take) goes to Burn unchanged, which also reports bad shapes.
//!
//! The kernel never builds an im2col matrix or a padded copy of the input. For stride 1,
//! think of the input as padded channel planes of `Hp × Wp` (`Hp = H + top + bottom`,
//! `Wp = W + left + right`) and compute the output on the padded width: output pixel
//! `p = y·Wp + x` (columns `x ≥ Wo` are junk and dropped). For every kernel tap `(ky, kx)`
//!
//! ```text
//! out[p, co] += Σ_ci X[ci, p + ky·Wp + kx] · W[co, ci, ky, kx]
//! ```
//!
//! is then one plain matrix product whose left operand is a contiguous column window of
//! the padded planes, read in place by `gemm`. A stride `(sh, sw)` splits the padded input
//! into `sh·sw` phases (rows `≡ a mod sh`, columns `≡ b mod sw`); tap `(ky, kx)` reads phase
//! `(ky mod sh, kx mod sw)` shifted by `(ky / sh, kx / sw)` with stride 1, so the same
//! product applies on the phase planes (width `Wq = Wo + (kw - 1) / sw`).
//!
//! Work items are (batch item, block of output rows), run in parallel with rayon. Each copies
//! the padded input rows it needs, phase by phase, into a small window (the padding is
//! written there: zeros or reflected pixels, so no padded copy of the whole input is ever
//! allocated, and the window is cache-hot for the gemm calls), starts its scratch output
//! block with the bias, accumulates the `kh·kw` taps into it (single-threaded `gemm`; the
//! gemm row count is rounded up to a multiple of 16, which spares `gemm` a full copy of the
//! window) and copies the valid columns into the output. Tap weights are reordered once per
//! call into `[co, ci]` matrices. A 1x1 stride-1 convolution without padding is one
//! multi-threaded `gemm` per batch item, straight from the input.
//!
//! Measured (`examples/conv_bench.rs`, 2 threads, shared 2-core AMD EPYC): 1.3–1.9x faster
//! than Burn 0.21's flex conv2d on SD VAE / UNet 3x3 and LaMa 7x7 shapes, on par for 1x1.

use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::tensor::backend::Backend;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::backend::CpuBackend;
use crate::flex_view::{same_type, same_type_back, SharedOut, View};

/// Target size, in floats, of one work item's scratch output block (`out channels ×
/// pixels`): small enough to stay in a core's L2 cache across the kernel taps.
const SCRATCH_FLOATS: usize = 1 << 16;
/// The gemm row count is rounded up to a multiple of this (the f32 lanes of AVX-512): for
/// other row counts `gemm` first copies the whole left operand (the input window).
const M_ALIGN: usize = 16;
/// Work items per rayon thread the row blocking aims for (when the image is big enough).
const ITEMS_PER_THREAD: usize = 4;

crate::flex_view::cpu_kernel_counter! {
    /// How many [`conv2d`] / [`conv2d_module`] calls made on the current thread ran the CPU
    /// kernel (rather than Burn's convolution). For tests and diagnostics.
}

/// How a convolution fills the border its padding adds around the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Border {
    /// Zeros (Burn's and torch's default).
    #[default]
    Zeros,
    /// The input reflected at its edge, without repeating the edge pixel (torch's
    /// `padding_mode="reflect"`, `F.pad(mode="reflect")`); each padding must be smaller than
    /// the input side it pads.
    Reflect,
}

/// Whether [`conv2d`] takes the CPU kernel for backend `B`, input dtype `dtype` and the
/// given stride, dilation and groups (it still falls back to Burn on shapes it does not
/// handle): `B` is [`CpuBackend`], the dtype `f32`, strides at least 1, dilation `[1, 1]`,
/// one group.
pub fn uses_cpu_kernel<B: Backend>(
    dtype: DType,
    stride: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
) -> bool {
    crate::backend::is_cpu_backend::<B>()
        && dtype == DType::F32
        && !stride.contains(&0)
        && dilation == [1, 1]
        && groups == 1
}

/// `burn::tensor::module::conv2d` with the same arguments and result: `x` `[batch,
/// channels_in, height, width]`, `weight` `[channels_out, channels_in / groups, kh, kw]`,
/// optional `bias` `[channels_out]`; returns `[batch, channels_out, out_h, out_w]`.
///
/// Runs the direct CPU kernel of this module when [`uses_cpu_kernel`] says so and the
/// shapes are consistent, Burn's conv2d otherwise.
pub fn conv2d<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    options: ConvOptions<2>,
) -> Tensor<B, 4> {
    let [ph, pw] = options.padding;
    match try_kernel(
        (x, weight, bias),
        options.stride,
        options.dilation,
        options.groups,
        ([ph, pw, ph, pw], Border::Zeros),
    ) {
        Ok(out) => out,
        Err((x, weight, bias)) => burn::tensor::module::conv2d(x, weight, bias, options),
    }
}

/// `conv.forward(x)` for a `burn::nn::conv::Conv2d` module, through [`conv2d`]'s kernel:
/// the module's stride, dilation, groups and padding are honoured (`Explicit` padding may
/// be asymmetric; `Same` is mapped exactly for stride 1). Whatever the kernel does not take
/// runs `conv.forward(x)`.
pub fn conv2d_module<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let Some(pads) = module_pads(conv) else {
        return conv.forward(x);
    };
    let args = (x, conv.weight.val(), conv.bias.as_ref().map(|b| b.val()));
    match try_kernel(
        args,
        conv.stride,
        conv.dilation,
        conv.groups,
        (pads, Border::Zeros),
    ) {
        Ok(out) => out,
        Err((x, _, _)) => conv.forward(x),
    }
}

/// [`conv2d_module`] with the module's padding filled by reflecting the input
/// ([`Border::Reflect`]) instead of zeros: torch's `Conv2d(padding_mode="reflect")`, or
/// `F.pad(x, mode="reflect")` followed by an unpadded convolution, without the padded copy on
/// the CPU backend. Elsewhere (and for what the kernel does not take) the input is padded with
/// Burn's `pad` and convolved by Burn. Each padding must be smaller than the side it pads.
pub fn conv2d_module_reflect<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let pads = module_pads(conv).unwrap_or_else(|| {
        // `Same` with a stride: Burn's own rule, which ignores the input size.
        let [kh, kw] = conv.kernel_size;
        let (th, tw) = (kh.saturating_sub(1), kw.saturating_sub(1));
        [th / 2, tw / 2, th - th / 2, tw - tw / 2]
    });
    let bias = conv.bias.as_ref().map(|b| b.val());
    let args = (x, conv.weight.val(), bias);
    match try_kernel(
        args,
        conv.stride,
        conv.dilation,
        conv.groups,
        (pads, Border::Reflect),
    ) {
        Ok(out) => out,
        Err((x, weight, bias)) => {
            let [top, left, bottom, right] = pads;
            let padded = x.pad(
                (left, right, top, bottom),
                burn::tensor::ops::PadMode::Reflect,
            );
            let options = ConvOptions::new(conv.stride, [0, 0], conv.dilation, conv.groups);
            burn::tensor::module::conv2d(padded, weight, bias, options)
        }
    }
}

/// A module's padding as `[top, left, bottom, right]`; `None` for `Same` with a stride other
/// than 1 (which the kernel leaves to Burn).
fn module_pads<B: Backend>(conv: &Conv2d<B>) -> Option<[usize; 4]> {
    let [kh, kw] = conv.kernel_size;
    match conv.padding {
        PaddingConfig2d::Valid => Some([0, 0, 0, 0]),
        PaddingConfig2d::Explicit(top, left, bottom, right) => Some([top, left, bottom, right]),
        // Burn's `Same` for stride 1 pads `k - 1` in total, the smaller half first (it does
        // not look at the dilation; the kernel only runs with dilation 1 anyway).
        PaddingConfig2d::Same if conv.stride == [1, 1] => {
            let (th, tw) = (kh.saturating_sub(1), kw.saturating_sub(1));
            Some([th / 2, tw / 2, th - th / 2, tw - tw / 2])
        }
        PaddingConfig2d::Same => None,
    }
}

/// Input, weight and bias of one convolution.
type Args<B> = (Tensor<B, 4>, Tensor<B, 4>, Option<Tensor<B, 1>>);

/// Runs the kernel when it applies (`padding` = `[top, left, bottom, right]` and how the
/// border is filled); otherwise hands the arguments back untouched.
fn try_kernel<B: Backend>(
    args: Args<B>,
    stride: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
    padding: ([usize; 4], Border),
) -> Result<Tensor<B, 4>, Args<B>> {
    if !uses_cpu_kernel::<B>(args.0.dtype(), stride, dilation, groups) {
        return Err(args);
    }
    let (x, w, b) = same_type::<_, Args<CpuBackend>>(args)?;
    let xp = x.into_primitive().tensor();
    let wp = w.into_primitive().tensor();
    let bp = b.map(|b| b.into_primitive().tensor());
    let Some(out) = run_kernel(&xp, &wp, bp.as_ref(), stride, padding) else {
        // Handed back untouched.
        let args: Args<CpuBackend> = (
            Tensor::from_primitive(TensorPrimitive::Float(xp)),
            Tensor::from_primitive(TensorPrimitive::Float(wp)),
            bp.map(|b| Tensor::from_primitive(TensorPrimitive::Float(b))),
        );
        return Err(same_type_back(args));
    };
    count_kernel_call();
    Ok(same_type_back(Tensor::<CpuBackend, 4>::from_primitive(
        TensorPrimitive::Float(out),
    )))
}

/// The 1x1, unpadded convolution of `xv` (whose pixel `y·W + x` lies at stride
/// `strides[3]`) with the `[co, ci, 1, 1]` weight `wv`, plus `bias`.
fn pointwise(xv: &View<'_, f32>, wv: &View<'_, f32>, bias: Option<&[f32]>) -> FlexTensor {
    let [batch, ci, h, wd] = xv.shape;
    let co = wv.shape[0];
    let hw = h * wd;
    let mut out = vec![0.0f32; batch * co * hw];
    let threads = rayon::current_num_threads().max(1);
    // The bias is written first (see `fill_bias`).
    let ones = vec![1.0f32; if bias.is_some() { hw } else { 0 }];
    for (b, dst) in out.chunks_exact_mut(co * hw).enumerate() {
        if let Some(bias) = bias {
            fill_bias(dst, hw, bias, &ones);
        }
        // SAFETY: dst is `co` columns of `hw` floats (stride hw), exactly `dst`. lhs element
        // (p, c) is at xv.at(b, c, 0, 0) + p·strides[3] + c·strides[1] = xv.at(b, c, p / W,
        // p % W) (strides[2] = W·strides[3]), inside the storage as checked by `View::of_f32`.
        // rhs element (c, o) is wv.at(o, c, 0, 0), inside the storage (`View::of_f32`).
        unsafe {
            gemm::gemm(
                hw,
                co,
                ci,
                dst.as_mut_ptr(),
                hw as isize,
                1,
                bias.is_some(),
                xv.data.as_ptr().add(xv.at(b, 0, 0, 0)),
                xv.strides[1] as isize,
                xv.strides[3] as isize,
                wv.data.as_ptr().add(wv.offset),
                wv.strides[0] as isize,
                wv.strides[1] as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(threads),
            );
        }
    }
    let shape = burn::tensor::Shape::from(vec![batch, co, h, wd]);
    FlexTensor::new(
        burn::tensor::Bytes::from_elems(out),
        burn_flex::Layout::contiguous(shape),
        DType::F32,
    )
}

/// Writes `bias[c]` into every element of column `c` of the `rows × bias.len()` column-major
/// block at the start of `dst` (column stride `rows`), as the rank-1 product `ones · biasᵀ`
/// (so that every loop over all output elements is inside `gemm` or a `memcpy`). `ones` holds
/// at least `rows` ones.
fn fill_bias(dst: &mut [f32], rows: usize, bias: &[f32], ones: &[f32]) {
    let co = bias.len();
    assert!(
        ones.len() >= rows && dst.len() >= rows * co,
        "fill_bias: buffers too small"
    );
    // SAFETY: dst is `co` columns of `rows` floats (stride rows), inside `dst` (checked above);
    // lhs is `rows` ones (one column), inside `ones`; rhs the `co` bias values (one row,
    // column stride 1).
    unsafe {
        gemm::gemm(
            rows,
            co,
            1,
            dst.as_mut_ptr(),
            rows as isize,
            1,
            false,
            ones.as_ptr(),
            1,
            1,
            bias.as_ptr(),
            1,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Marks a window column with no input pixel behind it (zero padding, or past the padded
/// input), in [`Phase::src`].
const NONE: usize = usize::MAX;

/// The input pixel behind index `padded` of a padded axis: `pad` added before `n` input
/// pixels, `padded_len` in all. `None` for zero padding and past the padded axis.
fn source(padded: usize, pad: usize, n: usize, padded_len: usize, border: Border) -> Option<usize> {
    if padded >= padded_len {
        return None;
    }
    match padded.checked_sub(pad) {
        Some(i) if i < n => Some(i),
        // Reflection needs pad < n (checked by `run_kernel`), so these stay inside.
        Some(i) if border == Border::Reflect => Some(2 * (n - 1) - i),
        None if border == Border::Reflect => Some(pad - padded),
        _ => None,
    }
}

/// The input columns behind the window columns of one column phase.
struct Phase {
    /// `src[j]`: the input column of window column `j`, or [`NONE`].
    src: Vec<usize>,
    /// Window columns whose sources are consecutive input columns (copied as one run).
    run: std::ops::Range<usize>,
}

/// How work items read the input: stride, padding and the phase planes' layout.
struct Geometry {
    /// `[sh, sw]`.
    stride: [usize; 2],
    /// Rows added above the input.
    top: usize,
    /// Padded height.
    hp: usize,
    /// Width of a phase plane's rows.
    wq: usize,
    border: Border,
    /// Per column phase `0..sw`.
    phases: Vec<Phase>,
}

impl Geometry {
    fn new(
        stride: [usize; 2],
        pads: [usize; 4],
        border: Border,
        [h, wd]: [usize; 2],
        wq: usize,
    ) -> Self {
        let [top, left, bottom, right] = pads;
        let (hp, wp) = (h + top + bottom, wd + left + right);
        let sw = stride[1];
        let phases = (0..sw)
            .map(|b| {
                let src: Vec<usize> = (0..wq)
                    .map(|j| source(sw * j + b, left, wd, wp, border).unwrap_or(NONE))
                    .collect();
                // With stride 1 the image's own columns are one run; with a larger stride
                // no two window columns are adjacent in the input.
                let run = if sw == 1 {
                    left.min(wq)..(left + wd).min(wq)
                } else {
                    0..0
                };
                Phase { src, run }
            })
            .collect();
        Geometry {
            stride,
            top,
            hp,
            wq,
            border,
            phases,
        }
    }
}

/// Fills `win` with the padded input rows of output rows `y0..` of batch item `b`: for each
/// phase `(a, c)` of the stride (`a` of the rows, `c` of the columns), `ci` planes `plane`
/// floats apart, each `rows` phase rows of `geom.wq` floats; phase row `i` is padded input
/// row `sh·(y0 + i) + a`, its column `j` padded column `sw·j + c`.
fn fill_window(
    win: &mut [f32],
    xv: &View<'_, f32>,
    b: usize,
    y0: usize,
    rows: usize,
    plane: usize,
    geom: &Geometry,
) {
    let [_, ci, h, _] = xv.shape;
    let [sh, sw] = geom.stride;
    let wq = geom.wq;
    let s = xv.strides[3];
    for a in 0..sh {
        for (pc, phase) in geom.phases.iter().enumerate() {
            let first = (a * sw + pc) * ci;
            for c in 0..ci {
                let dst = &mut win[(first + c) * plane..(first + c) * plane + rows * wq];
                for (r, row) in dst.chunks_exact_mut(wq).enumerate() {
                    let padded = sh * (y0 + r) + a;
                    let Some(iy) = source(padded, geom.top, h, geom.hp, geom.border) else {
                        row.fill(0.0);
                        continue;
                    };
                    let at = xv.at(b, c, iy, 0);
                    let gather = |v: &mut f32, &ix: &usize| {
                        *v = if ix == NONE {
                            0.0
                        } else {
                            xv.data[at + ix * s]
                        };
                    };
                    let run = phase.run.clone();
                    row[..run.start]
                        .iter_mut()
                        .zip(&phase.src[..run.start])
                        .for_each(|(v, ix)| gather(v, ix));
                    row[run.end..]
                        .iter_mut()
                        .zip(&phase.src[run.end..])
                        .for_each(|(v, ix)| gather(v, ix));
                    if run.is_empty() {
                        continue;
                    }
                    let from = at + phase.src[run.start] * s;
                    if s == 1 {
                        row[run.clone()].copy_from_slice(&xv.data[from..from + run.len()]);
                    } else {
                        row[run]
                            .iter_mut()
                            .enumerate()
                            .for_each(|(i, v)| *v = xv.data[from + i * s]);
                    }
                }
            }
        }
    }
}

/// The whole convolution: `None` (nothing done) when the tensors are not what the kernel
/// handles. `pads` = `[top, left, bottom, right]`.
fn run_kernel(
    x: &FlexTensor,
    w: &FlexTensor,
    bias: Option<&FlexTensor>,
    stride: [usize; 2],
    (pads, border): ([usize; 4], Border),
) -> Option<FlexTensor> {
    // Negative strides (flipped views) are rare: read a contiguous copy then.
    let x_owned;
    let x = if x.layout().has_positive_strides() {
        x
    } else {
        x_owned = x.to_contiguous();
        &x_owned
    };
    let w_owned;
    let w = if w.layout().has_positive_strides() {
        w
    } else {
        w_owned = w.to_contiguous();
        &w_owned
    };
    let xv = View::of_f32(x)?;
    let wv = View::of_f32(w)?;
    let [batch, ci, h, wd] = xv.shape;
    let [co, wci, kh, kw] = wv.shape;
    if wci != ci || [batch, ci, h, wd, co, kh, kw].contains(&0) {
        return None;
    }
    let bias_data: Option<Vec<f32>> = match bias {
        None => None,
        Some(b) => {
            let layout = b.layout();
            if b.dtype() != DType::F32 || layout.num_dims() != 1 || layout.shape()[0] != co {
                return None;
            }
            let b = b.to_contiguous();
            Some(b.storage::<f32>().get(..co)?.to_vec())
        }
    };
    let [top, left, bottom, right] = pads;
    let [sh, sw] = stride;
    if sh == 0 || sw == 0 {
        return None;
    }
    if border == Border::Reflect && (top.max(bottom) >= h || left.max(right) >= wd) {
        return None;
    }
    let hp = h.checked_add(top)?.checked_add(bottom)?;
    let wp = wd.checked_add(left)?.checked_add(right)?;
    if hp < kh || wp < kw {
        return None;
    }
    let (ho, wo) = ((hp - kh) / sh + 1, (wp - kw) / sw + 1);
    let out_len = batch.checked_mul(co)?.checked_mul(ho)?.checked_mul(wo)?;
    let taps = kh * kw;
    let w_len = taps.checked_mul(ci)?.checked_mul(co)?;
    // Phase planes: `wq` columns, and `halo` rows more than the output rows they serve.
    let phases = sh.checked_mul(sw)?;
    let wq = wo + (kw - 1) / sw;
    let halo = (kh - 1) / sh;
    // Each work item's window (below) is at most `phases·ci` planes of `ho + halo` rows.
    let win_bound = phases
        .checked_mul(ci)?
        .checked_mul(ho.checked_add(halo)?.checked_mul(wq)?)?
        .checked_add(M_ALIGN)?;
    // gemm takes isize strides.
    isize::try_from(win_bound.max(out_len).max(w_len)).ok()?;

    // 1x1 without padding or stride over pixels that are evenly strided (any contiguous
    // NCHW input): one multi-threaded gemm per batch item straight from the input to the
    // output.
    if kh == 1
        && kw == 1
        && pads == [0; 4]
        && stride == [1, 1]
        && xv.strides[2] == wd * xv.strides[3]
    {
        return Some(pointwise(&xv, &wv, bias_data.as_deref()));
    }

    // Weights per tap as `[co, ci]` row-major matrices, i.e. the `ci × co` right operand
    // column-major (row stride 1), which `gemm` reads in place for moderate row counts.
    let mut wt = vec![0.0f32; w_len];
    wt.par_chunks_mut(ci * co).enumerate().for_each(|(t, dst)| {
        let (ky, kx) = (t / kw, t % kw);
        for (c_out, row) in dst.chunks_exact_mut(ci).enumerate() {
            for (c_in, v) in row.iter_mut().enumerate() {
                *v = wv.data[wv.at(c_out, c_in, ky, kx)];
            }
        }
    });

    // Blocks of whole output rows per work item.
    let threads = rayon::current_num_threads().max(1);
    // At least about halo/2 rows, so that a window is not mostly halo.
    let by_cache = (SCRATCH_FLOATS / co / wq).max(halo.div_ceil(2)).max(1);
    let by_threads = (ho * batch).div_ceil(ITEMS_PER_THREAD * threads).max(1);
    let rows_per_block = by_cache.min(by_threads).min(ho);
    let blocks = ho.div_ceil(rows_per_block);
    let max_m = ((rows_per_block - 1) * wq + wo).next_multiple_of(M_ALIGN);
    // Each work item's padded input window: for each of the `phases` phases, `ci` planes of
    // the `rows + halo` phase rows its output rows read, `plane` floats apart.
    let plane = (rows_per_block + halo) * wq;
    let win_len = phases * ci * plane + M_ALIGN;
    let scratch_len = co.checked_mul(max_m)?;
    let geom = Geometry::new(stride, pads, border, [h, wd], wq);

    let mut out = vec![0.0f32; out_len];
    let out_ptr = SharedOut(out.as_mut_ptr());
    let bias_ref = bias_data.as_deref();
    // The bias enters each block through `fill_bias`.
    let ones = vec![1.0f32; max_m];
    let (wt, ones) = (&wt[..], &ones[..]);
    (0..batch * blocks).into_par_iter().for_each_init(
        || (vec![0.0f32; scratch_len], vec![0.0f32; win_len]),
        |(scratch, win), item| {
            let (b, blk) = (item / blocks, item % blocks);
            let y0 = blk * rows_per_block;
            let rows = rows_per_block.min(ho - y0);
            fill_window(win, &xv, b, y0, rows + halo, plane, &geom);
            // Rows of the gemm: the block's pixels, rounded up (see `M_ALIGN`).
            let m = ((rows - 1) * wq + wo).next_multiple_of(M_ALIGN);
            if let Some(bs) = bias_ref {
                fill_bias(scratch, m, bs, ones);
            }
            for t in 0..taps {
                let (ky, kx) = (t / kw, t % kw);
                // Tap (ky, kx) reads phase (ky mod sh, kx mod sw), shifted by (ky / sh, kx / sw).
                let base = ((ky % sh) * sw + kx % sw) * ci * plane + (ky / sh) * wq + kx / sw;
                // SAFETY: dst is `co` columns of `m` floats (stride m) inside `scratch`
                // (co·max_m ≥ co·m). lhs element (p, c) is win[base + c·plane + p] with
                // p < m, c < ci; without the rounding of m its largest index would be
                // (phases·ci - 1)·plane + (rows - 1 + halo)·wq + wo - 1 + (kw - 1) / sw
                // = (phases·ci - 1)·plane + (rows + halo)·wq - 1 < phases·ci·plane
                // (wq = wo + (kw - 1) / sw, rows ≤ rows_per_block); the rounding adds at most
                // M_ALIGN - 1, inside the M_ALIGN floats of slack. Columns past a window's
                // filled rows hold stale values that only reach junk output columns. rhs is
                // tap t's `ci × co` matrix (column stride ci) inside `wt`.
                unsafe {
                    gemm::gemm(
                        m,
                        co,
                        ci,
                        scratch.as_mut_ptr(),
                        m as isize,
                        1,
                        t > 0 || bias_ref.is_some(),
                        win.as_ptr().add(base),
                        plane as isize,
                        1,
                        wt.as_ptr().add(t * ci * co),
                        ci as isize,
                        1,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
            for c_out in 0..co {
                let src = &scratch[c_out * m..(c_out + 1) * m];
                for r in 0..rows {
                    let from = &src[r * wq..r * wq + wo];
                    let at = ((b * co + c_out) * ho + y0 + r) * wo;
                    // SAFETY: `at..at + wo` is row y0 + r of channel c_out of batch item b,
                    // inside `out` (out_len = batch·co·ho·wo) and written by this item only.
                    let dst = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(at), wo) };
                    dst.copy_from_slice(from);
                }
            }
        },
    );
    let shape = burn::tensor::Shape::from(vec![batch, co, ho, wo]);
    Some(FlexTensor::new(
        burn::tensor::Bytes::from_elems(out),
        burn_flex::Layout::contiguous(shape),
        DType::F32,
    ))
}
