//! The automatic mask generator of the official `segment-anything` package
//! (`SamAutomaticMaskGenerator`), on [`SamModel`]: a grid of single-point prompts over the image
//! (and over overlapping crops), batched through the mask decoder in multimask mode, filtered
//! by predicted IoU and stability score, de-duplicated by box NMS within each crop and across
//! crops, with optional removal of small holes and islands.
//!
//! The steps, thresholds, orders and tie-breaks follow the official code (version 1.0):
//! masks are thresholded at logit 0, boxes are inclusive `[x0, y0, x1, y1]` pixel extents,
//! NMS is torchvision's (stable descending sort, suppress IoU > threshold, f32 arithmetic),
//! connected components are 8-connected. Parity: `tests/sam_amg_parity.rs`.
//!
//! The generator is shared with SAM 2.1 ([`crate::sam2::amg`]): [`AutomaticMaskGenerator`] is
//! generic over [`AmgModel`], what differs between the models (the image embedding, decoding
//! the points, the threshold and upscaling of the logits, and SAM 2.1's `use_m2m` refinement).

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use cielr_core::mask::Mask;
use image::DynamicImage;

use super::{ImageEmbedding, SamModel, SamPrompt};
use crate::error::{Result, SceneError};

/// Settings of the generator; [`Default`] is the official defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct AmgConfig {
    /// Points along one side of the grid (`points_per_side`); `None` with `point_grids`.
    pub points_per_side: Option<usize>,
    /// Points decoded per batch.
    pub points_per_batch: usize,
    /// Masks with predicted IoU `<=` this are dropped (0 disables).
    pub pred_iou_thresh: f32,
    /// Masks with stability score `<` this are dropped (0 disables).
    pub stability_score_thresh: f32,
    /// Logit offset of the stability score.
    pub stability_score_offset: f32,
    /// Box IoU above which NMS drops a mask within a crop.
    pub box_nms_thresh: f64,
    /// Crop layers (layer `i` has `(2^i)^2` crops).
    pub crop_n_layers: usize,
    /// Box IoU above which NMS drops a mask across crops.
    pub crop_nms_thresh: f64,
    /// Overlap of the crops of the first crop layer, as a fraction of the short side.
    pub crop_overlap_ratio: f64,
    /// Points per side in crop layer `n` are divided by this to the `n`.
    pub crop_n_points_downscale_factor: usize,
    /// Explicit point grids (normalised to `[0, 1]`), one per crop layer; exclusive with
    /// `points_per_side`.
    pub point_grids: Option<Vec<Vec<[f64; 2]>>>,
    /// Holes and islands smaller than this are removed (0 disables).
    pub min_mask_region_area: usize,
}

/// The most crop layers [`AmgConfig::validate`] accepts (layer `i` has `4^i` crops).
pub const MAX_CROP_N_LAYERS: usize = 6;

/// The largest `points_per_side` [`AmgConfig::validate`] accepts (the grid has its square).
pub const MAX_POINTS_PER_SIDE: usize = 1024;

impl AmgConfig {
    /// Checks the settings that size the work: the number of crop layers, the grid size, the
    /// crop overlap ratio and the batch size.
    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(SceneError::config("automatic mask generator", m));
        if self.crop_n_layers > MAX_CROP_N_LAYERS {
            return err(format!(
                "crop_n_layers {} is more than {MAX_CROP_N_LAYERS}",
                self.crop_n_layers
            ));
        }
        if self
            .points_per_side
            .is_some_and(|n| n > MAX_POINTS_PER_SIDE)
        {
            return err(format!(
                "points_per_side {:?} is more than {MAX_POINTS_PER_SIDE}",
                self.points_per_side
            ));
        }
        if !(0.0..1.0).contains(&self.crop_overlap_ratio) {
            return err(format!(
                "crop_overlap_ratio {} is not in [0, 1)",
                self.crop_overlap_ratio
            ));
        }
        if self.points_per_batch == 0 {
            return err("points_per_batch must be positive".into());
        }
        Ok(())
    }
}

impl Default for AmgConfig {
    fn default() -> Self {
        Self {
            points_per_side: Some(32),
            points_per_batch: 64,
            pred_iou_thresh: 0.88,
            stability_score_thresh: 0.95,
            stability_score_offset: 1.0,
            box_nms_thresh: 0.7,
            crop_n_layers: 0,
            crop_nms_thresh: 0.7,
            crop_overlap_ratio: 512.0 / 1500.0,
            crop_n_points_downscale_factor: 1,
            point_grids: None,
            min_mask_region_area: 0,
        }
    }
}

/// One generated mask.
#[derive(Debug, Clone)]
pub struct AmgMask {
    /// The mask, in original pixels.
    pub mask: Mask,
    /// Box around the mask, XYWH with the official convention (`w = x1 - x0` of the inclusive
    /// extent).
    pub bbox: [f64; 4],
    /// Pixels in the mask.
    pub area: u64,
    /// The decoder's predicted IoU.
    pub predicted_iou: f32,
    /// The stability score.
    pub stability_score: f32,
    /// The prompt point, in original pixels.
    pub point_coords: [f64; 2],
    /// The crop the mask was predicted in, XYWH.
    pub crop_box: [f64; 4],
}

/// One mask while the generator runs.
#[derive(Debug, Clone)]
struct Record {
    mask: Mask,
    iou: f32,
    stability: f32,
    point: [f64; 2],
    /// Inclusive extent, `[x0, y0, x1, y1]`.
    bbox: [i64; 4],
    crop_box: [usize; 4],
}

/// `build_point_grid`: `n * n` points at the centres of an `n x n` grid over `[0, 1]^2`, row
/// by row (numpy `linspace` arithmetic).
pub fn build_point_grid(n: usize) -> Vec<[f64; 2]> {
    if n == 0 {
        return Vec::new();
    }
    let offset = 1.0 / (2 * n) as f64;
    let (start, stop) = (offset, 1.0 - offset);
    let side: Vec<f64> = if n == 1 {
        vec![start]
    } else {
        let step = (stop - start) / (n - 1) as f64;
        (0..n)
            .map(|i| {
                if i == n - 1 {
                    stop
                } else {
                    i as f64 * step + start
                }
            })
            .collect()
    };
    let mut out = Vec::with_capacity(n * n);
    for &y in &side {
        for &x in &side {
            out.push([x, y]);
        }
    }
    out
}

/// `generate_crop_boxes`: the crop boxes `[x0, y0, x1, y1]` and their layer indices for an
/// image of `(height, width)`.
pub fn generate_crop_boxes(
    (im_h, im_w): (usize, usize),
    n_layers: usize,
    overlap_ratio: f64,
) -> (Vec<[usize; 4]>, Vec<usize>) {
    let mut boxes = vec![[0, 0, im_w, im_h]];
    let mut layers = vec![0];
    let short = im_h.min(im_w) as f64;
    let crop_len = |orig: usize, n: usize, overlap: usize| -> usize {
        ((overlap * (n - 1) + orig) as f64 / n as f64).ceil() as usize
    };
    for i in 0..n_layers {
        let n = 1usize << (i + 1);
        let overlap = (overlap_ratio * short * (2.0 / n as f64)) as usize;
        let cw = crop_len(im_w, n, overlap);
        let ch = crop_len(im_h, n, overlap);
        let x0s: Vec<usize> = (0..n).map(|k| cw.saturating_sub(overlap) * k).collect();
        let y0s: Vec<usize> = (0..n).map(|k| ch.saturating_sub(overlap) * k).collect();
        for &x0 in &x0s {
            for &y0 in &y0s {
                // On tiny images late crops can start past the edge: clamp them to empty boxes.
                let (x0, y0) = (x0.min(im_w), y0.min(im_h));
                boxes.push([x0, y0, (x0 + cw).min(im_w), (y0 + ch).min(im_h)]);
                layers.push(i + 1);
            }
        }
    }
    (boxes, layers)
}

/// torchvision's `nms` on `[x0, y0, x1, y1]` boxes: indices kept, in descending score order
/// (stable for ties); a box is dropped when its IoU with a kept one exceeds `thresh`.
pub fn nms(boxes: &[[f32; 4]], scores: &[f32], thresh: f64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| {
        scores[b]
            .partial_cmp(&scores[a])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let area = |b: &[f32; 4]| (b[2] - b[0]) * (b[3] - b[1]);
    let mut suppressed = vec![false; boxes.len()];
    let mut keep = Vec::new();
    for (oi, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let bi = &boxes[i];
        let ai = area(bi);
        for &j in &order[oi + 1..] {
            if suppressed[j] {
                continue;
            }
            let bj = &boxes[j];
            let w = (bi[2].min(bj[2]) - bi[0].max(bj[0])).max(0.0);
            let h = (bi[3].min(bj[3]) - bi[1].max(bj[1])).max(0.0);
            let inter = w * h;
            let ovr = inter / (ai + area(bj) - inter);
            if ovr as f64 > thresh {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// `batched_mask_to_box` for one `w x h` row-major mask: inclusive `[x0, y0, x1, y1]`, zeros
/// when empty.
fn mask_box(mask: &[bool], w: usize, h: usize) -> [i64; 4] {
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0usize, 0usize);
    let mut any = false;
    for y in 0..h {
        for x in 0..w {
            if mask[y * w + x] {
                any = true;
                x0 = x0.min(x);
                y0 = y0.min(y);
                x1 = x1.max(x);
                y1 = y1.max(y);
            }
        }
    }
    if any {
        [x0 as i64, y0 as i64, x1 as i64, y1 as i64]
    } else {
        [0, 0, 0, 0]
    }
}

/// `is_box_near_crop_edge` for one box in crop coordinates.
fn near_crop_edge(b: [i64; 4], crop: [usize; 4], orig: [usize; 4]) -> bool {
    let (x0, y0) = (crop[0] as i64, crop[1] as i64);
    let ub = [b[0] + x0, b[1] + y0, b[2] + x0, b[3] + y0];
    (0..4).any(|k| {
        let v = ub[k] as f32;
        let near_crop = (v - crop[k] as f32).abs() <= 20.0;
        let near_image = (v - orig[k] as f32).abs() <= 20.0;
        near_crop && !near_image
    })
}

/// 8-connected components of `fg` pixels (`w x h`, row-major), labelled 1.. in raster order
/// of their first pixel; returns the labels (0 elsewhere) and each label's size.
pub(crate) fn components(fg: &[bool], w: usize, h: usize) -> (Vec<u32>, Vec<usize>) {
    let mut labels = vec![0u32; w * h];
    let mut sizes = vec![0usize];
    let mut stack = Vec::new();
    for start in 0..w * h {
        if !fg[start] || labels[start] != 0 {
            continue;
        }
        let label = sizes.len() as u32;
        let mut size = 0;
        labels[start] = label;
        stack.push(start);
        while let Some(p) = stack.pop() {
            size += 1;
            let (px, py) = ((p % w) as i64, (p / w) as i64);
            for dy in -1..=1i64 {
                for dx in -1..=1i64 {
                    let (nx, ny) = (px + dx, py + dy);
                    if (dx, dy) == (0, 0) || nx < 0 || ny < 0 || nx >= w as i64 || ny >= h as i64 {
                        continue;
                    }
                    let q = ny as usize * w + nx as usize;
                    if fg[q] && labels[q] == 0 {
                        labels[q] = label;
                        stack.push(q);
                    }
                }
            }
        }
        sizes.push(size);
    }
    (labels, sizes)
}

/// `remove_small_regions`: fills holes (`holes = true`) or removes islands smaller than
/// `area`; returns the new mask and whether it changed.
pub fn remove_small_regions(
    mask: &[bool],
    w: usize,
    h: usize,
    area: usize,
    holes: bool,
) -> (Vec<bool>, bool) {
    let working: Vec<bool> = mask.iter().map(|&m| m ^ holes).collect();
    let (labels, sizes) = components(&working, w, h);
    let small: Vec<bool> = sizes
        .iter()
        .enumerate()
        .map(|(i, &s)| i > 0 && s < area)
        .collect();
    if !small.iter().any(|&s| s) {
        return (mask.to_vec(), false);
    }
    let out: Vec<bool> = if holes {
        // Label 0 (the mask itself) and the small background regions.
        labels
            .iter()
            .map(|&l| l == 0 || small[l as usize])
            .collect()
    } else {
        let mut fill: Vec<bool> = (0..sizes.len()).map(|i| i > 0 && !small[i]).collect();
        if !fill.iter().any(|&f| f) {
            // Keep the largest island (the first one on ties).
            let mut best = 1;
            for i in 2..sizes.len() {
                if sizes[i] > sizes[best] {
                    best = i;
                }
            }
            fill[best] = true;
        }
        labels.iter().map(|&l| fill[l as usize]).collect()
    };
    (out, true)
}

fn mask_to_vec(m: &Mask) -> Vec<bool> {
    let (w, h) = (m.width(), m.height());
    let mut v = vec![false; (w * h) as usize];
    for (x, y) in m.pixels() {
        v[(y * w + x) as usize] = true;
    }
    v
}

fn as_f32(b: [i64; 4]) -> [f32; 4] {
    [b[0] as f32, b[1] as f32, b[2] as f32, b[3] as f32]
}

fn xywh(b: [f64; 4]) -> [f64; 4] {
    [b[0], b[1], b[2] - b[0], b[3] - b[1]]
}

/// Candidate masks decoded for one batch of prompt points, before any filtering.
#[derive(Debug, Clone)]
pub struct PointMasks {
    /// Low-resolution logits, `[k, h, w]` row-major.
    pub low_res: Vec<f32>,
    /// `(h, w)` of one low-resolution plane.
    pub low_res_size: (usize, usize),
    /// The predicted IoU of each of the `k` candidates.
    pub iou: Vec<f32>,
    /// Candidates per point: candidate `i` belongs to point `i / masks_per_point`.
    pub masks_per_point: usize,
}

/// What the automatic mask generator needs of a promptable model; [`SamModel`] and
/// [`crate::sam2::Sam2Model`] implement it. The generator owns the rest: point grids, crops,
/// the IoU and stability filters, box NMS and small-region removal.
pub trait AmgModel {
    /// The generator's settings for this model: [`AmgConfig`] or a struct that extends it.
    type Config: AsRef<AmgConfig> + Clone + std::fmt::Debug;
    /// One (cropped) image's embedding.
    type Embedding;

    /// The logit threshold of the binary masks.
    fn mask_threshold(_config: &Self::Config) -> f32 {
        0.0
    }

    /// Embeds one image (a crop of the input).
    fn embed(&self, image: &DynamicImage) -> Result<Self::Embedding>;

    /// Decodes single foreground points (crop pixels) into candidate masks, point-major, with
    /// whatever refinement `config` asks for.
    fn predict_points(
        &self,
        config: &Self::Config,
        embedding: &Self::Embedding,
        points: &[[f64; 2]],
    ) -> Result<PointMasks>;

    /// One candidate's low-resolution logits (`low_res_size`) as logits over the whole crop,
    /// `(height, width)`, row-major.
    fn crop_logits(
        &self,
        config: &Self::Config,
        embedding: &Self::Embedding,
        low_res: Vec<f32>,
        low_res_size: (usize, usize),
        crop_size: (usize, usize),
    ) -> Result<Vec<f32>>;
}

impl AsRef<AmgConfig> for AmgConfig {
    fn as_ref(&self) -> &AmgConfig {
        self
    }
}

impl<B: Backend> AmgModel for SamModel<B> {
    type Config = AmgConfig;
    type Embedding = ImageEmbedding<B>;

    fn embed(&self, image: &DynamicImage) -> Result<ImageEmbedding<B>> {
        self.embed_image(image)
    }

    /// Multimask mode: three candidates per point.
    fn predict_points(
        &self,
        _config: &AmgConfig,
        embedding: &ImageEmbedding<B>,
        points: &[[f64; 2]],
    ) -> Result<PointMasks> {
        let prompts: Vec<SamPrompt> = points
            .iter()
            .map(|p| SamPrompt::point(p[0], p[1]))
            .collect();
        let pred = self.predict(embedding, &prompts, true)?;
        let [_, m, h, w] = pred.low_res_logits.dims();
        Ok(PointMasks {
            low_res: read_sam(pred.low_res_logits)?,
            low_res_size: (h, w),
            iou: read_sam(pred.iou_scores)?,
            masks_per_point: m,
        })
    }

    /// `post_process_masks` before the threshold: to the padded size, crop the padding, to the
    /// crop's size.
    fn crop_logits(
        &self,
        _config: &AmgConfig,
        embedding: &ImageEmbedding<B>,
        low_res: Vec<f32>,
        (lh, lw): (usize, usize),
        (ch, cw): (usize, usize),
    ) -> Result<Vec<f32>> {
        let t = Tensor::<B, 4>::from_data(TensorData::new(low_res, [1, 1, lh, lw]), self.device());
        let logits =
            self.processor
                .upscale_logits(t, embedding.original_size, embedding.reshaped_size)?;
        let [_, _, h, w] = logits.dims();
        if (h, w) != (ch, cw) {
            return Err(SceneError::InvalidInput(format!(
                "mask logits are {w}x{h}, the crop is {cw}x{ch}"
            )));
        }
        read_sam(logits)
    }
}

fn read_sam<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    cielr_core::backend::read_finite_f32(t, "SAM's outputs").map_err(Into::into)
}

/// The automatic mask generator over a loaded model (SAM or SAM 2.1, see [`AmgModel`]).
#[derive(Debug)]
pub struct AutomaticMaskGenerator<'a, M: AmgModel> {
    model: &'a M,
    config: M::Config,
    point_grids: Vec<Vec<[f64; 2]>>,
}

/// The official `segment-anything` generator over [`SamModel`].
pub type SamAutomaticMaskGenerator<'a, B> = AutomaticMaskGenerator<'a, SamModel<B>>;

impl<'a, M: AmgModel> AutomaticMaskGenerator<'a, M> {
    /// A generator with these settings; checks them.
    pub fn new(model: &'a M, config: M::Config) -> Result<Self> {
        let err = |m: String| Err(SceneError::config("automatic mask generator", m));
        let c = config.as_ref();
        c.validate()?;
        let point_grids = match (&c.points_per_side, &c.point_grids) {
            (Some(n), None) => {
                if c.crop_n_points_downscale_factor == 0 {
                    return err("crop_n_points_downscale_factor must be positive".into());
                }
                (0..=c.crop_n_layers)
                    .map(|i| {
                        let d = (c.crop_n_points_downscale_factor as f64).powi(i as i32);
                        build_point_grid((*n as f64 / d) as usize)
                    })
                    .collect()
            }
            (None, Some(g)) => {
                if g.len() < c.crop_n_layers + 1 {
                    return err(format!(
                        "{} point grids for {} crop layers (one per layer, plus the image)",
                        g.len(),
                        c.crop_n_layers
                    ));
                }
                g.clone()
            }
            _ => return err("exactly one of points_per_side and point_grids must be given".into()),
        };
        Ok(Self {
            model,
            config,
            point_grids,
        })
    }

    /// Generates masks for an image, in the official output order.
    pub fn generate(&self, image: &DynamicImage) -> Result<Vec<AmgMask>> {
        let c = self.config.as_ref();
        let (w, h) = (image.width() as usize, image.height() as usize);
        if w == 0 || h == 0 {
            return Err(SceneError::InvalidInput("empty image".into()));
        }
        let (crop_boxes, layers) =
            generate_crop_boxes((h, w), c.crop_n_layers, c.crop_overlap_ratio);
        let mut data: Vec<Record> = Vec::new();
        for (crop, &layer) in crop_boxes.iter().zip(&layers) {
            // An empty crop (late layers of a tiny image) holds no pixels and so no masks.
            if crop[2] <= crop[0] || crop[3] <= crop[1] {
                continue;
            }
            data.extend(self.process_crop(image, *crop, layer, (h, w))?);
        }
        if crop_boxes.len() > 1 {
            let boxes: Vec<[f32; 4]> = data.iter().map(|r| as_f32(r.bbox)).collect();
            let scores: Vec<f32> = data
                .iter()
                .map(|r| {
                    let cb = r.crop_box;
                    1.0 / ((cb[2] - cb[0]) * (cb[3] - cb[1])) as f32
                })
                .collect();
            let keep = nms(&boxes, &scores, c.crop_nms_thresh);
            data = keep.into_iter().map(|i| data[i].clone()).collect();
        }
        if c.min_mask_region_area > 0 && !data.is_empty() {
            data = self.postprocess_small_regions(data, c.box_nms_thresh.max(c.crop_nms_thresh))?;
        }
        Ok(data
            .into_iter()
            .map(|r| {
                let area = r.mask.area();
                let b = r.bbox;
                let cb = r.crop_box;
                AmgMask {
                    mask: r.mask,
                    bbox: xywh([b[0] as f64, b[1] as f64, b[2] as f64, b[3] as f64]),
                    area,
                    predicted_iou: r.iou,
                    stability_score: r.stability,
                    point_coords: r.point,
                    crop_box: xywh([cb[0] as f64, cb[1] as f64, cb[2] as f64, cb[3] as f64]),
                }
            })
            .collect())
    }

    fn process_crop(
        &self,
        image: &DynamicImage,
        crop: [usize; 4],
        layer: usize,
        orig: (usize, usize),
    ) -> Result<Vec<Record>> {
        let [x0, y0, x1, y1] = crop;
        let (cw, ch) = (x1 - x0, y1 - y0);
        let cropped = image.crop_imm(x0 as u32, y0 as u32, cw as u32, ch as u32);
        let embedding = self.model.embed(&cropped)?;
        let grid = &self.point_grids[layer];
        let points: Vec<[f64; 2]> = grid
            .iter()
            .map(|p| [p[0] * cw as f64, p[1] * ch as f64])
            .collect();
        let mut data = Vec::new();
        for batch in points.chunks(self.config.as_ref().points_per_batch) {
            data.extend(self.process_batch(&embedding, batch, (ch, cw), crop, orig)?);
        }
        let boxes: Vec<[f32; 4]> = data.iter().map(|r| as_f32(r.bbox)).collect();
        let scores: Vec<f32> = data.iter().map(|r| r.iou).collect();
        let keep = nms(&boxes, &scores, self.config.as_ref().box_nms_thresh);
        Ok(keep
            .into_iter()
            .map(|i| {
                let mut r = data[i].clone();
                r.bbox = [
                    r.bbox[0] + x0 as i64,
                    r.bbox[1] + y0 as i64,
                    r.bbox[2] + x0 as i64,
                    r.bbox[3] + y0 as i64,
                ];
                r.point = [r.point[0] + x0 as f64, r.point[1] + y0 as f64];
                r
            })
            .collect())
    }

    fn process_batch(
        &self,
        embedding: &M::Embedding,
        points: &[[f64; 2]],
        (ch, cw): (usize, usize),
        crop: [usize; 4],
        (oh, ow): (usize, usize),
    ) -> Result<Vec<Record>> {
        let c = self.config.as_ref();
        let cands = self.model.predict_points(&self.config, embedding, points)?;
        let (lh, lw) = cands.low_res_size;
        let plane = lh * lw;
        if cands.masks_per_point == 0
            || cands.iou.len() != points.len() * cands.masks_per_point
            || cands.low_res.len() != cands.iou.len() * plane
        {
            return Err(SceneError::InvalidInput(format!(
                "{} points decoded into {} scores and {} logits of {lw}x{lh}",
                points.len(),
                cands.iou.len(),
                cands.low_res.len()
            )));
        }
        let thr = M::mask_threshold(&self.config);
        let hi = thr + c.stability_score_offset;
        let lo = thr - c.stability_score_offset;
        let orig_box = [0, 0, ow, oh];
        let mut out = Vec::new();
        for (k, &iou) in cands.iou.iter().enumerate() {
            // `iou > thresh` keeps, so a NaN prediction is dropped as in the official code.
            let good = iou > c.pred_iou_thresh;
            if c.pred_iou_thresh > 0.0 && !good {
                continue;
            }
            // One candidate at a time: a whole batch's logits at crop resolution would take
            // `k * H * W` floats.
            let low = cands.low_res[k * plane..(k + 1) * plane].to_vec();
            let logits =
                self.model
                    .crop_logits(&self.config, embedding, low, (lh, lw), (ch, cw))?;
            let inter = logits.iter().filter(|&&v| v > hi).count();
            let union = logits.iter().filter(|&&v| v > lo).count();
            let stability = inter as f32 / union as f32;
            let stable = stability >= c.stability_score_thresh;
            if c.stability_score_thresh > 0.0 && !stable {
                continue;
            }
            let bin: Vec<bool> = logits.iter().map(|&v| v > thr).collect();
            let bbox = mask_box(&bin, cw, ch);
            if near_crop_edge(bbox, crop, orig_box) {
                continue;
            }
            let [x0, y0, _, _] = crop;
            let mask = Mask::from_fn(ow as u32, oh as u32, |x, y| {
                let (x, y) = (x as usize, y as usize);
                x >= x0 && y >= y0 && x < x0 + cw && y < y0 + ch && bin[(y - y0) * cw + (x - x0)]
            })
            .map_err(|e| SceneError::InvalidInput(e.to_string()))?;
            out.push(Record {
                mask,
                iou,
                stability,
                point: points[k / cands.masks_per_point],
                bbox,
                crop_box: crop,
            });
        }
        Ok(out)
    }

    fn postprocess_small_regions(
        &self,
        mut data: Vec<Record>,
        nms_thresh: f64,
    ) -> Result<Vec<Record>> {
        let area = self.config.as_ref().min_mask_region_area;
        let mut new_masks = Vec::with_capacity(data.len());
        let mut scores = Vec::with_capacity(data.len());
        let mut boxes = Vec::with_capacity(data.len());
        for r in &data {
            let (w, h) = (r.mask.width() as usize, r.mask.height() as usize);
            let v = mask_to_vec(&r.mask);
            let (v, changed_holes) = remove_small_regions(&v, w, h, area, true);
            let (v, changed_islands) = remove_small_regions(&v, w, h, area, false);
            scores.push(if changed_holes || changed_islands {
                0.0f32
            } else {
                1.0
            });
            boxes.push(mask_box(&v, w, h));
            new_masks.push((v, w, h));
        }
        let fboxes: Vec<[f32; 4]> = boxes.iter().map(|&b| as_f32(b)).collect();
        let keep = nms(&fboxes, &scores, nms_thresh);
        for &i in &keep {
            if scores[i] == 0.0 {
                let (v, w, h) = &new_masks[i];
                data[i].mask =
                    Mask::from_fn(*w as u32, *h as u32, |x, y| v[y as usize * w + x as usize])
                        .map_err(|e| SceneError::InvalidInput(e.to_string()))?;
                data[i].bbox = boxes[i];
            }
        }
        Ok(keep.into_iter().map(|i| data[i].clone()).collect())
    }
}
