//! CIEBench: `benchmark.json` maps each sample id to
//! `{"image path": "N/N.png", "instruction": "...", "mask path": ["N/N_mask.png"],
//! "CLIP": ["lamp"]}`, sometimes with a free-text `"notes"` or `"note"`.
//!
//! The files' quirks are handled by [`Sample::load`]: JPEG bytes in `.png` files, noisy
//! greyscale JPEG masks (binarised at 128) and a mask whose size differs from its image
//! (resized, with a warning). Ids are ordered numerically.

use std::path::Path;

use serde_json::Value;

use super::{resolve_in, sort_ids, string_list, BadEntry, Dataset, Protocol, Sample};
use crate::error::{EvalError, EvalResult};

/// The protocol's resize side for CIEBench.
pub const CIEBENCH_SIZE: u32 = 512;

/// Reads `DIR/benchmark.json`. A missing or malformed index fails the whole dataset; a bad
/// entry (missing field, path outside the folder) becomes a [`BadEntry`].
pub fn load_ciebench(dir: &Path) -> EvalResult<Dataset> {
    let index = dir.join("benchmark.json");
    if !dir.is_dir() {
        return Err(EvalError::dataset(
            dir,
            "not a folder; give the CIEBench folder that holds benchmark.json",
        ));
    }
    let text = std::fs::read_to_string(&index).map_err(|e| {
        EvalError::dataset(
            &index,
            format!("{e}; the CIEBench folder must hold benchmark.json next to the sample folders"),
        )
    })?;
    let root: Value = serde_json::from_str(&text)
        .map_err(|e| EvalError::dataset(&index, format!("not valid JSON: {e}")))?;
    let Value::Object(map) = root else {
        return Err(EvalError::dataset(
            &index,
            "expected a JSON object mapping sample ids to entries",
        ));
    };
    let mut ids: Vec<String> = map.keys().cloned().collect();
    sort_ids(&mut ids);
    let entries = ids
        .into_iter()
        .map(|id| {
            entry(dir, &id, &map[&id]).map_err(|error| BadEntry {
                id: id.clone(),
                error,
            })
        })
        .collect();
    let mut ds = Dataset {
        name: "ciebench".into(),
        root: dir.to_path_buf(),
        protocol: Protocol {
            size: Some(CIEBENCH_SIZE),
            clip_model: Some("openai/clip-vit-large-patch14-336".into()),
            best_by: "idcs".into(),
        },
        entries,
    };
    ds.reject_duplicate_ids();
    Ok(ds)
}

fn field<'a>(v: &'a Value, name: &str) -> Result<&'a Value, String> {
    v.get(name)
        .ok_or_else(|| format!("the entry has no {name:?} field"))
}

fn entry(dir: &Path, id: &str, v: &Value) -> Result<Sample, String> {
    if !v.is_object() {
        return Err(format!("the entry is not a JSON object: {v}"));
    }
    let image_rel = field(v, "image path")?
        .as_str()
        .ok_or("\"image path\" must be a string")?;
    let instruction = field(v, "instruction")?
        .as_str()
        .ok_or("\"instruction\" must be a string")?
        .trim()
        .to_string();
    if instruction.is_empty() {
        return Err("the instruction is empty".into());
    }
    let masks = string_list(field(v, "mask path")?, "mask path")?;
    if masks.is_empty() {
        return Err("\"mask path\" lists no mask".into());
    }
    let target_texts = match v.get("CLIP") {
        Some(c) => string_list(c, "CLIP")?,
        None => Vec::new(),
    };
    let notes: Vec<String> = ["notes", "note"]
        .iter()
        .filter_map(|k| v.get(*k))
        .map(|n| match n {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    Ok(Sample {
        id: id.to_string(),
        image: resolve_in(dir, image_rel).map_err(|e| format!("\"image path\": {e}"))?,
        instruction,
        target_texts,
        masks: masks
            .iter()
            .map(|m| resolve_in(dir, m).map_err(|e| format!("\"mask path\": {e}")))
            .collect::<Result<_, _>>()?,
        notes: (!notes.is_empty()).then(|| notes.join(" | ")),
        op: None,
        scene: None,
    })
}
