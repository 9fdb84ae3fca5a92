#!/usr/bin/env bash
# Checkpoint write rate: an eddy-node --dev with P = 2 partitions is filled with
# BENCH_CKPT_EVENTS events (default 500000, about 70 MB per partition), stopped, and
# started again with --checkpoint-interval 2s: it then checkpoints both partitions at once
# (snapshot scan, CRC-32C, fsync, rename, prune). Reports the bytes, the seconds
# (eddy_checkpoint_duration_seconds) and MB/s. Removes everything at the end.
#   bench/checkpoint.sh
. "$(dirname "$0")/lib.sh"
EVENTS=${BENCH_CKPT_EVENTS:-500000}
node() {
  start "$1" "$BUILD/eddy-node" --dev --partitions 2 --data-dir "$TMP/data" --listen 127.0.0.1:0 \
    --metrics-listen 127.0.0.1:0 --log-level info "${@:2}"
}
node fill --checkpoint-interval 0
EP=127.0.0.1:$(wait_printed fill listening)
log "filling: $EVENTS events"
"$BENCH" --endpoint "$EP" --mode ingest --events "$EVENTS" --seed 31 -o json >"$TMP/fill.json"
kill "${PIDS[-1]}"
wait "${PIDS[-1]}" 2>/dev/null || true
node ckpt --checkpoint-interval 2s --checkpoint-min-pause 1h
M=127.0.0.1:$(wait_printed ckpt metrics)
for i in $(seq 1 600); do
  n=$(curl -fs "http://$M/metrics" | sed -n 's/^eddy_checkpoint_duration_seconds_count \(.*\)$/\1/p')
  [ "${n:-0}" = 2 ] && break
  sleep 0.1
done
curl -fs "http://$M/metrics" >"$TMP/metrics"
$PY - "$TMP/metrics" "$TMP/ckpt.log" <<'PY' | record checkpoint
import json, re, sys
m = dict(l.rsplit(" ", 1) for l in open(sys.argv[1]) if l.strip() and not l.startswith("#"))
secs = float(m["eddy_checkpoint_duration_seconds_sum"])
n = int(float(m["eddy_checkpoint_duration_seconds_count"]))
written = [int(b) for b in re.findall(r'msg="checkpoint written" .* bytes=(\d+)', open(sys.argv[2]).read())]
total = sum(written)
r = {"scenario": "checkpoint", "checkpoints": n, "bytes": total, "seconds": secs,
     "mb_per_s": total / 1e6 / secs, "seconds_per_gb": secs / (total / 1e9), "throughput_eps": 0}
print(json.dumps(r))
print(json.dumps(r), file=sys.stderr)
PY
finish checkpoint
