//! The method end to end: build the SSR, reason in rounds with SSR refinement, execute each
//! action inside its (dilated) mask and paste back so pixels outside the mask are kept.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use image::RgbImage;
use serde_json::json;

use crate::error::{CoreError, Result};
use crate::imageops::paste_inside;
use crate::mask::Mask;
use crate::plan::{EditAction, Plan, TraceEntry};
use crate::scene::Scene;
use crate::traits::{EditRequest, Editor, Planner, RoundInput, RoundOutcome, SceneBuilder};

/// Settings of the reasoning loop and of mask preparation.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineOptions {
    /// Reasoning rounds per step (the authors use 2); the last round must choose.
    pub max_rounds: usize,
    /// Radius in pixels by which target masks are dilated before editing.
    pub dilate_radius: f64,
    /// Seed passed to the editor (step `i` gets `seed + i`).
    pub seed: u64,
    /// Labels the scene builder looks for at first (empty: the builder's own vocabulary).
    pub queries: Vec<String>,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            max_rounds: 2,
            dilate_radius: 7.0,
            seed: 0,
            queries: Vec::new(),
        }
    }
}

/// A progress report from a long-running stage.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressEvent {
    /// The stage: "scene", "plan", "refine", "edit".
    pub stage: &'static str,
    /// What is happening.
    pub message: String,
}

/// A progress callback.
pub type ProgressFn<'a> = &'a (dyn Fn(ProgressEvent) + Sync);

/// Where the reasoning loop gets refined SSRs from.
pub enum Refiner<'a> {
    /// A scene builder and the image it looks at.
    Builder(&'a dyn SceneBuilder, &'a RgbImage),
    /// No builder (planning from an SSR file alone): new labels are recorded, nothing is found.
    None,
}

/// The result of planning.
#[derive(Debug, Clone)]
pub struct PlanningOutput {
    /// The actions and the trace.
    pub plan: Plan,
    /// Every SSR, the first one and each refinement.
    pub scenes: Vec<Scene>,
    /// For each action, the index in `scenes` of the SSR its ids refer to.
    pub scene_of_step: Vec<usize>,
}

/// Runs the reasoning loop of the method over `scene`: split the instruction into steps,
/// classify each, then up to `max_rounds` rounds of judge / refine / choose.
pub async fn plan(
    planner: &dyn Planner,
    refiner: Refiner<'_>,
    scene: Scene,
    instruction: &str,
    max_rounds: usize,
    progress: ProgressFn<'_>,
) -> Result<PlanningOutput> {
    if max_rounds == 0 {
        return Err(CoreError::Planning("max_rounds must be at least 1".into()));
    }
    let instruction = instruction.trim();
    if instruction.is_empty() {
        return Err(CoreError::Planning("the instruction is empty".into()));
    }
    let mut trace = Vec::new();
    let mut scenes = vec![scene];
    let mut steps = Vec::new();
    let mut scene_of_step = Vec::new();
    progress(ProgressEvent {
        stage: "plan",
        message: "splitting the instruction".into(),
    });
    let parts = planner.split(instruction, &mut trace).await?;
    for (si, part) in parts.iter().enumerate() {
        progress(ProgressEvent {
            stage: "plan",
            message: format!("step {}/{}: {part}", si + 1, parts.len()),
        });
        let op = planner.classify(part, &mut trace).await?;
        let mut facts: Vec<String> = Vec::new();
        let mut action: Option<EditAction> = None;
        for round in 0..max_rounds {
            let current = scenes.len() - 1;
            let input = RoundInput {
                instruction: part,
                op,
                scene: &scenes[current],
                facts: &facts,
                round,
                last_round: round + 1 == max_rounds,
            };
            progress(ProgressEvent {
                stage: "plan",
                message: format!("round {}/{max_rounds}", round + 1),
            });
            match planner.round(input, &mut trace).await? {
                RoundOutcome::Action(a) => {
                    a.validate(&scenes[current])?;
                    action = Some(a);
                    break;
                }
                RoundOutcome::NeedSpatial(q) => {
                    let fact = q.evaluate(&scenes[current])?;
                    trace.push(TraceEntry::Spatial {
                        query: serde_json::to_value(&q).unwrap_or_default(),
                        result: fact.sentence.clone(),
                    });
                    facts.push(fact.sentence);
                }
                RoundOutcome::NeedLabels(labels) => {
                    let before = &scenes[current];
                    progress(ProgressEvent {
                        stage: "refine",
                        message: format!("looking for {}", labels.join(", ")),
                    });
                    let next = match &refiner {
                        Refiner::Builder(b, image) => b.refine(image, before, &labels).await?,
                        Refiner::None => {
                            let mut s = before.clone();
                            s.queries.extend(labels.iter().cloned());
                            s
                        }
                    };
                    trace.push(TraceEntry::SceneUpdate {
                        round,
                        added_labels: labels,
                        objects_before: before.objects.len(),
                        objects_after: next.objects.len(),
                    });
                    if matches!(refiner, Refiner::None) {
                        trace.push(TraceEntry::Note {
                            message: "no scene builder is available, so the SSR cannot be refined"
                                .into(),
                        });
                    }
                    scenes.push(next);
                }
            }
        }
        let action = action.ok_or_else(|| {
            CoreError::Planning(format!(
                "the planner gave no action for step {:?} in {max_rounds} rounds",
                part
            ))
        })?;
        steps.push(action);
        scene_of_step.push(scenes.len() - 1);
    }
    Ok(PlanningOutput {
        plan: Plan { steps, trace },
        scenes,
        scene_of_step,
    })
}

/// Everything a pipeline run produces.
#[derive(Debug, Clone)]
pub struct PipelineOutput {
    /// The edited image.
    pub image: RgbImage,
    /// Actions and trace.
    pub plan: Plan,
    /// Every SSR (the first and each refinement).
    pub scenes: Vec<Scene>,
    /// For each action, the index in `scenes` its ids refer to.
    pub scene_of_step: Vec<usize>,
    /// For each action, the dilated mask it was executed in.
    pub masks: Vec<Mask>,
    /// Seconds per stage, in order.
    pub timings: Vec<(String, f64)>,
}

impl PipelineOutput {
    /// The JSON report: plan, trace, SSRs, per-step masks and timings.
    pub fn report(
        &self,
        instruction: &str,
        components: &BTreeMap<String, String>,
    ) -> serde_json::Value {
        let masks: Vec<_> = self
            .masks
            .iter()
            .enumerate()
            .map(|(i, m)| {
                json!({
                    "step": i,
                    "area": m.area(),
                    "bbox": m.bbox(),
                    "mask": m.to_coco(),
                })
            })
            .collect();
        json!({
            "instruction": instruction,
            "components": components,
            "plan": self.plan,
            "scenes": self.scenes.iter().map(Scene::to_value).collect::<Vec<_>>(),
            "scene_of_step": self.scene_of_step,
            "edit_masks": masks,
            "timings_s": self.timings.iter().map(|(k, v)| json!({"stage": k, "seconds": v})).collect::<Vec<_>>(),
        })
    }
}

/// The method's pipeline over swappable stages.
#[derive(Clone)]
pub struct Pipeline {
    /// Builds and refines the SSR.
    pub scene_builder: Arc<dyn SceneBuilder>,
    /// Reasons over instruction and SSR.
    pub planner: Arc<dyn Planner>,
    /// Executes actions.
    pub editor: Arc<dyn Editor>,
    /// Loop and mask settings.
    pub options: PipelineOptions,
}

impl Pipeline {
    /// Runs SSR construction, reasoning and editing on one image.
    pub async fn run(
        &self,
        image: &RgbImage,
        instruction: &str,
        progress: ProgressFn<'_>,
    ) -> Result<PipelineOutput> {
        let mut timings = Vec::new();
        let t = Instant::now();
        progress(ProgressEvent {
            stage: "scene",
            message: format!("building the SSR with {}", self.scene_builder.name()),
        });
        let scene = self
            .scene_builder
            .build(image, &self.options.queries)
            .await?;
        timings.push(("scene".to_string(), t.elapsed().as_secs_f64()));
        progress(ProgressEvent {
            stage: "scene",
            message: format!("{} objects", scene.objects.len()),
        });

        let t = Instant::now();
        let planned = plan(
            self.planner.as_ref(),
            Refiner::Builder(self.scene_builder.as_ref(), image),
            scene,
            instruction,
            self.options.max_rounds,
            progress,
        )
        .await?;
        timings.push(("plan".to_string(), t.elapsed().as_secs_f64()));

        let t = Instant::now();
        let (image, masks) = self.execute(image, &planned, progress).await?;
        timings.push(("edit".to_string(), t.elapsed().as_secs_f64()));
        Ok(PipelineOutput {
            image,
            plan: planned.plan,
            scenes: planned.scenes,
            scene_of_step: planned.scene_of_step,
            masks,
            timings,
        })
    }

    /// Executes a plan: each action in its dilated mask, pasted back exactly.
    pub async fn execute(
        &self,
        image: &RgbImage,
        planned: &PlanningOutput,
        progress: ProgressFn<'_>,
    ) -> Result<(RgbImage, Vec<Mask>)> {
        let mut current = image.clone();
        let mut masks = Vec::new();
        let n = planned.plan.steps.len();
        for (i, action) in planned.plan.steps.iter().enumerate() {
            if !self.editor.supports(action.op) {
                return Err(CoreError::Editor(format!(
                    "the {} editor cannot {} (step {}); choose an editor that can",
                    self.editor.name(),
                    action.op,
                    i + 1
                )));
            }
            let scene = &planned.scenes[planned.scene_of_step[i]];
            let mask = edit_mask(
                scene,
                action,
                image.width(),
                image.height(),
                self.options.dilate_radius,
            )?;
            progress(ProgressEvent {
                stage: "edit",
                message: format!(
                    "step {}/{n}: {} {:?} over {} pixels",
                    i + 1,
                    action.op,
                    action.prompt,
                    mask.area()
                ),
            });
            let edited = self
                .editor
                .edit(EditRequest {
                    image: &current,
                    mask: &mask,
                    action,
                    seed: self.options.seed.wrapping_add(i as u64),
                })
                .await?;
            current = paste_inside(&current, &edited, &mask)?;
            masks.push(mask);
        }
        Ok((current, masks))
    }
}

/// The region an action edits: the union of its targets' regions in `scene`, resized to the
/// image, dilated by `radius`.
pub fn edit_mask(
    scene: &Scene,
    action: &EditAction,
    width: u32,
    height: u32,
    radius: f64,
) -> Result<Mask> {
    action.validate(scene)?;
    let mut mask = scene.union_region(&action.targets)?;
    if (mask.width(), mask.height()) != (width, height) {
        mask = mask.resize_nearest(width, height)?;
    }
    if mask.is_empty() {
        return Err(CoreError::Editor(format!(
            "the targets {:?} cover no pixels",
            action.targets
        )));
    }
    Ok(mask.dilate(radius))
}
