//! Decoding with K-quant matrices as stored: the tiny one-layer Llama of
//! `tests/fixtures/llama-tiny-kquant` (written by `tools/parity/llama_gguf_kquant.py`) keeps
//! its matrices as a Q4_K_M file does (Q4_K; Q6_K for attn_v, ffn_down and the tied
//! embedding/head) plus attn_k as Q5_K, attn_output as Q5_0 and ffn_up as Q5_1. Decode
//! steps multiplying those blocks as stored must match the same model with every matrix
//! dequantised to `f32` by candle (`Llama::from_gguf`).

mod llama_common;

use cielr_core::backend::CpuBackend;
use cielr_planner::generate::Sampler;
use cielr_planner::gguf::{GgufDType, GgufFile};
use cielr_planner::llama::Llama;
use llama_common::{errors, fixture, TOLERANCE};

#[test]
fn kquant_decode_matches_f32_decode() {
    let file = GgufFile::open(&fixture("llama-tiny-kquant").join("model.gguf")).unwrap();
    // The fixture holds the mix it claims to (so that the test covers each type).
    let dtype = |name: &str| file.tensor_info(name).unwrap().dtype;
    let mix = [
        ("token_embd.weight", GgufDType::Q6_K),
        ("blk.0.attn_q.weight", GgufDType::Q4_K),
        ("blk.0.attn_k.weight", GgufDType::Q5_K),
        ("blk.0.attn_v.weight", GgufDType::Q6_K),
        ("blk.0.attn_output.weight", GgufDType::Q5_0),
        ("blk.0.ffn_gate.weight", GgufDType::Q4_K),
        ("blk.0.ffn_up.weight", GgufDType::Q5_1),
        ("blk.0.ffn_down.weight", GgufDType::Q6_K),
    ];
    for (name, want) in mix {
        assert_eq!(dtype(name), want, "{name}");
    }

    let device = Default::default();
    let exact = Llama::<CpuBackend>::from_gguf(&file, &device).unwrap();
    let quant = Llama::<CpuBackend>::from_gguf_quantized(&file, &device).unwrap();
    let q = quant
        .quantized_decode()
        .expect("quantised weights attached");
    assert_eq!(
        q.coverage(),
        (8, 8),
        "every projection and the head as stored"
    );

    // A prompt longer than the quantised path's row limit runs on the f32 weights (the
    // head on its last position reads the Q6_K embedding as stored), then 12 greedy steps
    // of one row each run on the blocks as stored.
    let prompt: Vec<u32> = (0..11).map(|i| (i * 7 + 3) % 32).collect();
    let (mut ce, mut cq) = (exact.new_cache(), quant.new_cache());
    let mut le = exact.next_token_logits(&prompt, &mut ce).unwrap();
    let mut lq = quant.next_token_logits(&prompt, &mut cq).unwrap();
    let spread = le.iter().fold(0f32, |a, v| a.max(v.abs()));
    assert!(spread > 0.1, "degenerate logits (max |logit| {spread})");
    let mut worst = errors(&lq, &le).0;
    let (mut te, mut tq) = (Vec::new(), Vec::new());
    for _ in 0..12 {
        te.push(Sampler::argmax(&le).unwrap());
        tq.push(Sampler::argmax(&lq).unwrap());
        le = exact
            .next_token_logits(&te[te.len() - 1..], &mut ce)
            .unwrap();
        lq = quant
            .next_token_logits(&tq[tq.len() - 1..], &mut cq)
            .unwrap();
        worst = worst.max(errors(&lq, &le).0);
    }
    println!("K-quant vs f32 decode logits: max abs {worst:.2e}; greedy {tq:?}");
    assert!(worst < TOLERANCE, "max abs difference {worst}");
    assert_eq!(tq, te, "greedy continuation");
    assert!(
        te.iter().any(|&t| t != te[0]),
        "a constant continuation checks little: {te:?}"
    );

    // A batch of two rows at once (products of two input rows).
    let prompts: [&[u32]; 2] = [&prompt, &prompt[..7]];
    let (mut ce, mut cq) = (exact.new_cache(), quant.new_cache());
    exact.prefill_batch(&prompts, &mut ce).unwrap();
    quant.prefill_batch(&prompts, &mut cq).unwrap();
    let be = exact.decode_batch(&[5, 9], &mut ce).unwrap();
    let bq = quant.decode_batch(&[5, 9], &mut cq).unwrap();
    for (row, (a, b)) in be.iter().zip(&bq).enumerate() {
        let (abs, _) = errors(b, a);
        assert!(abs < TOLERANCE, "batch row {row}: max abs difference {abs}");
    }
}
