"""`eddy ingest --inflight N` (docs/cli.md): batches sent with several calls outstanding are
each applied exactly once, even when the node turns some away with RESOURCE_EXHAUSTED and
the CLI resends them, and every bad line is reported with its own line number."""
import json
import os
import unittest

import eddylib as L

N_EVENTS = 2000


class CliIngestTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        L.require_cli()

    def setUp(self):
        # One handler and a queue of one: with 8 calls outstanding most of them are turned
        # away (eddy_backpressure_rejections_total{queue="rpc"}) and must be resent. An
        # allowed lateness of an hour: batches applied out of file order make nothing late,
        # so --inflight-span 0 lets all 8 go out together. (With the default span, the
        # 700-event batches of test_cli_pipeline's 20-minute stream must not overlap: its
        # late count would show it.)
        self.node = L.start_node(self, args=["--handler-threads", "1", "--max-queued-calls", "1",
                                             "--allowed-lateness", "1h"])
        self.events = L.generate(seed=23, n_events=N_EVENTS)
        self.path = os.path.join(L.temp_dir(self), "events.jsonl")
        self.bad_lines = {}  # line number -> the field its rejection names
        bad = {137: ('{"eventId": "x-1", "userId": ', ""),  # not JSON: the client's
               640: (json.dumps({"eventId": "x-2", "userId": "u-1", "timestamp": L.now_ms(),
                                 "eventType": "like"}), "eventType"),  # the client's
               1203: (json.dumps({"eventId": "x-3", "userId": "", "timestamp": L.now_ms(),
                                  "eventType": "view", "productId": "p-1"}), "user_id"),  # server
               1999: (json.dumps({"eventId": "", "userId": "u-2", "timestamp": L.now_ms(),
                                  "eventType": "view", "productId": "p-1"}), "event_id")}  # server
        line, it = 0, iter(self.events)
        with open(self.path, "w") as f:
            for ev in it:
                line += 1
                while line in bad:
                    f.write(bad[line][0] + "\n")
                    self.bad_lines[line] = bad[line][1]
                    line += 1
                if line % 300 == 0:  # blank lines count in the numbering
                    f.write("\n")
                    line += 1
                f.write(json.dumps(ev) + "\n")
        self.total_lines = line

    def ingest(self):
        return L.cli_json(self, self.node.endpoint, "--timeout", "30s", "ingest", self.path,
                          "--inflight", "8", "--inflight-span", "0", "--batch", "100",
                          "--retries", "100",
                          expect_rc=4)

    def busy_rejections(self):
        addr = f"127.0.0.1:{L.metrics_port_of(self.node)}"
        return L.scrape_samples(addr).get('eddy_backpressure_rejections_total{queue="rpc"}', 0)

    def test_each_event_applied_once_and_bad_lines_named(self):
        s = self.ingest()
        self.assertEqual((s["accepted"], s["duplicates"], s["late"]), (N_EVENTS, 0, 0), s)
        self.assertEqual(s["rejected_count"], len(self.bad_lines), s)
        self.assertEqual(s["lines"], self.total_lines, s)
        self.assertEqual({r["line"]: r["field"] for r in s["rejected"]}, self.bad_lines, s)
        self.assertGreater(s["elapsed_ms"], 0, s)
        self.assertGreater(s["events_per_second"], 0, s)
        self.assertGreater(self.busy_rejections(), 0, "no batch was resent: the test proves nothing")
        self.assertEqual(L.total_events(self.node.stub), N_EVENTS)
        for user in ("u-000", "u-013", "u-039"):
            want = sum(1 for e in self.events if e["userId"] == user)
            self.assertEqual(L.total_events(self.node.stub, user), want, user)

        # everything again: the same event ids, nothing counted twice
        s = self.ingest()
        self.assertEqual((s["accepted"], s["duplicates"]), (0, N_EVENTS), s)
        self.assertEqual(sorted(r["line"] for r in s["rejected"]), sorted(self.bad_lines))
        self.assertEqual(L.total_events(self.node.stub), N_EVENTS)


if __name__ == "__main__":
    unittest.main()
