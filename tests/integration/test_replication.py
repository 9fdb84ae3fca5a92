"""The replicated log between real state nodes (issue 13): a map with R = 2 and
min-insync 2 written by hand (the coordinator does not assign followers yet), two state
nodes and an ingest node on loopback with a real etcd.

- acknowledged events are in the follower's log and user state, byte for byte, and the
  leader records the in-sync set in etcd (isr/<p>);
- kill -9 of the follower: an Apply waits and then answers UNAVAILABLE once the follower
  left the in-sync set (--replica-lag-timeout), never a single-copy acknowledgement, and
  the set in etcd shrinks to the leader;
- the follower restarted on its data catches up and rejoins: writes are acknowledged again;
- with the coordinator's R = 2: kill -9 of a state node during ingest, never restarted,
  loses no acknowledged event (a re-send of every acknowledged event is all duplicates,
  the totals count each once), and ingest is acknowledged again within seconds.

Needs EDDY_NODE, EDDY_COORDINATOR_BIN and Debian's etcd-server (see docs/testing.md).
"""
import json
import threading
import time
import unittest

import grpc

import eddylib as L
from eddylib import poll_until

P = 4
EPOCH = 1
LAG = "1s"
# the stage-1 state of a user partition: what the follower's replay must reproduce
# (the product tables are the product partitions' owner's, fed by stage-2 forwarding)
STAGE1 = "log,dedup,dedup_exp,user,user_win,user_log,part_win,late"


def ev(eid, user, ts, product="p-001"):
    return {"eventId": eid, "userId": user, "sessionId": "s-" + user, "timestamp": ts,
            "eventType": "view", "productId": product, "category": "books", "brand": "orbit",
            "price": 9.5}


def s1_outbox_empty(node):
    try:
        return node.partial().outbox == 0
    except grpc.RpcError:
        return False


class ReplicationTest(unittest.TestCase):
    def setUp(self):
        L.require_node()
        L.require_coordinator()
        L.require_etcd()
        self.c = L.Cluster(self, partitions=P, ttl_s=2,
                           node_args=["--idle-timeout", "0", "--replica-lag-timeout", LAG])
        c = self.c
        c.write_replicated_map(["s1", "s2"], epoch=EPOCH)
        self.s1 = c.add_node("s1")
        self.s2 = c.add_node("s2")
        self.i1 = c.add_node("i1", roles="ingest")
        for n in (self.s1, self.s2, self.i1):
            n.wait_ready()

    def isr(self, p):
        v, _ = self.c.etcd.get(self.c.key(f"isr/{p}"))
        return json.loads(v) if v is not None else None

    def wait_isr(self, members, timeout=15):
        def ok():
            return all((self.isr(p) or {}).get("isr") == members for p in range(P))
        poll_until(ok, timeout, interval=0.05, what=f"isr {members} on every partition")

    def test_follower_copy_ack_wait_and_rejoin(self):
        self.wait_isr(["s1", "s2"])
        rec = self.isr(0)
        self.assertEqual((rec["epoch"], rec["leader"]), (EPOCH, "s1"))
        t0 = L.now_ms()
        events = [ev(f"e{i}", f"u{i % 23}", t0 + i) for i in range(400)]
        for k in range(0, len(events), 50):
            r = self.i1.ingest(events[k:k + 50])
            self.assertEqual(list(r.rejected), [])
            # all applied once: a slow first acknowledgement (ASan) may make the ingest
            # node retry, and the retry finds them already there (duplicates)
            self.assertEqual(r.accepted + r.duplicates, 50, r)
        r = self.i1.ingest(events)  # every one is there: all duplicates now
        self.assertEqual((r.accepted, r.duplicates), (0, 400), r)

        # kill -9 of the follower: the leader holds the next write back, then refuses it
        user = L.users_in_partition(2, P, prefix="u-late")[0]
        self.s2.kill9()
        start = time.monotonic()
        res = self.s1.apply(2, EPOCH, [ev("late-1", user, t0 + 1000)], timeout=30)
        waited = time.monotonic() - start
        self.assertEqual(res.code, 14, res)  # UNAVAILABLE
        self.assertIn("in-sync", res.message)
        self.assertGreaterEqual(waited, 0.5, "answered before the follower could be out of sync")
        # with fewer in-sync copies than min-insync the partition refuses (after holding the
        # write for --replica-writable-wait, 500 ms)
        res = self.s1.apply(2, EPOCH, [ev("late-2", user, t0 + 1001)], timeout=5)
        self.assertEqual(res.code, 14, res)
        self.wait_isr(["s1"])

        # the follower comes back on its data, catches up and rejoins
        self.s2.start()
        self.s2.wait_ready()
        self.wait_isr(["s1", "s2"])
        res = self.s1.apply(2, EPOCH, [ev("late-1", user, t0 + 1000)], timeout=30)
        self.assertEqual(res.code, 0, res)
        self.assertEqual(res.duplicates, 1, "the unacknowledged first copy was kept")
        res = self.s1.apply(2, EPOCH, [ev("late-3", user, t0 + 1002)], timeout=30)
        self.assertEqual((res.code, res.accepted), (0, 1), res)

        # byte for byte: everything acknowledged is in the follower's stage-1 state. The
        # log also holds what stage 2 appended after the acknowledgements (STAGE2 records,
        # the OUTBOX deliveries): once the OUTBOX is empty, one more acknowledged write per
        # partition (a search: no stage-2 record of its own) covers every record before it
        poll_until(lambda: s1_outbox_empty(self.s1), 30, interval=0.05,
                   what="s1's OUTBOX forwarded")
        for p in range(P):
            u = L.users_in_partition(p, P, prefix="u-last")[0]
            last = {"eventId": f"last-{p}", "userId": u, "sessionId": "s-" + u,
                    "timestamp": t0 + 2000 + p, "eventType": "search", "searchQuery": "q"}
            res = self.s1.apply(p, EPOCH, [last], timeout=30)
            self.assertEqual((res.code, res.accepted), (0, 1), res)
        self.s1.stop()
        self.s2.stop()
        a, b = self.s1.dump_state(STAGE1), self.s2.dump_state(STAGE1)
        self.assertGreater(len(a), 1000)
        self.assertEqual(a, b)


class FailoverTest(unittest.TestCase):
    def setUp(self):
        L.require_node()
        L.require_coordinator()
        L.require_etcd()

    def test_kill9_of_a_state_node_loses_no_acknowledged_event(self):
        c = L.Cluster(self, partitions=8, ttl_s=2, node_args=["--idle-timeout", "0"])
        c.add_coordinator("c1")  # R = 2, min-insync 2 (the coordinator's defaults)
        for s in ("s1", "s2", "s3"):
            c.add_node(s)
        c.wait_assignment({"s1", "s2", "s3"})
        front = c.add_node("i1", roles="ingest")
        front.wait_ready()
        t0 = L.now_ms() - 600_000
        acked, lock = [], threading.Lock()
        stop = threading.Event()
        waits = []  # seconds from a batch's first attempt to its acknowledgement

        def send():
            k = 0
            while not stop.is_set():
                batch = [ev(f"f{k}-{i}", f"u{(k * 50 + i) % 301}", t0 + k * 50 + i)
                         for i in range(50)]
                start = time.monotonic()
                while not stop.is_set():
                    try:
                        r = front.ingest(batch, timeout=10)
                        if not r.rejected and r.accepted + r.duplicates == len(batch):
                            break
                    except grpc.RpcError:
                        pass
                    time.sleep(0.05)  # a client's retry pause, not a wait for a condition
                else:
                    return
                waits.append(time.monotonic() - start)
                with lock:
                    acked.extend(batch)
                k += 1

        th = threading.Thread(target=send)
        th.start()
        try:
            poll_until(lambda: len(acked) >= 3000, 60, what="3000 events acknowledged")
            c.nodes["s2"].kill9()  # never restarted
            n_kill = len(acked)
            poll_until(lambda: len(acked) >= n_kill + 3000, 60,
                       what="3000 more events acknowledged after the kill")
        finally:
            stop.set()
            th.join()
        c.wait_assignment({"s1", "s3"}, timeout=30)
        with lock:
            sent = list(acked)
        # every acknowledged event is there exactly once: its re-send is a duplicate
        for k in range(0, len(sent), 500):
            r = front.ingest(sent[k:k + 500], timeout=30)
            self.assertEqual(list(r.rejected), [])
            self.assertEqual((r.accepted, r.duplicates), (0, len(sent[k:k + 500])),
                             "acknowledged events were lost")
        self.assertEqual(L.total_events(front.stub), len(sent))
        print(f"\nkill -9 of s2: {len(sent)} acknowledged, 0 lost; the longest batch took "
              f"{max(waits):.2f} s to be acknowledged (lease TTL 2 s)", flush=True)

    def test_fewer_state_nodes_than_min_insync_acknowledges_nothing(self):
        """R = 2, min-insync 2 with one state node: the map lists one copy of each
        partition, and s1 refuses every write UNAVAILABLE rather than acknowledge it
        alone; the coordinator says why and counts the partitions; once s2 joins and
        follows, the same batch is acknowledged."""
        P = 4
        c = L.Cluster(self, partitions=P, ttl_s=2, node_args=["--idle-timeout", "0"])
        coord = c.add_coordinator("c1", args=["--metrics-listen", "127.0.0.1:0"])
        s1 = c.add_node("s1", roles="ingest,state")
        c.wait_assignment({"s1"})
        batch = [ev(f"m{i}", f"u{i}", L.now_ms() - 600_000 + i) for i in range(40)]
        with self.assertRaises(grpc.RpcError) as cm:  # after --route-retries rounds (~9 s)
            s1.ingest(batch, timeout=30)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertIn("fewer in-sync copies of the partition than min-insync",
                      cm.exception.details())
        self.assertIn("fewer eligible state nodes than min-insync", coord.log_text())
        mport = L.poll_until(lambda: L.metrics_port_of(coord), 10, what="the coordinator's metrics port")
        L.poll_until(lambda: L.scrape_samples(f"127.0.0.1:{mport}").get(
            "eddy_under_min_insync_partitions") == P, 10, what="every partition under min-insync")
        c.add_node("s2")
        c.wait_assignment({"s1", "s2"})

        def acknowledged():
            try:
                r = s1.ingest(batch, timeout=10)
                return r.accepted + r.duplicates == len(batch) and not r.rejected
            except grpc.RpcError:
                return False  # s2 not in sync yet
        poll_until(acknowledged, 30, what="the batch acknowledged with s2 following")
        self.assertEqual(L.total_events(s1.stub), len(batch))
        L.poll_until(lambda: L.scrape_samples(f"127.0.0.1:{mport}").get(
            "eddy_under_min_insync_partitions") == 0, 10, what="no partition under min-insync")


if __name__ == "__main__":
    unittest.main()
