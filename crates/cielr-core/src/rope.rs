//! Rotary position embedding ("rotate half" layout) with a one-pass kernel for the `flex`
//! CPU backend.
//!
//! [`rotate_half`] computes, for `x` `[batch, heads, seq, head_dim]` and per-position
//! `cos`/`sin` `[1 or batch, 1, seq, head_dim / 2]`, channel `j < d/2` as
//! `x[j]·cos[j] − x[j + d/2]·sin[j]` and channel `j + d/2` as `x[j + d/2]·cos[j] + x[j]·sin[j]`
//! (transformers' `apply_rotary_pos_emb` for Llama, Qwen2, Qwen3). The language model's
//! queries and keys arrive as strided views (`[b, seq, heads, d]` swapped to heads first);
//! written with Burn's ops, the two halves, the four broadcast products and the concatenation
//! each walk Burn flex's per-element strided iterator: 11% of a 128-token SmolLM2 prefill
//! (`perf`). On [`CpuBackend`] with `f32` tensors the kernel reads the views in place and
//! writes the contiguous result in one pass, in parallel over rows with rayon (the same f32
//! operations, so the same values); other backends and dtypes run the Burn formula.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_flex::{FlexTensor, Layout};
use rayon::prelude::*;

use crate::backend::CpuBackend;
use crate::flex_view::{same_type, same_type_back, SharedOut, View};

/// Rows (positions of one head) per parallel task, about.
const ROWS_PER_TASK: usize = 64;

crate::flex_view::cpu_kernel_counter! {
    /// How many [`rotate_half`] calls made on the current thread ran the CPU kernel. For tests
    /// and diagnostics.
}

/// The rotary embedding of `x` `[batch, heads, seq, head_dim]` (even `head_dim`) with
/// `cos`/`sin` `[1 or batch, 1, seq, head_dim / 2]` (see the module docs); the result is
/// contiguous on the CPU backend.
pub fn rotate_half<B: Backend>(
    x: Tensor<B, 4>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
) -> Tensor<B, 4> {
    if crate::backend::is_cpu_backend::<B>() && x.dtype() == DType::F32 {
        let args = (x.clone(), cos.clone(), sin.clone());
        if let Ok((xc, cc, sc)) = same_type::<
            _,
            (
                Tensor<CpuBackend, 4>,
                Tensor<CpuBackend, 4>,
                Tensor<CpuBackend, 4>,
            ),
        >(args)
        {
            let (xp, cp, sp) = (
                xc.into_primitive().tensor(),
                cc.into_primitive().tensor(),
                sc.into_primitive().tensor(),
            );
            if let Some(out) = kernel(&xp, &cp, &sp) {
                count_kernel_call();
                return same_type_back(Tensor::<CpuBackend, 4>::from_primitive(
                    TensorPrimitive::Float(out),
                ));
            }
        }
    }
    let half = x.dims()[3] / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    let r1 = x1.clone() * cos.clone() - x2.clone() * sin.clone();
    let r2 = x2 * cos.clone() + x1 * sin.clone();
    Tensor::cat(vec![r1, r2], 3)
}

/// The kernel on f32 flex tensors; `None` when the shapes or dtypes are not what it takes.
fn kernel(x: &FlexTensor, cos: &FlexTensor, sin: &FlexTensor) -> Option<FlexTensor> {
    if cos.dtype() != DType::F32 || sin.dtype() != DType::F32 {
        return None;
    }
    let xv = View::of_f32(x)?;
    let [b, h, s, d] = xv.shape;
    if d % 2 != 0 || b * h * s * d == 0 {
        return None;
    }
    let half = d / 2;
    let cv = View::new(cos.storage::<f32>(), cos, [b, h, s, half])?;
    let sv = View::new(sin.storage::<f32>(), sin, [b, h, s, half])?;
    let rows = b * h * s;
    let mut out = vec![0.0f32; rows * d];
    let out_ptr = SharedOut(out.as_mut_ptr());
    (0..rows.div_ceil(ROWS_PER_TASK))
        .into_par_iter()
        .for_each(|task| {
            let mut x1 = vec![0.0f32; half];
            let mut x2 = vec![0.0f32; half];
            let mut c = vec![0.0f32; half];
            let mut sn = vec![0.0f32; half];
            for row in task * ROWS_PER_TASK..((task + 1) * ROWS_PER_TASK).min(rows) {
                let (bh, i) = (row / s, row % s);
                let (bi, hi) = (bh / h, bh % h);
                let gather = |v: &View<'_, f32>, dst: &mut [f32], from: usize| {
                    let at = v.at(bi, hi, i, from);
                    let st = v.strides[3];
                    dst.iter_mut()
                        .enumerate()
                        .for_each(|(j, o)| *o = v.data[at + j * st]);
                };
                gather(&xv, &mut x1, 0);
                gather(&xv, &mut x2, half);
                gather(&cv, &mut c, 0);
                gather(&sv, &mut sn, 0);
                // SAFETY: row `row` of the contiguous output, `d` floats, written by this
                // task only.
                let o = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(row * d), d) };
                let (o1, o2) = o.split_at_mut(half);
                for j in 0..half {
                    o1[j] = x1[j] * c[j] - x2[j] * sn[j];
                    o2[j] = x2[j] * c[j] + x1[j] * sn[j];
                }
            }
        });
    Some(FlexTensor::new(
        burn::tensor::Bytes::from_elems(out),
        Layout::contiguous(burn::tensor::Shape::from(vec![b, h, s, d])),
        DType::F32,
    ))
}
