//! `cielr eval`: run a benchmark (or a stage of the method over it) and write the reports;
//! `cielr eval report` merges shards and rewrites the reports. See docs/evaluation.md.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use cielr::eval::datasets::{load_ciebench, load_manifest, load_reason_edit, Dataset};
use cielr::eval::idcs::IdcsJudge;
use cielr::eval::idcs_vlm::VlmDescriber;
use cielr::eval::report;
use cielr::eval::runner::{
    ClipMetric, Components, LpipsMetric, PreservationMetrics, RunEvent, RunOptions, Runner,
    SampleMetric, Shard, Stage,
};
use cielr::planner::openai::{OpenAiCompatible, OpenAiConfig};
use clap::{Args, Subcommand, ValueEnum};

use super::device::{DeviceArgs, DeviceSpec, ModelDevice, Precision};
use super::edit::{default_scene_builder, editor, EditorArgs};
use super::scene::SceneModelArgs;
use super::{models, ReasoningArgs};

/// Arguments of `cielr eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(subcommand)]
    command: EvalCommand,
}

#[derive(Subcommand, Debug)]
enum EvalCommand {
    /// CIEBench: a folder holding benchmark.json and the sample folders (protocol at 512x512).
    Ciebench(DatasetRun),
    /// SmartEdit's Reason-Edit reasoning set: a folder with Reason_test.txt, *.png and
    /// *_mask.jpg (protocol at 256x256).
    ReasonEdit(DatasetRun),
    /// Your own set: a JSONL manifest (schema in docs/evaluation.md).
    Manifest(DatasetRun),
    /// Rewrite the reports of a run, or merge shards: `cielr eval report OUT1 OUT2 --out OUT`.
    Report(ReportArgs),
}

#[derive(Args, Debug)]
struct DatasetRun {
    /// The dataset folder (for `manifest`: the .jsonl file).
    path: PathBuf,
    #[command(flatten)]
    run: RunArgs,
}

/// `--stage`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum StageArg {
    /// Build the SSR only (is the target in it?).
    Ssr,
    /// SSR and reasoning: grounding IoU of the chosen region.
    Plan,
    /// Edit inside the benchmark's mask (no SSR, no reasoning).
    Edit,
    /// The whole pipeline.
    Full,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The output folder: samples.jsonl, summary.json, summary.md, samples.csv, index.html.
    /// Rerunning into the same folder resumes.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Which part of the method to run.
    #[arg(long, value_enum, default_value_t = StageArg::Full)]
    stage: StageArg,
    /// plan/full: give the SSR object overlapping the benchmark's mask that exact mask (the
    /// edit stage always edits inside the benchmark's mask).
    #[arg(long)]
    oracle_masks: bool,
    /// Run only shard i of n (0-based: `--shard $SLURM_ARRAY_TASK_ID/$N`); sample k goes to
    /// shard k % n. Merge the shards' folders with `cielr eval report`.
    #[arg(long, value_name = "I/N", env = "CIELR_SHARD")]
    shard: Option<String>,
    /// Samples per image (seeds --seed, --seed+1, ...); the report has the best of N and
    /// the first sample's numbers.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    samples: u32,
    /// The metric the best of N is chosen by (default: the benchmark's: idcs for CIEBench,
    /// clip for Reason-Edit).
    #[arg(long, value_name = "METRIC")]
    best_by: Option<String>,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// When resuming, run the samples that failed before again (e.g. after fixing a file).
    #[arg(long)]
    retry_failed: bool,
    /// Only the first K samples of the dataset (before sharding).
    #[arg(long, value_name = "K")]
    limit: Option<usize>,
    /// Dilation of edit regions, in pixels.
    #[arg(long, default_value_t = 7.0)]
    dilate: f64,
    /// LPIPS weights (one safetensors file: torchvision's squeezenet1_1 features and the
    /// lpips squeeze heads; tools/eval/convert_lpips.py). Without it LPIPS is left out.
    #[arg(long, value_name = "FILE")]
    lpips_weights: Option<PathBuf>,
    /// A CLIPModel folder (config.json, *.safetensors, tokenizer.json) for CLIPScore:
    /// clip-vit-large-patch14-336 for CIEBench, clip-vit-large-patch14 for Reason-Edit.
    /// Without it CLIPScore is left out.
    #[arg(long, value_name = "DIR")]
    clip_model: Option<PathBuf>,
    /// IDCS stage 1: an OpenAI-compatible server with image input (e.g. vLLM serving
    /// Qwen2-VL) that describes what changed; needs --vlm-model. The API key is read from
    /// OPENAI_API_KEY when set. Without it IDCS is left out.
    #[arg(long, value_name = "URL", env = "CIELR_VLM")]
    vlm: Option<String>,
    /// The model name to request from the --vlm server.
    #[arg(long, value_name = "NAME", env = "CIELR_VLM_MODEL")]
    vlm_model: Option<String>,
    /// The longest side, in pixels, of the images sent to the --vlm server.
    #[arg(long, value_name = "PIXELS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(16..=4096))]
    vlm_max_side: u32,
    /// IDCS stage 2, the language model that scores the description 1..5 (same forms as
    /// --llm). Default: the --vlm model itself, asked in text only.
    #[arg(long, value_name = "SPEC", env = "CIELR_JUDGE_LLM")]
    judge_llm: Option<String>,
    /// The model name to request from a served --judge-llm.
    #[arg(long, value_name = "NAME", env = "CIELR_JUDGE_LLM_MODEL")]
    judge_llm_model: Option<String>,
    #[command(flatten)]
    scene_models: SceneModelArgs,
    #[command(flatten)]
    editor: EditorArgs,
    #[command(flatten)]
    reasoning: ReasoningArgs,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// The run folders (shards) to report on.
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Where to write the merged run (default: the only run folder given, in place).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// Runs `cielr eval`.
pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    match a.command {
        EvalCommand::Ciebench(d) => {
            let ds = load_ciebench(&d.path)?;
            run_dataset(ds, d.run)
        }
        EvalCommand::ReasonEdit(d) => {
            let ds = load_reason_edit(&d.path)?;
            run_dataset(ds, d.run)
        }
        EvalCommand::Manifest(d) => {
            let ds = load_manifest(&d.path)?;
            run_dataset(ds, d.run)
        }
        EvalCommand::Report(r) => report_cmd(r),
    }
}

fn report_cmd(r: ReportArgs) -> anyhow::Result<()> {
    let out = match (&r.out, r.runs.as_slice()) {
        (Some(o), _) => o.clone(),
        (None, [one]) => one.clone(),
        (None, _) => bail!("several run folders are merged into a new one: add --out <DIR>"),
    };
    let (summary, dups) = report::merge(&r.runs, &out)?;
    if dups > 0 {
        eprintln!(
            "[report] {dups} samples appeared in more than one run folder; the first was kept"
        );
    }
    print_summary(&out, &summary)
}

fn print_summary(out: &std::path::Path, summary: &serde_json::Value) -> anyhow::Result<()> {
    let md = std::fs::read_to_string(out.join("summary.md"))
        .with_context(|| format!("reading {}", out.join("summary.md").display()))?;
    print!("{md}");
    eprintln!(
        "wrote {} ({} samples, {} failed): summary.json, summary.md, samples.csv, samples.jsonl, index.html",
        out.display(),
        summary["samples"],
        summary["failed"]
    );
    Ok(())
}

fn run_dataset(ds: Dataset, a: RunArgs) -> anyhow::Result<()> {
    let stage = match a.stage {
        StageArg::Ssr => Stage::Ssr,
        StageArg::Plan => Stage::Plan,
        StageArg::Edit => Stage::Edit,
        StageArg::Full => Stage::Full,
    };
    if a.oracle_masks && stage == Stage::Ssr {
        bail!("--oracle-masks has no effect on the ssr stage (it changes the SSR the planner sees); use --stage plan or full");
    }
    let shard = a
        .shard
        .as_deref()
        .map(Shard::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    if ds.entries.is_empty() {
        bail!("the dataset {} has no samples", ds.root.display());
    }
    // LPIPS and CLIPScore run on the CPU in the CPU's default float type, which --precision
    // would change with --device cpu: the metrics are defined in f32.
    let half_on_cpu = a.device.device == DeviceSpec::Cpu && a.device.precision != Precision::F32;
    if half_on_cpu && (a.lpips_weights.is_some() || a.clip_model.is_some()) {
        bail!(
            "--precision {} with --device cpu would compute LPIPS and CLIPScore in {0} too, and \
             the metrics are defined in f32: use --precision f32 on the CPU, or run the models \
             on a GPU (--device cuda --precision {0})",
            a.device.precision
        );
    }
    // The device is left out of the run's components: they must match to resume, and a run
    // may be resumed (or its shards run) on another device. A half precision is kept in: it
    // changes the outputs more than a device does.
    let device = a.device.open()?;

    let mut components = Components::default();
    if a.device.precision != Precision::F32 {
        components
            .extra_names
            .insert("precision".into(), a.device.precision.to_string());
    }
    if stage != Stage::Edit {
        let every_sample_has_ssr = ds
            .entries
            .iter()
            .all(|e| e.as_ref().map(|s| s.scene.is_some()).unwrap_or(true));
        if let Some(paper) = a.scene_models.builder(&device)? {
            components.scene_builder = Some(paper);
        } else if !every_sample_has_ssr {
            components.scene_builder = Some(default_scene_builder(&device).context(
                "the ssr, plan and full stages build the SSR with the COCO detector unless --owlv2/--sam/--depth are given: run tools/setup-models.sh, use --stage edit, or give each sample its own SSR in a manifest (\"scene\")",
            )?);
        }
    }
    if stage.grounds() {
        let chosen = a.reasoning.language_model(&device)?;
        components
            .extra_names
            .insert("language_model".into(), chosen.model.name());
        components.planner = Some(Arc::new(a.reasoning.planner(&chosen)));
    }
    if stage.edits() {
        components.editor = Some(editor(&a.editor, &device)?);
    }

    let mut metrics: Vec<Arc<dyn SampleMetric>> = vec![Arc::new(PreservationMetrics)];
    let mut absent = BTreeMap::new();
    let mut idcs: Option<Arc<IdcsJudge>> = None;
    let mut computed_extra: Vec<String> = Vec::new();
    if stage.edits() {
        match &a.lpips_weights {
            Some(p) => {
                eprintln!("[eval] loading LPIPS from {}", p.display());
                let m = LpipsMetric::from_file(p)
                    .with_context(|| format!("loading the LPIPS weights {}", p.display()))?;
                metrics.push(Arc::new(m));
            }
            None => {
                absent.insert(
                    "lpips".to_string(),
                    "not configured (needs --lpips-weights <file>, made by tools/eval/convert_lpips.py from torchvision's squeezenet1_1 and the lpips package's squeeze heads)".to_string(),
                );
            }
        }
        match &a.clip_model {
            Some(d) => {
                eprintln!("[eval] loading CLIP from {}", d.display());
                let m = ClipMetric::from_pretrained(d)
                    .with_context(|| format!("loading the CLIP model {}", d.display()))?;
                metrics.push(Arc::new(m));
            }
            None => {
                absent.insert(
                    "clip".to_string(),
                    format!(
                        "not configured (needs --clip-model <CLIPModel folder>; the protocol uses {})",
                        ds.protocol.clip_model.as_deref().unwrap_or("a CLIP ViT-L/14")
                    ),
                );
            }
        }
        match idcs_judge(&a, &device)? {
            Some(judge) => {
                components.extra_names.insert(
                    "idcs".into(),
                    format!(
                        "{} (describer), {} (scorer)",
                        judge.describer.name(),
                        judge.scorer.name()
                    ),
                );
                idcs = Some(Arc::new(judge));
                computed_extra.push("idcs".to_string());
            }
            None => {
                absent.insert(
                    "idcs".to_string(),
                    "not configured (needs a served vision-language model: --vlm <url> --vlm-model <name>, optionally --judge-llm for the scorer); no score is invented".to_string(),
                );
            }
        }
    } else {
        for m in ["lpips", "clip", "idcs"] {
            absent.insert(
                m.to_string(),
                format!("the {} stage does not edit the image", stage.as_str()),
            );
        }
    }
    let best_by = a.best_by.clone();
    let effective = best_by
        .clone()
        .unwrap_or_else(|| ds.protocol.best_by.clone());
    let mut computed: Vec<String> = match stage {
        Stage::Ssr => vec!["ssr_objects".into(), "ssr_best_iou".into()],
        Stage::Plan => vec!["grounding_iou".into(), "grounding_hit50".into()],
        Stage::Edit => Vec::new(),
        Stage::Full => vec!["grounding_iou".into(), "grounding_hit50".into()],
    };
    if stage.edits() {
        computed.extend(metrics.iter().flat_map(|m| m.names()));
        computed.extend(computed_extra);
    }
    if !computed.contains(&effective) {
        let why = absent
            .get(&effective)
            .map(|w| format!("that metric is {w}"))
            .unwrap_or_else(|| "no such metric in this stage".to_string());
        if best_by.is_some() {
            bail!(
                "--best-by {effective}: {why}; choose one of {}",
                computed.join(", ")
            );
        }
        if a.samples > 1 {
            eprintln!(
                "[eval] warning: the benchmark picks the best of {} by {effective}, but {why}; the first successful sample stands in (choose with --best-by, one of {})",
                a.samples,
                computed.join(", ")
            );
        }
    }

    let runner = Runner {
        components,
        metrics,
        absent,
        idcs,
        options: RunOptions {
            stage,
            oracle_masks: a.oracle_masks,
            samples: a.samples as usize,
            seed: a.seed,
            best_by,
            shard,
            limit: a.limit,
            max_rounds: a.reasoning.rounds as usize,
            dilate: a.dilate,
            queries: a.reasoning.queries.clone(),
            thumbnail: 256,
            retry_failed: a.retry_failed,
        },
    };
    let progress = |e: RunEvent| match e {
        RunEvent::Started {
            total,
            already_done,
        } => {
            eprintln!(
                "[eval] {} {}: {total} samples, {already_done} already done",
                ds.name,
                stage.as_str()
            );
        }
        RunEvent::SampleStarted { position, todo, id } => {
            eprintln!("[eval] {position}/{todo}: sample {id}");
        }
        RunEvent::Stage(p) => eprintln!("  [{}] {}", p.stage, p.message),
        RunEvent::SampleDone { id, ok, error } => match (ok, error) {
            (true, None) => eprintln!("[eval] sample {id}: ok"),
            (true, Some(e)) => eprintln!("[eval] sample {id}: ok (a run failed: {e})"),
            (false, e) => eprintln!("[eval] sample {id}: FAILED: {}", e.unwrap_or_default()),
        },
    };
    let stats = pollster::block_on(runner.run(&ds, &a.out, &progress))?;
    eprintln!(
        "[eval] ran {} samples ({} failed), skipped {} already done",
        stats.ran, stats.failed, stats.skipped
    );
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(a.out.join("summary.json")).context("reading summary.json")?,
    )?;
    print_summary(&a.out, &summary)
}

/// The IDCS judge from `--vlm`, `--vlm-model` and `--judge-llm`: `None` without `--vlm`.
fn idcs_judge(a: &RunArgs, device: &ModelDevice) -> anyhow::Result<Option<IdcsJudge>> {
    let Some(url) = a.vlm.as_deref().map(str::trim).filter(|u| !u.is_empty()) else {
        if a.judge_llm.is_some() {
            bail!("--judge-llm scores what the --vlm model describes: add --vlm <url> --vlm-model <name>");
        }
        return Ok(None);
    };
    let Some(model) = a
        .vlm_model
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
    else {
        bail!("--vlm {url} needs the model's name: --vlm-model <name> (or CIELR_VLM_MODEL)");
    };
    let config = OpenAiConfig::new(url, model);
    let describer = VlmDescriber::new(config.clone(), a.vlm_max_side)
        .with_context(|| format!("configuring the vision model at {url}"))?;
    let scorer: Arc<dyn cielr::core::LanguageModel> = match a.judge_llm.as_deref() {
        Some(spec) => {
            models::language_model(
                Some(spec),
                a.judge_llm_model.as_deref(),
                device,
                models::LlmWeights::Auto,
            )
            .with_context(|| format!("configuring --judge-llm {spec}"))?
            .model
        }
        None => Arc::new(
            OpenAiCompatible::new(config)
                .with_context(|| format!("configuring the judge at {url}"))?,
        ),
    };
    Ok(Some(IdcsJudge {
        describer: Arc::new(describer),
        scorer,
    }))
}
