//! Chat templates rendered with minijinja against transformers' `apply_chat_template`
//! (`tests/fixtures/chat_templates_reference.json`, made by
//! `tools/planner/make_chat_fixtures.py`), and the built-in ChatML and Llama 3 formats against
//! the same references.

use std::path::Path;

use cielr_core::{ChatMessage, Role};
use cielr_planner::chat::{render_builtin, BuiltinFormat, ChatFormatUsed, ChatTemplate};
use cielr_planner::gguf::GgufFile;
use cielr_planner::tokenizer::Tokenizer;
use serde_json::Value;

fn reference() -> Value {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat_templates_reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn conversation(v: &Value) -> Vec<ChatMessage> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let role = match m["role"].as_str().unwrap() {
                "system" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                r => panic!("role {r}"),
            };
            ChatMessage {
                role,
                content: m["content"].as_str().unwrap().to_string(),
            }
        })
        .collect()
}

fn template(r: &Value, name: &str, fallback: BuiltinFormat) -> ChatTemplate {
    let t = &r["templates"][name];
    ChatTemplate::new(
        t["template"].as_str(),
        t["bos_token"].as_str().unwrap(),
        t["eos_token"].as_str().unwrap(),
        fallback,
    )
}

#[test]
fn chat_templates_match_transformers() {
    let r = reference();
    let convs: Vec<Vec<ChatMessage>> = r["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(conversation)
        .collect();
    let mut checked = 0;
    let mut errors = 0;
    for case in r["cases"].as_array().unwrap() {
        let name = case["template"].as_str().unwrap();
        let t = template(&r, name, BuiltinFormat::ChatMl);
        let msgs = &convs[case["conversation"].as_u64().unwrap() as usize];
        let gen = case["add_generation_prompt"].as_bool().unwrap();
        let got = t.render_strict(msgs, gen);
        match (case.get("output"), case.get("error")) {
            (Some(want), _) => {
                let got = got.unwrap_or_else(|e| panic!("{name} {case}: {e}"));
                assert_eq!(got, want.as_str().unwrap(), "{name}, case {case}");
                let rendered = t.render(msgs, gen);
                assert_eq!(rendered.used, ChatFormatUsed::Template);
                assert_eq!(rendered.text, got);
            }
            (None, Some(err)) => {
                let e = got.unwrap_err().to_string();
                assert!(e.contains(err.as_str().unwrap()), "{name}: {e}");
                // Rendering falls back to the built-in format and says why.
                let rendered = t.render(msgs, gen);
                assert!(rendered
                    .fallback_reason
                    .unwrap()
                    .contains(err.as_str().unwrap()));
                errors += 1;
            }
            _ => panic!("bad case {case}"),
        }
        checked += 1;
    }
    assert_eq!(checked, 48);
    assert_eq!(errors, 4);
}

#[test]
fn chat_builtin_formats_match_transformers() {
    let r = reference();
    let convs: Vec<Vec<ChatMessage>> = r["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(conversation)
        .collect();
    let mut n = 0;
    for case in r["cases"].as_array().unwrap() {
        let (format, bos) = match case["template"].as_str().unwrap() {
            "chatml" => (BuiltinFormat::ChatMl, ""),
            "llama3" => (BuiltinFormat::Llama3, "<|begin_of_text|>"),
            _ => continue,
        };
        let msgs = &convs[case["conversation"].as_u64().unwrap() as usize];
        let gen = case["add_generation_prompt"].as_bool().unwrap();
        assert_eq!(
            render_builtin(format, msgs, gen, bos),
            case["output"].as_str().unwrap(),
            "{case}"
        );
        // Without a template the fallback gives the same text.
        let t = ChatTemplate::new(None, bos, "", format);
        assert_eq!(t.render(msgs, gen).text, case["output"].as_str().unwrap());
        n += 1;
    }
    assert_eq!(n, 16);
}

#[test]
fn chat_template_comes_from_the_tokenizer() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer_tiny_bpe.gguf");
    let tok = Tokenizer::from_gguf(&GgufFile::open(&p).unwrap()).unwrap();
    let t = ChatTemplate::for_tokenizer(&tok);
    assert_eq!(t.fallback(), BuiltinFormat::ChatMl);
    let msgs = [ChatMessage::system("S"), ChatMessage::user("U")];
    let r = t.render(&msgs, true);
    assert_eq!(r.used, ChatFormatUsed::Template);
    assert_eq!(
        r.text,
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    );
    // The rendered prompt tokenizes with the markers as single special tokens.
    let ids = tok.encode(&r.text, false).unwrap();
    let im_start = tok.token_to_id("<|im_start|>").unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == im_start).count(), 3);
}
