//! The Burn executor of TF.js graphs against TF.js itself, on a small graph that uses every
//! op and attribute the executor implements (`tests/fixtures/tfjs-ops`, written and run by
//! `tools/detector/exec_ops_fixture.js` with TF.js 4.22.0's CPU backend), and its errors on
//! graphs it cannot run.

use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};
use cielr_core::backend::CpuBackend;
use cielr_scene::tfjs::TfjsModel;
use cielr_scene::tfjs_exec::GraphExecutor;
use serde_json::Value;

type B = CpuBackend;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tfjs-ops")
}

fn input(values: Vec<f32>, shape: [usize; 4]) -> Tensor<B, 4> {
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

#[test]
fn every_supported_op_matches_tfjs() {
    let model = TfjsModel::load(fixture_dir().join("model.json")).unwrap();
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap(),
    )
    .unwrap();
    let names: Vec<&str> = vec!["a", "b", "c", "d", "e", "f", "f2", "g", "n", "out_l"];
    let exec = GraphExecutor::<B>::new(&model, "x", &names, &Default::default()).unwrap();
    let x: Vec<f32> = expected["input"]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let outs = exec.run(input(x, [1, 8, 10, 3])).unwrap();
    for (name, out) in names.iter().zip(outs) {
        let want = &expected["outputs"][*name];
        let shape: Vec<usize> = want["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(out.dims().to_vec(), shape, "{name}");
        let got = out.into_data().into_vec::<f32>().unwrap();
        let mut max_abs = 0f64;
        let mut max_rel = 0f64;
        for (g, w) in got.iter().zip(want["values"].as_array().unwrap()) {
            let w = w.as_f64().unwrap();
            let d = (*g as f64 - w).abs();
            max_abs = max_abs.max(d);
            if w.abs() > 1e-2 {
                max_rel = max_rel.max(d / w.abs());
            }
        }
        eprintln!("{name} {shape:?}: max abs {max_abs:.2e}, max rel {max_rel:.2e}");
        assert!(
            max_rel < 1e-4 && max_abs < 1e-4,
            "{name}: abs {max_abs} rel {max_rel}"
        );
    }
}

fn graph(nodes: &str, weights: &str) -> (String, Vec<u8>) {
    let json = format!(
        r#"{{"format": "graph-model", "modelTopology": {{"node": [
            {{"name": "x", "op": "Placeholder", "attr": {{"shape": {{"shape": {{"dim": [{{"size": "1"}}, {{"size": "4"}}, {{"size": "4"}}, {{"size": "2"}}]}}}}}}}},
            {nodes}]}},
          "weightsManifest": [{{"paths": ["w.bin"], "weights": {weights}}}]}}"#
    );
    (json, Vec::new())
}

fn build_err(nodes: &str, weights: &str, outputs: &[&str], bytes: Vec<u8>) -> String {
    let (json, _) = graph(nodes, weights);
    let model = TfjsModel::from_bytes(json.as_bytes(), &[bytes]).unwrap();
    GraphExecutor::<B>::new(&model, "x", outputs, &Default::default())
        .unwrap_err()
        .to_string()
}

#[test]
fn graphs_it_cannot_run_are_errors() {
    let e = build_err(
        r#"{"name": "y", "op": "Softmax", "input": ["x"]}"#,
        "[]",
        &["y"],
        vec![],
    );
    assert!(e.contains("op Softmax is not supported"), "{e}");
    let e = build_err(
        r#"{"name": "y", "op": "Relu", "input": ["z"]}, {"name": "z", "op": "Relu", "input": ["y"]}"#,
        "[]",
        &["y"],
        vec![],
    );
    assert!(e.contains("cycle"), "{e}");
    let e = build_err(
        r#"{"name": "y", "op": "Relu", "input": ["nowhere"]}"#,
        "[]",
        &["y"],
        vec![],
    );
    assert!(e.contains("no node `nowhere`"), "{e}");
    let e = build_err(
        r#"{"name": "y", "op": "Relu", "input": ["x"]}"#,
        "[]",
        &["q"],
        vec![],
    );
    assert!(e.contains("no node `q`"), "{e}");
    let e = build_err(
        r#"{"name": "y", "op": "Relu", "input": ["x:1"]}"#,
        "[]",
        &["y"],
        vec![],
    );
    assert!(e.contains("output 1"), "{e}");
    // A filter of the wrong rank, an unknown fused activation, NCHW data.
    let w = r#"[{"name": "w", "shape": [2, 2], "dtype": "float32"}]"#;
    let e = build_err(
        r#"{"name": "w", "op": "Const"}, {"name": "y", "op": "Conv2D", "input": ["x", "w"], "attr": {"padding": {"s": "U0FNRQ=="}}}"#,
        w,
        &["y"],
        vec![0; 16],
    );
    assert!(e.contains("not 4-D"), "{e}");
    let w = r#"[{"name": "w", "shape": [1, 1, 2, 2], "dtype": "float32"}, {"name": "b", "shape": [2], "dtype": "float32"}]"#;
    let e = build_err(
        r#"{"name": "w", "op": "Const"}, {"name": "b", "op": "Const"},
           {"name": "y", "op": "_FusedConv2D", "input": ["x", "w", "b"],
            "attr": {"padding": {"s": "U0FNRQ=="}, "fused_ops": {"list": {"s": ["Qmlhc0FkZA==", "RWx1"]}}}}"#,
        w,
        &["y"],
        vec![0; 24],
    );
    assert!(e.contains("Elu is not supported"), "{e}");
    let e = build_err(
        r#"{"name": "w", "op": "Const"}, {"name": "b", "op": "Const"},
           {"name": "y", "op": "Conv2D", "input": ["x", "w"],
            "attr": {"padding": {"s": "U0FNRQ=="}, "data_format": {"s": "TkNIVw=="}}}"#,
        w,
        &["y"],
        vec![0; 24],
    );
    assert!(e.contains("NCHW"), "{e}");
}

#[test]
fn inputs_that_do_not_fit_are_errors_not_panics() {
    // A 1x1 conv expecting 3 input channels on a 2-channel placeholder of free shape.
    let json = r#"{"format": "graph-model", "modelTopology": {"node": [
        {"name": "x", "op": "Placeholder"},
        {"name": "w", "op": "Const"},
        {"name": "y", "op": "Conv2D", "input": ["x", "w"], "attr": {"padding": {"s": "VkFMSUQ="}}},
        {"name": "z", "op": "Add", "input": ["x", "y"]}]},
      "weightsManifest": [{"paths": ["w.bin"], "weights": [{"name": "w", "shape": [3, 3, 3, 1], "dtype": "float32"}]}]}"#;
    let model = TfjsModel::from_bytes(json.as_bytes(), &[vec![0; 108]]).unwrap();
    let exec = GraphExecutor::<B>::new(&model, "x", &["y"], &Default::default()).unwrap();
    let e = exec
        .run(input(vec![0.0; 32], [1, 4, 4, 2]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 channels but the filter expects 3"), "{e}");
    let e = exec
        .run(input(vec![0.0; 12], [1, 2, 2, 3]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("smaller than the 3x3 kernel"), "{e}");
    let exec = GraphExecutor::<B>::new(&model, "x", &["z"], &Default::default()).unwrap();
    let e = exec
        .run(input(vec![0.0; 75], [1, 5, 5, 3]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("do not broadcast"), "{e}");
    // A placeholder with a recorded shape checks the input against it.
    let (json, _) = graph(r#"{"name": "y", "op": "Relu", "input": ["x"]}"#, "[]");
    let model = TfjsModel::from_bytes(json.as_bytes(), &[vec![]]).unwrap();
    let exec = GraphExecutor::<B>::new(&model, "x", &["y"], &Default::default()).unwrap();
    let e = exec
        .run(input(vec![0.0; 18], [1, 3, 3, 2]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("must be [1, 4, 4, 2]"), "{e}");
    let ok = exec.run(input(vec![-1.0; 32], [1, 4, 4, 2])).unwrap();
    // A resize to a huge size is refused before anything is allocated.
    let (json, _) = graph(
        r#"{"name": "s", "op": "Const"}, {"name": "y", "op": "ResizeBilinear", "input": ["x", "s"]}"#,
        r#"[{"name": "s", "shape": [2], "dtype": "int32"}]"#,
    );
    let mut size = 16000i32.to_le_bytes().to_vec();
    size.extend(16000i32.to_le_bytes());
    let model = TfjsModel::from_bytes(json.as_bytes(), &[size]).unwrap();
    let big = GraphExecutor::<B>::new(&model, "x", &["y"], &Default::default()).unwrap();
    let e = big
        .run(input(vec![0.0; 32], [1, 4, 4, 2]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("exceeds"), "{e}");
    assert_eq!(
        ok[0].clone().into_data().into_vec::<f32>().unwrap(),
        vec![0.0; 32]
    );
}
