#!/usr/bin/env bash
# Configures (once) and builds everything into ./build with Ninja (ccache if installed).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
# Two jobs: a LibTorch translation unit peaks at ~1.5 GB of compiler memory.
cmake --build "$BUILD_DIR" -- -j"${JOBS:-$(nproc)}"
