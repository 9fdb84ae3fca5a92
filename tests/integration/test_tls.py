"""TLS, mTLS, protected mode and etcd with TLS and authentication (issue 14 items 1, 2, 3,
6), against real processes with certificates made by the openssl CLI in a temp dir: the
public API over TLS through the CLI and Python grpcio, a wrong CA, no client certificate
where one is required, a plain client calling the internal State API, certificate
rotation under traffic, a cluster whose etcd demands TLS, client certificates and a user,
and protected mode refusing 0.0.0.0 without --insecure."""
import json
import os
import shutil
import subprocess
import threading
import time
import unittest

import grpc

import eddylib as L


def make_pki(test):
    d = L.temp_dir(test, "eddy-it-pki-")
    ca = L.Pki(d, "ca")
    other = L.Pki(d, "foreign")  # a CA the node does not trust
    return d, ca, other


def health_ok(channel, timeout=3):
    h = L.health_pb()
    r = L.health_stub(channel).Check(h.HealthCheckRequest(service=""), timeout=timeout)
    return r.status == h.HealthCheckResponse.SERVING


def serves_cert_of(endpoint, pki):
    """Whether a new connection to `endpoint` that trusts only `pki`'s CA gets through."""
    ch = grpc.secure_channel(endpoint, pki.creds())
    try:
        return health_ok(ch, timeout=2)
    except grpc.RpcError:
        return False
    finally:
        ch.close()


def events_for(user, n, t0=None):
    t0 = t0 or L.now_ms()
    return [{"eventId": f"{user}-e{i}", "userId": user, "sessionId": "s1", "eventType": "view",
             "productId": f"p{i % 5}", "category": "books", "timestamp": t0 + i}
            for i in range(n)]


class TlsPublicApiTest(unittest.TestCase):
    def setUp(self):
        self.dir, self.ca, self.foreign = make_pki(self)
        self.cert, self.key = self.ca.issue("node", cn="eddy-node")
        self.client_cert, self.client_key = self.ca.issue("client", cn="app")
        self.fcert, self.fkey = self.foreign.issue("client", cn="intruder")

    def start(self, *extra):
        n = L.Node(args=["--tls-cert", self.cert, "--tls-key", self.key, "--tls-ca", self.ca.ca,
                         *extra],
                   creds=self.ca.creds(self.client_cert, self.client_key))
        self.addCleanup(n.cleanup)
        return n.start()

    def start_rotatable(self):
        """A node serving copies of the certificate files (to be replaced): (node, cert
        path, key path)."""
        live_cert = os.path.join(self.dir, "live.crt")
        live_key = os.path.join(self.dir, "live.key")
        shutil.copy(self.cert, live_cert)
        shutil.copy(self.key, live_key)
        node = L.Node(args=["--tls-cert", live_cert, "--tls-key", live_key],
                      creds=self.ca.creds())
        self.addCleanup(node.cleanup)
        return node.start(), live_cert, live_key

    def cli(self, node, *args):
        return L.run_cli(node.endpoint, "--tls-ca", self.ca.ca, *args)

    def test_round_trip_cli_and_python(self):
        node = self.start()
        # Python grpcio without a client certificate: --tls-client-auth request lets it in
        ch = grpc.secure_channel(node.endpoint, self.ca.creds())
        self.addCleanup(ch.close)
        r = L.eddy_stub(ch).Ingest(L.pb().IngestRequest(
            events=[L.to_pb(e) for e in events_for("u-py", 7)]), timeout=10)
        self.assertEqual(r.accepted, 7)
        # the CLI writes over TLS, and reads both users back
        path = os.path.join(self.dir, "events.jsonl")
        L.write_jsonl(path, events_for("u-cli", 5))
        rc, out, err = self.cli(node, "-o", "json", "ingest", path)
        self.assertEqual(rc, 0, err)
        self.assertEqual(json.loads(out)["accepted"], 5, out)
        for user, want in (("u-py", 7), ("u-cli", 5)):
            rc, out, err = self.cli(node, "-o", "json", "profile", user)
            self.assertEqual(rc, 0, err)
            self.assertEqual(L.total_events(L.eddy_stub(ch), user), want)
        # the environment variables work like the flags
        r = subprocess.run([L.require_cli(), "--endpoint", node.endpoint, "health"],
                           capture_output=True, text=True, timeout=30,
                           env={**os.environ, "EDDY_TLS_CA": self.ca.ca})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("SERVING", r.stdout)

    def test_wrong_ca_and_plaintext_refused(self):
        node = self.start()
        foreign_ca = grpc.secure_channel(node.endpoint, self.foreign.creds())
        plain = grpc.insecure_channel(node.endpoint)
        for ch in (foreign_ca, plain):
            self.addCleanup(ch.close)
            with self.assertRaises(grpc.RpcError) as e:
                health_ok(ch)
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE)
        rc, _, err = L.run_cli(node.endpoint, "--tls-ca", self.foreign.ca, "health")
        self.assertEqual(rc, 3, err)
        rc, _, err = L.run_cli(node.endpoint, "health")
        self.assertEqual(rc, 3, err)
        rc, out, err = self.cli(node, "health")
        self.assertEqual((rc, out.strip()), (0, "SERVING"), err)
        # a client certificate without --tls-ca would be sent in plaintext: a usage error
        rc, _, err = L.run_cli(node.endpoint, "--tls-cert", self.client_cert, "--tls-key",
                               self.client_key, "health")
        self.assertEqual(rc, 2, err)
        self.assertIn("need --tls-ca", err)

    def test_require_client_certificate(self):
        node = self.start("--tls-client-auth", "require")
        anonymous = grpc.secure_channel(node.endpoint, self.ca.creds())
        foreign = grpc.secure_channel(node.endpoint, self.ca.creds(self.fcert, self.fkey))
        for ch in (anonymous, foreign):
            self.addCleanup(ch.close)
            with self.assertRaises(grpc.RpcError) as e:
                health_ok(ch)
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertTrue(health_ok(node.channel))  # the harness presents a CA-signed cert
        rc, _, err = self.cli(node, "health")
        self.assertEqual(rc, 3, err)
        rc, out, err = self.cli(node, "--tls-cert", self.client_cert, "--tls-key",
                                self.client_key, "health")
        self.assertEqual((rc, out.strip()), (0, "SERVING"), err)

    def test_rotation_under_traffic(self):
        """Replace the certificate files while a client calls without pause: its calls keep
        succeeding on the open connection, new connections get the new certificate (signed
        by a second CA: trusting only the first CA then fails)."""
        node, live_cert, live_key = self.start_rotatable()
        new_cert, new_key = self.foreign.issue("node", cn="eddy-node-2")

        stop = threading.Event()
        calls, errors = [0], []

        def traffic():
            stub = L.eddy_stub(node.channel)
            i = 0
            while not stop.is_set():
                try:
                    r = stub.Ingest(L.pb().IngestRequest(events=[L.to_pb(
                        events_for("u-rot", 1, L.now_ms())[0] | {"eventId": f"rot-{i}"})]),
                        timeout=10)
                    if r.accepted == 1:
                        calls[0] += 1
                except grpc.RpcError as e:
                    errors.append(e.code())
                i += 1

        t = threading.Thread(target=traffic)
        t.start()
        try:
            L.poll_until(lambda: calls[0] >= 20, 10, what="traffic before the rotation")
            # a rotation as cert-manager's: new files renamed over the old ones
            for src, dst in ((new_key, live_key), (new_cert, live_cert)):
                shutil.copy(src, dst + ".tmp")
                os.replace(dst + ".tmp", dst)
            before = calls[0]
            L.poll_until(lambda: serves_cert_of(node.endpoint, self.foreign), 10,
                         what="new connections see the new certificate")
            self.assertFalse(serves_cert_of(node.endpoint, self.ca))
            L.poll_until(lambda: calls[0] >= before + 50, 20,
                         what="calls on the open connection after the rotation")
        finally:
            stop.set()
            t.join(30)
        self.assertEqual(errors, [])

    def test_half_written_rotation_keeps_the_old_certificate(self):
        """A new certificate beside the old key is not taken; once the key follows, it is."""
        node, live_cert, live_key = self.start_rotatable()
        new_cert, new_key = self.foreign.issue("node2", cn="eddy-node-2")
        shutil.copy(new_cert, live_cert)  # the key is still the old one
        for _ in range(3):
            self.assertTrue(serves_cert_of(node.endpoint, self.ca))
        shutil.copy(new_key, live_key)
        L.poll_until(lambda: serves_cert_of(node.endpoint, self.foreign), 10,
                     what="the whole new pair served")


class ProtectedModeTest(unittest.TestCase):
    def run_node(self, *args):
        return subprocess.run([L.require_node(), "--dev", "--data-dir", L.temp_dir(self),
                               "--metrics-listen", "", *args],
                              capture_output=True, text=True, timeout=30)

    def test_node_refuses_public_plaintext(self):
        r = self.run_node("--listen", "0.0.0.0:0")
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("protected mode", r.stderr)
        self.assertIn("--insecure", r.stderr)

    def test_node_starts_with_insecure_or_tls(self):
        _, ca, _ = make_pki(self)
        cert, key = ca.issue("node")
        for args, creds in ((["--insecure"], None), (["--tls-cert", cert, "--tls-key", key],
                                                    ca.creds())):
            n = L.Node(args=args, creds=creds)
            n.command = (lambda n=n: [n.bin, "--dev", "--data-dir", n.data_dir, "--listen",
                                      "0.0.0.0:0", "--log-level", "warn", *n.args])
            self.addCleanup(n.cleanup)
            n.start()  # health SERVING through 127.0.0.1
            n.stop()

    def test_coordinator_refuses_public_plaintext(self):
        r = subprocess.run([L.require_coordinator(), "--etcd", "http://127.0.0.1:1",
                            "--listen", "0.0.0.0:0"], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("protected mode", r.stderr)

    def test_loopback_stays_one_command(self):
        n = L.Node()  # --dev on 127.0.0.1, no TLS flag
        self.addCleanup(n.cleanup)
        n.start()
        self.assertTrue(health_ok(n.channel))


class SecureClusterTest(unittest.TestCase):
    """etcd with TLS, client certificates and authentication; nodes and the coordinator
    with mTLS between them."""

    def setUp(self):
        L.require_coordinator()
        L.require_etcd()
        self.dir, self.ca, self.foreign = make_pki(self)
        self.etcd = L.SecureEtcd(self.ca)
        self.addCleanup(self.etcd.cleanup)
        self.etcd.start()
        self.etcd.enable_auth()
        self.node_cert, self.node_key = self.ca.issue("cluster", cn="eddy-cluster")
        tls = ["--tls-cert", self.node_cert, "--tls-key", self.node_key, "--tls-ca", self.ca.ca]
        self.c = L.Cluster(self, partitions=8, etcd=self.etcd,
                           creds=self.ca.creds(self.node_cert, self.node_key),
                           node_args=tls + self.etcd.eddy_args(),
                           coord_args=tls + self.etcd.eddy_args() + ["--replication-factor", "1"])

    def test_cluster_joins_and_routes_over_mtls(self):
        self.c.add_coordinator("c1")
        self.c.add_node("s1")
        self.c.add_node("s2")
        ingest = self.c.add_node("i1", roles="ingest")
        self.c.wait_assignment({"s1", "s2"})
        users = [f"u-{i}" for i in range(20)]
        evs = [e for u in users for e in events_for(u, 3)]
        r = ingest.ingest(evs)
        self.assertEqual(r.accepted, len(evs))
        stub = L.eddy_stub(ingest.channel)
        self.assertEqual(sum(L.total_events(stub, u) for u in users), len(evs))
        # the registry and the map are in the etcd that demands TLS and a user
        self.assertEqual(set(self.c.registered()), {"s1", "s2", "i1"})

    def test_state_api_refuses_clients_without_the_cluster_certificate(self):
        self.c.add_coordinator("c1")
        s1 = self.c.add_node("s1")
        self.c.wait_assignment({"s1"})
        m = L.state_stubs()
        anonymous = grpc.secure_channel(s1.endpoint, self.ca.creds())
        self.addCleanup(anonymous.close)
        with self.assertRaises(grpc.RpcError) as e:
            L.state_method(anonymous, "Apply")(m.ApplyRequest(), timeout=5)
        self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        with self.assertRaises(grpc.RpcError) as e:
            L.state_method(anonymous, "Partial")(m.PartialRequest(), timeout=5)
        self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        # the public API on the same port answers the same client
        self.assertTrue(health_ok(anonymous))
        # plaintext and a foreign certificate do not get past the handshake
        for ch in (grpc.insecure_channel(s1.endpoint),
                   grpc.secure_channel(s1.endpoint,
                                       self.ca.creds(*self.foreign.issue("x", cn="x")))):
            self.addCleanup(ch.close)
            with self.assertRaises(grpc.RpcError) as e:
                L.state_method(ch, "Apply")(m.ApplyRequest(), timeout=5)
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE)
        # a cluster member's certificate is answered
        self.assertEqual(s1.partial().outbox, 0)

    def test_etcd_refuses_a_wrong_password_and_survives_a_restart(self):
        with open(self.etcd.password_file, "w") as f:
            f.write("wrong\n")
        c = self.c.add_coordinator("c1", wait_leader=False, ready=False)
        L.poll_until(lambda: "etcd authentication failed" in c.log_text(), 10,
                     what="the wrong password refused")
        self.assertIsNone(self.c.leader())
        # the password file is read at each authentication: fixing it is enough
        with open(self.etcd.password_file, "w") as f:
            f.write("eddy-secret\n")
        L.poll_until(lambda: self.c.leader() is not None, 15, what="a leader after the fix")
        s1 = self.c.add_node("s1")
        self.c.wait_assignment({"s1"})
        # an etcd restart forgets every token: the clients authenticate again
        self.etcd.restart()
        self.etcd.login()
        s2 = self.c.add_node("s2")
        self.c.wait_assignment({"s1", "s2"}, timeout=60)  # slow under ASan on 2 shared cores
        self.assertIn("etcd token renewed", c.log_text() + s1.log_text())
        self.assertTrue(health_ok(s2.channel))


if __name__ == "__main__":
    unittest.main()
