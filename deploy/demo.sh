#!/usr/bin/env bash
# The main job on its embedded default: scheduler + one local CPU worker + one demo rollout of
# deploy/samples/sample.jpg along deploy/samples/yaw_right.json, written to out/demo.mp4.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
OUT=${OUT:-out/demo.mp4}
mkdir -p "$(dirname "$OUT")"
work=$(mktemp -d)
trap 'kill $sched 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

"$BUILD_DIR/server/wmserve-scheduler" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
  --local-workers 1 --worker-args "--device cpu" --ready-file "$work/ready" \
  2>"$work/scheduler.log" &
sched=$!
for _ in $(seq 1 300); do [ -f "$work/ready" ] && break; sleep 0.1; done
[ -f "$work/ready" ] || { cat "$work/scheduler.log" >&2; echo "demo: scheduler did not start" >&2; exit 1; }
addr=$(sed -n 's/^listen=//p' "$work/ready")

# Wait for the worker to load and warm up.
for _ in $(seq 1 300); do
  "$BUILD_DIR/client/wmctl" --server "$addr" workers 2>/dev/null | grep -q READY && break
  sleep 0.1
done
"$BUILD_DIR/client/wmctl" --server "$addr" workers

"$BUILD_DIR/client/wmctl" --server "$addr" rollout --model warp \
  --image deploy/samples/sample.jpg --trajectory deploy/samples/yaw_right.json --out "$OUT"

kill -TERM $sched && wait $sched || true
echo "demo: wrote $OUT ($(stat -c %s "$OUT") bytes)"
if command -v ffprobe >/dev/null; then
  ffprobe -v error -count_frames -show_entries stream=codec_name,width,height,nb_read_frames \
    -of default=noprint_wrappers=1 "$OUT"
fi
