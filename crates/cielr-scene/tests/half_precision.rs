//! The whole SSR builder (OWLv2, SAM / SAM 2.1 automatic masks, Depth Anything V2) in bf16: the
//! device's default float dtype is set before any tensor exists, so the tiny checkpoints load
//! in bf16 and every op and read-back runs in it (what `gpu_check --precision` does on CUDA
//! with f16). A file of its own: the default dtype is per device and per process, and the
//! other tests need f32.

mod ssr_common;

use burn::tensor::backend::set_default_float_dtype;
use burn::tensor::{DType, FloatDType, Tensor};
use cielr_scene::ssr_builder::{BurnSsrBuilder, SsrBuilderOptions};
use ssr_common::{fixture, keep_every_mask};

type B = cielr_core::backend::CpuBackend;

#[test]
fn the_ssr_builder_runs_in_bf16_with_sam_and_sam2() {
    let device = burn::tensor::Device::<B>::default();
    set_default_float_dtype::<B>(&device, FloatDType::BF16).unwrap();
    assert_eq!(Tensor::<B, 1>::zeros([2], &device).dtype(), DType::BF16);
    // Random weights: keep every box and every mask, so masks reach every later step.
    let options = SsrBuilderOptions {
        box_threshold: 0.0,
        amg: keep_every_mask(),
        ..Default::default()
    };
    for sam in ["sam-tiny", "sam2-tiny"] {
        let builder = BurnSsrBuilder::<B>::from_dirs(
            fixture("owlv2-tiny"),
            fixture(sam),
            fixture("depth-anything-tiny"),
            options.clone(),
            &device,
        )
        .unwrap();
        let image = image::open(fixture(&format!("{sam}/image.png")))
            .unwrap()
            .to_rgb8();
        let queries = vec!["cup".to_string(), "table".to_string()];
        let scene = builder
            .build_scene(&image, &queries)
            .unwrap_or_else(|e| panic!("{sam} in bf16: {e}"));
        scene.validate().unwrap();
        assert_eq!((scene.width, scene.height), image.dimensions());
        assert!(!scene.objects.is_empty(), "{sam}: no objects in bf16");
        for o in &scene.objects {
            let depth = o.depth.unwrap();
            assert!((0.0..=1.0).contains(&depth), "{sam}: depth {depth}");
            assert!(o.mask.as_ref().unwrap().area() > 0);
        }
    }
}
