//! Full-size Depth Anything V2 parity and timing against transformers (run by
//! `tools/parity/depth_anything_full.sh`).
//!
//! `cargo run --release -p cielr-scene --example depth_anything_parity -- DIR` where DIR was
//! written by `tools/parity/depth_anything.py full DIR small|base`: loads the checkpoint,
//! preprocesses chelsea.png to 518x518 with the checkpoint's processor settings (aspect ratio
//! not kept, so the input is square), runs the model on the reference pixel_values, prints
//! max abs / max relative errors of pixel_values, the four backbone feature maps and
//! `predicted_depth`, and the forward time next to torch's (same machine, min of 3 after one
//! warm-up), and exits with status 1 if an error exceeds the tolerance.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::{Tensor, TensorData};
use cielr_core::backend::CpuBackend as B;
use cielr_core::weights::TensorStore;
use cielr_scene::depth_anything::{DepthAnythingModel, DptImageProcessor, DptProcessorConfig};

/// Tolerance on max abs error of features and depth (depth values are O(1)).
const TOL: f32 = 1e-3;

fn errors(ours: &[f32], reference: &[f32]) -> (f32, f32) {
    let (mut abs, mut rel) = (0f32, 0f32);
    for (a, b) in ours.iter().zip(reference) {
        let d = (a - b).abs();
        abs = abs.max(d);
        rel = rel.max(d / b.abs().max(1e-3));
    }
    (abs, rel)
}

fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 readback")
}

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: depth_anything_parity DIR"),
    );
    let refs = TensorStore::open(dir.join("reference.safetensors")).expect("reference");
    let device = Default::default();
    let t0 = Instant::now();
    let model = DepthAnythingModel::<B>::from_pretrained(&dir, &device).expect("checkpoint");
    let load_s = t0.elapsed().as_secs_f64();
    let mut worst = 0f32;
    let mut report = |what: &str, ours: &[f32], reference: &[f32]| {
        assert_eq!(ours.len(), reference.len(), "{what}: length");
        let (abs, rel) = errors(ours, reference);
        println!("{what:<22} max abs {abs:.2e}  max rel {rel:.2e}");
        worst = worst.max(abs);
    };

    let processor = DptImageProcessor::from_file(dir.join("preprocessor_config.json"))
        .expect("preprocessor_config.json");
    let square = DptImageProcessor::new(DptProcessorConfig {
        keep_aspect_ratio: false,
        ..processor.config().clone()
    })
    .expect("config");
    let photo = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/chelsea.png");
    let pv = square
        .preprocess(&image::open(photo).expect("chelsea.png"))
        .expect("preprocess");
    let (shape, reference_pv) = refs.read("pixel_values").expect("pixel_values");
    assert_eq!(shape, [1, 3, pv.height, pv.width]);
    report("pixel_values", &pv.data, &reference_pv);

    let input = || {
        Tensor::<B, 4>::from_data(
            TensorData::new(reference_pv.clone(), [1, 3, pv.height, pv.width]),
            &device,
        )
    };
    let out = model.forward_with_features(input()).expect("forward");
    for (i, f) in out.backbone.feature_maps.into_iter().enumerate() {
        let (_, r) = refs.read(&format!("feature_map.{i}")).expect("feature map");
        report(&format!("feature_map.{i}"), &values(f), &r);
    }
    let (_, r) = refs.read("predicted_depth").expect("predicted_depth");
    report("predicted_depth", &values(out.predicted_depth), &r);

    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let d = model.forward(input()).expect("forward");
        let _ = values(d);
        times.push(t.elapsed().as_secs_f64());
    }
    let ours = times.iter().copied().fold(f64::MAX, f64::min);
    let torch: serde_json::Value = std::fs::read_to_string(dir.join("torch_timing.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    let torch_s = torch["forward_s_min"].as_f64().unwrap_or(f64::NAN);
    println!(
        "load {load_s:.2} s; forward 518x518: ours {ours:.2} s (min of 3), torch {torch_s:.2} s \
         (2 threads), ratio {:.2}",
        ours / torch_s
    );
    if worst > TOL {
        eprintln!("FAILED: max abs error {worst:.2e} > {TOL:.0e}");
        std::process::exit(1);
    }
    println!("OK (max abs error {worst:.2e} <= {TOL:.0e})");
}
