//! GELU (exact, erf form) and SiLU with a fused, vectorised, multi-threaded kernel for the
//! `flex` CPU backend.
//!
//! [`gelu`] and [`silu`] have the semantics of `burn::tensor::activation::{gelu, silu}`. For
//! [`CpuBackend`] with `f32` data they run one pass over the tensor's storage: in place when
//! the tensor owns its buffer, into one new buffer otherwise; split into chunks of [`CHUNK`]
//! elements run in parallel with rayon, each chunk's loop compiled for AVX-512, AVX2 and the
//! baseline instruction set and picked at run time. Every other backend or dtype goes to
//! Burn's functions unchanged.
//!
//! Burn's flex GELU calls a scalar `erff` per element and its SiLU is two passes (`sigmoid`,
//! then a multiply) with a scalar `expf`; here `erf` is our own branch-free f32 approximation
//! (below) and `exp` the polynomial of [`crate::attention`], both plain f32 arithmetic that
//! LLVM vectorises.
//!
//! `erf(x)`, with `t = |x|`:
//! - `t < 0.9`: `x·A(x²)`, `A` a degree-5 polynomial;
//! - otherwise: `sign(x)·(1 − e^(−t²)·N(u)/D(u))`, `u = min(t, 4)`, `N`, `D` quadratics fitted
//!   to `erfcx(t) = e^(t²)·erfc(t)`; both branches are computed and one is selected.
//!
//! The coefficients are minimax fits (absolute error of `erf`) made by
//! `tools/core/erf_fit.py`. Measured: at most 9.45e-8 from the f64 `erf` over every f32
//! input (`ACT_BENCH_ERF_EXHAUSTIVE=1` in `examples/activation_bench.rs`; odd exactly), ±1
//! exactly for `|x| ≥ 4`, ±inf → ±1, NaN → NaN. GELU is then within 1.5e-7·max(1, |x|) of
//! the exact value, SiLU within 3 ulp (above 2⁻¹⁰⁰; both tested).
//!
//! Special values: `gelu(+inf) = silu(+inf) = +inf`, `gelu(−inf) = silu(−inf) = −0` (Burn gives
//! NaN there), NaN stays NaN.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_flex::{FlexTensor, Layout};
use rayon::prelude::*;

use crate::attention::{exp_lane, multiversion, SimdLevel, LANES};
use crate::backend::CpuBackend;
use crate::flex_view::{same_type, same_type_back};

/// Elements per parallel task.
pub const CHUNK: usize = 32 * 1024;

crate::flex_view::cpu_kernel_counter! {
    /// How many [`gelu`] / [`silu`] calls made on the current thread ran the CPU kernel (rather
    /// than Burn's function). For tests and diagnostics.
}

/// Whether [`gelu`] and [`silu`] take the CPU kernel for backend `B` and tensor dtype
/// `dtype`: `B` is [`CpuBackend`] and the dtype `f32`.
pub fn uses_cpu_kernel<B: Backend>(dtype: DType) -> bool {
    crate::backend::is_cpu_backend::<B>() && dtype == DType::F32
}

/// The element-wise functions of this module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Activation {
    Gelu,
    Silu,
    QuickGelu,
}

/// GELU with the exact erf form, `0.5·x·(1 + erf(x/√2))` (what
/// `burn::tensor::activation::gelu` computes). Runs the CPU kernel of this module when
/// [`uses_cpu_kernel`] says so, Burn's `gelu` otherwise.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    apply(x, Activation::Gelu, burn::tensor::activation::gelu)
}

/// SiLU, `x·sigmoid(x)` (`burn::tensor::activation::silu`).
/// Runs the CPU kernel of this module when [`uses_cpu_kernel`] says so, Burn's `silu`
/// otherwise.
pub fn silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    apply(x, Activation::Silu, burn::tensor::activation::silu)
}

/// OpenAI CLIP's `quick_gelu`, `x·sigmoid(1.702·x)` (CLIP and OWLv2 towers). Runs the CPU
/// kernel of this module when [`uses_cpu_kernel`] says so (one pass; Burn's ops take three with
/// a scalar `expf`), Burn's `x * sigmoid(x * 1.702)` otherwise.
pub fn quick_gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    apply(x, Activation::QuickGelu, |x| {
        x.clone() * burn::tensor::activation::sigmoid(x * QUICK_GELU_SCALE)
    })
}

/// The slope of `quick_gelu`'s sigmoid.
const QUICK_GELU_SCALE: f32 = 1.702;

/// GEGLU's gating, `a · gelu(g)` where the last dimension of `x` (of even size `2d`) holds
/// `a` in its first `d` and `g` in its last `d` entries (diffusers' `GEGLU`: `hidden, gate =
/// proj(x).chunk(2, dim=-1)`); the result has `d` entries in the last dimension. On
/// [`CpuBackend`] with `f32` data one parallel pass writes the product (Burn's `slice`s of
/// the two halves are strided views, which its element-wise ops walk per element); otherwise
/// the halves are sliced and multiplied with Burn's ops and [`gelu`]. An odd last dimension
/// is a caller error (it panics, as Burn's `slice` would on a bad range).
pub fn geglu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let dims = x.dims();
    let d2 = dims[D - 1];
    assert!(
        d2.is_multiple_of(2),
        "geglu: the last dimension ({d2}) must be even"
    );
    if uses_cpu_kernel::<B>(x.dtype()) {
        if let Ok(t) = same_type::<_, Tensor<CpuBackend, D>>(x.clone()) {
            let t = t.into_primitive().tensor();
            if let Some(out) = geglu_kernel(&t) {
                count_kernel_call();
                return same_type_back(Tensor::<CpuBackend, D>::from_primitive(
                    TensorPrimitive::Float(out),
                ));
            }
        }
    }
    let d = d2 / 2;
    let hidden = x.clone().narrow(D - 1, 0, d);
    let gate = x.narrow(D - 1, d, d);
    hidden * gelu(gate)
}

/// [`geglu`] on a contiguous f32 flex tensor; `None` for any other layout.
fn geglu_kernel(t: &FlexTensor) -> Option<FlexTensor> {
    let layout = t.layout();
    let (start, end) = layout.contiguous_offsets()?;
    let mut shape: Vec<usize> = layout.shape().iter().copied().collect();
    let d2 = *shape.last()?;
    let d = d2 / 2;
    if d == 0 {
        return None;
    }
    let src = &t.storage::<f32>()[start..end];
    let rows = src.len() / d2;
    let level = SimdLevel::detect();
    let mut out = vec![0.0f32; rows * d];
    let rows_per_task = (CHUNK / d2).max(1);
    out.par_chunks_mut(rows_per_task * d)
        .zip(src.par_chunks(rows_per_task * d2))
        .for_each(|(dst, s)| {
            for (o, row) in dst.chunks_exact_mut(d).zip(s.chunks_exact(d2)) {
                o.copy_from_slice(&row[d..]);
                gelu_slice(level, o);
                o.iter_mut().zip(&row[..d]).for_each(|(v, a)| *v *= a);
            }
        });
    if let Some(last) = shape.last_mut() {
        *last = d;
    }
    Some(FlexTensor::new(
        burn::tensor::Bytes::from_elems(out),
        Layout::contiguous(burn::tensor::Shape::from(shape)),
        DType::F32,
    ))
}

/// `erf(x)` of every element of `xs`, in place, with the kernel's approximation (see the
/// module docs); single-threaded, vectorised. For tests and for callers holding raw slices.
pub fn erf_in_place(xs: &mut [f32]) {
    erf_slice(SimdLevel::detect(), xs);
}

/// Dispatch: the flex kernel for `CpuBackend` + f32, `fallback` (Burn) otherwise.
fn apply<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    act: Activation,
    fallback: fn(Tensor<B, D>) -> Tensor<B, D>,
) -> Tensor<B, D> {
    if !uses_cpu_kernel::<B>(x.dtype()) {
        return fallback(x);
    }
    match same_type::<_, Tensor<CpuBackend, D>>(x) {
        Ok(t) => {
            let result = run(t.into_primitive().tensor(), act);
            count_kernel_call();
            same_type_back(Tensor::<CpuBackend, D>::from_primitive(
                TensorPrimitive::Float(result),
            ))
        }
        Err(x) => fallback(x),
    }
}

/// Applies `act` to an f32 flex tensor (checked by the caller).
fn run(mut t: FlexTensor, act: Activation) -> FlexTensor {
    let level = SimdLevel::detect();
    let layout = t.layout().clone();
    let n = layout.num_elements();
    // An element-wise function commutes with any view of the storage: when the view reads
    // the whole buffer from offset 0 with non-negative strides (contiguous or permuted, e.g.
    // a `swap_dims`), map the buffer and keep the layout.
    let covers_storage = layout.start_offset() == 0
        && layout.strides().iter().all(|&s| s >= 0)
        && t.storage::<f32>().len() == n;
    if covers_storage {
        if let Some(buf) = t.try_storage_mut::<f32>() {
            map_in_place(level, buf, act);
            return t;
        }
        let out = map_copy(level, t.storage::<f32>(), act);
        return FlexTensor::new(burn::tensor::Bytes::from_elems(out), layout, DType::F32);
    }
    let contiguous = Layout::contiguous(layout.shape().clone());
    if let Some((start, end)) = layout.contiguous_offsets() {
        let out = map_copy(level, &t.storage::<f32>()[start..end], act);
        return FlexTensor::new(burn::tensor::Bytes::from_elems(out), contiguous, DType::F32);
    }
    // Any other view (sliced, flipped, broadcast): one gathering copy, then in place.
    let mut dense = t.to_contiguous();
    if let Some(buf) = dense.try_storage_mut::<f32>() {
        let len = buf.len().min(n);
        map_in_place(level, &mut buf[..len], act);
        return dense;
    }
    let out = map_copy(level, &dense.storage::<f32>()[..n], act);
    FlexTensor::new(burn::tensor::Bytes::from_elems(out), contiguous, DType::F32)
}

/// Applies `act` to `xs` in place, in parallel over [`CHUNK`]s.
fn map_in_place(level: SimdLevel, xs: &mut [f32], act: Activation) {
    if xs.len() <= CHUNK {
        map_slice(level, xs, act);
    } else {
        xs.par_chunks_mut(CHUNK)
            .for_each(|c| map_slice(level, c, act));
    }
}

/// `act` of every element of `src`, into a new vector, in parallel over [`CHUNK`]s (each
/// chunk is copied, then mapped while it is in cache).
fn map_copy(level: SimdLevel, src: &[f32], act: Activation) -> Vec<f32> {
    let mut out = vec![0.0f32; src.len()];
    out.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(dst, s)| {
            dst.copy_from_slice(s);
            map_slice(level, dst, act);
        });
    out
}

fn map_slice(level: SimdLevel, xs: &mut [f32], act: Activation) {
    match act {
        Activation::Gelu => gelu_slice(level, xs),
        Activation::Silu => silu_slice(level, xs),
        Activation::QuickGelu => quick_gelu_slice(level, xs),
    }
}

multiversion! {
    /// `xs[i] = gelu(xs[i])`.
    fn gelu_slice(xs: &mut [f32]) = gelu_slice_impl;
}
multiversion! {
    /// `xs[i] = silu(xs[i])`.
    fn silu_slice(xs: &mut [f32]) = silu_slice_impl;
}
multiversion! {
    /// `xs[i] = quick_gelu(xs[i])`.
    fn quick_gelu_slice(xs: &mut [f32]) = quick_gelu_slice_impl;
}
multiversion! {
    /// `xs[i] = erf(xs[i])`.
    fn erf_slice(xs: &mut [f32]) = erf_slice_impl;
}

/// `f` applied to every element, in blocks of [`LANES`] so that LLVM vectorises it.
#[inline(always)]
pub(crate) fn map_lanes(xs: &mut [f32], f: impl Fn(f32) -> f32) {
    let mut chunks = xs.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for x in c.iter_mut() {
            *x = f(*x);
        }
    }
    for x in chunks.into_remainder() {
        *x = f(*x);
    }
}

#[inline(always)]
fn gelu_slice_impl(xs: &mut [f32]) {
    map_lanes(xs, gelu_lane);
}

#[inline(always)]
fn silu_slice_impl(xs: &mut [f32]) {
    map_lanes(xs, silu_lane);
}

#[inline(always)]
fn quick_gelu_slice_impl(xs: &mut [f32]) {
    map_lanes(xs, quick_gelu_lane);
}

#[inline(always)]
fn erf_slice_impl(xs: &mut [f32]) {
    map_lanes(xs, erf_lane);
}

/// Below this `|x|` the odd polynomial branch of `erf` is used.
const ERF_SPLIT: f32 = 0.9;
/// The tail's rational is evaluated at `min(|x|, ERF_U_MAX)` (beyond, `erf` is ±1 in f32).
const ERF_U_MAX: f32 = 4.0;
// Fitted by tools/core/erf_fit.py (minimax, absolute error of erf; rounded to f32).
/// `erf(x) ≈ x·Σ ERF_A[k]·x^(2k)` for `|x| < ERF_SPLIT`.
// ERF_A[0] is the fitted value, 1 ulp below f32 `FRAC_2_SQRT_PI` (the slope of erf at 0).
#[allow(clippy::approx_constant)]
const ERF_A: [f32; 6] = [
    1.128_379_1,
    -0.376_123_76,
    0.112_811_34,
    -0.026_750_922,
    0.004_977_805_5,
    -0.000_593_840_9,
];
/// Numerator of `erfcx(t) ≈ N(t)/D(t)` on `[ERF_SPLIT, ERF_U_MAX]`.
const ERF_N: [f32; 3] = [0.995_005_9, 0.396_549_58, 0.003_776_102];
/// Denominator of `erfcx(t) ≈ N(t)/D(t)`.
const ERF_D: [f32; 3] = [1.0, 1.496_36, 0.766_935_4];

/// `Σ c[k]·v^k` by Horner's rule.
#[inline(always)]
fn horner<const N: usize>(c: &[f32; N], v: f32) -> f32 {
    let mut acc = c[N - 1];
    for k in (0..N - 1).rev() {
        acc = acc * v + c[k];
    }
    acc
}

/// Scalar body of the vectorised `erf` (see the module docs): both branches are computed,
/// then one is selected; plain f32 ops, no branches.
#[inline(always)]
fn erf_lane(x: f32) -> f32 {
    let t = x.abs();
    let s = t * t;
    let small = x * horner(&ERF_A, s);
    let u = if t > ERF_U_MAX { ERF_U_MAX } else { t };
    let erfc = exp_lane(-s) * (horner(&ERF_N, u) / horner(&ERF_D, u));
    let tail = (1.0 - erfc).copysign(x);
    if t < ERF_SPLIT {
        small
    } else {
        tail
    }
}

/// Scalar body of the vectorised GELU: `0.5·x·(1 + erf(x/√2))`, `−0` at `−inf`.
#[inline(always)]
fn gelu_lane(x: f32) -> f32 {
    let y = 0.5 * x * (1.0 + erf_lane(x * std::f32::consts::FRAC_1_SQRT_2));
    if x == f32::NEG_INFINITY {
        -0.0
    } else {
        y
    }
}

/// Scalar body of the vectorised `quick_gelu`: `x·sigmoid(v)` with `v = 1.702·x` and, with
/// `e = e^(−|v|)` (never overflows), `sigmoid(v) = 1 / (1 + e)` for `v ≥ 0` and `e / (1 + e)`
/// below; `−0` at `−inf`.
#[inline(always)]
fn quick_gelu_lane(x: f32) -> f32 {
    let v = QUICK_GELU_SCALE * x;
    let e = exp_lane(-v.abs());
    let num = if v < 0.0 { e } else { 1.0 };
    let y = x * (num / (1.0 + e));
    if x == f32::NEG_INFINITY {
        -0.0
    } else {
        y
    }
}

/// Scalar body of the vectorised SiLU: with `e = e^(−|x|)` (never overflows), `x / (1 + e)`
/// for `x ≥ 0` and `x·e / (1 + e)` below (accurate down to subnormal results); `−0` at
/// `−inf`.
#[inline(always)]
pub(crate) fn silu_lane(x: f32) -> f32 {
    let e = exp_lane(-x.abs());
    let num = if x < 0.0 { x * e } else { x };
    let y = num / (1.0 + e);
    if x == f32::NEG_INFINITY {
        -0.0
    } else {
        y
    }
}
