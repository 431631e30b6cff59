#!/usr/bin/env node
'use strict';
// Renders perch's OCR evaluation set: words and numbers drawn by ImageMagick (Debian's `imagemagick`) in the
// DejaVu fonts (Debian's `fonts-dejavu-core`), composited on varied backgrounds with varied colours and noise,
// some turned 180°. The ground truth is known by construction: the text of every crop, its orientation, and
// the ink box of every line on the detector's pages. Everything is drawn from one seeded generator, so the
// same arguments give the same files, byte for byte.
//
// The .npy inputs are preprocessed the way PaddleOCR's predictors do (images in OpenCV's BGR channel order):
//   cls  resize to height 48 keeping the aspect ratio (width at most 192), x/255, (x-0.5)/0.5, CHW, zero
//        padding on the right up to width 192                              -> cls_<split>.npy  [N,3,48,192]
//   rec  the same with width --rec-width (PP-OCRv4: 320)                   -> rec_<split>[_wW].npy [N,3,48,W]
//   det  resize each side to the nearest multiple of 32 (DetResizeForTest, pages are under 960 px),
//        x/255, ImageNet mean/std, CHW                                     -> det_<split>_<H>x<W>.npy
// plus truth.json (texts, orientation labels, boxes in model-input pixels) and cls_<split>_labels.npy
// (int64: 0 upright, 1 turned 180° — the classifier's label order '0', '180').
const fs = require('fs');
const os = require('os');
const path = require('path');
const { execFileSync } = require('child_process');
const { encodeNpy } = require('../ort/lib');

const USAGE = `usage: node tools/ocr/gen.js -o DIR [--seed S] [--crops N] [--calib-crops N] [--rec-widths 320,480]
       [--pages N] [--calib-pages N] [--det-sizes 320x320,256x480]
  Crops: the first --calib-crops are the calibration split, the rest the evaluation split. Pages: the first
  --calib-pages (at the first det size) calibrate, the rest are spread over the det sizes.
  Defaults: --seed 1 --crops 480 --calib-crops 160 --rec-widths 320,480 --pages 64 --calib-pages 24
            --det-sizes 320x320,256x480,480x352
`;

function parse(argv) {
  const o = { seed: 1, crops: 480, calibCrops: 160, recWidths: [320, 480], pages: 64, calibPages: 24,
    detSizes: [[320, 320], [256, 480], [480, 352]], out: null };
  for (let i = 0; i < argv.length; ++i) {
    const a = argv[i], v = () => { if (i + 1 >= argv.length) die(`${a} needs a value`); return argv[++i]; };
    if (a === '-o' || a === '--out') o.out = v();
    else if (a === '--seed') o.seed = Number(v());
    else if (a === '--crops') o.crops = Number(v());
    else if (a === '--calib-crops') o.calibCrops = Number(v());
    else if (a === '--pages') o.pages = Number(v());
    else if (a === '--calib-pages') o.calibPages = Number(v());
    else if (a === '--rec-widths') o.recWidths = v().split(',').map(Number);
    else if (a === '--det-sizes') o.detSizes = v().split(',').map((s) => s.split('x').map(Number));
    else if (a === '-h' || a === '--help') { process.stdout.write(USAGE); process.exit(0); }
    else die(`unknown argument '${a}'\n${USAGE}`);
  }
  if (!o.out) die(`-o DIR is required\n${USAGE}`);
  for (const [k, x] of Object.entries({ seed: o.seed, crops: o.crops, calibCrops: o.calibCrops, pages: o.pages, calibPages: o.calibPages }))
    if (!Number.isInteger(x) || x < 0) die(`--${k}: expected a non-negative integer`);
  if (o.calibCrops >= o.crops || o.calibPages >= o.pages) die('the calibration split must leave an evaluation split');
  for (const w of o.recWidths) if (!Number.isInteger(w) || w < 48) die(`--rec-widths: bad width ${w}`);
  for (const s of o.detSizes)
    if (s.length !== 2 || s.some((d) => !Number.isInteger(d) || d < 64 || d % 32 || d > 960)) die(`--det-sizes: bad size ${s.join('x')} (multiples of 32, 64..960)`);
  return o;
}

function die(msg) {
  process.stderr.write(`gen.js: error: ${msg}\n`);
  process.exit(1);
}

// ---- seeded randomness (mulberry32) ------------------------------------------------------------------------
function makeRng(seed) {
  let s = (seed * 0x9e3779b1 + 0x6d2b79f5) >>> 0;
  const next = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const r = {
    next,
    uniform: (a, b) => a + (b - a) * next(),
    int: (a, b) => a + Math.floor(next() * (b - a + 1)),  // inclusive
    pick: (arr) => arr[Math.floor(next() * arr.length)],
    chance: (p) => next() < p,
    normal: () => {
      const u = Math.max(next(), 1e-12), v = next();
      return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
    },
  };
  return r;
}

// ---- text ----------------------------------------------------------------------------------------------
const WORDS = `total invoice amount date number price order customer address phone street city account balance
payment receipt station market garden window river mountain coffee bread water ticket office school
library hospital summer winter morning evening yellow orange purple silver golden simple modern classic
paper pencil camera letter person family friend travel hotel airport platform exit entrance open closed
sale discount member service delivery express north south east west center green blue black white red
model table chair light power energy signal network system data value field check report quality
Monday Friday Sunday January March October December London Paris Berlin Tokyo Madrid Boston Lisbon
SALE OPEN EXIT STOP PUSH PULL TAXI HOTEL BANK CAFE FREE NEW HOT ICE TEA MILK`.split(/\s+/);
// Characters kept to ones ImageMagick's label: takes literally (no '%', '\\', leading '@') and that are in
// the recognizer's dictionary.
function randomText(r) {
  const k = r.next();
  const cap = (w) => {
    const c = r.next();
    if (c < 0.2) return w.toUpperCase();
    if (c < 0.55) return w[0].toUpperCase() + w.slice(1);
    return w;
  };
  const digits = (n) => Array.from({ length: n }, () => r.int(0, 9)).join('');
  if (k < 0.38) return cap(r.pick(WORDS));
  if (k < 0.55) return `${cap(r.pick(WORDS))} ${r.pick(WORDS).toLowerCase()}`.slice(0, 16);
  if (k < 0.65) return String(r.int(0, 99999));
  if (k < 0.72) return `${r.int(1, 999)}.${digits(2)}`;
  if (k < 0.78) return `${r.int(2000, 2029)}-${String(r.int(1, 12)).padStart(2, '0')}-${String(r.int(1, 28)).padStart(2, '0')}`;
  if (k < 0.84) return `${String(r.int(0, 23)).padStart(2, '0')}:${digits(2)}`;
  if (k < 0.90) return `$${r.int(1, 999)}.${digits(2)}`;
  if (k < 0.95) return `${String.fromCharCode(65 + r.int(0, 25), 65 + r.int(0, 25))}-${digits(r.int(3, 5))}`;
  return `${cap(r.pick(WORDS))} ${r.int(1, 999)}`;
}

const FONT_DIR = '/usr/share/fonts/truetype/dejavu';
const FONTS = ['DejaVuSans.ttf', 'DejaVuSans-Bold.ttf', 'DejaVuSansMono.ttf', 'DejaVuSansMono-Bold.ttf',
  'DejaVuSerif.ttf', 'DejaVuSerif-Bold.ttf'];

// Renders every {text, font, size} as an 8-bit coverage mask (white ink on black) in one ImageMagick call.
function renderMasks(items) {
  for (const f of FONTS)
    if (!fs.existsSync(path.join(FONT_DIR, f))) die(`${FONT_DIR}/${f} not found: apt-get install fonts-dejavu-core (scripts/setup.sh)`);
  const convert = fs.existsSync('/usr/bin/convert') ? '/usr/bin/convert' : 'convert';
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'perch-ocr-'));
  try {
    const args = ['-background', 'black', '-fill', 'white', '-gravity', 'center'];
    for (const it of items) args.push('-font', path.join(FONT_DIR, it.font), '-pointsize', String(it.size), `label:${it.text}`);
    args.push('-colorspace', 'Gray', '-depth', '8', path.join(tmp, 'm%05d.pgm'));
    try {
      execFileSync(convert, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    } catch (e) {
      die(`ImageMagick failed (${convert}): ${(e.stderr || e.message).toString().trim()} — apt-get install imagemagick (scripts/setup.sh)`);
    }
    return items.map((_, i) => readPgm(path.join(tmp, `m${String(i).padStart(5, '0')}.pgm`)));
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

function readPgm(file) {
  const buf = fs.readFileSync(file);
  // P5 <w> <h> <maxval> <one whitespace> data
  let pos = 0;
  const tokens = [];
  while (tokens.length < 4) {
    while (/\s/.test(String.fromCharCode(buf[pos]))) ++pos;
    if (buf[pos] === 0x23) { while (buf[pos] !== 0x0a) ++pos; continue; }
    let t = '';
    while (!/\s/.test(String.fromCharCode(buf[pos]))) t += String.fromCharCode(buf[pos++]);
    tokens.push(t);
  }
  ++pos;
  const [magic, w, h, maxval] = [tokens[0], Number(tokens[1]), Number(tokens[2]), Number(tokens[3])];
  if (magic !== 'P5' || maxval !== 255) die(`${file}: expected an 8-bit binary PGM, got ${magic} maxval ${maxval}`);
  const a = new Float32Array(w * h);
  for (let i = 0; i < w * h; ++i) a[i] = buf[pos + i] / 255;
  // Tight ink box.
  let x0 = w, y0 = h, x1 = -1, y1 = -1;
  for (let y = 0; y < h; ++y) for (let x = 0; x < w; ++x) if (a[y * w + x] > 0.25) {
    x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
  }
  if (x1 < 0) die(`${file}: the rendered text has no ink`);
  return { w, h, a, ink: [x0, y0, x1 + 1, y1 + 1] };
}

// ---- images: float RGB [h][w][3], 0..255 -------------------------------------------------------------
function luminance(c) { return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]; }

function randomColour(r) { return [r.uniform(0, 255), r.uniform(0, 255), r.uniform(0, 255)]; }

// A background and an ink colour at least 90 luminance levels apart.
function palette(r) {
  for (;;) {
    const bg = r.chance(0.5) ? (() => { const l = r.uniform(170, 255); return [l + r.uniform(-25, 0), l + r.uniform(-25, 0), l + r.uniform(-25, 0)]; })() : randomColour(r);
    const ink = r.chance(0.5) ? (() => { const l = r.uniform(0, 70); return [l, l + r.uniform(0, 20), l + r.uniform(0, 30)]; })() : randomColour(r);
    if (Math.abs(luminance(bg) - luminance(ink)) >= 90) return { bg, ink };
  }
}

function background(r, w, h, bg) {
  const img = new Float32Array(w * h * 3);
  const kind = r.int(0, 3);
  const g2 = [bg[0] + r.uniform(-40, 40), bg[1] + r.uniform(-40, 40), bg[2] + r.uniform(-40, 40)];
  const ang = r.uniform(0, Math.PI), fx = Math.cos(ang), fy = Math.sin(ang);
  const period = r.uniform(6, 30), amp = r.uniform(5, 18);
  for (let y = 0; y < h; ++y) for (let x = 0; x < w; ++x) {
    let c;
    if (kind === 0) c = bg;  // flat
    else if (kind === 1) {   // linear gradient
      const t = ((x * fx + y * fy) / (w * Math.abs(fx) + h * Math.abs(fy) + 1));
      c = [bg[0] + (g2[0] - bg[0]) * t, bg[1] + (g2[1] - bg[1]) * t, bg[2] + (g2[2] - bg[2]) * t];
    } else if (kind === 2) { // soft stripes
      const s = amp * Math.sin((x * fx + y * fy) * 2 * Math.PI / period);
      c = [bg[0] + s, bg[1] + s, bg[2] + s];
    } else {                 // vignette
      const dx = x / w - 0.5, dy = y / h - 0.5, v = 1 - 0.5 * (dx * dx + dy * dy);
      c = [bg[0] * v, bg[1] * v, bg[2] * v];
    }
    const o = (y * w + x) * 3;
    img[o] = c[0]; img[o + 1] = c[1]; img[o + 2] = c[2];
  }
  return img;
}

// Blends mask `m` (coverage 0..1) in colour `ink` onto img (w wide) at (ox, oy).
function stamp(img, w, h, m, ox, oy, ink) {
  for (let y = 0; y < m.h; ++y) {
    const iy = oy + y;
    if (iy < 0 || iy >= h) continue;
    for (let x = 0; x < m.w; ++x) {
      const ix = ox + x, a = m.a[y * m.w + x];
      if (ix < 0 || ix >= w || a === 0) continue;
      const o = (iy * w + ix) * 3;
      for (let c = 0; c < 3; ++c) img[o + c] = img[o + c] * (1 - a) + ink[c] * a;
    }
  }
}

function addNoise(r, img, sigma) {
  if (sigma <= 0) return;
  for (let i = 0; i < img.length; ++i) img[i] += sigma * r.normal();
}

function clampRound(img) {
  for (let i = 0; i < img.length; ++i) img[i] = Math.min(255, Math.max(0, Math.round(img[i])));
}

function rotate180(img, w, h) {
  const out = new Float32Array(img.length);
  for (let i = 0; i < w * h; ++i) for (let c = 0; c < 3; ++c) out[(w * h - 1 - i) * 3 + c] = img[i * 3 + c];
  return out;
}

// cv2.resize INTER_LINEAR: half-pixel centres, edge clamp.
function resizeBilinear(img, w, h, nw, nh) {
  const out = new Float32Array(nw * nh * 3);
  const sx = w / nw, sy = h / nh;
  for (let y = 0; y < nh; ++y) {
    let fy = (y + 0.5) * sy - 0.5;
    if (fy < 0) fy = 0;
    const y0 = Math.min(Math.floor(fy), h - 1), y1 = Math.min(y0 + 1, h - 1), ty = fy - y0;
    for (let x = 0; x < nw; ++x) {
      let fx = (x + 0.5) * sx - 0.5;
      if (fx < 0) fx = 0;
      const x0 = Math.min(Math.floor(fx), w - 1), x1 = Math.min(x0 + 1, w - 1), tx = fx - x0;
      for (let c = 0; c < 3; ++c) {
        const a = img[(y0 * w + x0) * 3 + c], b = img[(y0 * w + x1) * 3 + c];
        const d = img[(y1 * w + x0) * 3 + c], e = img[(y1 * w + x1) * 3 + c];
        out[(y * nw + x) * 3 + c] = (a * (1 - tx) + b * tx) * (1 - ty) + (d * (1 - tx) + e * tx) * ty;
      }
    }
  }
  clampRound(out);  // cv2 returns uint8
  return out;
}

// PaddleOCR's resize_norm_img (cls and rec): height 48, width ceil(48*w/h) capped at W, zero padding.
function normCrop(img, w, h, W, dst, offset) {
  const H = 48;
  const rw = Math.min(W, Math.ceil(H * w / h));
  const rs = resizeBilinear(img, w, h, rw, H);
  for (let c = 0; c < 3; ++c) {
    const src = 2 - c;  // BGR
    for (let y = 0; y < H; ++y) for (let x = 0; x < rw; ++x)
      dst[offset + (c * H + y) * W + x] = (rs[(y * rw + x) * 3 + src] / 255 - 0.5) / 0.5;
  }
}

// DetResizeForTest + NormalizeImage + ToCHWImage, on an image already resized to (W, H).
const DET_MEAN = [0.485, 0.456, 0.406], DET_STD = [0.229, 0.224, 0.225];
function normPage(img, W, H, dst, offset) {
  for (let c = 0; c < 3; ++c) {
    const src = 2 - c;
    for (let i = 0; i < W * H; ++i) dst[offset + c * W * H + i] = (img[i * 3 + src] / 255 - DET_MEAN[c]) / DET_STD[c];
  }
}

// ---- the set -------------------------------------------------------------------------------------------
function main() {
  const o = parse(process.argv.slice(2));
  const t0 = Date.now();
  const r = makeRng(o.seed);

  // 1. Plan crops and page lines, render all their masks in one ImageMagick call.
  const crops = [];
  for (let i = 0; i < o.crops; ++i)
    crops.push({ text: randomText(r), font: r.pick(FONTS), size: r.int(22, 44), split: i < o.calibCrops ? 'calib' : 'eval', rotated: r.chance(0.5) });
  const pages = [];
  const evalSizes = o.detSizes;
  for (let i = 0; i < o.pages; ++i) {
    const calib = i < o.calibPages;
    const [H, W] = calib ? o.detSizes[0] : evalSizes[(i - o.calibPages) % evalSizes.length];
    // Native size within ±15 px of the model size, so DetResizeForTest's rounding to multiples of 32 lands there.
    const page = { split: calib ? 'calib' : 'eval', H, W, h: H + r.int(-15, 15), w: W + r.int(-15, 15), lines: [] };
    const n = r.int(2, 6);
    for (let k = 0; k < n; ++k) page.lines.push({ text: randomText(r), font: r.pick(FONTS), size: r.int(16, 34) });
    pages.push(page);
  }
  const items = [...crops, ...pages.flatMap((p) => p.lines)];
  const masks = renderMasks(items);
  crops.forEach((c, i) => { c.mask = masks[i]; });
  let mi = crops.length;
  for (const p of pages) for (const l of p.lines) l.mask = masks[mi++];

  fs.mkdirSync(o.out, { recursive: true });
  const truth = { seed: o.seed, generator: 'tools/ocr/gen.js', preprocessing: 'PaddleOCR (BGR channel order)', crops: [], pages: [] };

  // 2. Crops: text on a background, margins, noise; 180° for about half (classifier label 1).
  for (const split of ['calib', 'eval']) {
    const list = crops.filter((c) => c.split === split);
    const cls = new Float32Array(list.length * 3 * 48 * 192);
    const labels = new BigInt64Array(list.length);
    const recs = o.recWidths.map((W) => ({ W, a: new Float32Array(list.length * 3 * 48 * W) }));
    list.forEach((c, n) => {
      const m = c.mask, [ix0, iy0, ix1, iy1] = m.ink;
      const inkW = ix1 - ix0, inkH = iy1 - iy0;
      const padX = r.int(2, 14), padT = r.int(2, 10), padB = r.int(2, 10);
      const w = inkW + 2 * padX, h = Math.max(inkH, Math.round(0.7 * c.size)) + padT + padB;
      const { bg, ink } = palette(r);
      const img = background(r, w, h, bg);
      stamp(img, w, h, m, padX - ix0, padT - iy0, ink);
      addNoise(r, img, r.chance(0.6) ? r.uniform(1, 14) : 0);
      clampRound(img);
      recs.forEach((rec) => normCrop(img, w, h, rec.W, rec.a, n * 3 * 48 * rec.W));
      normCrop(c.rotated ? rotate180(img, w, h) : img, w, h, 192, cls, n * 3 * 48 * 192);
      labels[n] = c.rotated ? 1n : 0n;
      truth.crops.push({ split, index: n, text: c.text, rotated: c.rotated, label: c.rotated ? 1 : 0, font: c.font, pointsize: c.size, width: w, height: h });
    });
    fs.writeFileSync(path.join(o.out, `cls_${split}.npy`), encodeNpy('float32', [list.length, 3, 48, 192], cls));
    fs.writeFileSync(path.join(o.out, `cls_${split}_labels.npy`), encodeNpy('int64', [list.length], labels));
    recs.forEach((rec, k) => fs.writeFileSync(path.join(o.out, k === 0 ? `rec_${split}.npy` : `rec_${split}_w${rec.W}.npy`),
      encodeNpy('float32', [list.length, 3, 48, rec.W], rec.a)));
    fs.writeFileSync(path.join(o.out, `rec_${split}.txt`), list.map((c) => c.text).join('\n') + '\n');
  }

  // 3. Pages for the detector: 2-6 lines placed without overlap, a few distractor strokes, noise; resized to
  //    the model size; boxes are the ink boxes scaled to model pixels.
  const groups = new Map();  // "split HxW" -> pages
  for (const p of pages) {
    const { bg, ink } = palette(r);
    const img = background(r, p.w, p.h, bg);
    const boxes = [];
    for (const l of p.lines) {
      const m = l.mask, [ix0, iy0, ix1, iy1] = m.ink, bw = ix1 - ix0, bh = iy1 - iy0;
      if (bw + 8 > p.w || bh + 8 > p.h) continue;
      for (let attempt = 0; attempt < 30; ++attempt) {
        const x = r.int(4, p.w - bw - 4), y = r.int(4, p.h - bh - 4);
        const box = [x, y, x + bw, y + bh];
        if (boxes.some((b) => !(box[2] + 8 <= b.box[0] || b.box[2] + 8 <= box[0] || box[3] + 8 <= b.box[1] || b.box[3] + 8 <= box[1]))) continue;
        const col = r.chance(0.7) ? ink : palette(r).ink;
        stamp(img, p.w, p.h, m, x - ix0, y - iy0, col);
        boxes.push({ box, text: l.text });
        break;
      }
    }
    for (let k = r.int(0, 3); k > 0; --k) {  // distractors: thin rules and filled blocks
      const x0 = r.int(0, p.w - 10), y0 = r.int(0, p.h - 4), horiz = r.chance(0.5);
      const len = r.int(20, Math.max(21, Math.floor((horiz ? p.w : p.h) / 2))), th = r.int(1, 3);
      const col = randomColour(r);
      for (let t = 0; t < len; ++t) for (let s = 0; s < th; ++s) {
        const x = horiz ? x0 + t : x0 + s, y = horiz ? y0 + s : y0 + t;
        if (x < p.w && y < p.h && !boxes.some((b) => x >= b.box[0] - 2 && x < b.box[2] + 2 && y >= b.box[1] - 2 && y < b.box[3] + 2)) {
          const o2 = (y * p.w + x) * 3;
          img[o2] = col[0]; img[o2 + 1] = col[1]; img[o2 + 2] = col[2];
        }
      }
    }
    addNoise(r, img, r.chance(0.6) ? r.uniform(1, 12) : 0);
    clampRound(img);
    const rs = resizeBilinear(img, p.w, p.h, p.W, p.H);
    const sx = p.W / p.w, sy = p.H / p.h;
    const key = `${p.split} ${p.H}x${p.W}`;
    if (!groups.has(key)) groups.set(key, []);
    const g = groups.get(key);
    const scaled = boxes.map((b) => ({ text: b.text, box: [b.box[0] * sx, b.box[1] * sy, b.box[2] * sx, b.box[3] * sy].map((v) => Math.round(v * 10) / 10) }));
    g.push({ rs, p });
    truth.pages.push({ split: p.split, file: `det_${p.split}_${p.H}x${p.W}.npy`, index: g.length - 1, height: p.H, width: p.W,
      native: [p.h, p.w], lines: scaled });
  }
  for (const [key, g] of groups) {
    const [split, size] = key.split(' ');
    const { H, W } = g[0].p;
    const a = new Float32Array(g.length * 3 * H * W);
    g.forEach(({ rs }, n) => normPage(rs, W, H, a, n * 3 * H * W));
    fs.writeFileSync(path.join(o.out, `det_${split}_${size}.npy`), encodeNpy('float32', [g.length, 3, H, W], a));
  }
  fs.writeFileSync(path.join(o.out, 'truth.json'), JSON.stringify(truth, null, 1) + '\n');
  const nc = crops.filter((c) => c.split === 'calib').length;
  process.stderr.write(`gen.js: ${o.crops} crops (${nc} calibration, ${o.crops - nc} evaluation), ${o.pages} pages ` +
    `(${[...groups.keys()].map((k) => `${k}: ${groups.get(k).length}`).join(', ')}) in ${((Date.now() - t0) / 1000).toFixed(1)} s -> ${o.out}\n`);
}

main();
