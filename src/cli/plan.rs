//! `cielr plan`: reasoning over an SSR file.

use std::path::PathBuf;

use anyhow::Context;
use cielr::core::pipeline::{plan, Refiner};
use cielr::core::Scene;
use clap::Args;

use super::device::DeviceArgs;
use super::{progress, ReasoningArgs};

/// Arguments of `cielr plan`.
#[derive(Args, Debug)]
pub struct PlanArgs {
    /// SSR file (docs/ssr-format.md); may be left out when --image and the model folders
    /// are given (the SSR is then built from the image).
    #[arg(long, value_name = "FILE", required_unless_present = "image")]
    scene: Option<PathBuf>,
    /// The image the SSR describes: with --owlv2/--sam/--depth the paper's builder builds
    /// (without --scene) and refines the SSR from it (the chain of SSR updates).
    #[arg(long, value_name = "FILE")]
    image: Option<PathBuf>,
    #[command(flatten)]
    scene_models: super::scene::SceneModelArgs,
    /// The instruction, e.g. "What here makes the TV louder? Replace it with a floor lamp."
    instruction: String,
    /// Print exactly the plan JSON on stdout: {"steps": [...], "trace": [...]}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    reasoning: ReasoningArgs,
    #[command(flatten)]
    device: DeviceArgs,
}

/// Runs `cielr plan`.
pub fn run(a: PlanArgs) -> anyhow::Result<()> {
    let device = a.device.open()?;
    let builder = a.scene_models.builder(&device)?;
    let image = match &a.image {
        Some(p) => Some(
            cielr::core::io::load_rgb(p)
                .with_context(|| format!("reading the image {}", p.display()))?,
        ),
        None => None,
    };
    let refiner = match (&builder, &image) {
        (Some(b), Some(i)) => Refiner::Builder(b.as_ref(), i),
        (Some(_), None) => anyhow::bail!("the model folders need --image to look at"),
        _ => Refiner::None,
    };
    let scene = match (&a.scene, &refiner) {
        (Some(path), _) => Scene::load(path).context("reading the SSR given by --scene")?,
        (None, Refiner::Builder(b, i)) => {
            pollster::block_on(b.build(i, &a.reasoning.queries)).context("building the SSR")?
        }
        (None, Refiner::None) => anyhow::bail!(
            "without --scene, cielr plan needs --image and the model folders (--owlv2 --sam --depth)"
        ),
    };
    let chosen = a.reasoning.language_model(&device)?;
    let planner = a.reasoning.planner(&chosen);
    let out = pollster::block_on(plan(
        &planner,
        refiner,
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
