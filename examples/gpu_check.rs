//! GPU check harness, our side (issue 8): loads a random-weight checkpoint and inputs written by
//! `tools/gpu/ref.py`, runs cielr's Burn port on the chosen device, compares with the
//! reference outputs and times it.
//!
//! ```text
//! gpu_check MODEL DIR [--device cpu|cuda|wgpu] [--repeats N] [--precision f32|f16|bf16]
//!     [--sd-attention auto|fused|sliced|off]
//! ```
//!
//! MODEL is one of `clip owlv2 sam sam-decoder depth unet vae lama llm e2e sd-inpaint`. Prints
//! one line per row and writes `DIR/ours.json` (f32) or `DIR/ours-<precision>.json` (`rows`:
//! name, precision, max_abs, max_rel, ref_max_abs, ours_ms), which `tools/gpu/table.py` joins
//! with `DIR/torch.json`. Timing: two warm-up calls, then the median of N calls (default 5), each
//! ended by `Backend::sync` so queued device work is counted.
//!
//! Half precision (`--precision f16|bf16`): the device's default float dtype is set before any
//! tensor exists (`set_default_float_dtype`), so the checkpoint's f32 values are cast to the
//! half dtype as they are loaded and every op runs in it; the outputs are compared with the
//! same f32 reference. Burn 0.21 picks float dtypes at run time for both backends used here
//! (`Flex` implements `Backend` only as `Flex<f32, i32>` but stores and computes F16/BF16
//! tensors; `Cuda<f32>` does the same), so one build serves every precision.
//!
//! `e2e` times the whole CIELR edit with random weights (no reference outputs; the torch side
//! times the same stages in `tools/gpu/e2e_torch.py`):
//! the SSR build (OWLv2 + SAM automatic masks + Depth Anything V2), two planner rounds of fixed
//! length (prompt and generated token counts from `torch.json`, greedy on random logits) with a
//! Qwen2-shaped LLM whose random weights are initialised here from its `config.json`, and an
//! SD inpainting run; one cold pass (kernel compilation, autotuning) then one timed pass.
//!
//! `sd-inpaint` runs the whole SD inpainting pipeline (20 DDIM steps, guidance 7.5, injected
//! initial noise) on the folder and inputs `ref.py` wrote and compares the final image and
//! latents with diffusers' `StableDiffusionInpaintPipeline`.
//!
//! `--sd-attention` sets how the SD UNet and VAE attend in `unet`, `vae`, `sd-inpaint` and
//! `e2e` (`cielr_diffusion::blocks::AttentionSlicing`): `auto` (the default: the fused CPU
//! kernel on the CPU, slices of 2^25 scores on CUDA), `fused` (the backend's fused attention,
//! Burn's flash attention on CUDA), `sliced`, `off`.
//!
//! Driven by `tools/gpu/check.sh`; builds and runs on CPU too (`--device cpu`, the flex
//! backend); `--device cuda` needs the `cuda` feature and a CUDA driver.

/// The models' many large short-lived tensors are slow under glibc malloc (docs/performance.md,
/// "Allocator").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor};
use cielr_core::weights::TensorStore;
use cielr_diffusion::blocks::AttentionSlicing;
use cielr_scene::depth_anything::DepthAnything;
use cielr_scene::owlv2::{Owlv2Detector, Owlv2ImageEmbedding};
use cielr_scene::sam::SamModel;
use cielr_scene::sam2::Sam2Model;

type Res<T> = Result<T, Box<dyn Error>>;

/// One compared and timed output, or (`compared == false`) a time only.
struct Row {
    name: String,
    max_abs: f32,
    max_rel: f32,
    ref_max: f32,
    /// `None` when the row's output comes from the call timed in another row.
    ours_ms: Option<f64>,
    compared: bool,
    note: String,
}

impl Row {
    /// A timing-only row (no reference to compare with).
    fn time_only(name: &str, ms: f64, note: impl Into<String>) -> Self {
        Row {
            name: name.into(),
            max_abs: 0.0,
            max_rel: 0.0,
            ref_max: 0.0,
            ours_ms: Some(ms),
            compared: false,
            note: note.into(),
        }
    }
}

/// Max abs error, max relative error (|d| / max(|ref|, 1e-3)) and max |ref|; a length mismatch
/// or a non-finite value counts as an infinite error.
fn errors(ours: &[f32], reference: &[f32]) -> (f32, f32, f32) {
    if ours.len() != reference.len() {
        return (f32::INFINITY, f32::INFINITY, 0.0);
    }
    let (mut abs, mut rel, mut max) = (0f32, 0f32, 0f32);
    for (a, b) in ours.iter().zip(reference) {
        let d = if a.is_finite() {
            (a - b).abs()
        } else {
            f32::INFINITY
        };
        abs = abs.max(d);
        rel = rel.max(d / b.abs().max(1e-3));
        max = max.max(b.abs());
    }
    (abs, rel, max)
}

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

/// Median milliseconds of `repeats` calls of `f` after two warm-ups, each call followed by a
/// device synchronisation.
fn median_ms<B: Backend>(
    device: &B::Device,
    repeats: usize,
    f: impl FnMut() -> Res<()>,
) -> Res<f64> {
    median_after::<B>(device, 2, repeats, f)
}

/// The output of one call of `f`, read back, then the median milliseconds of `repeats`
/// further calls ([`median_ms`]).
fn output_and_ms<B: Backend, const D: usize>(
    device: &B::Device,
    repeats: usize,
    mut f: impl FnMut() -> Res<Tensor<B, D>>,
) -> Res<(Vec<f32>, f64)> {
    let out = values(f()?);
    let ms = median_ms::<B>(device, repeats, || f().map(drop))?;
    Ok((out, ms))
}

/// Median milliseconds of `repeats` calls of `f` after `warmups` calls, each call followed by
/// a device synchronisation.
fn median_after<B: Backend>(
    device: &B::Device,
    warmups: usize,
    repeats: usize,
    mut f: impl FnMut() -> Res<()>,
) -> Res<f64> {
    for _ in 0..warmups {
        f()?;
    }
    B::sync(device).map_err(|e| format!("device sync: {e:?}"))?;
    let mut v = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        f()?;
        B::sync(device).map_err(|e| format!("device sync: {e:?}"))?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Ok(v[v.len() / 2])
}

/// The inputs and references `ref.py` wrote.
struct Case {
    dir: PathBuf,
    inputs: TensorStore,
    refs: TensorStore,
    /// How the SD UNet and VAE attend (`--sd-attention`).
    sd_attention: AttentionSlicing,
}

impl Case {
    fn open(dir: &Path) -> Res<Self> {
        let open = |f: &str| -> Res<TensorStore> {
            TensorStore::open(dir.join(f)).map_err(|e| {
                format!("{}: {e} (was tools/gpu/ref.py run?)", dir.join(f).display()).into()
            })
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            inputs: open("inputs.safetensors")?,
            refs: open("reference.safetensors")?,
            sd_attention: AttentionSlicing::Auto,
        })
    }

    fn input<B: Backend, const D: usize>(
        &self,
        name: &str,
        device: &B::Device,
    ) -> Res<Tensor<B, D>> {
        let shape = self
            .inputs
            .shape(name)
            .ok_or_else(|| format!("inputs.safetensors has no `{name}`"))?;
        let dims: [usize; D] = shape
            .as_slice()
            .try_into()
            .map_err(|_| format!("input `{name}` has shape {shape:?}, expected {D} dims"))?;
        Ok(self.inputs.tensor::<B, D>(name, dims, device)?)
    }

    fn row(&self, name: &str, output: &str, ours: Vec<f32>, ours_ms: f64) -> Res<Row> {
        let (_, reference) = self.refs.read(output)?;
        let (max_abs, max_rel, ref_max) = errors(&ours, &reference);
        Ok(Row {
            name: name.into(),
            max_abs,
            max_rel,
            ref_max,
            ours_ms: Some(ours_ms),
            compared: true,
            note: String::new(),
        })
    }
}

fn run<B: Backend>(model: &str, case: &Case, device: &B::Device, repeats: usize) -> Res<Vec<Row>>
where
    SamModel<B>: Send + Sync,
    Sam2Model<B>: Send + Sync,
    Owlv2Detector<B>: Send + Sync,
    Owlv2ImageEmbedding<B>: Send + Sync + 'static,
    DepthAnything<B>: Send + Sync,
{
    let dir = &case.dir;
    let t = Instant::now();
    let rows = match model {
        "clip" => {
            let m = cielr_scene::clip::ClipModel::<B>::from_pretrained(dir, device)?;
            let x = case.input::<B, 4>("pixel_values", device)?;
            eprintln!("[ours] loaded in {:.2} s", t.elapsed().as_secs_f64());
            let (out, ms) =
                output_and_ms(device, repeats, || Ok(m.get_image_features(x.clone())?))?;
            vec![case.row("clip-vision", "image_embeds", out, ms)?]
        }
        "owlv2" => {
            let m = cielr_scene::owlv2::Owlv2ForObjectDetection::<B>::from_pretrained(dir, device)?;
            let x = case.input::<B, 4>("pixel_values", device)?;
            let s = x.dims()[2];
            eprintln!("[ours] loaded in {:.2} s", t.elapsed().as_secs_f64());
            let (out, ms) = output_and_ms(device, repeats, || {
                Ok(m.embed_pixels(x.clone(), (s, s), s)?.image_feats)
            })?;
            vec![case.row("owlv2-vision", "image_feats", out, ms)?]
        }
        "sam" => {
            let m = cielr_scene::sam::SamModel::<B>::load(dir, device)?;
            let x = case.input::<B, 4>("pixel_values", device)?;
            eprintln!("[ours] loaded in {:.2} s", t.elapsed().as_secs_f64());
            let (out, ms) = output_and_ms(device, repeats, || Ok(m.image_embeddings(x.clone())?))?;
            vec![case.row("sam-encoder", "image_embeddings", out, ms)?]
        }
        "sam-decoder" => run_sam_decoder::<B>(case, device, repeats)?,
        "depth" => {
            let m =
                cielr_scene::depth_anything::DepthAnythingModel::<B>::from_pretrained(dir, device)?;
            let x = case.input::<B, 4>("pixel_values", device)?;
            eprintln!("[ours] loaded in {:.2} s", t.elapsed().as_secs_f64());
            let (out, ms) = output_and_ms(device, repeats, || Ok(m.forward(x.clone())?))?;
            vec![case.row("depth-anything", "predicted_depth", out, ms)?]
        }
        "unet" => {
            let mut m = cielr_diffusion::unet::UNet2DConditionModel::<B>::from_dir(dir, device)?;
            m.set_attention_slicing(case.sd_attention);
            let x = case.input::<B, 4>("sample", device)?;
            let c = case.input::<B, 3>("encoder_hidden_states", device)?;
            eprintln!("[ours] loaded in {:.2} s", t.elapsed().as_secs_f64());
            let (out, ms) = output_and_ms(device, repeats, || {
                Ok(m.forward(x.clone(), 501.0, c.clone())?)
            })?;
            vec![case.row("unet-step", "out", out, ms)?]
        }
        "vae" => {
            let mut m = cielr_diffusion::vae::AutoencoderKl::<B>::from_dir(dir, device)?;
            m.set_attention_slicing(case.sd_attention);
            let z = case.input::<B, 4>("latents", device)?;
            eprintln!("[ours] loaded in {:.2} s", t.elapsed().as_secs_f64());
            let (out, ms) = output_and_ms(device, repeats, || Ok(m.decode(z.clone())?))?;
            vec![case.row("vae-decode", "decoded", out, ms)?]
        }
        "lama" => {
            let m = cielr_diffusion::LamaInpainter::<B>::load_on(dir, device)?;
            let x = case.input::<B, 4>("input", device)?;
            eprintln!("[ours] loaded in {:.2} s", t.elapsed().as_secs_f64());
            let (out, ms) = output_and_ms(device, repeats, || {
                Ok(m.generator().forward_logits(x.clone())?)
            })?;
            vec![case.row("lama", "logits", out, ms)?]
        }
        "llm" => run_llm::<B>(case, device, repeats)?,
        "e2e" => run_e2e::<B>(case, device)?,
        "sd-inpaint" => run_sd_inpaint::<B>(case, device)?,
        other => return Err(format!("unknown model `{other}`").into()),
    };
    Ok(rows)
}

/// SAM's prompt encoder + mask decoder on given image embeddings, for a batch of one-point
/// prompts (in the model's input frame), multimask: low-resolution mask logits and IoU
/// predictions (the IoU row shares the masks row's time).
fn run_sam_decoder<B: Backend>(case: &Case, device: &B::Device, repeats: usize) -> Res<Vec<Row>> {
    use cielr_scene::sam::prompt_encoder::EncodedPromptInput;
    use cielr_scene::sam::ImageEmbedding;
    let t = Instant::now();
    let m = SamModel::<B>::load(&case.dir, device)?;
    let e = case.input::<B, 4>("image_embeddings", device)?;
    let [_, c, g, _] = e.dims();
    let s = m.config.vision_config.image_size;
    let embedding = ImageEmbedding {
        embedding: e.reshape([c, g, g]),
        original_size: (s, s),
        reshaped_size: (s, s),
    };
    let (pshape, points) = case.inputs.read("input_points")?;
    let (_, labels) = case.inputs.read("input_labels")?;
    let [1, n, ppp, 2] = pshape.as_slice() else {
        return Err(
            format!("input_points has shape {pshape:?}, expected [1, n, points, 2]").into(),
        );
    };
    if labels.len() != n * ppp {
        return Err("input_labels does not match input_points".into());
    }
    let input = EncodedPromptInput {
        points: points
            .chunks_exact(2)
            .map(|p| [p[0] as f64, p[1] as f64])
            .collect(),
        labels: labels.iter().map(|&l| l as i64).collect(),
        points_per_prompt: *ppp,
        boxes: Vec::new(),
        n: *n,
    };
    eprintln!("[ours] loaded in {:.2} s", t.elapsed().as_secs_f64());
    let p = m.predict_encoded(&embedding, &input, true)?;
    let (masks, iou) = (values(p.low_res_logits), values(p.iou_scores));
    let ms = median_ms::<B>(device, repeats, || {
        m.predict_encoded(&embedding, &input, true)?;
        Ok(())
    })?;
    let mut iou_row = case.row("sam-decoder-iou", "iou_scores", iou, 0.0)?;
    iou_row.ours_ms = None;
    Ok(vec![
        case.row("sam-decoder", "pred_masks", masks, ms)?,
        iou_row,
    ])
}

/// The whole SD inpainting pipeline (`SdInpaintPipeline::run`) on the folder, image, mask and
/// initial noise `ref.py sd-inpaint` wrote, with its prompts, steps and guidance (strength 1):
/// the final image (row `sd-inpaint-<steps>`, with the time of the whole run: prompt encoding,
/// VAE encode, the steps, VAE decode and the image's read-back) and the final latents
/// (`-latents`, same run, no time of its own). The output run is the warm-up, then the median
/// of `timing_repeats` runs (from `torch.json`, as the torch side times it).
fn run_sd_inpaint<B: Backend>(case: &Case, device: &B::Device) -> Res<Vec<Row>> {
    use cielr_diffusion::sd_inpaint::{InpaintParams, SdInpaintPipeline};
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(case.dir.join("torch.json"))?)?;
    let text = |k: &str| -> Res<String> {
        Ok(meta[k]
            .as_str()
            .ok_or_else(|| format!("torch.json has no `{k}`"))?
            .to_string())
    };
    let num = |k: &str| -> Res<f64> {
        meta[k]
            .as_f64()
            .ok_or_else(|| format!("torch.json has no `{k}`").into())
    };
    let params = InpaintParams {
        prompt: text("prompt")?,
        negative_prompt: text("negative_prompt")?,
        steps: num("steps")? as usize,
        guidance: num("guidance")? as f32,
        strength: num("strength")? as f32,
        seed: 0,
    };
    let repeats = num("timing_repeats")? as usize;
    // The image ([1, 3, H, W] in [0, 1], 8-bit values) and the 0/1 mask, back to pixels.
    let (ishape, pixels) = case.inputs.read("image")?;
    let [1, 3, h, w] = ishape.as_slice() else {
        return Err(format!("input image has shape {ishape:?}, expected [1, 3, H, W]").into());
    };
    let (h, w) = (*h, *w);
    let (mshape, mask_v) = case.inputs.read("mask")?;
    if mshape.as_slice() != [1, 1, h, w] {
        return Err(format!("input mask has shape {mshape:?}, expected [1, 1, {h}, {w}]").into());
    }
    let plane = h * w;
    let image = image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let at = |c: usize| {
            (pixels[c * plane + y as usize * w + x as usize] * 255.0)
                .round()
                .clamp(0.0, 255.0) as u8
        };
        image::Rgb([at(0), at(1), at(2)])
    });
    let mask = cielr_core::mask::Mask::from_fn(w as u32, h as u32, |x, y| {
        mask_v[y as usize * w + x as usize] > 0.5
    })?;
    let t = Instant::now();
    let mut sd = SdInpaintPipeline::<B>::from_dir(&case.dir, device)?;
    sd.set_attention_slicing(case.sd_attention);
    let noise = case.input::<B, 4>("noise", device)?;
    eprintln!(
        "[ours] loaded in {:.2} s ({:?} scheduler, {w}x{h}, {} steps)",
        t.elapsed().as_secs_f64(),
        sd.scheduler_kind(),
        params.steps
    );
    let once = || -> Res<(Vec<f32>, Vec<f32>)> {
        let out = sd.run(&image, &mask, &params, Some(noise.clone()), &mut |_| {})?;
        Ok((values(out.image), values(out.latents)))
    };
    let (out, cold_ms) = timed::<B, _>(device, &once)?;
    let (image_v, latents_v) = out;
    eprintln!("[ours] first (cold) run {cold_ms:.0} ms");
    let ms = median_after::<B>(device, 0, repeats, || {
        once()?;
        Ok(())
    })?;
    let name = format!("sd-inpaint-{}", params.steps);
    let mut latents_row = case.row(&format!("{name}-latents"), "latents", latents_v, 0.0)?;
    latents_row.ours_ms = None;
    Ok(vec![case.row(&name, "image", image_v, ms)?, latents_row])
}

/// Milliseconds of `f`, ended by a device synchronisation.
fn timed<B: Backend, T>(device: &B::Device, f: impl FnOnce() -> Res<T>) -> Res<(T, f64)> {
    let t = Instant::now();
    let v = f()?;
    B::sync(device).map_err(|e| format!("device sync: {e:?}"))?;
    Ok((v, t.elapsed().as_secs_f64() * 1e3))
}

/// The whole CIELR edit with random weights, stage by stage (see the module docs). Time only:
/// random weights give meaningless scenes and text, so nothing is compared; the planner rounds
/// generate a fixed number of tokens (greedy, no stop token) instead of parsing a plan.
fn run_e2e<B: Backend>(case: &Case, device: &B::Device) -> Res<Vec<Row>>
where
    SamModel<B>: Send + Sync,
    Sam2Model<B>: Send + Sync,
    Owlv2Detector<B>: Send + Sync,
    Owlv2ImageEmbedding<B>: Send + Sync + 'static,
    DepthAnything<B>: Send + Sync,
{
    use cielr_diffusion::sd_inpaint::{InpaintParams, SdInpaintPipeline};
    use cielr_scene::ssr_builder::{BurnSsrBuilder, SsrBuilderOptions};
    let dir = &case.dir;
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("torch.json"))?)?;
    let num = |k: &str| -> Res<usize> {
        Ok(meta[k]
            .as_u64()
            .ok_or_else(|| format!("torch.json has no `{k}`"))? as usize)
    };
    let (prompt, generate, steps, rounds) = (
        num("prompt")?,
        num("generate")?,
        num("steps")?,
        num("rounds")?,
    );
    let queries: Vec<String> = meta["queries"]
        .as_array()
        .ok_or("torch.json has no `queries`")?
        .iter()
        .filter_map(|q| q.as_str().map(String::from))
        .collect();
    let image = image::open(dir.join("image.png"))?.to_rgb8();
    let (w, h) = image.dimensions();
    // The edit mask: a fixed central box (random weights give arbitrary SSR masks; a fixed
    // mask keeps the inpainting stage's work the same from run to run).
    let mask = cielr_core::mask::Mask::from_fn(w, h, |x, y| {
        x >= w / 4 && x < 3 * w / 4 && y >= h / 4 && y < 3 * h / 4
    })?;

    // Random weights score every box and mask low: with the paper's thresholds nothing would
    // pass and the SSR's per-mask work (labelling, merging, depth sampling) would not be
    // timed. All boxes and masks are kept instead (an upper bound on that work).
    let mut options = SsrBuilderOptions {
        box_threshold: 0.0,
        ..SsrBuilderOptions::default()
    };
    options.amg.pred_iou_thresh = 0.0;
    options.amg.stability_score_thresh = 0.0;
    let ((ssr, llm, sd), load_ms) = timed::<B, _>(device, || {
        let ssr = BurnSsrBuilder::<B>::from_dirs(
            dir.join("owlv2"),
            dir.join("sam"),
            dir.join("depth"),
            options,
            device,
        )?;
        let cfg = cielr_planner::llama::LlamaConfig::from_file(&dir.join("llm/config.json"))?;
        let llm = cfg.init::<B>(device)?;
        let mut sd = SdInpaintPipeline::<B>::from_dir(dir.join("sd"), device)?;
        sd.set_attention_slicing(case.sd_attention);
        Ok((ssr, llm, sd))
    })?;
    eprintln!(
        "[ours] e2e: loaded OWLv2, SAM, Depth Anything (checkpoints), SD inpainting \
         (checkpoint), random {}-layer LLM in {:.1} s",
        llm.config().num_hidden_layers,
        load_ms / 1e3
    );
    let vocab = llm.config().vocab_size as u32;
    let params = InpaintParams {
        prompt: "a red armchair".into(),
        negative_prompt: String::new(),
        steps,
        guidance: 7.5,
        strength: 1.0,
        seed: 0,
    };
    // One pass: (stage name, ms) in order. `salt` changes one pixel so the SSR builder's
    // per-image cache does not serve the second pass.
    let pass = |salt: u8| -> Res<Vec<(String, f64)>> {
        let mut img = image.clone();
        img.get_pixel_mut(0, 0).0[0] ^= salt;
        let mut stages = Vec::new();
        let (scene, ms) = timed::<B, _>(device, || Ok(ssr.build_scene(&img, &queries)?))?;
        eprintln!("[ours] e2e: SSR with {} objects", scene.objects.len());
        stages.push(("e2e-ssr".to_string(), ms));
        let mut state = 0x2545_f491_4f6c_dd1du64 ^ u64::from(salt);
        for r in 0..rounds {
            // A fixed-length prompt of pseudo-random token ids.
            let ids: Vec<u32> = (0..prompt)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % u64::from(vocab)) as u32
                })
                .collect();
            let (_, ms) = timed::<B, _>(device, || {
                let mut cache = llm.new_cache();
                let mut logits = llm.next_token_logits(&ids, &mut cache)?;
                for k in 0..generate {
                    let next = logits
                        .iter()
                        .enumerate()
                        .max_by(|a, b| a.1.total_cmp(b.1))
                        .map_or(0, |(i, _)| i as u32);
                    if k + 1 < generate {
                        logits = llm.next_token_logits(&[next], &mut cache)?;
                    }
                }
                Ok(())
            })?;
            stages.push((format!("e2e-plan-round-{}", r + 1), ms));
        }
        let (_, ms) = timed::<B, _>(device, || {
            let out = sd.run(&img, &mask, &params, None, &mut |_| {})?;
            Ok(out.to_rgb()?)
        })?;
        stages.push((format!("e2e-sd-inpaint-{steps}"), ms));
        Ok(stages)
    };
    let cold = pass(1)?;
    let warm = pass(2)?;
    let total = |v: &[(String, f64)]| v.iter().map(|s| s.1).sum::<f64>();
    let what = format!(
        "{w}x{h}, {prompt}-token prompts + {generate} generated x {rounds} rounds, {steps} steps"
    );
    let mut rows = vec![Row::time_only(
        "e2e-load",
        load_ms,
        "checkpoint loading + random LLM init (not part of the edit)",
    )];
    for ((name, ms), (_, cold_ms)) in warm.iter().zip(&cold) {
        rows.push(Row::time_only(
            name,
            *ms,
            format!("second pass; first (cold) pass {cold_ms:.0} ms"),
        ));
    }
    rows.push(Row::time_only(
        "e2e-total",
        total(&warm),
        format!("{what}; second pass"),
    ));
    rows.push(Row::time_only(
        "e2e-total-cold",
        total(&cold),
        "first pass: includes kernel compilation / autotuning",
    ));
    Ok(rows)
}

/// Prefill logits of the last prompt position, and teacher-forced per-token decode logits,
/// with the prompt/decode lengths of `torch.json`. Decode time per token is (prefill + decode
/// loop - prefill) / tokens, measured as on the torch side.
fn run_llm<B: Backend>(case: &Case, device: &B::Device, repeats: usize) -> Res<Vec<Row>> {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(case.dir.join("torch.json"))?)?;
    let prompt = meta["prompt"]
        .as_u64()
        .ok_or("torch.json has no `prompt`")? as usize;
    let decode = meta["decode"]
        .as_u64()
        .ok_or("torch.json has no `decode`")? as usize;
    let (_, ids) = case.inputs.read("input_ids")?;
    let ids: Vec<u32> = ids.iter().map(|&v| v as u32).collect();
    if ids.len() < prompt + decode {
        return Err("input_ids is shorter than prompt + decode".into());
    }
    let t = Instant::now();
    let m = cielr_planner::llama::Llama::<B>::from_hf_dir(&case.dir, device)?;
    eprintln!("[ours] loaded in {:.2} s", t.elapsed().as_secs_f64());
    let vocab = m.config().vocab_size;
    let prefill = |cache: &mut cielr_planner::llama::LlamaCache<B>| -> Res<Tensor<B, 2>> {
        let logits = m.forward_tokens(&ids[..prompt], cache)?;
        Ok(logits.narrow(0, prompt - 1, 1))
    };
    let decode_loop = |cache: &mut cielr_planner::llama::LlamaCache<B>| -> Res<Vec<Tensor<B, 2>>> {
        (0..decode)
            .map(|k| Ok(m.forward_tokens(&ids[prompt + k..prompt + k + 1], cache)?))
            .collect()
    };
    let mut cache = m.new_cache();
    let pre = values(prefill(&mut cache)?);
    let dec: Vec<f32> = decode_loop(&mut cache)?
        .into_iter()
        .flat_map(values)
        .collect();
    debug_assert_eq!(dec.len(), decode * vocab);
    let pre_ms = median_ms::<B>(device, repeats, || {
        prefill(&mut m.new_cache())?;
        Ok(())
    })?;
    let all_ms = median_ms::<B>(device, repeats, || {
        let mut c = m.new_cache();
        prefill(&mut c)?;
        decode_loop(&mut c)?;
        Ok(())
    })?;
    Ok(vec![
        case.row("llm-prefill", "prefill_logits", pre, pre_ms)?,
        case.row(
            "llm-decode",
            "decode_logits",
            dec,
            (all_ms - pre_ms) / decode as f64,
        )?,
    ])
}

fn main() {
    cielr::keep_freed_memory();
    if let Err(e) = real_main() {
        eprintln!("gpu_check: error: {e}");
        std::process::exit(2);
    }
}

fn real_main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: gpu_check MODEL DIR [--device cpu|cuda|wgpu] [--repeats N] \
                 [--precision f32|f16|bf16] [--sd-attention auto|fused|sliced|off]";
    let (mut device, mut repeats, mut precision, mut pos) =
        ("cpu".to_string(), 5usize, "f32".to_string(), Vec::new());
    let mut sd_attention = AttentionSlicing::Auto;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--device" => device = it.next().ok_or(usage)?.clone(),
            "--repeats" => repeats = it.next().ok_or(usage)?.parse()?,
            "--precision" => precision = it.next().ok_or(usage)?.clone(),
            "--sd-attention" => {
                sd_attention = match it.next().ok_or(usage)?.as_str() {
                    "auto" => AttentionSlicing::Auto,
                    "fused" => AttentionSlicing::Fused,
                    "sliced" => AttentionSlicing::MaxScores(AttentionSlicing::DEFAULT_MAX_SCORES),
                    "off" => AttentionSlicing::Off,
                    other => {
                        return Err(format!("unknown --sd-attention `{other}` ({usage})").into())
                    }
                }
            }
            _ => pos.push(a.clone()),
        }
    }
    let [model, dir] = pos.as_slice() else {
        return Err(usage.into());
    };
    let dtype = match precision.as_str() {
        "f32" => None,
        "f16" => Some(FloatDType::F16),
        "bf16" => Some(FloatDType::BF16),
        other => return Err(format!("unknown precision `{other}` ({usage})").into()),
    };
    // `e2e` has no inputs or references (time only): an empty case.
    let case = if model == "e2e" {
        Case {
            dir: PathBuf::from(dir),
            inputs: TensorStore::from_buffers(Vec::new())?,
            refs: TensorStore::from_buffers(Vec::new())?,
            sd_attention,
        }
    } else {
        Case {
            sd_attention,
            ..Case::open(Path::new(dir))?
        }
    };
    let rows = match device.as_str() {
        "cpu" => {
            type B = cielr_core::backend::CpuBackend;
            let dev = Default::default();
            set_float_dtype::<B>(&dev, dtype)?;
            run::<B>(model, &case, &dev, repeats)?
        }
        "cuda" => run_cuda(model, &case, repeats, dtype)?,
        "wgpu" => run_wgpu(model, &case, repeats, dtype)?,
        other => return Err(format!("unknown device `{other}` ({usage})").into()),
    };
    let mut json = Vec::new();
    for r in &rows {
        let ms = r
            .ours_ms
            .map_or("(timed above)".into(), |m| format!("{m:.3} ms"));
        if r.compared {
            println!(
                "[ours] {:<16} {precision:<4} max abs {:.3e}  max rel {:.3e}  (max |ref| {:.3e})  {ms} on {device}",
                r.name, r.max_abs, r.max_rel, r.ref_max
            );
        } else {
            println!(
                "[ours] {:<16} {precision:<4} {ms} on {device}  ({})",
                r.name, r.note
            );
        }
        let mut row = serde_json::json!({
            "name": r.name, "precision": precision, "ours_ms": r.ours_ms, "device": device,
        });
        if r.compared {
            // JSON has no infinity: a non-finite error is written as null and read as a failure.
            let num = |v: f32| {
                if v.is_finite() {
                    serde_json::json!(v)
                } else {
                    serde_json::Value::Null
                }
            };
            row["max_abs"] = num(r.max_abs);
            row["max_rel"] = num(r.max_rel);
            row["ref_max_abs"] = num(r.ref_max);
        } else {
            row["time_only"] = true.into();
            row["note"] = r.note.clone().into();
        }
        json.push(row);
    }
    let file = if dtype.is_none() {
        "ours.json".to_string()
    } else {
        format!("ours-{precision}.json")
    };
    std::fs::write(
        case.dir.join(file),
        serde_json::to_string_pretty(&serde_json::json!({ "rows": json }))?,
    )?;
    Ok(())
}

/// Makes `dtype` the device's default float dtype (before any tensor exists on it), so
/// checkpoints load and every op runs in it; `None` keeps f32.
fn set_float_dtype<B: Backend>(device: &B::Device, dtype: Option<FloatDType>) -> Res<()> {
    if let Some(d) = dtype {
        burn::tensor::backend::set_default_float_dtype::<B>(device, d)
            .map_err(|e| format!("{d:?} on {}: {e:?}", B::name(device)))?;
    }
    Ok(())
}

#[cfg(feature = "cuda")]
fn run_cuda(model: &str, case: &Case, repeats: usize, dtype: Option<FloatDType>) -> Res<Vec<Row>> {
    type B = cielr_core::backend::CudaBackend;
    match cielr_core::backend::detect() {
        cielr_core::backend::Accelerator::Cuda { .. } => {
            let dev = Default::default();
            set_float_dtype::<B>(&dev, dtype)?;
            run::<B>(model, case, &dev, repeats)
        }
        cielr_core::backend::Accelerator::Cpu { reason } => {
            Err(format!("--device cuda: CUDA is not usable here ({reason})").into())
        }
    }
}

/// Burn's wgpu backend (feature `wgpu-check`): the GPU code path (CubeCL kernels, autotune,
/// fusion, `cielr_core::attention`'s GPU routing) on any Vulkan device, lavapipe included.
#[cfg(feature = "wgpu-check")]
fn run_wgpu(model: &str, case: &Case, repeats: usize, dtype: Option<FloatDType>) -> Res<Vec<Row>> {
    type B = burn::backend::Wgpu;
    let dev = burn::backend::wgpu::WgpuDevice::default();
    set_float_dtype::<B>(&dev, dtype)?;
    run::<B>(model, case, &dev, repeats)
}

#[cfg(not(feature = "wgpu-check"))]
fn run_wgpu(_: &str, _: &Case, _: usize, _: Option<FloatDType>) -> Res<Vec<Row>> {
    Err("--device wgpu: this binary was built without the `wgpu-check` feature".into())
}

#[cfg(not(feature = "cuda"))]
fn run_cuda(_: &str, _: &Case, _: usize, _: Option<FloatDType>) -> Res<Vec<Row>> {
    Err("--device cuda: this binary was built without the `cuda` feature".into())
}
