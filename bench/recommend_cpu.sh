#!/usr/bin/env bash
# Recommend's cost per call on the node, two builds side by side (docs/BENCHMARKS.md,
# "Recommend's per-call cost"): for each of BENCH_PAIRS pairs, and in each pair build A then
# build B, a fresh `eddy-node --dev` gets BENCH_PRELOAD events (synchronous, not measured)
# and 3 s of Recommend to warm its caches, then Recommend at BENCH_QPS for BENCH_DURATION.
# Over that run: the node's CPU (utime + stime of /proc/PID/stat) and context switches (all
# its threads) per answered call, and the client's p50 / p99. One client binary for both
# builds (BENCH_CLIENT, default A's eddy-bench), so only the node differs. One JSON line
# per run on stdout. BENCH_NODE_ARGS_A / _B: more flags for build A's / B's node (the same
# build twice with different flags compares settings).
#   bench/recommend_cpu.sh /path/to/main/build build
#   BENCH_NODE_ARGS_B="--grpc-threads 2" bench/recommend_cpu.sh build build
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 BUILD_A BUILD_B" >&2; exit 2; }
A=$1 B=$2
PAIRS=${BENCH_PAIRS:-3}
QPS=${BENCH_QPS:-2000}
DURATION=${BENCH_DURATION:-10s}
PRELOAD=${BENCH_PRELOAD:-30000}
CLIENT=${BENCH_CLIENT:-$A/eddy-bench}
PY=/usr/bin/python3
TMP=$(mktemp -d "${TMPDIR:-/tmp}/eddy-reccpu-XXXXXX")
NODE=
cleanup() {
  [ -n "$NODE" ] && kill "$NODE" 2>/dev/null && wait "$NODE" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ticks (utime + stime) and context switches (voluntary + not, every thread) of PID
snap() {
  local pid=$1 t s=0 n
  t=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  for n in $(cat /proc/"$pid"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {print $2}'); do
    s=$((s + n))
  done
  echo "$t $s"
}

one() {
  local label=$1 build=$2 dir=$TMP/node port i
  local -a extra
  read -r -a extra <<<"$3"
  rm -rf "$dir"
  "$build/eddy-node" --dev --data-dir "$dir" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
    --log-level warn "${extra[@]}" >"$TMP/node.out" 2>"$TMP/node.log" &
  NODE=$!
  for i in $(seq 1 300); do
    port=$(sed -n 's/^listening on \([0-9][0-9]*\)$/\1/p' "$TMP/node.out" | head -1)
    [ -n "$port" ] && break
    sleep 0.1
  done
  [ -n "$port" ] || { tail "$TMP/node.log" >&2; exit 1; }
  "$CLIENT" --endpoint "127.0.0.1:$port" --mode recommend --preload "$PRELOAD" \
    --recommend-qps "$QPS" --duration 3s --seed 1 -o json >/dev/null || true
  read -r t0 c0 < <(snap "$NODE")
  "$CLIENT" --endpoint "127.0.0.1:$port" --mode recommend --recommend-qps "$QPS" \
    --duration "$DURATION" --seed 2 -o json >"$TMP/run.json" || true  # errors are results
  read -r t1 c1 < <(snap "$NODE")
  kill "$NODE"
  wait "$NODE" 2>/dev/null || true
  NODE=
  $PY - "$label" "$build $3" $((t1 - t0)) $((c1 - c0)) "$(getconf CLK_TCK)" "$TMP/run.json" <<'PY'
import json, sys
label, build, ticks, switches, hz, path = sys.argv[1:]
r = json.load(open(path))
lat = r["recommend_latency_ms"]
errors = sum(r.get("recommend_errors_by_code", {}).values())
calls = lat["count"] - errors
load = open("/proc/loadavg").read().split()[0]
print(json.dumps({"build": label, "dir": build, "calls": calls, "errors": errors,
                  "qps": round(calls / r["duration_s"]),
                  "cpu_us_per_call": round(int(ticks) / int(hz) * 1e6 / calls, 1) if calls else None,
                  "ctxsw_per_call": round(int(switches) / calls, 2) if calls else None,
                  "p50_ms": lat["p50"], "p99_ms": lat["p99"], "load1": float(load)}))
PY
}

for pair in $(seq 1 "$PAIRS"); do
  one A "$A" "${BENCH_NODE_ARGS_A:-}"
  one B "$B" "${BENCH_NODE_ARGS_B:-}"
done
