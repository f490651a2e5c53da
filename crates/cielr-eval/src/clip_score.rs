//! CLIPScore as the benchmarks' protocol uses it: torchmetrics' `CLIPScore`
//! (`100 * max(cos(image_embeds, text_embeds), 0)`) of the edited image cropped to the
//! bounding box of the mask's non-zero pixels, against the target text; with our CLIP port
//! ([`cielr_scene::clip`]) and `CLIPProcessor`'s preprocessing ([`cielr_scene::preprocess`],
//! transformers' PIL backend).
//!
//! The crop: with a protocol size (512 for CIEBench, 256 for Reason-Edit) the edited image is
//! first resized like [`crate::prepare()`] (torch bicubic, clamped) and rounded to 8 bits
//! (`round(255 x)`, as a `uint8` tensor handed to torchmetrics would be), the mask resized
//! nearest; without one the image is used as it is. The box spans every non-zero mask pixel;
//! no mask means the whole image, an empty mask is an error.
//!
//! Text: tokenised with the checkpoint's `tokenizer.json` (padding to the longest, a single
//! text is not padded). Texts longer than the model's `max_position_embeddings` (77 tokens
//! for OpenAI's CLIP) are cut keeping the end-of-text token; torchmetrics cuts the token ids
//! without keeping it, so such texts can score differently (benchmark targets are a few
//! words).

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use cielr_core::backend::CpuBackend;
use cielr_core::error::{CoreError, Result};
use cielr_core::traits::{Metric, MetricInput};
use cielr_scene::clip::{ClipConfig, ClipModel, ClipPadding, ClipTokenizer};
use cielr_scene::preprocess::ClipImageProcessor;
use image::{DynamicImage, GrayImage, RgbImage};

use crate::prepare::{resize_bicubic, resize_nearest};

fn scene_error(context: &str, e: impl std::fmt::Display) -> CoreError {
    CoreError::Model(format!("CLIP score: {context}: {e}"))
}

/// The box `(x0, y0, x1, y1)` (exclusive ends) around every non-zero pixel; `None` when
/// all are zero.
pub fn mask_box(mask: &GrayImage) -> Option<(u32, u32, u32, u32)> {
    let mut b: Option<(u32, u32, u32, u32)> = None;
    for (x, y, p) in mask.enumerate_pixels() {
        if p.0[0] != 0 {
            b = Some(match b {
                None => (x, y, x + 1, y + 1),
                Some((x0, y0, x1, y1)) => (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1)),
            });
        }
    }
    b
}

/// The protocol's crop of `edited`: optionally resized to `size x size` (bicubic, rounded to
/// 8 bits; the mask nearest), then cut to the box of the mask's non-zero pixels (the whole
/// image when `mask` is `None`).
pub fn protocol_crop(
    edited: &RgbImage,
    mask: Option<&GrayImage>,
    size: Option<u32>,
) -> Result<RgbImage> {
    let image = match size {
        Some(s) => {
            let r = resize_bicubic(edited, s, s)?;
            let bytes = r
                .data
                .iter()
                .map(|&v| (v * 255.0).round().clamp(0.0, 255.0) as u8)
                .collect();
            RgbImage::from_raw(s, s, bytes)
                .ok_or_else(|| CoreError::Metric("CLIP score: resized buffer size".into()))?
        }
        None => edited.clone(),
    };
    let Some(mask) = mask else {
        return Ok(image);
    };
    let mask = match size {
        Some(s) => resize_nearest(mask, s, s)?,
        None => {
            if mask.dimensions() != edited.dimensions() {
                return Err(CoreError::SizeMismatch(format!(
                    "CLIP score: image {}x{}, mask {}x{} (pass a size to resize)",
                    edited.width(),
                    edited.height(),
                    mask.width(),
                    mask.height()
                )));
            }
            mask.clone()
        }
    };
    let (x0, y0, x1, y1) = mask_box(&mask).ok_or_else(|| {
        CoreError::Metric("CLIP score: the mask is empty, there is no region to crop".into())
    })?;
    Ok(image::imageops::crop_imm(&image, x0, y0, x1 - x0, y1 - y0).to_image())
}

/// A CLIP checkpoint with its tokenizer and image processor, scoring image/text pairs.
pub struct ClipScorer<B: Backend> {
    model: ClipModel<B>,
    tokenizer: ClipTokenizer,
    processor: ClipImageProcessor,
    device: B::Device,
}

impl<B: Backend> std::fmt::Debug for ClipScorer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipScorer")
            .field("processor", &self.processor)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> ClipScorer<B> {
    /// Loads a HuggingFace `CLIPModel` folder: `config.json`, `model.safetensors` (or a
    /// sharded index), `tokenizer.json` and `preprocessor_config.json`.
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let dir = dir.as_ref();
        let config = ClipConfig::from_file(dir.join("config.json"))
            .map_err(|e| scene_error(&dir.display().to_string(), e))?;
        let model = ClipModel::from_pretrained(dir, device)
            .map_err(|e| scene_error(&dir.display().to_string(), e))?;
        let tokenizer = ClipTokenizer::from_file(
            dir.join("tokenizer.json"),
            config.text_config.max_position_embeddings,
        )
        .map_err(|e| scene_error("tokenizer.json", e))?
        .with_padding(ClipPadding::Longest);
        let processor = ClipImageProcessor::from_file(dir.join("preprocessor_config.json"))
            .map_err(|e| scene_error("preprocessor_config.json", e))?;
        Ok(ClipScorer {
            model,
            tokenizer,
            processor,
            device: device.clone(),
        })
    }

    /// `pixel_values` `[1, 3, size, size]` of one image (`CLIPProcessor`'s preprocessing).
    pub fn pixel_values(&self, image: &RgbImage) -> Result<Tensor<B, 4>> {
        self.processor
            .preprocess_batch::<B>(&[DynamicImage::ImageRgb8(image.clone())], &self.device)
            .map_err(|e| scene_error("preprocessing", e))
    }

    /// The L2-normalised image embedding of `pixel_values` `[1, 3, size, size]`.
    pub fn image_embedding(&self, pixel_values: Tensor<B, 4>) -> Result<Vec<f32>> {
        let img = self
            .model
            .get_image_features(pixel_values)
            .map_err(|e| scene_error("image features", e))?;
        normalized(img)
    }

    /// The L2-normalised text embedding of `text`.
    pub fn text_embedding(&self, text: &str) -> Result<Vec<f32>> {
        let tokens = self
            .tokenizer
            .encode(&[text])
            .map_err(|e| scene_error("tokenizing", e))?;
        let txt = self
            .model
            .get_text_features(
                tokens.input_ids::<B>(&self.device),
                Some(tokens.attention_mask::<B>(&self.device)),
            )
            .map_err(|e| scene_error("text features", e))?;
        normalized(txt)
    }

    /// The L2-normalised image and text embeddings, as host vectors.
    pub fn embeddings(&self, image: &RgbImage, text: &str) -> Result<(Vec<f32>, Vec<f32>)> {
        let pixels = self.pixel_values(image)?;
        Ok((self.image_embedding(pixels)?, self.text_embedding(text)?))
    }

    /// `cos(image_embeds, text_embeds)`.
    pub fn cosine(&self, image: &RgbImage, text: &str) -> Result<f64> {
        let (i, t) = self.embeddings(image, text)?;
        Ok(dot(&i, &t))
    }

    /// torchmetrics' `CLIPScore` of one pair: `100 * max(cos, 0)`.
    pub fn score(&self, image: &RgbImage, text: &str) -> Result<f64> {
        Ok(clip_score_from_cosine(self.cosine(image, text)?))
    }
}

/// The dot product of two embeddings (their cosine when both are normalised), in f64.
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// `100 * max(cos, 0)`.
pub fn clip_score_from_cosine(cos: f64) -> f64 {
    100.0 * cos.max(0.0)
}

/// Row 0 of `[1, d]` features divided by its L2 norm (`x / ||x||`, as torchmetrics does).
fn normalized<B: Backend>(x: Tensor<B, 2>) -> Result<Vec<f32>> {
    let v = cielr_core::backend::read_f32(x)
        .map_err(|e| CoreError::Model(format!("CLIP score: reading features back: {e:?}")))?;
    let n = v.iter().map(|&a| a * a).sum::<f32>().sqrt();
    Ok(v.iter().map(|&a| a / n).collect())
}

/// CLIPScore as a [`Metric`] (`clip`, higher is better) on the CPU backend: the edited image
/// cropped to the mask's box (see the module docs) against [`MetricInput::text`]. Without a
/// checkpoint ([`ClipScore::unavailable`]) or a text it reports an error, not a number.
pub struct ClipScore {
    scorer: std::result::Result<ClipScorer<CpuBackend>, String>,
    size: Option<u32>,
}

impl std::fmt::Debug for ClipScore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipScore")
            .field("loaded", &self.scorer.is_ok())
            .field("size", &self.size)
            .finish()
    }
}

impl ClipScore {
    /// Loads a `CLIPModel` folder (see [`ClipScorer::from_pretrained`]); `size` is the
    /// protocol's resize (512 for CIEBench, 256 for Reason-Edit) or `None`.
    pub fn from_pretrained(dir: impl AsRef<Path>, size: Option<u32>) -> Result<Self> {
        Ok(ClipScore {
            scorer: Ok(ClipScorer::from_pretrained(dir, &Default::default())?),
            size,
        })
    }

    /// Loads the checkpoint when a folder is given, else a metric that explains it has none.
    pub fn new(dir: Option<&Path>, size: Option<u32>) -> Result<Self> {
        match dir {
            Some(d) => Self::from_pretrained(d, size),
            None => Ok(Self::unavailable(
                "no CLIP checkpoint was given (the protocol uses clip-vit-large-patch14-336 \
                 for CIEBench, clip-vit-large-patch14 for Reason-Edit)",
                size,
            )),
        }
    }

    /// A metric that cannot be computed; `compute` fails with `reason`.
    pub fn unavailable(reason: impl Into<String>, size: Option<u32>) -> Self {
        ClipScore {
            scorer: Err(reason.into()),
            size,
        }
    }

    /// A metric around an already loaded scorer.
    pub fn with_scorer(scorer: ClipScorer<CpuBackend>, size: Option<u32>) -> Self {
        ClipScore {
            scorer: Ok(scorer),
            size,
        }
    }
}

impl Metric for ClipScore {
    fn name(&self) -> String {
        "clip".into()
    }

    fn higher_is_better(&self) -> bool {
        true
    }

    fn compute(&self, input: MetricInput<'_>) -> Result<f64> {
        let scorer = self
            .scorer
            .as_ref()
            .map_err(|reason| CoreError::Metric(format!("clip: {reason}")))?;
        let text = input
            .text
            .ok_or_else(|| CoreError::Metric("clip: the sample has no target text".into()))?;
        let gray = input.mask.map(|m| m.to_gray());
        let crop = protocol_crop(input.edited, gray.as_ref(), self.size)?;
        scorer.score(&crop, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_to_the_box_of_non_zero_pixels() {
        let img = RgbImage::from_fn(6, 5, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let mut mask = GrayImage::new(6, 5);
        assert_eq!(mask_box(&mask), None);
        assert!(protocol_crop(&img, Some(&mask), None).is_err());
        mask.put_pixel(1, 3, image::Luma([1]));
        mask.put_pixel(4, 2, image::Luma([200]));
        assert_eq!(mask_box(&mask), Some((1, 2, 5, 4)));
        let crop = protocol_crop(&img, Some(&mask), None).unwrap();
        assert_eq!(crop.dimensions(), (4, 2));
        assert_eq!(crop.get_pixel(0, 0).0, [1, 2, 0]);
        assert_eq!(protocol_crop(&img, None, None).unwrap(), img);
        assert_eq!(clip_score_from_cosine(-0.2), 0.0);
        assert!((clip_score_from_cosine(0.25) - 25.0).abs() < 1e-12);
    }
}
