"""docs/design.md §4: state is a pure function of the events (event time, no wall clock), so the
same events in two arrival orders (disordered within the out-of-orderness bound) and in
different batch splits give byte-identical user models and windows; and three arrival orders
that keep each user's events in order give byte-identical stage 2 (product states, the
category index, co-occurrence pairs) and the same Recommend answers."""
import random
import unittest

import eddylib as L

TABLES = "user,user_win,part_win,prod_win"
STAGE2_TABLES = "product,cat_pop,cooc"
# 4 neighbours read per product among 30 products: lists truncated as the pairs arrived
# (before co-occurrence pairs were kept whole) differed between arrival orders
ARGS = ["--idle-timeout", "0", "--max-neighbours", "4"]


def swap_neighbours(events, seed, bound_ms=L.OUT_OF_ORDERNESS_MS, same_user=True):
    """Sorted by time, then neighbours whose times differ by less than bound_ms swapped
    (non-overlapping pairs, at random): no event arrives after one 5 s or more newer. With
    same_user False, only neighbours of different users."""
    rnd = random.Random(seed)
    out = sorted(events, key=lambda e: (e["timestamp"], e["eventId"]))
    i = 0
    while i + 1 < len(out):
        if out[i + 1]["timestamp"] - out[i]["timestamp"] < bound_ms and rnd.random() < 0.6 and \
                (same_user or out[i]["userId"] != out[i + 1]["userId"]):
            out[i], out[i + 1] = out[i + 1], out[i]
            i += 2
        else:
            i += 1
    return out


def table_lines(dump):
    """{table byte: number of key/value lines} of a --dump-state output."""
    tables = {}
    for line in dump.decode().splitlines():
        key = bytes.fromhex(line.split()[0])
        tables[key[2]] = tables.get(key[2], 0) + 1
    return tables


class DeterminismTest(unittest.TestCase):
    def test_two_arrival_orders_same_state(self):
        events = L.generate(seed=23, n_users=30, n_products=30, n_categories=4, n_events=2500)
        order_a = sorted(events, key=lambda e: (e["timestamp"], e["eventId"]))
        order_b = swap_neighbours(events, seed=99)
        self.assertNotEqual([e["eventId"] for e in order_a], [e["eventId"] for e in order_b])
        self.assertEqual(sorted(e["eventId"] for e in order_a), sorted(e["eventId"] for e in order_b))

        args = ["--idle-timeout", "0"]
        a = L.start_node(self, args=args)
        b = L.start_node(self, args=args)
        for batch in L.batches(order_a, [1000]):
            r = a.ingest(batch)
            self.assertEqual((r.accepted, len(r.rejected), r.late), (len(batch), 0, 0))
        for batch in L.batches(order_b, [1, 7, 250, 33, 499]):
            r = b.ingest(batch)
            self.assertEqual((r.accepted, len(r.rejected), r.late), (len(batch), 0, 0))
        # a retried batch on b: duplicates only, no state change
        r = b.ingest(order_b[100:350])
        self.assertEqual((r.accepted, r.duplicates), (0, 250))

        # the same answers while running
        m = L.pb()
        for req in (m.EventCountsRequest(include_open=True), m.EventCountsRequest(user_id="u-007", include_open=True)):
            self.assertEqual(a.stub.EventCounts(req, timeout=10), b.stub.EventCounts(req, timeout=10))
        req = m.TopProductsRequest(limit=1000, include_open=True)
        self.assertEqual(a.stub.TopProducts(req, timeout=10), b.stub.TopProducts(req, timeout=10))

        a.stop()
        b.stop()
        dump_a, dump_b = a.dump_state(TABLES), b.dump_state(TABLES)
        # not trivially equal: every table has rows (30 users, their windows, ...)
        lines = table_lines(dump_a)
        self.assertEqual(len(lines), 4, f"tables in the dump: {lines}")
        self.assertGreaterEqual(sum(lines.values()), 30 + 30 + 20 + 30, lines)
        self.assertEqual(max(lines.values()) >= 30, True, lines)
        if dump_a != dump_b:
            la, lb = dump_a.decode().splitlines(), dump_b.decode().splitlines()
            diff = [(x, y) for x, y in zip(la, lb) if x != y][:5]
            self.fail(f"state differs: {len(la)} vs {len(lb)} lines; first differences: {diff}")
        self.assertEqual(dump_a, dump_b)

    def test_stage2_three_arrival_orders_same_state(self):
        """Stage 2 and Recommend too, for arrival orders that keep each user's own events
        in order (a cluster and --dev see the same: a user's events go to one partition):
        the co-occurrence pairs an event makes are those of the user's items before it in
        the user's log, so swapping a user's own events changes them."""
        events = L.generate(seed=23, n_users=30, n_products=30, n_categories=4, n_events=2500)
        orders = [sorted(events, key=lambda e: (e["timestamp"], e["eventId"])),
                  swap_neighbours(events, seed=99, same_user=False),
                  swap_neighbours(events, seed=7, same_user=False)]
        splits = [[1000], [1, 7, 250, 33, 499], [333, 2, 90]]
        for o in orders[1:]:
            self.assertNotEqual([e["eventId"] for e in orders[0]], [e["eventId"] for e in o])
            self.assertEqual(sorted(e["eventId"] for e in orders[0]), sorted(e["eventId"] for e in o))

        nodes = [L.start_node(self, args=ARGS) for _ in orders]
        for n, o, split in zip(nodes, orders, splits):
            for batch in L.batches(o, split):
                r = n.ingest(batch)
                self.assertEqual((r.accepted, len(r.rejected), r.late), (len(batch), 0, 0))
        # a retried batch: duplicates only, no state change
        r = nodes[1].ingest(orders[1][100:350])
        self.assertEqual((r.accepted, r.duplicates), (0, 250))

        # the same answers while running (--dev applies stage 2 in the events' own write:
        # settled once they are acknowledged)
        m = L.pb()
        heaviest = [u for u, _ in sorted(
            {e["userId"]: sum(1 for x in events if x["userId"] == e["userId"])
             for e in events}.items(), key=lambda kv: (-kv[1], kv[0]))[:20]]
        reqs = [m.EventCountsRequest(include_open=True),
                m.EventCountsRequest(user_id="u-007", include_open=True),
                m.TopProductsRequest(limit=1000, include_open=True)]
        reqs += [m.RecommendRequest(user_id=u, max_recommendations=20) for u in heaviest]
        for req in reqs:
            call = {"EventCountsRequest": "EventCounts", "TopProductsRequest": "TopProducts",
                    "RecommendRequest": "Recommend"}[type(req).__name__]
            answers = [getattr(n.stub, call)(req, timeout=10) for n in nodes]
            if call == "Recommend":
                self.assertTrue(answers[0].items, req)
                for ans in answers:  # names the answer: the serving node's clock and counter
                    ans.ClearField("recommendation_id")
            for k, got in enumerate(answers[1:], 1):
                self.assertEqual(answers[0], got, f"{call} {req} in order {k}")

        for n in nodes:
            n.stop()
        dumps = [n.dump_state(TABLES + "," + STAGE2_TABLES) for n in nodes]
        # not trivially equal: every table has rows (30 users, their windows, ...)
        lines = table_lines(dumps[0])
        self.assertEqual(len(lines), 7, f"tables in the dump: {lines}")
        self.assertGreaterEqual(sum(lines.values()), 30 + 30 + 20 + 30, lines)
        self.assertEqual(max(lines.values()) >= 30, True, lines)
        for k, d in enumerate(dumps[1:], 1):
            if d != dumps[0]:
                la, lb = dumps[0].decode().splitlines(), d.decode().splitlines()
                diff = [(x, y) for x, y in zip(la, lb) if x != y][:5]
                self.fail(f"state of order {k} differs: {len(la)} vs {len(lb)} lines; "
                          f"first differences: {diff}")


if __name__ == "__main__":
    unittest.main()
