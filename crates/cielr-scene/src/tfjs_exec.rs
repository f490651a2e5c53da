//! A small executor of TF.js graph models over Burn ops, for the float, 4-D (NHWC) part of
//! convolutional detectors.
//!
//! [`GraphExecutor::new`] takes a [`TfjsModel`], the name of its image placeholder and the
//! names of the outputs wanted; it walks back from the outputs, orders the needed nodes,
//! converts every weight once (HWIO filters to Burn's OIHW, depthwise filters to grouped
//! convolutions, constants to broadcastable tensors) and refuses ops it does not implement.
//! [`GraphExecutor::run`] then evaluates the plan for one NHWC input.
//!
//! Activations are kept in Burn's NCHW layout; TensorFlow semantics are kept exactly:
//! - `SAME` padding as TensorFlow computes it (`out = ceil(in / stride)`, total padding
//!   `max((out - 1) * stride + (k - 1) * dilation + 1 - in, 0)`, the smaller half before,
//!   so stride-2 layers pad only at the bottom/right), `VALID`, and `EXPLICIT` paddings;
//! - `_FusedConv2D` / `FusedDepthwiseConv2dNative` with `fused_ops` `BiasAdd` followed by an
//!   optional `Relu`, `Relu6`, `Sigmoid`, `LeakyRelu` (`leakyrelu_alpha`) or `Prelu`
//!   (alpha as the extra argument);
//! - depthwise filters `[kh, kw, in, multiplier]` give output channel `c * multiplier + m`;
//! - `ResizeBilinear` with `align_corners` and `half_pixel_centers` as TensorFlow (and the
//!   TF.js CPU kernel) compute source coordinates, including the legacy mode with both off;
//! - `MaxPool` pads `SAME` with minus infinity;
//! - elementwise `Add`/`AddV2`/`Mul`/`Sub` broadcast like NumPy (constants of rank < 4 are
//!   aligned to the trailing, i.e. channel, axis); `Mean` over spatial axes with `keep_dims`.
//!
//! Ops the plan needs but this executor lacks are reported by name when the plan is built;
//! shapes that do not fit are reported when it runs (Burn's own checks would panic).

use std::collections::HashMap;

use burn::tensor::activation::{leaky_relu, relu, sigmoid};
use burn::tensor::backend::Backend;
use burn::tensor::module::{conv2d, max_pool2d};
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{Int, Tensor, TensorData};

use crate::error::{Result, SceneError};
use crate::tfjs::{GraphNode, HostTensor, TfjsModel};

/// The largest spatial size `ResizeBilinear` may produce.
const MAX_RESIZE: usize = 16384;
/// The most elements a padded or resized activation may have (1 GiB of f32).
const MAX_ELEMENTS: usize = 1 << 28;

fn check_size(node: &str, dims: [usize; 4]) -> Result<()> {
    let n = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .unwrap_or(usize::MAX);
    if n > MAX_ELEMENTS {
        return Err(shape_error(
            node,
            format!("an intermediate of shape {dims:?} (NCHW) exceeds {MAX_ELEMENTS} elements"),
        ));
    }
    Ok(())
}

fn broadcasts(a: [usize; 4], b: [usize; 4]) -> bool {
    a.iter()
        .zip(b.iter())
        .all(|(&p, &q)| p == q || p == 1 || q == 1)
}

fn unsupported(message: impl Into<String>) -> SceneError {
    SceneError::config("TF.js graph", message)
}

fn shape_error(node: &str, message: impl std::fmt::Display) -> SceneError {
    SceneError::InvalidInput(format!("node `{node}`: {message}"))
}

/// NHWC axis -> NCHW dimension.
fn nchw_dim(axis: i64, node: &str) -> Result<usize> {
    let a = if axis < 0 { axis + 4 } else { axis };
    Ok(match a {
        0 => 0,
        1 => 2,
        2 => 3,
        3 => 1,
        _ => {
            return Err(unsupported(format!(
                "node `{node}`: axis {axis} is out of range for a 4-D tensor"
            )))
        }
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Padding {
    Same,
    Valid,
    /// top, bottom, left, right
    Explicit([usize; 4]),
}

impl Padding {
    fn from_node(node: &GraphNode) -> Result<Self> {
        match node.attr_str("padding").as_deref() {
            Some("SAME") => Ok(Padding::Same),
            Some("VALID") => Ok(Padding::Valid),
            Some("EXPLICIT") => {
                let p = node.attr_ints("explicit_paddings").unwrap_or(&[]);
                if p.len() != 8 || p.iter().any(|&v| !(0..=1 << 16).contains(&v)) {
                    return Err(unsupported(format!(
                        "node `{}`: explicit_paddings {p:?} is not 8 small non-negative values",
                        node.name
                    )));
                }
                if p[0] != 0 || p[1] != 0 || p[6] != 0 || p[7] != 0 {
                    return Err(unsupported(format!(
                        "node `{}`: padding of the batch or channel axis is not supported",
                        node.name
                    )));
                }
                Ok(Padding::Explicit([
                    p[2] as usize,
                    p[3] as usize,
                    p[4] as usize,
                    p[5] as usize,
                ]))
            }
            other => Err(unsupported(format!(
                "node `{}`: padding {other:?} is not supported",
                node.name
            ))),
        }
    }

    /// (top, bottom, left, right) for an input of `[h, w]`.
    fn resolve(
        self,
        input: [usize; 2],
        kernel: [usize; 2],
        stride: [usize; 2],
        dilation: [usize; 2],
    ) -> [usize; 4] {
        match self {
            Padding::Valid => [0; 4],
            Padding::Explicit(p) => p,
            Padding::Same => {
                let mut out = [0; 4];
                for a in 0..2 {
                    let eff = (kernel[a] - 1) * dilation[a] + 1;
                    let o = input[a].div_ceil(stride[a]);
                    let total = ((o.max(1) - 1) * stride[a] + eff).saturating_sub(input[a]);
                    out[2 * a] = total / 2;
                    out[2 * a + 1] = total - total / 2;
                }
                out
            }
        }
    }
}

/// Checks and reads a 4-element NHWC attribute such as `strides` ([1, sh, sw, 1]).
fn spatial_pair(node: &GraphNode, key: &str, default: [usize; 2]) -> Result<[usize; 2]> {
    let Some(v) = node.attr_ints(key) else {
        return Ok(default);
    };
    if v.is_empty() {
        return Ok(default);
    }
    if v.len() != 4
        || v[0] != 1
        || v[3] != 1
        || !(1..=64).contains(&v[1])
        || !(1..=64).contains(&v[2])
    {
        return Err(unsupported(format!(
            "node `{}`: {key} {v:?} is not [1, h, w, 1] with 1 <= h, w <= 64",
            node.name
        )));
    }
    Ok([v[1] as usize, v[2] as usize])
}

fn check_nhwc(node: &GraphNode) -> Result<()> {
    match node.attr_str("data_format").as_deref() {
        None | Some("NHWC") => Ok(()),
        Some(other) => Err(unsupported(format!(
            "node `{}`: data_format {other} is not supported (only NHWC)",
            node.name
        ))),
    }
}

enum Activation<B: Backend> {
    None,
    Relu,
    Relu6,
    Sigmoid,
    LeakyRelu(f64),
    /// Per-channel slopes, broadcastable NCHW.
    Prelu(Tensor<B, 4>),
}

impl<B: Backend> Activation<B> {
    fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Activation::None => x,
            Activation::Relu => relu(x),
            Activation::Relu6 => x.clamp(0.0, 6.0),
            Activation::Sigmoid => sigmoid(x),
            Activation::LeakyRelu(a) => leaky_relu(x, *a),
            Activation::Prelu(alpha) => x.clone().clamp_min(0.0) + x.clamp_max(0.0) * alpha.clone(),
        }
    }
}

enum Operand<B: Backend> {
    Slot(usize),
    Scalar(f32),
    Const(Tensor<B, 4>),
}

#[derive(Debug, Clone, Copy)]
enum BinaryOp {
    Add,
    Mul,
    Sub,
}

enum StepKind<B: Backend> {
    Conv {
        input: usize,
        weight: Tensor<B, 4>,
        bias: Option<Tensor<B, 1>>,
        kernel: [usize; 2],
        in_channels: usize,
        stride: [usize; 2],
        dilation: [usize; 2],
        padding: Padding,
        groups: usize,
        activation: Activation<B>,
    },
    Unary {
        input: usize,
        activation: Activation<B>,
    },
    Binary {
        op: BinaryOp,
        a: Operand<B>,
        b: Operand<B>,
    },
    Mean {
        input: usize,
        dims: Vec<usize>,
    },
    Resize {
        input: usize,
        size: [usize; 2],
        align_corners: bool,
        half_pixel_centers: bool,
    },
    Concat {
        inputs: Vec<usize>,
        dim: usize,
    },
    MaxPool {
        input: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: Padding,
    },
}

struct Step<B: Backend> {
    name: String,
    kind: StepKind<B>,
    output: usize,
    /// Slots no later step reads (freed after this step).
    release: Vec<usize>,
}

/// A compiled plan that evaluates part of a TF.js graph with Burn.
pub struct GraphExecutor<B: Backend> {
    device: B::Device,
    input_name: String,
    /// The placeholder's NHWC shape (`-1` for unknown), when the graph records it.
    input_shape: Option<Vec<i64>>,
    input_slot: usize,
    steps: Vec<Step<B>>,
    outputs: Vec<(String, usize)>,
    slots: usize,
}

impl<B: Backend> std::fmt::Debug for GraphExecutor<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphExecutor")
            .field("input", &self.input_name)
            .field("input_shape", &self.input_shape)
            .field("steps", &self.steps.len())
            .field(
                "outputs",
                &self.outputs.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

struct Builder<'a, B: Backend> {
    model: &'a TfjsModel,
    device: &'a B::Device,
    slot_of: HashMap<&'a str, usize>,
}

impl<'a, B: Backend> Builder<'a, B> {
    fn node(&self, name: &str) -> Result<&'a GraphNode> {
        self.model
            .manifest
            .nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| unsupported(format!("the graph has no node `{name}`")))
    }

    fn is_const(&self, name: &str) -> bool {
        !self.slot_of.contains_key(name)
    }

    /// The weight behind a `Const` input.
    fn constant(&self, node: &GraphNode, input: usize) -> Result<&'a HostTensor> {
        let src = node.inputs.get(input).ok_or_else(|| {
            unsupported(format!(
                "node `{}` ({}) lacks input {input}",
                node.name, node.op
            ))
        })?;
        let producer = self.node(&src.node)?;
        if producer.op != "Const" {
            return Err(unsupported(format!(
                "node `{}` ({}): input {input} (`{}`) must be a constant",
                node.name, node.op, src.node
            )));
        }
        self.model.weight(&src.node).ok_or_else(|| {
            unsupported(format!(
                "constant `{}` has no entry in the weights manifest",
                src.node
            ))
        })
    }

    fn const_f32(&self, node: &GraphNode, input: usize) -> Result<(&'a [usize], &'a [f32])> {
        let t = self.constant(node, input)?;
        let v = t.as_f32().ok_or_else(|| {
            unsupported(format!(
                "node `{}` ({}): constant input {input} is not float32",
                node.name, node.op
            ))
        })?;
        Ok((&t.shape, v))
    }

    fn const_i32(&self, node: &GraphNode, input: usize) -> Result<&'a [i32]> {
        let t = self.constant(node, input)?;
        t.as_i32().ok_or_else(|| {
            unsupported(format!(
                "node `{}` ({}): constant input {input} is not int32",
                node.name, node.op
            ))
        })
    }

    fn slot(&self, node: &GraphNode, input: usize) -> Result<usize> {
        let src = node.inputs.get(input).ok_or_else(|| {
            unsupported(format!(
                "node `{}` ({}) lacks input {input}",
                node.name, node.op
            ))
        })?;
        self.slot_of.get(src.node.as_str()).copied().ok_or_else(|| {
            unsupported(format!(
                "node `{}` ({}): input {input} (`{}`) is a constant; constant folding is not supported",
                node.name, node.op, src.node
            ))
        })
    }

    /// A float constant as a broadcastable NCHW tensor (NumPy alignment on NHWC).
    fn broadcast_const(&self, shape: &[usize], values: &[f32], node: &str) -> Result<Tensor<B, 4>> {
        if shape.len() > 4 {
            return Err(unsupported(format!(
                "node `{node}`: constant of rank {} (only up to 4)",
                shape.len()
            )));
        }
        let mut nhwc = [1usize; 4];
        nhwc[4 - shape.len()..].copy_from_slice(shape);
        let t = Tensor::<B, 4>::from_data(TensorData::new(values.to_vec(), nhwc), self.device);
        Ok(t.permute([0, 3, 1, 2]))
    }

    fn operand(&self, node: &GraphNode, input: usize) -> Result<Operand<B>> {
        let src = &node.inputs[input];
        if self.is_const(&src.node) {
            let (shape, values) = self.const_f32(node, input)?;
            if values.len() == 1 && shape.len() <= 4 {
                Ok(Operand::Scalar(values[0]))
            } else {
                Ok(Operand::Const(
                    self.broadcast_const(shape, values, &node.name)?,
                ))
            }
        } else {
            Ok(Operand::Slot(self.slot(node, input)?))
        }
    }

    fn fused_activation(
        &self,
        node: &GraphNode,
        ops: &[String],
        extra: usize,
    ) -> Result<Activation<B>> {
        let act = match ops {
            [] => return Ok(Activation::None),
            [first, rest @ ..] if first == "BiasAdd" => rest,
            _ => {
                return Err(unsupported(format!(
                    "node `{}` ({}): fused_ops {ops:?} not supported (BiasAdd then an optional activation)",
                    node.name, node.op
                )))
            }
        };
        Ok(match act {
            [] => Activation::None,
            [a] => match a.as_str() {
                "Relu" => Activation::Relu,
                "Relu6" => Activation::Relu6,
                "Sigmoid" => Activation::Sigmoid,
                "LeakyRelu" => {
                    Activation::LeakyRelu(node.attr_float("leakyrelu_alpha").unwrap_or(0.2))
                }
                "Prelu" => {
                    let (shape, values) = self.const_f32(node, extra)?;
                    Activation::Prelu(self.broadcast_const(shape, values, &node.name)?)
                }
                other => {
                    return Err(unsupported(format!(
                        "node `{}` ({}): fused activation {other} is not supported",
                        node.name, node.op
                    )))
                }
            },
            _ => {
                return Err(unsupported(format!(
                    "node `{}` ({}): fused_ops {ops:?} not supported",
                    node.name, node.op
                )))
            }
        })
    }

    fn conv(&self, node: &GraphNode, depthwise: bool, fused: bool) -> Result<StepKind<B>> {
        check_nhwc(node)?;
        let input = self.slot(node, 0)?;
        let (fshape, fvalues) = self.const_f32(node, 1)?;
        let &[kh, kw, ci, co] = fshape else {
            return Err(unsupported(format!(
                "node `{}`: filter shape {fshape:?} is not 4-D",
                node.name
            )));
        };
        if kh == 0 || kw == 0 || ci == 0 || co == 0 {
            return Err(unsupported(format!(
                "node `{}`: empty filter {fshape:?}",
                node.name
            )));
        }
        let stride = spatial_pair(node, "strides", [1, 1])?;
        let dilation = spatial_pair(node, "dilations", [1, 1])?;
        let padding = Padding::from_node(node)?;
        // HWIO -> OIHW; depthwise [kh, kw, in, mult] -> [in * mult, 1, kh, kw].
        let (oihw_shape, groups, in_channels) = if depthwise {
            ([ci * co, 1, kh, kw], ci, ci)
        } else {
            ([co, ci, kh, kw], 1, ci)
        };
        let mut w = vec![0f32; fvalues.len()];
        for y in 0..kh {
            for x in 0..kw {
                for i in 0..ci {
                    for o in 0..co {
                        let src = ((y * kw + x) * ci + i) * co + o;
                        let dst = if depthwise {
                            ((i * co + o) * kh + y) * kw + x
                        } else {
                            ((o * ci + i) * kh + y) * kw + x
                        };
                        w[dst] = fvalues[src];
                    }
                }
            }
        }
        let out_channels = oihw_shape[0];
        let weight = Tensor::<B, 4>::from_data(TensorData::new(w, oihw_shape), self.device);
        let (bias, activation) = if fused {
            let ops = node.attr_strs("fused_ops").unwrap_or_default();
            let num_args = node.attr_int("num_args").unwrap_or(1);
            let bias = if ops.first().map(String::as_str) == Some("BiasAdd") {
                let (bshape, b) = self.const_f32(node, 2)?;
                if b.len() != out_channels || bshape.len() != 1 {
                    return Err(unsupported(format!(
                        "node `{}`: bias of shape {bshape:?} for {out_channels} output channels",
                        node.name
                    )));
                }
                Some(Tensor::<B, 1>::from_data(
                    TensorData::new(b.to_vec(), [b.len()]),
                    self.device,
                ))
            } else {
                None
            };
            if num_args > 2 || (num_args == 2 && ops.get(1).map(String::as_str) != Some("Prelu")) {
                return Err(unsupported(format!(
                    "node `{}`: fused_ops {ops:?} with num_args {num_args} not supported",
                    node.name
                )));
            }
            (bias, self.fused_activation(node, &ops, 3)?)
        } else {
            (None, Activation::None)
        };
        Ok(StepKind::Conv {
            input,
            weight,
            bias,
            kernel: [kh, kw],
            in_channels,
            stride,
            dilation,
            padding,
            groups,
            activation,
        })
    }

    fn step(&self, node: &GraphNode) -> Result<StepKind<B>> {
        let n_inputs = |n: usize| -> Result<()> {
            if node.inputs.len() != n {
                return Err(unsupported(format!(
                    "node `{}` ({}) has {} inputs, expected {n}",
                    node.name,
                    node.op,
                    node.inputs.len()
                )));
            }
            Ok(())
        };
        Ok(match node.op.as_str() {
            "Conv2D" => {
                n_inputs(2)?;
                self.conv(node, false, false)?
            }
            "_FusedConv2D" => self.conv(node, false, true)?,
            "DepthwiseConv2dNative" => {
                n_inputs(2)?;
                self.conv(node, true, false)?
            }
            "FusedDepthwiseConv2dNative" => self.conv(node, true, true)?,
            "Relu" | "Relu6" | "Sigmoid" | "Identity" => {
                n_inputs(1)?;
                StepKind::Unary {
                    input: self.slot(node, 0)?,
                    activation: match node.op.as_str() {
                        "Relu" => Activation::Relu,
                        "Relu6" => Activation::Relu6,
                        "Sigmoid" => Activation::Sigmoid,
                        _ => Activation::None,
                    },
                }
            }
            "Add" | "AddV2" | "Mul" | "Sub" => {
                n_inputs(2)?;
                let a = self.operand(node, 0)?;
                let b = self.operand(node, 1)?;
                if !matches!(a, Operand::Slot(_)) && !matches!(b, Operand::Slot(_)) {
                    return Err(unsupported(format!(
                        "node `{}` ({}): both inputs are constants; constant folding is not supported",
                        node.name, node.op
                    )));
                }
                let op = match node.op.as_str() {
                    "Mul" => BinaryOp::Mul,
                    "Sub" => BinaryOp::Sub,
                    _ => BinaryOp::Add,
                };
                StepKind::Binary { op, a, b }
            }
            "Mean" => {
                n_inputs(2)?;
                if node.attr_bool("keep_dims") != Some(true) {
                    return Err(unsupported(format!(
                        "node `{}`: Mean without keep_dims is not supported",
                        node.name
                    )));
                }
                let mut dims = Vec::new();
                for &a in self.const_i32(node, 1)? {
                    let d = nchw_dim(a as i64, &node.name)?;
                    if !dims.contains(&d) {
                        dims.push(d);
                    }
                }
                StepKind::Mean {
                    input: self.slot(node, 0)?,
                    dims,
                }
            }
            "ResizeBilinear" => {
                n_inputs(2)?;
                let size = self.const_i32(node, 1)?;
                let &[h, w] = size else {
                    return Err(unsupported(format!(
                        "node `{}`: size {size:?} is not [h, w]",
                        node.name
                    )));
                };
                let ok = |v: i32| v > 0 && v as usize <= MAX_RESIZE;
                if !ok(h) || !ok(w) {
                    return Err(unsupported(format!(
                        "node `{}`: size {size:?} out of range 1..={MAX_RESIZE}",
                        node.name
                    )));
                }
                StepKind::Resize {
                    input: self.slot(node, 0)?,
                    size: [h as usize, w as usize],
                    align_corners: node.attr_bool("align_corners").unwrap_or(false),
                    half_pixel_centers: node.attr_bool("half_pixel_centers").unwrap_or(false),
                }
            }
            "ConcatV2" => {
                if node.inputs.len() < 2 {
                    return Err(unsupported(format!(
                        "node `{}`: ConcatV2 needs inputs and an axis",
                        node.name
                    )));
                }
                let last = node.inputs.len() - 1;
                let axis = self.const_i32(node, last)?;
                let &[axis] = axis else {
                    return Err(unsupported(format!(
                        "node `{}`: axis {axis:?} is not a scalar",
                        node.name
                    )));
                };
                StepKind::Concat {
                    inputs: (0..last)
                        .map(|i| self.slot(node, i))
                        .collect::<Result<_>>()?,
                    dim: nchw_dim(axis as i64, &node.name)?,
                }
            }
            "MaxPool" => {
                n_inputs(1)?;
                check_nhwc(node)?;
                StepKind::MaxPool {
                    input: self.slot(node, 0)?,
                    kernel: spatial_pair(node, "ksize", [1, 1])?,
                    stride: spatial_pair(node, "strides", [1, 1])?,
                    padding: Padding::from_node(node)?,
                }
            }
            other => {
                return Err(unsupported(format!(
                    "node `{}`: op {other} is not supported by the Burn executor",
                    node.name
                )))
            }
        })
    }
}

impl<B: Backend> GraphExecutor<B> {
    /// Plans the evaluation of `outputs` from the placeholder `input`, converting weights
    /// onto `device`.
    pub fn new(
        model: &TfjsModel,
        input: &str,
        outputs: &[&str],
        device: &B::Device,
    ) -> Result<Self> {
        let nodes = &model.manifest.nodes;
        let index: HashMap<&str, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), i))
            .collect();
        let find = |name: &str| -> Result<usize> {
            index
                .get(name)
                .copied()
                .ok_or_else(|| unsupported(format!("the graph has no node `{name}`")))
        };
        let input_idx = find(input)?;
        if nodes[input_idx].op != "Placeholder" {
            return Err(unsupported(format!(
                "`{input}` is a {} node, not a Placeholder",
                nodes[input_idx].op
            )));
        }
        // Iterative depth-first search from the outputs: a post-order of the non-constant
        // nodes they depend on (cycles are errors).
        let mut state = vec![0u8; nodes.len()]; // 0 new, 1 on the stack, 2 done
        let mut order = Vec::new();
        for out in outputs {
            let start = find(out)?;
            let mut stack = vec![(start, 0usize)];
            while let Some(&mut (n, ref mut next)) = stack.last_mut() {
                if *next == 0 {
                    if state[n] == 2 {
                        stack.pop();
                        continue;
                    }
                    state[n] = 1;
                }
                let node = &nodes[n];
                if node.op == "Const" {
                    state[n] = 2;
                    stack.pop();
                    continue;
                }
                if let Some(src) = node.inputs.get(*next) {
                    *next += 1;
                    if src.output != 0 {
                        return Err(unsupported(format!(
                            "node `{}` reads output {} of `{}`; only single-output ops are supported",
                            node.name, src.output, src.node
                        )));
                    }
                    let m = find(&src.node)?;
                    match state[m] {
                        0 => stack.push((m, 0)),
                        1 => {
                            return Err(unsupported(format!(
                                "the graph has a cycle through `{}`",
                                src.node
                            )))
                        }
                        _ => {}
                    }
                } else {
                    state[n] = 2;
                    order.push(n);
                    stack.pop();
                }
            }
        }
        let mut slot_of = HashMap::new();
        for (slot, &n) in order.iter().enumerate() {
            slot_of.insert(nodes[n].name.as_str(), slot);
        }
        let builder = Builder::<B> {
            model,
            device,
            slot_of,
        };
        let mut input_slot = None;
        let mut steps = Vec::new();
        for &n in &order {
            let node = &nodes[n];
            let output = builder.slot_of[node.name.as_str()];
            if node.op == "Placeholder" {
                if n != input_idx {
                    return Err(unsupported(format!(
                        "the outputs depend on placeholder `{}` as well as `{input}`",
                        node.name
                    )));
                }
                input_slot = Some(output);
                continue;
            }
            steps.push(Step {
                name: node.name.clone(),
                kind: builder.step(node)?,
                output,
                release: Vec::new(),
            });
        }
        let mut outs = Vec::new();
        for out in outputs {
            let node = &nodes[find(out)?];
            let slot = builder
                .slot_of
                .get(node.name.as_str())
                .copied()
                .ok_or_else(|| {
                    unsupported(format!("output `{out}` is a constant ({})", node.op))
                })?;
            outs.push((out.to_string(), slot));
        }
        // Release each slot after its last reader (outputs are kept).
        let mut last_use: HashMap<usize, usize> = HashMap::new();
        for (i, s) in steps.iter().enumerate() {
            for r in step_reads(&s.kind) {
                last_use.insert(r, i);
            }
        }
        for (slot, i) in last_use {
            if !outs.iter().any(|(_, o)| *o == slot) {
                steps[i].release.push(slot);
            }
        }
        let input_shape = match nodes[input_idx].attrs.get("shape") {
            Some(crate::tfjs::AttrValue::Shape(Some(dims))) if dims.len() == 4 => {
                Some(dims.clone())
            }
            _ => None,
        };
        let input_slot = input_slot.ok_or_else(|| {
            unsupported(format!(
                "the outputs {outputs:?} do not depend on `{input}`"
            ))
        })?;
        Ok(GraphExecutor {
            device: device.clone(),
            input_name: input.to_string(),
            input_shape,
            input_slot,
            steps,
            outputs: outs,
            slots: order.len(),
        })
    }

    /// The placeholder's recorded NHWC shape (`-1` for free dimensions), if any.
    pub fn input_shape(&self) -> Option<&[i64]> {
        self.input_shape.as_deref()
    }

    /// The number of planned steps (ops evaluated per run).
    pub fn num_steps(&self) -> usize {
        self.steps.len()
    }

    /// Evaluates the plan for an NHWC `input` and returns the requested outputs, NHWC, in
    /// the order they were requested.
    pub fn run(&self, input: Tensor<B, 4>) -> Result<Vec<Tensor<B, 4>>> {
        let dims = input.dims();
        if let Some(shape) = &self.input_shape {
            for (a, (&want, &got)) in shape.iter().zip(dims.iter()).enumerate() {
                if want >= 0 && want as usize != got {
                    return Err(SceneError::InvalidInput(format!(
                        "input `{}` must be {shape:?} (NHWC) but is {dims:?} (axis {a})",
                        self.input_name
                    )));
                }
            }
        }
        let mut values: Vec<Option<Tensor<B, 4>>> = vec![None; self.slots];
        values[self.input_slot] = Some(input.permute([0, 3, 1, 2]));
        for step in &self.steps {
            let out = self.eval(step, &values)?;
            values[step.output] = Some(out);
            for &r in &step.release {
                values[r] = None;
            }
        }
        self.outputs
            .iter()
            .map(|(name, slot)| {
                values[*slot]
                    .clone()
                    .map(|t| t.permute([0, 2, 3, 1]))
                    .ok_or_else(|| {
                        unsupported(format!("internal: output `{name}` was not computed"))
                    })
            })
            .collect()
    }

    fn eval(&self, step: &Step<B>, values: &[Option<Tensor<B, 4>>]) -> Result<Tensor<B, 4>> {
        let get = |slot: usize| -> Result<Tensor<B, 4>> {
            values[slot].clone().ok_or_else(|| {
                unsupported(format!("internal: `{}` read a released value", step.name))
            })
        };
        let name = step.name.as_str();
        Ok(match &step.kind {
            StepKind::Conv {
                input,
                weight,
                bias,
                kernel,
                in_channels,
                stride,
                dilation,
                padding,
                groups,
                activation,
            } => {
                let x = get(*input)?;
                let [_, c, h, w] = x.dims();
                if c != *in_channels {
                    return Err(shape_error(
                        name,
                        format!("input has {c} channels but the filter expects {in_channels}"),
                    ));
                }
                let [top, bottom, left, right] =
                    padding.resolve([h, w], *kernel, *stride, *dilation);
                let eff = [
                    (kernel[0] - 1) * dilation[0] + 1,
                    (kernel[1] - 1) * dilation[1] + 1,
                ];
                if h + top + bottom < eff[0] || w + left + right < eff[1] {
                    return Err(shape_error(
                        name,
                        format!(
                            "input {h}x{w} is smaller than the {}x{} kernel",
                            eff[0], eff[1]
                        ),
                    ));
                }
                check_size(name, [x.dims()[0], c, h + top + bottom, w + left + right])?;
                if let Activation::Prelu(alpha) = activation {
                    let out = weight.dims()[0];
                    if alpha.dims()[1] != out && alpha.dims()[1] != 1 {
                        return Err(shape_error(
                            name,
                            format!("Prelu slopes {:?} do not fit {out} channels", alpha.dims()),
                        ));
                    }
                }
                let (x, pad) = if top == bottom && left == right {
                    (x, [top, left])
                } else {
                    (
                        x.pad((left, right, top, bottom), PadMode::Constant(0.0)),
                        [0, 0],
                    )
                };
                let y = conv2d(
                    x,
                    weight.clone(),
                    bias.clone(),
                    ConvOptions::new(*stride, pad, *dilation, *groups),
                );
                activation.apply(y)
            }
            StepKind::Unary { input, activation } => activation.apply(get(*input)?),
            StepKind::Binary { op, a, b } => {
                let resolve = |o: &Operand<B>| -> Result<Option<Tensor<B, 4>>> {
                    Ok(match o {
                        Operand::Slot(s) => Some(get(*s)?),
                        Operand::Const(t) => Some(t.clone()),
                        Operand::Scalar(_) => None,
                    })
                };
                match (resolve(a)?, resolve(b)?) {
                    (Some(x), Some(y)) => {
                        let (dx, dy) = (x.dims(), y.dims());
                        if !broadcasts(dx, dy) {
                            return Err(shape_error(
                                name,
                                format!("shapes {dx:?} and {dy:?} (NCHW) do not broadcast"),
                            ));
                        }
                        match op {
                            BinaryOp::Add => x + y,
                            BinaryOp::Mul => x * y,
                            BinaryOp::Sub => x - y,
                        }
                    }
                    (Some(x), None) => {
                        let Operand::Scalar(s) = b else {
                            return Err(unsupported("internal: operand kind"));
                        };
                        match op {
                            BinaryOp::Add => x.add_scalar(*s),
                            BinaryOp::Mul => x.mul_scalar(*s),
                            BinaryOp::Sub => x.sub_scalar(*s),
                        }
                    }
                    (None, Some(y)) => {
                        let Operand::Scalar(s) = a else {
                            return Err(unsupported("internal: operand kind"));
                        };
                        match op {
                            BinaryOp::Add => y.add_scalar(*s),
                            BinaryOp::Mul => y.mul_scalar(*s),
                            BinaryOp::Sub => y.neg().add_scalar(*s),
                        }
                    }
                    (None, None) => return Err(unsupported("internal: two scalar operands")),
                }
            }
            StepKind::Mean { input, dims } => {
                let mut x = get(*input)?;
                for &d in dims {
                    x = x.mean_dim(d);
                }
                x
            }
            StepKind::Resize {
                input,
                size,
                align_corners,
                half_pixel_centers,
            } => {
                let x = get(*input)?;
                let [n, c, _, _] = x.dims();
                check_size(name, [n, c, size[0], size[1]])?;
                // Columns first, then rows, as the TF.js CPU kernel interpolates.
                let x = resize_axis(
                    x,
                    3,
                    size[1],
                    *align_corners,
                    *half_pixel_centers,
                    &self.device,
                );
                resize_axis(
                    x,
                    2,
                    size[0],
                    *align_corners,
                    *half_pixel_centers,
                    &self.device,
                )
            }
            StepKind::Concat { inputs, dim } => {
                let xs = inputs.iter().map(|&s| get(s)).collect::<Result<Vec<_>>>()?;
                let first = xs[0].dims();
                for x in &xs[1..] {
                    let d = x.dims();
                    if (0..4).any(|a| a != *dim && d[a] != first[a]) {
                        return Err(shape_error(
                            name,
                            format!("cannot concatenate {first:?} and {d:?} (NCHW) along {dim}"),
                        ));
                    }
                }
                Tensor::cat(xs, *dim)
            }
            StepKind::MaxPool {
                input,
                kernel,
                stride,
                padding,
            } => {
                let x = get(*input)?;
                let [_, _, h, w] = x.dims();
                let [top, bottom, left, right] = padding.resolve([h, w], *kernel, *stride, [1, 1]);
                if h + top + bottom < kernel[0] || w + left + right < kernel[1] {
                    return Err(shape_error(
                        name,
                        format!("input {h}x{w} is smaller than the pooling window {kernel:?}"),
                    ));
                }
                check_size(
                    name,
                    [x.dims()[0], x.dims()[1], h + top + bottom, w + left + right],
                )?;
                let x = if top + bottom + left + right > 0 {
                    x.pad(
                        (left, right, top, bottom),
                        PadMode::Constant(f32::NEG_INFINITY),
                    )
                } else {
                    x
                };
                max_pool2d(x, *kernel, *stride, [0, 0], [1, 1], false)
            }
        })
    }
}

fn step_reads<B: Backend>(kind: &StepKind<B>) -> Vec<usize> {
    match kind {
        StepKind::Conv { input, .. }
        | StepKind::Unary { input, .. }
        | StepKind::Mean { input, .. }
        | StepKind::Resize { input, .. }
        | StepKind::MaxPool { input, .. } => vec![*input],
        StepKind::Binary { a, b, .. } => [a, b]
            .iter()
            .filter_map(|o| match o {
                Operand::Slot(s) => Some(*s),
                _ => None,
            })
            .collect(),
        StepKind::Concat { inputs, .. } => inputs.clone(),
    }
}

/// Source positions of a TensorFlow bilinear resize along one axis: for each output index,
/// the lower and upper source index and the weight of the upper one.
pub(crate) fn resize_coords(
    input: usize,
    output: usize,
    align_corners: bool,
    half_pixel_centers: bool,
) -> Vec<(usize, usize, f64)> {
    let (ein, eout) = if align_corners && output > 1 {
        (input - 1, output - 1)
    } else {
        (input, output)
    };
    let ratio = ein as f64 / eout as f64;
    (0..output)
        .map(|o| {
            let src = if half_pixel_centers {
                ratio * (o as f64 + 0.5) - 0.5
            } else {
                ratio * o as f64
            };
            let lo = src.floor().max(0.0);
            let frac = src - lo;
            let hi = src.ceil().min((input - 1) as f64);
            (lo as usize, hi.max(0.0) as usize, frac)
        })
        .collect()
}

/// Bilinear resize of one axis (`dim` 2 = rows, 3 = columns of NCHW).
fn resize_axis<B: Backend>(
    x: Tensor<B, 4>,
    dim: usize,
    output: usize,
    align_corners: bool,
    half_pixel_centers: bool,
    device: &B::Device,
) -> Tensor<B, 4> {
    let input = x.dims()[dim];
    if input == output && !half_pixel_centers && !align_corners {
        return x;
    }
    let coords = resize_coords(input, output, align_corners, half_pixel_centers);
    let lo: Vec<i64> = coords.iter().map(|c| c.0 as i64).collect();
    let hi: Vec<i64> = coords.iter().map(|c| c.1 as i64).collect();
    let frac: Vec<f32> = coords.iter().map(|c| c.2 as f32).collect();
    let lo = Tensor::<B, 1, Int>::from_data(TensorData::new(lo, [output]), device);
    let hi = Tensor::<B, 1, Int>::from_data(TensorData::new(hi, [output]), device);
    let mut fshape = [1usize; 4];
    fshape[dim] = output;
    let frac = Tensor::<B, 4>::from_data(TensorData::new(frac, fshape), device);
    let a = x.clone().select(dim, lo);
    let b = x.select(dim, hi);
    a.clone() + (b - a) * frac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tensorflow() {
        // 512 -> 256 with a 3x3 stride-2 kernel pads 0 before and 1 after.
        assert_eq!(
            Padding::Same.resolve([512, 512], [3, 3], [2, 2], [1, 1]),
            [0, 1, 0, 1]
        );
        // Stride 1 pads symmetrically.
        assert_eq!(
            Padding::Same.resolve([7, 9], [3, 5], [1, 1], [1, 1]),
            [1, 1, 2, 2]
        );
        // Odd input, stride 2, 5x5: out 4, total (3*2+5-7) = 4.
        assert_eq!(
            Padding::Same.resolve([7, 7], [5, 5], [2, 2], [1, 1]),
            [2, 2, 2, 2]
        );
        // Dilation 2 on a 3x3 kernel behaves as 5x5.
        assert_eq!(
            Padding::Same.resolve([8, 8], [3, 3], [1, 1], [2, 2]),
            [2, 2, 2, 2]
        );
        assert_eq!(
            Padding::Valid.resolve([8, 8], [3, 3], [1, 1], [1, 1]),
            [0; 4]
        );
    }

    #[test]
    fn resize_coordinates_follow_tensorflow_modes() {
        // Legacy (both off), 2 -> 4: sources 0, 0.5, 1, 1.5 (clamped to 1).
        let c = resize_coords(2, 4, false, false);
        assert_eq!(c, vec![(0, 0, 0.0), (0, 1, 0.5), (1, 1, 0.0), (1, 1, 0.5)]);
        // Half-pixel centres, 2 -> 4: -0.25 (clamped), 0.25, 0.75, 1.25.
        let c = resize_coords(2, 4, false, true);
        assert_eq!(c[0].0, 0);
        assert!((c[1].2 - 0.25).abs() < 1e-12 && c[1].0 == 0 && c[1].1 == 1);
        assert_eq!((c[3].0, c[3].1), (1, 1));
        // Aligned corners, 3 -> 5: sources 0, 0.5, 1, 1.5, 2.
        let c = resize_coords(3, 5, true, false);
        assert_eq!(c[4], (2, 2, 0.0));
        assert_eq!(c[3], (1, 2, 0.5));
    }
}
