//! `cielr plan`: reasoning over an SSR file.

use std::path::PathBuf;

use anyhow::Context;
use cielr::core::pipeline::{plan, Refiner};
use cielr::core::Scene;
use clap::Args;

use super::{models, progress, ReasoningArgs};

/// Arguments of `cielr plan`.
#[derive(Args, Debug)]
pub struct PlanArgs {
    /// SSR file (docs/ssr-format.md).
    #[arg(long, value_name = "FILE")]
    scene: PathBuf,
    /// The instruction, e.g. "What here makes the TV louder? Replace it with a floor lamp."
    instruction: String,
    /// Print exactly the plan JSON on stdout: {"steps": [...], "trace": [...]}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    reasoning: ReasoningArgs,
}

/// Runs `cielr plan`.
pub fn run(a: PlanArgs) -> anyhow::Result<()> {
    let scene = Scene::load(&a.scene).context("reading the SSR given by --scene")?;
    let chosen =
        models::language_model(a.reasoning.llm.as_deref(), a.reasoning.llm_model.as_deref())?;
    let planner = a.reasoning.planner(&chosen);
    let out = pollster::block_on(plan(
        &planner,
        Refiner::None,
        scene,
        &a.instruction,
        a.reasoning.rounds as usize,
        &progress,
    ))
    .context("planning failed")?;
    if a.json {
        println!("{}", out.plan.to_json());
    } else {
        let last = out.scenes.last();
        print!("{}", out.plan.summary(last));
    }
    Ok(())
}
