//! The LLM answer parsers: `Constraint::parse` under each of the planner's constraints (the
//! first byte picks one), `match_choice` and `extract_json`.
#![no_main]
use cielr_core::llm::{extract_json, match_choice, Constraint};
use libfuzzer_sys::fuzz_target;

#[path = "shapes.rs"]
mod shapes;

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let answer = String::from_utf8_lossy(rest);
    let c = shapes::constraint(k);
    match (&c, c.parse(&answer)) {
        (Constraint::Choices(choices), Ok(v)) => {
            let s = v.as_str().expect("a choice is a string");
            assert!(choices.iter().any(|c| c == s), "{s:?} is not a choice");
        }
        (Constraint::Json(shape), Ok(v)) => shape.check(&v).expect("a parsed answer fits"),
        (_, Err(reason)) => assert!(!reason.is_empty()),
    }
    let _ = match_choice(
        &["a".to_string(), "a b".to_string(), "".to_string()],
        &answer,
    );
    let _ = extract_json(&answer);
});
