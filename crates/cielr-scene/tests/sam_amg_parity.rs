//! The automatic mask generator against the official `segment-anything` 1.0
//! `SamAutomaticMaskGenerator`, run by `tools/parity/sam.py tiny` on the same random weights
//! (the official model, renamed into the transformers checkpoint of `fixtures/sam-tiny`).
//!
//! Four settings (see `AMG_CASES` in the script): `grid` keeps every mask that passes the
//! predicted-IoU and stability filters (6x6 points in batches of 10), `nms` adds box NMS at
//! 0.7, `regions` adds small-region removal to `grid`, `crops` runs one crop layer with
//! crop NMS and small-region removal (the random model's crop masks all touch inner crop
//! edges and are filtered out, in both implementations). The thresholds
//! are the 30th percentiles of the random model's predicted IoUs and stability scores on the
//! image, so that the filters drop masks without dropping all of them.
//!
//! Every reference mask must be matched one-to-one by one of ours with the same prompt point,
//! a predicted IoU within 1e-4, a stability score within 0.02 and a mask IoU >= 0.99; the
//! counts must be equal.

use std::path::PathBuf;

use cielr_core::mask::Mask;
use cielr_scene::sam::amg::{
    build_point_grid, generate_crop_boxes, nms, remove_small_regions, AmgConfig, AmgMask,
    SamAutomaticMaskGenerator,
};
use cielr_scene::sam::SamModel;
use serde::Deserialize;

type B = cielr_core::backend::CpuBackend;

#[derive(Deserialize)]
struct Settings {
    points_per_side: usize,
    points_per_batch: usize,
    pred_iou_thresh: f64,
    stability_score_thresh: f64,
    stability_score_offset: f64,
    box_nms_thresh: f64,
    crop_n_layers: usize,
    crop_nms_thresh: f64,
    crop_overlap_ratio: f64,
    crop_n_points_downscale_factor: usize,
    min_mask_region_area: usize,
}

#[derive(Deserialize)]
struct RefMask {
    counts: String,
    size: [u32; 2],
    area: u64,
    bbox: [f64; 4],
    predicted_iou: f32,
    stability_score: f32,
    point_coords: Vec<[f64; 2]>,
    crop_box: [f64; 4],
}

#[derive(Deserialize)]
struct Case {
    settings: Settings,
    masks: Vec<RefMask>,
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sam-tiny")
}

fn amg_json() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("amg.json")).unwrap()).unwrap()
}

fn config_of(s: &Settings) -> AmgConfig {
    AmgConfig {
        points_per_side: Some(s.points_per_side),
        points_per_batch: s.points_per_batch,
        pred_iou_thresh: s.pred_iou_thresh as f32,
        stability_score_thresh: s.stability_score_thresh as f32,
        stability_score_offset: s.stability_score_offset as f32,
        box_nms_thresh: s.box_nms_thresh,
        crop_n_layers: s.crop_n_layers,
        crop_nms_thresh: s.crop_nms_thresh,
        crop_overlap_ratio: s.crop_overlap_ratio,
        crop_n_points_downscale_factor: s.crop_n_points_downscale_factor,
        point_grids: None,
        min_mask_region_area: s.min_mask_region_area,
    }
}

fn check_case(name: &str) {
    let model = SamModel::<B>::load(dir(), &Default::default()).expect("load");
    let image = image::open(dir().join("image.png")).expect("image");
    let all = amg_json();
    let case: Case = serde_json::from_value(all[name].clone()).unwrap();
    let case = &case;
    let gen = SamAutomaticMaskGenerator::new(&model, config_of(&case.settings)).unwrap();
    let ours: Vec<AmgMask> = gen.generate(&image).unwrap();
    println!(
        "{name}: {} masks (reference {})",
        ours.len(),
        case.masks.len()
    );
    assert_eq!(ours.len(), case.masks.len(), "{name}: mask count");

    let mut used = vec![false; ours.len()];
    let (mut min_iou, mut max_piou, mut max_stab, mut same_index) = (1.0f64, 0f32, 0f32, 0usize);
    for (k, r) in case.masks.iter().enumerate() {
        let [h, w] = r.size;
        let want = Mask::from_coco_string(w, h, &r.counts).unwrap();
        assert_eq!(
            want.area(),
            r.area,
            "{name}: reference RLE decodes to its area"
        );
        let p = r.point_coords[0];
        let mut best: Option<(usize, f64)> = None;
        for (i, o) in ours.iter().enumerate() {
            if used[i]
                || (o.point_coords[0] - p[0]).abs() > 1e-6
                || (o.point_coords[1] - p[1]).abs() > 1e-6
                || (o.predicted_iou - r.predicted_iou).abs() > 1e-4
            {
                continue;
            }
            let iou = if o.mask.area() == 0 && want.area() == 0 {
                1.0
            } else {
                o.mask.iou(&want).unwrap()
            };
            if best.is_none_or(|(_, b)| iou > b) {
                best = Some((i, iou));
            }
        }
        let (i, iou) =
            best.unwrap_or_else(|| panic!("{name}: reference mask {k} (point {p:?}) has no match"));
        used[i] = true;
        same_index += usize::from(i == k);
        let o = &ours[i];
        min_iou = min_iou.min(iou);
        max_piou = max_piou.max((o.predicted_iou - r.predicted_iou).abs());
        max_stab = max_stab.max((o.stability_score - r.stability_score).abs());
        assert!(iou >= 0.99, "{name}: mask {k} IoU {iou}");
        assert!(
            (o.stability_score - r.stability_score).abs() <= 0.02,
            "{name}: mask {k} stability"
        );
        assert_eq!(o.crop_box, r.crop_box, "{name}: mask {k} crop box");
        if iou == 1.0 {
            assert_eq!(o.bbox, r.bbox, "{name}: mask {k} bbox");
            assert_eq!(o.area, r.area, "{name}: mask {k} area");
        }
    }
    println!(
        "{name}: min mask IoU {min_iou:.4}, max |predicted_iou diff| {max_piou:.2e}, max |stability diff| \
         {max_stab:.2e}, {same_index}/{} in the same position",
        ours.len()
    );
}

#[test]
fn amg_grid_matches_official() {
    check_case("grid");
}

#[test]
fn amg_nms_matches_official() {
    check_case("nms");
}

#[test]
fn amg_small_regions_match_official() {
    check_case("regions");
}

#[test]
fn amg_crops_matches_official() {
    check_case("crops");
}

#[test]
fn crop_boxes_and_point_grids_match_official() {
    let helpers = &amg_json()["helpers"];
    let cases = helpers["crop_boxes"].as_array().unwrap();
    for c in cases {
        let size: Vec<usize> = serde_json::from_value(c["size"].clone()).unwrap();
        let layers = c["layers"].as_u64().unwrap() as usize;
        let want: Vec<[usize; 4]> = serde_json::from_value(c["boxes"].clone()).unwrap();
        let want_layers: Vec<usize> = serde_json::from_value(c["layer_idxs"].clone()).unwrap();
        let (boxes, idx) = generate_crop_boxes((size[0], size[1]), layers, 512.0 / 1500.0);
        assert_eq!(boxes, want, "crop boxes for {size:?}");
        assert_eq!(idx, want_layers, "crop layers for {size:?}");
    }
    let grids = helpers["point_grids"].as_object().unwrap();
    assert!(grids.len() >= 4);
    for (n, g) in grids {
        let want: Vec<[f64; 2]> = serde_json::from_value(g.clone()).unwrap();
        assert_eq!(build_point_grid(n.parse().unwrap()), want, "grid {n}");
    }
}

#[test]
fn nms_and_small_regions_behave() {
    // Two overlapping boxes (IoU 2/3) and a disjoint one; ties keep their order.
    let boxes = [
        [0.0, 0.0, 10.0, 10.0],
        [2.0, 0.0, 12.0, 10.0],
        [20.0, 20.0, 30.0, 30.0],
    ];
    assert_eq!(nms(&boxes, &[0.5, 0.9, 0.1], 0.5), vec![1, 2]);
    assert_eq!(nms(&boxes, &[0.5, 0.9, 0.1], 0.7), vec![1, 0, 2]);
    assert_eq!(nms(&boxes, &[1.0, 1.0, 1.0], 0.5), vec![0, 2]);
    // A 5x5 square with a one-pixel hole and a one-pixel island, in a 8x8 mask.
    let (w, h) = (8, 8);
    let mut m = vec![false; w * h];
    for y in 1..6 {
        for x in 1..6 {
            m[y * w + x] = true;
        }
    }
    m[3 * w + 3] = false;
    m[7 * w + 7] = true;
    let (filled, changed) = remove_small_regions(&m, w, h, 2, true);
    assert!(changed && filled[3 * w + 3] && filled[7 * w + 7]);
    let (clean, changed) = remove_small_regions(&filled, w, h, 2, false);
    assert!(changed && !clean[7 * w + 7] && clean.iter().filter(|&&v| v).count() == 25);
    let (same, changed) = remove_small_regions(&clean, w, h, 2, false);
    assert!(!changed && same == clean);
}

/// Regression: an `AmgConfig` (public fields; the CLI caps its own flags) with a large
/// `crop_n_layers` reached `1 << (i + 1)` (a shift overflow) and a `4^n`-crop loop
/// unchecked, and a crop overlap ratio >= 1 underflowed `cw - overlap`.
#[test]
fn amg_settings_that_size_the_work_are_validated() {
    let ok = AmgConfig::default();
    assert!(ok.validate().is_ok());
    let bad = [
        AmgConfig {
            crop_n_layers: 64,
            ..AmgConfig::default()
        },
        AmgConfig {
            points_per_side: Some(1 << 20),
            ..AmgConfig::default()
        },
        AmgConfig {
            crop_overlap_ratio: 1.5,
            ..AmgConfig::default()
        },
        AmgConfig {
            crop_overlap_ratio: f64::NAN,
            ..AmgConfig::default()
        },
        AmgConfig {
            points_per_batch: 0,
            ..AmgConfig::default()
        },
    ];
    for c in bad {
        let e = c.validate().expect_err("invalid settings");
        assert!(e.to_string().contains("automatic mask generator"), "{e}");
    }
    // A ratio the generator now refuses still gives boxes (no underflow) from the helper.
    let (boxes, _) = generate_crop_boxes((10, 10), 1, 5.0);
    assert!(boxes.iter().all(|b| b[0] <= b[2] && b[1] <= b[3]));
}

/// Regression: on a one-pixel-wide image the crops of layer 2 start past the right edge;
/// `x1 - x0` used to underflow. Such crops are now empty boxes that the generator skips.
#[test]
fn amg_on_a_one_pixel_wide_image_with_crop_layers_does_not_panic() {
    let (boxes, _) = generate_crop_boxes((4, 1), 2, 512.0 / 1500.0);
    assert_eq!(boxes.len(), 1 + 4 + 16);
    assert!(boxes
        .iter()
        .all(|b| b[0] <= b[2] && b[2] <= 1 && b[1] <= b[3] && b[3] <= 4));
    let model = SamModel::<B>::load(dir(), &Default::default()).expect("load");
    let config = AmgConfig {
        points_per_side: Some(2),
        crop_n_layers: 2,
        pred_iou_thresh: 0.0,
        stability_score_thresh: 0.0,
        ..AmgConfig::default()
    };
    let gen = SamAutomaticMaskGenerator::new(&model, config).expect("valid settings");
    let image = image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
        1,
        4,
        image::Rgb([120, 30, 200]),
    ));
    let masks = gen.generate(&image).expect("tiny image");
    assert!(masks
        .iter()
        .all(|m| m.mask.width() == 1 && m.mask.height() == 4));
}
