#!/usr/bin/env bash
# Follower catch-up rate (issue 13's Numbers): one scripts/local-cluster.sh cluster (etcd, a
# coordinator, 3 state and 2 ingest nodes, 256 partitions, R = 2, min-insync 1 so that
# leaders keep acknowledging while a follower is paused, a 60 s lease so that the pause
# does not end its session), then bench/catchup.py: SIGSTOP of state-3, BENCH_EVENTS
# events (default 50000) for partitions it follows, SIGCONT, the leaders' lag metric until
# it caught up. Twice: from the leaders' logs, then on a fresh cluster whose logs are swept
# (--log-retention = --dedup-window = 1s of event time, checkpoints every 2 s) so that the
# follower must copy checkpoints (ReplicaSnapshot) before it tails. Removes everything.
#   bench/catchup.sh
. "$(dirname "$0")/lib.sh"
EVENTS=${BENCH_EVENTS:-50000}
export LC_REPLICATION_FACTOR=2 LC_MIN_INSYNC=1 LC_LEASE_TTL=60s
# the coordinator's metrics on a free port (the default 9464 may be taken on a shared machine)
export EDDY_METRICS_LISTEN=127.0.0.1:0
for mode in log checkpoint; do
  if [ "$mode" = checkpoint ]; then
    export EDDY_LOG_RETENTION=1s EDDY_DEDUP_WINDOW=1s EDDY_SWEEP_INTERVAL=1s \
      EDDY_CHECKPOINT_INTERVAL=2s
  fi
  log "catch-up from the $mode: $EVENTS events while state-3 is stopped"
  local_cluster_up
  $PY "$REPO/bench/catchup.py" --dir "$CL" --victim state-3 --events "$EVENTS" \
    >"$TMP/catchup-$mode.json"
  echo "catchup-$mode: $(cat "$TMP/catchup-$mode.json")" | tee -a "$TMP/catchup.txt" >&2
  lc down --purge
done
cat "$TMP/catchup.txt"
