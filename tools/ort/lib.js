'use strict';
// Shared helpers for perch's ONNX Runtime scripts: argument parsing, IDX and .npy I/O, session creation.
// Errors go through fail(): one line on stderr naming the file and what is wrong, exit code 1.

const fs = require('fs');
const path = require('path');
const zlib = require('zlib');

class UsageError extends Error {}

function fail(msg) {
  throw new UsageError(msg);
}

// Runs main(), printing perch-style errors (and the usage text for argument errors) instead of stacks.
function runMain(main, usage) {
  Promise.resolve()
    .then(main)
    .catch((e) => {
      if (e instanceof UsageError) {
        process.stderr.write(`error: ${e.message}\n`);
        if (e.showUsage && usage) process.stderr.write(usage);
      } else {
        process.stderr.write(`error: ${e && e.stack ? e.stack : e}\n`);
      }
      process.exit(1);
    });
}

// Parses argv against a spec { name: {type: 'string'|'number'|'int'|'bool'|'list', alias, default} }.
// Returns { positional: [...], opts: {...} }. Unknown options are errors.
function parseArgs(argv, spec) {
  const byFlag = new Map();
  for (const [name, s] of Object.entries(spec)) {
    byFlag.set(`--${name}`, name);
    if (s.alias) byFlag.set(s.alias, name);
  }
  const opts = {};
  for (const [name, s] of Object.entries(spec)) opts[name] = s.type === 'list' ? [] : s.default;
  const positional = [];
  for (let i = 0; i < argv.length; ++i) {
    let a = argv[i];
    let inline;
    if (a.startsWith('--') && a.includes('=')) {
      inline = a.slice(a.indexOf('=') + 1);
      a = a.slice(0, a.indexOf('='));
    }
    if (!a.startsWith('-') || a === '-') {
      positional.push(a);
      continue;
    }
    const name = byFlag.get(a);
    if (!name) {
      const e = new UsageError(`unknown option ${a}`);
      e.showUsage = true;
      throw e;
    }
    const s = spec[name];
    if (s.type === 'bool') {
      opts[name] = true;
      continue;
    }
    let v = inline;
    if (v === undefined) {
      if (i + 1 >= argv.length) fail(`option ${a} needs a value`);
      v = argv[++i];
    }
    if (s.type === 'number' || s.type === 'int' || s.type === 'count') {
      const n = Number(v);
      if (v.trim() === '' || !Number.isFinite(n)) fail(`option ${a}: '${v}' is not a number`);
      if (s.type === 'int' && (!Number.isInteger(n) || n < 1)) fail(`option ${a}: '${v}' must be a positive integer`);
      if (s.type === 'count' && (!Number.isInteger(n) || n < 0)) fail(`option ${a}: '${v}' must be a non-negative integer`);
      opts[name] = n;
    } else if (s.type === 'list') {
      opts[name].push(v);
    } else {
      opts[name] = v;
    }
  }
  return { positional, opts };
}

function readFile(file, what) {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    fail(`${file}: cannot read ${what}: ${e.code === 'ENOENT' ? 'no such file' : e.message}`);
  }
}

// ---- IDX (MNIST format), plain or gzip --------------------------------------------------------------
const IDX_TYPES = {
  0x08: { name: 'uint8', size: 1, get: (dv, o) => dv.getUint8(o) },
  0x09: { name: 'int8', size: 1, get: (dv, o) => dv.getInt8(o) },
  0x0b: { name: 'int16', size: 2, get: (dv, o) => dv.getInt16(o, false) },
  0x0c: { name: 'int32', size: 4, get: (dv, o) => dv.getInt32(o, false) },
  0x0d: { name: 'float32', size: 4, get: (dv, o) => dv.getFloat32(o, false) },
  0x0e: { name: 'float64', size: 8, get: (dv, o) => dv.getFloat64(o, false) },
};

// Returns { type, dims, data } with data a Uint8Array (uint8 files) or Float64Array of values.
function readIdx(file) {
  let buf = readFile(file, 'IDX file');
  if (buf.length >= 2 && buf[0] === 0x1f && buf[1] === 0x8b) {
    try {
      buf = zlib.gunzipSync(buf);
    } catch (e) {
      fail(`${file}: corrupt or truncated gzip data: ${e.message}`);
    }
  }
  if (buf.length < 4) fail(`${file}: not an IDX file: only ${buf.length} bytes`);
  if (buf[0] !== 0 || buf[1] !== 0) fail(`${file}: not an IDX file (bad magic number)`);
  const t = IDX_TYPES[buf[2]];
  if (!t) fail(`${file}: unknown IDX element type 0x${buf[2].toString(16)}`);
  const ndims = buf[3];
  if (ndims === 0) fail(`${file}: IDX magic number declares 0 dimensions`);
  const headerBytes = 4 + 4 * ndims;
  if (buf.length < headerBytes) fail(`${file}: truncated IDX header: need ${headerBytes} bytes, have ${buf.length}`);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const dims = [];
  let count = 1;
  for (let i = 0; i < ndims; ++i) {
    dims.push(dv.getUint32(4 + 4 * i, false));
    count *= dims[i];
  }
  const need = headerBytes + count * t.size;
  if (buf.length < need)
    fail(`${file}: truncated IDX file: dims [${dims}] of ${t.name} need ${need} bytes, have ${buf.length}`);
  if (buf.length > need) fail(`${file}: IDX file has ${buf.length - need} trailing bytes after the data`);
  let data;
  if (t.name === 'uint8') {
    data = new Uint8Array(buf.buffer, buf.byteOffset + headerBytes, count);
  } else {
    data = new Float64Array(count);
    for (let i = 0; i < count; ++i) data[i] = t.get(dv, headerBytes + i * t.size);
  }
  return { type: t.name, dims, data };
}

// ---- .npy -------------------------------------------------------------------------------------------
// descr <-> ORT tensor type <-> typed array.
const NPY_TYPES = [
  { descr: '<f4', ort: 'float32', Array: Float32Array },
  { descr: '<f8', ort: 'float64', Array: Float64Array },
  { descr: '<f2', ort: 'float16', Array: Uint16Array },
  { descr: '|i1', ort: 'int8', Array: Int8Array },
  { descr: '|u1', ort: 'uint8', Array: Uint8Array },
  { descr: '<i2', ort: 'int16', Array: Int16Array },
  { descr: '<u2', ort: 'uint16', Array: Uint16Array },
  { descr: '<i4', ort: 'int32', Array: Int32Array },
  { descr: '<u4', ort: 'uint32', Array: Uint32Array },
  { descr: '<i8', ort: 'int64', Array: BigInt64Array },
  { descr: '<u8', ort: 'uint64', Array: BigUint64Array },
  { descr: '|b1', ort: 'bool', Array: Uint8Array },
];

function npyTypeOfDescr(descr) {
  let d = descr;
  // '=' is native (little-endian here); '<' on one-byte types means the same as '|'.
  if (d.length === 3 && (d[0] === '=' || (d[0] === '<' && d[2] === '1'))) d = (d[2] === '1' ? '|' : '<') + d.slice(1);
  return NPY_TYPES.find((t) => t.descr === d);
}

// Returns { type (ORT type name), dims, data (typed array) }.
function readNpy(file) {
  const buf = readFile(file, '.npy file');
  const magic = Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]);
  if (buf.length < 10 || !buf.subarray(0, 6).equals(magic)) fail(`${file}: not a .npy file (bad magic)`);
  const major = buf[6];
  if (![1, 2, 3].includes(major) || buf[7] !== 0) fail(`${file}: unsupported .npy version ${major}.${buf[7]}`);
  const prefix = major === 1 ? 10 : 12;
  if (buf.length < prefix) fail(`${file}: truncated .npy preamble`);
  const hlen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  if (buf.length < prefix + hlen) fail(`${file}: truncated .npy header (declares ${hlen} bytes)`);
  const header = buf.subarray(prefix, prefix + hlen).toString(major === 3 ? 'utf8' : 'latin1');
  const descr = /['"]descr['"]\s*:\s*['"]([^'"]+)['"]/.exec(header);
  const fortran = /['"]fortran_order['"]\s*:\s*(True|False)/.exec(header);
  const shape = /['"]shape['"]\s*:\s*\(([^)]*)\)/.exec(header);
  if (!descr || !fortran || !shape) fail(`${file}: bad .npy header: ${header.trim()}`);
  if (fortran[1] === 'True') fail(`${file}: .npy array is in Fortran order; only C order is supported`);
  if (descr[1][0] === '>') fail(`${file}: big-endian .npy data ('${descr[1]}') is not supported`);
  const t = npyTypeOfDescr(descr[1]);
  if (!t) fail(`${file}: unsupported .npy dtype '${descr[1]}'`);
  const dims = shape[1]
    .split(',')
    .map((s) => s.trim().replace(/L$/, ''))
    .filter((s) => s !== '')
    .map((s) => {
      if (!/^\d+$/.test(s)) fail(`${file}: bad .npy shape (${shape[1]})`);
      return Number(s);
    });
  const count = dims.reduce((a, b) => a * b, 1);
  const nbytes = count * t.Array.BYTES_PER_ELEMENT;
  const have = buf.length - prefix - hlen;
  if (have < nbytes) fail(`${file}: truncated .npy file: shape (${dims}) of ${descr[1]} needs ${nbytes} data bytes, has ${have}`);
  if (have > nbytes) fail(`${file}: .npy file has ${have - nbytes} trailing bytes after the data`);
  // Copy into a fresh (aligned) ArrayBuffer: typed arrays need offsets aligned to their element size.
  const bytes = new Uint8Array(nbytes);
  bytes.set(buf.subarray(prefix + hlen));
  return { type: t.ort, dims, data: new t.Array(bytes.buffer, 0, count) };
}

function encodeNpy(ortType, dims, data) {
  const t = NPY_TYPES.find((x) => x.ort === ortType);
  if (!t) fail(`cannot write a ${ortType} tensor as .npy`);
  const shape = dims.length === 1 ? `(${dims[0]},)` : `(${dims.join(', ')})`;
  let dict = `{'descr': '${t.descr}', 'fortran_order': False, 'shape': ${shape}, }`;
  let prefix = 10;
  let pad = (64 - ((prefix + dict.length + 1) % 64)) % 64;
  if (dict.length + pad + 1 > 0xffff) {
    prefix = 12;
    pad = (64 - ((prefix + dict.length + 1) % 64)) % 64;
  }
  const header = dict + ' '.repeat(pad) + '\n';
  const pre = Buffer.alloc(prefix);
  Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]).copy(pre, 0);
  pre[6] = prefix === 10 ? 1 : 2;
  pre[7] = 0;
  if (prefix === 10) pre.writeUInt16LE(header.length, 8);
  else pre.writeUInt32LE(header.length, 8);
  let body;
  if (ortType === 'bool') body = Buffer.from(Uint8Array.from(data, (v) => (v ? 1 : 0)));
  else body = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  return Buffer.concat([pre, Buffer.from(header, 'latin1'), body]);
}

// Writes atomically: a temporary file in the same folder, then rename.
function writeFileAtomic(file, bytes) {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.tmp.${process.pid}`);
  try {
    fs.writeFileSync(tmp, bytes);
    fs.renameSync(tmp, file);
  } catch (e) {
    try {
      fs.unlinkSync(tmp);
    } catch (_) {
      /* already gone */
    }
    fail(`${file}: cannot write: ${e.message}`);
  }
}

// ---- ONNX Runtime -----------------------------------------------------------------------------------
function loadOrt() {
  try {
    return require('onnxruntime-node');
  } catch (e) {
    fail(`cannot load onnxruntime-node (${e.message.split('\n')[0]}); run: ` +
      `cd ${__dirname} && ONNXRUNTIME_NODE_INSTALL=skip npm install   (or scripts/setup.sh)`);
  }
}

// level: ONNX Runtime's graphOptimizationLevel ('disabled' | 'basic' | 'extended' | 'all'). Note that from
// 'basic' up ONNX Runtime (WeightBiasQuantization) quantizes the float weight of a Conv/ConvTranspose/Gemm whose
// input comes from a per-tensor DequantizeLinear and whose output goes (through Relu/Clip only) to a
// QuantizeLinear to symmetric per-tensor int8: a weight layer a QDQ model leaves float is not run float.
async function createSession(model, threads, level = 'all', extra = {}) {
  if (!model) {
    const e = new UsageError('missing MODEL.onnx');
    e.showUsage = true;
    throw e;
  }
  if (!fs.existsSync(model)) fail(`${model}: model file not found`);
  const ort = loadOrt();
  try {
    const session = await ort.InferenceSession.create(model, {
      intraOpNumThreads: threads,
      interOpNumThreads: 1,
      executionMode: 'sequential',
      graphOptimizationLevel: level,
      ...extra,
    });
    return { ort, session };
  } catch (e) {
    fail(`${model}: ONNX Runtime cannot load the model: ${e.message}`);
  }
}

function inputMeta(session, index = 0) {
  const m = session.inputMetadata && session.inputMetadata[index];
  return m && m.isTensor ? m : null;
}

module.exports = {
  UsageError, fail, runMain, parseArgs, readIdx, readNpy, encodeNpy, writeFileAtomic, createSession, inputMeta,
  npyTypeOfDescr, NPY_TYPES, loadOrt,
};
