//! Constrained decoding end to end with SmolLM2-135M-Instruct: GGUF → tokenizer → the
//! checkpoint's chat template → the Burn decoder behind `LogitsModel` → JSON and choice
//! answers that parse. Also times masking with the real 49,152-token vocabulary. Needs the
//! model: run
//! `tools/setup-models.sh` (these tests fail, not skip, without the model).

use std::time::Instant;

use cielr_core::backend::CpuBackend;
use cielr_core::{ChatMessage, Constraint, JsonShape};
use cielr_planner::chat::{ChatFormatUsed, ChatTemplate};
use cielr_planner::constrained::{
    allowed_tokens, generate_constrained_detailed, pick_choice, CompiledConstraint, LogitsModel,
};
use cielr_planner::error::PlannerError;
use cielr_planner::generate::Sampler;
use cielr_planner::gguf::{smollm2_gguf_path, GgufFile};
use cielr_planner::llama::{Llama, LlamaCache};
use cielr_planner::tokenizer::Tokenizer;

struct Model {
    llama: Llama<CpuBackend>,
    cache: LlamaCache<CpuBackend>,
    fed: usize,
}

impl LogitsModel for Model {
    fn vocab_size(&self) -> usize {
        self.llama.config().vocab_size
    }
    fn reset(&mut self) {
        self.cache = self.llama.new_cache();
    }
    fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>, PlannerError> {
        self.fed += tokens.len();
        self.llama.next_token_logits(tokens, &mut self.cache)
    }
}

fn load() -> (Model, Tokenizer) {
    let path = smollm2_gguf_path().unwrap_or_else(|e| panic!("real-models test: {e}"));
    let file = GgufFile::open(&path).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let llama = Llama::<CpuBackend>::from_gguf(&file, &Default::default()).unwrap();
    let cache = llama.new_cache();
    (
        Model {
            llama,
            cache,
            fed: 0,
        },
        tok,
    )
}

#[test]
fn constrained_smollm2_answers_parse() {
    let (mut model, tok) = load();
    let chat = ChatTemplate::for_tokenizer(&tok);
    let messages = [
        ChatMessage::system("You edit images. Answer only with JSON."),
        ChatMessage::user(
            "Objects: 0 = red cup, 1 = plate, 2 = blue bottle. The user says: \"remove the cup \
             and the bottle\". Which object ids are targets? Answer as {\"targets\": [ids]}.",
        ),
    ];
    let rendered = chat.render(&messages, true);
    assert_eq!(rendered.used, ChatFormatUsed::Template);
    let prompt = tok.encode(&rendered.text, false).unwrap();

    let c = Constraint::Json(JsonShape::object([(
        "targets",
        JsonShape::array(JsonShape::Integer, 3),
    )]));
    let t0 = Instant::now();
    let g =
        generate_constrained_detailed(&mut model, &tok, &prompt, &c, 24, &mut Sampler::greedy())
            .unwrap();
    let took = t0.elapsed();
    eprintln!(
        "JSON answer {:?} ({} tokens, {:?}, forced {}) in {took:?}; prompt {} tokens",
        g.text,
        g.tokens.len(),
        g.stop,
        g.forced_tokens,
        prompt.len()
    );
    let v = c.parse(&g.text).unwrap();
    assert!(v["targets"].as_array().unwrap().len() <= 3);

    let c = Constraint::Json(JsonShape::object([
        (
            "relation",
            JsonShape::Enum(vec!["left_of".into(), "right_of".into(), "above".into()]),
        ),
        ("prompt", JsonShape::String),
    ]));
    let messages = [ChatMessage::user(
        "Describe the edit \"put the cup left of the plate\" as JSON with a relation and a \
         short prompt.",
    )];
    let prompt = tok
        .encode(&chat.render(&messages, true).text, false)
        .unwrap();
    for seed in 0..2 {
        let g = generate_constrained_detailed(
            &mut model,
            &tok,
            &prompt,
            &c,
            40,
            &mut Sampler::new(0.7, 0.9, seed),
        )
        .unwrap();
        eprintln!("seed {seed}: {:?} ({:?})", g.text, g.stop);
        c.parse(&g.text).unwrap();
        assert!(g.tokens.len() <= 40);
    }

    let choices: Vec<String> = vec!["yes".into(), "no".into()];
    let messages = [ChatMessage::user(
        "Is a cup a kind of container? Answer yes or no.",
    )];
    let prompt = tok
        .encode(&chat.render(&messages, true).text, false)
        .unwrap();
    let (best, scores) = pick_choice(&mut model, &tok, &prompt, &choices, false).unwrap();
    eprintln!("choice scores {scores:?}: {}", choices[best]);
    let g = generate_constrained_detailed(
        &mut model,
        &tok,
        &prompt,
        &Constraint::Choices(choices.clone()),
        4,
        &mut Sampler::greedy(),
    )
    .unwrap();
    eprintln!("generated choice {:?}", g.text);
    assert!(choices.contains(&g.text));
    eprintln!("tokens fed to the model in all: {}", model.fed);
}

#[test]
fn constrained_smollm2_masking_time() {
    let path = smollm2_gguf_path().unwrap_or_else(|e| panic!("real-models test: {e}"));
    let tok = Tokenizer::from_gguf_path(&path).unwrap();
    let t0 = Instant::now();
    let n = tok.token_trie().len();
    eprintln!("byte table + trie ({n} nodes): {:?}", t0.elapsed());
    let c = CompiledConstraint::new(&Constraint::Json(JsonShape::object([
        ("prompt", JsonShape::String),
        ("targets", JsonShape::array(JsonShape::Integer, 8)),
    ])))
    .unwrap();
    for prefix in [
        "",
        "{\"prompt\": \"",
        "{\"prompt\": \"a red",
        "{\"prompt\": \"x\", \"targets\": [1",
    ] {
        let mut s = c.start();
        assert!(s.step_bytes(&c, prefix.as_bytes()));
        let mut v = Vec::new();
        let t0 = Instant::now();
        tok.token_trie().allowed(&c, &s, &mut v);
        let took = t0.elapsed();
        assert_eq!(allowed_tokens(&tok, &c, &s).len(), v.len());
        eprintln!("after {prefix:?}: {} allowed in {took:?}", v.len());
    }
}
