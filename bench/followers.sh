#!/usr/bin/env bash
# Recommend through followers vs leader-only, on one local cluster in one run
# (scripts/local-cluster.sh: etcd, a coordinator, 3 state and 2 ingest nodes, 256
# partitions, R = 2): events are loaded once, then the same open-loop Recommend load is
# sent to an ingest node alternately without and with allow_stale (eddy-bench
# --allow-stale), two rounds each, so the machine's load drifts over both alike:
#   leader-N     Recommend answered by each partition's leader
#   follower-N   Recommend with allow_stale: answered by a follower (recommend_from_follower)
# Removes everything at the end.
#   bench/followers.sh        (BENCH_DURATION per scenario, default 10s; BENCH_QPS, 500)
. "$(dirname "$0")/lib.sh"
QPS=${BENCH_QPS:-500}
export LC_REPLICATION_FACTOR=2
log "cluster with 2 copies of each partition"
local_cluster_up
bench load --endpoint "$EDDY_ENDPOINT" --mode ingest --events 40000 --seed 7
for round in 1 2; do
  bench "leader-$round" --endpoint "$EDDY_ENDPOINT" --mode recommend --recommend-qps "$QPS" \
    --duration "$DURATION" --seed 7
  bench "follower-$round" --endpoint "$EDDY_ENDPOINT" --mode recommend --recommend-qps "$QPS" \
    --duration "$DURATION" --seed 7 --allow-stale
done
finish followers
grep -o '"scenario": *"[a-z0-9-]*"\|"recommend_from_follower": *[0-9]*\|"recommend_requests": *[0-9]*' \
  "$RESULTS" | paste -sd' ' >&2
