//! Times `cielr_core::activation::{gelu, silu}` (our CPU kernels) against Burn's flex
//! `gelu` / `silu` on the activation shapes of the project's models and prints the median
//! wall time, the speed-up and the max abs difference of the outputs.
//!
//! ```sh
//! RAYON_NUM_THREADS=2 cargo run --release -p cielr-core --example activation_bench
//! ```
//! `ACT_BENCH_RUNS=n` sets the timed runs per shape (default 9). Each shape is timed twice:
//! with an input that shares its buffer (a clone), so both sides write a new buffer, and
//! with an input that owns its buffer (a deep copy made outside the timing, as the fresh
//! output of a linear layer is), which both sides map in place.
//!
//! `ACT_BENCH_ERF_EXHAUSTIVE=1` instead checks the kernel's `erf` against the f64 `erf`
//! (libm's, via Burn's flex `erf` on f64 tensors) on every non-negative f32 up to 6 and
//! checks it is exactly 1 above (and on ±inf / NaN); `erf` is odd by construction (tested in
//! `tests/activation_kernel.rs`). Takes ~half a minute on two cores.

use std::time::Instant;

use burn::tensor::{DType, Tensor, TensorData};
use cielr_core::activation::{cpu_kernel_calls, erf_in_place, gelu, silu};
use cielr_core::backend::CpuBackend as B;
use rayon::prelude::*;

/// Values in [-4, 4) from a xorshift generator seeded by `seed`.
fn random<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<B, D> {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    let data: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let u = (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
            8.0 * u - 4.0
        })
        .collect();
    Tensor::from_data(TensorData::new(data, shape), &Default::default())
}

/// Median wall ms of `runs` runs of `f` on an input made (untimed) by `input`, after one
/// warm-up, and the last output.
fn median_ms<const D: usize>(
    runs: usize,
    input: impl Fn() -> Tensor<B, D>,
    f: impl Fn(Tensor<B, D>) -> Tensor<B, D>,
) -> (f64, Tensor<B, D>) {
    let mut out = f(input());
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let x = input();
            let start = Instant::now();
            out = f(x);
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], out)
}

fn row<const D: usize>(
    name: &str,
    shape: [usize; D],
    runs: usize,
    ours: fn(Tensor<B, D>) -> Tensor<B, D>,
    burn: fn(Tensor<B, D>) -> Tensor<B, D>,
) {
    let x = random(shape, 7);
    let shared = || x.clone();
    // A deep copy: the callee owns its buffer and may write in place.
    let owned = || Tensor::<B, D>::from_data(x.to_data(), &Default::default());
    let calls = cpu_kernel_calls();
    let (burn_shared, burn_out) = median_ms(runs, shared, burn);
    let (ours_shared, ours_out) = median_ms(runs, shared, ours);
    let (burn_owned, _) = median_ms(runs, owned, burn);
    let (ours_owned, _) = median_ms(runs, owned, ours);
    assert_eq!(
        cpu_kernel_calls(),
        calls + 2 * (runs + 1),
        "the CPU kernel was not taken"
    );
    let diff: f32 = (ours_out - burn_out).abs().max().into_scalar();
    println!(
        "{name:<17} {:<17} {burn_shared:>8.2} {ours_shared:>8.2} {:>6.1}x {burn_owned:>8.2} \
         {ours_owned:>8.2} {:>6.1}x {diff:>9.2e}",
        format!("{shape:?}"),
        burn_shared / ours_shared,
        burn_owned / ours_owned,
    );
}

/// Checks `erf_in_place` on every non-negative f32 (see the module docs).
fn erf_exhaustive() {
    const BLOCK: u32 = 1 << 22;
    let six = 6.0f32.to_bits();
    let start = Instant::now();
    let worst = (0..six.div_ceil(BLOCK))
        .into_par_iter()
        .map(|b| {
            let lo = b * BLOCK;
            let hi = (lo + BLOCK).min(six + 1);
            let xs: Vec<f32> = (lo..hi).map(f32::from_bits).collect();
            let mut ys = xs.clone();
            erf_in_place(&mut ys);
            let wide: Vec<f64> = xs.iter().map(|&x| x as f64).collect();
            let n = wide.len();
            let want = Tensor::<B, 1>::from_data(
                TensorData::new(wide, [n]),
                (&Default::default(), DType::F64),
            )
            .erf()
            .into_data()
            .to_vec::<f64>()
            .expect("f64 data");
            xs.iter()
                .zip(&ys)
                .zip(&want)
                .map(|((&x, &y), &w)| ((y as f64 - w).abs(), x))
                .fold((0.0f64, 0.0f32), |a, b| if b.0 > a.0 { b } else { a })
        })
        .reduce(|| (0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a });
    println!(
        "erf on all {} f32 in [0, 6]: max |ours - f64 erf| = {:.3e} at x = {} ({:.1} s)",
        six + 1,
        worst.0,
        worst.1,
        start.elapsed().as_secs_f64()
    );
    // Above 6 (and at +inf) erf is 1 in f64; ours must be exactly 1 there, and NaN stays NaN.
    let inf = f32::INFINITY.to_bits();
    let first = six + 1;
    let above_ok = (0..(inf + 1 - first).div_ceil(BLOCK))
        .into_par_iter()
        .all(|b| {
            let lo = first + b * BLOCK;
            let hi = (lo + BLOCK).min(inf + 1);
            let mut ys: Vec<f32> = (lo..hi).map(f32::from_bits).collect();
            erf_in_place(&mut ys);
            ys.iter().all(|&y| y == 1.0)
        });
    let mut nan = [f32::NAN];
    erf_in_place(&mut nan);
    println!(
        "erf(x) == 1 for every f32 in (6, +inf]: {above_ok}; erf(NaN) is NaN: {}",
        nan[0].is_nan()
    );
    assert!(above_ok && nan[0].is_nan() && worst.0 <= 1.5e-7);
}

fn main() {
    if std::env::var("ACT_BENCH_ERF_EXHAUSTIVE").is_ok_and(|v| v == "1") {
        erf_exhaustive();
        return;
    }
    let runs: usize = std::env::var("ACT_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(9);
    println!(
        "rayon threads: {}, median of {runs} runs",
        rayon::current_num_threads()
    );
    println!(
        "{:<17} {:<17} {:>26} {:>26}",
        "", "", "shared input (new buffer)", "owned input (in place)"
    );
    println!(
        "{:<17} {:<17} {:>8} {:>8} {:>7} {:>8} {:>8} {:>7} {:>9}",
        "op, model",
        "shape",
        "burn ms",
        "ours ms",
        "speedup",
        "burn ms",
        "ours ms",
        "speedup",
        "max|diff|"
    );
    row(
        "gelu, Depth MLP",
        [1, 1370, 1536],
        runs,
        gelu,
        burn::tensor::activation::gelu,
    );
    row(
        "gelu, OWLv2 MLP",
        [1, 3601, 3072],
        runs,
        gelu,
        burn::tensor::activation::gelu,
    );
    row(
        "silu, SD resnet",
        [2, 320, 64, 64],
        runs,
        silu,
        burn::tensor::activation::silu,
    );
}
