//! `cielr edit --editor lama`: removal by LaMa (the tiny random fixture of cielr-diffusion,
//! `crates/cielr-diffusion/tests/fixtures/lama-tiny`), recolour by the classical editor, every
//! pixel outside the edit masks unchanged; and the error without `--lama-model`.

use std::path::{Path, PathBuf};
use std::process::Command;

use cielr::core::io::load_rgb;
use cielr::core::{CocoRle, Mask};

fn cielr() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cielr"));
    c.env_remove("CIELR_LLM");
    c
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn asset(name: &str) -> PathBuf {
    root().join("assets").join(name)
}

const INSTRUCTION: &str = "What here is used for stirring? Remove it, then make the cup blue.";

fn edit(output: &Path, extra: &[&std::ffi::OsStr]) -> std::process::Output {
    cielr()
        .arg("edit")
        .arg(asset("coffee.png"))
        .arg(INSTRUCTION)
        .arg("--scene")
        .arg(asset("coffee.ssr.json"))
        .arg("--llm")
        .arg(format!(
            "scripted:{}",
            asset("coffee.answers.json").display()
        ))
        .arg("-o")
        .arg(output)
        .arg("--editor")
        .arg("lama")
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn lama_removes_inside_the_mask_only() {
    let dir = std::env::temp_dir().join(format!("cielr-cli-lama-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let output = dir.join("coffee-lama.png");
    let model = root().join("crates/cielr-diffusion/tests/fixtures/lama-tiny");
    let out = edit(&output, &["--lama-model".as_ref(), model.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("loading LaMa"), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("coffee-lama.report.json")).unwrap(),
    )
    .unwrap();
    let editor = report["components"]["editor"].as_str().unwrap_or_default();
    assert!(editor.contains("lama"), "{editor}");
    let original = load_rgb(&asset("coffee.png")).unwrap();
    let edited = load_rgb(&output).unwrap();
    let (w, h) = original.dimensions();
    let masks = report["edit_masks"].as_array().unwrap();
    assert_eq!(masks.len(), 2);
    let rle: CocoRle = serde_json::from_value(masks[0]["mask"].clone()).unwrap();
    let removed = Mask::from_coco(&rle).unwrap();
    let mut union = Mask::new(w, h).unwrap();
    for m in masks {
        let rle: CocoRle = serde_json::from_value(m["mask"].clone()).unwrap();
        union = union.union(&Mask::from_coco(&rle).unwrap()).unwrap();
    }
    let mut changed_removed = 0u64;
    for (x, y, p) in edited.enumerate_pixels() {
        if !union.get(x, y) {
            assert_eq!(p, original.get_pixel(x, y), "({x}, {y}) outside the masks");
        } else if removed.get(x, y) {
            changed_removed += (p != original.get_pixel(x, y)) as u64;
        }
    }
    assert!(
        changed_removed > removed.area() / 2,
        "LaMa changed {changed_removed} of {} pixels",
        removed.area()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn lama_without_its_model_says_what_to_pass() {
    let out = edit(Path::new("/tmp/cielr-lama-never-written.png"), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--lama-model") && err.contains("convert_checkpoint.py"),
        "{err}"
    );
}
