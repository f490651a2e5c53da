//! GPU check harness, our side (issue 8): loads a random-weight checkpoint and inputs written by
//! `tools/gpu/ref.py`, runs cielr's Burn port on the chosen device, compares with the
//! reference outputs and times it.
//!
//! ```text
//! gpu_check MODEL DIR [--device cpu|cuda] [--repeats N]
//! ```
//!
//! MODEL is one of `clip owlv2 sam depth unet vae lama llm`. Prints one line per row and writes
//! `DIR/ours.json` (`rows`: name, precision, max_abs, max_rel, ref_max_abs, ours_ms), which
//! `tools/gpu/table.py` joins with `DIR/torch.json`. Timing: two warm-up calls, then the median
//! of N calls (default 5), each ended by `Backend::sync` so queued device work is counted.
//! Only f32 runs on our side (half precision of ours is not wired yet: see tools/gpu/README.md).
//! Driven by `tools/gpu/check.sh`; builds and runs on CPU too (`--device cpu`, the flex
//! backend); `--device cuda` needs the `cuda` feature and a CUDA driver.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use cielr_core::weights::TensorStore;

type Res<T> = Result<T, Box<dyn Error>>;

/// One compared and timed output.
struct Row {
    name: String,
    max_abs: f32,
    max_rel: f32,
    ref_max: f32,
    ours_ms: f64,
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
    mut f: impl FnMut() -> Res<()>,
) -> Res<f64> {
    for _ in 0..2 {
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
}

impl Case {
    fn open(dir: &Path) -> Res<Self> {
        Ok(Self {
            dir: dir.to_path_buf(),
            inputs: TensorStore::open(dir.join("inputs.safetensors"))?,
            refs: TensorStore::open(dir.join("reference.safetensors"))?,
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
            ours_ms,
        })
    }
}

fn run<B: Backend>(model: &str, case: &Case, device: &B::Device, repeats: usize) -> Res<Vec<Row>> {
    let dir = &case.dir;
    let sync_ms = |f: &mut dyn FnMut() -> Res<()>| median_ms::<B>(device, repeats, f);
    let t = Instant::now();
    let rows = match model {
        "clip" => {
            let m = cielr_scene::clip::ClipModel::<B>::from_pretrained(dir, device)?;
            let x = case.input::<B, 4>("pixel_values", device)?;
            eprintln!("[ours] loaded in {:.2} s", t.elapsed().as_secs_f64());
            let out = values(m.get_image_features(x.clone())?);
            let ms = sync_ms(&mut || {
                m.get_image_features(x.clone())?;
                Ok(())
            })?;
            vec![case.row("clip-vision", "image_embeds", out, ms)?]
        }
        "owlv2" => {
            let m = cielr_scene::owlv2::Owlv2ForObjectDetection::<B>::from_pretrained(dir, device)?;
            let x = case.input::<B, 4>("pixel_values", device)?;
            let s = x.dims()[2];
            eprintln!("[ours] loaded in {:.2} s", t.elapsed().as_secs_f64());
            let out = values(m.embed_pixels(x.clone(), (s, s), s)?.image_feats);
            let ms = sync_ms(&mut || {
                m.embed_pixels(x.clone(), (s, s), s)?;
                Ok(())
            })?;
            vec![case.row("owlv2-vision", "image_feats", out, ms)?]
        }
        "sam" => {
            let m = cielr_scene::sam::SamModel::<B>::load(dir, device)?;
            let x = case.input::<B, 4>("pixel_values", device)?;
            eprintln!("[ours] loaded in {:.2} s", t.elapsed().as_secs_f64());
            let out = values(m.image_embeddings(x.clone())?);
            let ms = sync_ms(&mut || {
                m.image_embeddings(x.clone())?;
                Ok(())
            })?;
            vec![case.row("sam-encoder", "image_embeddings", out, ms)?]
        }
        "depth" => {
            let m =
                cielr_scene::depth_anything::DepthAnythingModel::<B>::from_pretrained(dir, device)?;
            let x = case.input::<B, 4>("pixel_values", device)?;
            eprintln!("[ours] loaded in {:.2} s", t.elapsed().as_secs_f64());
            let out = values(m.forward(x.clone())?);
            let ms = sync_ms(&mut || {
                m.forward(x.clone())?;
                Ok(())
            })?;
            vec![case.row("depth-anything", "predicted_depth", out, ms)?]
        }
        "unet" => {
            let m = cielr_diffusion::unet::UNet2DConditionModel::<B>::from_dir(dir, device)?;
            let x = case.input::<B, 4>("sample", device)?;
            let c = case.input::<B, 3>("encoder_hidden_states", device)?;
            eprintln!("[ours] loaded in {:.2} s", t.elapsed().as_secs_f64());
            let out = values(m.forward(x.clone(), 501.0, c.clone())?);
            let ms = sync_ms(&mut || {
                m.forward(x.clone(), 501.0, c.clone())?;
                Ok(())
            })?;
            vec![case.row("unet-step", "out", out, ms)?]
        }
        "vae" => {
            let m = cielr_diffusion::vae::AutoencoderKl::<B>::from_dir(dir, device)?;
            let z = case.input::<B, 4>("latents", device)?;
            eprintln!("[ours] loaded in {:.2} s", t.elapsed().as_secs_f64());
            let out = values(m.decode(z.clone())?);
            let ms = sync_ms(&mut || {
                m.decode(z.clone())?;
                Ok(())
            })?;
            vec![case.row("vae-decode", "decoded", out, ms)?]
        }
        "lama" => {
            let m = cielr_diffusion::LamaInpainter::<B>::load_on(dir, device)?;
            let x = case.input::<B, 4>("input", device)?;
            eprintln!("[ours] loaded in {:.2} s", t.elapsed().as_secs_f64());
            let out = values(m.generator().forward_logits(x.clone())?);
            let ms = sync_ms(&mut || {
                m.generator().forward_logits(x.clone())?;
                Ok(())
            })?;
            vec![case.row("lama", "logits", out, ms)?]
        }
        "llm" => run_llm::<B>(case, device, repeats)?,
        other => return Err(format!("unknown model `{other}`").into()),
    };
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
    if let Err(e) = real_main() {
        eprintln!("gpu_check: error: {e}");
        std::process::exit(2);
    }
}

fn real_main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: gpu_check MODEL DIR [--device cpu|cuda] [--repeats N]";
    let (mut device, mut repeats, mut pos) = ("cpu".to_string(), 5usize, Vec::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--device" => device = it.next().ok_or(usage)?.clone(),
            "--repeats" => repeats = it.next().ok_or(usage)?.parse()?,
            _ => pos.push(a.clone()),
        }
    }
    let [model, dir] = pos.as_slice() else {
        return Err(usage.into());
    };
    let case = Case::open(Path::new(dir))?;
    let rows = match device.as_str() {
        "cpu" => {
            run::<cielr_core::backend::CpuBackend>(model, &case, &Default::default(), repeats)?
        }
        "cuda" => run_cuda(model, &case, repeats)?,
        other => return Err(format!("unknown device `{other}` ({usage})").into()),
    };
    let mut json = Vec::new();
    for r in &rows {
        println!(
            "[ours] {:<16} f32  max abs {:.3e}  max rel {:.3e}  (max |ref| {:.3e})  {:.3} ms on {device}",
            r.name, r.max_abs, r.max_rel, r.ref_max, r.ours_ms
        );
        json.push(serde_json::json!({
            "name": r.name, "precision": "f32", "max_abs": r.max_abs, "max_rel": r.max_rel,
            "ref_max_abs": r.ref_max, "ours_ms": r.ours_ms, "device": device,
        }));
    }
    std::fs::write(
        case.dir.join("ours.json"),
        serde_json::to_string_pretty(&serde_json::json!({ "rows": json }))?,
    )?;
    Ok(())
}

#[cfg(feature = "cuda")]
fn run_cuda(model: &str, case: &Case, repeats: usize) -> Res<Vec<Row>> {
    match cielr_core::backend::detect() {
        cielr_core::backend::Accelerator::Cuda { .. } => {
            run::<cielr_core::backend::CudaBackend>(model, case, &Default::default(), repeats)
        }
        cielr_core::backend::Accelerator::Cpu { reason } => {
            Err(format!("--device cuda: CUDA is not usable here ({reason})").into())
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn run_cuda(_: &str, _: &Case, _: usize) -> Res<Vec<Row>> {
    Err("--device cuda: this binary was built without the `cuda` feature".into())
}
