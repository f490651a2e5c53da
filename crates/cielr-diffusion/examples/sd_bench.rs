//! cielr-diffusion side of `tools/bench/sd.sh`: on the folder and inputs
//! `tools/bench/sd_ref.py` wrote (OUT/model, OUT/bench.safetensors, OUT/image.png,
//! OUT/mask.png), times one UNet step (batch 2, as guidance runs it), one VAE decode and a
//! whole inpaint (guidance 7.5, the injected noise, the folder's DDIM scheduler), checks the
//! outputs against diffusers', and prints the timings beside diffusers'
//! (OUT/torch_timings.json) with their ratios.
//!
//! Usage: `cargo run --release -p cielr-diffusion --example sd_bench -- OUT`

/// The models' many large short-lived tensors are slow under glibc malloc (docs/performance.md,
/// "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::{Tensor, TensorData};
use cielr_core::backend::CpuBackend;
use cielr_core::Mask;
use cielr_diffusion::unet::UNet2DConditionModel;
use cielr_diffusion::vae::AutoencoderKl;
use cielr_diffusion::weights::Checkpoint;
use cielr_diffusion::{InpaintParams, SdInpaintPipeline};

type B = CpuBackend;

fn tensor<const D: usize>(ckpt: &Checkpoint, name: &str) -> Tensor<B, D> {
    let (v, shape) = ckpt.read_any(name).expect("tensor");
    let dims: [usize; D] = shape.try_into().expect("rank");
    Tensor::from_data(TensorData::new(v, dims), &Default::default())
}

/// Max abs difference and max |reference|.
fn diff<const D: usize>(ours: Tensor<B, D>, reference: Tensor<B, D>) -> (f32, f32) {
    let scale = reference
        .clone()
        .abs()
        .max()
        .into_data()
        .to_vec::<f32>()
        .expect("f32")[0];
    let d = (ours - reference)
        .abs()
        .max()
        .into_data()
        .to_vec::<f32>()
        .expect("f32")[0];
    (d, scale)
}

/// Best of `repeat` timed calls after one warm-up call.
fn timed<T>(repeat: usize, mut f: impl FnMut() -> T) -> (T, f64) {
    let _ = f();
    let mut best = f64::INFINITY;
    let mut out = None;
    for _ in 0..repeat {
        let t = Instant::now();
        out = Some(f());
        best = best.min(t.elapsed().as_secs_f64());
    }
    (out.expect("repeat > 0"), best)
}

fn main() {
    let out = PathBuf::from(std::env::args().nth(1).expect("usage: sd_bench OUT"));
    let torch: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("torch_timings.json")).expect("torch_timings.json"),
    )
    .expect("json");
    let steps = torch["steps"].as_u64().expect("steps") as usize;
    let refs = Checkpoint::open(out.join("bench.safetensors")).expect("bench.safetensors");
    let device = Default::default();
    let model = out.join("model");

    let unet = UNet2DConditionModel::<B>::from_dir(model.join("unet"), &device).expect("unet");
    let sample: Tensor<B, 4> = tensor(&refs, "sample");
    let ehs: Tensor<B, 3> = tensor(&refs, "ehs");
    let (unet_out, unet_s) = timed(3, || {
        unet.forward(sample.clone(), 501.0, ehs.clone())
            .expect("unet forward")
    });
    let (unet_d, unet_scale) = diff(unet_out, tensor(&refs, "unet_out"));
    drop(unet);

    let vae = AutoencoderKl::<B>::from_dir(model.join("vae"), &device).expect("vae");
    let latents: Tensor<B, 4> = tensor(&refs, "latents");
    let (decoded, vae_s) = timed(3, || vae.decode(latents.clone()).expect("decode"));
    let (vae_d, vae_scale) = diff(decoded, tensor(&refs, "decoded"));
    drop(vae);

    let pipeline = SdInpaintPipeline::<B>::from_dir(&model, &device).expect("pipeline");
    let image = image::open(out.join("image.png")).expect("image").to_rgb8();
    let mask_img = image::open(out.join("mask.png")).expect("mask").to_luma8();
    let (w, h) = mask_img.dimensions();
    let mask = Mask::from_fn(w, h, |x, y| mask_img.get_pixel(x, y)[0] > 127).expect("mask");
    let params = InpaintParams {
        prompt: "a red ball on a table".into(),
        negative_prompt: "blurry".into(),
        steps,
        guidance: 7.5,
        strength: 1.0,
        seed: 0,
    };
    let noise: Tensor<B, 4> = tensor(&refs, "noise");
    let t = Instant::now();
    let result = pipeline
        .run(&image, &mask, &params, Some(noise), &mut |_| {})
        .expect("inpaint");
    let inpaint_s = t.elapsed().as_secs_f64();
    let (final_d, _) = diff(result.image, tensor(&refs, "final"));

    let row = |name: &str, ours: f64, key: &str| {
        let theirs = torch[key].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {name} | {theirs:.3} | {ours:.3} | {:.2} |",
            ours / theirs
        );
    };
    println!(
        "config {} {}x{} px, {steps} steps, torch {} threads",
        torch["config"], torch["size"], torch["size"], torch["threads"]
    );
    println!("| operation | diffusers (s) | cielr (s) | cielr / diffusers |");
    println!("|---|---|---|---|");
    row("UNet step (batch 2)", unet_s, "unet_step_s");
    row("VAE decode", vae_s, "vae_decode_s");
    row(&format!("{steps}-step inpaint"), inpaint_s, "inpaint_s");
    println!(
        "errors vs diffusers: UNet max abs {unet_d:.2e} (max |ref| {unet_scale:.2}), VAE decode \
         {vae_d:.2e} (max |ref| {vae_scale:.2}), final image {final_d:.2e} (in [0, 1])"
    );
}
