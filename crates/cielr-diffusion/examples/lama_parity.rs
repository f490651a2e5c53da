//! Full-size LaMa check against the official code (run by `tools/parity/lama_full.sh`): loads
//! the random big-lama-sized generator and the references that `tools/parity/lama.py full DIR
//! SIZE` wrote, runs the generator on the same input and prints the errors of the logits
//! (before the sigmoid) and of the output, and our time next to torch's (each after one
//! warm-up call). The warm-up is skipped with `--no-warmup` (then the time includes the
//! one-off costs of the first call).
//!
//! Usage: `cargo run --release -p cielr-diffusion --example lama_parity -- DIR [--no-warmup]`

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::{Tensor, TensorData};
use cielr_core::backend::CpuBackend;
use cielr_core::weights::TensorStore;
use cielr_diffusion::LamaInpainter;

type B = CpuBackend;

fn errors(ours: Tensor<B, 4>, reference: &[f32]) -> (f64, f64, f64) {
    let a = ours.into_data().to_vec::<f32>().expect("f32 data");
    assert_eq!(a.len(), reference.len(), "element count");
    let (mut abs, mut scale, mut rel) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(reference) {
        let d = (x as f64 - y as f64).abs();
        abs = abs.max(d);
        scale = scale.max((y as f64).abs());
        if y.abs() >= 1e-2 {
            rel = rel.max(d / y.abs() as f64);
        }
    }
    (abs, rel, scale)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .ok_or("usage: lama_parity DIR [--no-warmup] (DIR written by lama.py full DIR SIZE)")?,
    );
    let warmup = args.next().as_deref() != Some("--no-warmup");
    let device = Default::default();
    let t0 = Instant::now();
    let lama = LamaInpainter::<B>::load_on(&dir, &device)?;
    println!("loaded in {:.2} s", t0.elapsed().as_secs_f64());
    let refs = TensorStore::open(dir.join("reference.safetensors"))?;
    let (shape, input) = refs.read("gen_input")?;
    let dims: [usize; 4] = shape.as_slice().try_into()?;
    let x = Tensor::<B, 4>::from_data(TensorData::new(input, dims), &device);
    if warmup {
        lama.generator().forward_logits(x.clone())?.into_data();
    }
    let t0 = Instant::now();
    let logits = lama.generator().forward_logits(x)?;
    let logits_data = logits.clone().into_data();
    let ours_s = t0.elapsed().as_secs_f64();
    let _ = logits_data;
    let torch_s = refs.read("torch_seconds")?.1[0] as f64;
    println!("input {dims:?}");
    let (r, _) = (refs.read("gen_logits")?.1, ());
    let (abs, rel, scale) = errors(logits.clone(), &r);
    println!("logits   max abs {abs:.3e}  max rel {rel:.3e}  (max |ref| {scale:.3})");
    let out = burn::tensor::activation::sigmoid(logits);
    let (abs, rel, scale) = errors(out, &refs.read("gen_output")?.1);
    println!("output   max abs {abs:.3e}  max rel {rel:.3e}  (max |ref| {scale:.3})");
    println!(
        "forward: ours {ours_s:.2} s, torch {torch_s:.2} s (ratio ours/torch {:.2}){}",
        ours_s / torch_s,
        if warmup { "" } else { " [no warm-up]" }
    );
    Ok(())
}
