//! The evaluation runner: runs a stage of the method over a dataset, one sample at a time,
//! appending each sample's result to `OUT/samples.jsonl` as soon as it is known (flushed
//! and synced: a crash loses nothing), resuming where an earlier run stopped, splitting
//! work into shards, drawing N samples per image, and finally writing the reports
//! ([`crate::report`]). Behaviour is documented in docs/evaluation.md.
//!
//! Stages:
//! - `ssr`: build the SSR only; scores `ssr_objects` and `ssr_best_iou` (the best IoU any
//!   SSR object reaches with the benchmark's mask: whether the target can be chosen at all).
//! - `plan`: SSR and reasoning; the chosen region (the union of the plan's target regions,
//!   not dilated) is scored against the benchmark's mask: `grounding_iou`, `grounding_hit50`.
//! - `edit`: no SSR, no reasoning: the benchmark's mask (dilated like the pipeline's) is the
//!   edit region and the action comes from the sample's `op` or keywords of the instruction
//!   ([`oracle_action`]); scores the image metrics.
//! - `full`: the whole pipeline; grounding and image metrics.
//!
//! `--oracle-masks` for `plan` / `full`: the SSR object that overlaps the benchmark's mask
//! most gets that mask as its region (a perfect segmentation of the target); reasoning
//! must still choose it. The `edit` stage always edits inside the benchmark's mask.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use cielr_core::imageops::paste_inside;
use cielr_core::pipeline::{plan, PlanningOutput, ProgressEvent, Refiner};
use cielr_core::{
    EditAction, EditOp, EditRequest, Editor, Mask, Metric, MetricInput, Pipeline, PipelineOptions,
    Planner, Scene, SceneBuilder, StaticSceneBuilder,
};
use image::{GrayImage, RgbImage};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::clip_score::{protocol_crop, ClipScorer};
use crate::datasets::{Dataset, LoadedSample, Sample};
use crate::error::{EvalError, EvalResult};
use crate::idcs::IdcsJudge;
use crate::lpips::{lpips_scores, LpipsSqueeze};
use crate::prepare::protocol_scores;
use crate::report;
use cielr_core::backend::CpuBackend;

/// Which part of the method a run exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The SSR only.
    Ssr,
    /// SSR and reasoning (grounding).
    Plan,
    /// Editing inside the benchmark's mask.
    Edit,
    /// The whole pipeline.
    Full,
}

impl Stage {
    /// The lower-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Stage::Ssr => "ssr",
            Stage::Plan => "plan",
            Stage::Edit => "edit",
            Stage::Full => "full",
        }
    }

    /// Whether the stage produces an edited image.
    pub fn edits(&self) -> bool {
        matches!(self, Stage::Edit | Stage::Full)
    }

    /// Whether the stage chooses a region by reasoning.
    pub fn grounds(&self) -> bool {
        matches!(self, Stage::Plan | Stage::Full)
    }
}

impl std::str::FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ssr" => Ok(Stage::Ssr),
            "plan" => Ok(Stage::Plan),
            "edit" => Ok(Stage::Edit),
            "full" => Ok(Stage::Full),
            other => Err(format!(
                "unknown stage {other:?}: use ssr, plan, edit or full"
            )),
        }
    }
}

/// One shard of `count`: the samples whose index `k` (0-based, in dataset order after
/// `--limit`) satisfies `k % count == index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// This shard, `0..count`.
    pub index: usize,
    /// How many shards.
    pub count: usize,
}

impl Shard {
    /// Parses `i/n` with `0 <= i < n`.
    pub fn parse(s: &str) -> Result<Shard, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("--shard {s:?}: expected i/n, e.g. 0/4"))?;
        let index: usize = i
            .trim()
            .parse()
            .map_err(|_| format!("--shard {s:?}: {i:?} is not a number"))?;
        let count: usize = n
            .trim()
            .parse()
            .map_err(|_| format!("--shard {s:?}: {n:?} is not a number"))?;
        if count == 0 || index >= count {
            return Err(format!(
                "--shard {s:?}: need 0 <= i < n (shards are numbered from 0, like Slurm array and Kubernetes indexed-job indices)"
            ));
        }
        Ok(Shard { index, count })
    }

    /// Whether sample index `k` belongs to this shard (never, for a malformed shard of 0;
    /// the fields are public and the type is deserialisable, so [`Shard::parse`]'s check may
    /// not have run).
    pub fn contains(&self, k: usize) -> bool {
        k.checked_rem(self.count) == Some(self.index)
    }
}

/// What a [`SampleMetric`] sees.
#[derive(Debug, Clone, Copy)]
pub struct SampleMetricInput<'a> {
    /// The input image.
    pub original: &'a RgbImage,
    /// The edited image.
    pub edited: &'a RgbImage,
    /// The benchmark's mask as stored (greyscale, image size), for the protocol's weights.
    pub mask_gray: Option<&'a GrayImage>,
    /// The benchmark's mask binarised.
    pub mask: Option<&'a Mask>,
    /// The target text.
    pub text: Option<&'a str>,
    /// The protocol's resize side.
    pub size: Option<u32>,
}

/// A metric computed on each edited image; one metric may report several numbers.
pub trait SampleMetric: Send + Sync {
    /// The names of the numbers it reports.
    fn names(&self) -> Vec<String>;
    /// Whether larger is better for `name`.
    fn higher_is_better(&self, name: &str) -> bool;
    /// Computes the numbers (a name may be left out when it cannot be computed here).
    fn compute(&self, input: &SampleMetricInput<'_>) -> EvalResult<BTreeMap<String, f64>>;
}

/// The protocol's preservation metrics and their clean variants ([`protocol_scores`]):
/// `psnr`, `ssim`, `mse`, `psnr_clean`, `ssim_clean`, `mse_clean`. Needs the mask.
#[derive(Debug, Clone, Copy, Default)]
pub struct PreservationMetrics;

impl SampleMetric for PreservationMetrics {
    fn names(&self) -> Vec<String> {
        [
            "psnr",
            "ssim",
            "mse",
            "psnr_clean",
            "ssim_clean",
            "mse_clean",
        ]
        .map(String::from)
        .to_vec()
    }
    fn higher_is_better(&self, name: &str) -> bool {
        !name.starts_with("mse")
    }
    fn compute(&self, input: &SampleMetricInput<'_>) -> EvalResult<BTreeMap<String, f64>> {
        let gray = input.mask_gray.ok_or_else(|| {
            EvalError::Config("the preservation metrics need the benchmark's mask".into())
        })?;
        let s = protocol_scores(input.original, input.edited, gray, input.size)?;
        let mut m = BTreeMap::from([
            ("psnr".to_string(), s.psnr),
            ("ssim".to_string(), s.ssim),
            ("mse".to_string(), s.mse),
        ]);
        for (k, v) in [
            ("psnr_clean", s.clean_psnr),
            ("ssim_clean", s.clean_ssim),
            ("mse_clean", s.clean_mse),
        ] {
            if let Some(v) = v {
                m.insert(k.to_string(), v);
            }
        }
        Ok(m)
    }
}

/// LPIPS (SqueezeNet) under the protocol, `lpips` and `lpips_clean`, with the stored
/// greyscale mask (unthresholded, like PSNR/SSIM): see [`crate::lpips`].
pub struct LpipsMetric(pub LpipsSqueeze<CpuBackend>);

impl LpipsMetric {
    /// Loads the weights file (`tools/eval/convert_lpips.py` writes it).
    pub fn from_file(path: &Path) -> EvalResult<Self> {
        Ok(LpipsMetric(LpipsSqueeze::from_file(
            path,
            &Default::default(),
        )?))
    }
}

impl SampleMetric for LpipsMetric {
    fn names(&self) -> Vec<String> {
        vec!["lpips".into(), "lpips_clean".into()]
    }
    fn higher_is_better(&self, _name: &str) -> bool {
        false
    }
    fn compute(&self, input: &SampleMetricInput<'_>) -> EvalResult<BTreeMap<String, f64>> {
        let gray = input
            .mask_gray
            .ok_or_else(|| EvalError::Config("LPIPS needs the benchmark's mask".into()))?;
        let s = lpips_scores(
            &self.0,
            input.original,
            input.edited,
            gray,
            input.size,
            &Default::default(),
        )?;
        let mut m = BTreeMap::from([("lpips".to_string(), s.lpips)]);
        if let Some(c) = s.clean_lpips {
            m.insert("lpips_clean".into(), c);
        }
        Ok(m)
    }
}

/// CLIPScore under the protocol (`clip`): the edited image cropped to the box of the stored
/// mask's non-zero pixels against the sample's target text; see [`crate::clip_score`].
pub struct ClipMetric(pub ClipScorer<CpuBackend>);

impl ClipMetric {
    /// Loads a `CLIPModel` folder (config.json, safetensors, tokenizer.json).
    pub fn from_pretrained(dir: &Path) -> EvalResult<Self> {
        Ok(ClipMetric(ClipScorer::from_pretrained(
            dir,
            &Default::default(),
        )?))
    }
}

impl SampleMetric for ClipMetric {
    fn names(&self) -> Vec<String> {
        vec!["clip".into()]
    }
    fn higher_is_better(&self, _name: &str) -> bool {
        true
    }
    fn compute(&self, input: &SampleMetricInput<'_>) -> EvalResult<BTreeMap<String, f64>> {
        let text = input
            .text
            .ok_or_else(|| EvalError::Config("clip: the sample has no target text".into()))?;
        let crop = protocol_crop(input.edited, input.mask_gray, input.size)?;
        Ok(BTreeMap::from([(
            "clip".to_string(),
            self.0.score(&crop, text)?,
        )]))
    }
}

/// Adapts a `cielr_core::Metric` (LPIPS, CLIPScore, ...) to [`SampleMetric`]: it gets the
/// binarised benchmark mask and the target text.
pub struct CoreMetric(pub Arc<dyn Metric>);

impl SampleMetric for CoreMetric {
    fn names(&self) -> Vec<String> {
        vec![self.0.name()]
    }
    fn higher_is_better(&self, _name: &str) -> bool {
        self.0.higher_is_better()
    }
    fn compute(&self, input: &SampleMetricInput<'_>) -> EvalResult<BTreeMap<String, f64>> {
        let v = self.0.compute(MetricInput {
            original: input.original,
            edited: input.edited,
            mask: input.mask,
            text: input.text,
        })?;
        Ok(BTreeMap::from([(self.0.name(), v)]))
    }
}

/// Whether larger is better for a metric name the runner itself reports, or for an unknown
/// name by convention (`mse*` and `lpips*` are losses).
pub fn default_higher_is_better(name: &str) -> bool {
    !(name.starts_with("mse") || name.starts_with("lpips"))
}

/// The stages' components; a stage fails to start when one it needs is missing.
#[derive(Clone, Default)]
pub struct Components {
    /// Builds the SSR (not needed when every sample names its own SSR file).
    pub scene_builder: Option<Arc<dyn SceneBuilder>>,
    /// Reasons (stages `plan` and `full`).
    pub planner: Option<Arc<dyn Planner>>,
    /// Edits (stages `edit` and `full`).
    pub editor: Option<Arc<dyn Editor>>,
    /// Names for the report (language model, ...), merged with the components' own names.
    pub extra_names: BTreeMap<String, String>,
}

impl Components {
    /// The components' names for the report.
    pub fn names(&self) -> BTreeMap<String, String> {
        let mut n = self.extra_names.clone();
        if let Some(s) = &self.scene_builder {
            n.insert("scene_builder".into(), s.name());
        }
        if let Some(p) = &self.planner {
            n.insert("planner".into(), p.name());
        }
        if let Some(e) = &self.editor {
            n.insert("editor".into(), e.name());
        }
        n
    }
}

/// Settings of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOptions {
    /// The stage.
    pub stage: Stage,
    /// Give the SSR the benchmark's mask for the target (stages `plan` and `full`).
    pub oracle_masks: bool,
    /// Samples drawn per image (run `k` uses seed `seed + k`).
    pub samples: usize,
    /// The first seed.
    pub seed: u64,
    /// The metric the best of N is chosen by (`None`: the dataset protocol's).
    pub best_by: Option<String>,
    /// This process's shard.
    pub shard: Option<Shard>,
    /// Only the first `limit` samples of the dataset (before sharding).
    pub limit: Option<usize>,
    /// Reasoning rounds per step.
    pub max_rounds: usize,
    /// Dilation of edit regions, in pixels (the oracle region too).
    pub dilate: f64,
    /// Labels the scene builder looks for at first.
    pub queries: Vec<String>,
    /// Longest side of the report's thumbnails.
    pub thumbnail: u32,
    /// On resume, run this process's failed samples again (their old lines are dropped).
    pub retry_failed: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            stage: Stage::Full,
            oracle_masks: false,
            samples: 1,
            seed: 0,
            best_by: None,
            shard: None,
            limit: None,
            max_rounds: 2,
            dilate: 7.0,
            queries: Vec::new(),
            thumbnail: 256,
            retry_failed: false,
        }
    }
}

/// What the runner reports while it works.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEvent {
    /// The run starts: samples in this shard, and how many are already done (resume).
    Started {
        /// Samples this process is responsible for.
        total: usize,
        /// Of those, already in samples.jsonl.
        already_done: usize,
    },
    /// A sample starts.
    SampleStarted {
        /// 1-based position among the samples to do now.
        position: usize,
        /// Samples to do now.
        todo: usize,
        /// The sample id.
        id: String,
    },
    /// A pipeline stage reports progress.
    Stage(ProgressEvent),
    /// A sample is done and written.
    SampleDone {
        /// The sample id.
        id: String,
        /// Whether at least one run succeeded.
        ok: bool,
        /// The error of the first failed run, if any.
        error: Option<String>,
    },
}

/// One run (one seed) of one sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The seed.
    pub seed: u64,
    /// `None` when the run succeeded.
    pub error: Option<String>,
    /// The numbers.
    pub metrics: BTreeMap<String, f64>,
    /// Metrics that could not be computed for this run, with the reason.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metric_errors: BTreeMap<String, String>,
    /// The plan with its trace (stages `plan` and `full`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Value>,
    /// The action executed (stage `edit`) and where it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Value>,
    /// Oracle-mask bookkeeping (which SSR object got the benchmark's mask).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oracle: Option<Value>,
    /// The IDCS judge's description and answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<Value>,
    /// The full-size edited image, relative to OUT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// One line of `samples.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    /// The sample id.
    pub id: String,
    /// Position in the dataset (0-based, the shard split uses it).
    pub index: usize,
    /// `"ok"` (at least one run succeeded) or `"failed"`.
    pub status: String,
    /// Why the sample failed (loading, or the first run's error).
    pub error: Option<String>,
    /// The instruction.
    pub instruction: Option<String>,
    /// The scored target text.
    pub target: Option<String>,
    /// The dataset's notes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    /// What was repaired while loading.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The runs, in seed order.
    #[serde(default)]
    pub runs: Vec<RunRecord>,
    /// The first run's numbers (what a user with one sample gets); absent when it failed.
    pub first: Option<BTreeMap<String, f64>>,
    /// The index in `runs` of the best successful run.
    pub best_run: Option<usize>,
    /// The best run's numbers.
    pub best: Option<BTreeMap<String, f64>>,
    /// Why the best run was not chosen by the requested metric (it is then the first
    /// successful run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_note: Option<String>,
    /// Report thumbnails (relative to OUT): input, gt, region, output.
    #[serde(default)]
    pub images: BTreeMap<String, String>,
}

impl SampleRecord {
    /// Whether at least one run succeeded.
    pub fn ok(&self) -> bool {
        self.status == "ok"
    }

    fn failed(id: &str, index: usize, sample: Option<&Sample>, error: String) -> Self {
        SampleRecord {
            id: id.to_string(),
            index,
            status: "failed".into(),
            error: Some(error),
            instruction: sample.map(|s| s.instruction.clone()),
            target: sample.and_then(|s| s.target_text().map(str::to_string)),
            notes: sample.and_then(|s| s.notes.clone()),
            warnings: Vec::new(),
            runs: Vec::new(),
            first: None,
            best_run: None,
            best: None,
            best_note: None,
            images: BTreeMap::new(),
        }
    }
}

/// The settings a run records in `OUT/run.json`; resuming checks they match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The dataset name.
    pub dataset: String,
    /// The stage.
    pub stage: Stage,
    /// Oracle masks on or off.
    pub oracle_masks: bool,
    /// Samples per image.
    pub samples: usize,
    /// First seed.
    pub seed: u64,
    /// The best-of-N metric.
    pub best_by: String,
    /// The protocol's resize side.
    pub size: Option<u32>,
    /// The protocol's CLIP model.
    pub clip_model: Option<String>,
    /// Component names.
    pub components: BTreeMap<String, String>,
    /// Metrics that are not computed in this run, with the reason.
    pub absent: BTreeMap<String, String>,
    /// Whether each reported metric is better when larger.
    pub higher_is_better: BTreeMap<String, bool>,
}

/// What a finished run did.
#[derive(Debug, Clone, PartialEq)]
pub struct RunStats {
    /// Samples this process was responsible for.
    pub total: usize,
    /// Of those, found already done in samples.jsonl.
    pub skipped: usize,
    /// Samples run now.
    pub ran: usize,
    /// Of those, failed.
    pub failed: usize,
}

/// The runner: components, the metrics to compute and the options.
pub struct Runner {
    /// The stages' components.
    pub components: Components,
    /// Image metrics computed on each edited image.
    pub metrics: Vec<Arc<dyn SampleMetric>>,
    /// Metrics the caller could not set up (LPIPS without weights, IDCS without a VLM), by
    /// name, with the reason; they are absent from the summary and the reason is reported.
    pub absent: BTreeMap<String, String>,
    /// The IDCS judge, when a describer and a scorer are configured.
    pub idcs: Option<Arc<IdcsJudge>>,
    /// The options.
    pub options: RunOptions,
}

/// A progress callback.
pub type RunProgress<'a> = &'a (dyn Fn(RunEvent) + Sync);

/// The file names in OUT.
pub const SAMPLES_FILE: &str = "samples.jsonl";
/// The run settings file in OUT.
pub const RUN_FILE: &str = "run.json";

/// Turns an id into a file-name-safe stem (other characters become `_`; a short hash keeps
/// distinct ids distinct).
pub fn safe_stem(id: &str) -> String {
    let clean: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if clean == id {
        return clean;
    }
    // FNV-1a, stable across runs and platforms.
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    format!("{clean}-{h:08x}")
}

/// The action the `edit` stage executes in the benchmark's mask: the sample's `op` when it
/// has one, else the first keyword group found in the instruction (remove: remove, delete,
/// erase, get rid of, take away; recolor: colour, color, paint; add: add, put, place,
/// insert; otherwise replace). The prompt is the target text (for removal: "remove").
/// Returns the action and where its op came from.
pub fn oracle_action(sample: &Sample) -> (EditAction, &'static str) {
    let text = sample.instruction.to_ascii_lowercase();
    let words: Vec<&str> = text
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| !w.is_empty())
        .collect();
    let has = |ws: &[&str]| ws.iter().any(|w| words.contains(w));
    let (op, source) = match sample.op {
        Some(op) => (op, "sample op"),
        None => {
            let op = if has(&["remove", "delete", "erase", "eliminate"])
                || text.contains("get rid of")
                || text.contains("take away")
            {
                EditOp::Remove
            } else if has(&["replace", "swap", "change"]) {
                EditOp::Replace
            } else if has(&["colour", "color", "paint", "recolor", "recolour"]) {
                EditOp::Recolor
            } else if has(&["add", "put", "place", "insert"]) {
                EditOp::Add
            } else {
                EditOp::Replace
            };
            (op, "instruction keywords")
        }
    };
    let prompt = match (op, sample.target_text()) {
        (EditOp::Remove, _) | (_, None) => "remove".to_string(),
        (_, Some(t)) => t.to_string(),
    };
    (
        EditAction {
            op,
            // The oracle region is not an SSR object; 0 stands for it.
            targets: vec![0],
            prompt,
        },
        source,
    )
}

/// Gives the SSR object that overlaps `gt` most the mask `gt` (resized to the SSR); returns
/// what was done, for the record.
pub fn snap_oracle(scene: &mut Scene, gt: &Mask) -> EvalResult<Value> {
    let (w, h) = (scene.width, scene.height);
    let gt_scene = if (gt.width(), gt.height()) == (w, h) {
        gt.clone()
    } else {
        gt.resize_nearest(w, h)?
    };
    let mut best: Option<(usize, f64)> = None;
    for (i, o) in scene.objects.iter().enumerate() {
        let iou = o.region(w, h)?.iou(&gt_scene)?;
        if iou > 0.0 && best.is_none_or(|(_, b)| iou > b) {
            best = Some((i, iou));
        }
    }
    let Some((i, iou)) = best else {
        return Ok(
            json!({"object": null, "note": "no SSR object overlaps the benchmark's mask; the SSR is left as built"}),
        );
    };
    let o = &mut scene.objects[i];
    if let Some(b) = gt_scene.bbox() {
        o.bbox = b;
    }
    o.mask = Some(gt_scene);
    Ok(json!({"object": o.id, "label": o.label, "iou_before": iou}))
}

struct Outcome {
    record: RunRecord,
    edited: Option<RgbImage>,
    region: Option<Mask>,
}

impl Runner {
    fn best_by(&self, dataset: &Dataset) -> String {
        self.options
            .best_by
            .clone()
            .unwrap_or_else(|| dataset.protocol.best_by.clone())
    }

    fn higher_is_better(&self) -> BTreeMap<String, bool> {
        let mut m = BTreeMap::new();
        for name in [
            "grounding_iou",
            "grounding_hit50",
            "ssr_best_iou",
            "idcs",
            "clip",
        ] {
            m.insert(name.to_string(), true);
        }
        for metric in &self.metrics {
            for n in metric.names() {
                m.insert(n.clone(), metric.higher_is_better(&n));
            }
        }
        m
    }

    /// The metrics this run leaves out and why: the caller's `absent` plus what the stage
    /// does not measure.
    fn absent(&self) -> BTreeMap<String, String> {
        let mut a = self.absent.clone();
        let stage = self.options.stage;
        if self.idcs.is_some() {
            a.remove("idcs");
        }
        if !stage.edits() {
            if self.idcs.is_some() {
                a.insert(
                    "idcs".into(),
                    format!("the {} stage does not edit the image", stage.as_str()),
                );
            }
            for m in &self.metrics {
                for n in m.names() {
                    a.insert(
                        n,
                        format!("the {} stage does not edit the image", stage.as_str()),
                    );
                }
            }
        }
        if !stage.grounds() {
            let why = match stage {
                Stage::Edit => {
                    "the edit stage edits inside the benchmark's mask; nothing is chosen"
                }
                _ => "the ssr stage does not reason, so nothing is chosen (see ssr_best_iou)",
            };
            a.insert("grounding_iou".into(), why.into());
        }
        a
    }

    fn check(&self, dataset: &Dataset) -> EvalResult<()> {
        let o = &self.options;
        let c = &self.components;
        let stage = o.stage.as_str();
        if o.samples == 0 {
            return Err(EvalError::Config("--samples must be at least 1".into()));
        }
        if o.max_rounds == 0 {
            return Err(EvalError::Config("--rounds must be at least 1".into()));
        }
        if !(o.dilate.is_finite() && o.dilate >= 0.0) {
            return Err(EvalError::Config(format!(
                "--dilate must be a non-negative number of pixels, got {}",
                o.dilate
            )));
        }
        if o.stage.grounds() && c.planner.is_none() {
            return Err(EvalError::Config(format!(
                "the {stage} stage needs a language model (--llm)"
            )));
        }
        if o.stage.edits() && c.editor.is_none() {
            return Err(EvalError::Config(format!(
                "the {stage} stage needs an editor (--editor)"
            )));
        }
        if o.stage != Stage::Edit && c.scene_builder.is_none() {
            let all_have_ssr = dataset
                .entries
                .iter()
                .all(|e| e.as_ref().map(|s| s.scene.is_some()).unwrap_or(true));
            if !all_have_ssr {
                return Err(EvalError::Config(format!(
                    "the {stage} stage needs a scene builder, or an SSR file for every sample (manifest \"scene\")"
                )));
            }
        }
        Ok(())
    }

    /// Runs the dataset into `out`, then writes the reports. Samples already in
    /// `out/samples.jsonl` are skipped.
    pub async fn run(
        &self,
        dataset: &Dataset,
        out: &Path,
        progress: RunProgress<'_>,
    ) -> EvalResult<RunStats> {
        self.check(dataset)?;
        for d in ["images", "outputs"] {
            std::fs::create_dir_all(out.join(d)).map_err(|e| EvalError::io(out.join(d), e))?;
        }
        let info = RunInfo {
            dataset: dataset.name.clone(),
            stage: self.options.stage,
            oracle_masks: self.options.oracle_masks,
            samples: self.options.samples,
            seed: self.options.seed,
            best_by: self.best_by(dataset),
            size: dataset.protocol.size,
            clip_model: dataset.protocol.clip_model.clone(),
            components: self.components.names(),
            absent: self.absent(),
            higher_is_better: self.higher_is_better(),
        };
        write_run_info(out, &info)?;
        let samples_path = out.join(SAMPLES_FILE);
        let mut existing = read_samples_repairing(&samples_path)?;
        let n = dataset
            .entries
            .len()
            .min(self.options.limit.unwrap_or(usize::MAX));
        let mine: Vec<usize> = (0..n)
            .filter(|&k| self.options.shard.is_none_or(|s| s.contains(k)))
            .collect();
        if self.options.retry_failed {
            let my_ids: HashSet<&str> = mine.iter().map(|&k| dataset.id(k)).collect();
            let before = existing.len();
            existing.retain(|r| r.ok() || !my_ids.contains(r.id.as_str()));
            if existing.len() != before {
                rewrite_samples(&samples_path, &existing)?;
            }
        }
        let done: HashSet<String> = existing.into_iter().map(|r| r.id).collect();
        let todo: Vec<usize> = mine
            .iter()
            .copied()
            .filter(|&k| !done.contains(dataset.id(k)))
            .collect();
        progress(RunEvent::Started {
            total: mine.len(),
            already_done: mine.len() - todo.len(),
        });
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&samples_path)
            .map_err(|e| EvalError::io(&samples_path, e))?;
        let mut failed = 0;
        for (pos, &k) in todo.iter().enumerate() {
            progress(RunEvent::SampleStarted {
                position: pos + 1,
                todo: todo.len(),
                id: dataset.id(k).to_string(),
            });
            let record = match &dataset.entries[k] {
                Err(bad) => SampleRecord::failed(&bad.id, k, None, bad.error.clone()),
                Ok(sample) => self.sample(dataset, sample, k, out, &info, progress).await,
            };
            if !record.ok() {
                failed += 1;
            }
            let mut line = serde_json::to_string(&record)
                .map_err(|e| EvalError::Config(format!("serialising a record: {e}")))?;
            line.push('\n');
            file.write_all(line.as_bytes())
                .and_then(|_| file.flush())
                .and_then(|_| file.sync_data())
                .map_err(|e| EvalError::io(&samples_path, e))?;
            progress(RunEvent::SampleDone {
                id: record.id.clone(),
                ok: record.ok(),
                error: record.error.clone(),
            });
        }
        drop(file);
        report::write_reports(out, &info)?;
        Ok(RunStats {
            total: mine.len(),
            skipped: mine.len() - todo.len(),
            ran: todo.len(),
            failed,
        })
    }

    async fn sample(
        &self,
        dataset: &Dataset,
        sample: &Sample,
        index: usize,
        out: &Path,
        info: &RunInfo,
        progress: RunProgress<'_>,
    ) -> SampleRecord {
        let loaded = match sample.load() {
            Ok(l) => l,
            Err(e) => return SampleRecord::failed(&sample.id, index, Some(sample), e.to_string()),
        };
        if self.options.stage == Stage::Edit && loaded.mask.is_none() {
            return SampleRecord::failed(
                &sample.id,
                index,
                Some(sample),
                "the edit stage edits inside the benchmark's mask, and this sample has none".into(),
            );
        }
        let stem = safe_stem(&sample.id);
        let mut runs = Vec::new();
        let mut kept: Vec<(Option<RgbImage>, Option<Mask>)> = Vec::new();
        for k in 0..self.options.samples {
            let seed = self.options.seed.wrapping_add(k as u64);
            let t = Instant::now();
            let mut outcome = match self
                .run_once(dataset, sample, &loaded, seed, progress)
                .await
            {
                Ok(o) => o,
                Err(e) => Outcome {
                    record: RunRecord {
                        seed,
                        error: Some(e.to_string()),
                        metrics: BTreeMap::new(),
                        metric_errors: BTreeMap::new(),
                        plan: None,
                        action: None,
                        oracle: None,
                        judge: None,
                        output: None,
                        seconds: 0.0,
                    },
                    edited: None,
                    region: None,
                },
            };
            outcome.record.seconds = t.elapsed().as_secs_f64();
            if let Some(img) = &outcome.edited {
                let rel = format!("outputs/{stem}_s{k}.png");
                match cielr_core::io::save_rgb(img, &out.join(&rel)) {
                    Ok(()) => outcome.record.output = Some(rel),
                    Err(e) => {
                        outcome
                            .record
                            .metric_errors
                            .insert("output".into(), e.to_string());
                    }
                }
            }
            runs.push(outcome.record);
            kept.push((outcome.edited, outcome.region));
        }
        let first_ok = runs.iter().position(|r| r.error.is_none());
        let (best_run, best_note) = choose_best(&runs, &info.best_by, &info.higher_is_better);
        let shown = best_run.or(first_ok).unwrap_or(0);
        let images = write_thumbnails(
            out,
            &stem,
            &loaded,
            kept[shown].1.as_ref(),
            kept[shown].0.as_ref(),
            self.options.thumbnail,
        );
        let mut warnings = loaded.warnings.clone();
        if let Err(e) = &images {
            warnings.push(format!("thumbnails: {e}"));
        }
        SampleRecord {
            id: sample.id.clone(),
            index,
            status: if first_ok.is_some() { "ok" } else { "failed" }.into(),
            error: runs.iter().find_map(|r| r.error.clone()),
            instruction: Some(sample.instruction.clone()),
            target: sample.target_text().map(str::to_string),
            notes: sample.notes.clone(),
            warnings,
            first: runs
                .first()
                .filter(|r| r.error.is_none())
                .map(|r| r.metrics.clone()),
            best: best_run.map(|b| runs[b].metrics.clone()),
            best_run,
            best_note,
            runs,
            images: images.unwrap_or_default(),
        }
    }

    fn scene_builder_for(&self, sample: &Sample) -> EvalResult<Arc<dyn SceneBuilder>> {
        if let Some(path) = &sample.scene {
            let scene = Scene::load(path)
                .map_err(|e| EvalError::sample(&sample.id, format!("the sample's SSR: {e}")))?;
            return Ok(Arc::new(StaticSceneBuilder::new(scene)));
        }
        self.components
            .scene_builder
            .clone()
            .ok_or_else(|| EvalError::Config("no scene builder is configured".into()))
    }

    async fn run_once(
        &self,
        dataset: &Dataset,
        sample: &Sample,
        loaded: &LoadedSample,
        seed: u64,
        progress: RunProgress<'_>,
    ) -> EvalResult<Outcome> {
        let stage_progress = |e: ProgressEvent| progress(RunEvent::Stage(e));
        let image = &loaded.image;
        let mut record = RunRecord {
            seed,
            error: None,
            metrics: BTreeMap::new(),
            metric_errors: BTreeMap::new(),
            plan: None,
            action: None,
            oracle: None,
            judge: None,
            output: None,
            seconds: 0.0,
        };
        let mut edited = None;
        let region;
        match self.options.stage {
            Stage::Edit => {
                let gt = loaded
                    .mask
                    .as_ref()
                    .ok_or_else(|| EvalError::sample(&sample.id, "no mask"))?;
                if gt.is_empty() {
                    return Err(EvalError::sample(
                        &sample.id,
                        "the benchmark's mask is empty, so there is no region to edit",
                    ));
                }
                let editor = self.editor()?;
                let (action, source) = oracle_action(sample);
                record.action = Some(json!({"action": action, "source": source}));
                if !editor.supports(action.op) {
                    return Err(EvalError::sample(
                        &sample.id,
                        format!(
                            "the {} editor cannot {} (op from {source}); choose an editor that can",
                            editor.name(),
                            action.op
                        ),
                    ));
                }
                let mask = gt.dilate(self.options.dilate);
                stage_progress(ProgressEvent {
                    stage: "edit",
                    message: format!(
                        "{} {:?} over {} pixels",
                        action.op,
                        action.prompt,
                        mask.area()
                    ),
                });
                let out = editor
                    .edit(EditRequest {
                        image,
                        mask: &mask,
                        action: &action,
                        seed,
                    })
                    .await?;
                edited = Some(paste_inside(image, &out, &mask)?);
                region = Some(mask);
            }
            Stage::Ssr | Stage::Plan | Stage::Full => {
                let builder = self.scene_builder_for(sample)?;
                stage_progress(ProgressEvent {
                    stage: "scene",
                    message: format!("building the SSR with {}", builder.name()),
                });
                let mut scene = builder.build(image, &self.options.queries).await?;
                if self.options.stage != Stage::Ssr && self.options.oracle_masks {
                    if let Some(gt) = &loaded.mask {
                        record.oracle = Some(snap_oracle(&mut scene, gt)?);
                    }
                }
                if self.options.stage == Stage::Ssr {
                    record
                        .metrics
                        .insert("ssr_objects".into(), scene.objects.len() as f64);
                    if let Some(gt) = &loaded.mask {
                        record
                            .metrics
                            .insert("ssr_best_iou".into(), best_object_iou(&scene, gt)?);
                    }
                    return Ok(Outcome {
                        record,
                        edited: None,
                        region: None,
                    });
                }
                let planner = self
                    .components
                    .planner
                    .clone()
                    .ok_or_else(|| EvalError::Config("no planner is configured".into()))?;
                let planned = plan(
                    planner.as_ref(),
                    Refiner::Builder(builder.as_ref(), image),
                    scene,
                    &sample.instruction,
                    self.options.max_rounds,
                    &stage_progress,
                )
                .await?;
                record.plan = serde_json::to_value(&planned.plan).ok();
                let chosen = chosen_region(&planned, image.width(), image.height())?;
                if let Some(gt) = &loaded.mask {
                    let iou = chosen.iou(gt)?;
                    record.metrics.insert("grounding_iou".into(), iou);
                    record
                        .metrics
                        .insert("grounding_hit50".into(), if iou >= 0.5 { 1.0 } else { 0.0 });
                }
                region = Some(chosen);
                if self.options.stage == Stage::Full {
                    let pipeline = Pipeline {
                        scene_builder: builder.clone(),
                        planner,
                        editor: self.editor()?,
                        options: PipelineOptions {
                            max_rounds: self.options.max_rounds,
                            dilate_radius: self.options.dilate,
                            seed,
                            queries: self.options.queries.clone(),
                        },
                    };
                    let (img, _masks) = pipeline.execute(image, &planned, &stage_progress).await?;
                    edited = Some(img);
                }
            }
        }
        if let Some(img) = &edited {
            let input = SampleMetricInput {
                original: image,
                edited: img,
                mask_gray: loaded.mask_gray.as_ref(),
                mask: loaded.mask.as_ref(),
                text: sample.target_text(),
                size: dataset.protocol.size,
            };
            if let Some(judge) = &self.idcs {
                match judge.judge(image, img, &sample.instruction).await {
                    Ok(j) => {
                        record.metrics.insert("idcs".into(), j.score as f64);
                        record.judge = serde_json::to_value(&j).ok();
                    }
                    Err(e) => {
                        record.metric_errors.insert("idcs".into(), e.to_string());
                    }
                }
            }
            for m in &self.metrics {
                match m.compute(&input) {
                    Ok(values) => record.metrics.extend(values),
                    Err(e) => {
                        for n in m.names() {
                            record.metric_errors.insert(n, e.to_string());
                        }
                    }
                }
            }
        }
        let infinite: Vec<String> = record
            .metrics
            .iter()
            .filter(|(_, v)| !v.is_finite())
            .map(|(k, _)| k.clone())
            .collect();
        for k in infinite {
            if let Some(v) = record.metrics.remove(&k) {
                record.metric_errors.insert(
                    k,
                    format!("{v} (not finite: the compared pixels are identical); left out of the means"),
                );
            }
        }
        Ok(Outcome {
            record,
            edited,
            region,
        })
    }

    fn editor(&self) -> EvalResult<Arc<dyn Editor>> {
        self.components
            .editor
            .clone()
            .ok_or_else(|| EvalError::Config("no editor is configured".into()))
    }
}

/// The union of the plan's target regions (not dilated), at `width x height`.
pub fn chosen_region(planned: &PlanningOutput, width: u32, height: u32) -> EvalResult<Mask> {
    let mut region = Mask::new(width, height)?;
    for (i, step) in planned.plan.steps.iter().enumerate() {
        // The fields are public: a step without an SSR is an error, not an index panic.
        let scene = planned
            .scene_of_step
            .get(i)
            .and_then(|&k| planned.scenes.get(k))
            .ok_or_else(|| {
                EvalError::Config(format!(
                    "plan step {i} has no SSR ({} scene indices for {} steps, {} SSRs)",
                    planned.scene_of_step.len(),
                    planned.plan.steps.len(),
                    planned.scenes.len()
                ))
            })?;
        let mut m = scene.union_region(&step.targets)?;
        if (m.width(), m.height()) != (width, height) {
            m = m.resize_nearest(width, height)?;
        }
        region = region.union(&m)?;
    }
    Ok(region)
}

/// The best IoU any SSR object's region reaches with `gt`.
pub fn best_object_iou(scene: &Scene, gt: &Mask) -> EvalResult<f64> {
    let mut best: f64 = 0.0;
    for o in &scene.objects {
        let r = o.region(gt.width(), gt.height())?;
        best = best.max(r.iou(gt)?);
    }
    Ok(best)
}

/// Picks the best successful run by `by`; falls back to the first successful run (with a
/// note) when no successful run has that metric.
pub fn choose_best(
    runs: &[RunRecord],
    by: &str,
    higher: &BTreeMap<String, bool>,
) -> (Option<usize>, Option<String>) {
    let up = higher
        .get(by)
        .copied()
        .unwrap_or_else(|| default_higher_is_better(by));
    let mut best: Option<(usize, f64)> = None;
    for (i, r) in runs.iter().enumerate() {
        if r.error.is_some() {
            continue;
        }
        let Some(&v) = r.metrics.get(by) else {
            continue;
        };
        if v.is_nan() {
            continue;
        }
        let better = match best {
            None => true,
            Some((_, b)) => {
                if up {
                    v > b
                } else {
                    v < b
                }
            }
        };
        if better {
            best = Some((i, v));
        }
    }
    match best {
        Some((i, _)) => (Some(i), None),
        None => {
            let first = runs.iter().position(|r| r.error.is_none());
            let note = first.map(|_| {
                format!("no successful run has {by:?}; the first successful run stands in")
            });
            (first, note)
        }
    }
}

fn thumb(image: &RgbImage, side: u32) -> RgbImage {
    let (w, h) = image.dimensions();
    let scale = (side as f64 / w.max(h) as f64).min(1.0);
    let (tw, th) = (
        ((w as f64 * scale).round() as u32).max(1),
        ((h as f64 * scale).round() as u32).max(1),
    );
    if (tw, th) == (w, h) {
        image.clone()
    } else {
        image::imageops::resize(image, tw, th, image::imageops::FilterType::Triangle)
    }
}

fn tint(image: &RgbImage, mask: &Mask, colour: [u8; 3]) -> RgbImage {
    let mut out = image.clone();
    if (mask.width(), mask.height()) == image.dimensions() {
        for (x, y, p) in out.enumerate_pixels_mut() {
            if mask.get(x, y) {
                for (v, c) in p.0.iter_mut().zip(colour) {
                    *v = ((*v as u16 + c as u16) / 2) as u8;
                }
            }
        }
    }
    out
}

fn write_thumbnails(
    out: &Path,
    stem: &str,
    loaded: &LoadedSample,
    region: Option<&Mask>,
    edited: Option<&RgbImage>,
    side: u32,
) -> EvalResult<BTreeMap<String, String>> {
    let mut images = BTreeMap::new();
    let mut save = |name: &str, img: &RgbImage| -> EvalResult<()> {
        let rel = format!("images/{stem}_{name}.png");
        cielr_core::io::save_rgb(&thumb(img, side), &out.join(&rel))?;
        images.insert(name.to_string(), rel);
        Ok(())
    };
    save("input", &loaded.image)?;
    if let Some(gt) = &loaded.mask {
        save("gt", &tint(&loaded.image, gt, [0, 200, 0]))?;
    }
    if let Some(r) = region {
        save("region", &tint(&loaded.image, r, [230, 0, 0]))?;
    }
    if let Some(e) = edited {
        save("output", e)?;
    }
    Ok(images)
}

/// Writes `OUT/run.json`; when one exists from an earlier run with other settings, fails
/// with what differs.
pub fn write_run_info(out: &Path, info: &RunInfo) -> EvalResult<()> {
    let path = out.join(RUN_FILE);
    if path.exists() && out.join(SAMPLES_FILE).exists() {
        let text = std::fs::read_to_string(&path).map_err(|e| EvalError::io(&path, e))?;
        let old: RunInfo = serde_json::from_str(&text).map_err(|e| EvalError::Report {
            path: path.clone(),
            message: format!("not a run file: {e}"),
        })?;
        let mut diffs = Vec::new();
        if old.dataset != info.dataset {
            diffs.push(format!("dataset {} vs {}", old.dataset, info.dataset));
        }
        if old.stage != info.stage {
            diffs.push(format!(
                "stage {} vs {}",
                old.stage.as_str(),
                info.stage.as_str()
            ));
        }
        if old.oracle_masks != info.oracle_masks {
            diffs.push(format!(
                "oracle masks {} vs {}",
                old.oracle_masks, info.oracle_masks
            ));
        }
        if old.samples != info.samples || old.seed != info.seed {
            diffs.push(format!(
                "samples/seed {}/{} vs {}/{}",
                old.samples, old.seed, info.samples, info.seed
            ));
        }
        if old.best_by != info.best_by {
            diffs.push(format!("best-by {} vs {}", old.best_by, info.best_by));
        }
        if old.components != info.components {
            diffs.push(format!(
                "components {:?} vs {:?}",
                old.components, info.components
            ));
        }
        if !diffs.is_empty() {
            return Err(EvalError::Config(format!(
                "{} holds a run with other settings ({}); resume with the same settings, or use another --out",
                out.display(),
                diffs.join("; ")
            )));
        }
    }
    let text = serde_json::to_string_pretty(info)
        .map_err(|e| EvalError::Config(format!("serialising run.json: {e}")))?;
    std::fs::write(&path, text).map_err(|e| EvalError::io(&path, e))
}

/// Reads `samples.jsonl`; a damaged last line (a crash mid-write) is cut off the file so
/// appends continue cleanly. A damaged line elsewhere is an error naming it.
pub fn read_samples_repairing(path: &Path) -> EvalResult<Vec<SampleRecord>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let (records, good_len, damaged_tail) = parse_samples(path)?;
    if damaged_tail {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| EvalError::io(path, e))?;
        f.set_len(good_len).map_err(|e| EvalError::io(path, e))?;
        f.sync_data().map_err(|e| EvalError::io(path, e))?;
    }
    Ok(records)
}

/// Replaces `samples.jsonl` with `records` (written beside it, synced, then renamed over it,
/// so a crash leaves the old or the new file).
pub fn rewrite_samples(path: &Path, records: &[SampleRecord]) -> EvalResult<()> {
    let tmp = path.with_extension("jsonl.tmp");
    let mut text = String::new();
    for r in records {
        let line = serde_json::to_string(r)
            .map_err(|e| EvalError::Config(format!("serialising a record: {e}")))?;
        text.push_str(&line);
        text.push('\n');
    }
    let mut f = std::fs::File::create(&tmp).map_err(|e| EvalError::io(&tmp, e))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| EvalError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| EvalError::io(path, e))
}

/// Reads `samples.jsonl` without changing it; a damaged last line is ignored.
pub fn read_samples(path: &Path) -> EvalResult<Vec<SampleRecord>> {
    Ok(parse_samples(path)?.0)
}

fn parse_samples(path: &Path) -> EvalResult<(Vec<SampleRecord>, u64, bool)> {
    let file = std::fs::File::open(path).map_err(|e| EvalError::io(path, e))?;
    let mut reader = std::io::BufReader::new(file);
    let mut records = Vec::new();
    let mut good_len = 0u64;
    let mut lineno = 0;
    let mut pending: Option<(usize, String)> = None;
    loop {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| EvalError::io(path, e))?;
        if n == 0 {
            break;
        }
        lineno += 1;
        if let Some((l, msg)) = pending.take() {
            return Err(EvalError::Report {
                path: path.to_path_buf(),
                message: format!("line {l} is damaged ({msg}); remove or fix it, then rerun"),
            });
        }
        let complete = line.ends_with('\n');
        let text = line.trim();
        if text.is_empty() {
            good_len += n as u64;
            continue;
        }
        match serde_json::from_str::<SampleRecord>(text) {
            Ok(r) if complete => {
                records.push(r);
                good_len += n as u64;
            }
            Ok(_) => pending = Some((lineno, "no newline at the end".into())),
            Err(e) => pending = Some((lineno, e.to_string())),
        }
    }
    Ok((records, good_len, pending.is_some()))
}

/// Where a run's samples file is.
pub fn samples_path(out: &Path) -> PathBuf {
    out.join(SAMPLES_FILE)
}
