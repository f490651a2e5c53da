//! Times one decode-step product with a block-quantised matrix in each GGUF type that
//! [`QuantMatrix`] multiplies as stored, against Burn's `f32` matmul with the same matrix
//! dequantised.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release -p cielr-planner --example quant_matmul -- [N] [ROWS]
//! ```
//!
//! `N` (default 1536) is the matrix width (a multiple of 256), `ROWS` (default 1) the input
//! rows per product. Prints, per type, the median time of a product with one matrix that
//! stays in the caches ("cached") and with copies of it taken in turn, 160 MB of them in
//! all, so that each product reads its weights from memory as a decode step does
//! ("memory"); the bytes of weight data read, the implied bandwidth from memory, and the
//! largest difference from the `f32` product relative to its largest value.
//! The blocks are random bytes with sane `f16` scales (the values do not change the speed).

use std::time::{Duration, Instant};

use burn::tensor::{Tensor, TensorData};
use cielr_core::backend::CpuBackend;
use cielr_planner::gguf::GgufDType;
use cielr_planner::quant::QuantMatrix;

/// A deterministic pseudo-random byte stream.
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as u8
        })
        .collect()
}

/// Random GGUF blocks of `dtype` for `weights` weights, `f16` fields set to small values.
fn blocks(dtype: GgufDType, weights: usize, seed: u64) -> Vec<u8> {
    use GgufDType as T;
    let (per, size, halves): (usize, usize, &[usize]) = match dtype {
        T::Q4_0 => (32, 18, &[0]),
        T::Q4_1 => (32, 20, &[0, 2]),
        T::Q5_0 => (32, 22, &[0]),
        T::Q5_1 => (32, 24, &[0, 2]),
        T::Q8_0 => (32, 34, &[0]),
        T::Q4_K => (256, 144, &[0, 2]),
        T::Q5_K => (256, 176, &[0, 2]),
        _ => (256, 210, &[208]),
    };
    let mut raw = bytes(weights / per * size, seed);
    for block in raw.chunks_exact_mut(size) {
        for &at in halves {
            let v = half::f16::from_f32(0.001);
            block[at..at + 2].copy_from_slice(&v.to_bits().to_le_bytes());
        }
    }
    raw
}

/// Bytes of copies of a matrix taken in turn for the "memory" timings (5 x a 32 MB L3).
const POOL_BYTES: usize = 160_000_000;
/// Timed products per figure.
const RUNS: usize = 300;

/// Median wall time of `runs` calls of `f` (given the call's number).
fn median(runs: usize, mut f: impl FnMut(usize)) -> Duration {
    for i in 0..10 {
        f(i);
    }
    let mut times: Vec<Duration> = (0..runs)
        .map(|i| {
            let t = Instant::now();
            f(i);
            t.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(1536, |a| a.parse().expect("N"));
    let m: usize = args.next().map_or(1, |a| a.parse().expect("ROWS"));
    assert!(n.is_multiple_of(256), "N must be a multiple of 256");
    let device = Default::default();
    let x: Vec<f32> = bytes(m * n, 99)
        .iter()
        .map(|&b| b as f32 / 128.0 - 1.0)
        .collect();
    let xt = Tensor::<CpuBackend, 2>::from_data(TensorData::new(x.clone(), [m, n]), &device);
    println!(
        "{n} x {n} matrix, {m} input row(s), {} rayon threads",
        rayon::current_num_threads()
    );
    println!("type   cached      memory     weight MB  GB/s   max |y - y_f32| / max |y|");
    let copies = |bytes: usize| (POOL_BYTES / bytes).max(1);
    let report = |name: &str, cached: Duration, memory: Duration, bytes: usize, err: &str| {
        let mb = bytes as f64 / 1e6;
        println!(
            "{name:6} {:7.3} ms  {:7.3} ms  {mb:8.2}  {:5.1}   {err}",
            cached.as_secs_f64() * 1e3,
            memory.as_secs_f64() * 1e3,
            mb / 1e3 / memory.as_secs_f64()
        );
    };
    let mut f32_done = false;
    for (seed, dtype) in [
        GgufDType::Q4_0,
        GgufDType::Q4_1,
        GgufDType::Q5_0,
        GgufDType::Q5_1,
        GgufDType::Q8_0,
        GgufDType::Q4_K,
        GgufDType::Q5_K,
        GgufDType::Q6_K,
    ]
    .into_iter()
    .enumerate()
    {
        let raw = blocks(dtype, n * n, seed as u64);
        let q = QuantMatrix::from_gguf(dtype, n, n, &raw).expect("blocks");
        // Burn's Linear layout: [in, out].
        let w = q.dequantize();
        let mut wt = vec![0f32; n * n];
        for r in 0..n {
            for c in 0..n {
                wt[c * n + r] = w[r * n + c];
            }
        }
        let wt = Tensor::<CpuBackend, 2>::from_data(TensorData::new(wt, [n, n]), &device);
        let f32_product = |w: &Tensor<CpuBackend, 2>| {
            xt.clone()
                .matmul(w.clone())
                .into_data()
                .into_vec::<f32>()
                .expect("f32")
        };
        if !f32_done {
            let pool: Vec<_> = (0..copies(4 * n * n))
                .map(|_| Tensor::<CpuBackend, 2>::from_data(wt.to_data(), &device))
                .collect();
            let cached = median(RUNS, |_| {
                std::hint::black_box(f32_product(&wt));
            });
            let memory = median(RUNS, |i| {
                std::hint::black_box(f32_product(&pool[i % pool.len()]));
            });
            report("f32", cached, memory, 4 * n * n, "");
            f32_done = true;
        }
        let want = f32_product(&wt);
        let got = q.matmul(&x).expect("product");
        let err = got
            .iter()
            .zip(&want)
            .fold(0f32, |a, (p, r)| a.max((p - r).abs()));
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        let pool = vec![q.clone(); copies(q.weight_bytes())];
        let cached = median(RUNS, |_| {
            std::hint::black_box(q.matmul(&x).expect("product"));
        });
        let memory = median(RUNS, |i| {
            std::hint::black_box(pool[i % pool.len()].matmul(&x).expect("product"));
        });
        let name = format!("{dtype:?}");
        let err = format!("{:.1e}", err / scale);
        report(&name, cached, memory, q.weight_bytes(), &err);
    }
}
