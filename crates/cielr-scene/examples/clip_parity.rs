//! Full-size CLIP parity and timing against transformers (run by `tools/parity/clip_full.sh`).
//!
//! `cargo run --release -p cielr-scene --example clip_parity -- DIR` where DIR was written by
//! `tools/parity/clip.py full DIR`: loads the checkpoint, preprocesses `assets/coffee.png` and
//! `DIR/chelsea_crop.png`, runs the model on the reference token ids, prints max abs / max
//! relative errors against transformers and timings next to torch's (same machine), and exits
//! with status 1 if an error exceeds the tolerance.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::{Int, Tensor, TensorData};
use cielr_core::backend::CpuBackend as B;
use cielr_scene::clip::{Checkpoint, ClipModel};
use cielr_scene::preprocess::ClipImageProcessor;

const TOL: f32 = 1e-3;
const RUNS: usize = 7;

/// Two warm-up calls, then (median, min) of `runs` timed calls, in seconds.
fn timed<T>(runs: usize, mut f: impl FnMut() -> T) -> (f64, f64) {
    f();
    f();
    let mut v: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0])
}

fn read_i64(path: &Path, name: &str) -> (Vec<i64>, Vec<usize>) {
    let bytes = std::fs::read(path).expect("inputs.safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let view = st.tensor(name).expect(name);
    let data = view
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect();
    (data, view.shape().to_vec())
}

fn errors(ours: &[f32], reference: &[f32]) -> (f32, f32) {
    let mut abs = 0f32;
    let mut rel = 0f32;
    for (a, b) in ours.iter().zip(reference) {
        let d = if a.is_finite() {
            (a - b).abs()
        } else {
            f32::INFINITY
        };
        abs = abs.max(d);
        rel = rel.max(d / b.abs().max(1e-3));
    }
    (abs, rel)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: clip_parity DIR (written by tools/parity/clip.py full DIR)")?,
    );
    let device = Default::default();
    let refs = Checkpoint::open(dir.join("reference.safetensors"))?;
    let inputs = Checkpoint::open(dir.join("inputs.safetensors"))?;
    let mut worst = 0f32;
    let mut report = |label: &str, ours: Vec<f32>, ckpt: &Checkpoint, name: &str| {
        let shape = ckpt.shape(name).unwrap_or_default();
        let reference = ckpt.read_f32(name, &shape).unwrap_or_default();
        let (abs, rel) = if ours.len() == reference.len() {
            errors(&ours, &reference)
        } else {
            (f32::INFINITY, f32::INFINITY)
        };
        worst = worst.max(abs);
        println!("{label:<28} max abs {abs:.3e}  max rel {rel:.3e}  shape {shape:?}");
    };

    let t = Instant::now();
    let model = ClipModel::<B>::from_pretrained(&dir, &device)?;
    let load_s = t.elapsed().as_secs_f64();
    let proc = ClipImageProcessor::from_file(dir.join("preprocessor_config.json"))?;
    let coffee = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/coffee.png");
    let images = vec![
        image::open(&coffee)?,
        image::open(dir.join("chelsea_crop.png"))?,
    ];
    let pre_s = timed(RUNS, || proc.preprocess_batch::<B>(&images, &device));
    let pixels = proc.preprocess_batch::<B>(&images, &device)?;
    report(
        "pixel_values",
        pixels.to_data().iter::<f32>().collect(),
        &inputs,
        "pixel_values",
    );

    let (ids, shape) = read_i64(&dir.join("inputs.safetensors"), "input_ids");
    let (mask, _) = read_i64(&dir.join("inputs.safetensors"), "attention_mask");
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [shape[0], shape[1]]), &device);
    let mask = Tensor::<B, 2, Int>::from_data(TensorData::new(mask, [shape[0], shape[1]]), &device);

    let out = model.forward(ids.clone(), Some(mask.clone()), pixels.clone())?;
    let v = |t: Tensor<B, 2>| t.into_data().iter::<f32>().collect::<Vec<f32>>();
    let v3 = |t: Tensor<B, 3>| t.into_data().iter::<f32>().collect::<Vec<f32>>();
    report("image_embeds", v(out.image_embeds), &refs, "image_embeds");
    report("text_embeds", v(out.text_embeds), &refs, "text_embeds");
    report(
        "logits_per_image",
        v(out.logits_per_image),
        &refs,
        "logits_per_image",
    );
    report(
        "vision last_hidden_state",
        v3(out.vision_output.last_hidden_state),
        &refs,
        "vision_last_hidden_state",
    );
    report(
        "text last_hidden_state",
        v3(out.text_output.last_hidden_state),
        &refs,
        "text_last_hidden_state",
    );

    let sync = |t: Tensor<B, 2>| t.into_data();
    let vision_s = timed(RUNS, || {
        sync(model.get_image_features(pixels.clone()).unwrap())
    });
    let text_s = timed(RUNS, || {
        sync(
            model
                .get_text_features(ids.clone(), Some(mask.clone()))
                .unwrap(),
        )
    });
    let all_s = timed(RUNS, || {
        sync(
            model
                .forward(ids.clone(), Some(mask.clone()), pixels.clone())
                .unwrap()
                .logits_per_image,
        )
    });

    let torch: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("torch_timings.json"))?)?;
    let tt = |k: &str, stat: &str| torch[k][stat].as_f64().unwrap_or(f64::NAN);
    println!(
        "\nseconds, median (min) of {RUNS}     ours               torch              ours/torch (median)"
    );
    for (label, ours, key) in [
        ("preprocess 2 images", pre_s, "preprocess_2_images_s"),
        (
            "vision tower + proj, 2 images",
            vision_s,
            "vision_2_images_s",
        ),
        ("text tower + proj, 3 x 77", text_s, "text_3x77_s"),
        ("CLIPModel forward", all_s, "clip_forward_s"),
    ] {
        println!(
            "{label:<30} {:>8.4} ({:>7.4})  {:>8.4} ({:>7.4})  {:>6.2}",
            ours.0,
            ours.1,
            tt(key, "median"),
            tt(key, "min"),
            ours.0 / tt(key, "median")
        );
    }
    println!(
        "load {load_s:.2} s; torch {} with {} threads",
        torch["torch_version"], torch["torch_threads"]
    );
    if worst > TOL {
        eprintln!("max abs error {worst} > {TOL}");
        std::process::exit(1);
    }
    Ok(())
}
