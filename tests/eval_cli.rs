//! `cielr eval` end to end on a small CIEBench-like set built from the repository's photos
//! with hand-made masks: the edit stage with oracle masks and the classical editor, resume,
//! and a two-shard split merged by `cielr eval report`.

use std::path::{Path, PathBuf};
use std::process::Command;

use image::{GrayImage, ImageFormat, Luma};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cielr-eval-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// An elliptical mask inside `[x0, x1) x [y0, y1)`.
fn ellipse(w: u32, h: u32, (x0, y0, x1, y1): (u32, u32, u32, u32)) -> GrayImage {
    let (cx, cy) = ((x0 + x1) as f64 / 2.0, (y0 + y1) as f64 / 2.0);
    let (rx, ry) = ((x1 - x0) as f64 / 2.0, (y1 - y0) as f64 / 2.0);
    GrayImage::from_fn(w, h, |x, y| {
        let (dx, dy) = ((x as f64 + 0.5 - cx) / rx, (y as f64 + 0.5 - cy) / ry);
        Luma([if dx * dx + dy * dy <= 1.0 { 255 } else { 0 }])
    })
}

/// Three samples (the photos at half size) in CIEBench's layout: JPEG bytes in `.png` files, greyscale JPEG masks, one
/// mask at twice its image's size, a "notes" field.
fn build_set(dir: &Path) {
    let photos = [
        (root().join("assets/coffee.png"), (125, 60, 165, 100)),
        (
            root().join("crates/cielr-scene/tests/fixtures/images/chelsea.png"),
            (30, 100, 60, 125),
        ),
        (
            root().join("crates/cielr-scene/tests/fixtures/images/astronaut-256.png"),
            (75, 85, 95, 105),
        ),
    ];
    for (i, (path, bbox)) in photos.iter().enumerate() {
        // Half size keeps the debug-build test fast.
        let full = image::open(path).unwrap().to_rgb8();
        let img = image::imageops::thumbnail(&full, full.width() / 2, full.height() / 2);
        let (w, h) = img.dimensions();
        std::fs::create_dir_all(dir.join(i.to_string())).unwrap();
        img.save_with_format(dir.join(format!("{i}/{i}.png")), ImageFormat::Jpeg)
            .unwrap();
        let mask = if i == 2 {
            let (x0, y0, x1, y1) = *bbox;
            ellipse(2 * w, 2 * h, (2 * x0, 2 * y0, 2 * x1, 2 * y1))
        } else {
            ellipse(w, h, *bbox)
        };
        mask.save_with_format(dir.join(format!("{i}/{i}_mask.png")), ImageFormat::Jpeg)
            .unwrap();
    }
    let index = serde_json::json!({
        "0": {"image path": "0/0.png", "instruction": "What here holds the coffee? Remove it.", "mask path": ["0/0_mask.png"], "CLIP": ["table"]},
        "1": {"image path": "1/1.png", "instruction": "What is the cat lying on? Remove the patch of it in front.", "mask path": ["1/1_mask.png"], "CLIP": ["background"], "notes": "hand-made mask"},
        "2": {"image path": "2/2.png", "instruction": "Which part of the suit is a flag? Recolour it blue.", "mask path": ["2/2_mask.png"], "CLIP": ["blue"]},
    });
    std::fs::write(dir.join("benchmark.json"), index.to_string()).unwrap();
}

fn cielr(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cielr"))
        .args(args)
        .env_remove("CIELR_SHARD")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn summary(out: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
}

fn ids(out: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(out.join("samples.jsonl")).unwrap();
    let mut ids: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    ids.sort();
    ids
}

/// A fresh folder `name` with the three-sample set in `bench/`: (folder, set, `out/`).
fn new_set(name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = tempdir(name);
    let data = dir.join("bench");
    build_set(&data);
    let out = dir.join("out");
    (dir, data, out)
}

/// `cielr eval ciebench <set>` at the edit stage with the benchmark's masks and the classical
/// editor (no model).
fn classical_edit_stage(set: &str) -> [&str; 8] {
    [
        "eval",
        "ciebench",
        set,
        "--stage",
        "edit",
        "--oracle-masks",
        "--editor",
        "classical",
    ]
}

#[test]
fn eval_runs_resumes_and_shards() {
    let (dir, data, out) = new_set("run");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let base = classical_edit_stage(d);

    let (ok, stdout, stderr) = cielr(&[&base[..], &["--out", o]].concat());
    assert!(ok, "{stderr}");
    for f in [
        "summary.json",
        "summary.md",
        "samples.csv",
        "samples.jsonl",
        "index.html",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let s = summary(&out);
    assert_eq!(s["dataset"], "ciebench");
    assert_eq!(
        (s["samples"].as_u64(), s["failed"].as_u64()),
        (Some(3), Some(0)),
        "{s}"
    );
    for m in [
        "psnr",
        "ssim",
        "mse",
        "psnr_clean",
        "ssim_clean",
        "mse_clean",
    ] {
        assert!(s["metrics"][m].is_number(), "{m} missing: {s}");
    }
    // Pixels outside the dilated mask are kept (only the dilation ring and the protocol's
    // resize change them), so both PSNRs are high.
    assert!(s["metrics"]["psnr_clean"].as_f64().unwrap() > 25.0, "{s}");
    assert!(s["metrics"]["psnr"].as_f64().unwrap() > 25.0, "{s}");
    assert!(s["absent"]["idcs"].as_str().unwrap().contains("--vlm"));
    assert!(s["absent"]["grounding_iou"].is_string());
    assert_eq!(s["with_warnings"], 1, "the oversized mask is reported");
    assert!(stdout.contains("| psnr |"), "{stdout}");
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    for key in ["input", "gt", "region", "output"] {
        assert!(html.contains(&format!("images/0_{key}.png")), "{key}");
        assert!(out.join(format!("images/0_{key}.png")).is_file());
    }
    assert!(html.contains("<svg") && html.contains("resized to the image"));

    // Resume: a second run does no work and keeps one line per sample.
    let (ok, _, stderr) = cielr(&[&base[..], &["--out", o]].concat());
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("3 samples, 3 already done") && stderr.contains("ran 0 samples"),
        "{stderr}"
    );
    assert_eq!(ids(&out), ["0", "1", "2"]);

    // Two shards cover every sample once; `eval report` merges them.
    let mut shard_ids = Vec::new();
    let mut outs = Vec::new();
    for i in 0..2 {
        let so = dir.join(format!("shard{i}"));
        let shard = format!("{i}/2");
        let (ok, _, stderr) = cielr(
            &[
                &base[..],
                &["--out", so.to_str().unwrap(), "--shard", &shard],
            ]
            .concat(),
        );
        assert!(ok, "{stderr}");
        shard_ids.extend(ids(&so));
        outs.push(so);
    }
    shard_ids.sort();
    assert_eq!(shard_ids, ["0", "1", "2"]);
    let merged = dir.join("merged");
    let (ok, _, stderr) = cielr(&[
        "eval",
        "report",
        outs[0].to_str().unwrap(),
        outs[1].to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let m = summary(&merged);
    assert_eq!(
        (m["samples"].as_u64(), m["failed"].as_u64()),
        (Some(3), Some(0))
    );
    // The merged numbers equal the single run's (same seeds, same editor).
    assert_eq!(m["metrics"], s["metrics"]);

    // Errors say what to do.
    let (ok, _, stderr) = cielr(&["eval", "ciebench", o, "--out", o]);
    assert!(!ok && stderr.contains("benchmark.json"), "{stderr}");
    let (ok, _, stderr) = cielr(&[&base[..], &["--out", o, "--shard", "2/2"]].concat());
    assert!(!ok && stderr.contains("0 <= i < n"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--precision` with `--device cpu` would put LPIPS and CLIPScore in half too: refused
/// before any model loads. A half precision is one of a run's settings, so resuming in f32
/// is refused.
#[test]
fn eval_keeps_metrics_in_f32_and_records_a_half_precision() {
    let (_, data, out) = new_set("precision");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let base = [&classical_edit_stage(d)[..], &["--out", o]].concat();
    let (ok, _, stderr) =
        cielr(&[&base[..], &["--precision", "bf16", "--lpips-weights", "x"]].concat());
    assert!(
        !ok && stderr.contains("the metrics are defined in f32"),
        "{stderr}"
    );
    assert!(
        stderr.contains("--device cuda --precision bf16"),
        "{stderr}"
    );
    assert!(!out.join("run.json").exists());

    let (ok, _, stderr) = cielr(&[&base[..], &["--precision", "bf16"]].concat());
    assert!(ok, "{stderr}");
    let run = std::fs::read_to_string(out.join("run.json")).unwrap();
    assert!(
        run.contains("\"precision\"") && run.contains("bf16"),
        "{run}"
    );
    let (ok, _, stderr) = cielr(&base);
    assert!(
        !ok && stderr.contains("holds a run with other settings"),
        "{stderr}"
    );
}
