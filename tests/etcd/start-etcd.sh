#!/bin/bash
# Start a throwaway single-member etcd on free loopback ports in a new temporary directory,
# wait (10 s at most) until /health says true, and print its client URL.
#   tests/etcd/start-etcd.sh            -> http://127.0.0.1:PORT
#   eval "$(tests/etcd/start-etcd.sh --env)"   -> sets ETCD_URL, ETCD_PID, ETCD_DIR
# Stop it with: kill "$ETCD_PID"; rm -rf "$ETCD_DIR"  (the pid is also in $ETCD_DIR/etcd.pid).
# Extra arguments are passed to etcd. Raft timings are fast (10 ms heartbeat, 50 ms election).
set -euo pipefail

env_out=0
if [[ ${1:-} == --env ]]; then env_out=1; shift; fi

command -v etcd >/dev/null || { echo "start-etcd: etcd not found in PATH" >&2; exit 1; }
read -r CP PP < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')

DIR=$(mktemp -d "${TMPDIR:-/tmp}/eddy-etcd-XXXXXX")
URL="http://127.0.0.1:$CP"
PEER="http://127.0.0.1:$PP"
setsid etcd --name n1 --data-dir "$DIR/data" \
  --listen-client-urls "$URL" --advertise-client-urls "$URL" \
  --listen-peer-urls "$PEER" --initial-advertise-peer-urls "$PEER" \
  --initial-cluster "n1=$PEER" --initial-cluster-state new \
  --logger zap --log-level error --heartbeat-interval 10 --election-timeout 50 "$@" \
  </dev/null >"$DIR/etcd.log" 2>&1 &
PID=$!
echo "$PID" >"$DIR/etcd.pid"

deadline=$((SECONDS + 10))
until curl -fs --max-time 1 "$URL/health" 2>/dev/null | grep -q '"health":"true"'; do
  if ! kill -0 "$PID" 2>/dev/null || ((SECONDS >= deadline)); then
    echo "start-etcd: etcd did not become healthy; log:" >&2
    cat "$DIR/etcd.log" >&2
    kill "$PID" 2>/dev/null || true
    rm -rf "$DIR"
    exit 1
  fi
  sleep 0.01
done

if ((env_out)); then
  printf 'ETCD_URL=%s\nETCD_PID=%s\nETCD_DIR=%s\n' "$URL" "$PID" "$DIR"
else
  echo "$URL"
fi
