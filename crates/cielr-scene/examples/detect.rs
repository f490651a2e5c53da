//! Detects COCO objects with CenterNet-MobileNetV3 and prints them with timings.
//!
//! ```sh
//! tools/setup-models.sh   # once: the weights into the model cache
//! cargo run --release -p cielr-scene --example detect -- [--stretch] [--min-score 0.3] [--agnostic] photo.png...
//! ```

use std::time::Instant;

use cielr_core::backend::CpuBackend;
use cielr_scene::centernet::{
    decode, postprocess, preprocess, CenterNet, DetectOptions, ResizeMode, CENTERNET_TOP_K,
};
use cielr_scene::model_cache::ModelCache;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut options = DetectOptions::default();
    let mut images = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--stretch" => options.resize = ResizeMode::Stretch,
            "--agnostic" => options.class_agnostic_nms = true,
            "--min-score" => {
                options.min_score = args.next().ok_or("--min-score needs a value")?.parse()?
            }
            _ => images.push(a),
        }
    }
    if images.is_empty() {
        return Err("usage: detect [--stretch] [--agnostic] [--min-score S] image...".into());
    }
    let t = Instant::now();
    let model = CenterNet::<CpuBackend>::load(
        ModelCache::from_env()?.centernet_json()?,
        &Default::default(),
    )?;
    println!(
        "loaded in {:.0} ms; {options:?}",
        t.elapsed().as_secs_f64() * 1e3
    );
    for path in images {
        let img = image::open(&path)?.to_rgb8();
        let t0 = Instant::now();
        let input = preprocess(&img, options.resize)?;
        let t1 = Instant::now();
        let raw = model.forward(&input.pixels)?;
        let t2 = Instant::now();
        let candidates = decode(&raw, CENTERNET_TOP_K);
        let t3 = Instant::now();
        let dets = postprocess(&candidates, &input.transform, &options);
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        println!(
            "{path} ({}x{}): preprocess {:.0} ms, forward {:.0} ms, decode {:.0} ms",
            img.width(),
            img.height(),
            ms(t0, t1),
            ms(t1, t2),
            ms(t2, t3)
        );
        for d in dets {
            let b = d.bbox;
            println!(
                "  {:<14} {:.3}  [{:.0}, {:.0}, {:.0}, {:.0}]",
                d.label, d.score, b.x0, b.y0, b.x1, b.y1
            );
        }
    }
    Ok(())
}
