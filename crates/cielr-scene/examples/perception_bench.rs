//! Forward-time benchmark of one perception model at full size (driven by
//! `tools/bench/perception.sh`, which runs `tools/bench/perception_ref.py` on the same
//! checkpoint and input in the same run).
//!
//! Usage: `perception_bench MODEL DIR WARMUP RUNS` with MODEL one of `clip` (vision tower),
//! `owlv2` (image embedding: vision tower + query-independent heads), `sam` (image encoder),
//! `depth` (Depth Anything V2 forward). Prints one JSON line: `{"model", "size", "times_s"}`.
//! The input is the deterministic pattern `perception_ref.py` also uses:
//! `x[i] = ((i * 7919) % 1000) / 500 - 1` over the flattened `[1, 3, size, size]` tensor.

/// The models' many large short-lived tensors are slow under glibc malloc (docs/performance.md,
/// "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::{Tensor, TensorData};
use cielr_core::backend::CpuBackend as B;
use cielr_scene::clip::{ClipVisionConfig, ClipVisionTransformer};
use cielr_scene::depth_anything::DepthAnythingModel;
use cielr_scene::owlv2::Owlv2Detector;
use cielr_scene::sam::SamModel;

fn pattern(size: usize) -> Tensor<B, 4> {
    let n = 3 * size * size;
    let v: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    Tensor::from_data(TensorData::new(v, [1, 3, size, size]), &Default::default())
}

fn time(warmup: usize, runs: usize, mut f: impl FnMut()) -> Vec<f64> {
    for _ in 0..warmup {
        f();
    }
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: perception_bench clip|owlv2|sam|depth DIR WARMUP RUNS");
        std::process::exit(2);
    }
    let (model, dir) = (args[1].as_str(), PathBuf::from(&args[2]));
    let warmup: usize = args[3].parse().expect("WARMUP");
    let runs: usize = args[4].parse().expect("RUNS");
    let device = Default::default();
    let sync = |t: Tensor<B, 4>| {
        std::hint::black_box(t.sum().into_scalar());
    };
    let (size, times) = match model {
        "clip" => {
            let size = ClipVisionConfig::from_file(dir.join("config.json"))
                .expect("clip config")
                .image_size;
            let m = ClipVisionTransformer::<B>::from_pretrained(&dir, &device).expect("load clip");
            let px = pattern(size);
            let t = time(warmup, runs, || {
                let out = m.forward(px.clone()).expect("clip forward");
                sync(out.last_hidden_state.unsqueeze());
            });
            (size, t)
        }
        "owlv2" => {
            let det = Owlv2Detector::<B>::from_pretrained(&dir, &device).expect("load owlv2");
            let size = det.model().image_size();
            let px = pattern(size);
            let t = time(warmup, runs, || {
                let e = det
                    .model()
                    .embed_pixels(px.clone(), (size, size), size)
                    .expect("owlv2 embed");
                std::hint::black_box(e);
            });
            (size, t)
        }
        "sam" => {
            let m = SamModel::<B>::load(&dir, &device).expect("load sam");
            let px = pattern(1024);
            let t = time(warmup, runs, || {
                sync(m.image_embeddings(px.clone()).expect("sam encoder"));
            });
            (1024, t)
        }
        "depth" => {
            let m = DepthAnythingModel::<B>::from_pretrained(&dir, &device).expect("load depth");
            let px = pattern(518);
            let t = time(warmup, runs, || {
                let d = m.forward(px.clone()).expect("depth forward");
                sync(d.unsqueeze());
            });
            (518, t)
        }
        other => {
            eprintln!("unknown model {other}");
            std::process::exit(2);
        }
    };
    println!(
        "{}",
        serde_json::json!({"model": model, "size": size, "times_s": times})
    );
}
