//! Generation with the key/value cache on the tiny fixtures: greedy output equals
//! transformers' `generate`, stop tokens and budgets end it, sampling is seeded.

#[path = "llama_common/mod.rs"]
mod llama_common;

use cielr_core::backend::CpuBackend;
use cielr_planner::generate::{generate, GenerationConfig, StopReason};
use cielr_planner::llama::{Llama, LlamaConfig};
use llama_common::{fixture, reference};

fn greedy(max_tokens: usize, stop_tokens: Vec<u32>) -> GenerationConfig {
    GenerationConfig {
        max_tokens,
        stop_tokens,
        ..GenerationConfig::default()
    }
}

#[test]
fn greedy_generation_matches_transformers() {
    for name in ["llama-tiny-llama3", "llama-tiny-qwen2", "llama-tiny-qwen3"] {
        let dir = fixture(name);
        let model = Llama::<CpuBackend>::from_hf_dir(&dir, &Default::default()).unwrap();
        let r = reference(&dir);
        let g = generate(
            &model,
            &r.input_ids,
            &greedy(r.greedy_ids.len(), vec![]),
            |_| true,
        )
        .unwrap();
        assert_eq!(g.tokens, r.greedy_ids, "{name}");
        assert_eq!(g.stop, StopReason::MaxTokens);
        assert_eq!(g.prompt_tokens, r.input_ids.len());
    }
}

#[test]
fn stop_tokens_callback_and_budget_end_generation() {
    let dir = fixture("llama-tiny-qwen2");
    let model = Llama::<CpuBackend>::from_hf_dir(&dir, &Default::default()).unwrap();
    let r = reference(&dir);
    let stop = r.greedy_ids[3];
    let first = r.greedy_ids.iter().position(|&t| t == stop).unwrap();
    let g = generate(&model, &r.input_ids, &greedy(8, vec![stop]), |_| true).unwrap();
    assert_eq!(g.tokens, r.greedy_ids[..first]);
    assert_eq!(g.stop, StopReason::StopToken(stop));

    let g = generate(&model, &r.input_ids, &greedy(2, vec![]), |_| true).unwrap();
    assert_eq!(g.tokens, r.greedy_ids[..2]);
    let g = generate(&model, &r.input_ids, &greedy(0, vec![]), |_| true).unwrap();
    assert!(g.tokens.is_empty());

    let mut seen = Vec::new();
    let g = generate(&model, &r.input_ids, &greedy(8, vec![]), |t| {
        seen.push(t);
        seen.len() < 3
    })
    .unwrap();
    assert_eq!(g.stop, StopReason::Callback);
    assert_eq!(g.tokens, seen);
    assert_eq!(g.tokens, r.greedy_ids[..3]);
}

#[test]
fn sampling_is_reproducible_with_a_seed() {
    let dir = fixture("llama-tiny-qwen3");
    let model = Llama::<CpuBackend>::from_hf_dir(&dir, &Default::default()).unwrap();
    let r = reference(&dir);
    let sample = |seed| {
        let config = GenerationConfig {
            max_tokens: 12,
            temperature: 1.5,
            top_p: 0.95,
            seed,
            ..GenerationConfig::default()
        };
        generate(&model, &r.input_ids, &config, |_| true)
            .unwrap()
            .tokens
    };
    let a = sample(1);
    assert_eq!(a.len(), 12);
    assert_eq!(a, sample(1));
    assert!(
        (2..6).any(|s| sample(s) != a),
        "different seeds gave the same text"
    );
}

#[test]
fn generation_stops_when_the_context_is_full() {
    let config = LlamaConfig::from_json_str(
        r#"{"model_type": "llama", "vocab_size": 32, "hidden_size": 16,
            "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "max_position_embeddings": 6}"#,
    )
    .unwrap();
    let model = config.init::<CpuBackend>(&Default::default()).unwrap();
    let g = generate(&model, &[1, 2, 3], &greedy(10, vec![]), |_| true).unwrap();
    // Three prompt positions and three generated tokens fed back fill the six positions; a
    // fourth is produced from the last position's logits.
    assert_eq!(g.stop, StopReason::ContextFull);
    assert_eq!(g.tokens.len(), 4);
    assert!(generate(&model, &[1; 7], &greedy(1, vec![]), |_| true).is_err());
}
