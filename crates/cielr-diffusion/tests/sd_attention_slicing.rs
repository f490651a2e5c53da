//! Sliced attention ([`AttentionSlicing`]) computes what the unsliced attention computes: the
//! bare function on random inputs (whole-head groups and row slices, ragged last slices), the
//! tiny UNet and the tiny VAE (their mid-block attention) with tiny slice bounds that force
//! every path, compared with slicing off.

use std::path::PathBuf;

use burn::tensor::{Distribution, Tensor, TensorData};
use cielr_core::backend::CpuBackend;
use cielr_diffusion::blocks::{attention, AttentionSlicing};
use cielr_diffusion::unet::UNet2DConditionModel;
use cielr_diffusion::vae::AutoencoderKl;
use cielr_diffusion::weights::Checkpoint;

type B = CpuBackend;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn max_abs_diff<const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).abs().max().into_data().to_vec::<f32>().unwrap()[0]
}

fn max_abs<const D: usize>(a: Tensor<B, D>) -> f32 {
    a.abs().max().into_data().to_vec::<f32>().unwrap()[0]
}

#[test]
fn sliced_attention_equals_unsliced() {
    let device = Default::default();
    let (bh, n, s, d) = (6, 37, 23, 5);
    let q = Tensor::<B, 3>::random([bh, n, d], Distribution::Normal(0.0, 1.0), &device);
    let k = Tensor::<B, 3>::random([bh, s, d], Distribution::Normal(0.0, 1.0), &device);
    let v = Tensor::<B, 3>::random([bh, s, 7], Distribution::Normal(0.0, 1.0), &device);
    let scale = 1.0 / (d as f64).sqrt();
    let full = attention(
        q.clone(),
        k.clone(),
        v.clone(),
        scale,
        AttentionSlicing::Off,
    );
    assert_eq!(full.dims(), [bh, n, 7]);
    assert!(max_abs(full.clone()) > 0.1);
    // Bounds: everything at once, 4 heads per slice (ragged: 4 + 2), whole single heads,
    // 10 rows (ragged: 37 = 3 * 10 + 7), 1 row, and a bound below one row.
    for max in [
        bh * n * s,
        4 * n * s,
        n * s,
        10 * s,
        s,
        1,
        AttentionSlicing::DEFAULT_MAX_SCORES,
    ] {
        let sliced = attention(
            q.clone(),
            k.clone(),
            v.clone(),
            scale,
            AttentionSlicing::MaxScores(max),
        );
        let diff = max_abs_diff(sliced, full.clone());
        println!("max scores {max:>9}: max abs diff {diff:.2e}");
        assert!(diff <= 1e-6, "bound {max}: {diff:.3e}");
    }
    // The fused kernel (the default on the CPU backend) computes the same.
    for slicing in [AttentionSlicing::Fused, AttentionSlicing::Auto] {
        let fused = attention(q.clone(), k.clone(), v.clone(), scale, slicing);
        let diff = max_abs_diff(fused, full.clone());
        println!("{slicing:?}: max abs diff {diff:.2e}");
        assert!(diff <= 1e-6, "{slicing:?}: {diff:.3e}");
    }
}

#[test]
fn sliced_unet_equals_unsliced() {
    let device = Default::default();
    for name in ["unet-tiny-sd15", "unet-tiny-sd2"] {
        let mut unet = UNet2DConditionModel::<B>::from_dir(fixture(name), &device).unwrap();
        let refs = Checkpoint::open(fixture(name).join("reference.safetensors")).unwrap();
        let read = |key: &str| refs.read_any(key).unwrap();
        let (sample, shape) = read("sample");
        let sample: Tensor<B, 4> = Tensor::from_data(
            TensorData::new(sample, [shape[0], shape[1], shape[2], shape[3]]),
            &device,
        );
        let (ehs, shape) = read("encoder_hidden_states");
        let ehs: Tensor<B, 3> = Tensor::from_data(
            TensorData::new(ehs, [shape[0], shape[1], shape[2]]),
            &device,
        );
        unet.set_attention_slicing(AttentionSlicing::Off);
        let full = unet.forward(sample.clone(), 501.0, ehs.clone()).unwrap();
        for slicing in [
            AttentionSlicing::MaxScores(64),
            AttentionSlicing::MaxScores(7),
            AttentionSlicing::Fused,
        ] {
            unet.set_attention_slicing(slicing);
            let sliced = unet.forward(sample.clone(), 501.0, ehs.clone()).unwrap();
            let diff = max_abs_diff(sliced, full.clone());
            println!("{name} {slicing:?}: max abs diff {diff:.2e}");
            assert!(diff <= 1e-5, "{name} {slicing:?}: {diff:.3e}");
        }
    }
}

#[test]
fn sliced_vae_equals_unsliced() {
    let device = Default::default();
    let mut vae = AutoencoderKl::<B>::from_dir(fixture("vae-tiny"), &device).unwrap();
    let input = Tensor::<B, 4>::random([1, 3, 24, 16], Distribution::Uniform(-1.0, 1.0), &device);
    vae.set_attention_slicing(AttentionSlicing::Off);
    let mean = vae.encode(input.clone()).unwrap().mean;
    let decoded = vae.decode(mean.clone()).unwrap();
    for slicing in [
        AttentionSlicing::MaxScores(50),
        AttentionSlicing::MaxScores(1),
        AttentionSlicing::Fused,
    ] {
        vae.set_attention_slicing(slicing);
        let d_mean = max_abs_diff(vae.encode(input.clone()).unwrap().mean, mean.clone());
        let d_dec = max_abs_diff(vae.decode(mean.clone()).unwrap(), decoded.clone());
        println!("vae {slicing:?}: encode {d_mean:.2e}, decode {d_dec:.2e}");
        assert!(d_mean <= 1e-5 && d_dec <= 1e-5, "{slicing:?}");
    }
}
