//! The tokenizer built from the tiny synthetic byte-level BPE GGUF (and the same tokenizer's
//! `tokenizer.json`) against reference ids from the `tokenizers` library and transformers'
//! GGUF conversion (fixtures by `tools/planner/make_tokenizer_fixtures.py`).

use std::path::{Path, PathBuf};

use cielr_planner::gguf::GgufFile;
use cielr_planner::tokenizer::{TokenEncoding, Tokenizer};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

struct Case {
    text: String,
    ids: Vec<u32>,
    decoded_skip_special: String,
}

fn reference(key: &str) -> Vec<Case> {
    let text = std::fs::read_to_string(fixture("tokenizer_tiny_reference.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().unwrap().to_string(),
            ids: c["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap() as u32)
                .collect(),
            decoded_skip_special: c["decoded_skip_special"].as_str().unwrap().to_string(),
        })
        .collect()
}

fn check_against(tok: &Tokenizer, key: &str) {
    let cases = reference(key);
    assert!(cases.len() >= 15);
    for c in &cases {
        let ids = tok.encode(&c.text, true).unwrap();
        assert_eq!(ids, c.ids, "{key}: {:?}", c.text);
        assert_eq!(tok.decode(&ids, false).unwrap(), c.text, "{:?}", c.text);
        assert_eq!(
            tok.decode(&ids, true).unwrap(),
            c.decoded_skip_special,
            "{:?}",
            c.text
        );
    }
}

fn tiny_gguf() -> Tokenizer {
    Tokenizer::from_gguf(&GgufFile::open(&fixture("tokenizer_tiny_bpe.gguf")).unwrap()).unwrap()
}

#[test]
fn tokenizer_tiny_gguf_matches_transformers_and_tokenizers() {
    let tok = tiny_gguf();
    check_against(&tok, "transformers_gguf");
    check_against(&tok, "tokenizers_json");
}

#[test]
fn tokenizer_tiny_json_matches_tokenizers() {
    let tok = Tokenizer::from_json_file(&fixture("tokenizer_tiny_bpe.json")).unwrap();
    check_against(&tok, "tokenizers_json");
    assert_eq!(tok.token_encoding(), TokenEncoding::ByteLevel);
    // tokenizer.json alone names no EOS; the end-of-turn names still count.
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    assert!(tok.eos_ids().contains(&im_end));
}

#[test]
fn tokenizer_tiny_special_ids_and_template() {
    let tok = tiny_gguf();
    assert_eq!(tok.vocab_size(), 420);
    let im_start = tok.token_to_id("<|im_start|>").unwrap();
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    let eot = tok.token_to_id("<|endoftext|>").unwrap();
    assert_eq!(tok.eos_id(), Some(im_end));
    assert_eq!(tok.bos_id(), Some(im_start));
    assert_eq!(tok.eos_ids()[0], im_end);
    assert!(tok.eos_ids().contains(&eot));
    assert!(!tok.eos_ids().contains(&im_start));
    assert!(tok.is_special(im_start) && tok.is_special(eot));
    assert_eq!(tok.eos_token().as_deref(), Some("<|im_end|>"));
    assert_eq!(tok.id_to_token(im_end).as_deref(), Some("<|im_end|>"));
    assert!(tok.chat_template().unwrap().contains("<|im_start|>"));
    // add_bos_token is false in the file: no BOS is added.
    assert_eq!(
        tok.encode("hi", true).unwrap(),
        tok.encode("hi", false).unwrap()
    );
}

#[test]
fn tokenizer_tiny_token_bytes_concatenate_to_the_text() {
    let tok = tiny_gguf();
    let table = tok.token_bytes();
    assert_eq!(table.len(), tok.vocab_size());
    for c in reference("transformers_gguf") {
        let bytes: Vec<u8> = c
            .ids
            .iter()
            .flat_map(|&i| table[i as usize].iter().copied())
            .collect();
        assert_eq!(bytes, c.text.as_bytes(), "{:?}", c.text);
    }
    // Every byte has a token of its own.
    for b in 0..=255u8 {
        assert!(table.iter().any(|t| t.as_slice() == [b]), "byte {b}");
    }
}

#[test]
fn tokenizer_errors_name_the_problem() {
    let e = Tokenizer::from_gguf(&GgufFile::open(&fixture("gguf_tiny.gguf")).unwrap()).unwrap_err();
    assert!(e.to_string().contains("tokenizer.ggml.model"), "{e}");
    assert!(Tokenizer::from_json_file(Path::new("/nonexistent/tokenizer.json")).is_err());
    let bad = std::env::temp_dir().join(format!("cielr-bad-tokenizer-{}.json", std::process::id()));
    std::fs::write(&bad, "{\"not\": \"a tokenizer\"}").unwrap();
    let e = Tokenizer::from_json_file(&bad);
    let _ = std::fs::remove_file(&bad);
    assert!(e.is_err());
}

#[test]
fn tokenizer_json_reads_config_files_beside_it() {
    let dir = std::env::temp_dir().join(format!("cielr-tok-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        fixture("tokenizer_tiny_bpe.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    let plain = Tokenizer::from_json_file(&dir.join("tokenizer.json")).unwrap();
    let id = |t: &str| plain.token_to_id(t).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::json!({
            "bos_token": {"content": "<|im_start|>", "special": true},
            "eos_token": "<|im_end|>",
            "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}],
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        serde_json::json!({"eos_token_id": [id("<|endoftext|>"), id("<|im_end|>")]}).to_string(),
    )
    .unwrap();
    let tok = Tokenizer::from_json_file(&dir.join("tokenizer.json"));
    let _ = std::fs::remove_dir_all(&dir);
    let tok = tok.unwrap();
    assert_eq!(tok.bos_id(), Some(id("<|im_start|>")));
    assert_eq!(tok.eos_id(), Some(id("<|im_end|>")));
    assert_eq!(tok.eos_ids(), &[id("<|im_end|>"), id("<|endoftext|>")]);
    assert_eq!(tok.chat_template(), Some("D"));
}
