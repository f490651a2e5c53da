//! The CLIP tokenizer of a diffusers folder that ships `vocab.json` + `merges.txt` (and
//! usually `tokenizer_config.json`) but no `tokenizer.json`, as the released Stable Diffusion
//! folders do.
//!
//! The files are turned into the `tokenizer.json` that transformers' `CLIPTokenizer` builds
//! from them (BPE with the `</w>` end-of-word suffix and `<|endoftext|>` as unknown token; NFC,
//! whitespace runs to one space, lower case; CLIP's split pattern then byte-level; the start
//! and end tokens around every sequence) and loaded by [`ClipTokenizer`]. Parity with
//! transformers on tricky strings: `tests/sd_tokenizer_parity.rs`.

use std::path::Path;

use cielr_scene::clip::ClipTokenizer;
use serde_json::{json, Map, Value};

use crate::error::{DiffusionError, Result};

/// CLIP's pre-tokenizer pattern (special tokens, English contractions, letter runs, single
/// digits, runs of other non-space characters).
const CLIP_SPLIT: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// The special tokens a `tokenizer_config.json` names (strings or `{"content": ...}`), with
/// CLIP's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipSpecialTokens {
    /// The start token (`bos_token`, `<|startoftext|>`).
    pub bos: String,
    /// The end token (`eos_token`, `<|endoftext|>`).
    pub eos: String,
    /// The unknown token (`unk_token`, `<|endoftext|>`).
    pub unk: String,
    /// The padding token (`pad_token`, `<|endoftext|>`; SD 2 folders use `!`).
    pub pad: String,
}

impl Default for ClipSpecialTokens {
    fn default() -> Self {
        ClipSpecialTokens {
            bos: "<|startoftext|>".into(),
            eos: "<|endoftext|>".into(),
            unk: "<|endoftext|>".into(),
            pad: "<|endoftext|>".into(),
        }
    }
}

impl ClipSpecialTokens {
    /// Reads the tokens a `tokenizer_config.json` sets, keeping the defaults for the others.
    pub fn from_config(config: &Value) -> Self {
        let read = |key: &str| match config.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(String::from),
            _ => None,
        };
        let d = ClipSpecialTokens::default();
        ClipSpecialTokens {
            bos: read("bos_token").unwrap_or(d.bos),
            eos: read("eos_token").unwrap_or(d.eos),
            unk: read("unk_token").unwrap_or(d.unk),
            pad: read("pad_token").unwrap_or(d.pad),
        }
    }
}

/// The merges of a `merges.txt`: one `left right` pair per line after an optional
/// `#version` header; blank lines are skipped. An error names the first malformed line.
pub fn parse_merges(text: &str, context: &str) -> Result<Vec<(String, String)>> {
    let mut merges = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if (i == 0 && line.starts_with("#version")) || line.trim().is_empty() {
            continue;
        }
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => {
                merges.push((a.to_string(), b.to_string()))
            }
            _ => {
                return Err(DiffusionError::config(
                    context,
                    format!("line {}: {line:?} is not a `left right` merge", i + 1),
                ))
            }
        }
    }
    Ok(merges)
}

/// The `tokenizer.json` transformers' `CLIPTokenizer` builds from `vocab` (token to id) and
/// `merges`, with the special tokens `special` (each must be in the vocabulary).
pub fn clip_tokenizer_json(
    vocab: &Map<String, Value>,
    merges: &[(String, String)],
    special: &ClipSpecialTokens,
    context: &str,
) -> Result<Value> {
    let id_of = |token: &str, role: &str| -> Result<u64> {
        vocab.get(token).and_then(Value::as_u64).ok_or_else(|| {
            DiffusionError::config(
                context,
                format!("the {role} token {token:?} is not in vocab.json"),
            )
        })
    };
    let bos = id_of(&special.bos, "start")?;
    let eos = id_of(&special.eos, "end")?;
    let added = |id: u64, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    // transformers registers every special token as an added token, so text that spells one
    // (e.g. SD 2's pad token `!`) is split off before BPE.
    let mut added_tokens = Vec::new();
    let mut seen = Vec::new();
    for (token, role) in [
        (&special.bos, "start"),
        (&special.eos, "end"),
        (&special.unk, "unknown"),
        (&special.pad, "padding"),
    ] {
        if !seen.contains(token) {
            added_tokens.push(added(id_of(token, role)?, token));
            seen.push(token.clone());
        }
    }
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
            {"type": "Lowercase"}
        ]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": CLIP_SPLIT}, "behavior": "Removed",
             "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
             "use_regex": true}
        ]},
        "post_processor": {"type": "RobertaProcessing", "sep": [special.eos, eos],
                           "cls": [special.bos, bos], "trim_offsets": false,
                           "add_prefix_space": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": special.unk,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "</w>",
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab,
                  "merges": merges.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>()}
    }))
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| DiffusionError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Loads the CLIP tokenizer of a diffusers `tokenizer/` folder: `tokenizer.json` when there
/// is one, else `vocab.json` + `merges.txt`; padded with the `pad_token` of
/// `tokenizer_config.json` when it names one; sequences of `max_length` tokens.
pub fn load_clip_tokenizer(dir: &Path, max_length: usize) -> Result<ClipTokenizer> {
    let config_path = dir.join("tokenizer_config.json");
    let config = if config_path.exists() {
        let text = read_text(&config_path)?;
        Some(serde_json::from_str::<Value>(&text).map_err(|e| {
            DiffusionError::config(config_path.display().to_string(), e.to_string())
        })?)
    } else {
        None
    };
    let special = config
        .as_ref()
        .map(ClipSpecialTokens::from_config)
        .unwrap_or_default();
    let json_path = dir.join("tokenizer.json");
    let tokenizer = if json_path.exists() {
        ClipTokenizer::from_file(&json_path, max_length)?
    } else {
        let (vocab_path, merges_path) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if !vocab_path.exists() || !merges_path.exists() {
            return Err(DiffusionError::config(
                dir.display().to_string(),
                "no tokenizer: expected tokenizer.json, or vocab.json and merges.txt",
            ));
        }
        let vocab_ctx = vocab_path.display().to_string();
        let vocab: Value = serde_json::from_str(&read_text(&vocab_path)?)
            .map_err(|e| DiffusionError::config(&vocab_ctx, e.to_string()))?;
        let vocab = vocab
            .as_object()
            .ok_or_else(|| DiffusionError::config(&vocab_ctx, "not a token -> id object"))?;
        let merges_ctx = merges_path.display().to_string();
        let merges = parse_merges(&read_text(&merges_path)?, &merges_ctx)?;
        let json = clip_tokenizer_json(vocab, &merges, &special, &vocab_ctx)?;
        let bytes = serde_json::to_vec(&json)
            .map_err(|e| DiffusionError::config(&vocab_ctx, e.to_string()))?;
        ClipTokenizer::from_bytes(&bytes, max_length)?
    };
    let names_pad = config
        .as_ref()
        .is_some_and(|c| c.get("pad_token").is_some());
    if names_pad {
        Ok(tokenizer.with_pad_token(&special.pad)?)
    } else {
        Ok(tokenizer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_skip_the_header_and_reject_bad_lines() {
        let m = parse_merges("#version: 0.2\nh e</w>\n\nt he</w>\n", "m").unwrap();
        assert_eq!(
            m,
            vec![("h".into(), "e</w>".into()), ("t".into(), "he</w>".into())]
        );
        let err = parse_merges("#version: 0.2\nab\n", "m")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn missing_special_tokens_are_named() {
        let vocab = json!({"a</w>": 0, "<|startoftext|>": 1});
        let err = clip_tokenizer_json(
            vocab.as_object().unwrap(),
            &[],
            &ClipSpecialTokens::default(),
            "v",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("<|endoftext|>"), "{err}");
    }
}
