//! `cielr-eval`: evaluation metrics for CIELR.
//!
//! This slice holds the preservation metrics of the benchmarks' protocol
//! (`/work/shared/reference/benchmarks.md`): PSNR, SSIM and MSE with torchmetrics semantics,
//! the protocol's preparation (resize, `w = 1 - mask / 255`, multiply) in [`prepare()`], and a
//! clean variant that looks at unmasked pixels only, side by side in [`ProtocolScores`].
//!
//! Unfinished: LPIPS, CLIPScore, IDCS, benchmark loaders, the runner and reports.

#![warn(missing_docs)]

pub mod metrics;
pub mod prepare;

pub use metrics::{
    clean_windows, masked_map_mean, masked_mse, mse, psnr, psnr_from_mse, ssim, ssim_map,
    MetricConfig, Mse, Psnr, Ssim, Variant, SSIM_C1, SSIM_C2, SSIM_RADIUS,
};
pub use prepare::{
    prepare, protocol_scores, resize_bicubic, resize_nearest, Prepared, ProtocolScores, RgbF32,
};
