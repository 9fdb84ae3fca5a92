"""Tokens with roles, audit and per-tenant quotas (docs/security.md) on a real eddy-node
--dev with --token-file, driven by grpcio and the eddy CLI: a call without a token or with
an unknown one is UNAUTHENTICATED, a token without the method's role PERMISSION_DENIED; an
ingest token ingests; an admin's DeleteUser leaves an audit line and moves
eddy_admin_calls_total; a rewritten token file is taken without a restart; a tenant over
its quota gets RESOURCE_EXHAUSTED with retry-after-ms while another tenant's calls go on,
and the CLI waits that delay and succeeds. Over TLS, a client certificate that a `cert:`
line maps to roles gets exactly those roles without a token."""
import hashlib
import os
import time
import unittest

import grpc

import eddylib as L


def line(secret, tenant, roles, extra=""):
    return f"sha256:{hashlib.sha256(secret.encode()).hexdigest()} tenant={tenant} roles={roles} {extra}\n"


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(tmp, path)


def bearer(secret):
    return [("authorization", f"Bearer {secret}")]


class AuthTest(unittest.TestCase):
    def setUp(self):
        self.dir = L.temp_dir(self, "eddy-it-auth-")
        self.path = os.path.join(self.dir, "tokens")
        self.admin = None
        if L.CLI:  # the CLI's `eddy token new` makes the admin's secret and line
            rc, out, err = L.run_cli("127.0.0.1:1", "-o", "json", "token", "new", "--tenant", "ops",
                                     "--roles", "admin")
            self.assertEqual(rc, 0, err)
            j = __import__("json").loads(out)
            self.admin, admin_line = j["token"], j["line"] + "\n"
            self.assertTrue(admin_line.startswith("sha256:"))
            self.assertNotIn(self.admin, admin_line)
        else:
            self.admin, admin_line = "adm-secret", line("adm-secret", "ops", "admin")
        self.base = (line("shop-secret", "shop", "ingest,read") + line("bi-secret", "bi", "read")
                     + admin_line
                     + line("flood-secret", "flood", "ingest", "events_per_s=50 calls_per_s=1000")
                     + line("slow-secret", "slow", "read", "calls_per_s=0.2"))
        write_atomic(self.path, self.base)
        self.node = L.start_node(self, args=["--token-file", self.path, "--metrics-listen",
                                             "127.0.0.1:0", "--log-level", "info",
                                             "--idle-timeout", "0"])
        self.m = L.pb()
        self.mport = L.poll_until(lambda: L.metrics_port_of(self.node), 10, what="metrics port")

    def code_of(self, fn, *args, **kw):
        try:
            fn(*args, timeout=10, **kw)
            return grpc.StatusCode.OK
        except grpc.RpcError as e:
            return e.code()

    def recommend(self, secret=None, user="u1"):
        md = bearer(secret) if secret else None
        return self.code_of(self.node.stub.Recommend, self.m.RecommendRequest(user_id=user),
                            metadata=md)

    def ingest(self, secret, events):
        return self.code_of(self.node.stub.Ingest, self.m.IngestRequest(events=events),
                            metadata=bearer(secret))

    def events(self, prefix, n, user="u1"):
        t = L.now_ms() - 60_000
        return [self.m.Event(event_id=f"{prefix}-{i}", user_id=user, timestamp_ms=t + i,
                             event_type=self.m.EVENT_TYPE_VIEW, product_id=f"p-{i % 7}",
                             category="books") for i in range(n)]

    def samples(self):
        return L.scrape_samples(f"127.0.0.1:{self.mport}")

    def test_tokens_roles_and_audit(self):
        S = grpc.StatusCode
        self.assertEqual(self.recommend(None), S.UNAUTHENTICATED)
        self.assertEqual(self.recommend("no-such-secret"), S.UNAUTHENTICATED)
        self.assertEqual(self.code_of(self.node.stub.Recommend, self.m.RecommendRequest(user_id="u1"),
                                      metadata=[("authorization", "shop-secret")]),
                         S.UNAUTHENTICATED)  # not "Bearer ..."
        self.assertEqual(self.recommend("bi-secret"), S.OK)
        self.assertEqual(self.ingest("bi-secret", self.events("bi", 2)), S.PERMISSION_DENIED)
        self.assertEqual(self.code_of(self.node.stub.DeleteUser,
                                      self.m.DeleteUserRequest(user_id="u-del"),
                                      metadata=bearer("bi-secret")), S.PERMISSION_DENIED)
        # health stays open (probes have no token)
        h = L.health_pb()
        self.assertEqual(self.node.health.Check(h.HealthCheckRequest(service=""), timeout=5).status,
                         h.HealthCheckResponse.SERVING)
        # an ingest token ingests; the read token of the same tenant reads it back
        r = self.node.stub.Ingest(self.m.IngestRequest(events=self.events("shop", 3, "u-del")),
                                  timeout=10, metadata=bearer("shop-secret"))
        self.assertEqual(r.accepted, 3)
        p = self.node.stub.GetUserProfile(self.m.GetUserProfileRequest(user_id="u-del"), timeout=10,
                                          metadata=bearer("shop-secret")).profile
        self.assertEqual(p.event_count, 3)
        before = self.samples().get('eddy_admin_calls_total{method="DeleteUser",code="OK"}', 0)
        d = self.node.stub.DeleteUser(self.m.DeleteUserRequest(user_id="u-del"), timeout=10,
                                      metadata=bearer(self.admin))
        self.assertTrue(d.model_deleted)
        self.assertEqual(self.samples()['eddy_admin_calls_total{method="DeleteUser",code="OK"}'],
                         before + 1)
        s = self.samples()
        self.assertEqual(s['eddy_admin_calls_total{method="DeleteUser",code="PermissionDenied"}'], 1)
        self.assertEqual(s['eddy_auth_failures_total{reason="missing_token"}'], 1)
        self.assertEqual(s['eddy_auth_failures_total{reason="unknown_token"}'], 2)
        self.assertEqual(s['eddy_auth_failures_total{reason="permission_denied"}'], 2)
        admin_id = hashlib.sha256(self.admin.encode()).hexdigest()[:12]
        audit = L.poll_until(lambda: [l for l in self.node.log_tail(400).splitlines()
                                      if 'msg="admin call"' in l and "code=OK" in l], 10,
                             what="the audit line of DeleteUser")
        self.assertEqual(len(audit), 1, audit)
        self.assertIn(f'who="ops/sha256:{admin_id}"', audit[0])
        self.assertIn("method=/eddy.v1.Eddy/DeleteUser", audit[0])
        self.assertIn('target="user_id=u-del"', audit[0])
        self.assertIn("duration_ms=", audit[0])
        self.assertNotIn(self.admin, self.node.log_tail(400))  # the secret is never logged
        denied = [l for l in self.node.log_tail(400).splitlines()
                  if 'msg="admin call"' in l and "code=PermissionDenied" in l]
        self.assertEqual(len(denied), 1, denied)
        self.assertIn('who="bi/sha256:', denied[0])

        if L.CLI:  # the CLI's --token and EDDY_TOKEN
            rc, out, err = L.run_cli(self.node.endpoint, "recommend", "u1")
            self.assertEqual(rc, 1, err)
            self.assertIn("UNAUTHENTICATED", err)
            rc, out, err = L.run_cli(self.node.endpoint, "--token", "bi-secret", "recommend", "u1")
            self.assertEqual(rc, 0, err)
            rc, out, err = L.run_cli(self.node.endpoint, "--token", "bi-secret", "delete-user", "u1")
            self.assertEqual(rc, 1)
            self.assertIn("PERMISSION_DENIED", err)

    def test_reload(self):
        S = grpc.StatusCode
        self.assertEqual(self.recommend("bi-secret"), S.OK)
        self.assertEqual(self.recommend("bi-secret-2"), S.UNAUTHENTICATED)
        # rotate: bi's old secret out, a new one in, in one rewrite of the file
        write_atomic(self.path, self.base.replace(line("bi-secret", "bi", "read"),
                                                  line("bi-secret-2", "bi", "read")))
        L.poll_until(lambda: self.recommend("bi-secret-2") == S.OK, 15,
                     what="the new token to be taken")
        self.assertEqual(self.recommend("bi-secret"), S.UNAUTHENTICATED)
        # a bad file keeps the tokens in use, and says why in the log
        write_atomic(self.path, "sha256:zz tenant=bi roles=read\n")
        L.poll_until(lambda: "token file not reloaded" in self.node.log_tail(200), 15,
                     what="the bad file's log line")
        self.assertIn("line 1: the hash is not 64 hex digits", self.node.log_tail(200))
        self.assertEqual(self.recommend("bi-secret-2"), S.OK)

    def test_quota(self):
        """'flood' may ingest 50 events/s: a first batch of 100 is taken whole (the bucket
        was full), and the debt refuses the next ones with a retry delay of up to 2 s (so a
        slow, loaded machine still sees it); 'bi' keeps reading meanwhile."""
        S = grpc.StatusCode
        refused = None
        ok_batches = 0
        for i in range(50):
            try:
                self.node.stub.Ingest(self.m.IngestRequest(events=self.events(f"f{i}", 100, f"uf{i}")),
                                      timeout=10, metadata=bearer("flood-secret"))
                ok_batches += 1
            except grpc.RpcError as e:
                self.assertEqual(e.code(), S.RESOURCE_EXHAUSTED, e.details())
                refused = e
                break
            self.assertEqual(self.recommend("bi-secret"), S.OK)  # the other tenant is served
        self.assertIsNotNone(refused, "50 batches of 100 events at 50 events/s were never refused")
        self.assertGreaterEqual(ok_batches, 1)  # the full bucket took the first batch
        md = dict(refused.trailing_metadata() or ())
        delay = int(md.get("retry-after-ms", "0"))
        self.assertTrue(0 < delay <= 2000, md)
        self.assertIn("tenant flood is over its quota of 50 events per second", refused.details())
        self.assertEqual(self.recommend("bi-secret"), S.OK)
        # after the named delay, the same batch goes through
        time.sleep(delay / 1000.0)
        self.assertEqual(self.ingest("flood-secret", self.events("again", 100, "uf-again")), S.OK)
        self.assertGreaterEqual(self.samples()['eddy_auth_failures_total{reason="quota_events"}'], 1)

    @unittest.skipUnless(L.CLI, "EDDY_CLI not set")
    def test_cli_honours_retry_delay(self):
        """'slow' may make one call every 5 s: a second `eddy recommend` right after the
        first is answered RESOURCE_EXHAUSTED with retry-after-ms, waits, and succeeds."""
        rc, out, err = L.run_cli(self.node.endpoint, "--token", "slow-secret", "recommend", "u1")
        self.assertEqual(rc, 0, err)
        self.assertEqual(self.recommend("slow-secret"), grpc.StatusCode.RESOURCE_EXHAUSTED)
        t0 = time.monotonic()
        rc, out, err = L.run_cli(self.node.endpoint, "--token", "slow-secret", "recommend", "u1")
        took = time.monotonic() - t0
        self.assertEqual(rc, 0, err)
        self.assertGreater(took, 0.5)  # it did wait for the bucket
        rc, out, err = L.run_cli(self.node.endpoint, "--token", "slow-secret", "--timeout", "300ms",
                                 "recommend", "u1")
        self.assertEqual(rc, 1)  # a delay beyond the timeout is not waited
        self.assertIn("RESOURCE_EXHAUSTED", err)
        self.assertIn("retry after", err)


class CertIdentityTest(unittest.TestCase):
    """`cert:` lines over TLS: a client certificate the node's CA signed, whose CommonName
    a line maps to a tenant and roles, gets exactly those roles without a token; a
    certificate of the same CA without a line is UNAUTHENTICATED; a token, when present,
    decides instead of the certificate."""

    def setUp(self):
        L.require_node()
        d = L.temp_dir(self, "eddy-it-certauth-")
        self.ca = L.Pki(d, "ca")
        cert, key = self.ca.issue("node", cn="eddy-node")
        self.mapped = self.ca.issue("reporting", cn="reporting.example.com")
        self.unmapped = self.ca.issue("other", cn="other.example.com")
        path = os.path.join(d, "tokens")
        write_atomic(path, "cert:reporting.example.com tenant=bi roles=read\n"
                     + line("adm-secret", "ops", "admin,ingest"))
        self.node = L.Node(args=["--tls-cert", cert, "--tls-key", key, "--tls-ca", self.ca.ca,
                                 "--token-file", path, "--metrics-listen", "127.0.0.1:0",
                                 "--log-level", "info"],
                           creds=self.ca.creds())
        self.addCleanup(self.node.cleanup)
        self.node.start()
        self.m = L.pb()

    def stub(self, cert_key):
        ch = grpc.secure_channel(self.node.endpoint, self.ca.creds(*cert_key))
        self.addCleanup(ch.close)
        return L.eddy_stub(ch)

    def code_of(self, fn, req, md=None):
        try:
            fn(req, timeout=10, metadata=md)
            return grpc.StatusCode.OK
        except grpc.RpcError as e:
            return e.code()

    def test_certificate_mapped_to_roles(self):
        S = grpc.StatusCode
        ev = self.m.Event(event_id="c-1", user_id="u-c", timestamp_ms=L.now_ms() - 60_000,
                          event_type=self.m.EVENT_TYPE_VIEW, product_id="p-1", category="books")
        mapped, unmapped = self.stub(self.mapped), self.stub(self.unmapped)
        # the mapped certificate has 'read' and nothing else
        self.assertEqual(self.code_of(mapped.Recommend, self.m.RecommendRequest(user_id="u1")),
                         S.OK)
        self.assertEqual(self.code_of(mapped.TopProducts, self.m.TopProductsRequest()), S.OK)
        self.assertEqual(self.code_of(mapped.Ingest, self.m.IngestRequest(events=[ev])),
                         S.PERMISSION_DENIED)
        self.assertEqual(self.code_of(mapped.DeleteUser, self.m.DeleteUserRequest(user_id="u1")),
                         S.PERMISSION_DENIED)
        # a certificate of the same CA that no line names, and no certificate at all
        anonymous = self.stub(())
        for stub in (unmapped, anonymous):
            self.assertEqual(self.code_of(stub.Recommend, self.m.RecommendRequest(user_id="u1")),
                             S.UNAUTHENTICATED)
        # a token decides when there is one: unknown, or one with other roles
        self.assertEqual(self.code_of(mapped.Recommend, self.m.RecommendRequest(user_id="u1"),
                                      bearer("no-such-secret")), S.UNAUTHENTICATED)
        self.assertEqual(self.code_of(mapped.Recommend, self.m.RecommendRequest(user_id="u1"),
                                      bearer("adm-secret")), S.PERMISSION_DENIED)
        self.assertEqual(self.code_of(unmapped.Ingest, self.m.IngestRequest(events=[ev]),
                                      bearer("adm-secret")), S.OK)
        self.assertEqual(self.code_of(unmapped.DeleteUser, self.m.DeleteUserRequest(user_id="u-c"),
                                      bearer("adm-secret")), S.OK)
        # the audit line names the certificate's grant
        denied = L.poll_until(lambda: [l for l in self.node.log_tail(200).splitlines()
                                       if 'msg="admin call"' in l and "PermissionDenied" in l],
                              10, what="the audit line of the refused DeleteUser")
        self.assertIn('who="bi/cert:reporting.example.com"', denied[0])


if __name__ == "__main__":
    unittest.main()
