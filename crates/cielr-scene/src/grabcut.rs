//! Class-agnostic object masks from boxes: GrabCut, and the box and ellipse baselines.
//!
//! A detector gives boxes; removing a box erases the whole rectangle. [`grabcut`] segments
//! the object inside a box with GrabCut (C. Rother, V. Kolmogorov, A. Blake, *"GrabCut":
//! interactive foreground extraction using iterated graph cuts*, SIGGRAPH 2004):
//!
//! 1. **Window.** The box is widened by a margin of background ([`GrabCutOptions::margin`]
//!    of its width and height on each side, clipped to the image). Pixels of the window
//!    outside the box are *sure background*; pixels inside are *probable foreground*.
//!    Windows larger than [`GrabCutOptions::max_side`] are downscaled (triangle filter)
//!    before segmentation, and the mask is brought back with a bilinear interpolation of the
//!    0/1 labels thresholded at one half.
//! 2. **Colour models.** Foreground and background are Gaussian mixtures on RGB with full
//!    covariances ([`GrabCutOptions::components`], 5 by default), initialised by k-means with
//!    seeded k-means++ centres ([`GrabCutOptions::seed`]) on the pixels of each label.
//! 3. **Iterated graph cut.** Each iteration assigns every pixel to the most likely component
//!    of its label's mixture, refits both mixtures, and labels the pixels by an s-t minimum
//!    cut ([`crate::maxflow`], Boykov–Kolmogorov) of the energy
//!    `sum_p D_p(label) + sum_{p~q} [label_p != label_q] gamma / dist(p, q) * exp(-beta |z_p - z_q|^2)`
//!    on the 8-connected grid, with `D_p` the negative log-likelihood under the label's
//!    mixture and `beta = 1 / (2 <|z_p - z_q|^2>)` over all neighbouring pairs of the window.
//!    Only the box's pixels are graph nodes: sure background always ends on the sink side,
//!    so its edges to box pixels become capacities to the sink. The flow is kept from one
//!    iteration to the next (only the data terms change). It stops after
//!    [`GrabCutOptions::iterations`] iterations or when no label changes.
//! 4. **Box prior.** A tight box touches its object on every row and column (Lempitsky et
//!    al., *Image segmentation with a bounding box prior*, ICCV 2009). For a few rounds
//!    ([`GrabCutOptions::pin_rounds`]), the most foreground-like pixel of each row and
//!    column without foreground is pinned to the foreground and the cut solved again; this
//!    brings back thin parts the smoothness term cut off (legs, tails).
//! 5. **Clean-up.** Only the largest 8-connected foreground component is kept, and holes
//!    (background regions enclosed by it) smaller than [`GrabCutOptions::fill_holes_below`]
//!    of its area are filled; larger holes (a cup handle's opening) stay.
//! 6. **Fallback.** When the box is smaller than 8 pixels on a side, when the window holds
//!    almost no background (a box covering the image), when the mask collapses below
//!    [`GrabCutOptions::min_area_fraction`] of the box, or when it stays further than
//!    [`GrabCutOptions::max_side_gap`] from a side of the box (it found a part of the
//!    object: a red cup's pale inside, without the red wall that looks like the red saucer),
//!    the result is the ellipse inscribed in the box (or the box, see
//!    [`GrabCutOptions::fallback`]), marked as a fallback with the reason.
//!
//! Everything is deterministic: the same image, box and options give the same mask. Nothing
//! panics on tiny or degenerate boxes, boxes touching the border, or uniform images.
//!
//! [`object_mask`] chooses between GrabCut and the two baselines ([`MaskMode`]); the
//! measured quality of each is in `docs/masks.md`.

use cielr_core::{BBox, Mask};
use image::imageops::{self, FilterType};
use image::RgbImage;

use crate::error::{Result, SceneError};
use crate::maxflow::Graph;

/// How an object's mask is made from its box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MaskMode {
    /// The box itself (every pixel whose centre lies inside it).
    Box,
    /// The ellipse inscribed in the box.
    Ellipse,
    /// GrabCut inside the box (see the module docs), with a fallback when it fails.
    #[default]
    GrabCut,
}

/// What GrabCut returns when it cannot produce a usable mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fallback {
    /// The box: never misses a part of the object inside it, but covers the most background.
    Box,
    /// The ellipse inscribed in the box: a better IoU on average (see `docs/masks.md`) but
    /// it leaves the box's corners out.
    #[default]
    Ellipse,
}

/// How a mask was made; [`MaskSource::as_str`] is what scene builders record in an object's
/// `"mask"` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskSource {
    /// The box, asked for ([`MaskMode::Box`]).
    Box,
    /// The inscribed ellipse, asked for ([`MaskMode::Ellipse`]).
    Ellipse,
    /// A GrabCut segmentation.
    GrabCut,
    /// GrabCut failed and the box was used.
    BoxFallback,
    /// GrabCut failed and the inscribed ellipse was used.
    EllipseFallback,
}

impl MaskSource {
    /// `"box"`, `"ellipse"`, `"grabcut"`, `"box-fallback"` or `"ellipse-fallback"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            MaskSource::Box => "box",
            MaskSource::Ellipse => "ellipse",
            MaskSource::GrabCut => "grabcut",
            MaskSource::BoxFallback => "box-fallback",
            MaskSource::EllipseFallback => "ellipse-fallback",
        }
    }

    /// Whether GrabCut was asked for but a fallback was used.
    pub fn is_fallback(&self) -> bool {
        matches!(self, MaskSource::BoxFallback | MaskSource::EllipseFallback)
    }
}

impl std::fmt::Display for MaskSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// GrabCut's settings (see the module docs for what each does).
#[derive(Debug, Clone, PartialEq)]
pub struct GrabCutOptions {
    /// Gaussian components per colour model (1 to 16).
    pub components: usize,
    /// Most graph-cut iterations (at least 1); it stops earlier when no label changes.
    pub iterations: usize,
    /// Weight of the contrast-sensitive smoothness term (Rother et al. use 50).
    pub gamma: f64,
    /// Background margin around the box on each side, as a fraction of the box's width
    /// (left and right) and height (top and bottom); at least 4 pixels.
    pub margin: f64,
    /// Windows whose longer side exceeds this are downscaled to it (32 to 4096).
    pub max_side: u32,
    /// A mask covering less than this fraction of the box counts as collapsed.
    pub min_area_fraction: f64,
    /// A mask that stays further than this fraction of the box's width (height) from its
    /// left or right (top or bottom) side counts as failed: a detector's box is about
    /// tight, so the object comes close to all four sides, and a segment that does not is
    /// usually a part of the object (a cup's pale inside without its red wall). 1 turns the
    /// check off.
    pub max_side_gap: f64,
    /// Holes smaller than this fraction of the mask's area are filled.
    pub fill_holes_below: f64,
    /// What to return when GrabCut fails.
    pub fallback: Fallback,
    /// Rounds of the box prior's pinpointing (0 turns it off).
    pub pin_rounds: usize,
    /// Seed of the k-means++ initialisation.
    pub seed: u64,
}

impl Default for GrabCutOptions {
    /// 5 components, at most 5 iterations, gamma 50, margin 15%, windows up to 256 pixels,
    /// collapse below 5% of the box, side gaps up to 20%, fill holes under 2% of the mask,
    /// ellipse fallback, 3 pinpointing rounds, seed 0.
    fn default() -> Self {
        GrabCutOptions {
            components: 5,
            iterations: 5,
            gamma: 50.0,
            margin: 0.15,
            max_side: 256,
            min_area_fraction: 0.05,
            max_side_gap: 0.2,
            fill_holes_below: 0.02,
            fallback: Fallback::Ellipse,
            pin_rounds: 3,
            seed: 0,
        }
    }
}

impl GrabCutOptions {
    /// Checks that every setting is in range.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(SceneError::config("GrabCutOptions", m));
        if !(1..=16).contains(&self.components) {
            return bad(format!("components {} is not in 1..=16", self.components));
        }
        if self.iterations == 0 {
            return bad("iterations must be at least 1".into());
        }
        if !(self.gamma.is_finite() && self.gamma >= 0.0 && self.gamma <= 1e4) {
            return bad(format!("gamma {} is not in [0, 1e4]", self.gamma));
        }
        if !(self.margin.is_finite() && self.margin >= 0.0 && self.margin <= 10.0) {
            return bad(format!("margin {} is not in [0, 10]", self.margin));
        }
        if !(32..=4096).contains(&self.max_side) {
            return bad(format!("max_side {} is not in 32..=4096", self.max_side));
        }
        if !(0.0..1.0).contains(&self.min_area_fraction) {
            return bad(format!(
                "min_area_fraction {} is not in [0, 1)",
                self.min_area_fraction
            ));
        }
        if !(0.0..=1.0).contains(&self.max_side_gap) {
            return bad(format!(
                "max_side_gap {} is not in [0, 1]",
                self.max_side_gap
            ));
        }
        if !(self.fill_holes_below.is_finite() && self.fill_holes_below >= 0.0) {
            return bad(format!(
                "fill_holes_below {} is not a non-negative number",
                self.fill_holes_below
            ));
        }
        Ok(())
    }
}

/// An object's mask and how it was made.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectMask {
    /// The mask, the size of the image; set pixels lie inside the box.
    pub mask: Mask,
    /// How it was made.
    pub source: MaskSource,
    /// Why GrabCut fell back, for fallbacks.
    pub fallback_reason: Option<String>,
    /// Graph-cut iterations run (0 when GrabCut did not run).
    pub iterations: usize,
}

/// Boxes smaller than this many pixels on a side are not segmented.
const MIN_BOX_SIDE: u32 = 8;
/// Smallest margin in pixels.
const MIN_MARGIN: f64 = 4.0;
/// Energies are multiplied by this and rounded for the integer max-flow.
const ENERGY_SCALE: f64 = 64.0;
/// Largest data-term difference kept (in energy units), against overflow.
const MAX_DATA: f64 = 1e4;
/// Variance added to every covariance diagonal (8-bit RGB units squared).
const COVARIANCE_FLOOR: f64 = 1.0;
/// k-means iterations of the initialisation.
const KMEANS_ITERATIONS: usize = 10;
/// Most samples k-means looks at (an even subsample of larger sets).
const KMEANS_SAMPLES: usize = 8192;

fn to_scene_error(e: cielr_core::CoreError) -> SceneError {
    SceneError::InvalidInput(e.to_string())
}

fn check_box(bbox: &BBox) -> Result<()> {
    if bbox.is_valid() {
        Ok(())
    } else {
        Err(SceneError::InvalidInput(format!(
            "box [{}, {}, {}, {}] is not four finite numbers with x0 < x1 and y0 < y1",
            bbox.x0, bbox.y0, bbox.x1, bbox.y1
        )))
    }
}

/// The box as a mask of a `width x height` image: pixels whose centres lie inside it.
pub fn box_mask(width: u32, height: u32, bbox: &BBox) -> Result<Mask> {
    check_box(bbox)?;
    Mask::from_box(width, height, bbox).map_err(to_scene_error)
}

/// The ellipse inscribed in the box, as a mask of a `width x height` image: pixels whose
/// centres lie inside it (clipped to the image).
pub fn ellipse_mask(width: u32, height: u32, bbox: &BBox) -> Result<Mask> {
    check_box(bbox)?;
    let (cx, cy) = bbox.center();
    let (a, b) = (bbox.width() / 2.0, bbox.height() / 2.0);
    let (x0, y0, x1, y1) = bbox.pixel_range(width, height);
    let mut m = Mask::new(width, height).map_err(to_scene_error)?;
    for y in y0..y1 {
        let dy = (y as f64 + 0.5 - cy) / b;
        for x in x0..x1 {
            let dx = (x as f64 + 0.5 - cx) / a;
            if dx * dx + dy * dy <= 1.0 {
                m.set(x, y, true);
            }
        }
    }
    Ok(m)
}

/// The mask of the object in `bbox` made as `mode` says (GrabCut with `options`).
pub fn object_mask(
    image: &RgbImage,
    bbox: &BBox,
    mode: MaskMode,
    options: &GrabCutOptions,
) -> Result<ObjectMask> {
    let (w, h) = image.dimensions();
    let plain = |mask: Mask, source| ObjectMask {
        mask,
        source,
        fallback_reason: None,
        iterations: 0,
    };
    match mode {
        MaskMode::Box => Ok(plain(box_mask(w, h, bbox)?, MaskSource::Box)),
        MaskMode::Ellipse => Ok(plain(ellipse_mask(w, h, bbox)?, MaskSource::Ellipse)),
        MaskMode::GrabCut => grabcut(image, bbox, options),
    }
}

fn fallback(
    image: &RgbImage,
    bbox: &BBox,
    options: &GrabCutOptions,
    reason: String,
    iterations: usize,
) -> Result<ObjectMask> {
    let (w, h) = image.dimensions();
    let (mask, source) = match options.fallback {
        Fallback::Box => (box_mask(w, h, bbox)?, MaskSource::BoxFallback),
        Fallback::Ellipse => (ellipse_mask(w, h, bbox)?, MaskSource::EllipseFallback),
    };
    Ok(ObjectMask {
        mask,
        source,
        fallback_reason: Some(reason),
        iterations,
    })
}

/// Pixel rectangle `[x0, x1) x [y0, y1)`.
#[derive(Debug, Clone, Copy)]
struct Rect {
    x0: u32,
    y0: u32,
    x1: u32,
    y1: u32,
}

impl Rect {
    fn width(&self) -> u32 {
        self.x1 - self.x0
    }
    fn height(&self) -> u32 {
        self.y1 - self.y0
    }
    fn area(&self) -> u64 {
        self.width() as u64 * self.height() as u64
    }
    fn contains(&self, x: u32, y: u32) -> bool {
        x >= self.x0 && x < self.x1 && y >= self.y0 && y < self.y1
    }
}

/// Segments the object inside `bbox` with GrabCut (see the module docs). Fails only on an
/// invalid box or invalid options; a failed segmentation returns the fallback mask.
pub fn grabcut(image: &RgbImage, bbox: &BBox, options: &GrabCutOptions) -> Result<ObjectMask> {
    options.validate()?;
    check_box(bbox)?;
    let (w, h) = image.dimensions();
    let (bx0, by0, bx1, by1) = bbox.pixel_range(w, h);
    let b = Rect {
        x0: bx0,
        y0: by0,
        x1: bx1,
        y1: by1,
    };
    if b.width() < MIN_BOX_SIDE || b.height() < MIN_BOX_SIDE {
        return fallback(
            image,
            bbox,
            options,
            format!(
                "the box covers {}x{} pixels (GrabCut needs at least {MIN_BOX_SIDE} on each side)",
                b.width(),
                b.height()
            ),
            0,
        );
    }
    let mx = (options.margin * b.width() as f64).max(MIN_MARGIN).ceil() as u32;
    let my = (options.margin * b.height() as f64).max(MIN_MARGIN).ceil() as u32;
    let win = Rect {
        x0: b.x0.saturating_sub(mx),
        y0: b.y0.saturating_sub(my),
        x1: b.x1.saturating_add(mx).min(w),
        y1: b.y1.saturating_add(my).min(h),
    };
    let background = win.area() - b.area();
    let needed = ((b.area() as f64 * 0.02).ceil() as u64).max(10 * options.components as u64);
    if background < needed {
        return fallback(
            image,
            bbox,
            options,
            format!(
                "only {background} background pixels around the box (at least {needed} needed)"
            ),
            0,
        );
    }

    // The window, downscaled when large.
    let (ww, wh) = (win.width(), win.height());
    let longer = ww.max(wh);
    let scale = (options.max_side as f64 / longer as f64).min(1.0);
    let lw = ((ww as f64 * scale).round() as u32).clamp(1, ww);
    let lh = ((wh as f64 * scale).round() as u32).clamp(1, wh);
    let crop = imageops::crop_imm(image, win.x0, win.y0, ww, wh).to_image();
    let small = if (lw, lh) == (ww, wh) {
        crop
    } else {
        imageops::resize(&crop, lw, lh, FilterType::Triangle)
    };
    let (sx, sy) = (lw as f64 / ww as f64, lh as f64 / wh as f64);
    let (lx0, ly0, lx1, ly1) = BBox::new(
        (b.x0 - win.x0) as f64 * sx,
        (b.y0 - win.y0) as f64 * sy,
        (b.x1 - win.x0) as f64 * sx,
        (b.y1 - win.y0) as f64 * sy,
    )
    .pixel_range(lw, lh);
    let lbox = Rect {
        x0: lx0,
        y0: ly0,
        x1: lx1,
        y1: ly1,
    };
    if lbox.width() == 0 || lbox.height() == 0 {
        return fallback(
            image,
            bbox,
            options,
            "the box vanishes at the working resolution".into(),
            0,
        );
    }
    let colors: Vec<[f64; 3]> = small
        .pixels()
        .map(|p| [p.0[0] as f64, p.0[1] as f64, p.0[2] as f64])
        .collect();

    let (mut fg, iterations) = segment(&colors, lw, lh, lbox, options)?;
    keep_largest_component(&mut fg, lw, lh);
    let area = fg.iter().filter(|&&v| v).count();
    fill_holes(
        &mut fg,
        lw,
        lbox,
        (options.fill_holes_below * area as f64) as usize,
    );
    let area = fg.iter().filter(|&&v| v).count();
    let fraction = area as f64 / lbox.area() as f64;
    if fraction < options.min_area_fraction {
        return fallback(
            image,
            bbox,
            options,
            format!(
                "the segmentation collapsed to {:.1}% of the box (minimum {:.1}%)",
                100.0 * fraction,
                100.0 * options.min_area_fraction
            ),
            iterations,
        );
    }

    let gaps = side_gaps(&fg, lw, lbox);
    let widest = gaps.iter().cloned().fold(0.0, f64::max);
    if widest > options.max_side_gap {
        return fallback(
            image,
            bbox,
            options,
            format!(
                "the mask stays {:.0}%, {:.0}%, {:.0}% and {:.0}% of the box's size away from its left, top, right and bottom sides (at most {:.0}% allowed)",
                100.0 * gaps[0],
                100.0 * gaps[1],
                100.0 * gaps[2],
                100.0 * gaps[3],
                100.0 * options.max_side_gap
            ),
            iterations,
        );
    }

    let mask = upsample(&fg, lw, lh, win, b, w, h)?;
    if mask.is_empty() {
        return fallback(
            image,
            bbox,
            options,
            "the mask vanished when brought back to full resolution".into(),
            iterations,
        );
    }
    Ok(ObjectMask {
        mask,
        source: MaskSource::GrabCut,
        fallback_reason: None,
        iterations,
    })
}

/// How far the mask stays from the box's left, top, right and bottom sides, as fractions of
/// the box's width (left, right) and height (top, bottom); all 1 for an empty mask.
fn side_gaps(mask: &[bool], w: u32, b: Rect) -> [f64; 4] {
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0u32, 0u32);
    for (i, _) in mask.iter().enumerate().filter(|(_, &m)| m) {
        let (x, y) = ((i % w as usize) as u32, (i / w as usize) as u32);
        x0 = x0.min(x);
        y0 = y0.min(y);
        x1 = x1.max(x + 1);
        y1 = y1.max(y + 1);
    }
    if x1 == 0 {
        return [1.0; 4];
    }
    let (bw, bh) = (b.width() as f64, b.height() as f64);
    [
        x0.saturating_sub(b.x0) as f64 / bw,
        y0.saturating_sub(b.y0) as f64 / bh,
        b.x1.saturating_sub(x1) as f64 / bw,
        b.y1.saturating_sub(y1) as f64 / bh,
    ]
}

/// Brings the window's labels back to image resolution inside the box: bilinear
/// interpolation of the 0/1 labels at each pixel centre, thresholded at one half.
fn upsample(
    low: &[bool],
    lw: u32,
    lh: u32,
    win: Rect,
    b: Rect,
    width: u32,
    height: u32,
) -> Result<Mask> {
    let mut mask = Mask::new(width, height).map_err(to_scene_error)?;
    let (sx, sy) = (
        lw as f64 / win.width() as f64,
        lh as f64 / win.height() as f64,
    );
    let at = |x: i64, y: i64| -> f64 {
        let x = x.clamp(0, lw as i64 - 1) as usize;
        let y = y.clamp(0, lh as i64 - 1) as usize;
        low[y * lw as usize + x] as u8 as f64
    };
    for y in b.y0..b.y1 {
        let v = ((y - win.y0) as f64 + 0.5) * sy - 0.5;
        let yi = v.floor();
        let fy = v - yi;
        let yi = yi as i64;
        for x in b.x0..b.x1 {
            let u = ((x - win.x0) as f64 + 0.5) * sx - 0.5;
            let xi = u.floor();
            let fx = u - xi;
            let xi = xi as i64;
            let top = at(xi, yi) * (1.0 - fx) + at(xi + 1, yi) * fx;
            let bottom = at(xi, yi + 1) * (1.0 - fx) + at(xi + 1, yi + 1) * fx;
            if top * (1.0 - fy) + bottom * fy >= 0.5 {
                mask.set(x, y, true);
            }
        }
    }
    Ok(mask)
}

/// SplitMix64: a small deterministic generator for the k-means++ seeding.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn dist2(a: &[f64; 3], b: &[f64; 3]) -> f64 {
    let d = [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
    d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
}

/// k-means with k-means++ seeding; returns a cluster index per sample in `members`.
fn kmeans(colors: &[[f64; 3]], members: &[u32], k: usize, rng: &mut Rng) -> Vec<u8> {
    if members.is_empty() {
        return Vec::new();
    }
    let step = members.len().div_ceil(KMEANS_SAMPLES).max(1);
    let sample: Vec<[f64; 3]> = members
        .iter()
        .step_by(step)
        .map(|&i| colors[i as usize])
        .collect();
    // k-means++ seeding.
    let mut centres = vec![sample[(rng.next() % sample.len() as u64) as usize]];
    let mut d2: Vec<f64> = sample.iter().map(|c| dist2(c, &centres[0])).collect();
    while centres.len() < k {
        let total: f64 = d2.iter().sum();
        if total <= 0.0 {
            break; // fewer distinct colours than clusters
        }
        let mut r = rng.unit() * total;
        let mut pick = sample.len() - 1;
        for (i, &d) in d2.iter().enumerate() {
            if r < d {
                pick = i;
                break;
            }
            r -= d;
        }
        let c = sample[pick];
        centres.push(c);
        for (d, s) in d2.iter_mut().zip(&sample) {
            *d = d.min(dist2(s, &c));
        }
    }
    let nearest = |c: &[f64; 3], centres: &[[f64; 3]]| -> usize {
        let mut best = (f64::INFINITY, 0);
        for (j, m) in centres.iter().enumerate() {
            let d = dist2(c, m);
            if d < best.0 {
                best = (d, j);
            }
        }
        best.1
    };
    for _ in 0..KMEANS_ITERATIONS {
        let mut sums = vec![[0.0f64; 4]; centres.len()];
        for s in &sample {
            let j = nearest(s, &centres);
            for c in 0..3 {
                sums[j][c] += s[c];
            }
            sums[j][3] += 1.0;
        }
        let mut moved = false;
        for (m, s) in centres.iter_mut().zip(&sums) {
            if s[3] > 0.0 {
                let new = [s[0] / s[3], s[1] / s[3], s[2] / s[3]];
                moved |= dist2(&new, m) > 1e-6;
                *m = new;
            }
        }
        if !moved {
            break;
        }
    }
    members
        .iter()
        .map(|&i| nearest(&colors[i as usize], &centres) as u8)
        .collect()
}

/// One Gaussian of a mixture, kept as what the likelihood needs.
#[derive(Debug, Clone)]
struct Gaussian {
    /// `ln weight - ln det / 2 - 3/2 ln 2 pi`.
    log_norm: f64,
    mean: [f64; 3],
    inverse: [[f64; 3]; 3],
}

impl Gaussian {
    fn log_density(&self, c: &[f64; 3]) -> f64 {
        let d = [
            c[0] - self.mean[0],
            c[1] - self.mean[1],
            c[2] - self.mean[2],
        ];
        let m = &self.inverse;
        let q = d[0] * (m[0][0] * d[0] + m[0][1] * d[1] + m[0][2] * d[2])
            + d[1] * (m[1][0] * d[0] + m[1][1] * d[1] + m[1][2] * d[2])
            + d[2] * (m[2][0] * d[0] + m[2][1] * d[1] + m[2][2] * d[2]);
        self.log_norm - 0.5 * q
    }
}

/// A Gaussian mixture on RGB with full covariances.
#[derive(Debug, Clone)]
struct Gmm {
    components: Vec<Gaussian>,
}

impl Gmm {
    /// Fits one Gaussian per label present among `members` (`labels[i]` for `members[i]`);
    /// `None` when there are no members.
    fn fit(colors: &[[f64; 3]], members: &[u32], labels: &[u8], k: usize) -> Option<Gmm> {
        if members.is_empty() {
            return None;
        }
        // Per component: count, sums, sums of products.
        let mut n = vec![0f64; k];
        let mut s = vec![[0f64; 3]; k];
        let mut p = vec![[[0f64; 3]; 3]; k];
        for (&i, &l) in members.iter().zip(labels) {
            let l = l as usize;
            let c = &colors[i as usize];
            n[l] += 1.0;
            for a in 0..3 {
                s[l][a] += c[a];
                for b in 0..3 {
                    p[l][a][b] += c[a] * c[b];
                }
            }
        }
        let total = members.len() as f64;
        let mut components = Vec::with_capacity(k);
        for j in 0..k {
            if n[j] == 0.0 {
                continue;
            }
            let mean = [s[j][0] / n[j], s[j][1] / n[j], s[j][2] / n[j]];
            let mut cov = [[0f64; 3]; 3];
            for a in 0..3 {
                for b in 0..3 {
                    cov[a][b] = p[j][a][b] / n[j] - mean[a] * mean[b];
                }
                cov[a][a] += COVARIANCE_FLOOR;
            }
            let Some((det, inverse)) = invert3(&cov) else {
                continue;
            };
            let log_norm =
                (n[j] / total).ln() - 0.5 * det.ln() - 1.5 * (2.0 * std::f64::consts::PI).ln();
            components.push(Gaussian {
                log_norm,
                mean,
                inverse,
            });
        }
        (!components.is_empty()).then_some(Gmm { components })
    }

    /// The component most likely to have produced `c`.
    fn best_component(&self, c: &[f64; 3]) -> u8 {
        let mut best = (f64::NEG_INFINITY, 0usize);
        for (j, g) in self.components.iter().enumerate() {
            let l = g.log_density(c);
            if l > best.0 {
                best = (l, j);
            }
        }
        best.1 as u8
    }

    /// `-ln p(c)` under the mixture (computed in log space, so always finite).
    fn neg_log_likelihood(&self, c: &[f64; 3]) -> f64 {
        let mut logs = [0f64; 16];
        let mut max = f64::NEG_INFINITY;
        for (l, g) in logs.iter_mut().zip(&self.components) {
            *l = g.log_density(c);
            max = max.max(*l);
        }
        let k = self.components.len();
        let sum: f64 = logs[..k].iter().map(|l| (l - max).exp()).sum();
        -(max + sum.ln())
    }
}

/// Determinant and inverse of a symmetric positive-definite 3x3 matrix; `None` when it is
/// not positive definite (or not finite).
fn invert3(m: &[[f64; 3]; 3]) -> Option<(f64, [[f64; 3]; 3])> {
    let c00 = m[1][1] * m[2][2] - m[1][2] * m[2][1];
    let c01 = m[1][2] * m[2][0] - m[1][0] * m[2][2];
    let c02 = m[1][0] * m[2][1] - m[1][1] * m[2][0];
    let det = m[0][0] * c00 + m[0][1] * c01 + m[0][2] * c02;
    if !(det.is_finite() && det > 1e-12) {
        return None;
    }
    let inv = [
        [
            c00 / det,
            (m[0][2] * m[2][1] - m[0][1] * m[2][2]) / det,
            (m[0][1] * m[1][2] - m[0][2] * m[1][1]) / det,
        ],
        [
            c01 / det,
            (m[0][0] * m[2][2] - m[0][2] * m[2][0]) / det,
            (m[0][2] * m[1][0] - m[0][0] * m[1][2]) / det,
        ],
        [
            c02 / det,
            (m[0][1] * m[2][0] - m[0][0] * m[2][1]) / det,
            (m[0][0] * m[1][1] - m[0][1] * m[1][0]) / det,
        ],
    ];
    Some((det, inv))
}

/// The smoothness edges of the 8-connected grid: `(p, q, capacity)` in energy units.
fn smoothness_edges(colors: &[[f64; 3]], w: u32, h: u32, gamma: f64) -> Vec<(u32, u32, i64)> {
    let (w, h) = (w as usize, h as usize);
    // (dx, dy, 1 / distance); dx = -1 is the down-left neighbour.
    let offsets: [(isize, usize, f64); 4] = [
        (1, 0, 1.0),
        (0, 1, 1.0),
        (1, 1, std::f64::consts::FRAC_1_SQRT_2),
        (-1, 1, std::f64::consts::FRAC_1_SQRT_2),
    ];
    let neighbours = |x: usize, y: usize, dx: isize, dy: usize| -> Option<usize> {
        let nx = x.checked_add_signed(dx)?;
        let ny = y + dy;
        (nx < w && ny < h).then_some(ny * w + nx)
    };
    let (mut sum, mut count) = (0f64, 0u64);
    for y in 0..h {
        for x in 0..w {
            for &(dx, dy, _) in &offsets {
                if let Some(q) = neighbours(x, y, dx, dy) {
                    sum += dist2(&colors[y * w + x], &colors[q]);
                    count += 1;
                }
            }
        }
    }
    let mean = if count > 0 { sum / count as f64 } else { 0.0 };
    let beta = if mean > 0.0 { 1.0 / (2.0 * mean) } else { 0.0 };
    let mut edges = Vec::with_capacity(4 * w * h);
    for y in 0..h {
        for x in 0..w {
            let p = y * w + x;
            for &(dx, dy, inv_dist) in &offsets {
                if let Some(q) = neighbours(x, y, dx, dy) {
                    let v = gamma * inv_dist * (-beta * dist2(&colors[p], &colors[q])).exp();
                    let cap = (v * ENERGY_SCALE).round() as i64;
                    if cap > 0 {
                        edges.push((p as u32, q as u32, cap));
                    }
                }
            }
        }
    }
    edges
}

/// The iterated graph cut on the (downscaled) window; returns the foreground labels and the
/// number of iterations run.
///
/// Only the box's pixels are nodes: sure-background pixels always end on the sink side, so
/// each smoothness edge from a box pixel to one of them is a capacity to the sink instead.
fn segment(
    colors: &[[f64; 3]],
    w: u32,
    h: u32,
    lbox: Rect,
    o: &GrabCutOptions,
) -> Result<(Vec<bool>, usize)> {
    let n = colors.len();
    let wu = w as usize;
    let inside: Vec<bool> = (0..n)
        .map(|i| lbox.contains((i % wu) as u32, (i / wu) as u32))
        .collect();
    // Box pixels in row-major order, and the node of each window pixel.
    let nodes: Vec<u32> = (0..n as u32).filter(|&i| inside[i as usize]).collect();
    let mut node_of = vec![u32::MAX; n];
    for (k, &i) in nodes.iter().enumerate() {
        node_of[i as usize] = k as u32;
    }
    let mut edges = Vec::new();
    let mut to_sink = vec![0i64; nodes.len()];
    for (p, q, cap) in smoothness_edges(colors, w, h, o.gamma) {
        match (node_of[p as usize], node_of[q as usize]) {
            (u32::MAX, u32::MAX) => {}
            (a, u32::MAX) => to_sink[a as usize] += cap,
            (u32::MAX, b) => to_sink[b as usize] += cap,
            (a, b) => edges.push((a, b, cap)),
        }
    }

    let mut graph = Graph::new(nodes.len(), edges.len())?;
    for &(a, b, cap) in &edges {
        graph.add_edge(a as usize, b as usize, cap, cap)?;
    }
    drop(edges);

    // A pinned pixel's tie to the source outweighs all its smoothness edges.
    let hard = (9.0 * o.gamma * ENERGY_SCALE).ceil() as i64 + 1;
    let mut fg = inside.clone();
    let mut data = vec![0i64; nodes.len()];
    let mut rng = Rng(o.seed);
    let members = |fg: &[bool], want: bool| -> Vec<u32> {
        (0..n as u32).filter(|&i| fg[i as usize] == want).collect()
    };
    let fg_members = members(&fg, true);
    let bg_members = members(&fg, false);
    let fg_labels = kmeans(colors, &fg_members, o.components, &mut rng);
    let bg_labels = kmeans(colors, &bg_members, o.components, &mut rng);
    let (Some(mut fg_gmm), Some(mut bg_gmm)) = (
        Gmm::fit(colors, &fg_members, &fg_labels, o.components),
        Gmm::fit(colors, &bg_members, &bg_labels, o.components),
    ) else {
        return Ok((vec![false; n], 0));
    };

    let mut iterations = 0;
    for _ in 0..o.iterations {
        iterations += 1;
        // Assign components and refit the mixtures.
        let fg_members = members(&fg, true);
        let bg_members = members(&fg, false);
        let fg_labels: Vec<u8> = fg_members
            .iter()
            .map(|&i| fg_gmm.best_component(&colors[i as usize]))
            .collect();
        let bg_labels: Vec<u8> = bg_members
            .iter()
            .map(|&i| bg_gmm.best_component(&colors[i as usize]))
            .collect();
        match (
            Gmm::fit(colors, &fg_members, &fg_labels, fg_gmm.components.len()),
            Gmm::fit(colors, &bg_members, &bg_labels, bg_gmm.components.len()),
        ) {
            (Some(f), Some(b)) => {
                fg_gmm = f;
                bg_gmm = b;
            }
            // The foreground vanished in the previous cut.
            _ => break,
        }

        for (k, &i) in nodes.iter().enumerate() {
            let c = &colors[i as usize];
            // Cutting the source link labels the pixel background and costs D_bg; cutting
            // the sink link costs D_fg. Only the difference matters.
            let d = (bg_gmm.neg_log_likelihood(c) - fg_gmm.neg_log_likelihood(c))
                .clamp(-MAX_DATA, MAX_DATA);
            let cap = (d.abs() * ENERGY_SCALE).round() as i64;
            data[k] = if d > 0.0 { cap } else { -cap };
            if d > 0.0 {
                graph.set_terminal(k, cap, to_sink[k])?;
            } else {
                graph.set_terminal(k, 0, cap + to_sink[k])?;
            }
        }
        // The graph keeps its flow between iterations; only the data terms change.
        graph.maxflow();
        let mut changed = 0usize;
        for (k, &i) in nodes.iter().enumerate() {
            let new = graph.is_source_side(k);
            if new != fg[i as usize] {
                changed += 1;
                fg[i as usize] = new;
            }
        }
        // Stop when nothing moves any more.
        if changed == 0 {
            break;
        }
    }
    // Pinning only makes sense around a segment.
    if iterations > 0 && fg.iter().any(|&v| v) {
        pinpoint(&mut graph, &mut fg, &nodes, &data, &to_sink, lbox, hard, o)?;
    }
    Ok((fg, iterations))
}

/// The box prior (V. Lempitsky, P. Kohli, C. Rother, T. Sharp, *Image segmentation with a
/// bounding box prior*, ICCV 2009): a tight box touches its object on every row and column.
/// For each row or column of the box without foreground, its most foreground-like pixel
/// (largest `D_bg - D_fg`, when positive) is fixed to the foreground and the cut is solved
/// again, for a few rounds ([`GrabCutOptions::pin_rounds`]). A pinned pixel that ends up isolated is removed later with the small components.
#[allow(clippy::too_many_arguments)]
fn pinpoint(
    graph: &mut Graph,
    fg: &mut [bool],
    nodes: &[u32],
    data: &[i64],
    to_sink: &[i64],
    lbox: Rect,
    hard: i64,
    o: &GrabCutOptions,
) -> Result<()> {
    let (bw, bh) = (lbox.width() as usize, lbox.height() as usize);
    // Nodes are the box's pixels in row-major order.
    let node = |x: usize, y: usize| y * bw + x;
    let is_fg = |fg: &[bool], k: usize| fg[nodes[k] as usize];
    for _ in 0..o.pin_rounds {
        let mut pins = Vec::new();
        // The most foreground-like pixel of a line, if any prefers the foreground.
        let best = |line: &mut dyn Iterator<Item = usize>| -> Option<usize> {
            line.filter(|&k| data[k] > 0)
                .max_by_key(|&k| (data[k], std::cmp::Reverse(k)))
        };
        for y in 0..bh {
            if (0..bw).all(|x| !is_fg(fg, node(x, y))) {
                pins.extend(best(&mut (0..bw).map(|x| node(x, y))));
            }
        }
        for x in 0..bw {
            if (0..bh).all(|y| !is_fg(fg, node(x, y))) {
                pins.extend(best(&mut (0..bh).map(|y| node(x, y))));
            }
        }
        if pins.is_empty() {
            break;
        }
        for k in pins {
            graph.set_terminal(k, hard + to_sink[k], to_sink[k])?;
        }
        graph.maxflow();
        for (k, &i) in nodes.iter().enumerate() {
            fg[i as usize] = graph.is_source_side(k);
        }
    }
    Ok(())
}

/// Keeps only the largest 8-connected component of `mask` (ties: the first in row-major
/// order).
fn keep_largest_component(mask: &mut [bool], w: u32, h: u32) {
    let (w, h) = (w as usize, h as usize);
    let mut label = vec![0u32; w * h];
    let mut best = (0usize, 0u32);
    let mut next = 0u32;
    let mut stack = Vec::new();
    for start in 0..w * h {
        if !mask[start] || label[start] != 0 {
            continue;
        }
        next += 1;
        label[start] = next;
        stack.push(start);
        let mut size = 0usize;
        while let Some(p) = stack.pop() {
            size += 1;
            let (x, y) = (p % w, p / w);
            for ny in y.saturating_sub(1)..(y + 2).min(h) {
                for nx in x.saturating_sub(1)..(x + 2).min(w) {
                    let q = ny * w + nx;
                    if mask[q] && label[q] == 0 {
                        label[q] = next;
                        stack.push(q);
                    }
                }
            }
        }
        if size > best.0 {
            best = (size, next);
        }
    }
    for (m, &l) in mask.iter_mut().zip(&label) {
        *m = *m && l == best.1;
    }
}

/// Fills the 4-connected background regions inside `region` that do not touch its border
/// (holes in the mask) and have at most `max_hole` pixels.
fn fill_holes(mask: &mut [bool], w: u32, region: Rect, max_hole: usize) {
    if max_hole == 0 {
        return;
    }
    let wu = w as usize;
    let mut seen = vec![false; mask.len()];
    let mut stack = Vec::new();
    let mut members = Vec::new();
    for y in region.y0..region.y1 {
        for x in region.x0..region.x1 {
            let start = y as usize * wu + x as usize;
            if mask[start] || seen[start] {
                continue;
            }
            seen[start] = true;
            stack.push((x, y));
            members.clear();
            let mut open = false;
            while let Some((x, y)) = stack.pop() {
                members.push(y as usize * wu + x as usize);
                if x == region.x0 || y == region.y0 || x + 1 == region.x1 || y + 1 == region.y1 {
                    open = true;
                }
                let around = [
                    (x.wrapping_sub(1), y),
                    (x + 1, y),
                    (x, y.wrapping_sub(1)),
                    (x, y + 1),
                ];
                for (nx, ny) in around {
                    if !region.contains(nx, ny) {
                        continue;
                    }
                    let q = ny as usize * wu + nx as usize;
                    if !mask[q] && !seen[q] {
                        seen[q] = true;
                        stack.push((nx, ny));
                    }
                }
            }
            if !open && members.len() <= max_hole {
                for &q in &members {
                    mask[q] = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ellipse_is_inscribed_and_symmetric() {
        let m = ellipse_mask(20, 10, &BBox::new(2.0, 1.0, 18.0, 9.0)).unwrap();
        assert_eq!(m.bbox(), Some(BBox::new(2.0, 1.0, 18.0, 9.0)));
        for (x, y) in m.pixels() {
            assert!(m.get(19 - x, y) && m.get(x, 9 - y));
        }
        let area = m.area() as f64;
        let want = std::f64::consts::PI * 8.0 * 4.0;
        assert!((area - want).abs() / want < 0.1, "{area} vs {want}");
        assert!(ellipse_mask(20, 10, &BBox::new(5.0, 5.0, 5.0, 6.0)).is_err());
    }

    #[test]
    fn holes_are_filled_only_when_small_and_closed() {
        // A ring with a 2x2 hole, and a notch open to the border.
        let w = 8u32;
        let mut m: Vec<bool> = (0..64)
            .map(|i| {
                let (x, y) = (i % 8, i / 8);
                (1..7).contains(&x) && (1..7).contains(&y)
            })
            .collect();
        for (x, y) in [(3, 3), (4, 3), (3, 4), (4, 4), (1, 1), (1, 2)] {
            m[y * 8 + x] = false;
        }
        let region = Rect {
            x0: 1,
            y0: 1,
            x1: 7,
            y1: 7,
        };
        let mut small = m.clone();
        fill_holes(&mut small, w, region, 3);
        assert!(!small[3 * 8 + 3], "a 4-pixel hole stays under a limit of 3");
        fill_holes(&mut small, w, region, 4);
        assert!(small[3 * 8 + 3] && small[4 * 8 + 4]);
        assert!(
            !small[8 + 1] && !small[2 * 8 + 1],
            "the notch touches the border"
        );
    }

    #[test]
    fn largest_component_survives() {
        let mut m = vec![false; 100];
        for i in [0, 1, 10, 55, 56, 57, 66, 77] {
            m[i] = true;
        }
        keep_largest_component(&mut m, 10, 10);
        let kept: Vec<usize> = (0..100).filter(|&i| m[i]).collect();
        assert_eq!(kept, vec![55, 56, 57, 66, 77]);
    }

    #[test]
    fn gmm_prefers_its_own_colours() {
        let colors: Vec<[f64; 3]> = (0..200)
            .map(|i| {
                let j = (i % 7) as f64;
                if i < 100 {
                    [200.0 + j, 30.0 - j, 40.0]
                } else {
                    [20.0, 90.0 + j, 200.0 - j]
                }
            })
            .collect();
        let red: Vec<u32> = (0..100).collect();
        let blue: Vec<u32> = (100..200).collect();
        let mut rng = Rng(3);
        let rl = kmeans(&colors, &red, 5, &mut rng);
        let bl = kmeans(&colors, &blue, 5, &mut rng);
        let r = Gmm::fit(&colors, &red, &rl, 5).unwrap();
        let b = Gmm::fit(&colors, &blue, &bl, 5).unwrap();
        let c = [203.0, 28.0, 40.0];
        assert!(r.neg_log_likelihood(&c) < b.neg_log_likelihood(&c));
        assert!(b.neg_log_likelihood(&c).is_finite());
    }

    #[test]
    fn invert3_inverts() {
        let m = [[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]];
        let (det, inv) = invert3(&m).unwrap();
        assert!(det > 0.0);
        for (i, row) in m.iter().enumerate() {
            for j in 0..3 {
                let v: f64 = row.iter().zip(&inv).map(|(a, r)| a * r[j]).sum();
                assert!((v - (i == j) as u8 as f64).abs() < 1e-12);
            }
        }
        assert!(invert3(&[[0.0; 3]; 3]).is_none());
    }
}
