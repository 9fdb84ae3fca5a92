#!/usr/bin/env bash
# Throughput and latency of one `eddy-node --dev` (docs/BENCHMARKS.md), with the references
# measured in the same run. Starts its own node on a free port in a temporary directory and
# removes everything at the end.
#   bench/dev.sh           scenarios of BENCH_DURATION (default 10s) each, ~2 minutes
# Scenarios: ingest at max rate; ingest at 5,000 and at 500 events/s (the acknowledgement
# when the node keeps up, and of one batch at a time); Recommend at 5000 QPS idle; Recommend at 5000 QPS while
# ingesting 50,000 events/s; event to visible in GetUserProfile. BENCH_DEV_SCENARIOS picks
# some of them (default: "ingest-max ingest-5k ingest-500 recommend-idle mixed visible").
# Each result carries the node's threads' CPU over the run ("cpu", bench/cpushare.py).
. "$(dirname "$0")/lib.sh"
SCENARIOS=" ${BENCH_DEV_SCENARIOS:-ingest-max ingest-5k ingest-500 recommend-idle mixed visible} "
want() { [[ "$SCENARIOS" == *" $1 "* ]]; }

references

start node "$BUILD/eddy-node" --dev --data-dir "$TMP/node" --listen 127.0.0.1:0 \
  --metrics-listen 127.0.0.1:0 --log-level warn
WATCH=("node=${PIDS[${#PIDS[@]}-1]}")
EP=127.0.0.1:$(wait_printed node listening)
METRICS=http://127.0.0.1:$(wait_printed node metrics)/metrics
log "eddy-node --dev on $EP"

# groups LABEL ARGS...: bench LABEL ARGS..., and the writer's groups over the run (each
# one synced write: eddy_group_commit_events_count), recorded as LABEL-groups
groups() {
  local label=$1 g0 g1
  g0=$(curl -fs "$METRICS" | awk '/^eddy_group_commit_events_count /{print $2}')
  bench "$@"
  g1=$(curl -fs "$METRICS" | awk '/^eddy_group_commit_events_count /{print $2}')
  echo "{\"aux\": true, \"groups\": $((${g1:-0} - ${g0:-0}))}" | record "$label-groups" 2>/dev/null
}

want ingest-max && bench dev-ingest-max --endpoint "$EP" --mode ingest --duration "$DURATION" --seed 1
# the acknowledgement when the node keeps up (at max rate it is the queue ahead of a batch),
# and of one batch at a time (500 events/s: its service time, apply and fsync)
want ingest-5k && groups dev-ingest-5k --endpoint "$EP" --mode ingest --rate 5000 --duration "$DURATION" --seed 5
want ingest-500 && groups dev-ingest-500 --endpoint "$EP" --mode ingest --rate 500 --duration "$DURATION" --seed 6
want recommend-idle && bench dev-recommend-idle --endpoint "$EP" --mode recommend --recommend-qps 5000 --duration "$DURATION" --seed 2
want mixed && bench dev-mixed --endpoint "$EP" --mode mixed --recommend-qps 5000 --rate 50000 --duration "$DURATION" --seed 3
want visible && bench dev-visible --endpoint "$EP" --mode visible --duration "$DURATION" --seed 4

finish dev
