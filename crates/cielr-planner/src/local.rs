//! [`LocalLlm`]: a Llama-family model run in-process on a Burn backend, behind
//! [`cielr_core::LanguageModel`]. The CPU (`flex`) backend is the default
//! ([`LocalLlm::load`]); any other backend, such as CUDA with the `cuda` feature
//! ([`LocalLlm::load_on`] with `cielr_core::backend::CudaBackend`), works the same way.
//!
//! A request's messages are rendered with the checkpoint's chat template ([`ChatTemplate`],
//! falling back to a built-in format), encoded without extra special tokens (as
//! transformers' `apply_chat_template` does), and answered:
//! - without a constraint, by [`generate`] until an end token or `max_tokens`;
//! - with [`Constraint::Choices`], greedily by scoring every choice ([`pick_choice`]: the
//!   log-probability of its tokens and an end token), or by constrained sampling when the
//!   temperature is positive. Scores are not length-normalised by default: the sum is the
//!   probability that the model answers exactly that choice and then stops, which compares
//!   choices of different lengths fairly already (the end token makes a prefix such as
//!   "yes" compete with "yes please" on equal terms). Dividing by the token count favours
//!   long choices, whose later tokens are nearly certain once the first is written; it can
//!   be turned on with [`LocalLlm::with_length_normalized_choices`];
//! - with [`Constraint::Json`], by constrained decoding ([`generate_constrained`]), whose
//!   answer always parses.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use burn::tensor::backend::Backend;
use cielr_core::backend::{is_cpu_backend, CpuBackend};
use cielr_core::{Constraint, CoreError, GenerationRequest, LanguageModel};

use crate::chat::ChatTemplate;
use crate::constrained::{generate_constrained, pick_choice};
use crate::error::PlannerError;
use crate::generate::{generate, GenerationConfig, LlamaSession, Sampler};
use crate::gguf::GgufFile;
use crate::llama::Llama;
use crate::tokenizer::Tokenizer;

/// A local Llama-family language model (SmolLM2, Llama 3.x, Qwen2/2.5, Qwen3) with its
/// tokenizer and chat format, on Burn backend `B` (the CPU backend by default).
pub struct LocalLlm<B: Backend = CpuBackend> {
    name: String,
    model: Arc<Llama<B>>,
    session: Mutex<LlamaSession<B>>,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    seed: u64,
    length_normalized_choices: bool,
}

impl<B: Backend> std::fmt::Debug for LocalLlm<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLlm")
            .field("name", &self.name)
            .field("config", self.model.config())
            .finish()
    }
}

impl LocalLlm<CpuBackend> {
    /// Loads a GGUF file (`.gguf`) or a HuggingFace checkpoint folder (`config.json`,
    /// safetensors weights, `tokenizer.json`, optionally `tokenizer_config.json` with the
    /// chat template) onto the CPU backend.
    pub fn load(path: &Path) -> Result<Self, PlannerError> {
        Self::load_on(path, &Default::default())
    }

    /// Loads a GGUF file onto the CPU backend: weights, tokenizer and chat template.
    pub fn from_gguf(path: &Path) -> Result<Self, PlannerError> {
        Self::from_gguf_on(path, &Default::default())
    }

    /// Loads a HuggingFace checkpoint folder onto the CPU backend.
    pub fn from_hf_dir(dir: &Path) -> Result<Self, PlannerError> {
        Self::from_hf_dir_on(dir, &Default::default())
    }
}

/// Whether `B` is the CPU backend, where decode steps read block-quantised weights.
/// How a GGUF model's block-quantised matrices (Q4_0 ... Q8_0, Q4_K, Q5_K, Q6_K) are held in
/// memory ([`LocalLlm::from_gguf_mode`]). Matrices in other types are `f32` in every mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GgufWeightsMode {
    /// Every weight dequantised to `f32` ([`Llama::from_gguf`]): 4 bytes per weight, decode
    /// steps read all of them; the choice for GPU backends.
    F32,
    /// `f32` copies for prefill plus the matrices as stored for decode steps
    /// ([`Llama::from_gguf_quantized`]): the fastest on a CPU, memory of both (e.g.
    /// SmolLM2-135M Q8_0: 538 + 111 MB). The default on the CPU backend.
    #[default]
    AsStoredForDecode,
    /// The matrices as stored only ([`Llama::from_gguf_compact`]): memory about that of
    /// the file; decode as fast as `AsStoredForDecode`, but each prefill dequantises every
    /// matrix into a temporary `f32` copy (one at a time), which costs prefill time. For
    /// models whose `f32` copy does not fit in memory. CPU backends only.
    AsStoredOnly,
}

impl<B: Backend> LocalLlm<B> {
    /// As [`LocalLlm::load`], with the parameters on `device` of backend `B`.
    pub fn load_on(path: &Path, device: &B::Device) -> Result<Self, PlannerError> {
        if path.is_dir() {
            Self::from_hf_dir_on(path, device)
        } else {
            Self::from_gguf_on(path, device)
        }
    }

    /// As [`LocalLlm::from_gguf`], on `device` of backend `B`. On the CPU backend the
    /// matrices the file stores in a block format (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K,
    /// Q6_K; [`crate::quant::QuantMatrix`]) are also kept as stored for decode steps
    /// ([`Llama::with_quantized_decode`]), which then read 3-5x fewer bytes per token; other
    /// backends use the dequantised `f32` weights only.
    pub fn from_gguf_on(path: &Path, device: &B::Device) -> Result<Self, PlannerError> {
        Self::from_gguf_with(path, device, is_cpu_backend::<B>())
    }

    /// As [`LocalLlm::from_gguf_on`], choosing whether decode steps use the weights as
    /// stored (`quantized_decode`; meant for CPU backends) or the dequantised `f32` ones.
    pub fn from_gguf_with(
        path: &Path,
        device: &B::Device,
        quantized_decode: bool,
    ) -> Result<Self, PlannerError> {
        let mode = if quantized_decode {
            GgufWeightsMode::AsStoredForDecode
        } else {
            GgufWeightsMode::F32
        };
        Self::from_gguf_mode(path, device, mode)
    }

    /// As [`LocalLlm::from_gguf_on`], choosing how the weights are held ([`GgufWeightsMode`]).
    pub fn from_gguf_mode(
        path: &Path,
        device: &B::Device,
        mode: GgufWeightsMode,
    ) -> Result<Self, PlannerError> {
        let file = GgufFile::open(path)?;
        let model = match mode {
            GgufWeightsMode::F32 => Llama::from_gguf(&file, device)?,
            GgufWeightsMode::AsStoredForDecode => Llama::from_gguf_quantized(&file, device)?,
            GgufWeightsMode::AsStoredOnly => Llama::from_gguf_compact(&file, device)?,
        };
        let tokenizer = Tokenizer::from_gguf(&file)?;
        let name = file
            .get_str("general.name")
            .map(str::to_string)
            .unwrap_or_else(|| file_stem(path));
        Self::from_parts(name, model, tokenizer)
    }

    /// As [`LocalLlm::from_hf_dir`], on `device` of backend `B`.
    pub fn from_hf_dir_on(dir: &Path, device: &B::Device) -> Result<Self, PlannerError> {
        let model = Llama::from_hf_dir(dir, device)?;
        let tokenizer = Tokenizer::from_json_file(&dir.join("tokenizer.json"))?;
        Self::from_parts(file_stem(dir), model, tokenizer)
    }

    /// Combines a loaded model and its tokenizer; the chat format comes from the tokenizer.
    /// An error when the tokenizer has more tokens than the model has embeddings.
    pub fn from_parts(
        name: impl Into<String>,
        model: Llama<B>,
        tokenizer: Tokenizer,
    ) -> Result<Self, PlannerError> {
        if tokenizer.vocab_size() > model.config().vocab_size {
            return Err(PlannerError::Model(format!(
                "the tokenizer has {} tokens but the model only {} embeddings",
                tokenizer.vocab_size(),
                model.config().vocab_size
            )));
        }
        let model = Arc::new(model);
        Ok(LocalLlm {
            name: name.into(),
            session: Mutex::new(LlamaSession::new(model.clone())),
            template: ChatTemplate::for_tokenizer(&tokenizer),
            model,
            tokenizer,
            seed: 0,
            length_normalized_choices: false,
        })
    }

    /// The seed of sampling (requests with a positive temperature); 0 by default.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Whether greedy choices are scored by the mean log-probability per token instead of
    /// the total (off by default; see the module documentation).
    pub fn with_length_normalized_choices(mut self, on: bool) -> Self {
        self.length_normalized_choices = on;
        self
    }

    /// The model.
    pub fn model(&self) -> &Llama<B> {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The chat format.
    pub fn chat_template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The prompt tokens of a request: the rendered chat, encoded as transformers'
    /// `apply_chat_template` encodes it (no special tokens added beyond the template's).
    pub fn prompt_ids(&self, request: &GenerationRequest) -> Result<Vec<u32>, PlannerError> {
        let rendered = self.template.render(&request.messages, true);
        let ids = self.tokenizer.encode(&rendered.text, false)?;
        if ids.is_empty() {
            return Err(PlannerError::Model("the rendered prompt is empty".into()));
        }
        Ok(ids)
    }

    /// Answers a request synchronously (what [`LanguageModel::complete`] runs).
    pub fn complete_blocking(&self, request: &GenerationRequest) -> Result<String, PlannerError> {
        let prompt = self.prompt_ids(request)?;
        let mut sampler = Sampler::new(request.temperature, 1.0, self.seed);
        match &request.constraint {
            None => {
                let config = GenerationConfig {
                    max_tokens: request.max_tokens,
                    stop_tokens: self.tokenizer.eos_ids().to_vec(),
                    temperature: request.temperature,
                    top_p: 1.0,
                    seed: self.seed,
                };
                let g = generate(&self.model, &prompt, &config, |_| true)?;
                self.tokenizer.decode(&g.tokens, true)
            }
            Some(constraint) => {
                let mut session = self
                    .session
                    .lock()
                    .map_err(|_| PlannerError::Model("the model session is poisoned".into()))?;
                match constraint {
                    Constraint::Choices(choices) if sampler.is_greedy() => {
                        let (best, _) = pick_choice(
                            &mut *session,
                            &self.tokenizer,
                            &prompt,
                            choices,
                            self.length_normalized_choices,
                        )?;
                        Ok(choices[best].clone())
                    }
                    _ => generate_constrained(
                        &mut *session,
                        &self.tokenizer,
                        &prompt,
                        constraint,
                        request.max_tokens,
                        &mut sampler,
                    ),
                }
            }
        }
    }
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "local".into())
}

#[async_trait]
impl<B: Backend> LanguageModel for LocalLlm<B> {
    fn name(&self) -> String {
        self.name.clone()
    }

    async fn complete(&self, request: &GenerationRequest) -> Result<String, CoreError> {
        self.complete_blocking(request).map_err(CoreError::from)
    }
}
