#!/usr/bin/env bash
# Ingest throughput of a cluster on this machine: a real etcd, one eddy-coordinator, 1
# ingest node and 2 state nodes on free loopback ports (as scripts/local-cluster.sh starts
# them), with the references measured in the same run. Removes everything at the end.
#   bench/cluster.sh       (BENCH_DURATION per scenario, default 10s)
. "$(dirname "$0")/lib.sh"
ETCD=${ETCD:-$(command -v etcd || echo /usr/bin/etcd)}
[ -x "$ETCD" ] || { log "etcd not found (Debian: etcd-server)"; exit 1; }

references

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
COMMON=(--etcd "$ETCD_URL" --cluster bench --partitions 256 --lease-ttl 5s)
start coordinator "$BUILD/eddy-coordinator" "${COMMON[@]}" --id coordinator-1 --listen 127.0.0.1:0
COORD=127.0.0.1:$(wait_printed coordinator listening)
for n in state-1 state-2; do
  start "$n" "$BUILD/eddy-node" --role state "${COMMON[@]}" --node-id "$n" --data-dir "$TMP/$n" \
    --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --log-level warn
done
start ingest-1 "$BUILD/eddy-node" --role ingest "${COMMON[@]}" --node-id ingest-1 \
  --data-dir "$TMP/ingest-1" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --log-level warn
EP=127.0.0.1:$(wait_printed ingest-1 listening)
# ready: 3 nodes registered, every partition owned by one of the 2 state nodes, no move
# in progress
ready=0
for i in $(seq 1 300); do
  js=$("$BUILD/eddy" --coordinator "$COORD" -o json --timeout 2s status 2>/dev/null || true)
  if [ "$(grep -c '"grpc_addr"' <<<"$js" || true)" -eq 3 ] &&
     [ "$(grep -cE '"owner":[[:space:]]*""' <<<"$js" || true)" -eq 0 ] &&
     [ "$(grep -oE '"owner":[[:space:]]*"[^"]+"' <<<"$js" | sort -u | wc -l)" -eq 2 ] &&
     grep -qE '"moves":[[:space:]]*\[\]' <<<"$js"; then
    ready=1; break
  fi
  sleep 0.2
done
[ "$ready" = 1 ] || { log "the cluster did not become ready (logs in $TMP)"; exit 1; }
log "cluster ready: ingest $EP, coordinator $COORD"

bench cluster-ingest-max --endpoint "$EP" --mode ingest --duration "$DURATION" --seed 5

finish cluster
