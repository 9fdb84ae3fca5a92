#!/usr/bin/python3
"""The targets table of issue 16 from one bench/targets.sh run (its results.jsonl): per
row the goal, the measured value, measured / goal, the ratio to ref-leveldb where the issue
asks for it, the command's scenario, and what bounds it as measured in the same run
(threads' CPU from /proc, the server's own p99, bytes per table...), then the machine.

  bench/targets.py results.jsonl
"""
import json
import sys


def num(x, digits=0):
    if x is None or x != x:
        return "-"
    return f"{x:,.{digits}f}"


def cores(r, proc="node", threads=None):
    """'writer 0.93, sync 0.41' of the watched process's busiest threads (cores)."""
    t = (r.get("cpu") or {}).get("procs", {}).get(proc, {}).get("threads", {})
    names = threads or list(t)[:3]
    return ", ".join(f"{n.removeprefix('eddy-')} {t.get(n, 0):.2f}" for n in names)


def busy(r):
    b = (r.get("cpu") or {}).get("machine_busy")
    return f"machine busy {b * 100:.0f} % of {r['cpu']['nproc']} CPUs" if b is not None else "machine busy -"


def thread_seconds(r, proc, thread):
    c = r.get("cpu") or {}
    return c.get("procs", {}).get(proc, {}).get("threads", {}).get(thread, 0) * c.get("wall_s", 0)


def server(srv):
    """The server's own p99 (a histogram bucket's bound) of recommend_tail.sh."""
    if srv.get("server_p99_ms") is not None:
        return "<= " + num(srv["server_p99_ms"], 1)
    if srv.get("server_p99_above_ms") is not None:  # in the +Inf bucket
        return "> " + num(srv["server_p99_above_ms"])
    return "-"


def p99(r, key):
    d = r.get(key) or {}
    return d.get("p99") if d.get("count") else None


def rows(g):
    """(row, goal text, goal, '>=' or '<=', measured, unit, vs ref-leveldb, scenario, bounds)"""
    out = []
    r = g.get("dev-ingest-max")
    ref = (g.get("ref-leveldb") or {}).get("throughput_eps")
    if r:
        eps = r.get("throughput_eps")
        us = thread_seconds(r, "node", "eddy-writer") / r["events"] * 1e6 if r.get("events") else None
        vs = f"{eps / ref:.3f} of {num(ref)} (goal >= 0.25)" if ref and eps else "-"
        out.append(("durable ingest, `--dev`, 2 cores", ">= 150,000 events/s", 150000, ">=", eps, "events/s", vs,
                    "`bench/dev.sh` dev-ingest-max",
                    f"node threads in cores: {cores(r)}; writer {num(us, 1)} us of CPU per event (a core of its own: "
                    f"{num(1e6 / us if us else None)} events/s); {busy(r)}; "
                    f"ref-grpc {num((g.get('ref-grpc') or {}).get('throughput_eps'))} events/s"))
    r = g.get("r2-ingest-max")
    if r:
        procs = (r.get("cpu") or {}).get("procs", {})
        st = sorted(n for n in procs if n.startswith("state-"))
        writers = sum(procs[n]["threads"].get("eddy-writer", 0) for n in st)
        each = ", ".join(f"{n} {procs[n]['cores']:.2f}" for n in sorted(procs) if procs[n]["cores"] >= 0.05)
        wall = (r.get("cpu") or {}).get("wall_s", 0)
        us = sum(p["cores"] for p in procs.values()) * wall / r["events"] * 1e6 if r.get("events") else None
        ncpu = (r.get("cpu") or {}).get("nproc") or 0
        out.append(("local cluster with R = 2", ">= 100,000 events/s", 100000, ">=", r.get("throughput_eps"),
                    "events/s", "-", "`bench/replication.sh` r2-ingest-max",
                    f"every event applied on 2 of 3 state nodes; writers {writers:.2f} cores in all; the cluster's "
                    f"processes {num(us, 1)} us of CPU per event ({ncpu} CPUs of their own: "
                    f"{num(ncpu * 1e6 / us if us else None)} events/s); "
                    f"processes in cores: {each}; {busy(r)}"))
    for label, row, goal in (("dev-ingest-5k", "ack p99, 500-event batches at 5,000 events/s", 10),
                             ("dev-ingest-500", "ack p99, one 500-event batch at a time", 5)):
        r = g.get(label)
        if r:
            ms = thread_seconds(r, "node", "eddy-writer") / r["batches"] * 1e3 if r.get("batches") else None
            lat = r.get("latency_ms") or {}
            grp = (g.get(label + "-groups") or {}).get("groups")
            writes = f"{grp / r['batches']:.2f} synced writes (writer groups) per batch; " \
                if grp is not None and r.get("batches") else ""
            out.append((row, f"<= {goal} ms", goal, "<=", p99(r, "latency_ms"), "ms", "-", f"`bench/dev.sh` {label}",
                        f"p50 {num(lat.get('p50'), 1)} ms at {num(r.get('throughput_eps'))} events/s; {writes}"
                        f"writer {num(ms, 1)} ms of CPU per batch; node threads: {cores(r)}; {busy(r)}"))
    for label, row, goal in (("recommend-warm", "Recommend p99 at 5,000 QPS, idle (caches warm)", 2),
                             ("recommend-ingest", "Recommend p99 at 5,000 QPS while ingesting 50,000 events/s", 5)):
        r = g.get(label)
        if r:
            srv = g.get(label + "-server") or {}
            calls = r.get("recommend_requests") or 0
            node = (r.get("cpu") or {}).get("procs", {}).get("node", {}).get("cores", 0)
            node_s = node * (r.get("cpu") or {}).get("wall_s", 0)
            us = node_s / calls * 1e6 if calls else None
            extra = ""
            if label == "recommend-ingest":
                extra = (f"ingest achieved {num(r.get('throughput_eps'))} of {num(r.get('target_rate_eps'))} "
                         f"events/s (node threads: {cores(r, threads=['eddy-writer'])} cores); ")
            else:
                cold = g.get("recommend-cold") or {}
                extra = f"cold caches (the run before) p99 {num(p99(cold, 'recommend_latency_ms'), 1)} ms; "
            out.append((row, f"<= {goal} ms", goal, "<=", p99(r, "recommend_latency_ms"), "ms", "-",
                        f"`bench/recommend_tail.sh` {label}",
                        f"{extra}{num(r.get('recommend_qps'))} QPS answered, "
                        f"{num(sum((r.get('recommend_errors_by_code') or {}).values()))} refused; server's own p99 "
                        f"{server(srv)} ms; " + (
                            f"node {num(us)} us of CPU per call (5,000 QPS: {num(us * 5000 / 1e6 if us else None, 2)} "
                            f"cores), had {node:.2f} cores" if label == "recommend-warm" else
                            f"node {node:.2f} cores in all") + f", threads: {cores(r)}; {busy(r)}"))
    f = g.get("footprint")
    if f:
        tb = sorted((f.get("table_bytes_per_user") or {}).items(), key=lambda kv: -(kv[1] or 0))[:4]
        out.append(("disk per user at 1 M users", "<= 200 B", 200, "<=", f.get("disk_per_user"), "B", "-",
                    "`bench/footprint.sh`",
                    f"{num(f.get('users'))} users, {num(f.get('disk_bytes', 0) / 1e6)} MB on disk (snappy); "
                    "uncompressed per user: " + ", ".join(f"{t} {num(b)}" for t, b in tb)))
        out.append(("RAM per user at 1 M users (default caches)", "<= 350 B", 350, "<=", f.get("ram_per_user"), "B",
                    "-", "`bench/footprint.sh`",
                    f"the node's own memory (RssAnon) {num(f.get('rss_anon_bytes', 0) / 1e6)} MB, "
                    f"{num(f.get('rss_idle_bytes', 0) / 1e6)} MB before the ingest, peak RSS "
                    f"{num(f.get('rss_peak_bytes', 0) / 1e6)} MB; caches by flag (the defaults): --state-cache-size 96 MiB + "
                    f"--cache-size 32 MiB = {num(128 * 2**20 / f['users'] if f.get('users') else None)} B per user"))
    m = g.get("move")
    if m:
        mb = m.get("checkpoint_bytes_per_partition", 0) / 1e6
        secs = m.get("move_seconds_mean")
        scaled = secs * 100 / mb if mb and secs is not None else None
        unit = "s (per 100 MB)"
        if m.get("settled") is False:  # not moved by BENCH_MOVE_TIMEOUT: the time waited is a lower bound
            scaled = m.get("wall_seconds_to_settled", 0) * 100 / mb if mb else None
            unit = (f"s (per 100 MB; did not finish: {m.get('copies')} copies, the source's freeze lapsed "
                    f"{m.get('freeze_lapsed')} times)")
        out.append(("100 MB partition move under ingest", "<= 1.5 s", 1.5, "<=", scaled, unit, "-",
                    "`bench/move.sh`",
                    f"{num(secs, 2)} s for {num(mb)} MB ({num(m.get('move_mb_per_s'), 1)} MB/s), write pause "
                    f"{num(m.get('pause_ms_mean'))} ms; the copy {num(m.get('copy_ms_mean'))} ms, of which the "
                    f"target's LevelDB writes {num(m.get('write_ms_mean'))} ms (means over the copies); ingest "
                    f"{num(m.get('ingest_eps_during'))} events/s meanwhile; target threads: "
                    f"{cores(m, 'state-2')}; source: {cores(m, 'state-1')}; {busy(m)}"))
    return out


# every row the table must have, in the order (a row the run did not produce is
# printed "not measured")
ROWS = ("durable ingest, `--dev`, 2 cores", "local cluster with R = 2",
        "ack p99, 500-event batches at 5,000 events/s", "ack p99, one 500-event batch at a time",
        "Recommend p99 at 5,000 QPS, idle (caches warm)",
        "Recommend p99 at 5,000 QPS while ingesting 50,000 events/s",
        "disk per user at 1 M users", "RAM per user at 1 M users (default caches)",
        "100 MB partition move under ingest")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    g = {}
    for line in open(sys.argv[1]):
        if line.strip():
            r = json.loads(line)
            g[r["label"]] = r  # the last of a label wins
    got = {row[0]: row for row in rows(g)}
    out = ["| measure | goal | measured | measured / goal | met | / ref-leveldb | command (scenario) | what bounds it (same run) |",
           "|---|---|---|---|---|---|---|---|"]
    for name in ROWS:
        if name not in got:
            out.append(f"| {name} | | not measured | | | | | see the command's log |")
            continue
        _, goal_txt, goal, op, v, unit, vs, cmd, bounds = got[name]
        ok = v is not None and v == v and (v >= goal if op == ">=" else v <= goal)
        ratio = "-" if v is None or v != v else num(v / goal) if v / goal >= 100 else f"{v / goal:.3g}"
        digits = 0 if unit in ("events/s", "B") else 2
        out.append(f"| {name} | {goal_txt} | {num(v, digits)} {unit} | {ratio} | {'met' if ok else '**missed**'} "
                   f"| {vs} | {cmd} | {bounds} |")
    a, z = g.get("targets-start", {}), g.get("targets-end", {})
    out.append("")
    out.append(f"Machine: nproc {a.get('nproc')}, {a.get('cpu')}; load average (1/5/15 min) "
               f"{' '.join(a.get('loadavg', []))} at the start, {' '.join(z.get('loadavg', []))} at the end; "
               f"{a.get('date')} to {z.get('date')}; commit {a.get('commit')}{' (dirty)' if a.get('dirty') else ''}, "
               f"{a.get('build_type')} build{'; BENCH_QUICK (sizes too small to mean anything)' if a.get('quick') else ''}.")
    failed = [k.removeprefix("failed-") for k in g if k.startswith("failed-")]
    if failed:
        out.append(f"Failed commands: {', '.join(failed)} (their logs are in the output directory).")
    print("\n".join(out))


if __name__ == "__main__":
    main()
