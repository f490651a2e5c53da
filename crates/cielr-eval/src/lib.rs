//! `cielr-eval`: metrics, benchmark loaders, the evaluation runner and reports.
//!
//! Unfinished: nothing is implemented yet; the `cielr_core::Metric` trait is the interface
//! metrics will implement.
