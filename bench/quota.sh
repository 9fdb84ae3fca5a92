#!/usr/bin/env bash
# Per-tenant quotas (docs/security.md): does one tenant flooding Ingest raise another
# tenant's Recommend p99? One `eddy-node --dev --token-file` and three tenants: B reads
# (eddy-bench --mode recommend at BENCH_QPS, default 500, with its token), A floods Ingest
# under a quota of QUOTA_EPS events/s (default 2000), C floods the same way with no quota.
# The floods are bench/quota_flood.py (FLOOD_PROCS processes each, default 3, 8 calls in
# flight each, batches of 100 events, no backoff on RESOURCE_EXHAUSTED; requests serialized
# in advance, so they cost the shared machine little client CPU), started once and switched
# on and off by signal, so every phase runs beside the same processes.
# A round is four phases of BENCH_DURATION each (default 6s): B alone, B while A floods,
# B alone, B while C floods; ROUNDS rounds (default 5) interleave them, so that a change
# in the shared machine's load spreads over every scenario instead of landing on one.
# The summary gives, per scenario, the median of B's p50 and p99 over the rounds with
# their range, and each flood phase against the B-alone phase just before it (p99 ratio
# and difference, median and range).
#   bench/quota.sh     (about ROUNDS x 4 x BENCH_DURATION plus 20 s)
. "$(dirname "$0")/lib.sh"

[ -n "${BENCH_DURATION:-}" ] || DURATION=6s
QPS=${BENCH_QPS:-500}
QUOTA=${QUOTA_EPS:-2000}
PROCS=${FLOOD_PROCS:-3}
ROUNDS=${ROUNDS:-5}
case "${DURATION%s}" in *[!0-9]*) log "BENCH_DURATION must be whole seconds (6s)"; exit 2 ;; esac
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
# cpu_s: the node's user+system CPU seconds so far (what a phase cost the node itself,
# apart from the clients that share the machine)
cpu_s() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$NODE_PID/stat"; }
# flood_cpu_s: the same for the floods' processes (both parents and their workers): what
# the clients take from the cores the node shares with them
flood_cpu_s() {
  local p pids=()
  for p in "${FLOOD_PID[@]}"; do pids+=("$p" $(pgrep -P "$p" || true)); done
  for p in "${pids[@]}"; do cat "/proc/$p/stat" 2>/dev/null || true; done |
    awk -v t="$(getconf CLK_TCK)" '{ s += $14 + $15 } END { printf "%.2f", s / t }'
}
log "node on $EP; B at $QPS Recommend/s; A's quota $QUOTA events/s; $PROCS flood processes each"

bench preload --endpoint "$EP" --token reader-secret --mode recommend --recommend-qps 10 \
  --preload 20000 --duration 1s --seed 2 # B's users, before any measurement

# The two floods, idle until switched on. FLOOD_PID[a|c]; NAME.log gets "ready" and "on"
# lines, NAME.out one JSON line per flood phase.
declare -A FLOOD_PID
for f in a c; do
  secret=flood-secret
  [ "$f" = c ] && secret=free-secret
  start "flood-$f" "$PY" "$REPO/bench/quota_flood.py" "$EP" "$secret" "$PROCS"
  FLOOD_PID[$f]=${PIDS[-1]}
done
# wait_lines FILE PATTERN N: until FILE has N lines matching PATTERN (60 s at most)
wait_lines() {
  local i
  for i in $(seq 1 600); do
    [ "$(grep -c "$2" "$1" 2>/dev/null || true)" -ge "$3" ] && return 0
    sleep 0.1
  done
  log "no $3 x '$2' in $1"; tail -5 "$1" >&2
  exit 1
}
for f in a c; do wait_lines "$TMP/flood-$f.log" '^ready$' 1; done
declare -A FLOODS=([a]=0 [c]=0)

diff_s() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
# phase LABEL [a|c]: B for BENCH_DURATION, alone or while that flood runs (switched on
# before B starts, off once B is done); B's wall seconds, the node's and the floods' CPU
# seconds over them and the flood's counts go to TMP/phases.jsonl
phase() {
  local label=$1 f=${2:-} t0 t1 c0 c1 f0 f1 flood=null
  if [ -n "$f" ]; then
    FLOODS[$f]=$((FLOODS[$f] + 1))
    kill -USR1 "${FLOOD_PID[$f]}"
    wait_lines "$TMP/flood-$f.log" '^on$' "${FLOODS[$f]}" # flooding before B measures
  fi
  log "eddy-bench $label"
  t0=$(date +%s.%N) c0=$(cpu_s) f0=$(flood_cpu_s)
  "$BENCH" -o json --scenario "$label" --endpoint "$EP" --token reader-secret \
    --mode recommend --recommend-qps "$QPS" --duration "$DURATION" --seed 3 \
    >"$TMP/$label.json" || true
  c1=$(cpu_s) f1=$(flood_cpu_s) t1=$(date +%s.%N)
  if [ -n "$f" ]; then
    kill -USR2 "${FLOOD_PID[$f]}"
    wait_lines "$TMP/flood-$f.out" '^{' "${FLOODS[$f]}"
    flood=$(tail -1 "$TMP/flood-$f.out")
    log "$label flood: $flood"
  fi
  record "$label" <"$TMP/$label.json"
  printf '{"label": "%s", "seconds": %s, "node_cpu_s": %s, "flood_cpu_s": %s, "flood": %s, "loadavg": "%s"}\n' \
    "$label" "$(diff_s "$t0" "$t1")" "$(diff_s "$c0" "$c1")" "$(diff_s "$f0" "$f1")" "$flood" \
    "$(cut -d' ' -f1 /proc/loadavg)" >>"$TMP/phases.jsonl"
}
for r in $(seq 1 "$ROUNDS"); do
  phase "b-alone-$r-a"
  phase "b-flood-a-quota-$r" a
  phase "b-alone-$r-c"
  phase "b-flood-c-no-quota-$r" c
done
"$PY" "$REPO/bench/quota_summary.py" "$RESULTS" "$TMP/phases.jsonl" "$QPS" "$QUOTA" | tee "$TMP/quota-summary.md"
[ -z "${BENCH_OUT:-}" ] || { mkdir -p "$BENCH_OUT"; cp "$TMP/quota-summary.md" "$TMP/phases.jsonl" "$BENCH_OUT/"; }
finish quota
