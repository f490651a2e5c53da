//! Depth Anything V2 parity with transformers 5.24 on a tiny random checkpoint
//! (`tests/fixtures/depth-anything-tiny`, written by `tools/parity/depth_anything.py tiny`):
//! DPT preprocessing (the fixture's 70-pixel settings in full, the real checkpoints' 518
//! settings on 1024 sampled values plus whole-array statistics, and the resize rule on 380
//! shapes), DINOv2 feature maps, `predicted_depth` and the post-processed depth at the
//! original size, for a non-square photo (chelsea, 451x300) and a square one (astronaut, 256),
//! plus a 56x56 input that uses the stored position grid without interpolation, and the same
//! weights with a metric head. Also: both weight-name layouts, the errors for bad configs and
//! checkpoints, and the mask read-outs.

use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};
use cielr_core::backend::CpuBackend as B;
use cielr_core::mask::Mask;
use cielr_core::weights::TensorStore;
use cielr_scene::depth_anything::{
    DepthAnything, DepthAnythingConfig, DepthAnythingModel, DepthMap, DptImageProcessor,
    DptProcessorConfig,
};
use cielr_scene::SceneError;
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn tiny() -> PathBuf {
    fixture("depth-anything-tiny")
}

fn refs() -> TensorStore {
    TensorStore::open(tiny().join("reference.safetensors")).expect("reference.safetensors")
}

fn image(case: &str) -> image::DynamicImage {
    image::open(fixture("images").join(format!("{case}.png"))).expect("test photo")
}

/// Max absolute error and max relative error `|a - b| / max(|b|, 1e-3)`, printed.
fn compare(what: &str, ours: &[f32], reference: &[f32]) -> (f32, f32) {
    assert_eq!(ours.len(), reference.len(), "{what}: length");
    let (mut abs, mut rel) = (0f32, 0f32);
    for (a, b) in ours.iter().zip(reference) {
        let d = (a - b).abs();
        assert!(d.is_finite(), "{what}: non-finite value");
        abs = abs.max(d);
        rel = rel.max(d / b.abs().max(1e-3));
    }
    println!(
        "{what}: max abs {abs:.2e}, max rel {rel:.2e} ({} values)",
        ours.len()
    );
    (abs, rel)
}

fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32")
}

fn model() -> DepthAnythingModel<B> {
    DepthAnythingModel::from_pretrained(tiny(), &Default::default()).expect("tiny checkpoint")
}

#[test]
fn preprocessing_matches_transformers() {
    let r = refs();
    let p = DptImageProcessor::from_file(tiny().join("preprocessor_config.json")).unwrap();
    let p518 = DptImageProcessor::from_file(tiny().join("preprocessor_config.518.json")).unwrap();
    assert_eq!(p518.config(), &DptProcessorConfig::default());
    for case in ["chelsea", "astronaut-256"] {
        let img = image(case);
        let pv = p.preprocess(&img).unwrap();
        let (shape, reference) = r.read(&format!("{case}.pixel_values")).unwrap();
        assert_eq!(shape, [1, 3, pv.height, pv.width], "{case}: shape");
        let (abs, _) = compare(
            &format!("{case} pixel_values (size 70)"),
            &pv.data,
            &reference,
        );
        assert!(abs < 1e-6, "{case}: pixel_values differ by {abs}");

        // The real checkpoints' settings: shape, 1024 sampled values, whole-array stats.
        let pv = p518.preprocess(&img).unwrap();
        let (_, hw) = r.read(&format!("{case}.p518.shape")).unwrap();
        assert_eq!(
            [pv.height as f32, pv.width as f32],
            [hw[0], hw[1]],
            "{case}: 518 shape"
        );
        let (_, idx) = r.read(&format!("{case}.p518.idx")).unwrap();
        let (_, val) = r.read(&format!("{case}.p518.val")).unwrap();
        let ours: Vec<f32> = idx.iter().map(|&i| pv.data[i as usize]).collect();
        let (abs, _) = compare(&format!("{case} pixel_values (518, sampled)"), &ours, &val);
        assert!(abs < 1e-6, "{case}: 518 pixel_values differ by {abs}");
        let (_, stats) = r.read(&format!("{case}.p518.stats")).unwrap();
        let sum: f64 = pv.data.iter().map(|&v| v as f64).sum();
        let max = pv.data.iter().copied().fold(f32::MIN, f32::max);
        let min = pv.data.iter().copied().fold(f32::MAX, f32::min);
        println!("{case} 518 sum {sum} vs {}", stats[0]);
        assert!((sum - stats[0] as f64).abs() < 1e-5 * (stats[0] as f64).abs().max(1.0) + 1.0);
        assert_eq!([max, min], [stats[1], stats[2]], "{case}: 518 max/min");
    }
}

#[test]
fn resize_rule_matches_transformers() {
    let text = std::fs::read_to_string(tiny().join("resize_cases.json")).unwrap();
    let cases: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert!(cases.len() > 300);
    let mut ties = 0;
    for c in &cases {
        let n = |v: &Value| v.as_u64().unwrap() as usize;
        let config = DptProcessorConfig {
            size: (n(&c["target"]), n(&c["target"])),
            keep_aspect_ratio: c["keep_aspect_ratio"].as_bool().unwrap(),
            ensure_multiple_of: n(&c["multiple"]),
            ..DptProcessorConfig::default()
        };
        let (h, w) = (n(&c["in"][0]), n(&c["in"][1]));
        let expected = (n(&c["out"][0]), n(&c["out"][1]));
        assert_eq!(config.output_size(h, w), expected, "case {c}");
        if config.ensure_multiple_of == 14 && (h == 49 || w == 49 || h == 63 || w == 63) {
            ties += 1;
        }
    }
    // 49 / 14 = 3.5 and 63 / 14 = 4.5 both round to 4 (half to even) with target 518.
    assert!(ties > 0);
}

#[test]
fn model_matches_transformers() {
    let r = refs();
    let m = model();
    let p = DptImageProcessor::from_file(tiny().join("preprocessor_config.json")).unwrap();
    let device = Default::default();
    for case in ["chelsea", "astronaut-256"] {
        let (shape, pv) = r.read(&format!("{case}.pixel_values")).unwrap();
        let shape: [usize; 4] = shape.try_into().unwrap();
        let input = Tensor::<B, 4>::from_data(TensorData::new(pv, shape), &device);
        let out = m.forward_with_features(input).unwrap();
        assert_eq!(out.backbone.feature_maps.len(), 4);
        for (i, f) in out.backbone.feature_maps.into_iter().enumerate() {
            let (s, reference) = r.read(&format!("{case}.feature_map.{i}")).unwrap();
            assert_eq!(f.dims().to_vec(), s);
            let (abs, _) = compare(&format!("{case} feature_map.{i}"), &values(f), &reference);
            assert!(abs < 1e-4, "{case} feature_map.{i}: {abs}");
        }
        let (s, reference) = r.read(&format!("{case}.predicted_depth")).unwrap();
        assert_eq!(out.predicted_depth.dims().to_vec(), s);
        let [_, h, w] = out.predicted_depth.dims();
        let depth = values(out.predicted_depth);
        let (abs, _) = compare(&format!("{case} predicted_depth"), &depth, &reference);
        assert!(abs < 1e-4, "{case} predicted_depth: {abs}");

        // Post-processing of the reference depth (isolates the bicubic), and the whole
        // pipeline from the photo.
        let img = image(case);
        let target = (img.height() as usize, img.width() as usize);
        let (_, idx) = r.read(&format!("{case}.post.idx")).unwrap();
        let (_, val) = r.read(&format!("{case}.post.val")).unwrap();
        let (_, stats) = r.read(&format!("{case}.post.stats")).unwrap();
        let post = p.post_process(&reference, h, w, target).unwrap();
        let sampled: Vec<f32> = idx.iter().map(|&i| post.data[i as usize]).collect();
        let (abs, _) = compare(
            &format!("{case} post-processed (ref depth)"),
            &sampled,
            &val,
        );
        assert!(abs < 1e-5, "{case} post-processing: {abs}");
        let est = DepthAnything::new(model(), p.clone(), device)
            .estimate(&img)
            .unwrap();
        assert_eq!((est.height, est.width), target);
        let sampled: Vec<f32> = idx.iter().map(|&i| est.data[i as usize]).collect();
        let (abs, _) = compare(
            &format!("{case} estimate() at original size"),
            &sampled,
            &val,
        );
        assert!(abs < 1e-4, "{case} estimate: {abs}");
        let sum: f64 = est.data.iter().map(|&v| v as f64).sum();
        let max = est.data.iter().copied().fold(f32::MIN, f32::max);
        let rel_sum = (sum - stats[0] as f64).abs() / (stats[0] as f64).abs();
        println!(
            "{case} estimate: sum rel err {rel_sum:.2e}, max {max} vs {}",
            stats[1]
        );
        assert!(rel_sum < 1e-5 && (max - stats[1]).abs() < 1e-4);
    }
    // The stored position grid (4x4) without interpolation.
    let (shape, pv) = r.read("square56.pixel_values").unwrap();
    let shape: [usize; 4] = shape.try_into().unwrap();
    let out = m
        .forward(Tensor::<B, 4>::from_data(
            TensorData::new(pv, shape),
            &device,
        ))
        .unwrap();
    let (_, reference) = r.read("square56.predicted_depth").unwrap();
    let (abs, _) = compare("square56 predicted_depth", &values(out), &reference);
    assert!(abs < 1e-4, "square56: {abs}");
}

fn config_json() -> Value {
    let text = std::fs::read_to_string(tiny().join("config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn bad_configs_are_clear_errors() {
    let ok = DepthAnythingConfig::from_json(&config_json()).unwrap();
    assert_eq!(ok.backbone.stage_indices().unwrap(), [1, 2, 3, 4]);
    let expect_config_err = |v: Value, needle: &str| {
        let err = DepthAnythingConfig::from_json(&v).unwrap_err();
        assert!(
            matches!(err, SceneError::Config { .. } | SceneError::Json { .. }),
            "{err}"
        );
        assert!(err.to_string().contains(needle), "`{err}` lacks `{needle}`");
    };
    let mut v = config_json();
    v["neck_hidden_sizes"] = serde_json::json!([8, 12, 16]);
    expect_config_err(v, "neck_hidden_sizes");
    let mut v = config_json();
    v["backbone_config"]["num_attention_heads"] = serde_json::json!(5);
    expect_config_err(v, "num_attention_heads");
    let mut v = config_json();
    v["backbone_config"]["use_swiglu_ffn"] = serde_json::json!(true);
    expect_config_err(v, "use_swiglu_ffn");
    let mut v = config_json();
    v["depth_estimation_type"] = serde_json::json!("absolute");
    expect_config_err(v, "depth_estimation_type");
    let mut v = config_json();
    v["reassemble_factors"] = serde_json::json!([4, 2, 1, 3.5]);
    expect_config_err(v, "reassemble factor");
    let mut v = config_json();
    v["backbone_config"]["out_indices"] = serde_json::json!([1, 2, 3, 9]);
    expect_config_err(v, "out index 9");
    let mut v = config_json();
    v["reassemble_hidden_size"] = serde_json::json!(32);
    expect_config_err(v, "reassemble_hidden_size");
    let mut v = config_json();
    v["head_in_index"] = serde_json::json!(4);
    expect_config_err(v, "head_in_index");

    let err =
        DptProcessorConfig::from_json(&serde_json::json!({"size": {"height": 0, "width": 5}}))
            .unwrap_err();
    assert!(err.to_string().contains("size.height"), "{err}");
    let err =
        DptProcessorConfig::from_json(&serde_json::json!({"do_pad": true, "size_divisor": 32}))
            .unwrap_err();
    assert!(err.to_string().contains("padding"), "{err}");
    let err =
        DptProcessorConfig::from_json(&serde_json::json!({"image_std": [1, 0, 1]})).unwrap_err();
    assert!(err.to_string().contains("image_std"), "{err}");
    // Regression: a huge `size` used to allocate `size^2 * 3` floats per image.
    let err = DptProcessorConfig::from_json(
        &serde_json::json!({"size": {"height": 1_000_000, "width": 518}}),
    )
    .unwrap_err();
    assert!(err.to_string().contains("exceed"), "{err}");
    // An image whose narrow side rounds to zero.
    let p = DptImageProcessor::new(DptProcessorConfig::default()).unwrap();
    let err = p
        .preprocess(&image::DynamicImage::new_rgb8(3, 1000))
        .unwrap_err();
    assert!(matches!(err, SceneError::InvalidInput(_)), "{err}");
}

/// The checkpoint's tensors except those for which `drop` is true, with the tensor named
/// `reshape` flattened.
fn altered_checkpoint(drop: impl Fn(&str) -> bool, reshape: Option<&str>) -> TensorStore {
    renamed_checkpoint(drop, reshape, |n| n.to_string())
}

/// Like [`altered_checkpoint`], also renaming every tensor with `rename`.
fn renamed_checkpoint(
    drop: impl Fn(&str) -> bool,
    reshape: Option<&str>,
    rename: impl Fn(&str) -> String,
) -> TensorStore {
    let store = TensorStore::open(tiny()).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for name in store.names() {
        if drop(name) {
            continue;
        }
        let (mut shape, data) = store.read(name).unwrap();
        if reshape == Some(name) {
            let n: usize = shape.iter().product();
            shape = vec![n];
        }
        tensors.push((
            rename(name),
            shape,
            data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
    }
    let views: Vec<(&str, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| {
            (
                n.as_str(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    TensorStore::from_buffers(vec![("altered.safetensors".into(), bytes)]).unwrap()
}

#[test]
fn bad_checkpoints_name_the_tensor() {
    let config = DepthAnythingConfig::from_json(&config_json()).unwrap();
    let device = Default::default();
    let missing = "neck.fusion_stage.layers.2.residual_layer1.convolution2.weight";
    let store = altered_checkpoint(|n| n == missing, None);
    let err = DepthAnythingModel::<B>::load(&store.weights(), &config, &device).unwrap_err();
    assert!(
        matches!(&err, SceneError::MissingTensor { name, .. } if name == missing),
        "{err}"
    );
    let bad = "backbone.encoder.layer.3.attention.attention.key.weight";
    let store = altered_checkpoint(|_| false, Some(bad));
    let err = DepthAnythingModel::<B>::load(&store.weights(), &config, &device).unwrap_err();
    assert!(
        matches!(&err, SceneError::TensorShape { name, .. } if name == bad),
        "{err}"
    );
    let bad = "backbone.embeddings.position_embeddings";
    let store = altered_checkpoint(|_| false, Some(bad));
    let err = DepthAnythingModel::<B>::load(&store.weights(), &config, &device).unwrap_err();
    assert!(err.to_string().contains(bad), "{err}");
    // A config that disagrees with the checkpoint's widths.
    let mut v = config_json();
    v["fusion_hidden_size"] = serde_json::json!(10);
    let config = DepthAnythingConfig::from_json(&v).unwrap();
    let err = DepthAnythingModel::<B>::load(
        &TensorStore::open(tiny()).unwrap().weights(),
        &config,
        &device,
    )
    .unwrap_err();
    assert!(matches!(err, SceneError::TensorShape { .. }), "{err}");
    // Too small an input.
    let err = model()
        .forward(Tensor::<B, 4>::zeros([1, 3, 10, 30], &device))
        .unwrap_err();
    assert!(matches!(err, SceneError::InvalidInput(_)), "{err}");
}

#[test]
fn mask_read_outs() {
    // Depth = x + 10 y on a 6x4 map.
    let map = DepthMap {
        width: 6,
        height: 4,
        data: (0..24)
            .map(|i| (i % 6) as f32 + 10.0 * (i / 6) as f32)
            .collect(),
    };
    assert_eq!(map.get(5, 3), Some(35.0));
    assert_eq!(map.get(6, 0), None);
    // A 3x2 block at x 1..4, y 1..3: centroid (2.5, 2.0) -> pixel (2, 2).
    let block = Mask::from_fn(6, 4, |x, y| (1..4).contains(&x) && (1..3).contains(&y)).unwrap();
    assert_eq!(map.at_mask_centroid(&block).unwrap(), Some(22.0));
    // Values 11 12 13 21 22 23: the lower middle is 13.
    assert_eq!(map.median_in_mask(&block).unwrap(), Some(13.0));
    let empty = Mask::new(6, 4).unwrap();
    assert_eq!(map.at_mask_centroid(&empty).unwrap(), None);
    assert_eq!(map.median_in_mask(&empty).unwrap(), None);
    let wrong = Mask::new(5, 4).unwrap();
    assert!(map.median_in_mask(&wrong).is_err());
    // Regression: the fields are public, and a `data` shorter than `width * height` used to
    // panic on indexing; the missing pixels now read as absent.
    let short = DepthMap {
        width: 6,
        height: 4,
        data: vec![1.0; 10],
    };
    assert_eq!(short.get(5, 3), None);
    assert_eq!(short.get(3, 1), Some(1.0));
    assert_eq!(short.at_mask_centroid(&block).unwrap(), None);
    // Only the block's first row (pixels 7..10) is inside the short data.
    assert_eq!(short.median_in_mask(&block).unwrap(), Some(1.0));
}

#[test]
fn transformers5_weight_names_load_too() {
    // transformers 5 renames DINOv2's attention in memory (`attention.q_proj`, `o_proj`);
    // a checkpoint written with those names gives the same depth.
    let store = renamed_checkpoint(
        |_| false,
        None,
        |n| {
            n.replace("attention.attention.query", "attention.q_proj")
                .replace("attention.attention.key", "attention.k_proj")
                .replace("attention.attention.value", "attention.v_proj")
                .replace("attention.output.dense", "attention.o_proj")
        },
    );
    assert!(store.contains("backbone.encoder.layer.0.attention.o_proj.weight"));
    let config = DepthAnythingConfig::from_json(&config_json()).unwrap();
    let device = Default::default();
    let renamed = DepthAnythingModel::<B>::load(&store.weights(), &config, &device).unwrap();
    let r = refs();
    let (shape, pv) = r.read("chelsea.pixel_values").unwrap();
    let shape: [usize; 4] = shape.try_into().unwrap();
    let input = Tensor::<B, 4>::from_data(TensorData::new(pv, shape), &device);
    let ours = values(renamed.forward(input.clone()).unwrap());
    assert_eq!(ours, values(model().forward(input).unwrap()));
    let (_, reference) = r.read("chelsea.predicted_depth").unwrap();
    let (abs, _) = compare("chelsea predicted_depth (q_proj names)", &ours, &reference);
    assert!(abs < 1e-4);
}

#[test]
fn metric_head_matches_transformers() {
    // The same weights read with `depth_estimation_type: metric`, `max_depth: 20`.
    let mut v = config_json();
    v["depth_estimation_type"] = serde_json::json!("metric");
    v["max_depth"] = serde_json::json!(20);
    let config = DepthAnythingConfig::from_json(&v).unwrap();
    let device = Default::default();
    let store = TensorStore::open(tiny()).unwrap();
    let m = DepthAnythingModel::<B>::load(&store.weights(), &config, &device).unwrap();
    let r = refs();
    let (shape, pv) = r.read("astronaut-256.pixel_values").unwrap();
    let shape: [usize; 4] = shape.try_into().unwrap();
    let out = m
        .forward(Tensor::<B, 4>::from_data(
            TensorData::new(pv, shape),
            &device,
        ))
        .unwrap();
    let (_, reference) = r.read("astronaut-256.metric_depth").unwrap();
    let (abs, _) = compare(
        "astronaut-256 metric depth (max 20)",
        &values(out),
        &reference,
    );
    assert!(abs < 1e-4, "metric: {abs}");
}
