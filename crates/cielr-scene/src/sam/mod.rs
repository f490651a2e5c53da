//! Segment Anything (SAM, the original ViT model; Kirillov et al. 2023) in Burn, loading
//! transformers' `SamModel` checkpoints (facebook/sam-vit-base/-large/-huge): safetensors
//! with transformers' names, the checkpoint's `config.json` and `preprocessor_config.json`.
//!
//! - [`SamModel::embed_image`] runs the image encoder once per image ([`ImageEmbedding`]);
//! - [`SamModel::predict`] decodes a batch of prompts (points with labels and/or a box per
//!   prompt) against it: low-resolution logits, IoU predictions, and masks in original
//!   pixels ([`SamPrediction`]);
//! - [`amg::SamAutomaticMaskGenerator`] is the official `segment-anything` automatic mask
//!   generator.
//!
//! Parity with transformers 5.24 (and with the official package for the generator) is
//! checked by `tests/sam_parity.rs` and `tests/sam_amg_parity.rs` against fixtures from
//! `tools/parity/sam.py`. Not supported (unfinished): batches of several images in one call,
//! inputs of another size than the config's `image_size`. SAM 2.1 (Hiera) is in
//! [`crate::sam2`].

pub mod amg;
pub mod config;
pub mod image_encoder;
pub mod mask_decoder;
pub mod processor;
pub mod prompt_encoder;

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use cielr_core::weights::TensorStore;
use image::DynamicImage;

pub use config::{SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig};
pub use processor::{SamPixels, SamProcessor, SamProcessorConfig};

use crate::error::{Result, SceneError};
use image_encoder::SamVisionEncoder;
use mask_decoder::SamMaskDecoder;
use prompt_encoder::{EncodedPromptInput, SamPositionalEmbedding, SamPromptEncoder};

/// One prompt, in original-image pixels: any number of points with labels (1 foreground,
/// 0 background, -1 "not a point", -10 padding) and at most one box (x0, y0, x1, y1).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamPrompt {
    /// Points (x, y, label).
    pub points: Vec<(f64, f64, i64)>,
    /// A box (x0, y0, x1, y1).
    pub bbox: Option<[f64; 4]>,
}

impl SamPrompt {
    /// A single foreground point.
    pub fn point(x: f64, y: f64) -> Self {
        Self {
            points: vec![(x, y, 1)],
            bbox: None,
        }
    }

    /// A box.
    pub fn bbox(x0: f64, y0: f64, x1: f64, y1: f64) -> Self {
        Self {
            points: Vec::new(),
            bbox: Some([x0, y0, x1, y1]),
        }
    }
}

/// The image encoder's output for one image, with what is needed to map prompts in and
/// masks out.
#[derive(Debug, Clone)]
pub struct ImageEmbedding<B: Backend> {
    /// `[C, g, g]`.
    pub embedding: Tensor<B, 3>,
    /// Original (height, width).
    pub original_size: (usize, usize),
    /// (height, width) of the resized image inside the padded input.
    pub reshaped_size: (usize, usize),
}

/// The prediction for a batch of `n` prompts.
#[derive(Debug, Clone)]
pub struct SamPrediction<B: Backend> {
    /// Low-resolution logits `[n, m, 4g, 4g]` (`pred_masks`), `m` = 3 in multimask mode, else 1.
    pub low_res_logits: Tensor<B, 4>,
    /// Predicted IoU `[n, m]` (`iou_scores`).
    pub iou_scores: Tensor<B, 2>,
    /// Original (height, width).
    pub original_size: (usize, usize),
    /// Resized (height, width).
    pub reshaped_size: (usize, usize),
}

/// SAM: image encoder, prompt encoder, mask decoder and the processor.
#[derive(Debug)]
pub struct SamModel<B: Backend> {
    /// The configuration.
    pub config: SamConfig,
    /// The image processor.
    pub processor: SamProcessor,
    vision: SamVisionEncoder<B>,
    shared_pe: SamPositionalEmbedding<B>,
    image_pe: Tensor<B, 3>,
    prompt_encoder: SamPromptEncoder<B>,
    mask_decoder: SamMaskDecoder<B>,
    device: B::Device,
}

impl<B: Backend> SamModel<B> {
    /// Loads a checkpoint folder: `config.json`, `model.safetensors` (or a sharded index),
    /// and `preprocessor_config.json` (transformers' defaults when absent).
    pub fn load(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let (config, proc_config, store) = read_checkpoint(
            dir.as_ref(),
            |p| SamConfig::from_file(p),
            |p| SamProcessorConfig::from_file(p),
        )?;
        Self::from_store(config, proc_config, &store, device)
    }

    /// Builds the model from parsed configs and an open checkpoint.
    pub fn from_store(
        config: SamConfig,
        proc_config: SamProcessorConfig,
        store: &TensorStore,
        device: &B::Device,
    ) -> Result<Self> {
        config.validate()?;
        if proc_config.do_pad
            && proc_config.pad_size
                != (
                    config.vision_config.image_size,
                    config.vision_config.image_size,
                )
        {
            return Err(SceneError::config(
                "preprocessor_config.json",
                format!(
                    "pad_size {:?} differs from the model's image_size {}",
                    proc_config.pad_size, config.vision_config.image_size
                ),
            ));
        }
        let root = store.weights();
        let vision =
            SamVisionEncoder::load(&root.pp("vision_encoder"), &config.vision_config, device)?;
        let shared_pe =
            SamPositionalEmbedding::load(&root, config.vision_config.num_pos_feats, device)?;
        let image_pe =
            shared_pe.image_wide(config.prompt_encoder_config.image_embedding_size(), device);
        let prompt_encoder = SamPromptEncoder::load(&root.pp("prompt_encoder"), &config, device)?;
        let mask_decoder = SamMaskDecoder::load(
            &root.pp("mask_decoder"),
            &config.mask_decoder_config,
            device,
        )?;
        Ok(Self {
            config,
            processor: SamProcessor::new(proc_config),
            vision,
            shared_pe,
            image_pe,
            prompt_encoder,
            mask_decoder,
            device: device.clone(),
        })
    }

    /// The device the model lives on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// Runs the image encoder on `pixel_values` `[B, 3, S, S]` -> `[B, C, g, g]`.
    pub fn image_embeddings(&self, pixel_values: Tensor<B, 4>) -> Result<Tensor<B, 4>> {
        self.vision.forward(pixel_values)
    }

    /// Preprocesses an image and runs the image encoder (once per image).
    pub fn embed_image(&self, image: &DynamicImage) -> Result<ImageEmbedding<B>> {
        let pixels = self.processor.preprocess(image)?;
        let pv = SamProcessor::to_tensor::<B>(&pixels, &self.device);
        let e = self.vision.forward(pv)?;
        let [_, c, g, _] = e.dims();
        Ok(ImageEmbedding {
            embedding: e.reshape([c, g, g]),
            original_size: pixels.original_size,
            reshaped_size: pixels.reshaped_size,
        })
    }

    /// Decodes a batch of prompts (original-image pixels) against an image embedding. All
    /// prompts must have the same number of points, and either all or none a box (as in
    /// transformers; pad with label -10 points).
    pub fn predict(
        &self,
        embedding: &ImageEmbedding<B>,
        prompts: &[SamPrompt],
        multimask: bool,
    ) -> Result<SamPrediction<B>> {
        let input = self.encode_prompts(embedding.original_size, prompts)?;
        self.predict_encoded(embedding, &input, multimask)
    }

    /// Maps prompts from original pixels into the model's input frame.
    pub fn encode_prompts(
        &self,
        original_size: (usize, usize),
        prompts: &[SamPrompt],
    ) -> Result<EncodedPromptInput> {
        encode_point_prompts(prompts, |x, y| {
            self.processor.scale_point(original_size, x, y)
        })
    }

    /// [`predict`](Self::predict) with a mask prompt: low-resolution logits
    /// `[1 or n, 1, 4g, 4g]` (e.g. a previous prediction's `low_res_logits`), one shared by all
    /// prompts or one per prompt.
    pub fn predict_with_mask(
        &self,
        embedding: &ImageEmbedding<B>,
        prompts: &[SamPrompt],
        mask_input: Tensor<B, 4>,
        multimask: bool,
    ) -> Result<SamPrediction<B>> {
        let input = self.encode_prompts(embedding.original_size, prompts)?;
        self.predict_encoded_with_mask(embedding, &input, Some(mask_input), multimask)
    }

    /// Decodes prompts already in the model's input frame.
    pub fn predict_encoded(
        &self,
        embedding: &ImageEmbedding<B>,
        input: &EncodedPromptInput,
        multimask: bool,
    ) -> Result<SamPrediction<B>> {
        self.predict_encoded_with_mask(embedding, input, None, multimask)
    }

    /// Decodes prompts already in the model's input frame, with an optional mask prompt.
    pub fn predict_encoded_with_mask(
        &self,
        embedding: &ImageEmbedding<B>,
        input: &EncodedPromptInput,
        mask_input: Option<Tensor<B, 4>>,
        multimask: bool,
    ) -> Result<SamPrediction<B>> {
        let (sparse, dense) =
            self.prompt_encoder
                .forward(&self.shared_pe, input, mask_input, &self.device)?;
        let out = self.mask_decoder.forward(
            &embedding.embedding,
            &self.image_pe,
            sparse,
            dense,
            input.n,
            multimask,
        );
        Ok(SamPrediction {
            low_res_logits: out.masks,
            iou_scores: out.iou,
            original_size: embedding.original_size,
            reshaped_size: embedding.reshaped_size,
        })
    }
}

impl<B: Backend> SamPrediction<B> {
    /// Mask logits `[n, m, H, W]` in original pixels (before the threshold of
    /// `post_process_masks`); an error when the sizes do not fit the processor's pad size.
    pub fn upscaled_logits(&self, processor: &SamProcessor) -> Result<Tensor<B, 4>> {
        processor.upscale_logits(
            self.low_res_logits.clone(),
            self.original_size,
            self.reshaped_size,
        )
    }

    /// Binary masks in original pixels (`post_process_masks`: logits > 0), one
    /// [`cielr_core::mask::Mask`] per prompt and output, `[n][m]`.
    pub fn masks(&self, processor: &SamProcessor) -> Result<Vec<Vec<cielr_core::mask::Mask>>> {
        logits_to_masks(self.upscaled_logits(processor)?)
    }
}

/// Reads a checkpoint folder: `config.json` (with `config`), `preprocessor_config.json` (with
/// `processor`; its defaults when the file is absent) and the weights (`model.safetensors` or a
/// sharded index). Shared by SAM and SAM 2.1.
pub(crate) fn read_checkpoint<C, P: Default>(
    dir: &Path,
    config: impl FnOnce(&Path) -> Result<C>,
    processor: impl FnOnce(&Path) -> Result<P>,
) -> Result<(C, P, TensorStore)> {
    let config = config(&dir.join("config.json"))?;
    let pp = dir.join("preprocessor_config.json");
    let proc_config = if pp.exists() {
        processor(&pp)?
    } else {
        P::default()
    };
    Ok((config, proc_config, TensorStore::open(dir)?))
}

/// Checks a batch of prompts (original pixels) and maps them into the model's input frame with
/// `scale`: every prompt must have the same number of points, and either all or none a box
/// (as in transformers; pad with label -10 points). Shared by SAM and SAM 2.1.
pub(crate) fn encode_point_prompts(
    prompts: &[SamPrompt],
    scale: impl Fn(f64, f64) -> [f64; 2],
) -> Result<EncodedPromptInput> {
    let n = prompts.len();
    if n == 0 {
        return Err(SceneError::InvalidInput("no prompts".into()));
    }
    let ppp = prompts[0].points.len();
    let with_box = prompts[0].bbox.is_some();
    let mut input = EncodedPromptInput {
        points: Vec::with_capacity(n * ppp),
        labels: Vec::with_capacity(n * ppp),
        points_per_prompt: ppp,
        boxes: Vec::new(),
        n,
    };
    for (i, p) in prompts.iter().enumerate() {
        if p.points.len() != ppp || p.bbox.is_some() != with_box {
            return Err(SceneError::InvalidInput(format!(
                "prompt {i} has {} points{} but prompt 0 has {ppp}{}; pad points with label -10",
                p.points.len(),
                if p.bbox.is_some() { " and a box" } else { "" },
                if with_box { " and a box" } else { "" },
            )));
        }
        if ppp == 0 && !with_box {
            return Err(SceneError::InvalidInput(format!("prompt {i} is empty")));
        }
        for &(x, y, l) in &p.points {
            if !(x.is_finite() && y.is_finite()) {
                return Err(SceneError::InvalidInput(format!(
                    "prompt {i}: non-finite point"
                )));
            }
            // transformers scales padding points too; their embedding is zeroed anyway.
            input.points.push(scale(x, y));
            input.labels.push(l);
        }
        if let Some([x0, y0, x1, y1]) = p.bbox {
            if ![x0, y0, x1, y1].iter().all(|v| v.is_finite()) {
                return Err(SceneError::InvalidInput(format!(
                    "prompt {i}: non-finite box"
                )));
            }
            let a = scale(x0, y0);
            let b = scale(x1, y1);
            input.boxes.push([a[0], a[1], b[0], b[1]]);
        }
    }
    Ok(input)
}

/// Binary masks (`logits > 0`) of mask logits `[n, m, H, W]` in original pixels, `[n][m]`.
pub(crate) fn logits_to_masks<B: Backend>(
    logits: Tensor<B, 4>,
) -> Result<Vec<Vec<cielr_core::mask::Mask>>> {
    let [n, m, h, w] = logits.dims();
    let data = cielr_core::backend::read_finite_f32(logits, "SAM's mask logits")?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut row = Vec::with_capacity(m);
        for j in 0..m {
            let plane = &data[(i * m + j) * h * w..(i * m + j + 1) * h * w];
            let mask = cielr_core::mask::Mask::from_fn(w as u32, h as u32, |x, y| {
                plane[y as usize * w + x as usize] > 0.0
            })
            .map_err(|e| SceneError::InvalidInput(e.to_string()))?;
            row.push(mask);
        }
        out.push(row);
    }
    Ok(out)
}
