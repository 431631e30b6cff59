#!/usr/bin/env bash
# The main job: set up, build, then quantize a model W8A8 and print fp32 / per-tensor / per-channel
# top-1 accuracy on the Fashion-MNIST test set.
#   scripts/main.sh [MODEL.onnx [more perch quantize flags]]
# MODEL defaults to perch's own demo model, models/demo/fmnist_mbv2_perch.onnx: a MobileNetV2-style net
# that `perch train` trained on Fashion-MNIST (models/demo/README.md has the command that regenerates it).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model="${1:-$here/models/demo/fmnist_mbv2_perch.onnx}"
[ $# -gt 0 ] && shift
[ -f "$model" ] || { echo "scripts/main.sh: $model: no such model" >&2; exit 2; }
"$here/scripts/setup.sh"
"$here/scripts/build.sh" >/dev/null
out="$here/build/$(basename "${model%.onnx}")_w8a8.onnx"
"$here/build/release/perch" quantize "$model" -o "$out" --calib fashion-mnist:train \
  --eval fashion-mnist:test --compare "$@"
