//! The CPU GroupNorm kernels (`cielr_core::norm`) against Burn's `GroupNorm::forward` and an
//! f64 GroupNorm computed here: ranks 3–5, 1 / 8 / 32 groups, affine or not, odd spatial
//! sizes, batch 1 and 2, owned (in place) and shared (copied) inputs, a permuted input, a
//! group split across threads, inputs with a large offset (mean 1e3, std 1e-2), the fused
//! SiLU, and the dispatch (f64 and bad shapes go to Burn).

use burn::module::Param;
use burn::nn::{GroupNorm, GroupNormConfig};
use burn::tensor::{DType, FloatDType, Tensor};
use cielr_core::backend::CpuBackend as B;
use cielr_core::norm::{cpu_kernel_calls, group_norm, group_norm_silu, uses_cpu_kernel};

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

#[path = "support/tensors.rs"]
mod tensors;
use tensors::{tensor, values};

/// Relative bound (of max |reference|) for every comparison.
const TOL: f64 = 1e-5;

/// A GroupNorm module; when affine, with random γ around 1 and β around 0 (not Burn's
/// ones / zeros, so that the affine step is exercised).
fn module(groups: usize, channels: usize, affine: bool, rng: &mut Rng) -> GroupNorm<B> {
    let mut norm = GroupNormConfig::new(groups, channels)
        .with_affine(affine)
        .init::<B>(&Default::default());
    if affine {
        let gamma: Vec<f32> = (0..channels).map(|_| 1.0 + 0.5 * rng.unit()).collect();
        let beta = rng.vec(channels, 0.5);
        norm.gamma = Some(Param::from_tensor(tensor(gamma, [channels])));
        norm.beta = Some(Param::from_tensor(tensor(beta, [channels])));
    }
    norm
}

/// GroupNorm in f64 of contiguous `[batch, channels, spatial…]` values (two passes, like
/// Burn), optionally followed by SiLU.
fn group_norm_f64(x: &[f32], batch: usize, norm: &GroupNorm<B>, silu: bool) -> Vec<f64> {
    let c = norm.num_channels;
    let g = norm.num_groups;
    let spatial = x.len() / (batch * c);
    let len = c / g * spatial;
    let params = |p: &Option<Param<Tensor<B, 1>>>, default: f64| -> Vec<f64> {
        match p {
            Some(p) if norm.affine => values(p.val()).iter().map(|&v| v as f64).collect(),
            _ => vec![default; c],
        }
    };
    let (gamma, beta) = (params(&norm.gamma, 1.0), params(&norm.beta, 0.0));
    let mut out = Vec::with_capacity(x.len());
    for (item, group) in x.chunks(len).enumerate() {
        let n = len as f64;
        let mean = group.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = group
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        let inv_std = 1.0 / (var + norm.epsilon).sqrt();
        for (i, &v) in group.iter().enumerate() {
            let ch = (item % g) * (c / g) + i / spatial;
            let y = (v as f64 - mean) * inv_std * gamma[ch] + beta[ch];
            out.push(if silu { y / (1.0 + (-y).exp()) } else { y });
        }
    }
    out
}

/// Max |got − want| relative to max |want|.
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    got.iter()
        .zip(want)
        .map(|(&g, &w)| {
            assert!(g.is_finite(), "non-finite output {g} (want {w})");
            (g as f64 - w).abs()
        })
        .fold(0.0, f64::max)
        / scale
}

/// Runs [`group_norm`] and [`group_norm_silu`] on `data` (shape `shape`) for owned and shared
/// inputs, checks them against the f64 reference and Burn, and that the kernel ran.
fn check<const D: usize>(
    name: &str,
    data: Vec<f32>,
    shape: [usize; D],
    groups: usize,
    affine: bool,
    rng: &mut Rng,
) {
    let norm = module(groups, shape[1], affine, rng);
    let x = tensor(data.clone(), shape);
    let want = group_norm_f64(&data, shape[0], &norm, false);
    let want_silu = group_norm_f64(&data, shape[0], &norm, true);
    let burn = values(norm.forward(x.clone()));
    let burn_silu = values(burn::tensor::activation::silu(norm.forward(x.clone())));

    let before = cpu_kernel_calls();
    // Shared input: written into a new buffer; `x` must be left as it was.
    let shared = values(group_norm(&norm, x.clone()));
    assert_eq!(values(x.clone()), data, "{name}: shared input modified");
    let shared_silu = values(group_norm_silu(&norm, x.clone()));
    // Owned input: in place.
    let owned = values(group_norm(&norm, tensor(data.clone(), shape)));
    let owned_silu = values(group_norm_silu(&norm, tensor(data.clone(), shape)));
    assert_eq!(cpu_kernel_calls(), before + 4, "{name}: kernel not taken");
    assert_eq!(shared, owned, "{name}: in-place and copying results differ");
    assert_eq!(
        shared_silu, owned_silu,
        "{name}: in-place and copying results differ"
    );

    let e64 = rel_err(&owned, &want);
    let eburn = rel_err(&owned, &burn.iter().map(|&v| v as f64).collect::<Vec<_>>());
    let e64_silu = rel_err(&owned_silu, &want_silu);
    let eburn_silu = rel_err(
        &owned_silu,
        &burn_silu.iter().map(|&v| v as f64).collect::<Vec<_>>(),
    );
    let burn64 = rel_err(&burn, &want);
    println!(
        "{name:<34} vs f64 {e64:.2e}  vs burn {eburn:.2e}  silu: vs f64 {e64_silu:.2e} \
         vs burn {eburn_silu:.2e}  (burn vs f64 {burn64:.2e})"
    );
    assert!(e64 <= TOL, "{name}: {e64:.3e} from f64");
    assert!(eburn <= TOL, "{name}: {eburn:.3e} from Burn");
    assert!(e64_silu <= TOL, "{name}: silu {e64_silu:.3e} from f64");
    assert!(eburn_silu <= TOL, "{name}: silu {eburn_silu:.3e} from Burn");
}

#[test]
fn matches_burn_and_f64_over_ranks_groups_and_shapes() {
    let mut rng = Rng(7);
    let r = |n: usize, amp: f32, rng: &mut Rng| -> Vec<f32> {
        let off = rng.unit();
        rng.vec(n, amp).into_iter().map(|v| v + off).collect()
    };
    let cases_3: &[([usize; 3], usize)] = &[([2, 32, 37], 8), ([1, 64, 1], 32), ([2, 96, 13], 1)];
    for &(shape, groups) in cases_3 {
        for affine in [true, false] {
            let data = r(shape.iter().product(), 2.0, &mut rng);
            let name = format!("{shape:?} G{groups} affine={affine}");
            check(&name, data, shape, groups, affine, &mut rng);
        }
    }
    let cases_4: &[([usize; 4], usize)] = &[
        ([1, 32, 7, 9], 32),
        ([2, 64, 5, 11], 32),
        ([2, 96, 3, 3], 8),
        ([1, 64, 17, 13], 1),
        ([2, 320, 8, 8], 32),
    ];
    for &(shape, groups) in cases_4 {
        for affine in [true, false] {
            let data = r(shape.iter().product(), 3.0, &mut rng);
            let name = format!("{shape:?} G{groups} affine={affine}");
            check(&name, data, shape, groups, affine, &mut rng);
        }
    }
    let cases_5: &[([usize; 5], usize)] = &[([1, 32, 3, 5, 7], 8), ([2, 64, 2, 3, 5], 32)];
    for &(shape, groups) in cases_5 {
        for affine in [true, false] {
            let data = r(shape.iter().product(), 1.0, &mut rng);
            let name = format!("{shape:?} G{groups} affine={affine}");
            check(&name, data, shape, groups, affine, &mut rng);
        }
    }
}

#[test]
fn large_groups_split_across_threads() {
    // One item of one group, 2·65536 + 4000 values: the group is split into parallel chunks
    // (chunk boundaries fall inside channel planes of 3·1403 values).
    let mut rng = Rng(11);
    let shape = [1, 32, 3, 1403];
    let data = rng.vec(shape.iter().product(), 4.0);
    check("split [1,32,3,1403] G1", data, shape, 1, true, &mut rng);
    let shape = [2, 64, 33, 65];
    let data = rng.vec(shape.iter().product(), 1.0);
    check("split [2,64,33,65] G1", data, shape, 1, false, &mut rng);
}

#[test]
fn large_offset_needs_an_accurate_variance() {
    // Mean 1e3, std ~1e-2: E[x²] − E[x]² in f32 would lose every digit of the variance.
    let mut rng = Rng(13);
    for (shape, groups) in [([2, 64, 9, 15], 32), ([1, 32, 50, 50], 1)] {
        let data: Vec<f32> = rng
            .vec(shape.iter().product(), 0.017)
            .into_iter()
            .map(|v| 1000.0 + v)
            .collect();
        let norm = module(groups, shape[1], true, &mut rng);
        let want = group_norm_f64(&data, shape[0], &norm, false);
        let want_silu = group_norm_f64(&data, shape[0], &norm, true);
        let before = cpu_kernel_calls();
        let ours = values(group_norm(&norm, tensor(data.clone(), shape)));
        let ours_silu = values(group_norm_silu(&norm, tensor(data.clone(), shape)));
        assert_eq!(cpu_kernel_calls(), before + 2);
        let burn = values(norm.forward(tensor(data.clone(), shape)));
        let (e, es, eb) = (
            rel_err(&ours, &want),
            rel_err(&ours_silu, &want_silu),
            rel_err(&burn, &want),
        );
        println!(
            "offset 1e3 {shape:?} G{groups}: ours vs f64 {e:.2e}, silu {es:.2e} \
             (Burn's f32 GroupNorm vs f64: {eb:.2e})"
        );
        assert!(e <= TOL, "offset: {e:.3e}");
        assert!(es <= TOL, "offset silu: {es:.3e}");
    }
}

#[test]
fn permuted_input() {
    // [2, 9, 7, 64] permuted to [2, 64, 9, 7]: channels are the innermost dimension in
    // memory, so the kernel makes one contiguous copy first.
    let mut rng = Rng(17);
    let stored = [2, 9, 7, 64];
    let data = rng.vec(stored.iter().product(), 2.0);
    let x = tensor(data, stored).permute([0, 3, 1, 2]);
    assert_eq!(x.dims(), [2, 64, 9, 7]);
    let logical = values(x.clone());
    let norm = module(32, 64, true, &mut rng);
    let want = group_norm_f64(&logical, 2, &norm, false);
    let want_silu = group_norm_f64(&logical, 2, &norm, true);
    let burn = values(norm.forward(x.clone()));
    let before = cpu_kernel_calls();
    let ours = group_norm(&norm, x.clone());
    let ours_silu = values(group_norm_silu(&norm, x.clone()));
    assert_eq!(cpu_kernel_calls(), before + 2, "permuted: kernel not taken");
    assert_eq!(ours.dims(), [2, 64, 9, 7]);
    let ours = values(ours);
    assert_eq!(values(x), logical, "permuted input modified");
    let (e, es) = (rel_err(&ours, &want), rel_err(&ours_silu, &want_silu));
    let eb = rel_err(&ours, &burn.iter().map(|&v| v as f64).collect::<Vec<_>>());
    println!("permuted: vs f64 {e:.2e}, vs burn {eb:.2e}, silu vs f64 {es:.2e}");
    assert!(e <= TOL && eb <= TOL && es <= TOL);

    // A sliced (offset, strided) view.
    let big = rng.vec(2 * 64 * 10 * 9, 1.0);
    let x = tensor(big, [2, 64, 10, 9]).narrow(2, 1, 8).narrow(3, 2, 5);
    let logical = values(x.clone());
    let want = group_norm_f64(&logical, 2, &norm, false);
    let before = cpu_kernel_calls();
    let ours = values(group_norm(&norm, x));
    assert_eq!(cpu_kernel_calls(), before + 1);
    let e = rel_err(&ours, &want);
    println!("sliced: vs f64 {e:.2e}");
    assert!(e <= TOL);

    // The second batch item: a contiguous view at an offset, read while the whole tensor is
    // alive (copied) and normalised in place once the view is the only owner.
    let data = rng.vec(2 * 64 * 6 * 5, 3.0);
    let whole = tensor(data.clone(), [2, 64, 6, 5]);
    let view = whole.clone().narrow(0, 1, 1);
    let logical = values(view.clone());
    let want = group_norm_f64(&logical, 1, &norm, false);
    let before = cpu_kernel_calls();
    let copied = values(group_norm(&norm, view.clone()));
    assert_eq!(values(whole.clone()), data, "shared storage modified");
    drop(whole);
    let in_place = values(group_norm(&norm, view));
    assert_eq!(cpu_kernel_calls(), before + 2);
    assert_eq!(copied, in_place);
    let e = rel_err(&copied, &want);
    println!("offset view: vs f64 {e:.2e}");
    assert!(e <= TOL);
}

#[test]
fn dispatch_sends_f64_and_bad_shapes_to_burn() {
    let mut rng = Rng(19);
    assert!(uses_cpu_kernel::<B>(DType::F32));
    assert!(!uses_cpu_kernel::<B>(DType::F64));

    // f64 input and parameters: Burn's result exactly, kernel not taken.
    let x = tensor(rng.vec(2 * 32 * 5 * 3, 2.0), [2, 32, 5, 3]).cast(FloatDType::F64);
    assert_eq!(x.dtype(), DType::F64);
    for affine in [true, false] {
        let mut norm = module(8, 32, affine, &mut rng);
        norm.gamma = norm
            .gamma
            .map(|p| Param::from_tensor(p.val().cast(FloatDType::F64)));
        norm.beta = norm
            .beta
            .map(|p| Param::from_tensor(p.val().cast(FloatDType::F64)));
        let before = cpu_kernel_calls();
        let ours = group_norm(&norm, x.clone());
        let ours_silu = group_norm_silu(&norm, x.clone());
        assert_eq!(cpu_kernel_calls(), before, "f64: kernel taken");
        assert_eq!(ours.dtype(), DType::F64);
        assert_eq!(ours.into_data(), norm.forward(x.clone()).into_data());
        let burn_silu = burn::tensor::activation::silu(norm.forward(x.clone()));
        assert_eq!(ours_silu.into_data(), burn_silu.into_data());
    }

    // A channel count that does not match the module: the kernel declines and Burn panics.
    let norm = module(8, 32, true, &mut rng);
    let bad = tensor(rng.vec(2 * 16 * 4, 1.0), [2, 16, 4]);
    let before = cpu_kernel_calls();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        group_norm(&norm, bad.clone())
    }));
    assert!(result.is_err(), "mismatched channels must be reported");
    assert_eq!(cpu_kernel_calls(), before);
}

#[test]
fn half_inputs_take_their_statistics_in_f32() {
    // Values around 300 (SD's VAE decoding its latents): a group's sum (4096 values) is far
    // beyond f16's 65504, so statistics summed in f16 are wrong. The outputs are compared
    // with an f64 GroupNorm of the same (half-rounded) inputs and parameters.
    let mut rng = Rng(29);
    let shape = [1, 32, 64, 64];
    let data: Vec<f32> = rng
        .vec(shape.iter().product(), 60.0)
        .into_iter()
        .map(|v| 300.0 + v)
        .collect();
    for dtype in [FloatDType::F16, FloatDType::BF16] {
        let mut norm = module(8, shape[1], true, &mut rng);
        let half = |t: Tensor<B, 1>| Param::from_tensor(t.cast(dtype));
        norm.gamma = norm.gamma.map(|p| half(p.val()));
        norm.beta = norm.beta.map(|p| half(p.val()));
        let x = tensor(data.clone(), shape).cast(dtype);
        let rounded = values(x.clone());
        let want = group_norm_f64(&rounded, shape[0], &norm, false);
        let ours = group_norm(&norm, x.clone());
        assert_eq!(ours.dtype(), DType::from(dtype));
        let e = rel_err(&values(ours), &want);
        let es = rel_err(
            &values(group_norm_silu(&norm, x.clone())),
            &group_norm_f64(&rounded, shape[0], &norm, true),
        );
        let burn = values(norm.forward(x));
        let bad = burn.iter().filter(|v| !v.is_finite()).count();
        let eb = want
            .iter()
            .zip(&burn)
            .filter(|(_, b)| b.is_finite())
            .map(|(w, b)| (w - *b as f64).abs())
            .fold(0.0, f64::max);
        println!(
            "{dtype:?}: ours vs f64 {e:.2e}, silu {es:.2e} (Burn's GroupNorm: {bad} non-finite \
             values, max abs {eb:.2e} over the rest)"
        );
        // The output's own rounding: 2^-8 (f16) / 2^-5 (bf16) of values up to ~8.
        let bound = if dtype == FloatDType::F16 { 4e-3 } else { 2e-2 };
        assert!(e <= bound && es <= bound, "{dtype:?}: {e:.3e} / {es:.3e}");
    }
}
