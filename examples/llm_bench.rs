//! Prefill and decode speed of the Llama-family decoder (cielr-planner, Burn `flex` CPU
//! backend), printed as one JSON line for `tools/bench/llm.sh`.
//!
//! ```text
//! cargo run --release --example llm_bench -- [MODEL.gguf] [--prompt-len N] [--decode N]
//!     [--repeats N] [--warmup N] [--split N] [--quant] [--compact]
//! ```
//!
//! `MODEL.gguf` defaults to the cached SmolLM2-135M-Instruct GGUF
//! (`cielr_planner::gguf::smollm2_gguf_path`). The prompt is `N` synthetic token ids,
//! `(i * 7919 + 17) % vocab` — the same ids `tools/bench/llm_ref.py` feeds transformers and
//! llama.cpp. Prefill: the whole prompt in one forward pass into an empty cache, logits of the
//! last position read back. Decode: after a prefill, greedy steps of one token each (forward,
//! logits read back, argmax). Each is run `--warmup` times untimed, then `--repeats` times;
//! the median (and the best) is reported. Threads: Burn's `flex` backend uses rayon's global pool
//! (`RAYON_NUM_THREADS`); `--split N` splits single-row projections into `N` blocks run on
//! those threads (`Llama::with_matmul_split`, an experiment; off by default). `--quant` keeps
//! the block-quantised matrices (Q4_0/Q4_1/Q5_x/Q8_0/Q4_K/Q5_K/Q6_K) as stored for decode
//! steps (`Llama::from_gguf_quantized`, what `LocalLlm` does on the CPU); without it every
//! weight is dequantised to `f32`. `--compact` holds those matrices as stored only, with no
//! `f32` copy (`Llama::from_gguf_compact`; prefill dequantises one matrix at a time). The
//! resident memory after loading (VmRSS) is printed as `rss_after_load_mb` (Linux).

/// The models' many large short-lived tensors are slow under glibc malloc (docs/performance.md,
/// "Allocator").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::time::Instant;

use cielr_core::backend::CpuBackend;
use cielr_planner::generate::Sampler;
use cielr_planner::gguf::{smollm2_gguf_path, GgufFile};
use cielr_planner::llama::Llama;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    cielr::keep_freed_memory();
    let mut model_path: Option<PathBuf> = None;
    let mut split: Option<usize> = None;
    let mut quant = false;
    let mut compact = false;
    let (mut prompt_len, mut decode, mut repeats, mut warmup) = (128usize, 64usize, 5usize, 1usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> Result<usize, Box<dyn std::error::Error>> {
            Ok(args
                .next()
                .ok_or_else(|| format!("{name} needs a number"))?
                .parse()?)
        };
        match a.as_str() {
            "--prompt-len" => prompt_len = num("--prompt-len")?,
            "--decode" => decode = num("--decode")?,
            "--repeats" => repeats = num("--repeats")?.max(1),
            "--warmup" => warmup = num("--warmup")?,
            "--split" => split = Some(num("--split")?),
            "--quant" => quant = true,
            "--compact" => compact = true,
            _ if a.starts_with("--") => return Err(format!("unknown option {a}").into()),
            _ => model_path = Some(PathBuf::from(a)),
        }
    }
    // Zero tokens would print NaN rates (not JSON) or fail inside the model.
    if prompt_len == 0 || decode == 0 {
        return Err("--prompt-len and --decode need at least 1 token".into());
    }
    let path = match model_path {
        Some(p) => p,
        None => smollm2_gguf_path()?,
    };
    let device = Default::default();
    let t0 = Instant::now();
    let file = GgufFile::open(&path)?;
    let mut model = if compact {
        Llama::<CpuBackend>::from_gguf_compact(&file, &device)?
    } else if quant {
        Llama::<CpuBackend>::from_gguf_quantized(&file, &device)?
    } else {
        Llama::<CpuBackend>::from_gguf(&file, &device)?
    };
    if let Some(n) = split {
        model = model.with_matmul_split(n);
    }
    let load_s = t0.elapsed().as_secs_f64();
    let rss_mb = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(-1.0, |kb| kb / 1024.0);
    let vocab = model.config().vocab_size;
    let prompt: Vec<u32> = (0..prompt_len)
        .map(|i| ((i * 7919 + 17) % vocab) as u32)
        .collect();

    let prefill_once = || -> Result<f64, Box<dyn std::error::Error>> {
        let mut cache = model.new_cache();
        let s = Instant::now();
        let logits = model.next_token_logits(&prompt, &mut cache)?;
        let dt = s.elapsed().as_secs_f64();
        std::hint::black_box(logits);
        Ok(dt)
    };
    let decode_once = || -> Result<f64, Box<dyn std::error::Error>> {
        let mut cache = model.new_cache();
        let logits = model.next_token_logits(&prompt, &mut cache)?;
        let mut next = Sampler::argmax(&logits)?;
        let s = Instant::now();
        for _ in 0..decode {
            let logits = model.next_token_logits(&[next], &mut cache)?;
            next = Sampler::argmax(&logits)?;
        }
        Ok(s.elapsed().as_secs_f64())
    };
    for _ in 0..warmup {
        prefill_once()?;
        decode_once()?;
    }
    let prefill: Vec<f64> = (0..repeats)
        .map(|_| prefill_once())
        .collect::<Result<_, _>>()?;
    let decode_t: Vec<f64> = (0..repeats)
        .map(|_| decode_once())
        .collect::<Result<_, _>>()?;
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let (pb, db) = (best(&prefill), best(&decode_t));
    let (p, d) = (median(prefill), median(decode_t));
    println!(
        "{{\"impl\": \"cielr (Burn flex, {}, split {})\", \"threads\": {}, \"load_s\": {:.2}, \"rss_after_load_mb\": {rss_mb:.0}, \
         \"prompt_tokens\": {prompt_len}, \"decode_tokens\": {decode}, \"repeats\": {repeats}, \
         \"prefill_s\": {p:.4}, \"decode_s\": {d:.4}, \"prefill_tokens_per_s\": {:.1}, \
         \"decode_tokens_per_s\": {:.1}, \"prefill_best_tokens_per_s\": {:.1}, \
         \"decode_best_tokens_per_s\": {:.1}}}",
        if compact {
            "weights as stored only"
        } else if quant {
            "decode with weights as stored"
        } else {
            "f32"
        },
        split.unwrap_or(1),
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into()),
        load_s,
        prompt_len as f64 / p,
        decode as f64 / d,
        prompt_len as f64 / pb,
        decode as f64 / db,
    );
    Ok(())
}
