//! Constrained decoding with scripted toy models over the tiny byte-level BPE tokenizer
//! (`tests/fixtures/tokenizer_tiny_bpe.gguf`): whatever the model prefers (invalid tokens,
//! endless whitespace, ending at once, random tokens at any temperature), the answer satisfies
//! the constraint, parses with `Constraint::parse`, and stays within `max_tokens`.

use std::path::Path;

use cielr_core::{Constraint, JsonShape};
use cielr_planner::constrained::{
    generate_constrained, generate_constrained_detailed, pick_choice, score_choices,
    ConstrainedStop, LogitsModel,
};
use cielr_planner::error::PlannerError;
use cielr_planner::generate::Sampler;
use cielr_planner::gguf::GgufFile;
use cielr_planner::tokenizer::Tokenizer;

fn tokenizer() -> Tokenizer {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer_tiny_bpe.gguf");
    Tokenizer::from_gguf(&GgufFile::open(&p).unwrap()).unwrap()
}

/// A model whose logits are a deterministic hash of (sequence length, token), plus a bonus for
/// a set of preferred tokens.
struct ToyModel {
    vocab: usize,
    seq: Vec<u32>,
    preferred: Vec<u32>,
    bonus: f32,
    salt: u64,
    resets: usize,
}

impl ToyModel {
    fn new(vocab: usize, preferred: Vec<u32>, bonus: f32, salt: u64) -> Self {
        ToyModel {
            vocab,
            seq: Vec::new(),
            preferred,
            bonus,
            salt,
            resets: 0,
        }
    }
}

fn hash(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

impl LogitsModel for ToyModel {
    fn vocab_size(&self) -> usize {
        self.vocab
    }
    fn reset(&mut self) {
        self.seq.clear();
        self.resets += 1;
    }
    fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>, PlannerError> {
        self.seq.extend_from_slice(tokens);
        let n = self.seq.len() as u64;
        let mut logits: Vec<f32> = (0..self.vocab as u64)
            .map(|t| (hash(self.salt ^ (n << 20) ^ t) % 1000) as f32 / 250.0)
            .collect();
        for &p in &self.preferred {
            logits[p as usize] += self.bonus;
        }
        Ok(logits)
    }
}

fn ids_of(tok: &Tokenizer, pred: impl Fn(&[u8]) -> bool) -> Vec<u32> {
    tok.token_bytes()
        .iter()
        .enumerate()
        .filter(|(i, b)| !tok.is_special(*i as u32) && pred(b))
        .map(|(i, _)| i as u32)
        .collect()
}

fn shapes() -> Vec<(&'static str, JsonShape)> {
    vec![
        ("string", JsonShape::object([("prompt", JsonShape::String)])),
        ("integer", JsonShape::object([("n", JsonShape::Integer)])),
        (
            "enum",
            JsonShape::object([(
                "relation",
                JsonShape::Enum(vec![
                    "left_of".into(),
                    "left".into(),
                    "above".into(),
                    "naïve \"q\"".into(),
                ]),
            )]),
        ),
        (
            "array",
            JsonShape::object([("targets", JsonShape::array(JsonShape::Integer, 3))]),
        ),
        (
            "object",
            JsonShape::object([
                (
                    "action",
                    JsonShape::Enum(vec!["move".into(), "remove".into()]),
                ),
                (
                    "objects",
                    JsonShape::array(
                        JsonShape::object([
                            ("id", JsonShape::Integer),
                            ("label", JsonShape::String),
                        ]),
                        2,
                    ),
                ),
                ("reason", JsonShape::String),
            ]),
        ),
        ("empty", JsonShape::object([])),
        (
            "empty_array",
            JsonShape::object([("none", JsonShape::array(JsonShape::String, 0))]),
        ),
        (
            "array_min",
            JsonShape::object([(
                "targets",
                JsonShape::array_between(JsonShape::Integer, 2, 4),
            )]),
        ),
        (
            "array_exact",
            JsonShape::object([
                (
                    "p",
                    JsonShape::array_between(JsonShape::object([("i", JsonShape::Integer)]), 2, 2),
                ),
                (
                    "t",
                    JsonShape::array_between(JsonShape::Enum(vec!["x".into(), "yy".into()]), 1, 3),
                ),
            ]),
        ),
    ]
}

fn check(c: &Constraint, text: &str) {
    c.parse(text)
        .unwrap_or_else(|e| panic!("{text:?} does not satisfy the constraint: {e}"));
}

#[test]
fn constrained_json_always_satisfies_every_shape() {
    let tok = tokenizer();
    let v = tok.vocab_size();
    let prompt = tok
        .encode("<|im_start|>user\nAnswer in JSON<|im_end|>\n", false)
        .unwrap();
    // Tokens a free model would like here but that are rarely allowed.
    let bad = ids_of(&tok, |b| {
        b.iter().any(|c| c.is_ascii_alphabetic()) && !b.contains(&b'"')
    });
    let mut stops = std::collections::BTreeMap::new();
    for (name, shape) in shapes() {
        let c = Constraint::Json(shape);
        for seed in 0..12u64 {
            for &(temperature, max_tokens) in &[(0.0, 64usize), (1.0, 64), (3.0, 40), (1.5, 24)] {
                let mut m = ToyModel::new(v, bad.clone(), 6.0, seed * 7 + 1);
                let mut s = Sampler::new(temperature, 0.95, seed);
                let g =
                    generate_constrained_detailed(&mut m, &tok, &prompt, &c, max_tokens, &mut s)
                        .unwrap_or_else(|e| panic!("{name} seed {seed}: {e}"));
                check(&c, &g.text);
                assert!(
                    g.tokens.len() <= max_tokens,
                    "{name}: {} tokens",
                    g.tokens.len()
                );
                assert_eq!(tok.decode(&g.tokens, false).unwrap(), g.text);
                assert_eq!(m.resets, 1);
                *stops.entry(format!("{:?}", g.stop)).or_insert(0) += 1;
            }
        }
    }
    eprintln!("stops: {stops:?}");
    assert!(stops.contains_key("Complete"));
    assert!(stops.contains_key("Forced"));
}

#[test]
fn constrained_choices_always_pick_a_choice() {
    let tok = tokenizer();
    let v = tok.vocab_size();
    let prompt = tok.encode("Is the cup on the table?", false).unwrap();
    let choices: Vec<String> = ["yes", "no", "yes, twice", "not sure", "日本"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let c = Constraint::Choices(choices.clone());
    let bad = ids_of(&tok, |b| b.starts_with(b"x") || b == b" ");
    for seed in 0..40u64 {
        let mut m = ToyModel::new(v, bad.clone(), 8.0, seed);
        let mut s = Sampler::new(if seed % 2 == 0 { 1.0 } else { 0.0 }, 1.0, seed);
        let text = generate_constrained(&mut m, &tok, &prompt, &c, 16, &mut s).unwrap();
        assert!(choices.contains(&text), "{text:?}");
        check(&c, &text);
    }
}

#[test]
fn constrained_end_token_only_after_a_complete_answer() {
    let tok = tokenizer();
    let eos = tok.eos_ids().to_vec();
    let prompt = tok.encode("hi", false).unwrap();
    // The model wants to stop at once; it may only once the answer is complete.
    let c = Constraint::Choices(vec!["yes".into(), "yes please".into()]);
    let mut m = ToyModel::new(tok.vocab_size(), eos.clone(), 50.0, 3);
    let g = generate_constrained_detailed(&mut m, &tok, &prompt, &c, 10, &mut Sampler::greedy())
        .unwrap();
    assert_eq!(g.text, "yes");
    assert_eq!(g.stop, ConstrainedStop::EndToken);
    let c = Constraint::Json(JsonShape::object([("n", JsonShape::Integer)]));
    let mut m = ToyModel::new(tok.vocab_size(), eos, 50.0, 4);
    let g = generate_constrained_detailed(&mut m, &tok, &prompt, &c, 20, &mut Sampler::greedy())
        .unwrap();
    check(&c, &g.text);
    eprintln!("{:?} {:?}", g.text, g.stop);
    // An object cannot be followed by anything: the end token is never needed.
    assert_ne!(g.stop, ConstrainedStop::EndToken);
}

#[test]
fn constrained_whitespace_loving_model_is_finished_within_budget() {
    let tok = tokenizer();
    let ws = ids_of(&tok, |b| b.iter().all(|c| c.is_ascii_whitespace()));
    assert!(!ws.is_empty());
    let prompt = tok.encode("hi", false).unwrap();
    let shape = JsonShape::object([
        ("a", JsonShape::array(JsonShape::String, 4)),
        ("b", JsonShape::String),
    ]);
    let c = Constraint::Json(shape);
    for max_tokens in [12, 13, 20, 50] {
        let mut m = ToyModel::new(tok.vocab_size(), ws.clone(), 30.0, 9);
        let g = generate_constrained_detailed(
            &mut m,
            &tok,
            &prompt,
            &c,
            max_tokens,
            &mut Sampler::greedy(),
        )
        .unwrap();
        check(&c, &g.text);
        assert!(g.tokens.len() <= max_tokens);
        assert_eq!(g.stop, ConstrainedStop::Forced, "{:?}", g.text);
    }
    // Below the shortest answer's length it is an error, not a broken answer.
    let mut m = ToyModel::new(tok.vocab_size(), ws, 30.0, 9);
    let e = generate_constrained(&mut m, &tok, &prompt, &c, 3, &mut Sampler::greedy()).unwrap_err();
    assert!(e.to_string().contains("too small"), "{e}");
}

#[test]
fn constrained_rejects_non_object_json_and_empty_prompts() {
    let tok = tokenizer();
    let mut m = ToyModel::new(tok.vocab_size(), vec![], 0.0, 1);
    let c = Constraint::Json(JsonShape::String);
    assert!(generate_constrained(&mut m, &tok, &[1], &c, 10, &mut Sampler::greedy()).is_err());
    let c = Constraint::Choices(vec!["a".into()]);
    assert!(generate_constrained(&mut m, &tok, &[], &c, 10, &mut Sampler::greedy()).is_err());
}

/// A model with uniform logits except a bonus for one token sequence.
struct Uniform {
    vocab: usize,
    seq: Vec<u32>,
    favour: Vec<u32>,
    prompt_len: usize,
}

impl LogitsModel for Uniform {
    fn vocab_size(&self) -> usize {
        self.vocab
    }
    fn reset(&mut self) {
        self.seq.clear();
    }
    fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>, PlannerError> {
        self.seq.extend_from_slice(tokens);
        let mut l = vec![0.0; self.vocab];
        let k = self.seq.len() - self.prompt_len;
        if let Some(&t) = self.favour.get(k) {
            l[t as usize] = 5.0;
        }
        Ok(l)
    }
}

#[test]
fn constrained_choice_scores_are_log_probabilities() {
    let tok = tokenizer();
    let v = tok.vocab_size();
    let prompt = tok.encode("Q?", false).unwrap();
    let choices: Vec<String> = vec!["yes".into(), "no way".into()];
    let mut m = Uniform {
        vocab: v,
        seq: vec![],
        favour: vec![],
        prompt_len: prompt.len(),
    };
    let scores = score_choices(&mut m, &tok, &prompt, &choices, false).unwrap();
    let k = tok.eos_ids().len() as f64;
    for (c, s) in choices.iter().zip(&scores) {
        let n = tok.encode(c, false).unwrap().len() as f64;
        let want = -n * (v as f64).ln() + (k / v as f64).ln();
        assert!((s - want).abs() < 1e-9, "{c}: {s} vs {want}");
    }
    let normalised = score_choices(&mut m, &tok, &prompt, &choices, true).unwrap();
    let n0 = tok.encode("yes", false).unwrap().len() as f64;
    assert!((normalised[0] - scores[0] / (n0 + 1.0)).abs() < 1e-9);
    // A model that favours "no way" then <|im_end|> picks it.
    let mut favour = tok.encode("no way", false).unwrap();
    favour.push(tok.token_to_id("<|im_end|>").unwrap());
    let mut m = Uniform {
        vocab: v,
        seq: vec![],
        favour,
        prompt_len: prompt.len(),
    };
    let (best, _) = pick_choice(&mut m, &tok, &prompt, &choices, false).unwrap();
    assert_eq!(best, 1);
    assert!(pick_choice(&mut m, &tok, &prompt, &[], false).is_err());
}

/// The number of items of every array in a value, with its path.
fn array_lengths(v: &serde_json::Value, path: &str, out: &mut Vec<(String, usize)>) {
    match v {
        serde_json::Value::Array(a) => {
            out.push((path.to_string(), a.len()));
            for (i, x) in a.iter().enumerate() {
                array_lengths(x, &format!("{path}[{i}]"), out);
            }
        }
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                array_lengths(x, &format!("{path}.{k}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn constrained_min_items_hold_whatever_the_model_prefers() {
    let tok = tokenizer();
    let v = tok.vocab_size();
    let prompt = tok.encode("hi", false).unwrap();
    let shape = JsonShape::object([
        ("a", JsonShape::array_between(JsonShape::Integer, 2, 5)),
        (
            "b",
            JsonShape::array_between(
                JsonShape::object([("s", JsonShape::array_between(JsonShape::String, 1, 2))]),
                3,
                4,
            ),
        ),
    ]);
    let c = Constraint::Json(shape);
    // Models that want to close arrays (and end) at once, or to write anything at all.
    let closers = ids_of(&tok, |b| b.contains(&b']'));
    let mut eos_and_closers = closers.clone();
    eos_and_closers.extend(tok.eos_ids().iter().copied());
    let mut shortest = usize::MAX;
    let mut forced = 0;
    for (pref, bonus) in [(closers, 20.0), (eos_and_closers, 40.0), (vec![], 0.0)] {
        for seed in 0..8u64 {
            for &(temperature, max_tokens) in &[(0.0, 80usize), (1.0, 80), (2.0, 45), (0.0, 38)] {
                let mut m = ToyModel::new(v, pref.clone(), bonus, seed + 100);
                let mut s = Sampler::new(temperature, 1.0, seed);
                let g =
                    generate_constrained_detailed(&mut m, &tok, &prompt, &c, max_tokens, &mut s)
                        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                let value = c
                    .parse(&g.text)
                    .unwrap_or_else(|e| panic!("{:?}: {e}", g.text));
                let mut lens = Vec::new();
                array_lengths(&value, "$", &mut lens);
                for (path, n) in lens {
                    let min = match path.as_str() {
                        "$.a" => 2,
                        "$.b" => 3,
                        _ => 1,
                    };
                    assert!(n >= min, "{path} has {n} items in {:?}", g.text);
                }
                assert!(g.tokens.len() <= max_tokens, "{:?}", g.text);
                shortest = shortest.min(g.tokens.len());
                forced += usize::from(g.stop == ConstrainedStop::Forced);
            }
        }
    }
    eprintln!("shortest answer {shortest} tokens; {forced} answers forced");
    assert!(forced > 0);
}

#[test]
fn constrained_min_items_count_in_the_budget() {
    let tok = tokenizer();
    let prompt = tok.encode("hi", false).unwrap();
    let c = Constraint::Json(JsonShape::object([(
        "a",
        JsonShape::array_between(JsonShape::Integer, 6, 8),
    )]));
    // The shortest answer is {"a":[0,0,0,0,0,0]}: find its token count.
    let shortest = tok.encode(r#"{"a":[0,0,0,0,0,0]}"#, false).unwrap().len();
    let closers = ids_of(&tok, |b| b.contains(&b']') || b.contains(&b'}'));
    // Exactly the budget of the shortest answer: it is forced at once and holds 6 items.
    for max_tokens in [shortest, shortest + 1, shortest + 3] {
        let mut m = ToyModel::new(tok.vocab_size(), closers.clone(), 30.0, 5);
        let g = generate_constrained_detailed(
            &mut m,
            &tok,
            &prompt,
            &c,
            max_tokens,
            &mut Sampler::greedy(),
        )
        .unwrap();
        let v = c.parse(&g.text).unwrap();
        assert!(v["a"].as_array().unwrap().len() >= 6, "{:?}", g.text);
        assert!(g.tokens.len() <= max_tokens);
    }
    let mut m = ToyModel::new(tok.vocab_size(), closers, 30.0, 5);
    let e = generate_constrained(
        &mut m,
        &tok,
        &prompt,
        &c,
        shortest - 1,
        &mut Sampler::greedy(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("too small"), "{e}");
    // A shape that no value satisfies is refused before generation.
    let c = Constraint::Json(JsonShape::object([(
        "a",
        JsonShape::array_between(JsonShape::Integer, 3, 2),
    )]));
    let mut m = ToyModel::new(tok.vocab_size(), vec![], 0.0, 5);
    assert!(generate_constrained(&mut m, &tok, &prompt, &c, 50, &mut Sampler::greedy()).is_err());
}

#[test]
fn constrained_json_is_compact_even_for_a_whitespace_loving_model() {
    let tok = tokenizer();
    let ws = ids_of(&tok, |b| b.iter().any(|c| c.is_ascii_whitespace()));
    let prompt = tok.encode("hi", false).unwrap();
    let c = Constraint::Json(JsonShape::object([
        ("n", JsonShape::Integer),
        ("e", JsonShape::Enum(vec!["a b".into(), "c".into()])),
        ("t", JsonShape::array_between(JsonShape::Integer, 1, 3)),
    ]));
    for seed in 0..10u64 {
        let mut m = ToyModel::new(tok.vocab_size(), ws.clone(), 30.0, seed);
        let mut s = Sampler::new(if seed % 2 == 0 { 0.0 } else { 1.0 }, 1.0, seed);
        let g = generate_constrained_detailed(&mut m, &tok, &prompt, &c, 40, &mut s).unwrap();
        check(&c, &g.text);
        // Outside the enum's string, whitespace is one space after ':' or ','.
        let outside = g.text.replace("\"a b\"", "\"ab\"");
        let bytes = outside.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            if b.is_ascii_whitespace() {
                assert!(
                    b == b' ' && i > 0 && matches!(bytes[i - 1], b':' | b','),
                    "{:?}",
                    g.text
                );
            }
        }
        assert!(g.text.starts_with('{'), "{:?}", g.text);
    }
}

fn spm_tokenizer() -> Tokenizer {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer_tiny_spm.gguf");
    Tokenizer::from_gguf(&GgufFile::open(&p).unwrap()).unwrap()
}

#[test]
fn constrained_sentencepiece_answers_may_start_with_the_word_space() {
    let tok = spm_tokenizer();
    let table = tok.token_bytes().to_vec();
    // Tokens that begin a word: `▁` followed by something.
    let word_starts = ids_of(&tok, |b| b.len() > 1 && b[0] == b' ' && b[1] != b' ');
    assert!(!word_starts.is_empty());
    let prompt = tok.encode("Is it?", true).unwrap();
    let choices: Vec<String> = vec!["yes".into(), "no".into(), "maybe".into()];
    let c = Constraint::Choices(choices.clone());
    let mut with_space = 0;
    for seed in 0..12u64 {
        let mut m = ToyModel::new(tok.vocab_size(), word_starts.clone(), 10.0, seed);
        let mut s = Sampler::new(1.0, 1.0, seed);
        let g = generate_constrained_detailed(&mut m, &tok, &prompt, &c, 8, &mut s).unwrap();
        assert!(choices.contains(&g.text), "{:?}", g.text);
        let first = &table[g.tokens[0] as usize];
        with_space += usize::from(first.first() == Some(&b' '));
        // The tokenizer's decoder drops the word space too.
        assert_eq!(tok.decode(&g.tokens, false).unwrap(), g.text);
    }
    assert!(with_space > 0, "the word space was never used");
    let c = Constraint::Json(JsonShape::object([("answer", JsonShape::String)]));
    for seed in 0..6u64 {
        let mut m = ToyModel::new(tok.vocab_size(), word_starts.clone(), 10.0, seed);
        let mut s = Sampler::new(1.0, 1.0, seed);
        let g = generate_constrained_detailed(&mut m, &tok, &prompt, &c, 24, &mut s).unwrap();
        check(&c, &g.text);
        assert!(g.text.starts_with('{'), "{:?}", g.text);
    }
}
