#!/usr/bin/env bash
# Configures and builds perch (Release, tests on) into build/release. Idempotent; 2 parallel jobs.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
cmake --preset release >/dev/null
cmake --build --preset release
