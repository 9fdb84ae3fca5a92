#!/usr/bin/python3
"""The soak run of the fault harness: test_faults.py's cluster (a real etcd, a coordinator,
3 state nodes and 2 ingest nodes on loopback, R = 2, min-insync 2) under its workload for
--duration seconds while faults are injected in turn, each followed by its repair: kill -9
of the leader of most partitions (restarted on its data), SIGSTOP of a leader past its
lease then SIGCONT, kill -9 of the node leading the fewest (restarted), etcd killed and
restarted, kill -9 of the coordinator (restarted). Per fault it prints the time to the
first acknowledgement after the fault (those of its first 0.5 s are not counted: batches
in flight when it hit), the longest stretch without one around it, and the time until
every partition has its 2 copies again; at the end test_faults' history checker compares
every acknowledged event with the final state and prints the verdict (exit 0: PASS), and
before it, the partitions where acknowledged events are missing with their map after each
fault.

Not run by CTest (minutes long). From the source tree, after a build:

    /usr/bin/python3 tests/integration/soak.py --build build --duration 300
"""
import argparse
import os
import shutil
import signal
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# seconds of steady writes between a repair and the next fault
SETTLE_S = 5.0
# the bound of each wait (recovery, replication): past it the run fails
WAIT_S = 120.0


def set_env(build):
    """The binaries of `build` unless the environment names others (see docs/testing.md)."""
    root = os.path.dirname(os.path.dirname(HERE))  # tests/integration -> the source tree
    defaults = {
        "EDDY_NODE": os.path.join(build, "eddy-node"),
        "EDDY_COORDINATOR_BIN": os.path.join(build, "eddy-coordinator"),
        "EDDY_PROTO_DIR": os.path.join(root, "proto"),
        "EDDY_METRICS_LISTEN": "127.0.0.1:0",
    }
    for k, v in defaults.items():
        os.environ.setdefault(k, v)


class Soak:
    """One run: the cluster of a ReplicationFaultTest (its helpers and checker, reused) and
    one workload for the whole run."""

    FAULTS = ["kill9_leader", "sigstop_leader", "kill9_follower", "etcd_restart",
              "kill9_coordinator"]

    def __init__(self, duration_s, seed, faults=None):
        import test_faults as F
        self.F = F
        self.t = F.ReplicationFaultTest("test_kill9_leader")
        self.t.setUp()
        self.duration_s = duration_s
        self.fault_names = faults or self.FAULTS
        self.seed = seed
        self.results = []  # (fault, first ack s, longest gap s, replicated again s)
        self.maps = []     # (fault, the partition map once its repair is done)

    def state_ids(self):
        return {n for n in self.cl.nodes if n.startswith("state-")}

    def first_ack_after(self, t0):
        h = self.t.history
        return self.F.poll_until(lambda: next((t for t in h.ack_times if t > t0), None),
                                 WAIT_S, interval=0.05, what="a write acknowledged again")

    def longest_gap(self, t0, t1):
        """The longest stretch in [t0, t1] without an acknowledgement."""
        with self.t.history.lock:
            ts = [t for t in self.t.history.ack_times if t0 <= t <= t1]
        edges = [t0] + ts + [t1]
        return max(b - a for a, b in zip(edges, edges[1:]))

    # ---- faults: each injects, waits for the first ack, then repairs -----------------------

    def kill9_then_restart(self, victim):
        """kill -9 of `victim`; once writes are acknowledged again, restarted on its data."""
        node = self.cl.nodes[victim]
        t0 = time.monotonic()
        node.kill9()
        first = self.first_ack_after(t0 + 0.5)
        node.start()
        return victim, t0, first

    def kill9_leader(self):
        return self.kill9_then_restart(self.t.leader_of_most(self.cl))

    def sigstop_leader(self):
        victim = self.t.leader_of_most(self.cl)
        node = self.cl.nodes[victim]
        t0 = time.monotonic()
        os.kill(node.proc.pid, signal.SIGSTOP)
        try:
            first = self.first_ack_after(t0 + 0.5)
            # past its lease: its partitions have new leaders by now
            self.F.poll_until(lambda: victim not in self.cl.assignment()["owners"], WAIT_S,
                              interval=0.1, what=f"{victim}'s partitions led by others")
        finally:
            os.kill(node.proc.pid, signal.SIGCONT)
        return victim, t0, first

    def kill9_follower(self):
        m = self.cl.assignment()
        return self.kill9_then_restart(
            min(sorted(self.state_ids()), key=lambda n: m["owners"].count(n)))

    def etcd_restart(self):
        t0 = time.monotonic()
        self.cl.etcd.kill9()
        time.sleep(1.0)
        self.cl.etcd.restart()
        return "etcd", t0, self.first_ack_after(t0 + 0.5)

    def kill9_coordinator(self):
        c = self.cl.coordinators[0]
        t0 = time.monotonic()
        c.kill9()
        first = self.first_ack_after(t0 + 0.5)
        c.start()
        self.F.poll_until(lambda: self.cl.leader() is not None, WAIT_S, interval=0.1,
                          what="a leading coordinator")
        return "coordinator", t0, first

    # ---- the run ----------------------------------------------------------------------------

    def run(self):
        F = self.F
        faults = [getattr(self, name) for name in self.fault_names]
        self.cl = self.t.cluster()
        self.maps.append(("start", self.cl.assignment()))
        ingest = [self.cl.nodes["ingest-1"], self.cl.nodes["ingest-2"]]
        w = F.Workload(ingest, self.seed, self.t.history)
        start = time.monotonic()
        w.start()
        verdict = "FAIL"
        try:
            time.sleep(SETTLE_S)
            i = 0
            while time.monotonic() - start < self.duration_s:
                fault = faults[i % len(faults)]
                i += 1
                who, t0, first = fault()
                self.maps.append((fault.__name__ + ":" + who, self.cl.assignment()))
                self.assert_alive()
                self.t.wait_replicated(self.cl, self.state_ids(), timeout=WAIT_S)
                t_repl = time.monotonic()
                time.sleep(SETTLE_S)
                gap = self.longest_gap(t0 - 1.0, time.monotonic())
                r = (fault.__name__, who, first - t0, gap, t_repl - t0)
                self.results.append(r)
                print(f"[{time.monotonic() - start:6.1f}s] {r[0]:<18} {who:<12} first ack "
                      f"after {r[2]:5.2f}s, longest gap {r[3]:5.2f}s, 2 copies again after "
                      f"{r[4]:5.2f}s", flush=True)
        finally:
            w.stop()
        h = self.t.history
        acked = len({e["eventId"] for e in h.acked})
        print(f"faults {len(self.results)}, acknowledged {acked} events "
              f"({len(h.ack_times)} batches), unknown outcome {len(h.unknown)} events, "
              f"{time.monotonic() - start:.0f}s of writes", flush=True)
        self.assert_alive()
        self.short_partitions(h)
        try:
            self.t.check(self.cl, h)
            verdict = "PASS"
            print("checker: PASS (lost 0: every acknowledged event present once; counts and "
                  "TopProducts within [acknowledged, acknowledged + unknown])", flush=True)
        except AssertionError as e:
            print(f"checker: FAIL: {e}", flush=True)
            self.keep_logs()
        self.summary()
        return verdict == "PASS"

    def assert_alive(self):
        """Every state node runs (one that exited by itself, e.g. 75 on a refused write,
        would go unnoticed by wait_replicated, which only asks for 2 copies on the others)."""
        for nid in sorted(self.state_ids()):
            rc = self.cl.nodes[nid].proc.poll()
            if rc is not None:
                raise AssertionError(f"{nid} exited by itself rc={rc}\n"
                                     f"{self.cl.nodes[nid].log_tail()}")

    def short_partitions(self, h):
        """Before the checker (whose re-send puts lost events back): the partitions with a
        user counted below its acknowledged events, and the map's history of them."""
        acked = {}
        for e in h.acked:
            acked[e["userId"]] = acked.get(e["userId"], 0) + 1
        node = self.cl.nodes["ingest-1"]
        short = {}
        for u, n in sorted(acked.items()):
            got = self.F.poll_until(lambda: self.t._user_total(node, u), 30, interval=0.1,
                                    what=f"counts of {u}")
            if got < n:
                p = self.F.L.user_partition(u, self.F.P)
                short.setdefault(p, []).append((u, got, n))
        for p, us in sorted(short.items()):
            missing = sum(n - got for _, got, n in us)
            print(f"partition {p}: {missing} acknowledged events missing over {len(us)} "
                  f"users; its map after each fault: "
                  f"{[(f, m['replicas'][p], m['epochs'][p]) for f, m in self.maps]}",
                  flush=True)

    def keep_logs(self):
        """Copy the logs of the processes' last runs (a restart starts a new one) to a new
        directory that stays, for the diagnosis of a FAIL."""
        d = tempfile.mkdtemp(prefix="eddy-soak-logs-")
        for name, p in [*self.cl.nodes.items(),
                        *((c.id, c) for c in self.cl.coordinators)]:
            if p.log_path and os.path.exists(p.log_path):
                shutil.copy(p.log_path, os.path.join(d, f"{name}.log"))
        print(f"logs of the last runs kept in {d}", flush=True)

    def summary(self):
        by = {}
        for name, _, first, gap, repl in self.results:
            by.setdefault(name, []).append((first, gap, repl))
        print("fault              n  first ack max  longest gap max  2 copies again max")
        for name, rs in by.items():
            print(f"{name:<18} {len(rs):<2} {max(r[0] for r in rs):12.2f}s "
                  f"{max(r[1] for r in rs):15.2f}s {max(r[2] for r in rs):18.2f}s")

    def close(self):
        self.t.doCleanups()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=300,
                    help="seconds of faults (the last one's repair may run past it; 300)")
    ap.add_argument("--seed", type=int, default=100, help="the workload's seed (100)")
    ap.add_argument("--build", default="build",
                    help="the build directory with eddy-node and eddy-coordinator (build)")
    ap.add_argument("--faults", default=",".join(Soak.FAULTS),
                    help="the faults, in turn (comma list; default: all of them)")
    a = ap.parse_args()
    faults = a.faults.split(",")
    unknown = set(faults) - set(Soak.FAULTS)
    if unknown:
        ap.error(f"unknown faults {sorted(unknown)}; known: {Soak.FAULTS}")
    set_env(os.path.abspath(a.build))
    s = Soak(a.duration, a.seed, faults)
    try:
        ok = s.run()
    finally:
        s.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
