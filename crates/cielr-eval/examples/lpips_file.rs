//! Prints LPIPS (SqueezeNet) and its clean variant for one image pair, with the weights file
//! `tools/eval/convert_lpips.py` writes. Used by `tools/eval/lpips_convert_check.sh`.
//!
//! `cargo run --release -p cielr-eval --example lpips_file -- WEIGHTS ORIGINAL EDITED MASK SIZE`
//! (`MASK` a greyscale image, 0 = keep, or `-` for none; `SIZE` the protocol's side or `-`).

use cielr_eval::lpips::{lpips_scores, LpipsSqueeze};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 5 {
        return Err("usage: lpips_file WEIGHTS ORIGINAL EDITED MASK|- SIZE|-".into());
    }
    let device = Default::default();
    let net = LpipsSqueeze::<cielr_core::backend::CpuBackend>::from_file(&args[0], &device)?;
    let original = image::open(&args[1])?.to_rgb8();
    let edited = image::open(&args[2])?.to_rgb8();
    let mask = match args[3].as_str() {
        "-" => image::GrayImage::new(original.width(), original.height()),
        p => image::open(p)?.to_luma8(),
    };
    let size = match args[4].as_str() {
        "-" => None,
        s => Some(s.parse()?),
    };
    let s = lpips_scores(&net, &original, &edited, &mask, size, &device)?;
    println!(
        "{{\"lpips\": {:e}, \"clean_lpips\": {}}}",
        s.lpips,
        s.clean_lpips
            .map_or("null".to_string(), |v| format!("{v:e}"))
    );
    Ok(())
}
