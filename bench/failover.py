#!/usr/bin/python3
"""Failover time of a replicated cluster under writes: one batch of BATCH events in flight
at a time through the ingest endpoints (round robin), kill -9 of PID after KILL_AT seconds,
for DURATION seconds in all. Prints one JSON object: acknowledgements before and after the
kill, the longest stall of acknowledgements after the kill (the failover as a client sees
it: the kill to the first acknowledgement after it) and that time less the lease TTL (how
long after the lease expired the partitions acknowledged again). Every batch spans many
partitions, so it is acknowledged only once every partition it touches has a leader and
min-insync copies again.

  bench/failover.py --endpoints H:P[,H:P] --kill-pid PID --lease-ttl 2 [--kill-at 3]
                    [--duration 12] [--batch 100] [--users 5000]
                    [--logs DIR --victim ID]

With --logs (the directory of the cluster's logs, scripts/local-cluster.sh's DIR/logs) and
--victim (the killed node's id) it also prints where the time went, in seconds after the
kill, from the log lines' timestamps: the coordinator seeing the node's key deleted (lease
expiry), its promotions and the map written with them, the state nodes and ingest nodes
seeing that map, and per partition the dead node led the new leader's follower joining
its in-sync set (the partition takes writes again once min-insync copies are in sync).
"""
import glob
import re
import argparse
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "integration"))
import grpc  # noqa: E402

import eddylib as L  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoints", required=True)
    ap.add_argument("--kill-pid", type=int, required=True)
    ap.add_argument("--lease-ttl", type=float, required=True, help="seconds")
    ap.add_argument("--kill-at", type=float, default=3.0)
    ap.add_argument("--duration", type=float, default=12.0)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--logs", help="the cluster's log directory (NAME.log per process)")
    ap.add_argument("--victim", help="the killed node's id (with --logs)")
    a = ap.parse_args()
    stubs = [L.eddy_stub(grpc.insecure_channel(e)) for e in a.endpoints.split(",")]
    pb = L.pb()
    t0 = time.monotonic()
    ts0 = int(time.time() * 1000)
    acks, errors, n, killed_at = [], 0, 0, None
    while time.monotonic() - t0 < a.duration:
        if killed_at is None and time.monotonic() - t0 >= a.kill_at:
            os.kill(a.kill_pid, signal.SIGKILL)
            killed_at = time.monotonic()
            killed_wall = time.time()
        events = []
        for _ in range(a.batch):
            u = (n * 7919) % a.users
            events.append(pb.Event(event_id=f"fo-{ts0}-{n}", user_id=f"u-{u}",
                                   timestamp_ms=ts0 + n, event_type=pb.EVENT_TYPE_VIEW,
                                   product_id=f"p-{n % 97}", category="c", price=1.0))
            n += 1
        try:
            stubs[len(acks) % len(stubs)].Ingest(pb.IngestRequest(events=events), timeout=10)
            acks.append(time.monotonic())
        except grpc.RpcError:
            errors += 1
    after = [t for t in acks if killed_at is not None and t > killed_at]
    first = after[0] - killed_at if after else None
    out = {
        "batches_acked_before_kill": len(acks) - len(after), "batches_acked_after_kill": len(after),
        "errors": errors, "lease_ttl_s": a.lease_ttl,
        "kill_to_first_ack_s": round(first, 3) if first is not None else None,
        "after_lease_expiry_s": round(first - a.lease_ttl, 3) if first is not None else None,
    }
    if a.logs and a.victim and killed_at is not None:
        out["timeline_s"] = timeline(a.logs, a.victim, killed_wall)
    print(json.dumps(out))


TS = re.compile(r"^ts=(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{3})Z (.*)$")


def lines_after(path, t0):
    """(seconds after t0, text) of each log line of 'path' stamped after t0 (UTC)."""
    import calendar
    out = []
    with open(path, errors="replace") as f:
        for line in f:
            m = TS.match(line)
            if not m:
                continue
            y, mo, d, h, mi, sec, ms = (int(x) for x in m.groups()[:7])
            t = calendar.timegm((y, mo, d, h, mi, sec)) + ms / 1000.0
            if t >= t0:
                out.append((t - t0, m.group(8)))
    return out


def timeline(logs, victim, t0):
    """Where the failover's time went (see the module comment); None for what was not seen."""
    def first(entries, pattern):
        for t, text in entries:
            if re.search(pattern, text):
                return t
        return None

    coord = lines_after(os.path.join(logs, "coordinator.log"), t0)
    moved = {}
    for t, text in coord:
        m = re.search(r'msg="leader gone; partition reassigned" partition=(\d+) from=' +
                      re.escape(victim) + r" to=(\S+)", text)
        if m:
            moved.setdefault(int(m.group(1)), m.group(2))
    written = first(coord, r'msg="assignment written"')
    version = None
    for t, text in coord:
        m = re.search(r'msg="assignment written" version=(\d+)', text)
        if m:
            version = m.group(1)
            break
    seen = {}
    joins, fetches, reached, retried = [], [], [], []
    lacked, replay_ms = 0, 0
    for path in sorted(glob.glob(os.path.join(logs, "*.log"))):
        name = os.path.basename(path)[:-4]
        if name in ("coordinator", "etcd", victim) or not version:
            continue
        entries = lines_after(path, t0)
        seen[name] = first(entries, r'msg="assignment seen" version=' + version + r"\b")
        # every partition the kill left short of copies: a new follower's first fetch at
        # its leader, what it lacked, when it reached the log end and joined the set
        for t, text in entries:
            if 'msg="follower joined the in-sync set"' in text:
                joins.append(t)
            m = re.search(r'msg="new follower\'s first fetch" .* lacked=(\d+)', text)
            if m:
                fetches.append(t)
                lacked = max(lacked, int(m.group(1)))
            m = re.search(r'msg="follower reached its leader\'s log end" .* replay_ms=(\d+)', text)
            if m:
                reached.append(t)
                replay_ms = max(replay_ms, int(m.group(1)))
            if 'msg="batch acknowledged after retries"' in text:
                retried.append(t)
        if name in set(moved.values()):
            for p, to in moved.items():
                if to == name:
                    t = first(entries, rf'msg="follower joined the in-sync set" partition={p} ')
                    moved[p] = (to, t)
    insync = sorted(v[1] for v in moved.values() if isinstance(v, tuple) and v[1] is not None)

    def r3(x):
        return round(x, 3) if x is not None else None
    return {
        "node_key_deleted": r3(first(coord, r'msg="node deleted" id=' + re.escape(victim) + r"\b")),
        "promoted": r3(first(coord, r'msg="leader gone; partition reassigned"')),
        "map_written": r3(written),
        "map_seen_by": {k: r3(v) for k, v in sorted(seen.items())},
        "partitions_moved": len(moved),
        "insync_again_p50": r3(insync[len(insync) // 2]) if insync else None,
        "insync_again_max": r3(insync[-1]) if insync else None,
        "insync_again_missing": len(moved) - len(insync),
        "new_follower_first_fetch_max": r3(max(fetches)) if fetches else None,
        "new_follower_lacked_max": lacked,
        "new_follower_at_log_end_max": r3(max(reached)) if reached else None,
        "new_follower_replay_ms_max": replay_ms,
        "all_insync_again": len(joins),
        "all_insync_again_max": r3(max(joins)) if joins else None,
        "router_retry_acked_first": r3(min(retried)) if retried else None,
    }


if __name__ == "__main__":
    main()
