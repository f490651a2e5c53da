//! `LocalLlm` plumbing on a tiny random model with the tiny byte-level BPE tokenizer
//! (ChatML special tokens): chat rendering, end tokens, token budgets, and constrained
//! answers (choices, JSON) that always parse. The answers themselves are noise.

use std::path::Path;

use cielr_core::backend::CpuBackend;
use cielr_core::{ChatMessage, Constraint, GenerationRequest, JsonShape, LanguageModel};
use cielr_planner::constrained::LogitsModel;
use cielr_planner::generate::LlamaSession;
use cielr_planner::llama::LlamaConfig;
use cielr_planner::local::LocalLlm;
use cielr_planner::tokenizer::Tokenizer;

fn tiny_llm() -> LocalLlm {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let tokenizer = Tokenizer::from_json_file(&dir.join("tokenizer_tiny_bpe.json")).unwrap();
    let config = LlamaConfig::from_json_str(&format!(
        r#"{{"model_type": "llama", "vocab_size": {}, "hidden_size": 32,
            "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 512}}"#,
        tokenizer.vocab_size()
    ))
    .unwrap();
    let model = config.init::<CpuBackend>(&Default::default()).unwrap();
    LocalLlm::from_parts("tiny", model, tokenizer).unwrap()
}

fn request(
    constraint: Option<Constraint>,
    max_tokens: usize,
    temperature: f32,
) -> GenerationRequest {
    GenerationRequest {
        max_tokens,
        temperature,
        ..GenerationRequest::new(
            "test",
            vec![
                ChatMessage::system("Answer briefly."),
                ChatMessage::user("Which colour is the cup?"),
            ],
            constraint,
        )
    }
}

#[test]
fn prompts_are_rendered_with_chatml() {
    let llm = tiny_llm();
    let ids = llm.prompt_ids(&request(None, 4, 0.0)).unwrap();
    let text = llm.tokenizer().decode(&ids, false).unwrap();
    assert!(
        text.starts_with("<|im_start|>system\nAnswer briefly.<|im_end|>"),
        "{text:?}"
    );
    assert!(text.ends_with("<|im_start|>assistant\n"), "{text:?}");
    assert_eq!(llm.name(), "tiny");
}

#[test]
fn free_answers_respect_the_budget_and_are_deterministic_when_greedy() {
    let llm = tiny_llm();
    let a = pollster::block_on(llm.complete(&request(None, 6, 0.0))).unwrap();
    let b = pollster::block_on(llm.complete(&request(None, 6, 0.0))).unwrap();
    assert_eq!(a, b);
    assert_eq!(
        pollster::block_on(llm.complete(&request(None, 0, 0.0))).unwrap(),
        ""
    );
    pollster::block_on(llm.complete(&request(None, 6, 1.0))).unwrap();
}

#[test]
fn constrained_answers_parse() {
    let llm = tiny_llm();
    let choices = Constraint::Choices(vec!["red".into(), "green".into(), "light blue".into()]);
    for temperature in [0.0, 1.0] {
        let a = pollster::block_on(llm.complete(&request(Some(choices.clone()), 8, temperature)))
            .unwrap();
        assert!(choices.parse(&a).is_ok(), "{a:?}");
    }
    let json = Constraint::Json(JsonShape::object([
        ("colour", JsonShape::Enum(vec!["red".into(), "blue".into()])),
        ("count", JsonShape::Integer),
    ]));
    let a = pollster::block_on(llm.complete(&request(Some(json.clone()), 40, 0.0))).unwrap();
    assert!(json.parse(&a).is_ok(), "{a:?}");
}

#[test]
fn a_session_reuses_the_prompt_after_reset() {
    let model = std::sync::Arc::new(
        LlamaConfig::from_json_str(
            r#"{"vocab_size": 50, "hidden_size": 16, "intermediate_size": 32,
                "num_hidden_layers": 1, "num_attention_heads": 2}"#,
        )
        .unwrap()
        .init::<CpuBackend>(&Default::default())
        .unwrap(),
    );
    let mut s = LlamaSession::new(model.clone());
    assert_eq!(s.vocab_size(), 50);
    let prompt = [1, 2, 3, 4];
    let first = s.feed(&prompt).unwrap();
    let next = s.feed(&[5]).unwrap();
    s.reset();
    // Same prompt: the kept prefix answers without recomputing.
    assert_eq!(s.feed(&prompt).unwrap(), first);
    assert_eq!(s.cache().len(), 4);
    assert_eq!(s.feed(&[5]).unwrap(), next);
    s.reset();
    // A longer sequence starting with the prompt resumes from it; the result equals a fresh
    // computation.
    let resumed = s.feed(&[1, 2, 3, 4, 5]).unwrap();
    let mut fresh_cache = model.new_cache();
    let fresh = model
        .next_token_logits(&[1, 2, 3, 4, 5], &mut fresh_cache)
        .unwrap();
    let diff = resumed
        .iter()
        .zip(&fresh)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff < 1e-5, "{diff}");
    s.reset();
    // A different sequence is computed from scratch.
    s.feed(&[7, 8]).unwrap();
    assert_eq!(s.cache().len(), 2);
}
