#!/usr/bin/python3
"""The seed article's stream processor, as the article writes it, for the reference row of
docs/BENCHMARKS.md: a consumer loop that takes one event at a time, decodes its JSON and
updates the user's profile and the counters in Redis with one command per update (no
pipelining, no batching), using python3-redis (Debian's package).

Kafka is replaced by reading the same JSON lines from a file or a pipe (no broker exists
on this machine): `eddy-bench`-style events come from `scripts/sample_events.py` or any
JSON-lines file in the seed's UserEvent shape.

  bench/seed_pipeline.py --redis-port 6379 --events events.jsonl [--limit N] [-o json]

Prints the events processed, the wall time and events/s (and per-event latency
percentiles: time from reading the line to its last Redis update). With --start-redis it
starts its own redis-server (persistence off, as the article's cache) on a free port in a
temporary directory and stops it at the end.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import redis


def process(r, e):
    """The article's per-event update: profile hash, affinities, recent lists, counters."""
    user = e["userId"]
    etype = e["eventType"]
    product = e.get("productId") or ""
    category = e.get("category") or ""
    brand = e.get("brand") or ""
    ts = int(e["timestamp"])
    key = f"user:{user}"
    r.hincrby(key, "event_count", 1)
    r.hset(key, "last_update", ts)
    r.hincrby(f"{key}:types", etype, 1)
    if category:
        r.zincrby(f"{key}:categories", 1.0, category)
    if brand:
        r.zincrby(f"{key}:brands", 1.0, brand)
    price = e.get("price")
    if price:
        r.hset(key, "last_price", price)
    if etype in ("view", "click") and product:
        r.lpush(f"{key}:recent_views", product)
        r.ltrim(f"{key}:recent_views", 0, 19)
    elif etype == "add_to_cart" and product:
        r.sadd(f"{key}:cart", product)
    elif etype == "remove_from_cart" and product:
        r.srem(f"{key}:cart", product)
    elif etype == "purchase" and product:
        r.srem(f"{key}:cart", product)
        r.lpush(f"{key}:purchases", product)
        r.ltrim(f"{key}:purchases", 0, 19)
    elif etype == "search":
        r.lpush(f"{key}:searches", e.get("searchQuery") or "")
        r.ltrim(f"{key}:searches", 0, 19)
    if product:
        r.zincrby("popular:all", 1.0, product)
        if category:
            r.zincrby(f"popular:{category}", 1.0, product)
    window = ts // 60000 * 60000
    r.hincrby(f"counts:{window}", etype, 1)
    r.expire(key, 30 * 86400)


def start_redis(tmp):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--dir", tmp, "--save", "", "--appendonly", "no",
                             "--daemonize", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            r.ping()
            return proc, port
        except redis.exceptions.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", default="-", help="JSON-lines file, '-' for stdin")
    ap.add_argument("--redis-port", type=int, default=6379)
    ap.add_argument("--start-redis", action="store_true", help="start a private redis-server")
    ap.add_argument("--limit", type=int, default=0, help="stop after N events (0 = all)")
    ap.add_argument("--duration", type=float, default=0, help="stop after S seconds (0 = no limit)")
    ap.add_argument("-o", "--output", default="table", choices=("table", "json"))
    a = ap.parse_args()

    proc = tmp = None
    port = a.redis_port
    try:
        if a.start_redis:
            if not shutil.which("redis-server"):
                print("seed_pipeline: redis-server not installed (Debian: redis-server)",
                      file=sys.stderr)
                return 3
            tmp = tempfile.mkdtemp(prefix="eddy-seed-redis-")
            proc, port = start_redis(tmp)
        r = redis.Redis(host="127.0.0.1", port=port)
        src = sys.stdin if a.events == "-" else open(a.events)
        lat = []
        n = 0
        start = time.perf_counter()
        for line in src:
            t0 = time.perf_counter()
            line = line.strip()
            if not line:
                continue
            process(r, json.loads(line))
            n += 1
            t1 = time.perf_counter()
            lat.append(t1 - t0)
            if a.limit and n >= a.limit or a.duration and t1 - start >= a.duration:
                break
        dur = time.perf_counter() - start
        lat.sort()

        def pct(p):
            if not lat:
                return 0.0
            i = max(0, min(len(lat) - 1, int(-(-p * len(lat) // 1)) - 1))
            return lat[i] * 1000

        res = {"scenario": "seed-pipeline", "events": n, "duration_s": dur,
               "throughput_eps": n / dur if dur > 0 else 0, "errors": 0,
               "latency_ms": {"count": n, "p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99),
                              "p999": pct(0.999), "max": lat[-1] * 1000 if lat else 0}}
        if a.output == "json":
            print(json.dumps(res))
        else:
            print(f"seed pipeline (Python + Redis, one event at a time): {n} events in "
                  f"{dur:.2f} s = {res['throughput_eps']:.0f} events/s; per event p50 "
                  f"{pct(0.5):.3f} ms, p99 {pct(0.99):.3f} ms")
        return 0
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
