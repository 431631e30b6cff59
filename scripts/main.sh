#!/usr/bin/env bash
# The main job: set up, build, then quantize a model W8A8 and print fp32 / per-tensor / per-channel
# top-1 accuracy on the Fashion-MNIST test set.
#   scripts/main.sh MODEL.onnx [more perch quantize flags]
# Until perch ships its own demo model, MODEL defaults to ../shared/models/fmnist_convnet_hard.onnx when
# that exists (the team's shared folder).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model="${1:-}"
[ $# -gt 0 ] && shift
if [ -z "$model" ]; then
  model="$here/../shared/models/fmnist_convnet_hard.onnx"
  [ -f "$model" ] || { echo "usage: scripts/main.sh MODEL.onnx [perch quantize flags]" >&2; exit 2; }
fi
"$here/scripts/setup.sh"
"$here/scripts/build.sh" >/dev/null
out="$here/build/$(basename "${model%.onnx}")_w8a8.onnx"
"$here/build/release/perch" quantize "$model" -o "$out" --calib fashion-mnist:train \
  --eval fashion-mnist:test --compare "$@"
