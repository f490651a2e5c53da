//! The Stable Diffusion inpainting pipeline (diffusers' `StableDiffusionInpaintPipeline` for
//! 9-channel UNets), from a diffusers folder, in Burn.
//!
//! A run: the prompt and the negative prompt go through CLIP's text encoder (classifier-free
//! guidance runs both as a batch of 2); the image is masked (`image * (mask < 0.5)`),
//! VAE-encoded and scaled; the mask is downsampled to the latent size (nearest); the initial
//! latents are noise times the scheduler's `init_noise_sigma` (or, for `strength < 1`, the
//! image's latents noised to the first timestep kept); each step feeds
//! `[latents, mask, masked_latents]` to the UNet, mixes the two predictions with the guidance
//! scale and steps the scheduler; the VAE decodes the result.
//!
//! One departure from diffusers: the VAE posterior of an image is used through its mean
//! (diffusers samples it with its torch generator; the posterior's standard deviation is tiny
//! for SD's VAE). The parity test (`tests/sd_inpaint_parity.rs`, reference from
//! `tools/parity/diffusers_inpaint.py`) runs diffusers the same way.

use std::path::Path;

use burn::prelude::Backend;
use burn::tensor::{Tensor, TensorData};
use cielr_core::Mask;
use cielr_scene::clip::{ClipTextTransformer, ClipTokenizer};
use image::{Rgb, RgbImage};
use serde_json::Value;

use crate::blocks::AttentionSlicing;
use crate::error::{DiffusionError, Result};
use crate::schedulers::{
    build_scheduler, NoiseSource, SchedulerConfig, SchedulerKind, SeededNoise,
};
use crate::sd_tokenizer::load_clip_tokenizer;
use crate::unet::UNet2DConditionModel;
use crate::vae::AutoencoderKl;

/// The settings of one inpainting run.
#[derive(Debug, Clone, PartialEq)]
pub struct InpaintParams {
    /// What to paint in the mask.
    pub prompt: String,
    /// What to steer away from (`""` is diffusers' default unconditional prompt).
    pub negative_prompt: String,
    /// Denoising steps before `strength` is applied (diffusers' `num_inference_steps`).
    pub steps: usize,
    /// Classifier-free guidance scale; at most 1 disables guidance (one UNet pass a step).
    pub guidance: f32,
    /// How much of the schedule to run, in `(0, 1]`: 1 starts from pure noise, less starts
    /// from the image's latents noised to an intermediate timestep.
    pub strength: f32,
    /// Seed of the initial noise (and of stochastic schedulers), when none is injected.
    pub seed: u64,
}

impl Default for InpaintParams {
    fn default() -> Self {
        InpaintParams {
            prompt: String::new(),
            negative_prompt: String::new(),
            steps: 50,
            guidance: 7.5,
            strength: 1.0,
            seed: 0,
        }
    }
}

/// What the progress callback sees after each denoising step.
#[derive(Debug)]
pub struct StepProgress<'a, B: Backend> {
    /// The step just done, from 0.
    pub step: usize,
    /// The number of steps of this run (after `strength`).
    pub total: usize,
    /// The timestep of this step.
    pub timestep: f64,
    /// The latents after the step, `[1, 4, h, w]`.
    pub latents: &'a Tensor<B, 4>,
}

/// The result of [`SdInpaintPipeline::run`].
#[derive(Debug, Clone)]
pub struct InpaintOutput<B: Backend> {
    /// The decoded image, `[1, 3, H, W]` in `[0, 1]` (diffusers' `output_type="np"`).
    pub image: Tensor<B, 4>,
    /// The final latents, `[1, 4, h, w]`.
    pub latents: Tensor<B, 4>,
}

impl<B: Backend> InpaintOutput<B> {
    /// The image as 8-bit RGB (`round(x * 255)`, as diffusers' `numpy_to_pil`).
    pub fn to_rgb(&self) -> Result<RgbImage> {
        tensor_to_rgb(&self.image)
    }
}

/// Stable Diffusion inpainting: UNet (9 input channels), VAE, CLIP text encoder, tokenizer and
/// scheduler, loaded from a diffusers folder.
#[derive(Debug)]
pub struct SdInpaintPipeline<B: Backend> {
    unet: UNet2DConditionModel<B>,
    vae: AutoencoderKl<B>,
    text_encoder: ClipTextTransformer<B>,
    tokenizer: ClipTokenizer,
    scheduler_config: SchedulerConfig,
    scheduler_kind: SchedulerKind,
    device: B::Device,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| DiffusionError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    serde_json::from_str(&text)
        .map_err(|e| DiffusionError::config(path.display().to_string(), e.to_string()))
}

impl<B: Backend> SdInpaintPipeline<B> {
    /// Loads a diffusers inpainting folder: `unet/`, `vae/`, `text_encoder/`,
    /// `tokenizer/tokenizer.json` or, without it, `tokenizer/vocab.json` + `merges.txt`
    /// (padding with the `pad_token` of `tokenizer_config.json` when there is one), `scheduler/scheduler_config.json` and `model_index.json` (checked to
    /// name an inpainting pipeline when it has a `_class_name`).
    pub fn from_dir(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let dir = dir.as_ref();
        let index_path = dir.join("model_index.json");
        let index = read_json(&index_path)?;
        if let Some(class) = index.get("_class_name").and_then(Value::as_str) {
            if !class.contains("Inpaint") {
                return Err(DiffusionError::config(
                    index_path.display().to_string(),
                    format!("`{class}` is not an inpainting pipeline"),
                ));
            }
        }
        let unet = UNet2DConditionModel::from_dir(dir.join("unet"), device)?;
        let vae = AutoencoderKl::from_dir(dir.join("vae"), device)?;
        let text_encoder = ClipTextTransformer::from_pretrained(dir.join("text_encoder"), device)?;
        let tokenizer = Self::load_tokenizer(&dir.join("tokenizer"), &text_encoder)?;
        let scheduler_path = dir.join("scheduler").join("scheduler_config.json");
        let scheduler_config = SchedulerConfig::from_file(&scheduler_path)?;
        let class = scheduler_config.class_name.as_deref().ok_or_else(|| {
            DiffusionError::config(scheduler_path.display().to_string(), "no _class_name")
        })?;
        let scheduler_kind = SchedulerKind::from_class_name(class)?;
        Self::new(
            unet,
            vae,
            text_encoder,
            tokenizer,
            scheduler_config,
            scheduler_kind,
            device,
        )
    }

    fn load_tokenizer(dir: &Path, encoder: &ClipTextTransformer<B>) -> Result<ClipTokenizer> {
        load_clip_tokenizer(dir, encoder.max_position_embeddings())
    }

    /// Joins loaded parts, checking that they fit together (9 UNet input channels = latents +
    /// mask + masked latents, the text width = the UNet's cross-attention width).
    pub fn new(
        unet: UNet2DConditionModel<B>,
        vae: AutoencoderKl<B>,
        text_encoder: ClipTextTransformer<B>,
        tokenizer: ClipTokenizer,
        scheduler_config: SchedulerConfig,
        scheduler_kind: SchedulerKind,
        device: &B::Device,
    ) -> Result<Self> {
        let latent = vae.config().latent_channels;
        let ucfg = unet.config();
        if ucfg.in_channels != 2 * latent + 1 || ucfg.out_channels != latent {
            return Err(DiffusionError::config(
                "inpainting pipeline",
                format!(
                    "the UNet takes {} channels and returns {}; inpainting with {latent} latent \
                     channels needs {} in and {latent} out",
                    ucfg.in_channels,
                    ucfg.out_channels,
                    2 * latent + 1
                ),
            ));
        }
        if ucfg
            .cross_attention_dim
            .iter()
            .any(|&d| d != text_encoder.hidden_size())
        {
            return Err(DiffusionError::config(
                "inpainting pipeline",
                format!(
                    "the text encoder is {} wide, the UNet attends to {:?}",
                    text_encoder.hidden_size(),
                    ucfg.cross_attention_dim
                ),
            ));
        }
        Ok(SdInpaintPipeline {
            unet,
            vae,
            text_encoder,
            tokenizer,
            scheduler_config,
            scheduler_kind,
            device: device.clone(),
        })
    }

    /// Sets how the UNet's and the VAE's attention is sliced (see [`AttentionSlicing`]; on by
    /// default, bounding each slice to 2^25 scores).
    pub fn set_attention_slicing(&mut self, slicing: AttentionSlicing) {
        self.unet.set_attention_slicing(slicing);
        self.vae.set_attention_slicing(slicing);
    }

    /// Uses another scheduler class with the folder's scheduler configuration (as diffusers'
    /// `Class.from_config(pipe.scheduler.config)`).
    pub fn with_scheduler(mut self, kind: SchedulerKind) -> Self {
        self.scheduler_kind = kind;
        self
    }

    /// The scheduler class in use.
    pub fn scheduler_kind(&self) -> SchedulerKind {
        self.scheduler_kind
    }

    /// The VAE's downsampling factor times the UNet's: image sides must be multiples of it.
    pub fn size_multiple(&self) -> usize {
        self.vae.config().downsampling_factor() * self.unet.config().size_multiple()
    }

    /// The image size the UNet was trained at (`sample_size` times the VAE factor; 512 for
    /// SD 1.5 and SD 2 inpainting; 64 latents when the config has no `sample_size`).
    pub fn default_size(&self) -> usize {
        self.unet.config().sample_size.unwrap_or(64) * self.vae.config().downsampling_factor()
    }

    /// The shape of the initial noise for an image of `width` x `height`.
    pub fn latent_shape(&self, width: u32, height: u32) -> [usize; 4] {
        let f = self.vae.config().downsampling_factor();
        [
            1,
            self.vae.config().latent_channels,
            height as usize / f,
            width as usize / f,
        ]
    }

    /// Prompt embeddings, `[2, seq, width]` (negative first) with guidance, else `[1, ...]`.
    pub fn encode_prompt(
        &self,
        prompt: &str,
        negative_prompt: &str,
        guidance: bool,
    ) -> Result<Tensor<B, 3>> {
        let texts: Vec<&str> = if guidance {
            vec![negative_prompt, prompt]
        } else {
            vec![prompt]
        };
        let tokens = self.tokenizer.encode(&texts)?;
        let ids = tokens.input_ids::<B>(&self.device);
        Ok(self.text_encoder.forward(ids, None)?.last_hidden_state)
    }

    /// Inpaints `mask` of `image` (whose sides must be multiples of
    /// [`size_multiple`](Self::size_multiple)). `initial_noise` (standard normal, of
    /// [`latent_shape`](Self::latent_shape)) replaces the seeded noise, for parity with
    /// diffusers' `latents` argument at `strength` 1. `progress` is called after each step.
    pub fn run(
        &self,
        image: &RgbImage,
        mask: &Mask,
        params: &InpaintParams,
        initial_noise: Option<Tensor<B, 4>>,
        progress: &mut dyn FnMut(&StepProgress<'_, B>),
    ) -> Result<InpaintOutput<B>> {
        let (w, h) = image.dimensions();
        let m = self.size_multiple() as u32;
        if w == 0 || h == 0 || !w.is_multiple_of(m) || !h.is_multiple_of(m) {
            return Err(DiffusionError::input_shape(
                "inpainting image",
                format!("{w}x{h}: the sides must be positive multiples of {m}"),
            ));
        }
        if mask.width() != w || mask.height() != h {
            return Err(DiffusionError::MaskSize {
                mask_width: mask.width(),
                mask_height: mask.height(),
                image_width: w,
                image_height: h,
            });
        }
        if params.steps == 0 || !(params.strength > 0.0 && params.strength <= 1.0) {
            return Err(DiffusionError::InvalidOption(format!(
                "steps must be positive and strength in (0, 1], got {} and {}",
                params.steps, params.strength
            )));
        }
        if !params.guidance.is_finite() {
            return Err(DiffusionError::InvalidOption(format!(
                "guidance must be finite, got {}",
                params.guidance
            )));
        }
        let shape = self.latent_shape(w, h);
        let cfg = params.guidance > 1.0;
        let embeds = self.encode_prompt(&params.prompt, &params.negative_prompt, cfg)?;

        // The image in [-1, 1], the binary mask, the masked image.
        let image_t = rgb_to_tensor::<B>(image, &self.device);
        let mask_t = mask_to_tensor::<B>(mask, &self.device);
        let masked = image_t.clone() * (mask_t.clone().neg() + 1.0);
        let masked_latents = self.vae.scale_latents(self.vae.encode(masked)?.mode());
        let mask_latent = downsample_nearest::<B>(mask, shape[3], shape[2], &self.device)?;

        // The schedule, cut by strength.
        let mut scheduler = build_scheduler::<B>(self.scheduler_kind, &self.scheduler_config)?;
        scheduler.set_timesteps(params.steps)?;
        let all = scheduler.timesteps().to_vec();
        let n = all.len();
        let init = ((n as f64 * params.strength as f64).floor() as usize).min(n);
        let t_start = n - init;
        let timesteps = all[t_start..].to_vec();
        if timesteps.is_empty() {
            return Err(DiffusionError::InvalidOption(format!(
                "strength {} leaves no step of {}",
                params.strength, params.steps
            )));
        }
        scheduler.set_begin_index(t_start);

        // Initial latents.
        let mut rng = SeededNoise::new(params.seed);
        let noise = match initial_noise {
            Some(n) => {
                if n.dims() != shape {
                    return Err(DiffusionError::input_shape(
                        "initial noise",
                        format!("shape {:?}, expected {shape:?}", n.dims()),
                    ));
                }
                n
            }
            None => NoiseSource::<B>::noise(&mut rng, shape, &self.device)?,
        };
        let mut latents = if params.strength >= 1.0 {
            noise * scheduler.init_noise_sigma()
        } else {
            let image_latents = self.vae.scale_latents(self.vae.encode(image_t)?.mode());
            scheduler.add_noise(image_latents, noise, timesteps[0])?
        };

        let (mask_in, masked_in, batch) = if cfg {
            (
                Tensor::cat(vec![mask_latent.clone(), mask_latent], 0),
                Tensor::cat(vec![masked_latents.clone(), masked_latents], 0),
                2,
            )
        } else {
            (mask_latent, masked_latents, 1)
        };
        let total = timesteps.len();
        for (i, &t) in timesteps.iter().enumerate() {
            let x = if batch == 2 {
                Tensor::cat(vec![latents.clone(), latents.clone()], 0)
            } else {
                latents.clone()
            };
            let x = scheduler.scale_model_input(x, t)?;
            let x = Tensor::cat(vec![x, mask_in.clone(), masked_in.clone()], 1);
            let pred = self.unet.forward(x, t, embeds.clone())?;
            let pred = if cfg {
                let [_, c, lh, lw] = pred.dims();
                let uncond = pred.clone().slice([0..1, 0..c, 0..lh, 0..lw]);
                let text = pred.slice([1..2, 0..c, 0..lh, 0..lw]);
                uncond.clone() + (text - uncond) * params.guidance
            } else {
                pred
            };
            latents = scheduler.step(pred, t, latents, &mut rng)?.prev_sample;
            progress(&StepProgress {
                step: i,
                total,
                timestep: t,
                latents: &latents,
            });
        }

        let decoded = self.vae.decode(self.vae.unscale_latents(latents.clone()))?;
        let image = (decoded / 2.0 + 0.5).clamp(0.0, 1.0);
        Ok(InpaintOutput { image, latents })
    }
}

/// An 8-bit image as `[1, 3, H, W]` in `[-1, 1]` (diffusers' `VaeImageProcessor`).
pub fn rgb_to_tensor<B: Backend>(image: &RgbImage, device: &B::Device) -> Tensor<B, 4> {
    let (w, h) = image.dimensions();
    let (w, h) = (w as usize, h as usize);
    let mut v = vec![0f32; 3 * w * h];
    for (x, y, p) in image.enumerate_pixels() {
        for c in 0..3 {
            v[c * w * h + y as usize * w + x as usize] = p.0[c] as f32 / 255.0 * 2.0 - 1.0;
        }
    }
    Tensor::from_data(TensorData::new(v, [1, 3, h, w]), device)
}

/// A mask as `[1, 1, H, W]` of 0 and 1.
pub fn mask_to_tensor<B: Backend>(mask: &Mask, device: &B::Device) -> Tensor<B, 4> {
    let (w, h) = (mask.width() as usize, mask.height() as usize);
    let mut v = vec![0f32; w * h];
    for (x, y) in mask.pixels() {
        v[y as usize * w + x as usize] = 1.0;
    }
    Tensor::from_data(TensorData::new(v, [1, 1, h, w]), device)
}

/// torch's `interpolate(mode="nearest")` of a mask to `width` x `height`: source index
/// `floor(i * in / out)`.
fn downsample_nearest<B: Backend>(
    mask: &Mask,
    width: usize,
    height: usize,
    device: &B::Device,
) -> Result<Tensor<B, 4>> {
    if width == 0 || height == 0 {
        return Err(DiffusionError::input_shape("mask", "empty latent size"));
    }
    let (sw, sh) = (mask.width() as usize, mask.height() as usize);
    let mut v = vec![0f32; width * height];
    for y in 0..height {
        let sy = (y * sh / height).min(sh - 1);
        for x in 0..width {
            let sx = (x * sw / width).min(sw - 1);
            if mask.get(sx as u32, sy as u32) {
                v[y * width + x] = 1.0;
            }
        }
    }
    Ok(Tensor::from_data(
        TensorData::new(v, [1, 1, height, width]),
        device,
    ))
}

/// `[1, 3, H, W]` in `[0, 1]` to 8-bit RGB, rounding `x * 255`.
pub fn tensor_to_rgb<B: Backend>(image: &Tensor<B, 4>) -> Result<RgbImage> {
    let [b, c, h, w] = image.dims();
    if b != 1 || c != 3 {
        return Err(DiffusionError::input_shape(
            "image tensor",
            format!("must be [1, 3, H, W], got {:?}", image.dims()),
        ));
    }
    let data = cielr_core::backend::read_finite_f32(image.clone(), "the decoded image")?;
    Ok(RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let at = |ch: usize| {
            let v = data[ch * w * h + y as usize * w + x as usize];
            (v.clamp(0.0, 1.0) * 255.0).round() as u8
        };
        Rgb([at(0), at(1), at(2)])
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    type B = cielr_core::backend::CpuBackend;

    #[test]
    fn nearest_downsampling_takes_the_top_left_of_each_cell() {
        let mut mask = Mask::new(8, 8).unwrap();
        mask.set(2, 0, true); // cell (1, 0) top-left
        mask.set(1, 1, true); // not a top-left pixel
        let t = downsample_nearest::<B>(&mask, 4, 4, &Default::default()).unwrap();
        let v: Vec<f32> = t.to_data().iter::<f32>().collect();
        assert_eq!(v[1], 1.0);
        assert_eq!(v.iter().sum::<f32>(), 1.0);
    }

    #[test]
    fn a_non_finite_image_is_an_error_not_black_pixels() {
        let img = RgbImage::from_pixel(4, 2, Rgb([10, 20, 30]));
        let t = rgb_to_tensor::<B>(&img, &Default::default());
        let nan = t.clone().mask_fill(t.clone().greater_elem(-2.0), f32::NAN);
        let err = tensor_to_rgb(&nan).unwrap_err();
        assert!(matches!(err, DiffusionError::ModelOutput(_)), "{err}");
        assert!(
            err.to_string()
                .starts_with("the decoded image holds 24 NaN"),
            "{err}"
        );
    }

    #[test]
    fn images_round_trip_through_tensors() {
        let img = RgbImage::from_fn(5, 3, |x, y| Rgb([x as u8 * 50, y as u8 * 80, 7]));
        let t = rgb_to_tensor::<B>(&img, &Default::default());
        let back = tensor_to_rgb(&((t / 2.0) + 0.5)).unwrap();
        assert_eq!(back, img);
    }
}
