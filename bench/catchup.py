#!/usr/bin/python3
"""Follower catch-up rate on a running scripts/local-cluster.sh cluster (R = 2): SIGSTOP of
one state node (its lease must outlast the pause: run the cluster with a long
--lease-ttl), EVENTS events ingested for users of partitions it follows but does not lead
(their leaders keep acknowledging: min-insync 1), SIGCONT, then the leaders'
eddy_replica_lag_records sampled every 50 ms until it is back to its level before the
pause. Prints one JSON object: records and events the follower lacked, the time to catch
up, records/s, events/s and MB/s (the serialized events' bytes), and whether it caught up
from the log or copied a checkpoint (its log line "replica copy replaced by the leader's
checkpoint", when the log it needed was swept: --log-retention).

  bench/catchup.py --dir CLUSTER_DIR --victim state-3 [--events 50000] [--batch 500]
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "integration"))
import grpc  # noqa: E402

import eddylib as L  # noqa: E402


def env_of(d):
    out = {}
    with open(os.path.join(d, "env")) as f:
        for line in f:
            k, _, v = line.strip().partition("=")
            out[k] = v.strip('"')
    return out


def metrics_addr(d, node):
    with open(os.path.join(d, "logs", node + ".out")) as f:
        for line in f:
            if line.startswith("metrics on "):
                return "127.0.0.1:" + line.split()[2]
    raise SystemExit(f"catchup: {node} printed no metrics port")


def lag(addrs):
    total = 0.0
    for a in addrs:
        text = urllib.request.urlopen(f"http://{a}/metrics", timeout=5).read().decode()
        m = re.search(r"^eddy_replica_lag_records(?:\{[^}]*\})? (\S+)$", text, re.M)
        total += float(m.group(1)) if m else 0.0
    return total


def assignment(etcd, cluster):
    out = subprocess.run(["curl", "-fs", "-X", "POST", f"{etcd}/v3/kv/range", "-d",
                          json.dumps({"key": __import__("base64").b64encode(
                              f"/eddy/{cluster}/assignment".encode()).decode()})],
                         capture_output=True, text=True, check=True).stdout
    import base64
    return json.loads(base64.b64decode(json.loads(out)["kvs"][0]["value"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True, help="the scripts/local-cluster.sh directory")
    ap.add_argument("--victim", default="state-3")
    ap.add_argument("--cluster", default="local")
    ap.add_argument("--events", type=int, default=50000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--partitions", type=int, default=256)
    a = ap.parse_args()
    env = env_of(a.dir)
    m = assignment(env["EDDY_ETCD"], a.cluster)
    followed = [p for p, reps in enumerate(m["replicas"]) if a.victim in reps[1:]]
    leaders = sorted({m["owners"][p] for p in followed})
    addrs = [metrics_addr(a.dir, n) for n in leaders]
    users = [u for p in followed for u in L.users_in_partition(p, a.partitions, 4, "cu")]
    pb = L.pb()
    stub = L.eddy_stub(grpc.insecure_channel(env["EDDY_ENDPOINT"]))
    with open(os.path.join(a.dir, "pids", a.victim + ".pid")) as f:
        pid = int(f.read())
    base = lag(addrs)
    ts0 = int(time.time() * 1000)
    os.kill(pid, signal.SIGSTOP)
    try:
        nbytes, sent, t_ing = 0, 0, time.monotonic()
        while sent < a.events:
            evs = []
            for i in range(sent, min(sent + a.batch, a.events)):
                evs.append(pb.Event(event_id=f"cu-{ts0}-{i}", user_id=users[(i * 7919) % len(users)],
                                    timestamp_ms=ts0 + i, event_type=pb.EVENT_TYPE_VIEW,
                                    product_id=f"p-{i % 97}", category="c", price=1.0))
            nbytes += sum(e.ByteSize() for e in evs)
            for _ in range(20):
                try:
                    stub.Ingest(pb.IngestRequest(events=evs), timeout=30)
                    break
                except grpc.RpcError:
                    time.sleep(0.2)
            sent += len(evs)
        ingest_s = time.monotonic() - t_ing
        time.sleep(0.5)
        behind = lag(addrs) - base
    finally:
        os.kill(pid, signal.SIGCONT)
    t0 = time.monotonic()
    samples = []
    while time.monotonic() - t0 < 600:
        x = lag(addrs) - base
        samples.append((round(time.monotonic() - t0, 3), x))
        if x <= 0:
            break
        time.sleep(0.05)
    took = samples[-1][0]
    with open(os.path.join(a.dir, "logs", a.victim + ".log"), errors="replace") as f:
        copied = sum("replica copy replaced by the leader's checkpoint" in l for l in f)
    print(json.dumps({
        "victim": a.victim, "partitions_followed": len(followed), "events": sent,
        "event_bytes": nbytes, "ingest_s": round(ingest_s, 2),
        "lag_records_at_resume": behind, "catchup_s": took,
        "records_per_s": round(behind / took) if took else None,
        "events_per_s": round(sent / took) if took else None,
        "mb_per_s": round(nbytes / took / 1e6, 2) if took else None,
        "checkpoint_copies": copied,
        "lag_samples": samples[:: max(1, len(samples) // 20)],
    }))


if __name__ == "__main__":
    main()
