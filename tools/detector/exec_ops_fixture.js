#!/usr/bin/env node
// Writes a small TF.js graph model that exercises every op and attribute the Burn executor
// (crates/cielr-scene/src/tfjs_exec.rs) implements, including the ones CenterNet does not use
// (depthwise channel multiplier, Prelu and LeakyRelu fusions, EXPLICIT padding, resize with
// align_corners / half_pixel_centers, MaxPool SAME with stride 2, broadcasting constants),
// runs it with TF.js's own graph executor on the pure-JS CPU backend and records the outputs.
//
//   cd tools/detector && npm ci && node exec_ops_fixture.js ../../crates/cielr-scene/tests/fixtures/tfjs-ops
'use strict';

const fs = require('fs');
const path = require('path');
const tf = require('@tensorflow/tfjs');

const b64 = (s) => Buffer.from(s).toString('base64');
const s = (v) => ({ s: b64(v) });
const ints = (v) => ({ list: { i: v.map(String) } });
const strs = (v) => ({ list: { s: v.map(b64) } });
const F = { type: 'DT_FLOAT' };

// Deterministic weights in [-1, 1).
function values(n, seed) {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (((i * 37 + seed * 11) % 101) - 50) / 50;
  return out;
}

const weights = []; // [name, shape, dtype, TypedArray]
function constant(name, shape, data, dtype = 'float32') {
  weights.push([name, shape, dtype, data]);
  return { name, op: 'Const', attr: { dtype: dtype === 'float32' ? F : { type: 'DT_INT32' } } };
}
const size = (shape) => shape.reduce((a, b) => a * b, 1);
const fw = (name, shape, seed, scale = 1) => constant(name, shape, values(size(shape), seed).map((v) => v * scale));

const conv = (strides, padding, extra = {}) => ({ T: F, data_format: s('NHWC'), strides: ints(strides), padding: s(padding), dilations: ints([1, 1, 1, 1]), ...extra });

const nodes = [
  { name: 'x', op: 'Placeholder', attr: { dtype: F, shape: { shape: { dim: [1, 8, 10, 3].map((d) => ({ size: String(d) })) } } } },
  fw('w1', [3, 3, 3, 4], 1, 0.5),
  fw('b1', [4], 2),
  // Stride 2 SAME on 8x10: TensorFlow pads 0 before and 1 after on both axes.
  { name: 'a', op: '_FusedConv2D', input: ['x', 'w1', 'b1'], attr: conv([1, 2, 2, 1], 'SAME', { fused_ops: strs(['BiasAdd', 'Relu6']), num_args: { i: '1' }, epsilon: { f: 0 } }) },
  fw('dw', [3, 3, 4, 2], 3), // channel multiplier 2
  fw('bd', [8], 4),
  fw('alpha', [8], 5, 0.3),
  { name: 'b', op: 'FusedDepthwiseConv2dNative', input: ['a', 'dw', 'bd', 'alpha'], attr: conv([1, 1, 1, 1], 'SAME', { fused_ops: strs(['BiasAdd', 'Prelu']), num_args: { i: '2' } }) },
  fw('dw2', [2, 2, 8, 1], 6),
  { name: 'c', op: 'DepthwiseConv2dNative', input: ['b', 'dw2'], attr: conv([1, 2, 2, 1], 'VALID') },
  constant('size_d', [2], new Int32Array([4, 5]), 'int32'),
  { name: 'd', op: 'ResizeBilinear', input: ['c', 'size_d'], attr: { T: F, align_corners: { b: true }, half_pixel_centers: { b: false } } },
  constant('size_e', [2], new Int32Array([3, 7]), 'int32'),
  { name: 'e', op: 'ResizeBilinear', input: ['c', 'size_e'], attr: { T: F, align_corners: { b: false }, half_pixel_centers: { b: true } } },
  fw('w3', [1, 1, 8, 3], 7),
  { name: 'f', op: 'Conv2D', input: ['b', 'w3'], attr: conv([1, 1, 1, 1], 'EXPLICIT', { explicit_paddings: ints([0, 0, 1, 2, 2, 1, 0, 0]) }) },
  fw('w4', [2, 2, 3, 2], 8),
  fw('b4', [2], 9),
  { name: 'f2', op: '_FusedConv2D', input: ['f', 'w4', 'b4'], attr: conv([1, 1, 1, 1], 'SAME', { fused_ops: strs(['BiasAdd', 'LeakyRelu']), num_args: { i: '1' }, leakyrelu_alpha: { f: 0.1 } }) },
  { name: 'g', op: 'MaxPool', input: ['f2'], attr: { T: F, data_format: s('NHWC'), ksize: ints([1, 3, 3, 1]), strides: ints([1, 2, 2, 1]), padding: s('SAME') } },
  constant('axes', [2], new Int32Array([1, 2]), 'int32'),
  { name: 'h', op: 'Mean', input: ['b', 'axes'], attr: { T: F, keep_dims: { b: true } } },
  { name: 'hs', op: 'Sigmoid', input: ['h'], attr: { T: F } },
  { name: 'i', op: 'Mul', input: ['b', 'hs'], attr: { T: F } },
  fw('cv', [8], 10),
  { name: 'k', op: 'AddV2', input: ['i', 'cv'], attr: { T: F } },
  constant('half', [], new Float32Array([0.5])),
  { name: 'm', op: 'Sub', input: ['half', 'k'], attr: { T: F } },
  { name: 'm6', op: 'Relu6', input: ['m'], attr: { T: F } },
  { name: 'mr', op: 'Relu', input: ['k'], attr: { T: F } },
  { name: 'n', op: 'Add', input: ['m6', 'mr'], attr: { T: F } },
  constant('axis', [], new Int32Array([-1]), 'int32'),
  { name: 'l', op: 'ConcatV2', input: ['d', 'd', 'axis'], attr: { T: F, N: { i: '2' }, Tidx: { type: 'DT_INT32' } } },
  { name: 'out_l', op: 'Identity', input: ['l'], attr: { T: F } },
];

const OUTPUTS = ['a', 'b', 'c', 'd', 'e', 'f', 'f2', 'g', 'n', 'out_l'];

async function main() {
  const outDir = process.argv[2];
  if (!outDir) {
    console.error('usage: node exec_ops_fixture.js <out-dir>');
    process.exit(2);
  }
  await tf.setBackend('cpu');
  const weightSpecs = weights.map(([name, shape, dtype]) => ({ name, shape, dtype }));
  const bin = Buffer.concat(weights.map(([, , , data]) => Buffer.from(data.buffer, data.byteOffset, data.byteLength)));
  const modelJson = {
    format: 'graph-model',
    generatedBy: 'tools/detector/exec_ops_fixture.js',
    convertedBy: null,
    modelTopology: { node: nodes, versions: { producer: 1 } },
    weightsManifest: [{ paths: ['weights.bin'], weights: weightSpecs }],
  };
  fs.mkdirSync(outDir, { recursive: true });
  fs.writeFileSync(path.join(outDir, 'model.json'), JSON.stringify(modelJson, null, 1) + '\n');
  fs.writeFileSync(path.join(outDir, 'weights.bin'), bin);

  const model = await tf.loadGraphModel(tf.io.fromMemory({
    modelTopology: modelJson.modelTopology,
    weightSpecs,
    weightData: bin.buffer.slice(bin.byteOffset, bin.byteOffset + bin.byteLength),
    format: 'graph-model',
  }));
  const x = tf.tensor4d(values(8 * 10 * 3, 0).map((v) => v * 100), [1, 8, 10, 3]);
  const outs = model.execute(x, OUTPUTS);
  const expected = { tfjs: tf.version.tfjs, input: { shape: x.shape, values: Array.from(x.dataSync()) }, outputs: {} };
  OUTPUTS.forEach((name, i) => {
    expected.outputs[name] = { shape: outs[i].shape, values: Array.from(outs[i].dataSync()).map((v) => Number(v.toPrecision(9))) };
  });
  fs.writeFileSync(path.join(outDir, 'expected.json'), JSON.stringify(expected) + '\n');
  console.log(OUTPUTS.map((n, i) => `${n}: ${JSON.stringify(outs[i].shape)}`).join(', '));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
