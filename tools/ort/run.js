#!/usr/bin/env node
'use strict';
// Runs an ONNX model once under ONNX Runtime on .npy inputs and writes every output as DIR/<name>.npy.
const fs = require('fs');
const path = require('path');
const { parseArgs, readNpy, encodeNpy, writeFileAtomic, createSession, inputMeta, fail, runMain } = require('./lib');
const { resolveLevel } = require('./saturation');

const USAGE = `usage: node run.js MODEL.onnx --input NAME=FILE.npy [--input NAME=FILE.npy ...] -o DIR [--threads 1]
                   [--level all|extended|basic|disabled|exact]
  --input FILE.npy (no NAME=) feeds the model's first input. Each output is written as DIR/<output name>.npy
  (characters other than [A-Za-z0-9._-] in the name become '_'). Inputs must have the model's element types.
  --level: ONNX Runtime's graph optimization level (default all); "exact" as in eval.js (saturation.js): all,
  or disabled where this CPU's ONNX Runtime saturates u8 x s8 products (then reported on stderr).
`;

async function main() {
  const { positional, opts } = parseArgs(process.argv.slice(2), {
    input: { type: 'list', alias: '-i' },
    out: { type: 'string', alias: '-o' },
    threads: { type: 'int', default: 1 },
    level: { type: 'string', default: 'all' },
    help: { type: 'bool', alias: '-h' },
  });
  if (opts.help) return process.stdout.write(USAGE);
  if (positional.length !== 1) fail(`expected exactly one MODEL.onnx, got ${positional.length} positional arguments\n${USAGE}`);
  if (!opts.out) fail(`-o DIR is required\n${USAGE}`);
  if (opts.input.length === 0) fail(`at least one --input is required\n${USAGE}`);
  const model = positional[0];
  const { level } = await resolveLevel(opts.level, '--level', 'run.js');
  const { ort, session } = await createSession(model, opts.threads, level);

  const feeds = {};
  for (const spec of opts.input) {
    const eq = spec.indexOf('=');
    const name = eq >= 0 ? spec.slice(0, eq) : session.inputNames[0];
    const file = eq >= 0 ? spec.slice(eq + 1) : spec;
    const idx = session.inputNames.indexOf(name);
    if (idx < 0) fail(`${model}: no input named '${name}' (inputs: ${session.inputNames.join(', ')})`);
    if (name in feeds) fail(`input '${name}' given twice`);
    const arr = readNpy(file);
    const meta = inputMeta(session, idx);
    if (meta && meta.type !== arr.type)
      fail(`${file}: input '${name}' of ${model} is ${meta.type}, the file holds ${arr.type}`);
    feeds[name] = new ort.Tensor(arr.type, arr.data, arr.dims);
  }
  const missing = session.inputNames.filter((n) => !(n in feeds));
  if (missing.length) fail(`${model}: no --input for ${missing.map((n) => `'${n}'`).join(', ')}`);

  let results;
  try {
    results = await session.run(feeds);
  } catch (e) {
    fail(`${model}: session.run failed: ${e.message}`);
  }
  fs.mkdirSync(opts.out, { recursive: true });
  for (const name of session.outputNames) {
    const t = results[name];
    const file = path.join(opts.out, `${name.replace(/[^A-Za-z0-9._-]/g, '_')}.npy`);
    writeFileAtomic(file, encodeNpy(t.type, t.dims, t.data));
    process.stdout.write(`${file}: ${t.type} [${t.dims.join(',')}]\n`);
  }
}

runMain(main, USAGE);
