//! Runs one Stable Diffusion inpaint on a synthetic image, for memory and speed measurements
//! (`/usr/bin/time -v` gives the peak RSS; used by `tools/bench/sd.sh` and
//! docs/performance.md): a `SIZE` x `SIZE` gradient with a centred square hole, `STEPS` DDIM
//! (or the folder's scheduler) steps, guidance 7.5 with a negative prompt unless `--guidance`
//! says otherwise.
//!
//! Usage: `cargo run --release -p cielr-diffusion --example sd_inpaint_run -- DIR SIZE STEPS
//! [--no-slicing] [--max-scores N] [--guidance G]`

/// The models' many large short-lived tensors are slow under glibc malloc (docs/performance.md,
/// "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Instant;

use cielr_core::backend::CpuBackend;
use cielr_core::{BBox, Mask};
use cielr_diffusion::blocks::AttentionSlicing;
use cielr_diffusion::{InpaintParams, SdInpaintPipeline};
use image::{Rgb, RgbImage};

type B = CpuBackend;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!(
            "usage: sd_inpaint_run DIR SIZE STEPS [--no-slicing] [--max-scores N] [--guidance G]"
        );
        std::process::exit(2);
    }
    let size: u32 = args[1].parse().expect("SIZE");
    let steps: usize = args[2].parse().expect("STEPS");
    let mut slicing = AttentionSlicing::default();
    let mut guidance = 7.5f32;
    let mut i = 3;
    while i < args.len() {
        match args[i].as_str() {
            "--no-slicing" => slicing = AttentionSlicing::Off,
            "--max-scores" => {
                i += 1;
                slicing = AttentionSlicing::MaxScores(args[i].parse().expect("N"));
            }
            "--guidance" => {
                i += 1;
                guidance = args[i].parse().expect("G");
            }
            other => panic!("unknown argument {other}"),
        }
        i += 1;
    }
    let device = Default::default();
    let t = Instant::now();
    let mut pipeline = SdInpaintPipeline::<B>::from_dir(&args[0], &device).expect("load");
    pipeline.set_attention_slicing(slicing);
    println!("load {:.2}s", t.elapsed().as_secs_f64());
    let image = RgbImage::from_fn(size, size, |x, y| {
        Rgb([(x * 255 / size) as u8, (y * 255 / size) as u8, 128])
    });
    let (a, b) = (size as f64 / 4.0, size as f64 * 3.0 / 4.0);
    let mask = Mask::from_box(size, size, &BBox::new(a, a, b, b)).expect("mask");
    let params = InpaintParams {
        prompt: "a red ball on a table".into(),
        negative_prompt: "blurry".into(),
        steps,
        guidance,
        strength: 1.0,
        seed: 0,
    };
    let t = Instant::now();
    let mut last = Instant::now();
    let mut step_times = Vec::new();
    let out = pipeline
        .run(&image, &mask, &params, None, &mut |p| {
            step_times.push(last.elapsed().as_secs_f64());
            last = Instant::now();
            eprintln!("step {}/{}", p.step + 1, p.total);
        })
        .expect("inpaint");
    let total = t.elapsed().as_secs_f64();
    let rgb = out.to_rgb().expect("rgb");
    assert_eq!(rgb.dimensions(), (size, size));
    println!(
        "inpaint {size}x{size}, {steps} steps, slicing {slicing:?}: {total:.2}s (steps: {})",
        step_times
            .iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
}
