//! [`VlmDescriber`]: IDCS stage 1 ([`ChangeDescriber`]) backed by a vision-language model
//! served behind an OpenAI-compatible chat-completions API with image input (e.g. vLLM
//! serving `Qwen/Qwen2-VL-7B-Instruct`).
//!
//! Both images are downscaled so that their longer side is at most
//! [`VlmDescriber::max_side`] (aspect ratio kept, never upscaled), PNG-encoded and sent as
//! data URLs after [`DESCRIBE_PROMPT`]: the original first, the edited image second.
//! Time-outs, retries with backoff and error messages are those of
//! [`cielr_planner::openai::OpenAiCompatible`].

use async_trait::async_trait;
use cielr_planner::openai::OpenAiConfig;
use cielr_planner::openai_vision::OpenAiVision;
use image::{ImageFormat, RgbImage};

use crate::error::{EvalError, EvalResult};
use crate::idcs::{ChangeDescriber, DESCRIBE_PROMPT};

/// The default longest side of the images sent to the vision model.
pub const DEFAULT_MAX_SIDE: u32 = 512;

/// A [`ChangeDescriber`] over a served vision-language model. See the module documentation.
#[derive(Debug)]
pub struct VlmDescriber {
    vision: OpenAiVision,
    /// The longest side, in pixels, of the images sent (default [`DEFAULT_MAX_SIDE`]).
    pub max_side: u32,
}

impl VlmDescriber {
    /// A describer for the model `config.model` at `config.base_url`. Errors: a bad base URL
    /// or model name (see [`cielr_planner::openai::OpenAiCompatible::new`]), `max_side` < 16.
    pub fn new(config: OpenAiConfig, max_side: u32) -> EvalResult<Self> {
        if max_side < 16 {
            return Err(EvalError::Config(format!(
                "IDCS: the vision model's image side must be at least 16 pixels, not {max_side}"
            )));
        }
        let vision = OpenAiVision::new(config)
            .map_err(|e| EvalError::Config(format!("IDCS vision model: {e}")))?;
        Ok(VlmDescriber { vision, max_side })
    }

    /// The underlying client.
    pub fn vision(&self) -> &OpenAiVision {
        &self.vision
    }
}

/// `img` with its longer side at most `max_side` (triangle filter; unchanged when it
/// already fits), PNG-encoded. Errors: an image with no pixels, `max_side` 0.
pub fn downscaled_png(img: &RgbImage, max_side: u32) -> cielr_core::Result<Vec<u8>> {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return Err(cielr_core::CoreError::SizeMismatch(
            "IDCS: an image with no pixels cannot be described".into(),
        ));
    }
    // `VlmDescriber::max_side` is a public field: 0 can arrive here despite `new`'s check
    // (and `clamp(1, 0)` below would panic).
    if max_side == 0 {
        return Err(cielr_core::CoreError::SizeMismatch(
            "IDCS: the vision model's image side must be at least 1 pixel, not 0".into(),
        ));
    }
    let longer = w.max(h);
    let resized;
    let img = if longer > max_side {
        let scale = max_side as f64 / longer as f64;
        let nw = ((w as f64 * scale).round() as u32).clamp(1, max_side);
        let nh = ((h as f64 * scale).round() as u32).clamp(1, max_side);
        resized = image::imageops::resize(img, nw, nh, image::imageops::FilterType::Triangle);
        &resized
    } else {
        img
    };
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), ImageFormat::Png)
        .map_err(|e| cielr_core::CoreError::Image {
            context: "IDCS: encoding a PNG for the vision model".into(),
            source: e,
        })?;
    Ok(png)
}

#[async_trait]
impl ChangeDescriber for VlmDescriber {
    fn name(&self) -> String {
        format!(
            "{} at {}",
            self.vision.model(),
            self.vision.client().endpoint()
        )
    }

    /// Blocks the calling thread for the HTTP exchange, as the text client does.
    async fn describe(&self, original: &RgbImage, edited: &RgbImage) -> cielr_core::Result<String> {
        let a = downscaled_png(original, self.max_side)?;
        let b = downscaled_png(edited, self.max_side)?;
        Ok(self.vision.ask(None, DESCRIBE_PROMPT, &[&a, &b])?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downscaling_keeps_the_aspect_and_never_upscales() {
        let img = RgbImage::new(1000, 250);
        let png = downscaled_png(&img, 512).unwrap();
        let back = image::load_from_memory(&png).unwrap();
        assert_eq!((back.width(), back.height()), (512, 128));
        let small = RgbImage::new(40, 30);
        let back = image::load_from_memory(&downscaled_png(&small, 512).unwrap()).unwrap();
        assert_eq!((back.width(), back.height()), (40, 30));
        assert!(downscaled_png(&RgbImage::new(0, 3), 512).is_err());
        // A zero bound (settable through the public field) is an error, not a panic; 1 works.
        assert!(downscaled_png(&img, 0).is_err());
        let back = image::load_from_memory(&downscaled_png(&img, 1).unwrap()).unwrap();
        assert_eq!((back.width(), back.height()), (1, 1));
        assert!(VlmDescriber::new(OpenAiConfig::new("http://h:1", "m"), 8).is_err());
        assert!(VlmDescriber::new(OpenAiConfig::new("nope", "m"), 512).is_err());
    }
}
