//! `Owlv2ForObjectDetection` parity with transformers 5.24 on a tiny random checkpoint written
//! by `tools/parity/owlv2.py tiny` (fixtures/owlv2-tiny: text and vision towers 32 wide, 2
//! layers, 80x80 input with 16-pixel patches = 5x5 boxes, synthetic CLIP BPE tokenizer padded
//! with "!"). Everything runs from the photo and the query strings through our processor and
//! tokenizer: pixel values, token ids, image features, class embeddings, logits, objectness,
//! boxes and the post-processed detections are compared with transformers'.

mod clip_common;

use cielr_scene::owlv2::{Owlv2Config, Owlv2Detector, Owlv2ImageProcessor};
use clip_common::*;
use serde_json::Value;

const TOL: f32 = 1e-4;

fn meta() -> Value {
    let text = std::fs::read_to_string(fixture("owlv2-tiny").join("queries.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn repo_path(rel: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

#[test]
fn owlv2_preprocessing_matches_transformers() {
    let dir = fixture("owlv2-tiny");
    let refs = read_refs(dir.join("reference.safetensors"));
    let meta = meta();
    let proc = Owlv2ImageProcessor::from_file(dir.join("preprocessor_config.json")).unwrap();
    assert_eq!((proc.height, proc.width), (80, 80));
    assert_eq!(proc.pad_value, 0.0);
    let mut cases = vec![(
        "pixel_values",
        meta["image"].as_str().unwrap().to_string(),
        0.0,
    )];
    for (key, case) in meta["preprocess_images"].as_object().unwrap() {
        let path = case["image"].as_str().unwrap().to_string();
        cases.push((
            key.as_str(),
            path,
            case["pad_value"].as_f64().unwrap() as f32,
        ));
    }
    assert_eq!(cases.len(), 3);
    for (key, path, pad_value) in cases {
        let image = image::open(repo_path(&path)).unwrap();
        let px = Owlv2ImageProcessor {
            pad_value,
            ..proc.clone()
        }
        .preprocess(&image)
        .unwrap();
        let r = &refs[key];
        assert_eq!(r.shape, vec![1, 3, px.height, px.width], "{key}");
        compare_slices(&format!("{key} ({path})"), &px.data, &r.f32, 1e-5);
    }
}

#[test]
fn owlv2_detection_matches_transformers() {
    let dir = fixture("owlv2-tiny");
    let refs = read_refs(dir.join("reference.safetensors"));
    let meta = meta();
    let queries: Vec<&str> = meta["queries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q.as_str().unwrap())
        .collect();
    let threshold = meta["threshold"].as_f64().unwrap() as f32;

    let config = Owlv2Config::from_file(dir.join("config.json")).unwrap();
    assert_eq!(config.grid_size(), 5);
    let det = Owlv2Detector::<B>::from_pretrained(&dir, &device()).unwrap();

    // Tokenizer: Owlv2Processor's ids and mask (max_length 16, "!" padding).
    let batch = det.tokenizer().encode(&queries).unwrap();
    let ids: Vec<i64> = batch.ids.iter().flatten().map(|&x| x as i64).collect();
    let mask: Vec<i64> = batch
        .attention_mask
        .iter()
        .flatten()
        .map(|&x| x as i64)
        .collect();
    assert_eq!(ids, refs["input_ids"].i64, "input_ids");
    assert_eq!(mask, refs["attention_mask"].i64, "attention_mask");
    assert_eq!(refs["input_ids"].shape, vec![queries.len(), 16]);

    let image = image::open(repo_path(meta["image"].as_str().unwrap())).unwrap();
    let emb = det.embed_image(&image).unwrap();
    assert_eq!(emb.original_size, (300, 451));
    assert_eq!(emb.padded_side, 451);
    let d = emb.image_feats.dims()[1];
    compare(
        "image_embeds [1,5,5,d]",
        emb.image_feats.clone().reshape([1, 5, 5, d]),
        &refs["image_embeds"],
        TOL,
    );
    compare(
        "class_embeds",
        emb.class_embeds.clone().unsqueeze_dim::<3>(0),
        &refs["class_embeds"],
        TOL,
    );
    compare(
        "objectness_logits",
        emb.objectness_logits.clone().unsqueeze_dim::<2>(0),
        &refs["objectness_logits"],
        TOL,
    );
    compare(
        "pred_boxes",
        emb.pred_boxes.clone().unsqueeze_dim::<3>(0),
        &refs["pred_boxes"],
        TOL,
    );

    // Queries, cached: a second call with a repeated and a new string embeds only the new one.
    let q = det.embed_queries(&queries).unwrap();
    assert_eq!(det.cached_queries(), queries.len());
    let dim = q.dim;
    compare_slices("text_embeds", &q.embeds, &refs["text_embeds"].f32, TOL);
    assert_eq!(refs["text_embeds"].shape, vec![1, queries.len(), dim]);
    let again = det.embed_queries(&[queries[1], "a new query"]).unwrap();
    assert_eq!(det.cached_queries(), queries.len() + 1);
    assert_eq!(&again.embeds[..dim], &q.embeds[dim..2 * dim]);

    let logits = det.logits(&emb, &q).unwrap();
    compare("logits", logits.unsqueeze_dim::<3>(0), &refs["logits"], TOL);

    // Post-processing: same boxes kept, same labels, scores and pixel boxes.
    let dets = det.detect(&emb, &q, threshold).unwrap();
    let n = meta["detections"].as_u64().unwrap() as usize;
    assert!(n > 0 && n < 25, "fixture keeps {n} of 25 boxes");
    assert_eq!(dets.len(), n, "number of detections above {threshold}");
    let labels: Vec<i64> = dets.iter().map(|d| d.query as i64).collect();
    assert_eq!(labels, refs["det_labels"].i64, "labels");
    for d in &dets {
        assert_eq!(d.label, queries[d.query]);
        assert!(d.objectness > 0.0 && d.objectness < 1.0);
    }
    let scores: Vec<f32> = dets.iter().map(|d| d.score).collect();
    compare_slices("det_scores", &scores, &refs["det_scores"].f32, TOL);
    let boxes: Vec<f32> = dets.iter().flat_map(|d| d.bbox).collect();
    // Pixel boxes are relative boxes times 451: 1e-4 relative becomes ~5e-2 pixels at most.
    compare_slices(
        "det_boxes (pixels)",
        &boxes,
        &refs["det_boxes"].f32,
        451.0 * TOL,
    );
    for d in &dets {
        println!(
            "  patch {:2} {:>18} score {:.4} objectness {:.4} box {:?}",
            d.patch, d.label, d.score, d.objectness, d.bbox
        );
    }
    assert!(det
        .detect(&emb, &det.embed_queries(&[]).unwrap(), 0.0)
        .unwrap()
        .is_empty());
}

#[test]
fn owlv2_bad_checkpoint_shapes_name_the_tensor() {
    let dir = fixture("owlv2-tiny");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    cfg["vision_config"]["hidden_size"] = Value::from(64);
    cfg["vision_config"]["num_attention_heads"] = Value::from(2);
    let config = Owlv2Config::from_json(&cfg).unwrap();
    let ckpt = cielr_scene::clip::Checkpoint::open(&dir).unwrap();
    let err =
        cielr_scene::owlv2::Owlv2ForObjectDetection::<B>::load(&ckpt.weights(), &config, &device())
            .unwrap_err()
            .to_string();
    assert!(err.contains("owlv2.vision_model."), "{err}");
}
