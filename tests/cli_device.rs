//! `--device cpu|cuda[:N]` of `cielr plan|edit|scene|eval`: CUDA in a build without the `cuda`
//! feature and malformed values are usage errors (exit code 2) that say what to do; `--device
//! cpu` runs the Burn models (the tiny random fixtures of the workspace) exactly as before.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cielr() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cielr"));
    c.env_remove("CIELR_LLM")
        .env_remove("CIELR_DEVICE")
        .env_remove("CIELR_PRECISION");
    c
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn asset(name: &str) -> PathBuf {
    root().join("assets").join(name)
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cielr-cli-device-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn scripted() -> String {
    format!("scripted:{}", asset("coffee.answers.json").display())
}

const INSTRUCTION: &str = "What here is used for stirring? Remove it, then make the cup blue.";

/// One invocation of each command that takes `--device`, complete but for it.
fn each_command() -> Vec<Vec<OsString>> {
    let dir = scratch("commands");
    let s = |x: &str| OsString::from(x);
    let p = |x: PathBuf| x.into_os_string();
    vec![
        vec![
            s("plan"),
            s("--scene"),
            p(asset("coffee.ssr.json")),
            s(INSTRUCTION),
            s("--llm"),
            s(&scripted()),
        ],
        vec![
            s("edit"),
            p(asset("coffee.png")),
            s(INSTRUCTION),
            s("--scene"),
            p(asset("coffee.ssr.json")),
            s("--llm"),
            s(&scripted()),
            s("-o"),
            p(dir.join("out.png")),
        ],
        vec![
            s("scene"),
            p(asset("coffee.png")),
            s("--out"),
            p(dir.join("scene.json")),
        ],
        vec![
            s("eval"),
            s("manifest"),
            p(dir.join("absent.jsonl")),
            s("--out"),
            p(dir.join("eval")),
        ],
    ]
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `args --device <device>`, which must be a usage error (exit code 2); its stderr.
fn usage_error(args: &[OsString], device: &str) -> String {
    let out = cielr()
        .args(args)
        .args(["--device", device])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?} {device}: {err}");
    assert!(
        err.contains(&format!("invalid value '{device}' for '--device <DEVICE>'")),
        "{args:?} {device}: {err}"
    );
    err
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_the_feature_says_how_to_rebuild() {
    for args in each_command() {
        for device in ["cuda", "cuda:1", "CUDA:0"] {
            let err = usage_error(&args, device);
            assert!(
                err.contains("built without CUDA support")
                    && err.contains("cargo build --release --features cuda"),
                "{args:?} {device}: {err}"
            );
        }
        // The environment variable is checked the same way.
        let out = cielr()
            .args(&args)
            .env("CIELR_DEVICE", "cuda")
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?} CIELR_DEVICE: {err}");
        assert!(err.contains("--features cuda"), "{err}");
    }
}

/// With the feature but (as in CI) no usable driver, or an index past the devices there
/// are, `--device cuda:N` fails with a message instead of Burn's worker-thread panic.
#[cfg(feature = "cuda")]
#[test]
fn cuda_with_the_feature_checks_the_driver_first() {
    let args = &each_command()[0];
    let out = cielr()
        .args(args)
        .args(["--device", "cuda:65535"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("CUDA is not usable here") || err.contains("device(s), numbered from 0"),
        "{err}"
    );
}

#[test]
fn malformed_devices_are_usage_errors() {
    for args in each_command() {
        for (device, says) in [
            ("tpu", "expected `cpu`, `cuda` or `cuda:N`"),
            ("gpu", "expected `cpu`, `cuda` or `cuda:N`"),
            ("cuda:x", "must be a number"),
            ("cuda:", "must be a number"),
            ("cuda:99999", "too large"),
        ] {
            let err = usage_error(&args, device);
            assert!(err.contains(says), "{args:?} {device}: {err}");
        }
    }
}

#[test]
fn help_documents_the_option_where_models_load() {
    for cmd in [
        &["plan", "--help"][..],
        &["edit", "--help"],
        &["scene", "--help"],
        &["eval", "ciebench", "--help"],
        &["eval", "manifest", "--help"],
    ] {
        let out = cielr().args(cmd).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{cmd:?}");
        assert!(
            help.contains("--device <DEVICE>")
                && help.contains("--precision <TYPE>")
                && help.contains("--features cuda")
                && help.contains("classical editor ignore"),
            "{cmd:?}: {help}"
        );
    }
    // Merging reports loads no model.
    let out = cielr().args(["eval", "report", "--help"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("--device"));
}

/// Runs `args` without `--device` and with `--device cpu` (and `CIELR_DEVICE=cpu`); all three
/// must succeed with the same stdout. Returns that stdout and the last stderr.
fn same_with_and_without_cpu(args: &[OsString]) -> (String, String) {
    let plain = cielr().args(args).output().unwrap();
    assert!(plain.status.success(), "{}", stderr(&plain));
    let cpu = cielr()
        .args(args)
        .args(["--device", "cpu"])
        .output()
        .unwrap();
    assert!(cpu.status.success(), "{}", stderr(&cpu));
    let env = cielr()
        .args(args)
        .env("CIELR_DEVICE", "cpu")
        .output()
        .unwrap();
    assert!(env.status.success(), "{}", stderr(&env));
    assert_eq!(plain.stdout, cpu.stdout);
    assert_eq!(plain.stdout, env.stdout);
    let err = stderr(&cpu);
    (String::from_utf8(cpu.stdout).unwrap(), err)
}

#[test]
fn cpu_plans_as_before() {
    let (stdout, _) = same_with_and_without_cpu(&each_command()[0]);
    assert!(stdout.contains("remove the spoon"), "{stdout}");
}

/// `cielr edit` of the coffee scene with scripted answers and the LaMa editor (the tiny
/// random fixture), writing `output`.
fn lama_edit(output: &Path) -> Command {
    let mut c = cielr();
    c.arg("edit")
        .arg(asset("coffee.png"))
        .arg(INSTRUCTION)
        .arg("--scene")
        .arg(asset("coffee.ssr.json"))
        .arg("--llm")
        .arg(scripted())
        .arg("-o")
        .arg(output)
        .args(["--editor", "lama", "--lama-model"])
        .arg(root().join("crates/cielr-diffusion/tests/fixtures/lama-tiny"));
    c
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `--device cpu` builds the LaMa editor (tiny random weights) through the device dispatch:
/// the same pixels as without the option, and the report names the device.
#[test]
fn cpu_runs_the_lama_editor_as_before() {
    let dir = scratch("lama");
    let run = |name: &str, device: Option<&str>| {
        let output = dir.join(format!("{name}.png"));
        let mut c = lama_edit(&output);
        if let Some(d) = device {
            c.args(["--device", d]);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stderr(&out).contains("[edit] loading LaMa from"));
        let report = read_json(&dir.join(format!("{name}.report.json")));
        assert_eq!(report["components"]["device"], "cpu");
        assert!(report["components"]["editor"]
            .as_str()
            .unwrap()
            .contains("lama"));
        cielr::core::io::load_rgb(&output).unwrap()
    };
    let plain = run("plain", None);
    let cpu = run("cpu", Some("cpu"));
    assert_eq!(plain.dimensions(), cpu.dimensions());
    assert!(plain.as_raw() == cpu.as_raw(), "the pixels differ");
    // LaMa changed something (inside the spoon's mask), so the model really ran.
    let input = cielr::core::io::load_rgb(&asset("coffee.png")).unwrap();
    assert!(input.as_raw() != cpu.as_raw());
}

/// `--precision bf16` (and `CIELR_PRECISION=f16`): LaMa loads and runs in half on the CPU,
/// pixels outside the mask stay the input's, and the report records the precision.
#[test]
fn half_precision_runs_the_lama_editor() {
    let dir = scratch("lama-half");
    let input = cielr::core::io::load_rgb(&asset("coffee.png")).unwrap();
    for (name, precision, by_env) in [("bf16", "bf16", false), ("f16", "f16", true)] {
        let output = dir.join(format!("{name}.png"));
        let mut c = lama_edit(&output);
        if by_env {
            c.env("CIELR_PRECISION", precision);
        } else {
            c.args(["--precision", precision]);
        }
        let out = c.output().unwrap();
        let err = stderr(&out);
        assert!(out.status.success(), "{precision}: {err}");
        assert!(
            err.contains(&format!("the models on cpu load and run in {precision}")),
            "{err}"
        );
        let report = read_json(&dir.join(format!("{name}.report.json")));
        assert_eq!(report["components"]["precision"], precision);
        let edited = cielr::core::io::load_rgb(&output).unwrap();
        assert!(
            edited.as_raw() != input.as_raw(),
            "{precision}: nothing changed"
        );
        // Every pixel outside the report's edit masks is the input's.
        let (w, h) = input.dimensions();
        let mut union = cielr::core::Mask::new(w, h).unwrap();
        for m in report["edit_masks"].as_array().unwrap() {
            let rle: cielr::core::CocoRle = serde_json::from_value(m["mask"].clone()).unwrap();
            union = union
                .union(&cielr::core::Mask::from_coco(&rle).unwrap())
                .unwrap();
        }
        for (x, y, p) in input.enumerate_pixels() {
            if !union.get(x, y) {
                assert_eq!(edited.get_pixel(x, y), p, "{precision}: ({x}, {y})");
            }
        }
    }
}

#[test]
fn unknown_precisions_are_usage_errors() {
    let args = &each_command()[0];
    let out = cielr()
        .args(args)
        .args(["--precision", "f64"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("[possible values: f32, bf16, f16]"), "{err}");
}

/// A HuggingFace folder the local loader takes, from cielr-planner's tiny random fixtures: the
/// Qwen2 model (256 embeddings; its context raised, as RoPE allows, for byte-level prompts)
/// and the tiny byte-level BPE tokenizer cut to the model's 256 ids, without merges.
fn tiny_llm_folder() -> PathBuf {
    let fixtures = root().join("crates/cielr-planner/tests/fixtures");
    let dir = scratch("llm");
    let mut config = read_json(&fixtures.join("llama-tiny-qwen2/config.json"));
    let vocab_size = config["vocab_size"].as_u64().unwrap();
    config["max_position_embeddings"] = 4096.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(
        fixtures.join("llama-tiny-qwen2/model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let mut tokenizer = read_json(&fixtures.join("tokenizer_tiny_bpe.json"));
    let model = &mut tokenizer["model"];
    let vocab = model["vocab"].as_object_mut().unwrap();
    vocab.retain(|_, id| id.as_u64().unwrap() < vocab_size);
    model["merges"] = serde_json::json!([]);
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    dir
}

/// `--device cpu` loads a local language model (tiny random weights) through the device
/// dispatch and plans with it exactly as without the option.
#[test]
fn cpu_runs_a_local_language_model_as_before() {
    let args: Vec<OsString> = vec![
        "plan".into(),
        "--json".into(),
        "--scene".into(),
        asset("coffee.ssr.json").into(),
        "Remove the spoon.".into(),
        "--rounds".into(),
        "1".into(),
        "--llm".into(),
        format!("local:{}", tiny_llm_folder().display()).into(),
    ];
    let (stdout, err) = same_with_and_without_cpu(&args);
    assert!(err.contains("[llm] loading"), "{err}");
    // The same model in bf16 answers every question too.
    let half = cielr()
        .args(&args)
        .args(["--precision", "bf16"])
        .output()
        .unwrap();
    assert!(half.status.success(), "{}", stderr(&half));
    let plan: serde_json::Value = serde_json::from_slice(&half.stdout).unwrap();
    let trace = plan["trace"].as_array().unwrap();
    assert!(
        trace.len() >= 3 && trace.iter().all(|t| t.get("answer").is_some()),
        "{plan}"
    );
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    // The random model answered every question the planner asked.
    let trace = plan["trace"].as_array().unwrap();
    assert!(
        trace.len() >= 3 && trace.iter().all(|t| t.get("answer").is_some()),
        "{stdout}"
    );
}
