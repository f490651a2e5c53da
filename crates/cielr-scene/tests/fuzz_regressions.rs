//! Hostile TF.js graph models (issue 9): declared weight sizes are checked against the limits
//! and against the shard bytes before anything is allocated from them, shard paths cannot
//! leave the model folder, and malformed manifests fail with an error that says what is wrong.

use std::path::PathBuf;

use cielr_scene::tfjs::{ModelManifest, TfjsModel};

#[path = "../../cielr-core/tests/support/fuzz_support.rs"]
mod fuzz_support;

use fuzz_support::{peak_during, MIB};

/// A one-node graph model whose manifest holds `weights` (JSON) in shards `paths`.
fn model_json(paths: &str, weights: &str) -> String {
    format!(
        r#"{{"format": "graph-model",
            "modelTopology": {{"node": [{{"name": "x", "op": "Placeholder"}}]}},
            "weightsManifest": [{{"paths": {paths}, "weights": {weights}}}]}}"#
    )
}

/// Builds from bytes, expecting an error containing `expected`, with no allocation of a
/// mebibyte or more on the way.
fn refused(json: &str, shards: &[Vec<u8>], expected: &str) {
    let (result, peak) = peak_during(|| TfjsModel::from_bytes(json.as_bytes(), shards));
    let msg = result.expect_err(expected).to_string();
    assert!(msg.contains(expected), "expected {expected:?}: {msg}");
    assert!(
        peak < MIB,
        "{peak} bytes allocated for a refused model ({msg})"
    );
}

#[test]
fn a_well_formed_model_reads_back() {
    let json = model_json(
        r#"["w.bin"]"#,
        r#"[{"name": "w", "shape": [2], "dtype": "float32"}]"#,
    );
    let bytes: Vec<u8> = [0.5f32, 3.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let m = TfjsModel::from_bytes(json.as_bytes(), &[bytes]).unwrap();
    assert_eq!(m.weight("w").unwrap().as_f32(), Some(&[0.5, 3.0][..]));
}

#[test]
fn declared_sizes_are_checked_before_allocating() {
    // 2^40 float32 elements declared, 8 bytes given.
    let json = model_json(
        r#"["w.bin"]"#,
        r#"[{"name": "w", "shape": [1048576, 1048576], "dtype": "float32"}]"#,
    );
    refused(&json, &[vec![0; 8]], "too many elements");
    // Within the per-weight bound but over the total limit.
    let json = model_json(
        r#"["w.bin"]"#,
        r#"[{"name": "a", "shape": [1073741824], "dtype": "float32"},
            {"name": "b", "shape": [1073741824], "dtype": "float32"}]"#,
    );
    refused(&json, &[vec![0; 8]], "the limit is");
    // A plausible size that the shards do not hold.
    let json = model_json(
        r#"["w.bin"]"#,
        r#"[{"name": "w", "shape": [1024, 1024], "dtype": "float32"}]"#,
    );
    refused(&json, &[vec![0; 8]], "the manifest declares 4194304");
    // More buffers than groups; negative, fractional and non-numeric dimensions.
    refused(
        &json,
        &[vec![], vec![]],
        "2 weight buffers for 1 manifest groups",
    );
    for (shape, expected) in [
        ("[-1]", "negative dimension"),
        ("[1.5]", "shape"),
        (r#"["x"]"#, "shape"),
        ("[1,1,1,1,1,1,1,1,1]", "rank 9 exceeds"),
    ] {
        let json = model_json(
            r#"["w.bin"]"#,
            &format!(r#"[{{"name": "w", "shape": {shape}, "dtype": "float32"}}]"#),
        );
        refused(&json, &[vec![0; 4]], expected);
    }
}

#[test]
fn malformed_manifests_fail_with_clear_errors() {
    let w = r#"[{"name": "w", "shape": [1], "dtype": "float32"}]"#;
    for (json, expected) in [
        ("".to_string(), "model.json"),
        ("[]".to_string(), "not a JSON object"),
        (
            r#"{"format": "layers-model"}"#.to_string(),
            "only TF.js graph models",
        ),
        (r#"{"format": "graph-model"}"#.to_string(), "modelTopology"),
        (model_json("[]", w), "no shard paths"),
        (
            model_json(r#"["w.bin"]"#, &w.replace("float32", "complex64")),
            "unsupported dtype",
        ),
        (
            model_json(
                r#"["w.bin"]"#,
                r#"[{"name": "w", "shape": [4], "dtype": "int32", "quantization": {"dtype": "uint8", "scale": 1e300, "min": 0}}]"#,
            ),
            "outside int32",
        ),
        (
            model_json(
                r#"["w.bin"]"#,
                r#"[{"name": "w", "shape": [1], "dtype": "float32"}, {"name": "w", "shape": [1], "dtype": "float32"}]"#,
            ),
            "duplicate weight name",
        ),
    ] {
        let shards = vec![vec![255u8; 4]];
        let msg = TfjsModel::from_bytes(json.as_bytes(), &shards)
            .expect_err(expected)
            .to_string();
        assert!(msg.contains(expected), "{json}: {msg}");
    }
    // Nesting beyond the JSON parser's recursion limit is an error, not a stack overflow.
    let deep = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
    assert!(ModelManifest::parse(deep.as_bytes()).is_err());
}

fn model_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join(format!("cielr-tfjs-hostile-{}", std::process::id()))
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn shard_paths_cannot_leave_the_model_folder() {
    let outside = model_dir("outside");
    std::fs::write(outside.join("secret.bin"), [0u8; 4]).unwrap();
    let w = r#"[{"name": "w", "shape": [1], "dtype": "float32"}]"#;
    for (path, expected) in [
        ("../outside/secret.bin", "contains `..`"),
        ("sub/../../outside/secret.bin", "contains `..`"),
        ("/etc/passwd", "is absolute"),
        ("C:\\\\Windows\\\\x.bin", "contains"),
        ("", "is empty"),
        ("link/secret.bin", "leads out of the model folder"),
    ] {
        let dir = model_dir("model");
        #[cfg(unix)]
        {
            let link = dir.join("link");
            if !link.exists() {
                std::os::unix::fs::symlink(&outside, &link).unwrap();
            }
        }
        #[cfg(not(unix))]
        if path.starts_with("link/") {
            continue;
        }
        let json = model_json(&format!(r#"["{path}"]"#), w);
        std::fs::write(dir.join("model.json"), json).unwrap();
        let msg = TfjsModel::load(dir.join("model.json"))
            .expect_err(path)
            .to_string();
        assert!(msg.contains(expected), "{path}: {msg}");
    }
}

#[test]
fn shards_that_disagree_with_the_manifest_are_refused_before_reading() {
    let dir = model_dir("short-shard");
    let json = model_json(
        r#"["w.bin"]"#,
        r#"[{"name": "w", "shape": [1000000], "dtype": "float32"}]"#,
    );
    std::fs::write(dir.join("model.json"), json).unwrap();
    std::fs::write(dir.join("w.bin"), [0u8; 16]).unwrap();
    let (result, peak) = peak_during(|| TfjsModel::load(dir.join("model.json")));
    let msg = result.unwrap_err().to_string();
    assert!(
        msg.contains("the shards hold 16 bytes but the manifest declares 4000000"),
        "{msg}"
    );
    assert!(peak < MIB, "{peak}");
}
