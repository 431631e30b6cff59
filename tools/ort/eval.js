#!/usr/bin/env node
'use strict';
// Top-1 accuracy of an ONNX model under ONNX Runtime on an IDX image/label set (e.g. Fashion-MNIST test).
const path = require('path');
const { parseArgs, readIdx, createSession, inputMeta, fail, runMain } = require('./lib');
const { resolveLevel } = require('./saturation');

const USAGE = `usage: node eval.js MODEL.onnx --images IMAGES.idx[.gz] --labels LABELS.idx[.gz]
         [--mean 0.2860] [--std 0.3530] [--batch 256] [--threads 1] [--limit N] [--json]
         [--level all|extended|basic|disabled|exact]
  Pixels are normalized as (p/255 - mean)/std; [N,H,W] images get a channel dim when the model wants one.
  Uses the model's first input and first output; prints the accuracy (--json: {"accuracy","count","correct",
  "level","u8s8_exact"}).
  --level: ONNX Runtime's graph optimization level (default all). "exact": all, unless this CPU's ONNX Runtime
  saturates u8 x s8 products in its integer kernels (saturation.js probes it: CPUs without VNNI), then disabled —
  a QDQ model then runs as DequantizeLinear / float op / QuantizeLinear, its own semantics.
`;

async function main() {
  const { positional, opts } = parseArgs(process.argv.slice(2), {
    images: { type: 'string' },
    labels: { type: 'string' },
    mean: { type: 'number', default: 0.286 },
    std: { type: 'number', default: 0.353 },
    batch: { type: 'int', default: 256 },
    threads: { type: 'int', default: 1 },
    limit: { type: 'int' },
    json: { type: 'bool', default: false },
    level: { type: 'string', default: 'all' },
    help: { type: 'bool', alias: '-h' },
  });
  if (opts.help) return process.stdout.write(USAGE);
  if (positional.length !== 1) fail(`expected exactly one MODEL.onnx, got ${positional.length} positional arguments\n${USAGE}`);
  if (!opts.images || !opts.labels) fail(`--images and --labels are required\n${USAGE}`);
  if (!(opts.std > 0)) fail(`--std must be > 0, got ${opts.std}`);

  const images = readIdx(opts.images);
  const labels = readIdx(opts.labels);
  if (images.type !== 'uint8') fail(`${opts.images}: images must be uint8 pixels, got ${images.type}`);
  if (labels.dims.length !== 1) fail(`${opts.labels}: labels must be 1-d, got dims [${labels.dims}]`);
  let n = images.dims[0];
  if (labels.dims[0] !== n) fail(`${n} images in ${opts.images} but ${labels.dims[0]} labels in ${opts.labels}`);
  if (opts.limit) n = Math.min(n, opts.limit);

  const { level, u8s8Exact } = await resolveLevel(opts.level, '--level', 'eval.js');
  const { ort, session } = await createSession(positional[0], opts.threads, level);
  const inName = session.inputNames[0];
  const outName = session.outputNames[0];
  const meta = inputMeta(session);
  let rowDims = images.dims.slice(1);
  let batch = opts.batch;
  if (meta) {
    if (meta.type !== 'float32') fail(`${positional[0]}: input '${inName}' is ${meta.type}, eval.js feeds float32`);
    if (meta.shape.length === rowDims.length + 2) rowDims = [1, ...rowDims];  // [N,H,W] -> [N,1,H,W]
    if (meta.shape.length !== rowDims.length + 1)
      fail(`${positional[0]}: input '${inName}' has shape [${meta.shape}], images are [${images.dims}]`);
    meta.shape.slice(1).forEach((d, i) => {
      if (typeof d === 'number' && d !== rowDims[i])
        fail(`${positional[0]}: input '${inName}' wants shape [${meta.shape}], images give [N,${rowDims}]`);
    });
    if (typeof meta.shape[0] === 'number' && meta.shape[0] > 0) batch = meta.shape[0];  // fixed batch size
  }
  const row = rowDims.reduce((a, b) => a * b, 1);

  // The normalization of each possible pixel value, computed in float32 like perch does.
  const lut = new Float32Array(256);
  for (let v = 0; v < 256; ++v) lut[v] = Math.fround(Math.fround(Math.fround(v / 255) - Math.fround(opts.mean)) / Math.fround(opts.std));

  let correct = 0;
  const t0 = process.hrtime.bigint();
  for (let begin = 0; begin < n; begin += batch) {
    const count = Math.min(batch, n - begin);
    const rows = meta && typeof meta.shape[0] === 'number' ? batch : count;  // a fixed batch is zero-padded
    const x = new Float32Array(rows * row);
    const px = images.data.subarray(begin * row, (begin + count) * row);
    for (let i = 0; i < px.length; ++i) x[i] = lut[px[i]];
    const out = (await session.run({ [inName]: new ort.Tensor('float32', x, [rows, ...rowDims]) }))[outName];
    if (out.dims.length !== 2 || out.dims[0] !== rows)
      fail(`${positional[0]}: output '${outName}' has shape [${out.dims}], expected [${rows}, classes]`);
    const classes = out.dims[1];
    const y = out.data;
    for (let i = 0; i < count; ++i) {
      let best = 0;
      for (let c = 1; c < classes; ++c) if (y[i * classes + c] > y[i * classes + best]) best = c;
      if (best === Number(labels.data[begin + i])) ++correct;
    }
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const accuracy = n ? correct / n : 0;
  if (opts.json) {
    process.stdout.write(JSON.stringify({ accuracy, count: n, correct, level, u8s8_exact: u8s8Exact }) + '\n');
  } else {
    process.stdout.write(`${path.basename(positional[0])}: accuracy ${accuracy.toFixed(4)} (${correct}/${n}), ` +
      `${seconds.toFixed(2)} s, ${opts.threads} thread(s), batch ${batch}\n`);
  }
}

runMain(main, USAGE);
