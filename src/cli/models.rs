//! Turning command-line specs into language models and editors.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use cielr::core::{LanguageModel, ScriptedLanguageModel};

const LLM_HELP: &str =
    "pass --llm scripted:<answers.json> (a JSON array of answers, see docs/cli.md) \
or set CIELR_LLM; local Burn models and served models are not available in this build yet";

/// Builds the language model named by `--llm`.
pub fn language_model(spec: Option<&str>) -> anyhow::Result<Arc<dyn LanguageModel>> {
    let Some(spec) = spec.map(str::trim).filter(|s| !s.is_empty()) else {
        bail!("no language model is configured: {LLM_HELP}");
    };
    let (kind, rest) = spec.split_once(':').unwrap_or((spec, ""));
    match kind {
        "scripted" => {
            if rest.is_empty() {
                bail!("--llm scripted needs a file: --llm scripted:<answers.json>");
            }
            let model = ScriptedLanguageModel::load(Path::new(rest))
                .with_context(|| format!("loading the scripted answers for --llm {spec}"))?;
            Ok(Arc::new(model))
        }
        other => bail!("unknown language model kind {other:?} in --llm {spec:?}: {LLM_HELP}"),
    }
}
