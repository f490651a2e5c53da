//! Times the GroupNorm kernel (`cielr_core::norm`) against Burn's flex `GroupNorm::forward`
//! on the GroupNorm shapes of the SD-1.5 UNet and VAE decoder (32 groups, affine).
//!
//! ```sh
//! RAYON_NUM_THREADS=2 cargo run --release -p cielr-core --example norm_bench [name filter [ours]]
//! ```
//!
//! `ours` as a second argument only runs [`group_norm`], 20 times on a shared input and 20
//! times on owned inputs (for profiling).
//!
//! Prints, per shape, the median wall time (runs alternate between ours and Burn's, after a
//! warm-up run of each) of:
//! - `gn`: [`group_norm`] on a shared input (it writes a new buffer, as Burn does; in the
//!   UNet the input is still needed by the residual connection) vs `norm.forward`;
//! - `inplace`: [`group_norm`] on an input it owns (normalised in place);
//! - `gn+silu`: [`group_norm_silu`] vs Burn's `silu(norm.forward(x))`;
//!
//! the speed-ups (Burn ms / ours ms) and the max abs difference from Burn's result.
//! Measured numbers are in the module docs of `cielr_core::norm`.

use std::time::Instant;

use burn::module::Param;
use burn::nn::{GroupNorm, GroupNormConfig};
use burn::tensor::{Tensor, TensorData};
use cielr_core::backend::CpuBackend as B;
use cielr_core::norm::{cpu_kernel_calls, group_norm, group_norm_silu};

/// `(name, [batch, channels, height, width])`, 32 groups.
const CASES: &[(&str, [usize; 4])] = &[
    ("unet_2x320x64x64", [2, 320, 64, 64]),
    ("unet_2x640x32x32", [2, 640, 32, 32]),
    ("unet_2x1280x16x16", [2, 1280, 16, 16]),
    ("vae_1x512x64x64", [1, 512, 64, 64]),
    ("vae_1x128x512x512", [1, 128, 512, 512]),
];

fn random(n: usize, seed: u64, amp: f32, offset: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            offset + ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * amp
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Milliseconds of `f` (the result is dropped after the clock stops).
fn time<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let t = Instant::now();
    let out = f();
    (t.elapsed().as_secs_f64() * 1e3, out)
}

fn max_diff(a: Tensor<B, 4>, b: Tensor<B, 4>) -> f32 {
    let a = a.into_data().to_vec::<f32>().unwrap_or_default();
    let b = b.into_data().to_vec::<f32>().unwrap_or_default();
    a.iter()
        .zip(&b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn main() {
    let filter = std::env::args().nth(1).unwrap_or_default();
    let ours_only = std::env::args().nth(2).as_deref() == Some("ours");
    let device = Default::default();
    println!(
        "rayon threads: {}; median of 3 (large) or 9 runs, alternating, after a warm-up",
        rayon::current_num_threads()
    );
    println!(
        "{:<20} {:>8} {:>8} {:>6} {:>9} {:>6} {:>10} {:>10} {:>6} {:>9} {:>9}",
        "case",
        "gn ms",
        "burn ms",
        "ratio",
        "inplace",
        "ratio",
        "gn+silu",
        "burn+silu",
        "ratio",
        "diff gn",
        "diff silu"
    );
    for &(name, shape) in CASES {
        if !name.contains(&filter) {
            continue;
        }
        let [b, c, h, w] = shape;
        let n = b * c * h * w;
        let data = random(n, 1, 2.0, 0.1);
        let x = Tensor::<B, 4>::from_data(TensorData::new(data.clone(), shape), &device);
        let mut norm: GroupNorm<B> = GroupNormConfig::new(32, c).init(&device);
        norm.gamma = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(random(c, 2, 0.5, 1.0), [c]),
            &device,
        )));
        norm.beta = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(random(c, 3, 0.5, 0.0), [c]),
            &device,
        )));
        let fresh = || Tensor::<B, 4>::from_data(TensorData::new(data.clone(), shape), &device);
        if ours_only {
            let (ms, _) = time(|| {
                for _ in 0..20 {
                    drop(group_norm(&norm, x.clone()));
                }
            });
            println!(
                "{name:<20} {:>8.2} (ours only, shared input, mean of 20)",
                ms / 20.0
            );
            let mut total = 0.0;
            for _ in 0..20 {
                let owned = fresh();
                total += time(|| group_norm(&norm, owned)).0;
            }
            println!(
                "{name:<20} {:>8.2} (ours only, owned input, mean of 20)",
                total / 20.0
            );
            continue;
        }
        let reps = if n >= 1 << 24 { 3 } else { 9 };
        let calls = cpu_kernel_calls();
        // Warm-up, and the results compared.
        let diff_gn = max_diff(group_norm(&norm, x.clone()), norm.forward(x.clone()));
        let diff_silu = max_diff(
            group_norm_silu(&norm, x.clone()),
            burn::tensor::activation::silu(norm.forward(x.clone())),
        );
        let mut ms: [Vec<f64>; 5] = Default::default();
        for _ in 0..reps {
            ms[0].push(time(|| group_norm(&norm, x.clone())).0);
            ms[1].push(time(|| norm.forward(x.clone())).0);
            let owned = fresh();
            ms[2].push(time(|| group_norm(&norm, owned)).0);
            ms[3].push(time(|| group_norm_silu(&norm, x.clone())).0);
            ms[4].push(time(|| burn::tensor::activation::silu(norm.forward(x.clone()))).0);
        }
        assert!(
            cpu_kernel_calls() >= calls + 2 + 3 * reps,
            "{name}: kernel not taken"
        );
        let [ours, burn, inplace, ours_silu, burn_silu] = ms.map(median);
        println!(
            "{name:<20} {ours:>8.2} {burn:>8.2} {:>6.2} {inplace:>9.2} {:>6.2} {ours_silu:>10.2} \
             {burn_silu:>10.2} {:>6.2} {diff_gn:>9.2e} {diff_silu:>9.2e}",
            burn / ours,
            burn / inplace,
            burn_silu / ours_silu,
        );
    }
}
