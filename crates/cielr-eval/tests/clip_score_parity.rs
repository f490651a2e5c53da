//! CLIPScore parity with torchmetrics' `CLIPScore`, reference values from
//! `tools/eval/clip_score_reference.py` (`fixtures/clip_score/reference.json`).
//!
//! The models are the tiny RANDOM CLIP checkpoints committed for cielr-scene's CLIP parity
//! (`crates/cielr-scene/tests/fixtures/clip-tiny-*`, one with f32 and one with f16 weights):
//! random weights are fine for parity, the test checks the computation, not CLIP's judgement.
//! Inputs: a real photo (`assets/coffee.png`) with real hand-drawn masks (the cup and the
//! spoon of `assets/coffee.ssr.json`, as PNGs), at the photo's size and at the protocol's
//! 512. With random weights some cosines are negative: those cases check the clamp to 0 and
//! the raw cosine.

use std::path::{Path, PathBuf};

use cielr_core::backend::CpuBackend;
use cielr_core::mask::Mask;
use cielr_core::traits::{Metric, MetricInput};
use cielr_eval::clip_score::{clip_score_from_cosine, dot, mask_box, protocol_crop, ClipScorer};
use cielr_eval::ClipScore;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip_score")
}

fn model_dir(name: &str) -> PathBuf {
    root().join("crates/cielr-scene/tests/fixtures").join(name)
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// transformers' `pixel_values` of case `i`, `[3, h, w]` flattened.
fn reference_pixels(i: usize) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(fixtures().join("pixel_values.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(&format!("case{i}")).unwrap();
    let v = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (t.shape().to_vec(), v)
}

fn max_abs(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, y)| (x as f64 - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn clip_score_matches_torchmetrics() {
    let start = std::time::Instant::now();
    let refs: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference.json")).unwrap())
            .unwrap();
    let (mut worst_model, mut worst_embed, mut worst_e2e) = (0f64, 0f64, 0f64);
    let mut clamped = 0;
    for (i, case) in refs.as_array().unwrap().iter().enumerate() {
        let model = case["model"].as_str().unwrap();
        let scorer =
            ClipScorer::<CpuBackend>::from_pretrained(model_dir(model), &Default::default())
                .unwrap();
        let image = image::open(root().join(case["image"].as_str().unwrap()))
            .unwrap()
            .to_rgb8();
        let mask = image::open(fixtures().join(case["mask"].as_str().unwrap()))
            .unwrap()
            .to_luma8();
        let size = case["size"].as_u64().map(|s| s as u32);
        let text = case["text"].as_str().unwrap();
        let label = format!("case{i} {model} {} size {size:?} {text:?}", case["mask"]);

        // The crop box (after the protocol's resize) is torchmetrics'.
        let resized_mask = match size {
            Some(s) => cielr_eval::resize_nearest(&mask, s, s).unwrap(),
            None => mask.clone(),
        };
        let (x0, y0, x1, y1) = mask_box(&resized_mask).unwrap();
        let want_box: Vec<u32> = case["box"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(vec![x0, y0, x1, y1], want_box, "{label}: box");

        // The model alone, on transformers' pixel values and our tokenizer.
        let (shape, ref_pixels) = reference_pixels(i);
        let ref_tensor = burn::tensor::Tensor::<CpuBackend, 1>::from_floats(
            ref_pixels.as_slice(),
            &Default::default(),
        )
        .reshape([1, shape[0], shape[1], shape[2]]);
        let img_e = scorer.image_embedding(ref_tensor).unwrap();
        let txt_e = scorer.text_embedding(text).unwrap();
        let e = max_abs(&img_e, &floats(&case["image_embeds"]))
            .max(max_abs(&txt_e, &floats(&case["text_embeds"])));
        worst_embed = worst_embed.max(e);
        let model_score = clip_score_from_cosine(dot(&img_e, &txt_e));
        let want = case["clip_score"].as_f64().unwrap();
        let want_cos = case["cos"].as_f64().unwrap();
        assert!(
            (dot(&img_e, &txt_e) - want_cos).abs() < 1e-5,
            "{label}: cos"
        );
        assert!((model_score - want).abs() < 1e-3, "{label}: score");
        worst_model = worst_model.max((model_score - want).abs());

        // End to end: our crop and preprocessing.
        let crop = protocol_crop(&image, Some(&mask), size).unwrap();
        let ours_pixels = scorer.pixel_values(&crop).unwrap();
        let ours_pixels: Vec<f32> = ours_pixels.into_data().into_vec().unwrap();
        let px_diff = ours_pixels
            .iter()
            .zip(&ref_pixels)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let cos = scorer.cosine(&crop, text).unwrap();
        let score = clip_score_from_cosine(cos);
        let e2e = (score - want).abs();
        println!(
            "{label}: score {score:.5} vs torchmetrics {want:.5} (cos {cos:.7} vs {want_cos:.7}); \
             model alone on transformers' pixels: {model_score:.5}, embeddings max abs {e:.1e}; \
             pixel_values max abs diff {px_diff:.1e}"
        );
        // Byte-exact preprocessing (Pillow's resize in both pass orders, see cielr-scene's
        // `tests/pillow_resize.rs`), so the end-to-end score matches too.
        assert!(px_diff <= 1e-6, "{label}: pixel_values differ by {px_diff}");
        assert!(e2e < 1e-3, "{label}: end-to-end score off by {e2e}");
        worst_e2e = worst_e2e.max(e2e);
        if want == 0.0 {
            clamped += 1;
            assert_eq!(score, 0.0);
        }
    }
    assert!(clamped >= 1 && clamped < refs.as_array().unwrap().len());
    println!(
        "worst abs: model-alone score {worst_model:.2e} (of 100), normalised embeddings \
         {worst_embed:.2e}, end-to-end score {worst_e2e:.2e}; {:.1?}",
        start.elapsed()
    );
    assert!(worst_embed < 1e-5);
}

#[test]
fn metric_wrapper_and_errors() {
    let refs: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference.json")).unwrap())
            .unwrap();
    // The first case (native size, positive score) through the Metric trait, with the mask as
    // a binary Mask.
    let case = &refs[0];
    let image = image::open(root().join(case["image"].as_str().unwrap()))
        .unwrap()
        .to_rgb8();
    let gray = image::open(fixtures().join(case["mask"].as_str().unwrap()))
        .unwrap()
        .to_luma8();
    let mask = Mask::from_gray(&gray, 1).unwrap();
    let metric =
        ClipScore::from_pretrained(model_dir(case["model"].as_str().unwrap()), None).unwrap();
    assert_eq!(metric.name(), "clip");
    assert!(metric.higher_is_better());
    let input = MetricInput {
        original: &image,
        edited: &image,
        mask: Some(&mask),
        text: case["text"].as_str(),
    };
    let v = metric.compute(input).unwrap();
    let want = case["clip_score"].as_f64().unwrap();
    assert!(want > 0.0 && (v - want).abs() < 1e-3, "{v} vs {want}");

    // No text, no checkpoint, an empty mask: errors, never a number.
    let err = metric
        .compute(MetricInput {
            text: None,
            ..input
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("no target text"), "{err}");
    let none = ClipScore::new(None, Some(512)).unwrap();
    let err = none.compute(input).unwrap_err().to_string();
    assert!(err.contains("no CLIP checkpoint"), "{err}");
    let empty = Mask::new(image.width(), image.height()).unwrap();
    let err = metric
        .compute(MetricInput {
            mask: Some(&empty),
            ..input
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("mask is empty"), "{err}");
    let err = ClipScore::from_pretrained(fixtures(), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("config.json"), "{err}");
}
