"""An acknowledged Ingest is durable: kill -9 right after the last ack, restart on the same
data dir, and every acknowledged event is there exactly once."""
import threading
import unittest

import eddylib as L


def total_events(node):
    r = node.stub.EventCounts(L.pb().EventCountsRequest(include_open=True), timeout=10)
    return sum(w.counts.total for w in r.windows), r


class DurabilityTest(unittest.TestCase):
    ARGS = ["--idle-timeout", "0"]

    def restart(self, data_dir):
        return L.start_node(self, data_dir=data_dir, args=self.ARGS)

    def test_kill9_after_ack(self):
        data_dir = L.temp_dir(self, "eddy-it-durable-")
        node = self.restart(data_dir)
        events = L.generate(seed=31, n_users=25, n_events=2000)
        acked = {}
        prev = []
        for batch in L.batches(events, [150, 300, 77]):
            # every batch also retries the tail of the previous one: duplicates on the wire
            send = prev[-10:] + batch
            r = node.ingest(send)
            self.assertEqual(len(r.rejected), 0, r.rejected)
            self.assertEqual(r.accepted + r.duplicates, len(send))
            for e in send:
                acked[e["eventId"]] = e
            prev = batch
        self.assertEqual(len(acked), len(events))
        node.kill9()

        node = self.restart(data_dir)
        total, counts = total_events(node)
        self.assertEqual(total, len(acked))
        # the user models survived too
        exp = L.Expect(list(acked.values()))
        for user in ("u-000", "u-013"):
            p = node.stub.GetUserProfile(L.pb().GetUserProfileRequest(user_id=user), timeout=10).profile
            L.assert_profile(self, L.profile_of_pb(p), exp.profile(user), user)

        # resending everything: all duplicates, nothing applied twice
        r = node.ingest(list(acked.values()))
        self.assertEqual((r.accepted, r.duplicates, len(r.rejected)), (0, len(acked), 0))
        total2, counts2 = total_events(node)
        self.assertEqual(total2, len(acked))
        self.assertEqual(counts2, counts)
        node.stop()

    def test_sigterm_during_ingest(self):
        """SIGTERM while a client is sending: clean exit 0; every acked event is kept."""
        data_dir = L.temp_dir(self, "eddy-it-durable-")
        node = self.restart(data_dir)
        events = L.generate(seed=41, n_users=25, n_events=6000)
        acked, sent = [], []
        enough = threading.Event()

        def sender():
            try:
                for i, batch in enumerate(L.batches(events, [100])):
                    sent.extend(batch)
                    try:
                        node.stub.Ingest(L.pb().IngestRequest(events=[L.to_pb(e) for e in batch]), timeout=10)
                    except Exception:  # noqa: BLE001 - the node is going away
                        return
                    acked.extend(batch)
                    if i == 5:
                        enough.set()
            finally:
                enough.set()

        t = threading.Thread(target=sender, daemon=True)
        t.start()
        self.assertTrue(enough.wait(30))
        node.stop()  # asserts exit code 0
        t.join(30)
        self.assertFalse(t.is_alive())
        node = self.restart(data_dir)
        total, _ = total_events(node)
        self.assertGreaterEqual(total, len(acked))
        self.assertLessEqual(total, len(sent))
        r = node.ingest(acked)
        self.assertEqual((r.accepted, r.duplicates), (0, len(acked)))
        node.stop()

    def test_kill9_during_ingest(self):
        """Killed while a client is still sending: every acked event survives; events of the
        batch in flight are there all or partly or not at all, never twice."""
        data_dir = L.temp_dir(self, "eddy-it-durable-")
        node = self.restart(data_dir)
        events = L.generate(seed=37, n_users=25, n_events=4000)
        chunks = L.batches(events, [100])
        acked, sent = [], []
        enough = threading.Event()
        done = threading.Event()
        errors = []

        def sender():
            try:
                for i, batch in enumerate(chunks):
                    sent.extend(batch)
                    try:
                        r = node.stub.Ingest(L.pb().IngestRequest(events=[L.to_pb(e) for e in batch]), timeout=10)
                    except Exception:  # noqa: BLE001 - the node was killed under us
                        return
                    if r.accepted != len(batch):
                        errors.append(r)
                    acked.extend(batch)
                    if i == 5:
                        enough.set()
            finally:
                enough.set()
                done.set()

        t = threading.Thread(target=sender, daemon=True)
        t.start()
        self.assertTrue(enough.wait(30))
        node.kill9()
        self.assertTrue(done.wait(30))
        t.join(5)
        self.assertEqual(errors, [])
        self.assertGreaterEqual(len(acked), 600)

        node = self.restart(data_dir)
        total, _ = total_events(node)
        self.assertGreaterEqual(total, len(acked))
        self.assertLessEqual(total, len(sent))
        r = node.ingest(acked)
        self.assertEqual((r.accepted, r.duplicates), (0, len(acked)))
        # the rest can be sent again: exactly the missing ones are accepted
        rest = sent[len(acked):]
        if rest:
            r = node.ingest(rest)
            self.assertEqual(r.accepted + r.duplicates, len(rest))
        total, _ = total_events(node)
        self.assertEqual(total, len(sent))
        node.stop()


if __name__ == "__main__":
    unittest.main()
