//! LPIPS (SqueezeNet) parity with torchmetrics'
//! `LearnedPerceptualImagePatchSimilarity(net_type="squeeze", normalize=False)`, reference
//! values from `tools/eval/lpips_reference.py` (`fixtures/lpips_squeeze/reference.json`).
//!
//! The backbone weights are RANDOM: torchvision cannot download the real ImageNet SqueezeNet
//! here, and its features are too big to commit, so both sides generate the same weights from
//! the documented SplitMix64 scheme of `tools/eval/lpips_prng.py` (re-implemented below, bit
//! for bit). The seven linear heads are the real LPIPS v0.1 squeeze heads
//! (`fixtures/lpips_squeeze/heads.safetensors`). The inputs are real photos (the triples of
//! `fixtures/`, also used by the PSNR/SSIM parity) through the protocol's preparation at 512
//! and 256 pixels, masked by multiplication, plus one unmasked pair with a large distance.
//! The weights travel through the documented file format (one safetensors buffer).

use std::path::{Path, PathBuf};

use cielr_core::backend::CpuBackend;
use cielr_core::traits::{Metric, MetricInput};
use cielr_core::weights::TensorStore;
use cielr_eval::lpips::{lpips_scores, scores_from_maps, Lpips, LpipsSqueeze};
use cielr_eval::{MetricConfig, Variant};
use image::GrayImage;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::Value;

type B = CpuBackend;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

const SEED: u64 = 20261127;

/// `(name, in, out, kernel)` of every convolution, torchvision's state-dict order.
fn convs() -> Vec<(String, usize, usize, usize)> {
    let fires = [
        (3, 64, 16, 64),
        (4, 128, 16, 64),
        (6, 128, 32, 128),
        (7, 256, 32, 128),
        (9, 256, 48, 192),
        (10, 384, 48, 192),
        (11, 384, 64, 256),
        (12, 512, 64, 256),
    ];
    let mut out = vec![("features.0".to_string(), 3, 64, 3)];
    for (i, c_in, sq, ex) in fires {
        out.push((format!("features.{i}.squeeze"), c_in, sq, 1));
        out.push((format!("features.{i}.expand1x1"), sq, ex, 1));
        out.push((format!("features.{i}.expand3x3"), sq, ex, 3));
    }
    out
}

/// The random backbone of `lpips_prng.py`: `(name, shape, values)` in generation order.
fn prng_backbone() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut counter: u64 = 0;
    let mut next = || {
        counter += 1;
        let mut z = SEED.wrapping_add(counter.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 * (1.0 / (1u32 << 24) as f32)
    };
    let mut out = Vec::new();
    for (name, c_in, c_out, k) in convs() {
        let fan_in = (c_in * k * k) as f64;
        for (leaf, shape, bound) in [
            (
                "weight",
                vec![c_out, c_in, k, k],
                (6.0 / fan_in).sqrt() as f32,
            ),
            ("bias", vec![c_out], (1.0 / fan_in.sqrt()) as f32),
        ] {
            let n: usize = shape.iter().product();
            let v = (0..n).map(|_| (next() * 2.0 - 1.0) * bound).collect();
            out.push((format!("{name}.{leaf}"), shape, v));
        }
    }
    out
}

/// The backbone plus the real heads (optionally without `lin{skip_head}`), serialised in the
/// documented weights format.
fn weights_file(skip_head: Option<usize>) -> Vec<u8> {
    let heads_bytes = std::fs::read(fixtures().join("lpips_squeeze/heads.safetensors")).unwrap();
    let heads = safetensors::SafeTensors::deserialize(&heads_bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = prng_backbone()
        .into_iter()
        .map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    for k in 0..7 {
        if Some(k) == skip_head {
            continue;
        }
        let t = heads.tensor(&format!("lin{k}.weight")).unwrap();
        assert_eq!(t.dtype(), Dtype::F32);
        tensors.push((
            format!("lin{k}.weight"),
            t.shape().to_vec(),
            t.data().to_vec(),
        ));
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

fn network() -> LpipsSqueeze<B> {
    let store = TensorStore::from_buffers(vec![(
        PathBuf::from("random-squeezenet"),
        weights_file(None),
    )])
    .unwrap();
    LpipsSqueeze::load(&store.weights(), &Default::default()).unwrap()
}

fn rel(ours: f64, reference: f64) -> f64 {
    (ours - reference).abs() / reference.abs().max(1e-3)
}

#[test]
fn prng_matches_python() {
    let refs: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("lpips_squeeze/reference.json")).unwrap(),
    )
    .unwrap();
    let check = &refs["prng_check"];
    assert_eq!(refs["prng_seed"].as_u64(), Some(SEED));
    let w = prng_backbone();
    let first: Vec<f64> = w[0].2[..4].iter().map(|&x| x as f64).collect();
    let want: Vec<f64> = check["features.0.weight[:4]"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(first, want, "first generated weights (bit-exact)");
    let last = &w.last().unwrap().2;
    let want: Vec<f64> = check["features.12.expand3x3.bias[-3:]"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let got: Vec<f64> = last[last.len() - 3..].iter().map(|&x| x as f64).collect();
    assert_eq!(got, want, "last generated biases (bit-exact)");
    let sum_abs: f64 = w
        .iter()
        .flat_map(|(_, _, v)| v.iter())
        .map(|&x| x.abs() as f64)
        .sum();
    assert!((sum_abs - check["sum_abs"].as_f64().unwrap()).abs() < 1e-6);
}

#[test]
fn lpips_matches_torchmetrics_on_real_photos() {
    let start = std::time::Instant::now();
    let refs: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("lpips_squeeze/reference.json")).unwrap(),
    )
    .unwrap();
    let net = network();
    let device = Default::default();
    let (mut worst_abs, mut worst_rel) = (0f64, 0f64);
    let (mut clean_abs, mut clean_rel) = (0f64, 0f64);
    for case in refs["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let size = case["size"].as_u64().unwrap() as u32;
        let masked = case["masked"].as_bool().unwrap();
        let load = |suffix: &str| {
            image::open(fixtures().join(format!("{name}_{suffix}.png")))
                .unwrap()
                .to_rgb8()
        };
        let (orig, edited) = (load("orig"), load("edited"));
        let mask = if masked {
            image::open(fixtures().join(format!("{name}_mask.png")))
                .unwrap()
                .to_luma8()
        } else {
            GrayImage::new(orig.width(), orig.height())
        };
        let p = cielr_eval::prepare(&orig, &edited, &mask, Some(size)).unwrap();
        let maps = net.maps(&p.edited, &p.original, &device).unwrap();
        for (k, (ours, want)) in maps
            .stage_means()
            .iter()
            .zip(case["layers"].as_array().unwrap())
            .enumerate()
        {
            let want = want.as_f64().unwrap();
            let r = (ours - want).abs() / want.abs();
            assert!(r < 1e-3, "{name}@{size} stage {k}: {ours} vs {want}");
        }
        let scores = scores_from_maps(&maps, &p.mask).unwrap();
        let want = case["lpips"].as_f64().unwrap();
        let (abs, r) = (
            (scores.lpips - want).abs(),
            (scores.lpips - want).abs() / want,
        );
        println!(
            "{name}@{size} masked={masked}: lpips {:.9e} vs torchmetrics {want:.9e} (abs {abs:.2e}, rel {r:.2e})",
            scores.lpips
        );
        assert!(r < 2e-4, "{name}@{size}: lpips {} vs {want}", scores.lpips);
        worst_abs = worst_abs.max(abs);
        worst_rel = worst_rel.max(r);
        let want_clean = case["clean_lpips"].as_f64().unwrap();
        let clean = scores.clean_lpips.unwrap();
        let (abs, r) = (
            (clean - want_clean).abs(),
            (clean - want_clean).abs() / want_clean,
        );
        println!("  clean {clean:.9e} vs {want_clean:.9e} (abs {abs:.2e}, rel {r:.2e})");
        assert!(
            r < 2e-4,
            "{name}@{size}: clean lpips {clean} vs {want_clean}"
        );
        clean_abs = clean_abs.max(abs);
        clean_rel = clean_rel.max(r);
        assert!(rel(scores.lpips, case["lpips_package"].as_f64().unwrap()) < 2e-4);
    }
    println!(
        "worst: lpips abs {worst_abs:.2e} rel {worst_rel:.2e}; clean abs {clean_abs:.2e} rel {clean_rel:.2e}; {:.1?}",
        start.elapsed()
    );
}

#[test]
fn metric_wrapper_and_errors() {
    // The Metric wrapper (and `lpips_scores`) on the unmasked pair equal the reference.
    let refs: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("lpips_squeeze/reference.json")).unwrap(),
    )
    .unwrap();
    let case = refs["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["masked"] == false)
        .unwrap();
    let name = case["name"].as_str().unwrap();
    let size = case["size"].as_u64().unwrap() as u32;
    let load = |suffix: &str| {
        image::open(fixtures().join(format!("{name}_{suffix}.png")))
            .unwrap()
            .to_rgb8()
    };
    let (orig, edited) = (load("orig"), load("edited"));
    let config = MetricConfig {
        size: Some(size),
        variant: Variant::Protocol,
    };
    let metric = Lpips::with_network(network(), config);
    assert_eq!(metric.name(), "lpips");
    assert!(!metric.higher_is_better());
    let input = MetricInput {
        original: &orig,
        edited: &edited,
        mask: None,
        text: None,
    };
    let v = metric.compute(input).unwrap();
    let want = case["lpips"].as_f64().unwrap();
    assert!(rel(v, want) < 2e-4, "{v} vs {want}");
    let blank = GrayImage::new(orig.width(), orig.height());
    let net = network();
    let s = lpips_scores(
        &net,
        &orig,
        &edited,
        &blank,
        Some(size),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(s.lpips, v);
    let want_clean = case["clean_lpips"].as_f64().unwrap();
    assert!(rel(s.clean_lpips.unwrap(), want_clean) < 2e-4);

    // Without weights: an error that says why, not a number.
    let none = Lpips::new(None, config).unwrap();
    let err = none.compute(input).unwrap_err().to_string();
    assert!(err.contains("no LPIPS weights"), "{err}");

    // A file missing a head names the tensor.
    let store =
        TensorStore::from_buffers(vec![(PathBuf::from("no-lin6"), weights_file(Some(6)))]).unwrap();
    let err = LpipsSqueeze::<B>::load(&store.weights(), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("lin6.weight"), "{err}");

    // Too small for SqueezeNet's poolings.
    let tiny = image::RgbImage::new(16, 16);
    let small = Lpips::with_network(
        network(),
        MetricConfig {
            size: None,
            variant: Variant::Clean,
        },
    );
    let err = small
        .compute(MetricInput {
            original: &tiny,
            edited: &tiny,
            mask: None,
            text: None,
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least 31x31"), "{err}");
}
