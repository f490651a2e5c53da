//! Parity with torchmetrics: `tools/eval/metrics_reference.py` wrote the fixtures and the
//! reference numbers (protocol preparation in PyTorch, then torchmetrics PSNR/SSIM/MSE).

use std::path::PathBuf;

use cielr_core::traits::{Metric, MetricInput};
use cielr_eval::{protocol_scores, MetricConfig, Mse, Psnr, Ssim, Variant};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn field(v: &serde_json::Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("missing {k}"))
}

#[test]
fn matches_torchmetrics_after_protocol_preparation() {
    let text = std::fs::read_to_string(fixtures().join("reference.json")).unwrap();
    let refs: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert!(refs.len() >= 3);
    for r in &refs {
        let name = r["name"].as_str().unwrap();
        let size = r["size"].as_u64().unwrap() as u32;
        let load = |s: &str| image::open(fixtures().join(format!("{name}_{s}.png"))).unwrap();
        let orig = load("orig").to_rgb8();
        let edited = load("edited").to_rgb8();
        let mask = load("mask").to_luma8();
        let s = protocol_scores(&orig, &edited, &mask, Some(size)).unwrap();
        let got = [
            ("psnr", s.psnr),
            ("ssim", s.ssim),
            ("mse", s.mse),
            ("clean_psnr", s.clean_psnr.unwrap()),
            ("clean_ssim", s.clean_ssim.unwrap()),
            ("clean_mse", s.clean_mse.unwrap()),
        ];
        for (k, v) in got {
            let want = field(r, k);
            let err = (v - want).abs();
            println!("{name} {size}px {k}: ours {v:.9} torchmetrics {want:.9} abs err {err:.3e}");
            let ok = if k.ends_with("psnr") {
                err < 1e-3
            } else if k.ends_with("ssim") {
                err < 1e-4
            } else {
                err <= 1e-6 * want.abs()
            };
            assert!(ok, "{name} {k}: {v} vs {want}");
        }
    }
}

#[test]
fn metric_trait_wrappers_agree_with_protocol_scores() {
    let load = |s: &str| image::open(fixtures().join(format!("coffee_{s}.png"))).unwrap();
    let orig = load("orig").to_rgb8();
    let edited = load("edited").to_rgb8();
    let gray = load("mask").to_luma8();
    let mask = cielr_core::Mask::from_gray(&gray, 128).unwrap();
    let binary = mask.to_gray();
    let want = protocol_scores(&orig, &edited, &binary, Some(64)).unwrap();
    let input = MetricInput {
        original: &orig,
        edited: &edited,
        mask: Some(&mask),
        text: None,
    };
    for variant in [Variant::Protocol, Variant::Clean] {
        let c = MetricConfig {
            size: Some(64),
            variant,
        };
        let clean = variant == Variant::Clean;
        let pick = |p: f64, q: Option<f64>| if clean { q.unwrap() } else { p };
        assert_eq!(
            Psnr(c).compute(input).unwrap(),
            pick(want.psnr, want.clean_psnr)
        );
        assert_eq!(
            Ssim(c).compute(input).unwrap(),
            pick(want.ssim, want.clean_ssim)
        );
        assert_eq!(
            Mse(c).compute(input).unwrap(),
            pick(want.mse, want.clean_mse)
        );
        assert!(Psnr(c).higher_is_better() && Ssim(c).higher_is_better());
        assert!(!Mse(c).higher_is_better());
    }
    assert_eq!(Psnr::default().name(), "psnr");
    assert_eq!(
        Ssim(MetricConfig {
            size: None,
            variant: Variant::Clean
        })
        .name(),
        "ssim_clean"
    );
}

#[test]
fn errors_instead_of_panics() {
    let a = image::RgbImage::new(8, 8);
    let b = image::RgbImage::new(9, 8);
    let m = image::GrayImage::new(8, 8);
    assert!(protocol_scores(&a, &b, &m, None).is_err());
    assert!(protocol_scores(&a, &a, &image::GrayImage::new(8, 7), None).is_err());
    let empty = image::RgbImage::new(0, 0);
    assert!(protocol_scores(&empty, &empty, &image::GrayImage::new(0, 0), Some(16)).is_err());
    assert!(protocol_scores(&a, &a, &m, Some(0)).is_err());
    // Too small for the SSIM window's reflect padding.
    let tiny = image::RgbImage::new(4, 4);
    assert!(protocol_scores(&tiny, &tiny, &image::GrayImage::new(4, 4), None).is_err());
    // Fully masked: the protocol numbers exist (images all zero), the clean ones do not.
    let full = image::GrayImage::from_pixel(8, 8, image::Luma([255]));
    let s = protocol_scores(&a, &a, &full, None).unwrap();
    assert_eq!(s.mse, 0.0);
    assert!(s.psnr.is_infinite());
    assert!(s.clean_mse.is_none() && s.clean_psnr.is_none() && s.clean_ssim.is_none());
    let whole = cielr_core::Mask::full(8, 8).unwrap();
    let input = MetricInput {
        original: &a,
        edited: &a,
        mask: Some(&whole),
        text: None,
    };
    let clean = MetricConfig {
        size: None,
        variant: Variant::Clean,
    };
    assert!(Mse(clean).compute(input).is_err());
}
