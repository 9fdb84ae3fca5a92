#!/usr/bin/env bash
# Recommend latency with cold and with warm caches (docs/BENCHMARKS.md, "Tail latency"): a
# fresh `eddy-node --dev`, BENCH_PRELOAD (default 6s) of ingest at the maximum rate, then
# Recommend at 5,000 QPS
# for BENCH_DURATION (default 10s) twice. The first run starts with the caches cold (the
# popularity lists and the neighbour entries are read for the first time), the second
# finds them warm. Beside the client's latency (from each call's scheduled time), the
# server's own: eddy_serving_seconds{method="Recommend"} (arrival to answer), its p99 over
# the run from the histogram's buckets (the bucket's upper bound).
# Then the same 5,000 QPS while eddy-bench ingests at BENCH_MIXED_RATE events/s (default
# 50,000; `--mode mixed`: the rate the node achieved is the result's throughput_eps). Each
# result carries the node's threads' CPU over the run ("cpu", bench/cpushare.py).
#   bench/recommend_tail.sh
. "$(dirname "$0")/lib.sh"

start node "$BUILD/eddy-node" --dev --data-dir "$TMP/node" --listen 127.0.0.1:0 \
  --metrics-listen 127.0.0.1:0 --log-level warn
WATCH=("node=${PIDS[${#PIDS[@]}-1]}")
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
finite = [le for le, n in d if le != float("inf")]
top = max(finite) * 1000 if finite else float("nan")
# p99 in ms (null when above every finite bucket, or no call), calls, the top finite bucket
print(f"{le * 1000:g}" if le == le and le != float("inf") else "null", int(total), f"{top:g}" if top == top else "null")
PY
}

MIXED_RATE=${BENCH_MIXED_RATE:-50000}
for run in cold warm ingest; do
  mode=(--mode recommend)
  [ "$run" = ingest ] && mode=(--mode mixed --rate "$MIXED_RATE")
  curl -fs "$METRICS" >"$TMP/before-$run"
  bench "recommend-$run" --endpoint "$EP" "${mode[@]}" --recommend-qps 5000 \
    --duration "$DURATION" --seed 2
  curl -fs "$METRICS" >"$TMP/after-$run"
  read -r p99 calls top < <(server_p99 "$TMP/before-$run" "$TMP/after-$run")
  if [ "$p99" = null ]; then
    log "recommend-$run: the server's own p99 > $top ms over $calls calls"
  else
    log "recommend-$run: the server's own p99 <= $p99 ms over $calls calls"
  fi
  echo "{\"aux\": true, \"server_p99_ms\": $p99, \"server_calls\": $calls, \"server_p99_above_ms\": $top}" |
    record "recommend-$run-server" 2>/dev/null
done

finish recommend-tail
