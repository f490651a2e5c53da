//! Multi-scale exemplar inpainting with PatchMatch.
//!
//! The hole is filled with patches copied from the known part of the image, following the
//! "space-time completion" scheme of Wexler, Shechtman and Irani (2007) with the nearest
//! neighbour field computed by PatchMatch (Barnes, Shechtman, Finkelstein and Goldman 2009):
//!
//! 1. A pyramid halves the image until the hole is about three patches across; the coarsest
//!    hole is initialised with Telea's method.
//! 2. At each level, alternate: (a) find for every patch that overlaps the hole its most
//!    similar fully known patch (PatchMatch: random initialisation, propagation of good
//!    matches from the left/top and right/bottom neighbours, and random search in
//!    exponentially shrinking windows); (b) re-estimate each hole pixel as the
//!    similarity-weighted vote of all matched patches covering it.
//! 3. The field is upsampled to the next finer level and the hole re-voted with the finer
//!    image's patches, so texture comes from full-resolution pixels, not from upsampling.
//! 4. Optionally ([`PatchMatchOptions::seamless`], on by default) the mismatch between the
//!    copied patches and the true pixels along the hole's border is spread over the hole as a
//!    membrane (harmonic) correction, Poisson-blending style, which removes colour seams while
//!    keeping the copied texture.
//!
//! Only patches fully inside the window and outside the hole are copied from, so the
//! original pixels under the mask are never read. The defaults (9x9 patches, 8 rounds at the
//! coarsest level down to 2 at full resolution) were chosen on the measurements in
//! `docs/classical-editing.md`.

use cielr_core::Mask;
use image::RgbImage;

use crate::canvas::Canvas;
use crate::error::{DiffusionError, Result};
use crate::rng::Rng;
use crate::telea::{telea_fill, TeleaOptions};

/// Options of the PatchMatch inpainter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PatchMatchOptions {
    /// Patches are `(2 * patch_radius + 1)` pixels square; 1 to 8.
    pub patch_radius: u32,
    /// PatchMatch passes (propagation + random search) per vote; 1 to 16.
    pub search_iterations: u32,
    /// Search/vote rounds at the coarsest level; finer levels use fewer, down to
    /// `min_em_iterations` at full resolution. 1 to 64.
    pub em_iterations: u32,
    /// Search/vote rounds at full resolution; 1 to `em_iterations`.
    pub min_em_iterations: u32,
    /// Side of the working window as a multiple of the mask's box side (the window is also
    /// at least 128 pixels and at most 1024 pixels or the box plus a margin); 1 to 16.
    pub context: f64,
    /// Whether the final fill is corrected, Poisson-style, to meet the surrounding colours
    /// without a seam (the membrane interpolation of the mismatch along the hole's border is
    /// added); keeps the copied texture.
    pub seamless: bool,
}

impl Default for PatchMatchOptions {
    fn default() -> Self {
        PatchMatchOptions {
            patch_radius: 4,
            search_iterations: 2,
            em_iterations: 8,
            min_em_iterations: 2,
            context: 3.0,
            seamless: true,
        }
    }
}

impl PatchMatchOptions {
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(DiffusionError::InvalidOption(what));
        if !(1..=8).contains(&self.patch_radius) {
            return bad(format!(
                "patch_radius must be 1 to 8, got {}",
                self.patch_radius
            ));
        }
        if !(1..=16).contains(&self.search_iterations) {
            return bad(format!(
                "search_iterations must be 1 to 16, got {}",
                self.search_iterations
            ));
        }
        if !(1..=64).contains(&self.em_iterations) {
            return bad(format!(
                "em_iterations must be 1 to 64, got {}",
                self.em_iterations
            ));
        }
        if self.min_em_iterations < 1 || self.min_em_iterations > self.em_iterations {
            return bad(format!(
                "min_em_iterations must be 1 to em_iterations ({}), got {}",
                self.em_iterations, self.min_em_iterations
            ));
        }
        if !(1.0..=16.0).contains(&self.context) {
            return bad(format!("context must be 1 to 16, got {}", self.context));
        }
        Ok(())
    }
}

/// Fills `mask` in `image` by multi-scale PatchMatch, working only in a window around the
/// mask; pixels outside the mask are returned bit-identical. The result is a deterministic
/// function of the inputs and `seed`.
///
/// When the window holds no fully known patch to copy from (tiny images, or masks that leave
/// only thin strips), the hole is filled with Telea's method instead.
///
/// Errors when the mask's size differs from the image's, when the mask covers the whole
/// image, or when an option is out of range. An empty mask returns a copy of the image.
pub fn inpaint_patchmatch(
    image: &RgbImage,
    mask: &Mask,
    options: &PatchMatchOptions,
    seed: u64,
) -> Result<RgbImage> {
    options.validate()?;
    let margin = 4 * options.patch_radius + 8;
    crate::inpaint::run_in_window(image, mask, margin, options.context, 128, |canvas| {
        patchmatch_fill(canvas, options, seed);
    })
}

const NONE: u32 = u32::MAX;

/// Summed-area table of the hole, to count hole pixels in any rectangle.
struct HoleCounts {
    w: usize,
    sums: Vec<u32>,
}

impl HoleCounts {
    fn new(c: &Canvas) -> Self {
        let (w, h) = (c.w, c.h);
        let mut sums = vec![0u32; (w + 1) * (h + 1)];
        for y in 0..h {
            let mut row = 0u32;
            for x in 0..w {
                row += c.hole[y * w + x] as u32;
                sums[(y + 1) * (w + 1) + x + 1] = sums[y * (w + 1) + x + 1] + row;
            }
        }
        HoleCounts { w, sums }
    }

    /// Hole pixels in columns `x0..x1`, rows `y0..y1`.
    fn count(&self, x0: usize, y0: usize, x1: usize, y1: usize) -> u32 {
        let s = |x: usize, y: usize| self.sums[y * (self.w + 1) + x];
        s(x1, y1) + s(x0, y0) - s(x0, y1) - s(x1, y0)
    }
}

/// The nearest-neighbour field of one pyramid level.
struct Field {
    /// Pixel index of every patch centre whose patch overlaps the hole, in raster order.
    targets: Vec<u32>,
    /// Pixel index -> index into `targets`, or `NONE`.
    target_of: Vec<u32>,
    /// Per target: the pixel index of the matched source patch's centre.
    nnf: Vec<u32>,
    /// Per target: sum of squared differences to its match.
    cost: Vec<f32>,
    /// Per pixel: whether a patch centred there lies inside the image and fully outside the hole.
    valid: Vec<bool>,
    /// The valid centres, for uniform random choice.
    sources: Vec<u32>,
}

impl Field {
    fn new(c: &Canvas, r: usize) -> Field {
        let (w, h) = (c.w, c.h);
        let counts = HoleCounts::new(c);
        let mut targets = Vec::new();
        let mut target_of = vec![NONE; w * h];
        let mut valid = vec![false; w * h];
        let mut sources = Vec::new();
        for y in 0..h {
            let (y0, y1) = (y.saturating_sub(r), (y + r + 1).min(h));
            for x in 0..w {
                let (x0, x1) = (x.saturating_sub(r), (x + r + 1).min(w));
                let i = y * w + x;
                if counts.count(x0, y0, x1, y1) > 0 {
                    target_of[i] = targets.len() as u32;
                    targets.push(i as u32);
                } else if x >= r && y >= r && x + r < w && y + r < h {
                    valid[i] = true;
                    sources.push(i as u32);
                }
            }
        }
        let n = targets.len();
        Field {
            targets,
            target_of,
            nnf: vec![NONE; n],
            cost: vec![f32::INFINITY; n],
            valid,
            sources,
        }
    }
}

/// Sum of squared colour differences between the patches centred at `p` and `s` over the
/// offsets that keep `p`'s patch inside the image (`s`'s is inside by construction). Stops
/// early once the sum reaches `bound`.
#[inline]
fn patch_cost(c: &Canvas, r: usize, p: usize, s: usize, bound: f32) -> f32 {
    let (w, h) = (c.w, c.h);
    let (px, py) = (p % w, p / w);
    let (sx, sy) = (s % w, s / w);
    let (lx, hx) = (px.min(r), (w - 1 - px).min(r));
    let (ly, hy) = (py.min(r), (h - 1 - py).min(r));
    let mut sum = 0f32;
    for dy in 0..=(ly + hy) {
        let prow = (py - ly + dy) * w + px - lx;
        let srow = (sy - ly + dy) * w + sx - lx;
        let a = &c.px[prow..=prow + lx + hx];
        let b = &c.px[srow..=srow + lx + hx];
        for (u, v) in a.iter().zip(b) {
            let d0 = u[0] - v[0];
            let d1 = u[1] - v[1];
            let d2 = u[2] - v[2];
            sum += d0 * d0 + d1 * d1 + d2 * d2;
        }
        if sum >= bound {
            return sum;
        }
    }
    sum
}

/// Number of in-image pixels of the patch centred at `p`.
fn patch_pixels(w: usize, h: usize, r: usize, p: usize) -> f32 {
    let (px, py) = (p % w, p / w);
    let nx = px.min(r) + (w - 1 - px).min(r) + 1;
    let ny = py.min(r) + (h - 1 - py).min(r) + 1;
    (nx * ny) as f32
}

/// Recomputes every target's cost to its current match (the image changed by voting).
fn refresh_costs(c: &Canvas, f: &mut Field, r: usize) {
    for t in 0..f.targets.len() {
        f.cost[t] = patch_cost(
            c,
            r,
            f.targets[t] as usize,
            f.nnf[t] as usize,
            f32::INFINITY,
        );
    }
}

/// One PatchMatch pass over all targets: propagation then random search.
fn search_pass(c: &Canvas, f: &mut Field, r: usize, forward: bool, rng: &mut Rng) {
    let (w, h) = (c.w, c.h);
    let n = f.targets.len();
    let step: isize = if forward { 1 } else { -1 };
    let max_radius = w.max(h);
    let (lo_x, hi_x) = (r as isize, (w - 1 - r) as isize);
    let (lo_y, hi_y) = (r as isize, (h - 1 - r) as isize);
    for k in 0..n {
        let t = if forward { k } else { n - 1 - k };
        let p = f.targets[t] as usize;
        let (x, y) = ((p % w) as isize, (p / w) as isize);
        let mut best = f.nnf[t] as usize;
        let mut best_cost = f.cost[t];
        let try_source = |sx: isize, sy: isize, best: &mut usize, best_cost: &mut f32| {
            if sx < 0 || sy < 0 || sx >= w as isize || sy >= h as isize {
                return;
            }
            let s = sy as usize * w + sx as usize;
            if s == *best || !f.valid[s] {
                return;
            }
            let cost = patch_cost(c, r, p, s, *best_cost);
            if cost < *best_cost {
                *best = s;
                *best_cost = cost;
            }
        };
        // Propagation: the already-visited neighbours' matches, shifted by one pixel.
        let nx = x - step;
        if nx >= 0 && nx < w as isize {
            let tn = f.target_of[y as usize * w + nx as usize];
            if tn != NONE {
                let s = f.nnf[tn as usize] as usize;
                try_source(
                    (s % w) as isize + step,
                    (s / w) as isize,
                    &mut best,
                    &mut best_cost,
                );
            }
        }
        let ny = y - step;
        if ny >= 0 && ny < h as isize {
            let tn = f.target_of[ny as usize * w + x as usize];
            if tn != NONE {
                let s = f.nnf[tn as usize] as usize;
                try_source(
                    (s % w) as isize,
                    (s / w) as isize + step,
                    &mut best,
                    &mut best_cost,
                );
            }
        }
        // Random search around the best match, halving the window each time.
        let mut radius = max_radius;
        while radius >= 1 {
            let (bx, by) = ((best % w) as isize, (best / w) as isize);
            let sx = (bx + rng.offset(radius)).clamp(lo_x, hi_x);
            let sy = (by + rng.offset(radius)).clamp(lo_y, hi_y);
            try_source(sx, sy, &mut best, &mut best_cost);
            radius /= 2;
        }
        f.nnf[t] = best as u32;
        f.cost[t] = best_cost;
    }
}

/// Re-estimates every hole pixel as the weighted mean of the matched patches covering it.
/// With `uniform`, all patches weigh the same (used right after upsampling, before costs are
/// known); otherwise a patch weighs `exp(-mse / (2 sigma^2))`, `sigma^2` the 25th percentile
/// of the per-pixel match errors (Wexler et al. use the 75th; the lower one kept more
/// texture at no cost in PSNR in our measurements). With `blend`, also returns, for each known
/// pixel bordering the hole, the true colour minus the colour the patches vote there (the seam
/// that [`membrane_correct`] removes); otherwise returns nothing.
fn vote(c: &mut Canvas, f: &Field, r: usize, uniform: bool, blend: bool) -> Vec<(usize, [f32; 3])> {
    let (w, h) = (c.w, c.h);
    let n = f.targets.len();
    let mut weights = vec![1f32; n];
    if !uniform && n > 0 {
        let mse: Vec<f32> = (0..n)
            .map(|t| f.cost[t] / (3.0 * patch_pixels(w, h, r, f.targets[t] as usize)))
            .collect();
        let mut sorted = mse.clone();
        let k = (n / 4).min(n - 1);
        let (_, sigma2, _) = sorted.select_nth_unstable_by(k, f32::total_cmp);
        let sigma2 = sigma2.max(1.0);
        for t in 0..n {
            // The floor keeps every pixel covered by a positive weight.
            weights[t] = (-mse[t] / (2.0 * sigma2)).exp().max(1e-6);
        }
    }
    let mut acc = vec![[0f32; 4]; w * h];
    // With `blend`, also vote at the known pixels bordering the hole, to measure how far the
    // copied patches are from the true colours there.
    let band: Vec<bool> = if blend { band_mask(c) } else { Vec::new() };
    for ((&p, &s), &wt) in f.targets.iter().zip(&f.nnf).zip(&weights) {
        let (p, s) = (p as usize, s as usize);
        let (px, py) = (p % w, p / w);
        let (lx, hx) = (px.min(r), (w - 1 - px).min(r));
        let (ly, hy) = (py.min(r), (h - 1 - py).min(r));
        for dy in 0..=(ly + hy) {
            let prow = (py - ly + dy) * w + px - lx;
            let srow = (s / w - ly + dy) * w + s % w - lx;
            for dx in 0..=(lx + hx) {
                let q = prow + dx;
                if c.hole[q] || (blend && band[q]) {
                    let v = c.px[srow + dx];
                    let a = &mut acc[q];
                    a[0] += wt * v[0];
                    a[1] += wt * v[1];
                    a[2] += wt * v[2];
                    a[3] += wt;
                }
            }
        }
    }
    for (q, a) in acc.iter().enumerate() {
        if c.hole[q] && a[3] > 0.0 {
            c.px[q] = [a[0] / a[3], a[1] / a[3], a[2] / a[3]];
        }
    }
    if !blend {
        return Vec::new();
    }
    (0..w * h)
        .filter(|&q| band[q] && acc[q][3] > 0.0)
        .map(|q| {
            let (a, v) = (acc[q], c.px[q]);
            (
                q,
                [v[0] - a[0] / a[3], v[1] - a[1] / a[3], v[2] - a[2] / a[3]],
            )
        })
        .collect()
}

/// Known pixels with a 4-neighbour in the hole.
fn band_mask(c: &Canvas) -> Vec<bool> {
    let (w, h) = (c.w, c.h);
    (0..w * h)
        .map(|i| {
            let (x, y) = (i % w, i / w);
            !c.hole[i]
                && ((x > 0 && c.hole[i - 1])
                    || (x + 1 < w && c.hole[i + 1])
                    || (y > 0 && c.hole[i - w])
                    || (y + 1 < h && c.hole[i + w]))
        })
        .collect()
}

/// Poisson-style seam removal: adds to the hole the membrane (harmonic) interpolation of the
/// `offsets` (true minus copied colour) measured on the known pixels bordering it, so the fill
/// keeps its texture (its gradients) but meets the surrounding colours without a seam.
/// Solved by successive over-relaxation; the image border is a free (Neumann) boundary.
///
/// `coarse` is the correction this function returned one pyramid level up (half the size):
/// upsampled, it starts the relaxation close to the solution, so large holes converge in a
/// few iterations per level (a coarse-to-fine multigrid in effect). Without it, an onion-peel
/// fill starts it. Returns the correction (per pixel; zero away from the hole and its border).
fn membrane_correct(
    c: &mut Canvas,
    offsets: &[(usize, [f32; 3])],
    coarse: Option<(&[[f32; 3]], usize)>,
) -> Vec<[f32; 3]> {
    let (w, h) = (c.w, c.h);
    let n = w * h;
    let mut corr = vec![[0f32; 3]; n];
    if offsets.is_empty() {
        return corr;
    }
    let mut assigned = vec![false; n];
    for &(q, o) in offsets {
        corr[q] = o;
    }
    for (i, a) in assigned.iter_mut().enumerate() {
        *a = !c.hole[i];
    }
    let neighbours = |q: usize| {
        let (x, y) = (q % w, q / w);
        [
            (x > 0).then(|| q - 1),
            (x + 1 < w).then(|| q + 1),
            (y > 0).then(|| q - w),
            (y + 1 < h).then(|| q + w),
        ]
        .into_iter()
        .flatten()
    };
    let holes: Vec<usize> = (0..n).filter(|&i| c.hole[i]).collect();
    if let Some((up, cw)) = coarse {
        for &q in &holes {
            let (x, y) = (q % w, q / w);
            corr[q] = up[(y / 2) * cw + x / 2];
        }
        relax(c, &holes, &mut corr, 8);
        apply_correction(c, &holes, &corr);
        return corr;
    }
    // Start from an onion-peel fill (each hole pixel the mean of its already-set neighbours,
    // in breadth-first order from the border), then relax.
    let mut queued = vec![false; n];
    let mut queue = std::collections::VecDeque::new();
    for &q in &holes {
        if neighbours(q).any(|j| !c.hole[j]) {
            queued[q] = true;
            queue.push_back(q);
        }
    }
    while let Some(q) = queue.pop_front() {
        let mut sum = [0f32; 3];
        let mut k_n = 0f32;
        for j in neighbours(q) {
            if assigned[j] {
                for k in 0..3 {
                    sum[k] += corr[j][k];
                }
                k_n += 1.0;
            } else if !queued[j] {
                queued[j] = true;
                queue.push_back(j);
            }
        }
        if k_n > 0.0 {
            corr[q] = [sum[0] / k_n, sum[1] / k_n, sum[2] / k_n];
        }
        assigned[q] = true;
    }
    relax(c, &holes, &mut corr, usize::MAX);
    apply_correction(c, &holes, &corr);
    corr
}

/// Adds the correction to the hole's pixels.
fn apply_correction(c: &mut Canvas, holes: &[usize], corr: &[[f32; 3]]) {
    for &q in holes {
        let (p, d) = (&mut c.px[q], corr[q]);
        *p = [
            (p[0] + d[0]).clamp(0.0, 255.0),
            (p[1] + d[1]).clamp(0.0, 255.0),
            (p[2] + d[2]).clamp(0.0, 255.0),
        ];
    }
}

/// Successive over-relaxation of Laplace's equation for `corr` on the hole pixels (the other
/// pixels are fixed), until the largest update is below 0.05 or after `min(max_iterations,
/// 2 * hole extent + 50)` sweeps.
fn relax(c: &Canvas, holes: &[usize], corr: &mut [[f32; 3]], max_iterations: usize) {
    let (w, h) = (c.w, c.h);
    let extent = hole_extent(c).max(2) as f32;
    let omega = 2.0 / (1.0 + (std::f32::consts::PI / (extent + 2.0)).sin());
    let max_iterations = max_iterations.min(2 * extent as usize + 50);
    for _ in 0..max_iterations {
        let mut max_delta = 0f32;
        for &q in holes {
            let (x, y) = (q % w, q / w);
            let mut sum = [0f32; 3];
            let mut n = 0f32;
            let mut add = |j: usize| {
                for k in 0..3 {
                    sum[k] += corr[j][k];
                }
                n += 1.0;
            };
            if x > 0 {
                add(q - 1);
            }
            if x + 1 < w {
                add(q + 1);
            }
            if y > 0 {
                add(q - w);
            }
            if y + 1 < h {
                add(q + w);
            }
            for k in 0..3 {
                let delta = omega * (sum[k] / n - corr[q][k]);
                corr[q][k] += delta;
                max_delta = max_delta.max(delta.abs());
            }
        }
        if max_delta < 0.05 {
            break;
        }
    }
}

/// Halves a canvas: a coarse pixel is in the hole if any of its (up to four) children is;
/// known coarse pixels are the mean of their children.
fn downsample(c: &Canvas) -> Canvas {
    let (w2, h2) = (c.w.div_ceil(2), c.h.div_ceil(2));
    let mut px = vec![[0f32; 3]; w2 * h2];
    let mut hole = vec![false; w2 * h2];
    for y in 0..h2 {
        for x in 0..w2 {
            let mut acc = [0f32; 3];
            let mut n = 0f32;
            let mut any_hole = false;
            for cy in 2 * y..(2 * y + 2).min(c.h) {
                for cx in 2 * x..(2 * x + 2).min(c.w) {
                    let i = cy * c.w + cx;
                    any_hole |= c.hole[i];
                    let v = c.px[i];
                    acc = [acc[0] + v[0], acc[1] + v[1], acc[2] + v[2]];
                    n += 1.0;
                }
            }
            let j = y * w2 + x;
            hole[j] = any_hole;
            if !any_hole {
                px[j] = [acc[0] / n, acc[1] / n, acc[2] / n];
            }
        }
    }
    Canvas {
        w: w2,
        h: h2,
        px,
        hole,
    }
}

/// The largest side of the hole's bounding box.
fn hole_extent(c: &Canvas) -> usize {
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for (i, _) in c.hole.iter().enumerate().filter(|(_, &m)| m) {
        let (x, y) = (i % c.w, i / c.w);
        x0 = x0.min(x);
        y0 = y0.min(y);
        x1 = x1.max(x + 1);
        y1 = y1.max(y + 1);
    }
    if x1 == 0 {
        0
    } else {
        (x1 - x0).max(y1 - y0)
    }
}

/// The fewest valid source patches a coarse level must have to be used.
const MIN_SOURCES: usize = 64;

/// Fills the canvas's hole in place by multi-scale PatchMatch (Telea when no source patch
/// exists).
pub(crate) fn patchmatch_fill(canvas: &mut Canvas, options: &PatchMatchOptions, seed: u64) {
    let r = options.patch_radius as usize;
    let size = 2 * r + 1;
    if canvas.hole_area() == 0 {
        return;
    }
    let finest = Field::new(canvas, r);
    if finest.sources.is_empty() || canvas.w < size || canvas.h < size {
        telea_fill(canvas, &TeleaOptions::default());
        return;
    }
    // Pyramid: level 0 is the input; stop once the hole is about three patches across
    // (Telea's fill is a good start at that size; smaller coarsest holes measured worse).
    let mut levels: Vec<Canvas> = vec![canvas.clone()];
    loop {
        let cur = levels.last().expect("the pyramid has a level");
        if hole_extent(cur) <= 3 * size + 3 {
            break;
        }
        let next = downsample(cur);
        if next.w.min(next.h) < 3 * size || Field::new(&next, r).sources.len() < MIN_SOURCES {
            break;
        }
        levels.push(next);
    }
    let n_levels = levels.len();
    let mut rng = Rng::new(seed);
    let coarsest = n_levels - 1;
    telea_fill(&mut levels[coarsest], &TeleaOptions::default());
    let mut field = Field::new(&levels[coarsest], r);
    for t in 0..field.targets.len() {
        field.nnf[t] = field.sources[rng.below(field.sources.len())];
    }
    let mut correction: Option<(Vec<[f32; 3]>, usize)> = None;
    for lvl in (0..n_levels).rev() {
        if lvl != coarsest {
            let coarse = field;
            let (cw, fw) = (levels[lvl + 1].w, levels[lvl].w);
            field = Field::new(&levels[lvl], r);
            for t in 0..field.targets.len() {
                let p = field.targets[t] as usize;
                let (x, y) = (p % fw, p / fw);
                let parent = coarse.target_of[(y / 2) * cw + x / 2];
                let mut s = NONE;
                if parent != NONE {
                    let cs = coarse.nnf[parent as usize] as usize;
                    let (sx, sy) = (2 * (cs % cw) + (x & 1), 2 * (cs / cw) + (y & 1));
                    let (sx, sy) = (sx.clamp(r, fw - 1 - r), sy.clamp(r, levels[lvl].h - 1 - r));
                    let cand = sy * fw + sx;
                    if field.valid[cand] {
                        s = cand as u32;
                    }
                }
                if s == NONE {
                    s = field.sources[rng.below(field.sources.len())];
                }
                field.nnf[t] = s;
            }
            vote(&mut levels[lvl], &field, r, true, false);
        }
        let em = if coarsest == 0 {
            options.em_iterations
        } else {
            let (hi, lo) = (options.em_iterations, options.min_em_iterations);
            lo + (hi - lo) * lvl as u32 / coarsest as u32
        };
        for e in 0..em {
            refresh_costs(&levels[lvl], &mut field, r);
            let passes = if lvl == coarsest && e == 0 {
                options.search_iterations.max(4)
            } else {
                options.search_iterations
            };
            for pass in 0..passes {
                search_pass(&levels[lvl], &mut field, r, pass % 2 == 0, &mut rng);
            }
            // The seam correction runs at the end of every level: the coarser level's
            // correction starts the finer one's (see `membrane_correct`).
            let blend = options.seamless && e + 1 == em;
            let offsets = vote(&mut levels[lvl], &field, r, false, blend);
            if blend {
                let coarse = correction.as_ref().map(|(v, cw)| (v.as_slice(), *cw));
                let corr = membrane_correct(&mut levels[lvl], &offsets, coarse);
                correction = Some((corr, levels[lvl].w));
            }
        }
    }
    canvas.px = std::mem::take(&mut levels[0].px);
}
