//! The GGUF loader against the same weights saved as safetensors: the tiny Llama 3 and
//! Qwen3 fixtures were written to GGUF by `tools/parity/llama_gguf.py` the way llama.cpp's
//! converter does (q/k rows permuted for `llama`, Llama 3 rope scaling as `rope_freqs`), in
//! their checkpoint's precision, so the logits must match transformers' reference.

mod llama_common;

use cielr_core::backend::CpuBackend;
use cielr_planner::gguf::GgufFile;
use cielr_planner::llama::{Llama, LlamaConfig, RopeScaling};
use llama_common::{errors, fixture, reference, run, TOLERANCE};

fn check(name: &str) {
    let dir = fixture(name);
    let file = GgufFile::open(&dir.join("model.gguf")).unwrap();
    let from_gguf = LlamaConfig::from_gguf(&file).unwrap();
    let mut from_json = LlamaConfig::from_file(&dir.join("config.json")).unwrap();
    // llama.cpp keeps Llama 3's rescaling as a tensor, and no token ids without a tokenizer.
    if matches!(from_json.rope_scaling, RopeScaling::Llama3 { .. }) {
        from_json.rope_scaling = RopeScaling::None;
    }
    from_json.bos_token_id = None;
    from_json.eos_token_ids.clear();
    assert_eq!(
        from_gguf, from_json,
        "{name}: configuration from GGUF metadata"
    );

    let model = Llama::<CpuBackend>::from_gguf(&file, &Default::default()).unwrap();
    let r = reference(&dir);
    let (prefill, decode) = run(&model, &r);
    let (pa, pr) = errors(&prefill, &r.prefill);
    let (da, dr) = errors(&decode, &r.decode);
    println!(
        "{name} (GGUF): prefill max abs {pa:.2e} max rel {pr:.2e}; decode max abs {da:.2e} \
         max rel {dr:.2e}"
    );
    assert!(
        pa < TOLERANCE && da < TOLERANCE,
        "{name}: GGUF logits differ"
    );

    let st = Llama::<CpuBackend>::from_hf_dir(&dir, &Default::default()).unwrap();
    let (st_prefill, _) = run(&st, &r);
    let (abs, _) = errors(&prefill, &st_prefill);
    println!("{name}: GGUF vs safetensors max abs {abs:.2e}");
    assert!(abs < TOLERANCE);
}

#[test]
fn llama_gguf_with_permuted_qk_and_rope_freqs_matches() {
    check("llama-tiny-llama3");
}

#[test]
fn qwen3_gguf_matches() {
    check("llama-tiny-qwen3");
}
