//! The floating-point working buffer the inpainters run on.

use cielr_core::Mask;
use image::{Rgb, RgbImage};

/// An RGB image in `f32` (0..=255) with a hole: the pixels to fill.
///
/// Hole pixels are zeroed when the canvas is built, so no algorithm can ever read the
/// original (masked-out) colours.
#[derive(Debug, Clone)]
pub(crate) struct Canvas {
    pub w: usize,
    pub h: usize,
    pub px: Vec<[f32; 3]>,
    pub hole: Vec<bool>,
}

impl Canvas {
    /// The image with `mask`'s pixels as the hole. `mask` must have the image's size.
    pub fn new(image: &RgbImage, mask: &Mask) -> Canvas {
        let (w, h) = (image.width() as usize, image.height() as usize);
        let mut px = Vec::with_capacity(w * h);
        let mut hole = Vec::with_capacity(w * h);
        for (x, y, p) in image.enumerate_pixels() {
            let m = mask.get(x, y);
            hole.push(m);
            px.push(if m {
                [0.0; 3]
            } else {
                [p.0[0] as f32, p.0[1] as f32, p.0[2] as f32]
            });
        }
        Canvas { w, h, px, hole }
    }

    /// Rounds back to 8 bits (values are clamped to 0..=255).
    pub fn to_image(&self) -> RgbImage {
        let mut out = RgbImage::new(self.w as u32, self.h as u32);
        for (i, p) in out.pixels_mut().enumerate() {
            let c = self.px[i];
            *p = Rgb([to_u8(c[0]), to_u8(c[1]), to_u8(c[2])]);
        }
        out
    }

    /// Number of hole pixels.
    pub fn hole_area(&self) -> usize {
        self.hole.iter().filter(|&&h| h).count()
    }
}

/// Rounds and clamps a channel value to a byte.
pub(crate) fn to_u8(v: f32) -> u8 {
    if v.is_nan() {
        0
    } else {
        v.round().clamp(0.0, 255.0) as u8
    }
}
