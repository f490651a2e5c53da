//! Turning command-line specs into language models.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use cielr::core::{LanguageModel, ScriptedLanguageModel, TargetSelection};
use cielr::planner::gguf::smollm2_gguf_path;
use cielr::planner::local::{GgufWeightsMode, LocalLlm};
use cielr::planner::openai::{OpenAiCompatible, OpenAiConfig};

use super::device::{on_device, ModelDevice};

const LLM_HELP: &str = "use --llm smollm2 (after tools/setup-models.sh fetches it), \
--llm <model.gguf | HuggingFace folder>, --llm http://<server> --llm-model <name> for an \
OpenAI-compatible server, or --llm scripted:<answers.json> (see docs/cli.md); CIELR_LLM sets the default";

/// `--llm-weights`: how a local GGUF model holds its weights.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmWeights {
    /// On the CPU, `f32` for prefill plus the matrices as stored for decode; `f32` on CUDA.
    Auto,
    /// Every weight dequantised to `f32`.
    F32,
    /// `f32` copies for prefill plus the quantised matrices as stored for decode (CPU only).
    DecodeAsStored,
    /// The quantised matrices as stored only (CPU only).
    AsStored,
}

impl LlmWeights {
    /// The option's spelling on the command line.
    fn name(self) -> &'static str {
        match self {
            LlmWeights::Auto => "auto",
            LlmWeights::F32 => "f32",
            LlmWeights::DecodeAsStored => "decode-as-stored",
            LlmWeights::AsStored => "as-stored",
        }
    }
}

/// A language model and how its targets are best asked for.
pub struct ChosenModel {
    /// The model.
    pub model: Arc<dyn LanguageModel>,
    /// Ids for capable or scripted models; names (a choice) for small local ones.
    pub targets: TargetSelection,
}

/// Builds the language model named by `--llm`; without one, the default SmolLM2 model when
/// it is in the model cache. Local models are loaded on `device`; served and scripted ones
/// ignore it.
pub fn language_model(
    spec: Option<&str>,
    served_model: Option<&str>,
    device: &ModelDevice,
    weights: LlmWeights,
) -> anyhow::Result<ChosenModel> {
    let spec = spec
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("smollm2");
    if spec.starts_with("http://") || spec.starts_with("https://") {
        return served(spec, served_model);
    }
    if Path::new(spec).exists() {
        return local(Path::new(spec), device, weights);
    }
    let (kind, rest) = spec.split_once(':').unwrap_or((spec, ""));
    match kind {
        "scripted" => {
            if rest.is_empty() {
                bail!("--llm scripted needs a file: --llm scripted:<answers.json>");
            }
            let model = ScriptedLanguageModel::load(Path::new(rest))
                .with_context(|| format!("loading the scripted answers for --llm {spec}"))?;
            Ok(ChosenModel {
                model: Arc::new(model),
                targets: TargetSelection::Ids,
            })
        }
        "smollm2" => {
            let path = smollm2_gguf_path().map_err(|e| {
                anyhow::anyhow!("no language model is configured: the default SmolLM2 model is not in the cache ({e}); {LLM_HELP}")
            })?;
            local(&path, device, weights)
        }
        "local" => {
            if rest.is_empty() {
                bail!("--llm local needs a path: --llm local:<model.gguf | HuggingFace folder>");
            }
            local(Path::new(rest), device, weights)
        }
        other => bail!("unknown language model kind {other:?} in --llm {spec:?}: {LLM_HELP}"),
    }
}

fn local(path: &Path, device: &ModelDevice, weights: LlmWeights) -> anyhow::Result<ChosenModel> {
    let mode = match weights {
        LlmWeights::Auto => None,
        LlmWeights::F32 => Some(GgufWeightsMode::F32),
        LlmWeights::DecodeAsStored => Some(GgufWeightsMode::AsStoredForDecode),
        LlmWeights::AsStored => Some(GgufWeightsMode::AsStoredOnly),
    };
    if let Some(mode) = mode {
        if path.is_dir() && mode != GgufWeightsMode::F32 {
            bail!(
                "--llm-weights {} applies to GGUF files; {} is a HuggingFace folder, \
                 whose weights are loaded as f32 (leave --llm-weights out)",
                weights.name(),
                path.display()
            );
        }
        if !matches!(device, ModelDevice::Cpu) && mode != GgufWeightsMode::F32 {
            bail!(
                "--llm-weights {} runs the quantised products on the CPU: use it with \
                 --device cpu, or leave it out on CUDA",
                weights.name()
            );
        }
    }
    eprintln!("[llm] loading {}{}", path.display(), device.suffix());
    let load = |e| format!("loading the language model {}: {e}", path.display());
    let model: Arc<dyn LanguageModel> = on_device!(device, |B, dev| Arc::new(
        match mode {
            Some(mode) if !path.is_dir() => LocalLlm::<B>::from_gguf_mode(path, dev, mode),
            _ => LocalLlm::<B>::load_on(path, dev),
        }
        .map_err(|e| anyhow::anyhow!(load(e)))?
    ));
    Ok(ChosenModel {
        model,
        targets: TargetSelection::Name,
    })
}

fn served(url: &str, model: Option<&str>) -> anyhow::Result<ChosenModel> {
    let Some(model) = model.map(str::trim).filter(|m| !m.is_empty()) else {
        bail!(
            "--llm {url} is a served model: name it with --llm-model <name> (or CIELR_LLM_MODEL)"
        );
    };
    let config = OpenAiConfig::new(url, model);
    let client = OpenAiCompatible::new(config)
        .with_context(|| format!("configuring the server at {url}"))?;
    Ok(ChosenModel {
        model: Arc::new(client),
        targets: TargetSelection::Ids,
    })
}
