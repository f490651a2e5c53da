//! Recolouring inside a mask that keeps shading and texture.
//!
//! In CIELAB, lightness `L` carries the shading and most of the texture, while `a`/`b` carry
//! the colour. Each masked pixel keeps its own `L` deviation from the region's mean, the mean
//! moves part of the way toward the target colour's lightness (so "white" and "black" work),
//! and `a`/`b` become the target's. Out-of-gamut results lose chroma, never hue.

use cielr_core::Mask;
use image::{Rgb, RgbImage};

use crate::colour::{parse_colour, Lab};
use crate::error::{DiffusionError, Result};
use crate::inpaint::check_mask;

/// Options of [`recolor()`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecolorOptions {
    /// How far the region's mean lightness moves toward the target colour's lightness:
    /// 0 keeps it, 1 matches it. 0 to 1.
    pub lightness_shift: f32,
}

impl Default for RecolorOptions {
    fn default() -> Self {
        RecolorOptions {
            lightness_shift: 0.7,
        }
    }
}

/// Recolours the pixels of `mask` to `target` (8-bit sRGB), keeping each pixel's lightness
/// variation; pixels outside the mask are returned bit-identical. An empty mask returns a
/// copy of the image; a mask of another size than the image is an error.
pub fn recolor(
    image: &RgbImage,
    mask: &Mask,
    target: [u8; 3],
    options: &RecolorOptions,
) -> Result<RgbImage> {
    check_mask(image, mask)?;
    if !(0.0..=1.0).contains(&options.lightness_shift) {
        return Err(DiffusionError::InvalidOption(format!(
            "lightness_shift must be between 0 and 1, got {}",
            options.lightness_shift
        )));
    }
    let mut out = image.clone();
    if mask.is_empty() {
        return Ok(out);
    }
    let labs: Vec<(u32, u32, Lab)> = mask
        .pixels()
        .map(|(x, y)| (x, y, Lab::from_rgb(image.get_pixel(x, y).0)))
        .collect();
    let mean_l = labs.iter().map(|(_, _, c)| c.l as f64).sum::<f64>() / labs.len() as f64;
    let t = Lab::from_rgb(target);
    let shift = options.lightness_shift * (t.l - mean_l as f32);
    for (x, y, c) in labs {
        let recoloured = Lab {
            l: (c.l + shift).clamp(0.0, 100.0),
            a: t.a,
            b: t.b,
        };
        out.put_pixel(x, y, Rgb(recoloured.to_rgb_in_gamut()));
    }
    Ok(out)
}

/// [`recolor()`] with the colour read from a prompt by [`parse_colour`] ("blue", "make it dark
/// red", "#1e90ff") and default options.
pub fn recolor_prompt(image: &RgbImage, mask: &Mask, prompt: &str) -> Result<RgbImage> {
    let colour = parse_colour(prompt)?;
    recolor(image, mask, colour.rgb, &RecolorOptions::default())
}
