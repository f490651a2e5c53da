//! Compares the CLIP tokenizer loaded from a folder's `vocab.json` + `merges.txt` with the ids
//! transformers' `CLIPTokenizer` wrote to `reference.json` there (by
//! `tools/parity/diffusers_tokenizer.py --real DIR`); run by
//! `tools/parity/diffusers_tokenizer_real.sh` on the real CLIP vocabulary. Exits 1 on any
//! difference.
//!
//! Usage: `cargo run -p cielr-diffusion --example sd_tokenizer_check -- DIR`

use std::path::PathBuf;

use cielr_diffusion::sd_tokenizer::load_clip_tokenizer;

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: sd_tokenizer_check DIR"),
    );
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("reference.json")).expect("reference.json"),
    )
    .expect("json");
    let max_length = reference["max_length"].as_u64().expect("max_length") as usize;
    let tokenizer = load_clip_tokenizer(&dir, max_length).expect("tokenizer");
    let strings: Vec<String> =
        serde_json::from_value(reference["strings"].clone()).expect("strings");
    let expected: Vec<Vec<u32>> =
        serde_json::from_value(reference["input_ids"].clone()).expect("input_ids");
    let texts: Vec<&str> = strings.iter().map(String::as_str).collect();
    let ours = tokenizer.encode(&texts).expect("encode").ids;
    let mut bad = 0;
    for ((s, a), b) in strings.iter().zip(&ours).zip(&expected) {
        if a != b {
            bad += 1;
            println!("MISMATCH {s:?}\n ours {a:?}\n ref  {b:?}");
        }
    }
    println!(
        "{} of {} strings identical to transformers {} (vocabulary of {} tokens)",
        strings.len() - bad,
        strings.len(),
        reference["transformers"],
        tokenizer.token_to_id("<|endoftext|>").map_or(0, |i| i + 1)
    );
    std::process::exit(i32::from(bad > 0));
}
