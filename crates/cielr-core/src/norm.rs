//! GroupNorm (and GroupNorm followed by SiLU) with a fused, multi-threaded kernel for the
//! `flex` CPU backend.
//!
//! [`group_norm`] has the semantics of `burn::nn::GroupNorm::forward` (Burn 0.21): for every
//! (batch item, group) the mean and the mean of squared deviations of its `C/G · spatial`
//! values, `(x − mean) / √(var + ε)`, then `· γ[c] + β[c]` when the module is affine.
//! [`group_norm_silu`] is `silu(group_norm(x))` (the `norm → SiLU` of every SD ResNet block
//! and of the VAE) in the same pass. For [`CpuBackend`] with `f32` input they run the kernel
//! of this module; other backends and dtypes, and inputs the kernel does not take (rank
//! below 3, a channel count that does not match the module, …), go to `norm.forward`
//! unchanged (which also reports bad shapes).
//!
//! Why: on the CPU, ~6% of an SD-1.5 UNet step was in Burn's `GroupNorm::forward` (`perf`),
//! mostly in its affine step `x · γ[1,C,1,1] + β`, a broadcast binary op that flex walks
//! with a strided iterator per element; the statistics are several more full passes.
//!
//! How: work items are (batch item, group), run in parallel with rayon (when there are
//! fewer items than twice the threads and a group holds more than 65 536 values, each group
//! is split into parallel chunks instead). A group of a contiguous `[N, C, …]` input is one
//! contiguous slice; any other layout (permuted, sliced) is first made contiguous with one
//! copy. Statistics: the slice is cut into blocks of 2048 values; each block's mean and sum
//! of squared deviations are computed in two passes in f64 (the block is in L1 for the
//! second pass) and the blocks are combined with Chan, Golub & LeVeque's pairwise update,
//! in a fixed order. Accuracy is that of a two-pass f64 algorithm: a large offset (mean 1e3,
//! std 1e-2) costs nothing, where Burn's f32 GroupNorm is off by ~4e-3 (relative to max
//! |result|). Output, one pass: `y = (x − m)·a[c] + b[c]` with `m` the f32-rounded group
//! mean, `a = γ[c]/√(var + ε)` and `b = β[c] − (mean − m)·a` (f64, rounded to f32).
//! Subtracting `m` first, rather than the cheaper `x·a + b'`, avoids the cancellation of
//! `x·a` against `b'` when the mean is large compared to the standard deviation (that form
//! is off by ~7e-3 on the offset test). [`group_norm_silu`] applies SiLU (the lane function
//! of [`crate::activation`]) in the same loop. The loops are plain f32/f64 code compiled for
//! AVX-512, AVX2 and the baseline and picked at run time. The result is written in place
//! when the input tensor owns its buffer, into one new buffer otherwise.
//!
//! Accuracy (`tests/norm_kernel.rs`): within 2.5e-7 of max |result| of an f64 GroupNorm
//! (with and without SiLU) on every tested shape, offset inputs included.
//!
//! Measured (`examples/norm_bench.rs`, release, 2 rayon threads on the shared, loaded 2-core
//! AMD EPYC; medians of runs alternating with Burn's; shared input, so both write a new
//! buffer), ours vs Burn 0.21's `GroupNorm::forward`, 32 groups:
//!
//! | shape                 | ours ms   | Burn ms | `+ SiLU` ours / Burn ms |
//! |-----------------------|-----------|---------|-------------------------|
//! | UNet `[2,320,64,64]`  | 1.1–1.2   | 32–38   | 1.8–2.0 / 40–42         |
//! | UNet `[2,640,32,32]`  | 0.4–0.6   | 17      | 0.9–1.0 / 21            |
//! | UNet `[2,1280,16,16]` | 0.24–0.41 | 9–11    | 0.43–0.47 / 11–15       |
//! | VAE `[1,512,64,64]`   | 0.74–0.82 | 1.5–1.6 | 1.3–1.5 / 8.3           |
//! | VAE `[1,128,512,512]` | 52–56     | 132–139 | 65–68 / 308–332         |
//!
//! i.e. 22–40x on the batch-2 UNet shapes (Burn's broadcast affine step is slow there),
//! ~2x on the batch-1 VAE shapes, 4.5–6x with the fused SiLU; in place (owned input) the
//! large VAE shape takes 35–38 ms.
//!
//! ```
//! use burn::nn::GroupNormConfig;
//! use burn::tensor::Tensor;
//! use cielr_core::backend::CpuBackend as B;
//! use cielr_core::norm::{cpu_kernel_calls, group_norm};
//!
//! let device = Default::default();
//! let norm = GroupNormConfig::new(2, 4).init::<B>(&device);
//! let x = Tensor::<B, 3>::from_floats([[[1.0, 3.0], [1.0, 3.0], [0.0, 0.0], [4.0, 4.0]]], &device);
//! let before = cpu_kernel_calls();
//! let y = group_norm(&norm, x.clone());
//! assert_eq!(cpu_kernel_calls(), before + 1);
//! let diff: f32 = (y - norm.forward(x)).abs().max().into_scalar();
//! assert!(diff < 1e-5);
//! ```

use burn::nn::GroupNorm;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Tensor, TensorPrimitive};
use burn_flex::{FlexTensor, Layout};
use rayon::prelude::*;

use crate::activation::{map_lanes, silu_lane};
use crate::attention::{multiversion, SimdLevel};
use crate::backend::CpuBackend;
use crate::flex_view::{same_type, same_type_back};

/// Values per statistics block (two passes each, the second from L1).
const BLOCK: usize = 2048;
/// Values per parallel task when a group is split across threads.
const SPLIT: usize = 1 << 16;
/// f64 accumulators of the statistics loops (four AVX-512 registers).
const ACC: usize = 32;

crate::flex_view::cpu_kernel_counter! {
    /// How many [`group_norm`] / [`group_norm_silu`] calls made on the current thread ran the CPU
    /// kernel (rather than Burn's `GroupNorm::forward`). For tests and diagnostics.
}

/// Whether [`group_norm`] and [`group_norm_silu`] take the CPU kernel for backend `B` and
/// input dtype `dtype` (they still fall back to Burn on shapes the kernel does not take):
/// `B` is [`CpuBackend`] and the dtype `f32`.
pub fn uses_cpu_kernel<B: Backend>(dtype: DType) -> bool {
    crate::backend::is_cpu_backend::<B>() && dtype == DType::F32
}

/// `norm.forward(x)`: GroupNorm of `x` (`[batch, channels, …]`, rank at least 3). Runs the
/// CPU kernel of this module when [`uses_cpu_kernel`] says so and the shapes fit, Burn's
/// `GroupNorm::forward` otherwise.
pub fn group_norm<B: Backend, const D: usize>(
    norm: &GroupNorm<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    match try_kernel(norm, x, false) {
        Ok(y) => y,
        Err(x) => burn_group_norm(norm, x),
    }
}

/// `norm.forward(x)` through Burn, except that for f16 / bf16 input the group statistics are
/// computed in f32, as PyTorch does for half inputs: in f16 the sums of a group overflow once
/// its values reach a few hundred (SD's VAE decoding its latents), which silently normalises
/// by a wrong variance. The normalised values are cast back before the affine part.
fn burn_group_norm<B: Backend, const D: usize>(
    norm: &GroupNorm<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    let dtype = x.dtype();
    let dims = x.dims();
    let geometry = match geometry(norm, &dims) {
        Some(g) if matches!(dtype, DType::F16 | DType::BF16) => g,
        _ => return norm.forward(x),
    };
    let (batch, channels) = (dims[0], dims[1]);
    let wide: Tensor<B, 3> =
        x.cast(FloatDType::F32)
            .reshape([batch, geometry.groups, geometry.group_len()]);
    let (var, mean) = wide.clone().var_mean_bias(2);
    let normed = (wide - mean) / (var + norm.epsilon).sqrt();
    let y = normed.reshape(dims).cast(dtype);
    match (&norm.gamma, &norm.beta) {
        (Some(gamma), Some(beta)) if norm.affine => {
            let mut shape = [1usize; D];
            shape[1] = channels;
            y * gamma.val().reshape(shape) + beta.val().reshape(shape)
        }
        _ => y,
    }
}

/// `silu(norm.forward(x))` in one pass: the kernel of [`group_norm`] with SiLU applied to
/// each output value. Elsewhere `norm.forward(x)` followed by [`crate::activation::silu`].
pub fn group_norm_silu<B: Backend, const D: usize>(
    norm: &GroupNorm<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    match try_kernel(norm, x, true) {
        Ok(y) => y,
        Err(x) => crate::activation::silu(burn_group_norm(norm, x)),
    }
}

/// The sizes the kernel works with.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    groups: usize,
    /// Channels per group.
    group_channels: usize,
    /// Product of the dimensions after the channels.
    spatial: usize,
    eps: f64,
}

impl Geometry {
    /// Values per (batch item, group).
    fn group_len(&self) -> usize {
        self.group_channels * self.spatial
    }
}

/// The group sizes of `norm` on an input of shape `dims` (`[batch, channels, …]`); `None`
/// when the rank is below 2, the channels differ from the module's, the groups do not divide
/// them, or the input is empty (left to Burn, which reports it).
fn geometry(norm: &GroupNorm<impl Backend>, dims: &[usize]) -> Option<Geometry> {
    let groups = norm.num_groups;
    let &[batch, channels] = dims.first_chunk::<2>()?;
    let spatial: usize = dims[2..].iter().product();
    let fits = channels == norm.num_channels
        && groups != 0
        && channels.is_multiple_of(groups)
        && batch * channels * spatial != 0;
    fits.then_some(Geometry {
        groups,
        group_channels: channels / groups,
        spatial,
        eps: norm.epsilon,
    })
}

/// Runs the kernel when it applies; otherwise hands `x` back untouched.
fn try_kernel<B: Backend, const D: usize>(
    norm: &GroupNorm<B>,
    x: Tensor<B, D>,
    silu: bool,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    if !uses_cpu_kernel::<B>(x.dtype()) || D < 3 {
        return Err(x);
    }
    let Some(geometry) = geometry(norm, &x.dims()) else {
        return Err(x);
    };
    let Some((gamma, beta)) = affine_params(norm, x.dims()[1]) else {
        return Err(x);
    };
    let x = same_type::<_, Tensor<CpuBackend, D>>(x)?;
    let t = x.into_primitive().tensor();
    match run(t, &geometry, &gamma, &beta, silu) {
        Ok(out) => {
            count_kernel_call();
            Ok(same_type_back(Tensor::<CpuBackend, D>::from_primitive(
                TensorPrimitive::Float(out),
            )))
        }
        Err(t) => Err(same_type_back(Tensor::<CpuBackend, D>::from_primitive(
            TensorPrimitive::Float(t),
        ))),
    }
}

/// `(γ, β)` as f32 host vectors of `channels` values: the module's parameters when it is
/// affine, ones and zeros otherwise; `None` when an affine module lacks them or they are
/// not `channels` f32 values (left to Burn).
fn affine_params<B: Backend>(norm: &GroupNorm<B>, channels: usize) -> Option<(Vec<f32>, Vec<f32>)> {
    if !norm.affine {
        return Some((vec![1.0; channels], vec![0.0; channels]));
    }
    let read = |p: &burn::module::Param<Tensor<B, 1>>| -> Option<Vec<f32>> {
        let v = p.val();
        if v.dtype() != DType::F32 {
            return None;
        }
        let v = v.into_data().to_vec::<f32>().ok()?;
        (v.len() == channels).then_some(v)
    };
    Some((read(norm.gamma.as_ref()?)?, read(norm.beta.as_ref()?)?))
}

/// GroupNorm of the f32 flex tensor `t` (checked by the caller); `t` back untouched when its
/// storage cannot be read as needed.
fn run(
    t: FlexTensor,
    geometry: &Geometry,
    gamma: &[f32],
    beta: &[f32],
    silu: bool,
) -> Result<FlexTensor, FlexTensor> {
    let level = SimdLevel::detect();
    let n = t.layout().num_elements();
    // A strided / permuted view: one contiguous copy (owned by us, so normalised in place).
    let mut dense = if t.layout().contiguous_offsets().is_some() {
        t
    } else {
        let copy = t.to_contiguous();
        if copy.layout().contiguous_offsets().is_none() {
            return Err(t);
        }
        copy
    };
    let Some((start, end)) = dense.layout().contiguous_offsets() else {
        return Err(dense);
    };
    if end - start != n || dense.storage::<f32>().len() < end {
        return Err(dense);
    }
    if let Some(buf) = dense.try_storage_mut::<f32>() {
        normalize(
            level,
            None,
            &mut buf[start..end],
            geometry,
            gamma,
            beta,
            silu,
        );
        return Ok(dense);
    }
    let mut out = vec![0.0f32; n];
    normalize(
        level,
        Some(&dense.storage::<f32>()[start..end]),
        &mut out,
        geometry,
        gamma,
        beta,
        silu,
    );
    let layout = Layout::contiguous(dense.layout().shape().clone());
    Ok(FlexTensor::new(
        burn::tensor::Bytes::from_elems(out),
        layout,
        DType::F32,
    ))
}

/// Normalises every (batch item, group) of the contiguous `[N, C, …]` values: of `src` into
/// `dst` when `src` is given, of `dst` in place otherwise.
fn normalize(
    level: SimdLevel,
    src: Option<&[f32]>,
    dst: &mut [f32],
    geometry: &Geometry,
    gamma: &[f32],
    beta: &[f32],
    silu: bool,
) {
    let group_len = geometry.group_len();
    let items = dst.len() / group_len;
    let threads = rayon::current_num_threads().max(1);
    let split = items < 2 * threads && group_len > SPLIT;
    let per_group = |item: usize, dst: &mut [f32]| {
        let g = item % geometry.groups;
        let channels = g * geometry.group_channels..(g + 1) * geometry.group_channels;
        let src = src.map(|s| &s[item * group_len..(item + 1) * group_len]);
        normalize_group(
            level,
            src,
            dst,
            geometry,
            (&gamma[channels.clone()], &beta[channels]),
            silu,
            split,
        );
    };
    if split {
        for (item, d) in dst.chunks_mut(group_len).enumerate() {
            per_group(item, d);
        }
    } else {
        dst.par_chunks_mut(group_len)
            .enumerate()
            .for_each(|(item, d)| per_group(item, d));
    }
}

/// One group: statistics, per-channel coefficients, output. `split`: spread both passes over
/// rayon tasks of [`SPLIT`] values.
fn normalize_group(
    level: SimdLevel,
    src: Option<&[f32]>,
    dst: &mut [f32],
    geometry: &Geometry,
    (gamma, beta): (&[f32], &[f32]),
    silu: bool,
    split: bool,
) {
    let stats = {
        let input: &[f32] = src.unwrap_or(dst);
        if split {
            // Collected in order and merged sequentially: the same result on every run.
            let parts: Vec<Stats> = input
                .par_chunks(SPLIT)
                .map(|c| block_stats(level, c))
                .collect();
            parts.into_iter().fold(Stats::EMPTY, Stats::merge)
        } else {
            block_stats(level, input)
        }
    };
    let var = (stats.m2 / stats.n).max(0.0);
    let inv_std = 1.0 / (var + geometry.eps).sqrt();
    let m = stats.mean as f32;
    let residual = stats.mean - m as f64;
    let (a, b): (Vec<f32>, Vec<f32>) = gamma
        .iter()
        .zip(beta)
        .map(|(&g, &be)| {
            let a = (g as f64 * inv_std) as f32;
            (a, (be as f64 - residual * a as f64) as f32)
        })
        .unzip();
    let coef = Coefficients {
        m,
        a: &a,
        b: &b,
        spatial: geometry.spatial,
        silu,
    };
    if split {
        dst.par_chunks_mut(SPLIT).enumerate().for_each(|(i, d)| {
            let s = src.map(|s| &s[i * SPLIT..i * SPLIT + d.len()]);
            apply(level, s, d, i * SPLIT, &coef);
        });
    } else {
        apply(level, src, dst, 0, &coef);
    }
}

/// Count, mean and sum of squared deviations from the mean of a set of values.
#[derive(Clone, Copy, Debug)]
struct Stats {
    n: f64,
    mean: f64,
    m2: f64,
}

impl Stats {
    const EMPTY: Self = Self {
        n: 0.0,
        mean: 0.0,
        m2: 0.0,
    };

    /// The statistics of the union of two disjoint sets (Chan, Golub & LeVeque's update).
    fn merge(self, other: Self) -> Self {
        if other.n == 0.0 {
            return self;
        }
        if self.n == 0.0 {
            return other;
        }
        let n = self.n + other.n;
        let d = other.mean - self.mean;
        Self {
            n,
            mean: self.mean + d * (other.n / n),
            m2: self.m2 + other.m2 + d * d * (self.n * other.n / n),
        }
    }
}

/// Per-group output coefficients: `y = (x − m)·a[c] + b[c]` for channel `c` of the group
/// (whose planes are `spatial` values long), then SiLU when `silu`.
struct Coefficients<'a> {
    m: f32,
    a: &'a [f32],
    b: &'a [f32],
    spatial: usize,
    silu: bool,
}

multiversion! {
    /// [`Stats`] of `xs`: two f64 passes per [`BLOCK`], blocks merged.
    fn block_stats(xs: &[f32]) -> Stats = block_stats_impl;
}
multiversion! {
    /// The output of the group values `[first, first + dst.len())`: from `src` into `dst`, or
    /// `dst` in place.
    fn apply(src: Option<&[f32]>, dst: &mut [f32], first: usize, coef: &Coefficients<'_>) = apply_impl;
}

#[inline(always)]
fn block_stats_impl(xs: &[f32]) -> Stats {
    let mut total = Stats::EMPTY;
    for block in xs.chunks(BLOCK) {
        let n = block.len() as f64;
        let mean = sum_f64(block) / n;
        let m2 = squared_deviations_f64(block, mean);
        total = total.merge(Stats { n, mean, m2 });
    }
    total
}

/// `Σ x` in f64, over [`ACC`] independent accumulators.
#[inline(always)]
fn sum_f64(xs: &[f32]) -> f64 {
    let mut acc = [0.0f64; ACC];
    let mut chunks = xs.chunks_exact(ACC);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x as f64;
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&x| x as f64).sum();
    acc.iter().sum::<f64>() + tail
}

/// `Σ (x − mean)²` in f64, over [`ACC`] independent accumulators.
#[inline(always)]
fn squared_deviations_f64(xs: &[f32], mean: f64) -> f64 {
    let mut acc = [0.0f64; ACC];
    let mut chunks = xs.chunks_exact(ACC);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            let d = x as f64 - mean;
            *a += d * d;
        }
    }
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&x| {
            let d = x as f64 - mean;
            d * d
        })
        .sum();
    acc.iter().sum::<f64>() + tail
}

#[inline(always)]
fn apply_impl(src: Option<&[f32]>, dst: &mut [f32], first: usize, coef: &Coefficients<'_>) {
    let spatial = coef.spatial;
    let mut pos = 0;
    let mut channel = first / spatial;
    let mut within = first % spatial;
    while pos < dst.len() {
        let len = (spatial - within).min(dst.len() - pos);
        let (a, b) = (coef.a[channel], coef.b[channel]);
        let out = &mut dst[pos..pos + len];
        let m = coef.m;
        match (src.map(|s| &s[pos..pos + len]), coef.silu) {
            (Some(s), true) => map_from(s, out, |x| silu_lane((x - m) * a + b)),
            (Some(s), false) => map_from(s, out, |x| (x - m) * a + b),
            (None, true) => map_lanes(out, |x| silu_lane((x - m) * a + b)),
            (None, false) => map_lanes(out, |x| (x - m) * a + b),
        }
        pos += len;
        channel += 1;
        within = 0;
    }
}

/// `dst[i] = f(src[i])` (a plain zipped loop, which LLVM vectorises).
#[inline(always)]
fn map_from(src: &[f32], dst: &mut [f32], f: impl Fn(f32) -> f32) {
    for (y, &x) in dst.iter_mut().zip(src) {
        *y = f(x);
    }
}
