#!/usr/bin/env bash
# Install what Eddy needs on Debian 12 (only the packages that are missing), then configure
# and build it into build/ (or $EDDY_BUILD_DIR). Safe to run again.
#   scripts/setup.sh [extra cmake -D options]
#   scripts/setup.sh --install PACKAGE...   only install these if missing (scripts/test.sh:
#                                           clang and libFuzzer for the fuzz stage)
set -euo pipefail
cd "$(dirname "$0")/.."

install_only=0
if [ "${1:-}" = --install ]; then
  install_only=1
  shift
  PACKAGES=("$@")
else
PACKAGES=(
  build-essential cmake pkg-config
  libgrpc-dev protobuf-c-compiler libprotobuf-c-dev protobuf-compiler protobuf-compiler-grpc
  libleveldb-dev libcmocka-dev libcjson-dev libcurl4-openssl-dev libxxhash-dev libssl-dev
  libmicrohttpd-dev prometheus
  python3-grpcio python3-protobuf python3-redis redis-server python3-yaml unzip
  etcd-server etcd-client
  chromium  # the web console's browser test (tests/integration/test_console.py)
)
# Node.js and npm drive that browser (playwright-core) and run the Node example: Debian's,
# unless a Node.js with npm is already installed
command -v npm >/dev/null 2>&1 || PACKAGES+=(nodejs npm)
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ $install_only = 1 ] && exit 0

BUILD="${EDDY_BUILD_DIR:-build}"
echo "setup: building into $BUILD/ (log: $BUILD/build.log)"
mkdir -p "$BUILD"
if ! { cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" &&
       cmake --build "$BUILD" -j"$(nproc)"; } >"$BUILD/build.log" 2>&1; then
  tail -40 "$BUILD/build.log" >&2
  echo "setup: build failed (full log: $BUILD/build.log)" >&2
  exit 1
fi
echo "setup: built $(ls "$BUILD"/eddy-node "$BUILD"/eddy 2>/dev/null | tr '\n' ' ')"
