//! A generic JSONL manifest for users' own sets (schema in docs/evaluation.md).
//!
//! One JSON object per line; blank lines and lines starting with `#` are skipped:
//!
//! ```text
//! {"manifest": {"name": "kitchen", "size": 512, "best_by": "clip", "clip_model": "openai/clip-vit-large-patch14"}}
//! {"id": "cup", "image": "img/cup.jpg", "instruction": "What holds the coffee? Remove it.",
//!  "mask": "masks/cup.png", "target": "table", "op": "remove", "scene": "ssr/cup.json", "notes": "..."}
//! ```
//!
//! The optional first `{"manifest": ...}` line names the set and its protocol (`size`: the
//! square side to resize to, `null` for none; default 512). Per sample only `image` and
//! `instruction` are required; `id` defaults to the sample's position (1-based), `mask` and
//! `target` (alias `clip`) may be a string or a list, `op` is one of remove / replace / add /
//! recolor. Paths are relative to the manifest's folder and must stay inside it.

use std::path::Path;

use cielr_core::EditOp;
use serde_json::Value;

use super::{resolve_in, string_list, BadEntry, Dataset, Protocol, Sample};
use crate::error::{EvalError, EvalResult};

/// Reads a JSONL manifest.
pub fn load_manifest(file: &Path) -> EvalResult<Dataset> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| EvalError::dataset(file, format!("{e}; give the manifest .jsonl file")))?;
    let root = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => Path::new(".").to_path_buf(),
    };
    let mut name = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("manifest")
        .to_string();
    let mut protocol = Protocol {
        size: Some(512),
        clip_model: None,
        best_by: "clip".into(),
    };
    let mut entries = Vec::new();
    let mut position = 0usize;
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let v: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                position += 1;
                entries.push(Err(BadEntry {
                    id: format!("line {lineno}"),
                    error: format!("line {lineno} is not a JSON object: {e}"),
                }));
                continue;
            }
        };
        if let Some(header) = v.get("manifest") {
            if position > 0 {
                return Err(EvalError::dataset(
                    file,
                    format!("line {lineno}: the {{\"manifest\": ...}} header must come before the samples"),
                ));
            }
            apply_header(header, &mut name, &mut protocol)
                .map_err(|m| EvalError::dataset(file, format!("line {lineno}: {m}")))?;
            continue;
        }
        position += 1;
        let id = match v.get("id") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            Some(Value::Number(n)) => n.to_string(),
            _ => position.to_string(),
        };
        entries.push(sample(&root, &id, &v).map_err(|error| BadEntry {
            id: id.clone(),
            error: format!("line {lineno}: {error}"),
        }));
    }
    let mut ds = Dataset {
        name,
        root,
        protocol,
        entries,
    };
    ds.reject_duplicate_ids();
    Ok(ds)
}

fn apply_header(h: &Value, name: &mut String, p: &mut Protocol) -> Result<(), String> {
    if let Some(n) = h.get("name") {
        *name = n.as_str().ok_or("\"name\" must be a string")?.to_string();
    }
    if let Some(s) = h.get("size") {
        p.size = match s {
            Value::Null => None,
            v => Some(
                v.as_u64()
                    .filter(|&s| (8..=4096).contains(&s))
                    .ok_or("\"size\" must be null or a whole number from 8 to 4096")?
                    as u32,
            ),
        };
    }
    if let Some(c) = h.get("clip_model") {
        p.clip_model = Some(
            c.as_str()
                .ok_or("\"clip_model\" must be a string")?
                .to_string(),
        );
    }
    if let Some(b) = h.get("best_by") {
        p.best_by = b
            .as_str()
            .ok_or("\"best_by\" must be a string")?
            .to_string();
    }
    Ok(())
}

fn sample(root: &Path, id: &str, v: &Value) -> Result<Sample, String> {
    if !v.is_object() {
        return Err("expected a JSON object".into());
    }
    let image = v
        .get("image")
        .and_then(Value::as_str)
        .ok_or("\"image\" (a path) is required")?;
    let instruction = v
        .get("instruction")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or("\"instruction\" (a non-empty string) is required")?;
    let masks = match v.get("mask") {
        None | Some(Value::Null) => Vec::new(),
        Some(m) => string_list(m, "mask")?,
    };
    let target_texts = match v.get("target").or_else(|| v.get("clip")) {
        None | Some(Value::Null) => Vec::new(),
        Some(t) => string_list(t, "target")?,
    };
    let op = match v.get("op") {
        None | Some(Value::Null) => None,
        Some(o) => {
            let s = o.as_str().ok_or("\"op\" must be a string")?;
            Some(EditOp::parse(s).ok_or_else(|| {
                format!("\"op\" must be remove, replace, add or recolor, not {s:?}")
            })?)
        }
    };
    let scene = match v.get("scene").and_then(Value::as_str) {
        Some(s) => Some(resolve_in(root, s).map_err(|e| format!("\"scene\": {e}"))?),
        None => None,
    };
    let notes = v.get("notes").or_else(|| v.get("note")).map(|n| match n {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    Ok(Sample {
        id: id.to_string(),
        image: resolve_in(root, image).map_err(|e| format!("\"image\": {e}"))?,
        instruction: instruction.to_string(),
        target_texts,
        masks: masks
            .iter()
            .map(|m| resolve_in(root, m).map_err(|e| format!("\"mask\": {e}")))
            .collect::<Result<_, _>>()?,
        notes,
        op,
        scene,
    })
}
