//! Measures the inpainters on real photos with synthetic holes (the numbers in
//! `docs/classical-editing.md`).
//!
//! ```text
//! cargo run -p cielr-diffusion --example inpaint_eval -- [dir with chelsea.png, coffee.png,
//!     astronaut.png (default: the scikit-image data folder of /work/venv)] [output dir for
//!     the filled images]
//! ```
//!
//! For each image and hole it prints PSNR inside the hole against the true pixels, the same
//! after a 5x5 box blur (low-pass PSNR), the ratio of mean gradient magnitude (luma) inside
//! the hole to the true pixels' (1 = as much texture as the photo, below 1 = smoother), and
//! the time; then the means, and timings on a 4x upscaled image. Build the crate optimised
//! for timings, e.g. `--release` or
//! `--config 'profile.dev.package.cielr-diffusion.opt-level=3'`.
//!
//! Environment overrides for experiments: `PM_R`, `PM_EM`, `PM_MIN_EM`, `PM_SEARCH`,
//! `PM_SEAMLESS` (0/1) change the PatchMatch options; `ONLY=<text>` runs only the methods
//! whose name contains it; `SKIP_LARGE=1` skips the large-image timings.

use std::path::{Path, PathBuf};
use std::time::Instant;

use cielr_core::{BBox, Mask};
use cielr_diffusion::{
    inpaint_patchmatch, inpaint_telea, InpaintMethod, PatchMatchOptions, TeleaOptions,
};
use image::{Rgb, RgbImage};

/// A wobbly disc: radius `r * (1 + 0.18 sin 3t + 0.08 cos 5t)` around `(cx, cy)`.
fn blob(w: u32, h: u32, cx: f64, cy: f64, r: f64) -> Mask {
    Mask::from_fn(w, h, |x, y| {
        let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
        let t = dy.atan2(dx);
        let rr = r * (1.0 + 0.18 * (3.0 * t).sin() + 0.08 * (5.0 * t).cos());
        dx * dx + dy * dy <= rr * rr
    })
    .unwrap()
}

/// An axis-aligned ellipse.
fn ellipse(w: u32, h: u32, cx: f64, cy: f64, rx: f64, ry: f64) -> Mask {
    Mask::from_fn(w, h, |x, y| {
        let (dx, dy) = ((x as f64 + 0.5 - cx) / rx, (y as f64 + 0.5 - cy) / ry);
        dx * dx + dy * dy <= 1.0
    })
    .unwrap()
}

fn rect(w: u32, h: u32, x0: f64, y0: f64, x1: f64, y1: f64) -> Mask {
    Mask::from_box(w, h, &BBox::new(x0, y0, x1, y1)).unwrap()
}

fn psnr_in(a: &RgbImage, b: &RgbImage, m: &Mask) -> f64 {
    let mut se = 0f64;
    let mut n = 0f64;
    for (x, y) in m.pixels() {
        let (p, q) = (a.get_pixel(x, y).0, b.get_pixel(x, y).0);
        for k in 0..3 {
            let d = p[k] as f64 - q[k] as f64;
            se += d * d;
        }
        n += 3.0;
    }
    let mse = se / n;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// PSNR inside the hole after a 5x5 box blur of both images (low frequencies only: layout
/// and colour, not texture alignment).
fn lowpass_psnr_in(a: &RgbImage, b: &RgbImage, m: &Mask) -> f64 {
    psnr_in(&box_blur(a), &box_blur(b), m)
}

fn box_blur(img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    RgbImage::from_fn(w, h, |x, y| {
        let mut acc = [0u32; 3];
        let mut n = 0u32;
        for yy in y.saturating_sub(2)..(y + 3).min(h) {
            for xx in x.saturating_sub(2)..(x + 3).min(w) {
                let p = img.get_pixel(xx, yy).0;
                for k in 0..3 {
                    acc[k] += p[k] as u32;
                }
                n += 1;
            }
        }
        Rgb(acc.map(|v| ((v + n / 2) / n) as u8))
    })
}

fn luma(p: &Rgb<u8>) -> f64 {
    0.299 * p.0[0] as f64 + 0.587 * p.0[1] as f64 + 0.114 * p.0[2] as f64
}

/// Mean gradient magnitude of luma (forward differences) over the hole's pixels.
fn mean_gradient(img: &RgbImage, m: &Mask) -> f64 {
    let (w, h) = img.dimensions();
    let mut sum = 0f64;
    let mut n = 0f64;
    for (x, y) in m.pixels() {
        if x + 1 >= w || y + 1 >= h {
            continue;
        }
        let c = luma(img.get_pixel(x, y));
        let gx = luma(img.get_pixel(x + 1, y)) - c;
        let gy = luma(img.get_pixel(x, y + 1)) - c;
        sum += (gx * gx + gy * gy).sqrt();
        n += 1.0;
    }
    sum / n.max(1.0)
}

/// Baseline: the whole hole set to one colour, the mean of the known pixels within 3 px of it.
fn mean_fill(img: &RgbImage, m: &Mask) -> RgbImage {
    let ring = m.dilate(3.0).difference(m).unwrap();
    let mut acc = [0f64; 3];
    let mut n = 0f64;
    for (x, y) in ring.pixels() {
        for (a, &v) in acc.iter_mut().zip(&img.get_pixel(x, y).0) {
            *a += v as f64;
        }
        n += 1.0;
    }
    let c = Rgb(acc.map(|v| (v / n).round() as u8));
    let mut out = img.clone();
    for (x, y) in m.pixels() {
        out.put_pixel(x, y, c);
    }
    out
}

struct Case {
    image: &'static str,
    name: &'static str,
    kind: &'static str,
    mask: Mask,
}

fn cases(images: &[(&'static str, RgbImage)]) -> Vec<Case> {
    let mut out = Vec::new();
    for (name, img) in images {
        let (w, h) = img.dimensions();
        let mut add = |case: &'static str, kind: &'static str, mask: Mask| {
            out.push(Case {
                image: name,
                name: case,
                kind,
                mask,
            })
        };
        match *name {
            "chelsea" => {
                add(
                    "blob r40, forehead fur",
                    "textured",
                    blob(w, h, 200.0, 60.0, 40.0),
                );
                add(
                    "box 60x50, cheek fur",
                    "textured",
                    rect(w, h, 110.0, 180.0, 170.0, 230.0),
                );
                add(
                    "blob r22, nose and mouth",
                    "structure",
                    blob(w, h, 262.0, 248.0, 22.0),
                );
                add(
                    "blob r30, blurred background",
                    "smooth",
                    blob(w, h, 405.0, 110.0, 30.0),
                );
            }
            "coffee" => {
                add(
                    "box 100x90, wood grain",
                    "textured",
                    rect(w, h, 470.0, 30.0, 570.0, 120.0),
                );
                add(
                    "blob r25, coffee crema",
                    "smooth",
                    blob(w, h, 290.0, 150.0, 25.0),
                );
                add(
                    "blob r35, saucer rim",
                    "smooth",
                    blob(w, h, 130.0, 250.0, 35.0),
                );
                add(
                    "ellipse 200x150 (10% of image), wood + saucer edge",
                    "mixed, large",
                    ellipse(w, h, 495.0, 300.0, 100.0, 75.0),
                );
            }
            "astronaut" => {
                add(
                    "blob r26, studio wall",
                    "smooth",
                    blob(w, h, 335.0, 120.0, 26.0),
                );
                add(
                    "box 60x70, flag stripes at border",
                    "textured",
                    rect(w, h, 0.0, 250.0, 60.0, 320.0),
                );
                add(
                    "box 50x40, shuttle body",
                    "structure",
                    rect(w, h, 385.0, 150.0, 435.0, 190.0),
                );
                add(
                    "blob r35, orange suit",
                    "textured",
                    blob(w, h, 100.0, 420.0, 35.0),
                );
            }
            _ => {}
        }
    }
    out
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "/work/venv/lib/python3.11/site-packages/skimage/data".to_string()),
    );
    let out_dir = args.next().map(PathBuf::from);
    if let Some(d) = &out_dir {
        std::fs::create_dir_all(d).expect("create the output directory");
    }
    let load = |n: &str| -> RgbImage {
        let p: &Path = &dir.join(format!("{n}.png"));
        image::open(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .to_rgb8()
    };
    let images = vec![
        ("chelsea", load("chelsea")),
        ("coffee", load("coffee")),
        ("astronaut", load("astronaut")),
    ];
    let telea = TeleaOptions::default();
    let telea_nograd = TeleaOptions {
        gradient: false,
        ..telea
    };
    let mut pm = PatchMatchOptions::default();
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u32>().ok());
    if let Some(v) = env("PM_R") {
        pm.patch_radius = v;
    }
    if let Some(v) = env("PM_EM") {
        pm.em_iterations = v;
    }
    if let Some(v) = env("PM_MIN_EM") {
        pm.min_em_iterations = v;
    }
    if let Some(v) = env("PM_SEAMLESS") {
        pm.seamless = v != 0;
    }
    if let Some(v) = env("PM_SEARCH") {
        pm.search_iterations = v;
    }
    let only = std::env::var("ONLY").unwrap_or_default();
    println!(
        "| # | image | hole | kind | hole px | method | PSNR (dB) | low-pass PSNR (dB) | gradient ratio | time (ms) |"
    );
    println!("|---|---|---|---|---:|---|---:|---:|---:|---:|");
    // method -> [psnr, lowpass psnr, gradient ratio, |log2 gradient ratio|, seconds, count]
    let mut totals: Vec<(String, [f64; 6])> = Vec::new();
    for (case_no, case) in cases(&images).into_iter().enumerate() {
        let img = &images.iter().find(|(n, _)| *n == case.image).unwrap().1;
        let truth_grad = mean_gradient(img, &case.mask);
        let mut runs: Vec<(String, RgbImage, f64)> = Vec::new();
        let mut timed = |name: String, f: &dyn Fn() -> RgbImage| {
            if !only.is_empty() && !name.contains(&only) {
                return;
            }
            let t = Instant::now();
            let r = f();
            runs.push((name, r, t.elapsed().as_secs_f64()));
        };
        timed("mean colour".into(), &|| mean_fill(img, &case.mask));
        timed(InpaintMethod::Telea.to_string(), &|| {
            inpaint_telea(img, &case.mask, &telea).unwrap()
        });
        timed("telea (no gradient term)".into(), &|| {
            inpaint_telea(img, &case.mask, &telea_nograd).unwrap()
        });
        for seed in [0u64, 1] {
            timed(format!("patchmatch seed {seed}"), &|| {
                inpaint_patchmatch(img, &case.mask, &pm, seed).unwrap()
            });
        }
        for (method, result, secs) in &runs {
            let psnr = psnr_in(result, img, &case.mask);
            let lp = lowpass_psnr_in(result, img, &case.mask);
            let gr = mean_gradient(result, &case.mask) / truth_grad;
            println!(
                "| {case_no} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.0} |",
                case.image,
                case.name,
                case.kind,
                case.mask.area(),
                method,
                psnr,
                lp,
                gr,
                secs * 1000.0
            );
            let row = [psnr, lp, gr, gr.log2().abs(), *secs, 1.0];
            match totals.iter_mut().find(|t| &t.0 == method) {
                Some(t) => {
                    for (a, v) in t.1.iter_mut().zip(row) {
                        *a += v;
                    }
                }
                None => totals.push((method.clone(), row)),
            }
            if let Some(d) = &out_dir {
                let file = format!(
                    "case{case_no}-{}-{}.png",
                    case.image,
                    method.replace(' ', "_")
                );
                result.save(d.join(file)).expect("save");
            }
        }
    }
    println!();
    println!(
        "| method | mean PSNR (dB) | mean low-pass PSNR (dB) | mean gradient ratio | mean abs log2 gradient ratio | mean time (ms) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (m, t) in totals {
        let n = t[5];
        println!(
            "| {m} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} |",
            t[0] / n,
            t[1] / n,
            t[2] / n,
            t[3] / n,
            t[4] / n * 1000.0
        );
    }
    if std::env::var("SKIP_LARGE").is_ok() {
        return;
    }
    // Timing on a large image: coffee upscaled 4x (2400x1600).
    let coffee = &images.iter().find(|(n, _)| *n == "coffee").unwrap().1;
    let big = image::imageops::resize(coffee, 2400, 1600, image::imageops::FilterType::Triangle);
    let (w, h) = big.dimensions();
    let large_cases = [
        (
            "blob r60 on wood (small object, 0.3% of image)",
            blob(w, h, 1900.0, 300.0, 60.0),
        ),
        (
            "ellipse 800x600 (10% of image)",
            ellipse(w, h, 1980.0, 1200.0, 400.0, 300.0),
        ),
    ];
    println!();
    println!("| 2400x1600 image | hole px | method | PSNR (dB) | time (ms) |");
    println!("|---|---:|---|---:|---:|");
    for (name, mask) in &large_cases {
        for method in InpaintMethod::ALL {
            let t = Instant::now();
            let r = match method {
                InpaintMethod::Telea => inpaint_telea(&big, mask, &telea).unwrap(),
                InpaintMethod::PatchMatch => inpaint_patchmatch(&big, mask, &pm, 0).unwrap(),
            };
            let secs = t.elapsed().as_secs_f64();
            println!(
                "| {name} | {} | {method} | {:.2} | {:.0} |",
                mask.area(),
                psnr_in(&r, &big, mask),
                secs * 1000.0
            );
        }
    }
}
