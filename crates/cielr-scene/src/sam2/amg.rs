//! The automatic mask generator of the official `sam2` package (`SAM2AutomaticMaskGenerator`,
//! version 1.1.0) over [`Sam2Model`], including the mask-to-mask refinement (`use_m2m`): every
//! first-pass mask is decoded again from its point with its own clamped low-resolution logits
//! as the mask prompt, in single-mask mode, before the IoU and stability filters.
//!
//! The generator itself is SAM 1's ([`AutomaticMaskGenerator`]: point grids, crop boxes,
//! filters, box NMS and small-region removal, which `sam2` took over unchanged); this module
//! implements its [`AmgModel`] trait for [`Sam2Model`] (decoding points, `use_m2m`, the mask
//! threshold), and the output type is SAM 1's [`AmgMask`](crate::sam::amg::AmgMask). The
//! predictor-level post-processing of `sam2`'s `SAM2Transforms` (`max_hole_area =
//! max_sprinkle_area = min_mask_region_area`: fill background components and drop foreground
//! components of at most that area in the low-resolution logits, 8-connected) is applied when
//! [`Sam2AmgConfig::predictor_postprocess`] is set; the official package only applies it when
//! its CUDA extension is built (on CPU it warns and skips it).
//!
//! Parity: `tests/sam2_amg.rs` against the official generator code (run by
//! `tools/parity/sam2_amg.py` over transformers' `Sam2Model`, with stand-ins for the parts of
//! `sam2` that need hydra/CUDA). Not verified: the official model build itself and its
//! torchvision float resize of the input (this port resizes like transformers' processor).

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use image::DynamicImage;

use super::{Sam2EncodedPrompts, Sam2ImageEmbedding, Sam2Model, Sam2Processor};
use crate::error::Result;
use crate::sam::amg::{components, AmgConfig, AmgModel, AutomaticMaskGenerator, PointMasks};

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

impl AsRef<AmgConfig> for Sam2AmgConfig {
    fn as_ref(&self) -> &AmgConfig {
        &self.base
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

fn read<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    cielr_core::backend::read_finite_f32(t, "SAM 2's outputs").map_err(Into::into)
}

/// `SAM2AutomaticMaskGenerator` over a loaded [`Sam2Model`].
pub type Sam2AutomaticMaskGenerator<'a, B> = AutomaticMaskGenerator<'a, Sam2Model<B>>;

impl<B: Backend> Sam2Model<B> {
    /// `_predict` for single foreground points (crop pixels) with optional per-prompt mask
    /// inputs: low-resolution logits `[n, m, h, w]` (host), IoU `[n, m]`.
    fn amg_predict(
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
                .map(|p| self.processor.scale_point(emb.original_size, p[0], p[1]))
                .collect(),
            labels: vec![1; points.len()],
            boxes: Vec::new(),
        };
        let pred = self.predict_encoded(emb, &input, mask_input, multimask)?;
        let dims = pred.low_res_logits.dims();
        Ok((read(pred.low_res_logits)?, read(pred.iou_scores)?, dims))
    }
}

impl<B: Backend> AmgModel for Sam2Model<B> {
    type Config = Sam2AmgConfig;
    type Embedding = Sam2ImageEmbedding<B>;

    fn mask_threshold(config: &Sam2AmgConfig) -> f32 {
        config.mask_threshold
    }

    fn embed(&self, image: &DynamicImage) -> Result<Sam2ImageEmbedding<B>> {
        self.embed_image(image)
    }

    /// The first pass (`multimask_output`), then with `use_m2m` every candidate decoded again
    /// from its point with its clamped logits as the mask prompt, single-mask, in batches of
    /// `points_per_batch`.
    fn predict_points(
        &self,
        c: &Sam2AmgConfig,
        emb: &Sam2ImageEmbedding<B>,
        points: &[[f64; 2]],
    ) -> Result<PointMasks> {
        let (low, iou, [n, m, lh, lw]) = self.amg_predict(emb, points, None, c.multimask_output)?;
        let mut cands = PointMasks {
            low_res: low,
            low_res_size: (lh, lw),
            iou,
            masks_per_point: m,
        };
        if !c.use_m2m {
            return Ok(cands);
        }
        let plane = lh * lw;
        // Flattened (point, mask) items, point-major as `masks.flatten(0, 1)`.
        let item_points: Vec<[f64; 2]> = (0..n * m).map(|k| points[k / m]).collect();
        let mut new_low = Vec::with_capacity(cands.low_res.len());
        let mut new_iou = Vec::with_capacity(cands.iou.len());
        let per = c.base.points_per_batch;
        for start in (0..n * m).step_by(per) {
            let k = per.min(n * m - start);
            let clamped: Vec<f32> = cands.low_res[start * plane..(start + k) * plane]
                .iter()
                .map(|v| v.clamp(-32.0, 32.0))
                .collect();
            let mask = Tensor::from_data(TensorData::new(clamped, [k, 1, lh, lw]), self.device());
            let (l2, i2, _) =
                self.amg_predict(emb, &item_points[start..start + k], Some(mask), false)?;
            new_low.extend(l2);
            new_iou.extend(i2);
        }
        cands.low_res = new_low;
        cands.iou = new_iou;
        Ok(cands)
    }

    /// With `predictor_postprocess`, holes and sprinkles of at most `min_mask_region_area`
    /// low-resolution pixels are removed first; then bilinear to the crop's size.
    fn crop_logits(
        &self,
        c: &Sam2AmgConfig,
        _emb: &Sam2ImageEmbedding<B>,
        mut low_res: Vec<f32>,
        (lh, lw): (usize, usize),
        crop_size: (usize, usize),
    ) -> Result<Vec<f32>> {
        let area = c.base.min_mask_region_area;
        if c.predictor_postprocess && area > 0 {
            fill_holes_and_sprinkles(&mut low_res, lw, lh, area, c.mask_threshold);
        }
        let t = Tensor::<B, 4>::from_data(TensorData::new(low_res, [1, 1, lh, lw]), self.device());
        read(Sam2Processor::upscale_logits(t, crop_size))
    }
}
