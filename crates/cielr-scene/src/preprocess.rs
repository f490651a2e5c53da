//! Image preprocessing exactly as transformers' `CLIPImageProcessor` does it with the PIL
//! backend (`CLIPImageProcessorPil`, what `AutoImageProcessor` gives without torchvision, and
//! what OpenAI's original CLIP preprocessing did): convert to RGB (transparency composited
//! onto white), resize with Pillow's resampling filters (shortest edge or exact size), centre
//! crop (zero padding when the crop is larger), rescale by 1/255 and normalise per channel.
//!
//! The resampling is a port of Pillow's `Resample.c`: separable convolution with the filter
//! stretched by the downscale factor (antialiasing), coefficients in 22-bit fixed point, the
//! horizontal pass first (unless the height shrinks much more than the width, see
//! `vertical_pass_first`) and each pass rounded to `u8`. It reproduces Pillow's output byte
//! for byte (see the `clip_preprocess` tests). transformers' torchvision backend (its default
//! when torchvision is installed) resizes with torch's antialiased bicubic instead, which
//! differs from Pillow by one `u8` level on ~0.4% of the values for a 600x400 photo.

use std::path::Path;

use burn::tensor::{backend::Backend, Tensor, TensorData};
use image::{DynamicImage, RgbImage};
use serde_json::Value;

use crate::error::{Result, SceneError};

/// The mean of OpenAI's CLIP training images, per RGB channel.
pub const OPENAI_CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// The standard deviation of OpenAI's CLIP training images, per RGB channel.
pub const OPENAI_CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// Pillow's resampling filters, with the integer codes `preprocessor_config.json` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// `0`: nearest neighbour (Pillow's affine nearest, no antialiasing).
    Nearest,
    /// `1`: Lanczos (truncated sinc, support 3).
    Lanczos,
    /// `2`: bilinear (triangle, support 1).
    Bilinear,
    /// `3`: bicubic (Keys, a = -0.5, support 2); CLIP's default.
    Bicubic,
    /// `4`: box (support 0.5).
    Box,
    /// `5`: Hamming (support 1).
    Hamming,
}

impl Resample {
    /// The filter for a PIL resample code.
    pub fn from_code(code: i64) -> Result<Self> {
        Ok(match code {
            0 => Resample::Nearest,
            1 => Resample::Lanczos,
            2 => Resample::Bilinear,
            3 => Resample::Bicubic,
            4 => Resample::Box,
            5 => Resample::Hamming,
            other => {
                return Err(SceneError::config(
                    "preprocessor resample",
                    format!("unknown PIL resample code {other} (expected 0..=5)"),
                ))
            }
        })
    }

    fn support(self) -> f64 {
        match self {
            Resample::Nearest => 0.0,
            Resample::Box => 0.5,
            Resample::Bilinear | Resample::Hamming => 1.0,
            Resample::Bicubic => 2.0,
            Resample::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Resample::Nearest => 0.0,
            Resample::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Resample::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Resample::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    // Pillow writes these constants as C floats.
                    x.sin() / x * (0.54f32 as f64 + 0.46f32 as f64 * x.cos())
                }
            }
            Resample::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Resample::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

/// How the image is resized before cropping (`size` in `preprocessor_config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTarget {
    /// Scale so that the shorter side has this length, keeping the aspect ratio (the longer
    /// side is truncated to an integer, as transformers does).
    ShortestEdge(usize),
    /// Resize to exactly this size.
    Exact {
        /// Output height.
        height: usize,
        /// Output width.
        width: usize,
    },
}

impl ResizeTarget {
    /// The `(height, width)` an image of `(height, width)` is resized to.
    pub fn output_size(&self, height: usize, width: usize) -> (usize, usize) {
        match *self {
            ResizeTarget::Exact { height, width } => (height, width),
            ResizeTarget::ShortestEdge(size) => {
                let (short, long) = if width <= height {
                    (width, height)
                } else {
                    (height, width)
                };
                // Python: int(size * long / short), an exact product then a rounded division.
                let new_long = ((size * long) as f64 / short as f64) as usize;
                if width <= height {
                    (new_long, size)
                } else {
                    (size, new_long)
                }
            }
        }
    }
}

/// The settings of `CLIPImageProcessor`, read from `preprocessor_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessorConfig {
    /// Whether to resize (`do_resize`).
    pub do_resize: bool,
    /// The resize target (`size`).
    pub size: ResizeTarget,
    /// The resampling filter (`resample`).
    pub resample: Resample,
    /// Whether to centre crop (`do_center_crop`).
    pub do_center_crop: bool,
    /// The crop's `(height, width)` (`crop_size`).
    pub crop_size: (usize, usize),
    /// Whether to multiply by `rescale_factor` (`do_rescale`).
    pub do_rescale: bool,
    /// The rescale factor, 1/255 for CLIP (`rescale_factor`).
    pub rescale_factor: f64,
    /// Whether to normalise with `image_mean` / `image_std` (`do_normalize`).
    pub do_normalize: bool,
    /// Per-channel mean (`image_mean`).
    pub image_mean: [f32; 3],
    /// Per-channel standard deviation (`image_std`).
    pub image_std: [f32; 3],
    /// Whether to convert to RGB (`do_convert_rgb`); when false the image must already be RGB.
    pub do_convert_rgb: bool,
}

impl Default for ImageProcessorConfig {
    /// `CLIPImageProcessor`'s defaults (those of openai/clip-vit-base-patch32).
    fn default() -> Self {
        ImageProcessorConfig {
            do_resize: true,
            size: ResizeTarget::ShortestEdge(224),
            resample: Resample::Bicubic,
            do_center_crop: true,
            crop_size: (224, 224),
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: OPENAI_CLIP_MEAN,
            image_std: OPENAI_CLIP_STD,
            do_convert_rgb: true,
        }
    }
}

fn cfg_err(message: impl Into<String>) -> SceneError {
    SceneError::config("preprocessor_config.json", message)
}

fn get_bool(obj: &serde_json::Map<String, Value>, key: &str, default: bool) -> Result<bool> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(cfg_err(format!("`{key}` must be a boolean, got {other}"))),
    }
}

fn get_usize(v: &Value, key: &str) -> Result<usize> {
    v.as_u64()
        .filter(|&n| n > 0)
        .map(|n| n as usize)
        .ok_or_else(|| cfg_err(format!("`{key}` must be a positive integer, got {v}")))
}

fn get_triple(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    default: [f32; 3],
) -> Result<[f32; 3]> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => {
            let x = n.as_f64().unwrap_or(f64::NAN) as f32;
            Ok([x; 3])
        }
        Some(Value::Array(items)) if items.len() == 3 => {
            let mut out = [0f32; 3];
            for (o, item) in out.iter_mut().zip(items) {
                *o = item
                    .as_f64()
                    .ok_or_else(|| cfg_err(format!("`{key}` must hold numbers, got {item}")))?
                    as f32;
            }
            Ok(out)
        }
        Some(other) => Err(cfg_err(format!(
            "`{key}` must be a number or a list of 3 numbers, got {other}"
        ))),
    }
}

impl ImageProcessorConfig {
    /// Reads `preprocessor_config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| SceneError::io(path, e))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| SceneError::json(path.display().to_string(), e))?;
        Self::from_json(&value)
    }

    /// Parses the JSON of a `preprocessor_config.json`. Accepts both the current format
    /// (`size: {"shortest_edge": n}`, `crop_size: {"height", "width"}`) and the legacy one
    /// (`size: n`, `crop_size: n`); keys that are absent take `CLIPImageProcessor`'s defaults.
    pub fn from_json(value: &Value) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| cfg_err("the file is not a JSON object"))?;
        let d = ImageProcessorConfig::default();
        let size = match obj.get("size") {
            None | Some(Value::Null) => d.size,
            Some(v @ Value::Number(_)) => ResizeTarget::ShortestEdge(get_usize(v, "size")?),
            Some(Value::Object(m)) => {
                if m.get("longest_edge").is_some_and(|v| !v.is_null()) {
                    return Err(cfg_err(
                        "`size.longest_edge` is not supported (CLIP resizes by the shortest edge)",
                    ));
                }
                match (m.get("shortest_edge"), m.get("height"), m.get("width")) {
                    (Some(s), _, _) if !s.is_null() => {
                        ResizeTarget::ShortestEdge(get_usize(s, "size.shortest_edge")?)
                    }
                    (_, Some(h), Some(w)) => ResizeTarget::Exact {
                        height: get_usize(h, "size.height")?,
                        width: get_usize(w, "size.width")?,
                    },
                    _ => {
                        return Err(cfg_err(
                            "`size` needs `shortest_edge` or both `height` and `width`",
                        ))
                    }
                }
            }
            Some(other) => return Err(cfg_err(format!("`size` has an unknown form: {other}"))),
        };
        let crop_size = match obj.get("crop_size") {
            None | Some(Value::Null) => d.crop_size,
            Some(v @ Value::Number(_)) => {
                let n = get_usize(v, "crop_size")?;
                (n, n)
            }
            Some(Value::Object(m)) => match (m.get("height"), m.get("width")) {
                (Some(h), Some(w)) => (
                    get_usize(h, "crop_size.height")?,
                    get_usize(w, "crop_size.width")?,
                ),
                _ => return Err(cfg_err("`crop_size` needs `height` and `width`")),
            },
            Some(other) => {
                return Err(cfg_err(format!("`crop_size` has an unknown form: {other}")))
            }
        };
        let resample = match obj.get("resample") {
            None | Some(Value::Null) => d.resample,
            Some(v) => Resample::from_code(
                v.as_i64()
                    .ok_or_else(|| cfg_err(format!("`resample` must be an integer, got {v}")))?,
            )?,
        };
        let rescale_factor = match obj.get("rescale_factor") {
            None | Some(Value::Null) => d.rescale_factor,
            Some(v) => v
                .as_f64()
                .ok_or_else(|| cfg_err(format!("`rescale_factor` must be a number, got {v}")))?,
        };
        let config = ImageProcessorConfig {
            do_resize: get_bool(obj, "do_resize", d.do_resize)?,
            size,
            resample,
            do_center_crop: get_bool(obj, "do_center_crop", d.do_center_crop)?,
            crop_size,
            do_rescale: get_bool(obj, "do_rescale", d.do_rescale)?,
            rescale_factor,
            do_normalize: get_bool(obj, "do_normalize", d.do_normalize)?,
            image_mean: get_triple(obj, "image_mean", d.image_mean)?,
            image_std: get_triple(obj, "image_std", d.image_std)?,
            do_convert_rgb: get_bool(obj, "do_convert_rgb", d.do_convert_rgb)?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the values: finite mean, non-zero finite std, finite rescale factor.
    pub fn validate(&self) -> Result<()> {
        if self.image_std.iter().any(|s| !s.is_finite() || *s == 0.0)
            || self.image_mean.iter().any(|m| !m.is_finite())
        {
            return Err(cfg_err(format!(
                "image_mean {:?} / image_std {:?} must be finite and std non-zero",
                self.image_mean, self.image_std
            )));
        }
        if !self.rescale_factor.is_finite() {
            return Err(cfg_err("rescale_factor must be finite"));
        }
        let zero = match self.size {
            ResizeTarget::ShortestEdge(n) => n == 0,
            ResizeTarget::Exact { height, width } => height == 0 || width == 0,
        };
        if zero || self.crop_size.0 == 0 || self.crop_size.1 == 0 {
            return Err(cfg_err("sizes must be positive"));
        }
        Ok(())
    }
}

/// One preprocessed image: `[3, height, width]` values, channel-major (what transformers
/// returns as one entry of `pixel_values`).
#[derive(Debug, Clone, PartialEq)]
pub struct PixelValues {
    /// The values, `3 * height * width` of them, channel by channel, row by row.
    pub data: Vec<f32>,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
}

/// `CLIPImageProcessor` (PIL backend).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipImageProcessor {
    config: ImageProcessorConfig,
}

impl ClipImageProcessor {
    /// A processor with validated settings.
    pub fn new(config: ImageProcessorConfig) -> Result<Self> {
        config.validate()?;
        Ok(ClipImageProcessor { config })
    }

    /// Reads `preprocessor_config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::new(ImageProcessorConfig::from_file(path)?)
    }

    /// The settings.
    pub fn config(&self) -> &ImageProcessorConfig {
        &self.config
    }

    /// The `u8` stage: RGB conversion, resize and centre crop (before rescale and normalise).
    pub fn resize_and_crop(&self, image: &DynamicImage) -> Result<RgbImage> {
        let c = &self.config;
        let rgb = if c.do_convert_rgb {
            to_rgb(image)
        } else {
            match image {
                DynamicImage::ImageRgb8(rgb) => rgb.clone(),
                _ => {
                    return Err(SceneError::InvalidInput(format!(
                        "do_convert_rgb is false but the image is {:?}, not 8-bit RGB",
                        image.color()
                    )))
                }
            }
        };
        if rgb.width() == 0 || rgb.height() == 0 {
            return Err(SceneError::InvalidInput("the image is empty".into()));
        }
        let resized = if c.do_resize {
            let (h, w) = c
                .size
                .output_size(rgb.height() as usize, rgb.width() as usize);
            if h == 0 || w == 0 {
                return Err(SceneError::InvalidInput(format!(
                    "a {}x{} image resizes to {w}x{h}",
                    rgb.width(),
                    rgb.height()
                )));
            }
            resize(&rgb, w, h, c.resample)?
        } else {
            rgb
        };
        Ok(if c.do_center_crop {
            center_crop(&resized, c.crop_size.0, c.crop_size.1)
        } else {
            resized
        })
    }

    /// The whole pipeline for one image.
    pub fn preprocess(&self, image: &DynamicImage) -> Result<PixelValues> {
        let rgb = self.resize_and_crop(image)?;
        Ok(self.normalize(&rgb))
    }

    /// Rescale and normalise a `u8` image as transformers' PIL backend does: the product in
    /// f64 rounded to f32, then `(x - mean) / std` in f32.
    pub fn normalize(&self, rgb: &RgbImage) -> PixelValues {
        let c = &self.config;
        let (w, h) = (rgb.width() as usize, rgb.height() as usize);
        let raw = rgb.as_raw();
        let mut data = vec![0f32; 3 * h * w];
        for ch in 0..3 {
            let plane = &mut data[ch * h * w..(ch + 1) * h * w];
            for (i, out) in plane.iter_mut().enumerate() {
                let v = raw[i * 3 + ch];
                let mut x = if c.do_rescale {
                    (v as f64 * c.rescale_factor) as f32
                } else {
                    v as f32
                };
                if c.do_normalize {
                    x = (x - c.image_mean[ch]) / c.image_std[ch];
                }
                *out = x;
            }
        }
        PixelValues {
            data,
            height: h,
            width: w,
        }
    }

    /// Preprocesses a batch into `pixel_values` `[batch, 3, height, width]`. All images end
    /// up the same size when the config centre crops (or resizes to an exact size).
    pub fn preprocess_batch<B: Backend>(
        &self,
        images: &[DynamicImage],
        device: &B::Device,
    ) -> Result<Tensor<B, 4>> {
        if images.is_empty() {
            return Err(SceneError::InvalidInput("no images to preprocess".into()));
        }
        let mut data = Vec::new();
        let mut size = None;
        for (i, image) in images.iter().enumerate() {
            let pv = self.preprocess(image)?;
            match size {
                None => size = Some((pv.height, pv.width)),
                Some(s) if s != (pv.height, pv.width) => {
                    return Err(SceneError::InvalidInput(format!(
                        "image {i} preprocesses to {}x{} but image 0 to {}x{}; enable centre \
                         cropping to batch images of different shapes",
                        pv.width, pv.height, s.1, s.0
                    )))
                }
                Some(_) => {}
            }
            data.extend_from_slice(&pv.data);
        }
        let (h, w) = size.unwrap_or((0, 0));
        Ok(Tensor::from_data(
            TensorData::new(data, [images.len(), 3, h, w]),
            device,
        ))
    }
}

/// Converts to 8-bit RGB as transformers' `convert_to_rgb` does with PIL: images with an
/// alpha channel are composited onto white (Pillow's integer `alpha_composite`), greyscale is
/// replicated. 16-bit images are first reduced to 8 bits by the `image` crate (rounded),
/// which may differ from Pillow's truncation by one level.
pub fn to_rgb(image: &DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (src, dst) in rgba.pixels().zip(out.pixels_mut()) {
        let a = src.0[3] as u32;
        for c in 0..3 {
            dst.0[c] = if a == 0 {
                255
            } else {
                // Pillow's ImagingAlphaComposite with an opaque white destination.
                const PRECISION_BITS: u32 = 7;
                let blend = 255 * (255 - a);
                let outa255 = a * 255 + blend;
                let coef1 = a * 255 * 255 * (1 << PRECISION_BITS) / outa255;
                let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
                let tmp = src.0[c] as u32 * coef1 + 255 * coef2 + (0x80 << PRECISION_BITS);
                let shifted = ((tmp >> 8) + tmp) >> 8;
                (shifted >> PRECISION_BITS) as u8
            };
        }
    }
    out
}

/// Centre crop as transformers' `center_crop` (numpy): offsets `(size - crop) // 2`, and zero
/// padding (placed at `ceil((crop - size) / 2)`) where the crop is larger than the image.
pub fn center_crop(image: &RgbImage, crop_height: usize, crop_width: usize) -> RgbImage {
    let (w, h) = (image.width() as usize, image.height() as usize);
    // Source index of output index 0 along an axis (may be negative: padding).
    let start = |len: usize, crop: usize| -> i64 {
        if len >= crop {
            ((len - crop) / 2) as i64
        } else {
            -(((crop - len) as i64 + 1) / 2)
        }
    };
    let (y0, x0) = (start(h, crop_height), start(w, crop_width));
    let mut out = RgbImage::new(crop_width as u32, crop_height as u32);
    let src = image.as_raw();
    let dst: &mut [u8] = &mut out;
    for y in 0..crop_height {
        let sy = y0 + y as i64;
        if sy < 0 || sy >= h as i64 {
            continue;
        }
        for x in 0..crop_width {
            let sx = x0 + x as i64;
            if sx < 0 || sx >= w as i64 {
                continue;
            }
            let s = (sy as usize * w + sx as usize) * 3;
            let d = (y * crop_width + x) * 3;
            dst[d..d + 3].copy_from_slice(&src[s..s + 3]);
        }
    }
    out
}

/// Resizes an RGB image to `width` x `height` exactly as Pillow's `Image.resize` does (no
/// `box`, no `reducing_gap`).
pub fn resize(image: &RgbImage, width: usize, height: usize, filter: Resample) -> Result<RgbImage> {
    let (in_w, in_h) = (image.width() as usize, image.height() as usize);
    if width == 0 || height == 0 || in_w == 0 || in_h == 0 {
        return Err(SceneError::InvalidInput(format!(
            "cannot resize a {in_w}x{in_h} image to {width}x{height}"
        )));
    }
    if (width, height) == (in_w, in_h) {
        return Ok(image.clone());
    }
    if filter == Resample::Nearest {
        return Ok(resize_nearest(image, width, height));
    }
    let mut buf = image.as_raw().clone();
    // Each pass reads the current buffer: `horizontal` at height `rows`, `vertical` at width
    // `cols`.
    let horizontal = |buf: &[u8], rows: usize| {
        resample_pass(
            buf,
            in_w,
            rows,
            &Coefficients::new(in_w, width, filter),
            Axis::Horizontal,
        )
    };
    let vertical = |buf: &[u8], cols: usize| {
        resample_pass(
            buf,
            cols,
            in_h,
            &Coefficients::new(in_h, height, filter),
            Axis::Vertical,
        )
    };
    if vertical_pass_first(in_w, in_h, width, height) {
        buf = vertical(&buf, in_w);
        buf = horizontal(&buf, height);
    } else {
        if width != in_w {
            buf = horizontal(&buf, in_h);
        }
        if height != in_h {
            buf = vertical(&buf, width);
        }
    }
    RgbImage::from_raw(width as u32, height as u32, buf).ok_or_else(|| {
        SceneError::InvalidInput(format!(
            "resize to {width}x{height} produced a wrong buffer"
        ))
    })
}

/// Whether Pillow (since 10.x's pass reordering; checked on Pillow 13) resamples rows before
/// columns: when both sides change, the height shrinks, and it shrinks by more than twice as
/// many pixels as the width does (then the vertical pass first is cheaper). The order changes
/// the bytes, because each pass rounds to `u8`. Checked against Pillow in
/// `tests/pillow_resize.rs`.
fn vertical_pass_first(in_w: usize, in_h: usize, out_w: usize, out_h: usize) -> bool {
    let (in_w, in_h, out_w, out_h) = (in_w as i64, in_h as i64, out_w as i64, out_h as i64);
    in_w != out_w && out_h < in_h && in_h - out_h > 2 * (in_w - out_w)
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Fixed-point filter taps of one pass (Pillow's `precompute_coeffs` +
/// `normalize_coeffs_8bpc`).
struct Coefficients {
    /// Per output index: first input index and number of taps.
    bounds: Vec<(usize, usize)>,
    /// `ksize` taps per output index.
    taps: Vec<i32>,
    ksize: usize,
}

impl Coefficients {
    fn new(in_size: usize, out_size: usize, filter: Resample) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut bounds = Vec::with_capacity(out_size);
        let mut taps = vec![0i32; out_size * ksize];
        let mut k = vec![0f64; ksize];
        for xx in 0..out_size {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's (int) truncates toward zero; negative values are clamped to 0 right after.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let n = xmax.saturating_sub(xmin).min(ksize);
            let mut ww = 0.0;
            for (x, kx) in k.iter_mut().enumerate().take(n) {
                let w = filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss);
                *kx = w;
                ww += w;
            }
            for (x, &kx) in k.iter().enumerate().take(n) {
                let v = if ww != 0.0 { kx / ww } else { kx };
                taps[xx * ksize + x] = if v < 0.0 {
                    (-0.5 + v * (1u32 << PRECISION_BITS) as f64) as i32
                } else {
                    (0.5 + v * (1u32 << PRECISION_BITS) as f64) as i32
                };
            }
            bounds.push((xmin, n));
        }
        Coefficients {
            bounds,
            taps,
            ksize,
        }
    }
}

#[derive(Clone, Copy)]
enum Axis {
    Horizontal,
    Vertical,
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

fn resample_pass(src: &[u8], w: usize, h: usize, c: &Coefficients, axis: Axis) -> Vec<u8> {
    let (out_w, out_h) = match axis {
        Axis::Horizontal => (c.bounds.len(), h),
        Axis::Vertical => (w, c.bounds.len()),
    };
    let mut out = vec![0u8; out_w * out_h * 3];
    let half = 1i64 << (PRECISION_BITS - 1);
    match axis {
        Axis::Horizontal => {
            for y in 0..out_h {
                let row = &src[y * w * 3..(y + 1) * w * 3];
                for (xx, &(xmin, n)) in c.bounds.iter().enumerate() {
                    let k = &c.taps[xx * c.ksize..xx * c.ksize + n];
                    let mut acc = [half; 3];
                    for (i, &kx) in k.iter().enumerate() {
                        let p = (xmin + i) * 3;
                        for ch in 0..3 {
                            acc[ch] += row[p + ch] as i64 * kx as i64;
                        }
                    }
                    let o = (y * out_w + xx) * 3;
                    for ch in 0..3 {
                        out[o + ch] = clip8(acc[ch]);
                    }
                }
            }
        }
        Axis::Vertical => {
            for (yy, &(ymin, n)) in c.bounds.iter().enumerate() {
                let k = &c.taps[yy * c.ksize..yy * c.ksize + n];
                for x in 0..out_w {
                    let mut acc = [half; 3];
                    for (i, &ky) in k.iter().enumerate() {
                        let p = ((ymin + i) * w + x) * 3;
                        for ch in 0..3 {
                            acc[ch] += src[p + ch] as i64 * ky as i64;
                        }
                    }
                    let o = (yy * out_w + x) * 3;
                    for ch in 0..3 {
                        out[o + ch] = clip8(acc[ch]);
                    }
                }
            }
        }
    }
    out
}

/// Pillow's nearest resize (`ImagingScaleAffine`): source coordinates accumulated in f64
/// from the centre of the first output pixel, truncated.
fn resize_nearest(image: &RgbImage, width: usize, height: usize) -> RgbImage {
    let (in_w, in_h) = (image.width() as usize, image.height() as usize);
    let positions = |in_size: usize, out_size: usize| -> Vec<usize> {
        let step = in_size as f64 / out_size as f64;
        let mut pos = step * 0.5;
        (0..out_size)
            .map(|_| {
                let p = (pos as usize).min(in_size - 1);
                pos += step;
                p
            })
            .collect()
    };
    let xs = positions(in_w, width);
    let ys = positions(in_h, height);
    let src = image.as_raw();
    let mut out = RgbImage::new(width as u32, height as u32);
    let dst: &mut [u8] = &mut out;
    for (y, &sy) in ys.iter().enumerate() {
        for (x, &sx) in xs.iter().enumerate() {
            let s = (sy * in_w + sx) * 3;
            let d = (y * width + x) * 3;
            dst[d..d + 3].copy_from_slice(&src[s..s + 3]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_edge_sizes_follow_transformers() {
        let t = ResizeTarget::ShortestEdge(224);
        assert_eq!(t.output_size(400, 600), (224, 336));
        assert_eq!(t.output_size(300, 451), (224, 336));
        assert_eq!(t.output_size(400, 200), (448, 224));
        assert_eq!(t.output_size(10, 10), (224, 224));
    }

    #[test]
    fn legacy_and_current_configs_parse() {
        let legacy = serde_json::json!({"size": 224, "crop_size": 224, "resample": 3});
        let c = ImageProcessorConfig::from_json(&legacy).unwrap();
        assert_eq!(c.size, ResizeTarget::ShortestEdge(224));
        assert_eq!(c.crop_size, (224, 224));
        let bad = serde_json::json!({"resample": 9});
        assert!(ImageProcessorConfig::from_json(&bad).is_err());
        let bad = serde_json::json!({"image_std": [0.0, 1.0, 1.0]});
        assert!(ImageProcessorConfig::from_json(&bad).is_err());
        let bad = serde_json::json!({"size": {"longest_edge": 3}});
        assert!(ImageProcessorConfig::from_json(&bad).is_err());
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([10, 200, 77]));
        for f in [
            Resample::Bicubic,
            Resample::Bilinear,
            Resample::Lanczos,
            Resample::Box,
            Resample::Hamming,
            Resample::Nearest,
        ] {
            for (w, h) in [(5, 3), (80, 51), (37, 9)] {
                let r = resize(&img, w, h, f).unwrap();
                assert!(r.pixels().all(|p| p.0 == [10, 200, 77]), "{f:?} {w}x{h}");
            }
        }
    }
}
