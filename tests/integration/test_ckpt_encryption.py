"""Checkpoints encrypted at rest (--checkpoint-key-file, docs/security.md "Checkpoints"):

- --dev: a node with a key writes checkpoints that start "EDDYCKE1" and hold no user id in
  any byte; `eddy-node --verify-checkpoint` reads them with the key and, without it or with
  another key, fails naming both keys; the node restarted with another key, or with none,
  refuses to start with the same words (never an empty restore); a key file of the wrong
  length is refused at start;
- cluster: a live move between two state nodes sharing one key streams encrypted bytes and
  loads them (every acknowledged event counted once after the move); the shared checkpoint
  directory holds only encrypted files; a third state node with another key over the same
  directory refuses to start.

Needs EDDY_NODE; the cluster test also EDDY_COORDINATOR_BIN and Debian's etcd-server.
"""
import hashlib
import os
import subprocess
import unittest

import eddylib as L
from eddylib import poll_until

CKPT_ARGS = ["--checkpoint-interval", "1s", "--checkpoint-min-pause", "500ms",
             "--idle-timeout", "0"]
SECRET = "secret-user-7f3a9c"  # unique: no other byte string of the test contains it


def ev(eid, user, ts, product="p-001"):
    return {"eventId": eid, "userId": user, "sessionId": "s-" + user, "timestamp": ts,
            "eventType": "view", "productId": product, "category": "books", "brand": "orbit",
            "price": 9.5}


def write_key(test, raw, hex_form=True):
    d = L.temp_dir(test, prefix="eddy-it-key-")
    path = os.path.join(d, "ckpt.key")
    with open(path, "wb") as f:
        f.write(raw.hex().encode() + b"\n" if hex_form else raw)
    os.chmod(path, 0o600)
    return path


def key_id(raw):
    return hashlib.sha256(raw).hexdigest()[:16]


def files_containing(directory, needles):
    """Paths under `directory` whose bytes contain any of `needles` (bytes)."""
    hits = []
    for root, _, names in os.walk(directory):
        for n in names:
            path = os.path.join(root, n)
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            if any(x in data for x in needles):
                hits.append(path)
    return hits


def start_refused(args, timeout=30):
    """Run eddy-node with `args`; it must exit by itself: (rc, stderr)."""
    r = subprocess.run([L.require_node(), *args], capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    return r.returncode, r.stderr


class DevEncryptedCheckpointsTest(unittest.TestCase):
    def setUp(self):
        L.require_node()

    def test_encrypted_checkpoints_and_wrong_keys(self):
        ka, kb = os.urandom(32), os.urandom(32)
        fa = write_key(self, ka)                   # 64 hex digits
        fb = write_key(self, kb, hex_form=False)   # 32 raw bytes
        node = L.start_node(self, args=CKPT_ARGS + ["--checkpoint-key-file", fa])
        ckdir = os.path.join(node.data_dir, "checkpoints")
        P = 256
        user = L.users_in_partition(7, P, n=1, prefix=SECRET + "-")[0]
        t0 = L.now_ms() - 600_000
        events = [ev(f"{SECRET}-ev-{i}", user, t0 + i) for i in range(5)]
        self.assertEqual(node.ingest(events).accepted, 5)
        # the first checkpoint may predate the apply of the five (its file then holds them
        # as log tail): wait for one taken at seq 5 or later
        def applied_checkpoint():
            files = L.checkpoint_files(ckdir).get(7) or []
            return [f for f in files if L.checkpoint_seq(f) >= 5]
        path = poll_until(applied_checkpoint, 20, interval=0.1,
                          what="a checkpoint of partition 7 at seq >= 5")[0]
        with open(path, "rb") as f:
            data = f.read()
        self.assertEqual(data[:8], b"EDDYCKE1")
        self.assertEqual(data[16:24].hex(), key_id(ka))
        self.assertNotIn(SECRET.encode(), data)
        self.assertNotIn(b"books", data)
        self.assertEqual(files_containing(ckdir, [SECRET.encode()]), [])

        rc, info, err = L.verify_checkpoint(path, fa)
        self.assertEqual(rc, 0, err)
        self.assertTrue(info["encrypted"])
        self.assertEqual(info["partition"], 7)
        self.assertGreaterEqual(info["seq"], 5)
        self.assertEqual(info["bytes"], len(data))
        rc, info, err = L.verify_checkpoint(path)
        self.assertEqual(rc, 1)
        self.assertIn(f"checkpoint encrypted with key {key_id(ka)}, this node has none", err)
        rc, info, err = L.verify_checkpoint(path, fb)
        self.assertEqual(rc, 1)
        self.assertIn(f"checkpoint encrypted with key {key_id(ka)}, this node has {key_id(kb)}",
                      err)
        # a changed byte of the ciphertext: corrupt, with the key
        bad = os.path.join(L.temp_dir(self), os.path.basename(path))
        with open(bad, "wb") as f:
            f.write(data[:100] + bytes([data[100] ^ 1]) + data[101:])
        rc, _, err = L.verify_checkpoint(bad, fa)
        self.assertEqual(rc, 1)
        self.assertIn("chunk fails authentication", err)
        node.stop()

        # restarts over the same directories: another key, or none, is refused at start
        base = ["--dev", "--data-dir", node.data_dir, "--listen", "127.0.0.1:0",
                *CKPT_ARGS]
        rc, err = start_refused(base + ["--checkpoint-key-file", fb])
        self.assertNotEqual(rc, 0)
        self.assertIn(f"encrypted with key {key_id(ka)}, this node has {key_id(kb)}", err)
        rc, err = start_refused(base)
        self.assertNotEqual(rc, 0)
        self.assertIn(f"encrypted with key {key_id(ka)}, this node has none", err)
        # a key file that is neither 32 raw bytes nor 64 hex digits
        short = write_key(self, os.urandom(31), hex_form=False)
        rc, err = start_refused(base + ["--checkpoint-key-file", short])
        self.assertNotEqual(rc, 0)
        self.assertIn("--checkpoint-key-file", err)
        self.assertIn("want exactly 32 raw bytes or 64 hex digits", err)
        rc, err = start_refused(base + ["--checkpoint-key-file", "/nonexistent/key"])
        self.assertNotEqual(rc, 0)
        self.assertIn("--checkpoint-key-file /nonexistent/key", err)

        # with its key it starts again and still counts the user's events
        node.start()
        self.assertEqual(L.total_events(node.stub, user), 5)
        node.stop()


class ClusterEncryptedMoveTest(unittest.TestCase):
    def setUp(self):
        L.require_node()
        L.require_coordinator()
        L.require_etcd()

    def test_move_between_nodes_with_a_key(self):
        P = 8
        ka = os.urandom(32)
        fa = write_key(self, ka)
        shared = L.temp_dir(self, prefix="eddy-it-enc-ckp-")
        cl = L.Cluster(self, partitions=P, ttl_s=2,
                       node_args=CKPT_ARGS + ["--route-retries", "30", "--checkpoint-dir",
                                              shared, "--checkpoint-key-file", fa])
        cl.add_coordinator("c1", args=["--min-insync-replicas", "1"])  # s1 alone acknowledges
        cl.add_node("s1", "state")
        cl.wait_assignment({"s1"})
        front = cl.add_node("i1", "ingest")
        t0 = L.now_ms() - 600_000
        users = [f"{SECRET}-{i}" for i in range(24)]
        events = [ev(f"{SECRET}-e{i}", users[i % len(users)], t0 + i, f"p-{i % 5}")
                  for i in range(600)]
        for i in range(0, len(events), 100):
            self.assertEqual(front.ingest(events[i:i + 100]).accepted, 100)
        cl.add_node("s2", "state")
        after = cl.wait_assignment({"s1", "s2"}, timeout=60)
        moved = [p for p in range(P) if after["owners"][p] == "s2"]
        self.assertEqual(len(moved), P // 2)
        log = cl.nodes["s2"].log_text()
        self.assertIn('msg="move: checkpoint loaded"', log)
        self.assertNotIn("checkpoint key mismatch", log)
        poll_until(lambda: L.total_events(front.stub) == len(events) or None, 30,
                   what="every event counted once after the move")
        for u in users[::5]:
            want = sum(1 for e in events if e["userId"] == u)
            self.assertEqual(L.total_events(front.stub, u), want, u)

        # the shared directory: encrypted files only, none holding a user or event id
        files = poll_until(lambda: L.checkpoint_files(shared) or None, 20, interval=0.1,
                           what="checkpoints in the shared directory")
        for paths in files.values():
            for path in paths:
                with open(path, "rb") as f:
                    self.assertEqual(f.read(8), b"EDDYCKE1", path)
        self.assertEqual(files_containing(shared, [SECRET.encode()]), [])

        # a node with another key over the same directory refuses to start
        kb = os.urandom(32)
        fb = write_key(self, kb)
        d = L.temp_dir(self, prefix="eddy-it-enc-s3-")
        rc, err = start_refused(["--role", "state", "--etcd", cl.etcd.url, "--cluster", cl.name,
                                 "--node-id", "s3", "--data-dir", d, "--listen", "127.0.0.1:0",
                                 "--partitions", str(P), *CKPT_ARGS, "--checkpoint-dir", shared,
                                 "--checkpoint-key-file", fb])
        self.assertNotEqual(rc, 0)
        self.assertIn(f"encrypted with key {key_id(ka)}, this node has {key_id(kb)}", err)


if __name__ == "__main__":
    unittest.main()
