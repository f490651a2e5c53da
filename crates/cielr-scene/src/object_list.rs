//! Object lists from a vision-language model: the [`ObjectLister`] trait and the parser of
//! its answers.
//!
//! The method's first SSR step is an object list (a VLM lists the objects it sees, repeated
//! labels disambiguated by position). This crate does not talk to servers: an implementation
//! of [`ObjectLister`] asks a model (the `cielr` CLI has one for an OpenAI-compatible
//! endpoint) with [`OBJECT_LIST_PROMPT`] and turns the answer into detector queries with
//! [`parse_object_list`]; the queries then go to the SSR builder as user queries would.

use image::RgbImage;
use serde_json::Value;

use crate::error::{Result, SceneError};

/// The prompt that asks a vision-language model for the objects in one image, as JSON.
pub const OBJECT_LIST_PROMPT: &str = "List the distinct objects visible in this image. \
Answer with a JSON array of short noun phrases (one to three words each), for example \
[\"left cup\", \"right cup\", \"wooden table\"]. When several objects share a name, tell \
them apart by position (left, right, top, bottom, front, back). Leave out the background \
and anything you are not sure of. Answer with the JSON array only.";

/// The most objects kept from one answer (the rest are dropped, in answer order).
pub const MAX_LISTED_OBJECTS: usize = 40;

/// The longest object name kept, in characters; longer entries are sentences, not names,
/// and are skipped.
pub const MAX_OBJECT_NAME_CHARS: usize = 60;

/// Lists the objects visible in an image; the names become the SSR builder's queries.
pub trait ObjectLister: Send + Sync {
    /// A short description for logs, e.g. `vlm(qwen2-vl at http://host:8000)`.
    fn name(&self) -> String;

    /// The object names seen in `image`: non-empty, deduplicated, at most
    /// [`MAX_LISTED_OBJECTS`].
    fn list_objects(&self, image: &RgbImage) -> Result<Vec<String>>;
}

/// The object names in a model's answer: a JSON array of strings, or an object with an
/// `"objects"` (or `"labels"`) array, optionally inside a Markdown code fence or after some
/// prose. Names are trimmed, lower-cased and whitespace-collapsed; empty ones and ones over
/// [`MAX_OBJECT_NAME_CHARS`] are skipped, repeats (case-insensitive) dropped, and at most
/// `max` kept. Errors: no JSON array found, a non-string entry, or no name left.
pub fn parse_object_list(answer: &str, max: usize) -> Result<Vec<String>> {
    let bad = |why: String| {
        let start: String = answer.trim().chars().take(80).collect();
        SceneError::InvalidInput(format!(
            "the vision model's object list {why} (answer starts {start:?}); it should be a \
             JSON array of names such as [\"left cup\", \"table\"]"
        ))
    };
    let body = strip_code_fence(answer);
    let value = first_json_value(body).ok_or_else(|| bad("is not JSON".into()))?;
    let items = match &value {
        Value::Array(items) => items,
        Value::Object(map) => match map.get("objects").or_else(|| map.get("labels")) {
            Some(Value::Array(items)) => items,
            _ => return Err(bad("is a JSON object without an \"objects\" array".into())),
        },
        other => return Err(bad(format!("is a JSON {}, not an array", kind(other)))),
    };
    let mut names: Vec<String> = Vec::new();
    for item in items {
        let Value::String(s) = item else {
            return Err(bad(format!("has a {} entry, not a name", kind(item))));
        };
        let name = s
            .trim_matches(|c: char| c.is_whitespace() || matches!(c, '.' | ',' | ';' | '"'))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase();
        if name.is_empty() || name.chars().count() > MAX_OBJECT_NAME_CHARS {
            continue;
        }
        if !names.contains(&name) {
            names.push(name);
        }
        if names.len() == max {
            break;
        }
    }
    if names.is_empty() {
        return Err(bad("names no object".into()));
    }
    Ok(names)
}

/// The text inside the first Markdown code fence (its language tag dropped), or the whole
/// text when there is none.
fn strip_code_fence(text: &str) -> &str {
    let Some(start) = text.find("```") else {
        return text;
    };
    let after = &text[start + 3..];
    // The rest of the opening fence's line is a language tag ("json").
    let inner = after.find('\n').map_or(after, |nl| &after[nl + 1..]);
    inner.find("```").map_or(inner, |end| &inner[..end])
}

/// The first JSON array or object in `text` (text before it and after it is ignored).
fn first_json_value(text: &str) -> Option<Value> {
    let mut from = 0;
    while let Some(off) = text[from..].find(['[', '{']) {
        let at = from + off;
        let mut stream = serde_json::Deserializer::from_str(&text[at..]).into_iter::<Value>();
        if let Some(Ok(v)) = stream.next() {
            return Some(v);
        }
        from = at + 1;
    }
    None
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Vec<String>> {
        parse_object_list(s, MAX_LISTED_OBJECTS)
    }

    #[test]
    fn bare_array() {
        assert_eq!(
            parse(r#"["left cup", "right cup", "table"]"#).unwrap(),
            ["left cup", "right cup", "table"]
        );
    }

    #[test]
    fn fenced_and_wrapped() {
        let fenced = "Here you go:\n```json\n{\"objects\": [\"Lamp\", \"sofa\"]}\n```\nDone.";
        assert_eq!(parse(fenced).unwrap(), ["lamp", "sofa"]);
        let plain_fence = "```\n[\"dog\"]\n```";
        assert_eq!(parse(plain_fence).unwrap(), ["dog"]);
        assert_eq!(
            parse(r#"{"labels": ["  red   car. "]}"#).unwrap(),
            ["red car"]
        );
        // Prose around a bare array, and a bracket in the prose before it.
        assert_eq!(
            parse("I see [some] things: [\"cat\", \"mat\"] in the image").unwrap(),
            ["cat", "mat"]
        );
    }

    #[test]
    fn duplicates_are_dropped_and_the_count_capped() {
        assert_eq!(
            parse(r#"["cup", "Cup", " cup ", "table", "cup"]"#).unwrap(),
            ["cup", "table"]
        );
        let many: Vec<String> = (0..100).map(|i| format!("thing {i}")).collect();
        let got = parse(&serde_json::to_string(&many).unwrap()).unwrap();
        assert_eq!(got.len(), MAX_LISTED_OBJECTS);
        assert_eq!(got[0], "thing 0");
        assert_eq!(
            parse_object_list(r#"["a", "b", "c"]"#, 2).unwrap(),
            ["a", "b"]
        );
    }

    #[test]
    fn garbage_is_a_clear_error() {
        for (answer, why) in [
            ("I see a cup and a table.", "is not JSON"),
            ("\"cup\"", "is not JSON"),
            (r#"{"things": ["cup"]}"#, "without an \"objects\" array"),
            (r#"["cup", 3]"#, "has a number entry"),
            (r#"[{"name": "cup"}]"#, "has a object entry"),
            ("[\"cup\"", "is not JSON"),
        ] {
            let e = parse(answer).unwrap_err().to_string();
            assert!(e.contains(why), "{answer:?}: {e}");
            assert!(e.contains("JSON array of names"), "{e}");
        }
    }

    #[test]
    fn empty_lists_are_an_error() {
        let long = format!("[\"{}\"]", "x".repeat(MAX_OBJECT_NAME_CHARS + 1));
        for answer in [
            "[]",
            "```json\n[]\n```",
            r#"{"objects": []}"#,
            r#"["", "  "]"#,
            &long,
        ] {
            let e = parse(answer).unwrap_err().to_string();
            assert!(e.contains("names no object"), "{answer:?}: {e}");
        }
        assert!(parse("").unwrap_err().to_string().contains("is not JSON"));
    }
}
