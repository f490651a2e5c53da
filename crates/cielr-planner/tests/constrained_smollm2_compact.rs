//! The compact JSON grammar with SmolLM2-135M-Instruct: greedy JSON answers carry no
//! insignificant whitespace besides one optional space after `:` and `,`, and the model's
//! answers stay short. Prints each answer with its token count. Needs the model: run
//! `tools/setup-models.sh` (these tests fail, not skip, without the model).

use std::sync::Arc;

use cielr_core::backend::CpuBackend;
use cielr_core::{ChatMessage, Constraint, JsonShape};
use cielr_planner::chat::ChatTemplate;
use cielr_planner::constrained::generate_constrained_detailed;
use cielr_planner::generate::{LlamaSession, Sampler};
use cielr_planner::gguf::{smollm2_gguf_path, GgufFile};
use cielr_planner::llama::Llama;
use cielr_planner::tokenizer::Tokenizer;

/// Whether `text` has whitespace outside strings other than one space after `:` or `,`.
fn loose_whitespace(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let (mut in_str, mut esc) = (false, false);
    for (i, &c) in b.iter().enumerate() {
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b' ' if i > 0 && matches!(b[i - 1], b':' | b',') => {}
            b' ' | b'\n' | b'\r' | b'\t' => return Some(i),
            _ => {}
        }
    }
    None
}

#[test]
fn constrained_smollm2_json_is_compact() {
    let path = smollm2_gguf_path().unwrap_or_else(|e| panic!("real-models test: {e}"));
    let file = GgufFile::open(&path).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let llama = Llama::<CpuBackend>::from_gguf(&file, &Default::default()).unwrap();
    let mut session = LlamaSession::new(Arc::new(llama));
    let chat = ChatTemplate::for_tokenizer(&tok);

    let cases: Vec<(&str, Vec<ChatMessage>, JsonShape, usize)> = vec![
        (
            "capital",
            vec![
                ChatMessage::system("Answer only with JSON."),
                ChatMessage::user(
                    "What is the capital of France? Answer as {\"capital\": \"...\"}.",
                ),
            ],
            JsonShape::object([("capital", JsonShape::String)]),
            32,
        ),
        (
            // The request of `llama_smollm2.rs`, which asks for no JSON in words.
            "capital_one_word",
            vec![
                ChatMessage::system("You are a helpful assistant."),
                ChatMessage::user("What is the capital of France? Answer in one word."),
            ],
            JsonShape::object([("capital", JsonShape::String)]),
            24,
        ),
        (
            "targets",
            vec![
                ChatMessage::system("You edit images. Answer only with JSON."),
                ChatMessage::user(
                    "Objects: 0 = red cup, 1 = plate, 2 = blue bottle. The user says: \"remove \
                     the cup and the bottle\". Which object ids are targets? Answer as \
                     {\"targets\": [ids]}.",
                ),
            ],
            JsonShape::object([(
                "targets",
                JsonShape::array_between(JsonShape::Integer, 1, 3),
            )]),
            24,
        ),
        (
            "relation",
            vec![ChatMessage::user(
                "Describe the edit \"put the cup left of the plate\" as JSON with a relation \
                 and a short prompt.",
            )],
            JsonShape::object([
                (
                    "relation",
                    JsonShape::Enum(vec!["left_of".into(), "right_of".into(), "above".into()]),
                ),
                ("prompt", JsonShape::String),
            ]),
            40,
        ),
    ];
    let mut total = 0;
    for (name, messages, shape, max_tokens) in cases {
        let prompt = tok
            .encode(&chat.render(&messages, true).text, false)
            .unwrap();
        let c = Constraint::Json(shape);
        let g = generate_constrained_detailed(
            &mut session,
            &tok,
            &prompt,
            &c,
            max_tokens,
            &mut Sampler::greedy(),
        )
        .unwrap();
        eprintln!(
            "{name}: {:?} ({} tokens, {:?}, forced {})",
            g.text,
            g.tokens.len(),
            g.stop,
            g.forced_tokens
        );
        total += g.tokens.len();
        c.parse(&g.text).unwrap();
        assert!(g.text.starts_with('{'), "{name}: {:?}", g.text);
        assert_eq!(loose_whitespace(&g.text), None, "{name}: {:?}", g.text);
        if name.starts_with("capital") {
            assert!(g.text.contains("Paris"), "{:?}", g.text);
        }
        if name == "targets" {
            let v = c.parse(&g.text).unwrap();
            assert!(!v["targets"].as_array().unwrap().is_empty());
        }
    }
    eprintln!("tokens in all: {total}");
}
