'use strict';
// node --test tools/ort/   — checks the scripts' own .npy and IDX code (no model needed).
const test = require('node:test');
const assert = require('node:assert');
const fs = require('fs');
const os = require('os');
const path = require('path');
const zlib = require('zlib');
const { encodeNpy, readNpy, readIdx, NPY_TYPES } = require('./lib');

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'perch-ort-test-'));
test.after(() => fs.rmSync(tmp, { recursive: true, force: true }));

test('npy bytes match what NumPy writes', () => {
  const b = encodeNpy('int32', [3], Int32Array.from([1, 2, 3]));
  const header = "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }" + ' '.repeat(60) + '\n';
  const want = Buffer.concat([Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0, 0x76, 0]),
    Buffer.from(header, 'latin1'), Buffer.from([1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0])]);
  assert.deepStrictEqual(b, want);
});

test('npy round-trips every type and shape', () => {
  for (const t of NPY_TYPES) {
    for (const dims of [[], [4], [2, 2]]) {
      const n = dims.reduce((a, c) => a * c, 1);
      const data = t.Array === BigInt64Array || t.Array === BigUint64Array
        ? t.Array.from({ length: n }, (_, i) => BigInt(i * 3))
        : t.Array.from({ length: n }, (_, i) => (t.ort === 'bool' ? i % 2 : i * 3));
      const file = path.join(tmp, `${t.ort}_${dims.length}.npy`);
      fs.writeFileSync(file, encodeNpy(t.ort, dims, data));
      const r = readNpy(file);
      assert.strictEqual(r.type, t.ort);
      assert.deepStrictEqual(r.dims, dims);
      assert.deepStrictEqual(Array.from(r.data), Array.from(data));
    }
  }
});

test('npy errors name the file', () => {
  const file = path.join(tmp, 'cut.npy');
  fs.writeFileSync(file, encodeNpy('float32', [4], new Float32Array(4)).subarray(0, 70));
  assert.throws(() => readNpy(file), /cut\.npy: truncated/);
  const be = path.join(tmp, 'be.npy');
  fs.writeFileSync(be, Buffer.from(encodeNpy('float32', [1], new Float32Array(1)).toString('latin1').replace('<f4', '>f4'), 'latin1'));
  assert.throws(() => readNpy(be), /be\.npy: big-endian/);
});

test('IDX plain and gzip, truncation', () => {
  const bytes = Buffer.from([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3, 0, 1, 2, 253, 254, 255]);
  fs.writeFileSync(path.join(tmp, 'a.idx'), bytes);
  fs.writeFileSync(path.join(tmp, 'a.idx.gz'), zlib.gzipSync(bytes));
  for (const f of ['a.idx', 'a.idx.gz']) {
    const r = readIdx(path.join(tmp, f));
    assert.deepStrictEqual(r.dims, [2, 3]);
    assert.deepStrictEqual(Array.from(r.data), [0, 1, 2, 253, 254, 255]);
  }
  fs.writeFileSync(path.join(tmp, 'cut.idx'), bytes.subarray(0, 16));
  assert.throws(() => readIdx(path.join(tmp, 'cut.idx')), /cut\.idx: truncated IDX file.*need 18 bytes, have 16/);
});

// saturation.js writes its probe model as protobuf bytes by hand: ONNX Runtime must load it and, on values whose
// products cannot saturate anything (a = 3, b = -2, K = 64), give the exact sums in every column.
test('the saturation probe model is valid ONNX and exact on small values', async (t) => {
  let ort;
  try {
    ort = require('onnxruntime-node');
  } catch (e) {
    t.skip('onnxruntime-node is not installed (scripts/setup.sh)');
    return;
  }
  const { probeModel } = require('./saturation');
  const session = await ort.InferenceSession.create(probeModel(64, 16, -2));
  assert.deepStrictEqual(session.inputNames, ['a']);
  assert.deepStrictEqual(session.outputNames, ['y']);
  const y = (await session.run({ a: new ort.Tensor('uint8', new Uint8Array(64).fill(3), [1, 64]) })).y;
  assert.deepStrictEqual(y.dims, [1, 16]);
  assert.deepStrictEqual(Array.from(y.data, Number), new Array(16).fill(3 * -2 * 64));
});
