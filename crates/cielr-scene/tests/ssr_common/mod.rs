//! Helpers shared by the SSR builder tests: fixture paths and generator settings for the tiny
//! random checkpoints.

#![allow(dead_code)]

use std::path::PathBuf;

use cielr_scene::sam::amg::AmgConfig;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Mask-generator settings for random weights: 6x6 points, every mask kept (no score
/// thresholds, no NMS), so masks reach every later step of the builder.
pub fn keep_every_mask() -> AmgConfig {
    AmgConfig {
        points_per_side: Some(6),
        points_per_batch: 16,
        pred_iou_thresh: 0.0,
        stability_score_thresh: 0.0,
        box_nms_thresh: 1.0,
        ..AmgConfig::default()
    }
}
