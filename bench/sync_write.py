#!/usr/bin/env python3
"""The synced LevelDB writes of a `perf record` (bench/sync_write.sh): for each thread's
leveldb_write calls, the total and, for those that called fdatasync, its three parts: before
the fdatasync (LevelDB's writer queue, the log record), the fdatasync, after it (the
memtable inserts). One line per thread name and kind, p50 / p90 / p99 in ms.
  bench/sync_write.py PERF_DATA [LABEL]"""
import re
import subprocess
import sys

EVENT = re.compile(r"\s*(\S.*?)\s+(\d+)\s+([\d.]+):\s+(\S+):")


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))]


def spread(values):
    return "p50 %.2f p90 %.2f p99 %.2f" % (pct(values, .5), pct(values, .9), pct(values, .99))


def main():
    out = subprocess.run(["perf", "script", "-i", sys.argv[1], "-F", "comm,tid,time,event"],
                         capture_output=True, text=True, check=True).stdout
    label = sys.argv[2] if len(sys.argv) > 2 else ""
    open_writes, done = {}, {}
    for line in out.splitlines():
        m = EVENT.match(line)
        if not m:
            continue
        comm, tid, ms, event = m.group(1), m.group(2), float(m.group(3)) * 1e3, m.group(4)
        w = open_writes.get(tid)
        if event.endswith(":leveldb_write"):
            open_writes[tid] = {"start": ms}
        elif w is None:
            continue
        elif event.endswith("enter_fdatasync"):
            w.setdefault("sync", ms)
        elif event.endswith("exit_fdatasync"):
            w["synced"] = ms
        elif event.endswith("__return"):
            w["end"] = ms
            del open_writes[tid]
            kind = "synced" if "synced" in w else "unsynced"
            done.setdefault((comm, kind), []).append(w)
    for (comm, kind), ws in sorted(done.items()):
        line = "%s %s %s n=%d total %s" % (label, comm, kind, len(ws),
                                          spread([w["end"] - w["start"] for w in ws]))
        if kind == "synced":
            line += " | before %s | fdatasync %s | after %s" % (
                spread([w["sync"] - w["start"] for w in ws]),
                spread([w["synced"] - w["sync"] for w in ws]),
                spread([w["end"] - w["synced"] for w in ws]))
        print(line.strip())


main()
