"""Reads from followers (issue 13, item 6): a map with R = 2 written by hand (s1 leads
every partition, s2 follows), two state nodes and two ingest nodes on loopback with a real
etcd, no coordinator (so a stopped leader is not replaced).

- with allow_stale the follower answers (staleness.from_follower) and, once caught up,
  with the leader's answer; without it the leader answers (from_follower false); an
  ingest node with --read-from-followers sends every read to the follower; the CLI's
  --allow-stale (recommend, profile, counts, top) shows who answered;
- TopProducts and the counts of all users with allow_stale: every partition answered once
  by the follower, the same totals as the leaders', also while the leader is stopped;
- SIGSTOP of the leader: allow_stale reads are still answered by the follower, reads
  without it fail; once the leader has been silent for --max-follower-lag-ms the follower
  refuses too (it is not used past its limit), and answers again after SIGCONT.

Needs EDDY_NODE, EDDY_COORDINATOR_BIN and Debian's etcd-server (see docs/testing.md).
"""
import signal
import time
import unittest

import grpc

import eddylib as L
from eddylib import poll_until

P = 4
EPOCH = 1
MAX_LAG_MS = 3000


def ev(eid, user, ts, product):
    return {"eventId": eid, "userId": user, "sessionId": "s-" + user, "timestamp": ts,
            "eventType": "view", "productId": product, "category": "books", "brand": "orbit",
            "price": 9.5}


class FollowerReadTest(unittest.TestCase):
    def setUp(self):
        L.require_node()
        L.require_coordinator()
        L.require_etcd()
        self.c = L.Cluster(self, partitions=P, ttl_s=2,
                           node_args=["--idle-timeout", "0", "--replica-lag-timeout", "2s",
                                      "--max-follower-lag-ms", f"{MAX_LAG_MS}ms",
                                      "--route-timeout", "1s", "--route-retries", "1"])
        c = self.c
        c.write_replicated_map(["s1", "s2"], epoch=EPOCH)
        self.s1 = c.add_node("s1")
        self.s2 = c.add_node("s2")
        self.i1 = c.add_node("i1", roles="ingest")
        self.i2 = c.add_node("i2", roles="ingest", args=["--read-from-followers"])
        for n in (self.s1, self.s2, self.i1, self.i2):
            n.wait_ready()
        self.addCleanup(self._cont)
        self.pb = L.pb()

    def _cont(self):
        if self.s1.proc is not None and self.s1.proc.poll() is None:
            self.s1.proc.send_signal(signal.SIGCONT)

    def profile(self, node, user, stale, timeout=5):
        return node.stub.GetUserProfile(
            self.pb.GetUserProfileRequest(user_id=user, allow_stale=stale), timeout=timeout)

    def ingest_200(self, tag):
        """200 views, 50 per partition (one user each), through i1; returns the users."""
        t0 = L.now_ms()
        users = [L.users_in_partition(p, P, prefix=f"u-{tag}")[0] for p in range(P)]
        events = [ev(f"{tag}{i}", users[i % P], t0 + i, f"p-{i % 7}") for i in range(200)]
        for k in range(0, len(events), 50):
            r = self.i1.ingest(events[k:k + 50])
            self.assertEqual((list(r.rejected), r.accepted), ([], 50))
        return users

    def test_follower_reads_and_a_stopped_leader(self):
        users = self.ingest_200("f")

        for u in users:
            leader = self.profile(self.i1, u, False)
            self.assertFalse(leader.staleness.from_follower)
            self.assertEqual(leader.profile.event_count, 50)

            # acknowledged means on the follower: its copy answers the same once it heard
            # the leader's log end (its next fetch)
            def caught_up():
                r = self.profile(self.i1, u, True)
                return r if r.staleness.from_follower and r.staleness.lag_records == 0 else None
            stale = poll_until(caught_up, 10, interval=0.05, what=f"{u} read from the follower")
            self.assertEqual(stale.profile, leader.profile)
            self.assertLess(stale.staleness.lag_ms, MAX_LAG_MS)
            # --read-from-followers: a request that does not say is a stale read
            self.assertTrue(self.profile(self.i2, u, False).staleness.from_follower)

        rec = self.i1.stub.Recommend(self.pb.RecommendRequest(user_id=users[0], allow_stale=True),
                                     timeout=5)
        self.assertTrue(rec.staleness.from_follower)
        rec = self.i1.stub.Recommend(self.pb.RecommendRequest(user_id=users[0]), timeout=5)
        self.assertFalse(rec.staleness.from_follower)
        counts = self.i1.stub.EventCounts(
            self.pb.EventCountsRequest(user_id=users[1], include_open=True, allow_stale=True),
            timeout=5)
        self.assertTrue(counts.staleness.from_follower)
        self.assertEqual(sum(w.counts.total for w in counts.windows), 50)

        # the CLI: eddy recommend/profile/counts --allow-stale
        if L.CLI:
            j = L.cli_json(self, self.i1.endpoint, "recommend", "--allow-stale", users[0])
            self.assertTrue(j["staleness"]["from_follower"], j)
            j = L.cli_json(self, self.i1.endpoint, "profile", users[0])
            self.assertFalse(j["staleness"]["from_follower"], j)
            rc, out, err = L.run_cli(self.i1.endpoint, "profile", "--allow-stale", users[0])
            self.assertEqual(rc, 0, err)
            self.assertIn("answered by a follower", out)
            j = L.cli_json(self, self.i1.endpoint, "counts", "--allow-stale", "--user",
                           users[1], "--include-open")
            self.assertTrue(j["staleness"]["from_follower"], j)

        # the leader stops answering (SIGSTOP: its connections stay open)
        expected = self.profile(self.i1, users[2], False).profile
        L.sigstop(self.s1.proc)
        stopped = time.monotonic()
        r = self.profile(self.i1, users[2], True)
        self.assertTrue(r.staleness.from_follower)
        self.assertEqual(r.profile, expected)
        with self.assertRaises(grpc.RpcError) as e:
            self.profile(self.i1, users[2], False, timeout=10)
        self.assertIn(e.exception.code(),
                      (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED))

        # past --max-follower-lag-ms since the leader's last answer the follower refuses
        worst = [0]

        def refused():
            try:
                r = self.profile(self.i1, users[2], True, timeout=10)
            except grpc.RpcError:
                return True
            self.assertTrue(r.staleness.from_follower)
            worst[0] = max(worst[0], r.staleness.lag_ms)
            return False
        poll_until(refused, 20, interval=0.1, what="the follower refusing past its lag limit")
        silent_ms = (time.monotonic() - stopped) * 1000
        self.assertGreaterEqual(silent_ms, MAX_LAG_MS - 1000)  # a fetch wait before the stop
        self.assertGreater(worst[0], 500, "the lag reported did not grow while stopped")
        self.assertLessEqual(worst[0], MAX_LAG_MS)

        # the leader is back: the follower hears from it and answers again
        self.s1.proc.send_signal(signal.SIGCONT)
        r = poll_until(lambda: (lambda x: x if x.staleness.from_follower else None)(
            self.profile(self.i1, users[2], True)), 15, interval=0.1,
            what="a stale read from the follower after SIGCONT")
        self.assertLess(r.staleness.lag_ms, MAX_LAG_MS)
        print(f"\nleader stopped: follower answered until {worst[0]} ms behind, refused after "
              f"{silent_ms:.0f} ms (--max-follower-lag-ms {MAX_LAG_MS})", flush=True)

    def top(self, node, stale, timeout=5):
        return node.stub.TopProducts(self.pb.TopProductsRequest(
            include_open=True, limit=100, allow_stale=stale), timeout=timeout)

    def all_counts(self, node, stale, timeout=5):
        return node.stub.EventCounts(self.pb.EventCountsRequest(
            include_open=True, allow_stale=stale), timeout=timeout)

    def test_global_reads_from_followers(self):
        """TopProducts and the counts of all users: every partition answered once, by a
        follower with allow_stale (the worst partition's staleness in the answer), also
        while the leader is stopped; without it by the leaders only."""
        users = self.ingest_200("g")

        def product_views(resp):
            return {p.product_id: p.counts.view for p in resp.products}

        # stage 2 reaches the product partitions after the acknowledgement
        leader_top = poll_until(
            lambda: (lambda t: t if sum(product_views(t).values()) == 200 else None)(
                self.top(self.i1, False)), 15, interval=0.1, what="TopProducts of 200 views")
        self.assertFalse(leader_top.staleness.from_follower)
        leader_counts = self.all_counts(self.i1, False)
        self.assertFalse(leader_counts.staleness.from_follower)
        self.assertEqual(sum(w.counts.total for w in leader_counts.windows), 200)

        # the follower's copy reaches the leader's answer (stage-2 records are visible on
        # the leader before its followers fetched them: wait for them, do not assume)
        def from_follower_equal(read, same):
            def once():
                r = read()
                return r if r.staleness.from_follower and same(r) else None
            return once
        top = poll_until(from_follower_equal(lambda: self.top(self.i1, True),
                                             lambda r: product_views(r) ==
                                             product_views(leader_top)),
                         10, interval=0.05, what="TopProducts from the follower, as the leader's")
        self.assertLess(top.staleness.lag_ms, MAX_LAG_MS)
        counts = poll_until(from_follower_equal(lambda: self.all_counts(self.i1, True),
                                                lambda r: list(r.windows) ==
                                                list(leader_counts.windows)),
                            10, interval=0.05, what="EventCounts from the follower, as the leader's")
        self.assertEqual(counts.late_events, leader_counts.late_events)
        # --read-from-followers: requests that do not say are stale reads
        self.assertTrue(self.top(self.i2, False).staleness.from_follower)
        self.assertTrue(self.all_counts(self.i2, False).staleness.from_follower)
        if L.CLI:
            j = L.cli_json(self, self.i1.endpoint, "top", "--allow-stale", "--include-open")
            self.assertTrue(j["staleness"]["from_follower"], j)
            j = L.cli_json(self, self.i1.endpoint, "counts", "--allow-stale", "--include-open")
            self.assertTrue(j["staleness"]["from_follower"], j)
            self.assertEqual(sum(w["counts"]["total"] for w in j["windows"]), 200)

        # the leader stops: the follower alone answers every partition with allow_stale;
        # without it the read fails
        L.sigstop(self.s1.proc)
        top = self.top(self.i1, True, timeout=10)
        self.assertTrue(top.staleness.from_follower)
        self.assertEqual(product_views(top), product_views(leader_top))
        counts = self.all_counts(self.i1, True, timeout=10)
        self.assertEqual(sum(w.counts.total for w in counts.windows), 200)
        def leader_only_fails():
            try:
                self.top(self.i1, False, timeout=10)
            except grpc.RpcError as e:
                return e.code()
            return None
        code = poll_until(leader_only_fails, 15, interval=0.1,
                          what="TopProducts without allow_stale failing")
        self.assertIn(code, (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED))
        self.s1.proc.send_signal(signal.SIGCONT)


if __name__ == "__main__":
    unittest.main()
