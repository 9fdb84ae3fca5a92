"""The web console on the metrics port (docs/operations.md, "Web console").

In a real headless Chromium (Debian's /usr/bin/chromium driven by the npm package
playwright-core, tests/integration/console/): a --dev node with events ingested shows
itself, its three charts draw points while events and Recommend calls arrive, a user's page
lists the recommendations with their reasons and the profile, the top-products page ranks
products, and no page logs a console error; the screenshots are saved in the test's temp
dir (kept with EDDY_KEEP_SCREENSHOTS=1). A small cluster's coordinator console lists the cluster's nodes.

Over plain HTTP: bad query arguments are 400 with a message, unknown paths 404, an
over-long target 414; with --token-file the data endpoints need a read token (401 without
one, 403 with a token without the read role) while the overview and the charts' metrics
stay open like /metrics."""
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import unittest
import urllib.error
import urllib.request

import eddylib as L

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVER_DIR = os.path.join(HERE, "console")
DRIVER = os.path.join(DRIVER_DIR, "check_console.js")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
NPM_TIMEOUT = 240
DRIVER_TIMEOUT = 180

_npm_ready = False


def driver_cmd():
    """[node, check_console.js]; installs playwright-core (npm ci) when needed. Chromium and
    Node.js are installed by scripts/setup.sh: their absence fails the test."""
    global _npm_ready
    if not os.path.exists(CHROMIUM):
        raise AssertionError(f"{CHROMIUM} missing: scripts/setup.sh installs Debian's chromium")
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        raise AssertionError("node and npm are needed to drive Chromium (scripts/setup.sh)")
    if not _npm_ready:
        lock = os.path.join(DRIVER_DIR, "package-lock.json")
        installed = os.path.join(DRIVER_DIR, "node_modules", ".package-lock.json")
        dep = os.path.join(DRIVER_DIR, "node_modules", "playwright-core", "package.json")
        if not (os.path.exists(dep) and os.path.exists(installed)
                and os.path.getmtime(installed) >= os.path.getmtime(lock)):
            r = subprocess.run([npm, "ci", "--prefix", DRIVER_DIR, "--no-audit", "--no-fund"],
                               capture_output=True, text=True, stdin=subprocess.DEVNULL,
                               timeout=NPM_TIMEOUT)
            if r.returncode != 0:
                raise AssertionError(f"npm ci in {DRIVER_DIR} failed rc={r.returncode}\n"
                                     f"{r.stdout}\n{r.stderr}")
        _npm_ready = True
    return [node, DRIVER]


def browse(test, want):
    """Run the browser driver with `want` (see check_console.js); its report."""
    if os.environ.get("EDDY_KEEP_SCREENSHOTS"):  # kept for a look after the run
        out = tempfile.mkdtemp(prefix="eddy-it-console-")
    else:
        out = L.temp_dir(test, "eddy-it-console-")
    want = dict(want, out=out)
    r = subprocess.run(driver_cmd() + [json.dumps(want)], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=DRIVER_TIMEOUT,
                       env=dict(os.environ, CHROMIUM=CHROMIUM))
    test.assertEqual(r.returncode, 0, f"browser driver failed\n{r.stderr}\n{r.stdout}")
    report = json.loads(r.stdout.strip().splitlines()[-1])
    for shot in report["screenshots"]:
        print(f"screenshot: {shot}", flush=True)
        test.assertGreater(os.path.getsize(shot), 1000)
    test.assertEqual(report["errors"], [], "the page logged errors")
    return report


def http(url, token=None):
    """(status, parsed JSON or text) of GET url."""
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, body, ctype = r.status, r.read().decode(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        status, body, ctype = e.code, e.read().decode(), e.headers.get("Content-Type", "")
    return status, json.loads(body) if ctype.startswith("application/json") else body


class Traffic:
    """Ingest batches and Recommend calls on a thread, so the charts have something to draw,
    until stop()."""

    def __init__(self, node, users):
        self.node, self.users = node, users
        self.done = threading.Event()
        self.sent = 0
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        m = L.pb()
        seed = 100
        while not self.done.is_set():
            seed += 1
            events = L.generate(seed, n_events=200, start_ms=L.now_ms() - 60_000,
                                span_ms=50_000, prefix=f"tr{seed}")
            for e in events:  # users of their own: the looked-up user's state stays as it was
                e["userId"] = "t" + e["userId"]
            self.node.ingest(events)
            self.sent += 200
            for u in self.users:
                self.node.stub.Recommend(m.RecommendRequest(user_id=u), timeout=10)
            self.done.wait(0.2)

    def stop(self):
        self.done.set()
        self.t.join(30)


class DevConsoleTest(unittest.TestCase):
    def setUp(self):
        self.node = L.start_node(self, args=["--metrics-listen", "127.0.0.1:0"])
        self.mport = L.poll_until(lambda: L.metrics_port_of(self.node), 10, what="metrics port")
        self.url = f"http://127.0.0.1:{self.mport}/"
        self.node.ingest(L.generate(7, n_events=3000))

    def test_pages_in_chromium(self):
        user = "u-007"
        traffic = Traffic(self.node, ["tu-001", "u-nobody"])
        self.addCleanup(traffic.stop)
        report = browse(self, {"url": self.url, "node": self.node.endpoint, "charts": [0, 1, 2]})
        traffic.stop()
        self.assertGreater(traffic.sent, 0)
        # the user and top pages once the traffic stopped: what the public API answers (the
        # answer before or after the page, should stage 2's cache refresh in between)
        ask = lambda: [i.product_id for i in self.node.stub.Recommend(  # noqa: E731
            L.pb().RecommendRequest(user_id=user), timeout=10).items]
        before = ask()
        pages = browse(self, {"url": self.url, "node": self.node.endpoint, "user": user,
                              "top": True})
        after = ask()
        report["user"], report["top"] = pages["user"], pages["top"]

        ov = report["overview"]
        self.assertIn(f"node {self.node.endpoint}", ov["who"])
        self.assertIn("dev", ov["who"])
        self.assertEqual(len(ov["nodes"]), 1)
        self.assertEqual(ov["nodes"][0][0], self.node.endpoint)
        self.assertEqual(ov["nodes"][0][5], "256")  # owns every partition
        self.assertEqual(ov["partitions"], 256)
        for c in ov["charts"]:  # each chart drew a line: points, and ink on the canvas
            self.assertGreaterEqual(c["points"], 2, c)
            self.assertGreater(c["max"], 0, c)
            self.assertGreater(c["inked"], 500, c)  # more than the axes and labels alone

        u = report["user"]
        self.assertIn(user, u["heading"])
        self.assertNotIn("cold start", u["heading"])
        # the recommendations the public API gives, in its order, each with its reason
        self.assertGreaterEqual(len(u["recs"]), 3)
        self.assertIn([r[1] for r in u["recs"]], (before, after))
        self.assertTrue(all(r[4] for r in u["recs"]), u["recs"])
        self.assertRegex(u["summary"], r"^\d+ events")
        self.assertIn("Recent views and clicks", u["sections"])

        top = report["top"]
        self.assertGreater(len(top), 1)
        totals = [int(r[7]) for r in top]
        self.assertEqual(totals, sorted(totals, reverse=True))
        want_top = self.node.stub.TopProducts(L.pb().TopProductsRequest(limit=1, include_open=True),
                                              timeout=10)
        self.assertEqual(top[0][1], want_top.products[0].product_id)

    def test_api_bad_input(self):
        base = f"http://127.0.0.1:{self.mport}"
        for path, words in [("/api/user", "id: required"), ("/api/user?id=", "id: required"),
                            ("/api/user?id=u-1&n=0", "n: an integer"),
                            ("/api/user?id=u-1&n=x", "n: an integer"),
                            ("/api/user?id=" + "x" * 129, "id: at most 128 bytes"),
                            ("/api/top?window=soon", "window:"),
                            ("/api/top?window=-5m", "window:"),
                            ("/api/top?type=buy", "type:"),
                            ("/api/top?limit=100000", "limit:"),
                            ("/api/top?category=" + "c" * 129, "category: at most")]:
            status, body = http(base + path)
            self.assertEqual(status, 400, path)
            self.assertIn(words, body["error"], path)
        self.assertEqual(http(base + "/api/nope")[0], 404)
        self.assertEqual(http(base + "/nope.html")[0], 404)
        self.assertEqual(http(base + "/api/user?id=" + "x" * 3000)[0], 414)
        # a user with no state: no profile, popular products (cold start)
        status, body = http(base + "/api/user?id=u-unknown")
        self.assertEqual(status, 200)
        self.assertIsNone(body["profile"])
        self.assertTrue(body["recommendations"]["cold_start"])
        status, body = http(base + "/api/metrics")
        self.assertEqual(status, 200)
        self.assertEqual(body["families"]["eddy_events_ingested_total"]["series"][0]["value"], 3000)


def line(secret, tenant, roles):
    return f"sha256:{hashlib.sha256(secret.encode()).hexdigest()} tenant={tenant} roles={roles}\n"


class TokenConsoleTest(unittest.TestCase):
    def test_data_endpoints_need_a_read_token(self):
        d = L.temp_dir(self, "eddy-it-console-tokens-")
        path = os.path.join(d, "tokens")
        with open(path, "w") as f:
            f.write(line("shop-secret", "shop", "ingest") + line("bi-secret", "bi", "read"))
        node = L.start_node(self, args=["--token-file", path, "--metrics-listen", "127.0.0.1:0"])
        mport = L.poll_until(lambda: L.metrics_port_of(node), 10, what="metrics port")
        base = f"http://127.0.0.1:{mport}"
        for p in ("/api/user?id=u-1", "/api/top"):
            status, body = http(base + p)
            self.assertEqual(status, 401, p)
            self.assertIn("error", body)
            self.assertEqual(http(base + p, "wrong-secret")[0], 401, p)
            self.assertEqual(http(base + p, "shop-secret")[0], 403, p)
            self.assertEqual(http(base + p, "bi-secret")[0], 200, p)
        # open like /metrics: the page, the overview and the charts' metrics
        for p in ("/", "/app.js", "/api/overview", "/api/metrics", "/metrics"):
            self.assertEqual(http(base + p)[0], 200, p)


class CoordinatorConsoleTest(unittest.TestCase):
    def test_cluster_in_chromium(self):
        L.require_etcd()
        c = L.Cluster(self, partitions=8)
        coord = c.add_coordinator("c1")
        for nid in ("n1", "n2"):
            c.add_node(nid, roles="ingest,state")
        c.wait_assignment({"n1", "n2"})
        cport = L.poll_until(lambda: L.metrics_port_of(coord), 10, what="coordinator metrics port")
        report = browse(self, {"url": f"http://127.0.0.1:{cport}/", "node": "n2"})
        ov = report["overview"]
        self.assertIn("coordinator c1", ov["who"])
        self.assertEqual(sorted(r[0] for r in ov["nodes"]), ["n1", "n2"])
        self.assertEqual(sorted(int(r[5]) for r in ov["nodes"]), [4, 4])
        self.assertEqual(ov["partitions"], 8)

        # a cluster node's console: its view of the map, and lookups through the router
        n1 = c.nodes["n1"]
        base = f"http://127.0.0.1:{L.metrics_port_of(n1)}"
        status, body = http(base + "/api/overview")
        self.assertEqual(status, 200)
        self.assertEqual(body["process"]["mode"], "cluster")
        self.assertEqual(sorted(p["owner"] for p in body["status"]["partitions"]),
                         ["n1"] * 4 + ["n2"] * 4)
        n1.ingest(L.generate(3, n_users=20, n_events=500))
        status, body = http(base + "/api/user?id=u-003")
        self.assertEqual(status, 200, body)
        self.assertGreater(body["profile"]["event_count"], 0)
        # stage 2 (what Recommend draws from) reaches its owners through the forwarder,
        # after the acknowledgement: the lists fill once it has (seconds under ASan)
        body = L.poll_until(lambda: (lambda s, b: b if s == 200 and b["recommendations"]["items"]
                                     else None)(*http(base + "/api/user?id=u-003")),
                            30, interval=0.2, what="recommendations for u-003 through n1")
        self.assertGreater(len(body["recommendations"]["items"]), 0)


if __name__ == "__main__":
    unittest.main()
