//! Scaled dot-product attention with a fast, multi-threaded kernel for the `flex` CPU backend.
//!
//! [`attention`] has the semantics of `burn::tensor::module::attention`. For
//! [`CpuBackend`] with `f32` query/key/value and no `softcap` it runs our kernel; everything
//! else (CUDA, half precision, softcap, unexpected layouts or shapes) goes to Burn's
//! attention, on GPU backends after choosing whether Burn may use its flash kernels there
//! (see `route_for_gpu`).
//!
//! The kernel is a flash-attention-style loop written for CPUs:
//! - work items are (batch, head, block of [`BLOCK_Q`] query rows), run in parallel with
//!   rayon; when there are too few of them to keep every thread busy (decode, small
//!   prefill), the keys of each item are also split across tasks ("split-K") and the
//!   partial softmax states `(max, sum, accumulator)` are merged at the end;
//! - per item, the keys are walked in tiles of [`TILE_KV`]: `gemm` (single-threaded)
//!   computes the scaled scores `Q_blk·K_tileᵀ`, mask / causal / bias are applied row-wise
//!   with branch-free loops (the presence of each is checked once per tile), the online
//!   softmax keeps a running max and sum per row and rescales only this block's own output
//!   rows, and a second `gemm` accumulates `P·V_tile`;
//! - `exp` is our own polynomial over a slice ([`exp_in_place`]), vectorised by LLVM; the
//!   row loops are compiled for AVX-512 and AVX2 as well and chosen at run time.
//!
//! Inputs are read in place from the flex tensors' storage, whatever their (non-negative)
//! strides: a `[b, s, h, d] → [b, h, s, d]` permuted view costs no copy. Mask and bias may
//! broadcast any dimension of size 1.
//!
//! Semantics of a query row whose keys are all masked out (by the mask, causality or a
//! `-inf` bias): its output is zeros. Burn gives zeros too: the flex backend on both its
//! naive and its flash path (both checked in `tests/attention_kernel.rs`), and Burn's
//! generic `attention_fallback` through its clamped ("NaN-safe") softmax.

use std::cell::Cell;

use burn::tensor::backend::Backend;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Tensor, TensorPrimitive};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::backend::CpuBackend;
use crate::flex_view::{same_type, same_type_back, View};

/// Query rows per work item.
pub const BLOCK_Q: usize = 128;
/// Keys per tile inside a work item.
pub const TILE_KV: usize = 512;
/// Fewest multiply-adds a split-K task gets (below, the task costs less than its overhead).
const MIN_SPLIT_WORK: usize = 1 << 18;
/// Fewest keys a split-K task gets.
const MIN_SPLIT_KEYS: usize = 128;

crate::flex_view::cpu_kernel_counter! {
    /// How many [`attention`] calls made on the current thread ran the CPU kernel (rather than
    /// Burn's attention). For tests and diagnostics.
}

thread_local! {
    static SPLIT_K_CALLS: Cell<usize> = const { Cell::new(0) };
}

/// How many of the [`cpu_kernel_calls`] on the current thread split the keys of their work
/// items across tasks (split-K). For tests and diagnostics.
pub fn split_k_calls() -> usize {
    SPLIT_K_CALLS.with(Cell::get)
}

/// Whether [`attention`] takes the CPU kernel for backend `B`, input dtype `dtype` and
/// `options` (it still falls back to Burn on layouts or shapes it does not handle):
/// `B` is [`CpuBackend`], the dtype `f32` and `softcap` unset.
pub fn uses_cpu_kernel<B: Backend>(dtype: DType, options: &AttentionModuleOptions) -> bool {
    crate::backend::is_cpu_backend::<B>() && dtype == DType::F32 && options.softcap.is_none()
}

type FlexArgs = (
    Tensor<CpuBackend, 4>,
    Tensor<CpuBackend, 4>,
    Tensor<CpuBackend, 4>,
    Option<Tensor<CpuBackend, 4, Bool>>,
    Option<Tensor<CpuBackend, 4>>,
);

/// softmax(q·kᵀ·scale (+bias), masked) · v — the semantics of
/// `burn::tensor::module::attention` (same argument order and meaning: `q` `[batch, heads,
/// seq_q, d]`, `k` `[batch, heads, seq_kv, d]`, `v` `[batch, heads, seq_kv, dv]`; `mask`
/// true = masked out, mask and bias `[batch, heads, seq_q, seq_kv]` with any dimension
/// possibly 1 (broadcast); `is_causal` hides key `j` from query `i` when
/// `j > i + seq_kv - seq_q`; `scale` defaults to `1/sqrt(d)`). Returns `[batch, heads,
/// seq_q, dv]`; a query row with every key masked out gives zeros.
///
/// Runs the multi-threaded CPU kernel of this module when [`uses_cpu_kernel`] says so, and
/// Burn's attention otherwise.
pub fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
    bias: Option<Tensor<B, 4>>,
    options: AttentionModuleOptions,
) -> Tensor<B, 4> {
    if !uses_cpu_kernel::<B>(q.dtype(), &options) {
        let (q, options) = if crate::backend::is_cpu_backend::<B>() {
            (q, options)
        } else {
            let plain = mask.is_none() && bias.is_none();
            route_for_gpu(q, k.dims()[2], plain, options, gpu_flash_allowed())
        };
        return burn::tensor::module::attention(q, k, v, mask, bias, options);
    }
    match same_type::<_, FlexArgs>((q, k, v, mask, bias)) {
        Ok((q, k, v, mask, bias)) => same_type_back(flex_attention(q, k, v, mask, bias, options)),
        Err((q, k, v, mask, bias)) => burn::tensor::module::attention(q, k, v, mask, bias, options),
    }
}

/// Whether GPU backends may run Burn's flash attention kernels (see [`route_for_gpu`]):
/// yes unless the environment variable `CIELR_GPU_ATTENTION` is `fallback`, which keeps every
/// call on Burn's naive (score-materialising) attention, for comparing the two.
fn gpu_flash_allowed() -> bool {
    static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ALLOWED.get_or_init(|| {
        std::env::var("CIELR_GPU_ATTENTION").map_or(true, |v| !v.eq_ignore_ascii_case("fallback"))
    })
}

/// Burn's GPU attention (burn-cubecl, autotuned) chooses between its naive fallback and
/// flash kernels only for calls without an explicit `scale`, bias or softcap; any of those
/// pins the fallback. The flash kernels differ from Burn's documented semantics in two ways:
/// `is_causal` is aligned at the top-left corner (key `j` hidden from query `i` when `j > i`,
/// wrong for `seq_kv > seq_q`), and a row whose keys are all masked out is not guaranteed to
/// be zeros. So:
/// - a `plain` call (no mask, no bias) without softcap, not causal or causal with as many
///   keys as queries (where both alignments agree), when `flash` is allowed, drops its
///   explicit scale: folded into `q` as `q · scale·√d` when it is not the default `1/√d`, so
///   the scores are unchanged and autotune may pick a flash kernel;
/// - every other call gets an explicit scale (the default when it had none), which keeps
///   it on the fallback, whose semantics are ours.
fn route_for_gpu<B: Backend>(
    q: Tensor<B, 4>,
    seq_kv: usize,
    plain: bool,
    options: AttentionModuleOptions,
    flash: bool,
) -> (Tensor<B, 4>, AttentionModuleOptions) {
    let [_, _, seq_q, d] = q.dims();
    let d = d.max(1) as f64;
    let default_scale = 1.0 / d.sqrt();
    let causal_agrees = !options.is_causal || seq_q == seq_kv;
    if flash && plain && causal_agrees && options.softcap.is_none() {
        let q = match options.scale {
            Some(s) if (s - default_scale).abs() > 1e-12 * default_scale => q * (s * d.sqrt()),
            _ => q,
        };
        return (
            q,
            AttentionModuleOptions {
                scale: None,
                ..options
            },
        );
    }
    let scale = Some(options.scale.unwrap_or(default_scale));
    (q, AttentionModuleOptions { scale, ..options })
}

/// The flex path: our kernel when the tensors are as expected, Burn's attention otherwise.
fn flex_attention(
    q: Tensor<CpuBackend, 4>,
    k: Tensor<CpuBackend, 4>,
    v: Tensor<CpuBackend, 4>,
    mask: Option<Tensor<CpuBackend, 4, Bool>>,
    bias: Option<Tensor<CpuBackend, 4>>,
    options: AttentionModuleOptions,
) -> Tensor<CpuBackend, 4> {
    let qp = q.into_primitive().tensor();
    let kp = k.into_primitive().tensor();
    let vp = v.into_primitive().tensor();
    let mp = mask.map(Tensor::into_primitive);
    let bp = bias.map(|b| b.into_primitive().tensor());
    if let Some(out) = run_kernel(&qp, &kp, &vp, mp.as_ref(), bp.as_ref(), &options) {
        count_kernel_call();
        return Tensor::from_primitive(TensorPrimitive::Float(out));
    }
    burn::tensor::module::attention(
        Tensor::from_primitive(TensorPrimitive::Float(qp)),
        Tensor::from_primitive(TensorPrimitive::Float(kp)),
        Tensor::from_primitive(TensorPrimitive::Float(vp)),
        mp.map(Tensor::from_primitive),
        bp.map(|b| Tensor::from_primitive(TensorPrimitive::Float(b))),
        options,
    )
}

/// Everything a work item needs, shared by all of them.
struct Problem<'a> {
    q: View<'a, f32>,
    k: View<'a, f32>,
    v: View<'a, f32>,
    mask: Option<View<'a, u8>>,
    bias: Option<View<'a, f32>>,
    heads: usize,
    seq_q: usize,
    seq_kv: usize,
    d: usize,
    dv: usize,
    scale: f32,
    /// `seq_kv - seq_q` when causal.
    causal_offset: Option<isize>,
    level: SimdLevel,
}

/// Runs the kernel; `None` (nothing consumed) when the inputs are not what it handles.
fn run_kernel(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    mask: Option<&FlexTensor>,
    bias: Option<&FlexTensor>,
    options: &AttentionModuleOptions,
) -> Option<FlexTensor> {
    if options.softcap.is_some() {
        return None;
    }
    let f32_ok = |t: &FlexTensor| t.dtype() == DType::F32 && t.layout().shape().num_dims() == 4;
    if !(f32_ok(q) && f32_ok(k) && f32_ok(v)) {
        return None;
    }
    let (qs, ks, vs) = (q.layout().shape(), k.layout().shape(), v.layout().shape());
    let (batch, heads, seq_q, d) = (qs[0], qs[1], qs[2], qs[3]);
    let (seq_kv, dv) = (ks[2], vs[3]);
    if [batch, heads, seq_q, d, seq_kv, dv].contains(&0)
        || ks[0] != batch
        || ks[1] != heads
        || ks[3] != d
        || vs[0] != batch
        || vs[1] != heads
        || vs[2] != seq_kv
    {
        return None;
    }
    let qv = View::new(q.storage::<f32>(), q, [batch, heads, seq_q, d])?;
    let kv = View::new(k.storage::<f32>(), k, [batch, heads, seq_kv, d])?;
    let vv = View::new(v.storage::<f32>(), v, [batch, heads, seq_kv, dv])?;
    let score_shape = [batch, heads, seq_q, seq_kv];
    let mask_view = match mask {
        None => None,
        Some(m) => {
            let byte_bool = matches!(
                m.dtype(),
                DType::Bool(burn::tensor::BoolStore::Native | burn::tensor::BoolStore::U8)
            );
            if !byte_bool {
                return None;
            }
            Some(View::new(m.bytes(), m, score_shape)?)
        }
    };
    let bias_view = match bias {
        None => None,
        Some(b) if b.dtype() == DType::F32 => Some(View::new(b.storage::<f32>(), b, score_shape)?),
        Some(_) => return None,
    };
    let scale = options.scale.unwrap_or_else(|| 1.0 / (d as f64).sqrt()) as f32;
    let causal_offset = if options.is_causal {
        Some(isize::try_from(seq_kv).ok()? - isize::try_from(seq_q).ok()?)
    } else {
        None
    };
    let problem = Problem {
        q: qv,
        k: kv,
        v: vv,
        mask: mask_view,
        bias: bias_view,
        heads,
        seq_q,
        seq_kv,
        d,
        dv,
        scale,
        causal_offset,
        level: SimdLevel::detect(),
    };
    let out = problem.run(batch);
    let shape = burn::tensor::Shape::from(vec![batch, heads, seq_q, dv]);
    Some(FlexTensor::new(
        burn::tensor::Bytes::from_elems(out),
        burn_flex::Layout::contiguous(shape),
        DType::F32,
    ))
}

/// The online-softmax state of a block of query rows over some of the keys: per row the
/// running max and sum, and the unnormalised output rows `acc` (`rows × dv`).
struct Partial<'s> {
    max: &'s mut [f32],
    sum: &'s mut [f32],
    acc: &'s mut [f32],
}

impl Problem<'_> {
    /// Runs every work item; returns the contiguous `[batch, heads, seq_q, dv]` output.
    fn run(&self, batch: usize) -> Vec<f32> {
        let (seq_q, dv) = (self.seq_q, self.dv);
        let block_q = BLOCK_Q.min(seq_q);
        let q_blocks = seq_q.div_ceil(block_q);
        let items = batch * self.heads * q_blocks;
        let splits = self.splits(items, block_q);
        let mut out = vec![0.0f32; batch * self.heads * seq_q * dv];
        if splits == 1 {
            out.par_chunks_mut(seq_q * dv)
                .enumerate()
                .for_each(|(bh, head_out)| {
                    let (b, h) = (bh / self.heads, bh % self.heads);
                    head_out
                        .par_chunks_mut(block_q * dv)
                        .enumerate()
                        .for_each(|(qb, acc)| {
                            let r0 = qb * block_q;
                            let rows = acc.len() / dv;
                            let mut max = vec![f32::NEG_INFINITY; rows];
                            let mut sum = vec![0.0f32; rows];
                            let keys = self.key_end(r0 + rows);
                            let mut part = Partial {
                                max: &mut max,
                                sum: &mut sum,
                                acc,
                            };
                            self.block(b, h, r0, 0..keys, &mut part);
                            normalise(&mut part);
                        });
                });
            return out;
        }
        // Split-K: each (item, split) task keeps its own partial state, merged per item.
        SPLIT_K_CALLS.with(|c| c.set(c.get() + 1));
        let stride = block_q * (dv + 2);
        let mut partials = vec![0.0f32; items * splits * stride];
        partials
            .par_chunks_mut(stride)
            .enumerate()
            .for_each(|(task, buf)| {
                let (item, split) = (task / splits, task % splits);
                let (bh, qb) = (item / q_blocks, item % q_blocks);
                let (b, h) = (bh / self.heads, bh % self.heads);
                let r0 = qb * block_q;
                let rows = block_q.min(seq_q - r0);
                let keys = self.key_end(r0 + rows);
                let per = keys.div_ceil(splits);
                let k0 = (split * per).min(keys);
                let k1 = (k0 + per).min(keys);
                let (max, rest) = buf.split_at_mut(block_q);
                let (sum, acc) = rest.split_at_mut(block_q);
                max.fill(f32::NEG_INFINITY);
                let mut part = Partial {
                    max: &mut max[..rows],
                    sum: &mut sum[..rows],
                    acc: &mut acc[..rows * dv],
                };
                self.block(b, h, r0, k0..k1, &mut part);
            });
        out.par_chunks_mut(seq_q * dv)
            .enumerate()
            .for_each(|(bh, head_out)| {
                head_out
                    .chunks_mut(block_q * dv)
                    .enumerate()
                    .for_each(|(qb, dst)| {
                        let item = bh * q_blocks + qb;
                        let bufs = &partials[item * splits * stride..(item + 1) * splits * stride];
                        merge(bufs, stride, block_q, dv, dst);
                    });
            });
        out
    }

    /// Number of key splits per work item: 1 unless there are fewer items than about twice
    /// the threads, then enough to give each thread a few tasks, each of at least
    /// [`MIN_SPLIT_KEYS`] keys and [`MIN_SPLIT_WORK`] multiply-adds.
    fn splits(&self, items: usize, block_q: usize) -> usize {
        let threads = rayon::current_num_threads();
        if threads <= 1 || items >= 2 * threads {
            return 1;
        }
        let want = (4 * threads).div_ceil(items);
        let rows = block_q.min(self.seq_q);
        let keys = self.key_end(rows);
        let work = rows * keys * (self.d + self.dv);
        want.min(keys / MIN_SPLIT_KEYS)
            .min(work / MIN_SPLIT_WORK)
            .max(1)
    }

    /// One past the last key visible to query rows `..row_end` (causality), or `seq_kv`.
    fn key_end(&self, row_end: usize) -> usize {
        match self.causal_offset {
            None => self.seq_kv,
            Some(off) => (row_end as isize + off).clamp(0, self.seq_kv as isize) as usize,
        }
    }

    /// Folds keys `keys` into the partial state of query rows `r0..r0 + rows` of head
    /// `(b, h)`.
    fn block(
        &self,
        b: usize,
        h: usize,
        r0: usize,
        keys: std::ops::Range<usize>,
        part: &mut Partial<'_>,
    ) {
        let rows = part.max.len();
        let dv = self.dv;
        let tile_cap = TILE_KV.min(keys.len());
        if tile_cap == 0 {
            return;
        }
        let mut scores = vec![0.0f32; rows * tile_cap];
        let mut j0 = keys.start;
        while j0 < keys.end {
            let n = tile_cap.min(keys.end - j0);
            let s = &mut scores[..rows * n];
            self.scores_gemm(s, b, h, r0, j0, rows, n);
            for (i, row) in s.chunks_exact_mut(n).enumerate() {
                self.prepare_row(row, b, h, r0 + i, j0);
                let acc = &mut part.acc[i * dv..(i + 1) * dv];
                softmax_row(self.level, row, &mut part.max[i], &mut part.sum[i], acc);
            }
            self.values_gemm(part.acc, s, b, h, j0, rows, n);
            j0 += n;
        }
    }

    /// `s = scale · Q[r0..r0+rows, :] · K[j0..j0+n, :]ᵀ` (`rows × n`, row-major) by gemm.
    #[allow(clippy::too_many_arguments)]
    fn scores_gemm(
        &self,
        s: &mut [f32],
        b: usize,
        h: usize,
        r0: usize,
        j0: usize,
        rows: usize,
        n: usize,
    ) {
        debug_assert_eq!(s.len(), rows * n);
        // SAFETY: `View::new` checked that every element of q and k lies inside its slice;
        // rows r0..r0+rows ≤ seq_q and keys j0..j0+n ≤ seq_kv, d is the checked size, and
        // `s` holds rows × n elements.
        unsafe {
            gemm::gemm(
                rows,
                n,
                self.d,
                s.as_mut_ptr(),
                1,
                n as isize,
                false,
                self.q.data.as_ptr().add(self.q.at(b, h, r0, 0)),
                self.q.strides[3] as isize,
                self.q.strides[2] as isize,
                self.k.data.as_ptr().add(self.k.at(b, h, j0, 0)),
                self.k.strides[2] as isize,
                self.k.strides[3] as isize,
                0.0,
                self.scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }

    /// `acc += P · V[j0..j0+n, :]` (`P`: `rows × n`, `acc`: `rows × dv`) by gemm.
    #[allow(clippy::too_many_arguments)]
    fn values_gemm(
        &self,
        acc: &mut [f32],
        p: &[f32],
        b: usize,
        h: usize,
        j0: usize,
        rows: usize,
        n: usize,
    ) {
        debug_assert_eq!(p.len(), rows * n);
        debug_assert_eq!(acc.len(), rows * self.dv);
        // SAFETY: as in `scores_gemm`; `acc` holds rows × dv elements and `p` rows × n.
        unsafe {
            gemm::gemm(
                rows,
                self.dv,
                n,
                acc.as_mut_ptr(),
                1,
                self.dv as isize,
                true,
                p.as_ptr(),
                1,
                n as isize,
                self.v.data.as_ptr().add(self.v.at(b, h, j0, 0)),
                self.v.strides[3] as isize,
                self.v.strides[2] as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }

    /// Applies mask, causality and bias to the scaled scores of query row `r` against keys
    /// `j0..j0 + row.len()`.
    fn prepare_row(&self, row: &mut [f32], b: usize, h: usize, r: usize, j0: usize) {
        let n = row.len();
        if let Some(m) = &self.mask {
            let at = m.at(b, h, r, j0);
            match m.strides[3] {
                1 => apply_mask(self.level, row, &m.data[at..at + n]),
                0 => {
                    if m.data[at] != 0 {
                        row.fill(f32::NEG_INFINITY);
                    }
                }
                step => {
                    for (j, s) in row.iter_mut().enumerate() {
                        if m.data[at + j * step] != 0 {
                            *s = f32::NEG_INFINITY;
                        }
                    }
                }
            }
        }
        if let Some(off) = self.causal_offset {
            // Key j is visible while j ≤ r + off.
            let visible = (r as isize + off + 1 - j0 as isize).clamp(0, n as isize) as usize;
            row[visible..].fill(f32::NEG_INFINITY);
        }
        if let Some(bias) = &self.bias {
            let at = bias.at(b, h, r, j0);
            match bias.strides[3] {
                1 => add_assign(self.level, row, &bias.data[at..at + n]),
                0 => {
                    let v = bias.data[at];
                    row.iter_mut().for_each(|s| *s += v);
                }
                step => {
                    for (j, s) in row.iter_mut().enumerate() {
                        *s += bias.data[at + j * step];
                    }
                }
            }
        }
    }
}

/// Divides each accumulated row by its softmax sum (rows with no visible key stay zero).
fn normalise(part: &mut Partial<'_>) {
    let dv = part.acc.len() / part.sum.len().max(1);
    for (row, &sum) in part.acc.chunks_exact_mut(dv.max(1)).zip(part.sum.iter()) {
        let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
        row.iter_mut().for_each(|x| *x *= inv);
    }
}

/// Merges the split-K partial states of one work item (`bufs`: one `[max | sum | acc]`
/// record of `stride` floats per split) into its normalised output rows `dst`.
fn merge(bufs: &[f32], stride: usize, block_q: usize, dv: usize, dst: &mut [f32]) {
    let rows = dst.len() / dv;
    for i in 0..rows {
        let global = bufs
            .chunks_exact(stride)
            .map(|p| p[i])
            .fold(f32::NEG_INFINITY, f32::max);
        let out = &mut dst[i * dv..(i + 1) * dv];
        if global == f32::NEG_INFINITY {
            out.fill(0.0);
            continue;
        }
        let mut total = 0.0f32;
        out.fill(0.0);
        for p in bufs.chunks_exact(stride) {
            if p[i] == f32::NEG_INFINITY {
                continue;
            }
            let w = (p[i] - global).exp();
            total += p[block_q + i] * w;
            let acc = &p[2 * block_q + i * dv..2 * block_q + (i + 1) * dv];
            out.iter_mut().zip(acc).for_each(|(o, a)| *o += a * w);
        }
        let inv = if total > 0.0 { 1.0 / total } else { 0.0 };
        out.iter_mut().for_each(|x| *x *= inv);
    }
}

// ---------------------------------------------------------------------------------------
// Row kernels: written as plain f32 loops over fixed-width lanes so LLVM vectorises them,
// compiled three times (baseline, AVX2+FMA, AVX-512F) and picked at run time. No fused
// multiply-add is requested explicitly, so all three give bit-identical results.

/// Lanes of the manual reductions (max, sum).
pub(crate) const LANES: usize = 16;

/// The instruction set the row kernels run with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SimdLevel {
    Baseline,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl SimdLevel {
    /// The best level this CPU supports.
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Self::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Self::Avx2;
            }
        }
        Self::Baseline
    }
}

/// Defines `$name` dispatching on [`SimdLevel`] to three compilations of the
/// `#[inline(always)]` function `$body`.
macro_rules! multiversion {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? = $body:ident;) => {
        $(#[$doc])*
        fn $name(level: SimdLevel, $($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512($($arg: $ty),*) $(-> $ret)? { $body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? { $body($($arg),*) }
                match level {
                    // SAFETY: `SimdLevel::detect` found these features on this CPU.
                    SimdLevel::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    SimdLevel::Avx2 => return unsafe { avx2($($arg),*) },
                    SimdLevel::Baseline => {}
                }
            }
            let _ = level;
            $body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

multiversion! {
    /// `row[j] = -inf` where `mask[j] != 0`.
    fn apply_mask(row: &mut [f32], mask: &[u8]) = apply_mask_impl;
}
multiversion! {
    /// `row[j] += bias[j]`.
    fn add_assign(row: &mut [f32], bias: &[f32]) = add_assign_impl;
}
multiversion! {
    /// One online-softmax step for one query row: folds the finished scores `row` into
    /// the row's running `max` and `sum`, rescales its accumulator `acc` when the max
    /// grows and leaves `exp(score - max)` in `row` (all zeros while every key so far is
    /// masked out).
    fn softmax_row(row: &mut [f32], max: &mut f32, sum: &mut f32, acc: &mut [f32]) = softmax_row_impl;
}
multiversion! {
    /// `xs[i] = exp(xs[i])`.
    fn exp_slice(xs: &mut [f32]) = exp_slice_impl;
}

#[inline(always)]
fn apply_mask_impl(row: &mut [f32], mask: &[u8]) {
    for (s, &m) in row.iter_mut().zip(mask) {
        *s = if m != 0 { f32::NEG_INFINITY } else { *s };
    }
}

#[inline(always)]
fn add_assign_impl(row: &mut [f32], bias: &[f32]) {
    for (s, &b) in row.iter_mut().zip(bias) {
        *s += b;
    }
}

/// `chunk` (at most [`LANES`] long) padded to a full lane array with `fill`.
#[inline(always)]
fn padded(chunk: &[f32], fill: f32) -> [f32; LANES] {
    let mut buf = [fill; LANES];
    buf[..chunk.len()].copy_from_slice(chunk);
    buf
}

#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    let mut fold = |c: &[f32]| {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l = if x > *l { x } else { *l };
        }
    };
    for c in &mut chunks {
        fold(c);
    }
    fold(&padded(chunks.remainder(), f32::NEG_INFINITY));
    lanes
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// `c[i] = exp(c[i] - max)` over one full lane array, added lane-wise to `lanes`.
#[inline(always)]
fn exp_shifted(c: &mut [f32; LANES], max: f32, lanes: &mut [f32; LANES]) {
    for x in c.iter_mut() {
        *x = exp_lane(*x - max);
    }
    for (l, &x) in lanes.iter_mut().zip(c.iter()) {
        *l += x;
    }
}

#[inline(always)]
fn softmax_row_impl(row: &mut [f32], max: &mut f32, sum: &mut f32, acc: &mut [f32]) {
    let tile_max = row_max(row);
    let new_max = if tile_max > *max { tile_max } else { *max };
    if new_max == f32::NEG_INFINITY {
        // Every key so far is masked out: contribute nothing.
        row.fill(0.0);
        return;
    }
    // exp(score - max), summed in lanes; the tail is padded with -inf (exp → 0).
    let mut lanes = [0.0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        let mut buf = padded(c, 0.0);
        exp_shifted(&mut buf, new_max, &mut lanes);
        c.copy_from_slice(&buf);
    }
    let rem = chunks.into_remainder();
    let mut buf = padded(rem, f32::NEG_INFINITY);
    exp_shifted(&mut buf, new_max, &mut lanes);
    let len = rem.len();
    rem.copy_from_slice(&buf[..len]);
    let tile_sum = lanes.iter().sum::<f32>();
    if new_max > *max {
        // Rescale what this row has accumulated so far (nothing when `max` was -inf).
        let correction = exp_lane(*max - new_max);
        if *max != f32::NEG_INFINITY {
            acc.iter_mut().for_each(|a| *a *= correction);
        }
        *sum *= correction;
        *max = new_max;
    }
    *sum += tile_sum;
}

#[inline(always)]
fn exp_slice_impl(xs: &mut [f32]) {
    let mut chunks = xs.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for x in c.iter_mut() {
            *x = exp_lane(*x);
        }
    }
    for x in chunks.into_remainder() {
        *x = exp_lane(*x);
    }
}

/// `exp(x)` of every element of `xs`, in place, with the polynomial the kernel uses:
/// at most 2 ulp from `f32::exp` on [-87, 88] (tested), exactly 0 for `x < -103.97`
/// (including `-inf`), `+inf` above 88.7228, NaN for NaN; vectorised (AVX-512 / AVX2
/// where the CPU has them).
pub fn exp_in_place(xs: &mut [f32]) {
    exp_slice(SimdLevel::detect(), xs);
}

/// Below this, `exp` underflows to 0 in f32 (`exp(-103.97) ≈ 2⁻¹⁵⁰`).
const EXP_LO: f32 = -103.972_08;
/// Above this, `exp` overflows to +inf (`ln(f32::MAX)`).
const EXP_HI: f32 = 88.722_84;

/// Scalar body of the vectorised `exp`: Cody–Waite range reduction `x = n·ln2 + r`,
/// `|r| ≤ ln2/2`, a degree-7 Taylor-like minimax polynomial for `e^r` (Cephes `expf`
/// coefficients) and `2ⁿ` built from exponent bits in two halves so that subnormal
/// results and `n = 128` stay exact. Plain f32 ops only, no branches (selects).
#[inline(always)]
pub(crate) fn exp_lane(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln2 split so that n·LN2_HI is exact for |n| < 2⁹.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2²³: adding it rounds to an integer, kept in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let xc = if x < EXP_LO { EXP_LO } else { x };
    let xc = if xc > EXP_HI { EXP_HI } else { xc };
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * (r * r) + r + 1.0;
    // n ∈ [-150, 128]: 2ⁿ = 2^(n/2) · 2^(n - n/2), both factors normal.
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let n1 = ni >> 1;
    let n2 = ni - n1;
    let s1 = f32::from_bits(((n1 + 127) as u32) << 23);
    let s2 = f32::from_bits(((n2 + 127) as u32) << 23);
    let y = er * s1 * s2;
    let y = if x < EXP_LO { 0.0 } else { y };
    if x > EXP_HI {
        f32::INFINITY
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    type B = CpuBackend;

    fn qkv(d: usize) -> [Tensor<B, 4>; 3] {
        let device = Default::default();
        let t = || Tensor::<B, 4>::random([1, 2, 5, d], Distribution::Normal(0.0, 1.0), &device);
        [t(), t(), t()]
    }

    fn max_diff(a: Tensor<B, 4>, b: Tensor<B, 4>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    #[test]
    fn gpu_routing_folds_a_custom_scale_into_the_query_for_flash() {
        let [q, k, v] = qkv(12);
        let options = AttentionModuleOptions {
            scale: Some(1.0),
            ..Default::default()
        };
        let want =
            burn::tensor::module::attention(q.clone(), k.clone(), v.clone(), None, None, options);
        let (q2, routed) = route_for_gpu(q.clone(), 5, true, options, true);
        assert_eq!(routed.scale, None);
        let got = burn::tensor::module::attention(q2, k, v, None, None, routed);
        assert!(max_diff(want, got) < 1e-5);
        // The default scale is dropped and the query left as it is.
        let default = AttentionModuleOptions {
            scale: Some(1.0 / 12f64.sqrt()),
            ..Default::default()
        };
        let (q3, routed) = route_for_gpu(q.clone(), 5, true, default, true);
        assert_eq!(routed.scale, None);
        assert_eq!(max_diff(q, q3), 0.0);
    }

    #[test]
    fn gpu_routing_keeps_masked_causal_and_opted_out_calls_on_the_fallback() {
        let [q, _, _] = qkv(16);
        let causal = AttentionModuleOptions {
            is_causal: true,
            ..Default::default()
        };
        let default_scale = Some(0.25);
        // 5 queries: causal with 7 keys differs between the two alignments.
        for (plain, options, flash) in [
            (false, AttentionModuleOptions::default(), true),
            (true, causal, true),
            (true, AttentionModuleOptions::default(), false),
        ] {
            let (q2, routed) = route_for_gpu(q.clone(), 7, plain, options, flash);
            assert_eq!(routed.scale, default_scale, "{plain} {options:?} {flash}");
            assert_eq!(routed.is_causal, options.is_causal);
            assert_eq!(max_diff(q.clone(), q2), 0.0);
        }
        // An explicit scale is kept as given.
        let custom = AttentionModuleOptions {
            scale: Some(0.5),
            ..Default::default()
        };
        assert_eq!(
            route_for_gpu(q.clone(), 5, false, custom, true).1.scale,
            Some(0.5)
        );
        // Causal with as many keys as queries: both alignments agree, so flash may run it.
        let (_, routed) = route_for_gpu(q, 5, true, causal, true);
        assert_eq!((routed.scale, routed.is_causal), (None, true));
    }
}
