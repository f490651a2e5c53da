//! Grounding check: does the default pipeline pick the object an instruction means?
//!
//! Reads a manifest (default `assets/grounding/manifest.json`) of real photos with
//! instructions written for them, each naming the COCO label of the intended object and
//! optionally a hand-drawn box. For every item it builds the SSR with the COCO detector,
//! plans with SmolLM2-135M-Instruct (targets chosen by name, as the CLI does for local
//! models; the detector refines the SSR when the planner asks), and records:
//!
//! - the label of the chosen target and whether it is the expected one;
//! - the IoU of the chosen object's box with `expected_box`, when the manifest gives one;
//! - detector recall: whether the expected label is in the first SSR at all (an upper bound
//!   for any planner that picks among the detections);
//! - a trivial baseline that always picks the highest-score detection.
//!
//! No image is edited. Run it after `tools/setup-models.sh`:
//!
//! ```sh
//! cargo run --release --example grounding -- [manifest.json] [--json results.json]
//! ```
//!
//! It prints a Markdown table and the shares; `--json` also writes every record.
//! `--length-normalized` scores choices by mean token log-probability instead of the sum.
//! `--reverse-order` lists the SSR's objects to the planner in reverse order (ids unchanged),
//! a control for a model that just picks the first object listed.

/// The models' many large short-lived tensors are slow under glibc malloc (docs/performance.md,
/// "Allocator").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use cielr::core::io::load_rgb;
use cielr::core::pipeline::{plan, Refiner};
use cielr::core::{
    BBox, CielrPlanner, ReasoningOptions, Scene, SceneBuilder, SceneObject, TargetSelection,
};
use cielr::planner::gguf::smollm2_gguf_path;
use cielr::planner::local::LocalLlm;
use cielr::scene::centernet::DetectOptions;
use cielr::scene::coco_detector::CocoDetectorSceneBuilder;
use cielr::scene::model_cache::ModelCache;
use serde_json::{json, Value};

/// Reasoning rounds per step, as `cielr edit` uses by default.
const ROUNDS: usize = 2;

/// IoU at which the chosen box counts as the intended object (the manifest's boxes are rough).
const IOU_OK: f64 = 0.5;

/// One manifest entry.
struct Item {
    image: PathBuf,
    instruction: String,
    expected_label: String,
    expected_box: Option<BBox>,
}

/// Reads the manifest: `{"items": [{"image", "instruction", "expected_label", "expected_box"?}]}`
/// with image paths relative to the manifest's folder.
fn read_manifest(path: &Path) -> anyhow::Result<Vec<Item>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let root: Value = serde_json::from_str(&text)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let entries = root["items"]
        .as_array()
        .context("the manifest needs an \"items\" array")?;
    let mut items = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let field = |k: &str| {
            e[k].as_str()
                .map(str::to_string)
                .with_context(|| format!("item {i} needs a string {k:?}"))
        };
        let expected_box = match &e["expected_box"] {
            Value::Null => None,
            v => {
                let b: [f64; 4] = serde_json::from_value(v.clone())
                    .with_context(|| format!("item {i}: expected_box must be [x0, y0, x1, y1]"))?;
                Some(BBox::from(b))
            }
        };
        items.push(Item {
            image: dir.join(field("image")?),
            instruction: field("instruction")?,
            expected_label: field("expected_label")?,
            expected_box,
        });
    }
    Ok(items)
}

/// The highest-score object of `scene` (the baseline's choice).
fn top_scoring(scene: &Scene) -> Option<&SceneObject> {
    scene
        .objects
        .iter()
        .max_by(|a, b| a.score.unwrap_or(0.0).total_cmp(&b.score.unwrap_or(0.0)))
}

/// `a / b` as a percentage string.
fn share(a: usize, b: usize) -> String {
    if b == 0 {
        return "n/a".into();
    }
    format!("{a}/{b} ({:.0}%)", 100.0 * a as f64 / b as f64)
}

fn main() -> anyhow::Result<()> {
    cielr::keep_freed_memory();
    let mut manifest = PathBuf::from("assets/grounding/manifest.json");
    let mut json_out: Option<PathBuf> = None;
    let mut reverse_order = false;
    let mut length_normalized = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--json" => json_out = Some(args.next().context("--json needs a path")?.into()),
            "--reverse-order" => reverse_order = true,
            "--length-normalized" => length_normalized = true,
            s if s.starts_with("--") => bail!("unknown option {s}"),
            _ => manifest = a.into(),
        }
    }
    let items = read_manifest(&manifest)?;

    let cache = ModelCache::from_env()?;
    let device = Default::default();
    let detector = CocoDetectorSceneBuilder::<cielr::core::backend::CpuBackend>::from_cache(
        &cache,
        DetectOptions::default(),
        &device,
    )
    .context("the COCO detector is missing; run tools/setup-models.sh")?;
    let llm_path = smollm2_gguf_path().context("SmolLM2 is missing; run tools/setup-models.sh")?;
    let model =
        Arc::new(LocalLlm::load(&llm_path)?.with_length_normalized_choices(length_normalized));
    let planner = CielrPlanner::with_options(
        model,
        ReasoningOptions {
            targets: TargetSelection::Name,
            ..Default::default()
        },
    );

    // The first SSR of each image is built once and reused by all its instructions.
    let mut scenes: BTreeMap<PathBuf, (image::RgbImage, Scene, f64)> = BTreeMap::new();
    let mut records = Vec::new();
    let (mut correct, mut recall, mut baseline) = (0, 0, 0);
    let (mut boxed, mut box_ok) = (0, 0);
    let mut plan_secs = 0.0;
    let quiet = |_| {};
    println!("| # | image | instruction | expected | detected labels | chosen | correct? | IoU | baseline (top score) | plan s |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (n, item) in items.iter().enumerate() {
        if !scenes.contains_key(&item.image) {
            let image = load_rgb(&item.image)?;
            let t = Instant::now();
            let scene = pollster::block_on(detector.build(&image, &[]))?;
            let secs = t.elapsed().as_secs_f64();
            scenes.insert(item.image.clone(), (image, scene, secs));
        }
        let (image, scene, _) = &scenes[&item.image];
        let mut labels: Vec<String> = scene
            .objects
            .iter()
            .map(|o| format!("{} {:.2}", o.label, o.score.unwrap_or(0.0)))
            .collect();
        if labels.is_empty() {
            labels.push("(none)".into());
        }
        let present = scene.objects.iter().any(|o| o.label == item.expected_label);
        recall += usize::from(present);
        let top = top_scoring(scene);
        let base_ok = top.is_some_and(|o| o.label == item.expected_label);
        baseline += usize::from(base_ok);

        let mut shown = scene.clone();
        if reverse_order {
            shown.objects.reverse();
        }
        let t = Instant::now();
        let planned = pollster::block_on(plan(
            &planner,
            Refiner::Builder(&detector, image),
            shown,
            &item.instruction,
            ROUNDS,
            &quiet,
        ));
        let secs = t.elapsed().as_secs_f64();
        plan_secs += secs;
        // The first action's first target, looked up in the SSR its ids refer to.
        let (chosen, op, error) = match &planned {
            Ok(out) => {
                let obj = out.plan.steps.first().and_then(|step| {
                    let s = &out.scenes[out.scene_of_step[0]];
                    let id = *step.targets.first()?;
                    s.objects.iter().find(|o| o.id == id).cloned()
                });
                let op = out.plan.steps.first().map(|s| format!("{:?}", s.op));
                (obj, op, None)
            }
            Err(e) => (None, None, Some(e.to_string())),
        };
        let ok = chosen
            .as_ref()
            .is_some_and(|o| o.label == item.expected_label);
        correct += usize::from(ok);
        let iou = match (&chosen, &item.expected_box) {
            (Some(o), Some(b)) => Some(o.bbox.iou(b)),
            _ => None,
        };
        if item.expected_box.is_some() {
            boxed += 1;
            box_ok += usize::from(iou.is_some_and(|v| v >= IOU_OK));
        }
        let chosen_label =
            chosen
                .as_ref()
                .map(|o| o.label.clone())
                .unwrap_or_else(|| match &error {
                    Some(_) => "(planning failed)".into(),
                    None => "(none)".into(),
                });
        let image_name = item
            .image
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} |",
            n + 1,
            image_name,
            item.instruction,
            item.expected_label,
            labels.join(", "),
            chosen_label,
            if ok { "yes" } else { "no" },
            iou.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into()),
            match top {
                Some(o) => format!("{} ({})", o.label, if base_ok { "yes" } else { "no" }),
                None => "(none) (no)".into(),
            },
            secs
        );
        records.push(json!({
            "image": item.image,
            "instruction": item.instruction,
            "expected_label": item.expected_label,
            "expected_box": item.expected_box,
            "detections": scene.objects.iter().map(|o| json!({
                "id": o.id, "label": o.label, "score": o.score, "bbox": o.bbox,
            })).collect::<Vec<_>>(),
            "chosen": chosen.as_ref().map(|o| json!({"id": o.id, "label": o.label, "bbox": o.bbox})),
            "op": op,
            "error": error,
            "correct": ok,
            "iou": iou,
            "expected_detected": present,
            "baseline_label": top.map(|o| o.label.clone()),
            "baseline_correct": base_ok,
            "plan_seconds": secs,
            "trace": planned.as_ref().ok().map(|o| &o.plan.trace),
        }));
    }

    let total = items.len();
    let ssr_secs: f64 = scenes.values().map(|(_, _, s)| s).sum();
    println!();
    println!(
        "- pipeline picks the expected object: {}",
        share(correct, total)
    );
    println!(
        "- of the items with a box, chosen box IoU >= {IOU_OK}: {}",
        share(box_ok, boxed)
    );
    println!(
        "- detector recall (expected label in the SSR): {}",
        share(recall, total)
    );
    println!(
        "- baseline, highest-score detection: {}",
        share(baseline, total)
    );
    println!(
        "- SSR: {:.1} s per image ({} images); planning: {:.1} s per item",
        ssr_secs / scenes.len().max(1) as f64,
        scenes.len(),
        plan_secs / total.max(1) as f64
    );
    if let Some(path) = json_out {
        let summary = json!({
            "items": records,
            "correct": correct,
            "recall": recall,
            "baseline_correct": baseline,
            "boxed": boxed,
            "box_ok": box_ok,
            "total": total,
            "ssr_seconds_per_image": ssr_secs / scenes.len().max(1) as f64,
            "plan_seconds_per_item": plan_secs / total.max(1) as f64,
            "language_model": llm_path,
            "reverse_order": reverse_order,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&summary)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_manifest_parses_and_its_images_exist() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let items = read_manifest(&root.join("assets/grounding/manifest.json")).unwrap();
        assert!((12..=20).contains(&items.len()));
        for item in &items {
            assert!(item.image.is_file(), "{} is missing", item.image.display());
            assert!(!item.instruction.trim().is_empty());
            if let Some(b) = item.expected_box {
                assert!(b.is_valid());
            }
        }
    }

    #[test]
    fn baseline_takes_the_highest_score() {
        let mut scene = Scene::from_json(
            r#"{"width": 10, "height": 10, "objects": [
                {"id": 0, "label": "cup", "bbox": [0, 0, 5, 5], "score": 0.3},
                {"id": 1, "label": "cat", "bbox": [5, 5, 10, 10], "score": 0.9}]}"#,
        )
        .unwrap();
        assert_eq!(top_scoring(&scene).unwrap().label, "cat");
        scene.objects.clear();
        assert!(top_scoring(&scene).is_none());
        assert_eq!(share(1, 4), "1/4 (25%)");
    }
}
