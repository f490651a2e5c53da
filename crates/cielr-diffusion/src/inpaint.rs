//! Object removal: the inpainting methods and the window they run in.

use cielr_core::imageops::{crop, crop_mask, paste_window_inside, window_around, Window};
use cielr_core::Mask;
use image::RgbImage;

use crate::canvas::Canvas;
use crate::error::{DiffusionError, Result};
use crate::patchmatch::{inpaint_patchmatch, PatchMatchOptions};
use crate::telea::{inpaint_telea, TeleaOptions};

/// Which classical inpainter fills a removed object's region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum InpaintMethod {
    /// Telea's fast marching method: smooth, fast; best for thin or small holes.
    Telea,
    /// Multi-scale PatchMatch: copies texture from around the hole; better for larger holes in
    /// textured photos (the default, chosen by the measurements in `docs/classical-editing.md`).
    #[default]
    PatchMatch,
}

impl InpaintMethod {
    /// Every method.
    pub const ALL: [InpaintMethod; 2] = [InpaintMethod::Telea, InpaintMethod::PatchMatch];

    /// The lower-case name: `"telea"` or `"patchmatch"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            InpaintMethod::Telea => "telea",
            InpaintMethod::PatchMatch => "patchmatch",
        }
    }

    /// Parses a name (case-insensitive; `"patch-match"` and `"fmm"` are accepted too).
    pub fn parse(s: &str) -> Option<InpaintMethod> {
        match s.trim().to_ascii_lowercase().as_str() {
            "telea" | "fmm" => Some(InpaintMethod::Telea),
            "patchmatch" | "patch-match" | "patch_match" => Some(InpaintMethod::PatchMatch),
            _ => None,
        }
    }
}

impl std::fmt::Display for InpaintMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for InpaintMethod {
    type Err = DiffusionError;

    fn from_str(s: &str) -> Result<Self> {
        InpaintMethod::parse(s).ok_or_else(|| {
            DiffusionError::InvalidOption(format!(
                "unknown inpainting method {s:?}: use \"telea\" or \"patchmatch\""
            ))
        })
    }
}

/// Fills `mask` in `image` with `method` and its default options; `seed` drives PatchMatch's
/// random search (Telea ignores it). Pixels outside the mask are returned bit-identical.
///
/// Errors when the mask's size differs from the image's or the mask covers the whole image;
/// an empty mask returns a copy of the image.
pub fn inpaint(
    image: &RgbImage,
    mask: &Mask,
    method: InpaintMethod,
    seed: u64,
) -> Result<RgbImage> {
    match method {
        InpaintMethod::Telea => inpaint_telea(image, mask, &TeleaOptions::default()),
        InpaintMethod::PatchMatch => {
            inpaint_patchmatch(image, mask, &PatchMatchOptions::default(), seed)
        }
    }
}

/// Checks that `mask` has `image`'s size.
pub(crate) fn check_mask(image: &RgbImage, mask: &Mask) -> Result<()> {
    if (mask.width(), mask.height()) != image.dimensions() {
        return Err(DiffusionError::MaskSize {
            mask_width: mask.width(),
            mask_height: mask.height(),
            image_width: image.width(),
            image_height: image.height(),
        });
    }
    Ok(())
}

/// The largest working-window side chosen for context alone (a bigger mask box still gets its
/// box plus margins).
const MAX_CONTEXT_SIDE: u32 = 1024;

/// The window an inpainter works in: the square [`window_around`] the mask with side
/// `context` times the box side (at least `min_side`, at most [`MAX_CONTEXT_SIDE`] unless the
/// box is larger), widened so that it holds `margin` pixels on every side of the mask's box
/// (clipped to the image).
pub(crate) fn working_window(
    mask: &Mask,
    margin: u32,
    context: f64,
    min_side: u32,
) -> Result<Window> {
    let b = mask
        .bbox()
        .ok_or_else(|| DiffusionError::Core("the mask is empty".into()))?;
    let (bx0, by0, bx1, by1) = (b.x0 as u32, b.y0 as u32, b.x1 as u32, b.y1 as u32);
    let side = (bx1 - bx0).max(by1 - by0);
    let cap = MAX_CONTEXT_SIDE.max(side.saturating_add(2 * margin));
    let want = ((side as f64 * context).ceil() as u32)
        .max(min_side)
        .max(side.saturating_add(2 * margin))
        .min(cap);
    let win = window_around(mask, want, 1.0)?;
    let (w, h) = (mask.width(), mask.height());
    let x0 = win.x.min(bx0.saturating_sub(margin));
    let y0 = win.y.min(by0.saturating_sub(margin));
    let x1 = (win.x + win.width).max(bx1.saturating_add(margin).min(w));
    let y1 = (win.y + win.height).max(by1.saturating_add(margin).min(h));
    Ok(Window {
        x: x0,
        y: y0,
        width: x1 - x0,
        height: y1 - y0,
    })
}

/// Validates the inputs, crops the working window, runs `fill` on it and pastes the filled
/// pixels back inside the mask only.
pub(crate) fn run_in_window(
    image: &RgbImage,
    mask: &Mask,
    margin: u32,
    context: f64,
    min_side: u32,
    fill: impl FnOnce(&mut Canvas),
) -> Result<RgbImage> {
    check_mask(image, mask)?;
    if mask.is_empty() {
        return Ok(image.clone());
    }
    let (w, h) = image.dimensions();
    if mask.area() == w as u64 * h as u64 {
        return Err(DiffusionError::NothingToInpaintFrom {
            width: w,
            height: h,
        });
    }
    let window = working_window(mask, margin, context, min_side)?;
    let sub_image = crop(image, window);
    let sub_mask = crop_mask(mask, window)?;
    let mut canvas = Canvas::new(&sub_image, &sub_mask);
    fill(&mut canvas);
    let filled = canvas.to_image();
    Ok(paste_window_inside(image, &filled, window, mask)?)
}
