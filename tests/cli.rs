//! The `cielr` binary, run as a user would.

use std::path::{Path, PathBuf};
use std::process::Command;

use cielr::core::io::load_rgb;
use cielr::core::{CocoRle, Mask};

fn cielr() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cielr"));
    c.env_remove("CIELR_LLM");
    c
}

fn asset(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets")
        .join(name)
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cielr-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

const INSTRUCTION: &str = "What here is used for stirring? Remove it, then make the cup blue.";

#[test]
fn plan_prints_exactly_the_plan_json() {
    let out = cielr()
        .args(["plan", "--json", "--scene"])
        .arg(asset("coffee.ssr.json"))
        .arg(INSTRUCTION)
        .arg("--llm")
        .arg(format!(
            "scripted:{}",
            asset("coffee.answers.json").display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["steps"],
        serde_json::json!([
            {"op": "remove", "targets": [2], "prompt": "remove the spoon"},
            {"op": "recolor", "targets": [0], "prompt": "blue"}
        ])
    );
    assert_eq!(v["trace"].as_array().unwrap().len(), 9);
    assert_eq!(v.as_object().unwrap().len(), 2, "only steps and trace");
}

#[test]
fn missing_model_and_bad_inputs_tell_the_user_what_to_do() {
    let empty_home = scratch("home");
    std::fs::create_dir_all(&empty_home).unwrap();
    let out = cielr()
        .args(["plan", "--scene"])
        .arg(asset("coffee.ssr.json"))
        .arg("remove the cup")
        .env("HOME", &empty_home)
        .env("CIELR_SMOLLM2_GGUF", empty_home.join("absent.gguf"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no language model is configured") && err.contains("--llm"),
        "{err}"
    );

    let out = cielr()
        .args([
            "plan",
            "--scene",
            "/nonexistent/scene.json",
            "x",
            "--llm",
            "scripted:/dev/null",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("/nonexistent/scene.json"),
        "{err}"
    );

    let out = cielr()
        .arg("edit")
        .arg(asset("coffee.png"))
        .args([
            "remove the cup",
            "-o",
            "/tmp/x.png",
            "--llm",
            "scripted:/dev/null",
        ])
        .env("CIELR_CACHE", &empty_home)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--scene") && err.contains("tools/setup-models.sh"),
        "{err}"
    );

    let out = cielr()
        .args(["plan", "--scene"])
        .arg(asset("coffee.ssr.json"))
        .args(["x", "--llm", "telepathy:me"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown language model kind \"telepathy\""),
        "{err}"
    );
}

#[test]
fn edit_writes_image_report_and_overlay_and_keeps_outside_pixels() {
    let dir = scratch("edit");
    let output = dir.join("coffee-edited.png");
    let out = cielr()
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
        .arg(&output)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("[edit] step 1/2"),
        "progress on stderr: {stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("step 1: remove [2 (spoon)]"), "{stdout}");

    let original = load_rgb(&asset("coffee.png")).unwrap();
    let edited = load_rgb(&output).unwrap();
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("coffee-edited.report.json")).unwrap(),
    )
    .unwrap();
    assert!(dir.join("coffee-edited.overlay.png").exists());
    let mut union = Mask::new(600, 400).unwrap();
    for m in report["edit_masks"].as_array().unwrap() {
        let rle: CocoRle = serde_json::from_value(m["mask"].clone()).unwrap();
        union = union.union(&Mask::from_coco(&rle).unwrap()).unwrap();
    }
    let mut changed_inside = 0;
    for (x, y, p) in edited.enumerate_pixels() {
        if union.get(x, y) {
            changed_inside += (p != original.get_pixel(x, y)) as u32;
        } else {
            assert_eq!(
                p,
                original.get_pixel(x, y),
                "pixel ({x}, {y}) outside the edit masks changed"
            );
        }
    }
    assert!(
        changed_inside as u64 > union.area() / 2,
        "the edit changed {changed_inside} of {} pixels",
        union.area()
    );
    assert_eq!(report["plan"]["steps"][1]["prompt"], "blue");
    assert_eq!(report["components"]["language_model"], "scripted");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The default model (SmolLM2-135M-Instruct, fetched by tools/setup-models.sh) gives a valid
/// plan whatever it thinks: every answer is constrained and checked.
#[test]
fn the_default_local_model_always_yields_a_valid_plan() {
    let scene = cielr::core::Scene::load(&asset("coffee.ssr.json")).unwrap();
    for instruction in [
        "What here is used for stirring? Remove it.",
        "Make the saucer green, then remove the spoon.",
    ] {
        let out = cielr()
            .args(["plan", "--json", "--llm", "smollm2", "--scene"])
            .arg(asset("coffee.ssr.json"))
            .arg(instruction)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "needs tools/setup-models.sh; {stderr}"
        );
        let plan = cielr::core::Plan::from_json(&String::from_utf8_lossy(&out.stdout)).unwrap();
        assert!(!plan.steps.is_empty());
        for step in &plan.steps {
            step.validate(&scene).unwrap();
            assert!(!step.prompt.trim().is_empty());
        }
    }
}

#[test]
fn the_sd_editor_replaces_inside_the_mask_only_and_needs_its_model() {
    let dir = scratch("sd");
    std::fs::create_dir_all(&dir).unwrap();
    let answers = dir.join("answers.json");
    std::fs::write(
        &answers,
        r#"[{"step":"multi_step","answer":"no"},{"step":"classify","answer":"replace"},
            {"step":"judge","answer":"yes"},{"step":"choose_targets","answer":"{\"targets\": [2]}"},
            {"step":"edit_prompt","answer":"{\"prompt\": \"a fork\"}"}]"#,
    )
    .unwrap();
    let base = |c: &mut Command| {
        c.arg("edit")
            .arg(asset("coffee.png"))
            .arg("Replace the spoon with a fork")
            .arg("--scene")
            .arg(asset("coffee.ssr.json"))
            .arg("--llm")
            .arg(format!("scripted:{}", answers.display()))
            .args(["--editor", "sd15", "--steps", "2", "--sd-size", "64", "-o"])
            .arg(dir.join("out.png"));
    };
    let mut c = cielr();
    base(&mut c);
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--sd-model"), "{err}");

    let mut c = cielr();
    base(&mut c);
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/cielr-diffusion/tests/fixtures/sd-inpaint-tiny");
    let out = c.arg("--sd-model").arg(tiny).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out.report.json")).unwrap())
            .unwrap();
    assert!(report["components"]["editor"]
        .as_str()
        .unwrap()
        .contains("replace=stable diffusion inpainting (sd-inpaint-tiny)"));
    let rle: CocoRle = serde_json::from_value(report["edit_masks"][0]["mask"].clone()).unwrap();
    let mask = Mask::from_coco(&rle).unwrap();
    let (original, edited) = (
        load_rgb(&asset("coffee.png")).unwrap(),
        load_rgb(&dir.join("out.png")).unwrap(),
    );
    let mut changed = 0u64;
    for (x, y, p) in edited.enumerate_pixels() {
        if mask.get(x, y) {
            changed += (p != original.get_pixel(x, y)) as u64;
        } else {
            assert_eq!(
                p,
                original.get_pixel(x, y),
                "pixel ({x}, {y}) outside the mask changed"
            );
        }
    }
    assert!(changed > mask.area() / 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--llm-weights as-stored` holds SmolLM2's quantised matrices only as stored (a fifth of
/// the memory): the same logits as the default, so the same plan. Bad combinations are
/// refused with a message naming the fix.
#[test]
fn llm_weights_as_stored_plans_like_the_default() {
    let run = |extra: &[&str]| {
        let out = cielr()
            .args(["plan", "--json", "--llm", "smollm2", "--scene"])
            .arg(asset("coffee.ssr.json"))
            .arg("What here is used for stirring? Remove it.")
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            out.status.success(),
            "needs tools/setup-models.sh; {stderr}"
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let default = run(&[]);
    assert_eq!(run(&["--llm-weights", "as-stored"]), default);

    let folder = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/cielr-planner/tests/fixtures/llama-tiny-qwen2");
    let out = cielr()
        .args(["plan", "--scene"])
        .arg(asset("coffee.ssr.json"))
        .arg("x")
        .arg("--llm")
        .arg(&folder)
        .args(["--llm-weights", "as-stored"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("applies to GGUF files"), "{err}");
    let out = cielr()
        .args(["plan", "--llm-weights", "int3", "--scene"])
        .arg(asset("coffee.ssr.json"))
        .arg("x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("as-stored"));
}
