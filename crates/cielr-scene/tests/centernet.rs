//! CenterNet-MobileNetV3 with the real weights: parity with TF.js (the human library's
//! runtime) and detection on scikit-image photos.
//!
//! The weights are not in the repository: `tools/setup-models.sh` puts them in the model
//! cache (`$CIELR_CACHE`, else `~/.cache/cielr`). Without them these tests fail and say so.
//! The fixtures in `tests/fixtures/centernet/` come from `tools/detector/centernet_parity.js`
//! (TF.js 4.22.0, pure-JS CPU backend).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use cielr_core::backend::CpuBackend;
use cielr_core::{BBox, Scene, SceneBuilder};
use cielr_scene::centernet::{
    decode, postprocess, preprocess, CenterNet, DetectOptions, Detection, InputTransform,
    RawOutput, ResizeMode, CENTERNET_TOP_K,
};
use cielr_scene::coco::COCO_LABELS;
use cielr_scene::coco_detector::{CocoDetectorSceneBuilder, VERTICAL_POSITION_CUE};
use cielr_scene::model_cache::ModelCache;
use image::RgbImage;
use serde_json::Value;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model_json() -> PathBuf {
    let cache = ModelCache::from_env().unwrap_or_else(|e| panic!("{e}"));
    cache
        .centernet_json()
        .unwrap_or_else(|e| panic!("\n\nThe CenterNet tests need the real weights.\n{e}\n\n"))
}

fn model() -> &'static CenterNet<CpuBackend> {
    static MODEL: OnceLock<CenterNet<CpuBackend>> = OnceLock::new();
    MODEL.get_or_init(|| {
        let t = Instant::now();
        let m = CenterNet::load(model_json(), &Default::default()).unwrap();
        eprintln!(
            "CenterNet loaded in {:.0} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
        m
    })
}

fn photo(name: &str) -> RgbImage {
    let path = match name {
        "coffee" => manifest_dir().join("../../assets/coffee.png"),
        "chelsea" => manifest_dir().join("tests/fixtures/images/chelsea.png"),
        "astronaut-256" => manifest_dir().join("tests/fixtures/images/astronaut-256.png"),
        other => panic!("no photo {other}"),
    };
    image::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
}

fn fixture(name: &str) -> Value {
    let path = manifest_dir().join(format!("tests/fixtures/centernet/{name}.tfjs.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

/// Largest absolute and relative error over pairs (relative against |reference| >= floor).
#[derive(Default, Debug)]
struct Err {
    abs: f64,
    rel: f64,
    n: usize,
}

impl Err {
    fn add(&mut self, ours: f64, reference: f64, floor: f64) {
        let d = (ours - reference).abs();
        self.abs = self.abs.max(d);
        if reference.abs() >= floor {
            self.rel = self.rel.max(d / reference.abs());
        }
        self.n += 1;
    }
}

fn forward_stretch(name: &str) -> (RawOutput, Vec<f32>, InputTransform, f64) {
    let img = photo(name);
    let input = preprocess(&img, ResizeMode::Stretch).unwrap();
    let t = Instant::now();
    let raw = model().forward(&input.pixels).unwrap();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    (raw, input.pixels, input.transform, ms)
}

fn check_parity(name: &str) {
    let fx = fixture(name);
    let (raw, pixels, transform, ms) = forward_stretch(name);
    assert_eq!((raw.height, raw.width, raw.classes), (128, 128, 80));

    // Pre-processing: TF.js's resizeBilinear, reproduced.
    let mut input = Err::default();
    for s in fx["input"]["samples"].as_array().unwrap() {
        input.add(
            pixels[s[0].as_u64().unwrap() as usize] as f64,
            f(&s[1]),
            1.0,
        );
    }
    let sum: f64 = pixels.iter().map(|&v| v as f64).sum();
    let input_sum_rel = (sum - f(&fx["input"]["sum"])).abs() / f(&fx["input"]["sum"]);

    // Heads.
    let mut top = Err::default();
    for e in fx["keypoints"]["top"].as_array().unwrap() {
        top.add(
            raw.keypoints[e[0].as_u64().unwrap() as usize] as f64,
            f(&e[1]),
            1e-2,
        );
    }
    let mut kp_grid = Err::default();
    let g = &fx["keypoints"]["grid"];
    let (stride, offset) = (
        g["stride"].as_u64().unwrap() as usize,
        g["offset"].as_u64().unwrap() as usize,
    );
    let mut values = g["values"].as_array().unwrap().iter();
    for y in (offset..128).step_by(stride) {
        for x in (offset..128).step_by(stride) {
            for c in 0..80 {
                kp_grid.add(
                    raw.keypoints[(y * 128 + x) * 80 + c] as f64,
                    f(values.next().unwrap()),
                    1e-2,
                );
            }
        }
    }
    let mut wh_grid = Err::default();
    let g = &fx["wh"]["grid"];
    let (stride, offset) = (
        g["stride"].as_u64().unwrap() as usize,
        g["offset"].as_u64().unwrap() as usize,
    );
    let mut values = g["values"].as_array().unwrap().iter();
    for y in (offset..128).step_by(stride) {
        for x in (offset..128).step_by(stride) {
            for c in 0..4 {
                wh_grid.add(
                    raw.wh[(y * 128 + x) * 4 + c] as f64,
                    f(values.next().unwrap()),
                    1.0,
                );
            }
        }
    }
    let kp_sum: f64 = raw.keypoints.iter().map(|&v| v as f64).sum();
    let wh_sum: f64 = raw.wh.iter().map(|&v| v as f64).sum();
    let kp_sum_rel = (kp_sum - f(&fx["keypoints"]["sum"])).abs() / f(&fx["keypoints"]["sum"]);
    let wh_sum_rel = (wh_sum - f(&fx["wh"]["sum"])).abs() / f(&fx["wh"]["sum"]).abs();

    // Our decoding of our heads against the graph's `tower_0/detections`.
    let ours = decode(&raw, CENTERNET_TOP_K);
    let theirs: Vec<Vec<f64>> = fx["detections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(f).collect())
        .collect();
    assert_eq!(ours.len(), theirs.len());
    let mut det_box = Err::default();
    let mut det_score = Err::default();
    let mut in_order = 0;
    let mut matched = 0;
    for (i, c) in ours.iter().enumerate() {
        let same = |r: &Vec<f64>| {
            r[5] as usize == c.class
                && (0..4).all(|k| (r[k] - c.bbox[k] as f64).abs() < 0.05)
                && (r[4] - c.score as f64).abs() < 1e-3
        };
        if same(&theirs[i]) {
            in_order += 1;
        }
        if let Some(r) = theirs.iter().find(|r| same(r)) {
            matched += 1;
            for (&ours, &theirs) in c.bbox.iter().zip(r) {
                det_box.add(ours as f64, theirs, 1.0);
            }
            det_score.add(c.score as f64, r[4], 1e-2);
        }
    }
    let top_in_order = ours
        .iter()
        .zip(&theirs)
        .take(20)
        .all(|(c, r)| r[5] as usize == c.class && (r[4] - c.score as f64).abs() < 1e-3);

    eprintln!(
        "{name}: forward {ms:.0} ms | input max abs {:.2e} (sum rel {input_sum_rel:.1e}) | keypoints top-{} max abs {:.2e} rel {:.2e}, grid max abs {:.2e}, sum rel {kp_sum_rel:.1e} | wh grid max abs {:.2e} rel {:.2e}, sum rel {wh_sum_rel:.1e} | detections: {in_order}/100 in order, {matched}/100 matched, box max abs {:.2e} px, score max abs {:.2e}",
        input.abs, top.n, top.abs, top.rel, kp_grid.abs, wh_grid.abs, wh_grid.rel, det_box.abs, det_score.abs
    );
    assert!(input.abs < 1e-3, "{name}: input {input:?}");
    assert!(
        input_sum_rel < 1e-6,
        "{name}: input sum rel {input_sum_rel}"
    );
    assert!(
        top.abs < 1e-4 && top.rel < 1e-3,
        "{name}: keypoints top {top:?}"
    );
    assert!(kp_grid.abs < 1e-4, "{name}: keypoints grid {kp_grid:?}");
    assert!(kp_sum_rel < 1e-4, "{name}: keypoints sum rel {kp_sum_rel}");
    assert!(
        wh_grid.abs < 1e-2 && wh_grid.rel < 1e-3,
        "{name}: wh grid {wh_grid:?}"
    );
    assert!(wh_sum_rel < 1e-4, "{name}: wh sum rel {wh_sum_rel}");
    assert!(top_in_order, "{name}: the first 20 detections differ");
    assert!(matched >= 98, "{name}: only {matched}/100 detections match");
    assert!(
        det_box.abs < 0.05 && det_score.abs < 1e-4,
        "{name}: {det_box:?} {det_score:?}"
    );

    // The human library's post-processing (class-agnostic NMS at 0.4, score >= 0.2, at most
    // 10, stretch) gives the same objects.
    let human = DetectOptions {
        resize: ResizeMode::Stretch,
        min_score: 0.2,
        iou_threshold: 0.4,
        class_agnostic_nms: true,
        max_detections: 10,
    };
    let dets = postprocess(&ours, &transform, &human);
    let reference = fx["human"].as_array().unwrap();
    assert_eq!(
        dets.len(),
        reference.len(),
        "{name}: {dets:?} vs {reference:?}"
    );
    let image = BBox::new(
        0.0,
        0.0,
        transform.image_width as f64,
        transform.image_height as f64,
    );
    for (d, r) in dets.iter().zip(reference) {
        assert_eq!(d.class, r["class"].as_u64().unwrap() as usize);
        assert!((d.score as f64 - f(&r["score"])).abs() < 1e-4);
        let b: Vec<f64> = r["box"].as_array().unwrap().iter().map(f).collect();
        let rb = BBox::new(b[0], b[1], b[2], b[3]).intersect(&image).unwrap();
        let got = [d.bbox.x0, d.bbox.y0, d.bbox.x1, d.bbox.y1];
        let want = [rb.x0, rb.y0, rb.x1, rb.y1];
        for k in 0..4 {
            assert!(
                (got[k] - want[k]).abs() < 0.1,
                "{name}: {got:?} vs {want:?}"
            );
        }
    }
}

#[test]
fn parity_with_tfjs_coffee() {
    check_parity("coffee");
}

#[test]
fn parity_with_tfjs_chelsea() {
    check_parity("chelsea");
}

#[test]
fn parity_with_tfjs_astronaut() {
    check_parity("astronaut-256");
}

fn show(dets: &[Detection]) -> String {
    dets.iter()
        .map(|d| {
            format!(
                "{} {:.2} [{:.0}, {:.0}, {:.0}, {:.0}]",
                d.label, d.score, d.bbox.x0, d.bbox.y0, d.bbox.x1, d.bbox.y1
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Detects with the default options and checks that `label` is found with at least
/// `min_score` and a box overlapping the hand-measured one by IoU >= 0.5.
fn check_detects(name: &str, label: &str, min_score: f32, hand: BBox) {
    let img = photo(name);
    let t = Instant::now();
    let dets = model().detect(&img, &DetectOptions::default()).unwrap();
    eprintln!(
        "{name} ({}x{}): {} in {:.0} ms",
        img.width(),
        img.height(),
        show(&dets),
        t.elapsed().as_secs_f64() * 1e3
    );
    let best = dets
        .iter()
        .filter(|d| d.label == label)
        .max_by(|a, b| a.score.total_cmp(&b.score))
        .unwrap_or_else(|| panic!("{name}: no {label} among {}", show(&dets)));
    let iou = best.bbox.iou(&hand);
    assert!(
        best.score >= min_score,
        "{name}: {label} scores {}",
        best.score
    );
    assert!(
        iou >= 0.5,
        "{name}: {label} box {:?} has IoU {iou:.2} with {hand:?}",
        best.bbox
    );
    assert!(COCO_LABELS.contains(&best.label));
}

#[test]
fn finds_the_cup_in_coffee() {
    // Cup with its handle, measured by hand on the 600x400 photo.
    check_detects("coffee", "cup", 0.4, BBox::new(172.0, 16.0, 410.0, 305.0));
}

#[test]
fn finds_the_cat_in_chelsea() {
    check_detects("chelsea", "cat", 0.4, BBox::new(0.0, 0.0, 400.0, 300.0));
}

#[test]
fn finds_the_person_in_astronaut() {
    check_detects(
        "astronaut-256",
        "person",
        0.4,
        BBox::new(12.0, 7.0, 185.0, 256.0),
    );
}

fn builder() -> &'static CocoDetectorSceneBuilder<CpuBackend> {
    static BUILDER: OnceLock<CocoDetectorSceneBuilder<CpuBackend>> = OnceLock::new();
    BUILDER.get_or_init(|| {
        let cache = ModelCache::from_env().unwrap();
        let _ = model_json(); // fails loudly with the setup command when absent
        CocoDetectorSceneBuilder::from_cache(&cache, DetectOptions::default(), &Default::default())
            .unwrap()
    })
}

#[test]
fn scene_builder_builds_filters_and_refines() {
    let b = builder();
    let img = photo("coffee");
    let as_dyn: &dyn SceneBuilder = b;
    let t = Instant::now();
    let all = pollster::block_on(as_dyn.build(&img, &[])).unwrap();
    let build_ms = t.elapsed().as_secs_f64() * 1e3;
    eprintln!("coffee SSR (build {build_ms:.0} ms):\n{}", all.describe());
    all.validate().unwrap();
    assert_eq!(all.depth_source.as_deref(), Some(VERTICAL_POSITION_CUE));
    assert!(all.objects.iter().any(|o| o.label == "cup"));
    for (i, o) in all.objects.iter().enumerate() {
        assert_eq!(o.id, i as u32);
        // GrabCut masks by default (tests/grabcut_*.rs), recorded in the attributes.
        assert!(o.mask.is_some() && o.attributes.contains_key("mask"));
        let d = o.depth.unwrap();
        assert!((0.0..=1.0).contains(&d));
        assert!((d - o.bbox.y1 / 400.0).abs() < 1e-12);
        if i > 0 {
            assert!(all.objects[i - 1].score >= o.score);
        }
    }
    // Queries restrict; synonyms map; unknown labels find nothing.
    let mugs = pollster::block_on(as_dyn.build(&img, &["mug".into()])).unwrap();
    assert!(!mugs.objects.is_empty() && mugs.objects.iter().all(|o| o.label == "cup"));
    assert_eq!(mugs.objects[0].attributes["query"], "mug");
    assert_eq!(mugs.queries, vec!["mug".to_string()]);
    let none = pollster::block_on(as_dyn.build(&img, &["unicorn".into()])).unwrap();
    assert!(none.objects.is_empty());

    // Refining reuses the cached detections: same objects and ids, new ones appended.
    let t = Instant::now();
    let refined = pollster::block_on(as_dyn.refine(
        &img,
        &none,
        &["cup".into(), "dining table".into(), "spaceship".into()],
    ))
    .unwrap();
    let refine_ms = t.elapsed().as_secs_f64() * 1e3;
    eprintln!(
        "refined (cached, {refine_ms:.1} ms):\n{}",
        refined.describe()
    );
    assert_eq!(
        refined.queries,
        vec!["unicorn", "cup", "dining table", "spaceship"]
    );
    let cups: Vec<_> = refined
        .objects
        .iter()
        .filter(|o| o.label == "cup")
        .collect();
    assert!(!cups.is_empty());
    assert!(
        refine_ms < build_ms / 2.0,
        "refine took {refine_ms} ms; build {build_ms} ms"
    );
    let again = pollster::block_on(as_dyn.refine(&img, &refined, &["cup".into()])).unwrap();
    assert_eq!(
        again.objects, refined.objects,
        "a repeated query adds nothing"
    );
    // A hand-made SSR keeps its objects and ids; detections come after them.
    let hand = Scene::load(&manifest_dir().join("../../assets/coffee.ssr.json")).unwrap();
    let merged = pollster::block_on(as_dyn.refine(&img, &hand, &["cup".into()])).unwrap();
    assert_eq!(&merged.objects[..hand.objects.len()], &hand.objects[..]);
    merged.validate().unwrap();
    // A different image size is an error.
    let small = RgbImage::new(10, 10);
    assert!(pollster::block_on(as_dyn.refine(&small, &refined, &["cup".into()])).is_err());
}

#[test]
fn missing_weights_fail_with_the_setup_command() {
    let dir = std::env::temp_dir().join(format!("cielr-empty-cache-{}", std::process::id()));
    let e = CocoDetectorSceneBuilder::<CpuBackend>::from_cache(
        &ModelCache::new(&dir),
        DetectOptions::default(),
        &Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("tools/setup-models.sh"), "{e}");
    assert!(!Path::new(&dir).exists());
}
