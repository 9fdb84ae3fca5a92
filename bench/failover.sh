#!/usr/bin/env bash
# Where a failover's time goes, at moderate load: one scripts/local-cluster.sh cluster
# (etcd, a coordinator, 3 state and 2 ingest nodes, 256 partitions, R = 2, min-insync 2,
# --lease-ttl BENCH_LEASE_TTL, default 2s), eddy-bench writing BENCH_RATE events/s
# (default 2000) in the background, and bench/failover.py writing one batch of 100 at a
# time through both ingest nodes and killing state-2 (kill -9) after 3 s. Prints
# failover.py's JSON: the kill to the first acknowledgement, that less the lease TTL, and
# the timeline from the logs (lease expiry seen, promotions, map written and seen by each
# node, the moved partitions' in-sync sets complete again). BENCH_RUNS runs (default 3),
# each on a fresh cluster. Removes everything at the end (BENCH_LOGS=DIR: each run's logs are
# copied to DIR/run-N first).
#   bench/failover.sh
. "$(dirname "$0")/lib.sh"
TTL=${BENCH_LEASE_TTL:-2s}
RATE=${BENCH_RATE:-2000}
RUNS=${BENCH_RUNS:-3}
export LC_LEASE_TTL=$TTL LC_REPLICATION_FACTOR=2
# the coordinator's metrics on a free port (the default 9464 may be taken on a shared machine)
export EDDY_METRICS_LISTEN=127.0.0.1:0
for run in $(seq 1 "$RUNS"); do
  log "run $run: cluster with 2 copies of each partition, $RATE events/s in the background"
  local_cluster_up
  EPS=$(tr ' ' ',' <<<"$EDDY_INGEST_ENDPOINTS")
  "$BENCH" -o json --scenario "failover-load-$run" --endpoint "$EDDY_ENDPOINT" --mode ingest \
    --rate "$RATE" --duration 16s --seed "$run" >"$TMP/load-$run.json" 2>/dev/null &
  LOAD=$!
  sleep 1
  $PY "$REPO/bench/failover.py" --endpoints "$EPS" --kill-pid "$(cat "$CL/pids/state-2.pid")" \
    --lease-ttl "${TTL%s}" --duration 14 --logs "$CL/logs" --victim state-2 \
    >"$TMP/failover-$run.json"
  wait "$LOAD" || true
  echo "failover run $run: $(cat "$TMP/failover-$run.json")" | tee -a "$TMP/failover.txt" >&2
  if [ -n "${BENCH_LOGS:-}" ]; then mkdir -p "$BENCH_LOGS/run-$run" && cp "$CL"/logs/*.log "$BENCH_LOGS/run-$run/"; fi
  lc down --purge
done
cat "$TMP/failover.txt"
