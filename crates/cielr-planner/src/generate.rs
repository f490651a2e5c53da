//! Text generation with the key/value cache: the prompt in one forward pass, then one token
//! at a time, picked greedily or by temperature / top-p sampling with a seed, until a stop
//! token, the token budget or the model's context runs out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;

use crate::constrained::LogitsModel;
use crate::error::PlannerError;
use crate::llama::{Llama, LlamaCache};

type Result<T, E = PlannerError> = std::result::Result<T, E>;

/// A small deterministic random number generator (SplitMix64): the same seed gives the same
/// samples on every platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform number in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Tokens whose probability is below this fraction of the most likely token's are dropped
/// before top-p sampling (their total mass is negligible: under `vocab * 1e-9`).
const NEGLIGIBLE: f64 = 1e-9;

/// Picks the next token from logits: greedy (temperature 0), or sampling from the
/// temperature-scaled distribution restricted to the smallest set of most likely tokens whose
/// probability reaches `top_p` (nucleus sampling).
#[derive(Debug, Clone, PartialEq)]
pub struct Sampler {
    temperature: f32,
    top_p: f32,
    rng: SplitMix64,
}

impl Sampler {
    /// Always the most likely token (the lowest id among equals).
    pub fn greedy() -> Self {
        Sampler {
            temperature: 0.0,
            top_p: 1.0,
            rng: SplitMix64::new(0),
        }
    }

    /// Sampling at `temperature` (0 or less means greedy) from the top-`top_p` nucleus
    /// (values outside `(0, 1]` mean no restriction), seeded.
    pub fn new(temperature: f32, top_p: f32, seed: u64) -> Self {
        Sampler {
            temperature: if temperature.is_finite() && temperature > 0.0 {
                temperature
            } else {
                0.0
            },
            top_p: if top_p > 0.0 && top_p <= 1.0 {
                top_p
            } else {
                1.0
            },
            rng: SplitMix64::new(seed),
        }
    }

    /// Whether this sampler always takes the most likely token.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// The index of the largest logit (the lowest among equals); an error for empty logits
    /// or logits with NaN.
    pub fn argmax(logits: &[f32]) -> Result<u32> {
        check_logits(logits)?;
        let mut best = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        Ok(best as u32)
    }

    /// Picks a token. Logits of `-inf` (masked tokens) are never picked; an error when every
    /// logit is `-inf`, or any is NaN.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        check_logits(logits)?;
        let best = Self::argmax(logits)?;
        let max = logits[best as usize];
        if max == f32::NEG_INFINITY {
            return Err(PlannerError::Model("every token is masked out".into()));
        }
        if self.is_greedy() {
            return Ok(best);
        }
        let t = self.temperature as f64;
        let cutoff = NEGLIGIBLE.ln();
        let mut probs: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .filter_map(|(i, &l)| {
                let z = (l as f64 - max as f64) / t;
                (z >= cutoff).then(|| (i as u32, z.exp()))
            })
            .collect();
        if self.top_p < 1.0 {
            probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let total: f64 = probs.iter().map(|p| p.1).sum();
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (k, p) in probs.iter().enumerate() {
                acc += p.1;
                if acc >= self.top_p as f64 * total {
                    keep = k + 1;
                    break;
                }
            }
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().map(|p| p.1).sum();
        let mut r = self.rng.next_f64() * total;
        for &(i, p) in &probs {
            if r < p {
                return Ok(i);
            }
            r -= p;
        }
        Ok(probs.last().map(|p| p.0).unwrap_or(best))
    }
}

fn check_logits(logits: &[f32]) -> Result<()> {
    if logits.is_empty() {
        return Err(PlannerError::Model("no logits to pick from".into()));
    }
    if logits.iter().any(|l| l.is_nan()) {
        return Err(PlannerError::Model("the logits contain NaN".into()));
    }
    Ok(())
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Upper bound on generated tokens (the stop token not counted).
    pub max_tokens: usize,
    /// Tokens that end the generation (not included in the output).
    pub stop_tokens: Vec<u32>,
    /// Sampling temperature; 0 is greedy.
    pub temperature: f32,
    /// Nucleus-sampling mass; 1 keeps every token.
    pub top_p: f32,
    /// Seed of the sampler.
    pub seed: u64,
}

impl Default for GenerationConfig {
    /// Greedy, 256 tokens, no stop token.
    fn default() -> Self {
        GenerationConfig {
            max_tokens: 256,
            stop_tokens: Vec::new(),
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl GenerationConfig {
    /// The sampler this configuration describes.
    pub fn sampler(&self) -> Sampler {
        Sampler::new(self.temperature, self.top_p, self.seed)
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// This stop token was produced.
    StopToken(u32),
    /// `max_tokens` tokens were produced.
    MaxTokens,
    /// The model's context (`max_position_embeddings`) is full.
    ContextFull,
    /// The token callback asked to stop.
    Callback,
}

/// The result of [`generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The generated tokens, without the stop token.
    pub tokens: Vec<u32>,
    /// Why generation ended.
    pub stop: StopReason,
    /// Number of prompt tokens.
    pub prompt_tokens: usize,
    /// Time of the prompt's forward pass (including the first token's choice).
    pub prefill_time: Duration,
    /// Time of the one-token forward passes.
    pub decode_time: Duration,
}

impl Generation {
    /// Prompt tokens per second.
    pub fn prefill_tokens_per_second(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }

    /// Generated tokens per second after the first (each needs one forward pass).
    pub fn decode_tokens_per_second(&self) -> f64 {
        let steps = self.tokens.len().saturating_sub(1) as f64;
        steps / self.decode_time.as_secs_f64().max(1e-9)
    }
}

/// Generates a continuation of `prompt` with a fresh cache; `on_token` sees each token as it
/// is produced and may return `false` to stop.
pub fn generate<B: Backend>(
    model: &Llama<B>,
    prompt: &[u32],
    config: &GenerationConfig,
    on_token: impl FnMut(u32) -> bool,
) -> Result<Generation> {
    let mut cache = model.new_cache();
    generate_with_cache(model, &mut cache, prompt, config, on_token)
}

/// As [`generate`], continuing from what `cache` already holds (`prompt` is what follows
/// it). On return the cache holds every token fed to the model: the prompt and the
/// generated tokens but the last.
pub fn generate_with_cache<B: Backend>(
    model: &Llama<B>,
    cache: &mut LlamaCache<B>,
    prompt: &[u32],
    config: &GenerationConfig,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Generation> {
    let mut sampler = config.sampler();
    let context = model.config().max_position_embeddings;
    let start = Instant::now();
    let mut logits = model.next_token_logits(prompt, cache)?;
    let prefill_time = start.elapsed();
    let start = Instant::now();
    let mut tokens = Vec::new();
    let stop = loop {
        if tokens.len() >= config.max_tokens {
            break StopReason::MaxTokens;
        }
        let t = sampler.sample(&logits)?;
        if config.stop_tokens.contains(&t) {
            break StopReason::StopToken(t);
        }
        tokens.push(t);
        if !on_token(t) {
            break StopReason::Callback;
        }
        if tokens.len() >= config.max_tokens {
            break StopReason::MaxTokens;
        }
        if cache.len() >= context {
            break StopReason::ContextFull;
        }
        logits = model.next_token_logits(&[t], cache)?;
    };
    Ok(Generation {
        tokens,
        stop,
        prompt_tokens: prompt.len(),
        prefill_time,
        decode_time: start.elapsed(),
    })
}

/// A model with its key/value cache: the [`LogitsModel`] that constrained decoding and
/// choice scoring drive.
///
/// The cache and logits after the first feed of a sequence (typically the prompt) are kept
/// when the sequence is reset: a later sequence that starts with the same tokens resumes from
/// there instead of recomputing them (scoring several answers to one prompt runs the prompt
/// once).
#[derive(Debug)]
pub struct LlamaSession<B: Backend> {
    model: Arc<Llama<B>>,
    cache: LlamaCache<B>,
    /// Tokens fed since the last reset.
    fed: Vec<u32>,
    /// The first feed after a reset: its tokens, the cache after them and their logits.
    prefix: Option<(Vec<u32>, LlamaCache<B>, Vec<f32>)>,
}

impl<B: Backend> LlamaSession<B> {
    /// A session with an empty cache.
    pub fn new(model: Arc<Llama<B>>) -> Self {
        let cache = model.new_cache();
        LlamaSession {
            model,
            cache,
            fed: Vec::new(),
            prefix: None,
        }
    }

    /// The model.
    pub fn model(&self) -> &Arc<Llama<B>> {
        &self.model
    }

    /// The cache (every token fed since the last reset).
    pub fn cache(&self) -> &LlamaCache<B> {
        &self.cache
    }
}

impl<B: Backend> LogitsModel for LlamaSession<B> {
    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }

    fn reset(&mut self) {
        self.cache.clear();
        self.fed.clear();
    }

    fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>, PlannerError> {
        if self.fed.is_empty() {
            if let Some((prefix, cache, logits)) = &self.prefix {
                if tokens.starts_with(prefix) {
                    self.cache = cache.clone();
                    self.fed = prefix.clone();
                    let rest = &tokens[prefix.len()..];
                    if rest.is_empty() {
                        return Ok(logits.clone());
                    }
                    let logits = self.model.next_token_logits(rest, &mut self.cache)?;
                    self.fed.extend_from_slice(rest);
                    return Ok(logits);
                }
            }
            let logits = self.model.next_token_logits(tokens, &mut self.cache)?;
            self.fed = tokens.to_vec();
            self.prefix = Some((tokens.to_vec(), self.cache.clone(), logits.clone()));
            return Ok(logits);
        }
        let logits = self.model.next_token_logits(tokens, &mut self.cache)?;
        self.fed.extend_from_slice(tokens);
        Ok(logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(Sampler::argmax(&[0.0, 3.0, 3.0, -1.0]).unwrap(), 1);
        assert_eq!(
            Sampler::greedy()
                .sample(&[1.0, f32::NEG_INFINITY, 2.0])
                .unwrap(),
            2
        );
        assert!(Sampler::argmax(&[]).is_err());
        assert!(Sampler::greedy().sample(&[0.0, f32::NAN]).is_err());
        assert!(Sampler::greedy()
            .sample(&[f32::NEG_INFINITY, f32::NEG_INFINITY])
            .is_err());
    }

    #[test]
    fn sampling_is_seeded_and_follows_the_distribution() {
        let logits = [0.0f32, (3.0f32).ln(), f32::NEG_INFINITY];
        let draw = |seed| {
            let mut s = Sampler::new(1.0, 1.0, seed);
            (0..4000)
                .map(|_| s.sample(&logits).unwrap())
                .collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        assert!(!a.contains(&2), "a masked token was drawn");
        let ones = a.iter().filter(|&&t| t == 1).count() as f64 / a.len() as f64;
        assert!((ones - 0.75).abs() < 0.03, "P(1) = {ones}, expected 0.75");
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // Probabilities 0.6, 0.3, 0.1: top_p 0.5 keeps only token 0, 0.8 keeps 0 and 1.
        let logits = [0.6f32.ln(), 0.3f32.ln(), 0.1f32.ln()];
        let mut s = Sampler::new(1.0, 0.5, 1);
        assert!((0..200).all(|_| s.sample(&logits).unwrap() == 0));
        let mut s = Sampler::new(1.0, 0.8, 1);
        let d: Vec<u32> = (0..2000).map(|_| s.sample(&logits).unwrap()).collect();
        assert!(!d.contains(&2));
        assert!(d.contains(&1));
    }

    #[test]
    fn low_temperature_approaches_greedy_and_bad_values_mean_greedy() {
        let logits = [1.0f32, 1.5, 0.0];
        let mut s = Sampler::new(0.01, 1.0, 3);
        assert!((0..100).all(|_| s.sample(&logits).unwrap() == 1));
        assert!(Sampler::new(f32::NAN, 2.0, 0).is_greedy());
        assert!(Sampler::new(-1.0, 0.9, 0).is_greedy());
    }
}
