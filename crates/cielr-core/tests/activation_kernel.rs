//! The CPU GELU / SiLU kernels (`cielr_core::activation`) against Burn's flex `gelu` / `silu`
//! and f64 references, over several ranks, odd lengths, parallel-size tensors, strided and
//! shared views and special values; the dispatch; and the `erf` approximation against the
//! f64 `erf` (Burn's flex `erf` on an f64 tensor, i.e. libm's `erf`); GEGLU's gating against
//! Burn's slices, `gelu` and product, and f64.

use burn::tensor::{DType, Tensor, TensorData};
use cielr_core::activation::{
    cpu_kernel_calls, erf_in_place, geglu, gelu, quick_gelu, silu, uses_cpu_kernel, CHUNK,
};
use cielr_core::backend::CpuBackend as B;

#[path = "support/tensors.rs"]
mod tensors;
use tensors::{tensor, values};

/// `n` values spread over `[-amp, amp]` by a Weyl (golden-ratio) sequence: deterministic,
/// equidistributed, in no particular order.
fn spread(n: usize, amp: f32, phase: f64) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let u = (phase + i as f64 * 0.618_033_988_749_894_9).fract();
            ((2.0 * u - 1.0) * amp as f64) as f32
        })
        .collect()
}

/// The f64 `erf` of each value (libm's, through Burn's flex `erf` on an f64 tensor).
fn erf_f64(xs: &[f64]) -> Vec<f64> {
    let device = Default::default();
    let t = Tensor::<B, 1>::from_data(
        TensorData::new(xs.to_vec(), [xs.len()]),
        (&device, DType::F64),
    );
    assert_eq!(t.dtype(), DType::F64);
    t.erf().into_data().to_vec::<f64>().expect("f64 data")
}

/// Exact GELU in f64.
fn gelu_f64(xs: &[f32]) -> Vec<f64> {
    let scaled: Vec<f64> = xs
        .iter()
        .map(|&x| x as f64 * std::f64::consts::FRAC_1_SQRT_2)
        .collect();
    erf_f64(&scaled)
        .iter()
        .zip(xs)
        .map(|(e, &x)| 0.5 * x as f64 * (1.0 + e))
        .collect()
}

/// Exact SiLU in f64.
fn silu_f64(xs: &[f32]) -> Vec<f64> {
    xs.iter()
        .map(|&x| {
            let x = x as f64;
            x / (1.0 + (-x).exp())
        })
        .collect()
}

/// Spacing of f32 values at `|y|`, at least at 2⁻¹⁰⁰ (below, SiLU's result comes from a
/// subnormal `e^x` and only its absolute error, ≤ ~1e-37, is bounded).
fn ulp(y: f64) -> f64 {
    let a = (y.abs() as f32).max(2f32.powi(-100));
    (f32::from_bits(a.to_bits() + 1) - a) as f64
}

/// Largest `|got - want| / scale(x)` and where it occurs.
fn worst(xs: &[f32], got: &[f32], want: &[f64], scale: impl Fn(f32, f64) -> f64) -> (f64, f32) {
    let mut w = (0.0f64, 0.0f32);
    for ((&x, &g), &r) in xs.iter().zip(got).zip(want) {
        let e = (g as f64 - r).abs() / scale(x, r);
        assert!(!e.is_nan(), "NaN at x = {x}: got {g}, want {r}");
        if e > w.0 {
            w = (e, x);
        }
    }
    w
}

#[test]
fn erf_matches_f64_reference() {
    // Every 251st f32 in [0, 6] (~4.3 M points), a uniform sweep of [-6, 6], and the split
    // point and clamp of the approximation with their neighbours.
    let mut xs: Vec<f32> = (0..=6.0f32.to_bits())
        .step_by(251)
        .map(f32::from_bits)
        .collect();
    xs.extend(spread(200_001, 6.0, 0.5));
    for c in [0.9f32, 4.0] {
        let b = c.to_bits();
        xs.extend((b - 64..b + 64).map(f32::from_bits));
    }
    let mut ys = xs.clone();
    erf_in_place(&mut ys);
    let want = erf_f64(&xs.iter().map(|&x| x as f64).collect::<Vec<_>>());
    let (err, at) = worst(&xs, &ys, &want, |_, _| 1.0);
    println!(
        "erf: {} points, max |ours - f64| = {err:.3e} at x = {at}",
        xs.len()
    );
    assert!(err <= 1e-7, "erf off by {err:.3e} at {at}");
    // ±1 exactly once |x| ≥ 4 (the tail's rational is clamped there).
    for (&x, &y) in xs.iter().zip(&ys) {
        if x.abs() >= 4.0 {
            assert_eq!(y, 1.0f32.copysign(x), "erf({x})");
        }
    }

    // Odd, exactly.
    let mut neg: Vec<f32> = xs.iter().map(|x| -x).collect();
    erf_in_place(&mut neg);
    for ((&x, &p), &n) in xs.iter().zip(&ys).zip(&neg) {
        assert_eq!(n.to_bits(), (-p).to_bits(), "erf(-x) != -erf(x) at {x}");
    }

    let mut special = [
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        0.0,
        -0.0,
        4.0,
        -4.5,
        1e30,
        -f32::MAX,
        1e-40,
    ];
    erf_in_place(&mut special);
    assert_eq!(special[0], 1.0);
    assert_eq!(special[1], -1.0);
    assert!(special[2].is_nan());
    assert_eq!(special[3].to_bits(), 0.0f32.to_bits());
    assert_eq!(special[4].to_bits(), (-0.0f32).to_bits());
    assert_eq!(special[5], 1.0);
    assert_eq!(special[6], -1.0);
    assert_eq!(special[7], 1.0);
    assert_eq!(special[8], -1.0);
    assert!(special[9] > 0.0 && special[9] < 2e-40);
}

/// GELU and SiLU of `x` (shape `shape`): ours vs Burn's and vs f64, with the bounds of the
/// module docs. Returns (gelu vs Burn, silu vs Burn) max abs differences.
fn check<const D: usize>(name: &str, data: Vec<f32>, shape: [usize; D]) -> (f64, f64) {
    let x = tensor(data.clone(), shape);
    let before = cpu_kernel_calls();
    let g = values(gelu(x.clone()));
    let s = values(silu(x.clone()));
    assert_eq!(cpu_kernel_calls(), before + 2, "{name}: kernel not taken");
    let g_burn = values(burn::tensor::activation::gelu(x.clone()));
    let s_burn = values(burn::tensor::activation::silu(x));
    let g_burn64: Vec<f64> = g_burn.iter().map(|&v| v as f64).collect();
    let s_burn64: Vec<f64> = s_burn.iter().map(|&v| v as f64).collect();

    let gelu_scale = |x: f32, _: f64| (x.abs() as f64).max(1.0);
    let (g_vs_burn, g_at) = worst(&data, &g, &g_burn64, gelu_scale);
    let (g_vs_f64, g_at64) = worst(&data, &g, &gelu_f64(&data), gelu_scale);
    let silu_scale = |_: f32, r: f64| ulp(r);
    let (s_vs_burn, s_at) = worst(&data, &s, &s_burn64, silu_scale);
    let (s_vs_f64, s_at64) = worst(&data, &s, &silu_f64(&data), silu_scale);
    let abs = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(&p, &q)| (p as f64 - q as f64).abs())
            .fold(0.0f64, f64::max)
    };
    let (g_abs, s_abs) = (abs(&g, &g_burn), abs(&s, &s_burn));
    println!(
        "{name} {shape:?}: gelu max abs vs Burn {g_abs:.2e}, /max(1,|x|): vs Burn {g_vs_burn:.2e} \
         (x = {g_at}), vs f64 {g_vs_f64:.2e} (x = {g_at64}); silu max abs vs Burn {s_abs:.2e}, \
         ulp: vs Burn {s_vs_burn:.2} (x = {s_at}), vs f64 {s_vs_f64:.2} (x = {s_at64})"
    );
    assert!(g_vs_burn <= 2e-7, "{name}: gelu vs Burn {g_vs_burn:.3e}");
    assert!(g_vs_f64 <= 1.5e-7, "{name}: gelu vs f64 {g_vs_f64:.3e}");
    assert!(s_vs_burn <= 4.0, "{name}: silu vs Burn {s_vs_burn} ulp");
    assert!(s_vs_f64 <= 3.0, "{name}: silu vs f64 {s_vs_f64} ulp");
    (g_abs, s_abs)
}

#[test]
fn matches_burn_and_f64_over_shapes() {
    check("rank 1, odd", spread(7, 4.0, 0.1), [7]);
    check("rank 2", spread(3 * 17, 6.0, 0.2), [3, 17]);
    check("rank 3, odd", spread(5 * 3 * 13, 10.0, 0.3), [5, 3, 13]);
    check("rank 4", spread(2 * 3 * 4 * 5, 3.0, 0.4), [2, 3, 4, 5]);
    check(
        "rank 5",
        spread(2 * 3 * 2 * 5 * 7, 8.0, 0.5),
        [2, 3, 2, 5, 7],
    );
    // Larger than one chunk, not a multiple of it: the parallel path and a short last chunk.
    let n = 5 * 13_927;
    assert!(n > 2 * CHUNK && n % CHUNK != 0);
    check("parallel", spread(n, 12.0, 0.6), [1, 5, 13_927]);
    check("wide range", spread(40_001, 100.0, 0.7), [40_001]);
    check("small values", spread(10_001, 1e-3, 0.8), [10_001]);
}

#[test]
fn special_values() {
    let xs = vec![
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        0.0,
        -0.0,
        f32::MAX,
        -f32::MAX,
        1e-40,
        -1e-40,
        -20.0,
        -90.0,
        -200.0,
        50.0,
    ];
    let g = values(gelu(tensor(xs.clone(), [xs.len()])));
    let s = values(silu(tensor(xs.clone(), [xs.len()])));
    for (v, name) in [(&g, "gelu"), (&s, "silu")] {
        assert_eq!(v[0], f32::INFINITY, "{name}(+inf)");
        assert_eq!(v[1].to_bits(), (-0.0f32).to_bits(), "{name}(-inf)");
        assert!(v[2].is_nan(), "{name}(NaN)");
        assert_eq!(v[3].to_bits(), 0.0f32.to_bits(), "{name}(0)");
        assert_eq!(v[4].to_bits(), (-0.0f32).to_bits(), "{name}(-0)");
        assert_eq!(v[5], f32::MAX, "{name}(MAX)");
        assert_eq!(v[6], 0.0, "{name}(-MAX)");
        assert!(v[7] > 0.0 && v[7] < 1e-40, "{name}(1e-40) = {}", v[7]);
        assert!(v[8] < 0.0 && v[8] > -1e-40, "{name}(-1e-40) = {}", v[8]);
        assert_eq!(v[12], 50.0, "{name}(50)");
        assert!(v.iter().skip(3).all(|y| !y.is_nan()), "{name}: NaN");
    }
    // Deep negative tails: GELU is -0 once erf rounds to -1; SiLU's true value is tiny.
    assert_eq!(g[9], 0.0);
    assert!(s[9] < 0.0 && s[9] > -1e-7, "silu(-20) = {}", s[9]);
    assert!(s[10] <= 0.0 && s[10] > -1e-36, "silu(-90) = {}", s[10]);
    assert_eq!(s[11], 0.0);

    // An empty tensor stays empty.
    let empty = gelu(tensor::<2>(Vec::new(), [0, 3]));
    assert_eq!(empty.dims(), [0, 3]);
    assert!(values(silu(empty)).is_empty());
}

/// Strided, offset, flipped, broadcast and shared inputs give exactly what the same values
/// in a fresh contiguous tensor give, and never change a tensor they share a buffer with.
#[test]
fn views_and_shared_buffers() {
    let base = tensor(spread(4 * 6 * 10, 5.0, 0.9), [4, 6, 10]);
    let dense = |t: &Tensor<B, 3>| tensor(values(t.clone()), t.dims());
    let views: Vec<(&str, Tensor<B, 3>)> = vec![
        ("swap_dims", base.clone().swap_dims(0, 2)),
        ("permute", base.clone().permute([1, 2, 0])),
        ("narrow dim 0 (offset)", base.clone().narrow(0, 1, 2)),
        ("narrow dim 2 (gaps)", base.clone().narrow(2, 3, 5)),
        ("flip", base.clone().flip([1])),
        ("broadcast", base.clone().narrow(0, 0, 1).expand([3, 6, 10])),
    ];
    let original = values(base.clone());
    for (name, view) in views {
        let want_shape = view.dims();
        let want_g = values(gelu(dense(&view)));
        let want_s = values(silu(dense(&view)));
        let before = cpu_kernel_calls();
        let g = gelu(view.clone());
        let s = silu(view);
        assert_eq!(cpu_kernel_calls(), before + 2, "{name}: kernel not taken");
        assert_eq!(g.dims(), want_shape, "{name}");
        assert_eq!(values(g), want_g, "{name}: gelu");
        assert_eq!(values(s), want_s, "{name}: silu");
        assert_eq!(
            values(base.clone()),
            original,
            "{name}: shared input changed"
        );
    }
    // A uniquely owned tensor (mapped in place) gives the same as a shared one.
    let fresh = values(gelu(tensor(spread(4 * 6 * 10, 5.0, 0.9), [4, 6, 10])));
    assert_eq!(fresh, values(gelu(base.clone())));
    assert_eq!(values(base), original);
}

/// Ours for `CpuBackend` + f32; Burn's (bit-identical) for f64 and bf16.
#[test]
fn dispatch() {
    assert!(uses_cpu_kernel::<B>(DType::F32));
    assert!(!uses_cpu_kernel::<B>(DType::F64));
    assert!(!uses_cpu_kernel::<B>(DType::BF16));
    assert!(!uses_cpu_kernel::<B>(DType::F16));

    let x = tensor(spread(37, 4.0, 0.3), [37]);
    for dtype in [DType::F64, DType::BF16] {
        let xd = x.clone().cast(dtype);
        let before = cpu_kernel_calls();
        let g = gelu(xd.clone());
        let s = silu(xd.clone());
        assert_eq!(cpu_kernel_calls(), before, "{dtype:?}: kernel taken");
        assert_eq!(g.dtype(), dtype);
        assert_eq!(s.dtype(), dtype);
        assert_eq!(
            g.into_data(),
            burn::tensor::activation::gelu(xd.clone()).into_data()
        );
        assert_eq!(
            s.into_data(),
            burn::tensor::activation::silu(xd).into_data()
        );
    }
    let before = cpu_kernel_calls();
    let _ = gelu(x.clone());
    let _ = silu(x);
    assert_eq!(cpu_kernel_calls(), before + 2);
}

#[test]
fn geglu_matches_burn_and_f64() {
    // (shape, amplitude): SD's [b, tokens, 2 * 4 * dim] at a small size, a row count that
    // splits unevenly into parallel tasks, rank 2 and 4.
    let cases: [(Vec<usize>, f32); 4] = [
        (vec![2, 37, 2 * 40], 6.0),
        (vec![1, 1000, 2 * 48], 4.0),
        (vec![3, 2 * 5], 8.0),
        (vec![2, 3, 4, 2 * 7], 5.0),
    ];
    for (i, (shape, amp)) in cases.into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let data = spread(n, amp, 0.1 * i as f64);
        let d2 = *shape.last().unwrap();
        let d = d2 / 2;
        // f64: a * gelu(g) per row.
        let gelu_all = gelu_f64(&data);
        let want: Vec<f64> = (0..n / d2)
            .flat_map(|r| {
                let (data, gelu_all) = (&data, &gelu_all);
                (0..d).map(move |j| data[r * d2 + j] as f64 * gelu_all[r * d2 + d + j])
            })
            .collect();
        let (ours, burn) = match shape.len() {
            2 => {
                let t = tensor(data.clone(), [shape[0], shape[1]]);
                let before = cpu_kernel_calls();
                let ours = values(geglu(t.clone()));
                assert_eq!(cpu_kernel_calls(), before + 1, "kernel not taken");
                let burn =
                    t.clone().narrow(1, 0, d) * burn::tensor::activation::gelu(t.narrow(1, d, d));
                (ours, values(burn))
            }
            3 => {
                let t = tensor(data.clone(), [shape[0], shape[1], shape[2]]);
                let ours = values(geglu(t.clone()));
                let burn =
                    t.clone().narrow(2, 0, d) * burn::tensor::activation::gelu(t.narrow(2, d, d));
                (ours, values(burn))
            }
            _ => {
                let t = tensor(data.clone(), [shape[0], shape[1], shape[2], shape[3]]);
                let ours = values(geglu(t.clone()));
                let burn =
                    t.clone().narrow(3, 0, d) * burn::tensor::activation::gelu(t.narrow(3, d, d));
                (ours, values(burn))
            }
        };
        assert_eq!(ours.len(), want.len(), "{shape:?}: output size");
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let err_f64 = ours
            .iter()
            .zip(&want)
            .fold(0.0f64, |m, (&a, &w)| m.max((a as f64 - w).abs()));
        let err_burn = ours
            .iter()
            .zip(&burn)
            .fold(0.0f32, |m, (&a, &b)| m.max((a - b).abs()));
        println!(
            "geglu {shape:?}: vs f64 {err_f64:.3e}, vs Burn {err_burn:.3e} (max |ref| {scale:.2})"
        );
        assert!(scale > 1.0, "{shape:?}: degenerate reference");
        assert!(
            err_f64 <= 1e-6 * scale,
            "{shape:?}: error vs f64 {err_f64:.3e}"
        );
        assert!(
            err_burn as f64 <= 2e-6 * scale,
            "{shape:?}: error vs Burn {err_burn:.3e}"
        );
    }
    // A non-contiguous input (a swapped view) goes through Burn's ops and is still right.
    let t = tensor(spread(2 * 6 * 8, 3.0, 0.7), [2, 8, 6]).swap_dims(1, 2);
    let ours = values(geglu(t.clone()));
    let dense = tensor(values(t.clone()), [2, 6, 8]);
    let reference = values(geglu(dense));
    let diff = ours
        .iter()
        .zip(&reference)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff <= 1e-6, "strided geglu differs by {diff:.3e}");
}

#[test]
fn quick_gelu_matches_burn_and_f64() {
    // Wide and narrow ranges, a parallel-size tensor, and the special values.
    let mut data = spread(3 * CHUNK + 17, 40.0, 0.3);
    data.extend(spread(10_001, 1e-3, 0.9));
    data.extend([0.0, -0.0, 1.0, -1.0, 60.0, -60.0]);
    let n = data.len();
    let x = tensor(data.clone(), [n]);
    let before = cpu_kernel_calls();
    let ours = values(quick_gelu(x.clone()));
    assert_eq!(cpu_kernel_calls(), before + 1, "kernel not taken");
    let burn = values(x.clone() * burn::tensor::activation::sigmoid(x * 1.702));
    // The reference in f64 from the f32 argument `1.702·x` (rounded as every f32
    // implementation, Burn's and torch's included, rounds it: for x ≈ -40 that rounding
    // alone moves the result by ~60 ulp).
    let want: Vec<f64> = data
        .iter()
        .map(|&x| {
            let v = (1.702f32 * x) as f64;
            x as f64 / (1.0 + (-v).exp())
        })
        .collect();
    let burn64: Vec<f64> = burn.iter().map(|&v| v as f64).collect();
    let scale = |_: f32, r: f64| ulp(r);
    let (vs_f64, at64) = worst(&data, &ours, &want, scale);
    let (vs_burn, at) = worst(&data, &ours, &burn64, scale);
    println!(
        "quick_gelu: vs f64 {vs_f64:.2} ulp (x = {at64}), vs Burn {vs_burn:.2} ulp (x = {at})"
    );
    assert!(vs_f64 <= 3.5, "quick_gelu vs f64 {vs_f64} ulp at {at64}");
    assert!(vs_burn <= 4.0, "quick_gelu vs Burn {vs_burn} ulp at {at}");
    // Specials: ±inf and NaN.
    let special = values(quick_gelu(tensor(
        vec![f32::INFINITY, f32::NEG_INFINITY, f32::NAN],
        [3],
    )));
    assert_eq!(special[0], f32::INFINITY);
    assert_eq!(special[1].to_bits(), (-0.0f32).to_bits());
    assert!(special[2].is_nan());
}
