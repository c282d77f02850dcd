#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a demo video: installs the dependencies (apt),
# builds wmserve, starts the scheduler with one local CPU worker and renders the bundled sample
# image along the bundled trajectory into out/demo.mp4. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
bash deploy/build.sh
bash deploy/demo.sh
