//! CLIP image preprocessing against transformers' `CLIPImageProcessor` (PIL backend) on real
//! photographs: fixtures from `tools/parity/clip.py`.

mod clip_common;

use cielr_scene::preprocess::{ClipImageProcessor, ImageProcessorConfig};
use clip_common::*;
use image::DynamicImage;
use serde_json::Value;

fn load_source(name: &str) -> DynamicImage {
    let path = match name {
        "coffee" => asset("coffee.png"),
        other => fixture("clip-preprocess").join(format!("{other}.png")),
    };
    image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn cases() -> Value {
    let text = std::fs::read_to_string(fixture("clip-preprocess/cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn clip_preprocess_matches_transformers_pil_backend() {
    let refs = read_refs(fixture("clip-preprocess/reference.safetensors"));
    let cases = cases();
    let list = cases["cases"].as_array().unwrap();
    assert!(list.len() >= 10);
    for case in list {
        let name = case["name"].as_str().unwrap();
        let mut img = load_source(case["image"].as_str().unwrap());
        if let Some(b) = case["crop_box"].as_array() {
            let b: Vec<u32> = b.iter().map(|v| v.as_u64().unwrap() as u32).collect();
            img = img.crop_imm(b[0], b[1], b[2] - b[0], b[3] - b[1]);
        }
        let config = ImageProcessorConfig::from_json(&case["processor"]).unwrap();
        let proc = ClipImageProcessor::new(config).unwrap();
        let pv = proc.preprocess(&img).unwrap();
        let r = &refs[name];
        assert_eq!(vec![3, pv.height, pv.width], r.shape, "{name}: shape");
        // Exact u8 stage; the rest is f32 arithmetic in the same order as numpy.
        compare_slices(&format!("preprocess {name}"), &pv.data, &r.f32, 1e-6);
    }
}

#[test]
fn clip_preprocess_224_is_byte_exact_on_coffee() {
    let cases = cases();
    let legacy = &cases["legacy_224"];
    let config = ImageProcessorConfig::from_json(&legacy["processor"]).unwrap();
    let proc = ClipImageProcessor::new(config).unwrap();
    for entry in legacy["images"].as_array().unwrap() {
        let src = entry["image"].as_str().unwrap();
        let img = load_source(src);
        let ours = proc.resize_and_crop(&img).unwrap();
        let reference = image::open(
            fixture("clip-preprocess").join(entry["uint8_reference"].as_str().unwrap()),
        )
        .unwrap()
        .to_rgb8();
        assert_eq!(ours.dimensions(), (224, 224));
        let differing = ours
            .as_raw()
            .iter()
            .zip(reference.as_raw())
            .filter(|(a, b)| a != b)
            .count();
        let max_diff = ours
            .as_raw()
            .iter()
            .zip(reference.as_raw())
            .map(|(&a, &b)| (a as i32 - b as i32).abs())
            .max()
            .unwrap();
        println!(
            "{src} 224: u8 values differing {differing} / {}, max diff {max_diff}",
            ours.len()
        );
        assert_eq!(differing, 0, "{src}: resize + crop differs from PIL");

        let pv = proc.preprocess(&img).unwrap();
        let sum: f64 = pv.data.iter().map(|&x| x as f64).sum();
        let abs_sum: f64 = pv.data.iter().map(|&x| x.abs() as f64).sum();
        let ref_sum = entry["sum"].as_f64().unwrap();
        let ref_abs = entry["abs_sum"].as_f64().unwrap();
        println!(
            "{src} 224: sum {sum:.6} (ref {ref_sum:.6}), abs sum {abs_sum:.6} (ref {ref_abs:.6})"
        );
        assert!((sum - ref_sum).abs() < 1e-2 && (abs_sum - ref_abs).abs() < 1e-2);
        let first: Vec<f32> = entry["first"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        compare_slices(
            &format!("preprocess {src} 224 (first 16)"),
            &pv.data[..16],
            &first,
            1e-6,
        );
    }
}

#[test]
fn clip_preprocess_batch_and_errors() {
    let proc =
        ClipImageProcessor::from_file(fixture("clip-tiny-gelu/preprocessor_config.json")).unwrap();
    let coffee = load_source("coffee");
    let chelsea = load_source("chelsea_crop");
    let batch = proc
        .preprocess_batch::<B>(&[coffee.clone(), chelsea], &device())
        .unwrap();
    assert_eq!(batch.dims(), [2, 3, 32, 32]);
    assert!(proc.preprocess_batch::<B>(&[], &device()).is_err());

    // Without centre crop, differently shaped images cannot be batched.
    let mut config = proc.config().clone();
    config.do_center_crop = false;
    let uncropped = ClipImageProcessor::new(config).unwrap();
    let portrait = coffee.crop_imm(0, 0, 100, 300);
    let err = uncropped
        .preprocess_batch::<B>(&[coffee, portrait], &device())
        .unwrap_err();
    assert!(err.to_string().contains("image 1"), "{err}");

    let mut config = proc.config().clone();
    config.image_std = [0.0, 1.0, 1.0];
    assert!(ClipImageProcessor::new(config).is_err());
    assert!(ClipImageProcessor::from_file(fixture("clip-preprocess/missing.json")).is_err());
}
