#!/usr/bin/env bash
# Recommend latency with cold and with warm caches (docs/BENCHMARKS.md, "Tail latency"): a
# fresh `eddy-node --dev`, BENCH_PRELOAD (default 6s) of ingest at the maximum rate, then
# Recommend at 5,000 QPS
# for BENCH_DURATION (default 10s) twice. The first run starts with the caches cold (the
# popularity lists and the neighbour entries are read for the first time), the second
# finds them warm. Beside the client's latency (from each call's scheduled time), the
# server's own: eddy_serving_seconds{method="Recommend"} (arrival to answer), its p99 over
# the run from the histogram's buckets (the bucket's upper bound).
#   bench/recommend_tail.sh
. "$(dirname "$0")/lib.sh"

start node "$BUILD/eddy-node" --dev --data-dir "$TMP/node" --listen 127.0.0.1:0 \
  --metrics-listen 127.0.0.1:0 --log-level warn
EP=127.0.0.1:$(wait_printed node listening)
METRICS=http://127.0.0.1:$(wait_printed node metrics)/metrics
PRELOAD=${BENCH_PRELOAD:-6s}
log "eddy-node --dev on $EP; $PRELOAD of ingest first"
"$BENCH" --endpoint "$EP" --mode ingest --duration "$PRELOAD" --seed 1 -o json >/dev/null

# server_p99 BEFORE AFTER: the p99 of the Recommend calls answered between two scrapes
server_p99() {
  $PY - "$1" "$2" <<'PY'
import re, sys
def buckets(path):
    b = {}
    for line in open(path):
        m = re.match(r'eddy_serving_seconds_bucket\{(.*)\} (\S+)', line)
        if m and 'method="Recommend"' in m.group(1):
            le = re.search(r'le="([^"]+)"', m.group(1)).group(1)
            b[float("inf") if le == "+Inf" else float(le)] = float(m.group(2))
    return b
a, z = buckets(sys.argv[1]), buckets(sys.argv[2])
d = sorted((le, z[le] - a.get(le, 0)) for le in z)
total = d[-1][1] if d else 0
le = next((le for le, n in d if total and n >= 0.99 * total), float("nan"))
print(f"{le * 1000:g} ms over {int(total)} calls")
PY
}

for run in cold warm; do
  curl -fs "$METRICS" >"$TMP/before-$run"
  bench "recommend-$run" --endpoint "$EP" --mode recommend --recommend-qps 5000 \
    --duration "$DURATION" --seed 2
  curl -fs "$METRICS" >"$TMP/after-$run"
  log "recommend-$run: the server's own p99 <= $(server_p99 "$TMP/before-$run" "$TMP/after-$run")"
done

finish recommend-tail
