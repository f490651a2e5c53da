//! `cielr scene`: build the SSR of an image and show it as the LLM sees it; and the
//! `--owlv2/--sam/--depth` options that select the paper's SSR builder, with SAM 2.1 or SAM
//! (also used by `cielr edit`, `cielr plan` and `cielr eval`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use cielr::core::imageops::render_overlay;
use cielr::core::io::{load_rgb, save_rgb};
use cielr::core::SceneBuilder;
use cielr::eval::idcs_vlm::downscaled_png;
use cielr::planner::openai::OpenAiConfig;
use cielr::planner::openai_vision::OpenAiVision;
use cielr::scene::object_list::{
    parse_object_list, ObjectLister, MAX_LISTED_OBJECTS, OBJECT_LIST_PROMPT,
};
use cielr::scene::sam::amg::AmgConfig;
use cielr::scene::ssr_builder::{
    lvis_vocabulary, paper_amg_config, parse_vocabulary, BurnSsrBuilder, SsrBuilderOptions,
};
use cielr::scene::SceneError;
use clap::{Args, ValueEnum};
use image::RgbImage;

use super::device::{on_device, DeviceArgs, ModelDevice};

/// The model folders of the paper's SSR builder (OWLv2 + SAM 2.1 or SAM + Depth Anything
/// V2) and its main settings. Without the folders the default COCO detector builds the SSR.
#[derive(Args, Debug, Clone)]
pub struct SceneModelArgs {
    /// OWLv2 checkpoint folder (e.g. google/owlv2-large-patch14-ensemble); needs --sam and
    /// --depth too.
    #[arg(long, value_name = "DIR")]
    owlv2: Option<PathBuf>,
    /// SAM 2.1 (the paper's: facebook/sam2.1-hiera-tiny|small|base-plus|large) or SAM
    /// (facebook/sam-vit-base|large|huge) checkpoint folder, transformers format; which one
    /// is read from its config.json (model_type "sam2"/"sam2_video" or "sam").
    #[arg(long, value_name = "DIR")]
    sam: Option<PathBuf>,
    /// Depth Anything V2 checkpoint folder (depth-anything/Depth-Anything-V2-*-hf).
    #[arg(long, value_name = "DIR")]
    depth: Option<PathBuf>,
    /// The labels scanned when no queries are given: `lvis` (shipped) or a text file with one
    /// label per line.
    #[arg(long, value_name = "lvis|FILE", default_value = "lvis")]
    vocab: String,
    /// OWLv2 box score threshold.
    #[arg(long, default_value_t = 0.1)]
    box_threshold: f32,
    /// A scanned label is kept when its best box scores above this.
    #[arg(long, default_value_t = 0.3)]
    scan_threshold: f32,
    /// SAM mask generator: points per side (the paper's 16).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
    points_per_side: u32,
    /// SAM mask generator: predicted-IoU threshold (the paper's 0.7; 0 disables).
    #[arg(long, default_value_t = 0.7)]
    pred_iou_thresh: f32,
    /// SAM mask generator: stability-score threshold (the paper's 0.92; 0 disables).
    #[arg(long, default_value_t = 0.92)]
    stability_score_thresh: f32,
    /// SAM mask generator: crop layers (the paper's 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=3))]
    crop_n_layers: u32,
}

impl SceneModelArgs {
    /// The paper's builder, its models on `device`, when the three folders are given; `None`
    /// when none is; an error when only some are.
    pub fn builder(&self, device: &ModelDevice) -> anyhow::Result<Option<Arc<dyn SceneBuilder>>> {
        let (o, s, d) = match (&self.owlv2, &self.sam, &self.depth) {
            (None, None, None) => return Ok(None),
            (Some(o), Some(s), Some(d)) => (o, s, d),
            _ => bail!(
                "the paper's SSR builder needs all three model folders: --owlv2 DIR --sam DIR \
                 --depth DIR (see docs/scene.md)"
            ),
        };
        let vocabulary = if self.vocab == "lvis" {
            lvis_vocabulary()
        } else {
            let text = std::fs::read_to_string(&self.vocab)
                .with_context(|| format!("reading the vocabulary file {}", self.vocab))?;
            let v = parse_vocabulary(&text);
            if v.is_empty() {
                bail!("the vocabulary file {} has no labels", self.vocab);
            }
            v
        };
        let options = SsrBuilderOptions {
            box_threshold: self.box_threshold,
            scan_threshold: self.scan_threshold,
            vocabulary,
            amg: AmgConfig {
                points_per_side: Some(self.points_per_side as usize),
                pred_iou_thresh: self.pred_iou_thresh,
                stability_score_thresh: self.stability_score_thresh,
                crop_n_layers: self.crop_n_layers as usize,
                ..paper_amg_config()
            },
            ..Default::default()
        };
        eprintln!(
            "[scene] loading OWLv2 from {}, SAM/SAM 2.1 from {}, Depth Anything from {}{}",
            o.display(),
            s.display(),
            d.display(),
            device.suffix()
        );
        let builder: Arc<dyn SceneBuilder> = on_device!(device, |B, dev| Arc::new(
            BurnSsrBuilder::<B>::from_dirs(o, s, d, options, dev)
                .context("loading the paper's SSR builder")?
                .with_progress(Arc::new(|stage: &str, message: &str| {
                    eprintln!("[{stage}] {message}")
                }))
        ));
        Ok(Some(builder))
    }
}

/// Arguments of `cielr scene`.
#[derive(Args, Debug)]
pub struct SceneArgs {
    /// The image (PNG or JPEG).
    image: PathBuf,
    #[command(flatten)]
    models: SceneModelArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// Labels to look for, comma-separated ("cup,table"); without them the builder uses its
    /// vocabulary (LVIS scan for the paper's builder, all COCO classes for the default one).
    #[arg(long, value_name = "LABELS")]
    queries: Option<String>,
    /// Where the object list comes from when --queries is not given: `vocab` (the builder's
    /// vocabulary, the default) or `vlm` (a vision-language model served behind an
    /// OpenAI-compatible API lists what it sees; needs --vlm and --vlm-model).
    #[arg(long, value_enum, value_name = "SOURCE", conflicts_with = "queries")]
    objects_from: Option<ObjectsFrom>,
    /// The OpenAI-compatible server with image input (e.g. vLLM serving Qwen2-VL) for
    /// `--objects-from vlm`. The API key is read from OPENAI_API_KEY when set.
    #[arg(long, value_name = "URL", env = "CIELR_VLM")]
    vlm: Option<String>,
    /// The model name to request from the --vlm server.
    #[arg(long, value_name = "NAME", env = "CIELR_VLM_MODEL")]
    vlm_model: Option<String>,
    /// The longest side, in pixels, of the image sent to the --vlm server.
    #[arg(long, value_name = "PIXELS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(16..=4096))]
    vlm_max_side: u32,
    /// Where to write the SSR JSON (default: <image stem>.ssr.json in the current folder).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Also draw the SSR over the image into this PNG.
    #[arg(long, value_name = "FILE")]
    overlay: Option<PathBuf>,
}

/// Where `cielr scene` takes its object list from (without --queries).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectsFrom {
    /// The builder's vocabulary (LVIS scan or COCO classes).
    Vocab,
    /// A served vision-language model lists the objects it sees.
    Vlm,
}

/// [`ObjectLister`] over a vision-language model behind an OpenAI-compatible endpoint: the
/// image, downscaled to `max_side`, is sent with [`OBJECT_LIST_PROMPT`] and the answer is
/// read by [`parse_object_list`].
pub struct VlmObjectLister {
    vision: OpenAiVision,
    max_side: u32,
}

impl VlmObjectLister {
    /// A lister asking `config.model` at `config.base_url`, sending images of at most
    /// `max_side` pixels on their longer side.
    pub fn new(config: OpenAiConfig, max_side: u32) -> anyhow::Result<Self> {
        let mut vision = OpenAiVision::new(config)?;
        // Room for a list of MAX_LISTED_OBJECTS short names.
        vision.max_tokens = 512;
        vision.max_answer_chars = 8000;
        Ok(VlmObjectLister { vision, max_side })
    }
}

impl ObjectLister for VlmObjectLister {
    fn name(&self) -> String {
        format!(
            "vlm({} at {})",
            self.vision.model(),
            self.vision.client().endpoint()
        )
    }

    fn list_objects(&self, image: &RgbImage) -> cielr::scene::Result<Vec<String>> {
        let png = downscaled_png(image, self.max_side)
            .map_err(|e| SceneError::InvalidInput(format!("encoding the image: {e}")))?;
        let answer = self
            .vision
            .ask(None, OBJECT_LIST_PROMPT, &[&png])
            .map_err(|e| SceneError::InvalidInput(format!("asking {}: {e}", self.name())))?;
        parse_object_list(&answer, MAX_LISTED_OBJECTS)
    }
}

/// The VLM lister from `--vlm` and `--vlm-model`.
fn vlm_lister(a: &SceneArgs) -> anyhow::Result<VlmObjectLister> {
    let Some(url) = a.vlm.as_deref().map(str::trim).filter(|u| !u.is_empty()) else {
        bail!("--objects-from vlm needs the server: --vlm <url> --vlm-model <name> (or CIELR_VLM, CIELR_VLM_MODEL)");
    };
    let Some(model) = a
        .vlm_model
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
    else {
        bail!("--vlm {url} needs the model's name: --vlm-model <name> (or CIELR_VLM_MODEL)");
    };
    VlmObjectLister::new(OpenAiConfig::new(url, model), a.vlm_max_side)
        .with_context(|| format!("configuring the vision model at {url}"))
}

fn create_parent(path: &Path) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    Ok(())
}

/// Runs `cielr scene`.
pub fn run(a: SceneArgs) -> anyhow::Result<()> {
    let device = a.device.open()?;
    let image =
        load_rgb(&a.image).with_context(|| format!("reading the image {}", a.image.display()))?;
    // The object list first: a bad --vlm answer fails before any model is loaded.
    let queries: Vec<String> = if a.objects_from == Some(ObjectsFrom::Vlm) {
        let lister = vlm_lister(&a)?;
        let names = lister
            .list_objects(&image)
            .context("listing the objects with the vision model")?;
        eprintln!(
            "[scene] {} objects listed by {}: {}",
            names.len(),
            lister.name(),
            names.join(", ")
        );
        names
    } else {
        a.queries
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|q| !q.is_empty())
            .map(String::from)
            .collect()
    };
    let builder = match a.models.builder(&device)? {
        Some(b) => b,
        None => super::edit::default_scene_builder(&device)?,
    };
    let scene = pollster::block_on(builder.build(&image, &queries))
        .with_context(|| format!("building the SSR with {}", builder.name()))?;
    let out = a.out.clone().unwrap_or_else(|| {
        let stem = a
            .image
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("scene");
        PathBuf::from(format!("{stem}.ssr.json"))
    });
    create_parent(&out)?;
    scene.save(&out)?;
    if let Some(path) = &a.overlay {
        create_parent(path)?;
        save_rgb(&render_overlay(&image, &scene, &[])?, path)?;
    }
    print!("{}", scene.describe());
    eprintln!(
        "[scene] {} objects by {}; wrote {}{}",
        scene.objects.len(),
        builder.name(),
        out.display(),
        a.overlay
            .as_ref()
            .map(|p| format!(" and {}", p.display()))
            .unwrap_or_default()
    );
    Ok(())
}
