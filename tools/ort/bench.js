#!/usr/bin/env node
'use strict';
// Median latency of session.run alone on random input (the input is created once, outside the timing).
const path = require('path');
const { parseArgs, createSession, inputMeta, fail, runMain } = require('./lib');

const USAGE = `usage: node bench.js MODEL.onnx [--batch 1] [--threads 1] [--iters 100] [--warmup 10] [--warmup-ms 500]
                     [--seed 1]
                     [--shape D1,D2,...] [--json]
  The first input's shape comes from the model, its first (batch) dim replaced by --batch; --shape gives the
  full input shape when the model leaves other dims symbolic. Prints median/p10/p90 ms and images per second.
  Untimed runs first until both --warmup runs and --warmup-ms have passed (as perch bench does: the CPU's clock
  ramps up over a fresh process's first ~0.3 s of work).
`;

function rng(seed) {
  // mulberry32: small, deterministic.
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomTensor(ort, type, dims, rand) {
  const n = dims.reduce((a, b) => a * b, 1);
  switch (type) {
    case 'float32': return new ort.Tensor(type, Float32Array.from({ length: n }, () => rand() * 4 - 2), dims);
    case 'float64': return new ort.Tensor(type, Float64Array.from({ length: n }, () => rand() * 4 - 2), dims);
    case 'uint8': return new ort.Tensor(type, Uint8Array.from({ length: n }, () => Math.floor(rand() * 256)), dims);
    case 'int8': return new ort.Tensor(type, Int8Array.from({ length: n }, () => Math.floor(rand() * 256) - 128), dims);
    case 'int32': return new ort.Tensor(type, Int32Array.from({ length: n }, () => Math.floor(rand() * 10)), dims);
    case 'int64': return new ort.Tensor(type, BigInt64Array.from({ length: n }, () => BigInt(Math.floor(rand() * 10))), dims);
    default: fail(`bench.js cannot make random ${type} input`);
  }
}

function quantile(sorted, q) {
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos), hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

async function main() {
  const { positional, opts } = parseArgs(process.argv.slice(2), {
    batch: { type: 'int', default: 1 },
    threads: { type: 'int', default: 1 },
    iters: { type: 'int', default: 100 },
    warmup: { type: 'count', default: 10 },
    'warmup-ms': { type: 'count', default: 500 },
    seed: { type: 'int', default: 1 },
    shape: { type: 'string' },
    json: { type: 'bool', default: false },
    help: { type: 'bool', alias: '-h' },
  });
  if (opts.help) return process.stdout.write(USAGE);
  if (positional.length !== 1) fail(`expected exactly one MODEL.onnx, got ${positional.length} positional arguments\n${USAGE}`);
  const model = positional[0];
  const { ort, session } = await createSession(model, opts.threads);
  if (session.inputNames.length !== 1)
    fail(`${model}: bench.js feeds one input, the model has ${session.inputNames.length} (${session.inputNames.join(', ')})`);
  const meta = inputMeta(session);
  const name = session.inputNames[0];
  let dims;
  if (opts.shape) {
    dims = opts.shape.split(',').map((s) => {
      const v = Number(s);
      if (!Number.isInteger(v) || v < 1) fail(`--shape: '${s}' is not a positive integer`);
      return v;
    });
  } else {
    if (!meta || meta.shape.length === 0) fail(`${model}: input '${name}' has no known shape; pass --shape`);
    dims = meta.shape.map((d, i) => (i === 0 ? opts.batch : d));
    const sym = dims.find((d) => typeof d !== 'number' || d < 1);
    if (sym !== undefined) fail(`${model}: input '${name}' has shape [${meta.shape}] with symbolic dims; pass --shape`);
  }
  const feeds = { [name]: randomTensor(ort, meta ? meta.type : 'float32', dims, rng(opts.seed)) };
  const w0 = process.hrtime.bigint();
  let warmRuns = 0;
  for (; warmRuns < opts.warmup || Number(process.hrtime.bigint() - w0) / 1e6 < opts['warmup-ms']; ++warmRuns)
    await session.run(feeds);
  const ms = [];
  for (let i = 0; i < opts.iters; ++i) {
    const t0 = process.hrtime.bigint();
    await session.run(feeds);
    ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  ms.sort((a, b) => a - b);
  const median = quantile(ms, 0.5);
  const res = {
    model: path.basename(model), batch: dims[0], threads: opts.threads, iters: opts.iters, warmup_runs: warmRuns,
    median_ms: median, p10_ms: quantile(ms, 0.1), p90_ms: quantile(ms, 0.9), images_per_s: (dims[0] * 1000) / median,
  };
  if (opts.json) process.stdout.write(JSON.stringify(res) + '\n');
  else
    process.stdout.write(`${res.model}: batch ${res.batch}, ${res.threads} thread(s): median ${median.toFixed(3)} ms ` +
      `(p10 ${res.p10_ms.toFixed(3)}, p90 ${res.p90_ms.toFixed(3)}, ${opts.iters} iters), ` +
      `${Math.round(res.images_per_s)} images/s\n`);
}

runMain(main, USAGE);
