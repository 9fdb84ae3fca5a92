#!/usr/bin/env bash
# Scale out, drain and failover of a local cluster under load: scripts/local-cluster.sh
# (etcd, a coordinator, 3 state and 2 ingest nodes, 256 partitions, shared checkpoint
# directory), BENCH_PRELOAD events (default 30000), then eddy-bench --mode mixed at
# BENCH_RATE events/s (1500) and BENCH_QPS Recommend/s (100) for the whole run while:
#   1. a 4th state node joins (a quarter of the partitions move to it live),
#   2. state-2 is drained (`eddy drain`: all its partitions move live),
#   3. state-3 is killed (kill -9): its partitions fail over to the others (restored
#      from their last checkpoints in the shared directory; --lease-ttl 5s).
# The load of 1-2 and that of 3 are recorded apart (moves-load, failover-load). Reports the time each phase took, the write pause of every live move (p50, p90, max,
# from the targets' logs), the recovery time of the lost node's partitions (kill -9 to a
# batch with events for every partition acknowledged), and the load's errors and
# latencies. Removes everything at the end.
#   bench/rebalance.sh
. "$(dirname "$0")/lib.sh"
PRELOAD=${BENCH_PRELOAD:-30000}
RATE=${BENCH_RATE:-1500}
QPS=${BENCH_QPS:-100}
export LC_LEASE_TTL=5s
local_cluster_up
cli() { "$BUILD/eddy" --coordinator "$EDDY_COORDINATOR" "$@"; }
# settle NODE some|none: seconds until no move is in progress and NODE owns some
# partitions (it joined) or none (it was drained)
settle() {
  local t0=$SECONDS js
  while :; do
    js=$(cli -o json --timeout 2s status 2>/dev/null) || js=
    if [ -n "$js" ] && $PY -c 'import json,sys; s=json.load(sys.stdin)
n=sum(x["partitions_owned"] for x in s["nodes"] if x["id"]==sys.argv[1])
sys.exit(0 if not s["moves"] and (n > 0) == (sys.argv[2] == "some") else 1)' "$1" "$2" <<<"$js"
    then echo $((SECONDS - t0)); return 0; fi
    ((SECONDS - t0 < 300)) || { log "no settle in 300 s"; return 1; }
    sleep 0.2
  done
}
log "preloading $PRELOAD events"
"$BENCH" --endpoint "$EDDY_ENDPOINT" --mode ingest --events "$PRELOAD" --seed 21 -o json >"$TMP/preload.json"
# load LABEL: eddy-bench --mode mixed in the background until stopped (stop_load)
load() {
  "$BENCH" --endpoint "$EDDY_ENDPOINT" --mode mixed --rate "$RATE" --recommend-qps "$QPS" \
    --duration 3600s --seed "$2" -o json --scenario "$1" >"$TMP/$1.json" 2>"$TMP/$1.log" &
  LOAD=$!
}
stop_load() { kill -INT "$LOAD" 2>/dev/null || true; wait "$LOAD" 2>/dev/null || true; }

log "moves under load: $RATE events/s and $QPS Recommend/s"
load moves 22
sleep 5
lc add-state
T_OUT=$(settle state-4 some) || exit 1
log "scale out: settled in ${T_OUT}s"
cli drain state-2 >/dev/null
T_DRAIN=$(settle state-2 none) || exit 1
log "drain: settled in ${T_DRAIN}s"
sleep 2
stop_load

# failover: kill -9, then one batch with an event in every partition, until acknowledged
log "failover under load"
load failover 24
sleep 3
kill -9 "$(cat "$CL/pids/state-3.pid")"
T0=$(date +%s.%N)
"$BENCH" --mode dump --events 4000 --seed 23 --run-id fo >"$TMP/every.jsonl"
until "$BUILD/eddy" --endpoint "$EDDY_ENDPOINT" --timeout 10s ingest "$TMP/every.jsonl" \
      >/dev/null 2>&1; do sleep 0.05; done
T1=$(date +%s.%N)
log "failover: a batch over every partition acknowledged $(echo "$T1 - $T0" | bc) s after kill -9"
sleep 3
stop_load
record failover-load <"$TMP/failover.json"
$PY - "$CL/logs" "$TMP/moves.json" "$T_OUT" "$T_DRAIN" "$(echo "$T1 - $T0" | bc)" <<'PY' | record moves-load
import glob, json, re, sys
logs, load, t_out, t_drain, t_fail = sys.argv[1:6]
pauses = sorted(int(m) for f in glob.glob(f"{logs}/state-*.log")
                for m in re.findall(r'msg="move in: serving".* pause_ms=(\d+)', open(f).read()))
q = lambda f: pauses[min(len(pauses) - 1, int(f * len(pauses)))] if pauses else None
try:
    r = json.load(open(load))
except ValueError:
    r = {"errors": 1, "first_error": "the load generator wrote no result"}
r.update({"scenario": "rebalance", "moves": len(pauses), "pause_ms_p50": q(0.5),
          "pause_ms_p90": q(0.9), "pause_ms_max": pauses[-1] if pauses else None,
          "scale_out_s": int(t_out), "drain_s": int(t_drain), "failover_s": float(t_fail)})
print(json.dumps(r))
print(json.dumps({k: r[k] for k in ("moves", "pause_ms_p50", "pause_ms_p90", "pause_ms_max",
                                    "scale_out_s", "drain_s", "failover_s", "errors")}),
      file=sys.stderr)
PY
finish rebalance
