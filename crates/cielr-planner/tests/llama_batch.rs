//! Batched prefill of prompts of different lengths (left padding + attention mask) against
//! transformers on the tiny checkpoints: `batch_reference.safetensors` in each fixture folder,
//! made by `tools/parity/llama.py batch` (three prompts of 6, 2 and 4 tokens left-padded to 6,
//! position ids from the mask, then three cached decode steps of one token per row).
//! Logits of every real position and of every decode step must agree to 1e-4.

mod llama_common;

use cielr_core::backend::CpuBackend;
use cielr_planner::llama::Llama;
use llama_common::{errors, fixture, TOLERANCE};
use safetensors::SafeTensors;

struct BatchReference {
    /// `[rows, width]`.
    ids: Vec<Vec<u32>>,
    mask: Vec<Vec<bool>>,
    /// `[rows, width, vocab]` flattened.
    logits: Vec<f32>,
    /// `[steps, rows]`.
    decode_ids: Vec<Vec<u32>>,
    /// `[steps, rows, vocab]` flattened.
    decode_logits: Vec<f32>,
}

fn load(name: &str) -> BatchReference {
    let bytes = std::fs::read(fixture(name).join("batch_reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ints = |n: &str| -> (Vec<usize>, Vec<i64>) {
        let t = st.tensor(n).unwrap();
        let v = t
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (t.shape().to_vec(), v)
    };
    let floats = |n: &str| -> Vec<f32> {
        st.tensor(n)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let rows = |(shape, v): (Vec<usize>, Vec<i64>)| -> Vec<Vec<i64>> {
        v.chunks_exact(shape[1]).map(<[i64]>::to_vec).collect()
    };
    let ids = rows(ints("batch_ids"));
    let mask = rows(ints("batch_mask"));
    let decode_ids = rows(ints("batch_decode_ids"));
    BatchReference {
        ids: ids
            .iter()
            .map(|r| r.iter().map(|&t| t as u32).collect())
            .collect(),
        mask: mask
            .iter()
            .map(|r| r.iter().map(|&m| m != 0).collect())
            .collect(),
        logits: floats("batch_logits"),
        decode_ids: decode_ids
            .iter()
            .map(|r| r.iter().map(|&t| t as u32).collect())
            .collect(),
        decode_logits: floats("batch_decode_logits"),
    }
}

fn check(name: &str) {
    let device = Default::default();
    let model = Llama::<CpuBackend>::from_hf_dir(&fixture(name), &device).unwrap();
    let vocab = model.config().vocab_size;
    let r = load(name);
    let width = r.ids[0].len();
    // The prompts without their padding.
    let prompts: Vec<Vec<u32>> = r
        .ids
        .iter()
        .zip(&r.mask)
        .map(|(ids, m)| {
            ids.iter()
                .zip(m)
                .filter(|(_, &m)| m)
                .map(|(&t, _)| t)
                .collect()
        })
        .collect();
    assert!(
        prompts.iter().any(|p| p.len() < width),
        "the fixture must pad"
    );
    let slices: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();

    // Every slot's logits; compare the real positions only.
    let mut cache = model.new_cache();
    let all = model
        .forward_padded(&slices, &mut cache)
        .unwrap()
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for (row, m) in r.mask.iter().enumerate() {
        for (slot, &real) in m.iter().enumerate() {
            if real {
                let at = (row * width + slot) * vocab;
                ours.extend_from_slice(&all[at..at + vocab]);
                theirs.extend_from_slice(&r.logits[at..at + vocab]);
            }
        }
    }
    let (pa, pr) = errors(&ours, &theirs);
    assert_eq!(cache.padding().len(), prompts.len());

    // The last-slot shortcut, then cached decode steps of one token per row.
    let mut cache = model.new_cache();
    let last = model.prefill_batch(&slices, &mut cache).unwrap();
    for (row, l) in last.iter().enumerate() {
        let at = (row * width + width - 1) * vocab;
        let (la, _) = errors(l, &r.logits[at..at + vocab]);
        assert!(la < TOLERANCE, "{name}: row {row} last logits error {la}");
    }
    let mut dec = Vec::new();
    for step in &r.decode_ids {
        for l in model.decode_batch(step, &mut cache).unwrap() {
            dec.extend(l);
        }
    }
    let (da, dr) = errors(&dec, &r.decode_logits);
    println!(
        "{name}: batch of {:?} left-padded to {width}: prefill max abs {pa:.2e} max rel \
         {pr:.2e}; {} decode steps max abs {da:.2e} max rel {dr:.2e}",
        prompts.iter().map(Vec::len).collect::<Vec<_>>(),
        r.decode_ids.len()
    );
    assert!(pa < TOLERANCE, "{name}: batched prefill max abs error {pa}");
    assert!(da < TOLERANCE, "{name}: batched decode max abs error {da}");

    // The shortest row alone, without padding, gives the same next-token logits.
    let shortest = prompts
        .iter()
        .enumerate()
        .min_by_key(|(_, p)| p.len())
        .unwrap()
        .0;
    let mut alone = model.new_cache();
    let single = model
        .next_token_logits(&prompts[shortest], &mut alone)
        .unwrap();
    let (sa, _) = errors(&single, &last[shortest]);
    assert!(
        sa < TOLERANCE,
        "{name}: padded row differs from alone by {sa}"
    );
}

#[test]
fn llama3_left_padded_batch_matches_transformers() {
    check("llama-tiny-llama3");
}

#[test]
fn qwen2_left_padded_batch_matches_transformers() {
    check("llama-tiny-qwen2");
}

#[test]
fn qwen3_left_padded_batch_matches_transformers() {
    check("llama-tiny-qwen3");
}

#[test]
fn bad_batches_are_refused() {
    let device = Default::default();
    let model = Llama::<CpuBackend>::from_hf_dir(&fixture("llama-tiny-qwen2"), &device).unwrap();
    let mut cache = model.new_cache();
    assert!(model.prefill_batch(&[], &mut cache).is_err());
    assert!(model.prefill_batch(&[&[1, 2], &[]], &mut cache).is_err());
    assert!(model.prefill_batch(&[&[1, 100_000]], &mut cache).is_err());
    assert!(
        model.decode_batch(&[1, 2], &mut cache).is_err(),
        "empty cache"
    );
    model
        .prefill_batch(&[&[1, 2, 3], &[4]], &mut cache)
        .unwrap();
    assert!(
        model.decode_batch(&[1], &mut cache).is_err(),
        "wrong batch size"
    );
    assert!(
        model.prefill_batch(&[&[1], &[2]], &mut cache).is_err(),
        "padding after the first chunk"
    );
    assert_eq!(cache.padding(), &[0, 2]);
    model.decode_batch(&[5, 6], &mut cache).unwrap();
    assert_eq!(cache.len(), 4);
}
