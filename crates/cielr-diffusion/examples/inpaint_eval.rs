//! Measures the inpainters on real photos with synthetic holes (the numbers in
//! `docs/classical-editing.md`).
//!
//! ```text
//! cargo run -p cielr-diffusion --example inpaint_eval -- <dir with chelsea.png, coffee.png,
//!     astronaut.png> [output dir for the filled images]
//! ```
//!
//! For each image and hole it prints PSNR inside the hole against the true pixels, the ratio
//! of mean gradient magnitude (luma) inside the hole to the true pixels' (1 = as much texture
//! as the photo, below 1 = smoother), and the time. Build the crate optimised for timings, e.g.
//! `--release` or `--config 'profile.dev.package.cielr-diffusion.opt-level=3'`.

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

/// Baseline: every hole pixel set to the mean colour of the known pixels within 3 px of it.
fn mean_fill(img: &RgbImage, m: &Mask) -> RgbImage {
    let ring = m.dilate(3.0).difference(m).unwrap();
    let mut acc = [0f64; 3];
    let mut n = 0f64;
    for (x, y) in ring.pixels() {
        for k in 0..3 {
            acc[k] += img.get_pixel(x, y).0[k] as f64;
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
                    "blob r35, studio wall",
                    "smooth",
                    blob(w, h, 300.0, 60.0, 35.0),
                );
                add(
                    "box 60x70, flag stripes at border",
                    "textured",
                    rect(w, h, 0.0, 250.0, 60.0, 320.0),
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
    if let Some(v) = env("PM_SEARCH") {
        pm.search_iterations = v;
    }
    println!(
        "| image | hole | kind | hole px | method | PSNR in hole (dB) | gradient ratio | time (ms) |"
    );
    println!("|---|---|---|---:|---|---:|---:|---:|");
    let mut totals: Vec<(String, f64, f64, f64, usize)> = Vec::new();
    for case in cases(&images) {
        let img = &images.iter().find(|(n, _)| *n == case.image).unwrap().1;
        let truth_grad = mean_gradient(img, &case.mask);
        let mut runs: Vec<(String, RgbImage, f64)> = Vec::new();
        let t = Instant::now();
        let r = mean_fill(img, &case.mask);
        runs.push(("mean colour".into(), r, t.elapsed().as_secs_f64()));
        let t = Instant::now();
        let r = inpaint_telea(img, &case.mask, &telea).unwrap();
        runs.push((
            InpaintMethod::Telea.to_string(),
            r,
            t.elapsed().as_secs_f64(),
        ));
        let t = Instant::now();
        let r = inpaint_telea(img, &case.mask, &telea_nograd).unwrap();
        runs.push((
            "telea (no gradient term)".into(),
            r,
            t.elapsed().as_secs_f64(),
        ));
        for seed in [0u64, 1] {
            let t = Instant::now();
            let r = inpaint_patchmatch(img, &case.mask, &pm, seed).unwrap();
            runs.push((
                format!("patchmatch seed {seed}"),
                r,
                t.elapsed().as_secs_f64(),
            ));
        }
        for (method, result, secs) in &runs {
            let psnr = psnr_in(result, img, &case.mask);
            let gr = mean_gradient(result, &case.mask) / truth_grad;
            println!(
                "| {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.0} |",
                case.image,
                case.name,
                case.kind,
                case.mask.area(),
                method,
                psnr,
                gr,
                secs * 1000.0
            );
            match totals.iter_mut().find(|t| &t.0 == method) {
                Some(t) => {
                    t.1 += psnr;
                    t.2 += gr;
                    t.3 += secs;
                    t.4 += 1;
                }
                None => totals.push((method.clone(), psnr, gr, *secs, 1)),
            }
            if let Some(d) = &out_dir {
                let file = format!(
                    "{}-{}-{}.png",
                    case.image,
                    case.name.split(',').next().unwrap().replace(' ', "_"),
                    method.replace(' ', "_")
                );
                result.save(d.join(file)).expect("save");
            }
        }
    }
    println!();
    println!("| method | mean PSNR (dB) | mean gradient ratio | mean time (ms) |");
    println!("|---|---:|---:|---:|");
    for (m, p, g, s, n) in totals {
        let n = n as f64;
        println!(
            "| {m} | {:.2} | {:.2} | {:.0} |",
            p / n,
            g / n,
            s / n * 1000.0
        );
    }
}
