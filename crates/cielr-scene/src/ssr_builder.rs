//! [`PaperSsrBuilder`]: the SSR as the paper builds it (see `docs/scene.md`).
//!
//! 1. Object list: the user's queries, or a vocabulary scan (OWLv2 over the LVIS names in
//!    batches; labels whose best box scores above [`SsrBuilderOptions::scan_threshold`]).
//! 2. Boxes: OWLv2, one text query per listed object, score threshold 0.1, all boxes kept.
//! 3. Masks: the automatic mask generator of SAM 2.1 (the paper's, with `use_m2m`) or of the
//!    original SAM (as the checkpoint's `config.json` says, [`SamFamily`]), labelled by the
//!    IoU rule ([`assign_labels`]): each mask takes the label of the box with the highest
//!    IoU, where overlap = mask pixels inside the box and IoU = overlap / (box area + mask
//!    area - overlap); no overlap gives [`UNKNOWN_LABEL`].
//! 4. Depth: Depth Anything V2 at each mask's centroid pixel.
//! 5. Merge ([`merge_by_label`]): masks with the same label are united, their depths
//!    averaged, ids renumbered `0..K-1`; all unknown masks become one region.
//!
//! The three stages are traits ([`MaskProposer`], [`OpenVocabularyDetector`],
//! [`DepthEstimator`]) implemented for the Burn ports ([`SamMaskProposer`],
//! [`Sam2MaskProposer`], [`Owlv2Detector`], [`DepthAnything`]). Per image the builder
//! caches the detector's image embedding, the mask proposals and their depths (keyed by a
//! SHA-256 of the pixels), and OWLv2 caches text embeddings by string, so
//! [`SceneBuilder::refine`] with new labels costs only the new text queries, the class
//! logits and the label assignment.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use burn::tensor::backend::Backend;
use cielr_core::{BBox, CoreError, Mask, Scene, SceneBuilder, SceneObject};
use image::{DynamicImage, RgbImage};
use sha2::{Digest, Sha256};

use crate::depth_anything::{DepthAnything, DepthMap};
use crate::error::{Result, SceneError};
use crate::owlv2::Owlv2Detector;
use crate::sam::amg::{AmgConfig, SamAutomaticMaskGenerator};
use crate::sam::SamModel;
use crate::sam2::amg::{Sam2AmgConfig, Sam2AutomaticMaskGenerator};
use crate::sam2::Sam2Model;

/// The label of masks that no box overlaps.
pub const UNKNOWN_LABEL: &str = "Unknown";
/// The `depth_source` of scenes this builder makes.
pub const DEPTH_SOURCE: &str = "depth-anything-v2";
/// The LVIS v1 category names, as shipped in `assets/lvis_v1_names.txt` (source and licence
/// in its header).
pub const LVIS_NAMES: &str = include_str!("../assets/lvis_v1_names.txt");

/// Detector queries from a label list: one name per line, `#` comments and blank lines
/// skipped, `_` read as a space, a parenthesised qualifier dropped (`bat_(animal)` ->
/// `bat`), duplicates (case-insensitive) removed, first occurrence kept.
pub fn parse_vocabulary(text: &str) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name = line.replace('_', " ");
        let name = match name.find('(') {
            Some(i) => name[..i].to_string(),
            None => name,
        };
        let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
        if !name.is_empty() && seen.insert(name.to_lowercase()) {
            out.push(name);
        }
    }
    out
}

/// The LVIS vocabulary as detector queries ([`parse_vocabulary`] of [`LVIS_NAMES`]).
pub fn lvis_vocabulary() -> Vec<String> {
    parse_vocabulary(LVIS_NAMES)
}

/// The automatic-mask-generator settings of the paper (for SAM 2.1; also applied to the
/// original SAM generator): 16 points per side, predicted IoU > 0.7, stability >= 0.92 with
/// offset 0.7, one crop layer with half the points, box NMS 0.7, small-region removal at 1
/// pixel. The paper's `use_m2m` (SAM 2 mask-to-mask refinement) is part of
/// [`Sam2AmgConfig::paper`]; it has no SAM 1 counterpart.
pub fn paper_amg_config() -> AmgConfig {
    AmgConfig {
        points_per_side: Some(16),
        pred_iou_thresh: 0.7,
        stability_score_thresh: 0.92,
        stability_score_offset: 0.7,
        crop_n_layers: 1,
        box_nms_thresh: 0.7,
        crop_n_points_downscale_factor: 2,
        min_mask_region_area: 1,
        ..AmgConfig::default()
    }
}

/// A box that a text query found.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledBox {
    /// Box in image pixels (xyxy; may extend past the image).
    pub bbox: BBox,
    /// The query that scored best on this box.
    pub label: String,
    /// That query's score.
    pub score: f32,
}

/// Proposes class-agnostic masks for an image (SAM's automatic mask generator).
pub trait MaskProposer: Send + Sync {
    /// A short name for reports.
    fn name(&self) -> String;
    /// The masks, each the size of the image.
    fn propose(&self, image: &DynamicImage) -> Result<Vec<Mask>>;
}

/// Finds boxes for text queries (OWLv2). The image is embedded once; implementations cache
/// query embeddings by string.
pub trait OpenVocabularyDetector: Send + Sync {
    /// What one image contributes, computed once per image.
    type ImageEmbedding: Send + Sync + 'static;
    /// A short name for reports.
    fn name(&self) -> String;
    /// Runs the image side of the detector.
    fn embed_image(&self, image: &DynamicImage) -> Result<Self::ImageEmbedding>;
    /// Boxes whose best query scores above `threshold`, each labelled with that query.
    fn detect(
        &self,
        image: &Self::ImageEmbedding,
        queries: &[String],
        threshold: f32,
    ) -> Result<Vec<LabelledBox>>;
    /// For each query, its best score over all boxes (for vocabulary scans).
    fn best_scores(&self, image: &Self::ImageEmbedding, queries: &[String]) -> Result<Vec<f32>>;
}

/// Estimates relative depth (larger = nearer) in image pixels.
pub trait DepthEstimator: Send + Sync {
    /// A short name for reports.
    fn name(&self) -> String;
    /// The depth map, the size of the image.
    fn estimate(&self, image: &DynamicImage) -> Result<DepthMap>;
}

/// SAM with automatic-mask-generator settings, as a [`MaskProposer`].
#[derive(Debug)]
pub struct SamMaskProposer<B: Backend> {
    model: SamModel<B>,
    config: AmgConfig,
}

impl<B: Backend> SamMaskProposer<B> {
    /// Wraps a loaded model; fails when the settings are invalid.
    pub fn new(model: SamModel<B>, config: AmgConfig) -> Result<Self> {
        SamAutomaticMaskGenerator::new(&model, config.clone())?;
        Ok(SamMaskProposer { model, config })
    }

    /// The model.
    pub fn model(&self) -> &SamModel<B> {
        &self.model
    }

    /// The generator settings.
    pub fn config(&self) -> &AmgConfig {
        &self.config
    }
}

impl<B: Backend> MaskProposer for SamMaskProposer<B>
where
    SamModel<B>: Send + Sync,
{
    fn name(&self) -> String {
        "sam-amg".into()
    }

    fn propose(&self, image: &DynamicImage) -> Result<Vec<Mask>> {
        let generator = SamAutomaticMaskGenerator::new(&self.model, self.config.clone())?;
        Ok(generator
            .generate(image)?
            .into_iter()
            .map(|m| m.mask)
            .collect())
    }
}

/// SAM 2.1 with automatic-mask-generator settings, as a [`MaskProposer`].
#[derive(Debug)]
pub struct Sam2MaskProposer<B: Backend> {
    model: Sam2Model<B>,
    config: Sam2AmgConfig,
}

impl<B: Backend> Sam2MaskProposer<B> {
    /// Wraps a loaded model; fails when the settings are invalid.
    pub fn new(model: Sam2Model<B>, config: Sam2AmgConfig) -> Result<Self> {
        Sam2AutomaticMaskGenerator::new(&model, config.clone())?;
        Ok(Sam2MaskProposer { model, config })
    }

    /// The model.
    pub fn model(&self) -> &Sam2Model<B> {
        &self.model
    }

    /// The generator settings.
    pub fn config(&self) -> &Sam2AmgConfig {
        &self.config
    }
}

impl<B: Backend> MaskProposer for Sam2MaskProposer<B>
where
    Sam2Model<B>: Send + Sync,
{
    fn name(&self) -> String {
        "sam2-amg".into()
    }

    fn propose(&self, image: &DynamicImage) -> Result<Vec<Mask>> {
        let generator = Sam2AutomaticMaskGenerator::new(&self.model, self.config.clone())?;
        Ok(generator
            .generate(image)?
            .into_iter()
            .map(|m| m.mask)
            .collect())
    }
}

/// Which SAM a checkpoint folder holds, read from the `model_type` of its `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamFamily {
    /// The original SAM (`"sam"`, e.g. facebook/sam-vit-huge).
    Sam,
    /// SAM 2 / 2.1 (`"sam2"`, or `"sam2_video"` whose image parts are the same; e.g.
    /// facebook/sam2.1-hiera-large).
    Sam2,
}

impl SamFamily {
    /// Reads `dir/config.json`; an error names the file and any `model_type` other than
    /// `sam`, `sam2` and `sam2_video`.
    pub fn detect(dir: impl AsRef<Path>) -> Result<Self> {
        let path = dir.as_ref().join("config.json");
        let bad = |m: String| SceneError::InvalidInput(format!("{}: {m}", path.display()));
        let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        match value.get("model_type").and_then(|v| v.as_str()) {
            Some("sam") => Ok(SamFamily::Sam),
            Some("sam2") | Some("sam2_video") => Ok(SamFamily::Sam2),
            Some(other) => Err(bad(format!(
                "model_type \"{other}\" is not a SAM checkpoint (expected \"sam\", \"sam2\" \
                 or \"sam2_video\")"
            ))),
            None => Err(bad(
                "no model_type string (expected \"sam\", \"sam2\" or \"sam2_video\")".into(),
            )),
        }
    }
}

/// The mask proposer of [`BurnSsrBuilder`]: SAM or SAM 2.1, as the checkpoint says.
#[derive(Debug)]
pub enum BurnMaskProposer<B: Backend> {
    /// The original SAM generator.
    Sam(Box<SamMaskProposer<B>>),
    /// The SAM 2.1 generator.
    Sam2(Box<Sam2MaskProposer<B>>),
}

impl<B: Backend> MaskProposer for BurnMaskProposer<B>
where
    SamModel<B>: Send + Sync,
    Sam2Model<B>: Send + Sync,
{
    fn name(&self) -> String {
        match self {
            BurnMaskProposer::Sam(p) => p.name(),
            BurnMaskProposer::Sam2(p) => p.name(),
        }
    }

    fn propose(&self, image: &DynamicImage) -> Result<Vec<Mask>> {
        match self {
            BurnMaskProposer::Sam(p) => p.propose(image),
            BurnMaskProposer::Sam2(p) => p.propose(image),
        }
    }
}

impl<B: Backend> OpenVocabularyDetector for Owlv2Detector<B>
where
    Owlv2Detector<B>: Send + Sync,
    crate::owlv2::Owlv2ImageEmbedding<B>: Send + Sync + 'static,
{
    type ImageEmbedding = crate::owlv2::Owlv2ImageEmbedding<B>;

    fn name(&self) -> String {
        "owlv2".into()
    }

    fn embed_image(&self, image: &DynamicImage) -> Result<Self::ImageEmbedding> {
        Owlv2Detector::embed_image(self, image)
    }

    fn detect(
        &self,
        image: &Self::ImageEmbedding,
        queries: &[String],
        threshold: f32,
    ) -> Result<Vec<LabelledBox>> {
        let q: Vec<&str> = queries.iter().map(String::as_str).collect();
        let embeds = self.embed_queries(&q)?;
        Ok(Owlv2Detector::detect(self, image, &embeds, threshold)?
            .into_iter()
            .map(|d| LabelledBox {
                bbox: BBox::new(
                    d.bbox[0] as f64,
                    d.bbox[1] as f64,
                    d.bbox[2] as f64,
                    d.bbox[3] as f64,
                ),
                label: d.label,
                score: d.score,
            })
            .collect())
    }

    fn best_scores(&self, image: &Self::ImageEmbedding, queries: &[String]) -> Result<Vec<f32>> {
        if queries.is_empty() {
            return Ok(Vec::new());
        }
        let q: Vec<&str> = queries.iter().map(String::as_str).collect();
        let embeds = self.embed_queries(&q)?;
        let best = cielr_core::backend::read_finite_f32(
            self.logits(image, &embeds)?.max_dim(0),
            "OWLv2's class logits",
        )?;
        Ok(best.into_iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect())
    }
}

impl<B: Backend> DepthEstimator for DepthAnything<B>
where
    DepthAnything<B>: Send + Sync,
{
    fn name(&self) -> String {
        DEPTH_SOURCE.into()
    }

    fn estimate(&self, image: &DynamicImage) -> Result<DepthMap> {
        DepthAnything::estimate(self, image)
    }
}

/// The IoU of the paper's rule between a mask (of `mask_area` pixels) and a box: overlap =
/// mask pixels whose centres lie inside the box, box area = `width * height` of the box as
/// the detector gave it (not clipped to the image), IoU = overlap / (box area + mask area -
/// overlap). Zero without overlap.
pub fn mask_box_iou(mask: &Mask, mask_area: u64, bbox: &BBox) -> f64 {
    let overlap = mask.area_in_box(bbox) as f64;
    if overlap == 0.0 {
        return 0.0;
    }
    let box_area = bbox.width().max(0.0) * bbox.height().max(0.0);
    let union = box_area + mask_area as f64 - overlap;
    if union > 0.0 {
        overlap / union
    } else {
        0.0
    }
}

/// For each mask, the index of the box that labels it: the one with the highest
/// [`mask_box_iou`]; on equal IoU the higher score, then the earlier box. `None` when no box
/// overlaps the mask (the mask is unknown).
pub fn assign_labels(masks: &[Mask], boxes: &[LabelledBox]) -> Vec<Option<usize>> {
    masks
        .iter()
        .map(|m| {
            let area = m.area();
            let mut best: Option<(usize, f64)> = None;
            for (i, b) in boxes.iter().enumerate() {
                let iou = mask_box_iou(m, area, &b.bbox);
                if iou <= 0.0 {
                    continue;
                }
                let better = match best {
                    None => true,
                    Some((j, v)) => iou > v || (iou == v && b.score > boxes[j].score),
                };
                if better {
                    best = Some((i, iou));
                }
            }
            best.map(|(i, _)| i)
        })
        .collect()
}

/// A labelled mask before merging.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledMask {
    /// The mask.
    pub mask: Mask,
    /// Its label; `None` for unknown.
    pub label: Option<String>,
    /// The labelling box's score.
    pub score: Option<f32>,
    /// Depth at the mask's centroid.
    pub depth: Option<f64>,
}

/// One region after merging.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedRegion {
    /// The label ([`UNKNOWN_LABEL`] for the unknown region).
    pub label: String,
    /// Whether this is the region of all unknown masks.
    pub unknown: bool,
    /// The union (pixelwise max) of the members' masks.
    pub mask: Mask,
    /// The mean of the members' depths (those that have one).
    pub depth: Option<f64>,
    /// The best member score.
    pub score: Option<f32>,
    /// How many masks were merged.
    pub members: usize,
}

/// Merges masks by label: one region per label, in the order of each label's first mask,
/// and the unknown masks as one region at the end (left out when `keep_unknown` is false).
/// Masks are united, depths averaged over the members that have one, scores maxed. The
/// caller numbers the regions `0..K-1` in this order. Fails when masks differ in size.
pub fn merge_by_label(masks: Vec<LabelledMask>, keep_unknown: bool) -> Result<Vec<MergedRegion>> {
    struct Acc {
        region: MergedRegion,
        depth_sum: f64,
        depth_n: usize,
    }
    /// An empty region the size of `like`.
    fn empty(label: String, unknown: bool, like: &Mask) -> Result<Acc> {
        Ok(Acc {
            region: MergedRegion {
                label,
                unknown,
                mask: Mask::new(like.width(), like.height()).map_err(mask_error)?,
                depth: None,
                score: None,
                members: 0,
            },
            depth_sum: 0.0,
            depth_n: 0,
        })
    }
    let mut order: Vec<Acc> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut unknown: Option<Acc> = None;
    for m in masks {
        let acc = match &m.label {
            Some(label) => match index.get(label) {
                Some(&i) => Some(&mut order[i]),
                None => {
                    index.insert(label.clone(), order.len());
                    order.push(empty(label.clone(), false, &m.mask)?);
                    order.last_mut()
                }
            },
            None if keep_unknown => {
                if unknown.is_none() {
                    unknown = Some(empty(UNKNOWN_LABEL.into(), true, &m.mask)?);
                }
                unknown.as_mut()
            }
            None => None,
        };
        let Some(acc) = acc else { continue };
        acc.region.mask = acc.region.mask.union(&m.mask).map_err(mask_error)?;
        acc.region.members += 1;
        if let Some(d) = m.depth {
            acc.depth_sum += d;
            acc.depth_n += 1;
        }
        if let Some(s) = m.score {
            acc.region.score = Some(acc.region.score.map_or(s, |t| t.max(s)));
        }
    }
    Ok(order
        .into_iter()
        .chain(unknown)
        .map(|mut a| {
            a.region.depth = (a.depth_n > 0).then(|| a.depth_sum / a.depth_n as f64);
            a.region
        })
        .collect())
}

/// Settings of [`PaperSsrBuilder`].
#[derive(Debug, Clone, PartialEq)]
pub struct SsrBuilderOptions {
    /// OWLv2 box score threshold (the paper's 0.1).
    pub box_threshold: f32,
    /// Labels scanned when no queries are given (default: LVIS).
    pub vocabulary: Vec<String>,
    /// A scanned label is kept when its best box scores above this (our choice: 0.3).
    pub scan_threshold: f32,
    /// At most this many scanned labels are kept, the best-scoring first.
    pub max_scan_labels: usize,
    /// Queries per OWLv2 call during a scan.
    pub scan_batch: usize,
    /// Whether the merged unknown region is part of the SSR (the paper keeps it).
    pub keep_unknown: bool,
    /// Whether depths are rescaled so that the image's farthest pixel is 0 and its nearest 1
    /// (Depth Anything's raw values have no fixed scale); the order is unchanged.
    pub normalize_depth: bool,
    /// How many images' embeddings, masks and depths are kept for `refine`.
    pub cached_images: usize,
    /// The mask generator's settings (used by [`PaperSsrBuilder::from_dirs`]).
    pub amg: AmgConfig,
}

impl Default for SsrBuilderOptions {
    fn default() -> Self {
        SsrBuilderOptions {
            box_threshold: 0.1,
            vocabulary: lvis_vocabulary(),
            scan_threshold: 0.3,
            max_scan_labels: 50,
            scan_batch: 64,
            keep_unknown: true,
            normalize_depth: true,
            cached_images: 4,
            amg: paper_amg_config(),
        }
    }
}

impl SsrBuilderOptions {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        let err = |m: &str| Err(SceneError::config("SSR builder options", m));
        if !(0.0..1.0).contains(&self.box_threshold) {
            return err("box_threshold must be in [0, 1)");
        }
        if !(0.0..1.0).contains(&self.scan_threshold) {
            return err("scan_threshold must be in [0, 1)");
        }
        if self.scan_batch == 0 || self.cached_images == 0 {
            return err("scan_batch and cached_images must be positive");
        }
        self.amg.validate()
    }
}

/// A progress callback: `(stage, message)`.
pub type SsrProgress = Arc<dyn Fn(&str, &str) + Send + Sync>;

type ImageKey = [u8; 32];

/// The states of the last few images, least recently used first.
type StateCache<T> = Vec<(ImageKey, Arc<ImageState<T>>)>;

/// What the builder keeps per image.
struct ImageState<T> {
    embedding: T,
    masks: Vec<Mask>,
    /// Depth at each mask's centroid (normalised as the options say).
    depths: Vec<Option<f64>>,
}

/// The paper's SSR builder over a mask proposer, an open-vocabulary detector and a depth
/// estimator (see the module docs).
pub struct PaperSsrBuilder<M, D: OpenVocabularyDetector, E> {
    proposer: M,
    detector: D,
    depth: E,
    options: SsrBuilderOptions,
    cache: Mutex<StateCache<D::ImageEmbedding>>,
    progress: Option<SsrProgress>,
}

impl<M, D: OpenVocabularyDetector, E> std::fmt::Debug for PaperSsrBuilder<M, D, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaperSsrBuilder")
            .field("detector", &self.detector.name())
            .field("box_threshold", &self.options.box_threshold)
            .field("vocabulary", &self.options.vocabulary.len())
            .finish_non_exhaustive()
    }
}

/// The builder over the Burn ports.
pub type BurnSsrBuilder<B> =
    PaperSsrBuilder<BurnMaskProposer<B>, Owlv2Detector<B>, DepthAnything<B>>;

impl<B: Backend> BurnSsrBuilder<B>
where
    SamModel<B>: Send + Sync,
    Sam2Model<B>: Send + Sync,
    Owlv2Detector<B>: Send + Sync,
    crate::owlv2::Owlv2ImageEmbedding<B>: Send + Sync + 'static,
    DepthAnything<B>: Send + Sync,
{
    /// Loads the three HuggingFace checkpoint folders: OWLv2 (e.g.
    /// google/owlv2-large-patch14-ensemble), SAM 2.1 (facebook/sam2.1-hiera-*, the paper's)
    /// or SAM (facebook/sam-vit-*), told apart by [`SamFamily::detect`], and Depth Anything
    /// V2 (depth-anything/Depth-Anything-V2-*-hf). Either generator uses `options.amg`; SAM
    /// 2.1 adds the rest of [`Sam2AmgConfig::paper`] (`use_m2m` on).
    pub fn from_dirs(
        owlv2_dir: impl AsRef<Path>,
        sam_dir: impl AsRef<Path>,
        depth_dir: impl AsRef<Path>,
        options: SsrBuilderOptions,
        device: &B::Device,
    ) -> Result<Self> {
        let ctx = |what: &str, dir: &Path, e: SceneError| {
            SceneError::InvalidInput(format!("loading {what} from {}: {e}", dir.display()))
        };
        // Bad settings fail before minutes of checkpoint loading.
        options.validate()?;
        let (o, s, d) = (owlv2_dir.as_ref(), sam_dir.as_ref(), depth_dir.as_ref());
        let family = SamFamily::detect(s).map_err(|e| ctx("SAM", s, e))?;
        let detector = Owlv2Detector::from_pretrained(o, device).map_err(|e| ctx("OWLv2", o, e))?;
        let proposer = match family {
            SamFamily::Sam => {
                let sam = SamModel::load(s, device).map_err(|e| ctx("SAM", s, e))?;
                BurnMaskProposer::Sam(Box::new(SamMaskProposer::new(sam, options.amg.clone())?))
            }
            SamFamily::Sam2 => {
                let sam = Sam2Model::load(s, device).map_err(|e| ctx("SAM 2.1", s, e))?;
                let config = Sam2AmgConfig {
                    base: options.amg.clone(),
                    ..Sam2AmgConfig::paper()
                };
                BurnMaskProposer::Sam2(Box::new(Sam2MaskProposer::new(sam, config)?))
            }
        };
        let depth =
            DepthAnything::from_pretrained(d, device).map_err(|e| ctx("Depth Anything", d, e))?;
        Self::new(proposer, detector, depth, options)
    }
}

impl<M: MaskProposer, D: OpenVocabularyDetector, E: DepthEstimator> PaperSsrBuilder<M, D, E> {
    /// Assembles a builder; fails when the options are invalid.
    pub fn new(proposer: M, detector: D, depth: E, options: SsrBuilderOptions) -> Result<Self> {
        options.validate()?;
        Ok(PaperSsrBuilder {
            proposer,
            detector,
            depth,
            options,
            cache: Mutex::new(Vec::new()),
            progress: None,
        })
    }

    /// Reports progress of the long stages to `f`.
    pub fn with_progress(mut self, f: SsrProgress) -> Self {
        self.progress = Some(f);
        self
    }

    /// The settings.
    pub fn options(&self) -> &SsrBuilderOptions {
        &self.options
    }

    /// The mask proposer.
    pub fn proposer(&self) -> &M {
        &self.proposer
    }

    /// The detector.
    pub fn detector(&self) -> &D {
        &self.detector
    }

    /// The depth estimator.
    pub fn depth_estimator(&self) -> &E {
        &self.depth
    }

    /// The three stages, giving up the cache.
    pub fn into_parts(self) -> (M, D, E) {
        (self.proposer, self.detector, self.depth)
    }

    fn say(&self, stage: &str, message: &str) {
        if let Some(p) = &self.progress {
            p(stage, message);
        }
    }

    /// The cached state of `image`, computing it (embedding, masks, depths) when absent.
    fn state(&self, image: &DynamicImage) -> Result<Arc<ImageState<D::ImageEmbedding>>> {
        let key = image_key(image);
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = cache.iter().position(|(k, _)| *k == key) {
                let entry = cache.remove(i);
                let state = entry.1.clone();
                cache.push(entry);
                return Ok(state);
            }
        }
        self.say(
            "scene",
            &format!("embedding the image ({})", self.detector.name()),
        );
        let embedding = self.detector.embed_image(image)?;
        self.say(
            "scene",
            &format!("proposing masks ({})", self.proposer.name()),
        );
        let masks = self.proposer.propose(image)?;
        for (i, m) in masks.iter().enumerate() {
            if (m.width(), m.height()) != (image.width(), image.height()) {
                return Err(SceneError::InvalidInput(format!(
                    "mask {i} from {} is {}x{}, the image is {}x{}",
                    self.proposer.name(),
                    m.width(),
                    m.height(),
                    image.width(),
                    image.height()
                )));
            }
        }
        self.say(
            "scene",
            &format!(
                "{} masks; estimating depth ({})",
                masks.len(),
                self.depth.name()
            ),
        );
        let map = self.depth.estimate(image)?;
        let (lo, hi) = map
            .data
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let scale = |v: f32| -> f64 {
            if !self.options.normalize_depth {
                v as f64
            } else if hi > lo {
                ((v - lo) / (hi - lo)) as f64
            } else {
                0.5
            }
        };
        let depths = masks
            .iter()
            .map(|m| Ok(map.at_mask_centroid(m)?.map(scale)))
            .collect::<Result<Vec<_>>>()?;
        let state = Arc::new(ImageState {
            embedding,
            masks,
            depths,
        });
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|(k, _)| *k != key);
        if cache.len() >= self.options.cached_images {
            cache.remove(0);
        }
        cache.push((key, state.clone()));
        Ok(state)
    }

    /// Scans the vocabulary: the labels whose best box scores above the scan threshold,
    /// best first, at most `max_scan_labels`.
    pub fn scan_vocabulary(&self, image: &DynamicImage) -> Result<Vec<String>> {
        let state = self.state(image)?;
        self.scan(&state)
    }

    fn scan(&self, state: &ImageState<D::ImageEmbedding>) -> Result<Vec<String>> {
        let vocab = &self.options.vocabulary;
        let batches = vocab.len().div_ceil(self.options.scan_batch);
        let mut found: Vec<(f32, usize)> = Vec::new();
        for (b, chunk) in vocab.chunks(self.options.scan_batch).enumerate() {
            self.say(
                "scene",
                &format!("scanning the vocabulary: batch {}/{batches}", b + 1),
            );
            let scores = self.detector.best_scores(&state.embedding, chunk)?;
            if scores.len() != chunk.len() {
                return Err(SceneError::InvalidInput(format!(
                    "{} gave {} best scores for {} labels",
                    self.detector.name(),
                    scores.len(),
                    chunk.len()
                )));
            }
            for (i, s) in scores.into_iter().enumerate() {
                if s > self.options.scan_threshold {
                    found.push((s, b * self.options.scan_batch + i));
                }
            }
        }
        found.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        found.truncate(self.options.max_scan_labels);
        Ok(found.into_iter().map(|(_, i)| vocab[i].clone()).collect())
    }

    /// Builds the scene of a (cached) image for an object list.
    fn assemble(
        &self,
        image: &DynamicImage,
        state: &ImageState<D::ImageEmbedding>,
        queries: Vec<String>,
    ) -> Result<Scene> {
        let boxes = self
            .detector
            .detect(&state.embedding, &queries, self.options.box_threshold)?;
        self.say(
            "scene",
            &format!(
                "labelling {} masks with {} boxes for {} queries",
                state.masks.len(),
                boxes.len(),
                queries.len()
            ),
        );
        let labels = assign_labels(&state.masks, &boxes);
        let labelled = state
            .masks
            .iter()
            .zip(&labels)
            .zip(&state.depths)
            .map(|((m, l), d)| LabelledMask {
                mask: m.clone(),
                label: l.map(|i| boxes[i].label.clone()),
                score: l.map(|i| boxes[i].score),
                depth: *d,
            })
            .collect();
        let regions = merge_by_label(labelled, self.options.keep_unknown)?;
        let mut scene = Scene::new(image.width(), image.height());
        for r in regions {
            let Some(bbox) = r.mask.bbox() else { continue };
            let mut o = SceneObject::new(scene.objects.len() as u32, r.label, bbox);
            o.depth = r.depth;
            o.score = r.score.map(f64::from);
            o.attributes
                .insert("mask".into(), self.proposer.name().to_string());
            let source = if r.unknown {
                self.proposer.name()
            } else {
                format!("{}+{}", self.detector.name(), self.proposer.name())
            };
            o.attributes.insert("source".into(), source);
            o.mask = Some(r.mask);
            scene.objects.push(o);
        }
        scene.queries = queries;
        scene.depth_source = Some(DEPTH_SOURCE.into());
        Ok(scene)
    }

    /// [`SceneBuilder::build`] with this crate's error type.
    pub fn build_scene(&self, image: &RgbImage, queries: &[String]) -> Result<Scene> {
        let image = DynamicImage::ImageRgb8(image.clone());
        let state = self.state(&image)?;
        let list = merge_queries(&[], queries);
        let list = if list.is_empty() {
            self.scan(&state)?
        } else {
            list
        };
        self.assemble(&image, &state, list)
    }

    /// [`SceneBuilder::refine`] with this crate's error type: the scene rebuilt for its
    /// queries plus `new_queries` (ids renumbered), from the cached image state.
    pub fn refine_scene(
        &self,
        image: &RgbImage,
        scene: &Scene,
        new_queries: &[String],
    ) -> Result<Scene> {
        if (image.width(), image.height()) != (scene.width, scene.height) {
            return Err(SceneError::InvalidInput(format!(
                "the SSR describes a {}x{} image but the image is {}x{}",
                scene.width,
                scene.height,
                image.width(),
                image.height()
            )));
        }
        let list = merge_queries(&scene.queries, new_queries);
        if list.is_empty() {
            return self.build_scene(image, &[]);
        }
        let image = DynamicImage::ImageRgb8(image.clone());
        let state = self.state(&image)?;
        self.assemble(&image, &state, list)
    }
}

/// `old` followed by the new queries not in it (trimmed, case-insensitive, empty ones
/// dropped).
fn merge_queries(old: &[String], new: &[String]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for q in old.iter().chain(new) {
        let q = q.trim();
        if !q.is_empty() && seen.insert(q.to_lowercase()) {
            out.push(q.to_string());
        }
    }
    out
}

fn image_key(image: &DynamicImage) -> ImageKey {
    let mut h = Sha256::new();
    h.update(image.width().to_le_bytes());
    h.update(image.height().to_le_bytes());
    h.update(image.as_bytes());
    h.finalize().into()
}

fn mask_error(e: CoreError) -> SceneError {
    SceneError::InvalidInput(format!("merging masks: {e}"))
}

fn core_error(e: SceneError) -> CoreError {
    CoreError::SceneBuilder(e.to_string())
}

#[async_trait]
impl<M: MaskProposer, D: OpenVocabularyDetector, E: DepthEstimator> SceneBuilder
    for PaperSsrBuilder<M, D, E>
{
    fn name(&self) -> String {
        format!(
            "paper-ssr({} + {} + {})",
            self.detector.name(),
            self.proposer.name(),
            self.depth.name()
        )
    }

    async fn build(&self, image: &RgbImage, queries: &[String]) -> cielr_core::Result<Scene> {
        self.build_scene(image, queries).map_err(core_error)
    }

    async fn refine(
        &self,
        image: &RgbImage,
        scene: &Scene,
        new_queries: &[String],
    ) -> cielr_core::Result<Scene> {
        self.refine_scene(image, scene, new_queries)
            .map_err(core_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rect(w: u32, h: u32, x0: u32, y0: u32, x1: u32, y1: u32) -> Mask {
        Mask::from_fn(w, h, |x, y| x >= x0 && x < x1 && y >= y0 && y < y1).unwrap()
    }

    fn lbox(x0: f64, y0: f64, x1: f64, y1: f64, label: &str, score: f32) -> LabelledBox {
        LabelledBox {
            bbox: BBox::new(x0, y0, x1, y1),
            label: label.into(),
            score,
        }
    }

    #[test]
    fn iou_rule_counts_mask_pixels_inside_the_box() {
        // A 4x4 mask; a 4x2 box over its top half: overlap 8, union 8 + 16 - 8 = 16.
        let m = rect(10, 10, 0, 0, 4, 4);
        let iou = mask_box_iou(&m, m.area(), &BBox::new(0.0, 0.0, 4.0, 2.0));
        assert!((iou - 0.5).abs() < 1e-12, "{iou}");
        // The box area is not clipped to the image: a box half outside counts fully.
        let iou = mask_box_iou(&m, m.area(), &BBox::new(-4.0, 0.0, 4.0, 4.0));
        assert!((iou - 16.0 / 32.0).abs() < 1e-12, "{iou}");
        assert_eq!(
            mask_box_iou(&m, m.area(), &BBox::new(5.0, 5.0, 9.0, 9.0)),
            0.0
        );
    }

    #[test]
    fn labels_go_to_the_best_box_and_unknown_without_overlap() {
        let masks = vec![
            rect(10, 10, 0, 0, 4, 4),
            rect(10, 10, 6, 6, 10, 10),
            rect(10, 10, 0, 8, 2, 10),
        ];
        let boxes = vec![
            lbox(0.0, 0.0, 8.0, 8.0, "table", 0.9), // iou with mask 0: 16/64
            lbox(0.0, 0.0, 4.0, 4.0, "cup", 0.2),   // 1.0 with mask 0
            lbox(5.0, 5.0, 10.0, 10.0, "plant", 0.5),
        ];
        assert_eq!(
            assign_labels(&masks, &boxes),
            vec![Some(1), Some(2), None],
            "mask 1 also touches the table box (pixel (6..8, 6..8)) but fits the plant better"
        );
        assert_eq!(assign_labels(&masks, &[]), vec![None, None, None]);
    }

    #[test]
    fn ties_go_to_the_higher_score_then_the_earlier_box() {
        let masks = vec![rect(8, 8, 0, 0, 4, 4)];
        let same = |s1, s2| {
            vec![
                lbox(0.0, 0.0, 4.0, 4.0, "a", s1),
                lbox(0.0, 0.0, 4.0, 4.0, "b", s2),
            ]
        };
        assert_eq!(assign_labels(&masks, &same(0.3, 0.6)), vec![Some(1)]);
        assert_eq!(assign_labels(&masks, &same(0.6, 0.3)), vec![Some(0)]);
        assert_eq!(assign_labels(&masks, &same(0.5, 0.5)), vec![Some(0)]);
    }

    #[test]
    fn merge_unites_same_labels_averages_depth_and_puts_unknown_last() {
        let lm = |m: Mask, l: Option<&str>, s: Option<f32>, d: Option<f64>| LabelledMask {
            mask: m,
            label: l.map(String::from),
            score: s,
            depth: d,
        };
        let masks = vec![
            lm(rect(8, 8, 0, 0, 2, 2), None, None, Some(0.1)),
            lm(rect(8, 8, 2, 0, 4, 2), Some("cup"), Some(0.4), Some(0.2)),
            lm(rect(8, 8, 0, 4, 2, 6), Some("plant"), Some(0.3), None),
            lm(rect(8, 8, 3, 1, 6, 3), Some("cup"), Some(0.7), Some(0.6)),
            lm(rect(8, 8, 6, 6, 8, 8), None, None, Some(0.5)),
        ];
        let regions = merge_by_label(masks.clone(), true).unwrap();
        let labels: Vec<&str> = regions.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels, ["cup", "plant", UNKNOWN_LABEL]);
        let cup = &regions[0];
        assert_eq!(cup.members, 2);
        // 4 + 6 pixels, overlapping in (3, 1): 9.
        assert_eq!(cup.mask.area(), 9);
        assert!((cup.depth.unwrap() - 0.4).abs() < 1e-12);
        assert_eq!(cup.score, Some(0.7));
        assert_eq!(regions[1].depth, None, "no member has a depth");
        let unknown = &regions[2];
        assert!(unknown.unknown && unknown.score.is_none());
        assert_eq!((unknown.members, unknown.mask.area()), (2, 8));
        assert!((unknown.depth.unwrap() - 0.3).abs() < 1e-12);

        let without = merge_by_label(masks, false).unwrap();
        assert_eq!(without.len(), 2);
        assert!(without.iter().all(|r| !r.unknown));
        assert!(merge_by_label(Vec::new(), true).unwrap().is_empty());
    }

    #[test]
    fn merge_rejects_masks_of_different_sizes() {
        let lm = |m: Mask| LabelledMask {
            mask: m,
            label: Some("x".into()),
            score: None,
            depth: None,
        };
        let r = merge_by_label(
            vec![lm(rect(8, 8, 0, 0, 2, 2)), lm(rect(9, 8, 0, 0, 2, 2))],
            true,
        );
        assert!(r.is_err());
    }

    #[test]
    fn vocabulary_parsing_and_the_shipped_lvis_list() {
        let v = parse_vocabulary("# header\n\nbat_(animal)\nBat\nalarm_clock\n  cup  \n");
        assert_eq!(v, ["bat", "alarm clock", "cup"]);
        let lvis = lvis_vocabulary();
        assert_eq!(
            lvis.len(),
            1198,
            "1203 names, 5 duplicates once qualifiers go"
        );
        assert_eq!(lvis[0], "aerosol can");
        assert!(lvis.iter().any(|l| l == "trash can"));
        assert!(lvis.iter().all(|l| !l.contains('_') && !l.contains('(')));
    }

    #[test]
    fn queries_merge_without_duplicates() {
        let q = merge_queries(
            &["cup".into(), "table".into()],
            &[" Cup ".into(), "lamp".into(), "".into()],
        );
        assert_eq!(q, ["cup", "table", "lamp"]);
    }

    #[test]
    fn paper_amg_settings() {
        let c = paper_amg_config();
        assert_eq!(c.points_per_side, Some(16));
        assert_eq!((c.crop_n_layers, c.crop_n_points_downscale_factor), (1, 2));
        assert_eq!(c.min_mask_region_area, 1);
        assert!(SsrBuilderOptions::default().validate().is_ok());
        let bad = SsrBuilderOptions {
            scan_batch: 0,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }
}
