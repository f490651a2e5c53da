//! `cielr-core`: the structured semantic representation (SSR), actions and plans, the stage
//! traits, the reasoning steps and the pipeline of CIELR (complex image editing via LLM
//! reasoning), plus mask and image utilities, and [`weights`]: safetensors checkpoint
//! reading and Burn layers built by tensor name, shared by the model crates.
//!
//! ```
//! use cielr_core::{Scene, Mask, BBox};
//! let scene = Scene::from_json(r#"{"width": 8, "height": 8, "objects": [
//!     {"id": 0, "label": "cup", "bbox": [2, 2, 6, 6]}]}"#).unwrap();
//! let region: Mask = scene.region(0).unwrap();
//! assert_eq!(region.area(), 16);
//! assert_eq!(region.bbox(), Some(BBox::new(2.0, 2.0, 6.0, 6.0)));
//! ```

#![warn(missing_docs)]

pub mod activation;
pub mod attention;
pub mod backend;
pub mod conv;
pub mod error;
mod flex_view;
pub mod geometry;
pub mod imageops;
pub mod io;
pub mod layout;
pub mod llm;
pub mod mask;
pub mod norm;
pub mod pipeline;
pub mod plan;
pub mod prompts;
pub mod reasoning;
pub mod resize;
pub mod rope;
pub mod scene;
pub mod spatial;
pub mod traits;
pub mod weights;

pub use error::{CoreError, Result};
pub use geometry::BBox;
pub use llm::{
    ChatMessage, Constraint, GenerationRequest, JsonShape, LanguageModel, Role,
    ScriptedLanguageModel,
};
pub use mask::{CocoRle, Mask};
pub use pipeline::{Pipeline, PipelineOptions, PipelineOutput, ProgressEvent};
pub use plan::{EditAction, EditOp, Plan, TraceEntry};
pub use reasoning::{CielrPlanner, ReasoningOptions, TargetSelection};
pub use scene::{Scene, SceneObject};
pub use spatial::{Relation, SpatialQuery};
pub use traits::{
    EditRequest, Editor, Metric, MetricInput, Planner, RoundInput, RoundOutcome, RoutingEditor,
    SceneBuilder, StaticSceneBuilder,
};
