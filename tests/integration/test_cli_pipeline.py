"""End to end through the eddy CLI: ingest a generated JSON-lines stream with
`eddy ingest`, then check windows, top products and profiles (through the CLI and the
Python client) against what the test computes from the same events."""
import os
import unittest

import eddylib as L


class CliPipelineTest(unittest.TestCase):
    N_EVENTS = 3000

    @classmethod
    def setUpClass(cls):
        L.require_cli()

    def setUp(self):
        # --idle-timeout 0: watermarks move only with event time, so the expectation is a
        # pure function of the events (no processing-time idleness).
        self.node = L.start_node(self, args=["--idle-timeout", "0"])
        self.events = L.generate(seed=11, n_users=40, n_products=30, n_categories=4,
                                 n_events=self.N_EVENTS)
        self.exp = L.Expect(self.events)
        self.path = os.path.join(L.temp_dir(self), "events.jsonl")
        L.write_jsonl(self.path, self.events)
        summary = L.cli_json(self, self.node.endpoint, "ingest", self.path, "--batch", "700")
        self.assertEqual(summary["accepted"], self.N_EVENTS, summary)
        self.assertEqual(summary["duplicates"], 0, summary)
        self.assertEqual(summary["late"], 0, summary)
        self.assertEqual(summary["rejected_count"], 0, summary)
        self.assertEqual(summary["lines"], self.N_EVENTS, summary)

    def cli(self, *args, expect_rc=0):
        return L.cli_json(self, self.node.endpoint, *args, expect_rc=expect_rc)

    def test_window_counts(self):
        exp = self.exp
        # the stream spans ~20 one-minute windows; most of them are closed
        want = exp.windows()
        self.assertGreaterEqual(len(want), 10)
        got = self.cli("counts")
        self.assertEqual(got["watermark_ms"], exp.watermark)
        self.assertEqual(got["late_events"], 0)
        self.assertEqual([(w["window_start_ms"], w["window_end_ms"], w["counts"], w["closed"])
                          for w in got["windows"]], want)

        want_all = exp.windows(include_open=True)
        self.assertGreater(len(want_all), len(want), "expected some still-open windows")
        got = self.cli("counts", "--include-open")
        self.assertEqual([(w["window_start_ms"], w["window_end_ms"], w["counts"], w["closed"])
                          for w in got["windows"]], want_all)
        self.assertEqual(sum(w[2]["total"] for w in want_all), self.N_EVENTS)

        # a range: windows starting in [from, to)
        frm, to = want[2][0], want[6][0]
        got = self.cli("counts", "--from", str(frm), "--to", str(to))
        self.assertEqual([w["window_start_ms"] for w in got["windows"]],
                         [w[0] for w in want if frm <= w[0] < to])

        # the same through the Python client
        r = self.node.stub.EventCounts(L.pb().EventCountsRequest(), timeout=10)
        self.assertEqual(r.watermark_ms, exp.watermark)
        self.assertEqual([(w.window_start_ms, w.window_end_ms, L.counts_of_pb(w.counts), w.closed)
                          for w in r.windows], want)

    def test_user_window_counts(self):
        for user in ("u-000", "u-007", "u-039"):
            want = self.exp.windows(user=user, include_open=True)
            self.assertTrue(want, user)
            got = self.cli("counts", "--user", user, "--include-open")
            self.assertEqual(got["watermark_ms"], self.exp.user_watermark(user), user)
            self.assertEqual([(w["window_start_ms"], w["window_end_ms"], w["counts"], w["closed"])
                              for w in got["windows"]], want, user)
            r = self.node.stub.EventCounts(L.pb().EventCountsRequest(user_id=user), timeout=10)
            self.assertEqual([(w.window_start_ms, w.window_end_ms, L.counts_of_pb(w.counts), w.closed)
                              for w in r.windows], [w for w in want if w[3]], user)

    def test_top_products(self):
        exp = self.exp
        cats = sorted({e["category"] for e in self.events if e.get("category")})
        self.assertEqual(len(cats), 4)

        def rows(j):
            return [(p["product_id"], p["category"], p["counts"]) for p in j["products"]]

        got = self.cli("top", "--limit", "1000")
        self.assertEqual(got["watermark_ms"], exp.watermark)
        self.assertEqual(rows(got), exp.top())
        self.assertEqual(rows(self.cli("top")), exp.top(limit=10))  # default limit 10
        self.assertEqual(rows(self.cli("top", "--limit", "1000", "--include-open")),
                         exp.top(include_open=True))
        self.assertEqual(rows(self.cli("top", "--limit", "1000", "--type", "purchase")),
                         exp.top(event_type="purchase"))
        for c in cats:
            want = exp.top(category=c)
            self.assertTrue(want, c)
            self.assertEqual(rows(self.cli("top", "--category", c, "--limit", "1000")), want, c)
            self.assertEqual(rows(self.cli("top", "--category", c, "--limit", "3")), want[:3], c)
            r = self.node.stub.TopProducts(L.pb().TopProductsRequest(category=c, limit=1000),
                                           timeout=10)
            self.assertEqual([(p.product_id, p.category, L.counts_of_pb(p.counts)) for p in r.products],
                             want, c)
        self.assertEqual(rows(self.cli("top", "--category", "no-such-category")), [])

    def test_profiles(self):
        users = sorted({e["userId"] for e in self.events})
        checked_cart = checked_purchase = 0
        for user in users[:12]:
            want = self.exp.profile(user)
            got = L.profile_of_json(self.cli("profile", user))
            L.assert_profile(self, got, want, f"cli {user}")
            r = self.node.stub.GetUserProfile(L.pb().GetUserProfileRequest(user_id=user), timeout=10)
            L.assert_profile(self, L.profile_of_pb(r.profile), want, f"grpc {user}")
            checked_cart += bool(want["cart"])
            checked_purchase += bool(want["recent_purchases"])
        # the generated data exercised what the assertions are about
        self.assertGreater(checked_cart, 0)
        self.assertGreater(checked_purchase, 0)
        rc, _, err = L.run_cli(self.node.endpoint, "profile", "u-nobody")
        self.assertEqual(rc, 1, err)
        self.assertIn("NOT_FOUND", err)

    def test_reingest_is_idempotent(self):
        summary = self.cli("ingest", self.path)
        self.assertEqual(summary["accepted"], 0, summary)
        self.assertEqual(summary["duplicates"], self.N_EVENTS, summary)
        got = self.cli("counts", "--include-open")
        self.assertEqual(sum(w["counts"]["total"] for w in got["windows"]), self.N_EVENTS)


if __name__ == "__main__":
    unittest.main()
