"""eddy-coordinator against a real etcd: the cluster config, balanced assignments with
minimal movement and fencing epochs, node loss, drains, leader failover (kill -9 and
SIGTERM), ClusterStatus over gRPC, and an etcd restart under a running coordinator.

Nodes are simulated from Python: a node is a JSON record at /eddy/<cluster>/nodes/<id>
attached to a lease, written through etcd's JSON gateway like eddy-node does; a thread
plays the target side of live moves for them (phase copy -> ready, flipped -> done, by
compare-and-swap, as eddy-node's mover does once it has copied the partition).
"""
import json
import subprocess
import threading
import time
import unittest

import eddylib
from eddylib import poll_until

CLUSTER = "it"
P = 64
TTL_S = 2
ARGS = ["--partitions", str(P), "--lease-ttl", f"{TTL_S}s", "--settle", "100ms",
        "--max-moves", "16", "--log-level", "info"]


def key(suffix):
    return f"/eddy/{CLUSTER}/{suffix}"


class ClusterTest(unittest.TestCase):
    def setUp(self):
        eddylib.require_coordinator()
        self.etcd = eddylib.start_etcd(self)
        self.leases = {}
        self.moves_done = 0
        stop = threading.Event()
        t = threading.Thread(target=self._fake_movers, args=(stop,), daemon=True)
        t.start()
        self.addCleanup(t.join, 10)
        self.addCleanup(stop.set)

    def _fake_movers(self, stop):
        """The target side of every live move to a registered fake node."""
        while not stop.wait(0.02):
            try:
                recs = self.etcd.get_prefix_kvs(key("moves/"))
            except Exception:  # etcd restarting (EtcdRestartTest)
                continue
            for k, (v, mod) in recs.items():
                m = json.loads(v)
                if m["to"] not in self.leases:
                    continue
                nxt = {"copy": "ready", "flipped": "done"}.get(m["phase"])
                if nxt and self.etcd.cas_put(k, json.dumps(dict(m, phase=nxt)), mod):
                    self.moves_done += nxt == "done"

    # -- fake nodes --
    def register(self, nid, roles=("state",), grpc_addr=None, metrics_addr="", started_ms=None):
        lease = self.etcd.lease_grant(60)
        rec = {"id": nid, "roles": list(roles), "grpc_addr": grpc_addr or f"127.0.0.1:{9000 + len(self.leases)}",
               "metrics_addr": metrics_addr, "started_ms": started_ms or eddylib.now_ms()}
        self.etcd.put(key(f"nodes/{nid}"), json.dumps(rec), lease=lease)
        self.leases[nid] = lease
        return rec

    def register_together(self, nids, roles=("state",)):
        """Nodes `nids` (each with its own lease) joining in one etcd transaction: the
        coordinator sees them arrive at once. One register() after the other can be
        further apart than --settle under load, and the first map is then made for the
        first node(s) alone, the others taking their share by moves (epoch 2)."""
        puts = []
        for nid in nids:
            lease = self.etcd.lease_grant(60)
            rec = {"id": nid, "roles": list(roles), "grpc_addr": f"127.0.0.1:{9000 + len(self.leases)}",
                   "metrics_addr": "", "started_ms": eddylib.now_ms()}
            puts.append({"request_put": {"key": eddylib._b64(key(f"nodes/{nid}")),
                                         "value": eddylib._b64(json.dumps(rec)), "lease": str(lease)}})
            self.leases[nid] = lease
        self.etcd.call("/v3/kv/txn", {"success": puts})

    def kill_node(self, nid):
        self.etcd.lease_revoke(self.leases.pop(nid))

    def wait_config(self, what="the cluster config"):
        """The stored cluster config (a new leader reports itself leader, then writes it)."""
        return json.loads(poll_until(lambda: self.etcd.get(key("config"))[0], 10, what=what))

    # -- the map --
    def assignment(self):
        v, kv = self.etcd.get(key("assignment"))
        if v is None:
            return None
        m = json.loads(v)
        m["mod_revision"] = int(kv["mod_revision"])
        return m

    def counts(self, m):
        c = {}
        for o in m["owners"]:
            c[o] = c.get(o, 0) + 1
        return c

    def wait_map(self, pred, what, timeout=15):
        """The map once `pred` holds and no live move is in progress (settled)."""
        def ok():
            m = self.assignment()
            if m is None or not pred(m) or self.etcd.get_prefix(key("moves/")):
                return None
            return m
        return poll_until(ok, timeout, what=what)

    def assert_replicas(self, m, nodes, r):
        """Each partition: r distinct replicas among `nodes`, the owner first."""
        for p in range(m["partitions"]):
            reps = m["replicas"][p]
            self.assertEqual(len(reps), r, f"partition {p}: {reps}")
            self.assertEqual(reps[0], m["owners"][p])
            self.assertEqual(len(set(reps)), r)
            self.assertTrue(set(reps) <= set(nodes), reps)

    def assert_balanced(self, m, owners):
        n = len(owners)
        c = self.counts(m)
        self.assertEqual(set(c), set(owners), f"owners {c}")
        for o in owners:
            self.assertIn(c[o], (P // n, -(-P // n)), f"{o} owns {c[o]} of {P} with {n} nodes: {c}")

    def history(self):
        """Every value the assignment key has had, oldest first (no compaction in tests)."""
        _, kv = self.etcd.get(key("assignment"))
        out = []
        for rev in range(int(kv["create_revision"]), int(kv["mod_revision"]) + 1):
            r = self.etcd.call("/v3/kv/range", {"key": eddylib._b64(key("assignment")), "revision": str(rev)})
            kvs = r.get("kvs", [])
            if kvs and int(kvs[0]["mod_revision"]) == rev:
                out.append(json.loads(eddylib._unb64(kvs[0]["value"])))
        return out

    def leader_value(self):
        v, _ = self.etcd.get(key("leader"))
        return v.decode() if v is not None else None

    def start_coord(self, cid, extra=()):
        return eddylib.start_coordinator(self, self.etcd.url, cid, cluster=CLUSTER, args=ARGS + list(extra))

    def wait_leader(self, c, timeout=10):
        poll_until(lambda: c.alive() and c.is_leader() and self.leader_value() == c.id, timeout,
                   what=f"{c.id} leads")


class AssignmentTest(ClusterTest):
    def test_balance_add_loss_drain(self):
        c = self.start_coord("c1")
        self.wait_leader(c)
        self.assertEqual(self.wait_config(), {"partitions": P, "replication_factor": 2, "min_insync": 2})
        # A new cluster gets a map at once, with nobody to own the partitions yet.
        m0 = self.wait_map(lambda m: m["version"] >= 1, "first map")
        self.assertEqual(m0["partitions"], P)
        self.assertEqual(m0["owners"], [""] * P)
        self.assertEqual(m0["epochs"], [0] * P)

        self.register_together(["n1", "n2", "n3"])
        self.register("i1", roles=("ingest",))
        m1 = self.wait_map(lambda m: "" not in m["owners"] and len(set(m["owners"])) == 3,
                           "3 owners")
        self.assert_balanced(m1, ["n1", "n2", "n3"])
        self.assertEqual(set(m1["epochs"]), {1})
        self.assert_replicas(m1, ["n1", "n2", "n3"], 2)

        # A 4th node takes its share, and only its share moves.
        self.register("n4")
        m2 = self.wait_map(lambda m: "n4" in m["owners"], "n4 owns partitions")
        self.assert_balanced(m2, ["n1", "n2", "n3", "n4"])
        moved = [p for p in range(P) if m2["owners"][p] != m1["owners"][p]]
        self.assertEqual(len(moved), P // 4)
        self.assertTrue(all(m2["owners"][p] == "n4" for p in moved))
        for p in range(P):
            self.assertEqual(m2["epochs"][p], m1["epochs"][p] + (1 if p in moved else 0), f"epoch of {p}")
        self.assertGreater(m2["version"], m1["version"])

        # A node's lease goes: its partitions (and only those) go to the others.
        # With R = 2 each is led by its follower (a promotion: no move record).
        self.kill_node("n2")
        done = self.moves_done
        m3 = self.wait_map(lambda m: not any("n2" in r for r in m["replicas"]),
                           "n2's partitions reassigned")
        self.assert_balanced(m3, ["n1", "n3", "n4"])
        self.assert_replicas(m3, ["n1", "n3", "n4"], 2)
        self.assertEqual(self.moves_done, done, "a promotion needs no move")
        for p in range(P):
            if m2["owners"][p] != "n2":
                self.assertEqual(m3["owners"][p], m2["owners"][p], f"partition {p} moved needlessly")
                self.assertEqual(m3["epochs"][p], m2["epochs"][p])
            else:
                self.assertEqual(m3["owners"][p], m2["replicas"][p][1], f"partition {p} promoted")
                self.assertEqual(m3["epochs"][p], m2["epochs"][p] + 1)

        # A drain empties the node.
        self.etcd.put(key("drain/n3"), "")
        m4 = self.wait_map(lambda m: "n3" not in m["owners"], "n3 drained")
        self.assert_balanced(m4, ["n1", "n4"])
        self.assertNotIn("i1", m4["owners"])

        # Removing the drain lets it take a share again.
        self.etcd.delete(key("drain/n3"))
        m5 = self.wait_map(lambda m: "n3" in m["owners"], "n3 back")
        self.assert_balanced(m5, ["n1", "n3", "n4"])

        versions = [h["version"] for h in self.history()]
        self.assertEqual(versions, list(range(versions[0], versions[0] + len(versions))), versions)
        self.assertIn('msg="became leader"', c.log_text())
        self.assertIn('msg="assignment written"', c.log_text())
        c.stop()
        # SIGTERM revoked the leader lease: the key is gone at once.
        self.assertIsNone(self.leader_value())


class ReplicationSettingsTest(ClusterTest):
    def test_flags_of_a_new_leader_win(self):
        # min-insync above R is refused at start
        r = subprocess.run([eddylib.COORDINATOR, "--etcd", self.etcd.url, "--cluster", CLUSTER,
                            "--replication-factor", "2", "--min-insync-replicas", "3"],
                           capture_output=True, text=True, timeout=10)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("--min-insync-replicas", r.stderr)

        c1 = self.start_coord("c1", ["--replication-factor", "1"])
        self.wait_leader(c1)
        self.assertEqual(self.wait_config(), {"partitions": P, "replication_factor": 1, "min_insync": 1})
        self.register_together(["n1", "n2", "n3"])
        m1 = self.wait_map(lambda m: len(set(m["owners"])) == 3, "3 owners")
        self.assert_replicas(m1, ["n1", "n2", "n3"], 1)
        c1.stop()

        # a leader with other flags updates the config (logged) and adds the followers,
        # leaving every leader and epoch where it was
        c2 = self.start_coord("c2", ["--replication-factor", "3"])
        self.wait_leader(c2)
        m2 = self.wait_map(lambda m: len(m["replicas"][0]) == 3, "3 replicas")
        cfg, _ = self.etcd.get(key("config"))
        self.assertEqual(json.loads(cfg), {"partitions": P, "replication_factor": 3, "min_insync": 2})
        self.assertIn('msg="replication settings changed by this leader\'s flags"', c2.log_text())
        self.assert_replicas(m2, ["n1", "n2", "n3"], 3)
        self.assertEqual(m2["owners"], m1["owners"])
        self.assertEqual(m2["epochs"], m1["epochs"])


class OfflinePartitionsTest(ClusterTest):
    """Every copy of some partitions lost at once (R = 2): those partitions are not given
    to the surviving node empty (unclean leader election is off by default): they keep their
    leader, epoch and replicas, offline (eddy_offline_partitions counts them) until a copy
    returns; --unclean-leader-election gives them away."""

    def offline_metric(self, c):
        port = eddylib.metrics_port_of(c)
        self.assertIsNotNone(port, "the coordinator serves /metrics")
        return eddylib.scrape_samples(f"127.0.0.1:{port}").get("eddy_offline_partitions")

    def run_case(self, unclean):
        c1 = self.start_coord("c1", ["--replication-factor", "2"] +
                              (["--unclean-leader-election"] if unclean else []))
        self.wait_leader(c1)
        self.register_together(["n1", "n2", "n3"])
        m = self.wait_map(lambda m: len(set(m["owners"])) == 3 and
                          all(len(r) == 2 for r in m["replicas"]), "3 owners, 2 replicas")
        both = [p for p in range(P) if set(m["replicas"][p]) == {"n1", "n2"}]
        self.assertTrue(both, "some partitions live on n1 and n2 only")
        # every copy in sync, as the leaders record it
        for p in range(P):
            self.etcd.put(key(f"isr/{p}"), json.dumps(
                {"epoch": m["epochs"][p], "leader": m["owners"][p], "isr": m["replicas"][p]}))
        poll_until(lambda: self.offline_metric(c1) == 0, 10, what="no offline partition")
        self.kill_node("n1")
        self.kill_node("n2")
        # the losses may make one map or two (a lost leader's map is written without
        # --settle): in the first of two, n2 leads n1's partitions at epoch + 1 with n3 as
        # a new, empty follower that no in-sync record names
        m2 = self.wait_map(lambda x: all(x["owners"][p] == "n3" for p in range(P)
                                         if p not in both), "n3 leads all it can")
        for p in both:
            promoted = m["owners"][p] == "n1" and m2["epochs"][p] > m["epochs"][p]
            if unclean:
                self.assertEqual(m2["owners"][p], "n3")
                self.assertIn(m2["epochs"][p] - m["epochs"][p], (1, 2), f"partition {p}")
            elif promoted:  # offline as the first map left it, never given to n3
                self.assertEqual(m2["owners"][p], "n2", f"partition {p}")
                self.assertEqual(m2["epochs"][p], m["epochs"][p] + 1)
            else:
                self.assertEqual(m2["owners"][p], m["owners"][p], f"partition {p}")
                self.assertEqual(m2["epochs"][p], m["epochs"][p])
                self.assertIn("n2", m2["replicas"][p])
        want = 0 if unclean else len(both)
        poll_until(lambda: self.offline_metric(c1) == want, 10,
                   what=f"eddy_offline_partitions == {want}")
        if not unclean:
            # a copy returns: n2, a copy in every offline partition's entry, whichever
            # map it is: they lead again (promotion or the leader back)
            self.register("n2")
            self.wait_map(lambda x: all(x["owners"][p] in ("n2", "n3") for p in range(P)),
                          "n2 back")
            poll_until(lambda: self.offline_metric(c1) == 0, 10, what="offline back to 0")

    def test_offline_until_a_copy_returns(self):
        self.run_case(unclean=False)

    def test_unclean_leader_election(self):
        self.run_case(unclean=True)


class FailoverTest(ClusterTest):
    def test_kill9_and_sigterm_failover(self):
        c1 = self.start_coord("c1")
        self.wait_leader(c1)
        # c2 asks for another P: the stored config wins when it leads.
        c2 = self.start_coord("c2", ["--partitions", "32"])
        self.assertFalse(c2.is_leader())
        self.assertTrue(c2.health_of("readiness"))
        self.register("n1")
        self.register("n2")
        m1 = self.wait_map(lambda m: set(m["owners"]) == {"n1", "n2"}, "2 owners")
        self.assert_balanced(m1, ["n1", "n2"])

        c1.kill9()
        t0 = time.monotonic()
        self.wait_leader(c2, timeout=4 * TTL_S)
        took = time.monotonic() - t0
        self.assertLess(took, 2 * TTL_S, f"standby took {took:.2f}s to lead")
        self.assertIn('msg="became leader"', c2.log_text())

        self.register("n3")
        m2 = self.wait_map(lambda m: "n3" in m["owners"], "new leader handles n3")
        self.assertEqual(m2["partitions"], P)
        self.assert_balanced(m2, ["n1", "n2", "n3"])
        self.assertEqual(self.leader_value(), "c2")

        # Graceful hand-over: SIGTERM revokes the lease, the next standby leads at once.
        c3 = self.start_coord("c3")
        self.assertFalse(c3.is_leader())
        c2.stop()
        t0 = time.monotonic()
        self.wait_leader(c3, timeout=4 * TTL_S)
        took = time.monotonic() - t0
        self.assertLess(took, TTL_S, f"hand-over after SIGTERM took {took:.2f}s")
        self.kill_node("n1")
        m3 = self.wait_map(lambda m: "n1" not in m["owners"], "c3 handles n1's loss")
        self.assert_balanced(m3, ["n2", "n3"])

        # Every write landed in order, one version after the other, and each came from the
        # leader of its time (the writes logged add up to the writes stored). kill -9 may
        # land between c1's successful write and its log line: that one write may be unlogged.
        hist = self.history()
        versions = [h["version"] for h in hist]
        self.assertEqual(versions, list(range(1, len(versions) + 1)), versions)
        logged = sum(c.log_text().count('msg="assignment written"') for c in (c1, c2, c3))
        self.assertIn(len(hist) - logged, (0, 1), f"{logged} logged, {len(hist)} stored")
        self.assertEqual(c1.log_text().count('msg="became leader"'), 1)
        self.assertEqual(c3.log_text().count('msg="became leader"'), 1)


class StatusTest(ClusterTest):
    def test_cluster_status_matches_etcd(self):
        c1 = self.start_coord("c1")
        self.wait_leader(c1)
        c2 = self.start_coord("c2")
        recs = [self.register("n1", roles=("ingest", "state"), grpc_addr="127.0.0.1:7001",
                              metrics_addr="127.0.0.1:9101", started_ms=1_700_000_000_000),
                self.register("n2", grpc_addr="127.0.0.1:7002"),
                self.register("n3", roles=("ingest",), grpc_addr="127.0.0.1:7003"),
                self.register("n4", grpc_addr="127.0.0.1:7004")]
        self.wait_map(lambda m: set(m["owners"]) == {"n1", "n2", "n4"}, "3 owners")
        self.etcd.put(key("drain/n2"), "")
        self.etcd.put(key("drain/ghost"), "")
        self.wait_map(lambda m: set(m["owners"]) == {"n1", "n4"}, "n2 drained")

        m = self.assignment()
        for c in (c1, c2):
            s = c.status()
            self.assertEqual(s.cluster, CLUSTER)
            self.assertEqual(s.config_partitions, P)
            self.assertEqual(s.leader_id, "c1")
            self.assertEqual(s.answered_by, c.id)
            self.assertEqual(s.assignment_version, m["version"])
            self.assertGreaterEqual(s.revision, m["mod_revision"])
            self.assertEqual([(p.partition, p.owner, p.epoch) for p in s.partitions],
                             [(i, m["owners"][i], m["epochs"][i]) for i in range(P)])
            self.assertEqual(list(s.draining), ["ghost", "n2"])
            counts = self.counts(m)
            self.assertEqual([n.id for n in s.nodes], ["n1", "n2", "n3", "n4"])
            for n, rec in zip(s.nodes, recs):
                self.assertEqual(list(n.roles), rec["roles"])
                self.assertEqual(n.grpc_addr, rec["grpc_addr"])
                self.assertEqual(n.metrics_addr, rec["metrics_addr"])
                self.assertEqual(n.started_ms, rec["started_ms"])
                self.assertEqual(n.partitions_owned, counts.get(n.id, 0))
                self.assertEqual(n.draining, n.id == "n2")
        self.assertEqual(c1.status().nodes[0].partitions_owned + c1.status().nodes[3].partitions_owned, P)


class EtcdRestartTest(ClusterTest):
    def test_coordinator_survives_etcd_restart(self):
        c = self.start_coord("c1")
        self.wait_leader(c)
        self.register("n1")
        m1 = self.wait_map(lambda m: set(m["owners"]) == {"n1"}, "n1 owns all")
        self.etcd.restart()
        self.register("n2")
        m2 = self.wait_map(lambda m: set(m["owners"]) == {"n1", "n2"}, "n2 gets partitions after the restart",
                           timeout=30)
        self.assert_balanced(m2, ["n1", "n2"])
        self.assertGreater(m2["version"], m1["version"])
        c.alive()
        self.wait_leader(c, timeout=15)
        s = c.status()
        self.assertEqual(s.assignment_version, self.assignment()["version"])

        # A longer outage: the leader's session runs out, it steps down and reports not
        # ready; once etcd is back it leads again (after its old lease expires).
        self.etcd.kill9()
        poll_until(lambda: not c.is_leader() and not c.health_of("readiness"), 4 * TTL_S,
                   what="leader steps down without etcd")
        self.etcd.start()
        self.register("n3")
        m3 = self.wait_map(lambda m: set(m["owners"]) == {"n1", "n2", "n3"},
                           "n3 gets partitions after the outage", timeout=30)
        self.assert_balanced(m3, ["n1", "n2", "n3"])
        self.wait_leader(c, timeout=15)
        self.assertGreaterEqual(c.log_text().count('msg="became leader"'), 2)


if __name__ == "__main__":
    unittest.main()
