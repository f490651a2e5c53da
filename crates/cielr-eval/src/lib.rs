//! `cielr-eval`: evaluation for CIELR.
//!
//! - The preservation metrics of the benchmarks' protocol
//!   (`/work/shared/reference/benchmarks.md`): PSNR, SSIM and MSE with torchmetrics semantics,
//!   the protocol's preparation (resize, `w = 1 - mask / 255`, multiply) in [`prepare()`], and
//!   a clean variant that looks at unmasked pixels only, side by side in [`ProtocolScores`].
//! - [`lpips`]: LPIPS with the SqueezeNet backbone (torchmetrics semantics, weights from disk)
//!   and [`clip_score`]: CLIPScore of the mask's box with the CLIP port (`docs/metrics.md`).
//! - [`datasets`]: loaders for CIEBench, Reason-Edit and a JSONL manifest.
//! - [`runner`]: runs a stage of the method over a dataset (resumable, shardable, best of N).
//! - [`report`]: `summary.json`, `summary.md`, `samples.csv` and a static `index.html`.
//!
//! - [`idcs`]: the two-stage IDCS judge over a [`idcs::ChangeDescriber`] and a language model;
//!   [`idcs_vlm::VlmDescriber`] is stage 1 over a served vision-language model
//!   (OpenAI-compatible API with image input).

#![warn(missing_docs)]

pub mod clip_score;
pub mod datasets;
pub mod error;
pub mod idcs;
pub mod idcs_vlm;
pub mod lpips;
pub mod metrics;
pub mod prepare;
pub mod report;
pub mod runner;

pub use clip_score::{ClipScore, ClipScorer};
pub use error::{EvalError, EvalResult};
pub use lpips::{Lpips, LpipsScores, LpipsSqueeze};
pub use metrics::{
    clean_windows, masked_map_mean, masked_mse, mse, psnr, psnr_from_mse, ssim, ssim_map,
    MetricConfig, Mse, Psnr, Ssim, Variant, SSIM_C1, SSIM_C2, SSIM_RADIUS,
};
pub use prepare::{
    prepare, protocol_scores, resize_bicubic, resize_nearest, Prepared, ProtocolScores, RgbF32,
};
