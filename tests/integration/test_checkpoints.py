"""Periodic checkpoints (docs/design.md §7, docs/cluster.md "Checkpoints (schedule)"):

- --dev: with --checkpoint-interval 1s the node writes a checkpoint of exactly the
  partitions that have events into DATA_DIR/checkpoints, each file verifies
  (`eddy-node --verify-checkpoint`) and holds the partition's log seq; new events give a
  new checkpoint, --checkpoint-keep bounds the files, a corrupted newest file is refused
  while the previous one still verifies, and /metrics counts the checkpoints (no failure);
- cluster: etcd + coordinator + one state node: /eddy/<cluster>/checkpoints/<p> describes
  the newest checkpoint of each partition with events, and `eddy status` shows its age.
"""
import json
import os
import subprocess
import unittest

import eddylib as L
from eddylib import poll_until

CKPT_ARGS = ["--checkpoint-interval", "1s", "--checkpoint-min-pause", "500ms",
             "--idle-timeout", "0"]


def ev(eid, user, ts):
    return {"eventId": eid, "userId": user, "sessionId": "s-" + user, "timestamp": ts,
            "eventType": "view", "productId": "p-001", "category": "books", "brand": "orbit",
            "price": 9.5}


class DevCheckpointsTest(unittest.TestCase):
    def setUp(self):
        L.require_node()

    def test_dev_node_checkpoints_partitions_with_events(self):
        node = L.start_node(self, args=CKPT_ARGS + ["--checkpoint-keep", "2"])
        ckdir = os.path.join(node.data_dir, "checkpoints")
        P = 256
        parts = [3, 17, 200]
        users = {p: L.users_in_partition(p, P, n=2) for p in parts}
        t0 = L.now_ms() - 600_000
        events = [ev(f"a-{p}-{i}", u, t0 + i) for p in parts for i, u in enumerate(users[p])]
        r = node.ingest(events)
        self.assertEqual(r.accepted, len(events))

        def newest_for_all():
            files = L.checkpoint_files(ckdir)
            return files if all(p in files for p in parts) else None

        files = poll_until(newest_for_all, 20, interval=0.1, what="checkpoints of 3 partitions")
        self.assertEqual(sorted(files), parts, "only partitions with events are checkpointed")
        for p in parts:
            path = files[p][0]
            rc, info, err = L.verify_checkpoint(path)
            self.assertEqual(rc, 0, err)
            self.assertEqual(info["partition"], p)
            self.assertEqual(info["seq"], 2)  # two events: log seqs 0 and 1
            self.assertEqual(info["bytes"], os.path.getsize(path))
            with open(path, "rb") as f:
                self.assertEqual(f.read(8), b"EDDYCKP1")
            self.assertEqual(os.path.basename(path), f"p{p:05d}-{2:020d}.ckp")

        # new events of partition 3: a newer checkpoint; unchanged partitions get none
        more = [ev(f"b-{i}", users[3][0], t0 + 1000 + i) for i in range(3)]
        self.assertEqual(node.ingest(more).accepted, 3)
        want = f"p{3:05d}-{5:020d}.ckp"
        poll_until(lambda: os.path.basename(L.checkpoint_files(ckdir)[3][0]) == want, 20,
                   interval=0.1, what="a checkpoint of partition 3 at seq 5")
        self.assertEqual(len(L.checkpoint_files(ckdir)[17]), 1)
        more = [ev(f"c-{i}", users[3][1], t0 + 2000 + i) for i in range(2)]
        self.assertEqual(node.ingest(more).accepted, 2)
        want = f"p{3:05d}-{7:020d}.ckp"
        poll_until(lambda: os.path.basename(L.checkpoint_files(ckdir)[3][0]) == want, 20,
                   interval=0.1, what="a checkpoint of partition 3 at seq 7")
        poll_until(lambda: len(L.checkpoint_files(ckdir)[3]) == 2, 10, interval=0.1,
                   what="--checkpoint-keep 2 prunes the oldest")

        # a flipped byte in the newest file: refused; the previous one still verifies
        newest, previous = L.checkpoint_files(ckdir)[3]
        with open(newest, "r+b") as f:
            f.seek(40)
            b = f.read(1)
            f.seek(40)
            f.write(bytes([b[0] ^ 0x5A]))
        rc, _, err = L.verify_checkpoint(newest)
        self.assertEqual(rc, 1)
        self.assertIn("corrupt", err.lower())
        rc, info, err = L.verify_checkpoint(previous)
        self.assertEqual(rc, 0, err)
        self.assertEqual(info["seq"], 5)

        # metrics: checkpoints counted, none failed
        port = L.metrics_port_of(node)
        self.assertIsNotNone(port, "the node prints its metrics port")
        s = L.scrape_samples(f"127.0.0.1:{port}")
        self.assertGreaterEqual(s["eddy_checkpoint_duration_seconds_count"], 5)
        self.assertEqual(s["eddy_checkpoint_failures_total"], 0)
        self.assertGreater(s["eddy_checkpoint_bytes"], 0)
        self.assertGreater(s["eddy_checkpoint_last_success_timestamp_seconds"], 1.6e9)
        # a clean stop with the scheduler running (exit 0; under ASan: no leak)
        node.stop()
        # a restart over the same data dir: nothing changed, nothing rewritten
        before = L.checkpoint_files(ckdir)
        node.start()
        self.assertEqual(node.ingest([ev("d-0", users[17][0], t0 + 3000)]).accepted, 1)
        want = f"p{17:05d}-{3:020d}.ckp"
        poll_until(lambda: os.path.basename(L.checkpoint_files(ckdir)[17][0]) == want, 20,
                   interval=0.1, what="a checkpoint of partition 17 at seq 3 after a restart")
        after = L.checkpoint_files(ckdir)
        self.assertEqual(after[200], before[200])
        self.assertEqual(after[3], before[3])
        node.stop()

    def test_verify_checkpoint_missing_file(self):
        rc, info, err = L.verify_checkpoint("/nonexistent/p00001-00000000000000000001.ckp")
        self.assertEqual(rc, 1)
        self.assertIsNone(info)


class ClusterCheckpointsTest(unittest.TestCase):
    def setUp(self):
        L.require_node()
        L.require_coordinator()
        L.require_etcd()

    def test_checkpoint_records_in_etcd_and_status(self):
        P = 8
        cl = L.Cluster(self, partitions=P, ttl_s=2, node_args=CKPT_ARGS)
        coord = cl.add_coordinator("c1", args=["--replication-factor", "1"])  # one node
        node = cl.add_node("s1", "ingest,state")
        cl.wait_assignment({"s1"})
        parts = [1, 6]
        t0 = L.now_ms() - 600_000
        events = [ev(f"e-{p}-{i}", u, t0 + i) for p in parts
                  for i, u in enumerate(L.users_in_partition(p, P, n=3))]
        r = node.ingest(events)
        self.assertEqual(r.accepted, len(events))

        def records():
            got = {int(k.rsplit("/", 1)[1]): json.loads(v)
                   for k, v in cl.etcd.get_prefix(cl.key("checkpoints/")).items()}
            # 3 events each; the log also holds stage-2 records (STAGE2, OUTBOX_DONE)
            return got if all(p in got and got[p]["seq"] >= 3 for p in parts) else None

        recs = poll_until(records, 20, interval=0.1, what="checkpoints/<p> records in etcd")
        self.assertEqual(sorted(recs), parts)
        for p in parts:
            rec = recs[p]
            self.assertEqual(rec["node"], "s1")
            self.assertEqual(rec["id"], f"p{p:05d}-{rec['seq']:020d}.ckp")
            self.assertTrue(os.path.isabs(rec["path"]), rec["path"])
            self.assertEqual(os.path.basename(rec["path"]), rec["id"])
            rc, info, err = L.verify_checkpoint(rec["path"])
            self.assertEqual(rc, 0, err)
            self.assertEqual((info["seq"], info["bytes"], info["crc"]),
                             (rec["seq"], rec["bytes"], rec["crc"]))
            self.assertGreater(rec["created_ms"], t0)
        # a plain put: the record is on no lease (it must outlive the node)
        lease = cl.etcd.call("/v3/kv/range", {"key": L._b64(cl.key("checkpoints/1"))})
        self.assertEqual(int(lease["kvs"][0].get("lease", 0)), 0)

        if not (L.CLI and os.access(L.CLI, os.X_OK)):
            return
        st = subprocess.run([L.CLI, "--coordinator", f"127.0.0.1:{coord.port}", "-o", "json",
                             "status"], capture_output=True, text=True, timeout=30)
        self.assertEqual(st.returncode, 0, st.stderr)
        status = json.loads(st.stdout)
        for part in status["partitions"]:
            if part["partition"] in parts:
                self.assertGreaterEqual(part["checkpoint_seq"], 3)  # + stage-2 records
                self.assertEqual(part["checkpoint_node"], "s1")
                self.assertGreater(part["checkpoint_bytes"], 0)
                self.assertGreaterEqual(part["checkpoint_age_ms"], 0)
                self.assertLess(part["checkpoint_age_ms"], 120_000)
            else:
                self.assertEqual(part["checkpoint_age_ms"], -1)
                self.assertEqual(part["checkpoint_node"], "")
        by_id = {n["id"]: n for n in status["nodes"]}
        ages = {p["partition"]: p["checkpoint_age_ms"] for p in by_id["s1"]["partitions"]}
        self.assertGreaterEqual(ages[1], 0)
        self.assertEqual(ages[0], -1)
        table = subprocess.run([L.CLI, "--coordinator", f"127.0.0.1:{coord.port}", "status"],
                               capture_output=True, text=True, timeout=30)
        self.assertEqual(table.returncode, 0, table.stderr)
        self.assertIn("CKPT AGE", table.stdout)
        self.assertIn(f"({P - len(parts)} none)", table.stdout)
        node.stop()  # clean exit with the scheduler and its etcd hook running


if __name__ == "__main__":
    unittest.main()
