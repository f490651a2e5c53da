//! Measures GrabCut object masks against the box and the inscribed ellipse on images with
//! exact masks (composites) and on the coffee photo's hand-drawn masks; the numbers in
//! `docs/masks.md` come from here.
//!
//! ```sh
//! cargo run --release -p cielr-scene --example mask_eval -- \
//!     [--skimage-data DIR] [--detector] \
//!     [--max-side 256] [--iterations 5] [--margin 0.15] [--gamma 50] [--components 5] \
//!     [--cases] [--out DIR] [--save-cases DIR]
//! ```
//!
//! - Composites: textures cut out of real photos through exact alpha mattes (scikit-image's
//!   horse silhouette, mirrored, a star and a blob) and pasted onto other real photos (see
//!   `tests/grabcut_common/mod.rs`). Without `--skimage-data` only the committed photos are
//!   used (coffee, chelsea, astronaut-256); with it (scikit-image's `skimage/data/` folder)
//!   coffee, chelsea, astronaut, rocket, motorcycle_left, brick, grass and gravel.
//!   Each object is segmented from its tight box and from a box with every side moved by up
//!   to 10% of the box size (seeded), as a detector would err.
//! - Coffee: the hand-drawn cup, saucer and spoon masks of `assets/coffee.ssr.json`
//!   (approximate: ellipses and polygons), from their tight boxes, jittered boxes and, with
//!   `--detector` (needs `tools/setup-models.sh`), CenterNet's boxes of the same class.
//! - `--cases` prints every case; `--out DIR` writes overlays (green: mask, red: truth,
//!   yellow: box); `--save-cases DIR` writes each case's image, exact mask and box (to run
//!   other implementations on the same cases).

#[path = "../tests/grabcut_common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use cielr_core::backend::CpuBackend;
use cielr_core::{BBox, Mask, Scene, SceneBuilder};
use cielr_scene::centernet::{CenterNet, DetectOptions};
use cielr_scene::coco_detector::CocoDetectorSceneBuilder;
use cielr_scene::grabcut::{ellipse_mask, grabcut, Fallback, GrabCutOptions, MaskMode};
use cielr_scene::model_cache::ModelCache;
use common::{jitter, make_composite, Rng};
use image::{Rgb, RgbImage};

struct Case {
    set: &'static str,
    name: String,
    boxes: &'static str,
    image: RgbImage,
    truth: Mask,
    bbox: BBox,
}

/// IoU and recall (share of the true mask covered) of one mask.
#[derive(Clone, Copy)]
struct Score {
    iou: f64,
    recall: f64,
}

fn score(mask: &Mask, truth: &Mask) -> Result<Score, Box<dyn std::error::Error>> {
    Ok(Score {
        iou: mask.iou(truth)?,
        recall: mask.intersection(truth)?.area() as f64 / truth.area().max(1) as f64,
    })
}

struct Row {
    set: &'static str,
    boxes: &'static str,
    name: String,
    grabcut: Score,
    bbox: Score,
    ellipse: Score,
    ms: f64,
    source: String,
}

fn composites(skimage: Option<&Path>) -> Vec<(&'static str, common::Composite)> {
    let load = |name: &str| -> (String, RgbImage) {
        let img = match skimage {
            Some(dir) => common::load_rgb(&dir.join(name)),
            None => common::committed_photo(name),
        };
        (name.split('.').next().unwrap_or(name).to_string(), img)
    };
    let (set, backgrounds, textures): (&'static str, Vec<_>, Vec<_>) = match skimage {
        Some(_) => (
            "composites (scikit-image photos)",
            [
                "coffee.png",
                "chelsea.png",
                "astronaut.png",
                "rocket.jpg",
                "motorcycle_left.png",
                "brick.png",
                "grass.png",
                "gravel.png",
            ]
            .iter()
            .map(|n| load(n))
            .collect(),
            [
                "astronaut.png",
                "chelsea.png",
                "coffee.png",
                "rocket.jpg",
                "motorcycle_left.png",
                "gravel.png",
                "brick.png",
            ]
            .iter()
            .map(|n| load(n))
            .collect(),
        ),
        None => (
            "composites (committed photos)",
            ["coffee", "chelsea", "astronaut-256"]
                .iter()
                .map(|n| load(n))
                .collect(),
            ["astronaut-256", "chelsea", "coffee"]
                .iter()
                .map(|n| load(n))
                .collect(),
        ),
    };
    let sizes = [0.35, 0.5, 0.65, 0.8];
    let mut out = Vec::new();
    for (bi, (bname, bg)) in backgrounds.iter().enumerate() {
        for kind in 0..4 {
            let mut ti = (bi + kind + 1) % textures.len();
            if textures[ti].0 == *bname {
                ti = (ti + 1) % textures.len();
            }
            let (tname, tex) = &textures[ti];
            let longer = (sizes[(bi + kind) % 4] * bg.width().min(bg.height()) as f64) as u32;
            let seed = (bi * 4 + kind) as u64 + 1;
            let c = make_composite(&format!("{tname} on {bname}"), bg, tex, kind, longer, seed);
            out.push((set, c));
        }
    }
    out
}

fn coffee_cases(detector: bool) -> Result<Vec<Case>, Box<dyn std::error::Error>> {
    let root = common::manifest_dir().join("../../assets");
    let image = common::load_rgb(&root.join("coffee.png"));
    let scene = Scene::load(&root.join("coffee.ssr.json"))?;
    let (w, h) = image.dimensions();
    let mut rng = Rng(7);
    let mut cases = Vec::new();
    let mut detections = Vec::new();
    if detector {
        let model = CenterNet::<CpuBackend>::load(
            ModelCache::from_env()?.centernet_json()?,
            &Default::default(),
        )?;
        detections = model.detect(&image, &DetectOptions::default())?;
    }
    for o in scene.objects.iter().filter(|o| o.label != "table") {
        let truth = o.mask.clone().ok_or("hand-drawn object without a mask")?;
        let tight = truth.bbox().ok_or("empty hand-drawn mask")?;
        let jittered = jitter(&tight, 0.1, &mut rng, w, h);
        for (boxes, bbox) in [("tight", tight), ("jittered ±10%", jittered)] {
            cases.push(Case {
                set: "coffee photo (hand-drawn masks)",
                name: o.label.clone(),
                boxes,
                image: image.clone(),
                truth: truth.clone(),
                bbox,
            });
        }
        let label = if o.label == "saucer" {
            "bowl"
        } else {
            &o.label
        };
        if let Some(d) = detections
            .iter()
            .filter(|d| d.label == label)
            .max_by(|a, b| a.score.total_cmp(&b.score))
        {
            cases.push(Case {
                set: "coffee photo (hand-drawn masks)",
                name: format!("{} (detected {} {:.2})", o.label, d.label, d.score),
                boxes: "CenterNet",
                image: image.clone(),
                truth: truth.clone(),
                bbox: d.bbox,
            });
        }
    }
    Ok(cases)
}

/// Times `CocoDetectorSceneBuilder::build` on the coffee photo (all classes) with and
/// without masks, twice each (the second build finds the detections and masks cached).
fn time_scene_builder(options: &GrabCutOptions) -> Result<(), Box<dyn std::error::Error>> {
    let image = common::committed_photo("coffee");
    for mode in [MaskMode::Box, MaskMode::GrabCut] {
        let builder = CocoDetectorSceneBuilder::<CpuBackend>::from_cache(
            &ModelCache::from_env()?,
            DetectOptions::default(),
            &Default::default(),
        )?
        .with_masks(mode, options.clone())?;
        let mut times = Vec::new();
        let mut scene = None;
        for _ in 0..2 {
            let t = Instant::now();
            scene = Some(pollster::block_on(builder.build(&image, &[]))?);
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let scene = scene.ok_or("no scene")?;
        println!(
            "scene builder on coffee.png, {mode:?} masks: build {:.0} ms, again (cached) {:.0} ms, {} objects:\n{}",
            times[0],
            times[1],
            scene.objects.len(),
            scene.describe()
        );
    }
    Ok(())
}

fn overlay(image: &RgbImage, mask: &Mask, truth: &Mask, bbox: &BBox) -> RgbImage {
    let mut out = image.clone();
    let edge = truth
        .difference(&truth.erode(1.5))
        .unwrap_or_else(|_| truth.clone());
    for (x, y, p) in out.enumerate_pixels_mut() {
        if mask.get(x, y) {
            p.0[0] /= 2;
            p.0[1] = p.0[1] / 2 + 127;
            p.0[2] /= 2;
        }
        if edge.get(x, y) {
            *p = Rgb([255, 0, 0]);
        }
    }
    let (x0, y0, x1, y1) = bbox.pixel_range(image.width(), image.height());
    for x in x0..x1 {
        for y in [y0, y1.saturating_sub(1)] {
            out.put_pixel(x, y, Rgb([255, 255, 0]));
        }
    }
    for y in y0..y1 {
        for x in [x0, x1.saturating_sub(1)] {
            out.put_pixel(x, y, Rgb([255, 255, 0]));
        }
    }
    out
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut skimage: Option<PathBuf> = None;
    let mut detector = false;
    let mut show_cases = false;
    let mut out: Option<PathBuf> = None;
    let mut save: Option<PathBuf> = None;
    let mut options = GrabCutOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--skimage-data" => skimage = Some(PathBuf::from(value()?)),
            "--detector" => detector = true,
            "--cases" => show_cases = true,
            "--out" => out = Some(PathBuf::from(value()?)),
            "--save-cases" => save = Some(PathBuf::from(value()?)),
            "--max-side" => options.max_side = value()?.parse()?,
            "--iterations" => options.iterations = value()?.parse()?,
            "--margin" => options.margin = value()?.parse()?,
            "--gamma" => options.gamma = value()?.parse()?,
            "--components" => options.components = value()?.parse()?,
            "--pin-rounds" => options.pin_rounds = value()?.parse()?,
            "--max-side-gap" => options.max_side_gap = value()?.parse()?,
            "--fallback" => {
                options.fallback = match value()?.as_str() {
                    "box" => Fallback::Box,
                    "ellipse" => Fallback::Ellipse,
                    other => return Err(format!("--fallback box|ellipse, not {other}").into()),
                }
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    for dir in [&out, &save].into_iter().flatten() {
        std::fs::create_dir_all(dir)?;
    }

    let mut cases = Vec::new();
    let mut rng = Rng(11);
    for (set, c) in composites(skimage.as_deref()) {
        let (w, h) = c.image.dimensions();
        let jittered = jitter(&c.tight, 0.1, &mut rng, w, h);
        for (boxes, bbox) in [("tight", c.tight), ("jittered ±10%", jittered)] {
            cases.push(Case {
                set,
                name: c.name.clone(),
                boxes,
                image: c.image.clone(),
                truth: c.truth.clone(),
                bbox,
            });
        }
    }
    cases.extend(coffee_cases(detector)?);
    if detector {
        time_scene_builder(&options)?;
    }

    let mut rows = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let (w, h) = c.image.dimensions();
        let t = Instant::now();
        let gc = grabcut(&c.image, &c.bbox, &options)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let bm = Mask::from_box(w, h, &c.bbox)?;
        let em = ellipse_mask(w, h, &c.bbox)?;
        let row = Row {
            set: c.set,
            boxes: c.boxes,
            name: c.name.clone(),
            grabcut: score(&gc.mask, &c.truth)?,
            bbox: score(&bm, &c.truth)?,
            ellipse: score(&em, &c.truth)?,
            ms,
            source: match &gc.fallback_reason {
                Some(r) => format!("{} ({r})", gc.source),
                None => gc.source.to_string(),
            },
        };
        if show_cases {
            println!(
                "{i:3} {:<32} {:<14} {:<40} IoU grabcut {:.3} box {:.3} ellipse {:.3} | recall {:.2} {:.2} {:.2} | {:6.1} ms {}",
                row.set,
                row.boxes,
                row.name,
                row.grabcut.iou,
                row.bbox.iou,
                row.ellipse.iou,
                row.grabcut.recall,
                row.bbox.recall,
                row.ellipse.recall,
                row.ms,
                row.source
            );
        }
        if let Some(dir) = &save {
            c.image.save(dir.join(format!("{i:03}.image.png")))?;
            c.truth
                .to_gray()
                .save(dir.join(format!("{i:03}.truth.png")))?;
            let b = c.bbox;
            std::fs::write(
                dir.join(format!("{i:03}.box.json")),
                format!("[{}, {}, {}, {}]", b.x0, b.y0, b.x1, b.y1),
            )?;
        }
        if let Some(dir) = &out {
            overlay(&c.image, &gc.mask, &c.truth, &c.bbox).save(dir.join(format!("{i:03}.png")))?;
        }
        rows.push(row);
    }

    println!(
        "GrabCut: {} components, at most {} iterations, gamma {}, margin {}, windows up to {} px\n",
        options.components, options.iterations, options.gamma, options.margin, options.max_side
    );
    println!("| set | boxes | n | IoU GrabCut | IoU box | IoU ellipse | recall GrabCut / box / ellipse | GrabCut > box | fallbacks | ms per box (mean / max) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut groups: Vec<(&str, &str)> = Vec::new();
    for r in &rows {
        if !groups.contains(&(r.set, r.boxes)) {
            groups.push((r.set, r.boxes));
        }
    }
    for (set, boxes) in groups {
        let g: Vec<&Row> = rows
            .iter()
            .filter(|r| r.set == set && r.boxes == boxes)
            .collect();
        let col = |f: fn(&Row) -> f64| mean(&g.iter().map(|r| f(r)).collect::<Vec<_>>());
        let ms: Vec<f64> = g.iter().map(|r| r.ms).collect();
        println!(
            "| {set} | {boxes} | {} | {:.3} | {:.3} | {:.3} | {:.2} / {:.2} / {:.2} | {}/{} | {} | {:.0} / {:.0} |",
            g.len(),
            col(|r| r.grabcut.iou),
            col(|r| r.bbox.iou),
            col(|r| r.ellipse.iou),
            col(|r| r.grabcut.recall),
            col(|r| r.bbox.recall),
            col(|r| r.ellipse.recall),
            g.iter().filter(|r| r.grabcut.iou > r.bbox.iou).count(),
            g.len(),
            g.iter().filter(|r| r.source.contains("fallback")).count(),
            mean(&ms),
            ms.iter().cloned().fold(0.0, f64::max),
        );
    }
    Ok(())
}
