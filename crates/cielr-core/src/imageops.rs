//! Image utilities: exact paste-back inside a mask, windows around a mask, and the SSR overlay.

use image::{Rgb, RgbImage};

use crate::error::{CoreError, Result};
use crate::mask::Mask;
use crate::scene::Scene;

fn check_size(what: &str, image: &RgbImage, w: u32, h: u32) -> Result<()> {
    if image.dimensions() != (w, h) {
        return Err(CoreError::SizeMismatch(format!(
            "{what} is {}x{} but {w}x{h} was expected",
            image.width(),
            image.height()
        )));
    }
    Ok(())
}

/// `edited` inside `mask`, `original` everywhere else: pixels outside the mask are bit-identical
/// to the original whatever the editor did.
pub fn paste_inside(original: &RgbImage, edited: &RgbImage, mask: &Mask) -> Result<RgbImage> {
    let (w, h) = original.dimensions();
    check_size("the edited image", edited, w, h)?;
    if (mask.width(), mask.height()) != (w, h) {
        return Err(CoreError::SizeMismatch(format!(
            "the mask is {}x{} but the image is {w}x{h}",
            mask.width(),
            mask.height()
        )));
    }
    let mut out = original.clone();
    for (x, y) in mask.pixels() {
        out.put_pixel(x, y, *edited.get_pixel(x, y));
    }
    Ok(out)
}

/// A rectangle of an image, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

/// A square window around the mask's box, with side `max(min_side, context * box side)`,
/// centred on the box and shifted (never shrunk below what fits) to stay inside the image.
/// This is the crop that generative editors run on, so large images never run at full size.
pub fn window_around(mask: &Mask, min_side: u32, context: f64) -> Result<Window> {
    let b = mask
        .bbox()
        .ok_or_else(|| CoreError::Editor("the edit mask is empty".into()))?;
    let (w, h) = (mask.width(), mask.height());
    let want = (b.width().max(b.height()) * context.max(1.0)).ceil() as u32;
    let side = want.max(min_side).min(w.min(h)).max(1);
    let (cx, cy) = b.center();
    let place = |c: f64, len: u32| -> u32 {
        let start = (c - side as f64 / 2.0).round().max(0.0) as u32;
        start.min(len - side)
    };
    let (x, y) = (place(cx, w), place(cy, h));
    // The mask's box may be longer than a square fitting the image: widen along that axis.
    let (x0, x1) = (x.min(b.x0 as u32), (x + side).max(b.x1 as u32));
    let (y0, y1) = (y.min(b.y0 as u32), (y + side).max(b.y1 as u32));
    Ok(Window {
        x: x0,
        y: y0,
        width: x1 - x0,
        height: y1 - y0,
    })
}

/// Copies a window out of an image.
pub fn crop(image: &RgbImage, window: Window) -> RgbImage {
    image::imageops::crop_imm(image, window.x, window.y, window.width, window.height).to_image()
}

/// Copies a window out of a mask.
pub fn crop_mask(mask: &Mask, window: Window) -> Result<Mask> {
    Mask::from_fn(window.width, window.height, |x, y| {
        mask.get(window.x + x, window.y + y)
    })
}

/// Writes `patch` (the edited window) back into `image` only where `mask` is set.
pub fn paste_window_inside(
    image: &RgbImage,
    patch: &RgbImage,
    window: Window,
    mask: &Mask,
) -> Result<RgbImage> {
    check_size("the edited window", patch, window.width, window.height)?;
    let mut out = image.clone();
    for (x, y) in mask.pixels() {
        if x >= window.x
            && y >= window.y
            && x < window.x + window.width
            && y < window.y + window.height
        {
            out.put_pixel(x, y, *patch.get_pixel(x - window.x, y - window.y));
        }
    }
    Ok(out)
}

const PALETTE: [[u8; 3]; 8] = [
    [31, 119, 180],
    [44, 160, 44],
    [148, 103, 189],
    [23, 190, 207],
    [188, 189, 34],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
];
const HIGHLIGHT: [u8; 3] = [230, 30, 30];

/// 3x5 bitmaps of the digits 0-9, one row per 3 bits.
const DIGITS: [[u8; 5]; 10] = [
    [7, 5, 5, 5, 7],
    [2, 6, 2, 2, 7],
    [7, 1, 7, 4, 7],
    [7, 1, 7, 1, 7],
    [5, 5, 7, 1, 1],
    [7, 4, 7, 1, 7],
    [7, 4, 7, 5, 7],
    [7, 1, 1, 1, 1],
    [7, 5, 7, 5, 7],
    [7, 5, 7, 1, 7],
];

fn blend(p: &mut Rgb<u8>, c: [u8; 3], alpha: f32) {
    for (v, c) in p.0.iter_mut().zip(c) {
        *v = (*v as f32 * (1.0 - alpha) + c as f32 * alpha).round() as u8;
    }
}

fn draw_number(img: &mut RgbImage, n: u32, x: u32, y: u32, scale: u32, color: [u8; 3]) {
    let text = n.to_string();
    let (w, h) = img.dimensions();
    // Dark plate behind the digits so they read on any background.
    let plate_w = (text.len() as u32 * 4 + 1) * scale;
    for py in y..(y + 7 * scale).min(h) {
        for px in x..(x + plate_w).min(w) {
            img.put_pixel(px, py, Rgb([0, 0, 0]));
        }
    }
    for (i, ch) in text.bytes().enumerate() {
        let glyph = DIGITS[(ch - b'0') as usize];
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..3 {
                if bits >> (2 - col) & 1 == 1 {
                    let gx = x + (1 + i as u32 * 4 + col) * scale;
                    let gy = y + (1 + row as u32) * scale;
                    for dy in 0..scale {
                        for dx in 0..scale {
                            if gx + dx < w && gy + dy < h {
                                img.put_pixel(gx + dx, gy + dy, Rgb(color));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The SSR drawn over the image: each object's region tinted, its outline drawn and its id
/// written at its box corner; `highlighted` objects (the chosen targets) in red.
pub fn render_overlay(image: &RgbImage, scene: &Scene, highlighted: &[u32]) -> Result<RgbImage> {
    let (w, h) = image.dimensions();
    let mut out = image.clone();
    let scale = (w.min(h) / 200).clamp(1, 4);
    // Draw highlighted objects last so they stay on top.
    let mut order: Vec<_> = scene.objects.iter().enumerate().collect();
    order.sort_by_key(|(_, o)| highlighted.contains(&o.id));
    for (i, o) in order {
        let hl = highlighted.contains(&o.id);
        let color = if hl {
            HIGHLIGHT
        } else {
            PALETTE[i % PALETTE.len()]
        };
        let region = o.region(w, h)?;
        let inner = region.erode(scale as f64 + if hl { 1.0 } else { 0.0 });
        for (x, y) in region.pixels() {
            let p = out.get_pixel_mut(x, y);
            if inner.get(x, y) {
                blend(p, color, if hl { 0.45 } else { 0.3 });
            } else {
                *p = Rgb(color);
            }
        }
        let (x0, y0, _, _) = o.bbox.pixel_range(w, h);
        draw_number(
            &mut out,
            o.id,
            x0,
            y0,
            scale,
            if hl { HIGHLIGHT } else { [255, 255, 255] },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::BBox;

    #[test]
    fn paste_keeps_outside_pixels() {
        let a = RgbImage::from_pixel(6, 4, Rgb([1, 2, 3]));
        let b = RgbImage::from_pixel(6, 4, Rgb([9, 9, 9]));
        let m = Mask::from_box(6, 4, &BBox::new(1.0, 1.0, 3.0, 2.0)).unwrap();
        let out = paste_inside(&a, &b, &m).unwrap();
        for (x, y, p) in out.enumerate_pixels() {
            assert_eq!(
                *p,
                if m.get(x, y) {
                    Rgb([9, 9, 9])
                } else {
                    Rgb([1, 2, 3])
                }
            );
        }
        assert!(paste_inside(&a, &RgbImage::new(5, 4), &m).is_err());
    }

    #[test]
    fn window_is_square_inside_the_image_and_covers_the_mask() {
        let m = Mask::from_box(800, 600, &BBox::new(700.0, 500.0, 760.0, 590.0)).unwrap();
        let win = window_around(&m, 512, 1.5).unwrap();
        assert_eq!((win.width, win.height), (512, 512));
        assert!(win.x + win.width <= 800 && win.y + win.height <= 600);
        assert!(win.x <= 700 && win.y <= 500);
        let wide = Mask::from_box(800, 300, &BBox::new(0.0, 100.0, 800.0, 120.0)).unwrap();
        let win = window_around(&wide, 512, 1.0).unwrap();
        assert_eq!((win.x, win.width), (0, 800));
        assert_eq!(win.height, 300);
        let patch = RgbImage::from_pixel(win.width, win.height, Rgb([5, 5, 5]));
        let img = RgbImage::new(800, 300);
        let out = paste_window_inside(&img, &patch, win, &wide).unwrap();
        assert_eq!(
            out.pixels().filter(|p| p.0 == [5, 5, 5]).count() as u64,
            wide.area()
        );
        assert!(window_around(&Mask::new(4, 4).unwrap(), 2, 1.0).is_err());
    }

    #[test]
    fn overlay_marks_targets_in_red() {
        let img = RgbImage::from_pixel(40, 40, Rgb([200, 200, 200]));
        let mut s = Scene::new(40, 40);
        s.objects.push(crate::SceneObject::new(
            0,
            "a",
            BBox::new(0.0, 0.0, 20.0, 20.0),
        ));
        s.objects.push(crate::SceneObject::new(
            1,
            "b",
            BBox::new(20.0, 20.0, 40.0, 40.0),
        ));
        let o = render_overlay(&img, &s, &[1]).unwrap();
        assert_eq!(o.get_pixel(20, 30).0, HIGHLIGHT, "outline of the target");
        assert_ne!(o.get_pixel(10, 10).0, [200, 200, 200], "tinted");
        assert_ne!(o.get_pixel(10, 10).0, HIGHLIGHT);
    }
}
