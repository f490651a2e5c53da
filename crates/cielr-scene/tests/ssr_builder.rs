//! The paper's SSR builder ([`PaperSsrBuilder`]).
//!
//! - With hand-made stages (fixed masks, boxes per query and a depth ramp) the SSR is checked
//!   exactly: labels by the IoU rule, merging, depth averaging, the unknown region, ids.
//! - With the tiny committed checkpoints (OWLv2, SAM or SAM 2.1, Depth Anything V2; random
//!   weights, so labels mean nothing) the tests check structure, determinism, mask sizes,
//!   ids, and that `refine` reuses the cached image embedding, masks and depth and embeds
//!   only the new text queries. Semantic quality needs the real checkpoints (docs/scene.md).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

mod ssr_common;

use cielr_core::{BBox, Mask, Scene, SceneBuilder};
use cielr_scene::depth_anything::DepthMap;
use cielr_scene::sam::amg::AmgConfig;
use cielr_scene::ssr_builder::{
    BurnMaskProposer, BurnSsrBuilder, DepthEstimator, LabelledBox, MaskProposer,
    OpenVocabularyDetector, PaperSsrBuilder, SamFamily, SsrBuilderOptions, DEPTH_SOURCE,
    UNKNOWN_LABEL,
};
use cielr_scene::Result;
use image::{DynamicImage, RgbImage};
use ssr_common::{fixture, keep_every_mask};

type B = cielr_core::backend::CpuBackend;

/// Calls made to the wrapped stages.
#[derive(Default, Debug)]
struct Counts {
    embed_image: AtomicUsize,
    /// Distinct query strings the detector has been asked to embed (the text-tower cost).
    new_text_queries: AtomicUsize,
    detect: AtomicUsize,
    propose: AtomicUsize,
    depth: AtomicUsize,
}

impl Counts {
    fn get(&self) -> [usize; 5] {
        [
            self.embed_image.load(Ordering::SeqCst),
            self.new_text_queries.load(Ordering::SeqCst),
            self.detect.load(Ordering::SeqCst),
            self.propose.load(Ordering::SeqCst),
            self.depth.load(Ordering::SeqCst),
        ]
    }
}

/// Wraps a stage and counts its calls.
struct Counting<T> {
    inner: T,
    counts: Arc<Counts>,
    seen: Mutex<HashSet<String>>,
}

impl<T> Counting<T> {
    fn new(inner: T, counts: &Arc<Counts>) -> Self {
        Counting {
            inner,
            counts: counts.clone(),
            seen: Mutex::new(HashSet::new()),
        }
    }

    fn note_queries(&self, queries: &[String]) {
        let mut seen = self.seen.lock().unwrap();
        for q in queries {
            if seen.insert(q.clone()) {
                self.counts.new_text_queries.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

impl<T: MaskProposer> MaskProposer for Counting<T> {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn propose(&self, image: &DynamicImage) -> Result<Vec<Mask>> {
        self.counts.propose.fetch_add(1, Ordering::SeqCst);
        self.inner.propose(image)
    }
}

impl<T: DepthEstimator> DepthEstimator for Counting<T> {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn estimate(&self, image: &DynamicImage) -> Result<DepthMap> {
        self.counts.depth.fetch_add(1, Ordering::SeqCst);
        self.inner.estimate(image)
    }
}

impl<T: OpenVocabularyDetector> OpenVocabularyDetector for Counting<T> {
    type ImageEmbedding = T::ImageEmbedding;
    fn name(&self) -> String {
        self.inner.name()
    }
    fn embed_image(&self, image: &DynamicImage) -> Result<Self::ImageEmbedding> {
        self.counts.embed_image.fetch_add(1, Ordering::SeqCst);
        self.inner.embed_image(image)
    }
    fn detect(
        &self,
        image: &Self::ImageEmbedding,
        queries: &[String],
        threshold: f32,
    ) -> Result<Vec<LabelledBox>> {
        self.counts.detect.fetch_add(1, Ordering::SeqCst);
        self.note_queries(queries);
        self.inner.detect(image, queries, threshold)
    }
    fn best_scores(&self, image: &Self::ImageEmbedding, queries: &[String]) -> Result<Vec<f32>> {
        self.note_queries(queries);
        self.inner.best_scores(image, queries)
    }
}

// ---- hand-made stages -------------------------------------------------------------------

const W: u32 = 20;
const H: u32 = 10;

fn rect(x0: u32, y0: u32, x1: u32, y1: u32) -> Mask {
    Mask::from_fn(W, H, |x, y| x >= x0 && x < x1 && y >= y0 && y < y1).unwrap()
}

struct FixedMasks;
impl MaskProposer for FixedMasks {
    fn name(&self) -> String {
        "fixed".into()
    }
    fn propose(&self, _image: &DynamicImage) -> Result<Vec<Mask>> {
        Ok(vec![
            rect(0, 0, 4, 4),   // cup (left)
            rect(10, 0, 14, 4), // cup (right)
            rect(0, 6, 20, 10), // table
            rect(16, 0, 20, 2), // nothing overlaps: unknown
            rect(6, 0, 8, 2),   // lamp, once it is asked for
        ])
    }
}

/// Boxes per query; scores for the scan are the best box score of the query, 0 otherwise.
struct FixedBoxes;
impl FixedBoxes {
    fn boxes(query: &str) -> Vec<LabelledBox> {
        let b = |x0, y0, x1, y1, score| LabelledBox {
            bbox: BBox::new(x0, y0, x1, y1),
            label: query.to_string(),
            score,
        };
        match query {
            "cup" => vec![b(0.0, 0.0, 4.0, 4.0, 0.8), b(10.0, 0.0, 14.0, 4.0, 0.6)],
            "table" => vec![b(0.0, 5.0, 20.0, 10.0, 0.5)],
            "lamp" => vec![b(6.0, 0.0, 8.0, 2.0, 0.4)],
            _ => vec![],
        }
    }
}
impl OpenVocabularyDetector for FixedBoxes {
    type ImageEmbedding = ();
    fn name(&self) -> String {
        "fixed-boxes".into()
    }
    fn embed_image(&self, _image: &DynamicImage) -> Result<()> {
        Ok(())
    }
    fn detect(&self, _: &(), queries: &[String], threshold: f32) -> Result<Vec<LabelledBox>> {
        Ok(queries
            .iter()
            .flat_map(|q| Self::boxes(q))
            .filter(|b| b.score > threshold)
            .collect())
    }
    fn best_scores(&self, _: &(), queries: &[String]) -> Result<Vec<f32>> {
        Ok(queries
            .iter()
            .map(|q| Self::boxes(q).iter().map(|b| b.score).fold(0.0, f32::max))
            .collect())
    }
}

/// Depth = x (nearer to the right), so normalised depth = x / 19.
struct Ramp;
impl DepthEstimator for Ramp {
    fn name(&self) -> String {
        "ramp".into()
    }
    fn estimate(&self, image: &DynamicImage) -> Result<DepthMap> {
        let (w, h) = (image.width() as usize, image.height() as usize);
        Ok(DepthMap {
            width: w,
            height: h,
            data: (0..w * h).map(|i| (i % w) as f32).collect(),
        })
    }
}

type Fake = PaperSsrBuilder<Counting<FixedMasks>, Counting<FixedBoxes>, Counting<Ramp>>;

fn fake(options: SsrBuilderOptions) -> (Fake, Arc<Counts>) {
    let counts = Arc::new(Counts::default());
    let b = PaperSsrBuilder::new(
        Counting::new(FixedMasks, &counts),
        Counting::new(FixedBoxes, &counts),
        Counting::new(Ramp, &counts),
        options,
    )
    .unwrap();
    (b, counts)
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn summary(scene: &Scene) -> Vec<(u32, String, u64, Option<f64>)> {
    scene
        .objects
        .iter()
        .map(|o| {
            (
                o.id,
                o.label.clone(),
                o.mask.as_ref().unwrap().area(),
                o.depth.map(|d| (d * 1e6).round() / 1e6),
            )
        })
        .collect()
}

#[test]
fn hand_made_stages_give_the_papers_ssr_and_refine_reuses_the_image() {
    let (builder, counts) = fake(SsrBuilderOptions::default());
    let image = RgbImage::new(W, H);
    let scene = pollster::block_on(builder.build(&image, &strings(&["cup", "table"]))).unwrap();
    scene.validate().unwrap();
    let d = |x: f64| Some((x / 19.0 * 1e6).round() / 1e6);
    // Centroids in pixel-centre coordinates: cups at x 2 and 12 -> pixels 2 and 12; table
    // x 10; unknown mask 3 at x 18 and the lamp mask at x 7, merged: (18 + 7) / 2.
    assert_eq!(
        summary(&scene),
        vec![
            (
                0,
                "cup".to_string(),
                32,
                Some(((2.0 + 12.0) / 2.0 / 19.0 * 1e6f64).round() / 1e6)
            ),
            (1, "table".to_string(), 80, d(10.0)),
            (
                2,
                UNKNOWN_LABEL.to_string(),
                12,
                Some(((18.0 + 7.0) / 2.0 / 19.0 * 1e6f64).round() / 1e6)
            ),
        ]
    );
    assert_eq!(scene.objects[0].score, Some(0.8f32 as f64));
    assert_eq!(scene.objects[0].bbox, BBox::new(0.0, 0.0, 14.0, 4.0));
    assert_eq!(scene.objects[2].score, None);
    assert_eq!(scene.objects[0].attributes["source"], "fixed-boxes+fixed");
    assert_eq!(scene.objects[2].attributes["source"], "fixed");
    assert_eq!(scene.queries, strings(&["cup", "table"]));
    assert_eq!(scene.depth_source.as_deref(), Some(DEPTH_SOURCE));
    assert_eq!(counts.get(), [1, 2, 1, 1, 1]);

    // Refine: no image embedding, no masks, no depth; one new text query.
    let refined =
        pollster::block_on(builder.refine(&image, &scene, &strings(&["lamp", "cup"]))).unwrap();
    assert_eq!(counts.get(), [1, 3, 2, 1, 1]);
    assert_eq!(refined.queries, strings(&["cup", "table", "lamp"]));
    assert_eq!(
        summary(&refined),
        vec![
            (0, "cup".to_string(), 32, summary(&scene)[0].3),
            (1, "table".to_string(), 80, d(10.0)),
            (2, "lamp".to_string(), 4, d(7.0)),
            (3, UNKNOWN_LABEL.to_string(), 8, d(18.0)),
        ]
    );
    // A fresh builder given all queries at once agrees with the refinement.
    let (fresh, _) = fake(SsrBuilderOptions::default());
    let direct =
        pollster::block_on(fresh.build(&image, &strings(&["cup", "table", "lamp"]))).unwrap();
    assert_eq!(direct, refined);

    // A different image is embedded anew; the wrong size is an error.
    let other = RgbImage::from_pixel(W, H, image::Rgb([1, 2, 3]));
    pollster::block_on(builder.build(&other, &strings(&["cup"]))).unwrap();
    assert_eq!(counts.get()[0], 2);
    let small = RgbImage::new(W - 1, H);
    let err = pollster::block_on(builder.refine(&small, &scene, &strings(&["x"]))).unwrap_err();
    assert!(err.to_string().contains("20x10"), "{err}");
}

#[test]
fn vocabulary_scan_keeps_labels_above_the_threshold_best_first() {
    let options = SsrBuilderOptions {
        vocabulary: strings(&["lamp", "dog", "table", "cup", "sofa"]),
        scan_threshold: 0.45,
        scan_batch: 2,
        keep_unknown: false,
        ..Default::default()
    };
    let (builder, counts) = fake(options.clone());
    let image = RgbImage::new(W, H);
    let scene = pollster::block_on(builder.build(&image, &[])).unwrap();
    assert_eq!(scene.queries, strings(&["cup", "table"]));
    let labels: Vec<&str> = scene.objects.iter().map(|o| o.label.as_str()).collect();
    assert_eq!(labels, ["cup", "table"], "unknown left out by the options");
    assert_eq!(counts.get()[1], 5, "every vocabulary label embedded once");

    let (capped, _) = fake(SsrBuilderOptions {
        max_scan_labels: 1,
        scan_batch: 64,
        ..options
    });
    let scan = capped
        .scan_vocabulary(&DynamicImage::ImageRgb8(image))
        .unwrap();
    assert_eq!(scan, strings(&["cup"]));
}

// ---- the tiny committed checkpoints -----------------------------------------------------

fn tiny_options() -> SsrBuilderOptions {
    SsrBuilderOptions {
        // Random weights: keep every box and every mask so there is something to check.
        box_threshold: 0.0,
        amg: keep_every_mask(),
        vocabulary: strings(&["cup", "table", "lamp", "dog", "sofa", "plant", "book"]),
        scan_threshold: 0.0,
        max_scan_labels: 3,
        scan_batch: 3,
        ..Default::default()
    }
}

#[test]
fn tiny_checkpoints_build_a_valid_ssr_and_refine_from_the_cache() {
    check_tiny_builder("sam-tiny", SamFamily::Sam);
}

/// The same with SAM 2.1 (Hiera, `use_m2m`) as the mask proposer, picked from its config.json.
#[test]
fn tiny_checkpoints_with_sam2_build_a_valid_ssr_and_refine_from_the_cache() {
    check_tiny_builder("sam2-tiny", SamFamily::Sam2);
}

/// Builds, rebuilds, refines and scans with the tiny OWLv2 and Depth Anything checkpoints and
/// the mask model in fixture `sam` (of family `family`).
fn check_tiny_builder(sam: &str, family: SamFamily) {
    assert_eq!(SamFamily::detect(fixture(sam)).unwrap(), family);
    let device = Default::default();
    let real = BurnSsrBuilder::<B>::from_dirs(
        fixture("owlv2-tiny"),
        fixture(sam),
        fixture("depth-anything-tiny"),
        tiny_options(),
        &device,
    )
    .unwrap();
    let _: &PaperSsrBuilder<_, cielr_scene::owlv2::Owlv2Detector<B>, _> = &real;
    // Rewrap the loaded stages with counters.
    let counts = Arc::new(Counts::default());
    let (proposer, detector, depth) = split(real);
    match (&proposer, family) {
        (BurnMaskProposer::Sam(p), SamFamily::Sam) => assert_eq!(p.config(), &tiny_options().amg),
        (BurnMaskProposer::Sam2(p), SamFamily::Sam2) => {
            // The options' shared settings, the paper's SAM 2 additions.
            assert_eq!(p.config().base, tiny_options().amg);
            assert!(p.config().use_m2m);
        }
        (p, f) => panic!("{f:?} checkpoint loaded as {}", p.name()),
    }
    let builder = PaperSsrBuilder::new(
        Counting::new(proposer, &counts),
        Counting::new(detector, &counts),
        Counting::new(depth, &counts),
        tiny_options(),
    )
    .unwrap();
    let image = image::open(fixture(&format!("{sam}/image.png")))
        .unwrap()
        .to_rgb8();
    let queries = strings(&["cup", "table"]);
    let proposals = builder
        .proposer()
        .inner
        .propose(&DynamicImage::ImageRgb8(image.clone()))
        .unwrap();
    assert!(proposals.len() > 3, "{} masks", proposals.len());
    // Deterministic: the same masks again (counted by the wrapper, not the builder).
    let twice = builder
        .proposer()
        .inner
        .propose(&DynamicImage::ImageRgb8(image.clone()))
        .unwrap();
    assert_eq!(twice, proposals);
    let scene = pollster::block_on(builder.build(&image, &queries)).unwrap();
    eprintln!("{}", scene.describe());
    scene.validate().unwrap();
    assert!(!scene.objects.is_empty());
    let ids: Vec<u32> = scene.objects.iter().map(|o| o.id).collect();
    assert_eq!(ids, (0..scene.objects.len() as u32).collect::<Vec<_>>());
    let mut labels = HashSet::new();
    for (i, o) in scene.objects.iter().enumerate() {
        assert!(labels.insert(o.label.clone()), "one region per label");
        let m = o.mask.as_ref().unwrap();
        assert_eq!((m.width(), m.height()), (image.width(), image.height()));
        assert!(m.area() > 0);
        assert_eq!(Some(o.bbox), m.bbox());
        let depth = o.depth.unwrap();
        assert!((0.0..=1.0).contains(&depth), "{depth}");
        if o.label == UNKNOWN_LABEL {
            assert_eq!(i, scene.objects.len() - 1, "the unknown region comes last");
        } else {
            assert!(queries.contains(&o.label), "{}", o.label);
        }
    }
    assert_eq!(counts.get(), [1, 2, 1, 1, 1]);
    let cached = builder.detector().inner.cached_queries();
    assert_eq!(cached, 2);

    // Same pixels, same SSR; from the cache.
    let again = pollster::block_on(builder.build(&image, &queries)).unwrap();
    assert_eq!(again, scene);
    assert_eq!(counts.get(), [1, 2, 2, 1, 1]);

    // Refine: only the new text query runs through the text tower.
    let refined = pollster::block_on(builder.refine(&image, &scene, &strings(&["lamp"]))).unwrap();
    refined.validate().unwrap();
    assert_eq!(counts.get(), [1, 3, 3, 1, 1]);
    assert_eq!(builder.detector().inner.cached_queries(), 3);
    assert_eq!(refined.queries, strings(&["cup", "table", "lamp"]));
    let total = |s: &Scene| -> u64 {
        s.objects
            .iter()
            .map(|o| o.mask.as_ref().unwrap().area())
            .sum()
    };
    assert!(total(&refined) >= 1);
    // Relabelling partitions the same masks: the union of all regions is unchanged.
    let union = |s: &Scene| {
        s.objects
            .iter()
            .fold(Mask::new(s.width, s.height).unwrap(), |u, o| {
                u.union(o.mask.as_ref().unwrap()).unwrap()
            })
    };
    assert_eq!(union(&refined), union(&scene));

    // The vocabulary scan: the three best of seven labels, in batches of three.
    let scanned = pollster::block_on(builder.build(&image, &[])).unwrap();
    assert_eq!(scanned.queries.len(), 3);
    assert!(scanned
        .queries
        .iter()
        .all(|q| tiny_options().vocabulary.contains(q)));
    assert_eq!(counts.get()[0], 1, "the scan reuses the image embedding");
}

fn split<M: MaskProposer, D: OpenVocabularyDetector, E: DepthEstimator>(
    b: PaperSsrBuilder<M, D, E>,
) -> (M, D, E) {
    b.into_parts()
}

/// A detector whose vocabulary scan returns one score too many.
struct ExtraScore;
impl OpenVocabularyDetector for ExtraScore {
    type ImageEmbedding = ();
    fn name(&self) -> String {
        "extra-score".into()
    }
    fn embed_image(&self, _image: &DynamicImage) -> Result<()> {
        Ok(())
    }
    fn detect(&self, _: &(), _: &[String], _: f32) -> Result<Vec<LabelledBox>> {
        Ok(Vec::new())
    }
    fn best_scores(&self, _: &(), queries: &[String]) -> Result<Vec<f32>> {
        Ok(vec![0.9; queries.len() + 1])
    }
}

/// Regression: the scan indexed the vocabulary with the detector's score positions, so a
/// detector returning more scores than labels panicked out of bounds.
#[test]
fn a_detector_with_the_wrong_score_count_is_an_error() {
    let options = SsrBuilderOptions {
        vocabulary: strings(&["cup", "table"]),
        ..SsrBuilderOptions::default()
    };
    let builder = PaperSsrBuilder::new(FixedMasks, ExtraScore, Ramp, options).unwrap();
    let e = builder
        .build_scene(&RgbImage::new(W, H), &[])
        .expect_err("score count mismatch");
    assert!(e.to_string().contains("3 best scores for 2 labels"), "{e}");
}

/// A `--sam` folder of another model is refused by name, before any checkpoint is loaded.
#[test]
fn a_sam_folder_of_another_model_is_an_error() {
    let dir = std::env::temp_dir().join(format!("cielr-ssr-not-sam-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"model_type": "clip"}"#).unwrap();
    let e = SamFamily::detect(&dir).expect_err("clip is not SAM");
    assert!(e.to_string().contains("model_type \"clip\""), "{e}");
    let e = BurnSsrBuilder::<B>::from_dirs(
        fixture("owlv2-tiny"),
        &dir,
        fixture("depth-anything-tiny"),
        tiny_options(),
        &Default::default(),
    )
    .expect_err("clip is not SAM");
    assert!(e.to_string().contains("not a SAM checkpoint"), "{e}");
    std::fs::write(dir.join("config.json"), r#"{"hidden_size": 8}"#).unwrap();
    let e = SamFamily::detect(&dir).expect_err("no model_type");
    assert!(e.to_string().contains("no model_type"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Regression: the options' generator settings are validated with the options.
#[test]
fn options_validate_the_generator_settings() {
    let bad = SsrBuilderOptions {
        amg: AmgConfig {
            crop_n_layers: 40,
            ..AmgConfig::default()
        },
        ..SsrBuilderOptions::default()
    };
    assert!(bad.validate().is_err());
}
