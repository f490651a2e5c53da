//! `cielr edit`: the whole method on one image.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use cielr::core::imageops::render_overlay;
use cielr::core::io::{load_rgb, save_rgb};
use cielr::core::{Editor, Pipeline, PipelineOptions, Scene, SceneBuilder, StaticSceneBuilder};
use clap::{Args, ValueEnum};

use super::device::{on_device, DeviceArgs, ModelDevice};
use super::{progress, ReasoningArgs, SceneArg};

/// The editors `--editor` can select.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditorKind {
    /// Classical inpainting for removal and a luminance-keeping recolour; no replace/add.
    Classical,
    /// Stable Diffusion 1.5 inpainting (a diffusers folder given by --sd-model) for replace
    /// and add; removal and recolour stay classical.
    Sd15,
    /// Stable Diffusion 2 inpainting (a diffusers folder given by --sd-model), as `sd15`.
    Sd2,
    /// LaMa (big-lama, converted weights given by --lama-model) for removal; recolour stays
    /// classical; no replace/add.
    Lama,
}

/// Arguments of `cielr edit`.
#[derive(Args, Debug)]
pub struct EditArgs {
    /// The image to edit (PNG or JPEG; the format is read from the bytes).
    image: PathBuf,
    /// The instruction, e.g. "What is used to drink coffee from here? Remove it."
    instruction: String,
    /// Where to write the edited image; the report goes to <stem>.report.json and the SSR
    /// overlay to <stem>.overlay.png beside it.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    #[command(flatten)]
    scene: SceneArg,
    #[command(flatten)]
    scene_models: super::scene::SceneModelArgs,
    #[command(flatten)]
    reasoning: ReasoningArgs,
    #[command(flatten)]
    editor: EditorArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// Dilation of target masks before editing, in pixels.
    #[arg(long, default_value_t = 7.0)]
    dilate: f64,
    /// Seed for stochastic editors (step `i` of sample `j` gets seed + j + i).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Samples per edit: the plan is made once and executed N times, sample `j` with base
    /// seed `--seed` + j; sample 0 goes to OUTPUT, sample j to <stem>.<j>.<ext> beside it,
    /// and the report lists every sample's file and per-step seeds under "samples".
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    samples: u32,
}

/// The editor options, shared by `cielr edit` and `cielr eval`.
#[derive(Args, Debug, Clone)]
pub struct EditorArgs {
    /// The editor that executes the actions.
    #[arg(long, value_enum, default_value_t = EditorKind::Classical)]
    pub editor: EditorKind,
    /// The diffusers inpainting folder for --editor sd15|sd2 (unet/, vae/, text_encoder/,
    /// tokenizer/ (tokenizer.json, or vocab.json + merges.txt), scheduler/, model_index.json).
    #[arg(long, value_name = "DIR")]
    sd_model: Option<PathBuf>,
    /// The converted LaMa weights for --editor lama: a folder with model.safetensors and
    /// config.json from tools/lama/convert_checkpoint.py (see docs/models.md). With
    /// --editor sd15|sd2, removals go to LaMa when this is given (else to the classical
    /// inpainter), never to Stable Diffusion with an empty prompt.
    #[arg(long, value_name = "PATH")]
    lama_model: Option<PathBuf>,
    /// Denoising steps for the Stable Diffusion editors.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=1000))]
    steps: u32,
    /// The square side, in pixels, the Stable Diffusion editors run at (512 for SD 1.5 / SD 2
    /// inpainting; the crop around the mask is scaled to it).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(8..=2048))]
    sd_size: u32,
    /// Classifier-free guidance scale for the Stable Diffusion editors.
    #[arg(long, default_value_t = 7.5)]
    guidance: f32,
}

fn sibling(output: &Path, suffix: &str) -> PathBuf {
    let stem = output.file_stem().and_then(|s| s.to_str()).unwrap_or("out");
    output.with_file_name(format!("{stem}{suffix}"))
}

/// The default perception: the COCO detector from the model cache, on `device`.
pub(super) fn default_scene_builder(device: &ModelDevice) -> anyhow::Result<Arc<dyn SceneBuilder>> {
    use cielr::scene::centernet::DetectOptions;
    use cielr::scene::coco_detector::CocoDetectorSceneBuilder;
    use cielr::scene::model_cache::ModelCache;
    let cache = ModelCache::from_env()?;
    eprintln!(
        "[scene] loading the COCO detector from {}{}",
        cache.root().display(),
        device.suffix()
    );
    const NEEDED: &str = "no --scene was given, so the default detector is needed; run \
                          tools/setup-models.sh to fetch it";
    Ok(on_device!(device, |B, dev| Arc::new(
        CocoDetectorSceneBuilder::<B>::from_cache(&cache, DetectOptions::default(), dev)
            .context(NEEDED)?
    )))
}

/// The editor `--editor` (and its options) describe, its Burn models on `device`.
pub(super) fn editor(a: &EditorArgs, device: &ModelDevice) -> anyhow::Result<Arc<dyn Editor>> {
    use cielr::core::{EditOp, RoutingEditor};
    use cielr::diffusion::{ClassicalEditor, SdEditorOptions, StableDiffusionInpaintEditor};
    let classical: Arc<dyn Editor> = Arc::new(ClassicalEditor::default());
    if a.editor == EditorKind::Classical {
        if a.lama_model.is_some() || a.sd_model.is_some() {
            eprintln!(
                "[edit] warning: --lama-model/--sd-model are ignored with --editor classical; \
                 pass --editor lama|sd15|sd2 to use them"
            );
        }
        return Ok(classical);
    }
    if a.editor == EditorKind::Lama && a.sd_model.is_some() {
        eprintln!(
            "[edit] warning: --sd-model is ignored with --editor lama (LaMa removes, recolours \
             are classical); pass --editor sd15|sd2 --lama-model DIR to draw with SD and remove \
             with LaMa"
        );
    }
    let load_lama = |path: &PathBuf| -> anyhow::Result<Arc<dyn Editor>> {
        eprintln!(
            "[edit] loading LaMa from {}{}",
            path.display(),
            device.suffix()
        );
        Ok(on_device!(device, |B, dev| Arc::new(
            cielr::diffusion::LamaEditor::<B>::load(path, Default::default(), dev)
                .with_context(|| format!("loading LaMa from {}", path.display()))?
        )))
    };
    if a.editor == EditorKind::Lama {
        let Some(path) = &a.lama_model else {
            bail!(
                "--editor lama needs the model: --lama-model <folder from tools/lama/convert_checkpoint.py> (see docs/models.md)"
            );
        };
        return Ok(Arc::new(
            RoutingEditor::new()
                .route(&[EditOp::Remove], load_lama(path)?)
                .route(&[EditOp::Recolor], classical),
        ));
    }
    if !(a.guidance.is_finite() && a.guidance >= 0.0) {
        bail!(
            "--guidance must be a non-negative number, got {}",
            a.guidance
        );
    }
    let Some(dir) = &a.sd_model else {
        bail!(
            "--editor {:?} needs the model: --sd-model <diffusers inpainting folder> (see docs/models.md)",
            a.editor
        );
    };
    let options = SdEditorOptions {
        steps: a.steps as usize,
        guidance: a.guidance,
        model_size: a.sd_size,
        ..Default::default()
    };
    eprintln!(
        "[edit] loading Stable Diffusion inpainting from {}{}",
        dir.display(),
        device.suffix()
    );
    let sd: Arc<dyn Editor> = on_device!(device, |B, dev| Arc::new(
        StableDiffusionInpaintEditor::<B>::from_dir(dir, options, dev)
            .with_context(|| format!("loading the inpainting model {}", dir.display()))?
            .with_step_hook(Arc::new(denoise_progress))
    ));
    // Removal never goes to SD (with an empty prompt it invents objects): LaMa when given.
    let remover = match &a.lama_model {
        Some(path) => load_lama(path)?,
        None => classical.clone(),
    };
    Ok(Arc::new(
        RoutingEditor::new()
            .route(&[EditOp::Remove], remover)
            .route(&[EditOp::Recolor], classical)
            .route(&[EditOp::Replace, EditOp::Add], sd),
    ))
}

/// Prints a denoising step on stderr: step, elapsed time and the estimated time left.
fn denoise_progress(p: &cielr::diffusion::DenoiseProgress) {
    eprintln!(
        "[edit] denoising step {}/{}, {:.1}s elapsed, ETA {:.1}s",
        p.step,
        p.total,
        p.elapsed.as_secs_f64(),
        p.eta().as_secs_f64()
    );
}

/// Where sample `j` goes: OUTPUT for sample 0, `<stem>.<j>.<ext>` beside it after that.
fn sample_path(output: &Path, j: u32) -> PathBuf {
    if j == 0 {
        return output.to_path_buf();
    }
    let stem = output.file_stem().and_then(|s| s.to_str()).unwrap_or("out");
    match output.extension().and_then(|e| e.to_str()) {
        Some(ext) => output.with_file_name(format!("{stem}.{j}.{ext}")),
        None => output.with_file_name(format!("{stem}.{j}")),
    }
}

/// Runs `cielr edit`.
pub fn run(a: EditArgs) -> anyhow::Result<()> {
    if !(a.dilate.is_finite() && a.dilate >= 0.0) {
        bail!(
            "--dilate must be a non-negative number of pixels, got {}",
            a.dilate
        );
    }
    let device = a.device.open()?;
    let image =
        load_rgb(&a.image).with_context(|| format!("reading the image {}", a.image.display()))?;
    let scene_builder: Arc<dyn SceneBuilder> = match &a.scene.scene {
        Some(path) => {
            let scene = Scene::load(path).context("reading the SSR given by --scene")?;
            Arc::new(StaticSceneBuilder::new(scene))
        }
        None => match a.scene_models.builder(&device)? {
            Some(b) => b,
            None => default_scene_builder(&device)?,
        },
    };
    let chosen = a.reasoning.language_model(&device)?;
    let model = chosen.model.clone();
    let planner = Arc::new(a.reasoning.planner(&chosen));
    let editor = editor(&a.editor, &device)?;
    let pipeline = Pipeline {
        scene_builder: scene_builder.clone(),
        planner: planner.clone(),
        editor: editor.clone(),
        options: PipelineOptions {
            max_rounds: a.reasoning.rounds as usize,
            dilate_radius: a.dilate,
            seed: a.seed,
            queries: a.reasoning.queries.clone(),
        },
    };
    let out = pollster::block_on(pipeline.run(&image, &a.instruction, &progress))
        .context("the edit failed")?;

    if let Some(parent) = a.output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    save_rgb(&out.image, &a.output)?;
    // Further samples: the same plan and masks, executed with the next base seeds.
    let n_steps = out.plan.steps.len() as u64;
    let seeds_of = |base: u64| -> Vec<u64> { (0..n_steps).map(|i| base.wrapping_add(i)).collect() };
    let mut samples = vec![serde_json::json!({
        "sample": 0,
        "output": a.output.display().to_string(),
        "seeds": seeds_of(a.seed),
    })];
    if a.samples > 1 {
        let planned = cielr::core::pipeline::PlanningOutput {
            plan: out.plan.clone(),
            scenes: out.scenes.clone(),
            scene_of_step: out.scene_of_step.clone(),
        };
        for j in 1..a.samples {
            let base = a.seed.wrapping_add(j as u64);
            eprintln!("[edit] sample {}/{} (seed {base})", j + 1, a.samples);
            let mut sampler = pipeline.clone();
            sampler.options.seed = base;
            let (image_j, _) = pollster::block_on(sampler.execute(&image, &planned, &progress))
                .with_context(|| format!("sample {j} failed"))?;
            let path = sample_path(&a.output, j);
            save_rgb(&image_j, &path)?;
            samples.push(serde_json::json!({
                "sample": j,
                "output": path.display().to_string(),
                "seeds": seeds_of(base),
            }));
        }
    }
    let components = BTreeMap::from([
        ("scene_builder".to_string(), scene_builder.name()),
        (
            "planner".to_string(),
            cielr::core::Planner::name(planner.as_ref()),
        ),
        ("language_model".to_string(), model.name()),
        ("editor".to_string(), editor.name()),
        ("device".to_string(), device.to_string()),
        ("precision".to_string(), a.device.precision.to_string()),
    ]);
    let report_path = sibling(&a.output, ".report.json");
    let mut report = out.report(&a.instruction, &components);
    if let Some(obj) = report.as_object_mut() {
        obj.insert("samples".into(), serde_json::Value::Array(samples));
    }
    let report = serde_json::to_string_pretty(&report)?;
    std::fs::write(&report_path, report)
        .with_context(|| format!("writing {}", report_path.display()))?;
    let targets: Vec<u32> = out
        .plan
        .steps
        .iter()
        .flat_map(|s| s.targets.iter().copied())
        .collect();
    let last_scene = out.scenes.last().context("the pipeline returned no SSR")?;
    let overlay = render_overlay(&image, last_scene, &targets)?;
    let overlay_path = sibling(&a.output, ".overlay.png");
    save_rgb(&overlay, &overlay_path)?;

    print!("{}", out.plan.summary(Some(last_scene)));
    eprintln!(
        "wrote {}, {} and {}",
        a.output.display(),
        report_path.display(),
        overlay_path.display()
    );
    Ok(())
}
