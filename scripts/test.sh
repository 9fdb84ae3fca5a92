#!/usr/bin/env bash
# Build Eddy with warnings as errors and run every test (unit + integration) with CTest,
# checks the Helm chart, then runs the tests again under AddressSanitizer +
# UndefinedBehaviorSanitizer, then every libFuzzer target of tests/fuzz/ for a bounded time
# (clang, ASan+UBSan; a crash, leak or UBSan report fails). Installs what is missing.
#   scripts/test.sh            everything
#   EDDY_SKIP_SANITIZE=1 scripts/test.sh   only the normal build (no ASan, no fuzzing)
#   EDDY_FUZZ_SECONDS=60 scripts/test.sh   fuzz each target longer (default 15 s)
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

EDDY_BUILD_DIR=build-test scripts/setup.sh -DEDDY_WERROR=ON
echo "== tests (build-test)"
ctest --test-dir build-test --output-on-failure -j"$jobs"

echo "== API reference is current (docs/api.md from proto/)"
/usr/bin/python3 scripts/gen_api_docs.py --check

echo "== docs: relative links and named .md files exist (README.md, docs/*.md)"
/usr/bin/python3 scripts/check_doc_links.py

echo "== Helm chart (lint, template, manifest checks)"
scripts/helm-check.sh

if [ "${EDDY_SKIP_SANITIZE:-0}" != 1 ]; then
  echo "== tests under ASan+UBSan (build-asan)"
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DEDDY_WERROR=ON \
        -DEDDY_SANITIZE=address,undefined >/dev/null
  cmake --build build-asan -j"$jobs"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  LSAN_OPTIONS=suppressions="$PWD/scripts/lsan.supp":print_suppressions=0 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-asan --output-on-failure -j"$jobs"

  echo "== fuzz targets under ASan+UBSan (build-fuzz, ${EDDY_FUZZ_SECONDS:-15} s each)"
  scripts/setup.sh --install clang libfuzzer-14-dev
  EDDY_FUZZ_CI=1 scripts/fuzz.sh all "${EDDY_FUZZ_SECONDS:-15}"
fi
