#!/usr/bin/env bash
# Live partition moves on this machine: a real etcd, one eddy-coordinator, one ingest node
# and one state node holding every partition (BENCH_MOVE_PARTITIONS, default 2); fill it
# with BENCH_MOVE_EVENTS events (default 200000), then add a second state node while
# eddy-bench keeps ingesting at BENCH_MOVE_RATE events/s (default 2000). Reports, per
# partition moved: its checkpoint size, the move's duration (copy start to serving) and
# write pause (flip to final tail applied), from the target's eddy_move_* metrics and the
# source's log; and the checkpoint write rate; the copy's time and the target's LevelDB
# writes within it (copy_ms, write_ms of "move: checkpoint loaded"), and the processes'
# threads' CPU from the join to settled ("cpu", bench/cpushare.py). Removes everything at
# the end.
#   bench/move.sh
. "$(dirname "$0")/lib.sh"
ETCD=${ETCD:-$(command -v etcd || echo /usr/bin/etcd)}
[ -x "$ETCD" ] || { log "etcd not found (Debian: etcd-server)"; exit 1; }
PARTS=${BENCH_MOVE_PARTITIONS:-2}
EVENTS=${BENCH_MOVE_EVENTS:-200000}
RATE=${BENCH_MOVE_RATE:-2000}

CP=$(free_port)
PP=$(free_port)
while [ "$PP" = "$CP" ]; do PP=$(free_port); done
ETCD_URL=http://127.0.0.1:$CP
start etcd "$ETCD" --name n1 --data-dir "$TMP/etcd" --listen-client-urls "$ETCD_URL" \
  --advertise-client-urls "$ETCD_URL" --listen-peer-urls "http://127.0.0.1:$PP" \
  --initial-advertise-peer-urls "http://127.0.0.1:$PP" --initial-cluster "n1=http://127.0.0.1:$PP" \
  --logger zap --log-level warn
for i in $(seq 1 200); do
  curl -fs --max-time 1 "$ETCD_URL/health" 2>/dev/null | grep -q '"health":"true"' && break
  sleep 0.1
done
COMMON=(--etcd "$ETCD_URL" --cluster bench --partitions "$PARTS" --lease-ttl 5s)
# min-insync 1: state-1 alone acknowledges the fill (R = 2: state-2 also becomes a follower)
start coordinator "$BUILD/eddy-coordinator" "${COMMON[@]}" --id coordinator-1 --listen 127.0.0.1:0 \
  --metrics-listen "" --max-moves 1 --min-insync-replicas 1
COORD=127.0.0.1:$(wait_printed coordinator listening)
state() {
  start "$1" "$BUILD/eddy-node" --role state "${COMMON[@]}" --node-id "$1" --data-dir "$TMP/$1" \
    --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --log-level info \
    --checkpoint-interval 1h --route-retries 30
}
state state-1
start ingest-1 "$BUILD/eddy-node" --role ingest "${COMMON[@]}" --node-id ingest-1 \
  --data-dir "$TMP/ingest-1" --listen 127.0.0.1:0 --metrics-listen "" --log-level warn \
  --route-retries 30
EP=127.0.0.1:$(wait_printed ingest-1 listening)
settled() { # N: N owners, every partition owned, no move in progress
  local js
  js=$("$BUILD/eddy" --coordinator "$COORD" -o json --timeout 2s status 2>/dev/null) || return 1
  $PY -c 'import json,sys; s=json.load(sys.stdin); o={p["owner"] for p in s["partitions"]};
sys.exit(0 if len(o)==int(sys.argv[1]) and "" not in o and not s["moves"] else 1)' "$1" <<<"$js"
}
for i in $(seq 1 300); do settled 1 && break; sleep 0.1; done
log "filling state-1: $EVENTS events in $PARTS partitions"
# eddy-bench exits non-zero when a call failed (a timeout on a loaded machine): the events
# acknowledged still fill the partitions, and the result says how many failed
"$BENCH" --endpoint "$EP" --mode ingest --events "$EVENTS" --seed 11 -o json >"$TMP/fill.json" ||
  log "the fill had errors: $(head -c 300 "$TMP/fill.json")"
log "adding state-2 under ingest at $RATE events/s"
"$BENCH" --endpoint "$EP" --mode ingest --rate "$RATE" --duration 600s --seed 12 -o json \
  >"$TMP/during.json" 2>"$TMP/during.log" &
LOAD=$!
PIDS+=($LOAD)
sleep 1
WATCH=("state-1=${PIDS[2]}" "ingest-1=${PIDS[3]}")
T0=$(date +%s.%N)
cpu_snap "$TMP/move.cpu0"
state state-2
WATCH+=("state-2=${PIDS[${#PIDS[@]}-1]}")
M2=127.0.0.1:$(wait_printed state-2 metrics)
# BENCH_MOVE_TIMEOUT (default 300 s): a move that has not settled by then is recorded as
# such, with its copies and their times (a copy that outlasts the source's --move-freeze
# starts again)
deadline=$((SECONDS + ${BENCH_MOVE_TIMEOUT:-300}))
until settled 2 || ((SECONDS >= deadline)); do sleep 0.1; done
T1=$(date +%s.%N)
cpu_snap "$TMP/move.cpu1"
SETTLED=1
settled 2 || { SETTLED=0; log "the move did not finish within ${BENCH_MOVE_TIMEOUT:-300} s"; }
kill "$LOAD" 2>/dev/null; wait "$LOAD" 2>/dev/null || true
curl -fs "http://$M2/metrics" >"$TMP/state-2.metrics"
$PY - "$TMP" "$T0" "$T1" "$SETTLED" <<'PY' | $PY "$REPO/bench/cpushare.py" merge "$TMP/move.cpu0" "$TMP/move.cpu1" | record move
import json, os, re, sys
tmp, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
m = {}
for line in open(f"{tmp}/state-2.metrics"):
    if line and not line.startswith("#"):
        k, v = line.rsplit(" ", 1)
        m[k] = float(v)
sent = [int(b) for b in re.findall(r'msg="checkpoint sent for a move" partition=\d+ seq=\d+ bytes=(\d+)',
                                   open(f"{tmp}/state-1.log").read())]
written = re.findall(r'msg="checkpoint written" partition=\d+ seq=\d+ records=\d+ bytes=(\d+)',
                     open(f"{tmp}/state-1.log").read())
n = m.get("eddy_move_duration_seconds_count", 0)
dur = m.get("eddy_move_duration_seconds_sum", 0)
pause = m.get("eddy_move_pause_seconds_sum", 0)
fill = json.load(open(f"{tmp}/fill.json"))
target_log = open(f"{tmp}/state-2.log").read()
loaded = [(int(c), int(w)) for c, w in re.findall(r'msg="move: checkpoint loaded" .* copy_ms=(\d+) write_ms=(\d+)',
                                                 target_log)]
during = json.load(open(f"{tmp}/during.json")) if os.path.getsize(f"{tmp}/during.json") else {}
# The last copy's phases from the two logs' timestamps (ms): the source's flush (its
# writer's queue before the snapshot), stream (snapshot scan and send at the stream's
# pace) and drain (the target taking the send queue), when it logs them; the target's
# start to copy (its old copy dropped, the call set up), copy (copy_ms: its LevelDB writes
# write_ms beside the receive, its waits for them wait_ms, the final sync sync_ms, the
# engine taking the partition take_ms), tail (loaded to "ready"), flip
# (ready to the flip seen) and pause (the fenced final tail).
def ts(line):
    t = re.search(r'ts=\S+T(\d+):(\d+):([\d.]+)Z', line)
    return (int(t[1]) * 3600 + int(t[2]) * 60 + float(t[3])) * 1000 if t else None
def last(lines, pat):
    hits = [l for l in lines if re.search(pat, l)]
    return hits[-1] if hits else None
tl = target_log.splitlines()
sl = open(f"{tmp}/state-1.log").read().splitlines()
phases = {}
l_start, l_loaded = last(tl, 'msg="move in: start"'), last(tl, 'msg="move: checkpoint loaded"')
l_ready, l_serving = last(tl, 'msg="move phase" .* phase=ready'), last(tl, 'msg="move in: serving"')
l_sent = last(sl, 'msg="checkpoint sent for a move"')
if l_sent:
    for k in ("flush_ms", "stream_ms", "drain_ms"):
        v = re.search(k + r'=(\d+)', l_sent)
        phases["source_" + k] = int(v[1]) if v else None
if l_loaded:
    for k in ("copy_ms", "write_ms", "wait_ms", "sync_ms", "take_ms"):
        v = re.search(k + r'=(\d+)', l_loaded)
        phases[k] = int(v[1]) if v else None
    if l_start:
        phases["start_to_copy_ms"] = ts(l_loaded) - ts(l_start) - phases["copy_ms"]
if l_loaded and l_ready:
    phases["tail_ms"] = ts(l_ready) - ts(l_loaded)
if l_ready and l_serving:
    phases["pause_ms"] = int(re.search(r'pause_ms=(\d+)', l_serving)[1])
    phases["flip_ms"] = ts(l_serving) - ts(l_ready) - phases["pause_ms"]
if l_start and l_serving:
    phases["last_copy_to_serving_ms"] = ts(l_serving) - ts(l_start)
out = {"scenario": "move", "partitions_moved": int(n), "settled": sys.argv[4] == "1",
       "copies": len(loaded), "freeze_lapsed": target_log.count("freeze of partition"),
       "checkpoint_bytes_per_partition": sum(sent) / max(len(sent), 1),
       "move_seconds_mean": dur / max(n, 1), "pause_ms_mean": 1000 * pause / max(n, 1),
       "move_mb_per_s": sum(sent) / 1e6 / max(dur, 1e-9),
       "wall_seconds_to_settled": t1 - t0, "fill_events": fill.get("events_acked", fill.get("events")),
       "fill_errors": fill.get("errors"),
       "copy_ms_mean": sum(c for c, _ in loaded) / max(len(loaded), 1),
       "write_ms_mean": sum(w for _, w in loaded) / max(len(loaded), 1),
       "ingest_eps_during": during.get("throughput_eps"),
       "phases": phases,
       "throughput_eps": 0}
print(json.dumps(out))
print(json.dumps(out, indent=1), file=sys.stderr)
PY
log "timeline (source state-1, target state-2):"
grep -hE 'move|checkpoint sent|moves/out|partition copy deleted|restored' "$TMP/state-1.log" "$TMP/state-2.log" \
  | sort | sed 's/^/  /' >&2
finish move
