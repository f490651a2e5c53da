//! A reader for TensorFlow.js graph models: `model.json` (`"format": "graph-model"`) and its
//! binary weight shards.
//!
//! `model.json` holds the graph (`modelTopology.node`: name, op, inputs, attributes in
//! protobuf-JSON form) and a weights manifest: groups of weights stored back to back in the
//! concatenation of the group's shard files (`paths`). Each weight has a name, shape and
//! dtype (`float32`, `int32`, `bool`), optionally quantised (`float16`, or `uint8`/`uint16`
//! with an affine `scale`/`min`). Weights are dequantised to `f32` exactly as TF.js does it
//! (`float16` through the `half` crate, affine values computed in `f64` and rounded to `f32`;
//! quantised `int32` weights rounded to the nearest integer).
//!
//! The reader treats the files as untrusted: a hostile `model.json` gets an error, never a
//! panic or a large allocation. Shard paths must be relative paths inside the model folder
//! (no `..`, no absolute paths, no symlinks leading out), the shard sizes must add up to
//! exactly what the manifest declares (checked before anything is read), shapes must be
//! non-negative with a bounded element count, and weight and node names must be unique.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Result, SceneError};

/// The largest `model.json` the reader accepts (bytes).
pub const MAX_MODEL_JSON_BYTES: u64 = 256 << 20;
/// The largest total size of all weight shards the reader accepts (bytes).
pub const MAX_WEIGHT_BYTES: u64 = 4 << 30;
/// The largest tensor rank the reader accepts.
pub const MAX_RANK: usize = 8;

fn invalid(message: impl Into<String>) -> SceneError {
    SceneError::config("TF.js model", message)
}

/// The values of a tensor, dequantised.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorValues {
    /// `float32` values (also quantised `float16`/`uint8`/`uint16` floats after dequantisation).
    F32(Vec<f32>),
    /// `int32` values (`bool` weights are stored as 0/1).
    I32(Vec<i32>),
}

/// A tensor held in host memory, row-major, in TensorFlow's layout (NHWC activations, HWIO
/// convolution filters).
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// The dimensions.
    pub shape: Vec<usize>,
    /// The values; their count is the product of `shape`.
    pub values: TensorValues,
}

impl HostTensor {
    /// The number of elements.
    pub fn len(&self) -> usize {
        match &self.values {
            TensorValues::F32(v) => v.len(),
            TensorValues::I32(v) => v.len(),
        }
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as `f32`, if the tensor is a float tensor.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.values {
            TensorValues::F32(v) => Some(v),
            TensorValues::I32(_) => None,
        }
    }

    /// The values as `i32`, if the tensor is an integer (or bool) tensor.
    pub fn as_i32(&self) -> Option<&[i32]> {
        match &self.values {
            TensorValues::I32(v) => Some(v),
            TensorValues::F32(_) => None,
        }
    }
}

/// How a weight is stored in the shards.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Quantization {
    /// IEEE half precision, dequantised to `f32` (float weights only).
    Float16,
    /// One byte per value: `value = q * scale + min`.
    Uint8 {
        /// The step.
        scale: f64,
        /// The offset.
        min: f64,
    },
    /// Two bytes per value (little endian): `value = q * scale + min`.
    Uint16 {
        /// The step.
        scale: f64,
        /// The offset.
        min: f64,
    },
}

impl Quantization {
    fn bytes_per_value(self) -> u64 {
        match self {
            Quantization::Uint8 { .. } => 1,
            Quantization::Float16 | Quantization::Uint16 { .. } => 2,
        }
    }
}

/// The logical dtype of a weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    /// `float32`.
    Float32,
    /// `int32`.
    Int32,
    /// `bool` (one byte per value).
    Bool,
}

impl WeightDtype {
    fn parse(s: &str, name: &str) -> Result<Self> {
        Ok(match s {
            "float32" => WeightDtype::Float32,
            "int32" => WeightDtype::Int32,
            "bool" => WeightDtype::Bool,
            other => {
                return Err(invalid(format!(
                "weight `{name}` has unsupported dtype `{other}` (supported: float32, int32, bool)"
            )))
            }
        })
    }

    fn bytes_per_value(self) -> u64 {
        match self {
            WeightDtype::Float32 | WeightDtype::Int32 => 4,
            WeightDtype::Bool => 1,
        }
    }
}

/// One entry of the weights manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightSpec {
    /// The weight's name (the name of the `Const` node it feeds).
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its logical dtype.
    pub dtype: WeightDtype,
    /// How it is stored, when quantised.
    pub quantization: Option<Quantization>,
}

impl WeightSpec {
    /// The number of bytes the weight occupies in the shards.
    pub fn stored_bytes(&self) -> u64 {
        let per = self
            .quantization
            .map_or(self.dtype.bytes_per_value(), Quantization::bytes_per_value);
        // Element counts are bounded when the spec is parsed, so this cannot overflow.
        element_count(&self.shape) as u64 * per
    }
}

/// A group of weights stored back to back in the concatenation of its shard files.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightGroup {
    /// Shard file names, relative to the model folder, in order.
    pub paths: Vec<String>,
    /// The weights, in storage order.
    pub weights: Vec<WeightSpec>,
}

impl WeightGroup {
    /// The total number of bytes the group's shards must hold.
    pub fn stored_bytes(&self) -> u64 {
        self.weights.iter().map(WeightSpec::stored_bytes).sum()
    }
}

/// An attribute value of a graph node (protobuf `AttrValue` in its JSON form).
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    /// `s`: bytes (base64 in the JSON), e.g. `padding` = `SAME`.
    Bytes(Vec<u8>),
    /// `i`: an integer.
    Int(i64),
    /// `f`: a float.
    Float(f64),
    /// `b`: a boolean.
    Bool(bool),
    /// `type`: a dtype name such as `DT_FLOAT`.
    Type(String),
    /// `shape`: dimensions (`-1` for unknown); `None` for unknown rank.
    Shape(Option<Vec<i64>>),
    /// `list`: lists of any of the above (an empty list has all fields empty).
    List {
        /// `list.s`.
        bytes: Vec<Vec<u8>>,
        /// `list.i`.
        ints: Vec<i64>,
        /// `list.f`.
        floats: Vec<f64>,
        /// `list.b`.
        bools: Vec<bool>,
        /// `list.type`.
        types: Vec<String>,
    },
    /// Anything else (`tensor`, `func`, ...), kept as JSON.
    Other(Value),
}

/// A reference to one output of a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeInput {
    /// The producing node's name.
    pub node: String,
    /// Which of its outputs (`name:1` is output 1).
    pub output: usize,
}

/// One node of the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphNode {
    /// Unique name.
    pub name: String,
    /// TensorFlow op name (`_FusedConv2D`, `Relu6`, `Const`, ...).
    pub op: String,
    /// Data inputs, in order.
    pub inputs: Vec<NodeInput>,
    /// Control dependencies (`^name` inputs); they carry no data.
    pub control_inputs: Vec<String>,
    /// Attributes by name.
    pub attrs: BTreeMap<String, AttrValue>,
}

impl GraphNode {
    /// A bytes attribute as text (e.g. `padding`).
    pub fn attr_str(&self, key: &str) -> Option<String> {
        match self.attrs.get(key) {
            Some(AttrValue::Bytes(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    /// An integer-list attribute (e.g. `strides`).
    pub fn attr_ints(&self, key: &str) -> Option<&[i64]> {
        match self.attrs.get(key) {
            Some(AttrValue::List { ints, .. }) => Some(ints),
            _ => None,
        }
    }

    /// A bytes-list attribute as text (e.g. `fused_ops`).
    pub fn attr_strs(&self, key: &str) -> Option<Vec<String>> {
        match self.attrs.get(key) {
            Some(AttrValue::List { bytes, .. }) => Some(
                bytes
                    .iter()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .collect(),
            ),
            _ => None,
        }
    }

    /// A boolean attribute.
    pub fn attr_bool(&self, key: &str) -> Option<bool> {
        match self.attrs.get(key) {
            Some(AttrValue::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    /// An integer attribute.
    pub fn attr_int(&self, key: &str) -> Option<i64> {
        match self.attrs.get(key) {
            Some(AttrValue::Int(i)) => Some(*i),
            _ => None,
        }
    }

    /// A float attribute.
    pub fn attr_float(&self, key: &str) -> Option<f64> {
        match self.attrs.get(key) {
            Some(AttrValue::Float(f)) => Some(*f),
            _ => None,
        }
    }
}

/// The parsed `model.json`, before weights are read.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelManifest {
    /// `format` (`graph-model` for the models this reader accepts).
    pub format: String,
    /// `generatedBy`, when present.
    pub generated_by: Option<String>,
    /// `convertedBy`, when present.
    pub converted_by: Option<String>,
    /// The graph's nodes, in file order.
    pub nodes: Vec<GraphNode>,
    /// The weights manifest.
    pub groups: Vec<WeightGroup>,
    /// Input names from `signature.inputs` (empty when there is no signature).
    pub signature_inputs: Vec<String>,
    /// Output names from `signature.outputs` (empty when there is no signature).
    pub signature_outputs: Vec<String>,
}

/// A TF.js graph model with its weights in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct TfjsModel {
    /// The graph and manifest.
    pub manifest: ModelManifest,
    /// The weights by name, dequantised.
    pub weights: HashMap<String, HostTensor>,
}

impl TfjsModel {
    /// Reads `model.json` and the shards next to it.
    pub fn load(model_json: impl AsRef<Path>) -> Result<Self> {
        let model_json = model_json.as_ref();
        let dir = model_json
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let meta = std::fs::metadata(model_json).map_err(|e| SceneError::io(model_json, e))?;
        if meta.len() > MAX_MODEL_JSON_BYTES {
            return Err(invalid(format!(
                "{} is {} bytes; the limit is {MAX_MODEL_JSON_BYTES}",
                model_json.display(),
                meta.len()
            )));
        }
        let text = std::fs::read(model_json).map_err(|e| SceneError::io(model_json, e))?;
        let manifest = ModelManifest::parse(&text)
            .map_err(|e| prefix_error(e, &model_json.display().to_string()))?;
        let root = dir.canonicalize().map_err(|e| SceneError::io(&dir, e))?;
        let mut group_bytes = Vec::with_capacity(manifest.groups.len());
        for (g, group) in manifest.groups.iter().enumerate() {
            // Resolve and size every shard before reading any of them.
            let mut files = Vec::with_capacity(group.paths.len());
            let mut total: u64 = 0;
            for p in &group.paths {
                let file = resolve_shard(&root, p)?;
                let len = std::fs::metadata(&file)
                    .map_err(|e| SceneError::io(&file, e))?
                    .len();
                total = total.saturating_add(len);
                files.push((file, len));
            }
            let expected = group.stored_bytes();
            if total != expected {
                return Err(invalid(format!(
                    "weight group {g} ({}): the shards hold {total} bytes but the manifest declares {expected}",
                    group.paths.join(", ")
                )));
            }
            let mut bytes = Vec::with_capacity(expected as usize);
            for (file, len) in files {
                let data = std::fs::read(&file).map_err(|e| SceneError::io(&file, e))?;
                if data.len() as u64 != len {
                    return Err(invalid(format!(
                        "{} changed size while being read",
                        file.display()
                    )));
                }
                bytes.extend_from_slice(&data);
            }
            group_bytes.push(bytes);
        }
        Self::from_manifest(manifest, &group_bytes)
            .map_err(|e| prefix_error(e, &model_json.display().to_string()))
    }

    /// Builds a model from `model.json` text and each group's concatenated shard bytes
    /// (one buffer per manifest group), without touching the file system.
    pub fn from_bytes(model_json: &[u8], group_bytes: &[Vec<u8>]) -> Result<Self> {
        let manifest = ModelManifest::parse(model_json)?;
        Self::from_manifest(manifest, group_bytes)
    }

    /// Decodes the weights of a parsed manifest from each group's concatenated shard bytes.
    pub fn from_manifest(manifest: ModelManifest, group_bytes: &[Vec<u8>]) -> Result<Self> {
        if group_bytes.len() != manifest.groups.len() {
            return Err(invalid(format!(
                "{} weight buffers for {} manifest groups",
                group_bytes.len(),
                manifest.groups.len()
            )));
        }
        let mut weights = HashMap::new();
        for (g, (group, bytes)) in manifest.groups.iter().zip(group_bytes).enumerate() {
            let expected = group.stored_bytes();
            if bytes.len() as u64 != expected {
                return Err(invalid(format!(
                    "weight group {g}: the shards hold {} bytes but the manifest declares {expected}",
                    bytes.len()
                )));
            }
            let mut offset = 0usize;
            for spec in &group.weights {
                let n = spec.stored_bytes() as usize;
                let tensor = decode_weight(spec, &bytes[offset..offset + n])?;
                offset += n;
                weights.insert(spec.name.clone(), tensor);
            }
        }
        Ok(TfjsModel { manifest, weights })
    }

    /// The node with this name.
    pub fn node(&self, name: &str) -> Option<&GraphNode> {
        self.manifest.nodes.iter().find(|n| n.name == name)
    }

    /// The weight with this name.
    pub fn weight(&self, name: &str) -> Option<&HostTensor> {
        self.weights.get(name)
    }
}

fn prefix_error(e: SceneError, what: &str) -> SceneError {
    match e {
        SceneError::Config { context, message } => SceneError::Config {
            context: format!("{context} {what}"),
            message,
        },
        other => other,
    }
}

/// Resolves a shard path from the manifest inside `root` (the canonical model folder).
fn resolve_shard(root: &Path, shard: &str) -> Result<PathBuf> {
    let bad = |why: &str| invalid(format!("shard path `{shard}` {why}"));
    if shard.is_empty() {
        return Err(bad("is empty"));
    }
    if shard.contains('\\') || shard.contains('\0') || shard.contains(':') {
        return Err(bad("contains `\\`, `:` or NUL"));
    }
    let rel = Path::new(shard);
    if rel.is_absolute() || shard.starts_with('/') {
        return Err(bad("is absolute; shards must lie in the model folder"));
    }
    for c in rel.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(bad("contains `..`")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(bad("is absolute; shards must lie in the model folder"))
            }
        }
    }
    let joined = root.join(rel);
    let real = joined
        .canonicalize()
        .map_err(|e| SceneError::io(&joined, e))?;
    if !real.starts_with(root) {
        return Err(bad("leads out of the model folder (through a symlink)"));
    }
    if !real.is_file() {
        return Err(bad("is not a regular file"));
    }
    Ok(real)
}

fn element_count(shape: &[usize]) -> usize {
    shape.iter().product()
}

fn decode_weight(spec: &WeightSpec, bytes: &[u8]) -> Result<HostTensor> {
    let n = element_count(&spec.shape);
    let values = match (spec.dtype, spec.quantization) {
        (WeightDtype::Float32, None) => TensorValues::F32(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        (WeightDtype::Int32, None) => TensorValues::I32(
            bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        (WeightDtype::Bool, None) => TensorValues::I32(bytes.iter().map(|&b| b as i32).collect()),
        (WeightDtype::Float32, Some(Quantization::Float16)) => TensorValues::F32(
            bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
        ),
        (dtype, Some(Quantization::Uint8 { scale, min })) => {
            let raw: Vec<f64> = bytes.iter().map(|&b| b as f64).collect();
            dequantise_affine(spec, dtype, &raw, scale, min)?
        }
        (dtype, Some(Quantization::Uint16 { scale, min })) => {
            let raw: Vec<f64> = bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as f64)
                .collect();
            dequantise_affine(spec, dtype, &raw, scale, min)?
        }
        (dtype, Some(Quantization::Float16)) => {
            return Err(invalid(format!(
                "weight `{}`: float16 quantisation applies to float32 weights only, not {dtype:?}",
                spec.name
            )))
        }
    };
    let tensor = HostTensor {
        shape: spec.shape.clone(),
        values,
    };
    debug_assert_eq!(tensor.len(), n);
    Ok(tensor)
}

fn dequantise_affine(
    spec: &WeightSpec,
    dtype: WeightDtype,
    raw: &[f64],
    scale: f64,
    min: f64,
) -> Result<TensorValues> {
    Ok(match dtype {
        WeightDtype::Float32 => {
            TensorValues::F32(raw.iter().map(|&v| (v * scale + min) as f32).collect())
        }
        WeightDtype::Int32 => {
            let mut out = Vec::with_capacity(raw.len());
            for &v in raw {
                // TF.js rounds with Math.round (halves up).
                let r = (v * scale + min + 0.5).floor();
                if !(i32::MIN as f64..=i32::MAX as f64).contains(&r) {
                    return Err(invalid(format!(
                        "weight `{}` dequantises to {r}, outside int32",
                        spec.name
                    )));
                }
                out.push(r as i32);
            }
            TensorValues::I32(out)
        }
        WeightDtype::Bool => {
            return Err(invalid(format!(
                "weight `{}`: bool weights cannot be quantised",
                spec.name
            )))
        }
    })
}

impl ModelManifest {
    /// Parses and validates `model.json`.
    pub fn parse(text: &[u8]) -> Result<Self> {
        if text.len() as u64 > MAX_MODEL_JSON_BYTES {
            return Err(invalid(format!(
                "model.json is {} bytes; the limit is {MAX_MODEL_JSON_BYTES}",
                text.len()
            )));
        }
        let root: Value =
            serde_json::from_slice(text).map_err(|e| SceneError::json("TF.js model.json", e))?;
        let root = root
            .as_object()
            .ok_or_else(|| invalid("model.json is not a JSON object"))?;
        let format = opt_str(root, "format")?.unwrap_or_default();
        if format != "graph-model" {
            return Err(invalid(format!(
                "format is `{format}`; only TF.js graph models (`graph-model`) are supported"
            )));
        }
        let topology = root
            .get("modelTopology")
            .and_then(Value::as_object)
            .ok_or_else(|| invalid("`modelTopology` is missing or not an object"))?;
        let node_list = topology
            .get("node")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("`modelTopology.node` is missing or not an array"))?;
        let mut nodes = Vec::with_capacity(node_list.len());
        let mut names = HashSet::new();
        for (i, n) in node_list.iter().enumerate() {
            let node = parse_node(n).map_err(|e| match e {
                SceneError::Config { context, message } => SceneError::Config {
                    context,
                    message: format!("node {i}: {message}"),
                },
                other => other,
            })?;
            if !names.insert(node.name.clone()) {
                return Err(invalid(format!("duplicate node name `{}`", node.name)));
            }
            nodes.push(node);
        }
        let groups_json = match root.get("weightsManifest") {
            None => &[][..],
            Some(Value::Array(a)) => &a[..],
            Some(_) => return Err(invalid("`weightsManifest` is not an array")),
        };
        let mut groups = Vec::with_capacity(groups_json.len());
        let mut weight_names = HashSet::new();
        let mut total: u64 = 0;
        for (g, group) in groups_json.iter().enumerate() {
            let group = parse_group(group).map_err(|e| match e {
                SceneError::Config { context, message } => SceneError::Config {
                    context,
                    message: format!("weight group {g}: {message}"),
                },
                other => other,
            })?;
            for w in &group.weights {
                if !weight_names.insert(w.name.clone()) {
                    return Err(invalid(format!("duplicate weight name `{}`", w.name)));
                }
                total = total.saturating_add(w.stored_bytes());
            }
            groups.push(group);
        }
        if total > MAX_WEIGHT_BYTES {
            return Err(invalid(format!(
                "the manifest declares {total} bytes of weights; the limit is {MAX_WEIGHT_BYTES}"
            )));
        }
        let (signature_inputs, signature_outputs) = match root.get("signature") {
            Some(Value::Object(sig)) => (
                signature_names(sig.get("inputs")),
                signature_names(sig.get("outputs")),
            ),
            _ => (Vec::new(), Vec::new()),
        };
        Ok(ModelManifest {
            format,
            generated_by: opt_str(root, "generatedBy")?,
            converted_by: opt_str(root, "convertedBy")?,
            nodes,
            groups,
            signature_inputs,
            signature_outputs,
        })
    }
}

fn signature_names(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

fn opt_str(obj: &Map<String, Value>, key: &str) -> Result<Option<String>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(format!("`{key}` is not a string"))),
    }
}

fn parse_node(v: &Value) -> Result<GraphNode> {
    let obj = v
        .as_object()
        .ok_or_else(|| invalid("a node is not an object"))?;
    let name = opt_str(obj, "name")?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid("a node has no name"))?;
    let op = opt_str(obj, "op")?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid(format!("node `{name}` has no op")))?;
    let mut inputs = Vec::new();
    let mut control_inputs = Vec::new();
    match obj.get("input") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for i in list {
                let s = i
                    .as_str()
                    .ok_or_else(|| invalid(format!("node `{name}`: an input is not a string")))?;
                if let Some(c) = s.strip_prefix('^') {
                    control_inputs.push(c.to_string());
                } else {
                    inputs
                        .push(parse_input(s).map_err(|m| invalid(format!("node `{name}`: {m}")))?);
                }
            }
        }
        Some(_) => return Err(invalid(format!("node `{name}`: `input` is not an array"))),
    }
    let mut attrs = BTreeMap::new();
    match obj.get("attr") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, a) in m {
                let value = parse_attr(a)
                    .map_err(|msg| invalid(format!("node `{name}` attribute `{k}`: {msg}")))?;
                attrs.insert(k.clone(), value);
            }
        }
        Some(_) => return Err(invalid(format!("node `{name}`: `attr` is not an object"))),
    }
    Ok(GraphNode {
        name,
        op,
        inputs,
        control_inputs,
        attrs,
    })
}

fn parse_input(s: &str) -> std::result::Result<NodeInput, String> {
    if s.is_empty() {
        return Err("an input name is empty".into());
    }
    // `name:k` names output k; a trailing part that is not a number belongs to the name.
    if let Some((node, idx)) = s.rsplit_once(':') {
        if let Ok(output) = idx.parse::<usize>() {
            if node.is_empty() {
                return Err(format!("input `{s}` has no node name"));
            }
            return Ok(NodeInput {
                node: node.to_string(),
                output,
            });
        }
    }
    Ok(NodeInput {
        node: s.to_string(),
        output: 0,
    })
}

fn json_int(v: &Value) -> std::result::Result<i64, String> {
    match v {
        Value::Number(n) => n.as_i64().ok_or_else(|| format!("{n} is not an integer")),
        Value::String(s) => s
            .parse::<i64>()
            .map_err(|_| format!("`{s}` is not an integer")),
        other => Err(format!("{other} is not an integer")),
    }
}

fn json_float(v: &Value) -> std::result::Result<f64, String> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| format!("{n} is not a number")),
        Value::String(s) => match s.as_str() {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            _ => s
                .parse::<f64>()
                .map_err(|_| format!("`{s}` is not a number")),
        },
        other => Err(format!("{other} is not a number")),
    }
}

fn json_bytes(v: &Value) -> std::result::Result<Vec<u8>, String> {
    let s = v.as_str().ok_or("a bytes value is not a string")?;
    decode_base64(s)
}

fn parse_shape(v: &Value) -> std::result::Result<Option<Vec<i64>>, String> {
    let obj = v.as_object().ok_or("a shape is not an object")?;
    if obj.get("unknownRank").and_then(Value::as_bool) == Some(true) {
        return Ok(None);
    }
    let mut dims = Vec::new();
    if let Some(list) = obj.get("dim") {
        let list = list.as_array().ok_or("`dim` is not an array")?;
        if list.len() > MAX_RANK {
            return Err(format!("rank {} exceeds {MAX_RANK}", list.len()));
        }
        for d in list {
            let size = d.get("size").map(json_int).transpose()?.unwrap_or(0);
            dims.push(size);
        }
    }
    Ok(Some(dims))
}

fn parse_attr(v: &Value) -> std::result::Result<AttrValue, String> {
    let obj = v.as_object().ok_or("not an object")?;
    if let Some(s) = obj.get("s") {
        return Ok(AttrValue::Bytes(json_bytes(s)?));
    }
    if let Some(i) = obj.get("i") {
        return Ok(AttrValue::Int(json_int(i)?));
    }
    if let Some(f) = obj.get("f") {
        return Ok(AttrValue::Float(json_float(f)?));
    }
    if let Some(b) = obj.get("b") {
        return Ok(AttrValue::Bool(b.as_bool().ok_or("`b` is not a boolean")?));
    }
    if let Some(t) = obj.get("type") {
        return Ok(AttrValue::Type(match t {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }));
    }
    if let Some(s) = obj.get("shape") {
        return Ok(AttrValue::Shape(parse_shape(s)?));
    }
    if let Some(l) = obj.get("list") {
        let l = l.as_object().ok_or("`list` is not an object")?;
        let arr = |key: &str| -> std::result::Result<&[Value], String> {
            match l.get(key) {
                None | Some(Value::Null) => Ok(&[]),
                Some(Value::Array(a)) => Ok(a),
                Some(_) => Err(format!("`list.{key}` is not an array")),
            }
        };
        return Ok(AttrValue::List {
            bytes: arr("s")?
                .iter()
                .map(json_bytes)
                .collect::<std::result::Result<_, _>>()?,
            ints: arr("i")?
                .iter()
                .map(json_int)
                .collect::<std::result::Result<_, _>>()?,
            floats: arr("f")?
                .iter()
                .map(json_float)
                .collect::<std::result::Result<_, _>>()?,
            bools: arr("b")?
                .iter()
                .map(|b| {
                    b.as_bool()
                        .ok_or("`list.b` holds a non-boolean".to_string())
                })
                .collect::<std::result::Result<_, _>>()?,
            types: arr("type")?
                .iter()
                .map(|t| t.as_str().unwrap_or_default().to_string())
                .collect(),
        });
    }
    Ok(AttrValue::Other(v.clone()))
}

fn parse_group(v: &Value) -> Result<WeightGroup> {
    let obj = v
        .as_object()
        .ok_or_else(|| invalid("a weight group is not an object"))?;
    let paths = obj
        .get("paths")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("`paths` is missing or not an array"))?
        .iter()
        .map(|p| {
            p.as_str()
                .map(str::to_string)
                .ok_or_else(|| invalid("a shard path is not a string"))
        })
        .collect::<Result<Vec<_>>>()?;
    let weights = obj
        .get("weights")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("`weights` is missing or not an array"))?
        .iter()
        .map(parse_weight_spec)
        .collect::<Result<Vec<_>>>()?;
    if paths.is_empty() && weights.iter().any(|w| w.stored_bytes() > 0) {
        return Err(invalid("the group has weights but no shard paths"));
    }
    Ok(WeightGroup { paths, weights })
}

fn parse_weight_spec(v: &Value) -> Result<WeightSpec> {
    let obj = v
        .as_object()
        .ok_or_else(|| invalid("a weight entry is not an object"))?;
    let name = opt_str(obj, "name")?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid("a weight has no name"))?;
    let shape_json = obj.get("shape").and_then(Value::as_array).ok_or_else(|| {
        invalid(format!(
            "weight `{name}`: `shape` is missing or not an array"
        ))
    })?;
    if shape_json.len() > MAX_RANK {
        return Err(invalid(format!(
            "weight `{name}`: rank {} exceeds {MAX_RANK}",
            shape_json.len()
        )));
    }
    let mut shape = Vec::with_capacity(shape_json.len());
    let mut count: u64 = 1;
    for d in shape_json {
        let d = json_int(d).map_err(|m| invalid(format!("weight `{name}` shape: {m}")))?;
        if d < 0 {
            return Err(invalid(format!(
                "weight `{name}` has a negative dimension {d}"
            )));
        }
        count = count
            .checked_mul(d as u64)
            .filter(|&c| c <= MAX_WEIGHT_BYTES)
            .ok_or_else(|| invalid(format!("weight `{name}` has too many elements")))?;
        shape.push(d as usize);
    }
    let dtype = WeightDtype::parse(
        &opt_str(obj, "dtype")?.ok_or_else(|| invalid(format!("weight `{name}` has no dtype")))?,
        &name,
    )?;
    let quantization = match obj.get("quantization") {
        None | Some(Value::Null) => None,
        Some(Value::Object(q)) => Some(parse_quantization(q, &name)?),
        Some(_) => {
            return Err(invalid(format!(
                "weight `{name}`: `quantization` is not an object"
            )))
        }
    };
    Ok(WeightSpec {
        name,
        shape,
        dtype,
        quantization,
    })
}

fn parse_quantization(q: &Map<String, Value>, name: &str) -> Result<Quantization> {
    let dtype = opt_str(q, "dtype")?
        .ok_or_else(|| invalid(format!("weight `{name}`: quantization without dtype")))?;
    let affine = || -> Result<(f64, f64)> {
        let get = |k: &str| -> Result<f64> {
            let v = q.get(k).ok_or_else(|| {
                invalid(format!(
                    "weight `{name}`: {dtype} quantization needs `scale` and `min`"
                ))
            })?;
            let f = json_float(v).map_err(|m| invalid(format!("weight `{name}` {k}: {m}")))?;
            if !f.is_finite() {
                return Err(invalid(format!("weight `{name}`: {k} is not finite")));
            }
            Ok(f)
        };
        Ok((get("scale")?, get("min")?))
    };
    Ok(match dtype.as_str() {
        "float16" => Quantization::Float16,
        "uint8" => {
            let (scale, min) = affine()?;
            Quantization::Uint8 { scale, min }
        }
        "uint16" => {
            let (scale, min) = affine()?;
            Quantization::Uint16 { scale, min }
        }
        other => {
            return Err(invalid(format!(
                "weight `{name}` has unknown quantization dtype `{other}` (supported: float16, uint8, uint16)"
            )))
        }
    })
}

/// Decodes standard base64 (with or without padding), as protobuf JSON writes bytes.
fn decode_base64(s: &str) -> std::result::Result<Vec<u8>, String> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a') as u32 + 26,
            b'0'..=b'9' => (c - b'0') as u32 + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        })
    }
    let body = s.trim_end_matches('=');
    if s.len() - body.len() > 2 {
        return Err(format!("`{s}` is not base64"));
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &c in body.as_bytes() {
        let v = val(c).ok_or_else(|| format!("`{s}` is not base64"))?;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if bits >= 6 {
        return Err(format!("`{s}` is not base64 (truncated)"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "cielr-tfjs-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn model_json(weights: &str, paths: &str) -> String {
        format!(
            r#"{{"format": "graph-model", "modelTopology": {{"node": [
                {{"name": "x", "op": "Placeholder", "attr": {{"dtype": {{"type": "DT_FLOAT"}},
                  "shape": {{"shape": {{"dim": [{{"size": "1"}}, {{"size": "-1"}}]}}}}}}}},
                {{"name": "w", "op": "Const"}},
                {{"name": "y", "op": "Mul", "input": ["x", "w:0", "^x"],
                  "attr": {{"padding": {{"s": "U0FNRQ=="}}, "strides": {{"list": {{"i": ["1", "2"]}}}},
                            "fused_ops": {{"list": {{"s": ["Qmlhc0FkZA==", "UmVsdQ=="]}}}},
                            "epsilon": {{"f": 0.5}}, "keep_dims": {{"b": true}}, "N": {{"i": "2"}}}}}}]}},
              "weightsManifest": [{{"paths": {paths}, "weights": {weights}}}]}}"#
        )
    }

    #[test]
    fn base64_matches_known_strings() {
        assert_eq!(decode_base64("U0FNRQ==").unwrap(), b"SAME");
        assert_eq!(decode_base64("VkFMSUQ=").unwrap(), b"VALID");
        assert_eq!(decode_base64("Qmlhc0FkZA==").unwrap(), b"BiasAdd");
        assert_eq!(decode_base64("").unwrap(), b"");
        assert!(decode_base64("a").is_err());
        assert!(decode_base64("ab$d").is_err());
    }

    #[test]
    fn parses_nodes_attributes_and_dequantises() {
        let weights = r#"[
            {"name": "w", "shape": [3], "dtype": "float32", "quantization": {"dtype": "float16", "original_dtype": "float32"}},
            {"name": "i", "shape": [2], "dtype": "int32"},
            {"name": "u8", "shape": [2], "dtype": "float32", "quantization": {"dtype": "uint8", "scale": 0.5, "min": -1.0}},
            {"name": "u16", "shape": [1], "dtype": "int32", "quantization": {"dtype": "uint16", "scale": 0.25, "min": 1}},
            {"name": "f", "shape": [1, 1], "dtype": "float32"},
            {"name": "b", "shape": [2], "dtype": "bool"}]"#;
        let json = model_json(weights, r#"["a.bin", "b.bin"]"#);
        let mut bytes = Vec::new();
        for v in [1.0f32, -2.5, 65504.0] {
            bytes.extend(half::f16::from_f32(v).to_bits().to_le_bytes());
        }
        bytes.extend(7i32.to_le_bytes());
        bytes.extend((-3i32).to_le_bytes());
        bytes.extend([0u8, 4]);
        bytes.extend(10u16.to_le_bytes());
        bytes.extend(0.125f32.to_le_bytes());
        bytes.extend([1u8, 0]);
        let dir = temp_dir("ok");
        std::fs::write(dir.join("model.json"), &json).unwrap();
        std::fs::write(dir.join("a.bin"), &bytes[..5]).unwrap();
        std::fs::write(dir.join("b.bin"), &bytes[5..]).unwrap();
        let m = TfjsModel::load(dir.join("model.json")).unwrap();
        assert_eq!(
            m.weight("w").unwrap().as_f32().unwrap(),
            &[1.0, -2.5, 65504.0]
        );
        assert_eq!(m.weight("i").unwrap().as_i32().unwrap(), &[7, -3]);
        assert_eq!(m.weight("u8").unwrap().as_f32().unwrap(), &[-1.0, 1.0]);
        assert_eq!(m.weight("u16").unwrap().as_i32().unwrap(), &[4]);
        assert_eq!(m.weight("f").unwrap().shape, vec![1, 1]);
        assert_eq!(m.weight("b").unwrap().as_i32().unwrap(), &[1, 0]);
        let y = m.node("y").unwrap();
        assert_eq!(y.inputs.len(), 2);
        assert_eq!(
            y.inputs[1],
            NodeInput {
                node: "w".into(),
                output: 0
            }
        );
        assert_eq!(y.control_inputs, vec!["x".to_string()]);
        assert_eq!(y.attr_str("padding").as_deref(), Some("SAME"));
        assert_eq!(y.attr_ints("strides"), Some(&[1i64, 2][..]));
        assert_eq!(
            y.attr_strs("fused_ops").unwrap(),
            vec!["BiasAdd".to_string(), "Relu".to_string()]
        );
        assert_eq!(y.attr_float("epsilon"), Some(0.5));
        assert_eq!(y.attr_bool("keep_dims"), Some(true));
        assert_eq!(y.attr_int("N"), Some(2));
        let x = m.node("x").unwrap();
        assert_eq!(x.attrs["shape"], AttrValue::Shape(Some(vec![1, -1])));
        // The same bytes in memory.
        let m2 = TfjsModel::from_bytes(json.as_bytes(), &[bytes]).unwrap();
        assert_eq!(m2.weights, m.weights);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn load_err(tag: &str, json: &str, files: &[(&str, &[u8])]) -> String {
        let dir = temp_dir(tag);
        std::fs::write(dir.join("model.json"), json).unwrap();
        for (name, data) in files {
            std::fs::write(dir.join(name), data).unwrap();
        }
        let e = TfjsModel::load(dir.join("model.json"))
            .unwrap_err()
            .to_string();
        std::fs::remove_dir_all(dir).unwrap();
        e
    }

    #[test]
    fn hostile_manifests_are_errors() {
        let one = r#"[{"name": "w", "shape": [2], "dtype": "float32"}]"#;
        // Shard size differs from the manifest.
        let e = load_err(
            "size",
            &model_json(one, r#"["a.bin"]"#),
            &[("a.bin", &[0; 7])],
        );
        assert!(
            e.contains("hold 7 bytes but the manifest declares 8"),
            "{e}"
        );
        // Escaping paths.
        for p in [
            r#"["../a.bin"]"#,
            r#"["/etc/passwd"]"#,
            r#"["x/../../a.bin"]"#,
            r#"["C:\\a.bin"]"#,
        ] {
            let e = load_err("path", &model_json(one, p), &[]);
            assert!(e.contains("shard path"), "{p}: {e}");
        }
        // A huge declared shape is refused before anything is allocated.
        let huge = r#"[{"name": "w", "shape": [100000, 100000, 100000], "dtype": "float32"}]"#;
        let e = load_err(
            "huge",
            &model_json(huge, r#"["a.bin"]"#),
            &[("a.bin", &[0; 8])],
        );
        assert!(e.contains("too many elements"), "{e}");
        let big = r#"[{"name": "w", "shape": [1000000, 1000], "dtype": "float32"}]"#;
        let e = load_err(
            "big",
            &model_json(big, r#"["a.bin"]"#),
            &[("a.bin", &[0; 8])],
        );
        assert!(e.contains("bytes"), "{e}");
        let neg = r#"[{"name": "w", "shape": [-1], "dtype": "float32"}]"#;
        assert!(load_err("neg", &model_json(neg, r#"["a.bin"]"#), &[]).contains("negative"));
        let dup = r#"[{"name": "w", "shape": [1], "dtype": "float32"}, {"name": "w", "shape": [1], "dtype": "float32"}]"#;
        assert!(load_err("dup", &model_json(dup, r#"["a.bin"]"#), &[]).contains("duplicate weight"));
        let q = r#"[{"name": "w", "shape": [1], "dtype": "float32", "quantization": {"dtype": "uint8"}}]"#;
        assert!(load_err("q", &model_json(q, r#"["a.bin"]"#), &[]).contains("scale"));
        let q = r#"[{"name": "w", "shape": [1], "dtype": "float32", "quantization": {"dtype": "int4"}}]"#;
        assert!(load_err("q4", &model_json(q, r#"["a.bin"]"#), &[]).contains("int4"));
        let s = r#"[{"name": "w", "shape": [1], "dtype": "string"}]"#;
        assert!(load_err("str", &model_json(s, r#"["a.bin"]"#), &[]).contains("string"));
        // Malformed structure.
        for (json, want) in [
            ("[]", "not a JSON object"),
            (r#"{"format": "layers-model"}"#, "graph-model"),
            (r#"{"format": "graph-model"}"#, "modelTopology"),
            (
                r#"{"format": "graph-model", "modelTopology": {"node": [{"op": "Const"}]}}"#,
                "no name",
            ),
            (
                r#"{"format": "graph-model", "modelTopology": {"node": [{"name": "a", "op": "Const"}, {"name": "a", "op": "Const"}]}}"#,
                "duplicate node",
            ),
            (
                r#"{"format": "graph-model", "modelTopology": {"node": [{"name": "a", "op": "X", "attr": {"k": {"s": "!!"}}}]}}"#,
                "base64",
            ),
            ("{not json", "JSON"),
        ] {
            let e = ModelManifest::parse(json.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{json}: {e}");
        }
        // In-memory buffers must match too.
        let json = model_json(one, r#"["a.bin"]"#);
        assert!(TfjsModel::from_bytes(json.as_bytes(), &[vec![0; 9]]).is_err());
        assert!(TfjsModel::from_bytes(json.as_bytes(), &[]).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_out_of_the_folder_are_refused() {
        let outside = temp_dir("outside");
        std::fs::write(outside.join("secret.bin"), [0u8; 8]).unwrap();
        let dir = temp_dir("symlink");
        std::os::unix::fs::symlink(outside.join("secret.bin"), dir.join("a.bin")).unwrap();
        let one = r#"[{"name": "w", "shape": [2], "dtype": "float32"}]"#;
        std::fs::write(dir.join("model.json"), model_json(one, r#"["a.bin"]"#)).unwrap();
        let e = TfjsModel::load(dir.join("model.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("leads out of the model folder"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
        std::fs::remove_dir_all(outside).unwrap();
    }
}
