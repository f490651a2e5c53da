//! The automatic mask generator of the official `sam2` package (`SAM2AutomaticMaskGenerator`,
//! version 1.1.0) over [`Sam2Model`], including the mask-to-mask refinement (`use_m2m`): every
//! first-pass mask is decoded again from its point with its own clamped low-resolution logits
//! as the mask prompt, in single-mask mode, before the IoU and stability filters.
//!
//! The point grids, crop boxes, box NMS and small-region removal are SAM 1's
//! ([`crate::sam::amg`]: `build_point_grid`, `generate_crop_boxes`, `nms`,
//! `remove_small_regions`), which `sam2` took over unchanged; the output type is SAM 1's
//! [`AmgMask`]. The predictor-level post-processing of `sam2`'s `SAM2Transforms`
//! (`max_hole_area = max_sprinkle_area = min_mask_region_area`: fill background components and
//! drop foreground components of at most that area in the low-resolution logits, 8-connected)
//! is applied when [`Sam2AmgConfig::predictor_postprocess`] is set; the official package only
//! applies it when its CUDA extension is built (on CPU it warns and skips it).
//!
//! Parity: `tests/sam2_amg.rs` against the official generator code (run by
//! `tools/parity/sam2_amg.py` over transformers' `Sam2Model`, with stand-ins for the parts of
//! `sam2` that need hydra/CUDA). Not verified: the official model build itself and its
//! torchvision float resize of the input (this port resizes like transformers' processor).

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use cielr_core::mask::Mask;
use image::DynamicImage;

use super::{Sam2EncodedPrompts, Sam2ImageEmbedding, Sam2Model, Sam2Processor};
use crate::error::{Result, SceneError};
use crate::sam::amg::{
    build_point_grid, generate_crop_boxes, nms, remove_small_regions, AmgConfig, AmgMask,
};

/// Settings of the SAM 2 generator: SAM 1's [`AmgConfig`] plus `sam2`'s additions.
#[derive(Debug, Clone, PartialEq)]
pub struct Sam2AmgConfig {
    /// The settings shared with SAM 1's generator.
    pub base: AmgConfig,
    /// Logit threshold of the binary masks (`mask_threshold`).
    pub mask_threshold: f32,
    /// Refine every first-pass mask once with its low-resolution logits as mask prompt.
    pub use_m2m: bool,
    /// First pass in multimask mode (`multimask_output`).
    pub multimask_output: bool,
    /// Fill holes / drop sprinkles of at most `min_mask_region_area` low-resolution pixels
    /// in the predictor (the official package does this only with its CUDA extension).
    pub predictor_postprocess: bool,
}

impl Default for Sam2AmgConfig {
    /// `sam2`'s defaults.
    fn default() -> Self {
        Self {
            base: AmgConfig {
                pred_iou_thresh: 0.8,
                ..AmgConfig::default()
            },
            mask_threshold: 0.0,
            use_m2m: false,
            multimask_output: true,
            predictor_postprocess: true,
        }
    }
}

impl Sam2AmgConfig {
    /// The paper's SSR settings (shared/reference/method.md): points_per_side 16,
    /// pred_iou_thresh 0.7, stability_score_thresh 0.92, stability_score_offset 0.7,
    /// crop_n_layers 1, box_nms_thresh 0.7, crop_n_points_downscale_factor 2,
    /// min_mask_region_area 1, use_m2m.
    pub fn paper() -> Self {
        let mut c = Self::default();
        c.base.points_per_side = Some(16);
        c.base.pred_iou_thresh = 0.7;
        c.base.stability_score_thresh = 0.92;
        c.base.stability_score_offset = 0.7;
        c.base.crop_n_layers = 1;
        c.base.box_nms_thresh = 0.7;
        c.base.crop_n_points_downscale_factor = 2;
        c.base.min_mask_region_area = 1;
        c.use_m2m = true;
        c
    }
}

/// 8-connected components of `fg` (`w x h`): a label per pixel (0 = not in `fg`) and the size
/// of each label.
fn components(fg: &[bool], w: usize, h: usize) -> (Vec<u32>, Vec<usize>) {
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
            let (x, y) = ((p % w) as i64, (p / w) as i64);
            for dy in -1..=1i64 {
                for dx in -1..=1i64 {
                    let (nx, ny) = (x + dx, y + dy);
                    if nx < 0 || ny < 0 || nx >= w as i64 || ny >= h as i64 {
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

/// `SAM2Transforms.postprocess_masks`' hole/sprinkle step on one low-resolution plane.
fn fill_holes_and_sprinkles(plane: &mut [f32], w: usize, h: usize, area: usize, thr: f32) {
    let orig: Vec<f32> = plane.to_vec();
    let bg: Vec<bool> = orig.iter().map(|&v| v <= thr).collect();
    let (labels, sizes) = components(&bg, w, h);
    for (v, &l) in plane.iter_mut().zip(&labels) {
        if l > 0 && sizes[l as usize] <= area {
            *v = thr + 10.0;
        }
    }
    // Sprinkles are found on the logits before hole filling, as in the official code.
    let fg: Vec<bool> = orig.iter().map(|&v| v > thr).collect();
    let (labels, sizes) = components(&fg, w, h);
    for (v, &l) in plane.iter_mut().zip(&labels) {
        if l > 0 && sizes[l as usize] <= area {
            *v = thr - 10.0;
        }
    }
}

/// Inclusive box `[x0, y0, x1, y1]` of a mask (`[0, 0, 0, 0]` when empty).
fn mask_box(mask: &[bool], w: usize, h: usize) -> [i64; 4] {
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0usize, 0usize);
    for y in 0..h {
        for x in 0..w {
            if mask[y * w + x] {
                x0 = x0.min(x);
                y0 = y0.min(y);
                x1 = x1.max(x);
                y1 = y1.max(y);
            }
        }
    }
    if x0 == usize::MAX {
        [0, 0, 0, 0]
    } else {
        [x0 as i64, y0 as i64, x1 as i64, y1 as i64]
    }
}

/// `is_box_near_crop_edge` (atol 20) for a box in crop coordinates.
fn near_crop_edge(b: [i64; 4], crop: [usize; 4], orig: [usize; 4]) -> bool {
    let (x0, y0) = (crop[0] as i64, crop[1] as i64);
    let ub = [b[0] + x0, b[1] + y0, b[2] + x0, b[3] + y0];
    (0..4).any(|k| {
        let v = ub[k] as f32;
        (v - crop[k] as f32).abs() <= 20.0 && (v - orig[k] as f32).abs() > 20.0
    })
}

fn as_f32(b: [i64; 4]) -> [f32; 4] {
    [b[0] as f32, b[1] as f32, b[2] as f32, b[3] as f32]
}

fn xywh(b: [f64; 4]) -> [f64; 4] {
    [b[0], b[1], b[2] - b[0], b[3] - b[1]]
}

fn read<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    t.into_data()
        .to_vec::<f32>()
        .map_err(|e| SceneError::InvalidInput(format!("reading SAM 2 outputs: {e:?}")))
}

#[derive(Debug, Clone)]
struct Record {
    mask: Mask,
    iou: f32,
    stability: f32,
    point: [f64; 2],
    bbox: [i64; 4],
    crop_box: [usize; 4],
}

/// `SAM2AutomaticMaskGenerator` over a loaded [`Sam2Model`].
#[derive(Debug)]
pub struct Sam2AutomaticMaskGenerator<'a, B: Backend> {
    model: &'a Sam2Model<B>,
    config: Sam2AmgConfig,
    point_grids: Vec<Vec<[f64; 2]>>,
}

impl<'a, B: Backend> Sam2AutomaticMaskGenerator<'a, B> {
    /// A generator with these settings; checks them.
    pub fn new(model: &'a Sam2Model<B>, config: Sam2AmgConfig) -> Result<Self> {
        let c = &config.base;
        let err = |m: String| Err(SceneError::config("SAM 2 automatic mask generator", m));
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
            (None, Some(g)) if g.len() > c.crop_n_layers => g.clone(),
            (None, Some(_)) => return err("one point grid per crop layer is needed".into()),
            _ => return err("exactly one of points_per_side and point_grids must be given".into()),
        };
        if c.points_per_batch == 0 {
            return err("points_per_batch must be positive".into());
        }
        Ok(Self {
            model,
            config,
            point_grids,
        })
    }

    /// Generates masks for an image, in the official output order.
    pub fn generate(&self, image: &DynamicImage) -> Result<Vec<AmgMask>> {
        let c = &self.config.base;
        let (w, h) = (image.width() as usize, image.height() as usize);
        if w == 0 || h == 0 {
            return Err(SceneError::InvalidInput("empty image".into()));
        }
        let (crops, layers) = generate_crop_boxes((h, w), c.crop_n_layers, c.crop_overlap_ratio);
        let mut data = Vec::new();
        for (crop, &layer) in crops.iter().zip(&layers) {
            data.extend(self.process_crop(image, *crop, layer, (h, w))?);
        }
        if crops.len() > 1 {
            let boxes: Vec<[f32; 4]> = data.iter().map(|r: &Record| as_f32(r.bbox)).collect();
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
                let b = r.bbox;
                let cb = r.crop_box;
                AmgMask {
                    area: r.mask.area(),
                    mask: r.mask,
                    bbox: xywh([b[0] as f64, b[1] as f64, b[2] as f64, b[3] as f64]),
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
        let emb = self.model.embed_image(&cropped)?;
        let points: Vec<[f64; 2]> = self.point_grids[layer]
            .iter()
            .map(|p| [p[0] * cw as f64, p[1] * ch as f64])
            .collect();
        let mut data = Vec::new();
        for batch in points.chunks(self.config.base.points_per_batch) {
            data.extend(self.process_batch(&emb, batch, (ch, cw), crop, orig)?);
        }
        let boxes: Vec<[f32; 4]> = data.iter().map(|r| as_f32(r.bbox)).collect();
        let scores: Vec<f32> = data.iter().map(|r| r.iou).collect();
        let keep = nms(&boxes, &scores, self.config.base.box_nms_thresh);
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

    /// `_predict` for single foreground points (crop pixels) with optional per-prompt mask
    /// inputs: low-resolution logits `[n, m, h, w]` (host), IoU `[n, m]`.
    fn predict_points(
        &self,
        emb: &Sam2ImageEmbedding<B>,
        points: &[[f64; 2]],
        mask_input: Option<Tensor<B, 4>>,
        multimask: bool,
    ) -> Result<(Vec<f32>, Vec<f32>, [usize; 4])> {
        let input = Sam2EncodedPrompts {
            n: points.len(),
            points_per_prompt: 1,
            points: points
                .iter()
                .map(|p| {
                    self.model
                        .processor
                        .scale_point(emb.original_size, p[0], p[1])
                })
                .collect(),
            labels: vec![1; points.len()],
            boxes: Vec::new(),
        };
        let pred = self
            .model
            .predict_encoded(emb, &input, mask_input, multimask)?;
        let dims = pred.low_res_logits.dims();
        Ok((read(pred.low_res_logits)?, read(pred.iou_scores)?, dims))
    }

    fn process_batch(
        &self,
        emb: &Sam2ImageEmbedding<B>,
        points: &[[f64; 2]],
        (ch, cw): (usize, usize),
        crop: [usize; 4],
        (oh, ow): (usize, usize),
    ) -> Result<Vec<Record>> {
        let c = &self.config;
        let (low, ious, [n, m, lh, lw]) =
            self.predict_points(emb, points, None, c.multimask_output)?;
        let plane = lh * lw;
        // Flattened (point, mask) items, point-major as `masks.flatten(0, 1)`.
        let mut item_points: Vec<[f64; 2]> = (0..n * m).map(|k| points[k / m]).collect();
        let (mut low, mut ious) = (low, ious);
        if c.use_m2m {
            let mut new_low = Vec::with_capacity(low.len());
            let mut new_iou = Vec::with_capacity(ious.len());
            let device = self.model.device();
            let per = c.base.points_per_batch;
            for start in (0..n * m).step_by(per) {
                let k = per.min(n * m - start);
                let clamped: Vec<f32> = low[start * plane..(start + k) * plane]
                    .iter()
                    .map(|v| v.clamp(-32.0, 32.0))
                    .collect();
                let mask = Tensor::from_data(TensorData::new(clamped, [k, 1, lh, lw]), device);
                let (l2, i2, _) =
                    self.predict_points(emb, &item_points[start..start + k], Some(mask), false)?;
                new_low.extend(l2);
                new_iou.extend(i2);
            }
            low = new_low;
            ious = new_iou;
        } else {
            item_points.truncate(n * m);
        }
        let thr = c.mask_threshold;
        let area = c.base.min_mask_region_area;
        let hi = thr + c.base.stability_score_offset;
        let lo = thr - c.base.stability_score_offset;
        let mut out = Vec::new();
        for (k, point) in item_points.iter().enumerate() {
            let iou = ious[k];
            // `iou > thresh` keeps, so a NaN prediction is dropped as in the official code.
            let good = iou > c.base.pred_iou_thresh;
            if c.base.pred_iou_thresh > 0.0 && !good {
                continue;
            }
            let mut lr = low[k * plane..(k + 1) * plane].to_vec();
            if c.predictor_postprocess && area > 0 {
                fill_holes_and_sprinkles(&mut lr, lw, lh, area, thr);
            }
            let t =
                Tensor::<B, 4>::from_data(TensorData::new(lr, [1, 1, lh, lw]), self.model.device());
            let logits = read(Sam2Processor::upscale_logits(t, (ch, cw)))?;
            let inter = logits.iter().filter(|&&v| v > hi).count();
            let union = logits.iter().filter(|&&v| v > lo).count();
            let stability = inter as f32 / union as f32;
            let stable = stability >= c.base.stability_score_thresh;
            if c.base.stability_score_thresh > 0.0 && !stable {
                continue;
            }
            let bin: Vec<bool> = logits.iter().map(|&v| v > thr).collect();
            let bbox = mask_box(&bin, cw, ch);
            if near_crop_edge(bbox, crop, [0, 0, ow, oh]) {
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
                point: *point,
                bbox,
                crop_box: crop,
            });
        }
        Ok(out)
    }

    fn postprocess_small_regions(&self, mut data: Vec<Record>, thresh: f64) -> Result<Vec<Record>> {
        let area = self.config.base.min_mask_region_area;
        let mut new_masks = Vec::with_capacity(data.len());
        let mut scores = Vec::with_capacity(data.len());
        let mut boxes = Vec::with_capacity(data.len());
        for r in &data {
            let (w, h) = (r.mask.width() as usize, r.mask.height() as usize);
            let mut v = vec![false; w * h];
            for (x, y) in r.mask.pixels() {
                v[y as usize * w + x as usize] = true;
            }
            let (v, holes) = remove_small_regions(&v, w, h, area, true);
            let (v, islands) = remove_small_regions(&v, w, h, area, false);
            scores.push(if holes || islands { 0.0f32 } else { 1.0 });
            boxes.push(mask_box(&v, w, h));
            new_masks.push((v, w, h));
        }
        let fboxes: Vec<[f32; 4]> = boxes.iter().map(|&b| as_f32(b)).collect();
        let keep = nms(&fboxes, &scores, thresh);
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
