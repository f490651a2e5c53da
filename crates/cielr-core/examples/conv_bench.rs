//! Times the direct stride-1 conv2d kernel (`cielr_core::conv::conv2d`) against Burn's flex
//! conv2d on the convolution shapes of the SD VAE decoder, the SD UNet and LaMa.
//!
//! ```sh
//! RAYON_NUM_THREADS=2 cargo run --release -p cielr-core --example conv_bench [name filter [ours]]
//! ```
//!
//! Prints, per shape, the median wall time of each (runs alternate between the two, after
//! one warm-up run of each), the speed-up and the max abs difference between the results.

use std::time::Instant;

use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData};
use cielr_core::backend::CpuBackend as B;
use cielr_core::conv::{conv2d, cpu_kernel_calls};

/// `(name, [batch, ci, h, w], co, kernel, padding, stride)`.
type Case = (&'static str, [usize; 4], usize, usize, usize, usize);

const CASES: &[Case] = &[
    ("vae_mid_512x64x64_3x3", [1, 512, 64, 64], 512, 3, 1, 1),
    ("vae_up_256x256x256_3x3", [1, 256, 256, 256], 256, 3, 1, 1),
    ("vae_up_128x512x512_3x3", [1, 128, 512, 512], 128, 3, 1, 1),
    ("unet_2x320x64x64_3x3", [2, 320, 64, 64], 320, 3, 1, 1),
    ("lama_64x512x512_7x7", [1, 64, 512, 512], 64, 7, 3, 1),
    ("lama_block_128x64x64_to384", [1, 128, 64, 64], 384, 3, 1, 1),
    ("lama_block_384x64x64_to128", [1, 384, 64, 64], 128, 3, 1, 1),
    ("lama_block_128x64x64_to128", [1, 128, 64, 64], 128, 3, 1, 1),
    ("lama_out_64x512x512_to3_7x7", [1, 64, 512, 512], 3, 7, 3, 1),
    ("pointwise_512x64x64_1x1", [1, 512, 64, 64], 512, 1, 0, 1),
    ("lama_down_64x512x512_s2", [1, 64, 512, 512], 128, 3, 1, 2),
    ("lama_down_256x128x128_s2", [1, 256, 128, 128], 384, 3, 1, 2),
    ("unet_down_2x320x64x64_s2", [2, 320, 64, 64], 320, 3, 1, 2),
];

fn random(shape: &[usize], seed: u64) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
        })
        .collect()
}

/// Median wall times in ms of `f(true)` (ours) and `f(false)` (Burn), run alternately
/// `reps` times after one warm-up run of each (alternating keeps allocator and cache state
/// comparable between the two); and the last result of each.
fn time_pair(reps: usize, mut f: impl FnMut(bool) -> Vec<f32>) -> [(f64, Vec<f32>); 2] {
    let mut last = [f(true), f(false)];
    let mut ms = [Vec::with_capacity(reps), Vec::with_capacity(reps)];
    for _ in 0..reps {
        for (i, ours) in [true, false].into_iter().enumerate() {
            let t = Instant::now();
            last[i] = f(ours);
            ms[i].push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let [ours, burn] = last;
    let [mut ms_ours, mut ms_burn] = ms;
    ms_ours.sort_by(f64::total_cmp);
    ms_burn.sort_by(f64::total_cmp);
    [(ms_ours[reps / 2], ours), (ms_burn[reps / 2], burn)]
}

fn main() {
    let filter = std::env::args().nth(1).unwrap_or_default();
    // `ours` as a second argument runs only our kernel (for profiling).
    let ours_only = std::env::args().nth(2).as_deref() == Some("ours");
    let device = Default::default();
    println!(
        "rayon threads: {}; median of 3 (large) or 7 runs, alternating, after a warm-up",
        rayon::current_num_threads()
    );
    println!(
        "{:<26} {:>10} {:>10} {:>7} {:>10} {:>9}",
        "case", "ours ms", "burn ms", "ratio", "max|diff|", "max|ref|"
    );
    for &(name, [b, ci, h, w], co, k, pad, stride) in CASES {
        if !name.contains(&filter) {
            continue;
        }
        let x = Tensor::<B, 4>::from_data(
            TensorData::new(random(&[b, ci, h, w], 1), [b, ci, h, w]),
            &device,
        );
        let wt = Tensor::<B, 4>::from_data(
            TensorData::new(random(&[co, ci, k, k], 2), [co, ci, k, k]),
            &device,
        );
        let bias = Tensor::<B, 1>::from_data(TensorData::new(random(&[co], 3), [co]), &device);
        let options = ConvOptions::new([stride, stride], [pad, pad], [1, 1], 1);
        let run = |ours: bool| {
            let out = if ours {
                conv2d(x.clone(), wt.clone(), Some(bias.clone()), options.clone())
            } else {
                burn::tensor::module::conv2d(
                    x.clone(),
                    wt.clone(),
                    Some(bias.clone()),
                    options.clone(),
                )
            };
            out.into_data().to_vec::<f32>().unwrap_or_default()
        };
        if ours_only {
            let t = Instant::now();
            for _ in 0..5 {
                run(true);
            }
            println!(
                "{name:<26} {:>10.1} (ours only, mean of 5)",
                t.elapsed().as_secs_f64() * 200.0
            );
            continue;
        }
        let calls = cpu_kernel_calls();
        let reps = if b * ci * h * w >= 1 << 24 { 3 } else { 7 };
        let [(ours_ms, ours), (burn_ms, reference)] = time_pair(reps, run);
        assert!(cpu_kernel_calls() > calls, "{name}: kernel not taken");
        let diff = ours
            .iter()
            .zip(&reference)
            .fold(0.0f32, |m, (a, r)| m.max((a - r).abs()));
        let max_ref = reference.iter().fold(0.0f32, |m, r| m.max(r.abs()));
        println!(
            "{name:<26} {ours_ms:>10.1} {burn_ms:>10.1} {:>7.2} {diff:>10.2e} {max_ref:>9.3}",
            burn_ms / ours_ms
        );
    }
}
