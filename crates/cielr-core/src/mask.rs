//! Binary masks: a compact bit-packed representation with the geometry the method needs
//! (dilation, IoU, boxes, centroids) and COCO RLE (de)serialisation.

use crate::error::{CoreError, Result};
use crate::geometry::BBox;
use image::GrayImage;
use serde::{Deserialize, Serialize};

/// A binary mask of `width x height` pixels, bit-packed in row-major order.
#[derive(Clone, PartialEq, Eq)]
pub struct Mask {
    width: u32,
    height: u32,
    bits: Vec<u64>,
}

impl std::fmt::Debug for Mask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Mask({}x{}, area {})",
            self.width,
            self.height,
            self.area()
        )
    }
}

/// The largest number of pixels a mask may hold (a 65536 x 65536 image).
pub const MAX_MASK_PIXELS: u64 = 1 << 32;

impl Mask {
    /// An empty mask. Fails when the mask would exceed [`MAX_MASK_PIXELS`].
    pub fn new(width: u32, height: u32) -> Result<Self> {
        let n = width as u64 * height as u64;
        if n > MAX_MASK_PIXELS {
            return Err(CoreError::SizeMismatch(format!(
                "mask {width}x{height} exceeds the limit of {MAX_MASK_PIXELS} pixels"
            )));
        }
        Ok(Mask {
            width,
            height,
            bits: vec![0; n.div_ceil(64) as usize],
        })
    }

    /// A mask with every pixel set.
    pub fn full(width: u32, height: u32) -> Result<Self> {
        Self::from_fn(width, height, |_, _| true)
    }

    /// A mask whose pixel `(x, y)` is `f(x, y)`.
    pub fn from_fn(width: u32, height: u32, mut f: impl FnMut(u32, u32) -> bool) -> Result<Self> {
        let mut m = Self::new(width, height)?;
        for y in 0..height {
            for x in 0..width {
                if f(x, y) {
                    m.set(x, y, true);
                }
            }
        }
        Ok(m)
    }

    /// A mask from a greyscale image: pixels with value `>= threshold` are set.
    pub fn from_gray(image: &GrayImage, threshold: u8) -> Result<Self> {
        Self::from_fn(image.width(), image.height(), |x, y| {
            image.get_pixel(x, y).0[0] >= threshold
        })
    }

    /// A mask covering the pixels whose centres lie inside `bbox`, clipped to the image.
    pub fn from_box(width: u32, height: u32, bbox: &BBox) -> Result<Self> {
        let (x0, y0, x1, y1) = bbox.pixel_range(width, height);
        let mut m = Self::new(width, height)?;
        for y in y0..y1 {
            for x in x0..x1 {
                m.set(x, y, true);
            }
        }
        Ok(m)
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    fn index(&self, x: u32, y: u32) -> usize {
        y as usize * self.width as usize + x as usize
    }

    /// Whether pixel `(x, y)` is set; pixels outside the mask are unset.
    pub fn get(&self, x: u32, y: u32) -> bool {
        if x >= self.width || y >= self.height {
            return false;
        }
        let i = self.index(x, y);
        (self.bits[i / 64] >> (i % 64)) & 1 == 1
    }

    /// Sets or clears pixel `(x, y)`; coordinates outside the mask are ignored.
    pub fn set(&mut self, x: u32, y: u32, value: bool) {
        if x >= self.width || y >= self.height {
            return;
        }
        let i = self.index(x, y);
        if value {
            self.bits[i / 64] |= 1 << (i % 64);
        } else {
            self.bits[i / 64] &= !(1 << (i % 64));
        }
    }

    /// Number of set pixels.
    pub fn area(&self) -> u64 {
        self.bits.iter().map(|w| w.count_ones() as u64).sum()
    }

    /// Whether no pixel is set.
    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|&w| w == 0)
    }

    /// The set pixels as `(x, y)`, in row-major order.
    pub fn pixels(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        let w = self.width as usize;
        self.bits.iter().enumerate().flat_map(move |(wi, &word)| {
            let mut word = word;
            std::iter::from_fn(move || {
                if word == 0 {
                    return None;
                }
                let b = word.trailing_zeros() as usize;
                word &= word - 1;
                let i = wi * 64 + b;
                Some(((i % w) as u32, (i / w) as u32))
            })
        })
    }

    fn check_same_size(&self, other: &Mask, what: &str) -> Result<()> {
        if self.width != other.width || self.height != other.height {
            return Err(CoreError::SizeMismatch(format!(
                "{what} of a {}x{} mask with a {}x{} mask",
                self.width, self.height, other.width, other.height
            )));
        }
        Ok(())
    }

    fn zip_with(&self, other: &Mask, what: &str, f: impl Fn(u64, u64) -> u64) -> Result<Mask> {
        self.check_same_size(other, what)?;
        Ok(Mask {
            width: self.width,
            height: self.height,
            bits: self
                .bits
                .iter()
                .zip(&other.bits)
                .map(|(&a, &b)| f(a, b))
                .collect(),
        })
    }

    /// Pixels set in either mask.
    pub fn union(&self, other: &Mask) -> Result<Mask> {
        self.zip_with(other, "union", |a, b| a | b)
    }

    /// Pixels set in both masks.
    pub fn intersection(&self, other: &Mask) -> Result<Mask> {
        self.zip_with(other, "intersection", |a, b| a & b)
    }

    /// Pixels set in `self` but not in `other`.
    pub fn difference(&self, other: &Mask) -> Result<Mask> {
        self.zip_with(other, "difference", |a, b| a & !b)
    }

    /// The mask with every pixel flipped.
    pub fn complement(&self) -> Mask {
        let n = self.width as usize * self.height as usize;
        let mut bits: Vec<u64> = self.bits.iter().map(|w| !w).collect();
        if !n.is_multiple_of(64) {
            if let Some(last) = bits.last_mut() {
                *last &= (1u64 << (n % 64)) - 1;
            }
        }
        Mask {
            width: self.width,
            height: self.height,
            bits,
        }
    }

    /// Intersection over union with another mask of the same size (0 when both are empty).
    pub fn iou(&self, other: &Mask) -> Result<f64> {
        self.check_same_size(other, "IoU")?;
        let (mut inter, mut uni) = (0u64, 0u64);
        for (&a, &b) in self.bits.iter().zip(&other.bits) {
            inter += (a & b).count_ones() as u64;
            uni += (a | b).count_ones() as u64;
        }
        Ok(if uni == 0 {
            0.0
        } else {
            inter as f64 / uni as f64
        })
    }

    /// The tight box around the set pixels, `[x0, y0, x1, y1]` with exclusive ends; `None` when empty.
    pub fn bbox(&self) -> Option<BBox> {
        let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
        let mut any = false;
        for (x, y) in self.pixels() {
            any = true;
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x + 1);
            y1 = y1.max(y + 1);
        }
        any.then(|| BBox::new(x0 as f64, y0 as f64, x1 as f64, y1 as f64))
    }

    /// Number of set pixels whose centres lie inside `bbox`.
    pub fn area_in_box(&self, bbox: &BBox) -> u64 {
        let (x0, y0, x1, y1) = bbox.pixel_range(self.width, self.height);
        let mut n = 0;
        for y in y0..y1 {
            for x in x0..x1 {
                n += self.get(x, y) as u64;
            }
        }
        n
    }

    /// The mean position of the set pixels, in pixel-centre coordinates; `None` when empty.
    pub fn centroid(&self) -> Option<(f64, f64)> {
        let (mut sx, mut sy, mut n) = (0f64, 0f64, 0u64);
        for (x, y) in self.pixels() {
            sx += x as f64 + 0.5;
            sy += y as f64 + 0.5;
            n += 1;
        }
        (n > 0).then(|| (sx / n as f64, sy / n as f64))
    }

    /// Resizes with nearest-neighbour sampling (each target pixel takes the source pixel under its centre).
    pub fn resize_nearest(&self, width: u32, height: u32) -> Result<Mask> {
        let (sw, sh) = (self.width as u64, self.height as u64);
        let xs: Vec<u32> = (0..width as u64)
            .map(|x| ((x * sw * 2 + sw) / (2 * width as u64)).min(sw.saturating_sub(1)) as u32)
            .collect();
        let ys: Vec<u32> = (0..height as u64)
            .map(|y| ((y * sh * 2 + sh) / (2 * height as u64)).min(sh.saturating_sub(1)) as u32)
            .collect();
        Mask::from_fn(width, height, |x, y| {
            self.get(xs[x as usize], ys[y as usize])
        })
    }

    /// Squared Euclidean distance from every pixel to the nearest set pixel (`f64::INFINITY` when empty).
    fn squared_distance_to_set(&self) -> Vec<f64> {
        let (w, h) = (self.width as usize, self.height as usize);
        let mut d = vec![f64::INFINITY; w * h];
        for (x, y) in self.pixels() {
            d[y as usize * w + x as usize] = 0.0;
        }
        let mut buf = vec![0.0; w.max(h)];
        let mut out = vec![0.0; w.max(h)];
        for x in 0..w {
            for y in 0..h {
                buf[y] = d[y * w + x];
            }
            distance_1d(&buf[..h], &mut out[..h]);
            for y in 0..h {
                d[y * w + x] = out[y];
            }
        }
        for y in 0..h {
            buf[..w].copy_from_slice(&d[y * w..(y + 1) * w]);
            distance_1d(&buf[..w], &mut out[..w]);
            d[y * w..(y + 1) * w].copy_from_slice(&out[..w]);
        }
        d
    }

    /// Grows the mask by a disc of `radius` pixels (Euclidean); `radius <= 0` returns a copy.
    pub fn dilate(&self, radius: f64) -> Mask {
        if radius <= 0.0 || self.is_empty() {
            return self.clone();
        }
        let d = self.squared_distance_to_set();
        let r2 = radius * radius;
        let w = self.width as usize;
        let mut m = Mask {
            width: self.width,
            height: self.height,
            bits: vec![0; self.bits.len()],
        };
        for (i, &v) in d.iter().enumerate() {
            if v <= r2 {
                m.set((i % w) as u32, (i / w) as u32, true);
            }
        }
        m
    }

    /// Shrinks the mask by a disc of `radius` pixels; the image border does not erode it.
    pub fn erode(&self, radius: f64) -> Mask {
        if radius <= 0.0 {
            return self.clone();
        }
        self.complement().dilate(radius).complement()
    }

    /// The mask as a greyscale image, 255 where set and 0 elsewhere.
    pub fn to_gray(&self) -> GrayImage {
        GrayImage::from_fn(self.width, self.height, |x, y| {
            image::Luma([if self.get(x, y) { 255 } else { 0 }])
        })
    }

    /// COCO's uncompressed RLE: run lengths in column-major order, starting with a run of zeros.
    pub fn to_coco_counts(&self) -> Vec<u32> {
        let mut counts = Vec::new();
        let mut current = false;
        let mut run = 0u32;
        for x in 0..self.width {
            for y in 0..self.height {
                let v = self.get(x, y);
                if v != current {
                    counts.push(run);
                    run = 0;
                    current = v;
                }
                run += 1;
            }
        }
        counts.push(run);
        counts
    }

    /// Builds a mask from COCO's uncompressed RLE; the counts must add up to `width * height`.
    pub fn from_coco_counts(width: u32, height: u32, counts: &[u64]) -> Result<Mask> {
        let mut m = Mask::new(width, height)?;
        let total = width as u64 * height as u64;
        let sum: u64 = counts
            .iter()
            .try_fold(0u64, |a, &c| a.checked_add(c))
            .ok_or_else(|| CoreError::InvalidRle("run lengths overflow".into()))?;
        if sum != total {
            return Err(CoreError::InvalidRle(format!(
                "run lengths add up to {sum}, but the mask has {height}x{width} = {total} pixels"
            )));
        }
        let h = height as u64;
        let mut pos = 0u64;
        for (i, &c) in counts.iter().enumerate() {
            if i % 2 == 1 {
                for p in pos..pos + c {
                    m.set((p / h) as u32, (p % h) as u32, true);
                }
            }
            pos += c;
        }
        Ok(m)
    }

    /// COCO's compressed RLE string (as `pycocotools.mask.encode` writes it).
    pub fn to_coco_string(&self) -> String {
        encode_rle_string(&self.to_coco_counts())
    }

    /// Decodes COCO's compressed RLE string for a mask of `width x height`.
    pub fn from_coco_string(width: u32, height: u32, counts: &str) -> Result<Mask> {
        let counts = decode_rle_string(counts)?;
        Mask::from_coco_counts(width, height, &counts)
    }

    /// The mask in COCO's RLE JSON form.
    pub fn to_coco(&self) -> CocoRle {
        CocoRle {
            size: [self.height, self.width],
            counts: RleCounts::Compressed(self.to_coco_string()),
        }
    }

    /// Decodes COCO's RLE JSON form.
    pub fn from_coco(rle: &CocoRle) -> Result<Mask> {
        let [h, w] = rle.size;
        match &rle.counts {
            RleCounts::Compressed(s) => Mask::from_coco_string(w, h, s),
            RleCounts::Uncompressed(c) => Mask::from_coco_counts(w, h, c),
        }
    }
}

/// COCO's RLE JSON object: `{"size": [H, W], "counts": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CocoRle {
    /// `[height, width]`, COCO's order.
    pub size: [u32; 2],
    /// The runs, compressed (a string) or not (a list of integers).
    pub counts: RleCounts,
}

/// The `counts` field of a COCO RLE: a compressed string or a list of run lengths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RleCounts {
    /// Compressed, as `pycocotools.mask.encode` writes it.
    Compressed(String),
    /// Plain run lengths, column-major, starting with zeros.
    Uncompressed(Vec<u64>),
}

/// Encodes run lengths as COCO's compressed string (LEB128-like, 5 bits per char, offset 48,
/// each count after the second stored as the difference to the count two before).
pub fn encode_rle_string(counts: &[u32]) -> String {
    let mut s = String::new();
    for i in 0..counts.len() {
        let mut x = counts[i] as i64;
        if i > 2 {
            x -= counts[i - 2] as i64;
        }
        loop {
            let mut c = (x & 0x1f) as u8;
            x >>= 5;
            let more = if c & 0x10 != 0 { x != -1 } else { x != 0 };
            if more {
                c |= 0x20;
            }
            s.push((c + 48) as char);
            if !more {
                break;
            }
        }
    }
    s
}

/// Decodes COCO's compressed RLE string into run lengths, rejecting malformed input.
pub fn decode_rle_string(s: &str) -> Result<Vec<u64>> {
    let bytes = s.as_bytes();
    let mut counts: Vec<u64> = Vec::new();
    let mut p = 0;
    while p < bytes.len() {
        let mut x: i64 = 0;
        let mut k = 0u32;
        loop {
            let Some(&b) = bytes.get(p) else {
                return Err(CoreError::InvalidRle(format!(
                    "string ends inside a count at byte {p}"
                )));
            };
            if !(48..48 + 64).contains(&b) {
                return Err(CoreError::InvalidRle(format!(
                    "byte {p} ({:?}) is outside the RLE alphabet",
                    b as char
                )));
            }
            if k >= 12 {
                return Err(CoreError::InvalidRle(format!(
                    "count at byte {p} is longer than 12 characters"
                )));
            }
            let c = (b - 48) as i64;
            x |= (c & 0x1f) << (5 * k);
            p += 1;
            k += 1;
            if c & 0x20 == 0 {
                if c & 0x10 != 0 {
                    x |= -1i64 << (5 * k);
                }
                break;
            }
        }
        let m = counts.len();
        if m > 2 {
            x = x
                .checked_add(counts[m - 2] as i64)
                .ok_or_else(|| CoreError::InvalidRle("run length overflows".into()))?;
        }
        if x < 0 {
            return Err(CoreError::InvalidRle(format!(
                "run {m} has negative length {x}"
            )));
        }
        counts.push(x as u64);
    }
    Ok(counts)
}

/// Abscissa where the parabolas rooted at `q` and `p` intersect.
fn intersection(f: &[f64], q: usize, p: usize) -> f64 {
    ((f[q] + (q * q) as f64) - (f[p] + (p * p) as f64)) / (2.0 * (q as f64 - p as f64))
}

/// One-dimensional squared distance transform of a sampled function (Felzenszwalb & Huttenlocher).
fn distance_1d(f: &[f64], d: &mut [f64]) {
    let n = f.len();
    let finite: Vec<usize> = (0..n).filter(|&q| f[q].is_finite()).collect();
    if finite.is_empty() {
        d.iter_mut().for_each(|v| *v = f64::INFINITY);
        return;
    }
    let mut v = vec![0usize; finite.len()];
    let mut z = vec![0f64; finite.len() + 1];
    let mut k = 0;
    v[0] = finite[0];
    z[0] = f64::NEG_INFINITY;
    z[1] = f64::INFINITY;
    for &q in &finite[1..] {
        let mut s = intersection(f, q, v[k]);
        // z[0] is -inf, so k never drops below zero.
        while s <= z[k] {
            k -= 1;
            s = intersection(f, q, v[k]);
        }
        k += 1;
        v[k] = q;
        z[k] = s;
        z[k + 1] = f64::INFINITY;
    }
    let mut k = 0;
    for (q, out) in d.iter_mut().enumerate() {
        while z[k + 1] < q as f64 {
            k += 1;
        }
        let p = v[k];
        let dq = q as f64 - p as f64;
        *out = dq * dq + f[p];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute_dilate(m: &Mask, r: f64) -> Mask {
        let set: Vec<_> = m.pixels().collect();
        Mask::from_fn(m.width(), m.height(), |x, y| {
            set.iter().any(|&(a, b)| {
                let (dx, dy) = (a as f64 - x as f64, b as f64 - y as f64);
                dx * dx + dy * dy <= r * r
            })
        })
        .unwrap()
    }

    fn pseudo_random_mask(w: u32, h: u32, seed: u64) -> Mask {
        let mut s = seed;
        Mask::from_fn(w, h, |_, _| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33).is_multiple_of(17)
        })
        .unwrap()
    }

    #[test]
    fn dilate_matches_brute_force_disc() {
        for seed in 0..5 {
            let m = pseudo_random_mask(23, 17, seed);
            for r in [0.5, 1.0, 1.5, 2.3, 4.0] {
                assert_eq!(m.dilate(r), brute_dilate(&m, r), "seed {seed} radius {r}");
            }
        }
    }

    #[test]
    fn erode_is_dual_of_dilate_and_keeps_borders() {
        let full = Mask::full(10, 8).unwrap();
        assert_eq!(full.erode(3.0), full);
        let mut m = Mask::from_box(10, 8, &BBox::new(2.0, 2.0, 8.0, 7.0)).unwrap();
        let e = m.erode(1.0);
        assert_eq!(e.bbox(), Some(BBox::new(3.0, 3.0, 7.0, 6.0)));
        assert_eq!(e.area(), 4 * 3);
        m.set(0, 0, true);
        assert!(!m.erode(1.0).get(0, 0));
    }

    #[test]
    fn set_operations_and_iou() {
        let a = Mask::from_box(10, 10, &BBox::new(0.0, 0.0, 5.0, 10.0)).unwrap();
        let b = Mask::from_box(10, 10, &BBox::new(3.0, 0.0, 10.0, 10.0)).unwrap();
        assert_eq!(a.union(&b).unwrap().area(), 100);
        assert_eq!(a.intersection(&b).unwrap().area(), 20);
        assert_eq!(a.difference(&b).unwrap().area(), 30);
        assert!((a.iou(&b).unwrap() - 0.2).abs() < 1e-12);
        assert_eq!(a.complement().area(), 50);
        let c = Mask::new(9, 10).unwrap();
        assert!(matches!(a.union(&c), Err(CoreError::SizeMismatch(_))));
    }

    #[test]
    fn bbox_centroid_and_area_in_box() {
        let mut m = Mask::new(20, 10).unwrap();
        assert_eq!(m.bbox(), None);
        assert_eq!(m.centroid(), None);
        m.set(3, 4, true);
        m.set(5, 6, true);
        assert_eq!(m.bbox(), Some(BBox::new(3.0, 4.0, 6.0, 7.0)));
        assert_eq!(m.centroid(), Some((4.5, 5.5)));
        assert_eq!(m.area_in_box(&BBox::new(0.0, 0.0, 4.0, 5.0)), 1);
        assert_eq!(m.pixels().collect::<Vec<_>>(), vec![(3, 4), (5, 6)]);
    }

    #[test]
    fn resize_nearest_matches_pixel_centres() {
        let m = Mask::from_fn(4, 2, |x, _| x % 2 == 0).unwrap();
        let up = m.resize_nearest(8, 4).unwrap();
        for y in 0..4 {
            let row: Vec<bool> = (0..8).map(|x| up.get(x, y)).collect();
            assert_eq!(row, [true, true, false, false, true, true, false, false]);
        }
        assert_eq!(up.resize_nearest(4, 2).unwrap(), m);
    }

    #[test]
    fn gray_round_trip_and_threshold() {
        let img = GrayImage::from_fn(5, 3, |x, _| image::Luma([(x * 60) as u8]));
        let m = Mask::from_gray(&img, 128).unwrap();
        assert_eq!((0..5).filter(|&x| m.get(x, 0)).count(), 2);
        assert_eq!(Mask::from_gray(&m.to_gray(), 128).unwrap(), m);
    }

    #[test]
    fn rejects_absurd_sizes() {
        assert!(Mask::new(u32::MAX, u32::MAX).is_err());
    }

    #[test]
    fn rle_counts_round_trip() {
        for seed in 0..5 {
            let m = pseudo_random_mask(13, 7, seed);
            let counts: Vec<u64> = m.to_coco_counts().iter().map(|&c| c as u64).collect();
            assert_eq!(counts.iter().sum::<u64>(), 91);
            assert_eq!(Mask::from_coco_counts(13, 7, &counts).unwrap(), m);
            assert_eq!(
                Mask::from_coco_string(13, 7, &m.to_coco_string()).unwrap(),
                m
            );
        }
    }

    #[test]
    fn rle_rejects_malformed_input() {
        assert!(decode_rle_string("a\u{1}").is_err());
        assert!(decode_rle_string("o").is_err(), "unterminated count");
        assert!(
            decode_rle_string("oooooooooooooooo0").is_err(),
            "overlong count"
        );
        assert!(
            Mask::from_coco_counts(2, 2, &[1, 2]).is_err(),
            "wrong total"
        );
        assert!(Mask::from_coco_string(2, 2, "").is_err());
    }
}
