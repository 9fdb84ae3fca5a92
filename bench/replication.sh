#!/usr/bin/env bash
# What replication costs and what it buys, on one local cluster layout in one run
# (scripts/local-cluster.sh: etcd, a coordinator, 3 state and 2 ingest nodes, 256
# partitions, --lease-ttl BENCH_LEASE_TTL, default 2s), first with one copy of each
# partition (R = 1), then with two (R = 2, min-insync 2):
#   rR-ingest-max   eddy-bench at the maximum rate (4 streams x 2 batches of 500 in flight)
#   rR-ack-lone     one batch of 100 events at a time: the acknowledgement's latency
#   r2-failover     bench/failover.py: kill -9 of state-2 under one-batch-at-a-time writes;
#                   the time until writes are acknowledged again, and after the lease
# BENCH_REPLICATION_FACTORS picks the layouts (default "1 2"), BENCH_FAILOVER=0 skips the
# kill. Each result carries every process's threads' CPU over the run ("cpu").
# Removes everything at the end.
#   bench/replication.sh        (BENCH_DURATION per scenario, default 10s)
. "$(dirname "$0")/lib.sh"
TTL=${BENCH_LEASE_TTL:-2s}
export LC_LEASE_TTL=$TTL
: >"$TMP/failover.txt"
for R in ${BENCH_REPLICATION_FACTORS:-1 2}; do
  export LC_REPLICATION_FACTOR=$R
  log "cluster with $R cop$([ "$R" = 1 ] && echo y || echo ies) of each partition"
  local_cluster_up
  WATCH=()
  for f in "$CL"/pids/*.pid; do WATCH+=("$(basename "$f" .pid)=$(cat "$f")"); done
  EPS=$(tr ' ' ',' <<<"$EDDY_INGEST_ENDPOINTS")
  bench "r$R-ingest-max" --endpoint "$EDDY_ENDPOINT" --mode ingest --duration "$DURATION" --seed 5
  bench "r$R-ack-lone" --endpoint "$EDDY_ENDPOINT" --mode ingest --streams 1 --inflight 1 \
    --batch 100 --duration "$DURATION" --seed 6
  if [ "$R" = 2 ] && [ "${BENCH_FAILOVER:-1}" != 0 ]; then
    log "failover: kill -9 of state-2 under writes"
    $PY "$REPO/bench/failover.py" --endpoints "$EPS" --kill-pid "$(cat "$CL/pids/state-2.pid")" \
      --lease-ttl "${TTL%s}" >"$TMP/failover.json"
    echo "r2-failover: $(cat "$TMP/failover.json")" | tee -a "$TMP/failover.txt" >&2
  fi
  lc down --purge
done
finish replication
cat "$TMP/failover.txt"
