#!/usr/bin/env bash
# A cluster-wide reprocess under load: scripts/local-cluster.sh (etcd, a coordinator, 3
# state and 2 ingest nodes, 256 partitions), BENCH_PRELOAD events (default 100000), then
# eddy-bench --mode mixed at BENCH_RATE events/s (1000) and BENCH_QPS Recommend/s (100)
# for 10 s without a rebuild, then the same load while `eddy reprocess --all --from-start
# --set half-life=3d` rebuilds stage 1 and stage 2 on every state node (docs/operations.md,
# Reprocessing). Reports the rebuild's duration,
# the longest write pause of a node, how long stage 2 stayed frozen on each state node
# (its "prepared" to "swapped" log lines), the rebuilt stage-2 batches sent, and the load's
# errors and latencies during the run. Removes everything at the end.
#   bench/reprocess.sh
. "$(dirname "$0")/lib.sh"
PRELOAD=${BENCH_PRELOAD:-100000}
RATE=${BENCH_RATE:-1000}
QPS=${BENCH_QPS:-100}
local_cluster_up
log "preloading $PRELOAD events"
"$BENCH" --endpoint "$EDDY_ENDPOINT" --mode ingest --events "$PRELOAD" --seed 31 -o json >"$TMP/preload.json"

log "the same load without a rebuild: $RATE events/s and $QPS Recommend/s for 10 s"
"$BENCH" --endpoint "$EDDY_ENDPOINT" --mode mixed --rate "$RATE" --recommend-qps "$QPS" \
  --duration 10s --seed 33 -o json --scenario no-rebuild-load | record no-rebuild-load
log "reprocess under load"
"$BENCH" --endpoint "$EDDY_ENDPOINT" --mode mixed --rate "$RATE" --recommend-qps "$QPS" \
  --duration 3600s --seed 32 -o json --scenario reprocess-load >"$TMP/load.json" 2>"$TMP/load.log" &
LOAD=$!
sleep 1
T0=$(date +%s.%N)
"$BUILD/eddy" --endpoint "$EDDY_ENDPOINT" -o json reprocess --all --from-start --set half-life=3d \
  >"$TMP/reprocess.json" 2>"$TMP/reprocess.err" || { cat "$TMP/reprocess.err" >&2; exit 1; }
T1=$(date +%s.%N)
kill -INT "$LOAD" 2>/dev/null || true
wait "$LOAD" 2>/dev/null || true

$PY - "$CL/logs" "$TMP/reprocess.json" "$TMP/load.json" "$(echo "$T1 - $T0" | bc)" <<'PY' | record reprocess
import datetime, glob, json, re, sys
logs, rep, load, wall = sys.argv[1:5]
def when(line):
    ts = re.match(r"ts=(\S+)Z", line).group(1)
    return datetime.datetime.fromisoformat(ts)
freezes, sent = [], 0
for f in sorted(glob.glob(f"{logs}/state-*.log")):
    lines = open(f).read().splitlines()
    prep = [when(l) for l in lines if "stage-2 rebuild prepared" in l]
    swap = [when(l) for l in lines if "stage-2 rebuild swapped" in l]
    if prep and swap:
        freezes.append(round((swap[-1] - prep[-1]).total_seconds() * 1000))
    sent += sum(int(m) for l in lines for m in re.findall(r'rebuilt stage-2 records sent.* batches=(\d+)', l))
r = json.load(open(rep))
try:
    out = json.load(open(load))
except ValueError:
    out = {"errors": 1, "first_error": "the load generator wrote no result"}
out.update({"scenario": "reprocess", "records_replayed": r["records_replayed"],
            "duration_ms": r["duration_ms"], "wall_s": float(wall), "pause_ms_max": r["pause_ms"],
            "stage2_rebuilt": r["stage2_rebuilt"], "stage2_frozen_ms": freezes,
            "stage2_batches_sent": sent})
print(json.dumps(out))
print(json.dumps({k: out[k] for k in ("records_replayed", "duration_ms", "pause_ms_max",
                                      "stage2_frozen_ms", "stage2_batches_sent", "errors")}),
      file=sys.stderr)
PY
finish reprocess
