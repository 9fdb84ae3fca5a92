#!/usr/bin/python3
"""Markdown summary of one bench/quota.sh run: every phase in order (B's Recommend p50 and
p99, the flood's calls, the cores the node and the flood's clients used), then per scenario the median of B's p50
and p99 over the rounds with their range, and each flood phase against the B-alone phase
just before it in the same round (p99 ratio and difference: median and range). Medians
over interleaved phases, and the pairs, are what a shared machine's load moves least.

  bench/quota_summary.py RESULTS.jsonl PHASES.jsonl QPS QUOTA
"""
import json
import re
import statistics
import sys

SCENARIOS = (("alone", "B alone"), ("a", "A floods, quota"), ("c", "C floods, no quota"))
LABEL = re.compile(r"^b-(?:alone-(\d+)-[ac]|flood-([ac])-[a-z-]+-(\d+))$")


def scenario(label):
    """(scenario key, round) of a phase label, or None."""
    m = LABEL.match(label)
    if not m:
        return None
    return ("alone", int(m.group(1))) if m.group(1) else (m.group(2), int(m.group(3)))


def spread(xs, digits=1):
    """'median [min-max]' of xs."""
    if not xs:
        return "-"
    f = f"{{:,.{digits}f}}"
    return f"{f.format(statistics.median(xs))} [{f.format(min(xs))}-{f.format(max(xs))}]"


def cores(phase, key):
    """CPU seconds per second of B's run: the cores a process set used meanwhile."""
    return phase.get(key, 0) / phase["seconds"] if phase.get("seconds") else float("nan")


def main():
    results, phases_path, qps, quota = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    lat = {}
    with open(results) as f:
        for line in f:
            r = json.loads(line)
            d = r.get("recommend_latency_ms")
            if d and d.get("count"):
                lat[r["label"]] = (d["p50"], d["p99"], r.get("errors", 0))
    phases = []
    with open(phases_path) as f:
        for line in f:
            p = json.loads(line)
            if p["label"] in lat and scenario(p["label"]):
                phases.append(p)

    print(f"### bench/quota.sh: B's Recommend at {qps}/s, A's quota {quota} events/s\n")
    print("| phase | B p50 ms | B p99 ms | flood calls OK / refused (events/s taken) "
          "| node cores | flood clients' cores | load |")
    print("|---|---|---|---|---|---|---|")
    for p in phases:
        p50, p99, _ = lat[p["label"]]
        fl = p["flood"]
        flood = (f"{fl['calls_ok']:,} / {fl['calls_refused']:,} "
                 f"({fl.get('events_taken', 0) / fl['seconds']:,.0f})" if fl else "-")
        print(f"| {p['label']} | {p50:.2f} | {p99:.1f} | {flood} | {cores(p, 'node_cpu_s'):.2f} "
              f"| {cores(p, 'flood_cpu_s'):.2f} | {p['loadavg']} |")

    print("\n| scenario | phases | B p50 ms, median [range] | B p99 ms, median [range] "
          "| node cores, median [range] | flood clients' cores, median [range] |")
    print("|---|---|---|---|---|---|")
    by = {k: [p for p in phases if scenario(p["label"])[0] == k] for k, _ in SCENARIOS}
    for k, name in SCENARIOS:
        ps = by[k]
        print(f"| {name} | {len(ps)} | {spread([lat[p['label']][0] for p in ps], 2)} "
              f"| {spread([lat[p['label']][1] for p in ps])} "
              f"| {spread([cores(p, 'node_cpu_s') for p in ps], 2)} "
              f"| {spread([cores(p, 'flood_cpu_s') for p in ps], 2)} |")

    # each flood phase against the B-alone phase right before it (same round)
    print("\n| flood phase vs B alone just before | pairs | p99 ratio, median [range] "
          "| p99 difference ms, median [range] |")
    print("|---|---|---|---|")
    for k, name in SCENARIOS[1:]:
        ratios, diffs = [], []
        for i, p in enumerate(phases):
            if scenario(p["label"])[0] != k or i == 0:
                continue
            before = phases[i - 1]
            if scenario(before["label"])[0] != "alone":
                continue
            a, b = lat[before["label"]][1], lat[p["label"]][1]
            ratios.append(b / a if a > 0 else float("inf"))
            diffs.append(b - a)
        print(f"| {name} | {len(ratios)} | {spread(ratios, 2)} | {spread(diffs)} |")
    errors = sum(lat[p["label"]][2] for p in phases)
    print(f"\nB's errors over all phases: {errors}")


if __name__ == "__main__":
    main()
