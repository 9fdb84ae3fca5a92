#!/usr/bin/env bash
# Throughput and latency of one `eddy-node --dev` (docs/BENCHMARKS.md), with the references
# measured in the same run. Starts its own node on a free port in a temporary directory and
# removes everything at the end.
#   bench/dev.sh           scenarios of BENCH_DURATION (default 10s) each, ~2 minutes
# Scenarios: ingest at max rate; ingest at 5,000 and at 500 events/s (the acknowledgement
# when the node keeps up, and of one batch at a time); Recommend at 5000 QPS idle; Recommend at 5000 QPS while
# ingesting 50,000 events/s; event to visible in GetUserProfile.
. "$(dirname "$0")/lib.sh"

references

start node "$BUILD/eddy-node" --dev --data-dir "$TMP/node" --listen 127.0.0.1:0 \
  --metrics-listen 127.0.0.1:0 --log-level warn
EP=127.0.0.1:$(wait_printed node listening)
log "eddy-node --dev on $EP"

bench dev-ingest-max --endpoint "$EP" --mode ingest --duration "$DURATION" --seed 1
# the acknowledgement when the node keeps up (at max rate it is the queue ahead of a batch),
# and of one batch at a time (500 events/s: its service time, apply and fsync)
bench dev-ingest-5k --endpoint "$EP" --mode ingest --rate 5000 --duration "$DURATION" --seed 5
bench dev-ingest-500 --endpoint "$EP" --mode ingest --rate 500 --duration "$DURATION" --seed 6
bench dev-recommend-idle --endpoint "$EP" --mode recommend --recommend-qps 5000 --duration "$DURATION" --seed 2
bench dev-mixed --endpoint "$EP" --mode mixed --recommend-qps 5000 --rate 50000 --duration "$DURATION" --seed 3
bench dev-visible --endpoint "$EP" --mode visible --duration "$DURATION" --seed 4

finish dev
