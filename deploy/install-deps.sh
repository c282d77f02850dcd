#!/usr/bin/env bash
# Installs every build and test dependency of wmserve from Debian 12 packages.
# Idempotent: re-running it on a machine that has everything is a fast no-op.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

PKGS=(
  build-essential cmake ninja-build pkg-config ccache git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev grpc-proto
  prometheus-cpp-dev prometheus
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libx264-dev ffmpeg
  libtorch-dev libblis4-pthread
  libgtest-dev libgmock-dev libbenchmark-dev
  python3-grpcio python3-protobuf curl
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}" >&2
  apt-get update -qq
  # --no-install-recommends keeps OpenBLAS-pthread out: its static TLS breaks civetweb's
  # 100 KiB thread stacks (prometheus-cpp Exposer). BLIS gives libtorch a fast BLAS instead.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# If some other package pulled in OpenBLAS, make sure BLIS provides libblas.so.3.
blis=/usr/lib/x86_64-linux-gnu/blis-pthread/libblas.so.3
if [ -e "$blis" ] && update-alternatives --query libblas.so.3-x86_64-linux-gnu >/dev/null 2>&1; then
  cur=$(update-alternatives --query libblas.so.3-x86_64-linux-gnu | awk '/^Value:/{print $2}')
  [ "$cur" = "$blis" ] || update-alternatives --set libblas.so.3-x86_64-linux-gnu "$blis" >/dev/null
fi
echo "install-deps: ok" >&2
