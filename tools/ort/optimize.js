#!/usr/bin/env node
'use strict';
// Saves the model ONNX Runtime actually executes: its graph after the optimizations of one level. On a QDQ model,
// level `extended` writes ONNX Runtime's integer form — QLinearConv plus its com.microsoft contrib ops
// (QLinearAdd, QLinearGlobalAveragePool, QGemm, ...): a real "QOperator" model for perch's tests.
const fs = require('fs');
const { parseArgs, createSession, fail, runMain } = require('./lib');

const USAGE = `usage: node optimize.js MODEL.onnx -o OUT.onnx [--level basic|extended|all]
`;

async function main() {
  const { positional, opts } = parseArgs(process.argv.slice(2), {
    out: { type: 'string', alias: '-o' },
    level: { type: 'string', default: 'extended' },
    help: { type: 'bool', alias: '-h' },
  });
  if (opts.help) return process.stdout.write(USAGE);
  if (positional.length !== 1 || !opts.out) fail(`expected one MODEL.onnx and -o OUT.onnx\n${USAGE}`);
  if (!['disabled', 'basic', 'extended', 'all'].includes(opts.level)) fail(`--level: unknown level '${opts.level}'\n${USAGE}`);
  // ONNX Runtime writes the file itself: into a temporary name first, renamed when complete.
  const tmp = `${opts.out}.tmp${process.pid}`;
  try {
    await createSession(positional[0], 1, opts.level, { optimizedModelFilePath: tmp });
    fs.renameSync(tmp, opts.out);
  } finally {
    if (fs.existsSync(tmp)) fs.unlinkSync(tmp);
  }
}

runMain(main);
