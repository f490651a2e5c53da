//! The text encoder as Stable Diffusion ships it: a `CLIPTextModelWithProjection` folder with
//! a bare text config and `text_model.` weights, called without an attention mask.

mod clip_common;

use cielr_scene::clip::{ClipTextModelWithProjection, ClipTextTransformer, ClipTokenizer};
use clip_common::*;

#[test]
fn clip_text_encoder_alone_matches_transformers() {
    let dir = fixture("clip-text");
    let inputs = read_refs(dir.join("inputs.safetensors"));
    let refs = read_refs(dir.join("reference.safetensors"));

    let tok = ClipTokenizer::from_file(dir.join("tokenizer.json"), 16).unwrap();
    let batch = tok
        .encode(&[
            "a photo of a cat",
            "Two CUPS of   coffee!",
            "a blue cup next to the lazy dog, sleeping on the sofa",
        ])
        .unwrap();
    let ids: Vec<i64> = batch.ids.iter().flatten().map(|&x| x as i64).collect();
    assert_eq!(ids, inputs["input_ids"].i64);

    let text = ClipTextTransformer::<B>::from_pretrained(&dir, &device()).unwrap();
    let input_ids = int_tensor::<2>(&inputs["input_ids"]);
    let out = text.forward(input_ids.clone(), None).unwrap();
    compare(
        "SD text encoder last_hidden_state",
        out.last_hidden_state,
        &refs["last_hidden_state"],
        1e-4,
    );
    compare(
        "SD text encoder pooler_output",
        out.pooler_output,
        &refs["pooler_output"],
        1e-4,
    );

    // "clip skip": the penultimate layer through the final LayerNorm is what SD 2 uses; the
    // reference is the raw hidden state.
    let states = text.forward_hidden_states(input_ids.clone(), None).unwrap();
    assert_eq!(states.len(), 4);
    compare(
        "SD text encoder hidden_states[-2]",
        states[2].clone(),
        &refs["hidden_state_penultimate"],
        1e-4,
    );
    let skipped = text.final_layer_norm(states[2].clone());
    assert_eq!(skipped.dims(), [3, 16, 32]);

    let with_proj = ClipTextModelWithProjection::<B>::from_pretrained(&dir, &device()).unwrap();
    let (_, embeds) = with_proj.forward(input_ids, None).unwrap();
    compare("SDXL-style text_embeds", embeds, &refs["text_embeds"], 1e-4);
}
