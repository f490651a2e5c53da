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
