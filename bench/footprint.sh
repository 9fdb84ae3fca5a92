#!/usr/bin/env bash
# RAM and disk per user (docs/BENCHMARKS.md, "Footprint per user"): one `eddy-node --dev`
# ingests BENCH_EVENTS events (default 3 per user) of BENCH_USERS users (default
# 1,000,000, drawn uniformly so that nearly all of them appear), then reports the node's
# resident memory (VmRSS, and its peak VmHWM) and, after a clean stop, the data directory's
# size on disk and each table's rows and bytes (keys + values, before LevelDB's snappy),
# divided by the users the node holds (USER rows). RAM per user counts the node's own
# memory (RssAnon), not the table files LevelDB maps (page cache, RssFile). NODE_FLAGS
# adds node flags (e.g. smaller caches: "--state-cache-size 32MB --cache-size 8MB").
#   bench/footprint.sh
. "$(dirname "$0")/lib.sh"
USERS=${BENCH_USERS:-1000000}
EVENTS=${BENCH_EVENTS:-$((3 * USERS))}
# shellcheck disable=SC2086
start node "$BUILD/eddy-node" --dev --data-dir "$TMP/node" --listen 127.0.0.1:0 \
  --metrics-listen 127.0.0.1:0 --log-level warn --checkpoint-interval 0 ${NODE_FLAGS:-}
PID=${PIDS[${#PIDS[@]}-1]}
EP=127.0.0.1:$(wait_printed node listening)
log "eddy-node --dev on $EP (flags: ${NODE_FLAGS:-defaults}); ingesting $EVENTS events of $USERS users"
RSS0=$(awk '/^VmRSS/ {print $2}' "/proc/$PID/status")
# eddy-bench exits non-zero when a call failed (a timeout on a loaded machine); the result
# counts them ("errors") and the tables count what was written
"$BENCH" --endpoint "$EP" --mode ingest --events "$EVENTS" --users "$USERS" --zipf-users 0 \
  --seed 7 -o json --scenario footprint-ingest >"$TMP/ingest.json" ||
  log "the ingest had errors: $(head -c 300 "$TMP/ingest.json")"
RSS=$(awk '/^VmRSS/ {print $2}' "/proc/$PID/status")
HWM=$(awk '/^VmHWM/ {print $2}' "/proc/$PID/status")
# RssFile: LevelDB maps its table files; those pages are the kernel's page cache (shared,
# reclaimable), not the node's own memory, which is RssAnon
ANON=$(awk '/^RssAnon/ {print $2}' "/proc/$PID/status")
log "ingested: $(tr -d '\n' <"$TMP/ingest.json" | cut -c1-200)"
log "resident: ${RSS} kB, of which ${ANON} kB the node's own (peak ${HWM} kB, ${RSS0} kB before the ingest); stopping the node"
kill -TERM "$PID"
wait "$PID" || log "the node exited with $?"
DISK=$(du -sb "$TMP/node" | cut -f1)
log "on disk: $DISK bytes; reading every table"
"$BUILD/eddy-node" --data-dir "$TMP/node" --dump-state all 2>"$TMP/dump.err" |
$PY -c '
import json, sys
names = {1: "log", 2: "dedup_id", 3: "dedup_exp", 4: "user", 5: "user_win", 6: "user_log",
         7: "part_win", 8: "product", 9: "prod_win", 10: "cat_pop", 11: "late", 12: "s2_hw",
         13: "outbox", 14: "bought", 15: "meta", 16: "seen", 17: "impr", 18: "exp_stat",
         19: "exp_def", 20: "cooc", 21: "part_ack", 22: "dedup"}  # enum store_table, node/state/store_key.h
rows, size = {}, {}
for line in sys.stdin:
    k, _, v = line.rstrip("\n").partition(" ")
    t = names.get(int(k[4:6], 16), k[4:6])
    rows[t] = rows.get(t, 0) + 1
    size[t] = size.get(t, 0) + (len(k) + len(v)) // 2
json.dump({"rows": rows, "bytes": size}, sys.stdout)' >"$TMP/tables.json" ||
  { log "reading the tables failed: $(cat "$TMP/dump.err")"; exit 1; }
$PY - "$TMP/ingest.json" "$TMP/tables.json" "$RSS0" "$RSS" "$HWM" "$DISK" "$ANON" "${NODE_FLAGS:-}" <<'PY'
import json, sys
ingest, tables = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
rss0, rss, hwm, disk, anon = (int(x) for x in sys.argv[3:8])
users = tables["rows"].get("user", 0)
per = lambda b: round(b / users, 1) if users else None
print(json.dumps({"scenario": "footprint", "flags": sys.argv[8] or "defaults",
                  "events": ingest.get("events"), "throughput_eps": ingest.get("throughput_eps"),
                  "errors": ingest.get("errors"), "users": users,
                  "rss_bytes": rss * 1024, "rss_anon_bytes": anon * 1024,
                  "rss_idle_bytes": rss0 * 1024, "rss_peak_bytes": hwm * 1024,
                  "disk_bytes": disk, "ram_per_user": per(anon * 1024),
                  "rss_per_user": per(rss * 1024), "disk_per_user": per(disk),
                  "table_bytes_per_user": {t: per(b) for t, b in sorted(tables["bytes"].items())},
                  "table_rows": tables["rows"]}, indent=1))
PY
