//! The SAM 2 automatic mask generator (with `use_m2m`) against the official `sam2` 1.1.0
//! generator code run by `tools/parity/sam2_amg.py` on the tiny fixture (the official
//! generator and transforms over transformers' `Sam2Model`; see that script for the
//! stand-ins): the same masks (uncompressed column-major RLE), boxes, scores, points and crop
//! boxes, in the same order.

use std::path::PathBuf;

use cielr_scene::sam2::amg::{Sam2AmgConfig, Sam2AutomaticMaskGenerator};
use cielr_scene::sam2::Sam2Model;
use serde_json::Value;

type B = cielr_core::backend::CpuBackend;

fn rle_counts(m: &cielr_core::mask::Mask) -> Vec<u64> {
    let (w, h) = (m.width(), m.height());
    let mut counts = Vec::new();
    let mut cur = false;
    let mut run = 0u64;
    for x in 0..w {
        for y in 0..h {
            let v = m.get(x, y);
            if v != cur {
                counts.push(run);
                run = 0;
                cur = v;
            }
            run += 1;
        }
    }
    counts.push(run);
    counts
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

#[test]
fn sam2_amg_matches_official_generator() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sam2-tiny");
    let model = Sam2Model::<B>::load(&dir, &Default::default()).expect("load");
    let image = image::open(dir.join("image.png")).expect("image");
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("amg.json")).unwrap()).unwrap();
    let mut total = 0;
    for case in cases.as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let s = &case["settings"];
        let mut c = Sam2AmgConfig::paper();
        c.base.points_per_side = Some(s["points_per_side"].as_u64().unwrap() as usize);
        c.base.pred_iou_thresh = f(&s["pred_iou_thresh"]) as f32;
        c.base.stability_score_thresh = f(&s["stability_score_thresh"]) as f32;
        c.base.stability_score_offset = f(&s["stability_score_offset"]) as f32;
        c.base.crop_n_layers = s["crop_n_layers"].as_u64().unwrap() as usize;
        c.base.box_nms_thresh = f(&s["box_nms_thresh"]);
        c.base.crop_n_points_downscale_factor =
            s["crop_n_points_downscale_factor"].as_u64().unwrap() as usize;
        c.base.min_mask_region_area = s["min_mask_region_area"].as_u64().unwrap() as usize;
        c.use_m2m = s["use_m2m"].as_bool().unwrap();
        if let Some(b) = s.get("points_per_batch") {
            c.base.points_per_batch = b.as_u64().unwrap() as usize;
        }
        let generator = Sam2AutomaticMaskGenerator::new(&model, c).expect("generator");
        let ours = generator.generate(&image).expect("generate");
        let want = case["masks"].as_array().unwrap();
        println!("{name}: {} masks (official {})", ours.len(), want.len());
        assert_eq!(ours.len(), want.len(), "{name}: mask count");
        let (mut iou_err, mut stab_err) = (0f64, 0f64);
        for (k, (o, w)) in ours.iter().zip(want).enumerate() {
            let counts: Vec<u64> = w["counts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert_eq!(rle_counts(&o.mask), counts, "{name}: mask {k}");
            let bbox: Vec<f64> = w["bbox"].as_array().unwrap().iter().map(f).collect();
            assert_eq!(o.bbox.to_vec(), bbox, "{name}: bbox {k}");
            assert_eq!(o.area, w["area"].as_u64().unwrap(), "{name}: area {k}");
            let crop: Vec<f64> = w["crop_box"].as_array().unwrap().iter().map(f).collect();
            assert_eq!(o.crop_box.to_vec(), crop, "{name}: crop box {k}");
            let p = &w["point_coords"][0];
            assert!(
                (o.point_coords[0] - f(&p[0])).abs() < 1e-4
                    && (o.point_coords[1] - f(&p[1])).abs() < 1e-4,
                "{name}: point {k}"
            );
            iou_err = iou_err.max((o.predicted_iou as f64 - f(&w["predicted_iou"])).abs());
            stab_err = stab_err.max((o.stability_score as f64 - f(&w["stability_score"])).abs());
        }
        println!("{name}: max |predicted_iou| err {iou_err:.2e}, max |stability| err {stab_err:.2e}");
        assert!(iou_err < 1e-4 && stab_err < 1e-3, "{name}: score errors");
        total += ours.len();
    }
    assert!(total > 50, "the fixture must exercise the generator ({total} masks)");
}
