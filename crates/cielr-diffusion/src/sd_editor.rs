//! [`StableDiffusionInpaintEditor`]: the generative [`Editor`] (replace, add) on top of
//! [`SdInpaintPipeline`].

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use burn::prelude::Backend;
use cielr_core::imageops::{crop, crop_mask, paste_window_inside, window_around};
use cielr_core::{EditOp, EditRequest, Editor};
use image::imageops::FilterType;
use image::RgbImage;

use crate::blocks::AttentionSlicing;
use crate::error::{DiffusionError, Result};
use crate::inpaint::check_mask;
use crate::sd_inpaint::{InpaintParams, SdInpaintPipeline, StepProgress};

/// The settings of [`StableDiffusionInpaintEditor`].
#[derive(Debug, Clone, PartialEq)]
pub struct SdEditorOptions {
    /// Denoising steps.
    pub steps: usize,
    /// Classifier-free guidance scale.
    pub guidance: f32,
    /// The negative prompt.
    pub negative_prompt: String,
    /// `strength` (1 = from pure noise; see [`InpaintParams::strength`]).
    pub strength: f32,
    /// The side of the square the model runs at (512 for SD 1.5 and SD 2 inpainting); a
    /// multiple of the pipeline's [`size_multiple`](SdInpaintPipeline::size_multiple).
    pub model_size: u32,
    /// The window around the mask's box is at least `context` times the box's longer side
    /// (and at least `model_size`, where the image allows), so the model sees surroundings.
    pub context: f64,
    /// When set, `recolor` is performed by inpainting with the action's prompt (which should
    /// then describe the recoloured object, e.g. "a red car"). Off by default: the classical
    /// CIELAB recolouring keeps the object's shading and texture, inpainting redraws it.
    pub recolor: bool,
    /// When set, `remove` is performed by inpainting with this prompt (e.g. "background,
    /// empty"). `None` by default: SD inpainting with an empty prompt tends to invent objects,
    /// so removal stays with the classical editor.
    pub remove_prompt: Option<String>,
}

impl Default for SdEditorOptions {
    fn default() -> Self {
        SdEditorOptions {
            steps: 30,
            guidance: 7.5,
            negative_prompt: "blurry, low quality, distorted, text, watermark".into(),
            strength: 1.0,
            model_size: 512,
            context: 1.5,
            recolor: false,
            remove_prompt: None,
        }
    }
}

/// Where an edit's denoising stands, as [`StableDiffusionInpaintEditor`]'s step hook sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DenoiseProgress {
    /// Steps done (1 after the first).
    pub step: usize,
    /// Steps in this edit.
    pub total: usize,
    /// Time since the edit started (prompt encoding and VAE encoding included).
    pub elapsed: Duration,
}

impl DenoiseProgress {
    /// The remaining time if the remaining steps take as long as the average step so far
    /// ([`Duration::MAX`] when that does not fit a `Duration`).
    pub fn eta(&self) -> Duration {
        if self.step == 0 {
            return Duration::ZERO;
        }
        // `Duration::mul_f64` panics when the product overflows; the fields are public.
        let ratio = (self.total.saturating_sub(self.step)) as f64 / self.step as f64;
        Duration::try_from_secs_f64(self.elapsed.as_secs_f64() * ratio).unwrap_or(Duration::MAX)
    }
}

/// A hook called after every denoising step of [`Editor::edit`].
pub type StepHook = Arc<dyn Fn(&DenoiseProgress) + Send + Sync>;

/// Edits with Stable Diffusion inpainting: `replace` and `add` paint the action's prompt into
/// the mask (`recolor` and `remove` only when enabled in [`SdEditorOptions`]).
///
/// The editing discipline: a square window around the mask's box
/// ([`window_around`]) is cropped, resized to `model_size` (a window made oblong by a narrow
/// image keeps its aspect ratio), inpainted, resized back and pasted inside the mask only, so every pixel outside the mask is bit-identical to the input.
/// The seed of [`EditRequest`] seeds the initial noise: the same seed gives the same image.
pub struct StableDiffusionInpaintEditor<B: Backend> {
    pipeline: Mutex<SdInpaintPipeline<B>>,
    options: SdEditorOptions,
    name: String,
    multiple: u32,
    step_hook: Option<StepHook>,
}

impl<B: Backend> std::fmt::Debug for StableDiffusionInpaintEditor<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StableDiffusionInpaintEditor")
            .field("pipeline", &self.pipeline)
            .field("options", &self.options)
            .field("name", &self.name)
            .field("step_hook", &self.step_hook.is_some())
            .finish()
    }
}

impl<B: Backend> StableDiffusionInpaintEditor<B> {
    /// An editor around a loaded pipeline, named `name` in reports (e.g. "sd2-inpainting").
    pub fn new(
        pipeline: SdInpaintPipeline<B>,
        options: SdEditorOptions,
        name: impl Into<String>,
    ) -> Result<Self> {
        let multiple = pipeline.size_multiple() as u32;
        check_options(&options, multiple)?;
        Ok(StableDiffusionInpaintEditor {
            multiple,
            pipeline: Mutex::new(pipeline),
            options,
            name: name.into(),
            step_hook: None,
        })
    }

    /// Calls `hook` after every denoising step of [`Editor::edit`] (e.g. to print progress).
    pub fn with_step_hook(mut self, hook: StepHook) -> Self {
        self.step_hook = Some(hook);
        self
    }

    /// Sets how the model's attention is sliced (see [`AttentionSlicing`]).
    pub fn set_attention_slicing(&mut self, slicing: AttentionSlicing) -> Result<()> {
        self.pipeline
            .get_mut()
            .map_err(|_| DiffusionError::InvalidOption("the pipeline lock is poisoned".into()))?
            .set_attention_slicing(slicing);
        Ok(())
    }

    /// Loads a diffusers inpainting folder (see [`SdInpaintPipeline::from_dir`]).
    pub fn from_dir(
        dir: impl AsRef<Path>,
        options: SdEditorOptions,
        device: &B::Device,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "sd-inpainting".into());
        Self::new(SdInpaintPipeline::from_dir(dir, device)?, options, name)
    }

    /// The options.
    pub fn options(&self) -> &SdEditorOptions {
        &self.options
    }

    /// The prompt the model gets for a request, or why the op is not performed.
    fn prompt_for(&self, op: EditOp, prompt: &str) -> Result<String> {
        match op {
            EditOp::Replace | EditOp::Add => Ok(prompt.to_string()),
            EditOp::Recolor if self.options.recolor => Ok(prompt.to_string()),
            EditOp::Remove => match &self.options.remove_prompt {
                Some(p) => Ok(p.clone()),
                None => Err(self.unsupported(op)),
            },
            EditOp::Recolor => Err(self.unsupported(op)),
        }
    }

    fn unsupported(&self, op: EditOp) -> DiffusionError {
        DiffusionError::EditorUnsupported {
            editor: self.name.clone(),
            op: op.to_string(),
            hint: "use the classical editor for remove and recolor (or enable them in \
                   SdEditorOptions)"
                .into(),
        }
    }

    /// Runs one edit synchronously, calling `progress(step, total)` after each denoising step.
    pub fn edit_with_progress(
        &self,
        request: EditRequest<'_>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<RgbImage> {
        let (image, mask) = (request.image, request.mask);
        let prompt = self.prompt_for(request.action.op, &request.action.prompt)?;
        check_mask(image, mask)?;
        if mask.is_empty() {
            return Ok(image.clone());
        }
        let o = &self.options;
        let window = window_around(mask, o.model_size, o.context)?;
        let patch = crop(image, window);
        let patch_mask = crop_mask(mask, window)?;
        let (mw, mh) = model_dims(window.width, window.height, o.model_size, self.multiple);
        let model_image = image::imageops::resize(&patch, mw, mh, FilterType::Lanczos3);
        let model_mask = patch_mask.resize_nearest(mw, mh)?;
        let params = InpaintParams {
            prompt,
            negative_prompt: o.negative_prompt.clone(),
            steps: o.steps,
            guidance: o.guidance,
            strength: o.strength,
            seed: request.seed,
        };
        let out = {
            let pipeline = self.pipeline.lock().map_err(|_| {
                DiffusionError::InvalidOption("the pipeline lock is poisoned".into())
            })?;
            let mut cb = |p: &StepProgress<'_, B>| progress(p.step + 1, p.total);
            pipeline.run(&model_image, &model_mask, &params, None, &mut cb)?
        };
        let edited = out.to_rgb()?;
        let back =
            image::imageops::resize(&edited, window.width, window.height, FilterType::Lanczos3);
        Ok(paste_window_inside(image, &back, window, mask)?)
    }

    /// Runs one edit synchronously (what [`Editor::edit`] does, without the async wrapper and
    /// with this crate's error type).
    /// Calls the step hook (see [`with_step_hook`](Self::with_step_hook)) if there is one.
    pub fn edit_sync(&self, request: EditRequest<'_>) -> Result<RgbImage> {
        let start = Instant::now();
        let hook = self.step_hook.clone();
        self.edit_with_progress(request, &mut |step, total| {
            if let Some(h) = &hook {
                h(&DenoiseProgress {
                    step,
                    total,
                    elapsed: start.elapsed(),
                });
            }
        })
    }
}

/// The size the model runs a `width` x `height` window at: the longer side becomes
/// `model_size`, the shorter keeps the aspect ratio, rounded to a multiple of `multiple`.
/// (Windows are square unless the image or the mask's box is too narrow.)
fn model_dims(width: u32, height: u32, model_size: u32, multiple: u32) -> (u32, u32) {
    let long = width.max(height).max(1) as f64;
    let side = |len: u32| {
        let scaled = len as f64 * model_size as f64 / long / multiple as f64;
        (scaled.round() as u32).max(1) * multiple
    };
    (side(width), side(height))
}

fn check_options(o: &SdEditorOptions, multiple: u32) -> Result<()> {
    if o.model_size == 0 || !o.model_size.is_multiple_of(multiple) {
        return Err(DiffusionError::InvalidOption(format!(
            "model_size {} must be a positive multiple of {multiple}",
            o.model_size
        )));
    }
    if o.steps == 0 || !(o.strength > 0.0 && o.strength <= 1.0) || !o.guidance.is_finite() {
        return Err(DiffusionError::InvalidOption(format!(
            "steps {} must be positive, strength {} in (0, 1], guidance {} finite",
            o.steps, o.strength, o.guidance
        )));
    }
    if !(o.context.is_finite() && o.context >= 1.0) {
        return Err(DiffusionError::InvalidOption(format!(
            "context {} must be at least 1",
            o.context
        )));
    }
    Ok(())
}

#[async_trait]
impl<B: Backend> Editor for StableDiffusionInpaintEditor<B> {
    fn name(&self) -> String {
        format!("stable diffusion inpainting ({})", self.name)
    }

    fn supports(&self, op: EditOp) -> bool {
        match op {
            EditOp::Replace | EditOp::Add => true,
            EditOp::Recolor => self.options.recolor,
            EditOp::Remove => self.options.remove_prompt.is_some(),
        }
    }

    async fn edit(&self, request: EditRequest<'_>) -> cielr_core::Result<RgbImage> {
        Ok(self.edit_sync(request)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_dims_keep_the_aspect_ratio_in_multiples() {
        assert_eq!(model_dims(300, 300, 512, 8), (512, 512));
        assert_eq!(model_dims(400, 200, 512, 8), (512, 256));
        assert_eq!(model_dims(10, 1000, 512, 64), (64, 512));
    }

    #[test]
    fn eta_extrapolates_the_average_step() {
        let p = DenoiseProgress {
            step: 4,
            total: 10,
            elapsed: Duration::from_secs(8),
        };
        assert_eq!(p.eta(), Duration::from_secs(12));
        let done = DenoiseProgress { step: 10, ..p };
        assert_eq!(done.eta(), Duration::ZERO);
        // An estimate beyond what a Duration holds saturates instead of panicking.
        let huge = DenoiseProgress {
            step: 1,
            total: usize::MAX,
            elapsed: Duration::from_secs(1_000_000),
        };
        assert_eq!(huge.eta(), Duration::MAX);
    }
}
