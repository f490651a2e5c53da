//! The real SmolLM2-135M-Instruct (Q4_1 GGUF, llama architecture with llama.cpp's q/k row
//! permutation, tied embeddings) against transformers' own GGUF loading: last-position
//! logits of a ChatML prompt and the 16-token greedy continuation
//! (`tests/fixtures/llama-smollm2-reference.safetensors`, made by
//! `tools/parity/llama_real.sh`). Needs the model: run `tools/setup-models.sh` (or set
//! `CIELR_SMOLLM2_GGUF`); the tests fail, not skip, without it.

#[path = "llama_common/mod.rs"]
mod llama_common;

use std::time::Instant;

use cielr_core::backend::CpuBackend;
use cielr_core::{ChatMessage, Constraint, GenerationRequest, JsonShape, LanguageModel};
use cielr_planner::generate::{generate, GenerationConfig};
use cielr_planner::gguf::{smollm2_gguf_path, GgufFile};
use cielr_planner::llama::Llama;
use cielr_planner::local::LocalLlm;
use cielr_planner::tokenizer::Tokenizer;
use llama_common::{errors, fixture, reference_file};

#[test]
fn smollm2_matches_transformers_gguf_loading() {
    let path = smollm2_gguf_path().unwrap_or_else(|e| panic!("real-models test: {e}"));
    let file = GgufFile::open(&path).unwrap();
    let start = Instant::now();
    let model = Llama::<CpuBackend>::from_gguf(&file, &Default::default()).unwrap();
    eprintln!("loaded in {:.2}s", start.elapsed().as_secs_f64());
    let c = model.config();
    assert_eq!(
        (
            c.num_hidden_layers,
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads
        ),
        (30, 576, 9, 3)
    );
    assert_eq!((c.vocab_size, c.intermediate_size), (49152, 1536));
    assert!(c.tie_word_embeddings);
    assert_eq!(c.rope_theta, 100_000.0);

    let r = reference_file(&fixture("llama-smollm2-reference.safetensors"));
    let mut cache = model.new_cache();
    let logits = model.next_token_logits(&r.input_ids, &mut cache).unwrap();
    let (abs, rel) = errors(&logits, &r.prefill);
    eprintln!(
        "SmolLM2 last-position logits ({} prompt tokens): max abs {abs:.3e}, max rel {rel:.3e}",
        r.input_ids.len()
    );
    assert!(abs < 1e-3, "max abs error {abs}");

    let config = GenerationConfig {
        max_tokens: r.greedy_ids.len(),
        ..GenerationConfig::default()
    };
    let g = generate(&model, &r.input_ids, &config, |_| true).unwrap();
    eprintln!(
        "prefill {:.1} tokens/s, decode {:.1} tokens/s",
        g.prefill_tokens_per_second(),
        g.decode_tokens_per_second()
    );
    assert_eq!(g.tokens, r.greedy_ids, "greedy continuation");
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    let text = tokenizer.decode(&g.tokens, true).unwrap();
    assert!(
        text.starts_with("The capital of France is Paris."),
        "{text:?}"
    );
}

#[test]
fn local_llm_answers_free_choice_and_json_requests() {
    let path = smollm2_gguf_path().unwrap_or_else(|e| panic!("real-models test: {e}"));
    let llm = LocalLlm::from_gguf(&path).unwrap();
    let ask = |constraint: Option<Constraint>| {
        let request = GenerationRequest {
            max_tokens: 24,
            ..GenerationRequest::new(
                "test",
                vec![
                    ChatMessage::system("You are a helpful assistant."),
                    ChatMessage::user("What is the capital of France? Answer in one word."),
                ],
                constraint,
            )
        };
        let start = Instant::now();
        let answer = pollster::block_on(llm.complete(&request)).unwrap();
        eprintln!("{answer:?} in {:.2}s", start.elapsed().as_secs_f64());
        answer
    };
    assert!(ask(None).contains("Paris"));
    let choices = Constraint::Choices(vec!["London".into(), "Paris".into(), "Berlin".into()]);
    assert_eq!(ask(Some(choices)), "Paris");
    let json = Constraint::Json(JsonShape::object([("capital", JsonShape::String)]));
    let answer = ask(Some(json.clone()));
    let v = json.parse(&answer).unwrap();
    assert!(v["capital"].as_str().unwrap().contains("Paris"), "{answer}");
}

/// Decode steps with the matrices as stored (Q4_1 layers, Q8_0 head) against the same model
/// with every weight dequantised to f32: the same greedy continuation as transformers, and
/// per-step logits equal up to summation order; for one row and for a batch of two.
#[test]
fn smollm2_quantized_decode_matches_f32_decode() {
    let path = smollm2_gguf_path().unwrap_or_else(|e| panic!("real-models test: {e}"));
    let file = GgufFile::open(&path).unwrap();
    let device = Default::default();
    let exact = Llama::<CpuBackend>::from_gguf(&file, &device).unwrap();
    let quant = Llama::<CpuBackend>::from_gguf_quantized(&file, &device).unwrap();
    let q = quant
        .quantized_decode()
        .expect("quantised weights attached");
    let (covered, total) = q.coverage();
    assert_eq!(
        covered, total,
        "every projection and the head are Q4_1/Q8_0"
    );
    eprintln!(
        "{covered}/{total} matrices as stored, {:.1} MB read per decode step",
        q.weight_bytes() as f64 / 1e6
    );

    let r = reference_file(&fixture("llama-smollm2-reference.safetensors"));
    let (mut ce, mut cq) = (exact.new_cache(), quant.new_cache());
    let mut le = exact.next_token_logits(&r.input_ids, &mut ce).unwrap();
    let mut lq = quant.next_token_logits(&r.input_ids, &mut cq).unwrap();
    // The prompt's layers run on the f32 weights (more than 8 rows); the head on its last
    // position reads the Q8_0 embedding as stored.
    let mut worst = errors(&lq, &le).0;
    let mut tokens = Vec::new();
    for _ in 0..r.greedy_ids.len() {
        let next = cielr_planner::generate::Sampler::argmax(&lq).unwrap();
        tokens.push(next);
        le = exact.next_token_logits(&[next], &mut ce).unwrap();
        lq = quant.next_token_logits(&[next], &mut cq).unwrap();
        worst = worst.max(errors(&lq, &le).0);
    }
    eprintln!("quantised vs f32 decode logits: max abs {worst:.2e}");
    assert!(worst < 1e-3, "max abs difference {worst}");
    assert_eq!(tokens, r.greedy_ids, "greedy continuation");

    // A batch of two rows: products of two input rows at once.
    let prompts: [&[u32]; 2] = [&r.input_ids, &r.input_ids[..r.input_ids.len() - 3]];
    let (mut ce, mut cq) = (exact.new_cache(), quant.new_cache());
    exact.prefill_batch(&prompts, &mut ce).unwrap();
    quant.prefill_batch(&prompts, &mut cq).unwrap();
    let step = [r.greedy_ids[0], r.greedy_ids[1]];
    let be = exact.decode_batch(&step, &mut ce).unwrap();
    let bq = quant.decode_batch(&step, &mut cq).unwrap();
    for (row, (a, b)) in be.iter().zip(&bq).enumerate() {
        let (abs, _) = errors(b, a);
        assert!(abs < 1e-3, "batch row {row}: max abs difference {abs}");
    }
}
