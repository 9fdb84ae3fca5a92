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
"""
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
    print(json.dumps({
        "batches_acked_before_kill": len(acks) - len(after), "batches_acked_after_kill": len(after),
        "errors": errors, "lease_ttl_s": a.lease_ttl,
        "kill_to_first_ack_s": round(first, 3) if first is not None else None,
        "after_lease_expiry_s": round(first - a.lease_ttl, 3) if first is not None else None,
    }))


if __name__ == "__main__":
    main()
