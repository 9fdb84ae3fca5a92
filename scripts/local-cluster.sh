#!/usr/bin/env bash
# A whole Eddy cluster on this machine, on loopback: a real etcd (Debian's etcd-server), one
# eddy-coordinator, 3 state nodes and 2 ingest nodes, every port picked free.
# The state nodes share DIR/data/checkpoints, so a stopped node's partitions move with
# their state (docs/cluster.md).
#
#   scripts/local-cluster.sh up     [DIR]   build if needed, start, wait until ready
#   scripts/local-cluster.sh up --secure [DIR]   the same with TLS everywhere and tokens: a
#                                   CA and certificates made with openssl in DIR/tls, mTLS
#                                   between the nodes, etcd over TLS with a client certificate;
#                                   bearer tokens in DIR/auth (admin, ingest, read; the nodes'
#                                   --token-file holds their hashes); DIR/env carries EDDY_TLS_*
#                                   and the admin EDDY_TOKEN for the CLI (docs/security.md)
#   scripts/local-cluster.sh status [DIR]   which processes are alive, then `eddy status`
#   scripts/local-cluster.sh down   [DIR]   stop everything (by pid file); data and logs are kept
#   scripts/local-cluster.sh down --purge [DIR]   stop and remove DIR
#   scripts/local-cluster.sh add-state [DIR]      start one more state node (state-4, ...):
#                                                 partitions move to it live (eddy status)
#   scripts/local-cluster.sh stop NODE [DIR]      stop one node (SIGTERM), e.g. after
#                                                 `eddy drain NODE` left it no partition
#
# DIR (default ./eddy-cluster) holds everything: data/ (etcd and one LevelDB per state
# node), logs/, pids/, ports.env (the etcd ports, reused by the next `up` because etcd's
# data remembers its peer URL) and env (EDDY_ENDPOINT, EDDY_COORDINATOR for `source`).
# Settings (environment): EDDY_BUILD_DIR (default build/), ETCD (etcd binary),
# LC_PARTITIONS (default 256), LC_LEASE_TTL (default 5s), LC_CLUSTER (default local),
# LC_REPLICATION_FACTOR (copies of each partition, default 2), LC_MIN_INSYNC (copies
# an acknowledgement needs, default: 2 when the factor is 2 or more) and LC_BUILD (default
# 1; 0 runs the binaries already in EDDY_BUILD_DIR without scripts/setup.sh, as the tests do).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${EDDY_BUILD_DIR:-$REPO/build}
case "$BUILD" in /*) ;; *) BUILD="$REPO/$BUILD" ;; esac
PARTITIONS=${LC_PARTITIONS:-256}
LEASE_TTL=${LC_LEASE_TTL:-5s}
CLUSTER=${LC_CLUSTER:-local}
REPLICATION_FACTOR=${LC_REPLICATION_FACTOR:-2}
MIN_INSYNC=${LC_MIN_INSYNC:-0}
STATE_NODES=(state-1 state-2 state-3)
INGEST_NODES=(ingest-1 ingest-2)

usage() {
  sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

cmd=${1:-}
[ -n "$cmd" ] || usage
shift
purge=0
if [ "${1:-}" = --purge ]; then purge=1; shift; fi
secure=0
if [ "$cmd" = up ] && [ "${1:-}" = --secure ]; then secure=1; shift; fi
node_arg=
if [ "$cmd" = stop ]; then node_arg=${1:-}; [ -n "$node_arg" ] || usage; shift; fi
DIR=${1:-./eddy-cluster}
[ "$cmd" = up ] && mkdir -p "$DIR"
case "$DIR" in /*) ;; *) DIR="$PWD/${DIR#./}" ;; esac

log() { echo "local-cluster: $*" >&2; }
die() { log "$*"; exit 1; }

# A TCP port free on 127.0.0.1 right now (the kernel's pick for port 0).
free_port() {
  command -v python3 >/dev/null || die "python3 is needed to pick free ports"
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_alive() {
  local f="$DIR/pids/$1.pid"
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

# The port a process printed as "<what> on PORT" on its stdout (DIR/logs/NAME.out).
printed_port() { sed -n "s/^$2 on \([0-9][0-9]*\)\$/\1/p" "$DIR/logs/$1.out" 2>/dev/null | head -1; }

# start NAME CMD...: in its own session, stdout to logs/NAME.out, stderr to logs/NAME.log.
start() {
  local name=$1
  shift
  setsid "$@" </dev/null >"$DIR/logs/$name.out" 2>>"$DIR/logs/$name.log" &
  echo $! >"$DIR/pids/$name.pid"
}

# Wait until NAME has printed "listening on PORT"; echo the port.
wait_listening() {
  local name=$1 deadline=$((SECONDS + ${2:-60})) port
  while :; do
    port=$(printed_port "$name" listening)
    if [ -n "$port" ]; then echo "$port"; return 0; fi
    pid_alive "$name" || { tail -20 "$DIR/logs/$name.log" >&2; die "$name exited (log: $DIR/logs/$name.log)"; }
    ((SECONDS < deadline)) || die "$name did not start within ${2:-60}s (log: $DIR/logs/$name.log)"
    sleep 0.1
  done
}

binaries() {
  EDDY_NODE="$BUILD/eddy-node" EDDY_COORD="$BUILD/eddy-coordinator" EDDY_CLI="$BUILD/eddy"
  if [ "${1:-}" = build ] && [ "${LC_BUILD:-1}" != 0 ]; then
    # always: an incremental build is quick, and a stale build/ would run old binaries
    log "building into $BUILD (scripts/setup.sh)"
    (cd "$REPO" && EDDY_BUILD_DIR="$BUILD" scripts/setup.sh) >&2
  fi
  ETCD=${ETCD:-$(command -v etcd || echo /usr/bin/etcd)}
  [ -x "$ETCD" ] || die "etcd not found: install Debian's etcd-server (scripts/setup.sh does)"
}

# A cluster made with up --secure has DIR/tls and DIR/auth: every command of this script
# then uses them, the CLI with the admin token (through EDDY_TOKEN: a --token would show
# in ps).
is_secure() { [ -f "$DIR/tls/ca.crt" ]; }
cli_tls() { is_secure && printf '%s\n' --tls-ca "$DIR/tls/ca.crt" --tls-cert "$DIR/tls/client.crt" --tls-key "$DIR/tls/client.key"; true; }
cli() {
  local t token=${EDDY_TOKEN:-}
  mapfile -t t < <(cli_tls)
  [ -f "$DIR/auth/admin.token" ] && token=$(cat "$DIR/auth/admin.token")
  EDDY_TOKEN=$token "$BUILD/eddy" --coordinator "$COORD_ADDR" "${t[@]}" "$@"
}

# make_cert NAME SUBJECT: DIR/tls/NAME.{crt,key} signed by DIR/tls/ca, for 127.0.0.1 and
# localhost (EC P-256, 30 days).
make_cert() {
  local t="$DIR/tls" n=$1
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$t/$n.key" \
    -subj "$2" -out "$t/$n.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$t/$n.ext"
  openssl x509 -req -in "$t/$n.csr" -CA "$t/ca.crt" -CAkey "$t/ca.key" -CAcreateserial -days 30 \
    -extfile "$t/$n.ext" -out "$t/$n.crt" 2>/dev/null
  rm -f "$t/$n.csr" "$t/$n.ext"
}
# The cluster CA, the cluster certificate (nodes and coordinator), a client certificate
# (the CLI), etcd's server certificate and Eddy's etcd client certificate (no CommonName:
# etcd's gateway refuses one when authentication is on). Kept across restarts.
make_pki() {
  is_secure && return 0
  command -v openssl >/dev/null || die "openssl is needed for --secure"
  mkdir -p "$DIR/tls"
  chmod 700 "$DIR/tls"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$DIR/tls/ca.key" -subj "/CN=eddy-local-cluster-ca" -days 30 -out "$DIR/tls/ca.crt" 2>/dev/null
  make_cert cluster /CN=eddy-cluster
  make_cert client /CN=eddy-cli
  make_cert etcd-server /CN=etcd
  make_cert etcd-client /O=eddy
  log "certificates in $DIR/tls (CA: $DIR/tls/ca.crt)"
}

# Three bearer tokens made with `eddy token new`, each secret in DIR/auth/NAME.token (mode
# 0600) and only their SHA-256 in DIR/auth/tokens, the --token-file of every node and the
# coordinator: admin (roles admin, ingest, read: what the CLI uses for everything), ingest
# and read (what applications get). Kept across restarts.
make_tokens() {
  [ -f "$DIR/auth/tokens" ] && return 0
  local a="$DIR/auth" name tenant roles out
  mkdir -p "$a"
  chmod 700 "$a"
  : >"$a/tokens.tmp"
  for name in admin ingest read; do
    case $name in
      admin) tenant=local-admin roles=admin,ingest,read ;;
      ingest) tenant=local-app roles=ingest ;;
      read) tenant=local-app roles=read ;;
    esac
    out=$("$BUILD/eddy" token new --tenant "$tenant" --roles "$roles") ||
      die "eddy token new failed"
    (umask 077 && sed -n 's/^token: //p' <<<"$out" >"$a/$name.token")
    { echo "# $name (secret in $a/$name.token)"; sed -n 's/^line: //p' <<<"$out"; } >>"$a/tokens.tmp"
  done
  mv "$a/tokens.tmp" "$a/tokens"
  log "tokens in $a (admin.token, ingest.token, read.token; hashes in $a/tokens)"
}

# Ready: every node registered, every partition owned by a registered state node, and no
# partition move in progress.
cluster_ready() {
  local js
  js=$(cli -o json --timeout 2s status 2>/dev/null) || return 1
  local nodes unassigned owners
  nodes=$(grep -c '"grpc_addr"' <<<"$js" || true)
  unassigned=$(grep -cE '"owner":[[:space:]]*""' <<<"$js" || true)
  owners=$(grep -oE '"owner":[[:space:]]*"[^"]+"' <<<"$js" | sort -u | wc -l)
  [ "$nodes" -eq $((${#STATE_NODES[@]} + ${#INGEST_NODES[@]})) ] && [ "$unassigned" -eq 0 ] &&
    [ "$owners" -eq ${#STATE_NODES[@]} ] && grep -qE '"moves":[[:space:]]*\[\]' <<<"$js"
}

# The flags every node and the coordinator share (needs ETCD_URL).
common_flags() {
  COMMON=(--etcd "$ETCD_URL" --cluster "$CLUSTER" --partitions "$PARTITIONS" --lease-ttl "$LEASE_TTL")
  if is_secure; then
    local t="$DIR/tls"
    COMMON+=(--tls-cert "$t/cluster.crt" --tls-key "$t/cluster.key" --tls-ca "$t/ca.crt"
             --etcd-ca "$t/ca.crt" --etcd-cert "$t/etcd-client.crt" --etcd-key "$t/etcd-client.key")
    [ -f "$DIR/auth/tokens" ] && COMMON+=(--token-file "$DIR/auth/tokens")
  fi
}

start_state() {
  start "$1" "$EDDY_NODE" --role state "${COMMON[@]}" --node-id "$1" \
    --data-dir "$DIR/data/$1" --checkpoint-dir "$DIR/data/checkpoints" \
    --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0
}

add_state() {
  [ -f "$DIR/env" ] || die "no cluster in $DIR: '$0 up $DIR' first"
  binaries
  ETCD_URL=$(sed -n 's/^EDDY_ETCD=//p' "$DIR/env")
  COORD_ADDR=$(sed -n 's/^EDDY_COORDINATOR=//p' "$DIR/env")
  common_flags
  local i=1
  while [ -e "$DIR/pids/state-$i.pid" ]; do i=$((i + 1)); done
  start_state "state-$i"
  log "state-$i on 127.0.0.1:$(wait_listening "state-$i")"
  log "partitions move to it live: watch '$BUILD/eddy --coordinator $COORD_ADDR status'"
}

up() {
  binaries build
  mkdir -p "$DIR/data" "$DIR/logs" "$DIR/pids"
  if ((secure)); then
    make_pki
    make_tokens
  elif is_secure; then
    die "$DIR was made with 'up --secure': use it again, or '$0 down --purge $DIR' first"
  fi
  for n in etcd coordinator "${STATE_NODES[@]}" "${INGEST_NODES[@]}"; do
    pid_alive "$n" && die "$n is already running (pid $(cat "$DIR/pids/$n.pid")): '$0 down $DIR' first"
  done

  # etcd keeps its ports across restarts of the same data dir
  if [ -f "$DIR/ports.env" ]; then
    # shellcheck disable=SC1091
    . "$DIR/ports.env"
    for p in "$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT"; do
      port_busy "$p" && die "port $p of this cluster's etcd is taken by another process"
    done
  else
    ETCD_CLIENT_PORT=$(free_port)
    ETCD_PEER_PORT=$(free_port)
    while [ "$ETCD_PEER_PORT" = "$ETCD_CLIENT_PORT" ]; do ETCD_PEER_PORT=$(free_port); done
    printf 'ETCD_CLIENT_PORT=%s\nETCD_PEER_PORT=%s\n' "$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT" >"$DIR/ports.env"
  fi
  local scheme=http etcd_tls=() curl_tls=()
  if is_secure; then
    scheme=https
    etcd_tls=(--cert-file "$DIR/tls/etcd-server.crt" --key-file "$DIR/tls/etcd-server.key"
              --trusted-ca-file "$DIR/tls/ca.crt" --client-cert-auth)
    curl_tls=(--cacert "$DIR/tls/ca.crt" --cert "$DIR/tls/etcd-client.crt" --key "$DIR/tls/etcd-client.key")
  fi
  ETCD_URL="$scheme://127.0.0.1:$ETCD_CLIENT_PORT"
  local peer="http://127.0.0.1:$ETCD_PEER_PORT"
  log "etcd on $ETCD_URL"
  start etcd "$ETCD" --name n1 --data-dir "$DIR/data/etcd" \
    --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
    --initial-cluster "n1=$peer" --initial-cluster-state new --logger zap --log-level warn \
    "${etcd_tls[@]}"
  local deadline=$((SECONDS + 20))
  until curl -fs --max-time 1 "${curl_tls[@]}" "$ETCD_URL/health" 2>/dev/null | grep -q '"health":"true"'; do
    pid_alive etcd || { tail -20 "$DIR/logs/etcd.log" >&2; die "etcd exited"; }
    ((SECONDS < deadline)) || die "etcd not healthy after 20s (log: $DIR/logs/etcd.log)"
    sleep 0.1
  done

  common_flags
  local replication=(--replication-factor "$REPLICATION_FACTOR")
  [ "$MIN_INSYNC" -gt 0 ] && replication+=(--min-insync-replicas "$MIN_INSYNC")
  start coordinator "$EDDY_COORD" "${COMMON[@]}" "${replication[@]}" --id coordinator-1 \
    --listen 127.0.0.1:0
  COORD_ADDR="127.0.0.1:$(wait_listening coordinator 20)"
  log "coordinator on $COORD_ADDR"

  for n in "${STATE_NODES[@]}"; do start_state "$n"; done
  for n in "${INGEST_NODES[@]}"; do
    start "$n" "$EDDY_NODE" --role ingest "${COMMON[@]}" --node-id "$n" \
      --data-dir "$DIR/data/$n" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0
  done
  local endpoints=()
  for n in "${STATE_NODES[@]}"; do log "$n on 127.0.0.1:$(wait_listening "$n")"; done
  for n in "${INGEST_NODES[@]}"; do
    endpoints+=("127.0.0.1:$(wait_listening "$n")")
    log "$n on ${endpoints[-1]}"
  done

  deadline=$((SECONDS + 60))
  until cluster_ready; do
    ((SECONDS < deadline)) || { cli status >&2 || true; die "the cluster did not become ready within 60s (logs in $DIR/logs)"; }
    sleep 0.2
  done
  printf 'EDDY_ENDPOINT=%s\nEDDY_COORDINATOR=%s\nEDDY_INGEST_ENDPOINTS="%s"\nEDDY_ETCD=%s\n' \
    "${endpoints[0]}" "$COORD_ADDR" "${endpoints[*]}" "$ETCD_URL" >"$DIR/env"
  local tlsflags="" apps=""
  if is_secure; then
    chmod 600 "$DIR/env" # it carries the admin token
    printf 'EDDY_TLS_CA=%s\nEDDY_TLS_CERT=%s\nEDDY_TLS_KEY=%s\nEDDY_TOKEN=%s\n' "$DIR/tls/ca.crt" \
      "$DIR/tls/client.crt" "$DIR/tls/client.key" "$(cat "$DIR/auth/admin.token")" >>"$DIR/env"
    tlsflags=" $(cli_tls | tr '\n' ' ')--token \"\$(cat $DIR/auth/admin.token)\""
    apps="
TLS and tokens: the CA is $DIR/tls/ca.crt; the commands below use the admin token
(roles admin, ingest, read). Give applications $DIR/auth/ingest.token (Ingest) or
$DIR/auth/read.token (Recommend, GetUserProfile, TopProducts, EventCounts), sent as
'authorization: Bearer <token>'; a call without one is UNAUTHENTICATED.
"
  fi

  local rel=${BUILD#"$PWD"/}
  cat <<EOF
Eddy cluster "$CLUSTER" is up ($PARTITIONS partitions; everything under $DIR).

  ingest endpoints: ${endpoints[0]}  ${endpoints[1]}
  coordinator:      $COORD_ADDR
  etcd:             $ETCD_URL
$apps
Try:
  python3 scripts/sample_events.py > /tmp/events.jsonl    # or any JSON-lines UserEvents
  $rel/eddy --endpoint ${endpoints[0]}$tlsflags ingest /tmp/events.jsonl
  $rel/eddy --endpoint ${endpoints[1]}$tlsflags top
  $rel/eddy --endpoint ${endpoints[0]}$tlsflags recommend USER
  $rel/eddy --coordinator $COORD_ADDR$tlsflags status
  set -a; . $DIR/env; set +a      # then plain: $rel/eddy status, $rel/eddy top
  $0 add-state $DIR                # scale out: partitions move to state-4 live
  $rel/eddy --coordinator $COORD_ADDR$tlsflags drain state-2   # scale in, then: $0 stop state-2 $DIR
  $0 status $DIR
  $0 down $DIR                     # add --purge to delete the data too
EOF
}

status() {
  [ -d "$DIR/pids" ] || die "no cluster in $DIR"
  local n
  for f in "$DIR"/pids/*.pid; do
    [ -e "$f" ] || { echo "no processes recorded in $DIR/pids"; break; }
    n=$(basename "$f" .pid)
    if pid_alive "$n"; then
      printf '%-12s running (pid %s)\n' "$n" "$(cat "$f")"
    else
      printf '%-12s NOT RUNNING (log: %s)\n' "$n" "$DIR/logs/$n.log"
    fi
  done
  [ -f "$DIR/env" ] && pid_alive coordinator || return 0
  COORD_ADDR=$(sed -n 's/^EDDY_COORDINATOR=//p' "$DIR/env")
  echo
  if [ -x "$BUILD/eddy" ]; then
    cli status || return 1
  fi
}

stop_one() {
  local n=$1 f="$DIR/pids/$1.pid" pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 20))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$n ignored SIGTERM for 20s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped $n"
  fi
  rm -f "$f"
}

down() {
  if [ -d "$DIR/pids" ]; then
    # ingest first (no new writes), then state nodes, the coordinator, etcd last
    for n in "${INGEST_NODES[@]}" "${STATE_NODES[@]}" coordinator; do stop_one "$n"; done
    for f in "$DIR"/pids/*.pid; do
      [ -e "$f" ] || continue
      n=$(basename "$f" .pid)
      [ "$n" = etcd ] || stop_one "$n"
    done
    stop_one etcd
  fi
  if ((purge)); then
    rm -rf "$DIR"
    log "removed $DIR"
  fi
}

case "$cmd" in
  up) up ;;
  down) down ;;
  status) status ;;
  add-state) add_state ;;
  stop) [ -f "$DIR/pids/$node_arg.pid" ] || die "no process $node_arg recorded in $DIR/pids"
        stop_one "$node_arg" ;;
  -h|--help|help) usage ;;
  *) usage ;;
esac
