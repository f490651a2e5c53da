//! Argument parsing and command dispatch for the `cielr` binary.

mod device;
mod edit;
mod eval;
mod models;
mod plan;
mod scene;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Complex image editing via LLM reasoning.
#[derive(Parser, Debug)]
#[command(name = "cielr", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Plan the edits for an instruction over an SSR file, without touching an image.
    Plan(plan::PlanArgs),
    /// Edit an image: build the SSR, reason, execute the actions and write the result.
    Edit(edit::EditArgs),
    /// Evaluate on a benchmark (CIEBench, Reason-Edit, a JSONL manifest) and write reports.
    Eval(eval::EvalArgs),
    /// Build the SSR of an image, print it as the LLM sees it and write the SSR JSON.
    Scene(scene::SceneArgs),
}

/// Options shared by the commands that reason.
#[derive(Args, Debug, Clone)]
pub struct ReasoningArgs {
    /// The language model: `smollm2` (the default, from the model cache), a GGUF file or
    /// HuggingFace folder (also as `local:<path>`), `http(s)://<server>` for an
    /// OpenAI-compatible server (with --llm-model), or `scripted:<answers.json>` to replay
    /// recorded answers. Defaults to the CIELR_LLM environment variable, then `smollm2`.
    #[arg(long, value_name = "SPEC", env = "CIELR_LLM")]
    llm: Option<String>,
    /// The model name to request from an OpenAI-compatible server (--llm http://...); the
    /// API key is read from OPENAI_API_KEY when set.
    #[arg(long, value_name = "NAME", env = "CIELR_LLM_MODEL")]
    llm_model: Option<String>,
    /// How a local GGUF model holds its weights: `auto` (on the CPU, `f32` copies for
    /// prefill plus the quantised matrices as stored for decode steps; `f32` on CUDA),
    /// `f32` (every weight dequantised), `decode-as-stored` (the CPU default, named) or
    /// `as-stored` (the quantised matrices only: memory about the file's size, decode as
    /// fast, prefill slower; for models whose `f32` copy does not fit in memory). The last
    /// two need --device cpu.
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        default_value_t = models::LlmWeights::Auto,
        env = "CIELR_LLM_WEIGHTS"
    )]
    llm_weights: models::LlmWeights,
    /// Reasoning rounds per step (the last one must choose a target).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=8))]
    rounds: u32,
    /// How the model names its targets: `ids` (JSON, several objects possible), `name` (one
    /// object chosen by name; more reliable for small models) or `auto` (name for local
    /// models, ids otherwise).
    #[arg(long, value_enum, default_value_t = TargetArg::Auto)]
    targets: TargetArg,
    /// Extra labels the scene builder looks for at first (repeatable).
    #[arg(long = "query", value_name = "LABEL")]
    queries: Vec<String>,
}

/// `--targets`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetArg {
    /// Name for local models, ids otherwise.
    Auto,
    /// JSON ids.
    Ids,
    /// One object by name.
    Name,
}

impl ReasoningArgs {
    /// The language model these options name (`--llm`, `--llm-model`, `--llm-weights`),
    /// local ones loaded on `device`.
    fn language_model(&self, device: &device::ModelDevice) -> anyhow::Result<models::ChosenModel> {
        models::language_model(
            self.llm.as_deref(),
            self.llm_model.as_deref(),
            device,
            self.llm_weights,
        )
    }

    /// The planner these options describe over `chosen`.
    fn planner(&self, chosen: &models::ChosenModel) -> cielr::core::CielrPlanner {
        let targets = match self.targets {
            TargetArg::Auto => chosen.targets,
            TargetArg::Ids => cielr::core::TargetSelection::Ids,
            TargetArg::Name => cielr::core::TargetSelection::Name,
        };
        let options = cielr::core::ReasoningOptions {
            targets,
            ..Default::default()
        };
        cielr::core::CielrPlanner::with_options(chosen.model.clone(), options)
    }
}

/// An SSR file argument.
#[derive(Args, Debug, Clone)]
pub struct SceneArg {
    /// SSR file (docs/ssr-format.md).
    #[arg(long, value_name = "FILE")]
    scene: Option<PathBuf>,
}

/// Parses the command line and runs the command.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Plan(a) => plan::run(a),
        Command::Edit(a) => edit::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Scene(a) => scene::run(a),
    }
}

/// Prints progress to stderr.
fn progress(e: cielr::core::ProgressEvent) {
    eprintln!("[{}] {}", e.stage, e.message);
}
