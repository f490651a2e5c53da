//! `cielr edit --editor sd15` with the tiny random inpainting fixture of cielr-diffusion:
//! `--samples N` (files, per-sample seeds in the report, outside pixels kept in every sample),
//! per-step denoising progress on stderr, and removal routed to LaMa when `--lama-model` is
//! given (else to the classical inpainter), never to Stable Diffusion.

use std::path::{Path, PathBuf};
use std::process::Command;

use cielr::core::io::load_rgb;
use cielr::core::{CocoRle, Mask};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn asset(name: &str) -> PathBuf {
    root().join("assets").join(name)
}

fn fixture(name: &str) -> PathBuf {
    root()
        .join("crates/cielr-diffusion/tests/fixtures")
        .join(name)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cielr-sd-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn cielr() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cielr"));
    c.env_remove("CIELR_LLM");
    c
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn samples_get_their_own_seeds_files_and_progress() {
    let dir = scratch("samples");
    let answers = dir.join("answers.json");
    std::fs::write(
        &answers,
        r#"[{"step":"multi_step","answer":"no"},{"step":"classify","answer":"replace"},
            {"step":"judge","answer":"yes"},{"step":"choose_targets","answer":"{\"targets\": [2]}"},
            {"step":"edit_prompt","answer":"{\"prompt\": \"a fork\"}"}]"#,
    )
    .unwrap();
    let out = cielr()
        .arg("edit")
        .arg(asset("coffee.png"))
        .arg("Replace the spoon with a fork")
        .arg("--scene")
        .arg(asset("coffee.ssr.json"))
        .arg("--llm")
        .arg(format!("scripted:{}", answers.display()))
        .args(["--editor", "sd15", "--steps", "2", "--sd-size", "64"])
        .args(["--samples", "3", "--seed", "5", "--sd-model"])
        .arg(fixture("sd-inpaint-tiny"))
        .arg("-o")
        .arg(dir.join("out.png"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Two steps per sample, three samples.
    assert_eq!(stderr.matches("denoising step 2/2").count(), 3, "{stderr}");
    assert!(
        stderr.contains("denoising step 1/2") && stderr.contains("ETA"),
        "{stderr}"
    );

    let report = report(&dir.join("out.report.json"));
    let samples = report["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 3);
    let rle: CocoRle = serde_json::from_value(report["edit_masks"][0]["mask"].clone()).unwrap();
    let mask = Mask::from_coco(&rle).unwrap();
    let original = load_rgb(&asset("coffee.png")).unwrap();
    let mut images = Vec::new();
    for (j, s) in samples.iter().enumerate() {
        assert_eq!(s["sample"], j);
        assert_eq!(s["seeds"], serde_json::json!([5 + j]));
        let expected = if j == 0 {
            dir.join("out.png")
        } else {
            dir.join(format!("out.{j}.png"))
        };
        assert_eq!(
            s["output"].as_str().unwrap(),
            expected.display().to_string()
        );
        let image = load_rgb(&expected).unwrap();
        for (x, y, p) in image.enumerate_pixels() {
            if !mask.get(x, y) {
                assert_eq!(
                    p,
                    original.get_pixel(x, y),
                    "sample {j}: ({x}, {y}) changed"
                );
            }
        }
        images.push(image);
    }
    // Different seeds, different pixels inside the mask.
    assert_ne!(images[0], images[1]);
    assert_ne!(images[1], images[2]);
    std::fs::remove_dir_all(&dir).unwrap();
}

const REMOVE_THEN_RECOLOR: &str =
    "What here is used for stirring? Remove it, then make the cup blue.";

fn remove_with_sd(output: &Path, extra: &[&std::ffi::OsStr]) -> std::process::Output {
    cielr()
        .arg("edit")
        .arg(asset("coffee.png"))
        .arg(REMOVE_THEN_RECOLOR)
        .arg("--scene")
        .arg(asset("coffee.ssr.json"))
        .arg("--llm")
        .arg(format!(
            "scripted:{}",
            asset("coffee.answers.json").display()
        ))
        .args([
            "--editor",
            "sd2",
            "--steps",
            "1",
            "--sd-size",
            "64",
            "--sd-model",
        ])
        .arg(fixture("sd-inpaint-tiny"))
        .arg("-o")
        .arg(output)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn removal_goes_to_lama_or_the_classical_inpainter_never_to_sd() {
    let dir = scratch("remove");
    let out = remove_with_sd(
        &dir.join("lama.png"),
        &["--lama-model".as_ref(), fixture("lama-tiny").as_os_str()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("loading LaMa"), "{stderr}");
    assert!(!stderr.contains("denoising step"), "SD ran: {stderr}");
    let editor = report(&dir.join("lama.report.json"))["components"]["editor"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        editor.contains("remove=") && editor.to_lowercase().contains("lama"),
        "{editor}"
    );

    let out = remove_with_sd(&dir.join("classical.png"), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("loading LaMa") && !stderr.contains("denoising step"),
        "{stderr}"
    );
    let editor = report(&dir.join("classical.report.json"))["components"]["editor"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        editor.contains("remove=") && !editor.to_lowercase().contains("lama"),
        "{editor}"
    );
    // The removal paints something: the two removers differ inside the mask.
    assert_ne!(
        load_rgb(&dir.join("lama.png")).unwrap(),
        load_rgb(&dir.join("classical.png")).unwrap()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
