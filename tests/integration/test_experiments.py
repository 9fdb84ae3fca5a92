"""A/B experiments on Recommend (eddy.v1.Experiments, `eddy experiments`; docs/design.md §4,
Experiments): a real --dev node and the real CLI.

A simulated A/B test where B is planted better: every simulated user has a hidden taste,
the co-occurrence neighbours of the one product it viewed. Variant A ranks by popularity
only (weight-neighbours=0), so its lists hold none of them; B ranks by neighbours only, so
its lists hold them. Users click a liked item in their list with probability 0.5, else the
first item with probability 0.1, and buy a clicked liked item with probability 0.4 (seeded).
`eddy experiments show` must count exactly the clicks and purchases sent (some with the
answer's recommendation_id, the others attributed by the window) and the recommendation
accuracy (listed products, and those clicked or bought, each once), report B's CTR above A's
with disjoint 95% intervals and a significant p-value, and give the same counts after a
kill -9 and restart and after a rebuild from the log (eddy reprocess).
"""
import random
import re
import unittest
import urllib.request

import eddylib as L

GROUPS = 10           # anchor products a-G, each with NEIGHBOURS partners n-G-K
NEIGHBOURS = 5
TRAINERS = 4          # users per (group, partner) who view the anchor, then the partner
POPULAR = 8           # pop-I: viewed by many, the popularity ranking's top
USERS = 300           # simulated users in the experiment
SEED = 15


def ev(m, eid, user, kind, product, ts, category="", price=0.0, rec_id=""):
    return m.Event(event_id=eid, user_id=user, timestamp_ms=ts,
                   event_type=m.EventType.Value("EVENT_TYPE_" + kind.upper()),
                   product_id=product, category=category, price=price,
                   recommendation_id=rec_id)


def warm_up_events(m, t0):
    """Trainers pair each anchor with its partners; crowds make pop-* the most popular."""
    out, i = [], 0
    for g in range(GROUPS):
        for k in range(NEIGHBOURS):
            for t in range(TRAINERS):
                u = f"trainer-{g}-{k}-{t}"
                out.append(ev(m, f"w{i}", u, "view", f"a-{g}", t0 + i, "anchors")); i += 1
                out.append(ev(m, f"w{i}", u, "view", f"n-{g}-{k}", t0 + i, "partners")); i += 1
    for p in range(POPULAR):
        for c in range(40):
            out.append(ev(m, f"w{i}", f"crowd-{c}", "view", f"pop-{p}", t0 + i, "popular"))
            i += 1
    return out


class ExperimentsTest(unittest.TestCase):
    def setUp(self):
        L.require_cli()
        self.m = L.pb()
        self.node = L.start_node(self, data_dir=L.temp_dir(self),
                                 args=["--checkpoint-interval", "0"])
        self.node.own_dir = False

    def cli(self, *args, expect_rc=0):
        return L.cli_json(self, self.node.endpoint, *args, expect_rc=expect_rc)

    def show(self):
        out = self.cli("experiments", "show", "ranking")
        return {s["variant"]: s for s in out["stats"]}

    def recommend(self, user, n=5):
        return self.node.stub.Recommend(self.m.RecommendRequest(user_id=user,
                                                                max_recommendations=n),
                                        timeout=10)

    def test_planted_better_variant_wins_and_counts_survive_restart_and_replay(self):
        m, node = self.m, self.node
        t0 = L.now_ms() - 60_000
        r = node.ingest(warm_up_events(m, t0))
        self.assertEqual(r.accepted, GROUPS * NEIGHBOURS * TRAINERS * 2 + POPULAR * 40)
        users = [f"user-{i}" for i in range(USERS)]
        taste = {u: i % GROUPS for i, u in enumerate(users)}
        r = node.ingest([ev(m, f"h-{u}", u, "view", f"a-{taste[u]}", t0 + 50_000 + i, "anchors")
                         for i, u in enumerate(users)])
        self.assertEqual(r.accepted, USERS)
        # the neighbour lists are cached and refreshed: wait until they hold the pairs
        L.poll_until(lambda: any(it.product_id.startswith("n-3-")
                                 for it in self.recommend("user-3").items),
                     20, interval=0.2, what="neighbours of a-3 in Recommend")

        # bad definitions are refused with the field at fault
        rc, _, err = L.run_cli(node.endpoint, "experiments", "create", "ranking",
                               "--variant", "A:50", "--variant", "A:50")
        self.assertEqual(rc, 1, err)
        self.assertIn("variants[1].name", err)
        rc, _, err = L.run_cli(node.endpoint, "experiments", "create", "ranking",
                               "--variant", "A:50:weight-neighbours=-1")
        self.assertEqual(rc, 1, err)
        self.assertIn("weight_neighbours", err)

        made = self.cli("experiments", "create", "ranking",
                        "--variant", "A:50:weight-neighbours=0,weight-popular=1",
                        "--variant", "B:50:weight-neighbours=5,weight-popular=0",
                        "--click-window", "30m", "--purchase-window", "24h")
        self.assertEqual(made["state"], "running")
        self.assertEqual([v["name"] for v in made["variants"]], ["A", "B"])
        rc, _, err = L.run_cli(node.endpoint, "experiments", "create", "ranking",
                               "--variant", "A:1")
        self.assertEqual(rc, 1)
        self.assertIn("ALREADY_EXISTS", err)
        listed = self.cli("experiments", "list")
        self.assertEqual([e["name"] for e in listed], ["ranking"])

        rnd = random.Random(SEED)
        want = {v: dict(impressions=0, clicks=0, add_to_carts=0, purchases=0, revenue=0.0,
                        recommended=0, recommended_hits=0) for v in ("A", "B")}
        ids, events, liked_shown = set(), [], {"A": 0, "B": 0}
        for i, u in enumerate(users):
            resp = self.recommend(u)
            self.assertEqual(resp.experiment, "ranking")
            self.assertIn(resp.variant, ("A", "B"))
            self.assertTrue(resp.recommendation_id)
            self.assertNotIn(resp.recommendation_id, ids)
            ids.add(resp.recommendation_id)
            v = resp.variant
            want[v]["impressions"] += 1
            listed = [it.product_id for it in resp.items]
            want[v]["recommended"] += len(listed)
            liked = [p for p in listed if p.startswith(f"n-{taste[u]}-")]
            liked_shown[v] += bool(liked)
            ts = L.now_ms()
            rec_id = resp.recommendation_id if i % 2 == 0 else ""  # half by the window
            clicked = None
            if liked and rnd.random() < 0.5:
                clicked = liked[0]
            elif not liked and listed and rnd.random() < 0.1:
                clicked = listed[0]
            if clicked:
                events.append(ev(m, f"c-{u}", u, "click", clicked, ts, rec_id=rec_id))
                # a second click on the same answer: CTR counts answers clicked, once
                events.append(ev(m, f"c2-{u}", u, "click", clicked, ts + 1))
                want[v]["clicks"] += 1
                # accuracy: one listed product clicked (clicked twice, maybe bought: once)
                want[v]["recommended_hits"] += 1
                if clicked in liked and rnd.random() < 0.4:
                    events.append(ev(m, f"b-{u}", u, "purchase", clicked, ts + 1, price=20.0))
                    want[v]["purchases"] += 1
                    want[v]["revenue"] += 20.0
            # never attributed: a product the answer did not list, and a listed product
            # with an id that is not this user's
            events.append(ev(m, f"x-{u}", u, "click", "pop-unlisted", ts + 2))
            if listed:
                events.append(ev(m, f"y-{u}", u, "add_to_cart", listed[-1], ts + 3,
                                 rec_id="not-an-answer"))
        self.assertEqual(liked_shown["A"], 0, "A's popularity lists hold no neighbours")
        self.assertEqual(liked_shown["B"], want["B"]["impressions"])
        self.assertGreater(want["A"]["impressions"], USERS // 3)
        self.assertGreater(want["B"]["impressions"], USERS // 3)
        r = node.ingest(events)
        self.assertEqual(r.accepted, len(events))

        def matches():
            got = self.show()
            return all(got[v][k] == want[v][k] for v in want for k in want[v]) and got
        got = L.poll_until(matches, 10, interval=0.1, what=f"counts {want}")

        a, b = got["A"], got["B"]
        print(f"\nA: {a['impressions']} impressions, CTR {a['ctr']['value']:.3f} "
              f"[{a['ctr']['lo']:.3f}, {a['ctr']['hi']:.3f}]; B: {b['impressions']}, CTR "
              f"{b['ctr']['value']:.3f} [{b['ctr']['lo']:.3f}, {b['ctr']['hi']:.3f}], "
              f"p {b['p_ctr']:.2g}; conversion {a['conversion']['value']:.3f} vs "
              f"{b['conversion']['value']:.3f}, p {b['p_conversion']:.2g}; accuracy "
              f"{a['accuracy']:.3f} vs {b['accuracy']:.3f}")
        self.assertGreater(b["ctr"]["lo"], a["ctr"]["hi"])
        self.assertLess(b["p_ctr"], 0.001)
        self.assertGreater(b["conversion"]["value"], a["conversion"]["value"])
        self.assertLess(b["p_conversion"], 0.01)
        self.assertAlmostEqual(b["revenue_per_impression"]["value"],
                               want["B"]["revenue"] / want["B"]["impressions"])
        self.assertAlmostEqual(b["accuracy"], want["B"]["recommended_hits"] /
                               want["B"]["recommended"])
        self.assertGreater(b["accuracy"], a["accuracy"])
        rc, text, err = L.run_cli(node.endpoint, "experiments", "show", "ranking")
        self.assertEqual(rc, 0, err)
        self.assertIn("CTR [95% CI]", text)
        self.assertRegex(text, r"\nB +%d +%d " % (b["impressions"], b["clicks"]))

        # Prometheus: the per-variant sums, refreshed every 5 s
        def scraped():
            port = next(int(l.split()[2]) for l in node._stdout if l.startswith("metrics on "))
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
            found = re.search(r'^eddy_experiment_clicks\{experiment="ranking",variant="B"\} (\S+)$',
                              text.decode(), re.M)
            return found and float(found.group(1)) == b["clicks"]
        L.poll_until(scraped, 15, interval=0.5, what="eddy_experiment_clicks of B in /metrics")

        # a retried click is a duplicate: counted once
        r = node.ingest([e for e in events if e.event_type == m.EVENT_TYPE_CLICK][:5])
        self.assertEqual(r.duplicates, 5)
        self.assertEqual(self.show(), got)

        # kill -9 and restart: every acknowledged event and its impression is in the log
        node.kill9()
        node.start()
        self.assertEqual(self.show(), got)
        # a rebuild from the log attributes alike
        out = self.cli("reprocess", "--all", "--from-start")
        self.assertGreater(out["records_replayed"], 0)
        self.assertEqual(self.show(), got)

        # stopped: Recommend no longer follows it, its counts stay
        stopped = self.cli("experiments", "stop", "ranking")
        self.assertEqual(stopped["state"], "stopped")
        resp = self.recommend(users[0])
        self.assertEqual(resp.experiment, "")
        self.assertTrue(resp.recommendation_id)
        self.assertEqual(self.show(), got)
        node.stop()
        node.start()
        self.assertEqual(self.cli("experiments", "list")[0]["state"], "stopped")


if __name__ == "__main__":
    unittest.main()
