//! `cielr-scene`: perception that builds the SSR (detectors, segmenters, depth).
//!
//! CLIP ([`clip`]: `CLIPModel`, its vision and text towers, tokenizer) with CLIP's image
//! preprocessing ([`preprocess`]), loading HuggingFace checkpoints and matching transformers
//! numerically (see `tests/clip_*.rs` and `tools/parity/clip*`). OWLv2 open-vocabulary
//! detection ([`owlv2`]) on top of the CLIP towers (`tests/owlv2_parity.rs`). Depth Anything
//! V2 relative depth ([`depth_anything`]) on a DINOv2 backbone ([`dinov2`])
//! (`tests/depth_anything_parity.rs`).

#![warn(missing_docs)]

pub mod centernet;
pub mod clip;
pub mod coco;
pub mod coco_detector;
pub mod depth_anything;
pub mod dinov2;
pub mod error;
pub mod grabcut;
pub mod maxflow;
pub mod model_cache;
pub mod object_list;
pub mod owlv2;
pub mod preprocess;
pub mod sam;
pub mod sam2;
pub mod ssr_builder;
pub mod tfjs;
pub mod tfjs_exec;

pub use error::{Result, SceneError};

/// The largest image side an image processor config may ask for (resize target, padded
/// side): the released checkpoints use at most 1024, and a larger value in a
/// `preprocessor_config.json` would only allocate gigabytes before failing.
pub const MAX_PROCESSOR_SIDE: usize = 8192;
