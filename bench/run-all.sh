#!/usr/bin/env bash
# Every throughput scenario (bench/dev.sh, then bench/cluster.sh), each with its own
# references, then one markdown table fragment for docs/BENCHMARKS.md.
#   bench/run-all.sh [OUT_DIR]     (default ./bench-results; BENCH_DURATION per scenario)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-./bench-results}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
: >"$OUT/results.jsonl"
BENCH_OUT=$OUT "$HERE/dev.sh"
BENCH_OUT=$OUT "$HERE/cluster.sh"
/usr/bin/python3 "$HERE/summarize.py" --title "all scenarios" "$OUT/results.jsonl" >"$OUT/table.md"
cat "$OUT/table.md"
echo "bench: results in $OUT (results.jsonl, dev.md, cluster.md, table.md)" >&2
