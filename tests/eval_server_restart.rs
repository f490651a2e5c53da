//! An evaluation run whose planner is a served model (`--llm http://127.0.0.1:PORT`) survives
//! the server going away midway (issue 9). The server is a real OpenAI-compatible HTTP server
//! on 127.0.0.1 (tests/chat_server) answering the reasoning steps from their prompts; the
//! test kills it in the middle of a request (the connection is dropped without an answer and
//! the port closes) and starts it again on the same port.
//!
//! - A short outage is ridden out by the client's retries with backoff: every sample
//!   succeeds, none is run twice.
//! - An outage longer than the retry budget fails the samples it hits, each with a clear
//!   error, and keeps the samples already finished; after the restart `--retry-failed`
//!   finishes exactly the failed ones. `samples.jsonl` ends with every sample exactly once.

mod chat_server;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_server::{user_text, ChatServer, Handler, Reply};
use image::{GrayImage, ImageFormat, Luma};
use serde_json::Value;

/// Requests the planner makes per sample: multi_step, classify, judge, choose_targets.
const PER_SAMPLE: usize = 4;

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cielr-eval-restart-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `n` samples over the coffee photo and its hand-made SSR (so no detector is needed).
fn build_set(dir: &Path, n: usize) -> PathBuf {
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    std::fs::copy(assets.join("coffee.png"), dir.join("coffee.png")).unwrap();
    std::fs::copy(assets.join("coffee.ssr.json"), dir.join("coffee.ssr.json")).unwrap();
    // Roughly the spoon's box.
    let mask = GrayImage::from_fn(600, 400, |x, y| {
        Luma([if (330..420).contains(&x) && (70..320).contains(&y) {
            255
        } else {
            0
        }])
    });
    mask.save_with_format(dir.join("mask.png"), ImageFormat::Png)
        .unwrap();
    let mut lines = vec![r#"{"manifest": {"name": "restart-test"}}"#.to_string()];
    for i in 0..n {
        lines.push(
            serde_json::json!({"id": format!("s{i}"), "image": "coffee.png",
                "instruction": "What here is used for stirring? Remove it.", "mask": "mask.png",
                "target": "saucer", "op": "remove", "scene": "coffee.ssr.json"})
            .to_string(),
        );
    }
    let path = dir.join("set.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

/// The planner's answers, chosen from the question (the prompts of cielr-core's
/// `prompts` module). Request number `kill_at` (1-based) is dropped unanswered and reported
/// on `killed`, so that the test can take the server down.
fn planner(kill_at: usize, killed: mpsc::Sender<()>) -> (Handler, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let seen2 = seen.clone();
    let killed = Mutex::new(killed);
    let h: Handler = Arc::new(move |body: &Value| {
        if seen2.fetch_add(1, Ordering::SeqCst) + 1 == kill_at {
            let _ = killed.lock().unwrap().send(());
            return Reply::Drop;
        }
        let q = user_text(body);
        let a = if q.contains("two or more separate edits") {
            "no"
        } else if q.contains("Which kind of edit is this?") {
            "remove"
        } else if q.contains("can you tell which") {
            "yes"
        } else if q.contains("{\"targets\": [ids]}") {
            "{\"targets\": [2]}"
        } else {
            return Reply::Raw(400, r#"{"error": "unexpected question"}"#.into());
        };
        Reply::Answer(a.into())
    });
    (h, seen)
}

fn eval_cmd(manifest: &Path, out: &Path, url: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cielr"));
    c.args(["eval", "manifest"])
        .arg(manifest)
        .arg("--out")
        .arg(out)
        .args([
            "--stage",
            "plan",
            "--llm",
            url,
            "--llm-model",
            "planner-test",
        ])
        .args(extra)
        .env_remove("CIELR_SHARD")
        .env_remove("OPENAI_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn records(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("samples.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ids(recs: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = recs
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn summary(out: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn a_short_outage_is_ridden_out_by_retries() {
    let dir = tempdir("short");
    let manifest = build_set(&dir, 4);
    let (tx, rx) = mpsc::channel();
    // Killed in the middle of sample s1 (its second question).
    let (handler, _) = planner(PER_SAMPLE + 2, tx);
    let mut server = ChatServer::start(0, handler.clone());
    let port = server.port;
    let out = dir.join("out");
    let child = eval_cmd(&manifest, &out, &server.url(), &[])
        .spawn()
        .unwrap();
    rx.recv_timeout(Duration::from_secs(120))
        .expect("the run never reached the request the server dies on");
    let (log, count) = (server.requests.clone(), server.count.clone());
    server.stop();
    // Down for a moment (connections are refused), well within the client's retry budget
    // (3 retries, backoff from 0.25-0.5 s doubling: at least 1.75 s).
    std::thread::sleep(Duration::from_millis(300));
    let server = ChatServer::start_logging(port, handler, log, count);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let s = summary(&out);
    assert_eq!(
        (s["samples"].as_u64(), s["failed"].as_u64()),
        (Some(4), Some(0)),
        "{s}\n{stderr}"
    );
    // The spoon (id 2) was chosen every time: its mask against the box drawn around it.
    assert!(s["metrics"]["grounding_iou"].as_f64().unwrap() > 0.3, "{s}");
    let recs = records(&out);
    let iou0 = &recs[0]["best"]["grounding_iou"];
    assert!(iou0.is_number() && recs.iter().all(|r| &r["best"]["grounding_iou"] == iou0));
    assert_eq!(
        ids(&recs),
        ["s0", "s1", "s2", "s3"],
        "each sample exactly once"
    );
    // Every question answered once, plus the one that died with the server.
    assert_eq!(server.count.load(Ordering::SeqCst), 4 * PER_SAMPLE + 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_long_outage_fails_cleanly_and_retry_failed_finishes_the_run() {
    let dir = tempdir("long");
    let manifest = build_set(&dir, 3);
    let (tx, rx) = mpsc::channel();
    // Killed in the middle of sample s1, and down until the run has ended.
    let (handler, _) = planner(PER_SAMPLE + 2, tx);
    let mut server = ChatServer::start(0, handler.clone());
    let port = server.port;
    let url = server.url();
    let out = dir.join("out");
    let child = eval_cmd(&manifest, &out, &url, &[]).spawn().unwrap();
    rx.recv_timeout(Duration::from_secs(120))
        .expect("the run never reached the request the server dies on");
    let (log, count) = (server.requests.clone(), server.count.clone());
    server.stop();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "failed samples do not stop the run: {stderr}"
    );
    let s = summary(&out);
    assert_eq!(
        (s["samples"].as_u64(), s["failed"].as_u64()),
        (Some(3), Some(2)),
        "{s}\n{stderr}"
    );
    let recs = records(&out);
    assert_eq!(ids(&recs), ["s0", "s1", "s2"]);
    let by_id = |id: &str| recs.iter().find(|r| r["id"] == id).unwrap().clone();
    assert_eq!(by_id("s0")["status"], "ok", "the finished sample is kept");
    for id in ["s1", "s2"] {
        let e = by_id(id)["error"].as_str().unwrap_or("").to_string();
        assert!(
            e.contains(&format!("127.0.0.1:{port}"))
                && e.contains("could not connect")
                && e.contains("4 attempts"),
            "{id}: {e}"
        );
    }

    // The server comes back on the same port; the resumed run redoes only the failed samples.
    let server = ChatServer::start_logging(port, handler, log, count);
    let before = server.count.load(Ordering::SeqCst);
    let output = eval_cmd(&manifest, &out, &url, &["--retry-failed"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("3 samples, 1 already done"), "{stderr}");
    let s = summary(&out);
    assert_eq!(
        (s["samples"].as_u64(), s["failed"].as_u64()),
        (Some(3), Some(0)),
        "{s}"
    );
    let recs = records(&out);
    assert_eq!(ids(&recs), ["s0", "s1", "s2"], "each sample exactly once");
    assert!(recs.iter().all(|r| r["status"] == "ok"));
    assert_eq!(
        server.count.load(Ordering::SeqCst) - before,
        2 * PER_SAMPLE,
        "only the two failed samples were run again"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
