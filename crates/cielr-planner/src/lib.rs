//! `cielr-planner`: the language models the reasoning runs on.
//!
//! Unfinished (issue 3): modules are being added one by one; see the issue notes.

#![warn(missing_docs)]

pub mod chat;
pub mod constrained;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod llama;
pub mod local;
pub mod tokenizer;
pub mod weights;
