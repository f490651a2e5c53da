//! Benchmark loaders: CIEBench, SmartEdit's Reason-Edit reasoning set and a generic JSONL
//! manifest, all turned into [`Sample`]s.
//!
//! Loading a dataset reads only its index (JSON, text lines, file names); the images and
//! masks of a sample are decoded by [`Sample::load`] when the runner reaches it, so a bad file
//! fails that sample alone. Every path a dataset names is confined to the dataset folder
//! ([`resolve_in`]): absolute paths and `..` escapes are per-sample errors.

pub mod ciebench;
pub mod manifest;
pub mod reason_edit;

use std::path::{Component, Path, PathBuf};

use cielr_core::io::{load_gray, load_rgb};
use cielr_core::{EditOp, Mask};
use image::{GrayImage, RgbImage};
use serde::Serialize;

use crate::error::{EvalError, EvalResult};
use crate::prepare::resize_nearest;

pub use ciebench::load_ciebench;
pub use manifest::load_manifest;
pub use reason_edit::load_reason_edit;

/// Threshold at which greyscale benchmark masks are binarised (JPEG noise lies below it).
pub const MASK_THRESHOLD: u8 = 128;

/// One benchmark sample, as the dataset's index describes it (files not read yet).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// The sample id, unique within the dataset.
    pub id: String,
    /// The input image (inside the dataset folder).
    pub image: PathBuf,
    /// The editing instruction.
    pub instruction: String,
    /// The target texts for CLIPScore (CIEBench's `"CLIP"` list); the first is scored.
    pub target_texts: Vec<String>,
    /// The ground-truth masks of the edit region (their union is the region).
    pub masks: Vec<PathBuf>,
    /// Free-text notes from the dataset (CIEBench's `"notes"` / `"note"`).
    pub notes: Option<String>,
    /// The edit kind when the dataset states it (manifest `"op"`); used by the `edit` stage.
    pub op: Option<EditOp>,
    /// A per-sample SSR file (manifest `"scene"`), used instead of the scene builder.
    pub scene: Option<PathBuf>,
}

impl Sample {
    /// The text CLIPScore compares against: the first target text.
    pub fn target_text(&self) -> Option<&str> {
        self.target_texts.first().map(String::as_str)
    }

    /// Decodes the image and masks: the format comes from the bytes (CIEBench's `.png`
    /// files hold JPEG), several masks are merged (pixel maximum), a mask whose size
    /// differs from the image is resized to it (nearest, recorded in `warnings`) and the
    /// greyscale mask is binarised at [`MASK_THRESHOLD`].
    pub fn load(&self) -> EvalResult<LoadedSample> {
        let image = load_rgb(&self.image)
            .map_err(|e| EvalError::sample(&self.id, format!("cannot read the image: {e}")))?;
        let (w, h) = image.dimensions();
        let mut warnings = Vec::new();
        let mut gray: Option<GrayImage> = None;
        for path in &self.masks {
            let mut m = load_gray(path)
                .map_err(|e| EvalError::sample(&self.id, format!("cannot read the mask: {e}")))?;
            if m.dimensions() != (w, h) {
                warnings.push(format!(
                    "mask {} is {}x{} but the image is {w}x{h}: resized to the image (nearest)",
                    path.display(),
                    m.width(),
                    m.height()
                ));
                m = resize_nearest(&m, w, h).map_err(|e| {
                    EvalError::sample(&self.id, format!("mask {}: {e}", path.display()))
                })?;
            }
            gray = Some(match gray {
                None => m,
                Some(mut acc) => {
                    for (a, b) in acc.pixels_mut().zip(m.pixels()) {
                        a.0[0] = a.0[0].max(b.0[0]);
                    }
                    acc
                }
            });
        }
        let mask = match &gray {
            Some(g) => {
                let m = Mask::from_gray(g, MASK_THRESHOLD)?;
                if m.is_empty() {
                    warnings.push(format!(
                        "the mask has no pixel >= {MASK_THRESHOLD}: the edit region is empty"
                    ));
                }
                Some(m)
            }
            None => None,
        };
        Ok(LoadedSample {
            image,
            mask_gray: gray,
            mask,
            warnings,
        })
    }
}

/// A sample's decoded files.
#[derive(Debug, Clone)]
pub struct LoadedSample {
    /// The input image.
    pub image: RgbImage,
    /// The ground-truth mask as stored (greyscale, resized to the image): the protocol's
    /// `w = 1 - mask / 255` uses it unthresholded. `None` when the sample has no mask.
    pub mask_gray: Option<GrayImage>,
    /// The ground-truth mask binarised at [`MASK_THRESHOLD`] (grounding IoU, oracle region).
    pub mask: Option<Mask>,
    /// What was repaired while loading (a resized mask, an empty mask).
    pub warnings: Vec<String>,
}

/// An index entry that could not be turned into a [`Sample`]; it counts as a failed sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BadEntry {
    /// The sample id (or a position such as `line 7` when the entry has none).
    pub id: String,
    /// What is wrong.
    pub error: String,
}

/// The protocol settings a dataset is scored with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Protocol {
    /// Side of the square the protocol resizes to (512 CIEBench, 256 Reason-Edit); `None`
    /// scores at the original size.
    pub size: Option<u32>,
    /// The CLIP model the protocol's CLIPScore uses.
    pub clip_model: Option<String>,
    /// The metric the authors pick the best of N samples by.
    pub best_by: String,
}

/// A loaded dataset index.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The dataset's name in reports ("ciebench", "reason-edit", or the manifest's name).
    pub name: String,
    /// The folder every sample path is confined to.
    pub root: PathBuf,
    /// The scoring protocol.
    pub protocol: Protocol,
    /// Samples in dataset order; entries that could not be read are `Err`.
    pub entries: Vec<Result<Sample, BadEntry>>,
}

impl Dataset {
    /// The id of entry `i`.
    pub fn id(&self, i: usize) -> &str {
        match &self.entries[i] {
            Ok(s) => &s.id,
            Err(b) => &b.id,
        }
    }

    /// Marks every entry after the first with the same id as bad.
    pub(crate) fn reject_duplicate_ids(&mut self) {
        let mut seen = std::collections::HashSet::new();
        for e in &mut self.entries {
            let id = match e {
                Ok(s) => s.id.clone(),
                Err(b) => b.id.clone(),
            };
            if !seen.insert(id.clone()) {
                *e = Err(BadEntry {
                    error: format!(
                        "the id {id:?} is used by an earlier sample; ids must be unique"
                    ),
                    id: format!("{id}#dup{}", seen.len()),
                });
            }
        }
    }
}

/// Resolves `relative` inside `root`: absolute paths, drive prefixes and `..` components are
/// rejected, and an existing path that resolves (through symlinks) outside `root` is too.
pub fn resolve_in(root: &Path, relative: &str) -> Result<PathBuf, String> {
    let rel = relative.trim();
    if rel.is_empty() {
        return Err("the path is empty".into());
    }
    let p = Path::new(rel);
    for c in p.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!(
                    "the path {rel:?} uses `..`; paths must stay inside the dataset folder {}",
                    root.display()
                ))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "the path {rel:?} is absolute; give it relative to the dataset folder {}",
                    root.display()
                ))
            }
        }
    }
    let full = root.join(p);
    if let (Ok(r), Ok(f)) = (root.canonicalize(), full.canonicalize()) {
        if !f.starts_with(&r) {
            return Err(format!(
                "the path {rel:?} resolves to {}, outside the dataset folder {}",
                f.display(),
                r.display()
            ));
        }
    }
    Ok(full)
}

/// Orders ids numerically when they all are numbers, else as strings.
pub(crate) fn sort_ids(ids: &mut [String]) {
    if ids.iter().all(|i| i.parse::<u64>().is_ok()) {
        ids.sort_by_key(|i| i.parse::<u64>().unwrap_or(u64::MAX));
    } else {
        ids.sort();
    }
}

/// Reads a JSON value that may be one string or a list of strings.
pub(crate) fn string_list(v: &serde_json::Value, field: &str) -> Result<Vec<String>, String> {
    match v {
        serde_json::Value::String(s) => Ok(vec![s.clone()]),
        serde_json::Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("{field:?} must hold strings, found {i}"))
            })
            .collect(),
        other => Err(format!(
            "{field:?} must be a string or a list of strings, found {other}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_root() {
        let root = Path::new("/data/bench");
        assert_eq!(
            resolve_in(root, "1/1.png").unwrap(),
            PathBuf::from("/data/bench/1/1.png")
        );
        assert!(resolve_in(root, "/etc/passwd")
            .unwrap_err()
            .contains("absolute"));
        assert!(resolve_in(root, "1/../../x.png")
            .unwrap_err()
            .contains(".."));
        assert!(resolve_in(root, "  ").unwrap_err().contains("empty"));
        let mut ids: Vec<String> = ["10", "2", "1"].map(String::from).to_vec();
        sort_ids(&mut ids);
        assert_eq!(ids, ["1", "2", "10"]);
    }
}
