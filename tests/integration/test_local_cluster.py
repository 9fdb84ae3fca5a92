"""scripts/local-cluster.sh up --secure as a new user runs it (issue 14 item 10): the real
script starts etcd, the coordinator, 3 state and 2 ingest nodes with mTLS and a token file
it made with `eddy token new`. An application with the CA (no client certificate) and the
ingest token ingests; the read token reads it back and is PERMISSION_DENIED on DeleteUser;
no token is UNAUTHENTICATED; a plaintext client does not get past the handshake. The
commands the script prints, its own `status`, and the CLI with DIR/env sourced work as
printed; the token file holds no secret.

Needs EDDY_NODE, EDDY_COORDINATOR_BIN and EDDY_CLI built into one directory, Debian's
etcd-server and the openssl CLI.
"""
import os
import re
import shutil
import subprocess
import unittest

import grpc

import eddylib as L

ROOT = os.path.normpath(os.path.join(L.HERE, "..", ".."))
SCRIPT = os.path.join(ROOT, "scripts", "local-cluster.sh")


def bearer(secret):
    return [("authorization", f"Bearer {secret}")]


def clean_env(**extra):
    """The environment without the CLI's EDDY_* settings (a new user's shell), plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("EDDY_TLS_") and k not in ("EDDY_TOKEN", "EDDY_ENDPOINT",
                                                           "EDDY_COORDINATOR")}
    env.update(extra)
    return env


class SecureLocalClusterTest(unittest.TestCase):
    def setUp(self):
        node, coord, cli = L.require_node(), L.require_coordinator(), L.require_cli()
        L.require_etcd()
        if not shutil.which("openssl"):
            raise unittest.SkipTest("the openssl CLI is not installed")
        build = os.path.dirname(node)
        if {os.path.dirname(coord), os.path.dirname(cli)} != {build}:
            raise unittest.SkipTest("eddy-node, eddy-coordinator and eddy not in one build dir")
        # LC_BUILD=0: the binaries under test, not a rebuild by scripts/setup.sh
        self.env = clean_env(EDDY_BUILD_DIR=build, LC_BUILD="0", LC_PARTITIONS="16",
                             ETCD=L.ETCD_BIN)
        self.dir = os.path.join(L.temp_dir(self, "eddy-it-lc-"), "cluster")
        self.addCleanup(self.script, "down", self.dir)  # runs before the temp dir goes
        r = self.script("up", "--secure", self.dir, timeout=150)
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        self.printed = r.stdout
        with open(os.path.join(self.dir, "env")) as f:
            self.vars = dict(l.rstrip("\n").split("=", 1) for l in f if "=" in l)
        self.tokens = {}
        for name in ("admin", "ingest", "read"):
            with open(os.path.join(self.dir, "auth", f"{name}.token")) as f:
                self.tokens[name] = f.read().strip()

    def script(self, *args, timeout=60):
        return subprocess.run([SCRIPT, *args], cwd=ROOT, env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def call(self, fn, req, secret=None):
        try:
            fn(req, timeout=10, metadata=bearer(secret) if secret else None)
            return grpc.StatusCode.OK
        except grpc.RpcError as e:
            return e.code()

    def test_mtls_and_tokens_end_to_end(self):
        S = grpc.StatusCode
        m = L.pb()
        # the token file holds hashes only; the secrets are readable by the owner only
        with open(os.path.join(self.dir, "auth", "tokens")) as f:
            token_file = f.read()
        self.assertEqual(len(re.findall(r"^sha256:[0-9a-f]{64} ", token_file, re.M)), 3)
        for secret in self.tokens.values():
            self.assertRegex(secret, r"^eddy_[0-9a-f]{64}$")
            self.assertNotIn(secret, token_file)
        self.assertEqual(os.stat(os.path.join(self.dir, "auth")).st_mode & 0o077, 0)
        for p in ("tls/ca.crt", "tls/cluster.crt", "tls/client.crt"):
            self.assertTrue(os.path.exists(os.path.join(self.dir, p)), p)

        # an application with the CA and no client certificate: the ingest endpoint
        endpoint = self.vars["EDDY_ENDPOINT"]
        with open(os.path.join(self.dir, "tls", "ca.crt"), "rb") as f:
            app = grpc.secure_channel(endpoint, grpc.ssl_channel_credentials(f.read()))
        self.addCleanup(app.close)
        stub = L.eddy_stub(app)
        t0 = L.now_ms() - 60_000
        users = [f"u-lc-{i}" for i in range(8)]
        events = [m.Event(event_id=f"lc-{i}", user_id=users[i % 8], timestamp_ms=t0 + i,
                          event_type=m.EVENT_TYPE_VIEW, product_id=f"p-{i % 5}",
                          category="books") for i in range(40)]
        r = stub.Ingest(m.IngestRequest(events=events), timeout=30,
                        metadata=bearer(self.tokens["ingest"]))
        self.assertEqual((r.accepted, list(r.rejected)), (40, []))
        # the read token reads it back (through the ingest node, over mTLS to the owners)
        got = [stub.GetUserProfile(m.GetUserProfileRequest(user_id=u), timeout=10,
                                   metadata=bearer(self.tokens["read"])).profile.event_count
               for u in users]
        self.assertEqual(got, [5] * 8)
        # roles: read cannot delete nor ingest; ingest cannot read
        self.assertEqual(self.call(stub.DeleteUser, m.DeleteUserRequest(user_id=users[0]),
                                   self.tokens["read"]), S.PERMISSION_DENIED)
        self.assertEqual(self.call(stub.Ingest, m.IngestRequest(events=events[:1]),
                                   self.tokens["read"]), S.PERMISSION_DENIED)
        self.assertEqual(self.call(stub.Recommend, m.RecommendRequest(user_id=users[0]),
                                   self.tokens["ingest"]), S.PERMISSION_DENIED)
        # no token, and an unknown one
        self.assertEqual(self.call(stub.Recommend, m.RecommendRequest(user_id=users[0])),
                         S.UNAUTHENTICATED)
        self.assertEqual(self.call(stub.Recommend, m.RecommendRequest(user_id=users[0]),
                                   "eddy_" + "0" * 64), S.UNAUTHENTICATED)
        # plaintext does not get past the handshake, token or not
        plain = grpc.insecure_channel(endpoint)
        self.addCleanup(plain.close)
        self.assertEqual(self.call(L.eddy_stub(plain).Recommend,
                                   m.RecommendRequest(user_id=users[0]), self.tokens["read"]),
                         S.UNAVAILABLE)

        # the commands the script printed, as printed (the event file aside)
        events_path = os.path.join(self.dir, "events.jsonl")
        L.write_jsonl(events_path, [{"eventId": f"cli-{i}", "userId": "u-cli",
                                     "sessionId": "s", "eventType": "view",
                                     "productId": "p-1", "category": "books",
                                     "timestamp": t0 + i} for i in range(3)])
        lines = [l.strip() for l in self.printed.splitlines()]
        ingest = next(l for l in lines if l.endswith(" ingest /tmp/events.jsonl"))
        status = next(l for l in lines if re.search(r"--coordinator \S+ .* status$", l))
        self.assertIn("--token", ingest)
        for cmd in (ingest.replace("/tmp/events.jsonl", events_path), status):
            r = subprocess.run(["bash", "-c", cmd], cwd=ROOT, env=clean_env(),
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, f"{cmd}\n{r.stderr}")
        self.assertEqual(stub.GetUserProfile(m.GetUserProfileRequest(user_id="u-cli"), timeout=10,
                                             metadata=bearer(self.tokens["read"])
                                             ).profile.event_count, 3)
        # DIR/env sourced: the plain CLI has TLS and the admin token
        cli = L.require_cli()
        r = subprocess.run(["bash", "-c", f"set -a; . {self.dir}/env; set +a; "
                                          f"{cli} -o json delete-user u-cli"],
                           env=clean_env(), capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('"model_deleted":', r.stdout.replace(" ", ""))
        # ... and without the token the same CLI is refused
        r = subprocess.run(["bash", "-c", f"set -a; . {self.dir}/env; set +a; unset EDDY_TOKEN; "
                                          f"{cli} recommend u-lc-0"],
                           env=clean_env(), capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("UNAUTHENTICATED", r.stderr)
        # the script's own status command (the CLI with the admin token)
        r = self.script("status", self.dir)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"nodes \(5\)")
        self.assertNotIn("NOT RUNNING", r.stdout)


if __name__ == "__main__":
    unittest.main()
