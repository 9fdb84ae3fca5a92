"""docs/design.md §9: bad requests get the documented status, bad events their own rejection
(index, field, reason) while the valid events of the batch land, and the node keeps
serving afterwards."""
import math
import unittest

import grpc

import eddylib as L

MAX_BATCH = 100
MAX_MESSAGE = 64 * 1024


class BadInputTest(unittest.TestCase):
    def setUp(self):
        self.node = L.start_node(self, args=["--max-message-size", "64k", "--max-batch", str(MAX_BATCH),
                                             "--idle-timeout", "0"])
        self.m = L.pb()
        self.t = L.now_ms() - 120_000
        self.n = 0
        self.raw_ingest = L.raw_method(self.node.channel, "/eddy.v1.Eddy/Ingest")

    def tearDown(self):
        # whatever happened, the node still serves and takes a valid event
        if self.node.proc.poll() is not None:
            self.fail(f"eddy-node died (rc={self.node.proc.returncode})\n{self.node.log_tail()}")
        h = L.health_pb()
        r = self.node.health.Check(h.HealthCheckRequest(service=""), timeout=5)
        self.assertEqual(r.status, h.HealthCheckResponse.SERVING)
        r = self.node.stub.Ingest(self.m.IngestRequest(events=[self.good("after")]), timeout=10)
        self.assertEqual((r.accepted, len(r.rejected)), (1, 0))

    def good(self, tag="ok", **kw):
        self.n += 1
        base = dict(event_id=f"{tag}-{self.n}", user_id="u-bad", timestamp_ms=self.t + self.n,
                    event_type=self.m.EVENT_TYPE_VIEW, product_id="p-001", category="books")
        base.update(kw)
        return self.m.Event(**base)

    def assert_code(self, fn, code):
        with self.assertRaises(grpc.RpcError) as cm:
            fn()
        self.assertEqual(cm.exception.code(), code, cm.exception.details())
        self.assertTrue(cm.exception.details(), "error without a message")
        return cm.exception

    def profile_count(self, user="u-bad"):
        try:
            return self.node.stub.GetUserProfile(self.m.GetUserProfileRequest(user_id=user),
                                                 timeout=10).profile.event_count
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return 0
            raise

    def test_malformed_protobuf(self):
        for blob in (b"\xff\xff\xff\xff",                  # invalid tag
                     b"\x0a\xff\xff\xff\xff\x0f",          # field 1 length beyond the message
                     b"\x0a\x05\x0a\x03ab",                # nested Event truncated
                     b"\x0a\x03\x22\x80\x80",              # truncated varint in Event.timestamp_ms
                     b"\x08"):                             # varint field with no value
            self.assert_code(lambda: self.raw_ingest(blob, timeout=10), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(self.profile_count(), 0)

    def test_oversized_message(self):
        # 100 events (within --max-batch) of ~2.1 KB each: ~210 KB, over the 64 KiB limit
        req = self.m.IngestRequest(events=[self.good("big", metadata={"k": "v" * 2100})
                                           for _ in range(MAX_BATCH)])
        size = req.ByteSize()
        self.assertGreater(size, 200 * 1024)
        self.assert_code(lambda: self.node.stub.Ingest(req, timeout=10), grpc.StatusCode.RESOURCE_EXHAUSTED)
        # also as raw bytes of ~200 KiB
        blob = self.m.IngestRequest(events=[self.good(metadata={"k": "v" * 3000})] * 68).SerializeToString()
        self.assertGreater(len(blob), 200 * 1024)
        self.assert_code(lambda: self.raw_ingest(blob, timeout=10), grpc.StatusCode.RESOURCE_EXHAUSTED)
        # just under the limit is fine
        r = self.node.stub.Ingest(self.m.IngestRequest(events=[self.good(metadata={"k": "v" * 3000})] * 1),
                                  timeout=10)
        self.assertEqual(r.accepted, 1)
        self.assertEqual(self.profile_count(), 1)

    def test_batch_too_large(self):
        events = [self.good() for _ in range(MAX_BATCH + 1)]
        e = self.assert_code(lambda: self.node.stub.Ingest(self.m.IngestRequest(events=events), timeout=10),
                             grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn(str(MAX_BATCH), e.details())
        self.assertEqual(self.profile_count(), 0, "no event of a refused batch is applied")
        r = self.node.stub.Ingest(self.m.IngestRequest(events=events[:MAX_BATCH]), timeout=10)
        self.assertEqual(r.accepted, MAX_BATCH)

    def test_invalid_fields(self):
        m = self.m
        now = L.now_ms()
        long_id = "x" * 129
        cases = [  # (event, field)
            (self.good(event_id=""), "event_id"),
            (self.good(user_id=""), "user_id"),
            (self.good(event_type=m.EVENT_TYPE_UNSPECIFIED), "event_type"),
            (self.good(event_type=99), "event_type"),
            (self.good(product_id=""), "product_id"),                              # VIEW
            (self.good(event_type=m.EVENT_TYPE_PURCHASE, product_id=""), "product_id"),
            (self.good(event_type=m.EVENT_TYPE_CLICK, product_id=""), "product_id"),
            (self.good(event_type=m.EVENT_TYPE_SEARCH, product_id=""), "search_query"),
            (self.good(event_type=m.EVENT_TYPE_SEARCH, search_query="q" * 513), "search_query"),
            (self.good(timestamp_ms=now + 3_600_000), "timestamp_ms"),
            (self.good(timestamp_ms=0), "timestamp_ms"),
            (self.good(timestamp_ms=-5), "timestamp_ms"),
            (self.good(price=-0.01), "price"),
            (self.good(price=math.nan), "price"),
            (self.good(price=math.inf), "price"),
            (self.good(event_id=long_id), "event_id"),
            (self.good(user_id=long_id), "user_id"),
            (self.good(session_id=long_id), "session_id"),
            (self.good(product_id=long_id), "product_id"),
            (self.good(category="c" * 129), "category"),
            (self.good(metadata={f"k{i}": "v" for i in range(33)}), "metadata"),
            (self.good(metadata={"k": "v" * 4096}), "metadata"),
            (self.good(metadata={"": "v"}), "metadata"),
            (self.good(event_id="ev\x01ctl"), "event_id"),
            (self.good(user_id="u\nbad"), "user_id"),
            (self.good(product_id="p\x7f"), "product_id"),
        ]
        valid = [self.good("valid") for _ in range(len(cases) + 1)]
        events, want = [], {}
        for i, (ev, field) in enumerate(cases):  # valid and invalid events interleaved
            events.append(valid[i])
            want[len(events)] = field
            events.append(ev)
        events.append(valid[-1])
        resp = self.raw_ingest(m.IngestRequest(events=events).SerializeToString(), timeout=10)
        r = m.IngestResponse.FromString(resp)
        got = {x.index: x.field for x in r.rejected}
        self.assertEqual(got, want, "\n".join(f"{x.index}: {x.field}: {x.reason}" for x in r.rejected))
        for x in r.rejected:
            self.assertTrue(x.reason.startswith(x.field + ":"), x)
        self.assertEqual(len(r.rejected), len(set(x.index for x in r.rejected)), "one rejection per event")
        self.assertEqual(r.accepted, len(valid))
        self.assertEqual(r.duplicates, 0)
        # exactly the valid events landed
        self.assertEqual(self.profile_count(), len(valid))
        c = self.node.stub.EventCounts(m.EventCountsRequest(user_id="u-bad", include_open=True), timeout=10)
        self.assertEqual(sum(w.counts.total for w in c.windows), len(valid))

    def test_non_utf8_strings(self):
        """Non-UTF-8 bytes in a string field: a per-event rejection naming the field; the
        valid events of the batch land."""
        m = self.m
        bad_values = [b"BAD\xff\xfe8-A", b"BAD\xc3\x28-B", b"BAD\xed\xa0\x80-C", b"BAD\xc0\xaf-D",
                      b"BAD\xe2\x82"]
        fields = ["event_id", "user_id", "product_id", "session_id", "category"]
        events, patches, want = [], [], {}
        for i, (field, bad) in enumerate(zip(fields, bad_values)):
            events.append(self.good("valid"))
            # Python cannot put these in a str field: a same-length marker is patched in the
            # wire bytes (so the framing stays valid)
            marker = f"{i}".encode() + b"M" * (len(bad) - 1)
            events.append(self.good(**{field: marker.decode()}))
            patches.append((marker, bad))
            want[len(events) - 1] = field
        blob = m.IngestRequest(events=events).SerializeToString()
        for marker, bad in patches:
            self.assertEqual(blob.count(marker), 1)
            blob = blob.replace(marker, bad)
        r = m.IngestResponse.FromString(self.raw_ingest(blob, timeout=10))
        self.assertEqual({x.index: x.field for x in r.rejected}, want,
                         [(x.index, x.reason) for x in r.rejected])
        self.assertEqual(r.accepted, len(fields))
        self.assertEqual(self.profile_count(), len(fields))

    def test_limits_are_inclusive(self):
        """Values at the limits are accepted."""
        at_limit = [
            self.good(event_id="e" * 128),
            self.good(user_id="u" * 128),
            self.good(event_type=self.m.EVENT_TYPE_SEARCH, product_id="", search_query="q" * 512),
            self.good(metadata={f"k{i}": "v" for i in range(32)}),
            self.good(timestamp_ms=L.now_ms() + 60_000),
            self.good(price=0.0),
            self.good(user_id="ü-ok-ユーザー"),
        ]
        r = self.node.stub.Ingest(self.m.IngestRequest(events=at_limit), timeout=10)
        self.assertEqual([(x.index, x.reason) for x in r.rejected], [])
        self.assertEqual(r.accepted, len(at_limit))

    def test_unknown_method(self):
        for path in ("/eddy.v1.Eddy/NoSuchMethod", "/no.such.Service/Ingest"):
            self.assert_code(lambda: L.raw_method(self.node.channel, path)(b"", timeout=10),
                             grpc.StatusCode.UNIMPLEMENTED)

    def test_bad_queries(self):
        m = self.m
        self.assert_code(lambda: self.node.stub.GetUserProfile(m.GetUserProfileRequest(), timeout=10),
                         grpc.StatusCode.INVALID_ARGUMENT)
        self.assert_code(lambda: self.node.stub.DeleteUser(m.DeleteUserRequest(), timeout=10),
                         grpc.StatusCode.INVALID_ARGUMENT)
        self.assert_code(lambda: self.node.stub.EventCounts(m.EventCountsRequest(start_ms=10, end_ms=5), timeout=10),
                         grpc.StatusCode.INVALID_ARGUMENT)
        self.assert_code(lambda: self.node.stub.TopProducts(m.TopProductsRequest(start_ms=10, end_ms=5), timeout=10),
                         grpc.StatusCode.INVALID_ARGUMENT)
        for method in ("Recommend", "GetUserProfile", "TopProducts", "EventCounts", "DeleteUser"):
            self.assert_code(lambda: L.raw_method(self.node.channel, f"/eddy.v1.Eddy/{method}")(b"\xff\xff", timeout=10),
                             grpc.StatusCode.INVALID_ARGUMENT)


if __name__ == "__main__":
    unittest.main()
