//! `cielr scene` (and `cielr plan --image` with the paper's builder), run as a user would.
//!
//! The paper's builder runs on the tiny committed checkpoints of `cielr-scene` (random
//! weights: the test checks that the SSR is written, valid and complete, not what it says).

mod chat_server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use chat_server::{base64_decode, image_urls, user_text, ChatServer, Reply};

use cielr::core::io::load_rgb;
use cielr::core::Scene;

fn cielr() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cielr"));
    c.env_remove("CIELR_LLM");
    c
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/cielr-scene/tests/fixtures")
        .join(name)
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cielr-cli-scene-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The tiny models, with settings that keep every mask and box of the random weights.
fn tiny_models(c: &mut Command) -> &mut Command {
    tiny_models_with(c, "sam-tiny")
}

/// [`tiny_models`] with the mask model of fixture `sam` (SAM or SAM 2.1).
fn tiny_models_with<'a>(c: &'a mut Command, sam: &str) -> &'a mut Command {
    c.arg("--owlv2")
        .arg(fixture("owlv2-tiny"))
        .arg("--sam")
        .arg(fixture(sam))
        .arg("--depth")
        .arg(fixture("depth-anything-tiny"))
        .args([
            "--points-per-side",
            "4",
            "--pred-iou-thresh",
            "0",
            "--stability-score-thresh",
            "0",
            "--crop-n-layers",
            "0",
            "--box-threshold",
            "0",
        ])
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn scene_with_the_papers_builder_writes_ssr_and_overlay() {
    let dir = scratch("paper");
    let image = fixture("sam-tiny/image.png");
    let (json, overlay) = (dir.join("s.json"), dir.join("o.png"));
    let mut c = cielr();
    c.arg("scene").arg(&image);
    tiny_models(&mut c)
        .args(["--queries", "cup, table"])
        .arg("--out")
        .arg(&json)
        .arg("--overlay")
        .arg(&overlay);
    let stdout = ok(&c.output().unwrap());
    assert!(stdout.starts_with("Image: 96 x 64 pixels"), "{stdout}");
    let scene = Scene::load(&json).unwrap();
    assert_eq!((scene.width, scene.height), (96, 64));
    assert_eq!(scene.queries, ["cup", "table"]);
    assert_eq!(scene.depth_source.as_deref(), Some("depth-anything-v2"));
    assert!(!scene.objects.is_empty());
    for (i, o) in scene.objects.iter().enumerate() {
        assert_eq!(o.id, i as u32);
        assert!(["cup", "table", "Unknown"].contains(&o.label.as_str()));
        assert!(o.mask.is_some() && o.depth.is_some());
        assert!(stdout.contains(&format!("id {i}: {}", o.label)), "{stdout}");
    }
    let drawn = load_rgb(&overlay).unwrap();
    assert_eq!(drawn.dimensions(), (96, 64));

    // A vocabulary file: no queries, so the file's labels are scanned (threshold 0 keeps
    // the best ones, at most 50).
    let vocab = dir.join("vocab.txt");
    std::fs::write(&vocab, "# mine\nlamp\nsofa_(couch)\n").unwrap();
    let mut c = cielr();
    c.arg("scene").arg(&image);
    tiny_models(&mut c)
        .arg("--vocab")
        .arg(&vocab)
        .args(["--scan-threshold", "0"])
        .arg("--out")
        .arg(&json);
    ok(&c.output().unwrap());
    let mut scanned = Scene::load(&json).unwrap().queries;
    scanned.sort();
    assert_eq!(scanned, ["lamp", "sofa"]);
}

/// `--sam` with a SAM 2.1 folder: the builder reads its config.json and runs the SAM 2.1
/// generator; a folder of another model is refused by name.
#[test]
fn scene_with_sam2_as_the_mask_model() {
    let dir = scratch("sam2");
    let image = fixture("sam2-tiny/image.png");
    let json = dir.join("s.json");
    let mut c = cielr();
    c.arg("scene").arg(&image);
    tiny_models_with(&mut c, "sam2-tiny")
        .args(["--queries", "cup, table"])
        .arg("--out")
        .arg(&json);
    let out = c.output().unwrap();
    let stdout = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("proposing masks (sam2-amg)"), "{stderr}");
    assert!(stdout.starts_with("Image: 96 x 64 pixels"), "{stdout}");
    let scene = Scene::load(&json).unwrap();
    assert_eq!((scene.width, scene.height), (96, 64));
    assert_eq!(scene.queries, ["cup", "table"]);
    assert!(!scene.objects.is_empty());
    for (i, o) in scene.objects.iter().enumerate() {
        assert_eq!(o.id, i as u32);
        assert!(["cup", "table", "Unknown"].contains(&o.label.as_str()));
        assert!(o.mask.as_ref().is_some_and(|m| m.area() > 0) && o.depth.is_some());
        assert!(stdout.contains(&format!("id {i}: {}", o.label)), "{stdout}");
    }

    let mut c = cielr();
    c.arg("scene").arg(&image);
    tiny_models_with(&mut c, "clip-tiny-gelu")
        .arg("--out")
        .arg(&json);
    let out = c.output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a SAM checkpoint"), "{stderr}");
}

#[test]
fn scene_needs_all_three_folders_and_explains_the_default() {
    let image = fixture("sam-tiny/image.png");
    let out = cielr()
        .arg("scene")
        .arg(&image)
        .arg("--owlv2")
        .arg(fixture("owlv2-tiny"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--owlv2 DIR --sam DIR --depth DIR"),
        "{err}"
    );

    // Without folders the default COCO detector is used; with an empty cache it says how
    // to get it.
    let empty = scratch("empty-cache");
    let out = cielr()
        .arg("scene")
        .arg(&image)
        .env("CIELR_CACHE", &empty)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("tools/setup-models.sh"),
        "{err}"
    );
}

/// The default builder on the coffee photo. Needs the COCO detector that
/// `tools/setup-models.sh` fetches (CI runs it before the tests); without it the test fails
/// and says what to run.
#[test]
fn scene_with_the_default_builder() {
    if let Err(e) =
        cielr::scene::model_cache::ModelCache::from_env().and_then(|c| c.centernet_json())
    {
        panic!("the COCO detector is not in the model cache ({e}): run tools/setup-models.sh");
    }
    let dir = scratch("default");
    let json = dir.join("coffee.json");
    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/coffee.png");
    let out = cielr()
        .arg("scene")
        .arg(&image)
        .args(["--queries", "cup"])
        .arg("--out")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = ok(&out);
    let scene = Scene::load(&json).unwrap();
    assert_eq!(scene.queries, ["cup"]);
    assert!(scene.objects.iter().all(|o| o.label == "cup"));
    assert!(stdout.starts_with("Image: "), "{stdout}");
}

#[test]
fn plan_builds_and_refines_the_ssr_from_the_image() {
    let dir = scratch("plan");
    let answers = dir.join("answers.json");
    std::fs::write(
        &answers,
        serde_json::json!([
            {"step": "multi_step", "answer": "no"},
            {"step": "classify", "answer": "remove"},
            {"step": "judge", "answer": "no"},
            {"step": "missing", "answer": "semantic"},
            {"step": "new_labels", "answer": "{\"labels\": [\"lamp\"]}"},
            {"step": "choose_targets", "answer": "{\"targets\": [0]}"}
        ])
        .to_string(),
    )
    .unwrap();
    let mut c = cielr();
    c.args(["plan", "--json", "--image"])
        .arg(fixture("sam-tiny/image.png"));
    tiny_models(&mut c)
        .args(["--query", "cup", "Remove the lamp."])
        .arg("--llm")
        .arg(format!("scripted:{}", answers.display()));
    let out = c.output().unwrap();
    let stdout = ok(&out);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["steps"][0]["op"], "remove");
    assert_eq!(v["steps"][0]["targets"], serde_json::json!([0]));
    let trace = v["trace"].to_string();
    assert!(trace.contains("lamp"), "{trace}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("for 2 queries"),
        "the refinement searched cup + lamp: {err}"
    );
}

#[test]
fn edit_uses_the_papers_builder_when_given_the_folders() {
    let dir = scratch("edit");
    let answers = dir.join("answers.json");
    std::fs::write(
        &answers,
        serde_json::json!([
            {"step": "multi_step", "answer": "no"},
            {"step": "classify", "answer": "remove"},
            {"step": "judge", "answer": "yes"},
            {"step": "choose_targets", "answer": "{\"targets\": [0]}"}
        ])
        .to_string(),
    )
    .unwrap();
    let output = dir.join("e.png");
    let mut c = cielr();
    c.arg("edit")
        .arg(fixture("sam-tiny/image.png"))
        .arg("Remove the cup.")
        .arg("-o")
        .arg(&output)
        .args(["--dilate", "0", "--query", "cup"]);
    tiny_models(&mut c)
        .arg("--llm")
        .arg(format!("scripted:{}", answers.display()));
    let stdout = ok(&c.output().unwrap());
    assert!(stdout.contains("remove [0 (cup)]"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("e.report.json")).unwrap()).unwrap();
    assert!(
        report
            .to_string()
            .contains("paper-ssr(owlv2 + sam-amg + depth-anything-v2)"),
        "{report}"
    );
    assert_eq!(load_rgb(&output).unwrap().dimensions(), (96, 64));
}

/// Bad builder settings are a clear error (the builder now checks them before reading the
/// checkpoints).
#[test]
fn scene_rejects_builder_settings_that_cannot_run() {
    let out = cielr()
        .arg("scene")
        .arg(fixture("sam-tiny/image.png"))
        .arg("--owlv2")
        .arg(fixture("owlv2-tiny"))
        .arg("--sam")
        .arg(fixture("sam-tiny"))
        .arg("--depth")
        .arg(fixture("depth-anything-tiny"))
        .args(["--box-threshold", "1.5", "--queries", "cup"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("box_threshold must be in [0, 1)"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `--objects-from vlm`: a served vision-language model (a real HTTP server on 127.0.0.1
/// started here) lists the objects; its fenced, wrapped answer with a repeat becomes the
/// SSR's queries. A garbage answer fails before any model is loaded, and the server's
/// address is required.
#[test]
fn scene_with_objects_listed_by_a_served_vlm() {
    let dir = scratch("vlm");
    let image = fixture("sam-tiny/image.png");
    let json = dir.join("s.json");
    let answer = "Sure:\n```json\n{\"objects\": [\"Left cup\", \"right cup\", \"table\", \"left cup\"]}\n```";
    let server = ChatServer::start(
        0,
        Arc::new(move |body| {
            let urls = image_urls(body);
            let prompt = user_text(body);
            if urls.len() != 1 || !prompt.contains("JSON array") {
                return Reply::Raw(400, format!("bad request: {} images", urls.len()));
            }
            let png = base64_decode(urls[0].trim_start_matches("data:image/png;base64,"));
            let sent = image::load_from_memory(&png).unwrap();
            if (sent.width(), sent.height()) != (96, 64) {
                return Reply::Raw(400, "wrong image size".into());
            }
            if body["model"] == "garbage-vl" {
                return Reply::Answer("I see a cup and a table.".into());
            }
            Reply::Answer(answer.into())
        }),
    );
    let vlm = |c: &mut Command, model: &str| {
        c.env_remove("CIELR_VLM")
            .env_remove("CIELR_VLM_MODEL")
            .args(["--objects-from", "vlm", "--vlm"])
            .arg(server.url())
            .args(["--vlm-model", model]);
    };
    let mut c = cielr();
    c.arg("scene").arg(&image);
    tiny_models(&mut c).arg("--out").arg(&json);
    vlm(&mut c, "tiny-vl");
    let out = c.output().unwrap();
    let stdout = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("3 objects listed by vlm(tiny-vl at http://127.0.0.1:"),
        "{stderr}"
    );
    let scene = Scene::load(&json).unwrap();
    assert_eq!(scene.queries, ["left cup", "right cup", "table"]);
    for (i, o) in scene.objects.iter().enumerate() {
        assert!(["left cup", "right cup", "table", "Unknown"].contains(&o.label.as_str()));
        assert!(stdout.contains(&format!("id {i}: {}", o.label)), "{stdout}");
    }
    assert_eq!(server.requests.lock().unwrap().len(), 1);

    // Garbage: a clear error, and no model is loaded.
    let mut c = cielr();
    c.arg("scene").arg(&image);
    tiny_models(&mut c).arg("--out").arg(dir.join("g.json"));
    vlm(&mut c, "garbage-vl");
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("object list is not JSON") && !stderr.contains("loading OWLv2"),
        "{stderr}"
    );
    assert!(!dir.join("g.json").exists());

    // No server given.
    let out = cielr()
        .env_remove("CIELR_VLM")
        .arg("scene")
        .arg(&image)
        .args(["--objects-from", "vlm"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--vlm <url> --vlm-model <name>"),
        "{stderr}"
    );
}

/// `--device cpu` builds the paper's SSR builder (tiny OWLv2, SAM, Depth Anything) through the
/// device dispatch: the same SSR as without the option.
#[test]
fn scene_on_device_cpu_is_the_same_as_without_the_option() {
    let dir = scratch("device-cpu");
    let run = |name: &str, device: Option<&str>| {
        let json = dir.join(format!("{name}.json"));
        let mut c = cielr();
        c.arg("scene").arg(fixture("sam-tiny/image.png"));
        tiny_models(&mut c)
            .args(["--queries", "cup,table", "--out"])
            .arg(&json);
        if let Some(d) = device {
            c.args(["--device", d]);
        }
        ok(&c.output().unwrap());
        std::fs::read_to_string(&json).unwrap()
    };
    let plain = run("plain", None);
    let cpu = run("cpu", Some("cpu"));
    assert_eq!(plain, cpu);
    let scene = Scene::from_json(&cpu).unwrap();
    assert!(!scene.objects.is_empty(), "{cpu}");
}

/// `--precision bf16|f16`: the paper's builder (tiny OWLv2, SAM, Depth Anything) loads and
/// runs in half on the CPU and writes a valid SSR with objects.
#[test]
fn scene_in_half_precision() {
    let dir = scratch("half");
    for precision in ["bf16", "f16"] {
        let json = dir.join(format!("{precision}.json"));
        let mut c = cielr();
        c.arg("scene").arg(fixture("sam-tiny/image.png"));
        tiny_models(&mut c)
            .args(["--queries", "cup,table", "--precision", precision, "--out"])
            .arg(&json);
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        ok(&out);
        assert!(err.contains(&format!("run in {precision}")), "{err}");
        let scene = Scene::load(&json).unwrap();
        scene.validate().unwrap();
        assert!(!scene.objects.is_empty(), "{precision}");
        assert!(scene
            .objects
            .iter()
            .all(|o| o.mask.is_some() && o.depth.is_some()));
    }
}
