//! `cielr-planner`: the language models the reasoning runs on.
//!
//! - [`llama`]: one decoder for the Llama family (Llama 3.x, Qwen2/2.5, Qwen3, SmolLM2) in
//!   Burn, configured from the checkpoint's own `config.json` or GGUF metadata, with a KV cache;
//! - [`weights`]: loading from HuggingFace safetensors folders and GGUF files (names mapped in one place);
//! - [`gguf`]: a bounded GGUF v2/v3 reader with dequantisation;
//! - [`tokenizer`] and [`chat`]: tokenizers from `tokenizer.json` or GGUF metadata, chat templates;
//! - [`generate`] and [`constrained`]: sampling, and decoding restricted to choices or a JSON shape;
//! - [`local`]: [`local::LocalLlm`], a `cielr_core::LanguageModel` over all of the above;
//! - [`openai`]: [`openai::OpenAiCompatible`], a `cielr_core::LanguageModel` served over HTTP
//!   by an OpenAI-compatible server (vLLM, SGLang, llama.cpp server);
//! - [`openai_vision`]: [`openai_vision::OpenAiVision`], questions about images to a served
//!   vision-language model over the same API (image parts as data URLs).
//!
//! [`local::LocalLlm`] runs on any Burn backend: the CPU (`flex`) backend by default, CUDA
//! with the `cuda` feature.

#![warn(missing_docs)]

pub mod chat;
pub mod constrained;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod llama;
pub mod local;
pub mod openai;
pub mod openai_vision;
pub mod quant;
pub mod tokenizer;
pub mod weights;
