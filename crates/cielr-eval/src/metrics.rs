//! PSNR, SSIM and MSE with torchmetrics semantics, and their [`Metric`] wrappers.
//!
//! All functions take images in `[0, 1]` (data range 1) and average over the three channels.
//! SSIM matches `torchmetrics.functional.image.structural_similarity_index_measure` with its
//! defaults (Gaussian window 11, sigma 1.5, `k1 = 0.01`, `k2 = 0.03`): both images are
//! reflect-padded by 5 pixels (`F.pad(mode="reflect")`, the edge pixel not repeated), the
//! local statistics are Gaussian-weighted means, variances are clamped at 0, and the SSIM
//! map is averaged over every pixel of the original size (torchmetrics 1.9 does not crop
//! the border of the map it averages).

use cielr_core::error::{CoreError, Result};
use cielr_core::traits::{Metric, MetricInput};
use image::GrayImage;

use crate::prepare::{prepare, RgbF32};

/// SSIM's `C1 = (k1 * data_range)^2` with `k1 = 0.01`, data range 1.
pub const SSIM_C1: f64 = 0.01 * 0.01;
/// SSIM's `C2 = (k2 * data_range)^2` with `k2 = 0.03`, data range 1.
pub const SSIM_C2: f64 = 0.03 * 0.03;
/// Half the Gaussian window: the window is `2 * SSIM_RADIUS + 1 = 11` pixels wide.
pub const SSIM_RADIUS: usize = 5;
const SSIM_SIGMA: f64 = 1.5;

/// Mean squared error over all pixels and channels.
pub fn mse(a: &RgbF32, b: &RgbF32) -> Result<f64> {
    a.check_pair(b)?;
    let sum: f64 = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(&x, &y)| {
            let d = x as f64 - y as f64;
            d * d
        })
        .sum();
    Ok(sum / a.data.len() as f64)
}

/// MSE over the pixels where `keep` is true (all three channels); `None` when none is.
pub fn masked_mse(a: &RgbF32, b: &RgbF32, keep: &[bool]) -> Result<Option<f64>> {
    a.check_pair(b)?;
    if keep.len() * 3 != a.data.len() {
        return Err(CoreError::SizeMismatch(format!(
            "the pixel selection has {} entries for a {}x{} image",
            keep.len(),
            a.width,
            a.height
        )));
    }
    let (mut sum, mut n) = (0.0f64, 0usize);
    for ((pa, pb), _) in a
        .data
        .chunks_exact(3)
        .zip(b.data.chunks_exact(3))
        .zip(keep)
        .filter(|(_, &k)| k)
    {
        for (&x, &y) in pa.iter().zip(pb) {
            let d = x as f64 - y as f64;
            sum += d * d;
        }
        n += 3;
    }
    Ok((n > 0).then(|| sum / n as f64))
}

/// PSNR in dB for data range 1: `10 log10(1 / mse)` (`inf` when `mse == 0`).
pub fn psnr_from_mse(mse: f64) -> f64 {
    10.0 * (1.0 / mse).log10()
}

/// PSNR in dB (data range 1) over all pixels and channels.
pub fn psnr(a: &RgbF32, b: &RgbF32) -> Result<f64> {
    mse(a, b).map(psnr_from_mse)
}

/// The normalised 1-D Gaussian of torchmetrics' `_gaussian(11, 1.5)`.
fn gaussian() -> [f64; 2 * SSIM_RADIUS + 1] {
    let mut g = [0.0; 2 * SSIM_RADIUS + 1];
    for (i, v) in g.iter_mut().enumerate() {
        let d = (i as f64 - SSIM_RADIUS as f64) / SSIM_SIGMA;
        *v = (-d * d / 2.0).exp();
    }
    let s: f64 = g.iter().sum();
    g.iter_mut().for_each(|v| *v /= s);
    g
}

/// `F.pad(mode="reflect")` index for `i` in `-r..n + r` (needs `n > r`).
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    let j = if i < 0 {
        -i
    } else if i >= n {
        2 * (n - 1) - i
    } else {
        i
    };
    j as usize
}

/// Separable Gaussian filter of a `w x h` plane with reflect padding; output `w x h`.
fn blur(plane: &[f64], w: usize, h: usize, g: &[f64]) -> Vec<f64> {
    let r = SSIM_RADIUS as isize;
    let mut tmp = vec![0.0; w * h];
    for y in 0..h {
        let row = &plane[y * w..(y + 1) * w];
        for x in 0..w {
            let mut acc = 0.0;
            for (k, &gk) in g.iter().enumerate() {
                acc += gk * row[reflect(x as isize + k as isize - r, w)];
            }
            tmp[y * w + x] = acc;
        }
    }
    let mut out = vec![0.0; w * h];
    for y in 0..h {
        for (k, &gk) in g.iter().enumerate() {
            let sy = reflect(y as isize + k as isize - r, h);
            let src = &tmp[sy * w..(sy + 1) * w];
            for (o, &s) in out[y * w..(y + 1) * w].iter_mut().zip(src) {
                *o += gk * s;
            }
        }
    }
    out
}

/// The torchmetrics SSIM map of `a` against `b`: `3 * height * width` values, channel-major
/// (`map[(c * height + y) * width + x]`). Fails when a side is shorter than 6 pixels (the
/// reflect padding needs more pixels than the 5 it adds).
pub fn ssim_map(a: &RgbF32, b: &RgbF32) -> Result<Vec<f64>> {
    a.check_pair(b)?;
    let (w, h) = (a.width as usize, a.height as usize);
    if w <= SSIM_RADIUS || h <= SSIM_RADIUS {
        return Err(CoreError::Metric(format!(
            "SSIM needs images of at least {0}x{0} pixels, got {w}x{h}",
            SSIM_RADIUS + 1
        )));
    }
    let g = gaussian();
    let mut map = Vec::with_capacity(3 * w * h);
    for c in 0..3 {
        let pa: Vec<f64> = a
            .data
            .iter()
            .skip(c)
            .step_by(3)
            .map(|&v| v as f64)
            .collect();
        let pb: Vec<f64> = b
            .data
            .iter()
            .skip(c)
            .step_by(3)
            .map(|&v| v as f64)
            .collect();
        let prod =
            |p: &[f64], q: &[f64]| -> Vec<f64> { p.iter().zip(q).map(|(x, y)| x * y).collect() };
        let mu_a = blur(&pa, w, h, &g);
        let mu_b = blur(&pb, w, h, &g);
        let e_aa = blur(&prod(&pa, &pa), w, h, &g);
        let e_bb = blur(&prod(&pb, &pb), w, h, &g);
        let e_ab = blur(&prod(&pa, &pb), w, h, &g);
        for i in 0..w * h {
            let (ma, mb) = (mu_a[i], mu_b[i]);
            let va = (e_aa[i] - ma * ma).max(0.0);
            let vb = (e_bb[i] - mb * mb).max(0.0);
            let cov = e_ab[i] - ma * mb;
            let num = (2.0 * ma * mb + SSIM_C1) * (2.0 * cov + SSIM_C2);
            let den = (ma * ma + mb * mb + SSIM_C1) * (va + vb + SSIM_C2);
            map.push(num / den);
        }
    }
    Ok(map)
}

/// SSIM (torchmetrics defaults, data range 1): the mean of [`ssim_map`].
pub fn ssim(a: &RgbF32, b: &RgbF32) -> Result<f64> {
    let map = ssim_map(a, b)?;
    Ok(map.iter().sum::<f64>() / map.len() as f64)
}

/// Per pixel of a `width x height` image: whether the 11x11 window centred there, clipped to
/// the image, holds only pixels where `keep` is true.
pub fn clean_windows(width: u32, height: u32, keep: &[bool]) -> Vec<bool> {
    let (w, h) = (width as usize, height as usize);
    // Prefix sums of the excluded pixels.
    let mut sat = vec![0u32; (w + 1) * (h + 1)];
    for y in 0..h {
        for x in 0..w {
            let bad = u32::from(!keep[y * w + x]);
            sat[(y + 1) * (w + 1) + x + 1] =
                bad + sat[y * (w + 1) + x + 1] + sat[(y + 1) * (w + 1) + x] - sat[y * (w + 1) + x];
        }
    }
    let r = SSIM_RADIUS;
    let mut out = Vec::with_capacity(w * h);
    for y in 0..h {
        let (y0, y1) = (y.saturating_sub(r), (y + r + 1).min(h));
        for x in 0..w {
            let (x0, x1) = (x.saturating_sub(r), (x + r + 1).min(w));
            let bad = sat[y1 * (w + 1) + x1] + sat[y0 * (w + 1) + x0]
                - sat[y0 * (w + 1) + x1]
                - sat[y1 * (w + 1) + x0];
            out.push(bad == 0);
        }
    }
    out
}

/// The mean of a channel-major SSIM map over the positions where `windows` is true, all
/// channels; `None` when none is.
pub fn masked_map_mean(map: &[f64], windows: &[bool]) -> Option<f64> {
    let n = windows.len();
    if n == 0 {
        return None;
    }
    let (mut sum, mut count) = (0.0, 0usize);
    for plane in map.chunks_exact(n) {
        for (&v, _) in plane.iter().zip(windows).filter(|(_, &k)| k) {
            sum += v;
            count += 1;
        }
    }
    (count > 0).then(|| sum / count as f64)
}

/// Which numbers a metric reports: the protocol's or the clean variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Variant {
    /// The benchmark protocol: whole images multiplied by `w = 1 - mask / 255`.
    #[default]
    Protocol,
    /// Statistics over unmasked pixels (or fully unmasked SSIM windows) only.
    Clean,
}

/// The settings shared by the metric wrappers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetricConfig {
    /// Resize to `size x size` first (512 for CIEBench, 256 for Reason-Edit); `None` keeps
    /// the original's size.
    pub size: Option<u32>,
    /// Protocol or clean numbers.
    pub variant: Variant,
}

fn prepared(config: &MetricConfig, input: &MetricInput<'_>) -> Result<crate::prepare::Prepared> {
    let (w, h) = input.original.dimensions();
    let gray = match input.mask {
        Some(m) => m.to_gray(),
        None => GrayImage::new(w, h),
    };
    prepare(input.original, input.edited, &gray, config.size)
}

fn no_clean(name: &str) -> CoreError {
    CoreError::Metric(format!(
        "clean {name}: no unmasked pixel or window to measure"
    ))
}

fn suffix(variant: Variant) -> &'static str {
    match variant {
        Variant::Protocol => "",
        Variant::Clean => "_clean",
    }
}

/// PSNR (dB, data range 1) after the protocol's preparation. The binary mask of
/// [`MetricInput`] is used as a 0/255 greyscale mask (no mask: nothing is masked); for
/// greyscale masks call [`crate::protocol_scores`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Psnr(pub MetricConfig);

/// SSIM (torchmetrics defaults) after the protocol's preparation; see [`Psnr`] for masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ssim(pub MetricConfig);

/// MSE after the protocol's preparation; see [`Psnr`] for masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mse(pub MetricConfig);

impl Metric for Psnr {
    fn name(&self) -> String {
        format!("psnr{}", suffix(self.0.variant))
    }
    fn higher_is_better(&self) -> bool {
        true
    }
    fn compute(&self, input: MetricInput<'_>) -> Result<f64> {
        Mse(self.0).compute(input).map(psnr_from_mse)
    }
}

impl Metric for Mse {
    fn name(&self) -> String {
        format!("mse{}", suffix(self.0.variant))
    }
    fn higher_is_better(&self) -> bool {
        false
    }
    fn compute(&self, input: MetricInput<'_>) -> Result<f64> {
        let p = prepared(&self.0, &input)?;
        match self.0.variant {
            Variant::Protocol => mse(&p.edited, &p.original),
            Variant::Clean => {
                masked_mse(&p.edited, &p.original, &p.unmasked())?.ok_or_else(|| no_clean("mse"))
            }
        }
    }
}

impl Metric for Ssim {
    fn name(&self) -> String {
        format!("ssim{}", suffix(self.0.variant))
    }
    fn higher_is_better(&self) -> bool {
        true
    }
    fn compute(&self, input: MetricInput<'_>) -> Result<f64> {
        let p = prepared(&self.0, &input)?;
        let map = ssim_map(&p.edited, &p.original)?;
        match self.0.variant {
            Variant::Protocol => Ok(map.iter().sum::<f64>() / map.len() as f64),
            Variant::Clean => {
                let windows = clean_windows(p.mask.width(), p.mask.height(), &p.unmasked());
                masked_map_mean(&map, &windows).ok_or_else(|| no_clean("ssim"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(w: u32, h: u32, v: f32) -> RgbF32 {
        RgbF32 {
            width: w,
            height: h,
            data: vec![v; (w * h * 3) as usize],
        }
    }

    #[test]
    fn known_values() {
        let a = flat(8, 8, 0.5);
        let b = flat(8, 8, 0.6);
        assert!((mse(&a, &b).unwrap() - 0.01).abs() < 1e-7);
        assert!((psnr(&a, &b).unwrap() - 20.0).abs() < 1e-4);
        assert!(psnr(&a, &a).unwrap().is_infinite());
        assert!((ssim(&a, &a).unwrap() - 1.0).abs() < 1e-12);
        let g = gaussian();
        assert!((g.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(
            [-2, -1, 0, 7, 8, 9].map(|i| reflect(i, 8)),
            [2, 1, 0, 7, 6, 5]
        );
    }

    #[test]
    fn clean_windows_follow_the_mask() {
        let (w, h) = (20u32, 12u32);
        let keep: Vec<bool> = (0..w * h).map(|i| i % w != 19).collect();
        let win = clean_windows(w, h, &keep);
        // Centres within 5 columns of column 19 see it.
        assert!(win[13] && !win[14] && !win[19]);
        assert_eq!(masked_map_mean(&[1.0; 3], &[false]), None);
    }
}
