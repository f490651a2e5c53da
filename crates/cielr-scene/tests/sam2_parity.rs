//! SAM 2.1 (Hiera) against transformers 5.24 on the tiny random checkpoint written by
//! `tools/parity/sam2.py tiny`: preprocessing, Hiera stage outputs, the lowest FPN level, the
//! three image embeddings, and for point / box / point+box / point+mask prompt batches (with
//! and without multimask output, the single-mask ones going through the dynamic
//! stability-based selection) the low-resolution logits, IoU scores, object-score logits and
//! the post-processed binary masks.
//!
//! `SAM2_FIXTURE=<dir>` runs the same checks on another fixture folder (the full-size one from
//! `tools/parity/sam2_full.sh`), `SAM2_TOL_SCALE` widens the bounds.

use std::collections::HashMap;
use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};
use cielr_scene::sam2::{Sam2Model, Sam2Prompt};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use serde_json::Value;

type B = cielr_core::backend::CpuBackend;
type Refs = HashMap<String, (Vec<usize>, Vec<f32>)>;

fn fixture_dir() -> PathBuf {
    match std::env::var("SAM2_FIXTURE") {
        Ok(d) => PathBuf::from(d),
        Err(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sam2-tiny"),
    }
}

fn tol_scale() -> f32 {
    std::env::var("SAM2_TOL_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

fn read_refs(path: PathBuf) -> Refs {
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let d = view.data();
        let v: Vec<f32> = match view.dtype() {
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => d
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::U8 => d.iter().map(|&b| b as f32).collect(),
            other => panic!("unexpected dtype {other:?} for {name}"),
        };
        out.insert(name.to_string(), (view.shape().to_vec(), v));
    }
    out
}

/// Max abs error and max relative error (`|a - b| / max(|b|, 1e-3)`).
fn errors(ours: &[f32], reference: &[f32]) -> (f32, f32) {
    assert_eq!(ours.len(), reference.len(), "length mismatch");
    let mut abs = 0f32;
    let mut rel = 0f32;
    for (a, b) in ours.iter().zip(reference) {
        let e = (a - b).abs();
        abs = abs.max(e);
        rel = rel.max(e / b.abs().max(1e-3));
    }
    (abs, rel)
}

fn compare<const D: usize>(name: &str, ours: Tensor<B, D>, refs: &Refs, key: &str, bound: f32) {
    let reference = refs
        .get(key)
        .unwrap_or_else(|| panic!("{key} missing from the fixture"));
    assert_eq!(ours.dims().to_vec(), reference.0, "{name}: shape");
    let v = ours.into_data().to_vec::<f32>().unwrap();
    let (abs, rel) = errors(&v, &reference.1);
    println!("{name:34} max abs {abs:.2e}  max rel {rel:.2e}");
    if std::env::var("SAM2_NO_ASSERT").is_err() {
        assert!(
            abs <= bound * tol_scale(),
            "{name}: max abs error {abs:.3e} > {bound:.1e}"
        );
    }
}

fn to_tensor<const D: usize>(r: &(Vec<usize>, Vec<f32>)) -> Tensor<B, D> {
    let shape: [usize; D] = r.0.clone().try_into().expect("rank");
    Tensor::from_data(TensorData::new(r.1.clone(), shape), &Default::default())
}

fn prompts_of(case: &Value) -> Vec<Sam2Prompt> {
    let pts = case["points"].as_array();
    let boxes = case["boxes"].as_array();
    let n = pts.map(|p| p.len()).or(boxes.map(|b| b.len())).unwrap();
    (0..n)
        .map(|i| Sam2Prompt {
            points: pts
                .map(|p| {
                    p[i].as_array()
                        .unwrap()
                        .iter()
                        .map(|q| {
                            (
                                q[0].as_f64().unwrap(),
                                q[1].as_f64().unwrap(),
                                q[2].as_i64().unwrap(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            bbox: boxes.map(|b| {
                let v: Vec<f64> = b[i]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect();
                [v[0], v[1], v[2], v[3]]
            }),
        })
        .collect()
}

#[test]
fn sam2_matches_transformers() {
    let dir = fixture_dir();
    let device = Default::default();
    let model = Sam2Model::<B>::load(&dir, &device).expect("load");
    let refs = read_refs(dir.join("reference.safetensors"));
    let image = image::open(dir.join("image.png")).expect("image");

    // Preprocessing. The reference is stored in float16, so the bound is f16 rounding.
    let (px, orig) = model.processor.preprocess(&image).expect("preprocess");
    let pv_ref = &refs["pixel_values"];
    assert_eq!(orig, (image.height() as usize, image.width() as usize));
    let (abs, _) = errors(&px, &pv_ref.1);
    println!("{:34} max abs {abs:.2e}", "pixel_values (vs f16 reference)");
    assert!(abs <= 4e-3, "pixel values differ by {abs}");

    // The encoder on the reference pixel values.
    let pv: Tensor<B, 4> = to_tensor(pv_ref);
    let stages = model.backbone_features(pv.clone());
    for i in [1usize, 3] {
        let key = format!("backbone.{i}");
        if refs.contains_key(&key) {
            compare(&key, stages[i].clone(), &refs, &key, 2e-5);
        }
    }
    let fpn = model.fpn_features(pv.clone());
    compare("fpn.2", fpn[2].clone(), &refs, "fpn.2", 2e-5);
    let emb = model.embed_pixels(pv, orig).expect("embed");
    compare(
        "image_embeddings.0 (conv_s0)",
        emb.feat_s0.clone().unsqueeze_dim::<4>(0),
        &refs,
        "image_embeddings.0",
        2e-5,
    );
    compare(
        "image_embeddings.1 (conv_s1)",
        emb.feat_s1.clone().unsqueeze_dim::<4>(0),
        &refs,
        "image_embeddings.1",
        2e-5,
    );
    compare(
        "image_embeddings.2 (+no_memory)",
        emb.embedding.clone().unsqueeze_dim::<4>(0),
        &refs,
        "image_embeddings.2",
        2e-5,
    );

    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("prompts.json")).unwrap()).unwrap();
    let cases = cases.as_array().unwrap();
    assert!(cases.len() >= 6);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let multimask = case["multimask"].as_bool().unwrap();
        let prompts = prompts_of(case);
        let pred = if case["mask"].as_bool().unwrap() {
            let m: Tensor<B, 4> = to_tensor(&refs[&format!("{name}.input_masks")]);
            model.predict_with_mask(&emb, &prompts, m, multimask)
        } else {
            model.predict(&emb, &prompts, multimask)
        }
        .expect("predict");
        compare(
            &format!("{name}.pred_masks"),
            pred.low_res_logits.clone(),
            &refs,
            &format!("{name}.pred_masks"),
            2e-5,
        );
        compare(
            &format!("{name}.iou_scores"),
            pred.iou_scores.clone(),
            &refs,
            &format!("{name}.iou_scores"),
            1e-6,
        );
        compare(
            &format!("{name}.object_score_logits"),
            pred.object_score_logits.clone(),
            &refs,
            &format!("{name}.object_score_logits"),
            2e-6,
        );
        // Post-processed masks: count differing pixels; only pixels whose reference logit is
        // within float noise of the threshold may differ.
        let masks = pred.masks().expect("masks");
        let logits = pred.upscaled_logits().into_data().to_vec::<f32>().unwrap();
        let (shape, want) = &refs[&format!("{name}.masks")];
        let (n, m, h, w) = (shape[0], shape[1], shape[2], shape[3]);
        assert_eq!((masks.len(), masks[0].len()), (n, m));
        let mut diff = 0;
        for (i, row) in masks.iter().enumerate() {
            for (j, mask) in row.iter().enumerate() {
                for y in 0..h {
                    for x in 0..w {
                        let k = ((i * m + j) * h + y) * w + x;
                        let ours = mask.get(x as u32, y as u32);
                        if ours != (want[k] > 0.5) {
                            assert!(
                                logits[k].abs() < 1e-3,
                                "{name}: mask pixel ({i},{j},{y},{x}) differs with logit {}",
                                logits[k]
                            );
                            diff += 1;
                        }
                    }
                }
            }
        }
        let ones: usize = want.iter().filter(|&&v| v > 0.5).count();
        println!(
            "{:34} {diff} of {} pixels differ ({ones} set)",
            format!("{name}.masks"),
            want.len()
        );
        assert!(
            ones > 0 && ones < want.len(),
            "{name}: degenerate reference masks"
        );
    }
}
