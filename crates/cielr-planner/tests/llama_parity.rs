//! Parity of the Llama-family decoder with HuggingFace transformers on tiny random
//! checkpoints (made by `tools/parity/llama.py tiny`): Llama 3 with llama3 rope scaling
//! (bf16), Qwen2 with q/k/v bias and tied embeddings (f32), Qwen3 with q/k norms and a
//! separate head width (f16). Prefill logits of every prompt position and the logits after
//! each of three cached decode steps must agree to 1e-4.

mod llama_common;

use cielr_core::backend::CpuBackend;
use cielr_planner::llama::Llama;
use llama_common::{errors, fixture, reference, run, TOLERANCE};

fn check(name: &str) {
    let dir = fixture(name);
    let device = Default::default();
    let model = Llama::<CpuBackend>::from_hf_dir(&dir, &device).unwrap();
    let r = reference(&dir);
    let vocab = model.config().vocab_size;

    let (prefill, decode) = run(&model, &r);
    let (pa, pr) = errors(&prefill, &r.prefill);
    let (da, dr) = errors(&decode, &r.decode);
    println!(
        "{name}: prefill {} positions max abs {pa:.2e} max rel {pr:.2e}; \
         {} decode steps max abs {da:.2e} max rel {dr:.2e} (vocab {vocab})",
        r.input_ids.len(),
        r.decode_ids.len()
    );
    assert!(pa < TOLERANCE, "{name}: prefill max abs error {pa}");
    assert!(da < TOLERANCE, "{name}: decode max abs error {da}");

    // The last-position shortcut agrees with the full prefill.
    let mut cache = model.new_cache();
    let last = model.next_token_logits(&r.input_ids, &mut cache).unwrap();
    let n = r.input_ids.len();
    let (la, _) = errors(&last, &r.prefill[(n - 1) * vocab..]);
    assert!(
        la < TOLERANCE,
        "{name}: last-position logits max abs error {la}"
    );
}

#[test]
fn llama3_rope_scaling_bf16_matches_transformers() {
    check("llama-tiny-llama3");
}

#[test]
fn qwen2_bias_tied_f32_matches_transformers() {
    check("llama-tiny-qwen2");
}

#[test]
fn qwen3_qk_norm_f16_matches_transformers() {
    check("llama-tiny-qwen3");
}

#[test]
fn chunked_prefill_matches_one_prefill() {
    // A prompt fed in two chunks (the second attends to the cached first, bottom-right
    // causal mask) gives the same logits as one prefill.
    let dir = fixture("llama-tiny-qwen3");
    let model = Llama::<CpuBackend>::from_hf_dir(&dir, &Default::default()).unwrap();
    let r = reference(&dir);
    let vocab = model.config().vocab_size;
    let mut cache = model.new_cache();
    let a = model.forward_tokens(&r.input_ids[..3], &mut cache).unwrap();
    let b = model.forward_tokens(&r.input_ids[3..], &mut cache).unwrap();
    let mut chunked = a.into_data().into_vec::<f32>().unwrap();
    chunked.extend(b.into_data().into_vec::<f32>().unwrap());
    let (abs, _) = errors(&chunked, &r.prefill);
    assert_eq!(chunked.len(), r.input_ids.len() * vocab);
    assert!(abs < TOLERANCE, "chunked prefill max abs error {abs}");
}

#[test]
fn fixtures_are_sensitive_to_rope_scaling() {
    // Without the llama3 rescaling the logits move by far more than the tolerance: the
    // fixture does check the rescaling.
    use cielr_planner::llama::{RopeScaling, RotaryEmbedding};
    use cielr_planner::weights::{load_llama, SafetensorsWeights};
    let dir = fixture("llama-tiny-llama3");
    let mut config =
        cielr_planner::llama::LlamaConfig::from_file(&dir.join("config.json")).unwrap();
    assert!(matches!(config.rope_scaling, RopeScaling::Llama3 { .. }));
    config.rope_scaling = RopeScaling::None;
    let weights = SafetensorsWeights::open_dir(&dir).unwrap();
    let rope = RotaryEmbedding::new(&config);
    let model = load_llama::<CpuBackend>(&config, &weights, rope, &Default::default()).unwrap();
    let r = reference(&dir);
    let (prefill, _) = run(&model, &r);
    let (abs, _) = errors(&prefill, &r.prefill);
    assert!(
        abs > 100.0 * TOLERANCE,
        "unscaled rope differs by only {abs}"
    );
}
