//! Masks from the COCO detector's boxes on the real coffee photo, against the hand-drawn
//! masks of `assets/coffee.ssr.json` (approximate ground truth: ellipses and polygons drawn
//! by `tools/demo/coffee_ssr.py`).
//!
//! Needs the real CenterNet weights (`tools/setup-models.sh` puts them in the model cache,
//! `$CIELR_CACHE` or `~/.cache/cielr`); without them these tests fail and say so.

mod grabcut_common;

use std::time::Instant;

use cielr_core::backend::CpuBackend;
use cielr_core::{Mask, Scene, SceneBuilder};
use cielr_scene::centernet::DetectOptions;
use cielr_scene::coco_detector::CocoDetectorSceneBuilder;
use cielr_scene::grabcut::{GrabCutOptions, MaskMode};
use cielr_scene::model_cache::ModelCache;
use grabcut_common::{committed_photo, manifest_dir};

fn builder() -> CocoDetectorSceneBuilder<CpuBackend> {
    let cache = ModelCache::from_env().unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = cache.centernet_json() {
        panic!("\n\nThe detector mask tests need the real CenterNet weights.\n{e}\n\n");
    }
    CocoDetectorSceneBuilder::from_cache(&cache, DetectOptions::default(), &Default::default())
        .unwrap()
}

fn hand_drawn(label: &str) -> Mask {
    let scene = Scene::load(&manifest_dir().join("../../assets/coffee.ssr.json")).unwrap();
    scene
        .objects
        .iter()
        .find(|o| o.label == label)
        .and_then(|o| o.mask.clone())
        .unwrap_or_else(|| panic!("no hand-drawn {label} mask"))
}

#[test]
fn detected_cup_mask_beats_its_box() {
    let image = committed_photo("coffee");
    let (w, h) = image.dimensions();
    let b = builder();
    assert_eq!(b.mask_mode(), MaskMode::GrabCut, "GrabCut is the default");
    let t = Instant::now();
    let scene = pollster::block_on(b.build(&image, &["cup".into()])).unwrap();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    scene.validate().unwrap();
    eprintln!("coffee, cups (build {ms:.0} ms):\n{}", scene.describe());
    let cup = scene.objects.first().expect("no cup detected");
    let mask = cup.mask.as_ref().expect("the cup has no mask");
    let how = cup.attributes.get("mask").expect("no \"mask\" attribute");
    assert!(
        ["grabcut", "ellipse-fallback", "box-fallback"].contains(&how.as_str()),
        "{how}"
    );
    // The mask lies inside the detector's box, which is kept as the object's box.
    let in_box = Mask::from_box(w, h, &cup.bbox).unwrap();
    assert!(mask.difference(&in_box).unwrap().is_empty());
    let truth = hand_drawn("cup");
    let iou = mask.iou(&truth).unwrap();
    let box_iou = in_box.iou(&truth).unwrap();
    eprintln!(
        "cup {:?} ({how}): mask IoU {iou:.3}, box IoU {box_iou:.3} with the hand-drawn cup",
        cup.bbox
    );
    assert!(
        iou > box_iou + 0.05,
        "cup mask ({how}) IoU {iou:.3} vs box {box_iou:.3}"
    );
}

#[test]
fn mask_modes_and_refine() {
    let image = committed_photo("coffee");
    let boxes = builder()
        .with_masks(MaskMode::Box, GrabCutOptions::default())
        .unwrap();
    let scene = pollster::block_on(boxes.build(&image, &["cup".into()])).unwrap();
    assert!(!scene.objects.is_empty());
    for o in &scene.objects {
        assert!(o.mask.is_none() && !o.attributes.contains_key("mask"));
    }
    let ellipses = builder()
        .with_masks(MaskMode::Ellipse, GrabCutOptions::default())
        .unwrap();
    let scene = pollster::block_on(ellipses.build(&image, &["cup".into()])).unwrap();
    for o in &scene.objects {
        assert_eq!(o.attributes["mask"], "ellipse");
        assert!(o.mask.is_some());
    }
    // Refining gives the new objects masks and leaves the old ones alone.
    let refined =
        pollster::block_on(ellipses.refine(&image, &scene, &["spoon".into(), "bowl".into()]))
            .unwrap();
    assert_eq!(&refined.objects[..scene.objects.len()], &scene.objects[..]);
    for o in &refined.objects {
        assert!(o.mask.is_some(), "{o:?}");
    }
    assert!(builder()
        .with_masks(
            MaskMode::GrabCut,
            GrabCutOptions {
                components: 0,
                ..GrabCutOptions::default()
            }
        )
        .is_err());
}
