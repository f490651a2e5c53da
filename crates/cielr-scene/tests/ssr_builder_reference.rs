//! The paper's SSR builder against an independent Python reference
//! (`tools/parity/ssr_builder.py`, fixture `fixtures/ssr-builder/reference.json`) built from
//! the reference implementations' outputs on the tiny random checkpoints: the official
//! `segment-anything` generator's masks (the `grid` case of `fixtures/sam-tiny/amg.json`),
//! transformers' OWLv2 boxes and transformers' Depth Anything depth on
//! `fixtures/sam-tiny/image.png`.
//!
//! Here the same masks are fed through a fixed [`MaskProposer`], while boxes and depth come
//! from the Burn ports. Checked: the boxes (labels exact, scores and coordinates close), each
//! of the 63 masks' label and labelling score (exact choice of box by the IoU rule), each
//! mask's centroid depth, and the merged SSR (labels, masks bit-exact, depth, score). The
//! script guarantees that no decision is closer than the tolerances below. Random weights:
//! this checks the arithmetic of the builder, not the quality of its labels.

use std::path::PathBuf;

use cielr_core::{Mask, SceneBuilder};
use cielr_scene::depth_anything::DepthAnything;
use cielr_scene::owlv2::Owlv2Detector;
use cielr_scene::ssr_builder::{
    assign_labels, MaskProposer, OpenVocabularyDetector, PaperSsrBuilder, SsrBuilderOptions,
};
use image::DynamicImage;
use serde::Deserialize;

type B = cielr_core::backend::CpuBackend;

#[derive(Deserialize)]
struct RefBox {
    #[serde(rename = "box")]
    bbox: [f64; 4],
    label: String,
    score: f64,
}

#[derive(Deserialize)]
struct RefMask {
    label: Option<String>,
    score: Option<f64>,
    depth: f64,
}

#[derive(Deserialize)]
struct RefObject {
    id: u32,
    label: String,
    counts: String,
    depth: f64,
    score: Option<f64>,
}

#[derive(Deserialize)]
struct Reference {
    queries: Vec<String>,
    box_threshold: f32,
    boxes: Vec<RefBox>,
    per_mask: Vec<RefMask>,
    edge_gap: f64,
    objects: Vec<RefObject>,
}

#[derive(Deserialize)]
struct AmgMaskRef {
    counts: String,
    size: [u32; 2],
}

#[derive(Deserialize)]
struct AmgCase {
    masks: Vec<AmgMaskRef>,
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

struct Fixed(Vec<Mask>);
impl MaskProposer for Fixed {
    fn name(&self) -> String {
        "sam-amg-reference".into()
    }
    fn propose(&self, _image: &DynamicImage) -> cielr_scene::Result<Vec<Mask>> {
        Ok(self.0.clone())
    }
}

#[test]
fn builder_reproduces_the_python_reference_ssr() {
    let f = fixtures();
    let reference: Reference = serde_json::from_str(
        &std::fs::read_to_string(f.join("ssr-builder/reference.json")).unwrap(),
    )
    .unwrap();
    let amg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.join("sam-tiny/amg.json")).unwrap())
            .unwrap();
    let grid: AmgCase = serde_json::from_value(amg["grid"].clone()).unwrap();
    let masks: Vec<Mask> = grid
        .masks
        .iter()
        .map(|m| Mask::from_coco_string(m.size[1], m.size[0], &m.counts).unwrap())
        .collect();
    assert_eq!(masks.len(), reference.per_mask.len());
    let image = image::open(f.join("sam-tiny/image.png")).unwrap();
    let device = Default::default();
    let detector = Owlv2Detector::<B>::from_pretrained(f.join("owlv2-tiny"), &device).unwrap();
    let depth =
        DepthAnything::<B>::from_pretrained(f.join("depth-anything-tiny"), &device).unwrap();

    // Boxes.
    let emb = OpenVocabularyDetector::embed_image(&detector, &image).unwrap();
    let boxes = OpenVocabularyDetector::detect(
        &detector,
        &emb,
        &reference.queries,
        reference.box_threshold,
    )
    .unwrap();
    assert_eq!(boxes.len(), reference.boxes.len());
    let (mut box_err, mut score_err) = (0f64, 0f64);
    for (b, r) in boxes.iter().zip(&reference.boxes) {
        assert_eq!(b.label, r.label);
        score_err = score_err.max((b.score as f64 - r.score).abs());
        let got: [f64; 4] = b.bbox.into();
        for (g, e) in got.iter().zip(r.bbox) {
            box_err = box_err.max((g - e).abs());
        }
    }
    eprintln!(
        "boxes: max abs error {box_err:.2e} px (edge gap {:.2e}), scores {score_err:.2e}",
        reference.edge_gap
    );
    assert!(
        box_err < reference.edge_gap,
        "a box edge may cross a pixel boundary"
    );
    assert!(score_err < 1e-4);

    // Per-mask labels, scores and depths.
    let labels = assign_labels(&masks, &boxes);
    let map = depth.estimate(&image).unwrap();
    let (lo, hi) = map
        .data
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let mut depth_err = 0f64;
    for (i, ((m, l), r)) in masks
        .iter()
        .zip(&labels)
        .zip(&reference.per_mask)
        .enumerate()
    {
        assert_eq!(
            l.map(|j| boxes[j].label.clone()),
            r.label,
            "mask {i}: label"
        );
        let s = l.map(|j| boxes[j].score as f64);
        assert_eq!(s.is_some(), r.score.is_some());
        if let (Some(a), Some(b)) = (s, r.score) {
            assert!((a - b).abs() < 1e-4, "mask {i}: labelled by another box");
        }
        let d = map.at_mask_centroid(m).unwrap().unwrap();
        let d = ((d - lo) / (hi - lo)) as f64;
        depth_err = depth_err.max((d - r.depth).abs());
    }
    eprintln!("per-mask normalised depth: max abs error {depth_err:.2e}");
    assert!(depth_err < 1e-3);

    // The merged SSR through the builder.
    let builder = PaperSsrBuilder::new(
        Fixed(masks),
        detector,
        depth,
        SsrBuilderOptions {
            box_threshold: reference.box_threshold,
            ..Default::default()
        },
    )
    .unwrap();
    let scene = pollster::block_on(builder.build(&image.to_rgb8(), &reference.queries)).unwrap();
    scene.validate().unwrap();
    assert_eq!(scene.objects.len(), reference.objects.len());
    for (o, r) in scene.objects.iter().zip(&reference.objects) {
        assert_eq!((o.id, o.label.as_str()), (r.id, r.label.as_str()));
        let expected = Mask::from_coco_string(scene.width, scene.height, &r.counts).unwrap();
        assert!(o.mask.as_ref() == Some(&expected), "object {}: mask", o.id);
        assert!((o.depth.unwrap() - r.depth).abs() < 1e-3);
        match (o.score, r.score) {
            (Some(a), Some(b)) => assert!((a - b).abs() < 1e-4),
            (a, b) => assert_eq!(a.is_some(), b.is_some()),
        }
    }
}
