"""Eddy as a cluster: real etcd, eddy-coordinator and eddy-node processes (state and ingest
roles) on loopback, driven over gRPC.

- equivalence: one stream into `eddy-node --dev` and into 3 state + 2 ingest nodes gives
  the same answers, bit for bit (EventCounts, TopProducts, GetUserProfile, Recommend, the
  20 heaviest users' included, with 4 neighbours read per product among 30), also where
  the serving node lacks the partition of the stream's newest event;
- fencing: Apply with a stale epoch is refused (FAILED_PRECONDITION, nothing applied); a
  state node whose etcd session may have expired answers UNAVAILABLE and acknowledges
  again once etcd is back;
- a state node leaves (SIGTERM): its partitions are reassigned, ingest keeps working;
- coordinator failover (kill -9 of the leader) under continuous ingest: no lost or
  double-counted acknowledged event;
- etcd restart under running nodes and coordinator: a new state node joins and gets
  partitions, ingest through the existing ingest node works.

Needs EDDY_NODE, EDDY_COORDINATOR_BIN and Debian's etcd-server (see docs/testing.md).
"""
import json
import os
import random
import subprocess
import threading
import time
import unittest
import urllib.request

import grpc

import eddylib as L
from eddylib import poll_until

P = 16
TTL_S = 2
# --idle-timeout 0: watermarks move only with event time on both deployments, so the
# answers are a function of the events alone.
NODE_ARGS = ["--idle-timeout", "0"]


def ev(eid, user, ts, kind="view", product="p-001", category="books", brand="orbit", price=9.5):
    return {"eventId": eid, "userId": user, "sessionId": "s-" + user, "timestamp": ts,
            "eventType": kind, "productId": product, "category": category, "brand": brand,
            "price": price}


class ClusterTestCase(unittest.TestCase):
    def setUp(self):
        L.require_node()
        L.require_coordinator()
        L.require_etcd()

    def cluster(self, **kw):
        kw.setdefault("node_args", NODE_ARGS)
        return L.Cluster(self, partitions=P, ttl_s=TTL_S, **kw)

    def ingest_ok(self, node, events, timeout=30):
        r = node.ingest(events, timeout=timeout)
        self.assertEqual(list(r.rejected), [], f"rejections from {node.id}")
        self.assertEqual(r.accepted + r.duplicates, len(events), r)
        return r


# ---- equivalence ------------------------------------------------------------------------

class EquivalenceTest(ClusterTestCase):
    def assert_same(self, dev, cl, what):
        """The same message: for Recommend the same items in the same order for the same
        reasons, and the scores bit for bit (protobuf compares doubles exactly)."""
        self.assertEqual(type(dev), type(cl), what)
        if dev == cl:
            return
        if hasattr(dev, "items"):
            for a, b in zip(dev.items, cl.items):
                if a.score != b.score:
                    what += f" (first score apart: {a.product_id} {a.score!r} vs {b.score!r})"
                    break
        self.fail(f"{what}: --dev and cluster differ\n--dev:\n{dev}\ncluster:\n{cl}")

    def assert_same_recommend(self, dev, cl, what):
        """assert_same but for recommendation_id, which names each answer (unique)."""
        a, b = type(dev)(), type(cl)()
        a.CopyFrom(dev)
        b.CopyFrom(cl)
        a.ClearField("recommendation_id")
        b.ClearField("recommendation_id")
        self.assert_same(a, b, what)

    def test_dev_and_cluster_answer_the_same(self):
        pb = L.pb()
        events = L.generate(seed=23, n_users=40, n_products=30, n_categories=4, n_events=3000)
        # 4 neighbours read per product: lists truncated as the pairs arrived (before
        # co-occurrence pairs were kept whole) made the cluster's Recommend differ
        args = [*NODE_ARGS, "--max-neighbours", "4"]
        dev = L.start_node(self, args=["--partitions", str(P), *args])

        cl = self.cluster(node_args=args)
        cl.add_coordinator("c1")
        for s in ("s1", "s2", "s3"):
            cl.add_node(s, "state")
        amap = cl.wait_assignment({"s1", "s2", "s3"})
        ingest = [cl.add_node("i1", "ingest"), cl.add_node("i2", "ingest")]
        users = sorted({e["userId"] for e in events})
        counts = {}
        for e in events:
            counts[e["userId"]] = counts.get(e["userId"], 0) + 1
        heaviest = sorted(counts, key=lambda u: (-counts[u], u))[:20]
        compared = set(users[:12]) | set(heaviest)

        # The stream's newest event, ten minutes after the rest, goes to a partition of the
        # node that serves the fewest compared users: the others answer them holding only
        # older events. Before each list was scored at a reference of its own, Recommend
        # decayed every list to the serving node's newest event time, and such a node's
        # answers differed from --dev's in the last bits (1.2e-6 relative was seen).
        def served_by(m):
            return {u: m["owners"][L.user_partition(u, P)] for u in compared}
        serving = served_by(amap)
        quiet = min(("s1", "s2", "s3"), key=lambda s: (list(serving.values()).count(s), s))
        p_newest = amap["owners"].index(quiet)
        newest = max(e["timestamp"] for e in events) + 600000
        seen = next(e for e in events if e["eventType"] == "view" and "price" in e)
        events.append(ev("newest", L.users_in_partition(p_newest, P, prefix="u-newest")[0],
                         newest, product=seen["productId"], category=seen["category"],
                         brand=seen.get("brand", ""), price=seen.get("price", 0)))

        for k, b in enumerate(L.batches(events, [250, 170, 330])):
            r = dev.ingest(b)
            self.assertEqual((r.accepted, r.duplicates, len(r.rejected)), (len(b), 0, 0))
            r = ingest[k % 2].ingest(b)  # alternate batches between the ingest nodes
            self.assertEqual((r.accepted, r.duplicates, len(r.rejected)), (len(b), 0, 0),
                             f"batch {k} via {ingest[k % 2].id}")
        # stage 2 (product popularity, windows, co-occurrence) of products owned elsewhere
        # is forwarded asynchronously: compare only once every OUTBOX is empty
        cl.wait_outbox_empty()

        # the condition holds on the map the answers come from (a late lease renewal may
        # have moved a leader since)
        amap = cl.assignment()
        serving = served_by(amap)
        behind = sorted(u for u, s in serving.items() if s != amap["owners"][p_newest])
        self.assertGreaterEqual(len(behind), 10, f"users served without the newest event: {behind}")
        self.assertTrue(set(behind) & set(heaviest), behind)
        for front in ingest:  # both ingest nodes answer the same
            d, c = dev.stub, front.stub
            for inc in (False, True):
                q = pb.EventCountsRequest(include_open=inc)
                self.assert_same(d.EventCounts(q, timeout=10), c.EventCounts(q, timeout=10),
                                 f"EventCounts include_open={inc}")
            for u in users[:10]:
                for inc in (False, True):
                    q = pb.EventCountsRequest(user_id=u, include_open=inc)
                    self.assert_same(d.EventCounts(q, timeout=10), c.EventCounts(q, timeout=10),
                                     f"EventCounts user={u} include_open={inc}")
            cats = sorted({e["category"] for e in events if e.get("category")})
            tops = [pb.TopProductsRequest(limit=1000), pb.TopProductsRequest(),
                    pb.TopProductsRequest(limit=1000, include_open=True)]
            tops += [pb.TopProductsRequest(category=c, limit=1000) for c in cats]
            tops += [pb.TopProductsRequest(category=cats[0], limit=3)]
            tops += [pb.TopProductsRequest(event_type=pb.EventType.Value("EVENT_TYPE_" + t.upper()),
                                           limit=1000) for t in L.TYPES]
            for q in tops:
                got_d = d.TopProducts(q, timeout=10)
                self.assertTrue(got_d.products or q.category == "", q)
                self.assert_same(got_d, c.TopProducts(q, timeout=10), f"TopProducts {q}")
            for u in users[:12]:
                q = pb.GetUserProfileRequest(user_id=u)
                self.assert_same(d.GetUserProfile(q, timeout=10), c.GetUserProfile(q, timeout=10),
                                 f"GetUserProfile {u}")
            products = sorted({e["productId"] for e in events if e.get("productId")})
            for n, u in enumerate(users[:12]):
                qs = [pb.RecommendRequest(user_id=u),
                      pb.RecommendRequest(user_id=u, max_recommendations=20,
                                          context=pb.Context(current_page="product",
                                                             current_product=products[n],
                                                             shopping_cart=[products[n + 5]]))]
                for q in qs:
                    rd, rc = d.Recommend(q, timeout=10), c.Recommend(q, timeout=10)
                    self.assertTrue(rd.items, f"no recommendations for {u}")
                    self.assert_same_recommend(rd, rc, f"Recommend {u} ctx={q.HasField('context')} "
                                                       f"via {front.id}, served by {serving[u]}")
            # cold start (unknown user) too
            q = pb.RecommendRequest(user_id="u-nobody")
            self.assert_same_recommend(d.Recommend(q, timeout=10), c.Recommend(q, timeout=10),
                                       "Recommend cold start")
            # the heaviest users, whose answers rest most on co-occurrence
            together = 0
            for u in heaviest:
                q = pb.RecommendRequest(user_id=u, max_recommendations=20)
                rd, rc = d.Recommend(q, timeout=10), c.Recommend(q, timeout=10)
                together += any(i.reason.startswith("viewed together") for i in rd.items)
                self.assert_same_recommend(rd, rc, f"Recommend {u} (heavy, via {front.id}, "
                                                   f"served by {serving[u]})")
            self.assertGreaterEqual(together, 15, "answers with co-occurrence neighbours")


# ---- fencing and the session rule -------------------------------------------------------

class FencingTest(ClusterTestCase):
    def test_stale_epoch_and_lost_session(self):
        cl = self.cluster()
        cl.add_coordinator("c1")
        s1 = cl.add_node("s1", "state")
        m1 = cl.wait_assignment({"s1"})
        self.assertEqual(set(m1["epochs"]), {1})
        s2 = cl.add_node("s2", "state")
        m2 = cl.wait_assignment({"s1", "s2"})
        front = cl.add_node("i1", "ingest")
        # a partition that moved to s2: epoch 2 now, s1 owned it at epoch 1
        p = next(q for q in range(P) if m2["owners"][q] == "s2" and m1["owners"][q] == "s1")
        self.assertEqual(m2["epochs"][p], 2)
        user = L.users_in_partition(p, P)[0]
        t0 = L.now_ms() - 600_000
        e1 = ev("fence-1", user, t0)

        # the stale epoch on the owner, and the old owner with either epoch: refused
        r = s2.apply(p, 1, [e1])
        self.assertEqual(r.code, 9, r)
        self.assertEqual(r.accepted, 0, r)
        self.assertEqual(r.owner_hint, "s2", r)
        for epoch in (1, 2):
            r = s1.apply(p, epoch, [e1])
            self.assertEqual(r.code, 9, f"old owner, epoch {epoch}: {r}")
            self.assertEqual(r.owner_hint, "s2", "the old owner points at the new one")
        # an event of a user from another partition, under an epoch this node does own:
        # refused as a whole (INVALID_ARGUMENT), not filed unfenced under its own partition
        other = next(q for q in range(P) if m2["owners"][q] == "s1")
        stray = ev("fence-stray", L.users_in_partition(other, P)[0], t0)
        r = s2.apply(p, 2, [ev("fence-ok", user, t0 + 5), stray])
        self.assertEqual((r.code, r.accepted), (3, 0), r)
        # nothing was applied anywhere
        with self.assertRaises(grpc.RpcError) as cm:
            front.stub.GetUserProfile(L.pb().GetUserProfileRequest(user_id=user), timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.assertEqual(L.total_events(front.stub), 0)

        # the current epoch on the owner: acknowledged, applied once
        r = s2.apply(p, 2, [e1])
        self.assertEqual((r.code, r.accepted, r.duplicates), (0, 1, 0), r)
        self.assertEqual(L.total_events(front.stub, user), 1)
        self.assertEqual(L.total_events(front.stub), 1)

        # etcd goes away: s2 stops acknowledging before its lease could have expired
        e2 = ev("fence-2", user, t0 + 1000)
        cl.etcd.kill9()
        killed = time.monotonic()
        r = poll_until(lambda: (lambda x: x if x.code == 14 else None)(s2.apply(p, 2, [e2])),
                       TTL_S * 2 + 5, interval=0.05, what="Apply answered UNAVAILABLE (14)")
        # the events offered while it still acknowledged were applied; note that
        refused_after = time.monotonic() - killed
        self.assertLess(refused_after, TTL_S, "acknowledged writes after the lease could expire")
        self.assertIn("etcd", r.message)
        # wait past the lease TTL: still refused, and refused for every partition it owns
        poll_until(lambda: time.monotonic() - killed > TTL_S + 0.5, TTL_S + 2, interval=0.1,
                   what="lease TTL passed")
        e3 = ev("fence-3", user, t0 + 2000)
        self.assertEqual(s2.apply(p, 2, [e3]).code, 14)
        # the ingest node cannot get it acknowledged either: UNAVAILABLE to the client
        with self.assertRaises(grpc.RpcError) as cm:
            front.ingest([e3], timeout=30)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE, cm.exception.details())
        # and it says so: readiness NOT_SERVING (liveness stays SERVING: restarting won't help)
        h = L.health_pb()

        def status(service):
            return s2.health.Check(h.HealthCheckRequest(service=service), timeout=5).status

        poll_until(lambda: status("readiness") == h.HealthCheckResponse.NOT_SERVING, 5,
                   what="s2 readiness NOT_SERVING without its etcd session")
        self.assertEqual(status("liveness"), h.HealthCheckResponse.SERVING)

        # etcd back on the same data dir and ports: s2 registers again and acknowledges
        cl.etcd.start()
        poll_until(lambda: status("readiness") == h.HealthCheckResponse.SERVING, 20,
                   what="s2 ready again once registered")

        def acked():
            m = cl.assignment()
            if m["owners"][p] != "s2":
                return None
            x = s2.apply(p, m["epochs"][p], [e3])
            return x if x.code == 0 else None

        r = poll_until(acked, 20, interval=0.1, what="s2 acknowledges again after etcd is back")
        self.assertEqual(r.accepted + r.duplicates, 1, r)
        poll_until(lambda: "s2" in cl.registered(), 10, what="s2 registered again")
        # the client's retry goes through; e3 counted once
        r = poll_until(lambda: front.ingest([e3], timeout=30), 20, what="ingest works again")
        self.assertEqual((r.accepted, r.duplicates), (0, 1), r)
        got = L.total_events(front.stub, user)
        self.assertIn(got, (2, 3), "e1, e3 and maybe e2 (acked before etcd was found gone)")
        self.assertEqual(L.total_events(front.stub), got)


# ---- a state node leaves -----------------------------------------------------------------

class NodeLeavesTest(ClusterTestCase):
    def test_sigterm_state_node_partitions_reassigned(self):
        cl = self.cluster()
        coord = cl.add_coordinator("c1")
        for s in ("s1", "s2", "s3"):
            cl.add_node(s, "state")
        before = cl.wait_assignment({"s1", "s2", "s3"})
        front = cl.add_node("i1", "ingest")
        users = [f"u-{i:03d}" for i in range(48)]
        t0 = L.now_ms() - 900_000
        first = [ev(f"a-{i}", u, t0 + i) for i, u in enumerate(users)]
        self.ingest_ok(front, first)
        self.assertEqual(L.total_events(front.stub), len(users))

        # eddy status agrees with etcd (table and JSON), through --coordinator
        if L.CLI and os.access(L.CLI, os.X_OK):
            st = self.cli_status(coord)
            self.assertEqual(st["leader_id"], "c1")
            self.assertEqual([p["owner"] for p in st["partitions"]], before["owners"])
            self.assertEqual([p["epoch"] for p in st["partitions"]], before["epochs"])
            self.assertEqual([p["replicas"] for p in st["partitions"]], before["replicas"])
            self.assertEqual((st["replication_factor"], st["min_insync"]), (2, 2))
            by_id = {n["id"]: n for n in st["nodes"]}
            self.assertEqual(set(by_id), {"s1", "s2", "s3", "i1"})
            self.assertEqual(by_id["i1"]["roles"], ["ingest"])
            for s in ("s1", "s2", "s3"):
                self.assertEqual([p["partition"] for p in by_id[s]["partitions"]],
                                 [q for q in range(P) if before["owners"][q] == s])
                self.assertEqual(by_id[s]["partitions_owned"], before["owners"].count(s))
            r = subprocess.run([L.CLI, "--coordinator", f"127.0.0.1:{coord.port}", "status"],
                               capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("leader:      c1", r.stdout)
            self.assertIn("replicas:    2 per partition, 2 in sync to acknowledge", r.stdout)
            self.assertIn("replica sets (leader first):", r.stdout)
            for s in ("s1", "s2", "s3", "i1"):
                self.assertIn(s, r.stdout)

        moved = [q for q in range(P) if before["owners"][q] == "s3"]
        cl.nodes["s3"].stop()  # SIGTERM: revokes its lease, exit 0
        after = cl.wait_assignment({"s1", "s2"}, timeout=TTL_S * 3)
        # R = 2: s3's partitions are promoted to their follower (epoch + 1); when that
        # leaves a node above its share of leaders, the surplus then moves live (epoch + 1
        # again, or once for a partition s3 did not lead: its state goes with it)
        for q in range(P):
            if q in moved:
                self.assertIn(after["epochs"][q], (before["epochs"][q] + 1, before["epochs"][q] + 2))
            elif after["owners"][q] != before["owners"][q]:
                self.assertEqual(after["epochs"][q], before["epochs"][q] + 1)
            else:
                self.assertEqual(after["epochs"][q], before["epochs"][q])
            self.assertNotIn("s3", after["replicas"][q])
        # each node's eddy_partitions_owned follows the map (scraped at its registered
        # metrics address)
        reg = cl.registered()
        for s_id in ("s1", "s2"):
            want = after["owners"].count(s_id)

            def owned(addr=reg[s_id]["metrics_addr"]):
                text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
                for line in text.splitlines():
                    if line.startswith("eddy_partitions_owned "):
                        return float(line.split()[1])
                return None

            poll_until(lambda: owned() == want, 10, what=f"{s_id} eddy_partitions_owned == {want}")

        # new events for every user are acknowledged and queryable
        second = [ev(f"b-{i}", u, t0 + 60_000 + i) for i, u in enumerate(users)]
        self.ingest_ok(front, second)
        moved_users = [u for u in users if L.user_partition(u, P) in moved]
        self.assertTrue(moved_users)
        for u in users:
            prof = front.stub.GetUserProfile(L.pb().GetUserProfileRequest(user_id=u), timeout=10)
            # R = 2, min-insync 2: every acknowledged event of s3's partitions was in their
            # follower's replicated log and user state, which the promotion serves
            # (docs/cluster.md, Replication): nothing is lost, moved users included
            self.assertEqual(prof.profile.event_count, 2, u)
        self.assertEqual(L.total_events(front.stub), 2 * len(users))

    def cli_status(self, coord):
        r = subprocess.run([L.CLI, "--coordinator", f"127.0.0.1:{coord.port}", "-o", "json",
                            "status"], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)


# ---- coordinator failover under ingest -----------------------------------------------------

class CoordinatorFailoverTest(ClusterTestCase):
    def test_kill_leader_while_ingesting(self):
        cl = self.cluster()
        c1 = cl.add_coordinator("c1")
        c2 = cl.add_coordinator("c2")
        poll_until(lambda: c1.is_leader() and cl.leader() == "c1", 10, what="c1 leads")
        for s in ("s1", "s2", "s3"):
            cl.add_node(s, "state")
        cl.wait_assignment({"s1", "s2", "s3"})
        front = cl.add_node("i1", "ingest")

        stop = threading.Event()
        acked, errors = set(), []
        stats = {"calls": 0, "retries": 0, "batches": 0}
        base = L.now_ms() - 600_000
        rnd = random.Random(5)

        def loop():
            k = 0
            try:
                while not stop.is_set():
                    batch = [ev(f"f-{k}-{j}", f"u-{rnd.randrange(60):03d}", base + k * 20 + j,
                                product=f"p-{rnd.randrange(30):03d}") for j in range(20)]
                    k += 1
                    for attempt in range(200):
                        stats["calls"] += 1
                        try:
                            r = front.ingest(batch, timeout=15)
                        except grpc.RpcError as e:
                            if e.code() == grpc.StatusCode.UNAVAILABLE:
                                stats["retries"] += 1
                                time.sleep(0.05)
                                continue
                            errors.append(f"batch {k}: {e.code()} {e.details()}")
                            return
                        if r.rejected or r.accepted + r.duplicates != len(batch):
                            errors.append(f"batch {k}: {r}")
                            return
                        acked.update(e["eventId"] for e in batch)
                        stats["batches"] += 1
                        break
                    else:
                        errors.append(f"batch {k} never acknowledged")
                        return
            except Exception as e:  # noqa: BLE001 - reported by the main thread
                errors.append(repr(e))

        t = threading.Thread(target=loop, daemon=True)
        t.start()
        try:
            poll_until(lambda: stats["batches"] >= 20 or errors, 20, what="ingest running")
            c1.kill9()
            killed = time.monotonic()
            poll_until(lambda: c2.is_leader() and cl.leader() == "c2", TTL_S * 2 + 1,
                       interval=0.02, what="c2 takes over")
            took = time.monotonic() - killed
            self.assertLess(took, 2 * TTL_S, f"standby took {took:.2f}s")
            n_before = stats["batches"]
            poll_until(lambda: stats["batches"] >= n_before + 20 or errors, 20,
                       what="ingest continues after the failover")
        finally:
            stop.set()
            t.join(60)
        self.assertFalse(t.is_alive())
        self.assertEqual(errors, [])
        self.assertGreater(stats["batches"], 40)
        # the map did not change (the coordinator is not on the data path, and the new
        # leader has no reason to move anything): every acknowledged event counted once
        self.assertEqual(L.total_events(front.stub), len(acked),
                         f"calls={stats['calls']} retries={stats['retries']}")
        # the new leader keeps assigning: a state node joining now gets its share
        cl.add_node("s4", "state")
        cl.wait_assignment({"s1", "s2", "s3", "s4"})


# ---- etcd restart ----------------------------------------------------------------------------

class EtcdRestartTest(ClusterTestCase):
    def test_etcd_restart_under_running_cluster(self):
        cl = self.cluster()
        cl.add_coordinator("c1")
        for s in ("s1", "s2"):
            s = cl.add_node(s, "state")
        cl.wait_assignment({"s1", "s2"})
        front = cl.add_node("i1", "ingest")
        t0 = L.now_ms() - 600_000
        users = [f"u-{i:03d}" for i in range(32)]
        self.ingest_ok(front, [ev(f"a-{i}", u, t0 + i) for i, u in enumerate(users)])

        # an outage longer than the lease TTL: every session is lost
        s1 = cl.nodes["s1"]
        m0 = cl.assignment()
        p1 = m0["owners"].index("s1")
        cl.etcd.kill9()
        killed = time.monotonic()
        probe = ev("x-0", L.users_in_partition(p1, P)[0], t0)
        # (the probe may be acknowledged before s1 notices etcd is gone: it then counts
        # as one more event of that user, which the checks below allow for)
        poll_until(lambda: s1.apply(p1, m0["epochs"][p1], [probe]).code == 14, TTL_S * 2 + 5,
                   interval=0.05, what="s1 stops acknowledging")
        poll_until(lambda: time.monotonic() - killed > TTL_S + 0.5, TTL_S + 2, interval=0.1,
                   what="lease TTL passed")
        cl.etcd.start()  # same data dir and ports

        # nodes and coordinator reconnect by themselves: ingest through the old ingest node
        second = [ev(f"b-{i}", u, t0 + 60_000 + i) for i, u in enumerate(users)]
        poll_until(lambda: self.ingest_ok(front, second), 30, interval=0.2,
                   what="ingest works after the etcd restart")
        poll_until(lambda: {"s1", "s2", "i1"} <= set(cl.registered()), 15,
                   what="every node registered again")
        poll_until(lambda: cl.leader() == "c1", 15, what="c1 leads again")
        # a new state node joins and gets its share
        cl.add_node("s3", "state")
        m = cl.wait_assignment({"s1", "s2", "s3"}, timeout=20)
        mine = [q for q in range(P) if m["owners"][q] == "s3"]
        self.assertTrue(mine)
        newcomers = [L.users_in_partition(q, P)[0] for q in mine]
        third = [ev(f"c-{i}", u, t0 + 120_000 + i) for i, u in enumerate(newcomers)]
        poll_until(lambda: self.ingest_ok(front, third), 15, interval=0.1,
                   what="ingest to s3's partitions")
        for u in newcomers:
            prof = front.stub.GetUserProfile(L.pb().GetUserProfileRequest(user_id=u), timeout=10)
            self.assertEqual(prof.profile.event_count, 1, u)
        # users on s1/s2 partitions kept everything
        for u in users:
            if m["owners"][L.user_partition(u, P)] != "s3":
                self.assertEqual(L.total_events(front.stub, u), 2, u)


if __name__ == "__main__":
    unittest.main()


# ---- a graceful leave hands its state over through a shared checkpoint directory ------------

class SharedCheckpointHandOverTest(ClusterTestCase):
    def test_sigterm_with_shared_checkpoints_loses_nothing(self):
        shared = L.temp_dir(self, prefix="eddy-it-shared-ckp-")
        cl = self.cluster(node_args=NODE_ARGS + [
            "--checkpoint-dir", shared, "--checkpoint-interval", "1s",
            "--checkpoint-min-pause", "200ms"])
        # one copy per partition: the hand-over through the shared checkpoints is what
        # carries the state (with R = 2 the promoted follower already has it)
        cl.add_coordinator("c1", args=["--replication-factor", "1"])
        for s in ("s1", "s2"):
            cl.add_node(s, "state")
        before = cl.wait_assignment({"s1", "s2"})
        front = cl.add_node("i1", "ingest")
        users = [f"u-{i:03d}" for i in range(64)]
        t0 = L.now_ms() - 900_000
        events = [ev(f"v-{i}", u, t0 + i) for i, u in enumerate(users)]
        events += [ev(f"b-{i}", u, t0 + 2000 + i, kind="purchase", product=f"p-{i % 7:03d}")
                   for i, u in enumerate(users)]
        self.ingest_ok(front, events)
        self.assertEqual(L.total_events(front.stub), len(events))
        moved = [u for u in users if before["owners"][L.user_partition(u, P)] == "s2"]
        self.assertTrue(moved, "some users live on s2")

        # SIGTERM: s2 stops taking writes, writes a last checkpoint of every partition it
        # owns into the shared directory, then revokes its lease
        cl.nodes["s2"].stop()
        after = cl.wait_assignment({"s1"}, timeout=TTL_S * 3)
        self.assertTrue(all(o == "s1" for o in after["owners"]))

        # s1 restores them before answering for them: every acknowledged event is there
        poll_until(lambda: self._total(front) == len(events), 20,
                   what="all acknowledged events visible after the hand-over")
        for u in moved[:6]:
            p = front.stub.GetUserProfile(L.pb().GetUserProfileRequest(user_id=u), timeout=10)
            self.assertEqual(p.profile.event_count, 2, u)
            self.assertEqual(len(p.profile.recent_purchases), 1, u)
        # and new writes to a moved partition land on top of the restored state, once
        extra = ev("after-handover", moved[0], t0 + 5000)
        self.ingest_ok(front, [extra])
        self.assertEqual(L.total_events(front.stub, moved[0]), 3)
        r = front.ingest([extra], timeout=30)  # a retry of it: a duplicate, thanks to dedup
        self.assertEqual((r.accepted, r.duplicates), (0, 1))
        self.assertIn('msg="partition restored from checkpoint"', cl.nodes["s1"].log_text())

    @staticmethod
    def _total(front):
        try:
            return L.total_events(front.stub)
        except grpc.RpcError:  # UNAVAILABLE while partitions are being taken over
            return None
