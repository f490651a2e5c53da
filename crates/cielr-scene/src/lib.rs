//! `cielr-scene`: perception that builds the SSR (detectors, segmenters, depth).
//!
//! Unfinished: no model is ported yet. Until one is, SSRs come from files through
//! `cielr_core::StaticSceneBuilder`.
