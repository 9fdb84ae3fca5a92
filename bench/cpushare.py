#!/usr/bin/python3
"""Where the CPU went during a benchmark, from /proc: each watched process's threads (by
name: eddy-writer, eddy-sync, eddy-handler, gRPC's...) in cores, and how busy the whole
machine was (a run with no idle CPU is bounded by the machine, not by the code).

  cpushare.py snap NAME=PID... > BEFORE      # a snapshot (JSON) of the ticks so far
  cpushare.py delta BEFORE AFTER             # the cores used between two snapshots (JSON)
  cpushare.py merge BEFORE AFTER < RESULT    # RESULT (one JSON object) with "cpu" added
"""
import json
import os
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def ticks(stat):
    """utime + stime of a /proc stat line (fields 14 and 15 of proc(5)); for a process they
    include its threads that have ended."""
    f = stat[stat.rindex(")") + 2:].split()
    return int(f[11]) + int(f[12])


def threads(pid):
    """{tid: [name, utime + stime ticks]} of a live process, and "all": the process's own
    ticks; {} once it is gone."""
    out = {}
    try:
        out["all"] = ["", ticks(open(f"/proc/{pid}/stat").read())]
    except OSError:
        return out
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            s = open(f"/proc/{pid}/task/{tid}/stat").read()
        except OSError:
            continue  # the thread ended meanwhile
        out[tid] = [s[s.index("(") + 1:s.rindex(")")], ticks(s)]
    return out


def snap(args):
    cpu = open("/proc/stat").readline().split()[1:]
    procs = {}
    for a in args:
        name, _, pid = a.partition("=")
        procs[name] = threads(pid)
    json.dump({"t": time.monotonic(), "stat": [int(x) for x in cpu], "procs": procs}, sys.stdout)


def delta(a, b):
    wall = b["t"] - a["t"]
    ncpu = os.cpu_count()
    # /proc/stat: user nice system idle iowait irq softirq steal ...; idle and iowait are
    # the time no task ran
    total = sum(b["stat"][:8]) - sum(a["stat"][:8])
    idle = (b["stat"][3] + b["stat"][4]) - (a["stat"][3] + a["stat"][4])
    out = {"wall_s": round(wall, 3), "nproc": ncpu,
           "machine_busy": round(1 - idle / total, 3) if total > 0 else None,
           "procs": {}}
    for name, after in b["procs"].items():
        before = a["procs"].get(name, {})
        by_name = {}
        for tid, (tname, t) in after.items():
            if tid != "all":
                by_name[tname] = by_name.get(tname, 0) + t - before.get(tid, [tname, 0])[1]
        # threads that ran and ended between the snapshots (a move's snapshot sender...)
        ended = after.get("all", ["", 0])[1] - before.get("all", ["", 0])[1] - sum(by_name.values())
        if ended > 0 and before.get("all"):
            by_name["(ended threads)"] = ended
        cores = {t: round(v / TICK / wall, 3) for t, v in sorted(by_name.items(), key=lambda kv: -kv[1])
                 if v > 0} if wall > 0 else {}
        out["procs"][name] = {"cores": round(sum(cores.values()), 3), "threads": cores}
    return out


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in ("snap", "delta", "merge"):
        sys.exit(__doc__)
    if sys.argv[1] == "snap":
        snap(sys.argv[2:])
        return
    a, b = (json.load(open(p)) for p in sys.argv[2:4])
    d = delta(a, b)
    if sys.argv[1] == "delta":
        json.dump(d, sys.stdout)
        print()
        return
    text = sys.stdin.read()
    try:
        r = json.loads(text)
    except ValueError:  # no result: leave it for summarize.py --record to report
        sys.stdout.write(text)
        return
    r["cpu"] = d
    json.dump(r, sys.stdout)
    print()


if __name__ == "__main__":
    main()
