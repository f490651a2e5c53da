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

/// An [`Editor`] that sends each op to the editor registered for it: removal to an
/// inpainter (SD with an empty prompt invents objects), replace and add to a generative
/// editor, and so on. Ops without a route are unsupported.
#[derive(Clone, Default)]
pub struct RoutingEditor {
    routes: Vec<(EditOp, std::sync::Arc<dyn Editor>)>,
}

impl RoutingEditor {
    /// A router with no routes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes `ops` to `editor` (a later route for the same op replaces an earlier one).
    pub fn route(mut self, ops: &[EditOp], editor: std::sync::Arc<dyn Editor>) -> Self {
        for op in ops {
            self.routes.retain(|(o, _)| o != op);
            self.routes.push((*op, editor.clone()));
        }
        self
    }

    fn editor_for(&self, op: EditOp) -> Option<&std::sync::Arc<dyn Editor>> {
        self.routes.iter().find(|(o, _)| *o == op).map(|(_, e)| e)
    }
}

#[async_trait]
impl Editor for RoutingEditor {
    fn name(&self) -> String {
        let parts: Vec<String> = self
            .routes
            .iter()
            .map(|(op, e)| format!("{op}={}", e.name()))
            .collect();
        format!("routed({})", parts.join(", "))
    }

    fn supports(&self, op: EditOp) -> bool {
        self.editor_for(op).is_some_and(|e| e.supports(op))
    }

    async fn edit(&self, request: EditRequest<'_>) -> Result<RgbImage> {
        let op = request.action.op;
        match self.editor_for(op) {
            Some(e) => e.edit(request).await,
            None => Err(crate::CoreError::Editor(format!(
                "no editor is configured for {op}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::EditAction;

    struct Fill(u8);

    #[async_trait]
    impl Editor for Fill {
        fn name(&self) -> String {
            format!("fill{}", self.0)
        }
        fn supports(&self, _op: EditOp) -> bool {
            true
        }
        async fn edit(&self, r: EditRequest<'_>) -> Result<RgbImage> {
            Ok(RgbImage::from_pixel(
                r.image.width(),
                r.image.height(),
                image::Rgb([self.0; 3]),
            ))
        }
    }

    #[test]
    fn routes_each_op_to_its_editor() {
        let router = RoutingEditor::new()
            .route(&[EditOp::Remove], std::sync::Arc::new(Fill(1)))
            .route(
                &[EditOp::Replace, EditOp::Add],
                std::sync::Arc::new(Fill(2)),
            );
        assert!(router.supports(EditOp::Add) && !router.supports(EditOp::Recolor));
        assert_eq!(
            router.name(),
            "routed(remove=fill1, replace=fill2, add=fill2)"
        );
        let image = RgbImage::new(2, 2);
        let mask = Mask::full(2, 2).unwrap();
        let run = |op| {
            let action = EditAction {
                op,
                targets: vec![0],
                prompt: String::new(),
            };
            pollster::block_on(router.edit(EditRequest {
                image: &image,
                mask: &mask,
                action: &action,
                seed: 0,
            }))
        };
        assert_eq!(run(EditOp::Remove).unwrap().get_pixel(0, 0).0, [1; 3]);
        assert_eq!(run(EditOp::Add).unwrap().get_pixel(0, 0).0, [2; 3]);
        assert!(run(EditOp::Recolor)
            .unwrap_err()
            .to_string()
            .contains("no editor is configured for recolor"));
    }
}
