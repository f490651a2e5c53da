//! Compact loading (`Llama::from_gguf_compact`): the block-quantised matrices are held only
//! as stored, with no `f32` copy. Against `Llama::from_gguf_quantized` (the same matrices
//! as stored for decode plus `f32` copies for prefill): the same prefill logits (more than
//! `QUANT_MAX_ROWS` tokens, so the compact model dequantises each matrix into a temporary),
//! the same decode logits and greedy tokens, and far fewer `f32` parameters.
//!
//! The SmolLM2 test needs the model: run `tools/setup-models.sh` (it fails, not skips,
//! without it).

mod llama_common;

use burn::module::Module;
use cielr_core::backend::CpuBackend;
use cielr_planner::generate::Sampler;
use cielr_planner::gguf::{smollm2_gguf_path, GgufFile};
use cielr_planner::llama::{is_elided, Llama, QuantDecode, QuantLayer};
use llama_common::{errors, fixture, TOLERANCE};

type Cpu = CpuBackend;

/// Every projection (and, when tied, the embedding) of `compact` that has a quantised matrix
/// holds an elided weight with no elements; returns how many weights were elided.
fn elided_matrices(compact: &Llama<Cpu>) -> usize {
    let q = compact
        .quantized_decode()
        .expect("quantised weights attached");
    let mut n = 0;
    for (layer, ql) in compact.model().layers.iter().zip(&q.layers) {
        let (a, m) = (&layer.self_attn, &layer.mlp);
        let pairs = [
            (&a.q_proj, &ql.q_proj),
            (&a.k_proj, &ql.k_proj),
            (&a.v_proj, &ql.v_proj),
            (&a.o_proj, &ql.o_proj),
            (&m.gate_proj, &ql.gate_proj),
            (&m.up_proj, &ql.up_proj),
            (&m.down_proj, &ql.down_proj),
        ];
        for (lin, quant) in pairs {
            assert_eq!(is_elided(&lin.weight), quant.is_some());
            if quant.is_some() {
                assert_eq!(lin.weight.dims().iter().product::<usize>(), 0);
                n += 1;
            }
        }
    }
    let embed = &compact.model().embed_tokens.weight;
    if is_elided(embed) {
        assert_eq!(embed.dims().iter().product::<usize>(), 0);
        n += 1;
    }
    n
}

/// Prefill of `prompt` then `steps` greedy decode steps on both models: the largest logit
/// difference (prefill, decode) and both greedy continuations.
fn compare(
    a: &Llama<Cpu>,
    b: &Llama<Cpu>,
    prompt: &[u32],
    steps: usize,
) -> (f32, f32, Vec<u32>, Vec<u32>) {
    let (mut ca, mut cb) = (a.new_cache(), b.new_cache());
    // Every prompt position's logits: the head also runs on more than 8 rows.
    let pa = a.forward_tokens(prompt, &mut ca).unwrap();
    let pb = b.forward_tokens(prompt, &mut cb).unwrap();
    let vocab = a.config().vocab_size;
    let pa = pa.into_data().into_vec::<f32>().unwrap();
    let pb = pb.into_data().into_vec::<f32>().unwrap();
    assert_eq!(pa.len(), prompt.len() * vocab);
    let spread = pa.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(spread > 0.1, "degenerate logits (max |logit| {spread})");
    let prefill_err = errors(&pa, &pb).0;
    let mut la = pa[pa.len() - vocab..].to_vec();
    let mut lb = pb[pb.len() - vocab..].to_vec();
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    let mut decode_err = 0f32;
    for _ in 0..steps {
        ta.push(Sampler::argmax(&la).unwrap());
        tb.push(Sampler::argmax(&lb).unwrap());
        la = a.next_token_logits(&ta[ta.len() - 1..], &mut ca).unwrap();
        lb = b.next_token_logits(&tb[tb.len() - 1..], &mut cb).unwrap();
        decode_err = decode_err.max(errors(&la, &lb).0);
    }
    (prefill_err, decode_err, ta, tb)
}

#[test]
fn kquant_compact_matches_quantized() {
    let file = GgufFile::open(&fixture("llama-tiny-kquant").join("model.gguf")).unwrap();
    let device = Default::default();
    let full = Llama::<Cpu>::from_gguf_quantized(&file, &device).unwrap();
    let compact = Llama::<Cpu>::from_gguf_compact(&file, &device).unwrap();
    // One layer: seven projections and the tied embedding/head.
    assert_eq!(elided_matrices(&compact), 8);
    let (nf, nc) = (full.model().num_params(), compact.model().num_params());
    println!("f32 parameters: {nf} with f32 copies, {nc} compact");
    assert!(nc * 20 < nf, "compact keeps {nc} of {nf} f32 parameters");

    let prompt: Vec<u32> = (0..11).map(|i| (i * 7 + 3) % 32).collect();
    let (pe, de, ta, tb) = compare(&full, &compact, &prompt, 12);
    println!("tiny K-quant, compact vs as stored + f32: prefill {pe:.2e}, decode {de:.2e}");
    assert!(
        pe < TOLERANCE && de < TOLERANCE,
        "prefill {pe}, decode {de}"
    );
    assert_eq!(ta, tb, "greedy continuation");
    assert!(
        ta.iter().any(|&t| t != ta[0]),
        "a constant continuation checks little: {ta:?}"
    );

    // A padded batch of two rows (prefill of 2 x 11 rows, then two-row decode steps).
    let prompts: [&[u32]; 2] = [&prompt, &prompt[..7]];
    let (mut ca, mut cb) = (full.new_cache(), compact.new_cache());
    let mut worst = 0f32;
    let (ra, rb) = (
        full.prefill_batch(&prompts, &mut ca).unwrap(),
        compact.prefill_batch(&prompts, &mut cb).unwrap(),
    );
    for (x, y) in ra.iter().zip(&rb) {
        worst = worst.max(errors(x, y).0);
    }
    for step in 0..4u32 {
        let t = [step + 1, step + 5];
        let ra = full.decode_batch(&t, &mut ca).unwrap();
        let rb = compact.decode_batch(&t, &mut cb).unwrap();
        for (x, y) in ra.iter().zip(&rb) {
            worst = worst.max(errors(x, y).0);
        }
    }
    assert!(worst < TOLERANCE, "batch: max abs difference {worst}");
}

#[test]
fn elided_weights_need_their_quantised_matrices() {
    let file = GgufFile::open(&fixture("llama-tiny-kquant").join("model.gguf")).unwrap();
    let device = Default::default();
    let compact = Llama::<Cpu>::from_gguf_compact(&file, &device).unwrap();
    let q = compact.quantized_decode().unwrap().clone();
    // The error text (a refused model's Debug output would be huge).
    let rebuild = |quant: QuantDecode| match Llama::<Cpu>::from_gguf_compact(&file, &device)
        .unwrap()
        .with_quantized_decode(quant)
    {
        Ok(_) => "accepted".to_string(),
        Err(e) => e.to_string(),
    };
    // The same matrices again are accepted.
    assert_eq!(rebuild(q.clone()), "accepted");
    // An elided projection without its matrix.
    let mut missing = q.clone();
    missing.layers[0].up_proj = None;
    let e = rebuild(missing);
    assert!(e.contains("up_proj") && e.contains("elided"), "{e}");
    // The elided tied embedding/head without its matrix.
    let mut no_head = q.clone();
    no_head.head = None;
    let e = rebuild(no_head);
    assert!(e.contains("embed_tokens") && e.contains("elided"), "{e}");
    // A matrix of the wrong shape (the key projection's in place of the down projection).
    let mut wrong = q.clone();
    wrong.layers[0].down_proj = wrong.layers[0].k_proj.clone();
    let e = rebuild(wrong);
    assert!(e.contains("down_proj"), "{e}");
    // No quantised layers at all.
    let e = rebuild(QuantDecode {
        layers: vec![QuantLayer::default()],
        ..Default::default()
    });
    assert!(e.contains("elided"), "{e}");
    // A model with elided weights but no quantised matrices cannot be assembled.
    let model = Llama::<Cpu>::from_gguf_compact(&file, &device).unwrap();
    let e = match Llama::from_parts(model.config().clone(), model.model().clone(), &device) {
        Ok(_) => "accepted".to_string(),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("elided"), "{e}");
}

#[test]
fn smollm2_compact_matches_quantized() {
    let path = smollm2_gguf_path().expect("SmolLM2 GGUF (run tools/setup-models.sh)");
    let file = GgufFile::open(&path).unwrap();
    let device = Default::default();
    let full = Llama::<Cpu>::from_gguf_quantized(&file, &device).unwrap();
    let compact = Llama::<Cpu>::from_gguf_compact(&file, &device).unwrap();
    let layers = compact.config().num_hidden_layers;
    let (covered, total) = compact.quantized_decode().unwrap().coverage();
    // Every quantised projection and the tied embedding/head is elided.
    assert_eq!(elided_matrices(&compact), covered);
    assert_eq!(
        covered, total,
        "the SmolLM2 GGUF stores every matrix in a block format"
    );
    let (nf, nc) = (full.model().num_params(), compact.model().num_params());
    println!("SmolLM2 f32 parameters: {nf} with f32 copies, {nc} compact ({layers} layers)");
    assert!(nc * 1000 < nf, "compact keeps {nc} of {nf} f32 parameters");

    // 12 prompt tokens (> QUANT_MAX_ROWS) and 8 greedy steps.
    let prompt: Vec<u32> = vec![1, 4093, 314, 253, 1767, 30, 2, 28, 4562, 260, 3578, 282];
    let (pe, de, ta, tb) = compare(&full, &compact, &prompt, 8);
    println!("SmolLM2, compact vs as stored + f32: prefill {pe:.2e}, decode {de:.2e}; {ta:?}");
    assert!(
        pe < TOLERANCE && de < TOLERANCE,
        "prefill {pe}, decode {de}"
    );
    assert_eq!(ta, tb, "greedy continuation");
}

#[test]
fn dequantized_rows_and_transpose_match_dequantize() {
    // Every block format of the K-quant fixture (Q4_K, Q5_K, Q6_K, Q5_0, Q5_1).
    let file = GgufFile::open(&fixture("llama-tiny-kquant").join("model.gguf")).unwrap();
    let compact = Llama::<Cpu>::from_gguf_compact(&file, &Default::default()).unwrap();
    let q = compact.quantized_decode().unwrap();
    let l = &q.layers[0];
    let all = [
        &l.q_proj,
        &l.k_proj,
        &l.v_proj,
        &l.o_proj,
        &l.gate_proj,
        &l.up_proj,
        &l.down_proj,
        &q.head,
    ];
    for m in all.into_iter().flatten() {
        let (r, c) = (m.rows(), m.cols());
        let full = m.dequantize();
        let t = m.dequantize_transposed();
        assert_eq!(t.len(), r * c);
        for i in 0..r {
            for j in 0..c {
                assert_eq!(t[j * r + i].to_bits(), full[i * c + j].to_bits());
            }
        }
        let pick = [r - 1, 0, r / 2, 0];
        let rows = m.dequantize_rows(&pick).unwrap();
        for (k, &i) in pick.iter().enumerate() {
            assert_eq!(rows[k * c..(k + 1) * c], full[i * c..(i + 1) * c]);
        }
        assert!(m.dequantize_rows(&[r]).is_err());
    }
}

#[test]
fn local_llm_loads_weights_as_stored_only() {
    use cielr_planner::local::{GgufWeightsMode, LocalLlm};
    let path = smollm2_gguf_path().expect("SmolLM2 GGUF (run tools/setup-models.sh)");
    let llm =
        LocalLlm::<Cpu>::from_gguf_mode(&path, &Default::default(), GgufWeightsMode::AsStoredOnly)
            .unwrap();
    let n = elided_matrices(llm.model());
    assert_eq!(n, 7 * llm.model().config().num_hidden_layers + 1);
    assert!(llm.model().model().num_params() < 100_000);
    assert_eq!(
        GgufWeightsMode::default(),
        GgufWeightsMode::AsStoredForDecode
    );
}
