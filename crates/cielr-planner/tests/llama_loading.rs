//! Bad checkpoints and bad inputs give errors that say what is wrong, never panics.

#[path = "llama_common/mod.rs"]
mod llama_common;

use std::path::{Path, PathBuf};

use cielr_core::backend::CpuBackend;
use cielr_planner::error::PlannerError;
use cielr_planner::llama::{Llama, LlamaConfig, RopeScaling};
use llama_common::fixture;

/// A scratch copy of a fixture folder with its config.json replaced.
fn with_config(
    fixture_name: &str,
    tag: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> PathBuf {
    let src = fixture(fixture_name);
    let dir = std::env::temp_dir().join(format!("cielr-llama-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    dir
}

fn load_err(dir: &Path) -> String {
    let e = Llama::<CpuBackend>::from_hf_dir(dir, &Default::default()).unwrap_err();
    let _ = std::fs::remove_dir_all(dir);
    e.to_string()
}

#[test]
fn bad_config_json_is_an_error() {
    for (text, needle) in [
        ("{not json", "JSON"),
        (r#"{"model_type": "llama"}"#, "hidden_size"),
        (
            r#"{"model_type": "gpt2", "hidden_size": 8, "num_attention_heads": 2}"#,
            "gpt2",
        ),
        (
            r#"{"vocab_size": 8, "hidden_size": 8, "intermediate_size": 8,
                "num_hidden_layers": 1, "num_attention_heads": 3, "num_key_value_heads": 2}"#,
            "multiple",
        ),
        (
            r#"{"vocab_size": 8, "hidden_size": 8, "intermediate_size": 8,
                "num_hidden_layers": 1, "num_attention_heads": 0}"#,
            "num_attention_heads",
        ),
        (
            r#"{"vocab_size": 8, "hidden_size": 8, "intermediate_size": 8,
                "num_hidden_layers": 1, "num_attention_heads": 2,
                "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}"#,
            "yarn",
        ),
        (
            r#"{"vocab_size": 8, "hidden_size": 8, "intermediate_size": 8,
                "num_hidden_layers": 1, "num_attention_heads": 2,
                "rope_scaling": {"rope_type": "llama3", "factor": 4.0}}"#,
            "low_freq_factor",
        ),
        (
            r#"{"vocab_size": 8, "hidden_size": 8, "intermediate_size": 8,
                "num_hidden_layers": 1, "num_attention_heads": 2, "hidden_act": "gelu"}"#,
            "gelu",
        ),
        (
            r#"{"vocab_size": 8, "hidden_size": 8, "intermediate_size": 8,
                "num_hidden_layers": 1, "num_attention_heads": 2, "head_dim": 1000000000000}"#,
            "head_dim",
        ),
        (
            r#"{"vocab_size": 8, "hidden_size": 8, "intermediate_size": 8,
                "num_hidden_layers": 1, "num_attention_heads": 2, "rms_norm_eps": -1.0}"#,
            "rms_norm_eps",
        ),
        (
            r#"{"vocab_size": 8, "hidden_size": 8, "intermediate_size": 8,
                "num_hidden_layers": 1, "num_attention_heads": 2, "head_dim": 5}"#,
            "even",
        ),
        (
            r#"{"model_type": "qwen2", "vocab_size": 8, "hidden_size": 8,
                "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
                "layer_types": ["sliding_attention"]}"#,
            "sliding",
        ),
    ] {
        let e = LlamaConfig::from_json_str(text).unwrap_err().to_string();
        assert!(e.contains(needle), "{text}: {e}");
    }
}

#[test]
fn transformers_4_rope_scaling_is_read() {
    let c = LlamaConfig::from_json_str(
        r#"{"vocab_size": 8, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "rope_theta": 500000.0, "eos_token_id": [3, 4],
            "rope_scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}"#,
    )
    .unwrap();
    assert_eq!(c.rope_theta, 500000.0);
    assert_eq!(c.eos_token_ids, vec![3, 4]);
    assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
}

#[test]
fn missing_files_and_tensors_are_named() {
    let e = Llama::<CpuBackend>::from_hf_dir(Path::new("/nonexistent/cielr"), &Default::default())
        .unwrap_err();
    assert!(matches!(e, PlannerError::Io { .. }), "{e}");

    // The qwen2 fixture ties its head: claiming it does not asks for lm_head.weight.
    let dir = with_config("llama-tiny-qwen2", "untied", |c| {
        c["tie_word_embeddings"] = false.into()
    });
    let e = load_err(&dir);
    assert!(e.contains("lm_head.weight") && e.contains("missing"), "{e}");

    // A wrong width: the first tensor read with the wrong shape is named.
    let dir = with_config("llama-tiny-llama3", "width", |c| {
        c["intermediate_size"] = 100.into()
    });
    let e = load_err(&dir);
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight") && e.contains("[100, 64]"),
        "{e}"
    );

    // Qwen3 norms asked of a Llama checkpoint.
    let dir = with_config("llama-tiny-llama3", "qk", |c| {
        c["model_type"] = "qwen3".into()
    });
    let e = load_err(&dir);
    assert!(e.contains("q_norm.weight"), "{e}");
}

#[test]
fn bad_inputs_are_errors() {
    let dir = fixture("llama-tiny-qwen2");
    let model = Llama::<CpuBackend>::from_hf_dir(&dir, &Default::default()).unwrap();
    let mut cache = model.new_cache();
    assert!(model.next_token_logits(&[], &mut cache).is_err());
    let e = model.next_token_logits(&[1, 256], &mut cache).unwrap_err();
    assert!(e.to_string().contains("256"), "{e}");
    assert!(cache.is_empty(), "a refused input must not touch the cache");
    let context = model.config().max_position_embeddings;
    let e = model
        .next_token_logits(&vec![1; context + 1], &mut cache)
        .unwrap_err();
    assert!(e.to_string().contains("max_position_embeddings"), "{e}");
    // The tensor entry point checks ids too.
    let ids = burn::tensor::Tensor::<CpuBackend, 2, burn::tensor::Int>::from_data(
        burn::tensor::TensorData::new(vec![1i64, -3], [1, 2]),
        model.device(),
    );
    assert!(model.forward(ids, &mut cache).is_err());
    model.next_token_logits(&[1, 2], &mut cache).unwrap();
    assert_eq!(cache.len(), 2);
    cache.clear();
    assert!(cache.is_empty());
}

#[test]
fn sharded_checkpoints_load() {
    // The qwen3 fixture split into two shards with a model.safetensors.index.json gives the
    // reference logits.
    use safetensors::tensor::{serialize_to_file, SafeTensors, TensorView};
    let src = fixture("llama-tiny-qwen3");
    let dir = std::env::temp_dir().join(format!("cielr-llama-shards-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (k, part) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", k + 1);
        let views: Vec<(String, TensorView)> = part
            .iter()
            .map(|n| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        serialize_to_file(views, None, &dir.join(&file)).unwrap();
        for n in part {
            weight_map.insert(n.clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let model = Llama::<CpuBackend>::from_hf_dir(&dir, &Default::default()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let r = llama_common::reference(&src);
    let (prefill, _) = llama_common::run(&model, &r);
    let (abs, _) = llama_common::errors(&prefill, &r.prefill);
    assert!(abs < llama_common::TOLERANCE, "{abs}");
}
