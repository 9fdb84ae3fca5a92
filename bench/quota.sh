#!/usr/bin/env bash
# Per-tenant quotas (docs/security.md): does one tenant flooding Ingest raise another
# tenant's Recommend p99? One `eddy-node --dev --token-file` and three tenants: B reads
# (eddy-bench --mode recommend at BENCH_QPS, default 500, with its token), A floods Ingest
# under a quota of QUOTA_EPS events/s (default 2000), C floods the same way with no quota.
# Scenarios, in one run, each BENCH_DURATION (default 10s): B alone; B while A floods;
# B while C floods; repeated ROUNDS times (default 2), alternating, so that a change in the
# shared machine's load shows as a difference between rounds rather than between scenarios. The flood is bench/quota_flood.py (FLOOD_PROCS processes, default 3,
# 8 calls in flight each, batches of 100 events, no backoff on RESOURCE_EXHAUSTED; its
# requests serialized in advance, so it costs the shared machine little client CPU).
#   bench/quota.sh     then compare the p99 of the b-* rows; the flood's counts are logged
. "$(dirname "$0")/lib.sh"

QPS=${BENCH_QPS:-500}
QUOTA=${QUOTA_EPS:-2000}
PROCS=${FLOOD_PROCS:-3}
SECS=${DURATION%s}
case "$SECS" in *[!0-9]*) log "BENCH_DURATION must be whole seconds (10s)"; exit 2 ;; esac
hash() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
cat >"$TMP/tokens" <<TOKENS
sha256:$(hash reader-secret) tenant=b roles=ingest,read
sha256:$(hash flood-secret) tenant=a roles=ingest events_per_s=$QUOTA
sha256:$(hash free-secret) tenant=c roles=ingest events_per_s=0 calls_per_s=0
TOKENS
start node "$BUILD/eddy-node" --dev --data-dir "$TMP/data" --listen 127.0.0.1:0 \
  --metrics-listen "" --log-level warn --token-file "$TMP/tokens"
EP=127.0.0.1:$(wait_printed node listening)
NODE_PID=${PIDS[0]}
# cpu_s: the node's user+system CPU seconds so far (what a scenario cost the node itself,
# apart from the clients that share the machine)
cpu_s() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$NODE_PID/stat"; }
measured() { # LABEL ARGS...: bench LABEL ARGS, and the node's CPU seconds during it
  local c0 c1
  c0=$(cpu_s)
  bench "$@"
  c1=$(cpu_s)
  log "$1: node CPU $(echo "$c1 - $c0" | bc) s"
}
log "node on $EP; B at $QPS Recommend/s; A's quota $QUOTA events/s; $PROCS flood processes"

$PY "$REPO/bench/quota_flood.py" "$EP" reader-secret 1 1 1 1 >/dev/null # stubs, warm-up
bench preload --endpoint "$EP" --token reader-secret --mode recommend --recommend-qps 10 \
  --preload 20000 --duration 1s --seed 2 # B's users, before any measurement
flood_during() { # LABEL TOKEN
  $PY "$REPO/bench/quota_flood.py" "$EP" "$2" $((SECS + 2)) "$PROCS" >"$TMP/$1.flood" \
    2>"$TMP/$1.flood.log" &
  local f=$! i
  for i in $(seq 1 600); do # the flood is on before B starts measuring
    grep -q flooding "$TMP/$1.flood.log" 2>/dev/null && break
    sleep 0.1
  done
  measured "$1" --endpoint "$EP" --token reader-secret --mode recommend --recommend-qps "$QPS" \
    --duration "$DURATION" --seed 3
  wait "$f"
  log "$1 flood: $(cat "$TMP/$1.flood")"
}
for r in $(seq 1 "${ROUNDS:-2}"); do
  measured "b-alone-$r" --endpoint "$EP" --token reader-secret --mode recommend \
    --recommend-qps "$QPS" --duration "$DURATION" --seed 3
  flood_during "b-with-a-flood-quota-$r" flood-secret
  flood_during "b-with-c-flood-no-quota-$r" free-secret
done
finish quota
