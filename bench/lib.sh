# Shared by bench/dev.sh and bench/cluster.sh (sourced): binaries, a private temporary
# directory removed on exit, processes started in it and stopped on exit, free ports,
# the machine description and the reference measurements.
# Settings: EDDY_BUILD_DIR (default build/), BENCH_DURATION (default 10s per scenario),
# BENCH_OUT (a directory: results.jsonl and <scenario>.md are appended/written there).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${EDDY_BUILD_DIR:-$REPO/build}
case "$BUILD" in /*) ;; *) BUILD="$REPO/$BUILD" ;; esac
PY=/usr/bin/python3
DURATION=${BENCH_DURATION:-10s}
BENCH=$BUILD/eddy-bench
for b in eddy-node eddy eddy-bench eddy-ref-leveldb eddy-ref-grpc; do
  [ -x "$BUILD/$b" ] || { echo "bench: $BUILD/$b missing: cmake --build $BUILD" >&2; exit 1; }
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/eddy-bench-XXXXXX")
PIDS=()
RESULTS=$TMP/results.jsonl
: >"$RESULTS"
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "bench: $*" >&2; }

free_port() { $PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start NAME CMD...: stdout to TMP/NAME.out, stderr to TMP/NAME.log; the pid goes to PIDS.
start() {
  local name=$1
  shift
  "$@" </dev/null >"$TMP/$name.out" 2>"$TMP/$name.log" &
  PIDS+=($!)
}

# wait_printed NAME WHAT: the port a process printed as "WHAT on PORT".
wait_printed() {
  local i port
  for i in $(seq 1 300); do
    port=$(sed -n "s/^$2 on \([0-9][0-9]*\)\$/\1/p" "$TMP/$1.out" 2>/dev/null | head -1)
    [ -n "$port" ] && { echo "$port"; return 0; }
    sleep 0.1
  done
  tail -20 "$TMP/$1.log" >&2
  log "$1 did not print '$2 on PORT'"
  return 1
}

# A scripts/local-cluster.sh cluster in TMP/cluster (etcd, a coordinator, 3 state and 2
# ingest nodes): local_cluster_up starts it, removes it on exit and sources its env
# (EDDY_ENDPOINT, EDDY_COORDINATOR); `lc CMD` runs the script's CMD on it. Its LC_*
# settings come from the environment (e.g. export LC_LEASE_TTL=5s first).
CL=$TMP/cluster
lc() { EDDY_BUILD_DIR="$BUILD" "$REPO/scripts/local-cluster.sh" "$@" "$CL" >>"$TMP/local-cluster.log" 2>&1; }
local_cluster_up() {
  trap 'lc down || true; cleanup' EXIT
  lc up || { tail -20 "$TMP/local-cluster.log" >&2; exit 1; }
  # shellcheck disable=SC1091
  . "$CL/env"
}

# record LABEL < json: tag one JSON result with the scenario label, append it to RESULTS
# and print a one-line summary on stderr.
record() { $PY "$REPO/bench/summarize.py" --record "$1" "$RESULTS"; }

# WATCH: NAME=PID of the processes whose threads' CPU each bench run reports ("cpu" in its
# result: cores per thread name and how busy the machine was; bench/cpushare.py).
WATCH=()
cpu_snap() { $PY "$REPO/bench/cpushare.py" snap "${WATCH[@]}" >"$1"; }

# bench LABEL ARGS...: one eddy-bench run (JSON), recorded under LABEL. A run with errors
# is recorded all the same (the errors are part of the result).
bench() {
  local label=$1
  shift
  log "eddy-bench $label: $*"
  cpu_snap "$TMP/$label.cpu0"
  "$BENCH" -o json --scenario "$label" "$@" >"$TMP/$label.json" || true
  cpu_snap "$TMP/$label.cpu1"
  $PY "$REPO/bench/cpushare.py" merge "$TMP/$label.cpu0" "$TMP/$label.cpu1" <"$TMP/$label.json" |
    record "$label"
}

machine() {
  $PY - "$@" <<'PY'
import json, os, platform, subprocess, sys
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
load = open("/proc/loadavg").read().split()[:3]
print(json.dumps({"label": "machine", "nproc": os.cpu_count(), "cpu": cpu,
                  "kernel": platform.release(), "loadavg_before": " ".join(load)}))
PY
}

# The references, measured now: LevelDB synced batches, bare gRPC, the seed's pipeline.
references() {
  log "reference: eddy-ref-leveldb (synced LevelDB batches of 500 events, same disk as the node)"
  "$BUILD/eddy-ref-leveldb" -o json --dir "$TMP/ref-leveldb" --events 2000000 --duration "$DURATION" \
    | record ref-leveldb
  rm -rf "$TMP/ref-leveldb"
  log "reference: eddy-ref-grpc (unary calls with an Ingest batch's bytes, trivial server)"
  "$BUILD/eddy-ref-grpc" -o json --duration "$DURATION" 2>/dev/null | record ref-grpc
  if command -v redis-server >/dev/null && $PY -c 'import redis' 2>/dev/null; then
    log "reference: bench/seed_pipeline.py (Python + Redis, one event at a time)"
    "$BENCH" --mode dump --events 300000 --run-id seed >"$TMP/seed-events.jsonl"
    local secs=${DURATION%s}
    $PY "$REPO/bench/seed_pipeline.py" --start-redis --events "$TMP/seed-events.jsonl" \
      --duration "$secs" -o json | record seed-pipeline
    rm -f "$TMP/seed-events.jsonl"
  else
    log "reference: seed pipeline skipped (install Debian's redis-server and python3-redis)"
  fi
}

# finish NAME: the summary (ratios to the references of this run) on stdout, and the
# results kept in BENCH_OUT if set.
finish() {
  machine >>"$RESULTS"
  $PY "$REPO/bench/summarize.py" --title "$1" "$RESULTS" | tee "$TMP/$1.md"
  if [ -n "${BENCH_OUT:-}" ]; then
    mkdir -p "$BENCH_OUT"
    cp "$TMP/$1.md" "$BENCH_OUT/$1.md"
    cat "$RESULTS" >>"$BENCH_OUT/results.jsonl"
  fi
}
