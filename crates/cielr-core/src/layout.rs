//! Fast contiguous copies of permuted tensors for the `flex` CPU backend.
//!
//! Burn 0.21's flex backend makes a view contiguous (before a `reshape` of a `swap_dims`, or
//! inside an element-wise op on a permuted operand) with a generic per-element strided
//! iterator: `perf` on the SD UNet step put ~15% of its time there (the transformer's
//! `[b, c, h·w] ↔ [b, h·w, c]` swaps and the attention output's head merge). [`contiguous`]
//! copies such views by rows when the innermost dimension is contiguous in the input, and
//! as a tiled two-dimensional transpose when another dimension is, in parallel with rayon.
//! Any other view, backend or dtype is returned unchanged (Burn makes it contiguous where it
//! needs to).

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_flex::{FlexTensor, Layout};
use rayon::prelude::*;

use crate::backend::CpuBackend;
use crate::flex_view::{same_type, same_type_back, SharedOut};

/// Rows of the transposed dimension copied per tile (one AVX-512 vector of f32).
const TILE: usize = 16;
/// Elements per parallel task, about.
const TASK_ELEMS: usize = 1 << 15;

crate::flex_view::cpu_kernel_counter! {
    /// How many [`contiguous`] calls made on the current thread copied with this module's
    /// kernel. For tests and diagnostics.
}

/// `x` with a contiguous row-major layout, the same values and shape. On
/// [`CpuBackend`] with `f32` data, a view whose innermost or some other dimension has unit
/// stride (any `swap_dims`/`permute` of a contiguous tensor, and slices of one) is copied by
/// this module's kernel; a tensor that is already contiguous, or any other view, backend or
/// dtype, is returned as it is.
pub fn contiguous<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if !crate::backend::is_cpu_backend::<B>() || x.dtype() != DType::F32 {
        return x;
    }
    match same_type::<_, Tensor<CpuBackend, D>>(x) {
        Ok(t) => {
            let t = t.into_primitive().tensor();
            let out = match copy(&t) {
                Some(out) => {
                    count_kernel_call();
                    out
                }
                None => t,
            };
            same_type_back(Tensor::<CpuBackend, D>::from_primitive(
                TensorPrimitive::Float(out),
            ))
        }
        Err(x) => x,
    }
}

/// The contiguous copy of `t`, or `None` when `t` is contiguous already or not a view the
/// kernel copies.
fn copy(t: &FlexTensor) -> Option<FlexTensor> {
    let layout = t.layout();
    if layout.is_contiguous() || t.dtype() != DType::F32 {
        return None;
    }
    let shape: Vec<usize> = layout.shape().iter().copied().collect();
    let strides: Vec<usize> = layout
        .strides()
        .iter()
        .map(|&s| usize::try_from(s).ok())
        .collect::<Option<_>>()?;
    let rank = shape.len();
    let n: usize = shape.iter().product();
    if rank < 2 || n == 0 {
        return None;
    }
    let data: &[f32] = t.storage();
    let start = layout.start_offset();
    // The largest element read must lie inside the storage.
    let last = shape
        .iter()
        .zip(&strides)
        .try_fold(start, |acc, (&d, &s)| {
            acc.checked_add((d - 1).checked_mul(s)?)
        })?;
    if last >= data.len() {
        return None;
    }
    let inner = rank - 1;
    // The dimension read with unit stride: the innermost one (rows), or another (transpose).
    let unit = if strides[inner] == 1 {
        inner
    } else {
        (0..inner)
            .rev()
            .find(|&d| strides[d] == 1 && shape[d] > 1)?
    };
    let mut out = vec![0.0f32; n];
    let out_ptr = SharedOut(out.as_mut_ptr());
    // Output strides (row-major).
    let mut out_strides = vec![1usize; rank];
    for d in (0..inner).rev() {
        out_strides[d] = out_strides[d + 1] * shape[d + 1];
    }
    // The input and output offsets of the `index`-th combination of the dimensions other
    // than `skip` (row-major over those dimensions).
    let offsets = |mut index: usize, skip: &[usize]| {
        let (mut src, mut dst) = (start, 0usize);
        for d in (0..rank).rev() {
            if skip.contains(&d) {
                continue;
            }
            let i = index % shape[d];
            index /= shape[d];
            src += i * strides[d];
            dst += i * out_strides[d];
        }
        (src, dst)
    };
    let len = shape[inner];
    if unit == inner {
        // Rows: copy `len` contiguous floats per combination of the outer dimensions.
        let rows = n / len;
        let per_task = (TASK_ELEMS / len).max(1);
        (0..rows.div_ceil(per_task))
            .into_par_iter()
            .for_each(|task| {
                for row in task * per_task..((task + 1) * per_task).min(rows) {
                    let (src, dst) = offsets(row, &[inner]);
                    // SAFETY: row `row` of the output, `len` floats at `dst` (distinct rows do
                    // not overlap; dst + len ≤ n), written by this task only.
                    let to = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(dst), len) };
                    to.copy_from_slice(&data[src..src + len]);
                }
            });
    } else {
        // Transpose: dimension `unit` (unit stride in the input) against the innermost one.
        let (rows, cols) = (shape[unit], len);
        let (col_stride, row_out_stride) = (strides[inner], out_strides[unit]);
        let outer = n / (rows * cols);
        let tiles = rows.div_ceil(TILE);
        let per_task = (TASK_ELEMS / (TILE * cols)).max(1);
        let items = outer * tiles;
        (0..items.div_ceil(per_task))
            .into_par_iter()
            .for_each(|task| {
                for item in task * per_task..((task + 1) * per_task).min(items) {
                    let (o, tile) = (item / tiles, item % tiles);
                    let (src, dst) = offsets(o, &[unit, inner]);
                    let r0 = tile * TILE;
                    let r1 = (r0 + TILE).min(rows);
                    for j in 0..cols {
                        let from = &data[src + r0 + j * col_stride..src + r1 + j * col_stride];
                        for (k, &v) in from.iter().enumerate() {
                            // SAFETY: element (row r0 + k, column j) of this outer combination,
                            // inside the output and written by this item only.
                            unsafe { *out_ptr.get().add(dst + (r0 + k) * row_out_stride + j) = v };
                        }
                    }
                }
            });
    }
    Some(FlexTensor::new(
        burn::tensor::Bytes::from_elems(out),
        Layout::contiguous(layout.shape().clone()),
        DType::F32,
    ))
}
