#!/usr/bin/python3
"""The flooding tenant of bench/quota.sh: PROCS processes, each with its own channel and
WINDOW Ingest calls in flight, send batches of BATCH events as fast as the node answers,
without backing off on RESOURCE_EXHAUSTED (a misbehaving client), for SECONDS seconds.
Prints one JSON line: calls answered OK and RESOURCE_EXHAUSTED, events accepted; and
"flooding" on stderr once the flood starts.

The requests are serialized before the clock starts (distinct events, reused in a cycle
once the flood has sent them all: repeats come back as duplicates) and sent as raw bytes,
so the flood spends little of the shared machine's CPU on the client side: what it costs
B's latency is, as far as possible, what it costs the node.

    /usr/bin/python3 bench/quota_flood.py ENDPOINT TOKEN SECONDS [PROCS] [WINDOW] [BATCH]
"""
import json
import multiprocessing as mp
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "integration"))
import grpc  # noqa: E402

import eddylib as L  # noqa: E402  (the stubs; no node is started)


BATCHES = 1000  # distinct requests per process


def flood(endpoint, token, seconds, window, batch, proc, out, ready):
    m = L.pb()
    t0 = L.now_ms() - 60_000
    reqs = [m.IngestRequest(events=[
        m.Event(event_id=f"fl-{proc}-{n}-{i}", user_id=f"flood-{(n * batch + i) % 5000}",
                timestamp_ms=t0 + i, event_type=m.EVENT_TYPE_VIEW, product_id=f"fp-{i % 50}",
                category="books") for i in range(batch)]).SerializeToString()
        for n in range(BATCHES)]
    ch = grpc.insecure_channel(endpoint)
    ingest = ch.unary_unary("/eddy.v1.Eddy/Ingest", request_serializer=None,
                            response_deserializer=m.IngestResponse.FromString)
    md = [("authorization", f"Bearer {token}")]
    ready.wait()  # every process has its requests: start together
    n, ok, refused, other, accepted = 0, 0, 0, 0, 0
    pending = []
    end = time.monotonic() + seconds
    while time.monotonic() < end or pending:
        while time.monotonic() < end and len(pending) < window:
            pending.append(ingest.future(reqs[n % BATCHES], timeout=10, metadata=md))
            n += 1
        f = pending.pop(0)
        try:
            accepted += f.result().accepted
            ok += 1
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                refused += 1
            else:
                other += 1
    ch.close()
    out.put((ok, refused, other, accepted))


def main():
    endpoint, token, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    procs = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    window = int(sys.argv[5]) if len(sys.argv) > 5 else 8
    batch = int(sys.argv[6]) if len(sys.argv) > 6 else 100
    L.pb()  # generate the stubs once, before the workers fork
    q = mp.Queue()
    ready = mp.Barrier(procs + 1)
    ps = [mp.Process(target=flood, args=(endpoint, token, seconds, window, batch, i, q, ready))
          for i in range(procs)]
    for p in ps:
        p.start()
    ready.wait()
    print("flooding", file=sys.stderr, flush=True)  # bench/quota.sh waits for this line
    totals = [0, 0, 0, 0]
    for _ in ps:
        for k, v in enumerate(q.get()):
            totals[k] += v
    for p in ps:
        p.join()
    print(json.dumps({"calls_ok": totals[0], "calls_refused": totals[1], "calls_failed": totals[2],
                      "events_accepted": totals[3], "seconds": seconds}))


if __name__ == "__main__":
    main()
