#!/usr/bin/env bash
# The main job: set up, build, then quantize a model W8A8 and W4A8 and print fp32 / per-tensor /
# per-channel top-1 accuracy on the Fashion-MNIST test set.
#   scripts/main.sh [MODEL.onnx [more perch quantize flags]]
# MODEL defaults to perch's own demo model, models/demo/fmnist_mbv2_perch.onnx: a MobileNetV2-style net
# that `perch train` trained on Fashion-MNIST (models/demo/README.md has the command that regenerates it).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
demo="$here/models/demo/fmnist_mbv2_perch.onnx"
model="${1:-$demo}"
[ $# -gt 0 ] && shift
"$here/scripts/setup.sh"
"$here/scripts/build.sh" >/dev/null
if [ "$model" = "$demo" ] && [ ! -f "$demo" ]; then
  # The repository ships the demo model; if it was removed, retrain it (progress on stderr) and cache it.
  echo "main.sh: $demo missing: training it (the command in models/demo/README.md)" >&2
  "$here/build/release/perch" train --arch mbv2 --epochs 12 --shift 2 --seed 1 -o "$demo"
fi
[ -f "$model" ] || { echo "scripts/main.sh: $model: no such model" >&2; exit 2; }
# W8A8, then W4A8 (where one scale per weight tensor breaks down), each: fp32 / plain per-tensor / plain
# per-channel / perch's pipeline (+ cross-layer equalization + bias correction) in both granularities; at
# W4A8 the pipeline adds the empirical bias correction (within noise at 8 bits, worth a point at 4).
for bits in 8 4; do
  out="$here/build/$(basename "${model%.onnx}")_w${bits}a8.onnx"
  extra=()
  [ "$bits" = 4 ] && extra=(--empirical-bias-correction --adaround)
  "$here/build/release/perch" quantize "$model" -o "$out" --calib fashion-mnist:train \
    --eval fashion-mnist:test --compare --weight-bits "$bits" "${extra[@]}" "$@"
  echo
done
