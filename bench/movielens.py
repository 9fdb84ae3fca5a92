#!/usr/bin/python3
"""Recommendation-quality benchmark of Eddy on MovieLens latest-small (leave-last-out).

Protocol (the implicit-feedback protocol of NCF and most papers after it):
  * positives are ratings >= 4; every user with >= 2 positives is a test user;
  * the held-out item is the user's LAST positive by (timestamp, movieId);
  * every other rating is streamed to Eddy in global (timestamp, userId, movieId) order as
    one event (rating >= 4 -> PURCHASE, else VIEW; category = first genre), except the
    held-out rating and the test user's ratings ordered after it;
  * then Recommend(user) is called once per test user and the held-out item is ranked
    (a) against the whole catalogue ("full ranking", HR@10 / NDCG@10), and
    (b) against 99 sampled negatives the user never rated ("sampled").
Items Eddy does not return get score -inf and are ranked after the returned ones in a
seeded random order (Eddy only scores the candidates it generates). The same random
tie-break applies to the popularity baseline's equal counts.

Run with /usr/bin/python3 (Debian's python3-grpcio and python3-protobuf).
"""
import argparse
import csv
import json
import math
import os
import platform
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = "/work/shared/data/movielens-latest-small"
K_EVAL = 10
BATCH = 500
N_NEG = 99

# Flags every benchmark node gets: the data spans 1996-2018, so nothing may expire by
# event time (user models, windows, log, dedup ids) and old timestamps must be accepted.
BASE_FLAGS = ["--max-event-age", "0", "--state-ttl", "0", "--window-retention", "0",
              "--log-retention", "0", "--dedup-window", "0"]

# The benchmark configuration ("default" below): the node's defaults for every model
# parameter, with the diversity cap off and long lists so that any item can be ranked.
DEFAULT_CONFIG = {"diversity-cap": "0", "max-recommendations": "1000", "candidates": "1000"}

# --sweep: one parameter at a time away from DEFAULT_CONFIG (~100 s each). --max-neighbours
# 200 is left out: its ingest alone took more than 10 minutes. The
# half-life flags are not in the grid: eddy-node rejects every value of them (see
# docs/BENCHMARKS.md).
SWEEP = [
    ("stock node (cap 3, 50 candidates, 100 items)",
     {"diversity-cap": "3", "max-recommendations": "100", "candidates": "50"}),
    ("default", {}),
    ("cooccurrence-span 1d", {"cooccurrence-span": "1d"}),
    ("cooccurrence-items 64", {"cooccurrence-items": "64"}),
    ("weight-neighbours 4", {"weight-neighbours": "4"}),
    ("weight-popular 0 (neighbours only)", {"weight-popular": "0"}),
    ("category = all genres joined", {}, "combo"),
]


# ---- data ---------------------------------------------------------------------------------

def load(data_dir, quick):
    genres = {}
    with open(os.path.join(data_dir, "movies.csv"), newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            g = row["genres"]
            genres[int(row["movieId"])] = [] if g == "(no genres listed)" else g.split("|")
    ratings = []
    with open(os.path.join(data_dir, "ratings.csv"), newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            u = int(row["userId"])
            if quick and u > 100:
                continue
            ratings.append((int(row["timestamp"]), u, int(row["movieId"]), float(row["rating"])))
    return genres, ratings


def split(ratings):
    """Returns (train events sorted by time, {user: held-out movie}, {user: train movies},
    {user: all movies rated})."""
    by_user = defaultdict(list)
    for ts, u, m, r in ratings:
        by_user[u].append((ts, m, r))
    held = {}
    for u, rs in by_user.items():
        pos = sorted((ts, m) for ts, m, r in rs if r >= 4.0)
        if len(pos) >= 2:
            held[u] = pos[-1]
    train = []
    for ts, u, m, r in ratings:
        h = held.get(u)
        if h is not None and (ts, m) >= h:
            continue  # the held-out rating and everything of the user after it
        train.append((ts, u, m, r))
    train.sort()
    train_items = defaultdict(set)
    for ts, u, m, r in train:
        train_items[u].add(m)
    rated = {u: {m for _, m, _ in rs} for u, rs in by_user.items()}
    return train, {u: h[1] for u, h in held.items()}, train_items, rated


def category_of(genres, movie, mode):
    g = genres.get(movie, [])
    if mode == "combo":
        return "|".join(g)[:128]
    return g[0] if g else ""


# ---- node and client ----------------------------------------------------------------------

def gen_stubs(tmp):
    out = os.path.join(tmp, "py")
    os.makedirs(out)
    subprocess.run(["protoc", f"-I{REPO / 'proto'}", f"--python_out={out}",
                    "eddy/v1/eddy.proto"], check=True)
    sys.path.insert(0, out)
    from eddy.v1 import eddy_pb2  # noqa: E402
    return eddy_pb2


class Node:
    def __init__(self, binary, flags, tmp):
        self.dir = tempfile.mkdtemp(prefix="node-", dir=tmp)
        self.log = open(os.path.join(self.dir, "node.log"), "wb")
        self.cmd = [binary, "--dev", "--data-dir", os.path.join(self.dir, "data"),
                    "--listen", "127.0.0.1:0"] + flags
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=self.log)
        port = []

        def reader():
            for line in self.proc.stdout:
                s = line.decode(errors="replace").strip()
                if s.startswith("listening on ") and not port:
                    port.append(int(s.split()[-1]))
        t = threading.Thread(target=reader, daemon=True)
        t.start()
        deadline = time.time() + 30
        while not port:
            if self.proc.poll() is not None or time.time() > deadline:
                self.log.flush()
                tail = open(self.log.name, errors="replace").read()[-2000:]
                self.stop()
                raise RuntimeError(f"eddy-node did not start: {' '.join(self.cmd)}\n{tail}")
            time.sleep(0.02)
        self.endpoint = f"127.0.0.1:{port[0]}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return rc


class Client:
    def __init__(self, pb, endpoint):
        import grpc
        self.grpc = grpc
        self.pb = pb
        self.ch = grpc.insecure_channel(endpoint, options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20)])
        grpc.channel_ready_future(self.ch).result(timeout=30)
        svc = "/eddy.v1.Eddy/"
        self.ingest = self.ch.unary_unary(svc + "Ingest",
                                          request_serializer=pb.IngestRequest.SerializeToString,
                                          response_deserializer=pb.IngestResponse.FromString)
        self.recommend = self.ch.unary_unary(
            svc + "Recommend", request_serializer=pb.RecommendRequest.SerializeToString,
            response_deserializer=pb.RecommendResponse.FromString)

    def ingest_retry(self, req):
        delay = 0.05
        while True:
            try:
                return self.ingest(req, timeout=60)
            except self.grpc.RpcError as e:
                if e.code() in (self.grpc.StatusCode.RESOURCE_EXHAUSTED,
                                self.grpc.StatusCode.UNAVAILABLE):
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                raise

    def close(self):
        self.ch.close()


def stream(client, pb, train, genres, cat_mode):
    stats = {"events": len(train), "accepted": 0, "duplicates": 0, "rejected": 0, "late": 0,
             "rejections": []}
    t0 = time.perf_counter()
    for i in range(0, len(train), BATCH):
        req = pb.IngestRequest()
        for ts, u, m, r in train[i:i + BATCH]:
            e = req.events.add()
            e.event_id = f"r{u}-{m}"
            e.user_id = str(u)
            e.timestamp_ms = ts * 1000
            e.event_type = pb.EVENT_TYPE_PURCHASE if r >= 4.0 else pb.EVENT_TYPE_VIEW
            e.product_id = f"m{m}"
            e.category = category_of(genres, m, cat_mode)
        resp = client.ingest_retry(req)
        stats["accepted"] += resp.accepted
        stats["duplicates"] += resp.duplicates
        stats["late"] += resp.late
        stats["rejected"] += len(resp.rejected)
        for rj in resp.rejected[:3]:
            if len(stats["rejections"]) < 5:
                stats["rejections"].append(rj.reason)
    stats["ingest_s"] = time.perf_counter() - t0
    stats["events_per_s"] = len(train) / stats["ingest_s"] if stats["ingest_s"] > 0 else 0.0
    return stats


# ---- evaluation ---------------------------------------------------------------------------

def rank_listed(held, candidates, order, rng):
    """0-based rank of 'held' among 'candidates' (a set containing held) when the listed
    items ('order', best first) come first and the rest follow in random order."""
    n_listed = 0
    for x in order:
        if x in candidates:
            if x == held:
                return n_listed
            n_listed += 1
    return n_listed + rng.randrange(len(candidates) - n_listed)


def rank_scored(held, candidates, score, rng):
    """0-based rank of 'held' by score (desc), ties in random order."""
    s = score.get(held, 0)
    greater = sum(1 for x in candidates if score.get(x, 0) > s)
    equal = sum(1 for x in candidates if score.get(x, 0) == s)
    return greater + rng.randrange(equal)


def metrics(ranks):
    n = len(ranks)
    hr = sum(1 for r in ranks if r < K_EVAL) / n if n else 0.0
    ndcg = sum(1.0 / math.log2(r + 2) for r in ranks if r < K_EVAL) / n if n else 0.0
    return {"hr@10": hr, "ndcg@10": ndcg}


def pct(xs, p):
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, int(math.ceil(p / 100.0 * len(s))) - 1)]


def evaluate(client, pb, held, train_items, rated, catalogue, max_rec, seed):
    users = sorted(held)
    lists, lat, cold = {}, [], 0
    for u in users:
        t0 = time.perf_counter()
        resp = client.recommend(pb.RecommendRequest(user_id=str(u), max_recommendations=max_rec),
                                timeout=60)
        lat.append((time.perf_counter() - t0) * 1000.0)
        cold += resp.cold_start
        lists[u] = [int(it.product_id[1:]) for it in resp.items]
    cat_list = sorted(catalogue)
    res = {"users": len(users), "cold_start": cold,
           "latency_ms": {"p50": pct(lat, 50), "p99": pct(lat, 99), "mean": sum(lat) / len(lat)},
           "list_len_mean": sum(len(v) for v in lists.values()) / len(users)}
    full, served, sampled = [], [], []
    rng = random.Random(seed)
    for u in users:
        h = held[u]
        cands = catalogue - train_items[u]
        full.append(rank_listed(h, cands, lists[u], rng))
        served.append(lists[u].index(h) if h in lists[u][:K_EVAL] else K_EVAL)
        sampled.append(rank_listed(h, negatives(u, h, rated, cat_list, seed) | {h}, lists[u],
                                   rng))
    res["full"] = metrics(full)
    res["served"] = metrics(served)
    res["sampled"] = metrics(sampled)
    res["_lists"] = lists
    return res


def negatives(u, h, rated, cat_list, seed):
    """99 movies the user never rated (in any split), seeded per user: the same set for
    every method and every run."""
    rng = random.Random(f"{seed}-neg-{u}")
    seen, out = rated[u], set()
    while len(out) < N_NEG:
        m = cat_list[rng.randrange(len(cat_list))]
        if m not in seen and m != h:
            out.add(m)
    return out


def popularity(train, held, train_items, rated, catalogue, seed, positives_only):
    count = defaultdict(int)
    for ts, u, m, r in train:
        if not positives_only or r >= 4.0:
            count[m] += 1
    rng = random.Random(seed)
    cat_list = sorted(catalogue)
    full, sampled = [], []
    for u in sorted(held):
        h = held[u]
        full.append(rank_scored(h, catalogue - train_items[u], count, rng))
        sampled.append(rank_scored(h, negatives(u, h, rated, cat_list, seed) | {h}, count, rng))
    return {"full": metrics(full), "sampled": metrics(sampled)}


def run_eddy(args, pb, tmp, data, config, cat_mode):
    genres, train, held, train_items, rated, catalogue = data
    flags = list(BASE_FLAGS)
    cfg = dict(DEFAULT_CONFIG)
    cfg.update(config)
    for k, v in cfg.items():
        flags += [f"--{k}", v]
    t0 = time.perf_counter()
    node = None
    if args.endpoint:
        endpoint = args.endpoint
    else:
        node = Node(args.node, flags + args.node_arg, tmp)
        endpoint = node.endpoint
    client = Client(pb, endpoint)
    try:
        st = stream(client, pb, train, genres, cat_mode)
        # Recommend reads popularity lists cached for --stage2-staleness (1 s): wait it out
        # so every list reflects the whole training stream.
        time.sleep(1.5)
        max_rec = int(cfg["max-recommendations"])
        res = evaluate(client, pb, held, train_items, rated, catalogue, max_rec, args.seed)
    finally:
        client.close()
        rc = node.stop() if node else None
    res["ingest"] = st
    res["flags"] = flags + args.node_arg
    res["category"] = cat_mode
    res["node_exit"] = rc
    res["run_s"] = time.perf_counter() - t0
    return res


def machine():
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "kernel": platform.release()}


def fmt(r):
    return f"{r['hr@10']:.4f}  {r['ndcg@10']:.4f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DEFAULT_DATA, help="MovieLens latest-small directory")
    ap.add_argument("--node", default=os.environ.get("EDDY_NODE", str(REPO / "build/eddy-node")),
                    help="eddy-node binary (env EDDY_NODE; default build/eddy-node)")
    ap.add_argument("--endpoint", help="use this running node instead of starting one "
                    "(it must run with the benchmark flags and hold no other data)")
    ap.add_argument("--node-arg", action="append", default=[],
                    help="extra flag for the started node (repeatable, e.g. "
                    "--node-arg=--diversity-cap=3)")
    ap.add_argument("--category", choices=["first", "combo"], default="first",
                    help="event category: first genre (default) or all genres joined")
    ap.add_argument("--quick", action="store_true", help="users 1..100 only (CI smoke run)")
    ap.add_argument("--sweep", action="store_true", help="also run the parameter grid")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("-o", "--output", choices=["table", "json"], default="table")
    args = ap.parse_args()
    if args.sweep and args.endpoint:
        ap.error("--sweep starts one node per setting; it cannot use --endpoint")
    if not args.endpoint and not os.access(args.node, os.X_OK):
        ap.error(f"no eddy-node at {args.node} (build it, or pass --node / EDDY_NODE)")

    t_start = time.perf_counter()
    genres, ratings = load(args.data, args.quick)
    train, held, train_items, rated = split(ratings)
    catalogue = {m for _, _, m, _ in ratings}
    data = (genres, train, held, train_items, rated, catalogue)
    log = (lambda *a: print(*a, file=sys.stderr, flush=True))

    out = {"command": " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv),
           "machine": machine(), "data": args.data, "quick": args.quick, "seed": args.seed,
           "ratings": len(ratings), "catalogue": len(catalogue), "test_users": len(held),
           "events_streamed": len(train)}
    with tempfile.TemporaryDirectory(prefix="eddy-movielens-") as tmp:
        pb = gen_stubs(tmp)
        log(f"streaming {len(train)} events, {len(held)} test users ...")
        eddy = run_eddy(args, pb, tmp, data, {}, args.category)
        eddy.pop("_lists")
        out["eddy"] = eddy
        out["popularity"] = popularity(train, held, train_items, rated, catalogue, args.seed,
                                       False)
        out["popularity_positives"] = popularity(train, held, train_items, rated, catalogue,
                                                 args.seed, True)
        if args.sweep:
            out["sweep"] = []
            for entry in SWEEP:
                name, cfg = entry[0], entry[1]
                mode = entry[2] if len(entry) > 2 else args.category
                if not cfg and mode == args.category:
                    r = eddy  # the main run above
                else:
                    r = run_eddy(args, pb, tmp, data, cfg, mode)
                    r.pop("_lists")
                row = {"name": name, "config": cfg, "category": mode, "full": r["full"],
                       "served": r["served"], "sampled": r["sampled"],
                       "latency_ms": r["latency_ms"], "seconds": r["run_s"]}
                out["sweep"].append(row)
                log(f"  {name:60s} full {fmt(r['full'])}  sampled {fmt(r['sampled'])}")
            best = max(out["sweep"], key=lambda r: (r["full"]["ndcg@10"], r["full"]["hr@10"]))
            out["sweep_best"] = best["name"]
    out["runtime_s"] = time.perf_counter() - t_start

    if args.output == "json":
        json.dump(out, sys.stdout, indent=2)
        print()
        return
    e, st = out["eddy"], out["eddy"]["ingest"]
    m = out["machine"]
    print(f"MovieLens latest-small, leave-last-out{' (--quick: users 1..100)' if args.quick else ''}")
    print(f"machine        : {m['nproc']} CPUs, {m['cpu']}")
    print(f"command        : {out['command']}")
    print(f"node flags     : {' '.join(e['flags'])}")
    print(f"category       : {e['category']} genre")
    print(f"test users     : {out['test_users']} (cold start answers: {e['cold_start']})")
    print(f"events streamed: {out['events_streamed']} (accepted {st['accepted']}, duplicates "
          f"{st['duplicates']}, rejected {st['rejected']})")
    print(f"ingest         : {st['ingest_s']:.2f} s, {st['events_per_s']:.0f} events/s "
          f"(batches of {BATCH}, one client, sequential)")
    print(f"recommend      : p50 {e['latency_ms']['p50']:.2f} ms, p99 {e['latency_ms']['p99']:.2f} ms "
          f"(client side, sequential, max_recommendations "
          f"{DEFAULT_CONFIG['max-recommendations']}; mean list {e['list_len_mean']:.0f} items)")
    print()
    print(f"{'method':44s}  {'full ranking':16s}  {'99 sampled negatives':16s}")
    print(f"{'':44s}  {'HR@10   NDCG@10':16s}  {'HR@10   NDCG@10':16s}")
    rows = [("Eddy (training items filtered)", e["full"], e["sampled"]),
            ("Eddy (top 10 as served)", e["served"], None),
            ("popularity (all training ratings)", out["popularity"]["full"],
             out["popularity"]["sampled"]),
            ("popularity (training positives)", out["popularity_positives"]["full"],
             out["popularity_positives"]["sampled"])]
    for name, f, s in rows:
        print(f"{name:44s}  {fmt(f):16s}  {fmt(s) if s else '-':16s}")
    if args.sweep:
        print()
        print(f"{'sweep setting':60s}  {'full':16s}  {'sampled':16s}  {'served':16s}")
        for r in out["sweep"]:
            mark = " *" if r["name"] == out["sweep_best"] else ""
            print(f"{r['name'][:60]:60s}  {fmt(r['full']):16s}  {fmt(r['sampled']):16s}  "
                  f"{fmt(r['served']):16s}{mark}")
        print("(* best full-ranking NDCG@10)")
    print()
    print(f"runtime        : {out['runtime_s']:.1f} s")


if __name__ == "__main__":
    main()
