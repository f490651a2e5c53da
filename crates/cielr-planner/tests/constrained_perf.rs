//! How long masking one step takes with a 49,152-token byte-level vocabulary (the size of
//! SmolLM2's), built here from pseudo-random tokens. Prints the timings; the bound asserted is
//! loose because this crate is compiled without optimisation in `cargo test`.

use std::collections::BTreeSet;
use std::time::Instant;

use cielr_core::{Constraint, JsonShape};
use cielr_planner::constrained::{allowed_tokens, CompiledConstraint};
use cielr_planner::tokenizer::Tokenizer;

/// GPT-2's byte-level spelling of one byte.
fn byte_char(b: u8) -> char {
    let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    if printable {
        return b as char;
    }
    let mut n = 0u32;
    for x in 0..b {
        let p = (33..=126).contains(&x) || (161..=172).contains(&x) || x >= 174;
        if !p {
            n += 1;
        }
    }
    char::from_u32(256 + n).unwrap()
}

fn synthetic_tokenizer(n: usize) -> Tokenizer {
    let mut vocab: BTreeSet<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    let pieces: &[&[u8]] = &[
        b"e",
        b"t",
        b"a",
        b"o",
        b"i",
        b"n",
        b"s",
        b"r",
        b"h",
        b"l",
        b"d",
        b"c",
        b"u",
        b"m",
        b"p",
        b" ",
        b" ",
        b" ",
        b"\"",
        b"{",
        b"}",
        b"[",
        b"]",
        b":",
        b",",
        b"1",
        b"2",
        b"0",
        b"\n",
        b"ing",
        b"the",
        b"_",
        b".",
        b"(",
        b")",
        b"\xc3\xa9",
    ];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    while vocab.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 2 + (x % 7) as usize;
        let mut bytes = Vec::new();
        let mut y = x;
        for _ in 0..len {
            bytes.extend_from_slice(pieces[(y % pieces.len() as u64) as usize]);
            y /= pieces.len() as u64;
            if y == 0 {
                y = x.rotate_left(17);
            }
        }
        vocab.insert(bytes.iter().map(|&b| byte_char(b)).collect());
    }
    let vocab: serde_json::Map<String, serde_json::Value> = vocab
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, serde_json::Value::from(i)))
        .collect();
    let json = serde_json::json!({
        "version": "1.0",
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "vocab": vocab, "merges": []}
    });
    let inner = tokenizers::Tokenizer::from_bytes(json.to_string().as_bytes()).unwrap();
    Tokenizer::from_tokenizers(inner, None, None)
}

#[test]
fn constrained_masking_a_49k_vocabulary_is_fast() {
    let t0 = Instant::now();
    let tok = synthetic_tokenizer(49_152);
    assert_eq!(tok.vocab_size(), 49_152);
    let build_tok = t0.elapsed();
    let t0 = Instant::now();
    let _ = tok.token_bytes();
    let trie_len = tok.token_trie().len();
    let build_tables = t0.elapsed();
    eprintln!("tokenizer {build_tok:?}; byte table + trie ({trie_len} nodes) {build_tables:?}");

    let shape = JsonShape::object([
        ("prompt", JsonShape::String),
        ("targets", JsonShape::array(JsonShape::Integer, 8)),
        (
            "relation",
            JsonShape::Enum(vec!["left_of".into(), "right_of".into()]),
        ),
    ]);
    let c = CompiledConstraint::new(&Constraint::Json(shape)).unwrap();
    let mut worst = std::time::Duration::ZERO;
    for prefix in [
        "",
        "{",
        "{\"prompt\": \"",
        "{\"prompt\": \"a red cup",
        "{\"prompt\": \"x\", \"targets\": [1",
        "{\"prompt\": \"x\", \"targets\": [1], \"relation\": \"le",
    ] {
        let mut s = c.start();
        assert!(s.step_bytes(&c, prefix.as_bytes()));
        let n = allowed_tokens(&tok, &c, &s).len();
        let t0 = Instant::now();
        let reps = 5;
        let mut v = Vec::new();
        for _ in 0..reps {
            v.clear();
            tok.token_trie().allowed(&c, &s, &mut v);
        }
        let per = t0.elapsed() / reps;
        assert_eq!(v.len(), n);
        worst = worst.max(per);
        eprintln!("after {prefix:?}: {n} tokens allowed, {per:?} per step");
    }
    // Unoptimised build: generous bound (an optimised build is far below it).
    assert!(worst.as_millis() < 1500, "{worst:?}");
}
