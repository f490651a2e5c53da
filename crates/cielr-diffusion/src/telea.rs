//! Telea's inpainting by the fast marching method (A. Telea, "An image inpainting technique
//! based on the fast marching method", J. Graphics Tools 9(1), 2004).
//!
//! The hole is filled from its boundary inwards in order of distance `T` to the known
//! region (the fast marching method solves `|grad T| = 1`). Each pixel becomes a weighted mean
//! of the already-known or already-filled pixels `q` within `radius`; originally known pixels
//! are extrapolated to `p` with their gradient (`I(q) + grad I(q) . (p - q)`, the gradient
//! estimated from known pixels only, which keeps the extrapolation from feeding on itself),
//! filled ones are used as they are. The weights are
//! direction (`|(p - q) . N(p)| / |p - q|`, `N` the normal of the level set of `T`),
//! geometric distance (`1 / |p - q|^2`) and level-set distance (`1 / (1 + |T(p) - T(q)|)`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use cielr_core::Mask;
use image::RgbImage;

use crate::canvas::Canvas;
use crate::error::{DiffusionError, Result};

/// Options of the Telea inpainter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TeleaOptions {
    /// Radius in pixels of the neighbourhood each filled pixel averages (Telea's epsilon);
    /// 1 to 64.
    pub radius: f32,
    /// Whether known pixels are extrapolated along their gradient (Telea's first-order
    /// estimate) rather than copied. Measured slightly better on real photos (see
    /// `docs/classical-editing.md`).
    pub gradient: bool,
}

impl Default for TeleaOptions {
    fn default() -> Self {
        TeleaOptions {
            radius: 5.0,
            gradient: true,
        }
    }
}

impl TeleaOptions {
    pub(crate) fn validate(&self) -> Result<()> {
        if !(1.0..=64.0).contains(&self.radius) {
            return Err(DiffusionError::InvalidOption(format!(
                "the Telea radius must be between 1 and 64 pixels, got {}",
                self.radius
            )));
        }
        Ok(())
    }
}

/// Fills `mask` in `image` with Telea's method, working only in a window around the mask;
/// pixels outside the mask are returned bit-identical.
///
/// Errors when the mask's size differs from the image's, when the mask covers the whole
/// image, or when an option is out of range. An empty mask returns a copy of the image.
pub fn inpaint_telea(image: &RgbImage, mask: &Mask, options: &TeleaOptions) -> Result<RgbImage> {
    options.validate()?;
    let margin = options.radius.ceil() as u32 + 2;
    crate::inpaint::run_in_window(image, mask, margin, 1.0, 0, |canvas| {
        telea_fill(canvas, options);
    })
}

const FAR: u8 = 0;
const TRIAL: u8 = 1;
const DONE: u8 = 2;

/// Fast marching from `seeds` (distance 0) over the pixels where `in_domain` holds, up to
/// `limit`. `visit(i, t)` is called as each domain pixel's distance becomes final, in order of
/// increasing distance. Returns the distances (infinite where not reached; 0 at the seeds).
fn fast_march(
    w: usize,
    h: usize,
    in_domain: impl Fn(usize) -> bool,
    seeds: &[usize],
    limit: f32,
    mut visit: impl FnMut(usize, f32),
) -> Vec<f32> {
    let n = w * h;
    let mut dist = vec![f32::INFINITY; n];
    let mut state = vec![FAR; n];
    // Non-negative f32s order like their bit patterns, so the heap key is the bits.
    let mut heap: BinaryHeap<Reverse<(u32, u32)>> = BinaryHeap::new();
    for &s in seeds {
        dist[s] = 0.0;
        state[s] = DONE;
    }
    let solve = |dist: &[f32], state: &[u8], i: usize| -> f32 {
        let (x, y) = (i % w, i / w);
        let get = |j: usize| {
            if state[j] == DONE {
                dist[j]
            } else {
                f32::INFINITY
            }
        };
        let mut a = f32::INFINITY;
        if x > 0 {
            a = a.min(get(i - 1));
        }
        if x + 1 < w {
            a = a.min(get(i + 1));
        }
        let mut b = f32::INFINITY;
        if y > 0 {
            b = b.min(get(i - w));
        }
        if y + 1 < h {
            b = b.min(get(i + w));
        }
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        if hi - lo >= 1.0 || !hi.is_finite() {
            lo + 1.0
        } else {
            let d = hi - lo;
            0.5 * (lo + hi + (2.0 - d * d).sqrt())
        }
    };
    let relax = |dist: &mut Vec<f32>,
                 state: &mut Vec<u8>,
                 heap: &mut BinaryHeap<Reverse<(u32, u32)>>,
                 i: usize| {
        let (x, y) = (i % w, i / w);
        let mut each = |j: usize| {
            if state[j] != DONE && in_domain(j) {
                let t = solve(dist, state, j);
                if t < dist[j] && t <= limit {
                    dist[j] = t;
                    state[j] = TRIAL;
                    heap.push(Reverse((t.to_bits(), j as u32)));
                }
            }
        };
        if x > 0 {
            each(i - 1);
        }
        if x + 1 < w {
            each(i + 1);
        }
        if y > 0 {
            each(i - w);
        }
        if y + 1 < h {
            each(i + w);
        }
    };
    for &s in seeds {
        relax(&mut dist, &mut state, &mut heap, s);
    }
    while let Some(Reverse((bits, j))) = heap.pop() {
        let j = j as usize;
        if state[j] == DONE || bits != dist[j].to_bits() {
            continue;
        }
        state[j] = DONE;
        visit(j, dist[j]);
        relax(&mut dist, &mut state, &mut heap, j);
    }
    dist
}

/// Central difference of `values` at `i` along `step` (1: x, w: y), one-sided where only one
/// neighbour is available, `None` where neither is. `lo_ok`/`hi_ok`: the neighbour is in the
/// image.
#[inline]
fn difference<V: Copy + Diff>(
    avail: &[bool],
    values: &[V],
    i: usize,
    step: usize,
    lo_ok: bool,
    hi_ok: bool,
) -> Option<V> {
    let lo = lo_ok && avail[i - step];
    let hi = hi_ok && avail[i + step];
    match (lo, hi) {
        (true, true) => Some(values[i + step].minus(values[i - step]).half()),
        (false, true) => Some(values[i + step].minus(values[i])),
        (true, false) => Some(values[i].minus(values[i - step])),
        (false, false) => None,
    }
}

/// Subtraction and halving, for scalars and colours.
trait Diff {
    fn minus(self, other: Self) -> Self;
    fn half(self) -> Self;
}

impl Diff for f32 {
    fn minus(self, other: f32) -> f32 {
        self - other
    }
    fn half(self) -> f32 {
        self * 0.5
    }
}

impl Diff for [f32; 3] {
    fn minus(self, o: [f32; 3]) -> [f32; 3] {
        [self[0] - o[0], self[1] - o[1], self[2] - o[2]]
    }
    fn half(self) -> [f32; 3] {
        [self[0] * 0.5, self[1] * 0.5, self[2] * 0.5]
    }
}

/// Fills the canvas's hole in place with Telea's method. Hole pixels that no known pixel can
/// reach (only when the canvas has no known pixel at all) are left untouched.
pub(crate) fn telea_fill(c: &mut Canvas, options: &TeleaOptions) {
    let (w, h) = (c.w, c.h);
    let n = w * h;
    let hole = &c.hole;
    let band: Vec<usize> = (0..n)
        .filter(|&i| {
            if hole[i] {
                return false;
            }
            let (x, y) = (i % w, i / w);
            (x > 0 && hole[i - 1])
                || (x + 1 < w && hole[i + 1])
                || (y > 0 && hole[i - w])
                || (y + 1 < h && hole[i + w])
        })
        .collect();
    if band.is_empty() {
        return;
    }
    let limit = options.radius + 2.0;
    // Signed level set: minus the distance to the hole outside it, plus inside.
    let outside = fast_march(w, h, |i| !hole[i], &band, limit, |_, _| {});
    let known: Vec<bool> = hole.iter().map(|&m| !m).collect();
    let mut state = FillState {
        w,
        h,
        radius: options.radius,
        gradient: options.gradient,
        tt: outside.iter().map(|&d| -d.min(limit + 1.0)).collect(),
        t_final: known.clone(),
        avail: known.clone(),
        known,
    };
    let px = &mut c.px;
    fast_march(
        w,
        h,
        |i| hole[i],
        &band,
        f32::INFINITY,
        |p, t| state.fill(px, p, t),
    );
}

/// What Telea's fill keeps while marching.
struct FillState {
    w: usize,
    h: usize,
    radius: f32,
    gradient: bool,
    /// The signed level set `T` (negative outside the hole).
    tt: Vec<f32>,
    /// Whether `T` is final.
    t_final: Vec<bool>,
    /// Whether the colour is known or already filled.
    avail: Vec<bool>,
    /// Whether the pixel was known from the start. Image gradients come from these only:
    /// letting filled pixels feed their own extrapolated gradients back made the fill diverge
    /// into stripes on real photos.
    known: Vec<bool>,
}

impl FillState {
    /// Fills pixel `p`, whose distance `t` has just become final.
    fn fill(&mut self, px: &mut [[f32; 3]], p: usize, t: f32) {
        let (w, h) = (self.w, self.h);
        self.tt[p] = t;
        self.t_final[p] = true;
        let (xu, yu) = (p % w, p / w);
        let (x, y) = (xu as isize, yu as isize);
        let gx = difference(&self.t_final, &self.tt, p, 1, xu > 0, xu + 1 < w).unwrap_or(0.0);
        let gy = difference(&self.t_final, &self.tt, p, w, yu > 0, yu + 1 < h).unwrap_or(0.0);
        let gn = (gx * gx + gy * gy).sqrt();
        let (nx, ny) = if gn > 1e-6 {
            (gx / gn, gy / gn)
        } else {
            (0.0, 0.0)
        };
        let reach = self.radius.floor() as isize;
        let r2 = self.radius * self.radius;
        let mut acc = [0f32; 3];
        let mut wsum = 0f32;
        for dy in -reach..=reach {
            let qy = y + dy;
            if qy < 0 || qy >= h as isize {
                continue;
            }
            for dx in -reach..=reach {
                let qx = x + dx;
                let d2 = (dx * dx + dy * dy) as f32;
                if qx < 0 || qx >= w as isize || d2 == 0.0 || d2 > r2 {
                    continue;
                }
                let q = qy as usize * w + qx as usize;
                if !self.avail[q] {
                    continue;
                }
                // r = p - q.
                let (rx, ry) = (-dx as f32, -dy as f32);
                let dir = if gn > 1e-6 {
                    ((rx * nx + ry * ny).abs() / d2.sqrt()).max(1e-3)
                } else {
                    1.0
                };
                let weight = dir / d2 / (1.0 + (t - self.tt[q]).abs());
                let mut v = px[q];
                if self.gradient && self.known[q] {
                    let (qxu, qyu) = (qx as usize, qy as usize);
                    let zero = [0f32; 3];
                    let known = &self.known;
                    let gq = difference(known, px, q, 1, qxu > 0, qxu + 1 < w).unwrap_or(zero);
                    let hq = difference(known, px, q, w, qyu > 0, qyu + 1 < h).unwrap_or(zero);
                    for k in 0..3 {
                        v[k] += gq[k] * rx + hq[k] * ry;
                    }
                }
                for k in 0..3 {
                    acc[k] += weight * v[k];
                }
                wsum += weight;
            }
        }
        px[p] = if wsum > 0.0 && wsum.is_finite() {
            acc.map(|a| (a / wsum).clamp(0.0, 255.0))
        } else {
            neighbour_mean(px, &self.avail, w, h, p)
        };
        self.avail[p] = true;
    }
}

/// Mean colour of the available 8-neighbours of `p` (black if none).
fn neighbour_mean(px: &[[f32; 3]], avail: &[bool], w: usize, h: usize, p: usize) -> [f32; 3] {
    let (x, y) = ((p % w) as isize, (p / w) as isize);
    let mut acc = [0f32; 3];
    let mut n = 0f32;
    for dy in -1..=1 {
        for dx in -1..=1 {
            let (qx, qy) = (x + dx, y + dy);
            if qx < 0 || qy < 0 || qx >= w as isize || qy >= h as isize {
                continue;
            }
            let q = qy as usize * w + qx as usize;
            if q != p && avail[q] {
                for k in 0..3 {
                    acc[k] += px[q][k];
                }
                n += 1.0;
            }
        }
    }
    if n > 0.0 {
        [acc[0] / n, acc[1] / n, acc[2] / n]
    } else {
        acc
    }
}
