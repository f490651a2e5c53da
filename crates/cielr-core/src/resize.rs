//! Bilinear resizing of `[batch, channels, h, w]` tensors with a kernel for the `flex` CPU
//! backend.
//!
//! [`bilinear`] has the semantics of Burn's `interpolate` in `Bilinear` mode (torch's
//! `F.interpolate(mode="bilinear")` with `align_corners` either way, no antialiasing). Burn
//! flex's implementation maps every output pixel's coordinates in f64 with a libm `floor`
//! per pixel (10% of Depth Anything V2's forward, whose DPT head upsamples its feature maps
//! several times; SAM's mask post-processing upsamples every mask). Here the source rows and
//! columns and their weights are computed once per call; each output pixel is then the same
//! four-term f32 expression as Burn's, in the same order, so the results are identical. The
//! input may be any strided view; work is split over (batch, channel, row block) with rayon.
//! Other backends and dtypes run Burn's `interpolate`.

use burn::tensor::backend::Backend;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_flex::{FlexTensor, Layout};
use rayon::prelude::*;

use crate::backend::CpuBackend;
use crate::flex_view::{same_type, same_type_back, SharedOut, View};

/// Output pixels per parallel task, about.
const TASK_PIXELS: usize = 1 << 14;

crate::flex_view::cpu_kernel_counter! {
    /// How many [`bilinear`] calls made on the current thread ran the CPU kernel. For tests and
    /// diagnostics.
}

/// `x` `[batch, channels, h, w]` resized to `size` = `[out_h, out_w]` by bilinear
/// interpolation (`align_corners` as in torch). Same result as Burn's `interpolate` with
/// `InterpolateMode::Bilinear`, which also reports bad sizes.
pub fn bilinear<B: Backend>(
    x: Tensor<B, 4>,
    size: [usize; 2],
    align_corners: bool,
) -> Tensor<B, 4> {
    if crate::backend::is_cpu_backend::<B>() && x.dtype() == DType::F32 {
        if let Ok(t) = same_type::<_, Tensor<CpuBackend, 4>>(x.clone()) {
            let t = t.into_primitive().tensor();
            if let Some(out) = kernel(&t, size, align_corners) {
                count_kernel_call();
                return same_type_back(Tensor::<CpuBackend, 4>::from_primitive(
                    TensorPrimitive::Float(out),
                ));
            }
        }
    }
    interpolate(
        x,
        size,
        InterpolateOptions::new(InterpolateMode::Bilinear).with_align_corners(align_corners),
    )
}

/// For each output coordinate along one axis: the low and high source indices and the
/// weight of the high one, computed as Burn flex computes them.
fn axis_taps(input: usize, output: usize, align_corners: bool) -> Vec<(usize, usize, f32)> {
    let ratio = if align_corners {
        (input as f64 - 1.0) / (output.max(1) - 1).max(1) as f64
    } else {
        input as f64 / output as f64
    };
    (0..output)
        .map(|o| {
            let src = if align_corners {
                o as f64 * ratio
            } else {
                (o as f64 + 0.5) * ratio - 0.5
            };
            let low = (src.floor().max(0.0)) as usize;
            let high = (low + 1).min(input - 1);
            (low, high, (src - low as f64).max(0.0) as f32)
        })
        .collect()
}

/// The kernel on an f32 flex tensor; `None` for shapes it leaves to Burn (empty input or
/// output).
fn kernel(x: &FlexTensor, [oh, ow]: [usize; 2], align_corners: bool) -> Option<FlexTensor> {
    let xv = View::of_f32(x)?;
    let [b, c, h, w] = xv.shape;
    if b * c * h * w == 0 || oh * ow == 0 {
        return None;
    }
    let rows = axis_taps(h, oh, align_corners);
    let cols = axis_taps(w, ow, align_corners);
    let planes = b * c;
    let rows_per_task = (TASK_PIXELS / ow).clamp(1, oh);
    let blocks = oh.div_ceil(rows_per_task);
    let mut out = vec![0.0f32; planes * oh * ow];
    let out_ptr = SharedOut(out.as_mut_ptr());
    let (sy, sx) = (xv.strides[2], xv.strides[3]);
    (0..planes * blocks).into_par_iter().for_each(|item| {
        let (plane, blk) = (item / blocks, item % blocks);
        let (bi, ci) = (plane / c, plane % c);
        let base = xv.at(bi, ci, 0, 0);
        let y_range = blk * rows_per_task..((blk + 1) * rows_per_task).min(oh);
        for y in y_range {
            let (y0, y1, wy) = rows[y];
            let (r0, r1) = (base + y0 * sy, base + y1 * sy);
            // SAFETY: output row y of this plane, `ow` floats, written by this item only.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(out_ptr.get().add((plane * oh + y) * ow), ow)
            };
            for (o, &(x0, x1, wx)) in dst.iter_mut().zip(&cols) {
                let p_a = xv.data[r0 + x0 * sx];
                let p_b = xv.data[r0 + x1 * sx];
                let p_c = xv.data[r1 + x0 * sx];
                let p_d = xv.data[r1 + x1 * sx];
                *o = p_a * (1.0 - wx) * (1.0 - wy)
                    + p_b * wx * (1.0 - wy)
                    + p_c * (1.0 - wx) * wy
                    + p_d * wx * wy;
            }
        }
    });
    Some(FlexTensor::new(
        burn::tensor::Bytes::from_elems(out),
        Layout::contiguous(burn::tensor::Shape::from(vec![b, c, oh, ow])),
        DType::F32,
    ))
}
