#!/usr/bin/env bash
# Checkpoint write rate: an eddy-node --dev with P = 2 partitions is filled with
# BENCH_CKPT_EVENTS events (default 500000, about 70 MB per partition), stopped, and
# started again with --checkpoint-interval 100ms: both partitions are then due at once
# (50 ms apart) and checkpointed (snapshot scan, CRC-32C, fsync, rename, prune) by the
# node's checkpoint threads (BENCH_CKPT_THREADS sets --checkpoint-threads; unset: the
# node's default). Reports the bytes, the node's wall time for both (scheduler start to
# the last file written: the rate the node checkpoints at), the sum of the checkpoints'
# own seconds (eddy_checkpoint_duration_seconds) and MB/s of each, and the restore of
# partition 0's file into a fresh LevelDB (eddy-load-bench: read, check, load, sync).
# BENCH_CKPT_KEY=1: the same with --checkpoint-key-file (a random key): the cost of
# encryption at rest. Removes everything at the end.
#   bench/checkpoint.sh
. "$(dirname "$0")/lib.sh"
EVENTS=${BENCH_CKPT_EVENTS:-500000}
THREADS=()
[ -n "${BENCH_CKPT_THREADS:-}" ] && THREADS=(--checkpoint-threads "$BENCH_CKPT_THREADS")
KEY=()
if [ -n "${BENCH_CKPT_KEY:-}" ]; then
  head -c 32 /dev/urandom >"$TMP/ckpt.key"
  KEY=(--checkpoint-key-file "$TMP/ckpt.key")
fi
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
node ckpt --checkpoint-interval 100ms --checkpoint-min-pause 1h "${THREADS[@]}" "${KEY[@]}"
M=127.0.0.1:$(wait_printed ckpt metrics)
for i in $(seq 1 600); do
  n=$(curl -fs "http://$M/metrics" | sed -n 's/^eddy_checkpoint_duration_seconds_count \(.*\)$/\1/p')
  [ "${n:-0}" = 2 ] && break
  sleep 0.1
done
curl -fs "http://$M/metrics" >"$TMP/metrics"
LOADKEY=()
[ -n "${BENCH_CKPT_KEY:-}" ] && LOADKEY=(--key "$TMP/ckpt.key")
FILE=$(ls "$TMP"/data/checkpoints/p00000-*.ckp | tail -1)
"$BUILD/eddy-load-bench" "$FILE" "$TMP/restore" "${LOADKEY[@]}" >"$TMP/restore.json"
$PY - "$TMP/metrics" "$TMP/ckpt.log" "$TMP/restore.json" "${BENCH_CKPT_KEY:-}" <<'PY' | record checkpoint
import datetime, json, re, sys
m = dict(l.rsplit(" ", 1) for l in open(sys.argv[1]) if l.strip() and not l.startswith("#"))
secs = float(m["eddy_checkpoint_duration_seconds_sum"])
n = int(float(m["eddy_checkpoint_duration_seconds_count"]))
log = open(sys.argv[2]).read()
written = [int(b) for b in re.findall(r'msg="checkpoint written" .* bytes=(\d+)', log)]
total = sum(written)
def ts(pattern):
    return [datetime.datetime.strptime(t, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()
            for t in re.findall(r'^ts=(\S+) .*' + pattern, log, re.M)]
wall = max(ts('msg="checkpoint written"')) - min(ts('msg="checkpoint scheduler started"'))
r = {"scenario": "checkpoint", "checkpoints": n, "bytes": total, "wall_seconds": wall,
     "mb_per_s": total / 1e6 / wall, "seconds_per_gb": wall / (total / 1e9),
     "checkpoint_seconds_sum": secs, "mb_per_s_each": total / 1e6 / secs,
     "encrypted": bool(sys.argv[4]), "restore": json.load(open(sys.argv[3])),
     "throughput_eps": 0}
print(json.dumps(r))
print(json.dumps(r), file=sys.stderr)
PY
finish checkpoint
