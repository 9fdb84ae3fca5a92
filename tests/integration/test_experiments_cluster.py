"""A/B experiments in a cluster (docs/design.md §4, Experiments; §6): real etcd, a
coordinator, two state nodes and an ingest node on loopback, the real CLI.

- the experiment is created through the CLI on one state node and is listed by the other
  and by the ingest node (definitions in etcd, watched by every node); Recommend through
  the ingest node follows it on every partition's owner;
- simulated users (seeded, as integration.experiments: variant B planted better) click and
  buy; halfway through, a third state node joins and partitions move live to it; the first
  half's purchases are sent after the moves, so impressions applied on a partition's old
  owner get purchases attributed on its new one;
- `eddy experiments show` on any node sums every partition's counts: impressions, clicks,
  carts, purchases, revenue and recommendation accuracy equal those computed from the
  events sent, exactly (each partition once, moved ones included), on each node;
- the Prometheus series eddy_experiment_* of the state nodes, summed, equal them too;
- a change on one node reaches the others (update on s2, seen on the ingest node); etcd
  stopped: a change fails UNAVAILABLE with the reason and the definitions stay.

Needs EDDY_NODE, EDDY_COORDINATOR_BIN, EDDY_CLI and Debian's etcd-server.
"""
import random
import unittest

import grpc

import eddylib as L
from eddylib import poll_until
from test_experiments import GROUPS, NEIGHBOURS, POPULAR, TRAINERS, ev, warm_up_events

P = 16
TTL_S = 2
USERS = 240
SEED = 16
NODE_ARGS = ["--idle-timeout", "0", "--checkpoint-interval", "2s",
             "--checkpoint-min-pause", "500ms", "--route-retries", "30"]
KEYS = ("impressions", "clicks", "add_to_carts", "purchases", "revenue", "recommended",
        "recommended_hits")


class ExperimentsClusterTest(unittest.TestCase):
    def setUp(self):
        L.require_node()
        L.require_coordinator()
        L.require_etcd()
        L.require_cli()
        self.m = L.pb()

    def cli(self, node, *args, expect_rc=0):
        return L.cli_json(self, node.endpoint, *args, expect_rc=expect_rc)

    def show(self, node):
        out = self.cli(node, "experiments", "show", "ranking")
        return {s["variant"]: {k: s[k] for k in KEYS} for s in out["stats"]}

    def recommend(self, front, user, n=5):
        """Recommend through the ingest node, retried while a partition moves (a refused
        call served nothing, so it logged no impression)."""
        def answer():
            try:
                return front.stub.Recommend(self.m.RecommendRequest(user_id=user,
                                                                    max_recommendations=n),
                                            timeout=10)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                return None
        return poll_until(answer, 30, interval=0.05, what=f"Recommend of {user}")

    @staticmethod
    def ingest(front, events):
        """Ingest, sent again while a partition moves (event ids make it exactly once)."""
        def sent():
            try:
                return front.ingest(events)
            except grpc.RpcError as e:
                if e.code() not in (grpc.StatusCode.UNAVAILABLE,
                                    grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                return None
        return poll_until(sent, 60, interval=0.05, what="events acknowledged")

    def test_experiment_across_nodes_counts_exact_through_a_live_move(self):
        m = self.m
        shared = L.temp_dir(self, prefix="eddy-it-expcl-ckp-")
        cl = L.Cluster(self, partitions=P, ttl_s=TTL_S,
                       node_args=NODE_ARGS + ["--checkpoint-dir", shared])
        cl.add_coordinator("c1", args=["--max-moves", "2"])
        s1 = cl.add_node("s1", "state")
        s2 = cl.add_node("s2", "state")
        cl.wait_assignment({"s1", "s2"}, timeout=30)
        front = cl.add_node("i1", "ingest")

        t0 = L.now_ms() - 60_000
        r = front.ingest(warm_up_events(m, t0))
        self.assertEqual(r.accepted, GROUPS * NEIGHBOURS * TRAINERS * 2 + POPULAR * 40)
        users = [f"user-{i}" for i in range(USERS)]
        taste = {u: i % GROUPS for i, u in enumerate(users)}
        r = front.ingest([ev(m, f"h-{u}", u, "view", f"a-{taste[u]}", t0 + 50_000 + i,
                             "anchors") for i, u in enumerate(users)])
        self.assertEqual(r.accepted, USERS)
        cl.wait_outbox_empty()
        poll_until(lambda: any(it.product_id.startswith("n-3-")
                               for it in self.recommend(front, "user-3").items),
                   30, interval=0.2, what="neighbours of a-3 in Recommend")

        # created on s1: in etcd, listed by s2 and the ingest node
        made = self.cli(s1, "experiments", "create", "ranking",
                        "--variant", "A:50:weight-neighbours=0,weight-popular=1",
                        "--variant", "B:50:weight-neighbours=5,weight-popular=0")
        self.assertEqual(made["state"], "running")
        self.assertTrue(cl.etcd.get(cl.key("experiments/ranking"))[0])
        for n in (s2, front):
            poll_until(lambda n=n: [e["name"] for e in self.cli(n, "experiments", "list")]
                       == ["ranking"], 10, interval=0.05, what=f"ranking listed on {n.id}")
        rc, _, err = L.run_cli(s2.endpoint, "experiments", "create", "ranking",
                               "--variant", "A:1")
        self.assertEqual(rc, 1)
        self.assertIn("ALREADY_EXISTS", err)

        rnd = random.Random(SEED)
        want = {v: dict.fromkeys(KEYS, 0) for v in ("A", "B")}
        for v in want:
            want[v]["revenue"] = 0.0
        s3, unlisted, deferred = None, [], []
        for i, u in enumerate(users):
            if i == USERS // 2:
                # a live move in the middle: a third state node takes partitions over
                # while impressions and their clicks are on their way
                s3 = cl.add_node("s3", "state")
            resp = self.recommend(front, u)
            self.assertEqual(resp.experiment, "ranking")
            v = resp.variant
            want[v]["impressions"] += 1
            listed = [it.product_id for it in resp.items]
            want[v]["recommended"] += len(listed)
            liked = [p for p in listed if p.startswith(f"n-{taste[u]}-")]
            ts = L.now_ms()
            rec_id = resp.recommendation_id if i % 2 == 0 else ""
            clicked = None
            if liked and rnd.random() < 0.5:
                clicked = liked[0]
            elif not liked and listed and rnd.random() < 0.1:
                clicked = listed[0]
            events = []
            if clicked:
                events.append(ev(m, f"c-{u}", u, "click", clicked, ts, rec_id=rec_id))
                events.append(ev(m, f"c2-{u}", u, "click", clicked, ts + 1))
                want[v]["clicks"] += 1
                want[v]["recommended_hits"] += 1  # one listed product, clicked (and bought)
                if clicked in liked and rnd.random() < 0.4:
                    # the first half's purchases after the moves: attributed to impressions
                    # applied before their partition moved
                    (deferred if i < USERS // 2 else events).append(
                        ev(m, f"b-{u}", u, "purchase", clicked, ts + 1, price=20.0))
                    want[v]["purchases"] += 1
                    want[v]["revenue"] += 20.0
            if listed and rnd.random() < 0.3:
                events.append(ev(m, f"k-{u}", u, "add_to_cart", listed[-1], ts + 2))
                want[v]["add_to_carts"] += 1
            # a product no answer listed: after every answer (a click makes it popular,
            # so sent earlier it would be listed by the popularity variant)
            unlisted.append(ev(m, f"x-{u}", u, "click", "never-listed", ts + 3))
            r = self.ingest(front, events)
            self.assertEqual(r.accepted + r.duplicates, len(events))
        r = self.ingest(front, unlisted)
        self.assertEqual(r.accepted + r.duplicates, len(unlisted))
        self.assertGreater(want["B"]["clicks"], want["A"]["clicks"])

        # the moves done: s3 owns its share
        cl.wait_assignment({"s1", "s2", "s3"}, timeout=60)
        moved = sum(1 for o in cl.assignment()["owners"] if o == "s3")
        self.assertGreater(moved, 0)
        moved_users = [u for u in users[:USERS // 2]
                       if cl.assignment()["owners"][L.user_partition(u, P)] == "s3"]
        self.assertTrue(any(e.user_id in moved_users for e in deferred),
                        "a deferred purchase of a user whose partition moved")
        r = self.ingest(front, deferred)
        self.assertEqual(r.accepted, len(deferred))

        for n in (s1, s2, s3, front):
            last = []

            def exact(node=n):
                try:
                    last.append(self.show(node))
                except AssertionError as e:  # UNAVAILABLE while a partition is taken over
                    last.append(f"refused: {e}"[:300])
                return last[-1] == want
            try:
                poll_until(exact, 30, interval=0.2, what=f"exact counts on {n.id}")
            except AssertionError as e:
                raise AssertionError(f"{e}: want {want}, got {last[-1]}") from None
        got = self.cli(front, "experiments", "show", "ranking")["stats"]
        a, b = got[0], got[1]
        print(f"\nA: {a['impressions']} impressions, CTR {a['ctr']['value']:.3f}, accuracy "
              f"{a['accuracy']:.3f}; B: {b['impressions']}, CTR {b['ctr']['value']:.3f}, "
              f"accuracy {b['accuracy']:.3f}, p {b['p_ctr']:.2g}; {moved} partitions moved")
        self.assertAlmostEqual(b["accuracy"], want["B"]["recommended_hits"] /
                               want["B"]["recommended"])

        # Prometheus: each state node exports its own partitions' share; summed, the
        # cluster's counts (refreshed every 5 s)
        def scraped():
            total = {v: dict.fromkeys(KEYS, 0.0) for v in want}
            for n in (s1, s2, s3):
                samples = L.scrape_samples(f"127.0.0.1:{L.metrics_port_of(n)}")
                for v in want:
                    for k in KEYS:
                        total[v][k] += samples.get(
                            f'eddy_experiment_{k}{{experiment="ranking",variant="{v}"}}', 0.0)
            return total == {v: {k: float(x) for k, x in want[v].items()} for v in want}
        poll_until(scraped, 30, interval=0.5, what="eddy_experiment_* summed over the nodes")

        # changed on s2: the ingest node serves the change
        self.cli(s2, "experiments", "update", "ranking", "--variant", "A:1",
                 "--variant", "B:99:weight-neighbours=5,weight-popular=0")
        poll_until(lambda: self.cli(front, "experiments", "list")[0]["variants"][0]["weight"]
                   == 1, 10, interval=0.05, what="the update on the ingest node")

        # nodes with the experiments' watch (and a state node's series) leave cleanly
        # (exit 0: under ASan, no leak)
        front.stop()
        s3.stop()

        # etcd stopped: no change, the definitions stay
        cl.etcd.kill9()
        rc, _, err = L.run_cli(s1.endpoint, "experiments", "stop", "ranking")
        self.assertEqual(rc, 3, err)  # UNAVAILABLE: retryable
        self.assertIn("UNAVAILABLE", err)
        self.assertIn("etcd unreachable", err)
        self.assertEqual(self.cli(s1, "experiments", "list")[0]["state"], "running")


if __name__ == "__main__":
    unittest.main()
