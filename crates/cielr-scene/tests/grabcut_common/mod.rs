//! Composites with exact ground truth, shared by `tests/grabcut_*.rs` and
//! `examples/mask_eval.rs` (which includes this file with `#[path]`).
//!
//! An "object" is a texture cut out of one real photo with a known alpha matte (scikit-image's
//! CC0 horse silhouette, or a drawn star or blob) and pasted onto another real photo:
//! `pixel = alpha * texture + (1 - alpha) * background`. The ground-truth mask is
//! `alpha >= 128` (the mattes are anti-aliased, so edges blend like a real photo's).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use cielr_core::{BBox, Mask};
use image::imageops::{self, FilterType};
use image::{GrayImage, Luma, Rgb, RgbImage};

/// The crate's directory.
pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Loads an image as RGB (greyscale photos are expanded).
pub fn load_rgb(path: &Path) -> RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
}

/// The committed test photos: `coffee` (600x400), `chelsea` (451x300), `astronaut-256`.
pub fn committed_photo(name: &str) -> RgbImage {
    let path = match name {
        "coffee" => manifest_dir().join("../../assets/coffee.png"),
        "chelsea" => manifest_dir().join("tests/fixtures/images/chelsea.png"),
        "astronaut-256" => manifest_dir().join("tests/fixtures/images/astronaut-256.png"),
        other => panic!("no committed photo {other}"),
    };
    load_rgb(&path)
}

/// The horse silhouette's alpha matte (400x328, 255 = horse), from scikit-image's CC0
/// `horse.png` (see `tests/fixtures/masks/README.md`).
pub fn horse_alpha() -> GrayImage {
    let path = manifest_dir().join("tests/fixtures/masks/horse.png");
    image::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_luma8()
}

/// SplitMix64.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
}

/// The tight box around the matte's `>= 128` pixels, cropped out (so the object fills it).
pub fn trim(alpha: &GrayImage) -> GrayImage {
    let m = Mask::from_gray(alpha, 128).unwrap();
    let b = m.bbox().expect("empty matte");
    // Keep a pixel of soft edge around the hard mask.
    let x0 = (b.x0 as u32).saturating_sub(1);
    let y0 = (b.y0 as u32).saturating_sub(1);
    let x1 = (b.x1 as u32 + 1).min(alpha.width());
    let y1 = (b.y1 as u32 + 1).min(alpha.height());
    imageops::crop_imm(alpha, x0, y0, x1 - x0, y1 - y0).to_image()
}

/// Resizes a matte so that its longer side is `longer` pixels.
pub fn scale_alpha(alpha: &GrayImage, longer: u32) -> GrayImage {
    let s = longer as f64 / alpha.width().max(alpha.height()) as f64;
    let w = ((alpha.width() as f64 * s).round() as u32).max(1);
    let h = ((alpha.height() as f64 * s).round() as u32).max(1);
    imageops::resize(alpha, w, h, FilterType::Triangle)
}

/// A matte from an inside test, supersampled 4x4 per pixel.
pub fn render_alpha(w: u32, h: u32, inside: impl Fn(f64, f64) -> bool) -> GrayImage {
    GrayImage::from_fn(w, h, |x, y| {
        let mut n = 0u32;
        for sy in 0..4 {
            for sx in 0..4 {
                let u = x as f64 + (sx as f64 + 0.5) / 4.0;
                let v = y as f64 + (sy as f64 + 0.5) / 4.0;
                n += inside(u, v) as u32;
            }
        }
        Luma([((n * 255 + 8) / 16) as u8])
    })
}

/// A five-pointed star filling a `w x h` box.
pub fn star_alpha(w: u32, h: u32) -> GrayImage {
    let (cx, cy) = (w as f64 / 2.0, h as f64 / 2.0);
    let pts: Vec<(f64, f64)> = (0..10)
        .map(|i| {
            let r = if i % 2 == 0 { 1.0 } else { 0.45 };
            let a = -std::f64::consts::FRAC_PI_2 + i as f64 * std::f64::consts::PI / 5.0;
            (cx + r * cx * a.cos(), cy + r * cy * a.sin())
        })
        .collect();
    render_alpha(w, h, |x, y| point_in_polygon(&pts, x, y))
}

fn point_in_polygon(pts: &[(f64, f64)], x: f64, y: f64) -> bool {
    let mut inside = false;
    let n = pts.len();
    for i in 0..n {
        let (xi, yi) = pts[i];
        let (xj, yj) = pts[(i + n - 1) % n];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
    }
    inside
}

/// An irregular blob: the union of four seeded ellipses inside a `w x h` box.
pub fn blob_alpha(w: u32, h: u32, seed: u64) -> GrayImage {
    let mut r = Rng(seed);
    let (fw, fh) = (w as f64, h as f64);
    let ellipses: Vec<(f64, f64, f64, f64)> = (0..4)
        .map(|_| {
            let (rx, ry) = (r.range(0.15, 0.3) * fw, r.range(0.15, 0.3) * fh);
            (r.range(rx, fw - rx), r.range(ry, fh - ry), rx, ry)
        })
        .collect();
    render_alpha(w, h, |x, y| {
        ellipses.iter().any(|&(cx, cy, rx, ry)| {
            let (dx, dy) = ((x - cx) / rx, (y - cy) / ry);
            dx * dx + dy * dy <= 1.0
        })
    })
}

/// A composite and its exact mask.
pub struct Composite {
    /// What it is made of.
    pub name: String,
    /// The pasted image.
    pub image: RgbImage,
    /// The exact object mask (`alpha >= 128`).
    pub truth: Mask,
    /// The mask's tight box.
    pub tight: BBox,
}

/// Pastes `texture` (from its pixel `tex_at`) through `alpha` onto `background` at `at`.
pub fn paste(
    name: impl Into<String>,
    background: &RgbImage,
    texture: &RgbImage,
    tex_at: (u32, u32),
    alpha: &GrayImage,
    at: (u32, u32),
) -> Composite {
    let mut image = background.clone();
    let (w, h) = background.dimensions();
    let mut truth = Mask::new(w, h).unwrap();
    for (x, y, a) in alpha.enumerate_pixels() {
        let (bx, by) = (at.0 + x, at.1 + y);
        let (tx, ty) = (tex_at.0 + x, tex_at.1 + y);
        if bx >= w || by >= h || tx >= texture.width() || ty >= texture.height() {
            continue;
        }
        let a = a.0[0] as u32;
        let t = texture.get_pixel(tx, ty).0;
        let b = image.get_pixel(bx, by).0;
        let mix = |k: usize| ((a * t[k] as u32 + (255 - a) * b[k] as u32 + 127) / 255) as u8;
        image.put_pixel(bx, by, Rgb([mix(0), mix(1), mix(2)]));
        if a >= 128 {
            truth.set(bx, by, true);
        }
    }
    let tight = truth
        .bbox()
        .expect("the object fell outside the background");
    Composite {
        name: name.into(),
        image,
        truth,
        tight,
    }
}

/// Moves each side of `b` by up to `fraction` of the box's width (left, right) or height
/// (top, bottom), in or out, clipped to the image (a detector's imprecision).
pub fn jitter(b: &BBox, fraction: f64, rng: &mut Rng, w: u32, h: u32) -> BBox {
    let (bw, bh) = (b.width(), b.height());
    let mut j = |v: f64, s: f64| v + rng.range(-fraction, fraction) * s;
    let x0 = j(b.x0, bw).clamp(0.0, w as f64 - 1.0);
    let y0 = j(b.y0, bh).clamp(0.0, h as f64 - 1.0);
    let x1 = j(b.x1, bw).clamp(x0 + 1.0, w as f64);
    let y1 = j(b.y1, bh).clamp(y0 + 1.0, h as f64);
    BBox::new(x0.round(), y0.round(), x1.round(), y1.round())
}

/// The object shapes: `(name, matte with its longer side = longer)`.
pub fn shape(kind: usize, longer: u32, seed: u64) -> (&'static str, GrayImage) {
    match kind % 4 {
        0 => ("horse", scale_alpha(&trim(&horse_alpha()), longer)),
        1 => (
            "horse-flipped",
            imageops::flip_horizontal(&scale_alpha(&trim(&horse_alpha()), longer)),
        ),
        2 => ("star", star_alpha(longer, (longer as f64 * 0.9) as u32)),
        _ => (
            "blob",
            blob_alpha((longer as f64 * 0.8) as u32, longer, seed),
        ),
    }
}

/// A composite of shape `kind` with its longer side `longer`, textured from a seeded spot of
/// `texture` and pasted at a seeded spot of `background`.
pub fn make_composite(
    name: &str,
    background: &RgbImage,
    texture: &RgbImage,
    kind: usize,
    longer: u32,
    seed: u64,
) -> Composite {
    let mut r = Rng(seed);
    let (shape_name, alpha) = shape(kind, longer, seed);
    let (aw, ah) = alpha.dimensions();
    let (bw, bh) = background.dimensions();
    let (tw, th) = texture.dimensions();
    assert!(
        aw <= bw && ah <= bh,
        "{name}: object larger than the background"
    );
    // Textures smaller than the object are scaled up to cover it.
    let texture = if aw > tw || ah > th {
        let s = (aw as f64 / tw as f64).max(ah as f64 / th as f64);
        imageops::resize(
            texture,
            (tw as f64 * s).ceil() as u32,
            (th as f64 * s).ceil() as u32,
            FilterType::Triangle,
        )
    } else {
        texture.clone()
    };
    let tex_at = (
        (r.unit() * (texture.width() - aw + 1) as f64) as u32,
        (r.unit() * (texture.height() - ah + 1) as f64) as u32,
    );
    let at = (
        (r.unit() * (bw - aw + 1) as f64) as u32,
        (r.unit() * (bh - ah + 1) as f64) as u32,
    );
    paste(
        format!("{name} {shape_name} {longer}px"),
        background,
        &texture,
        tex_at,
        &alpha,
        at,
    )
}
