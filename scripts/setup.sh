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
  python3-pip python3-venv python3-setuptools python3-wheel
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

# From the npm registry when this machine has Node.js and npm (the Node.js tests skip
# without them): TypeScript, for the type check of the npm package's index.d.ts
# (integration.node_package), and buf, for `buf lint` of proto/ (integration.protos).
# Without one, that one check is skipped.
npm_tool() {  # npm_tool COMMAND PACKAGE
  command -v npm >/dev/null && ! command -v "$1" >/dev/null || return 0
  echo "setup: installing $2 (npm install -g $2)"
  npm install -g --no-audit --no-fund "$2" >/dev/null 2>&1 ||
    echo "setup: $2 could not be installed: the checks that use $1 will be skipped" >&2
}
npm_tool tsc typescript@5
npm_tool buf @bufbuild/buf@1

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
