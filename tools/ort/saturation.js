'use strict';
// Whether this CPU's ONNX Runtime computes u8 x s8 integer products exactly.
//
// Without AVX-512 VNNI / AVX-VNNI, x86 int8 GEMM kernels (ONNX Runtime's MLAS, oneDNN) commonly multiply with
// VPMADDUBSW, which adds two u8 x s8 products into int16 with saturation: 255 * 127 + 255 * 127 = 64770 becomes
// 32767. perch's integer engine is exact on every path (docs/INTEGER.md), so on such a CPU ONNX Runtime's int8
// kernels are no reference for it: comparisons then run the QDQ graph with graph optimizations disabled (ONNX
// Runtime executes DequantizeLinear / float op / QuantizeLinear — the file's own semantics, no integer kernels).
//
// The probe: y = MatMulInteger(a, b), a = uint8 [1, 64] all 255, b = int8 [64, 16] all 127, built here as ONNX
// protobuf bytes (no model file); exact y = 255 * 127 * 64 = 2072640 in every column.

const { fail, loadOrt, runMain } = require('./lib');

// Minimal protobuf writer: varint, and length-delimited fields (wire types 0 and 2).
function varint(n) {
  const out = [];
  let v = BigInt(n);
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) b |= 0x80;
    out.push(b);
  } while (v > 0n);
  return out;
}
const fieldVarint = (num, value) => [...varint((num << 3) | 0), ...varint(value)];
const fieldBytes = (num, bytes) => [...varint((num << 3) | 2), ...varint(bytes.length), ...bytes];
const str = (s) => [...Buffer.from(s, 'utf8')];

const ONNX_UINT8 = 2, ONNX_INT8 = 3, ONNX_INT32 = 6;

function valueInfo(name, elemType, dims) {
  // ValueInfoProto { name = 1; type = 2 } ; TypeProto { tensor_type = 1 } ; Tensor { elem_type = 1; shape = 2 }
  // TensorShapeProto { dim = 1 } ; Dimension { dim_value = 1 }
  const shape = dims.flatMap((d) => fieldBytes(1, fieldVarint(1, d)));
  const tensor = [...fieldVarint(1, elemType), ...fieldBytes(2, shape)];
  return [...fieldBytes(1, str(name)), ...fieldBytes(2, fieldBytes(1, tensor))];
}

// ModelProto bytes of the probe (ir_version 8, opset 13).
function probeModel(k, n, weight) {
  // TensorProto { dims = 1; data_type = 2; name = 8; raw_data = 9 }
  const init = [...fieldVarint(1, k), ...fieldVarint(1, n), ...fieldVarint(2, ONNX_INT8), ...fieldBytes(8, str('b')),
    ...fieldBytes(9, new Array(k * n).fill(weight & 0xff))];
  // NodeProto { input = 1; output = 2; op_type = 4 }
  const node = [...fieldBytes(1, str('a')), ...fieldBytes(1, str('b')), ...fieldBytes(2, str('y')),
    ...fieldBytes(4, str('MatMulInteger'))];
  // GraphProto { node = 1; name = 2; initializer = 5; input = 11; output = 12 }
  const graph = [...fieldBytes(1, node), ...fieldBytes(2, str('saturation_probe')), ...fieldBytes(5, init),
    ...fieldBytes(11, valueInfo('a', ONNX_UINT8, [1, k])), ...fieldBytes(12, valueInfo('y', ONNX_INT32, [1, n]))];
  // ModelProto { ir_version = 1; graph = 7; opset_import = 8 } ; OperatorSetIdProto { domain = 1; version = 2 }
  const model = [...fieldVarint(1, 8), ...fieldBytes(7, graph), ...fieldBytes(8, [...fieldBytes(1, []), ...fieldVarint(2, 13)])];
  return Uint8Array.from(model);
}

// { exact: bool, got, want } for ONNX Runtime `ort` (the onnxruntime-node module) with graph optimizations on.
async function probeSaturation(ort) {
  const k = 64, n = 16;
  const session = await ort.InferenceSession.create(probeModel(k, n, 127), {
    intraOpNumThreads: 1, interOpNumThreads: 1, executionMode: 'sequential', graphOptimizationLevel: 'all',
  });
  const a = new ort.Tensor('uint8', new Uint8Array(k).fill(255), [1, k]);
  const y = (await session.run({ a })).y.data;
  const want = 255 * 127 * k;
  let exact = true;
  for (let j = 0; j < n; ++j) exact = exact && Number(y[j]) === want;
  return { exact, got: Number(y[0]), want };
}

// The levels the scripts accept: ONNX Runtime's graphOptimizationLevel values, and 'exact'.
const LEVELS = ['all', 'extended', 'basic', 'disabled', 'exact'];

// graphOptimizationLevel for `level` (checked against LEVELS; `option` names it in the error). 'exact': 'all', unless
// this CPU's ONNX Runtime saturates u8 x s8 products, then 'disabled' (a QDQ model then runs as DequantizeLinear /
// float op / QuantizeLinear, its own semantics; integer ops written in a file — QLinearConv, MatMulInteger, ... —
// still run ONNX Runtime's integer kernels), noted on stderr as `who: ...`. Returns { level, u8s8Exact } (u8s8Exact
// null when not probed).
async function resolveLevel(level, option, who) {
  if (!LEVELS.includes(level)) fail(`${option}: unknown level '${level}' (${LEVELS.join(', ')})`);
  if (level !== 'exact') return { level, u8s8Exact: null };
  const probe = await probeSaturation(loadOrt());
  if (!probe.exact)
    process.stderr.write(`${who}: this CPU's ONNX Runtime saturates u8 x s8 products: graph optimizations disabled\n`);
  return { level: probe.exact ? 'all' : 'disabled', u8s8Exact: probe.exact };
}

module.exports = { LEVELS, probeModel, probeSaturation, resolveLevel };

if (require.main === module) {
  // node saturation.js: prints {"u8s8_exact": bool, "got": y, "want": y_exact} and exits 0.
  runMain(async () => {
    const r = await probeSaturation(loadOrt());
    process.stdout.write(JSON.stringify({ u8s8_exact: r.exact, got: r.got, want: r.want }) + '\n');
  }, 'usage: node saturation.js\n');
}
