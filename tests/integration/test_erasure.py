"""Deletion that reaches every copy (docs/security.md "Deleting a user").

--dev: 
a user with a unique id has events and checkpoints; after DeleteUser answers, no byte of
the node's data directory (LevelDB's .log/.ldb files, MANIFEST, every checkpoint) holds
the user id, the partition's checkpoints older than the delete are gone and a fresh one
is in place, and the node restarted over the same directory does not bring the user back.
Cluster, R = 2: the same scan over both state nodes' data and checkpoint directories once
DeleteUser answered (the leader's at once, the follower's once its copy of the record
was applied; LevelDB's MANIFEST aside, rewritten only at a node's start), and the other
users of the partition intact. What remains on purpose (event ids until --dedup-window passes, anonymous
aggregates) is in docs/security.md.

Needs EDDY_NODE; the cluster test also EDDY_COORDINATOR_BIN and Debian's etcd-server.
"""
import os
import unittest

import grpc

import eddylib as L
from eddylib import poll_until

SECRET = "erase-me-5d1e8b2a"


def ev(eid, user, ts, product="p-001"):
    return {"eventId": eid, "userId": user, "sessionId": "s-" + user, "timestamp": ts,
            "eventType": "view", "productId": product, "category": "books", "brand": "orbit",
            "price": 9.5}


def files_containing(directory, needle, manifest=True):
    """Files under `directory` whose bytes contain `needle`. manifest=False leaves out
    LevelDB's MANIFEST, whose version edits name the first and last key of each table
    file and are rewritten only when the node starts (docs/security.md)."""
    hits = []
    for root, _, names in os.walk(directory):
        for n in names:
            if not manifest and n.startswith("MANIFEST-"):
                continue
            path = os.path.join(root, n)
            try:
                with open(path, "rb") as f:
                    if needle in f.read():
                        hits.append(path)
            except OSError:
                pass
    return hits


class DevErasureTest(unittest.TestCase):
    def setUp(self):
        L.require_node()

    def test_delete_reaches_leveldb_files_and_checkpoints(self):
        args = ["--checkpoint-interval", "1s", "--checkpoint-min-pause", "200ms",
                "--checkpoint-keep", "5", "--idle-timeout", "0"]
        node = L.start_node(self, args=args)
        ckdir = os.path.join(node.data_dir, "checkpoints")
        P = 256
        user = L.users_in_partition(11, P, n=1, prefix=SECRET + "-")[0]
        others = L.users_in_partition(11, P, n=3, prefix="keep-")
        t0 = L.now_ms() - 600_000
        for k in range(3):  # three rounds: three checkpoints of partition 11 hold the user
            evs = [ev(f"{SECRET}-e{k}-{i}", user, t0 + 100 * k + i) for i in range(4)]
            evs += [ev(f"keep-e{k}-{i}", u, t0 + 100 * k + i) for i, u in enumerate(others)]
            self.assertEqual(node.ingest(evs).accepted, len(evs))
            poll_until(lambda: len(L.checkpoint_files(ckdir).get(11, [])) >= k + 1 or None,
                       20, interval=0.1, what=f"checkpoint {k + 1} of partition 11")
        before = L.checkpoint_files(ckdir)[11]
        self.assertGreaterEqual(len(before), 3)
        needle = user.encode()
        self.assertTrue(files_containing(ckdir, needle), "the checkpoints hold the user")

        r = node.stub.DeleteUser(L.pb().DeleteUserRequest(user_id=user), timeout=60)
        self.assertTrue(r.model_deleted)
        self.assertEqual(r.log_entries_deleted, 12)
        # answered: every byte of the data directory, LevelDB and checkpoints
        self.assertEqual(files_containing(node.data_dir, needle), [])
        after = L.checkpoint_files(ckdir)[11]
        self.assertEqual(len(after), 1, after)
        self.assertNotIn(after[0], before)
        rc, info, err = L.verify_checkpoint(after[0])
        self.assertEqual(rc, 0, err)
        for other in others:  # the other users of the partition are all there
            self.assertEqual(L.total_events(node.stub, other), 3)

        # a restart over the same directory does not bring the user back
        node.stop()
        self.assertEqual(files_containing(node.data_dir, needle), [])
        node.start()
        with self.assertRaises(grpc.RpcError) as cm:
            node.stub.GetUserProfile(L.pb().GetUserProfileRequest(user_id=user), timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.assertEqual(L.total_events(node.stub, user), 0)
        self.assertEqual(L.total_events(node.stub, others[0]), 3)
        node.stop()


class ClusterErasureTest(unittest.TestCase):
    def setUp(self):
        L.require_node()
        L.require_coordinator()
        L.require_etcd()

    def test_delete_reaches_both_copies(self):
        P = 4
        cl = L.Cluster(self, partitions=P, ttl_s=2,
                       node_args=["--idle-timeout", "0", "--checkpoint-interval", "1s",
                                  "--checkpoint-min-pause", "200ms", "--route-retries", "30"])
        cl.add_coordinator("c1")  # R = 2, min-insync 2 (the coordinator's defaults)
        s1, s2 = cl.add_node("s1"), cl.add_node("s2")
        cl.wait_assignment({"s1", "s2"}, timeout=30)
        front = cl.add_node("i1", "ingest")
        p = 1
        user = L.users_in_partition(p, P, n=1, prefix=SECRET + "-c-")[0]
        others = L.users_in_partition(p, P, n=3, prefix="keep-c-")
        t0 = L.now_ms() - 600_000
        evs = [ev(f"{SECRET}-c{i}", user, t0 + i) for i in range(6)]
        evs += [ev(f"keep-c{i}", u, t0 + i) for i, u in enumerate(others)]
        self.assertEqual(front.ingest(evs).accepted, len(evs))
        leader, _ = cl.owner_node(p)
        follower = s2 if leader is s1 else s1
        needle = user.encode()
        ckdir = os.path.join(leader.data_dir, "checkpoints")
        poll_until(lambda: L.checkpoint_files(ckdir).get(p), 20, interval=0.1,
                   what="a checkpoint of the user's partition on its leader")
        poll_until(lambda: files_containing(follower.data_dir, needle) or None, 20,
                   interval=0.1, what="the follower's copy of the user")

        r = front.stub.DeleteUser(L.pb().DeleteUserRequest(user_id=user), timeout=60)
        self.assertTrue(r.model_deleted)
        self.assertEqual(files_containing(leader.data_dir, needle, manifest=False), [])
        poll_until(lambda: files_containing(follower.data_dir, needle, False) == [] or None, 30,
                   interval=0.2, what="the user gone from every file of the follower")

        self.assertEqual([L.total_events(front.stub, u) for u in others], [1] * len(others))
        self.assertEqual(L.total_events(front.stub, user), 0)
        # Not asserted here yet: kill -9 of the leader and the promoted follower. On this
        # branch's base the promoted follower answered 0 events for the partition's other
        # users even without any DeleteUser (main at df599a3 answers them); see the report.

if __name__ == "__main__":
    unittest.main()
