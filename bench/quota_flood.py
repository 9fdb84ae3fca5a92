#!/usr/bin/python3
"""The flooding tenant of bench/quota.sh: PROCS processes, each with its own channel and
WINDOW Ingest calls in flight, send batches of BATCH events as fast as the node answers,
without backing off on RESOURCE_EXHAUSTED (a misbehaving client).

The processes live for the whole benchmark and flood only between SIGUSR1 (on) and SIGUSR2
(off), so the scenarios with and without a flood run beside the same set of processes: an
idle flood costs nothing but its memory. It prints "ready" on stderr once every process
has its requests, "on" when a flood starts and, when one stops, once every process has
its calls answered, one JSON line on stdout: calls answered OK and RESOURCE_EXHAUSTED,
events taken (in calls answered OK: what a quota counts) and accepted (new events: the
requests are reused in a cycle, so later ones are duplicates), seconds. SIGTERM ends it.

The requests are serialized before the first flood (distinct events, reused in a cycle
once the flood has sent them all: repeats come back as duplicates) and sent as raw bytes,
so the flood spends little of the shared machine's CPU on the client side: what it costs
B's latency is, as far as possible, what it costs the node.

    /usr/bin/python3 bench/quota_flood.py ENDPOINT TOKEN [PROCS] [WINDOW] [BATCH]
"""
import json
import multiprocessing as mp
import os
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "integration"))
import grpc  # noqa: E402

import eddylib as L  # noqa: E402  (the stubs; no node is started)


BATCHES = 1000  # distinct requests per process


def flood(endpoint, token, window, batch, proc, on, quit_, out, ready):
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # the parent's signals, not ours
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
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
    ready.wait()
    n = 0
    while not quit_.is_set():
        if not on.wait(0.2):
            continue
        ok, refused, other, accepted = 0, 0, 0, 0
        pending = []
        while on.is_set() or pending:
            while on.is_set() and len(pending) < window:
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
        out.put((ok, refused, other, accepted))
    ch.close()


def main():
    endpoint, token = sys.argv[1], sys.argv[2]
    procs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    window = int(sys.argv[4]) if len(sys.argv) > 4 else 8
    batch = int(sys.argv[5]) if len(sys.argv) > 5 else 100
    L.pb()  # generate the stubs once, before the workers fork
    q = mp.Queue()
    on, quit_ = mp.Event(), mp.Event()
    ready = mp.Barrier(procs + 1)
    ps = [mp.Process(target=flood, args=(endpoint, token, window, batch, i, on, quit_, q, ready))
          for i in range(procs)]
    for p in ps:
        p.start()
    ready.wait()
    print("ready", file=sys.stderr, flush=True)
    # the handlers only record what was asked; the main loop acts on it
    asked = {"on": False, "quit": False}
    signal.signal(signal.SIGUSR1, lambda *_: asked.update(on=True))
    signal.signal(signal.SIGUSR2, lambda *_: asked.update(on=False))
    signal.signal(signal.SIGTERM, lambda *_: asked.update(quit=True, on=False))
    started = None
    while True:
        if asked["on"] and started is None:
            on.set()
            started = time.monotonic()
            print("on", file=sys.stderr, flush=True)
        elif not asked["on"] and started is not None:
            on.clear()
            totals = [0, 0, 0, 0]
            for _ in ps:
                for k, v in enumerate(q.get()):
                    totals[k] += v
            print(json.dumps({"calls_ok": totals[0], "calls_refused": totals[1],
                              "calls_failed": totals[2], "events_taken": totals[0] * batch,
                              "events_accepted": totals[3],
                              "seconds": round(time.monotonic() - started, 2)}), flush=True)
            started = None
        elif asked["quit"]:
            break
        else:
            time.sleep(0.05)  # the handlers are polled: an on or off takes effect within it
    quit_.set()
    for p in ps:
        p.join()


if __name__ == "__main__":
    main()
