"""What the installable client packages' tests share (test_python_package.py,
test_node_package.py): a node, the scenarios of clients/driver.py and clients/driver.js run
against it, and the answers both packages must give, read back over gRPC by the test."""
import hashlib
import json
import os
import subprocess

import eddylib as L

REPO = os.path.normpath(os.path.join(L.HERE, "..", ".."))
CLIENTS = os.path.join(L.HERE, "clients")
RUN_TIMEOUT = 60


def run(cmd, cwd=None, env=None, timeout=RUN_TIMEOUT):
    r = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=cwd,
                       env=env, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed rc={r.returncode}\n"
                             f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}")
    return r.stdout


class Scenarios:
    """Mixed into a unittest.TestCase whose driver(**args) runs one scenario of the
    installed package and returns its JSON answer; setUpClass installs the package and
    calls start_shared_node (one plain node for the tests that need nothing special, each
    with its own users)."""

    @classmethod
    def start_shared_node(cls):
        cls.shared = L.Node()
        cls.addClassCleanup(cls.shared.cleanup)
        cls.shared.start()

    def driver(self, **args):
        raise NotImplementedError

    def test_batching(self):
        node = self.shared
        user = "u-batch"
        out = self.driver(scenario="batch", endpoint=node.endpoint, user=user)
        # 7 events in batches of 3: 3 calls; the invalid one keeps its index in the list
        self.assertEqual(out["ingest"], {"accepted": 6, "duplicates": 0, "late": 0, "batches": 3,
                                         "rejected": [[5, f"{user}-b5", "product_id"]]}, out)
        # add(): the third event sends a batch of 3, the fourth waits for flush()
        self.assertEqual(out["adds"][:2], [None, None], out)
        self.assertEqual(out["adds"][2], {"accepted": 3, "duplicates": 0, "late": 0, "batches": 1,
                                          "rejected": []}, out)
        self.assertIsNone(out["adds"][3], out)
        self.assertEqual(out["flush"], {"accepted": 1, "duplicates": 0, "late": 0, "batches": 1,
                                        "rejected": []}, out)
        m = L.pb()
        p = node.stub.GetUserProfile(m.GetUserProfileRequest(user_id=user), timeout=10).profile
        self.assertEqual(p.event_count, 6 + 4 + 1)  # the last one sent by close()
        self.assertEqual([c.product_id for c in p.cart], ["p-9"])

    def test_reads_deadline_and_errors(self):
        node = self.shared
        m = L.pb()
        user = "u-reads"
        t = L.now_ms() - 30_000
        evs = [m.Event(event_id=f"r-{i}", user_id=user, timestamp_ms=t + i,
                       event_type=m.EVENT_TYPE_VIEW, product_id=f"p-r{i}", category="reads")
               for i in range(4)]
        evs += [m.Event(event_id=f"o-{i}", user_id=f"u-o{i}", timestamp_ms=t + 10 + i,
                        event_type=m.EVENT_TYPE_PURCHASE, product_id="p-top", category="reads")
                for i in range(3)]
        evs.append(m.Event(event_id="c-1", user_id=user, timestamp_ms=t + 20,
                           event_type=m.EVENT_TYPE_ADD_TO_CART, product_id="p-cart"))
        r = node.ingest(evs)
        self.assertEqual((r.accepted, len(r.rejected)), (len(evs), 0))
        out = self.driver(scenario="reads", endpoint=node.endpoint, user=user)
        want = node.stub.Recommend(m.RecommendRequest(user_id=user, max_recommendations=3),
                                   timeout=10)
        self.assertEqual(out["recommend"], {"ids": [i.product_id for i in want.items],
                                            "cold_start": False}, out)
        self.assertTrue(out["recommend"]["ids"], out)
        self.assertEqual(out["profile"], {"events": 5, "views": ["p-r3", "p-r2", "p-r1", "p-r0"],
                                          "cart": ["p-cart"]}, out)
        want = node.stub.TopProducts(m.TopProductsRequest(
            category="reads", include_open=True, limit=3, event_type=m.EVENT_TYPE_PURCHASE),
            timeout=10)
        self.assertEqual(out["top"], [[s.product_id, s.counts.purchase] for s in want.products], out)
        self.assertEqual(out["top"][0], ["p-top", 3], out)
        self.assertEqual(out["counts"], 5, out)
        self.assertEqual(out["missing"], {"code": "NOT_FOUND", "attempts": 1}, out)
        self.assertEqual(out["deadline"], {"code": "DEADLINE_EXCEEDED", "attempts": 1}, out)

    def test_retries_with_backoff_then_fails(self):
        # a port nobody listens on
        out = self.driver(scenario="retry", endpoint=f"127.0.0.1:{L.free_port()}", retries=3)
        self.assertEqual(out["error"], {"code": "UNAVAILABLE", "attempts": 4}, out)
        self.assertEqual([r["attempt"] for r in out["retries"]], [1, 2, 3], out)
        self.assertEqual({r["code"] for r in out["retries"]}, {"UNAVAILABLE"}, out)
        # 20 ms doubling, capped at 100 ms, with jitter down to half
        for r, top in zip(out["retries"], (20, 40, 80)):
            self.assertTrue(top / 2 <= r["delay_ms"] <= top, out)

    def test_retry_after_from_a_tenant_quota(self):
        """A tenant allowed one call every 2 s: the second call is answered
        RESOURCE_EXHAUSTED with retry-after-ms; the client waits that long (not its own
        20 ms backoff) and the retry succeeds."""
        d = L.temp_dir(self, "eddy-it-tokens-")
        path = os.path.join(d, "tokens")
        with open(path, "w") as f:
            f.write(f"sha256:{hashlib.sha256(b'slow-secret').hexdigest()} tenant=slow "
                    "roles=read calls_per_s=0.5\n")
        node = L.start_node(self, args=["--token-file", path])
        out = self.driver(scenario="retry", endpoint=node.endpoint, token="slow-secret",
                          calls=2, retries=3)
        self.assertIsNone(out["error"], out)
        self.assertEqual(len(out["retries"]), 1, out)
        r = out["retries"][0]
        self.assertEqual(r["code"], "RESOURCE_EXHAUSTED", out)
        self.assertGreater(r["retry_after_ms"], 500, out)
        self.assertGreaterEqual(r["delay_ms"], r["retry_after_ms"], out)

    def test_tls_and_token(self):
        pki = L.Pki(L.temp_dir(self, "eddy-it-pki-"))
        cert, key = pki.issue("node")
        ccert, ckey = pki.issue("app")
        d = L.temp_dir(self, "eddy-it-tokens-")
        path = os.path.join(d, "tokens")
        with open(path, "w") as f:
            f.write(f"sha256:{hashlib.sha256(b'app-secret').hexdigest()} tenant=app "
                    "roles=ingest,read\n")
        node = L.Node(args=["--tls-cert", cert, "--tls-key", key, "--tls-ca", pki.ca,
                            "--tls-client-auth", "require", "--token-file", path],
                      creds=pki.creds(ccert, ckey))
        self.addCleanup(node.cleanup)
        node.start()
        user = "u-secure"
        tls = dict(endpoint=node.endpoint, tls_ca=pki.ca, tls_cert=ccert, tls_key=ckey)
        out = self.driver(scenario="secure", user=user, token="app-secret", **tls)
        self.assertEqual(out["ingest"]["accepted"], 1, out)
        self.assertEqual(out["events"], 1, out)
        # without the token: UNAUTHENTICATED, not retried
        out = self.driver(scenario="retry", user=user, **tls)
        self.assertEqual(out["error"], {"code": "UNAUTHENTICATED", "attempts": 1}, out)
        # without the client certificate the handshake fails: UNAVAILABLE after the retries
        out = self.driver(scenario="retry", user=user, token="app-secret", retries=1,
                          endpoint=node.endpoint, tls_ca=pki.ca)
        self.assertEqual(out["error"], {"code": "UNAVAILABLE", "attempts": 2}, out)


def driver_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])
