#!/usr/bin/env bash
# The cost of TLS (docs/security.md): the same eddy-bench scenarios against two
# `eddy-node --dev` in one run, one plaintext and one with TLS (a CA and a certificate made
# with openssl in the temporary directory), one scenario at a time, alternating.
#   bench/tls.sh     4 scenarios of BENCH_DURATION (default 10s) each
# Scenarios: ingest at max rate; Recommend at 2,000 QPS (latency). Compare the plain-* and
# tls-* rows of the summary.
. "$(dirname "$0")/lib.sh"

T=$TMP/tls
mkdir -p "$T"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$T/ca.key" \
  -subj /CN=eddy-bench-ca -days 1 -out "$T/ca.crt" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$T/node.key" \
  -subj /CN=eddy-node -out "$T/node.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$T/node.ext"
openssl x509 -req -in "$T/node.csr" -CA "$T/ca.crt" -CAkey "$T/ca.key" -CAcreateserial -days 1 \
  -extfile "$T/node.ext" -out "$T/node.crt" 2>/dev/null

start plain "$BUILD/eddy-node" --dev --data-dir "$TMP/plain" --listen 127.0.0.1:0 \
  --metrics-listen "" --log-level warn
start tls "$BUILD/eddy-node" --dev --data-dir "$TMP/tls-node" --listen 127.0.0.1:0 \
  --metrics-listen "" --log-level warn --tls-cert "$T/node.crt" --tls-key "$T/node.key"
PLAIN=127.0.0.1:$(wait_printed plain listening)
TLS=127.0.0.1:$(wait_printed tls listening)
log "plaintext node on $PLAIN, TLS node on $TLS"

bench plain-ingest-max --endpoint "$PLAIN" --mode ingest --duration "$DURATION" --seed 1
bench tls-ingest-max --endpoint "$TLS" --tls-ca "$T/ca.crt" --mode ingest --duration "$DURATION" --seed 1
bench plain-recommend --endpoint "$PLAIN" --mode recommend --recommend-qps 2000 --preload 20000 \
  --duration "$DURATION" --seed 2
bench tls-recommend --endpoint "$TLS" --tls-ca "$T/ca.crt" --mode recommend --recommend-qps 2000 \
  --preload 20000 --duration "$DURATION" --seed 2

finish tls
