//! Parity of the Stable Diffusion inpainting pipeline with diffusers 0.42's
//! `StableDiffusionInpaintPipeline` on the tiny random pipeline written by
//! `tools/parity/diffusers_inpaint.py` (`tests/fixtures/sd-inpaint-tiny`: 9-channel UNet, VAE,
//! CLIP text encoder, tokenizer.json, DDIM; prompt + negative prompt, guidance 5, 4 steps,
//! injected initial latents), step by step; and the editor's discipline on that checkpoint
//! (pixels outside the mask bit-identical, deterministic for a seed).

use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};
use cielr_core::backend::CpuBackend;
use cielr_core::{BBox, EditAction, EditOp, EditRequest, Editor, Mask};
use cielr_diffusion::weights::Checkpoint;
use cielr_diffusion::{
    InpaintParams, SdEditorOptions, SdInpaintPipeline, StableDiffusionInpaintEditor,
};
use image::{Rgb, RgbImage};

type B = CpuBackend;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd-inpaint-tiny")
}

fn tensor(ckpt: &Checkpoint, name: &str) -> Tensor<B, 4> {
    let (v, shape) = ckpt.read_any(name).unwrap();
    let dims: [usize; 4] = shape.try_into().unwrap();
    Tensor::from_data(TensorData::new(v, dims), &Default::default())
}

/// Prints max abs and rel errors; returns max abs / max(1, max |reference|).
fn compare(label: &str, ours: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(ours.len(), reference.len(), "{label}: size");
    let (mut abs, mut scale, mut rel) = (0f64, 0f64, 0f64);
    for (&x, &y) in ours.iter().zip(reference) {
        let d = (x as f64 - y as f64).abs();
        abs = abs.max(d);
        scale = scale.max((y as f64).abs());
        if y.abs() >= 1e-2 {
            rel = rel.max(d / y.abs() as f64);
        }
    }
    println!("{label:<12} max abs {abs:.2e}  max rel {rel:.2e}  (max |ref| {scale:.3})");
    abs / scale.max(1.0)
}

/// Runs the pipeline on the fixture's image and mask with the reference's noise `{prefix}noise`
/// and compares every step's latents and the image; returns the worst normalised error.
fn run_and_compare(params: &InpaintParams, prefix: &str, steps: usize) -> f64 {
    let device = Default::default();
    let pipe = SdInpaintPipeline::<B>::from_dir(dir(), &device).unwrap();
    let refs = Checkpoint::open(dir().join("reference.safetensors")).unwrap();
    let image = image::open(dir().join("image.png")).unwrap().to_rgb8();
    let (m, _) = refs.read_any("mask").unwrap();
    let (w, h) = image.dimensions();
    let mask = Mask::from_fn(w, h, |x, y| m[(y * w + x) as usize] > 0.5).unwrap();
    let mut latents: Vec<Vec<f32>> = Vec::new();
    let mut seen = Vec::new();
    let noise = tensor(&refs, &format!("{prefix}noise"));
    let out = pipe
        .run(&image, &mask, params, Some(noise), &mut |p| {
            seen.push((p.step, p.total));
            latents.push(p.latents.to_data().iter::<f32>().collect());
        })
        .unwrap();
    assert_eq!(seen, (0..steps).map(|i| (i, steps)).collect::<Vec<_>>());
    let mut worst = 0f64;
    for (i, ours) in latents.iter().enumerate() {
        let (r, _) = refs.read_any(&format!("{prefix}latents_{i}")).unwrap();
        worst = worst.max(compare(&format!("{prefix}latents_{i}"), ours, &r));
    }
    let ours: Vec<f32> = out.image.to_data().iter::<f32>().collect();
    let (r, _) = refs.read_any(&format!("{prefix}final")).unwrap();
    worst.max(compare(&format!("{prefix}image"), &ours, &r))
}

#[test]
fn pipeline_matches_diffusers_step_by_step() {
    // Guidance 5 with a negative prompt, strength 1, the injected `latents`.
    let params = InpaintParams {
        prompt: "a blue cup".into(),
        negative_prompt: "a photo of a dog".into(),
        steps: 4,
        guidance: 5.0,
        strength: 1.0,
        seed: 0,
    };
    let worst = run_and_compare(&params, "", 4);
    assert!(worst < 1e-4, "worst normalised error {worst:.2e}");
}

#[test]
fn pipeline_matches_diffusers_at_strength_below_one_without_guidance() {
    // Strength 0.75 (3 of 4 steps from the noised image latents), guidance 1.
    let params = InpaintParams {
        prompt: "a blue cup".into(),
        negative_prompt: String::new(),
        steps: 4,
        guidance: 1.0,
        strength: 0.75,
        seed: 0,
    };
    let worst = run_and_compare(&params, "s075_", 3);
    assert!(worst < 1e-4, "worst normalised error {worst:.2e}");
}

fn scene() -> (RgbImage, Mask) {
    let image = RgbImage::from_fn(40, 28, |x, y| {
        Rgb([(x * 6) as u8, (y * 9) as u8, ((x + y) * 3) as u8])
    });
    let mask = Mask::from_box(40, 28, &BBox::new(14.0, 8.0, 26.0, 18.0)).unwrap();
    (image, mask)
}

#[test]
fn editor_keeps_outside_pixels_and_is_deterministic() {
    let options = SdEditorOptions {
        steps: 2,
        model_size: 16,
        ..SdEditorOptions::default()
    };
    let editor =
        StableDiffusionInpaintEditor::<B>::from_dir(dir(), options, &Default::default()).unwrap();
    assert!(editor.supports(EditOp::Replace) && editor.supports(EditOp::Add));
    assert!(!editor.supports(EditOp::Remove) && !editor.supports(EditOp::Recolor));
    let (image, mask) = scene();
    let action = EditAction {
        op: EditOp::Replace,
        targets: vec![0],
        prompt: "a blue cup".into(),
    };
    let run = |seed| {
        pollster::block_on(editor.edit(EditRequest {
            image: &image,
            mask: &mask,
            action: &action,
            seed,
        }))
        .unwrap()
    };
    let a = run(3);
    assert_eq!(a.dimensions(), image.dimensions());
    let mut changed = 0;
    for (x, y, p) in a.enumerate_pixels() {
        if mask.get(x, y) {
            changed += usize::from(p != image.get_pixel(x, y));
        } else {
            assert_eq!(
                p,
                image.get_pixel(x, y),
                "pixel ({x}, {y}) outside the mask"
            );
        }
    }
    assert!(changed > 0, "nothing changed inside the mask");
    assert_eq!(a, run(3), "same seed, same image");
    assert_ne!(a, run(4), "another seed, another image");

    let remove = EditAction {
        op: EditOp::Remove,
        ..action.clone()
    };
    let err = pollster::block_on(editor.edit(EditRequest {
        image: &image,
        mask: &mask,
        action: &remove,
        seed: 0,
    }));
    assert!(err.is_err());
}
