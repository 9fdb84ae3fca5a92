"""docs/design.md §4: state is a pure function of the events (event time, no wall clock), so the
same events in two arrival orders (disordered within the out-of-orderness bound) and in
different batch splits give byte-identical user models and windows."""
import random
import unittest

import eddylib as L

TABLES = "user,user_win,part_win,prod_win"


def swap_neighbours(events, seed, bound_ms=L.OUT_OF_ORDERNESS_MS):
    """Sorted by time, then neighbours whose times differ by less than bound_ms swapped
    (non-overlapping pairs, at random): no event arrives after one 5 s or more newer."""
    rnd = random.Random(seed)
    out = sorted(events, key=lambda e: (e["timestamp"], e["eventId"]))
    i = 0
    while i + 1 < len(out):
        if out[i + 1]["timestamp"] - out[i]["timestamp"] < bound_ms and rnd.random() < 0.6:
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


if __name__ == "__main__":
    unittest.main()
