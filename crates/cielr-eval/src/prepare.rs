//! The protocol's preparation: resize, weight by `1 - mask / 255`, and the scores.
//!
//! Resizing follows PyTorch, the reference used by `tools/eval/metrics_reference.py`:
//! images use `torch.nn.functional.interpolate(mode="bicubic", align_corners=False,
//! antialias=False)` (Keys cubic with `A = -0.75`, border pixels replicated, no
//! antialiasing when shrinking) on `u8 / 255` values, then are clamped to `[0, 1]`; masks use
//! `interpolate(mode="nearest")` (source index `floor(dst * in / out)` in `f32`). This is
//! not PIL's bicubic (`A = -0.5`, antialiased); the benchmark scripts' exact resizer is
//! not known to us, so the choice is documented rather than claimed.

use cielr_core::error::{CoreError, Result};
use image::{GrayImage, RgbImage};

use crate::metrics;

/// An RGB image of `f32` values (normally in `[0, 1]`), interleaved, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct RgbF32 {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 3` values, `data[(y * width + x) * 3 + c]`.
    pub data: Vec<f32>,
}

impl RgbF32 {
    /// Converts an 8-bit image to `value / 255`.
    pub fn from_rgb8(image: &RgbImage) -> Self {
        RgbF32 {
            width: image.width(),
            height: image.height(),
            data: image.as_raw().iter().map(|&v| v as f32 / 255.0).collect(),
        }
    }

    /// The value of channel `c` at `(x, y)`.
    pub fn get(&self, x: u32, y: u32, c: usize) -> f32 {
        self.data[(y as usize * self.width as usize + x as usize) * 3 + c]
    }

    /// Fails when the two images differ in size or are empty.
    pub fn check_pair(&self, other: &RgbF32) -> Result<()> {
        if (self.width, self.height) != (other.width, other.height) {
            return Err(CoreError::SizeMismatch(format!(
                "images are {}x{} and {}x{}",
                self.width, self.height, other.width, other.height
            )));
        }
        if self.width == 0 || self.height == 0 {
            return Err(CoreError::Metric("the images are empty".into()));
        }
        if self.data.len() != self.width as usize * self.height as usize * 3
            || other.data.len() != self.data.len()
        {
            return Err(CoreError::SizeMismatch(
                "pixel buffer length does not match the size".into(),
            ));
        }
        Ok(())
    }
}

fn check_nonempty(width: u32, height: u32, what: &str) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(CoreError::Metric(format!(
            "{what} is empty ({width}x{height})"
        )));
    }
    Ok(())
}

/// PyTorch's cubic convolution weights for fraction `t`, `A = -0.75`.
fn cubic_weights(t: f64) -> [f64; 4] {
    const A: f64 = -0.75;
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// For each output index: the first of four source taps and their weights.
fn cubic_taps(input: u32, output: u32) -> Vec<([usize; 4], [f64; 4])> {
    let scale = input as f32 / output as f32;
    let last = input as i64 - 1;
    (0..output)
        .map(|o| {
            let real = scale as f64 * (o as f64 + 0.5) - 0.5;
            let base = real.floor();
            let w = cubic_weights(real - base);
            let base = base as i64;
            let idx = [-1i64, 0, 1, 2].map(|k| (base + k).clamp(0, last) as usize);
            (idx, w)
        })
        .collect()
}

/// Resizes to `width x height` like `F.interpolate(mode="bicubic", align_corners=False,
/// antialias=False)` on `u8 / 255` values, then clamps to `[0, 1]`.
pub fn resize_bicubic(image: &RgbImage, width: u32, height: u32) -> Result<RgbF32> {
    check_nonempty(image.width(), image.height(), "the image")?;
    check_nonempty(width, height, "the target size")?;
    let src = RgbF32::from_rgb8(image);
    let (iw, ih) = (image.width() as usize, image.height() as usize);
    let xt = cubic_taps(image.width(), width);
    let yt = cubic_taps(image.height(), height);
    // Horizontal pass: ih rows of `width` pixels.
    let mut rows = vec![0f64; ih * width as usize * 3];
    for y in 0..ih {
        for (x, (idx, w)) in xt.iter().enumerate() {
            for c in 0..3 {
                let mut acc = 0.0;
                for k in 0..4 {
                    acc += w[k] * src.data[(y * iw + idx[k]) * 3 + c] as f64;
                }
                rows[(y * width as usize + x) * 3 + c] = acc;
            }
        }
    }
    let mut data = vec![0f32; width as usize * height as usize * 3];
    for (y, (idx, w)) in yt.iter().enumerate() {
        for x in 0..width as usize {
            for c in 0..3 {
                let mut acc = 0.0;
                for k in 0..4 {
                    acc += w[k] * rows[(idx[k] * width as usize + x) * 3 + c];
                }
                data[(y * width as usize + x) * 3 + c] = acc.clamp(0.0, 1.0) as f32;
            }
        }
    }
    Ok(RgbF32 {
        width,
        height,
        data,
    })
}

/// Resizes a greyscale mask like `F.interpolate(mode="nearest")`.
pub fn resize_nearest(mask: &GrayImage, width: u32, height: u32) -> Result<GrayImage> {
    check_nonempty(mask.width(), mask.height(), "the mask")?;
    check_nonempty(width, height, "the target size")?;
    let index = |input: u32, output: u32| -> Vec<u32> {
        let scale = input as f32 / output as f32;
        (0..output)
            .map(|o| ((o as f32 * scale).floor() as u32).min(input - 1))
            .collect()
    };
    let xs = index(mask.width(), width);
    let ys = index(mask.height(), height);
    Ok(GrayImage::from_fn(width, height, |x, y| {
        *mask.get_pixel(xs[x as usize], ys[y as usize])
    }))
}

/// The protocol's prepared inputs.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The original, resized and multiplied by `w`.
    pub original: RgbF32,
    /// The edited image, resized and multiplied by `w`.
    pub edited: RgbF32,
    /// The resized greyscale mask (0 = keep, 255 = edit region).
    pub mask: GrayImage,
}

impl Prepared {
    /// Per pixel: whether the resized mask is exactly 0 (so `w == 1`), row-major.
    pub fn unmasked(&self) -> Vec<bool> {
        self.mask.as_raw().iter().map(|&m| m == 0).collect()
    }
}

/// The protocol's preparation: resizes `original`, `edited` (bicubic) and `mask` (nearest)
/// to `size x size` (`None` keeps the original's size; the edited image and the mask must
/// then match it), computes `w = 1 - mask / 255` (not thresholded) and multiplies both
/// images by `w`.
pub fn prepare(
    original: &RgbImage,
    edited: &RgbImage,
    mask: &GrayImage,
    size: Option<u32>,
) -> Result<Prepared> {
    check_nonempty(original.width(), original.height(), "the original")?;
    check_nonempty(edited.width(), edited.height(), "the edited image")?;
    check_nonempty(mask.width(), mask.height(), "the mask")?;
    let (o, e, m) = match size {
        Some(s) => (
            resize_bicubic(original, s, s)?,
            resize_bicubic(edited, s, s)?,
            resize_nearest(mask, s, s)?,
        ),
        None => {
            let dims = original.dimensions();
            if edited.dimensions() != dims || mask.dimensions() != dims {
                return Err(CoreError::SizeMismatch(format!(
                    "original {}x{}, edited {}x{}, mask {}x{} (pass a size to resize)",
                    dims.0,
                    dims.1,
                    edited.width(),
                    edited.height(),
                    mask.width(),
                    mask.height()
                )));
            }
            (
                RgbF32::from_rgb8(original),
                RgbF32::from_rgb8(edited),
                mask.clone(),
            )
        }
    };
    let weight = |mut img: RgbF32| {
        for (px, &mv) in img.data.chunks_exact_mut(3).zip(m.as_raw()) {
            let w = 1.0 - mv as f32 / 255.0;
            px.iter_mut().for_each(|v| *v *= w);
        }
        img
    };
    Ok(Prepared {
        original: weight(o),
        edited: weight(e),
        mask: m,
    })
}

/// The protocol's numbers and the clean ones, side by side.
///
/// Protocol: PSNR (dB, data range 1), SSIM and MSE over the whole `w`-weighted images, as
/// torchmetrics computes them; zeroed pixels match exactly, which inflates PSNR and SSIM.
/// Clean: PSNR and MSE over the pixels whose resized mask is 0 (`w == 1`), all three
/// channels; SSIM averaged over the torchmetrics SSIM map at the centres whose 11x11
/// window, clipped to the image, holds only mask-0 pixels (the window the reflect padding
/// reads then holds only those pixels too). A clean number is `None` when no pixel (or no
/// window) qualifies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProtocolScores {
    /// Protocol PSNR in dB (`inf` when the images are equal).
    pub psnr: f64,
    /// Protocol SSIM.
    pub ssim: f64,
    /// Protocol MSE.
    pub mse: f64,
    /// PSNR over unmasked pixels only.
    pub clean_psnr: Option<f64>,
    /// SSIM over windows lying fully in the unmasked region.
    pub clean_ssim: Option<f64>,
    /// MSE over unmasked pixels only.
    pub clean_mse: Option<f64>,
}

/// Prepares the inputs (see [`prepare`]) and computes every preservation score.
pub fn protocol_scores(
    original: &RgbImage,
    edited: &RgbImage,
    mask: &GrayImage,
    size: Option<u32>,
) -> Result<ProtocolScores> {
    let p = prepare(original, edited, mask, size)?;
    let keep = p.unmasked();
    let mse = metrics::mse(&p.edited, &p.original)?;
    let ssim_map = metrics::ssim_map(&p.edited, &p.original)?;
    let ssim = ssim_map.iter().sum::<f64>() / ssim_map.len() as f64;
    let clean_mse = metrics::masked_mse(&p.edited, &p.original, &keep)?;
    let windows = metrics::clean_windows(p.mask.width(), p.mask.height(), &keep);
    let clean_ssim = metrics::masked_map_mean(&ssim_map, &windows);
    Ok(ProtocolScores {
        psnr: metrics::psnr_from_mse(mse),
        ssim,
        mse,
        clean_psnr: clean_mse.map(metrics::psnr_from_mse),
        clean_ssim,
        clean_mse,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_resize_is_identity_and_weights_are_not_thresholded() {
        let img = RgbImage::from_fn(7, 5, |x, y| {
            image::Rgb([(x * 30) as u8, (y * 40) as u8, 200])
        });
        let r = resize_bicubic(&img, 7, 5).unwrap();
        assert_eq!(r, RgbF32::from_rgb8(&img));
        let mask = GrayImage::from_fn(7, 5, |x, _| image::Luma([if x == 0 { 51 } else { 0 }]));
        assert_eq!(resize_nearest(&mask, 7, 5).unwrap(), mask);
        let p = prepare(&img, &img, &mask, None).unwrap();
        let want = 200.0 / 255.0 * (1.0 - 51.0 / 255.0);
        assert!((p.original.get(0, 0, 2) - want).abs() < 1e-6);
        assert_eq!(p.original.get(1, 0, 2), 200.0 / 255.0);
        let up = resize_nearest(&mask, 14, 10).unwrap();
        assert_eq!(up.get_pixel(1, 9).0[0], 51);
        assert_eq!(up.get_pixel(2, 0).0[0], 0);
    }
}
