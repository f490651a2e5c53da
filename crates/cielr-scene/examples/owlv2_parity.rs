//! Full-size OWLv2 parity and timing against transformers (run by `tools/parity/owlv2_full.sh`).
//!
//! `cargo run --release -p cielr-scene --example owlv2_parity -- DIR` where DIR was written by
//! `tools/parity/owlv2.py full DIR` (google/owlv2-base-patch16-ensemble dimensions, random
//! weights, 960x960): preprocesses the photo named in `DIR/queries.json`, embeds it and the
//! queries, prints max abs / max relative errors of every output against transformers and the
//! post-processed detections, times each stage (and shows torch's from
//! `DIR/torch_timings.json` if present), and exits with status 1 if an error exceeds the
//! tolerance or the detections differ.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cielr_core::backend::CpuBackend as B;
use cielr_scene::owlv2::Owlv2Detector;
use safetensors::tensor::Dtype;

const TOL: f32 = 1e-3;

struct Ref {
    shape: Vec<usize>,
    f32: Vec<f32>,
    i64: Vec<i64>,
}

fn read_refs(path: &Path) -> HashMap<String, Ref> {
    let bytes = std::fs::read(path).expect("reference.safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let data = view.data();
            let (f, i) = match view.dtype() {
                Dtype::F32 => (
                    data.chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect(),
                    vec![],
                ),
                Dtype::I64 => (
                    vec![],
                    data.chunks_exact(8)
                        .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                        .collect(),
                ),
                other => panic!("unexpected dtype {other:?} for {name}"),
            };
            let r = Ref {
                shape: view.shape().to_vec(),
                f32: f,
                i64: i,
            };
            (name, r)
        })
        .collect()
}

/// Prints max abs / max rel (|a - b| / max(|b|, 1e-3)) and returns whether abs <= `tol`.
fn report(label: &str, ours: &[f32], reference: &[f32], tol: f32) -> bool {
    assert_eq!(ours.len(), reference.len(), "{label}: length");
    let (mut abs, mut rel) = (0f32, 0f32);
    for (a, b) in ours.iter().zip(reference) {
        let d = (a - b).abs();
        abs = abs.max(if d.is_nan() { f32::INFINITY } else { d });
        rel = rel.max(d / b.abs().max(1e-3));
    }
    let ok = abs <= tol;
    println!(
        "{label:<28} max abs {abs:.3e}  max rel {rel:.3e}  (n = {}){}",
        ours.len(),
        if ok { "" } else { "  FAIL" }
    );
    ok
}

fn secs<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed().as_secs_f64())
}

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).expect("usage: owlv2_parity DIR"));
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("queries.json")).expect("json"))
            .expect("queries.json");
    let refs = read_refs(&dir.join("reference.safetensors"));
    let queries: Vec<&str> = meta["queries"]
        .as_array()
        .expect("queries")
        .iter()
        .filter_map(|q| q.as_str())
        .collect();
    let threshold = meta["threshold"].as_f64().expect("threshold") as f32;
    let device = Default::default();

    let (det, t_load) = secs(|| Owlv2Detector::<B>::from_pretrained(&dir, &device).expect("load"));
    let image = image::open(repo.join(meta["image"].as_str().expect("image"))).expect("image");
    let mut ok = true;

    let (px, t_pre) = secs(|| det.processor().preprocess(&image).expect("preprocess"));
    ok &= report("pixel_values", &px.data, &refs["pixel_values"].f32, 1e-5);

    // Warm-up, then the timed call.
    det.embed_image(&image).expect("embed_image");
    let (emb, t_img) = secs(|| det.embed_image(&image).expect("embed_image"));
    let values = |t: burn::tensor::Tensor<B, 2>| t.into_data().iter::<f32>().collect::<Vec<_>>();
    ok &= report(
        "image_embeds",
        &values(emb.image_feats.clone()),
        &refs["image_embeds"].f32,
        TOL,
    );
    ok &= report(
        "class_embeds",
        &values(emb.class_embeds.clone()),
        &refs["class_embeds"].f32,
        TOL,
    );
    ok &= report(
        "objectness_logits",
        &values(emb.objectness_logits.clone().unsqueeze_dim(0)),
        &refs["objectness_logits"].f32,
        TOL,
    );
    ok &= report(
        "pred_boxes",
        &values(emb.pred_boxes.clone()),
        &refs["pred_boxes"].f32,
        TOL,
    );

    let batch = det.tokenizer().encode(&queries).expect("tokenize");
    let ids: Vec<i64> = batch.ids.iter().flatten().map(|&x| x as i64).collect();
    if ids != refs["input_ids"].i64 {
        println!("input_ids differ: FAIL");
        ok = false;
    }
    let (q, t_text) = secs(|| det.embed_queries(&queries).expect("embed_queries"));
    ok &= report("text_embeds", &q.embeds, &refs["text_embeds"].f32, TOL);
    let (_, t_cached) = secs(|| det.embed_queries(&queries).expect("cached"));
    let logits = det.logits(&emb, &q).expect("logits");
    ok &= report("logits", &values(logits), &refs["logits"].f32, TOL);

    let (dets, t_det) = secs(|| det.detect(&emb, &q, threshold).expect("detect"));
    let labels: Vec<i64> = dets.iter().map(|d| d.query as i64).collect();
    let same = labels == refs["det_labels"].i64 && dets.len() * 4 == refs["det_boxes"].f32.len();
    println!(
        "detections: {} ours, {} transformers (threshold {threshold:.4}), labels {}",
        dets.len(),
        refs["det_labels"].shape[0],
        if same { "equal" } else { "DIFFER" }
    );
    ok &= same;
    if same {
        let scores: Vec<f32> = dets.iter().map(|d| d.score).collect();
        ok &= report("det_scores", &scores, &refs["det_scores"].f32, TOL);
        let boxes: Vec<f32> = dets.iter().flat_map(|d| d.bbox).collect();
        let side = emb.padded_side as f32;
        ok &= report(
            "det_boxes (pixels)",
            &boxes,
            &refs["det_boxes"].f32,
            TOL * side,
        );
    }

    println!(
        "\ntimings (s, one call after a warm-up; {} patches, {} queries):",
        emb.grid.0 * emb.grid.1,
        queries.len()
    );
    println!("  load            {t_load:.3}");
    println!("  preprocess      {t_pre:.3}");
    println!("  embed_image     {t_img:.3}");
    println!("  embed_queries   {t_text:.3} (cached repeat {t_cached:.6})");
    println!("  detect          {t_det:.4}");
    if let Ok(t) = std::fs::read_to_string(dir.join("torch_timings.json")) {
        println!("torch (torch_timings.json): {t}");
    }
    if !ok {
        eprintln!("OWLv2 full-size parity FAILED (tolerance {TOL})");
        std::process::exit(1);
    }
    println!("OWLv2 full-size parity OK (tolerance {TOL})");
}
