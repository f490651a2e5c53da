//! Full-size `UNet2DConditionModel` check against diffusers (run by `tools/parity/unet_full.sh`):
//! loads the random SD-inpainting-sized checkpoint and references that
//! `tools/parity/diffusers_unet.py full DIR` wrote, runs one forward (after a warm-up) and
//! prints the error and our time next to torch's (`torch_timings.json`).
//!
//! Usage: `cargo run --release -p cielr-diffusion --example unet_parity -- DIR`

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::{Tensor, TensorData};
use cielr_core::backend::CpuBackend;
use cielr_diffusion::unet::UNet2DConditionModel;
use cielr_diffusion::weights::Checkpoint;

type B = CpuBackend;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: unet_parity DIR (written by diffusers_unet.py full DIR)")?,
    );
    let device = Default::default();
    let t0 = Instant::now();
    let unet = UNet2DConditionModel::<B>::from_dir(&dir, &device)?;
    println!("loaded in {:.2} s", t0.elapsed().as_secs_f64());
    let refs = Checkpoint::open(dir.join("reference.safetensors"))?;
    let (sample, shape) = refs.read_any("sample")?;
    let dims: [usize; 4] = shape.as_slice().try_into()?;
    let sample = Tensor::<B, 4>::from_data(TensorData::new(sample, dims), &device);
    let (ehs, shape) = refs.read_any("encoder_hidden_states")?;
    let edims: [usize; 3] = shape.as_slice().try_into()?;
    let ehs = Tensor::<B, 3>::from_data(TensorData::new(ehs, edims), &device);

    unet.forward(sample.clone(), 501.0, ehs.clone())?
        .into_data();
    let t0 = Instant::now();
    let out = unet.forward(sample, 501.0, ehs)?.into_data();
    let ours_s = t0.elapsed().as_secs_f64();

    let ours = out.to_vec::<f32>()?;
    let (reference, _) = refs.read_any("out")?;
    let (mut abs, mut scale, mut rel) = (0f64, 0f64, 0f64);
    for (&x, &y) in ours.iter().zip(&reference) {
        let d = (x as f64 - y as f64).abs();
        abs = abs.max(d);
        scale = scale.max((y as f64).abs());
        if y.abs() >= 1e-2 {
            rel = rel.max(d / y.abs() as f64);
        }
    }
    let timings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("torch_timings.json"))?)?;
    let torch_s = timings["forward_s"].as_f64().unwrap_or(f64::NAN);
    println!("sample {dims:?}, text {edims:?}");
    println!("out      max abs {abs:.3e}  max rel {rel:.3e}  (max |ref| {scale:.3})");
    println!(
        "forward: ours {ours_s:.2} s, torch {torch_s:.2} s (ratio ours/torch {:.2})",
        ours_s / torch_s
    );
    Ok(())
}
