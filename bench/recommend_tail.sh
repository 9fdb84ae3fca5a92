#!/usr/bin/env bash
# Recommend latency with cold and with warm caches (docs/BENCHMARKS.md, "Tail latency"): a
# fresh `eddy-node --dev`, BENCH_PRELOAD (default 6s) of ingest at the maximum rate, then
# Recommend at 5,000 QPS
# for BENCH_DURATION (default 10s) twice. The first run starts with the caches cold (the
# popularity lists and the neighbour entries are read for the first time), the second
# finds them warm. Beside the client's latency (from each call's scheduled time), the
# server's own: eddy_serving_seconds{method="Recommend"} (arrival to answer) and
# eddy_recommend_seconds{phase} (the handler thread's work, by phase), their p50 and p99 over
# the run from the histograms' buckets (the bucket's upper bound), the node's CPU per call
# (process_cpu_seconds_total) and the caches' counters.
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

# server_quantiles BEFORE AFTER: from two scrapes, the Recommend calls answered between
# them (each quantile the upper bound of its histogram bucket). Line 1: p50 and p99 of the
# whole call as served (eddy_serving_seconds, from its arrival) and, if the node has it, of
# eddy_recommend_seconds by phase (the work on the handler thread), with the node's CPU per
# call. Line 2: "P99_MS CALLS TOP_MS" of the served calls (P99_MS null when above every
# finite bucket or no call; TOP_MS the top finite bucket).
server_quantiles() {
  $PY - "$1" "$2" <<'PY'
import re, sys
def buckets(path):
    b = {}
    for line in open(path):
        m = re.match(r'(eddy_serving_seconds|eddy_recommend_seconds)_bucket\{(.*)\} (\S+)', line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        if m.group(1) == "eddy_serving_seconds":
            if labels.get("method") != "Recommend":
                continue
            series = "served"
        else:
            series = labels["phase"]
        le = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
        b.setdefault(series, {})[le] = float(m.group(3))
    return b
def cpu(path):
    for line in open(path):
        if line.startswith("process_cpu_seconds_total "):
            return float(line.split()[1])
    return float("nan")
a, z = buckets(sys.argv[1]), buckets(sys.argv[2])
out, served = [], []
for series in ["served", "total", "user", "popular", "neighbours", "rank"]:
    if series not in z:
        continue
    d = sorted((le, n - a.get(series, {}).get(le, 0)) for le, n in z[series].items())
    total = d[-1][1] if d else 0
    q = lambda f: next((le for le, n in d if total and n >= f * total), float("nan"))
    out.append(f"{series} p50 <= {q(0.5) * 1000:g} / p99 <= {q(0.99) * 1000:g} ms")
    if series == "served":
        served = d
calls = served[-1][1] if served else 0
per_call = (cpu(sys.argv[2]) - cpu(sys.argv[1])) / calls * 1e6 if calls else float("nan")
print(f"over {int(calls)} calls ({per_call:.0f} us of the node's CPU per call): " + "; ".join(out))
p99 = next((le for le, n in served if calls and n >= 0.99 * calls), float("nan"))
finite = [le for le, n in served if le != float("inf")]
top = max(finite) * 1000 if finite else float("nan")
print(f"{p99 * 1000:g}" if p99 == p99 and p99 != float("inf") else "null", int(calls),
      f"{top:g}" if top == top else "null")
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
  { read -r quantiles; read -r p99 calls top; } < <(server_quantiles "$TMP/before-$run" "$TMP/after-$run")
  log "recommend-$run: the server's own $quantiles"
  curl -fs "$METRICS" | grep -E '^eddy_(user|neighbour)_cache_[a-z_]+ ' | tr '\n' ' ' >&2 || true
  echo >&2
  if [ "$p99" = null ]; then
    log "recommend-$run: the server's own p99 > $top ms over $calls calls"
  else
    log "recommend-$run: the server's own p99 <= $p99 ms over $calls calls"
  fi
  echo "{\"aux\": true, \"server_p99_ms\": $p99, \"server_calls\": $calls, \"server_p99_above_ms\": $top}" |
    record "recommend-$run-server" 2>/dev/null
done

finish recommend-tail
