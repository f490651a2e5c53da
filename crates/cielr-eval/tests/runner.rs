//! Runner and report tests on a small manifest built here, with a test editor and planner.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use cielr_core::{
    EditAction, EditOp, EditRequest, Editor, Planner, RoundInput, RoundOutcome, TraceEntry,
};
use cielr_eval::datasets::load_manifest;
use cielr_eval::report::merge;
use cielr_eval::runner::{
    chosen_region, read_samples, Components, PreservationMetrics, RunOptions, Runner, SampleMetric,
    Shard, Stage,
};
use image::{GrayImage, Luma, Rgb, RgbImage};
use serde_json::Value;

/// Fills the region with grey level `40 * seed` (so seeds give different scores).
struct FillEditor;

#[async_trait]
impl Editor for FillEditor {
    fn name(&self) -> String {
        "fill".into()
    }
    fn supports(&self, op: EditOp) -> bool {
        op != EditOp::Add
    }
    async fn edit(&self, r: EditRequest<'_>) -> cielr_core::Result<RgbImage> {
        let v = (40 * r.seed).min(255) as u8;
        let mut out = r.image.clone();
        for (x, y, p) in out.enumerate_pixels_mut() {
            if r.mask.get(x, y) {
                *p = Rgb([v, v, v]);
            }
        }
        Ok(out)
    }
}

/// Chooses the first SSR object whose label is a word of the instruction.
struct LabelPlanner;

#[async_trait]
impl Planner for LabelPlanner {
    fn name(&self) -> String {
        "label".into()
    }
    async fn split(&self, i: &str, _t: &mut Vec<TraceEntry>) -> cielr_core::Result<Vec<String>> {
        Ok(vec![i.to_string()])
    }
    async fn classify(&self, _i: &str, _t: &mut Vec<TraceEntry>) -> cielr_core::Result<EditOp> {
        Ok(EditOp::Remove)
    }
    async fn round(
        &self,
        input: RoundInput<'_>,
        trace: &mut Vec<TraceEntry>,
    ) -> cielr_core::Result<RoundOutcome> {
        let o = input
            .scene
            .objects
            .iter()
            .find(|o| input.instruction.contains(&o.label))
            .unwrap_or(&input.scene.objects[0]);
        trace.push(TraceEntry::Note {
            message: format!("chose {}", o.label),
        });
        Ok(RoundOutcome::Action(EditAction {
            op: EditOp::Remove,
            targets: vec![o.id],
            prompt: "remove".into(),
        }))
    }
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cielr-runner-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Three samples (40x30 images, the mask is the "cup" box 10..20 x 10..20) and one whose
/// image is missing.
fn dataset(dir: &Path) -> PathBuf {
    let img = RgbImage::from_fn(40, 30, |x, y| Rgb([(x * 6) as u8, (y * 8) as u8, 128]));
    img.save(dir.join("a.png")).unwrap();
    let mask = GrayImage::from_fn(40, 30, |x, y| {
        Luma([if (10..20).contains(&x) && (10..20).contains(&y) {
            255
        } else {
            0
        }])
    });
    mask.save(dir.join("m.png")).unwrap();
    let scene = r#"{"width": 40, "height": 30, "objects": [
        {"id": 1, "label": "spoon", "bbox": [25, 5, 35, 25]},
        {"id": 2, "label": "cup", "bbox": [10, 10, 20, 20]},
        {"id": 3, "label": "saucer", "bbox": [8, 15, 22, 22]}]}"#;
    std::fs::write(dir.join("ssr.json"), scene).unwrap();
    let lines = [
        r#"{"manifest": {"name": "tiny", "size": 32, "best_by": "psnr"}}"#,
        r#"{"id": "cup", "image": "a.png", "mask": "m.png", "scene": "ssr.json", "instruction": "What holds coffee, the cup? Remove it.", "target": "table"}"#,
        r#"{"id": "spoon", "image": "a.png", "mask": "m.png", "scene": "ssr.json", "instruction": "Remove the spoon.", "target": "table"}"#,
        r#"{"id": "lost", "image": "missing.png", "mask": "m.png", "scene": "ssr.json", "instruction": "Remove it."}"#,
        r#"{"id": "saucer", "image": "a.png", "mask": "m.png", "scene": "ssr.json", "instruction": "Remove the saucer.", "target": "table"}"#,
    ];
    let file = dir.join("set.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    file
}

fn runner(stage: Stage, samples: usize, shard: Option<Shard>, oracle: bool) -> Runner {
    Runner {
        components: Components {
            scene_builder: None,
            planner: Some(Arc::new(LabelPlanner)),
            editor: Some(Arc::new(FillEditor)),
            extra_names: BTreeMap::new(),
        },
        metrics: vec![Arc::new(PreservationMetrics) as Arc<dyn SampleMetric>],
        absent: BTreeMap::from([("lpips".to_string(), "not configured (test)".to_string())]),
        idcs: None,
        options: RunOptions {
            stage,
            samples,
            shard,
            oracle_masks: oracle,
            dilate: 1.0,
            thumbnail: 16,
            ..Default::default()
        },
    }
}

fn summary(out: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
}

fn run(r: &Runner, data: &Path, out: &Path) -> cielr_eval::runner::RunStats {
    let ds = load_manifest(data).unwrap();
    pollster::block_on(r.run(&ds, out, &|_| {})).unwrap()
}

#[test]
fn edit_stage_best_of_n_resume_and_reports() {
    let dir = tempdir("edit");
    let data = dataset(&dir);
    let out = dir.join("out");
    let r = runner(Stage::Edit, 2, None, false);
    let stats = run(&r, &data, &out);
    assert_eq!((stats.total, stats.ran, stats.failed), (4, 4, 1));
    for f in [
        "summary.json",
        "samples.jsonl",
        "samples.csv",
        "summary.md",
        "index.html",
        "run.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let s = summary(&out);
    assert_eq!(s["dataset"], "tiny");
    assert_eq!(
        (s["samples"].as_u64(), s["failed"].as_u64()),
        (Some(4), Some(1))
    );
    assert_eq!(s["first_sample"]["failed"], 1);
    assert!(s["absent"]["lpips"]
        .as_str()
        .unwrap()
        .contains("not configured"));
    assert!(s["absent"]["grounding_iou"].is_string());
    assert!(s["metrics"].get("grounding_iou").is_none());
    // Seed 0 fills black, seed 1 grey 40: the first run and the best run (by PSNR) differ,
    // and best >= first.
    let recs = read_samples(&out.join("samples.jsonl")).unwrap();
    assert_eq!(recs.len(), 4);
    let cup = recs.iter().find(|r| r.id == "cup").unwrap();
    assert_eq!(cup.runs.len(), 2);
    assert_eq!((cup.runs[0].seed, cup.runs[1].seed), (0, 1));
    let (first, best) = (cup.first.as_ref().unwrap(), cup.best.as_ref().unwrap());
    assert!(best["psnr"] >= first["psnr"]);
    assert_ne!(cup.runs[0].metrics["psnr"], cup.runs[1].metrics["psnr"]);
    let best_psnr = s["metrics"]["psnr"].as_f64().unwrap();
    let first_psnr = s["first_sample"]["metrics"]["psnr"].as_f64().unwrap();
    assert!(best_psnr > first_psnr, "{best_psnr} vs {first_psnr}");
    assert_eq!(s["counts"]["psnr"], 3);
    // The action came from the instruction's keywords.
    assert_eq!(
        cup.runs[0].action.as_ref().unwrap()["source"],
        "instruction keywords"
    );
    let lost = recs.iter().find(|r| r.id == "lost").unwrap();
    assert!(
        !lost.ok()
            && lost
                .error
                .as_ref()
                .unwrap()
                .contains("cannot read the image")
    );
    for key in ["input", "gt", "region", "output"] {
        assert!(out.join(&cup.images[key]).is_file(), "{key}");
    }
    assert!(out.join(cup.runs[1].output.as_ref().unwrap()).is_file());
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("images/cup_input.png"));
    let csv = std::fs::read_to_string(out.join("samples.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5);
    assert!(csv.lines().next().unwrap().contains("best_psnr_clean"));
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(md.contains("| psnr |"));

    // Resume: nothing is run twice.
    let again = run(&r, &data, &out);
    assert_eq!((again.skipped, again.ran), (4, 0));
    assert_eq!(read_samples(&out.join("samples.jsonl")).unwrap().len(), 4);
    // A crash mid-write leaves a truncated last line: it is cut off and that sample reruns.
    let path = out.join("samples.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, &text[..text.len() - 20]).unwrap();
    let repaired = run(&r, &data, &out);
    assert_eq!((repaired.skipped, repaired.ran), (3, 1));
    let recs = read_samples(&path).unwrap();
    assert_eq!(recs.len(), 4);
    assert!(std::fs::read_to_string(&path).unwrap().ends_with("}\n"));
    // --retry-failed runs the failed sample again and replaces its line.
    let mut retry = runner(Stage::Edit, 2, None, false);
    retry.options.retry_failed = true;
    let retried = run(&retry, &data, &out);
    assert_eq!((retried.skipped, retried.ran, retried.failed), (3, 1, 1));
    let recs = read_samples(&path).unwrap();
    assert_eq!(recs.len(), 4);
    assert_eq!(recs.iter().filter(|r| r.id == "lost").count(), 1);
    // Other settings in the same folder are refused.
    let other = runner(Stage::Edit, 1, None, false);
    let ds = load_manifest(&data).unwrap();
    let e = pollster::block_on(other.run(&ds, &out, &|_| {}))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("other settings") && e.contains("samples/seed"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shards_cover_every_sample_once_and_merge() {
    let dir = tempdir("shards");
    let data = dataset(&dir);
    let mut ids = Vec::new();
    let mut outs = Vec::new();
    for i in 0..3 {
        let out = dir.join(format!("shard{i}"));
        let r = runner(Stage::Edit, 1, Some(Shard { index: i, count: 3 }), false);
        let stats = run(&r, &data, &out);
        assert_eq!(stats.total, [2, 1, 1][i]);
        ids.extend(
            read_samples(&out.join("samples.jsonl"))
                .unwrap()
                .into_iter()
                .map(|r| r.id),
        );
        outs.push(out);
    }
    ids.sort();
    assert_eq!(ids, ["cup", "lost", "saucer", "spoon"]);
    let merged = dir.join("merged");
    outs.push(outs[0].clone()); // a shard given twice: its samples are duplicates
    let (s, dups) = merge(&outs, &merged).unwrap();
    assert_eq!(dups, 2);
    assert_eq!(
        (s["samples"].as_u64(), s["failed"].as_u64()),
        (Some(4), Some(1))
    );
    let recs = read_samples(&merged.join("samples.jsonl")).unwrap();
    assert!(recs
        .iter()
        .all(|r| r.images.values().all(|p| merged.join(p).is_file())));
    assert!(Shard::parse("3/3").is_err() && Shard::parse("1/2").is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn plan_and_full_stages_measure_grounding() {
    let dir = tempdir("plan");
    let data = dataset(&dir);
    let out = dir.join("plan");
    run(&runner(Stage::Plan, 1, None, false), &data, &out);
    let recs = read_samples(&out.join("samples.jsonl")).unwrap();
    let iou = |id: &str| {
        recs.iter()
            .find(|r| r.id == id)
            .unwrap()
            .best
            .as_ref()
            .unwrap()["grounding_iou"]
    };
    // The cup box is the mask: IoU 1; the spoon misses it: 0; the saucer box
    // [8,22)x[15,22) overlaps the mask's 10x5 rows 15..20: 50 / (100 + 98 - 50).
    assert_eq!(iou("cup"), 1.0);
    assert_eq!(iou("spoon"), 0.0);
    assert!((iou("saucer") - 50.0 / 148.0).abs() < 1e-12);
    let s = summary(&out);
    assert!((s["metrics"]["grounding_hit50"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-12);
    assert!(s["absent"]["psnr"]
        .as_str()
        .unwrap()
        .contains("does not edit"));
    let plan = recs[0].runs[0].plan.as_ref().unwrap();
    assert_eq!(plan["steps"][0]["targets"][0], 2);

    // Oracle masks: the saucer (overlapping the mask most after the cup) is not changed,
    // the cup gets the exact mask, so choices stay the same and IoUs too.
    let out = dir.join("full-oracle");
    run(&runner(Stage::Full, 1, None, true), &data, &out);
    let recs = read_samples(&out.join("samples.jsonl")).unwrap();
    let cup = recs.iter().find(|r| r.id == "cup").unwrap();
    assert_eq!(cup.runs[0].oracle.as_ref().unwrap()["object"], 2);
    assert!(cup.best.as_ref().unwrap().contains_key("psnr_clean"));
    let s = summary(&out);
    assert!(s["metrics"]["psnr"].is_number() && s["metrics"]["grounding_iou"].is_number());

    // The ssr stage: is the target in the SSR at all?
    let out = dir.join("ssr");
    run(&runner(Stage::Ssr, 1, None, false), &data, &out);
    let s = summary(&out);
    assert_eq!(s["metrics"]["ssr_objects"], 3.0);
    assert_eq!(s["metrics"]["ssr_best_iou"], 1.0);
    assert!(s["absent"]["grounding_iou"].is_string());

    // A stage without its component is refused before any sample runs.
    let mut r = runner(Stage::Plan, 1, None, false);
    r.components.planner = None;
    let ds = load_manifest(&data).unwrap();
    let e = pollster::block_on(r.run(&ds, &dir.join("x"), &|_| {}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs a language model"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Stage 1 of IDCS for the test: a fixed sentence.
struct SaysReplaced;

#[async_trait]
impl cielr_eval::idcs::ChangeDescriber for SaysReplaced {
    fn name(&self) -> String {
        "says-replaced".into()
    }
    async fn describe(&self, _o: &RgbImage, _e: &RgbImage) -> cielr_core::Result<String> {
        Ok("The cup was removed.".into())
    }
}

#[test]
fn idcs_judge_picks_the_best_of_n() {
    let dir = tempdir("idcs");
    let data = dataset(&dir);
    let out = dir.join("out");
    // Samples cup, spoon, (lost fails before judging), saucer; two runs each.
    let scorer = Arc::new(cielr_core::ScriptedLanguageModel::from_texts([
        "2", "5", "3", "1", "4", "4",
    ]));
    let mut r = runner(Stage::Edit, 2, None, false);
    r.absent.insert("idcs".into(), "not configured".into());
    r.idcs = Some(Arc::new(cielr_eval::idcs::IdcsJudge {
        describer: Arc::new(SaysReplaced),
        scorer: scorer.clone(),
    }));
    r.options.best_by = Some("idcs".into());
    run(&r, &data, &out);
    assert_eq!(scorer.remaining(), 0);
    let recs = read_samples(&out.join("samples.jsonl")).unwrap();
    let best_run = |id: &str| recs.iter().find(|r| r.id == id).unwrap().best_run;
    assert_eq!(
        (best_run("cup"), best_run("spoon"), best_run("saucer")),
        (Some(1), Some(0), Some(0))
    );
    let cup = recs.iter().find(|r| r.id == "cup").unwrap();
    assert_eq!(
        cup.runs[1].judge.as_ref().unwrap()["description"],
        "The cup was removed."
    );
    let s = summary(&out);
    assert_eq!(s["metrics"]["idcs"], 4.0);
    assert_eq!(s["first_sample"]["metrics"]["idcs"], 3.0);
    assert!(s["absent"].get("idcs").is_none());
    assert_eq!(s["best_of_n"]["by"], "idcs");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A metric that always fails.
struct Broken;

impl SampleMetric for Broken {
    fn names(&self) -> Vec<String> {
        vec!["broken".into()]
    }
    fn higher_is_better(&self, _name: &str) -> bool {
        true
    }
    fn compute(
        &self,
        _input: &cielr_eval::runner::SampleMetricInput<'_>,
    ) -> cielr_eval::EvalResult<BTreeMap<String, f64>> {
        Err(cielr_eval::EvalError::Config(
            "the weights are missing".into(),
        ))
    }
}

#[test]
fn a_metric_that_fails_everywhere_is_absent_with_its_reason() {
    let dir = tempdir("broken");
    let data = dataset(&dir);
    let out = dir.join("out");
    let mut r = runner(Stage::Edit, 1, None, false);
    r.metrics.push(Arc::new(Broken));
    let stats = run(&r, &data, &out);
    assert_eq!(stats.failed, 1, "only the sample without an image fails");
    let s = summary(&out);
    assert!(s["metrics"].get("broken").is_none());
    let why = s["absent"]["broken"].as_str().unwrap();
    assert!(
        why.contains("no sample produced it") && why.contains("weights are missing"),
        "{why}"
    );
    assert_eq!(s["metric_errors"]["broken"], 3);
    assert!(s["metrics"]["psnr"].is_number());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Regression: `chosen_region` indexed `scenes[scene_of_step[i]]` and panicked on a
/// `PlanningOutput` (public fields) whose step has no SSR index or a dangling one.
#[test]
fn chosen_region_of_an_inconsistent_plan_is_an_error() {
    let action = EditAction {
        op: EditOp::Remove,
        targets: vec![0],
        prompt: "remove".into(),
    };
    let plan = cielr_core::Plan {
        steps: vec![action],
        trace: Vec::new(),
    };
    for scene_of_step in [vec![], vec![3]] {
        let planned = cielr_core::pipeline::PlanningOutput {
            plan: plan.clone(),
            scenes: vec![cielr_core::Scene::new(8, 8)],
            scene_of_step,
        };
        let e = chosen_region(&planned, 8, 8).expect_err("inconsistent plan");
        assert!(e.to_string().contains("plan step 0 has no SSR"), "{e}");
    }
}

/// Regression: `Shard::contains` divided by `count`, and a `Shard` built or deserialised
/// without [`Shard::parse`] can have `count == 0`.
#[test]
fn a_shard_of_zero_contains_nothing_instead_of_dividing_by_zero() {
    let zero: Shard = serde_json::from_str(r#"{"index": 0, "count": 0}"#).unwrap();
    assert!(!(0..4).any(|k| zero.contains(k)));
    let two = Shard::parse("1/2").unwrap();
    assert_eq!(
        (0..5).filter(|&k| two.contains(k)).collect::<Vec<_>>(),
        [1, 3]
    );
    assert!(Shard::parse("0/0").is_err());
}
