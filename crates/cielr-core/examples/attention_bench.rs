//! Times `cielr_core::attention::attention` (our CPU kernel) against Burn's flex attention
//! on the attention shapes of the project's models, and prints a table with the speed-up
//! and the max abs difference of the outputs.
//!
//! ```sh
//! RAYON_NUM_THREADS=2 cargo run --release -p cielr-core --example attention_bench
//! ```
//! Wall-clock medians and, on Linux, the mean CPU time per run (all threads together) are
//! printed:
//! on a busy machine the CPU time is the steadier measure of the work done.
//! `ATTN_BENCH_RUNS=n` sets the timed runs per shape (default 5; the median is reported;
//! decode-size shapes run 100x as many); `ATTN_BENCH_ONLY=text` keeps the shapes whose name
//! contains `text`.

use std::time::Instant;

use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Tensor, TensorData};
use cielr_core::attention::{attention, cpu_kernel_calls};
use cielr_core::backend::CpuBackend as B;

struct Shape {
    name: &'static str,
    /// `[batch, heads, seq_q, head_dim]`.
    q: [usize; 4],
    seq_kv: usize,
    causal: bool,
}

fn random(shape: [usize; 4], seed: u64) -> Tensor<B, 4> {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    Tensor::from_data(TensorData::new(data, shape), &Default::default())
}

/// CPU time of this process so far (all threads), in ms, from Linux's per-thread
/// `schedstat`; `None` elsewhere. On a busy machine it measures the work done better than
/// the wall clock does.
fn cpu_ms() -> Option<f64> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total as f64 / 1e6)
}

/// Median wall ms, mean CPU ms per run (NaN when unknown) and the last output of `runs`
/// runs.
fn time_ms(runs: usize, mut f: impl FnMut() -> Tensor<B, 4>) -> (f64, f64, Tensor<B, 4>) {
    let mut out = f(); // warm-up
    let mut wall = Vec::with_capacity(runs);
    let cpu0 = cpu_ms();
    for _ in 0..runs {
        let t = Instant::now();
        out = f();
        wall.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let cpu = match (cpu0, cpu_ms()) {
        (Some(a), Some(b)) => (b - a) / runs as f64,
        _ => f64::NAN,
    };
    wall.sort_by(f64::total_cmp);
    (wall[wall.len() / 2], cpu, out)
}

fn main() {
    let runs: usize = std::env::var("ATTN_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let shapes = [
        Shape {
            name: "OWLv2 vision",
            q: [1, 12, 3601, 64],
            seq_kv: 3601,
            causal: false,
        },
        Shape {
            name: "SAM global",
            q: [1, 12, 4096, 64],
            seq_kv: 4096,
            causal: false,
        },
        Shape {
            name: "Depth Anything V2-S",
            q: [1, 6, 1370, 64],
            seq_kv: 1370,
            causal: false,
        },
        Shape {
            name: "SD UNet self 512px",
            q: [2, 8, 4096, 40],
            seq_kv: 4096,
            causal: false,
        },
        Shape {
            name: "SD UNet cross 512px",
            q: [2, 8, 4096, 40],
            seq_kv: 77,
            causal: false,
        },
        Shape {
            name: "LLM prefill causal",
            q: [1, 9, 512, 64],
            seq_kv: 512,
            causal: true,
        },
        Shape {
            name: "LLM decode",
            q: [1, 3, 3, 64],
            seq_kv: 1088,
            causal: false,
        },
        Shape {
            name: "LLM decode, long",
            q: [1, 3, 3, 64],
            seq_kv: 8192,
            causal: false,
        },
    ];
    println!(
        "rayon threads: {}, median of {runs} runs (decode: {})",
        rayon::current_num_threads(),
        runs * 100
    );
    println!(
        "{:<22} {:<30} {:>9} {:>9} {:>8} {:>9} {:>9} {:>8} {:>10}",
        "shape",
        "q [b,h,s,d] x kv",
        "burn ms",
        "ours ms",
        "speedup",
        "burn cpu",
        "ours cpu",
        "cpu x",
        "max|diff|"
    );
    let only = std::env::var("ATTN_BENCH_ONLY").unwrap_or_default();
    for s in shapes.iter().filter(|s| s.name.contains(only.as_str())) {
        let [b, h, sq, d] = s.q;
        let q = random(s.q, 1);
        let k = random([b, h, s.seq_kv, d], 2);
        let v = random([b, h, s.seq_kv, d], 3);
        let options = AttentionModuleOptions {
            is_causal: s.causal,
            ..Default::default()
        };
        let n = if sq * s.seq_kv < 100_000 {
            runs * 100
        } else {
            runs
        };
        let (burn_ms, burn_cpu, burn_out) = time_ms(n, || {
            burn::tensor::module::attention(q.clone(), k.clone(), v.clone(), None, None, options)
        });
        let calls = cpu_kernel_calls();
        let (ours_ms, ours_cpu, ours_out) = time_ms(n, || {
            attention(q.clone(), k.clone(), v.clone(), None, None, options)
        });
        assert!(cpu_kernel_calls() > calls, "the CPU kernel was not taken");
        let diff = (ours_out - burn_out).abs().max().into_scalar();
        println!(
            "{:<22} {:<30} {:>9.3} {:>9.3} {:>7.2}x {:>9.3} {:>9.3} {:>7.2}x {:>10.2e}",
            s.name,
            format!(
                "{:?} x {}{}",
                s.q,
                s.seq_kv,
                if s.causal { " causal" } else { "" }
            ),
            burn_ms,
            ours_ms,
            burn_ms / ours_ms,
            burn_cpu,
            ours_cpu,
            burn_cpu / ours_cpu,
            diff
        );
    }
}
