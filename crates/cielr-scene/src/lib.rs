//! `cielr-scene`: perception that builds the SSR (detectors, segmenters, depth).
//!
//! Ported so far: CLIP ([`clip`]), with CLIP's image preprocessing ([`preprocess`]); both
//! match transformers numerically (see `tests/clip_*.rs`). Until a detector is ported, SSRs
//! come from files through `cielr_core::StaticSceneBuilder`.

#![warn(missing_docs)]

pub mod centernet;
pub mod clip;
pub mod coco;
pub mod coco_detector;
pub mod error;
pub mod model_cache;
pub mod preprocess;
pub mod tfjs;
pub mod tfjs_exec;

pub use error::{Result, SceneError};
