//! Criterion benchmarks of the language model: SmolLM2-135M-Instruct from the cached GGUF
//! (`cielr_planner::gguf::smollm2_gguf_path`), run in Burn on the CPU.
//!
//! - `llm/prefill_128`: a 128-token prompt into an empty cache (logits of the last position);
//! - `llm/decode_token`: one greedy decode step (one token, logits read back, argmax) after a
//!   128-token prompt; the cache is reset to the prompt every 64 steps so the context length
//!   stays between 128 and 192;
//! - `llm/decode_token_as_stored`: the same with the decode steps reading the GGUF's Q4_1/Q8_0
//!   matrices as stored (`Llama::from_gguf_quantized`, what `LocalLlm` does on the CPU).
//!
//! When the GGUF is missing the benchmarks are skipped with a message (get it with
//! `tools/setup-models.sh`). `tools/bench/llm.sh` compares the same numbers with transformers
//! and llama.cpp in one run.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo bench --bench llm
//! ```

use std::hint::black_box;

use cielr_core::backend::CpuBackend;
use cielr_planner::generate::Sampler;
use cielr_planner::gguf::{smollm2_gguf_path, GgufFile};
use cielr_planner::llama::Llama;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const PROMPT_LEN: usize = 128;
const DECODE_WINDOW: usize = 64;

fn bench_llm(c: &mut Criterion) {
    let path = match smollm2_gguf_path() {
        Ok(p) => p,
        Err(e) => {
            println!("SKIPPED llm benchmarks: {e}");
            return;
        }
    };
    let device = Default::default();
    let loaded = GgufFile::open(&path).and_then(|file| {
        Ok((
            Llama::<CpuBackend>::from_gguf(&file, &device)?,
            Llama::<CpuBackend>::from_gguf_quantized(&file, &device)?,
        ))
    });
    let (model, quantized) = match loaded {
        Ok(m) => m,
        Err(e) => {
            println!(
                "SKIPPED llm benchmarks: loading {} failed: {e}",
                path.display()
            );
            return;
        }
    };
    let vocab = model.config().vocab_size;
    let prompt: Vec<u32> = (0..PROMPT_LEN)
        .map(|i| ((i * 7919 + 17) % vocab) as u32)
        .collect();

    let mut group = c.benchmark_group("llm");
    group.sample_size(10);

    group.throughput(Throughput::Elements(PROMPT_LEN as u64));
    group.bench_function(format!("prefill_{PROMPT_LEN}"), |b| {
        b.iter(|| {
            let mut cache = model.new_cache();
            let logits = model
                .next_token_logits(black_box(&prompt), &mut cache)
                .expect("prefill");
            black_box(logits)
        })
    });

    group.throughput(Throughput::Elements(1));
    for (name, m) in [
        ("decode_token", &model),
        ("decode_token_as_stored", &quantized),
    ] {
        bench_decode(&mut group, name, m, &prompt);
    }
    group.finish();
}

/// One greedy decode step of `model` after `prompt`, timed without the prefills that reset
/// the cache every [`DECODE_WINDOW`] steps.
fn bench_decode(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    model: &Llama<CpuBackend>,
    prompt: &[u32],
) {
    let prefill = |cache: &mut _| -> u32 {
        let logits = model.next_token_logits(prompt, cache).expect("prefill");
        Sampler::argmax(&logits).expect("argmax")
    };
    let mut cache = model.new_cache();
    let mut next = prefill(&mut cache);
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            for _ in 0..iters {
                if cache.len() >= PROMPT_LEN + DECODE_WINDOW {
                    cache.clear();
                    next = prefill(&mut cache);
                }
                let start = std::time::Instant::now();
                let logits = model
                    .next_token_logits(&[next], &mut cache)
                    .expect("decode step");
                next = Sampler::argmax(black_box(&logits)).expect("argmax");
                total += start.elapsed();
            }
            total
        })
    });
}

criterion_group!(benches, bench_llm);
criterion_main!(benches);
