//! SAM (ViT) against transformers 5.24 on the tiny random checkpoint written by
//! `tools/parity/sam.py tiny`: preprocessing (pixel values), image embeddings, and for point,
//! box and point+box prompt batches the low-resolution logits (`pred_masks`), `iou_scores`
//! and the post-processed binary masks in original pixels.
//!
//! `SAM_FIXTURE=<dir>` runs the same checks on another fixture folder (the full-size one
//! written by `tools/parity/sam_full.sh`), with `SAM_TOL_SCALE` widening the bounds.

use std::collections::HashMap;
use std::path::PathBuf;

use burn::tensor::Tensor;
use cielr_scene::sam::{SamModel, SamPrompt};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

type B = cielr_core::backend::CpuBackend;

fn fixture_dir() -> PathBuf {
    match std::env::var("SAM_FIXTURE") {
        Ok(d) => PathBuf::from(d),
        Err(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sam-tiny"),
    }
}

fn tol_scale() -> f32 {
    std::env::var("SAM_TOL_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

fn read_refs(path: PathBuf) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
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

fn compare<const D: usize>(
    name: &str,
    ours: Tensor<B, D>,
    reference: &(Vec<usize>, Vec<f32>),
    bound: f32,
) {
    assert_eq!(ours.dims().to_vec(), reference.0, "{name}: shape");
    let v = ours.into_data().to_vec::<f32>().unwrap();
    let (abs, rel) = errors(&v, &reference.1);
    println!("{name:32} max abs {abs:.2e}  max rel {rel:.2e}");
    if std::env::var("SAM_NO_ASSERT").is_err() {
        assert!(
            abs <= bound * tol_scale(),
            "{name}: max abs error {abs:.3e} > {bound:.1e}"
        );
    }
}

#[derive(serde::Deserialize)]
struct Case {
    points: Option<Vec<Vec<[f64; 2]>>>,
    labels: Option<Vec<Vec<i64>>>,
    boxes: Option<Vec<[f64; 4]>>,
    multimask: bool,
    #[serde(default)]
    mask: bool,
}

fn prompts_of(case: &Case) -> Vec<SamPrompt> {
    let n = case
        .points
        .as_ref()
        .map(|p| p.len())
        .or(case.boxes.as_ref().map(|b| b.len()))
        .unwrap();
    (0..n)
        .map(|i| SamPrompt {
            points: match (&case.points, &case.labels) {
                (Some(p), Some(l)) => p[i]
                    .iter()
                    .zip(&l[i])
                    .map(|(q, &l)| (q[0], q[1], l))
                    .collect(),
                _ => Vec::new(),
            },
            bbox: case.boxes.as_ref().map(|b| b[i]),
        })
        .collect()
}

#[test]
fn sam_matches_transformers() {
    let dir = fixture_dir();
    let device = Default::default();
    let model = SamModel::<B>::load(&dir, &device).expect("load");
    let refs = read_refs(dir.join("reference.safetensors"));
    let image = image::open(dir.join("image.png")).expect("image");

    // Preprocessing.
    let pixels = model.processor.preprocess(&image).unwrap();
    let pv = cielr_scene::sam::SamProcessor::to_tensor::<B>(&pixels, &device);
    compare("pixel_values", pv.clone(), &refs["pixel_values"], 1e-5);

    // Image embeddings.
    let emb = model.image_embeddings(pv).unwrap();
    compare("image_embeddings", emb, &refs["image_embeddings"], 2e-5);
    let t = std::time::Instant::now();
    let ours_embedding = model.embed_image(&image).unwrap();
    println!(
        "embed_image (preprocessing + image encoder): {:.3} s",
        t.elapsed().as_secs_f64()
    );
    // The decoder is checked on the reference embedding, so that its error is its own; the
    // end-to-end masks from our embedding are checked too (below).
    let (eshape, evals) = &refs["image_embeddings"];
    let embedding = cielr_scene::sam::ImageEmbedding::<B> {
        embedding: Tensor::from_data(
            burn::tensor::TensorData::new(evals.clone(), [eshape[1], eshape[2], eshape[3]]),
            &device,
        ),
        original_size: ours_embedding.original_size,
        reshaped_size: ours_embedding.reshaped_size,
    };

    let cases: HashMap<String, Case> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("prompts.json")).unwrap()).unwrap();
    let mut names: Vec<_> = cases.keys().cloned().collect();
    names.sort();
    for name in names {
        let case = &cases[&name];
        let mask_input = case.mask.then(|| {
            let (shape, v) = &refs[&format!("{name}.input_masks")];
            let s4 = shape[shape.len() - 1];
            Tensor::<B, 4>::from_data(
                burn::tensor::TensorData::new(v.clone(), [1, 1, s4, s4]),
                &device,
            )
        });
        let run = |e: &cielr_scene::sam::ImageEmbedding<B>| match &mask_input {
            Some(m) => model
                .predict_with_mask(e, &prompts_of(case), m.clone(), case.multimask)
                .unwrap(),
            None => model.predict(e, &prompts_of(case), case.multimask).unwrap(),
        };
        let pred = run(&embedding);
        compare(
            &format!("{name}.pred_masks"),
            pred.low_res_logits.clone(),
            &refs[&format!("{name}.pred_masks")],
            1e-4,
        );
        compare(
            &format!("{name}.iou_scores"),
            pred.iou_scores.clone(),
            &refs[&format!("{name}.iou_scores")],
            1e-5,
        );

        // End to end, from our own image embedding.
        let e2e = run(&ours_embedding);
        compare(
            &format!("{name}.pred_masks (end to end)"),
            e2e.low_res_logits,
            &refs[&format!("{name}.pred_masks")],
            1e-4,
        );

        // Binary masks: count disagreeing pixels; any must sit where the reference logit is
        // within rounding of the threshold.
        let logits = pred.upscaled_logits(&model.processor).unwrap();
        let dims = logits.dims();
        let lv = logits.into_data().to_vec::<f32>().unwrap();
        let masks = pred.masks(&model.processor).unwrap();
        let (shape, want) = &refs[&format!("{name}.masks")];
        assert_eq!(&dims.to_vec(), shape, "{name}: mask shape");
        let (h, w) = (dims[2], dims[3]);
        let mut differ = 0usize;
        for (k, &want_px) in want.iter().enumerate() {
            let (i, j) = (k / (dims[1] * h * w), (k / (h * w)) % dims[1]);
            let (y, x) = ((k / w) % h, k % w);
            let ours = masks[i][j].get(x as u32, y as u32);
            assert_eq!(ours, lv[k] > 0.0);
            if ours != (want_px > 0.5) {
                differ += 1;
                assert!(
                    lv[k].abs() < 1e-4 * tol_scale(),
                    "{name}: pixel {k} differs with logit {}",
                    lv[k]
                );
            }
        }
        println!(
            "{name:32} binary masks: {differ} of {} pixels differ",
            want.len()
        );
        assert!(
            differ * 10_000 <= want.len(),
            "{name}: {differ} pixels differ"
        );
    }
}

#[test]
fn bad_prompts_are_errors() {
    let dir = fixture_dir();
    let device = Default::default();
    let model = SamModel::<B>::load(&dir, &device).expect("load");
    let image = image::open(dir.join("image.png")).expect("image");
    let embedding = model.embed_image(&image).unwrap();
    assert!(model.predict(&embedding, &[], true).is_err());
    let mixed = [
        SamPrompt::point(1.0, 2.0),
        SamPrompt::bbox(0.0, 0.0, 5.0, 5.0),
    ];
    assert!(model.predict(&embedding, &mixed, true).is_err());
    assert!(model
        .predict(&embedding, &[SamPrompt::default()], true)
        .is_err());
    assert!(model
        .predict(&embedding, &[SamPrompt::point(f64::NAN, 1.0)], true)
        .is_err());
}

#[test]
fn checkpoint_mismatches_are_named() {
    let dir = fixture_dir();
    let store = cielr_core::weights::TensorStore::open(&dir).unwrap();
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let proc_config =
        cielr_scene::sam::SamProcessorConfig::from_file(dir.join("preprocessor_config.json"))
            .unwrap();

    // A wider MLP than the checkpoint's: the error names the first tensor that disagrees.
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["vision_config"]["mlp_dim"] = serde_json::json!(96);
    let config: cielr_scene::sam::SamConfig = serde_json::from_value(v).unwrap();
    let err = SamModel::<B>::from_store(config, proc_config.clone(), &store, &Default::default())
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("vision_encoder.layers.0.mlp.lin1.weight"),
        "{err}"
    );

    // Inconsistent widths are a config error before any tensor is read.
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["prompt_encoder_config"]["hidden_size"] = serde_json::json!(64);
    let config: cielr_scene::sam::SamConfig = serde_json::from_value(v).unwrap();
    let err =
        SamModel::<B>::from_store(config, proc_config, &store, &Default::default()).unwrap_err();
    assert!(
        matches!(err, cielr_scene::SceneError::Config { .. }),
        "{err}"
    );
}

/// Regression: a huge `pad_size` / `longest_edge` in `preprocessor_config.json` used to
/// allocate `3 * pad_h * pad_w` floats per image before anything failed.
#[test]
fn huge_processor_sizes_are_config_errors() {
    use cielr_scene::sam::SamProcessorConfig;
    let huge = serde_json::json!({
        "size": {"longest_edge": 200_000},
        "pad_size": {"height": 200_000, "width": 200_000}
    });
    let err = SamProcessorConfig::from_json(&huge).unwrap_err();
    assert!(err.to_string().contains("exceed"), "{err}");
    let ok = serde_json::json!({
        "size": {"longest_edge": 1024},
        "pad_size": {"height": 1024, "width": 1024}
    });
    assert!(SamProcessorConfig::from_json(&ok).is_ok());
}

/// Regression: `upscale_logits` (public, sizes from the caller) narrowed the padded logits
/// to `reshaped_size` unchecked and panicked when it exceeded the pad size.
#[test]
fn upscaling_with_sizes_that_do_not_fit_is_an_error() {
    use cielr_scene::sam::{SamProcessor, SamProcessorConfig};
    let processor = SamProcessor::new(SamProcessorConfig::default());
    let device = Default::default();
    let low = || Tensor::<B, 4>::zeros([1, 1, 8, 8], &device);
    let (ph, pw) = processor.config().pad_size;
    let e = processor
        .upscale_logits(low(), (10, 10), (ph + 1, pw))
        .unwrap_err();
    assert!(e.to_string().contains("must fit the pad"), "{e}");
    assert!(processor.upscale_logits(low(), (0, 10), (8, 8)).is_err());
    let up = processor.upscale_logits(low(), (12, 10), (8, 8)).unwrap();
    assert_eq!(up.dims(), [1, 1, 12, 10]);
}
