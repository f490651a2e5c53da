//! Full-size `AutoencoderKL` check against diffusers (run by `tools/parity/vae_full.sh`):
//! loads the random SD-sized checkpoint and references that
//! `tools/parity/diffusers_sched_vae.py full DIR` wrote, encodes and decodes the same input,
//! and prints the errors and our timings next to torch's (`torch_timings.json`).
//!
//! Usage: `cargo run --release -p cielr-diffusion --example vae_parity -- DIR`

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::{Tensor, TensorData};
use cielr_core::backend::CpuBackend;
use cielr_diffusion::vae::AutoencoderKl;
use cielr_diffusion::weights::Checkpoint;

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
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: vae_parity DIR (written by diffusers_sched_vae.py full DIR)")?,
    );
    let device = Default::default();
    let t0 = Instant::now();
    let vae = AutoencoderKl::<B>::from_dir(&dir, &device)?;
    println!("loaded in {:.2} s", t0.elapsed().as_secs_f64());
    let refs = Checkpoint::open(dir.join("reference.safetensors"))?;
    let (input, shape) = refs.read_any("input")?;
    let dims: [usize; 4] = shape.as_slice().try_into()?;
    let x = Tensor::<B, 4>::from_data(TensorData::new(input, dims), &device);

    // Warm-up once, then time one call, as the torch side does.
    vae.encode(x.clone())?.mean.into_data();
    let t0 = Instant::now();
    let dist = vae.encode(x)?;
    let mean_data = dist.mean.clone().into_data();
    let encode_s = t0.elapsed().as_secs_f64();
    let _ = mean_data;
    vae.decode(dist.mean.clone())?.into_data();
    let t0 = Instant::now();
    let decoded = vae.decode(dist.mean.clone())?;
    let decoded_data = decoded.clone().into_data();
    let decode_s = t0.elapsed().as_secs_f64();
    let _ = decoded_data;

    let timings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("torch_timings.json"))?)?;
    let torch_enc = timings["encode_s"].as_f64().unwrap_or(f64::NAN);
    let torch_dec = timings["decode_s"].as_f64().unwrap_or(f64::NAN);

    println!("input {:?}", dims);
    for (name, ours) in [
        ("mean", dist.mean.clone()),
        ("logvar", dist.logvar.clone()),
        ("decoded", decoded),
    ] {
        let (reference, _) = refs.read_any(name)?;
        let (abs, rel, scale) = errors(ours, &reference);
        println!("{name:<8} max abs {abs:.3e}  max rel {rel:.3e}  (max |ref| {scale:.3})");
    }
    let (reference, _) = refs.read_any("mean")?;
    let ref_mean = Tensor::<B, 4>::from_data(TensorData::new(reference, dist.mean.dims()), &device);
    let (decoded_ref, _) = refs.read_any("decoded")?;
    let (abs, rel, _) = errors(vae.decode(ref_mean)?, &decoded_ref);
    println!("decode(reference mean) max abs {abs:.3e}  max rel {rel:.3e}");
    println!(
        "encode: ours {encode_s:.2} s, torch {torch_enc:.2} s (ratio ours/torch {:.2})",
        encode_s / torch_enc
    );
    println!(
        "decode: ours {decode_s:.2} s, torch {torch_dec:.2} s (ratio ours/torch {:.2})",
        decode_s / torch_dec
    );
    Ok(())
}
