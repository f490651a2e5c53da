//! The SmolLM2-135M-Instruct tokenizer built from its GGUF against transformers' GGUF
//! conversion (`tests/fixtures/tokenizer_smollm2_reference.json`, made by
//! `tools/planner/make_tokenizer_fixtures.py --smollm2`). Needs the model: run
//! `tools/setup-models.sh` (these tests fail, not skip, without the model).

use std::path::Path;
use std::time::Instant;

use cielr_planner::gguf::smollm2_gguf_path;
use cielr_planner::tokenizer::Tokenizer;

fn smollm2() -> Tokenizer {
    let path = smollm2_gguf_path().unwrap_or_else(|e| panic!("real-models test: {e}"));
    Tokenizer::from_gguf_path(&path).unwrap()
}

#[test]
fn tokenizer_smollm2_matches_transformers() {
    let t0 = Instant::now();
    let tok = smollm2();
    eprintln!("built the SmolLM2 tokenizer in {:?}", t0.elapsed());
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tokenizer_smollm2_reference.json"),
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(tok.vocab_size() as u64, v["vocab_size"].as_u64().unwrap());
    assert_eq!(tok.eos_id().map(u64::from), v["eos_token_id"].as_u64());
    let mut n = 0;
    for c in v["strings"].as_array().unwrap() {
        let s = c["text"].as_str().unwrap();
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as u32)
            .collect();
        let ids = tok.encode(s, true).unwrap();
        assert_eq!(ids, want, "{s:?}");
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            c["decoded"].as_str().unwrap()
        );
        assert_eq!(
            tok.decode(&ids, true).unwrap(),
            c["decoded_skip_special"].as_str().unwrap()
        );
        n += 1;
    }
    assert!(n >= 15);
}

#[test]
fn tokenizer_smollm2_end_tokens_and_bytes() {
    let tok = smollm2();
    assert_eq!(tok.eos_id(), Some(2));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    assert_eq!(tok.eos_ids()[0], 2);
    assert!(tok.eos_ids().contains(&0)); // <|endoftext|>
    assert!(tok.chat_template().unwrap().contains("<|im_start|>"));
    let t0 = Instant::now();
    let table = tok.token_bytes();
    eprintln!(
        "token byte table ({} tokens) in {:?}",
        table.len(),
        t0.elapsed()
    );
    assert_eq!(table.len(), 49152);
    let s = "Move the red cup, then 42 ünïcödé 🎉!";
    let bytes: Vec<u8> = tok
        .encode(s, false)
        .unwrap()
        .iter()
        .flat_map(|&i| table[i as usize].clone())
        .collect();
    assert_eq!(bytes, s.as_bytes());
}
