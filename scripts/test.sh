#!/usr/bin/env bash
# Sets up a fresh machine, builds, and runs every test (CTest: unit, conformance, ONNX Runtime interop).
# Tests that need ../shared/models skip visibly when it is absent.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$here/scripts/setup.sh"
"$here/scripts/build.sh"
cd "$here"
ctest --preset release "$@"
