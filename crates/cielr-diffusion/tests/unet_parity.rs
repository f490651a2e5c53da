//! Parity of `UNet2DConditionModel` with diffusers 0.42 on the tiny random inpainting UNets
//! written by `tools/parity/diffusers_unet.py` (`tests/fixtures/unet-tiny-sd15`: SD 1.x layout
//! with 1x1-conv projections; `unet-tiny-sd2`: SD 2.x layout with linear projections,
//! per-block head counts and transformer depths), and the errors bad inputs give.

use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};
use cielr_core::backend::CpuBackend;
use cielr_diffusion::unet::{timestep_embedding, UNet2DConditionConfig, UNet2DConditionModel};
use cielr_diffusion::weights::Checkpoint;
use cielr_diffusion::DiffusionError;

type B = CpuBackend;

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn tensor<const D: usize>(ckpt: &Checkpoint, name: &str) -> Tensor<B, D> {
    let (v, shape) = ckpt.read_any(name).unwrap();
    let dims: [usize; D] = shape.try_into().unwrap();
    Tensor::from_data(TensorData::new(v, dims), &Default::default())
}

/// Prints and returns max abs error / max(1, max |reference|).
fn compare(label: &str, ours: Vec<f32>, reference: Vec<f32>) -> f64 {
    assert_eq!(ours.len(), reference.len(), "{label}: size");
    let (mut abs, mut scale, mut rel) = (0f64, 0f64, 0f64);
    for (&x, &y) in ours.iter().zip(&reference) {
        let d = (x as f64 - y as f64).abs();
        abs = abs.max(d);
        scale = scale.max((y as f64).abs());
        if y.abs() >= 1e-2 {
            rel = rel.max(d / y.abs() as f64);
        }
    }
    println!("{label:<22} max abs {abs:.2e}  max rel {rel:.2e}  (max |ref| {scale:.3})");
    abs / scale.max(1.0)
}

fn check(name: &str) {
    let device = Default::default();
    let unet = UNet2DConditionModel::<B>::from_dir(dir(name), &device).unwrap();
    let refs = Checkpoint::open(dir(name).join("reference.safetensors")).unwrap();
    let (timesteps, _) = refs.read_any("timesteps").unwrap();
    let timesteps: Vec<f64> = timesteps.iter().map(|&t| t as f64).collect();
    let sample: Tensor<B, 4> = tensor(&refs, "sample");
    let ehs: Tensor<B, 3> = tensor(&refs, "encoder_hidden_states");

    let dim0 = unet.config().block_out_channels[0];
    let t_emb = timestep_embedding(&timesteps, dim0, true, 0.0);
    let mut worst = compare(
        &format!("{name} t_emb"),
        t_emb,
        refs.read_any("t_emb").unwrap().0,
    );
    let out = unet
        .forward_timesteps(sample.clone(), &timesteps, ehs.clone())
        .unwrap();
    worst = worst.max(compare(
        &format!("{name} out"),
        out.into_data().to_vec().unwrap(),
        refs.read_any("out").unwrap().0,
    ));
    let out_t = unet.forward(sample, 501.0, ehs).unwrap();
    worst = worst.max(compare(
        &format!("{name} out(t=501)"),
        out_t.into_data().to_vec().unwrap(),
        refs.read_any("out_t").unwrap().0,
    ));
    assert!(
        worst < 1e-4,
        "{name}: max abs error / max(1, scale) {worst:.3e}"
    );
}

#[test]
fn unet_sd15_layout_matches_diffusers() {
    check("unet-tiny-sd15");
}

#[test]
fn unet_sd2_layout_matches_diffusers() {
    let cfg = UNet2DConditionConfig::from_file(dir("unet-tiny-sd2").join("config.json")).unwrap();
    assert!(cfg.use_linear_projection);
    assert_eq!(cfg.attention_heads, vec![2, 2, 4]);
    assert_eq!(cfg.transformer_layers_per_block, vec![2, 1, 1]);
    check("unet-tiny-sd2");
}

#[test]
fn unet_rejects_bad_inputs_and_configs() {
    let device = Default::default();
    let unet = UNet2DConditionModel::<B>::from_dir(dir("unet-tiny-sd15"), &device).unwrap();
    let ehs = Tensor::<B, 3>::zeros([1, 3, 12], &device);
    // Wrong channels, a size not divisible by 2, the wrong text width, a batch mismatch.
    for (sample, ehs) in [
        (Tensor::<B, 4>::zeros([1, 4, 8, 8], &device), ehs.clone()),
        (Tensor::<B, 4>::zeros([1, 9, 7, 8], &device), ehs.clone()),
        (
            Tensor::<B, 4>::zeros([1, 9, 8, 8], &device),
            Tensor::<B, 3>::zeros([1, 3, 11], &device),
        ),
        (Tensor::<B, 4>::zeros([2, 9, 8, 8], &device), ehs.clone()),
    ] {
        let e = unet.forward(sample, 10.0, ehs).err().unwrap();
        assert!(matches!(e, DiffusionError::InputShape { .. }), "{e}");
    }
    let e = unet
        .forward_timesteps(Tensor::zeros([1, 9, 8, 8], &device), &[1.0, 2.0], ehs)
        .err()
        .unwrap();
    assert!(matches!(e, DiffusionError::InputShape { .. }), "{e}");

    // Unsupported or inconsistent configs.
    let text = std::fs::read_to_string(dir("unet-tiny-sd15").join("config.json")).unwrap();
    let base: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (key, value) in [
        ("addition_embed_type", serde_json::json!("text_time")),
        ("class_embed_type", serde_json::json!("timestep")),
        ("attention_head_dim", serde_json::json!([2, 2, 2])),
        ("attention_head_dim", serde_json::json!(3)),
        (
            "down_block_types",
            serde_json::json!(["CrossAttnDownBlock2D", "AttnDownBlock2D"]),
        ),
        ("only_cross_attention", serde_json::json!(true)),
        ("resnet_time_scale_shift", serde_json::json!("scale_shift")),
        ("layers_per_block", serde_json::json!("one")),
    ] {
        let mut json = base.clone();
        json[key] = value.clone();
        assert!(
            UNet2DConditionConfig::from_json(&json, "test").is_err(),
            "{key} = {value}"
        );
    }
    // A config wider than the checkpoint names the first tensor that does not fit.
    let mut json = base.clone();
    json["cross_attention_dim"] = serde_json::json!(16);
    let cfg = UNet2DConditionConfig::from_json(&json, "test").unwrap();
    let ckpt = Checkpoint::open(dir("unet-tiny-sd15")).unwrap();
    let e = UNet2DConditionModel::<B>::load(&ckpt.weights(), &cfg, &device)
        .err()
        .unwrap();
    assert!(
        matches!(&e, DiffusionError::TensorShape { name, .. }
            if name == "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"),
        "{e}"
    );
}
