#!/usr/bin/env bash
# Build the libFuzzer targets of tests/fuzz/ with clang under ASan+UBSan (build-fuzz/) and
# run them (docs/testing.md, "Fuzzing").
#   scripts/fuzz.sh                     every target for 60 s each
#   scripts/fuzz.sh checkpoint 3600     one target (tests/fuzz/fuzz_<name>.c) for an hour
#   EDDY_FUZZ_CI=1 scripts/fuzz.sh [target] [seconds]
#                                       CI: every seed once, then the bounded run, each in a
#                                       scratch copy of its corpus
# A crash, leak, UBSan report or timeout stops the target with a non-zero exit and leaves its
# input in build-fuzz/crashes/<target>/ (replay it: build-fuzz/fuzz/fuzz_<target> FILE).
# New inputs found by a developer's run go to build-fuzz/corpus/<target>/ (seeded from
# tests/fuzz/corpus/<target>/); copy the useful ones into tests/fuzz/corpus/ by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
want="${1:-all}"
seconds="${2:-60}"
jobs=$(nproc)
[ "$jobs" -gt 2 ] && jobs=2

echo "== building the fuzz targets (build-fuzz, clang, ASan+UBSan)"
mkdir -p build-fuzz
if ! { CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DEDDY_WERROR=ON -DEDDY_FUZZ=ON &&
       cmake --build build-fuzz -j"$jobs" --target fuzz; } >build-fuzz/build.log 2>&1; then
  tail -40 build-fuzz/build.log >&2
  echo "fuzz: build failed (full log: build-fuzz/build.log)" >&2
  exit 1
fi

targets=()
for src in tests/fuzz/fuzz_*.c; do
  name=$(basename "$src" .c)
  name=${name#fuzz_}
  [ "$want" = all ] || [ "$want" = "$name" ] && targets+=("$name")
done
if [ ${#targets[@]} -eq 0 ]; then
  echo "fuzz: no target '$want' (tests/fuzz/fuzz_<name>.c)" >&2
  exit 2
fi

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
failed=()
for t in "${targets[@]}"; do
  bin=build-fuzz/fuzz/fuzz_$t
  seeds=tests/fuzz/corpus/$t
  crashes=build-fuzz/crashes/$t
  mkdir -p "$crashes"
  # CI never writes into the tree or keeps what it found: a scratch corpus per run.
  if [ "${EDDY_FUZZ_CI:-0}" = 1 ]; then
    corpus=$(mktemp -d)
  else
    corpus=build-fuzz/corpus/$t
    mkdir -p "$corpus"
  fi
  cp -n "$seeds"/* "$corpus"/ 2>/dev/null || true
  dict=()
  [ -f "tests/fuzz/$t.dict" ] && dict=(-dict="tests/fuzz/$t.dict")
  opts=(-error_exitcode=77 -timeout=10 -rss_limit_mb=2048 -close_fd_mask=2
        -artifact_prefix="$crashes/" "${dict[@]}")
  echo "== fuzz_$t: every seed once, then ${seconds} s"
  ok=1
  "$bin" "${opts[@]}" -runs=0 "$seeds" >"$crashes/seeds.log" 2>&1 || ok=0
  if [ $ok = 1 ]; then
    "$bin" "${opts[@]}" -max_total_time="$seconds" -print_final_stats=1 "$corpus" \
      >"$crashes/run.log" 2>&1 || ok=0
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added)' \
      "$crashes/run.log" | tr '\n' ' ' || true
    echo
  fi
  [ "${EDDY_FUZZ_CI:-0}" = 1 ] && rm -rf "$corpus"
  if [ $ok = 0 ]; then
    echo "fuzz_$t FAILED: see $crashes/ (the log and the input that failed):" >&2
    grep -hE 'ERROR:|runtime error:|SUMMARY:|Test unit written' "$crashes"/*.log >&2 || true
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: ${failed[*]} failed" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} target(s) clean"
