#!/usr/bin/python3
"""Markdown summary of bench/dev.sh and bench/cluster.sh results (JSON lines written by
bench/lib.sh): each scenario beside the references measured in the same run (a run ends
with its "machine" record), the ratios, and the targets of docs/BENCHMARKS.md met or missed.

  bench/summarize.py [--title T] results.jsonl
"""
import argparse
import json
import sys

REFS = ("ref-leveldb", "ref-grpc", "seed-pipeline")

# label -> list of (description, value function, comparison, bound)
TARGETS = {
    "dev-ingest-max": [("durable ingest >= 150,000 ev/s", lambda r, g: r["throughput_eps"], ">=", 150000),
                       ("ingest ack p99 <= 10 ms (500-event batches)", lambda r, g: r["latency_ms"]["p99"], "<=", 10),
                       (">= 50x the seed pipeline", lambda r, g: ratio(r, g, "seed-pipeline"), ">=", 50)],
    "dev-ingest-5k": [("ingest ack p99 <= 10 ms at 5,000 ev/s", lambda r, g: r["latency_ms"]["p99"], "<=", 10)],
    "dev-ingest-500": [("ingest ack p99 <= 10 ms, one batch at a time", lambda r, g: r["latency_ms"]["p99"], "<=", 10)],
    "cluster-ingest-max": [("durable ingest >= 100,000 ev/s", lambda r, g: r["throughput_eps"], ">=", 100000),
                           (">= 50x the seed pipeline", lambda r, g: ratio(r, g, "seed-pipeline"), ">=", 50)],
    "dev-recommend-idle": [("Recommend p99 <= 2 ms at 5,000 QPS idle", lambda r, g: r["recommend_latency_ms"]["p99"], "<=", 2),
                           ("5,000 QPS achieved", lambda r, g: r["recommend_qps"], ">=", 4950)],
    "dev-mixed": [("Recommend p99 <= 5 ms at 5,000 QPS while ingesting 50,000 ev/s", lambda r, g: r["recommend_latency_ms"]["p99"], "<=", 5),
                  ("50,000 ev/s ingested meanwhile", lambda r, g: r["throughput_eps"], ">=", 49500)],
    "dev-visible": [("event to visible p99 <= 50 ms", lambda r, g: r["visible_latency_ms"]["p99"], "<=", 50)],
}


def ratio(r, group, ref):
    base = group.get(ref, {}).get("throughput_eps") or 0
    return r["throughput_eps"] / base if base else float("nan")


def fmt(x, digits=0):
    if x != x:  # nan
        return "-"
    return f"{x:,.{digits}f}"


def groups(lines):
    cur = {}
    for r in lines:
        cur[r["label"]] = r
        if r["label"] == "machine":
            yield cur
            cur = {}
    if cur:
        yield cur


def lat(d):
    return f"{d['p50']:.2f} / {d['p99']:.2f} / {d['max']:.1f}" if d and d.get("count") else "-"


def record(label, path):
    """Read one JSON result on stdin, tag it, append it to 'path', summarize on stderr."""
    text = sys.stdin.read()
    try:
        r = json.loads(text)
    except ValueError:
        r = {"errors": 1, "first_error": "no JSON result: " + text[:200]}
    r["label"] = label
    with open(path, "a") as f:
        f.write(json.dumps(r) + "\n")
    msg = f"{label}: {r.get('throughput_eps', 0):,.0f} events/s"
    for key, name in (("latency_ms", "ack"), ("recommend_latency_ms", "recommend"),
                      ("visible_latency_ms", "visible")):
        d = r.get(key) or {}
        if d.get("count"):
            msg += f"; {name} p50 {d['p50']:.2f} p99 {d['p99']:.2f} ms"
    if r.get("recommend_qps"):
        msg += f" at {r['recommend_qps']:,.0f} QPS"
    msg += f"; errors {r.get('errors', 0)}"
    if r.get("first_error"):
        msg += f" ({r['first_error']})"
    print("bench: " + msg, file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--title", default="")
    ap.add_argument("--record", metavar="LABEL", help="append one result read from stdin")
    ap.add_argument("results")
    a = ap.parse_args()
    if a.record:
        record(a.record, a.results)
        return
    lines = [json.loads(l) for l in open(a.results) if l.strip()]
    out = []
    for g in groups(lines):
        m = g.get("machine", {})
        out.append(f"Run: {a.title}; machine: nproc {m.get('nproc')}, {m.get('cpu')}, "
                   f"load average before {m.get('loadavg_before')} (shared machine).\n")
        out.append("| scenario | events/s | ack p50 / p99 / max ms | Recommend QPS | Recommend p50 / p99 / max ms "
                   "| visible p50 / p99 / max ms | errors (retries) | x seed pipeline | / ref-leveldb | / ref-grpc |")
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        for label, r in g.items():
            if label == "machine" or r.get("aux"):  # aux: a measurement beside a scenario
                continue
            is_ref = label in REFS
            rq = r.get("recommend_qps", 0)
            eps = r.get("throughput_eps", 0)
            cells = [f"`{label}`" + (" (reference)" if is_ref else ""),
                     fmt(eps) if eps else "-",
                     lat(r.get("latency_ms")),
                     fmt(rq) if rq else "-",
                     lat(r.get("recommend_latency_ms")),
                     lat(r.get("visible_latency_ms")),
                     f"{r.get('errors', 0)} ({r.get('retries_total', 0)})",
                     "-" if is_ref or not eps else fmt(ratio(r, g, "seed-pipeline"), 2),
                     "-" if is_ref or not eps else fmt(ratio(r, g, "ref-leveldb"), 3),
                     "-" if is_ref or not eps else fmt(ratio(r, g, "ref-grpc"), 3)]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        rows = []
        for label, targets in TARGETS.items():
            if label not in g:
                continue
            for desc, fn, op, bound in targets:
                try:
                    v = fn(g[label], g)
                except (KeyError, ZeroDivisionError):
                    v = float("nan")
                ok = v == v and (v >= bound if op == ">=" else v <= bound)
                rows.append(f"| {desc} | `{label}` | {fmt(v, 2)} | {'met' if ok else '**missed**'} |")
        if rows:
            out.append("| target | scenario | measured | |")
            out.append("|---|---|---|---|")
            out.extend(rows)
            out.append("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
