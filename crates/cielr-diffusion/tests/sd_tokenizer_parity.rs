//! The CLIP tokenizer built from `vocab.json` + `merges.txt` (no `tokenizer.json`, as the
//! released SD folders ship it) against transformers' `CLIPTokenizer` on tricky strings
//! (unicode, NFC, whitespace, contractions, digits, special-token text, truncation at 77), on
//! the tiny CLIP-style vocabulary of `tools/parity/diffusers_tokenizer.py`
//! (`tests/fixtures/clip-bpe-tiny`, padding with `!` as SD 2 does).

use std::path::PathBuf;

use cielr_diffusion::sd_tokenizer::load_clip_tokenizer;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip-bpe-tiny")
}

#[test]
fn vocab_and_merges_tokenize_like_transformers() {
    let dir = fixture();
    assert!(!dir.join("tokenizer.json").exists());
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let max_length = reference["max_length"].as_u64().unwrap() as usize;
    let tokenizer = load_clip_tokenizer(&dir, max_length).unwrap();
    let strings: Vec<String> = serde_json::from_value(reference["strings"].clone()).unwrap();
    let expected: Vec<Vec<i64>> = serde_json::from_value(reference["input_ids"].clone()).unwrap();
    // An empty reference would make the comparison below pass vacuously.
    assert!(!strings.is_empty(), "reference.json lists no strings");
    let texts: Vec<&str> = strings.iter().map(String::as_str).collect();
    let tokens = tokenizer.encode(&texts).unwrap();
    let ours = &tokens.ids;
    assert_eq!(ours.len(), expected.len());
    let mut mismatches = Vec::new();
    for ((s, a), b) in strings.iter().zip(ours).zip(&expected) {
        let a: Vec<i64> = a.iter().map(|&x| x as i64).collect();
        if &a != b {
            mismatches.push(format!("{s:?}:\n ours {a:?}\n ref  {b:?}"));
        }
    }
    println!(
        "{} of {} strings identical to transformers {}",
        strings.len() - mismatches.len(),
        strings.len(),
        reference["transformers"]
    );
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn a_folder_without_any_tokenizer_is_an_error() {
    let dir = std::env::temp_dir().join(format!("cielr-no-tokenizer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = load_clip_tokenizer(&dir, 77).unwrap_err().to_string();
    assert!(
        err.contains("vocab.json") && err.contains("merges.txt"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
