//! The swappable stages: scene building, planning, editing and metrics.

use async_trait::async_trait;
use image::RgbImage;

use crate::error::Result;
use crate::mask::Mask;
use crate::plan::{EditAction, EditOp, TraceEntry};
use crate::scene::Scene;
use crate::spatial::SpatialQuery;

/// Builds an SSR from an image.
#[async_trait]
pub trait SceneBuilder: Send + Sync {
    /// A short name for reports.
    fn name(&self) -> String;
    /// Builds the SSR of `image`, looking for `queries` (may be empty: the builder's own vocabulary).
    async fn build(&self, image: &RgbImage, queries: &[String]) -> Result<Scene>;
    /// Rebuilds `scene` with `new_queries` added (one link of the chain of SSR updates).
    /// Builders that cache image embeddings pay only for the new queries.
    async fn refine(
        &self,
        image: &RgbImage,
        scene: &Scene,
        new_queries: &[String],
    ) -> Result<Scene>;
}

/// A [`SceneBuilder`] that returns a fixed SSR (from a file the user wrote or an earlier run).
/// It cannot look for new labels: `refine` returns the scene with the new queries recorded
/// and no new objects, and the trace shows that the update found nothing.
#[derive(Debug, Clone)]
pub struct StaticSceneBuilder {
    scene: Scene,
}

impl StaticSceneBuilder {
    /// Wraps a scene.
    pub fn new(scene: Scene) -> Self {
        StaticSceneBuilder { scene }
    }
}

#[async_trait]
impl SceneBuilder for StaticSceneBuilder {
    fn name(&self) -> String {
        "static-ssr".into()
    }

    async fn build(&self, image: &RgbImage, _queries: &[String]) -> Result<Scene> {
        if (image.width(), image.height()) != (self.scene.width, self.scene.height) {
            return Err(crate::CoreError::SizeMismatch(format!(
                "the SSR describes a {}x{} image but the image is {}x{}",
                self.scene.width,
                self.scene.height,
                image.width(),
                image.height()
            )));
        }
        Ok(self.scene.clone())
    }

    async fn refine(
        &self,
        _image: &RgbImage,
        scene: &Scene,
        new_queries: &[String],
    ) -> Result<Scene> {
        let mut s = scene.clone();
        s.queries.extend(new_queries.iter().cloned());
        Ok(s)
    }
}

/// What one reasoning round sees.
#[derive(Debug, Clone, Copy)]
pub struct RoundInput<'a> {
    /// The (single-step) instruction.
    pub instruction: &'a str,
    /// The edit kind, from classification.
    pub op: EditOp,
    /// The current SSR.
    pub scene: &'a Scene,
    /// Facts established by earlier spatial queries in this step.
    pub facts: &'a [String],
    /// Zero-based round number.
    pub round: usize,
    /// Whether this is the last round: the planner must then return an action.
    pub last_round: bool,
}

/// What a reasoning round decided.
#[derive(Debug, Clone, PartialEq)]
pub enum RoundOutcome {
    /// The edit to make.
    Action(EditAction),
    /// The SSR lacks the object: look for these labels and ask again.
    NeedLabels(Vec<String>),
    /// The choice depends on positions: evaluate this query and ask again.
    NeedSpatial(SpatialQuery),
}

/// Turns an instruction plus SSR into explicit actions, one reasoning round at a time.
#[async_trait]
pub trait Planner: Send + Sync {
    /// A short name for reports.
    fn name(&self) -> String;
    /// Splits a multi-step instruction into single-edit instructions (one when it is simple).
    async fn split(&self, instruction: &str, trace: &mut Vec<TraceEntry>) -> Result<Vec<String>>;
    /// Classifies a single-edit instruction.
    async fn classify(&self, instruction: &str, trace: &mut Vec<TraceEntry>) -> Result<EditOp>;
    /// One round: an action, or a request for more information.
    async fn round(
        &self,
        input: RoundInput<'_>,
        trace: &mut Vec<TraceEntry>,
    ) -> Result<RoundOutcome>;
}

/// One edit to execute.
#[derive(Debug, Clone, Copy)]
pub struct EditRequest<'a> {
    /// The image (the result of previous steps).
    pub image: &'a RgbImage,
    /// Binary, already-dilated region to edit; same size as the image.
    pub mask: &'a Mask,
    /// The action.
    pub action: &'a EditAction,
    /// Seed for stochastic editors.
    pub seed: u64,
}

/// Executes an action inside a mask. The pipeline pastes the result back so that pixels
/// outside the mask stay bit-identical, whatever the editor does.
#[async_trait]
pub trait Editor: Send + Sync {
    /// A short name for reports.
    fn name(&self) -> String;
    /// Whether this editor can perform `op` (the pipeline checks before running).
    fn supports(&self, op: EditOp) -> bool;
    /// Returns the edited image, the same size as the input.
    async fn edit(&self, request: EditRequest<'_>) -> Result<RgbImage>;
}

/// The inputs a metric may use.
#[derive(Debug, Clone, Copy)]
pub struct MetricInput<'a> {
    /// The image before editing.
    pub original: &'a RgbImage,
    /// The image after editing.
    pub edited: &'a RgbImage,
    /// The edit region (ground truth or predicted), if the metric needs one.
    pub mask: Option<&'a Mask>,
    /// The target text (for CLIP-style metrics).
    pub text: Option<&'a str>,
}

/// An evaluation metric.
pub trait Metric: Send + Sync {
    /// The name used in reports ("psnr", "ssim", ...).
    fn name(&self) -> String;
    /// Whether larger values are better.
    fn higher_is_better(&self) -> bool;
    /// Computes the metric.
    fn compute(&self, input: MetricInput<'_>) -> Result<f64>;
}
