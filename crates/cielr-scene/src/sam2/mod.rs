//! SAM 2.1 (Hiera; Ravi et al. 2024) for single images in Burn, loading transformers'
//! `Sam2Model` checkpoints (facebook/sam2.1-hiera-*: safetensors with transformers' names, the
//! checkpoint's `config.json` and `preprocessor_config.json`).
//!
//! - [`Sam2Model::embed_image`] runs the Hiera backbone and FPN neck once per image and keeps
//!   the three feature levels the decoder uses ([`Sam2ImageEmbedding`]): the high-resolution
//!   skips after `conv_s0`/`conv_s1`, and the lowest level plus `no_memory_embedding` (what
//!   the image predictor does without memory);
//! - [`Sam2Model::predict`] decodes a batch of point/box prompts (optionally with a mask
//!   prompt, [`Sam2Model::predict_with_mask`]) into low-resolution logits, IoU predictions and
//!   object-score logits ([`Sam2Prediction`]); masks in original pixels via
//!   [`Sam2Prediction::masks`] (`post_process_masks`).
//!
//! Parity with transformers 5.24 is checked by `tests/sam2_parity.rs` against
//! `tools/parity/sam2.py`. The video/memory parts of SAM 2 are out of scope.
//! - [`amg::Sam2AutomaticMaskGenerator`] is the official `sam2` automatic mask generator,
//!   with `use_m2m` (see its module for what is and is not verified yet).
//!
//! Unfinished: batches of several images per call are not supported.

pub mod amg;
pub mod config;
pub mod decoder;
pub mod hiera;

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use cielr_core::weights::TensorStore;
use image::DynamicImage;
use serde::Deserialize;

pub use config::{
    Sam2Config, Sam2HieraConfig, Sam2MaskDecoderConfig, Sam2PromptEncoderConfig, Sam2VisionConfig,
};
pub use decoder::{Sam2EncodedPrompts, LABEL_NOT_A_POINT, LABEL_PAD};

use crate::error::{Result, SceneError};
use crate::preprocess::{resize, to_rgb, Resample};
use crate::sam::{encode_point_prompts, logits_to_masks, read_checkpoint, SamPrompt};
use decoder::{FourierEmbedding, Sam2MaskDecoder, Sam2PromptEncoder};
use hiera::{Sam2Hiera, Sam2Neck};

/// One prompt in original-image pixels: SAM's [`SamPrompt`] (points with labels and at most
/// one box).
pub type Sam2Prompt = SamPrompt;

/// `preprocessor_config.json` of `Sam2ImageProcessor` (the fields the image path reads).
#[derive(Debug, Clone, Deserialize)]
pub struct Sam2ProcessorConfig {
    /// Resize to `size`.
    #[serde(default = "yes")]
    pub do_resize: bool,
    /// Target size (height, width); the image is resized to exactly this (not longest-side).
    #[serde(default = "d_size")]
    pub size: Sam2Size,
    /// PIL resampling code (2 = bilinear).
    #[serde(default = "d_resample")]
    pub resample: i64,
    /// Multiply by `rescale_factor`.
    #[serde(default = "yes")]
    pub do_rescale: bool,
    /// Usually 1/255.
    #[serde(default = "d_rescale")]
    pub rescale_factor: f64,
    /// Normalise with `image_mean`/`image_std`.
    #[serde(default = "yes")]
    pub do_normalize: bool,
    /// Per-channel mean.
    #[serde(default = "d_mean")]
    pub image_mean: [f64; 3],
    /// Per-channel std.
    #[serde(default = "d_std")]
    pub image_std: [f64; 3],
}

/// `{"height": .., "width": ..}`.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Sam2Size {
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
}

fn yes() -> bool {
    true
}
fn d_size() -> Sam2Size {
    Sam2Size {
        height: 1024,
        width: 1024,
    }
}
fn d_resample() -> i64 {
    2
}
fn d_rescale() -> f64 {
    1.0 / 255.0
}
fn d_mean() -> [f64; 3] {
    [0.485, 0.456, 0.406]
}
fn d_std() -> [f64; 3] {
    [0.229, 0.224, 0.225]
}

impl Default for Sam2ProcessorConfig {
    fn default() -> Self {
        serde_json::from_str("{}").unwrap_or(Self {
            do_resize: true,
            size: d_size(),
            resample: 2,
            do_rescale: true,
            rescale_factor: d_rescale(),
            do_normalize: true,
            image_mean: d_mean(),
            image_std: d_std(),
        })
    }
}

impl Sam2ProcessorConfig {
    /// Reads `preprocessor_config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| SceneError::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| SceneError::json(path.display().to_string(), e))
    }
}

/// `Sam2ImageProcessor` + the coordinate handling of `Sam2Processor`.
#[derive(Debug, Clone)]
pub struct Sam2Processor {
    /// The configuration.
    pub config: Sam2ProcessorConfig,
}

impl Sam2Processor {
    /// Pixel values `[3 * H * W]` (channel-major) of `image` resized to `size`, rescaled and
    /// normalised, and the original (height, width).
    pub fn preprocess(&self, image: &DynamicImage) -> Result<(Vec<f32>, (usize, usize))> {
        let c = &self.config;
        let rgb = to_rgb(image);
        let orig = (rgb.height() as usize, rgb.width() as usize);
        let rgb = if c.do_resize && (orig != (c.size.height, c.size.width)) {
            resize(
                &rgb,
                c.size.width,
                c.size.height,
                Resample::from_code(c.resample)?,
            )?
        } else {
            rgb
        };
        let (h, w) = (rgb.height() as usize, rgb.width() as usize);
        let raw = rgb.as_raw();
        let mut out = vec![0f32; 3 * h * w];
        for ch in 0..3 {
            for i in 0..h * w {
                let mut v = raw[i * 3 + ch] as f64;
                if c.do_rescale {
                    v *= c.rescale_factor;
                }
                if c.do_normalize {
                    v = (v - c.image_mean[ch]) / c.image_std[ch];
                }
                out[ch * h * w + i] = v as f32;
            }
        }
        Ok((out, orig))
    }

    /// `_normalize_coordinates`: (x, y) in original pixels to the model's input frame.
    pub fn scale_point(&self, original_size: (usize, usize), x: f64, y: f64) -> [f64; 2] {
        let (oh, ow) = original_size;
        let t = self.config.size.height as f64;
        [x * (t / ow as f64), y * (t / oh as f64)]
    }

    /// `post_process_masks` before the threshold: bilinear (`align_corners=False`) from the
    /// low resolution to `original_size`.
    pub fn upscale_logits<B: Backend>(
        low_res: Tensor<B, 4>,
        original_size: (usize, usize),
    ) -> Tensor<B, 4> {
        cielr_core::resize::bilinear(low_res, [original_size.0, original_size.1], false)
    }
}

/// The image encoder's output for one image.
#[derive(Debug, Clone)]
pub struct Sam2ImageEmbedding<B: Backend> {
    /// Lowest-resolution level with `no_memory_embedding` added, `[d, g, g]`.
    pub embedding: Tensor<B, 3>,
    /// `conv_s0` of FPN level 0, `[d/8, 4g, 4g]`.
    pub feat_s0: Tensor<B, 3>,
    /// `conv_s1` of FPN level 1, `[d/4, 2g, 2g]`.
    pub feat_s1: Tensor<B, 3>,
    /// Original (height, width).
    pub original_size: (usize, usize),
}

/// The prediction for `n` prompts.
#[derive(Debug, Clone)]
pub struct Sam2Prediction<B: Backend> {
    /// Low-resolution logits `[n, m, 4g, 4g]` (`pred_masks`), m = 3 in multimask mode else 1.
    pub low_res_logits: Tensor<B, 4>,
    /// Predicted IoU `[n, m]`.
    pub iou_scores: Tensor<B, 2>,
    /// Object-score logits `[n, 1]`.
    pub object_score_logits: Tensor<B, 2>,
    /// Original (height, width).
    pub original_size: (usize, usize),
}

impl<B: Backend> Sam2Prediction<B> {
    /// Logits `[n, m, H, W]` in original pixels.
    pub fn upscaled_logits(&self) -> Tensor<B, 4> {
        Sam2Processor::upscale_logits(self.low_res_logits.clone(), self.original_size)
    }

    /// Binary masks in original pixels (`logits > 0`), `[n][m]`.
    pub fn masks(&self) -> Result<Vec<Vec<cielr_core::mask::Mask>>> {
        logits_to_masks(self.upscaled_logits())
    }
}

/// SAM 2.1 for single images: Hiera backbone, FPN neck, prompt encoder, mask decoder and the
/// processor.
#[derive(Debug)]
pub struct Sam2Model<B: Backend> {
    /// The configuration.
    pub config: Sam2Config,
    /// The processor.
    pub processor: Sam2Processor,
    backbone: Sam2Hiera<B>,
    neck: Sam2Neck<B>,
    no_memory_embedding: Tensor<B, 3>,
    image_pe: Tensor<B, 3>,
    prompt_encoder: Sam2PromptEncoder<B>,
    mask_decoder: Sam2MaskDecoder<B>,
    device: B::Device,
}

impl<B: Backend> Sam2Model<B> {
    /// Loads a checkpoint folder: `config.json`, `model.safetensors` (or a sharded index) and
    /// `preprocessor_config.json` (transformers' defaults when absent).
    pub fn load(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let (config, proc_config, store) = read_checkpoint(
            dir.as_ref(),
            |p| Sam2Config::from_file(p),
            |p| Sam2ProcessorConfig::from_file(p),
        )?;
        Self::from_store(config, proc_config, &store, device)
    }

    /// Builds the model from parsed configs and an open checkpoint.
    pub fn from_store(
        config: Sam2Config,
        proc_config: Sam2ProcessorConfig,
        store: &TensorStore,
        device: &B::Device,
    ) -> Result<Self> {
        config.validate()?;
        let img = &config.vision_config.backbone_config.image_size;
        if proc_config.size.height != img[0] || proc_config.size.width != img[1] {
            return Err(SceneError::config(
                "preprocessor_config.json",
                format!(
                    "size {:?} differs from the model's image_size {img:?}",
                    proc_config.size
                ),
            ));
        }
        let root = store.weights();
        let v = root.pp("vision_encoder");
        let d = config.vision_config.fpn_hidden_size;
        let shared = FourierEmbedding::load(&root.pp("shared_image_embedding"), d, device)?;
        let image_pe = shared.image_wide(config.grid(), device);
        Ok(Self {
            processor: Sam2Processor {
                config: proc_config,
            },
            backbone: Sam2Hiera::load(
                &v.pp("backbone"),
                &config.vision_config.backbone_config,
                device,
            )?,
            neck: Sam2Neck::load(&v.pp("neck"), &config.vision_config, device)?,
            no_memory_embedding: root.tensor("no_memory_embedding", [1, 1, d], device)?,
            image_pe,
            prompt_encoder: Sam2PromptEncoder::load(
                &root.pp("prompt_encoder"),
                &config.prompt_encoder_config,
                device,
            )?,
            mask_decoder: Sam2MaskDecoder::load(
                &root.pp("mask_decoder"),
                &config.mask_decoder_config,
                device,
            )?,
            config,
            device: device.clone(),
        })
    }

    /// The device the model lives on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// The Hiera backbone's stage outputs `[B, H, W, C]` for `pixel_values` `[B, 3, S, S]`.
    pub fn backbone_features(&self, pixel_values: Tensor<B, 4>) -> Vec<Tensor<B, 4>> {
        self.backbone.forward(pixel_values)
    }

    /// The FPN levels used by the decoder, `[B, d, H, W]`, high to low resolution.
    pub fn fpn_features(&self, pixel_values: Tensor<B, 4>) -> Vec<Tensor<B, 4>> {
        let stages = self.backbone.forward(pixel_values);
        self.neck.forward(&stages)
    }

    /// `get_image_embeddings` for one image `[1, 3, S, S]`: levels 0 and 1 through
    /// `conv_s0`/`conv_s1`, level 2 plus `no_memory_embedding`.
    pub fn embed_pixels(
        &self,
        pixel_values: Tensor<B, 4>,
        original_size: (usize, usize),
    ) -> Result<Sam2ImageEmbedding<B>> {
        let [b, _, _, _] = pixel_values.dims();
        if b != 1 {
            return Err(SceneError::InvalidInput(format!(
                "embed one image at a time (got a batch of {b})"
            )));
        }
        let mut f = self.fpn_features(pixel_values);
        let l2 = f
            .pop()
            .ok_or_else(|| SceneError::InvalidInput("no FPN levels".into()))?;
        let l1 = f
            .pop()
            .ok_or_else(|| SceneError::InvalidInput("no FPN levels".into()))?;
        let l0 = f
            .pop()
            .ok_or_else(|| SceneError::InvalidInput("no FPN levels".into()))?;
        let squeeze = |t: Tensor<B, 4>| {
            let [_, c, h, w] = t.dims();
            t.reshape([c, h, w])
        };
        let d = self.config.vision_config.fpn_hidden_size;
        let nme = self.no_memory_embedding.clone().reshape([d, 1, 1]);
        Ok(Sam2ImageEmbedding {
            embedding: squeeze(l2) + nme,
            feat_s0: squeeze(self.mask_decoder.conv_s0.forward(l0)),
            feat_s1: squeeze(self.mask_decoder.conv_s1.forward(l1)),
            original_size,
        })
    }

    /// Preprocesses an image and embeds it (once per image).
    pub fn embed_image(&self, image: &DynamicImage) -> Result<Sam2ImageEmbedding<B>> {
        let (px, orig) = self.processor.preprocess(image)?;
        let s = self.processor.config.size;
        let pv = Tensor::from_data(TensorData::new(px, [1, 3, s.height, s.width]), &self.device);
        self.embed_pixels(pv, orig)
    }

    /// Maps prompts from original pixels into the model's input frame. All prompts must have
    /// the same number of points and either all or none a box (pad points with label -10).
    pub fn encode_prompts(
        &self,
        original_size: (usize, usize),
        prompts: &[Sam2Prompt],
    ) -> Result<Sam2EncodedPrompts> {
        encode_point_prompts(prompts, |x, y| {
            self.processor.scale_point(original_size, x, y)
        })
    }

    /// Decodes prompts (original pixels) against an image embedding.
    pub fn predict(
        &self,
        embedding: &Sam2ImageEmbedding<B>,
        prompts: &[Sam2Prompt],
        multimask: bool,
    ) -> Result<Sam2Prediction<B>> {
        let input = self.encode_prompts(embedding.original_size, prompts)?;
        self.predict_encoded(embedding, &input, None, multimask)
    }

    /// [`predict`](Self::predict) with a mask prompt: low-resolution logits
    /// `[1 or n, 1, 4g, 4g]` (e.g. a previous `low_res_logits`), shared or one per prompt.
    pub fn predict_with_mask(
        &self,
        embedding: &Sam2ImageEmbedding<B>,
        prompts: &[Sam2Prompt],
        mask_input: Tensor<B, 4>,
        multimask: bool,
    ) -> Result<Sam2Prediction<B>> {
        let input = self.encode_prompts(embedding.original_size, prompts)?;
        self.predict_encoded(embedding, &input, Some(mask_input), multimask)
    }

    /// Decodes prompts already in the model's input frame.
    pub fn predict_encoded(
        &self,
        embedding: &Sam2ImageEmbedding<B>,
        input: &Sam2EncodedPrompts,
        mask_input: Option<Tensor<B, 4>>,
        multimask: bool,
    ) -> Result<Sam2Prediction<B>> {
        let (sparse, dense) = self
            .prompt_encoder
            .forward(input, mask_input, &self.device)?;
        let out = self.mask_decoder.forward(
            &embedding.embedding,
            &self.image_pe,
            &embedding.feat_s0,
            &embedding.feat_s1,
            sparse,
            dense,
            multimask,
        )?;
        Ok(Sam2Prediction {
            low_res_logits: out.masks,
            iou_scores: out.iou,
            object_score_logits: out.object_score_logits,
            original_size: embedding.original_size,
        })
    }
}
