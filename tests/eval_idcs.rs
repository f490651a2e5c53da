//! IDCS in `cielr eval` with served models: a vision-language model and a judge, each a real
//! OpenAI-compatible HTTP server on 127.0.0.1 started by the test (tests/chat_server). The
//! VLM server checks that it received the prompt and exactly two PNG images no larger than
//! `--vlm-max-side`; the judge server checks it was given the VLM's description.

mod chat_server;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use chat_server::{base64_decode, image_urls, user_text, ChatServer, Reply};
use image::{GrayImage, ImageFormat, Luma};
use serde_json::Value;

const DESCRIPTION: &str = "The spoon on the saucer was removed.";

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cielr-eval-idcs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `n` samples of the coffee photo at quarter size with an elliptical mask, as a manifest.
fn build_set(dir: &Path, n: usize) -> PathBuf {
    let photo = image::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/coffee.png"))
        .unwrap()
        .to_rgb8();
    let img = image::imageops::thumbnail(&photo, 150, 100);
    img.save_with_format(dir.join("coffee.png"), ImageFormat::Png)
        .unwrap();
    let mask = GrayImage::from_fn(150, 100, |x, y| {
        let (dx, dy) = ((x as f64 - 80.0) / 15.0, (y as f64 - 45.0) / 10.0);
        Luma([if dx * dx + dy * dy <= 1.0 { 255 } else { 0 }])
    });
    mask.save_with_format(dir.join("mask.png"), ImageFormat::Png)
        .unwrap();
    let mut lines = vec![r#"{"manifest": {"name": "idcs-test", "size": 64}}"#.to_string()];
    for i in 0..n {
        lines.push(
            serde_json::json!({"id": format!("s{i}"), "image": "coffee.png",
                "instruction": "What is used for stirring? Remove it.", "mask": "mask.png",
                "target": "saucer", "op": "remove"})
            .to_string(),
        );
    }
    let path = dir.join("set.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

fn cielr(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cielr"))
        .args(args)
        .env_remove("CIELR_SHARD")
        .env_remove("CIELR_VLM")
        .env_remove("CIELR_VLM_MODEL")
        .env_remove("CIELR_JUDGE_LLM")
        .env_remove("CIELR_JUDGE_LLM_MODEL")
        .env_remove("OPENAI_API_KEY")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn records(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("samples.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The VLM: answers [`DESCRIPTION`] when the request holds the prompt and two PNG images
/// whose longer side is at most `max_side`, otherwise a 400 saying what was wrong.
fn vlm_handler(max_side: u32) -> chat_server::Handler {
    Arc::new(move |body: &Value| {
        let urls = image_urls(body);
        if urls.len() != 2 {
            return Reply::Raw(400, format!("{{\"error\": \"{} images\"}}", urls.len()));
        }
        for u in &urls {
            let Some(b64) = u.strip_prefix("data:image/png;base64,") else {
                return Reply::Raw(400, r#"{"error": "not a PNG data URL"}"#.into());
            };
            let Ok(img) =
                image::load_from_memory_with_format(&base64_decode(b64), ImageFormat::Png)
            else {
                return Reply::Raw(400, r#"{"error": "undecodable PNG"}"#.into());
            };
            if img.width().max(img.height()) > max_side {
                return Reply::Raw(400, r#"{"error": "image too large"}"#.into());
            }
        }
        if !user_text(body).contains("The first image is the original") {
            return Reply::Raw(400, r#"{"error": "no prompt"}"#.into());
        }
        Reply::Answer(DESCRIPTION.into())
    })
}

#[test]
fn idcs_from_served_vlm_and_judge_in_summary() {
    let dir = tempdir("ok");
    let manifest = build_set(&dir, 2);
    let vlm = ChatServer::start(0, vlm_handler(64));
    // The judge's scores, in request order: sample s0 runs 0 and 1, then s1's.
    let scores = ["3", "5", "2", "4"];
    let next = Arc::new(AtomicUsize::new(0));
    let judge = ChatServer::start(
        0,
        Arc::new(move |body: &Value| {
            let text = user_text(body);
            if !text.contains(&format!("Change made: {DESCRIPTION}"))
                || !text.contains("What is used for stirring?")
            {
                return Reply::Raw(400, r#"{"error": "no description"}"#.into());
            }
            let k = next.fetch_add(1, Ordering::SeqCst);
            Reply::Answer(scores.get(k).copied().unwrap_or("1").to_string())
        }),
    );
    let out = dir.join("out");
    let (ok, stderr) = cielr(&[
        "eval",
        "manifest",
        manifest.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--stage",
        "edit",
        "--editor",
        "classical",
        "--samples",
        "2",
        "--best-by",
        "idcs",
        "--vlm",
        &vlm.url(),
        "--vlm-model",
        "qwen2-vl-test",
        "--vlm-max-side",
        "64",
        "--judge-llm",
        &judge.url(),
        "--judge-llm-model",
        "judge-test",
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(vlm.count.load(Ordering::SeqCst), 4, "one VLM call per run");
    assert_eq!(
        judge.count.load(Ordering::SeqCst),
        4,
        "one judge call per run"
    );
    for r in vlm.requests.lock().unwrap().iter() {
        assert_eq!(r["model"], "qwen2-vl-test");
        assert_eq!(image_urls(r).len(), 2);
    }
    let s = read_json(&out.join("summary.json"));
    assert_eq!(
        (s["samples"].as_u64(), s["failed"].as_u64()),
        (Some(2), Some(0)),
        "{s}"
    );
    // Best of 2 by IDCS: (5 + 4) / 2; the first sample's: (3 + 2) / 2.
    assert_eq!(s["metrics"]["idcs"].as_f64(), Some(4.5), "{s}");
    assert_eq!(
        s["first_sample"]["metrics"]["idcs"].as_f64(),
        Some(2.5),
        "{s}"
    );
    assert_eq!(s["best_of_n"]["by"], "idcs");
    assert!(s["absent"].get("idcs").is_none(), "{s}");
    assert!(
        s["components"]["idcs"]
            .as_str()
            .unwrap()
            .contains("qwen2-vl-test"),
        "{s}"
    );
    let recs = records(&out);
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0]["best_run"], 1);
    assert_eq!(recs[1]["best_run"], 1);
    assert_eq!(recs[0]["runs"][0]["judge"]["description"], DESCRIPTION);
    assert_eq!(recs[0]["runs"][0]["judge"]["score"], 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_failing_vlm_is_a_per_sample_error_and_the_run_goes_on() {
    let dir = tempdir("bad");
    let manifest = build_set(&dir, 3);
    // Request 1: a good answer; 2: a 200 whose body is not JSON; 3 and later: 500 (retried
    // with backoff, then given up). The judge is the VLM server itself (no --judge-llm).
    let n = Arc::new(AtomicUsize::new(0));
    let good = vlm_handler(512);
    let vlm = ChatServer::start(
        0,
        Arc::new(move |body: &Value| {
            if body["messages"][0]["content"].is_string() && image_urls(body).is_empty() {
                return Reply::Answer("5".into()); // the judge's question
            }
            match n.fetch_add(1, Ordering::SeqCst) {
                0 => good(body),
                1 => Reply::Raw(200, "<html>proxy error</html>".into()),
                _ => Reply::Raw(
                    500,
                    r#"{"error": {"message": "CUDA out of memory"}}"#.into(),
                ),
            }
        }),
    );
    let out = dir.join("out");
    let (ok, stderr) = cielr(&[
        "eval",
        "manifest",
        manifest.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--stage",
        "edit",
        "--editor",
        "classical",
        "--vlm",
        &vlm.url(),
        "--vlm-model",
        "vlm",
    ]);
    assert!(ok, "{stderr}");
    let s = read_json(&out.join("summary.json"));
    // The samples themselves are fine: only their IDCS is missing.
    assert_eq!(
        (s["samples"].as_u64(), s["failed"].as_u64()),
        (Some(3), Some(0)),
        "{s}"
    );
    assert_eq!(s["metrics"]["idcs"].as_f64(), Some(5.0), "{s}");
    assert_eq!(s["counts"]["idcs"].as_u64(), Some(1), "{s}");
    assert_eq!(s["metric_errors"]["idcs"].as_u64(), Some(2), "{s}");
    assert!(s["metrics"]["psnr"].is_number(), "{s}");
    let recs = records(&out);
    assert_eq!(recs.len(), 3);
    let err = |k: usize| {
        recs[k]["runs"][0]["metric_errors"]["idcs"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert!(
        err(1).contains("not JSON") && err(1).contains("proxy error"),
        "{}",
        err(1)
    );
    assert!(
        err(2).contains("HTTP 500")
            && err(2).contains("CUDA out of memory")
            && err(2).contains("4 attempts"),
        "{}",
        err(2)
    );
    // 1 good + 1 garbage + 4 tries of the 500 + 1 judge question.
    assert_eq!(vlm.count.load(Ordering::SeqCst), 7);

    // Without --vlm, IDCS is absent with the reason; --best-by idcs is refused.
    let (ok, stderr) = cielr(&[
        "eval",
        "manifest",
        manifest.to_str().unwrap(),
        "--out",
        dir.join("out2").to_str().unwrap(),
        "--stage",
        "edit",
        "--editor",
        "classical",
        "--best-by",
        "idcs",
    ]);
    assert!(!ok && stderr.contains("--vlm"), "{stderr}");
    let (ok, stderr) = cielr(&[
        "eval",
        "manifest",
        manifest.to_str().unwrap(),
        "--out",
        dir.join("out3").to_str().unwrap(),
        "--stage",
        "edit",
        "--vlm",
        &vlm.url(),
    ]);
    assert!(!ok && stderr.contains("--vlm-model"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
