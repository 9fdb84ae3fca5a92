#!/usr/bin/env bash
# The targets of issue 16 ("The write path at the hardware's pace"), each row measured by
# one of the benchmark commands below, run one after the other on this machine; then
# bench/targets.py prints the targets table (goal, measured, ratio, what bounds it, the
# machine) from their results.
#   bench/targets.sh [OUT_DIR]   (default ./bench-targets; 20-50 min, footprint.sh most of it)
# OUT_DIR keeps results.jsonl, each command's output and log, and targets.md. BENCH_QUICK=1
# runs every command at a tiny size (a CI smoke run: the table must come out whole, its
# numbers mean nothing). EDDY_BUILD_DIR picks the build (a Release build for numbers).
#
#   row                                    command
#   durable ingest, --dev                  BENCH_DEV_SCENARIOS=... bench/dev.sh   (dev-ingest-max)
#   ack p99 at 5,000 events/s / one batch  the same run                            (dev-ingest-5k, -500)
#   local cluster with R = 2               BENCH_REPLICATION_FACTORS=2 BENCH_FAILOVER=0 bench/replication.sh
#   Recommend p99 idle / while ingesting   bench/recommend_tail.sh                 (recommend-warm, -ingest)
#   100 MB partition move under ingest     BENCH_MOVE_EVENTS=265000 bench/move.sh
#   disk / RAM per user at 1 M users       bench/footprint.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PY=/usr/bin/python3
OUT=${1:-./bench-targets}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
: >"$OUT/results.jsonl"
export BENCH_OUT=$OUT
export LC_BUILD=0  # replication.sh: run the build given, do not rebuild it (scripts/setup.sh)
if [ "${BENCH_QUICK:-0}" != 0 ]; then
  export BENCH_DURATION=1s BENCH_PRELOAD=1s BENCH_USERS=1000 BENCH_MOVE_EVENTS=4000
else
  export BENCH_MOVE_EVENTS=${BENCH_MOVE_EVENTS:-265000}  # one partition of ~94 MB (P = 2), 2026-12-06
fi

# machine WHEN: nproc, CPU, load average, time, commit and build, as one JSON record
machine() {
  $PY - "$1" "${EDDY_BUILD_DIR:-$REPO/build}" "$REPO" >>"$OUT/results.jsonl" <<'PY'
import json, os, subprocess, sys, time
when, build, repo = sys.argv[1:4]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
git = lambda *a: subprocess.run(["git", "-C", repo, *a], capture_output=True, text=True).stdout.strip()
btype = next((l.split("=", 1)[1].strip() for l in open(os.path.join(build, "CMakeCache.txt"))
              if l.startswith("CMAKE_BUILD_TYPE:")), "?") if os.path.exists(os.path.join(build, "CMakeCache.txt")) else "?"
print(json.dumps({"label": "targets-" + when, "aux": True, "nproc": os.cpu_count(), "cpu": cpu,
                  "loadavg": open("/proc/loadavg").read().split()[:3],
                  "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                  "commit": git("rev-parse", "--short", "HEAD"),
                  "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
                  "build": build, "build_type": btype, "quick": os.environ.get("BENCH_QUICK", "0") != "0"}))
PY
}

# step NAME CMD...: one benchmark command, its stdout and stderr kept in OUT; a command that
# fails leaves its rows "not measured" and the others still run.
step() {
  local name=$1
  shift
  echo "targets: $name: $*" >&2
  if "$@" >"$OUT/$name.out" 2>"$OUT/$name.log"; then
    echo "targets: $name done" >&2
  else
    echo "targets: $name FAILED (exit $?): see $OUT/$name.log" >&2
    echo "{\"label\": \"failed-$name\", \"aux\": true}" >>"$OUT/results.jsonl"
  fi
}

machine start
step dev env BENCH_DEV_SCENARIOS="ingest-max ingest-5k ingest-500" "$HERE/dev.sh"
step recommend-tail "$HERE/recommend_tail.sh"
step replication env BENCH_REPLICATION_FACTORS=2 BENCH_FAILOVER=0 "$HERE/replication.sh"
step move "$HERE/move.sh"
step footprint "$HERE/footprint.sh"
# footprint.sh prints its one JSON result on stdout
[ -s "$OUT/footprint.out" ] && $PY "$HERE/summarize.py" --record footprint "$OUT/results.jsonl" \
  <"$OUT/footprint.out" 2>/dev/null
machine end
$PY "$HERE/targets.py" "$OUT/results.jsonl" | tee "$OUT/targets.md"
