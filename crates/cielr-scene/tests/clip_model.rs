//! `CLIPModel` parity with transformers on two tiny random checkpoints written by
//! `tools/parity/clip.py`: quick_gelu with f32 weights and the legacy `eos_token_id: 2`
//! (argmax pooling), and gelu with f16 weights, a real EOS id and a pad id above it (pooling at
//! the first EOS). The inputs come through our tokenizer and image processor and are checked
//! against the ones transformers produced.

mod clip_common;

use std::time::Instant;

use cielr_scene::clip::{
    ClipModel, ClipTextConfig, ClipTextTransformer, ClipTokenizer, ClipVisionTransformer,
    TextPooling,
};
use cielr_scene::preprocess::ClipImageProcessor;
use clip_common::*;
use serde_json::Value;

const TOL: f32 = 1e-4;

fn check_clip_fixture(name: &str, expected_pooling: fn(&ClipTextConfig) -> bool) {
    let start = Instant::now();
    let dir = fixture(name);
    let inputs = read_refs(dir.join("inputs.safetensors"));
    let refs = read_refs(dir.join("reference.safetensors"));
    let texts: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("texts.json")).unwrap()).unwrap();

    // Tokenizer: same ids and mask as transformers' fast tokenizer.
    let tok = ClipTokenizer::from_file(
        dir.join("tokenizer.json"),
        texts["max_length"].as_u64().unwrap() as usize,
    )
    .unwrap()
    .with_pad_token(texts["pad_token"].as_str().unwrap())
    .unwrap();
    let strings: Vec<&str> = texts["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let batch = tok.encode(&strings).unwrap();
    let ours_ids: Vec<i64> = batch.ids.iter().flatten().map(|&x| x as i64).collect();
    let ours_mask: Vec<i64> = batch
        .attention_mask
        .iter()
        .flatten()
        .map(|&x| x as i64)
        .collect();
    assert_eq!(ours_ids, inputs["input_ids"].i64, "{name}: input_ids");
    assert_eq!(
        ours_mask, inputs["attention_mask"].i64,
        "{name}: attention_mask"
    );

    // Image processor on the two photos.
    let proc = ClipImageProcessor::from_file(dir.join("preprocessor_config.json")).unwrap();
    let images = [
        image::open(asset("coffee.png")).unwrap(),
        image::open(fixture("clip-preprocess/chelsea_crop.png")).unwrap(),
    ];
    let pixels = proc.preprocess_batch::<B>(&images, &device()).unwrap();
    compare(
        &format!("{name} pixel_values"),
        pixels.clone(),
        &inputs["pixel_values"],
        1e-6,
    );

    let config = cielr_scene::clip::ClipConfig::from_file(dir.join("config.json")).unwrap();
    assert!(
        expected_pooling(&config.text_config),
        "{name}: pooling rule"
    );
    let model = ClipModel::<B>::from_pretrained(&dir, &device()).unwrap();
    let ids = batch.input_ids::<B>(&device());
    let mask = batch.attention_mask::<B>(&device());
    let out = model
        .forward(ids.clone(), Some(mask.clone()), pixels.clone())
        .unwrap();
    compare(
        &format!("{name} image_embeds"),
        out.image_embeds,
        &refs["image_embeds"],
        TOL,
    );
    compare(
        &format!("{name} text_embeds"),
        out.text_embeds,
        &refs["text_embeds"],
        TOL,
    );
    compare(
        &format!("{name} logits_per_image"),
        out.logits_per_image,
        &refs["logits_per_image"],
        TOL,
    );
    compare(
        &format!("{name} logits_per_text"),
        out.logits_per_text,
        &refs["logits_per_text"],
        TOL,
    );
    compare(
        &format!("{name} vision last_hidden_state"),
        out.vision_output.last_hidden_state,
        &refs["vision_last_hidden_state"],
        TOL,
    );
    compare(
        &format!("{name} vision pooler_output"),
        out.vision_output.pooler_output,
        &refs["vision_pooler_output"],
        TOL,
    );
    compare(
        &format!("{name} text last_hidden_state"),
        out.text_output.last_hidden_state,
        &refs["text_last_hidden_state"],
        TOL,
    );
    compare(
        &format!("{name} text pooler_output"),
        out.text_output.pooler_output,
        &refs["text_pooler_output"],
        TOL,
    );

    let vision_states = model
        .vision_model
        .forward_hidden_states(pixels.clone())
        .unwrap();
    assert_eq!(vision_states.len(), 1 + vision_layers(&config));
    compare(
        &format!("{name} vision hidden_states[-2]"),
        vision_states[vision_states.len() - 2].clone(),
        &refs["vision_hidden_state_penultimate"],
        TOL,
    );
    let text_states = model
        .text_model
        .forward_hidden_states(ids.clone(), Some(mask.clone()))
        .unwrap();
    compare(
        &format!("{name} text hidden_states[-2]"),
        text_states[text_states.len() - 2].clone(),
        &refs["text_hidden_state_penultimate"],
        TOL,
    );

    // Each tower alone from the same folder (CLIPConfig sections).
    let text = ClipTextTransformer::<B>::from_pretrained(&dir, &device()).unwrap();
    let t = text.forward(ids, Some(mask)).unwrap();
    compare(
        &format!("{name} text tower alone"),
        t.last_hidden_state,
        &refs["text_last_hidden_state"],
        TOL,
    );
    let vision = ClipVisionTransformer::<B>::from_pretrained(&dir, &device()).unwrap();
    let v = vision.forward(pixels).unwrap();
    compare(
        &format!("{name} vision tower alone"),
        v.pooler_output,
        &refs["vision_pooler_output"],
        TOL,
    );
    println!("{name}: {:.2} s", start.elapsed().as_secs_f64());
}

fn vision_layers(c: &cielr_scene::clip::ClipConfig) -> usize {
    c.vision_config.num_hidden_layers
}

#[test]
fn clip_tiny_quickgelu_f32_matches_transformers() {
    check_clip_fixture("clip-tiny-quickgelu", |c| {
        c.pooling() == TextPooling::ArgmaxId
    });
}

#[test]
fn clip_tiny_gelu_f16_matches_transformers() {
    check_clip_fixture("clip-tiny-gelu", |c| {
        matches!(c.pooling(), TextPooling::FirstEos(129))
    });
}

#[test]
fn clip_vision_with_projection_and_sharded_checkpoint() {
    use cielr_scene::clip::ClipVisionModelWithProjection;

    let dir = fixture("clip-tiny-quickgelu");
    let inputs = read_refs(dir.join("inputs.safetensors"));
    let refs = read_refs(dir.join("reference.safetensors"));
    let pixels = float_tensor::<4>(&inputs["pixel_values"]);

    // CLIPVisionModelWithProjection-style loading from a CLIPModel folder.
    let vision = ClipVisionModelWithProjection::<B>::from_pretrained(&dir, &device()).unwrap();
    let (_, embeds) = vision.forward(pixels.clone()).unwrap();
    let norm = (embeds.clone() * embeds.clone()).sum_dim(1).sqrt();
    compare(
        "vision-with-projection image_embeds",
        embeds / norm,
        &refs["image_embeds"],
        TOL,
    );

    // The same weights split over two shards with a model.safetensors.index.json.
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let shard_dir = std::env::temp_dir().join(format!("cielr-clip-shards-{}", std::process::id()));
    std::fs::create_dir_all(&shard_dir).unwrap();
    let mut weight_map = serde_json::Map::new();
    let tensors = st.tensors();
    for (i, part) in tensors.chunks(tensors.len() / 2 + 1).enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        for (name, _) in part {
            weight_map.insert(name.clone(), Value::from(file.clone()));
        }
        let views: Vec<(String, safetensors::tensor::TensorView)> = part.to_vec();
        std::fs::write(
            shard_dir.join(&file),
            safetensors::serialize(views, None).unwrap(),
        )
        .unwrap();
    }
    std::fs::write(
        shard_dir.join("model.safetensors.index.json"),
        serde_json::to_string(&serde_json::json!({"metadata": {}, "weight_map": weight_map}))
            .unwrap(),
    )
    .unwrap();
    std::fs::copy(dir.join("config.json"), shard_dir.join("config.json")).unwrap();
    let model = ClipModel::<B>::from_pretrained(&shard_dir, &device()).unwrap();
    let ids = int_tensor::<2>(&inputs["input_ids"]);
    let mask = int_tensor::<2>(&inputs["attention_mask"]);
    let out = model.forward(ids, Some(mask), pixels).unwrap();
    compare(
        "sharded checkpoint logits_per_image",
        out.logits_per_image,
        &refs["logits_per_image"],
        TOL,
    );
    std::fs::remove_dir_all(&shard_dir).ok();
}
