#!/usr/bin/env bash
# Where a synced write's time goes, in the node and in the reference of the node's shape
# (docs/BENCHMARKS.md, "Session 15"). uprobes on LevelDB's leveldb_write (entry, return)
# and the fdatasync syscall, recorded with `perf record` (root; perf with uprobes), split
# by bench/sync_write.py into before the fdatasync / the fdatasync / after it (the
# memtable inserts) per thread:
#  - a fresh `eddy-node --dev`, eddy-bench --rate BENCH_RATE (default 500: one 500-event
#    batch at a time) for BENCH_DURATION (default 20s); with BENCH_BURST=1, first 10 s of
#    ingest at the maximum rate (LevelDB then compacts during the measured run);
#  - eddy-ref-leveldb as measured so far (500 rows per synced write, back to back), and with
#    the node's shape: a DEDUP row per event, 256 KiB of unsynced rows before each synced
#    write (the node's flush: ~170-260 KiB per lone batch), 100 ms idle before each.
# Extra arguments go to the node.
#   EDDY_BUILD_DIR=build-rel bench/sync_write.sh
. "$(dirname "$0")/lib.sh"
RATE=${BENCH_RATE:-500}
DURATION=${BENCH_DURATION:-20s}
LIB=$(ldd "$BUILD/eddy-node" | sed -n 's/.*libleveldb[^ ]* => \([^ ]*\).*/\1/p')
perf probe -q -x "$LIB" -a leveldb_write 2>/dev/null || true
perf probe -q -x "$LIB" -a 'leveldb_write_ret=leveldb_write%return' 2>/dev/null || true
EVENTS=(-e probe_libleveldb:leveldb_write -e probe_libleveldb:leveldb_write_ret__return
        -e syscalls:sys_enter_fdatasync -e syscalls:sys_exit_fdatasync)

start node "$BUILD/eddy-node" --dev --data-dir "$TMP/node" --listen 127.0.0.1:0 \
  --metrics-listen 127.0.0.1:0 --log-level warn "$@"
NODE=${PIDS[${#PIDS[@]}-1]}
PORT=$(wait_printed node listening)
if [ "${BENCH_BURST:-0}" = 1 ]; then
  "$BENCH" -o json --endpoint "127.0.0.1:$PORT" --mode ingest --duration 10s --seed 1 >/dev/null
fi
perf record -q -o "$TMP/node.perf" "${EVENTS[@]}" -p "$NODE" 2>/dev/null &
REC=$!
sleep 0.3
"$BENCH" -o json --endpoint "127.0.0.1:$PORT" --mode ingest --rate "$RATE" --duration "$DURATION" \
  --seed 6 | $PY -c 'import json, sys; j = json.load(sys.stdin); l = j["latency_ms"]; print("ack at %d events/s: p50 %.1f p95 %.1f p99 %.1f ms" % (j["throughput_eps"], l["p50"], l["p95"], l["p99"]))'
kill -INT "$REC"
wait "$REC" || true
$PY "$REPO/bench/sync_write.py" "$TMP/node.perf" node | grep -v unsynced

ref() {
  local label=$1
  shift
  rm -rf "$TMP/ref"
  perf record -q -o "$TMP/ref.perf" "${EVENTS[@]}" -- "$BUILD/eddy-ref-leveldb" --dir "$TMP/ref" "$@" \
    >/dev/null 2>&1
  $PY "$REPO/bench/sync_write.py" "$TMP/ref.perf" "$label" | grep -v unsynced
}
ref ref --events 100000
ref ref-node-shape --events 25000 --dedup --behind 256k --pause 100ms
