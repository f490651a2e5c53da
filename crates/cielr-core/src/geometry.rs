//! Axis-aligned boxes in pixel coordinates.

use serde::{Deserialize, Serialize};

/// A box `[x0, y0, x1, y1]` in pixels (xyxy, continuous coordinates: a box covering exactly
/// pixel `(0, 0)` is `[0, 0, 1, 1]`). Serialised as a four-number array.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "[f64; 4]", into = "[f64; 4]")]
pub struct BBox {
    /// Left edge.
    pub x0: f64,
    /// Top edge.
    pub y0: f64,
    /// Right edge.
    pub x1: f64,
    /// Bottom edge.
    pub y1: f64,
}

impl From<[f64; 4]> for BBox {
    fn from(v: [f64; 4]) -> Self {
        BBox::new(v[0], v[1], v[2], v[3])
    }
}

impl From<BBox> for [f64; 4] {
    fn from(b: BBox) -> Self {
        [b.x0, b.y0, b.x1, b.y1]
    }
}

impl BBox {
    /// A box from its corners.
    pub fn new(x0: f64, y0: f64, x1: f64, y1: f64) -> Self {
        BBox { x0, y0, x1, y1 }
    }

    /// Width (0 for a degenerate box).
    pub fn width(&self) -> f64 {
        (self.x1 - self.x0).max(0.0)
    }

    /// Height (0 for a degenerate box).
    pub fn height(&self) -> f64 {
        (self.y1 - self.y0).max(0.0)
    }

    /// Area (0 for a degenerate box).
    pub fn area(&self) -> f64 {
        self.width() * self.height()
    }

    /// The centre point.
    pub fn center(&self) -> (f64, f64) {
        ((self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0)
    }

    /// Whether all coordinates are finite and `x0 < x1`, `y0 < y1`.
    pub fn is_valid(&self) -> bool {
        [self.x0, self.y0, self.x1, self.y1]
            .iter()
            .all(|v| v.is_finite())
            && self.x0 < self.x1
            && self.y0 < self.y1
    }

    /// The overlap of two boxes, if any.
    pub fn intersect(&self, other: &BBox) -> Option<BBox> {
        let b = BBox::new(
            self.x0.max(other.x0),
            self.y0.max(other.y0),
            self.x1.min(other.x1),
            self.y1.min(other.y1),
        );
        b.is_valid().then_some(b)
    }

    /// Intersection over union of two boxes.
    pub fn iou(&self, other: &BBox) -> f64 {
        let inter = self.intersect(other).map_or(0.0, |b| b.area());
        let uni = self.area() + other.area() - inter;
        if uni <= 0.0 {
            0.0
        } else {
            inter / uni
        }
    }

    /// The range of pixels whose centres lie inside the box, clipped to a `width x height`
    /// image: `(x_start, y_start, x_end, y_end)` with exclusive ends.
    pub fn pixel_range(&self, width: u32, height: u32) -> (u32, u32, u32, u32) {
        let clip = |v: f64, max: u32| -> u32 {
            if v.is_nan() {
                0
            } else {
                (v - 0.5).ceil().clamp(0.0, max as f64) as u32
            }
        };
        let (xs, xe) = (clip(self.x0, width), clip(self.x1, width));
        let (ys, ye) = (clip(self.y0, height), clip(self.y1, height));
        (xs, ys, xe.max(xs), ye.max(ys))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixel_range_clips_and_rounds_by_centres() {
        let b = BBox::new(-3.0, 1.4, 4.6, 100.0);
        assert_eq!(b.pixel_range(10, 10), (0, 1, 5, 10));
        assert_eq!(
            BBox::new(2.0, 2.0, 2.2, 3.0).pixel_range(10, 10),
            (2, 2, 2, 3)
        );
    }

    #[test]
    fn iou_of_boxes() {
        let a = BBox::new(0.0, 0.0, 2.0, 2.0);
        let b = BBox::new(1.0, 0.0, 3.0, 2.0);
        assert!((a.iou(&b) - 2.0 / 6.0).abs() < 1e-12);
        assert_eq!(a.iou(&BBox::new(5.0, 5.0, 6.0, 6.0)), 0.0);
        assert!(!BBox::new(1.0, 1.0, 1.0, 2.0).is_valid());
        assert!(!BBox::new(f64::NAN, 1.0, 1.0, 2.0).is_valid());
    }
}
