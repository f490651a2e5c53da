//! Bad configs, checkpoints and inputs give errors that name the problem (never panics).

mod clip_common;

use std::path::PathBuf;

use burn::tensor::{Int, Tensor, TensorData};
use cielr_scene::clip::{
    Checkpoint, ClipConfig, ClipModel, ClipPadding, ClipTextConfig, ClipTokenizer, ClipVisionConfig,
};
use cielr_scene::SceneError;
use clip_common::*;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::{json, Value};

fn fixture_config() -> Value {
    let text = std::fs::read_to_string(fixture("clip-tiny-quickgelu/config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The quick_gelu fixture's tensors with `edit` applied (drop or replace entries).
fn edited_checkpoint(edit: impl Fn(&str) -> Option<(Dtype, Vec<usize>, Vec<u8>)>) -> Checkpoint {
    let bytes = std::fs::read(fixture("clip-tiny-quickgelu/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        match edit(&name) {
            Some((dtype, shape, data)) if !data.is_empty() => {
                owned.push((name, dtype, shape, data))
            }
            Some(_) => {} // dropped
            None => owned.push((
                name,
                view.dtype(),
                view.shape().to_vec(),
                view.data().to_vec(),
            )),
        }
    }
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let out = safetensors::serialize(views, None).unwrap();
    Checkpoint::from_buffers(vec![(PathBuf::from("edited.safetensors"), out)]).unwrap()
}

#[test]
fn clip_missing_and_misshapen_tensors_are_named() {
    let config = ClipConfig::from_json(&fixture_config()).unwrap();
    let ckpt = edited_checkpoint(|n| {
        (n == "vision_model.post_layernorm.weight").then(|| (Dtype::F32, vec![], vec![]))
    });
    let err = ClipModel::<B>::load(&ckpt.weights(), &config, &device()).unwrap_err();
    assert!(matches!(err, SceneError::MissingTensor { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("vision_model.post_layernorm.weight"),
        "{err}"
    );

    let mut cfg = fixture_config();
    cfg["vision_config"]["intermediate_size"] = json!(65);
    let config = ClipConfig::from_json(&cfg).unwrap();
    let ckpt = Checkpoint::open(fixture("clip-tiny-quickgelu")).unwrap();
    let err = ClipModel::<B>::load(&ckpt.weights(), &config, &device()).unwrap_err();
    assert!(matches!(err, SceneError::TensorShape { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("vision_model.encoder.layers.0.mlp.fc1.weight"),
        "{err}"
    );
    // Converts into the workspace error.
    let core: cielr_core::CoreError = err.into();
    assert!(matches!(core, cielr_core::CoreError::Model(_)));

    let ckpt = edited_checkpoint(|n| {
        (n == "logit_scale").then(|| (Dtype::I32, vec![], 3i32.to_le_bytes().to_vec()))
    });
    let config = ClipConfig::from_json(&fixture_config()).unwrap();
    let err = ClipModel::<B>::load(&ckpt.weights(), &config, &device()).unwrap_err();
    assert!(matches!(err, SceneError::TensorDtype { .. }), "{err}");
    assert!(err.to_string().contains("logit_scale"), "{err}");
}

#[test]
fn clip_bf16_and_f64_tensors_convert_to_f32() {
    let values = [1.5f32, -0.25, 3.0e-3, 1234.0];
    let bf16: Vec<u8> = values
        .iter()
        .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
        .collect();
    let f64s: Vec<u8> = values
        .iter()
        .flat_map(|&v| (v as f64).to_le_bytes())
        .collect();
    let views = vec![
        (
            "a",
            TensorView::new(Dtype::BF16, vec![2, 2], &bf16).unwrap(),
        ),
        ("b", TensorView::new(Dtype::F64, vec![4], &f64s).unwrap()),
    ];
    let bytes = safetensors::serialize(views, None).unwrap();
    let ckpt = Checkpoint::from_buffers(vec![(PathBuf::from("mem"), bytes)]).unwrap();
    assert_eq!(ckpt.names(), vec!["a", "b"]);
    let a = ckpt.read_f32("a", &[2, 2]).unwrap();
    for (x, v) in a.iter().zip(values) {
        assert_eq!(*x, half::bf16::from_f32(v).to_f32());
    }
    assert_eq!(ckpt.read_f32("b", &[4]).unwrap(), values.to_vec());
    let err = ckpt.read_f32("a", &[4]).unwrap_err();
    assert!(err.to_string().contains("`a`"), "{err}");
    let t: Tensor<B, 2> = ckpt.weights().tensor("a", [2, 2], &device()).unwrap();
    assert_eq!(t.dims(), [2, 2]);
}

#[test]
fn clip_bad_files_and_configs_are_errors() {
    let err = Checkpoint::from_buffers(vec![(PathBuf::from("junk"), b"not safetensors".to_vec())])
        .unwrap_err();
    assert!(matches!(err, SceneError::Safetensors { .. }), "{err}");
    assert!(matches!(
        Checkpoint::open(fixture("clip-preprocess")).unwrap_err(),
        SceneError::Io { .. }
    ));
    assert!(matches!(
        ClipModel::<B>::from_pretrained(fixture("does-not-exist"), &device()).unwrap_err(),
        SceneError::Io { .. }
    ));

    let mut c = fixture_config();
    c["text_config"]["num_attention_heads"] = json!(5);
    let err = ClipConfig::from_json(&c).unwrap_err();
    assert!(err.to_string().contains("num_attention_heads"), "{err}");

    let mut c = fixture_config();
    c["vision_config"]["hidden_act"] = json!("swish");
    let err = ClipConfig::from_json(&c).unwrap_err();
    assert!(err.to_string().contains("swish"), "{err}");

    let mut c = fixture_config();
    c["vision_config"]["image_size"] = json!([32, 48]);
    assert!(ClipConfig::from_json(&c).is_err());
    c["vision_config"]["image_size"] = json!([32, 32]);
    assert_eq!(
        ClipConfig::from_json(&c).unwrap().vision_config.image_size,
        32
    );

    let mut c = fixture_config();
    c["text_config"]["eos_token_id"] = json!([2, 3]);
    assert!(ClipConfig::from_json(&c).is_err());
    c["text_config"]["eos_token_id"] = json!([7]);
    assert_eq!(
        ClipConfig::from_json(&c).unwrap().text_config.eos_token_id,
        7
    );

    let mut c = fixture_config();
    c["vision_config"]["patch_size"] = json!(64);
    assert!(ClipConfig::from_json(&c).is_err());
    assert!(ClipConfig::from_json(&json!([1, 2])).is_err());
    // A text-only config is not a CLIPConfig, but is a text config.
    let text_only = json!({"hidden_size": 64, "num_attention_heads": 4});
    assert!(ClipConfig::from_json(&text_only).is_err());
    let t = ClipTextConfig::from_json(&text_only).unwrap();
    assert_eq!(
        (t.hidden_size, t.vocab_size, t.eos_token_id),
        (64, 49408, 49407)
    );

    // Defaults are clip-vit-base-patch32's; legacy `*_config_dict` keys override.
    let v = ClipVisionConfig::from_json(&json!({})).unwrap();
    assert_eq!(
        (v.hidden_size, v.patch_size, v.num_positions()),
        (768, 32, 50)
    );
    let legacy = json!({"text_config": {}, "text_config_dict": {"hidden_size": 256, "num_attention_heads": 4}, "vision_config_dict": {"patch_size": 16}});
    let c = ClipConfig::from_json(&legacy).unwrap();
    assert_eq!(c.text_config.hidden_size, 256);
    assert_eq!(c.vision_config.patch_size, 16);
}

#[test]
fn clip_bad_inputs_are_errors() {
    let model = ClipModel::<B>::from_pretrained(fixture("clip-tiny-quickgelu"), &device()).unwrap();
    let d = device();
    let pixels = Tensor::<B, 4>::zeros([1, 3, 32, 32], &d);
    let wrong = Tensor::<B, 4>::zeros([1, 3, 64, 64], &d);
    let err = model.get_image_features(wrong).unwrap_err();
    assert!(matches!(err, SceneError::InvalidInput(_)), "{err}");
    let grey = Tensor::<B, 4>::zeros([1, 1, 32, 32], &d);
    assert!(model.get_image_features(grey).is_err());

    let ids = |v: Vec<i64>, s: usize| {
        let b = v.len() / s;
        Tensor::<B, 2, Int>::from_data(TensorData::new(v, [b, s]), &d)
    };
    let err = model
        .get_text_features(ids(vec![128, 5, 500, 129], 4), None)
        .unwrap_err();
    assert!(err.to_string().contains("500"), "{err}");
    assert!(model
        .get_text_features(ids(vec![128, 5, -1, 129], 4), None)
        .is_err());
    let too_long = ids(vec![5; 17], 17);
    assert!(model.get_text_features(too_long, None).is_err());
    let mask = ids(vec![1, 1, 1], 3);
    assert!(model
        .get_text_features(ids(vec![128, 5, 6, 129], 4), Some(mask))
        .is_err());

    // And a valid call still works.
    let out = model
        .forward(ids(vec![128, 5, 6, 129], 4), None, pixels)
        .unwrap();
    assert_eq!(out.logits_per_image.dims(), [1, 1]);
}

#[test]
fn clip_tokenizer_options_and_errors() {
    let path = fixture("clip-tiny-gelu/tokenizer.json");
    let tok = ClipTokenizer::from_file(&path, 20).unwrap();
    assert_eq!(tok.pad_id(), tok.token_to_id("<|endoftext|>").unwrap());
    assert!(ClipTokenizer::from_file(&path, 20)
        .unwrap()
        .with_pad_token("<|nope|>")
        .is_err());
    assert!(ClipTokenizer::from_file(&path, 1).is_err());
    assert!(ClipTokenizer::from_bytes(b"{", 20).is_err());
    assert!(ClipTokenizer::from_file(fixture("nope.json"), 20).is_err());

    let tok = tok.with_padding(ClipPadding::Longest);
    let b = tok.encode(&["a cat", "a photo of a dog"]).unwrap();
    let len = b.ids[1].len();
    assert!(b.ids.iter().all(|r| r.len() == len));
    assert_eq!(b.attention_mask[1], vec![1; len]);
    assert_eq!(
        *b.ids[1].last().unwrap(),
        tok.token_to_id("<|endoftext|>").unwrap()
    );
    assert_eq!(b.ids[0][0], tok.token_to_id("<|startoftext|>").unwrap());
    // Truncation keeps EOS last.
    let long = "a photo of a cat ".repeat(20);
    let b = ClipTokenizer::from_file(&path, 8)
        .unwrap()
        .encode(&[&long])
        .unwrap();
    assert_eq!(b.ids[0].len(), 8);
    assert_eq!(b.ids[0][7], tok.token_to_id("<|endoftext|>").unwrap());
}
