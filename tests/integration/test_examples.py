"""The client examples (examples/python, examples/node) run as their users would run them,
against a real `eddy-node --dev`: exit 0, the accepted count, the rejected event and at
least one recommendation in their output, and the events they sent in the user's profile
(read back over gRPC by the test). Against a closed port they retry UNAVAILABLE and then
fail with exit 1.

The Node.js example needs `npm`: its dependencies are installed with `npm ci` (from the
committed package-lock.json) when examples/node/node_modules is missing or older than the
lock file. Without npm the Node.js tests are skipped."""
import os
import re
import shutil
import socket
import subprocess
import sys
import unittest

import eddylib as L

REPO = os.path.normpath(os.path.join(L.HERE, "..", ".."))
PY_EXAMPLE = os.path.join(REPO, "examples", "python", "eddy_example.py")
NODE_DIR = os.path.join(REPO, "examples", "node")
NODE_EXAMPLE = os.path.join(NODE_DIR, "eddy_example.js")
RUN_TIMEOUT = 60
NPM_TIMEOUT = 240

# What both examples send for their user (see sample_events / sampleEvents): 8 events, the
# last one without product_id.
SENT = 8
ACCEPTED = 7
REJECTED_INDEX, REJECTED_FIELD = 7, "product_id"


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def example_env(**extra):
    env = dict(os.environ)
    env.pop("EDDY_ENDPOINT", None)
    env.update(extra)
    return env


def run(cmd, env=None, timeout=RUN_TIMEOUT):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env or example_env(),
                       stdin=subprocess.DEVNULL, timeout=timeout)
    return r.returncode, r.stdout, r.stderr


_npm_ready = None


def node_example_cmd():
    """[node, eddy_example.js]; installs the npm dependencies first when needed. Skips the
    test when npm is not installed."""
    global _npm_ready
    npm = shutil.which("npm")
    if not npm:
        raise unittest.SkipTest("npm is not installed: the Node.js example needs Node.js 18+ "
                                "and npm (to install @grpc/grpc-js and @grpc/proto-loader)")
    node = shutil.which("node")
    if not node:
        raise AssertionError("npm is installed but node is not on PATH")
    if _npm_ready is None:
        lock = os.path.join(NODE_DIR, "package-lock.json")
        installed = os.path.join(NODE_DIR, "node_modules", ".package-lock.json")
        deps = [os.path.join(NODE_DIR, "node_modules", "@grpc", p, "package.json")
                for p in ("grpc-js", "proto-loader")]
        fresh = all(os.path.exists(p) for p in deps + [installed]) and \
            os.path.getmtime(installed) >= os.path.getmtime(lock)
        if not fresh:
            r = subprocess.run([npm, "ci", "--prefix", NODE_DIR, "--no-audit", "--no-fund"],
                               capture_output=True, text=True, stdin=subprocess.DEVNULL,
                               timeout=NPM_TIMEOUT, cwd=REPO)
            if r.returncode != 0:
                raise AssertionError(f"npm ci --prefix examples/node failed rc={r.returncode}\n"
                                     f"stdout={r.stdout}\nstderr={r.stderr}")
        _npm_ready = [node, NODE_EXAMPLE]
    return list(_npm_ready)


class ExamplesTest(unittest.TestCase):
    def setUp(self):
        self.node = L.start_node(self)
        self.m = L.pb()

    def check_output(self, user, rc, out, err):
        self.assertEqual(rc, 0, f"example exited {rc}\nstdout:\n{out}\nstderr:\n{err}")
        m = re.search(r"^ingest: accepted=(\d+) duplicates=(\d+) late=(\d+) rejected=(\d+)$",
                      out, re.M)
        self.assertIsNotNone(m, f"no ingest summary in:\n{out}")
        self.assertEqual(tuple(map(int, m.groups())), (ACCEPTED, 0, 0, SENT - ACCEPTED), out)
        self.assertRegex(out, rf"(?m)^  rejected #{REJECTED_INDEX} \({re.escape(user)}-[0-9a-f]+-"
                              rf"{REJECTED_INDEX}\): field={REJECTED_FIELD} reason={REJECTED_FIELD}: ")
        m = re.search(rf"^recommendations for {re.escape(user)}: (\d+) \(cold_start=(true|false)\)$",
                      out, re.M)
        self.assertIsNotNone(m, f"no recommendations line in:\n{out}")
        self.assertGreaterEqual(int(m.group(1)), 1, out)
        self.assertEqual(m.group(2), "false", out)
        items = re.findall(r"^  \d+\. (\S+) score=\S+ category=\S+ reason=(.+)$", out, re.M)
        self.assertEqual(len(items), int(m.group(1)), out)
        ids = [pid for pid, _ in items]
        # never the current product, the cart or a purchase
        self.assertFalse({"p-kettle", "p-grinder", "p-espresso"} & set(ids), out)
        self.assertRegex(out, rf"(?m)^profile of {re.escape(user)}: events={ACCEPTED} ")
        self.assertRegex(out, r"(?m)^  recent views: p-espresso, p-toaster, p-kettle$")
        self.assertRegex(out, r"(?m)^  cart: p-grinder$")

    def check_profile(self, user):
        """The events the example sent, read back from the node by the test."""
        p = self.node.stub.GetUserProfile(self.m.GetUserProfileRequest(user_id=user),
                                          timeout=10).profile
        self.assertEqual(p.user_id, user)
        self.assertEqual(p.event_count, ACCEPTED)
        self.assertEqual([v.product_id for v in p.recent_views], ["p-espresso", "p-toaster", "p-kettle"])
        self.assertEqual([s.query for s in p.recent_searches], ["espresso machine"])
        self.assertEqual([v.product_id for v in p.recent_purchases], ["p-espresso"])
        self.assertEqual([v.product_id for v in p.cart], ["p-grinder"])
        self.assertEqual([a.name for a in p.category_affinities], ["kitchen"])
        self.assertEqual({a.name for a in p.brand_affinities}, {"chefco", "acme"})
        self.assertEqual((p.price_range.min, p.price_range.max), (25.5, 129.0))
        c = self.node.stub.EventCounts(self.m.EventCountsRequest(user_id=user, include_open=True),
                                       timeout=10)
        self.assertEqual(sum(w.counts.total for w in c.windows), ACCEPTED)
        self.assertEqual(sum(w.counts.view for w in c.windows), 3)
        self.assertEqual(sum(w.counts.add_to_cart for w in c.windows), 2)
        self.assertEqual(sum(w.counts.purchase for w in c.windows), 1)
        self.assertEqual(sum(w.counts.search for w in c.windows), 1)

    # -- Python --
    def python_cmd(self, *args):
        return [sys.executable, PY_EXAMPLE, "--proto-dir", L.PROTO_DIR, *args]

    def test_python_example(self):
        user = "u-example-py"
        # the endpoint through EDDY_ENDPOINT (the Node.js test uses --endpoint)
        rc, out, err = run(self.python_cmd("--user", user),
                           env=example_env(EDDY_ENDPOINT=self.node.endpoint))
        self.check_output(user, rc, out, err)
        self.check_profile(user)

    def test_python_example_retries_then_fails(self):
        ep = f"127.0.0.1:{closed_port()}"
        rc, out, err = run(self.python_cmd("--endpoint", ep, "--retries", "2", "--timeout", "2"))
        self.assertEqual(rc, 1, f"stdout:\n{out}\nstderr:\n{err}")
        self.assertEqual(len(re.findall(r"(?m)^Ingest: UNAVAILABLE .* retrying in \d+ ms", err)), 2, err)
        self.assertIn("eddy_example: UNAVAILABLE", err)
        self.assertNotIn("ingest: accepted=", out)

    # -- Node.js --
    def test_node_example(self):
        cmd = node_example_cmd()
        user = "u-example-node"
        rc, out, err = run(cmd + ["--endpoint", self.node.endpoint, "--user", user,
                                  "--proto-dir", L.PROTO_DIR])
        self.check_output(user, rc, out, err)
        self.check_profile(user)

    def test_node_example_retries_then_fails(self):
        cmd = node_example_cmd()
        ep = f"127.0.0.1:{closed_port()}"
        rc, out, err = run(cmd + ["--endpoint", ep, "--retries", "2", "--timeout", "2",
                                  "--proto-dir", L.PROTO_DIR])
        self.assertEqual(rc, 1, f"stdout:\n{out}\nstderr:\n{err}")
        self.assertEqual(len(re.findall(r"(?m)^Ingest: UNAVAILABLE .* retrying in \d+ ms", err)), 2, err)
        self.assertIn("eddy_example: UNAVAILABLE", err)
        self.assertNotIn("ingest: accepted=", out)

    def test_both_examples_over_mtls(self):
        """Both examples against a node that requires a client certificate: the TLS
        options (Python through EDDY_TLS_*, Node.js through flags)."""
        pki = L.Pki(L.temp_dir(self, "eddy-it-pki-"))
        cert, key = pki.issue("node")
        ccert, ckey = pki.issue("app")
        node = L.Node(args=["--tls-cert", cert, "--tls-key", key, "--tls-ca", pki.ca,
                            "--tls-client-auth", "require"], creds=pki.creds(ccert, ckey))
        self.addCleanup(node.cleanup)
        node.start()
        user = "u-example-py"
        rc, out, err = run(self.python_cmd("--user", user),
                           env=example_env(EDDY_ENDPOINT=node.endpoint, EDDY_TLS_CA=pki.ca,
                                           EDDY_TLS_CERT=ccert, EDDY_TLS_KEY=ckey))
        self.check_output(user, rc, out, err)
        rc, out, err = run(self.python_cmd("--endpoint", node.endpoint, "--tls-ca", pki.ca,
                                           "--retries", "0"))
        self.assertEqual(rc, 1, f"no client certificate: stdout:\n{out}\nstderr:\n{err}")
        cmd = node_example_cmd()
        user = "u-example-node"
        rc, out, err = run(cmd + ["--endpoint", node.endpoint, "--user", user, "--proto-dir",
                                  L.PROTO_DIR, "--tls-ca", pki.ca, "--tls-cert", ccert,
                                  "--tls-key", ckey])
        self.check_output(user, rc, out, err)

    def test_both_examples_with_a_token(self):
        """Both examples against a node with --token-file: refused without a token
        (Python), served with one (Python through EDDY_TOKEN, Node.js through --token)."""
        import hashlib
        d = L.temp_dir(self, "eddy-it-tokens-")
        path = os.path.join(d, "tokens")
        with open(path, "w") as f:
            f.write(f"sha256:{hashlib.sha256(b'app-secret').hexdigest()} tenant=app "
                    "roles=ingest,read\n")
        node = L.Node(args=["--token-file", path])
        self.addCleanup(node.cleanup)
        node.start()
        rc, out, err = run(self.python_cmd("--endpoint", node.endpoint, "--retries", "0"))
        self.assertEqual(rc, 1, f"no token: stdout:\n{out}\nstderr:\n{err}")
        self.assertIn("eddy_example: UNAUTHENTICATED", err)
        user = "u-example-py"
        rc, out, err = run(self.python_cmd("--user", user),
                           env=example_env(EDDY_ENDPOINT=node.endpoint, EDDY_TOKEN="app-secret"))
        self.check_output(user, rc, out, err)
        try:
            cmd = node_example_cmd()
        except unittest.SkipTest:
            return
        user = "u-example-node"
        rc, out, err = run(cmd + ["--endpoint", node.endpoint, "--user", user, "--proto-dir",
                                  L.PROTO_DIR, "--token", "app-secret"])
        self.check_output(user, rc, out, err)

    def test_both_examples_on_one_node(self):
        """One after the other against the same node: each user's profile holds only its
        own events."""
        rc, out, err = run(self.python_cmd("--endpoint", self.node.endpoint, "--user", "u-both-py"))
        self.check_output("u-both-py", rc, out, err)
        try:
            cmd = node_example_cmd()
        except unittest.SkipTest:
            cmd = None
        if cmd:
            rc, out, err = run(cmd + ["--endpoint", self.node.endpoint, "--user", "u-both-node",
                                      "--proto-dir", L.PROTO_DIR])
            self.check_output("u-both-node", rc, out, err)
            self.check_profile("u-both-node")
        self.check_profile("u-both-py")


if __name__ == "__main__":
    unittest.main()
