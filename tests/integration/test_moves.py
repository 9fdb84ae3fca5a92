"""Live partition moves (docs/design.md §7) on a real cluster: etcd, eddy-coordinator, state and
ingest eddy-node processes on loopback, a writer ingesting continuously the whole time.

- scale out: a third state node joins; partitions move to it live (checkpoint stream, log
  tail, flip, final tail); afterwards every acknowledged event is counted exactly once,
  per user window, and the write pause of every move is measured (printed);
- drain: `eddy drain` empties a state node under ingest, with the same assertions;
- load balance: two hot partitions on one node, the other idle: the coordinator swaps one
  of them with a cold partition of the other node (shares of partitions unchanged), once;
- crash mid-move: kill -9 of the target while it copies (not restarted: the move is
  cancelled, the partition stays with its source); kill -9 and restart (same id and data)
  of the source while the target copies, of the source after the flip and of the target
  after the flip; nothing acknowledged is lost and every partition ends with one owner.
- between the flip and the final tail (held open by test hooks, EDDY_TEST_PAUSE_AT): the
  target's forwarder delivers the copy's OUTBOX rows, and nothing of its own enters the
  partition's log before the takeover (it took the final tail's first seq: an event lost).

Needs EDDY_NODE, EDDY_COORDINATOR_BIN, EDDY_CLI and Debian's etcd-server.
"""
import collections
import json
import re
import sys
import threading
import time
import unittest

import grpc

import eddylib as L
from eddylib import poll_until

P = 16
TTL_S = 2
NODE_ARGS = ["--idle-timeout", "0", "--checkpoint-interval", "2s",
             "--checkpoint-min-pause", "500ms", "--route-retries", "30"]


def ev(eid, user, ts, kind="view", product="p-001", category="books"):
    return {"eventId": eid, "userId": user, "sessionId": "s-" + user, "timestamp": ts,
            "eventType": kind, "productId": product, "category": category, "brand": "orbit",
            "price": 9.5}


def coord_addr(c):
    return f"127.0.0.1:{c.port}"


class Writer:
    """Ingests batches of new events through one ingest node until stopped; a batch that
    fails is sent again (same event ids: dedup makes it exactly once) until acknowledged.
    `acked` holds every acknowledged event."""

    def __init__(self, test, node, users, t0, batch=40):
        self.test, self.node, self.users, self.t0, self.batch = test, node, users, t0, batch
        self.acked = []
        self.failures = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error = None

    def _run(self):
        i = 0
        try:
            while not self.stop.is_set():
                evs = []
                for _ in range(self.batch):
                    u = self.users[i % len(self.users)]
                    kind = "purchase" if i % 11 == 0 else "view"
                    evs.append(ev(f"w-{i}", u, self.t0 + i * 10, kind=kind,
                                  product=f"p-{i % 23:03d}"))
                    i += 1
                while True:
                    try:
                        r = self.node.ingest(evs, timeout=30)
                        if list(r.rejected):
                            raise AssertionError(f"rejected: {list(r.rejected)[:3]}")
                        if r.late:  # times only grow: no window of theirs can be closed
                            raise AssertionError(f"{r.late} late events in batch {evs[0]['eventId']}")
                        break
                    except grpc.RpcError as e:
                        self.failures += 1
                        if self.failures > 200:
                            raise AssertionError(f"ingest keeps failing: {e}")
                        time.sleep(0.05)
                self.acked.extend(evs)
        except BaseException as e:  # reported by join()
            self.error = e

    def start(self):
        self.thread.start()
        return self

    def wait_for(self, n, timeout=30):
        poll_until(lambda: len(self.acked) >= n or self.error, timeout,
                   what=f"{n} events acknowledged")

    def join(self):
        self.stop.set()
        self.thread.join(60)
        if self.error:
            raise self.error
        return self.acked


class MovesTestCase(unittest.TestCase):
    def setUp(self):
        L.require_node()
        L.require_coordinator()
        L.require_etcd()
        self._cl = None

    def tearDown(self):
        # before the cleanups remove the processes and their logs: a failed test shows
        # the cluster as it was (each node's log's end: L.Cluster.add_node)
        if self._cl is not None and L.test_failed(self):
            self.dump(self._cl)

    def cluster(self, coord_args=(), **kw):
        shared = L.temp_dir(self, prefix="eddy-it-moves-ckp-")
        kw["node_args"] = kw.get("node_args", NODE_ARGS) + ["--checkpoint-dir", shared]
        cl = L.Cluster(self, partitions=P, ttl_s=TTL_S, **kw)
        c = L.start_coordinator(self, cl.etcd.url, "c1", cluster=cl.name,
                                args=["--partitions", str(P), "--lease-ttl", f"{TTL_S}s",
                                      "--settle", "100ms", "--max-moves", "2", *coord_args])
        cl.coordinators.append(c)
        poll_until(lambda: cl.leader() is not None, 10, what="a leading coordinator")
        self._cl = cl
        return cl

    def under_load(self, prefix, nodes, coord_args=(), env=None, **kw):
        """A cluster whose state nodes `nodes` (with `env` added to their environment) share
        the partitions, an ingest node and a Writer that has 1,000 events acknowledged:
        (cluster, front, writer)."""
        cl = self.cluster(coord_args=coord_args, **kw)
        for s in nodes:
            cl.add_node(s, "state", env=env)
        self.wait_settled(cl, set(nodes))
        front = cl.add_node("i1", "ingest")
        w = Writer(self, front, [f"{prefix}-{i:03d}" for i in range(64)],
                   L.now_ms() - 600_000).start()
        w.wait_for(1000)
        return cl, front, w

    @staticmethod
    def wait_phase(cl, phase):
        """Until a move record is in 'phase' (polled every 2 ms: phases can be short); that
        record."""
        def reached():
            recs = [json.loads(v) for v in cl.etcd.get_prefix(cl.key("moves/")).values()]
            return next((r for r in recs if r["phase"] == phase), None)
        return poll_until(reached, 30, interval=0.002, what=f"a move in phase {phase}")

    def no_moves(self, cl):
        return not cl.etcd.get_prefix(cl.key("moves/"))

    def wait_settled(self, cl, owners, timeout=60):
        """The map balanced over `owners` and no move record left."""
        def ok():
            m = cl.assignment()
            if m is None or set(m["owners"]) != set(owners) or not self.no_moves(cl):
                return None
            counts = [m["owners"].count(o) for o in owners]
            return m if max(counts) - min(counts) <= 1 else None
        return poll_until(ok, timeout, interval=0.1, what=f"moves done, map over {owners}")

    @staticmethod
    def dump(cl):
        """The state of the cluster and the logs' ends, for a failure's diagnosis."""
        print("\nmoves:", cl.etcd.get_prefix(cl.key("moves/")), "\nmap:", cl.assignment(),
              file=sys.stderr)
        for c in cl.coordinators:
            print(f"--- coordinator {c.id}\n{c.log_tail(30)}", file=sys.stderr)

    def assert_exactly_once(self, front, acked):
        """Every acknowledged event counted once: overall, and per user per window."""
        want = L.Expect(acked, partitions=P)
        seen = []

        def all_visible():
            seen.append(self._total(front))
            return seen[-1] == len(acked)
        users = sorted({e["userId"] for e in acked})
        try:
            poll_until(all_visible, 30, what=f"{len(acked)} acknowledged events visible")
        except AssertionError as e:
            late = front.stub.EventCounts(L.pb().EventCountsRequest(include_open=True),
                                          timeout=10).late_events
            # per partition: to compare with the nodes' "checkpoint written" and "partition
            # restored from checkpoint" lines (events=, META's applied events) of a handover
            per_part = sorted(collections.Counter(L.user_partition(e["userId"], P)
                                                  for e in acked).items())
            raise AssertionError(f"{e}: counted {seen[-1]} of {len(acked)} ({late} late); users "
                                 f"whose windows differ: {self._differing(front, want, users)}; "
                                 f"acknowledged per partition: {per_part}") from None
        for u in users[:: max(1, len(users) // 8)]:
            self.assertEqual(self._user_windows(front, u), self._expected_windows(want, u),
                             f"per-window counts of {u}")

    @staticmethod
    def _user_windows(front, user):
        r = front.stub.EventCounts(L.pb().EventCountsRequest(user_id=user, include_open=True),
                                   timeout=10)
        return {w.window_start_ms: L.counts_of_pb(w.counts) for w in r.windows}

    @staticmethod
    def _expected_windows(want, user):
        return {ws: c for ws, _, c, _ in want.windows(user=user, include_open=True)}

    def _differing(self, front, want, users):
        """(user, partition, expected windows, counted windows) of every user whose windows
        differ from the acknowledged events': where a loss is."""
        out = []
        for u in users:
            got, exp = self._user_windows(front, u), self._expected_windows(want, u)
            if got != exp:
                out.append((u, L.user_partition(u, P),
                            {ws: c for ws, c in exp.items() if got.get(ws) != c},
                            {ws: c for ws, c in got.items() if exp.get(ws) != c}))
        return out

    @staticmethod
    def _total(front):
        try:
            return L.total_events(front.stub)
        except grpc.RpcError:
            return None

    def pauses(self, node):
        """(count, sum) of eddy_move_pause_seconds and the count of
        eddy_move_duration_seconds on `node`."""
        port = L.metrics_port_of(node)
        s = L.scrape_samples(f"127.0.0.1:{port}")
        return (s.get("eddy_move_pause_seconds_count", 0), s.get("eddy_move_pause_seconds_sum", 0),
                s.get("eddy_move_duration_seconds_count", 0))

    def report(self, what, node, moved):
        n, total, durations = self.pauses(node)
        self.assertEqual(n, moved, f"{what}: one pause per partition moved into {node.id}")
        self.assertEqual(durations, moved)
        print(f"\n{what}: {moved} partitions moved into {node.id}; write pause mean "
              f"{1000 * total / max(n, 1):.1f} ms", file=sys.stderr)


class ScaleOutTest(MovesTestCase):
    def test_add_state_node_under_ingest(self):
        cl = self.cluster()
        for s in ("s1", "s2"):
            cl.add_node(s, "state")
        before = self.wait_settled(cl, {"s1", "s2"})
        front = cl.add_node("i1", "ingest")
        users = [f"u-{i:03d}" for i in range(96)]
        w = Writer(self, front, users, L.now_ms() - 600_000).start()
        w.wait_for(2000)
        cl.add_node("s3", "state")
        after = self.wait_settled(cl, {"s1", "s2", "s3"})
        w.wait_for(len(w.acked) + 400)  # writes go on after the moves
        acked = w.join()
        moved = [p for p in range(P) if after["owners"][p] == "s3"]
        self.assertEqual(len(moved), P // 3, after)
        for p in moved:
            self.assertEqual(after["epochs"][p], before["epochs"][p] + 1, f"partition {p}")
        self.assert_exactly_once(front, acked)
        self.report("scale out", cl.nodes["s3"], len(moved))
        log = cl.nodes["s3"].log_text()
        self.assertIn('msg="move: checkpoint loaded"', log)
        # the sources deleted their copies once s3 had checkpointed
        def deleted():
            logs = "".join(cl.nodes[s].log_text() for s in ("s1", "s2"))
            return logs.count('msg="partition copy deleted"') >= len(moved) or None
        poll_until(deleted, 20, what="sources deleted the moved partitions")


class DrainTest(MovesTestCase):
    def test_drain_under_ingest(self):
        cl = self.cluster()
        for s in ("s1", "s2", "s3"):
            cl.add_node(s, "state")
        self.wait_settled(cl, {"s1", "s2", "s3"})
        front = cl.add_node("i1", "ingest")
        w = Writer(self, front, [f"d-{i:03d}" for i in range(96)], L.now_ms() - 600_000).start()
        w.wait_for(1500)
        coord = cl.coordinators[0]
        # moves into s1 and s3 so far (the cluster's start may have moved some already)
        before = sum(self.pauses(cl.nodes[s])[0] for s in ("s1", "s3"))
        rc, out, err = L.run_cli(front.endpoint, "--coordinator", coord_addr(coord), "-o", "json",
                                 "drain", "s2")
        self.assertEqual(rc, 0, err)
        info = json.loads(out)
        self.assertTrue(info["draining"] and info["registered"])
        self.assertGreater(info["partitions_owned"], 0)
        after = self.wait_settled(cl, {"s1", "s3"})
        self.assertNotIn("s2", after["owners"])
        w.wait_for(len(w.acked) + 400)
        acked = w.join()
        self.assert_exactly_once(front, acked)
        moved = sum(self.pauses(cl.nodes[s])[0] for s in ("s1", "s3")) - before
        # every partition s2 led moved live; with R = 2 the promotions a drain leaves may
        # also move one surplus leader between s1 and s3
        self.assertGreaterEqual(moved, info["partitions_owned"])
        self.assertLessEqual(moved, info["partitions_owned"] + 2)
        st = json.loads(L.run_cli(front.endpoint, "--coordinator", coord_addr(coord), "-o",
                                  "json", "status")[1])
        s2 = next(n for n in st["nodes"] if n["id"] == "s2")
        self.assertEqual((s2["partitions_owned"], s2["draining"]), (0, True))


class LoadBalanceTest(MovesTestCase):
    def test_hot_partitions_are_spread(self):
        cl = self.cluster(coord_args=["--load-rebalance-interval", "1s", "--load-min-rate", "20"],
                          node_args=NODE_ARGS + ["--load-interval", "300ms"])
        for s in ("s1", "s2"):
            cl.add_node(s, "state")
        m0 = self.wait_settled(cl, {"s1", "s2"})
        hot = [p for p in range(P) if m0["owners"][p] == "s1"][:2]
        users = L.users_in_partition(hot[0], P, 6) + L.users_in_partition(hot[1], P, 6)
        users = [u for pair in zip(users[:6], users[6:]) for u in pair]  # alternate: equal rates
        front = cl.add_node("i1", "ingest")
        w = Writer(self, front, users, L.now_ms() - 600_000).start()

        def spread():
            m = cl.assignment()
            return m if m["owners"][hot[0]] != m["owners"][hot[1]] and self.no_moves(cl) else None
        m1 = poll_until(spread, 60, interval=0.1, what="the two hot partitions on two nodes")
        for node in ("s1", "s2"):  # the shares of partitions did not change
            self.assertEqual(m1["owners"].count(node), P // 2)
        log = cl.coordinators[0].log_text()
        self.assertEqual(log.count('msg="moving a partition for load balance"'), 2, log[-3000:])

        def both_busy():  # eddy status shows the published rates: each node carries one now
            rc, out, _ = L.run_cli(front.endpoint, "--coordinator", coord_addr(cl.coordinators[0]),
                                   "-o", "json", "status")
            nodes = {n["id"]: n for n in json.loads(out)["nodes"]} if rc == 0 else {}
            rates = [nodes[s]["events_per_second"] for s in ("s1", "s2") if s in nodes]
            return rates if len(rates) == 2 and min(rates) > 0 else None
        poll_until(both_busy, 10, interval=0.1, what="events/s of both state nodes in eddy status")
        w.wait_for(len(w.acked) + 1500)  # more intervals of rates: balanced now, no flapping
        acked = w.join()
        self.assertEqual(cl.coordinators[0].log_text().count(
            'msg="moving a partition for load balance"'), 2)
        self.assert_exactly_once(front, acked)


class CrashMidMoveTest(MovesTestCase):
    def test_target_killed_while_copying(self):
        # a slow copy: the target stays in "copy" long enough to be killed there
        cl, front, w = self.under_load("k", ("s1", "s2"))
        s3 = cl.add_node("s3", "state", args=["--move-lag", "0"])
        poll_until(lambda: any(json.loads(v)["to"] == "s3"
                               for v in cl.etcd.get_prefix(cl.key("moves/")).values()) or None,
                   20, interval=0.01, what="a move to s3")
        s3.kill9()
        # the lease expires, the leader cancels the move: s1 and s2 keep everything
        m = self.wait_settled(cl, {"s1", "s2"}, timeout=TTL_S * 10)
        self.assertNotIn("s3", m["owners"])
        w.wait_for(len(w.acked) + 300)
        acked = w.join()
        self.assert_exactly_once(front, acked)

    def crash(self, victim, phase):
        """s1 and s3 hold everything (R = 2, min-insync 2) and take writes; s2 joins; when a
        move to s2 reaches 'phase', kill -9 the 'victim' ("source": the move's, s1 or s3;
        "target": s2) and start it again with the same id and data, as a StatefulSet pod
        would be. The moves complete and every acknowledged event is counted exactly once.
        (With one state node first, as before, its writes were acknowledged with one copy
        while s2 caught up, which a kill -9 of it may lose: R = 2 with min-insync 1.)"""
        cl, front, w = self.under_load("f", ("s1", "s3"), ["--max-moves", "1"])
        cl.add_node("s2", "state")
        move = self.wait_phase(cl, phase)
        node = cl.nodes[move["from"] if victim == "source" else move["to"]]
        node.kill9()
        node.start()
        m = self.wait_settled(cl, {"s1", "s2", "s3"}, timeout=60)
        self.assertEqual(set(m["owners"]), {"s1", "s2", "s3"})
        w.wait_for(len(w.acked) + 300)
        acked = w.join()
        self.assert_exactly_once(front, acked)

    def test_source_killed_while_copying_and_restarted(self):
        # the restarted source has no freeze: the target's next FetchLog is refused
        # (ABORTED) and it copies again
        self.crash("source", "copy")

    def test_source_killed_after_flip_and_restarted(self):
        # the target keeps asking for the final tail until the source answers again
        self.crash("source", "flipped")

    def test_target_killed_after_flip_and_restarted(self):
        # the restarted target finds the record "flipped" and fetches the final tail again
        self.crash("target", "flipped")


class SourceStopsMidMoveTest(MovesTestCase):
    def test_source_sigterm_after_flip_then_back(self):
        """The source of a flipped move stops gracefully (SIGTERM: last checkpoints into the
        shared directory, lease revoked): the target gets the final tail during the source's
        shutdown grace or, once the source is gone, restores its newer checkpoint instead;
        nothing acknowledged is lost either way. When the source
        comes back with its old data, partitions move back to it live and the stale copies
        of the others are deleted once their owner has checkpointed past them (the copies
        of those it follows with R = 2 stay: they are the replicated log's)."""
        # s1 alone first (R = 2 with min-insync 1, so s1 alone acknowledges)
        cl, front, w = self.under_load("g", ("s1",),
                                       ["--max-moves", "1", "--min-insync-replicas", "1"],
                                       node_args=NODE_ARGS + ["--move-final-wait", "1s"])
        cl.add_node("s2", "state")
        self.wait_phase(cl, "flipped")
        cl.nodes["s1"].stop()
        self.wait_settled(cl, {"s2"}, timeout=TTL_S * 10)
        w.wait_for(len(w.acked) + 300)
        acked = w.join()
        self.assert_exactly_once(front, acked)

        cl.nodes["s1"].start()
        m = self.wait_settled(cl, {"s1", "s2"}, timeout=60)
        elsewhere = [p for p in range(P) if m["owners"][p] == "s2"]
        # with replication s1 follows some of them: those copies are the replicated log's
        # and stay; the others are stale
        stale = [p for p in elsewhere if "s1" not in m["replicas"][p]]
        following = [p for p in elsewhere if "s1" in m["replicas"][p]]

        def cleaned():
            log = cl.nodes["s1"].log_text()
            return all(f'msg="partition copy deleted" partition={p} ' in log
                       for p in stale) or None
        poll_until(cleaned, 30, interval=0.2, what="s1's stale copies deleted")
        log = cl.nodes["s1"].log_text()
        for p in following:
            self.assertNotIn(f'msg="partition copy deleted" partition={p} ', log)
        self.assert_exactly_once(front, acked)


class LostEventAfterFlipTest(MovesTestCase):
    def test_forwarder_runs_between_flip_and_final_tail(self):
        """A move's target owns the partition from the flip and takes it over after the final
        tail. Its forwarder delivers the copy's OUTBOX rows meanwhile; their OUTBOX_DONE must
        not go into the partition's log before the takeover: it would take the seq of the
        final tail's first record, which the tail then skips, an acknowledged event lost
        (SourceStopsMidMoveTest, 1 run in 40-100, before the fix). Test hooks hold the
        window open (EDDY_TEST_PAUSE_AT, docs/testing.md):
        - the target stops tailing for 3 s once it has written "ready" (move-ready): the
          source acknowledges events the copy lacks until the flip, and the target's
          forwarder runs after the flip, before the final tail;
        - the sources' forwarders run a round every 20 s only (forward): the copy holds
          OUTBOX rows for product partitions the other source owns, which accepts them
          from the target, and the source's log after the copy's end holds events, no
          OUTBOX_DONE of its own (whose loss would go unseen).
        R = 1: the target copies the partition (a follower would replicate it)."""
        cl, front, w = self.under_load("x", ("s1", "s2"),
                                       ["--max-moves", "1", "--replication-factor", "1"],
                                       env={"EDDY_TEST_PAUSE_AT": "forward:20000"})
        s3 = cl.add_node("s3", "state", env={"EDDY_TEST_PAUSE_AT": "move-ready:3000"})
        poll_until(lambda: 'msg="move in: serving"' in s3.log_text() or None, 30, interval=0.05,
                   what="the first move into s3 served")
        w.wait_for(len(w.acked) + 200)
        acked = w.join()
        self.assert_exactly_once(front, acked)
        # the window was open: the target's forwarder delivered the moved partition's rows
        # before the takeover, and their removal was refused (sent again after it)
        log = s3.log_text()
        moved = re.search(r'msg="EDDY_TEST_PAUSE_AT: pausing" phase=move-ready partition=(\d+)',
                          log)
        self.assertIsNotNone(moved, "s3 paused after ready")
        self.assertRegex(log, r'msg="delivered stage-2 records not removed; sent again later" '
                              rf'partition={moved[1]} records=[1-9]')

if __name__ == "__main__":
    unittest.main()
