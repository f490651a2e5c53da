//! Compares the Llama-family decoder with reference logits from transformers, and times it.
//!
//! ```text
//! cargo run --release -p cielr-planner --example llama_parity -- MODEL REFERENCE [TOLERANCE]
//! ```
//!
//! `MODEL` is a HuggingFace checkpoint folder or a `.gguf` file; `REFERENCE` a
//! `reference.safetensors` as written by `tools/parity/llama.py` or `llama_real.py`
//! (`input_ids`, `prefill_logits` for every prompt position or only the last,
//! `decode_ids`/`decode_logits` optionally, `greedy_ids` optionally). Prints max absolute
//! and relative errors and prefill/decode tokens per second; exits with 1 when the max
//! absolute error exceeds `TOLERANCE` (default 1e-4) or the greedy continuation differs.
//! Used by `tools/parity/llama_full.sh` and `tools/parity/llama_real.sh`.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use cielr_core::backend::CpuBackend;
use cielr_planner::generate::{generate, GenerationConfig, Sampler};
use cielr_planner::llama::Llama;
use safetensors::SafeTensors;

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn errors(ours: &[f32], theirs: &[f32]) -> (f32, f32) {
    ours.iter()
        .zip(theirs)
        .fold((0.0f32, 0.0f32), |(abs, rel), (a, b)| {
            let d = (a - b).abs();
            (abs.max(d), rel.max(d / b.abs().max(1e-3)))
        })
}

fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        return Err(
            "usage: llama_parity MODEL(dir or .gguf) REFERENCE.safetensors [TOLERANCE]".into(),
        );
    }
    let tolerance: f32 = args.get(2).map(|t| t.parse()).transpose()?.unwrap_or(1e-4);
    let device = Default::default();
    let path = Path::new(&args[0]);
    let start = Instant::now();
    let model = if path.is_dir() {
        Llama::<CpuBackend>::from_hf_dir(path, &device)?
    } else {
        Llama::<CpuBackend>::from_gguf_path(path, &device)?
    };
    let c = model.config();
    println!(
        "loaded {} ({}, {} layers, width {}, {} heads / {} kv, vocab {}, {:.0}M parameters) in {:.2}s",
        path.display(),
        c.model_type,
        c.num_hidden_layers,
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.vocab_size,
        c.num_parameters() as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );

    let bytes = std::fs::read(&args[1])?;
    let st = SafeTensors::deserialize(&bytes)?;
    let ints = |n: &str| -> Option<Vec<u32>> {
        let t = st.tensor(n).ok()?;
        Some(
            t.data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as u32)
                .collect(),
        )
    };
    let floats = |n: &str| -> Option<Vec<f32>> {
        let t = st.tensor(n).ok()?;
        Some(
            t.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap_or([0; 4])))
                .collect(),
        )
    };
    let input_ids = ints("input_ids").ok_or("the reference lacks input_ids")?;
    let reference = floats("prefill_logits").ok_or("the reference lacks prefill_logits")?;
    let vocab = c.vocab_size;
    let mut ok = true;

    let mut cache = model.new_cache();
    let start = Instant::now();
    let ours: Vec<f32> = if reference.len() == vocab {
        model.next_token_logits(&input_ids, &mut cache)?
    } else {
        model
            .forward_tokens(&input_ids, &mut cache)?
            .into_data()
            .into_vec::<f32>()
            .map_err(|e| format!("{e:?}"))?
    };
    let prefill_s = start.elapsed().as_secs_f64();
    if ours.len() != reference.len() {
        return Err(format!(
            "{} reference logits for {} of ours",
            reference.len(),
            ours.len()
        )
        .into());
    }
    let (abs, rel) = errors(&ours, &reference);
    let scale = reference.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    println!(
        "prefill ({} tokens, {} positions compared): max abs {abs:.3e}, max rel {rel:.3e} \
         (largest |logit| {scale:.2}); {:.1} tokens/s",
        input_ids.len(),
        reference.len() / vocab,
        input_ids.len() as f64 / prefill_s
    );
    ok &= abs <= tolerance;

    if let (Some(ids), Some(reference)) = (ints("decode_ids"), floats("decode_logits")) {
        let mut ours = Vec::new();
        for &t in &ids {
            ours.extend(model.next_token_logits(&[t], &mut cache)?);
        }
        let (abs, rel) = errors(&ours, &reference);
        println!(
            "{} cached decode steps: max abs {abs:.3e}, max rel {rel:.3e}",
            ids.len()
        );
        ok &= abs <= tolerance;
    }

    if let Some(greedy) = ints("greedy_ids") {
        let config = GenerationConfig {
            max_tokens: greedy.len(),
            ..GenerationConfig::default()
        };
        let g = generate(&model, &input_ids, &config, |_| true)?;
        let same = g.tokens == greedy;
        println!(
            "greedy continuation of {} tokens {} transformers'",
            greedy.len(),
            if same { "equals" } else { "DIFFERS from" },
        );
        if !same {
            println!("  ours:         {:?}\n  transformers: {greedy:?}", g.tokens);
        }
        ok &= same;
    }
    // Timings as tools/parity/llama_real.py measures torch: best of three prefills (head on
    // the last position), then 32 cached greedy decode steps.
    let mut prefill_best = f64::INFINITY;
    let mut last = Vec::new();
    let mut cache = model.new_cache();
    for _ in 0..3 {
        cache.clear();
        let start = Instant::now();
        last = model.next_token_logits(&input_ids, &mut cache)?;
        prefill_best = prefill_best.min(start.elapsed().as_secs_f64());
    }
    let steps = 32.min(c.max_position_embeddings.saturating_sub(input_ids.len()));
    let mut next = Sampler::argmax(&last)?;
    let start = Instant::now();
    for _ in 0..steps {
        next = Sampler::argmax(&model.next_token_logits(&[next], &mut cache)?)?;
    }
    let decode_s = start.elapsed().as_secs_f64();
    println!(
        "OURS_TIMINGS {{\"prompt_tokens\": {}, \"prefill_tokens_per_s\": {:.1}, \"decode_tokens_per_s\": {:.1}}}",
        input_ids.len(),
        input_ids.len() as f64 / prefill_best,
        steps as f64 / decode_s
    );
    println!("{}", if ok { "PASS" } else { "FAIL" });
    Ok(ok)
}
