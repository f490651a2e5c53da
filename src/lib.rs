//! # cielr
//!
//! Complex image editing via LLM reasoning: foundation models turn an image into a
//! structured semantic representation (SSR), an LLM reasons over the instruction and the
//! SSR (asking for a finer SSR when needed) and emits explicit actions, and an editor
//! executes them inside masks, keeping every pixel outside the edit region.
//!
//! This facade re-exports the workspace crates:
//! - [`core`] holds the SSR, masks, actions and plans, the stage traits, the reasoning steps and the pipeline;
//! - [`scene`] holds perception (SSR builders);
//! - [`planner`] holds the language models;
//! - [`diffusion`] holds the editors;
//! - [`eval`] will hold metrics and benchmarks.
//!
//! ```
//! use std::sync::Arc;
//! use cielr::core::{CielrPlanner, Scene, ScriptedLanguageModel};
//! use cielr::core::pipeline::{plan, Refiner};
//!
//! let scene = Scene::from_json(r#"{"width": 640, "height": 480, "objects": [
//!     {"id": 0, "label": "tv", "bbox": [300, 50, 600, 250]},
//!     {"id": 1, "label": "speaker", "bbox": [40, 60, 110, 220]}]}"#)?;
//! // Any `LanguageModel` works here: a local Burn model, a served one, or a script.
//! let model = ScriptedLanguageModel::from_texts([
//!     "no",                                                      // several edits?
//!     "remove",                                                  // classify
//!     "yes",                                                     // judge: the SSR is enough
//!     r#"{"targets": [1]}"#,                                     // choose targets
//! ]);
//! let planner = CielrPlanner::new(Arc::new(model));
//! let out = pollster::block_on(plan(
//!     &planner, Refiner::None, scene, "What makes the TV louder? Remove it.", 2, &|_| {},
//! ))?;
//! assert_eq!(out.plan.steps[0].targets, vec![1]);
//! assert_eq!(out.plan.steps[0].prompt, "remove the speaker");
//! # Ok::<(), cielr::core::CoreError>(())
//! ```

pub use cielr_core as core;
pub use cielr_diffusion as diffusion;
pub use cielr_eval as eval;
pub use cielr_planner as planner;
pub use cielr_scene as scene;

/// The README's code blocks, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// With the `mimalloc` feature (the `cielr` binary's allocator): tells mimalloc to keep memory
/// it has freed for reuse instead of returning it to the operating system after 10 ms (its
/// default). The models allocate and free tensors of hundreds of MB in a loop; returned pages
/// come back zeroed through page faults, measured at ~10% of an SD UNet step on the CPU
/// (docs/performance.md, "Allocator"). The process keeps its peak memory until it exits.
/// Call it first thing in `main`. Without the feature it does nothing.
pub fn keep_freed_memory() {
    #[cfg(feature = "mimalloc")]
    {
        // `mi_option_purge_delay` in mimalloc's `mi_option_t` (the 16th option in both the
        // v2 and v3 headers that libmimalloc-sys builds; the crate names no constant for it).
        const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
        // SAFETY: setting a mimalloc option is a plain store into its option table.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}
