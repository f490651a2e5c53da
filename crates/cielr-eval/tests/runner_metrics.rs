//! LPIPS and CLIPScore wired into the runner: the numbers in the reports are the ones the
//! metric functions give on the saved outputs with the stored (greyscale) mask. The weights
//! are not real: a deterministic LPIPS network written here and the tiny random CLIP
//! fixture of `cielr-scene` (their parity is tested in lpips_parity.rs / clip_score_parity.rs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use cielr_core::backend::CpuBackend;
use cielr_core::{EditOp, EditRequest, Editor};
use cielr_eval::clip_score::{protocol_crop, ClipScorer};
use cielr_eval::datasets::load_manifest;
use cielr_eval::lpips::{lpips_scores, LpipsSqueeze};
use cielr_eval::runner::{
    read_samples, ClipMetric, Components, LpipsMetric, PreservationMetrics, RunOptions, Runner,
    SampleMetric, Stage,
};
use image::{GrayImage, Luma, Rgb, RgbImage};
use safetensors::{Dtype, View};

struct Invert;

#[async_trait]
impl Editor for Invert {
    fn name(&self) -> String {
        "invert".into()
    }
    fn supports(&self, _op: EditOp) -> bool {
        true
    }
    async fn edit(&self, r: EditRequest<'_>) -> cielr_core::Result<RgbImage> {
        let mut out = r.image.clone();
        out.pixels_mut()
            .for_each(|p| p.0.iter_mut().for_each(|v| *v = 255 - *v));
        Ok(out)
    }
}

struct F32Tensor(Vec<usize>, Vec<u8>);

impl View for &F32Tensor {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.0
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.1)
    }
    fn data_len(&self) -> usize {
        self.1.len()
    }
}

/// A deterministic LPIPS weights file (SqueezeNet 1.1 feature shapes and 7 heads).
fn lpips_weights(path: &Path) {
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
    let mut convs = vec![("features.0".to_string(), 3, 64, 3)];
    for (i, c_in, sq, ex) in fires {
        convs.push((format!("features.{i}.squeeze"), c_in, sq, 1));
        convs.push((format!("features.{i}.expand1x1"), sq, ex, 1));
        convs.push((format!("features.{i}.expand3x3"), sq, ex, 3));
    }
    let mut k = 0u32;
    let mut values = |n: usize, scale: f32| -> Vec<u8> {
        (0..n)
            .flat_map(|_| {
                k += 1;
                (((k as f32 * 0.618).fract() * 2.0 - 1.0) * scale).to_le_bytes()
            })
            .collect()
    };
    let mut tensors = Vec::new();
    for (name, c_in, c_out, ks) in convs {
        let fan = (c_in * ks * ks) as f32;
        let w = values(c_out * c_in * ks * ks, (6.0 / fan).sqrt());
        let b = values(c_out, 0.1);
        tensors.push((
            format!("{name}.weight"),
            F32Tensor(vec![c_out, c_in, ks, ks], w),
        ));
        tensors.push((format!("{name}.bias"), F32Tensor(vec![c_out], b)));
    }
    for (i, c) in [64, 128, 256, 384, 384, 512, 512].into_iter().enumerate() {
        let w: Vec<u8> = (0..c)
            .flat_map(|j| (0.01 + 0.001 * (j % 7) as f32).to_le_bytes())
            .collect();
        tensors.push((format!("lin{i}.weight"), F32Tensor(vec![1, c, 1, 1], w)));
    }
    let views: Vec<(String, &F32Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn clip_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../cielr-scene/tests/fixtures/clip-tiny-gelu")
}

#[test]
fn lpips_and_clip_reach_the_reports() {
    let dir = std::env::temp_dir().join(format!("cielr-runner-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let img = RgbImage::from_fn(48, 40, |x, y| Rgb([(x * 5) as u8, (y * 6) as u8, 90]));
    img.save(dir.join("a.png")).unwrap();
    // A greyscale mask with soft values: the protocol uses them unthresholded.
    let mask = GrayImage::from_fn(48, 40, |x, y| {
        Luma([match (x, y) {
            (12..30, 10..28) => 255,
            (10..32, 8..30) => 60,
            _ => 0,
        }])
    });
    mask.save(dir.join("m.png")).unwrap();
    let manifest = dir.join("set.jsonl");
    std::fs::write(
        &manifest,
        "{\"manifest\": {\"size\": 64}}\n{\"id\": \"a\", \"image\": \"a.png\", \"mask\": \"m.png\", \"instruction\": \"Remove it.\", \"target\": \"a red cup\"}\n",
    )
    .unwrap();
    let weights = dir.join("lpips.safetensors");
    lpips_weights(&weights);

    let runner = Runner {
        components: Components {
            editor: Some(Arc::new(Invert)),
            ..Default::default()
        },
        metrics: vec![
            Arc::new(PreservationMetrics) as Arc<dyn SampleMetric>,
            Arc::new(LpipsMetric::from_file(&weights).unwrap()),
            Arc::new(ClipMetric::from_pretrained(&clip_dir()).unwrap()),
        ],
        absent: BTreeMap::new(),
        idcs: None,
        options: RunOptions {
            stage: Stage::Edit,
            dilate: 0.0,
            ..Default::default()
        },
    };
    let out = dir.join("out");
    let ds = load_manifest(&manifest).unwrap();
    pollster::block_on(runner.run(&ds, &out, &|_| {})).unwrap();
    let rec = &read_samples(&out.join("samples.jsonl")).unwrap()[0];
    assert!(rec.ok(), "{:?}", rec.error);
    let got = rec.best.as_ref().unwrap();
    let edited = image::open(out.join(rec.runs[0].output.as_ref().unwrap()))
        .unwrap()
        .to_rgb8();

    let net = LpipsSqueeze::<CpuBackend>::from_file(&weights, &Default::default()).unwrap();
    let want = lpips_scores(&net, &img, &edited, &mask, Some(64), &Default::default()).unwrap();
    assert_eq!(got["lpips"], want.lpips);
    assert_eq!(got["lpips_clean"], want.clean_lpips.unwrap());
    assert!(want.lpips > 0.0);

    let scorer =
        ClipScorer::<CpuBackend>::from_pretrained(clip_dir(), &Default::default()).unwrap();
    let crop = protocol_crop(&edited, Some(&mask), Some(64)).unwrap();
    assert_eq!(got["clip"], scorer.score(&crop, "a red cup").unwrap());

    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["metrics"]["lpips"], want.lpips);
    assert!(summary["absent"].get("lpips").is_none());
    std::fs::remove_dir_all(&dir).unwrap();
}
