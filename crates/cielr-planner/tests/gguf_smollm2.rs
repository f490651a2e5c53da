//! Reading SmolLM2-135M-Instruct.Q4_1.gguf (Q4_1 projections, Q8_0 embedding, F32 norms)
//! against gguf-py's dequantisation (`tests/fixtures/gguf_smollm2_reference.json`, made by
//! `tools/planner/make_gguf_fixture.py --smollm2`). Needs the model: run
//! `tools/setup-models.sh` (these tests fail, not skip, without the model).

use std::path::Path;
use std::time::Instant;

use cielr_planner::gguf::{smollm2_gguf_path, GgufDType, GgufFile};

#[test]
fn gguf_smollm2_metadata_and_tensors_match_gguf_py() {
    let path = smollm2_gguf_path().unwrap_or_else(|e| panic!("real-models test: {e}"));
    let t0 = Instant::now();
    let g = GgufFile::open(&path).unwrap();
    eprintln!("opened in {:?}", t0.elapsed());
    assert_eq!(g.version(), 3);
    assert_eq!(g.get_str("general.architecture"), Some("llama"));
    assert_eq!(g.get_u64("llama.block_count"), Some(30));
    assert_eq!(g.get_u64("llama.embedding_length"), Some(576));
    assert_eq!(g.get_u64("llama.attention.head_count_kv"), Some(3));
    assert_eq!(g.get_f64("llama.rope.freq_base"), Some(100000.0));
    assert_eq!(g.get_u64("tokenizer.ggml.eos_token_id"), Some(2));
    assert_eq!(g.tensor_names().len(), 272);
    let q41 = g
        .tensors()
        .iter()
        .filter(|t| t.dtype == GgufDType::Q4_1)
        .count();
    assert_eq!(q41, 210);

    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf_smollm2_reference.json"),
    )
    .unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let bits = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    for (name, r) in reference["tensors"].as_object().unwrap() {
        let t0 = Instant::now();
        let (shape, data) = g.tensor_f32(name).unwrap();
        eprintln!("{name} ({}): {shape:?} in {:?}", r["type"], t0.elapsed());
        let want_shape: Vec<usize> = r["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(shape, want_shape, "{name}");
        let first: Vec<u32> = data[..64].iter().map(|x| x.to_bits()).collect();
        assert_eq!(first, bits(&r["first_bits"]), "{name}: first values");
        let idx = r["sample_index"].as_array().unwrap();
        for (i, b) in idx.iter().zip(bits(&r["sample_bits"])) {
            let i = i.as_u64().unwrap() as usize;
            assert_eq!(data[i].to_bits(), b, "{name}[{i}]");
        }
        let sum: f64 = data.iter().map(|&x| x as f64).sum();
        let want = r["sum"].as_f64().unwrap();
        assert!(
            (sum - want).abs() <= 1e-9 * want.abs().max(1.0),
            "{name}: sum {sum} vs gguf-py {want}"
        );
    }
}
