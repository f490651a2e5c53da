//! COCO RLE against strings produced by pycocotools (tools/core/coco_rle_cases.py).

use cielr_core::{BBox, Mask};

#[derive(serde::Deserialize)]
struct Case {
    height: u32,
    width: u32,
    rows: Vec<String>,
    counts: String,
    area: u64,
    bbox_xywh: [f64; 4],
}

fn cases() -> Vec<Case> {
    serde_json::from_str(include_str!("data/coco_rle_cases.json")).unwrap()
}

fn mask_of(c: &Case) -> Mask {
    Mask::from_fn(c.width, c.height, |x, y| {
        c.rows[y as usize].as_bytes()[x as usize] == b'1'
    })
    .unwrap()
}

#[test]
fn encoding_matches_pycocotools() {
    for c in cases() {
        assert_eq!(
            mask_of(&c).to_coco_string(),
            c.counts,
            "{}x{}",
            c.height,
            c.width
        );
    }
}

#[test]
fn decoding_matches_pycocotools_masks() {
    for c in cases() {
        let m = Mask::from_coco_string(c.width, c.height, &c.counts).unwrap();
        assert_eq!(m, mask_of(&c));
        assert_eq!(m.area(), c.area);
        let [x, y, w, h] = c.bbox_xywh;
        let expected = (c.area > 0).then(|| BBox::new(x, y, x + w, y + h));
        assert_eq!(m.bbox(), expected);
    }
}

#[test]
fn json_form_round_trips() {
    for c in cases() {
        let m = mask_of(&c);
        let json = serde_json::to_string(&m.to_coco()).unwrap();
        let back: cielr_core::CocoRle = serde_json::from_str(&json).unwrap();
        assert_eq!(back.size, [c.height, c.width]);
        assert_eq!(Mask::from_coco(&back).unwrap(), m);
    }
}
