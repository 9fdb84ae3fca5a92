#!/usr/bin/env bash
# The README's first command: install and build Eddy, start `eddy-node --dev` (every role
# in one process, no etcd) on 127.0.0.1:7070, send it a sample stream of shop events with
# the `eddy` CLI, and show what comes out: recommendations, a user profile, top products
# and per-window counts. The node keeps running until Ctrl-C (EDDY_QUICKSTART_EXIT=1 stops
# it after the tour).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

ADDR="${EDDY_ENDPOINT:-127.0.0.1:7070}"
DATA="${EDDY_DATA_DIR:-./eddy-data}"
export EDDY_ENDPOINT="$ADDR"
EDDY=build/eddy

build/eddy-node --dev --data-dir "$DATA" --listen "$ADDR" >/dev/null &
NODE=$!
trap 'kill -TERM $NODE 2>/dev/null; wait $NODE 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 100); do
  "$EDDY" health >/dev/null 2>&1 && break
  kill -0 $NODE 2>/dev/null || { echo "quickstart: eddy-node exited (is $ADDR in use?)" >&2; exit 1; }
  sleep 0.1
done
"$EDDY" health

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
scripts/sample_events.py --events 2000 > "$DATA.sample.jsonl"
step "$EDDY" ingest "$DATA.sample.jsonl"
step "$EDDY" recommend u-7 --limit 5
step "$EDDY" recommend u-7 --limit 5 --product p-3 --cart p-8
step "$EDDY" profile u-7
step "$EDDY" top --limit 5 --include-open
step "$EDDY" counts --include-open
rm -f "$DATA.sample.jsonl"

if [ "${EDDY_QUICKSTART_EXIT:-0}" = 1 ]; then
  exit 0
fi
echo
echo "Eddy is running on $ADDR (data in $DATA). In another terminal try:"
echo "  build/eddy recommend u-3        build/eddy --help"
echo "Its web console: http://${EDDY_METRICS_LISTEN:-127.0.0.1:9464}/ (the node, live charts, users, top products)"
echo "Press Ctrl-C to stop it."
wait $NODE
