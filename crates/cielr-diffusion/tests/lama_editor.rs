//! `LamaEditor` on the tiny random LaMa fixture (`tests/fixtures/lama-tiny`): every pixel
//! outside the mask is bit-identical, the hole is filled, windows larger than the model size
//! are scaled down (and back), and ops other than `remove` are refused.

use std::path::PathBuf;

use cielr_core::backend::CpuBackend;
use cielr_core::io::load_rgb;
use cielr_core::{EditAction, EditOp, EditRequest, Editor, Mask};
use cielr_diffusion::{DiffusionError, LamaEditor, LamaEditorOptions};
use image::RgbImage;

type B = CpuBackend;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lama-tiny")
}

fn photo() -> RgbImage {
    load_rgb(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/chelsea-150x100.png"))
        .unwrap()
}

fn editor(model_size: u32) -> LamaEditor<B> {
    let options = LamaEditorOptions {
        model_size,
        ..Default::default()
    };
    LamaEditor::load(fixture(), options, &Default::default()).unwrap()
}

/// An ellipse (not a box: the paste must follow the mask, not its window).
fn hole(w: u32, h: u32) -> Mask {
    Mask::from_fn(w, h, |x, y| {
        let (dx, dy) = ((x as f64 - 70.0) / 16.0, (y as f64 - 48.0) / 11.0);
        dx * dx + dy * dy <= 1.0
    })
    .unwrap()
}

/// Asserts bit-identity outside the mask and returns how many mask pixels changed.
fn check(image: &RgbImage, out: &RgbImage, mask: &Mask) -> usize {
    assert_eq!(out.dimensions(), image.dimensions());
    let mut changed = 0;
    for (x, y, p) in out.enumerate_pixels() {
        if mask.get(x, y) {
            changed += (p != image.get_pixel(x, y)) as usize;
        } else {
            assert_eq!(p, image.get_pixel(x, y), "outside the mask at ({x}, {y})");
        }
    }
    changed
}

#[test]
fn removal_changes_only_the_mask_at_model_size_and_scaled() {
    let image = photo();
    let mask = hole(150, 100);
    // The window (at least 64, twice the mask's box) fits the model size: run as is.
    let native = editor(256).remove(&image, &mask).unwrap();
    let changed = check(&image, &native, &mask);
    assert!(
        changed * 2 > mask.area() as usize,
        "{changed} of {}",
        mask.area()
    );
    // A model size below the window: the window is scaled down, inpainted and scaled back.
    let scaled = editor(32).remove(&image, &mask).unwrap();
    let changed = check(&image, &scaled, &mask);
    assert!(
        changed * 2 > mask.area() as usize,
        "{changed} of {}",
        mask.area()
    );
    assert_ne!(native, scaled);
    // A one-pixel line survives the downscale: the model fills all of it.
    let line = Mask::from_fn(150, 100, |x, y| x == 75 && (20..80).contains(&y)).unwrap();
    let out = editor(32).remove(&image, &line).unwrap();
    let changed = check(&image, &out, &line);
    assert!(changed >= 50, "{changed} of 60 line pixels changed");
    // An empty mask returns the image; a mask over everything has nothing to inpaint from.
    let e = editor(64);
    assert_eq!(
        e.remove(&image, &Mask::new(150, 100).unwrap()).unwrap(),
        image
    );
    assert!(matches!(
        e.remove(&image, &Mask::full(150, 100).unwrap()),
        Err(DiffusionError::NothingToInpaintFrom { .. })
    ));
}

#[test]
fn the_editor_trait_removes_and_refuses_other_ops() {
    let e = editor(64);
    assert!(e.supports(EditOp::Remove));
    assert!(!e.supports(EditOp::Replace) && !e.supports(EditOp::Recolor));
    let image = photo();
    let mask = hole(150, 100);
    let remove = EditAction {
        op: EditOp::Remove,
        targets: vec![1],
        prompt: "remove the cat".into(),
    };
    let request = |action| EditRequest {
        image: &image,
        mask: &mask,
        action,
        seed: 0,
    };
    let out = pollster::block_on(e.edit(request(&remove))).unwrap();
    check(&image, &out, &mask);
    let replace = EditAction {
        op: EditOp::Replace,
        ..remove.clone()
    };
    let err = pollster::block_on(e.edit(request(&replace))).unwrap_err();
    assert!(err.to_string().contains("LaMa only removes"), "{err}");
    // A model size below what the generator accepts is refused up front.
    let options = LamaEditorOptions {
        model_size: 4,
        ..Default::default()
    };
    assert!(matches!(
        LamaEditor::<B>::load(fixture(), options, &Default::default()),
        Err(DiffusionError::InvalidOption(_))
    ));
}
