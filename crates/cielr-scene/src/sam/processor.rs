//! `SamProcessor` / `SamImageProcessor` (PIL backend): resize the longest side, rescale,
//! normalise, pad to a square at the bottom and right; prompt coordinates scaled into the
//! resized frame; `post_process_masks` (upscale the low-resolution logits to the padded size,
//! crop the padding, resize to the original size, threshold).

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use cielr_core::resize::bilinear;
use image::{DynamicImage, RgbImage};
use serde_json::Value;

use crate::error::{Result, SceneError};
use crate::preprocess::{resize, to_rgb, Resample};

/// The keys of a SAM `preprocessor_config.json` the port uses.
#[derive(Debug, Clone)]
pub struct SamProcessorConfig {
    /// `size.longest_edge`.
    pub longest_edge: usize,
    /// `pad_size` (height, width).
    pub pad_size: (usize, usize),
    /// `do_resize`.
    pub do_resize: bool,
    /// `resample` (PIL code).
    pub resample: Resample,
    /// `do_rescale`.
    pub do_rescale: bool,
    /// `rescale_factor`.
    pub rescale_factor: f64,
    /// `do_normalize`.
    pub do_normalize: bool,
    /// `image_mean`.
    pub image_mean: [f32; 3],
    /// `image_std`.
    pub image_std: [f32; 3],
    /// `do_pad`.
    pub do_pad: bool,
}

impl Default for SamProcessorConfig {
    /// transformers' `SamImageProcessor` defaults (facebook/sam-vit-*).
    fn default() -> Self {
        Self {
            longest_edge: 1024,
            pad_size: (1024, 1024),
            do_resize: true,
            resample: Resample::Bilinear,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: [0.485, 0.456, 0.406],
            image_std: [0.229, 0.224, 0.225],
            do_pad: true,
        }
    }
}

fn cfg_err(message: impl Into<String>) -> SceneError {
    SceneError::config("preprocessor_config.json", message)
}

impl SamProcessorConfig {
    /// Reads a `preprocessor_config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| SceneError::io(path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| SceneError::json(path.display().to_string(), e))?;
        Self::from_json(&v)
    }

    /// Parses the JSON of a `preprocessor_config.json`; absent keys take the defaults.
    pub fn from_json(v: &Value) -> Result<Self> {
        let mut c = Self::default();
        let obj = v.as_object().ok_or_else(|| cfg_err("not a JSON object"))?;
        let usize_of = |v: &Value, key: &str| {
            v.as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| cfg_err(format!("`{key}` is not a non-negative integer")))
        };
        let bool_of = |key: &str, default: bool| match obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(cfg_err(format!("`{key}` is not a boolean"))),
        };
        if let Some(size) = obj.get("size").filter(|s| !s.is_null()) {
            let le = size
                .get("longest_edge")
                .ok_or_else(|| cfg_err("`size` has no `longest_edge`"))?;
            c.longest_edge = usize_of(le, "size.longest_edge")?;
        }
        if let Some(pad) = obj.get("pad_size").filter(|s| !s.is_null()) {
            let h = usize_of(pad.get("height").unwrap_or(&Value::Null), "pad_size.height")?;
            let w = usize_of(pad.get("width").unwrap_or(&Value::Null), "pad_size.width")?;
            c.pad_size = (h, w);
        }
        c.do_resize = bool_of("do_resize", c.do_resize)?;
        c.do_rescale = bool_of("do_rescale", c.do_rescale)?;
        c.do_normalize = bool_of("do_normalize", c.do_normalize)?;
        c.do_pad = bool_of("do_pad", c.do_pad)?;
        if let Some(r) = obj.get("resample").filter(|s| !s.is_null()) {
            c.resample = Resample::from_code(
                r.as_i64()
                    .ok_or_else(|| cfg_err("`resample` is not an integer"))?,
            )?;
        }
        if let Some(f) = obj.get("rescale_factor").filter(|s| !s.is_null()) {
            c.rescale_factor = f
                .as_f64()
                .ok_or_else(|| cfg_err("`rescale_factor` is not a number"))?;
        }
        let triple = |key: &str, default: [f32; 3]| -> Result<[f32; 3]> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Array(a)) if a.len() == 3 => {
                    let mut out = [0f32; 3];
                    for (o, x) in out.iter_mut().zip(a) {
                        *o = x
                            .as_f64()
                            .ok_or_else(|| cfg_err(format!("`{key}` holds a non-number")))?
                            as f32;
                    }
                    Ok(out)
                }
                Some(Value::Number(n)) => {
                    let x = n.as_f64().unwrap_or(0.0) as f32;
                    Ok([x; 3])
                }
                Some(_) => Err(cfg_err(format!(
                    "`{key}` is not a number or a list of three"
                ))),
            }
        };
        c.image_mean = triple("image_mean", c.image_mean)?;
        c.image_std = triple("image_std", c.image_std)?;
        if c.longest_edge == 0
            || (c.do_pad && (c.pad_size.0 < c.longest_edge || c.pad_size.1 < c.longest_edge))
        {
            return Err(cfg_err(format!(
                "pad_size {:?} must hold the resized image (longest_edge {})",
                c.pad_size, c.longest_edge
            )));
        }
        if c.image_std.contains(&0.0) {
            return Err(cfg_err("`image_std` holds a zero"));
        }
        let max = crate::MAX_PROCESSOR_SIDE;
        if c.longest_edge > max || c.pad_size.0 > max || c.pad_size.1 > max {
            return Err(cfg_err(format!(
                "size.longest_edge {} / pad_size {:?} exceed {max}",
                c.longest_edge, c.pad_size
            )));
        }
        Ok(c)
    }
}

/// `SamImageProcessor._get_preprocess_shape`: (height, width) after resizing the longest side.
pub fn preprocess_shape(height: usize, width: usize, longest_edge: usize) -> (usize, usize) {
    let scale = longest_edge as f64 / height.max(width) as f64;
    let nh = (height as f64 * scale + 0.5) as usize;
    let nw = (width as f64 * scale + 0.5) as usize;
    (nh, nw)
}

/// A preprocessed image: `[3, pad_h, pad_w]` pixel values and the sizes needed to map prompts
/// in and masks out.
#[derive(Debug, Clone)]
pub struct SamPixels {
    /// Channel-major pixel values.
    pub data: Vec<f32>,
    /// Padded (model input) height and width.
    pub padded: (usize, usize),
    /// Original (height, width).
    pub original_size: (usize, usize),
    /// (height, width) after resizing, before padding (`reshaped_input_sizes`).
    pub reshaped_size: (usize, usize),
}

/// The SAM image processor.
#[derive(Debug, Clone)]
pub struct SamProcessor {
    config: SamProcessorConfig,
}

impl SamProcessor {
    /// A processor with this configuration.
    pub fn new(config: SamProcessorConfig) -> Self {
        Self { config }
    }

    /// The configuration.
    pub fn config(&self) -> &SamProcessorConfig {
        &self.config
    }

    /// Resizes, rescales, normalises and pads an image as transformers' PIL backend does.
    pub fn preprocess(&self, image: &DynamicImage) -> Result<SamPixels> {
        let c = &self.config;
        let rgb = to_rgb(image);
        let (h, w) = (rgb.height() as usize, rgb.width() as usize);
        if h == 0 || w == 0 {
            return Err(SceneError::InvalidInput("empty image".into()));
        }
        let (nh, nw) = if c.do_resize {
            preprocess_shape(h, w, c.longest_edge)
        } else {
            (h, w)
        };
        let resized: RgbImage = if (nh, nw) != (h, w) {
            resize(&rgb, nw, nh, c.resample)?
        } else {
            rgb
        };
        let (ph, pw) = if c.do_pad { c.pad_size } else { (nh, nw) };
        if nh > ph || nw > pw {
            return Err(SceneError::InvalidInput(format!(
                "resized image {nw}x{nh} exceeds pad size {pw}x{ph}"
            )));
        }
        let raw = resized.as_raw();
        let mut data = vec![0f32; 3 * ph * pw];
        for ch in 0..3 {
            for y in 0..nh {
                for x in 0..nw {
                    let v = raw[(y * nw + x) * 3 + ch];
                    let mut f = if c.do_rescale {
                        (v as f64 * c.rescale_factor) as f32
                    } else {
                        v as f32
                    };
                    if c.do_normalize {
                        f = (f - c.image_mean[ch]) / c.image_std[ch];
                    }
                    data[ch * ph * pw + y * pw + x] = f;
                }
            }
        }
        Ok(SamPixels {
            data,
            padded: (ph, pw),
            original_size: (h, w),
            reshaped_size: (nh, nw),
        })
    }

    /// `SamProcessor._normalize_coordinates`: an (x, y) point in original pixels to the
    /// resized frame, in f64.
    pub fn scale_point(&self, original_size: (usize, usize), x: f64, y: f64) -> [f64; 2] {
        let (oh, ow) = original_size;
        let (nh, nw) = preprocess_shape(oh, ow, self.config.longest_edge);
        [x * (nw as f64 / ow as f64), y * (nh as f64 / oh as f64)]
    }

    /// Upscales low-resolution logits `[n, m, h, w]` to the original image size, as
    /// `post_process_masks` does before thresholding: bilinear to the padded size, crop to
    /// the resized size, bilinear to `original_size` (both with `align_corners=False`).
    /// Sizes that do not fit (a resized size larger than the padded one, or an empty size)
    /// are an error.
    pub fn upscale_logits<B: Backend>(
        &self,
        low_res: Tensor<B, 4>,
        original_size: (usize, usize),
        reshaped_size: (usize, usize),
    ) -> Result<Tensor<B, 4>> {
        let (ph, pw) = self.config.pad_size;
        let (rh, rw) = reshaped_size;
        let (oh, ow) = original_size;
        if rh == 0 || rw == 0 || rh > ph || rw > pw || oh == 0 || ow == 0 {
            return Err(SceneError::InvalidInput(format!(
                "cannot upscale SAM logits: resized size {reshaped_size:?} must fit the pad \
                 size {:?}, original size {original_size:?} must be non-empty",
                self.config.pad_size
            )));
        }
        // Bilinear, align_corners false (cielr-core's CPU kernel; Burn's `interpolate` elsewhere).
        let x = bilinear(low_res, [ph, pw], false);
        let x = x.narrow(2, 0, rh).narrow(3, 0, rw);
        Ok(bilinear(x, [oh, ow], false))
    }

    /// The pixel values of one image as a `[1, 3, H, W]` tensor.
    pub fn to_tensor<B: Backend>(pixels: &SamPixels, device: &B::Device) -> Tensor<B, 4> {
        let (h, w) = pixels.padded;
        Tensor::from_data(TensorData::new(pixels.data.clone(), [1, 3, h, w]), device)
    }
}
