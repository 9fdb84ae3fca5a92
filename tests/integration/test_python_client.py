"""The public API through a plain grpcio client (generated service stubs when
grpc_python_plugin is installed): Ingest with per-event rejections, Recommend, profiles,
DeleteUser, health."""
import unittest

import grpc

import eddylib as L


class PythonClientTest(unittest.TestCase):
    def setUp(self):
        self.node = L.start_node(self, args=["--idle-timeout", "0"])
        self.m = L.pb()
        self.stub = self.node.stub
        self.events = L.generate(seed=5, n_users=20, n_products=30, n_categories=4, n_events=1500)
        for batch in L.batches(self.events, [400]):
            r = self.node.ingest(batch)
            self.assertEqual((r.accepted, r.duplicates, len(r.rejected), r.late), (len(batch), 0, 0, 0))
        self.exp = L.Expect(self.events)

    def test_stubs_are_generated(self):
        if not L.stubs().real_stubs:
            self.skipTest("grpc_python_plugin (Debian package protobuf-compiler-grpc) is not "
                          "installed: the tests use channel.unary_unary instead of EddyStub")
        self.assertEqual(type(self.stub).__name__, "EddyStub")

    def test_ingest_batch_with_invalid_events(self):
        m = self.m
        t = L.now_ms() - 60_000
        good = lambda i, **kw: m.Event(event_id=f"mix-{i}", user_id="u-mix", timestamp_ms=t + i,  # noqa: E731
                                       event_type=m.EVENT_TYPE_VIEW, product_id=f"p-{i:03d}",
                                       category="books", **kw)
        events = [
            good(0),
            m.Event(event_id="", user_id="u-mix", timestamp_ms=t, event_type=m.EVENT_TYPE_VIEW, product_id="p-1"),
            good(2),
            m.Event(event_id="mix-3", user_id="", timestamp_ms=t, event_type=m.EVENT_TYPE_VIEW, product_id="p-1"),
            m.Event(event_id="mix-4", user_id="u-mix", timestamp_ms=t, event_type=m.EVENT_TYPE_PURCHASE),
            good(5, price=12.5),
            m.Event(event_id="mix-6", user_id="u-mix", timestamp_ms=t, event_type=m.EVENT_TYPE_SEARCH),
            m.Event(event_id="mix-7", user_id="u-mix", timestamp_ms=t, product_id="p-1"),
            good(8, price=-1.0),
        ]
        r = self.stub.Ingest(m.IngestRequest(events=events), timeout=10)
        self.assertEqual(r.accepted, 3)
        self.assertEqual(r.duplicates, 0)
        got = sorted((x.index, x.field) for x in r.rejected)
        self.assertEqual(got, [(1, "event_id"), (3, "user_id"), (4, "product_id"),
                               (6, "search_query"), (7, "event_type"), (8, "price")])
        for x in r.rejected:
            self.assertTrue(x.reason.startswith(x.field + ":"), x)
        p = self.stub.GetUserProfile(m.GetUserProfileRequest(user_id="u-mix"), timeout=10).profile
        self.assertEqual(p.event_count, 3)
        self.assertEqual([v.product_id for v in p.recent_views], ["p-005", "p-002", "p-000"])
        self.assertEqual((p.price_range.min, p.price_range.max), (12.5, 12.5))

    def test_recommend_known_user(self):
        m = self.m
        users = sorted({e["userId"] for e in self.events})
        with_state = 0
        for user in users:
            want = self.exp.profile(user)
            excluded = {pid for pid, _, _ in want["recent_purchases"]} | {pid for pid, _, _ in want["cart"]}
            r = self.stub.Recommend(m.RecommendRequest(user_id=user, max_recommendations=5), timeout=10)
            self.assertFalse(r.cold_start, user)
            self.assertTrue(0 < len(r.items) <= 5, (user, r))
            ids = [it.product_id for it in r.items]
            self.assertEqual(len(ids), len(set(ids)), f"{user}: duplicate items {ids}")
            self.assertFalse(set(ids) & excluded, f"{user}: recommended purchased/cart items")
            scores = [it.score for it in r.items]
            self.assertEqual(scores, sorted(scores, reverse=True), f"{user}: not best first")
            for it in r.items:
                self.assertTrue(it.reason, f"{user}: item without reason: {it}")
            with_state += bool(excluded)
        self.assertGreater(with_state, 0, "no user had purchases or a cart: weak test data")

    def test_recommend_with_context(self):
        m = self.m
        user = "u-003"
        ctx = m.Context(current_page="product", current_product="p-004", shopping_cart=["p-008", "p-012"])
        r = self.stub.Recommend(m.RecommendRequest(user_id=user, context=ctx, max_recommendations=20),
                                timeout=10)
        ids = {it.product_id for it in r.items}
        self.assertTrue(ids)
        self.assertFalse(ids & {"p-004", "p-008", "p-012"}, ids)
        # default size is 10
        r = self.stub.Recommend(m.RecommendRequest(user_id=user), timeout=10)
        self.assertEqual(len(r.items), 10)

    def test_recommend_cold_user(self):
        m = self.m
        r = self.stub.Recommend(m.RecommendRequest(user_id="u-never-seen", max_recommendations=5), timeout=10)
        self.assertTrue(r.cold_start)
        self.assertTrue(r.items)
        known = {e["productId"] for e in self.events if e.get("productId")}
        for it in r.items:
            self.assertIn(it.product_id, known)
            self.assertTrue(it.reason)
        self.assertTrue(any("trending" in it.reason for it in r.items), [it.reason for it in r.items])

    def test_recommend_requires_user(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.stub.Recommend(self.m.RecommendRequest(user_id=""), timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)

    def test_profile_not_found(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.stub.GetUserProfile(self.m.GetUserProfileRequest(user_id="u-unknown"), timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_profile_matches_events(self):
        for user in ("u-001", "u-010", "u-019"):
            p = self.stub.GetUserProfile(self.m.GetUserProfileRequest(user_id=user), timeout=10).profile
            L.assert_profile(self, L.profile_of_pb(p), self.exp.profile(user), user)

    def test_delete_user(self):
        m = self.m
        user = "u-004"
        mine = [e for e in self.events if e["userId"] == user]
        self.assertTrue(mine)
        windows = {L.window_start(e["timestamp"]) for e in mine}
        before = self.stub.EventCounts(m.EventCountsRequest(user_id=user, include_open=True), timeout=10)
        self.assertEqual(sum(w.counts.total for w in before.windows), len(mine))

        r = self.stub.DeleteUser(m.DeleteUserRequest(user_id=user), timeout=10)
        self.assertTrue(r.model_deleted)
        self.assertEqual(r.windows_deleted, len(windows))
        self.assertEqual(r.log_entries_deleted, len(mine))

        with self.assertRaises(grpc.RpcError) as cm:
            self.stub.GetUserProfile(m.GetUserProfileRequest(user_id=user), timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)
        after = self.stub.EventCounts(m.EventCountsRequest(user_id=user, include_open=True), timeout=10)
        self.assertEqual(list(after.windows), [])
        with self.assertRaises(grpc.RpcError) as cm:
            self.stub.DeleteUser(m.DeleteUserRequest(user_id=user), timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)
        # other users are untouched
        other = "u-005"
        p = self.stub.GetUserProfile(m.GetUserProfileRequest(user_id=other), timeout=10).profile
        L.assert_profile(self, L.profile_of_pb(p), self.exp.profile(other), other)
        # and the deleted user is a cold user now
        rec = self.stub.Recommend(m.RecommendRequest(user_id=user), timeout=10)
        self.assertTrue(rec.cold_start)

    def test_late_event(self):
        """docs/design.md §5: an event for a closed window is accepted and counted late; it enters
        the user model but not the closed window."""
        m = self.m
        user = "u-002"
        closed = self.exp.windows(user=user)
        self.assertTrue(closed)
        ws = closed[0][0]
        before = self.stub.EventCounts(m.EventCountsRequest(user_id=user), timeout=10)
        p0 = self.stub.GetUserProfile(m.GetUserProfileRequest(user_id=user), timeout=10).profile
        ev = m.Event(event_id="late-1", user_id=user, timestamp_ms=ws + 10, event_type=m.EVENT_TYPE_VIEW,
                     product_id="p-late", category="books")
        r = self.stub.Ingest(m.IngestRequest(events=[ev]), timeout=10)
        self.assertEqual((r.accepted, r.late), (1, 1))
        after = self.stub.EventCounts(m.EventCountsRequest(user_id=user), timeout=10)
        self.assertEqual(list(after.windows), list(before.windows))
        self.assertEqual(after.late_events, before.late_events + 1)
        overall = self.stub.EventCounts(m.EventCountsRequest(), timeout=10)
        self.assertEqual(overall.late_events, 1)
        p1 = self.stub.GetUserProfile(m.GetUserProfileRequest(user_id=user), timeout=10).profile
        self.assertEqual(p1.event_count, p0.event_count + 1)
        self.assertEqual(p1.last_update_ms, p0.last_update_ms)  # an older event
        books = lambda p: dict((a.name, a.score) for a in p.category_affinities).get("books", 0.0)  # noqa: E731
        self.assertGreater(books(p1), books(p0))

    def test_health(self):
        h = L.health_pb()
        for service in ("", "eddy.v1.Eddy"):
            r = self.node.health.Check(h.HealthCheckRequest(service=service), timeout=5)
            self.assertEqual(r.status, h.HealthCheckResponse.SERVING, service)
        with self.assertRaises(grpc.RpcError) as cm:
            self.node.health.Check(h.HealthCheckRequest(service="no.such.Service"), timeout=5)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)
        stream = self.node.health.Watch(h.HealthCheckRequest(service=""), timeout=10)
        try:
            first = next(stream)
            self.assertEqual(first.status, h.HealthCheckResponse.SERVING)
        finally:
            stream.cancel()


if __name__ == "__main__":
    unittest.main()
