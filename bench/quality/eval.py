#!/usr/bin/python3
"""Recommendation quality of a live Eddy node against baselines, in one command.

Streams a dataset in time order into an `eddy-node --dev` it starts (temporary directory,
free port) and scores the node's Recommend, as served, under three protocols:
  * leave-last-out, full ranking (primary): each user's last positive is held out with
    everything of the user from then on; the rest is streamed; Recommend(user) ranks the
    held-out item against the whole catalogue minus what the user touched;
  * leave-last-out, 99 sampled negatives the user never touched (only to compare with
    papers; sampled metrics overstate quality);
  * prequential: every positive (of a deterministic sample, --prequential) is scored
    against the state of every event before it (the batch is cut there), then applied.
With --split global the held-out items are instead each user's first positive after the
time at which 90% of the events have happened (a second time split); with --split user,
each user's last 20% of positives (at least one) with everything of the user from the
first of them on, each held item ranked against the catalogue minus what the user touched.

A positive is the user's first interaction with an item the user buys (MovieLens: a
rating >= 4). Items a list does not contain rank after every listed item in a seeded
random order. Metrics: HR@10, NDCG@10, MRR, catalogue coverage (share of the catalogue
in any top 10). Baselines on the same split and stream: popularity (all interactions),
recent popularity (decayed by event count), streaming item-kNN (co-occurrence with the
user's last 20 items, recency-weighted, touched items excluded).

Run with /usr/bin/python3 (Debian's python3-grpcio and python3-protobuf).
"""
import argparse
import heapq
import json
import math
import os
import random
import shlex
import sys
import tempfile
import time
import zlib
from collections import defaultdict, deque
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import datasets  # noqa: E402
from movielens import Client, Node, gen_stubs, machine  # noqa: E402

K = 10
N_NEG = 99
LIST = 1000         # items asked of Recommend and of each baseline, held-out users
PREQ_LIST = 100     # the same, prequential (many more calls)
BATCH = 200         # events per Ingest (cut short at each prequential positive)
PB_TYPE = {"view": "EVENT_TYPE_VIEW", "click": "EVENT_TYPE_CLICK",
           "add_to_cart": "EVENT_TYPE_ADD_TO_CART",
           "remove_from_cart": "EVENT_TYPE_REMOVE_FROM_CART",
           "purchase": "EVENT_TYPE_PURCHASE", "search": "EVENT_TYPE_SEARCH"}

# Every node gets these: replays span years, so nothing may expire by event time, and
# lists are read fresh (--stage2-staleness 0) so that results do not depend on timing.
# Every model parameter is the node's default unless --node-arg says otherwise.
BASE_FLAGS = ["--max-event-age", "0", "--state-ttl", "0", "--window-retention", "0",
              "--log-retention", "0", "--dedup-window", "0", "--stage2-staleness", "0",
              "--max-recommendations", str(LIST), "--metrics-listen", "127.0.0.1:0"]


# ---- splits -------------------------------------------------------------------------------

def positives(events):
    """Indices of positive events: the first interaction of each (user, item) pair the
    user buys."""
    first, bought = {}, set()
    for i, e in enumerate(events):
        if not e[2]:
            continue
        first.setdefault((e[1], e[2]), i)
        if e[3] == "purchase":
            bought.add((e[1], e[2]))
    return sorted(first[p] for p in bought)


def split_loo(events, pos):
    """Hold out each user's last positive (users with >= 2) and every event of the user
    from it on. Returns (train indices, {user: held item})."""
    last, count = {}, defaultdict(int)
    for i in pos:
        u = events[i][1]
        last[u] = i
        count[u] += 1
    cut = {u: i for u, i in last.items() if count[u] >= 2}
    train = [i for i, e in enumerate(events) if e[1] not in cut or i < cut[e[1]]]
    return train, {u: events[i][2] for u, i in cut.items()}


def split_user(events, pos, frac=0.2):
    """Hold out each user's last 'frac' of positives (at least one; users with >= 2) and
    every event of the user from the first of them on. Returns (train indices,
    {user: [held items]})."""
    per = defaultdict(list)
    for i in pos:
        per[events[i][1]].append(i)
    cut, held = {}, {}
    for u, ps in per.items():
        if len(ps) < 2:
            continue
        k = max(1, round(len(ps) * frac))
        cut[u] = ps[-k]
        held[u] = [events[i][2] for i in ps[-k:]]
    train = [i for i, e in enumerate(events) if e[1] not in cut or i < cut[e[1]]]
    return train, held


def split_global(events, pos, frac=0.9):
    """Stream the events before the time of the 'frac' quantile; hold out each user's first
    positive after it (users with a training interaction)."""
    t_cut = events[int(len(events) * frac)][0]
    train = [i for i, e in enumerate(events) if e[0] < t_cut]
    known = {events[i][1] for i in train if events[i][2]}
    held = {}
    for i in pos:
        e = events[i]
        if e[0] >= t_cut and e[1] in known and e[1] not in held:
            held[e[1]] = e[2]
    return train, held


# ---- baselines ----------------------------------------------------------------------------

class Popularity:
    """Interactions per item; with 'half_life' (events) decayed by event count."""

    def __init__(self, half_life=0):
        self.count = defaultdict(float)
        self.n = 0
        self.f = 2 ** (1.0 / half_life) if half_life else 1.0

    def update(self, e):
        if e[2]:
            self.n += 1
            self.count[e[2]] += self.f ** min(self.n, 50000) if self.f != 1.0 else 1.0
            if self.f != 1.0 and self.n == 50000:  # rescale before the weights overflow
                for k in self.count:
                    self.count[k] /= self.f ** 50000
                self.n = 0

    def top(self, user, touched, n):
        return [x for x, _ in heapq.nsmallest(n + len(touched), self.count.items(),
                                              key=lambda kv: (-kv[1], kv[0]))
                if x not in touched][:n]


class ItemKNN:
    """Streaming item-kNN: each new item of a user pairs with the user's last 'window'
    items (symmetric counts); a user's score of j sums co[i][j] over the user's last items
    i, the k-th newest weighted 0.9^k; touched items excluded; popularity fills up."""

    def __init__(self, pop, window=20):
        self.co = defaultdict(lambda: defaultdict(float))
        self.last = defaultdict(deque)
        self.window = window
        self.pop = pop

    def update(self, e):
        u, j = e[1], e[2]
        if not j:
            return
        hist = self.last[u]
        if j in hist:
            hist.remove(j)
        else:
            for i in hist:
                self.co[i][j] += 1.0
                self.co[j][i] += 1.0
        hist.appendleft(j)
        if len(hist) > self.window:
            hist.pop()

    def top(self, user, touched, n):
        score = defaultdict(float)
        for k, i in enumerate(self.last.get(user, ())):
            w = 0.9 ** k
            for j, c in self.co[i].items():
                score[j] += w * c
        best = [x for x, _ in heapq.nsmallest(n + len(touched), score.items(),
                                              key=lambda kv: (-kv[1], kv[0]))
                if x not in touched][:n]
        if len(best) < n:
            seen = set(best) | touched
            best += [x for x in self.pop.top(user, seen, n) if x not in seen][:n - len(best)]
        return best


# ---- metrics ------------------------------------------------------------------------------

def rank_of(held, listed, candidates, rng):
    """0-based rank of 'held' when the items of 'listed' (best first, as served) come first
    and the other candidates follow in random order."""
    for r, x in enumerate(listed):
        if x == held:
            return r
    n_listed = sum(1 for x in listed if x in candidates)
    rest = len(candidates) - n_listed
    return len(listed) + (rng.randrange(rest) if rest > 0 else 0)


class Score:
    def __init__(self):
        self.ranks = []
        self.shown = set()

    def add(self, rank, listed):
        self.ranks.append(rank)
        self.shown.update(listed[:K])

    def result(self, catalogue):
        n = len(self.ranks)
        if not n:
            return {"n": 0}
        return {"n": n,
                "hr@10": sum(r < K for r in self.ranks) / n,
                "ndcg@10": sum(1 / math.log2(r + 2) for r in self.ranks if r < K) / n,
                "mrr": sum(1 / (r + 1) for r in self.ranks) / n,
                "coverage": len(self.shown) / catalogue if catalogue else 0.0}


def negatives(user, held, touched_all, cat_list, seed):
    rng = random.Random(f"{seed}-neg-{user}")
    out = set()
    while len(out) < N_NEG and len(out) < len(cat_list) - len(touched_all) - 1:
        m = cat_list[rng.randrange(len(cat_list))]
        if m not in touched_all and m != held:
            out.add(m)
    return out


# ---- the run ------------------------------------------------------------------------------

def to_pb(pb, e, idx):
    ev = pb.Event(event_id=f"e{idx}", user_id=e[1], timestamp_ms=e[0],
                  event_type=getattr(pb, PB_TYPE[e[3]]), product_id=e[2], category=e[4],
                  brand=e[5], price=e[6])
    if e[7]:
        ev.search_query = e[7]
    return ev


def run(args, pb, tmp, events, split_name):
    pos = positives(events)
    split = {"loo": split_loo, "user": split_user, "global": split_global}[split_name]
    train, held = split(events, pos)
    held = {u: h if isinstance(h, list) else [h] for u, h in held.items()}
    catalogue = {e[2] for e in events if e[2]}
    cat_list = sorted(catalogue)
    touched_all = defaultdict(set)
    for e in events:
        if e[2]:
            touched_all[e[1]].add(e[2])
    # prequential sample: positives in the streamed part, every k-th by a stable hash
    train_set = set(train) if split_name == "loo" else None
    preq = set()
    if args.prequential and split_name == "loo":
        cand = [i for i in pos if i in train_set]
        keep = min(1.0, args.prequential / max(1, len(cand)))
        preq = {i for i in cand if (zlib.crc32(str(i).encode()) % 10000) < keep * 10000}

    pop, recent = Popularity(), Popularity(half_life=max(100, len(train) // 20))
    methods = {"eddy": None, "popularity": pop, "recent popularity": recent,
               "item-kNN": ItemKNN(pop)}
    scores = {p: {m: Score() for m in methods} for p in ("full", "sampled", "prequential")}
    touched = defaultdict(set)
    node = Node(args.node, BASE_FLAGS + args.node_arg, tmp)
    client = Client(pb, node.endpoint)
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    n_rec = 0

    def served(user, n):
        nonlocal n_rec
        n_rec += 1
        r = client.recommend(pb.RecommendRequest(user_id=user, max_recommendations=n),
                             timeout=60)
        return [it.product_id for it in r.items]

    def lists(user, n):
        t = touched[user]
        return {m: served(user, n) if b is None else b.top(user, t, n)
                for m, b in methods.items()}

    def apply(chunk):
        if not chunk:
            return
        req = pb.IngestRequest(events=[to_pb(pb, events[i], i) for i in chunk])
        resp = client.ingest_retry(req)
        if resp.rejected:
            raise RuntimeError(f"rejected: {resp.rejected[0].reason}")
        for i in chunk:
            e = events[i]
            for bl in (pop, recent, methods["item-kNN"]):
                bl.update(e)
            if e[2]:
                touched[e[1]].add(e[2])

    try:
        # A batch is cut at each sampled positive: the node and the baselines are scored on
        # exactly the events before it (a user's previous item may be a second older).
        pending = []
        for i in train:
            if i in preq:
                apply(pending)
                pending = []
                e = events[i]
                cands = catalogue - touched[e[1]]
                for m, lst in lists(e[1], PREQ_LIST).items():
                    scores["prequential"][m].add(rank_of(e[2], lst, cands, rng), lst)
            pending.append(i)
            if len(pending) == BATCH:
                apply(pending)
                pending = []
        apply(pending)
        ingest_s = time.perf_counter() - t0
        for u in sorted(held):
            ls = lists(u, LIST)
            cands = catalogue - touched[u]
            for h in held[u]:  # several with --split user: each ranked against the rest
                neg = negatives(u, h, touched_all[u], cat_list, args.seed) | {h}
                for m, lst in ls.items():
                    scores["full"][m].add(rank_of(h, lst, cands, rng), lst)
                    scores["sampled"][m].add(
                        rank_of(h, [x for x in lst if x in neg], neg, rng), lst)
    finally:
        client.close()
        rc = node.stop()
    out = {"split": split_name, "events": len(events), "streamed": len(train),
           "test_users": len(held), "catalogue": len(catalogue), "node_exit": rc,
           "flags": BASE_FLAGS + args.node_arg, "ingest_s": round(ingest_s, 1),
           "recommend_calls": n_rec, "seconds": round(time.perf_counter() - t0, 1)}
    for p, per in scores.items():
        out[p] = {m: s.result(len(catalogue)) for m, s in per.items()}
    return out


def table(r):
    lines = [f"split {r['split']}: {r['events']} events, {r['streamed']} streamed, "
             f"{r['test_users']} test users, catalogue {r['catalogue']}, {r['seconds']} s"]
    for p in ("full", "prequential", "sampled"):
        if not r[p]["eddy"].get("n"):
            continue
        lines.append(f"  {p} (n = {r[p]['eddy']['n']})")
        lines.append(f"    {'method':20s} {'HR@10':>7s} {'NDCG@10':>8s} {'MRR':>7s} {'cov':>6s}")
        for m, s in r[p].items():
            lines.append(f"    {m:20s} {s['hr@10']:7.4f} {s['ndcg@10']:8.4f} {s['mrr']:7.4f} "
                         f"{s['coverage']:6.3f}")
        pop = r[p]["popularity"]["hr@10"]
        knn = r[p]["item-kNN"]["hr@10"]
        e = r[p]["eddy"]["hr@10"]
        lines.append(f"    eddy/popularity {e / pop if pop else float('inf'):.2f}x, "
                     f"eddy/item-kNN {e / knn if knn else float('inf'):.2f}x")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="synthetic",
                    help="a MovieLens directory (ratings.csv, movies.csv) or 'synthetic'")
    ap.add_argument("--users", type=int, default=0,
                    help="MovieLens: users 1..N only; synthetic: number of users (400)")
    ap.add_argument("--split", choices=["loo", "user", "global", "both", "all"], default="loo",
                    help="both: loo and global; all: loo, user and global")
    ap.add_argument("--prequential", type=int, default=2000,
                    help="about this many positives scored prequentially (0 = none)")
    ap.add_argument("--node", default=os.environ.get("EDDY_NODE", str(REPO / "build/eddy-node")))
    ap.add_argument("--node-arg", action="append", default=[],
                    help="extra node flag, e.g. --node-arg=--diversity-cap=0 (repeatable)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("-o", "--output", choices=["table", "json"], default="table")
    args = ap.parse_args()
    if not os.access(args.node, os.X_OK):
        ap.error(f"no eddy-node at {args.node} (build it, or pass --node / EDDY_NODE)")
    if args.data == "synthetic":
        events = datasets.synthetic(users=args.users or 400)
    else:
        events = datasets.movielens(args.data, args.users)
    out = {"command": " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv),
           "machine": machine(), "data": args.data, "runs": []}
    with tempfile.TemporaryDirectory(prefix="eddy-quality-") as tmp:
        pb = gen_stubs(tmp)
        splits = {"both": ("loo", "global"), "all": ("loo", "user", "global")}
        for s in splits.get(args.split, (args.split,)):
            r = run(args, pb, tmp, events, s)
            out["runs"].append(r)
            if args.output == "table":
                print(table(r), flush=True)
    if args.output == "json":
        json.dump(out, sys.stdout, indent=1)
        print()


if __name__ == "__main__":
    main()
