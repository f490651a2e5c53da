//! Parity of `AutoencoderKl` with diffusers 0.42 on the tiny random checkpoint written by
//! `tools/parity/diffusers_sched_vae.py` (`tests/fixtures/vae-tiny`: block_out_channels
//! [8, 16], layers_per_block 1, 4 groups, 4 latent channels; the decoder's weights stored in
//! f16, the rest in f32), and the errors bad checkpoints and inputs give.

use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};
use cielr_core::backend::CpuBackend;
use cielr_diffusion::vae::{AutoencoderKl, AutoencoderKlConfig};
use cielr_diffusion::weights::Checkpoint;
use cielr_diffusion::DiffusionError;

type B = CpuBackend;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vae-tiny")
}

fn reference(name: &str) -> Tensor<B, 4> {
    let ckpt = Checkpoint::open(dir().join("reference.safetensors")).unwrap();
    let (v, shape) = ckpt.read_any(name).unwrap();
    let dims: [usize; 4] = shape.try_into().unwrap();
    Tensor::from_data(TensorData::new(v, dims), &Default::default())
}

/// (max abs error, max |reference|, max relative error over |reference| >= 1e-2).
fn compare(name: &str, ours: Tensor<B, 4>, reference: Tensor<B, 4>) -> (f64, f64) {
    assert_eq!(ours.dims(), reference.dims(), "{name}: shape");
    let a = ours.into_data().to_vec::<f32>().unwrap();
    let b = reference.into_data().to_vec::<f32>().unwrap();
    let (mut abs, mut scale, mut rel) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(&b) {
        let d = (x as f64 - y as f64).abs();
        abs = abs.max(d);
        scale = scale.max((y as f64).abs());
        if y.abs() >= 1e-2 {
            rel = rel.max(d / y.abs() as f64);
        }
    }
    println!("{name:<8} max abs {abs:.2e}  max rel {rel:.2e}  (max |ref| {scale:.3})");
    (abs, scale)
}

#[test]
fn vae_matches_diffusers() {
    let device = Default::default();
    let vae = AutoencoderKl::<B>::from_dir(dir(), &device).unwrap();
    assert_eq!(vae.config().block_out_channels, vec![8, 16]);
    assert_eq!(vae.config().downsampling_factor(), 2);
    let input = reference("input");
    let dist = vae.encode(input).unwrap();
    let mut worst = 0f64;
    for (name, ours) in [
        ("mean", dist.mean.clone()),
        ("logvar", dist.logvar.clone()),
        (
            "sampled",
            dist.sample_with_noise(reference("noise")).unwrap(),
        ),
    ] {
        let (abs, scale) = compare(name, ours, reference(name));
        worst = worst.max(abs / scale.max(1.0));
    }
    let decoded = vae.decode(dist.mean.clone()).unwrap();
    let (abs, scale) = compare("decoded", decoded, reference("decoded"));
    worst = worst.max(abs / scale.max(1.0));
    assert!(worst < 1e-4, "max abs error / max(1, scale) {worst:.3e}");
    // The decoder alone, from the reference mean (no error carried over from the encoder).
    let (abs, _) = compare(
        "decode(ref mean)",
        vae.decode(reference("mean")).unwrap(),
        reference("decoded"),
    );
    assert!(abs < 1e-4);
    // Scaling round trip.
    let z = vae.scale_latents(dist.mean.clone());
    let back = vae.unscale_latents(z);
    let d: f32 = (back - dist.mean)
        .abs()
        .max()
        .into_data()
        .to_vec::<f32>()
        .unwrap()[0];
    assert!(d < 1e-6);
}

#[test]
fn vae_rejects_bad_inputs_and_checkpoints() {
    let device = Default::default();
    let vae = AutoencoderKl::<B>::from_dir(dir(), &device).unwrap();
    // Wrong channel counts.
    let e = vae
        .encode(Tensor::zeros([1, 4, 8, 8], &device))
        .err()
        .unwrap();
    assert!(matches!(e, DiffusionError::InputShape { .. }), "{e}");
    let e = vae
        .decode(Tensor::zeros([1, 3, 8, 8], &device))
        .err()
        .unwrap();
    assert!(matches!(e, DiffusionError::InputShape { .. }), "{e}");

    // A config that does not match the weights names the tensor.
    let text = std::fs::read_to_string(dir().join("config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["block_out_channels"] = serde_json::json!([8, 24]);
    let cfg = AutoencoderKlConfig::from_json(&json, "test").unwrap();
    let ckpt = Checkpoint::open(dir()).unwrap();
    let e = AutoencoderKl::<B>::load(&ckpt.weights(), &cfg, &device)
        .err()
        .unwrap();
    match &e {
        DiffusionError::TensorShape { name, .. } => {
            assert!(name.starts_with("encoder.down_blocks.1"), "{e}")
        }
        other => panic!("expected a shape error, got {other}"),
    }
    // More blocks than the checkpoint has: a missing tensor, named.
    json["block_out_channels"] = serde_json::json!([8, 16, 16]);
    json["down_block_types"] = serde_json::json!([
        "DownEncoderBlock2D",
        "DownEncoderBlock2D",
        "DownEncoderBlock2D"
    ]);
    json["up_block_types"] =
        serde_json::json!(["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]);
    let cfg = AutoencoderKlConfig::from_json(&json, "test").unwrap();
    let e = AutoencoderKl::<B>::load(&ckpt.weights(), &cfg, &device)
        .err()
        .unwrap();
    assert!(
        matches!(&e, DiffusionError::MissingTensor { name, .. } if name == "encoder.down_blocks.1.downsamplers.0.conv.weight"),
        "{e}"
    );
    // Malformed configs.
    for bad in [
        serde_json::json!({"block_out_channels": [8, 16], "norm_num_groups": 3}),
        serde_json::json!({"block_out_channels": []}),
        serde_json::json!({"block_out_channels": [8, 16], "down_block_types": ["DownEncoderBlock2D"]}),
        serde_json::json!({"act_fn": "gelu"}),
        serde_json::json!({"layers_per_block": "two"}),
    ] {
        assert!(
            AutoencoderKlConfig::from_json(&bad, "bad").is_err(),
            "{bad}"
        );
    }
    // Not a safetensors file; an index without a weight map.
    let junk = std::env::temp_dir().join(format!("cielr-junk-{}.safetensors", std::process::id()));
    std::fs::write(&junk, b"not a safetensors file").unwrap();
    let e = Checkpoint::open(&junk).err().unwrap();
    std::fs::remove_file(&junk).ok();
    assert!(matches!(e, DiffusionError::Safetensors { .. }), "{e}");
    assert!(matches!(
        Checkpoint::open(dir().join("config.json")),
        Err(DiffusionError::Config { .. })
    ));
}
