#!/usr/bin/env bash
# Runs the whole test suite from a fresh Debian 12 machine: installs the dependencies (apt),
# builds, runs every test with ctest. Idempotent. Needs no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
bash deploy/build.sh
cd "${BUILD_DIR:-build}"
ctest --output-on-failure -j"${JOBS:-$(nproc)}"
