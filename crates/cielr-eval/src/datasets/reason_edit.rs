//! SmartEdit's Reason-Edit reasoning set: `*.png` inputs, `*_mask.jpg` masks and
//! `Reason_test.txt` with one line per sample, `<instruction> CLIP: <target text>`.
//!
//! Pairing (documented in docs/evaluation.md): the inputs are the `.png` files whose stem
//! does not end in `_mask`; each input's mask is `<stem>_mask.jpg` (or `.jpeg` / `.png`).
//! The inputs are put in natural order (numeric stems by value, before other stems, which
//! sort as text; so `1, 2, ..., 10` or `0, 1, ...`) and the `k`-th non-blank line of
//! `Reason_test.txt` goes with the `k`-th input. Extra lines or images, a line without
//! `CLIP:` and an input without a mask are per-sample errors. The sample id is the stem.

use std::path::{Path, PathBuf};

use super::{resolve_in, BadEntry, Dataset, Protocol, Sample};
use crate::error::{EvalError, EvalResult};

/// The protocol's resize side for Reason-Edit.
pub const REASON_EDIT_SIZE: u32 = 256;

/// The index file name.
pub const REASON_EDIT_INDEX: &str = "Reason_test.txt";

/// Splits `<instruction> CLIP: <target>` at the last `CLIP:`.
pub fn parse_line(line: &str) -> Result<(String, String), String> {
    let Some(at) = line.rfind("CLIP:") else {
        return Err(format!(
            "the line has no `CLIP:` part (expected `<instruction> CLIP: <target>`): {line:?}"
        ));
    };
    let instruction = line[..at].trim().to_string();
    let target = line[at + "CLIP:".len()..].trim().to_string();
    if instruction.is_empty() {
        return Err(format!("the instruction before `CLIP:` is empty: {line:?}"));
    }
    Ok((instruction, target))
}

fn natural_key(stem: &str) -> (u8, u64, String) {
    match stem.parse::<u64>() {
        Ok(n) => (0, n, String::new()),
        Err(_) => (1, 0, stem.to_string()),
    }
}

/// Reads `DIR/Reason_test.txt` and pairs its lines with `DIR/*.png` and their masks.
pub fn load_reason_edit(dir: &Path) -> EvalResult<Dataset> {
    let index = dir.join(REASON_EDIT_INDEX);
    let text = std::fs::read_to_string(&index).map_err(|e| {
        EvalError::dataset(
            &index,
            format!("{e}; the Reason-Edit folder must hold {REASON_EDIT_INDEX} beside the images"),
        )
    })?;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty())
        .collect();
    let listing = std::fs::read_dir(dir).map_err(|e| EvalError::io(dir, e))?;
    let mut files: Vec<String> = Vec::new();
    for entry in listing {
        let entry = entry.map_err(|e| EvalError::io(dir, e))?;
        if let Some(name) = entry.file_name().to_str() {
            files.push(name.to_string());
        }
    }
    let mut stems: Vec<String> = files
        .iter()
        .filter_map(|f| f.strip_suffix(".png"))
        .filter(|s| !s.ends_with("_mask"))
        .map(str::to_string)
        .collect();
    stems.sort_by_key(|s| natural_key(s));

    let n = lines.len();
    let mut entries = Vec::new();
    for k in 0..n.max(stems.len()) {
        let line = lines.get(k);
        let stem = stems.get(k);
        let entry = match (line, stem) {
            (Some((lineno, l)), Some(stem)) => {
                sample(dir, stem, l, &files).map_err(|error| BadEntry {
                    id: stem.clone(),
                    error: format!("{REASON_EDIT_INDEX} line {lineno}: {error}"),
                })
            }
            (Some((lineno, _)), None) => Err(BadEntry {
                id: format!("line {lineno}"),
                error: format!(
                    "{REASON_EDIT_INDEX} has {n} instructions but the folder has {} input images; line {lineno} has no image",
                    stems.len()
                ),
            }),
            (None, Some(stem)) => Err(BadEntry {
                id: stem.clone(),
                error: format!(
                    "the folder has {} input images but {REASON_EDIT_INDEX} has {n} instructions; {stem}.png has no line",
                    stems.len()
                ),
            }),
            (None, None) => continue,
        };
        entries.push(entry);
    }
    let mut ds = Dataset {
        name: "reason-edit".into(),
        root: dir.to_path_buf(),
        protocol: Protocol {
            size: Some(REASON_EDIT_SIZE),
            clip_model: Some("openai/clip-vit-large-patch14".into()),
            best_by: "clip".into(),
        },
        entries,
    };
    ds.reject_duplicate_ids();
    Ok(ds)
}

fn sample(dir: &Path, stem: &str, line: &str, files: &[String]) -> Result<Sample, String> {
    let (instruction, target) = parse_line(line)?;
    let mask_name = ["_mask.jpg", "_mask.jpeg", "_mask.png"]
        .iter()
        .map(|suffix| format!("{stem}{suffix}"))
        .find(|name| files.contains(name))
        .ok_or_else(|| format!("{stem}.png has no mask ({stem}_mask.jpg is missing)"))?;
    let image: PathBuf = resolve_in(dir, &format!("{stem}.png"))?;
    Ok(Sample {
        id: stem.to_string(),
        image,
        instruction,
        target_texts: if target.is_empty() {
            Vec::new()
        } else {
            vec![target]
        },
        masks: vec![resolve_in(dir, &mask_name)?],
        notes: None,
        op: None,
        scene: None,
    })
}
