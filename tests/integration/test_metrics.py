"""docs/design.md §10: every process serves /metrics. A real eddy-node --dev is driven over gRPC
and its scrape must count exactly what the calls did (accepted, duplicate and rejected
events, gRPC codes, serving latencies), pass `promtool check metrics`, contain every
eddy_/grpc_server_ metric the Helm chart's alerts and dashboard use, and be scrapable by a
real Prometheus server."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

import grpc

import eddylib as L

HELM_DIR = os.path.normpath(os.path.join(L.HERE, "..", "..", "helm", "eddy"))
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


# Series only the coordinator serves (its partition-health gauges).
COORDINATOR_METRICS = {"eddy_offline_partitions", "eddy_under_min_insync_partitions",
                       "eddy_coordinator_leader", "eddy_coordinator_elections_total"}


class Scrape:
    """A parsed text exposition: samples by (name, frozenset of label pairs), types by
    family name."""

    def __init__(self, text):
        self.text = text
        self.samples = {}
        self.types = {}
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, typ = line.split(" ", 3)
                self.types[name] = typ
                continue
            if not line or line.startswith("#"):
                continue
            m = _SAMPLE.match(line)
            if not m:
                raise AssertionError(f"unparsable sample line: {line!r}")
            labels = frozenset(_LABEL.findall(m.group(2) or ""))
            self.samples[(m.group(1), labels)] = float(m.group(3))

    def get(self, name, **labels):
        key = (name, frozenset(labels.items()))
        if key not in self.samples:
            near = sorted(str(dict(k[1])) for k in self.samples if k[0] == name)
            raise AssertionError(f"no sample {name}{labels}; {name} has {near}")
        return self.samples[key]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read().decode()


def metrics_port(node):
    """The port from the node's "metrics on PORT" line (printed after "listening on")."""
    line = L.poll_until(lambda: next((l for l in node._stdout if l.startswith("metrics on ")), None),
                        10, what="'metrics on PORT' on stdout")
    return int(line.split()[2])


class MetricsTest(unittest.TestCase):
    def setUp(self):
        self.node = L.start_node(self, args=["--metrics-listen", "127.0.0.1:0",
                                             "--idle-timeout", "0"])
        self.mport = metrics_port(self.node)
        self.m = L.pb()
        self.t = L.now_ms() - 120_000
        self.n = 0

    def scrape(self):
        status, ctype, text = http_get(f"http://127.0.0.1:{self.mport}/metrics")
        self.assertEqual(status, 200)
        self.assertEqual(ctype, "text/plain; version=0.0.4; charset=utf-8")
        return Scrape(text)

    def event(self, user="u-1", **kw):
        self.n += 1
        base = dict(event_id=f"e-{self.n}", user_id=user, timestamp_ms=self.t + self.n * 1000,
                    event_type=self.m.EVENT_TYPE_VIEW, product_id=f"p-{self.n % 7}",
                    category="books")
        base.update(kw)
        return self.m.Event(**base)

    def ingest(self, events):
        return self.node.stub.Ingest(self.m.IngestRequest(events=events), timeout=30)

    def test_counts_match_the_calls(self):
        before = self.scrape()
        self.assertEqual(before.get("eddy_events_ingested_total"), 0)
        self.assertEqual(before.get("eddy_partitions_owned"), 256)
        self.assertEqual(before.get("eddy_watermark_lag_seconds"), 0)

        accepted = dups = ok_calls = batches = valid = 0
        first = [self.event(user=f"u-{i % 5}") for i in range(40)]
        for chunk in (first[:10], first[10:25], first[25:]):
            r = self.ingest(chunk)
            accepted, dups, ok_calls, batches, valid = (accepted + r.accepted, dups + r.duplicates,
                                                        ok_calls + 1, batches + 1, valid + len(chunk))
        self.assertEqual((accepted, dups), (40, 0))
        # a batch with two duplicates and two bad events: the valid ones still land
        mixed = [first[0], first[1], self.event(), self.event(user=""),
                 self.event(timestamp_ms=-5)]
        r = self.ingest(mixed)
        self.assertEqual((r.accepted, r.duplicates, len(r.rejected)), (1, 2, 2))
        accepted, dups, ok_calls, batches, valid = accepted + 1, dups + 2, ok_calls + 1, batches + 1, valid + 3
        # only bad events: answered OK, nothing reaches the writer
        r = self.ingest([self.event(event_type=self.m.EVENT_TYPE_UNSPECIFIED)])
        self.assertEqual(len(r.rejected), 1)
        ok_calls += 1
        # a malformed request is INVALID_ARGUMENT before any handler runs
        raw = L.raw_method(self.node.channel, "/eddy.v1.Eddy/Ingest")
        with self.assertRaises(grpc.RpcError) as cm:
            raw(b"\xff\xff\xff\xff", timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        # reads
        self.node.stub.Recommend(self.m.RecommendRequest(user_id="u-1", max_recommendations=5), timeout=10)
        with self.assertRaises(grpc.RpcError) as cm:
            self.node.stub.GetUserProfile(self.m.GetUserProfileRequest(user_id="nobody"), timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.node.stub.EventCounts(self.m.EventCountsRequest(), timeout=10)
        with self.assertRaises(grpc.RpcError) as cm:  # unknown method: bounded label "unknown"
            L.raw_method(self.node.channel, "/eddy.v1.Eddy/NoSuchMethod")(b"", timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNIMPLEMENTED)

        # a read handler records its serving time just after its answer is sent: wait for it
        def served():
            s = self.scrape()
            reads = ("Recommend", "GetUserProfile", "EventCounts")
            return s if all(s.get("eddy_serving_seconds_count", method=m) for m in reads) else None

        s = L.poll_until(served, 10, interval=0.05, what="the reads' serving times")
        self.assertEqual(s.get("eddy_events_ingested_total"), accepted)
        self.assertEqual(s.get("eddy_events_duplicate_total"), dups)
        self.assertEqual(s.get("eddy_late_events_total"), 0)
        self.assertEqual(s.get("eddy_ingest_batches_total"), batches)
        self.assertEqual(s.get("eddy_events_rejected_total", reason="user_id"), 1)
        self.assertEqual(s.get("eddy_events_rejected_total", reason="timestamp_ms"), 1)
        self.assertEqual(s.get("eddy_events_rejected_total", reason="event_type"), 1)
        self.assertEqual(s.get("eddy_events_rejected_total", reason="price"), 0)
        self.assertEqual(s.get("eddy_event_to_result_seconds_count"), valid)
        self.assertEqual(s.get("eddy_event_to_result_seconds_bucket", le="+Inf"), valid)
        self.assertGreater(s.get("eddy_event_to_result_seconds_sum"), 0)
        self.assertEqual(s.get("eddy_group_commit_events_sum"), valid)
        self.assertEqual(s.get("eddy_processing_seconds_count"), s.get("eddy_group_commit_events_count"))
        self.assertGreaterEqual(s.get("eddy_processing_seconds_count"), 1)
        # the sync thread's two steps of every group that answered writes
        steps = s.get("eddy_group_commit_step_seconds_count", phase="write")
        self.assertGreaterEqual(steps, s.get("eddy_processing_seconds_count"))
        self.assertEqual(s.get("eddy_group_commit_step_seconds_count", phase="publish"), steps)
        self.assertGreater(s.get("eddy_group_commit_step_seconds_sum", phase="write"), 0)
        self.assertGreater(s.get("eddy_group_commit_step_seconds_sum", phase="publish"), 0)
        self.assertEqual(s.get("eddy_queue_depth"), 0)
        self.assertEqual(s.get("eddy_backpressure_rejections_total", queue="writer"), 0)
        self.assertEqual(s.get("eddy_recommendations_total"), 1)
        # the Recommend looked up its anchors' neighbours: each a hit or a miss of the cache
        self.assertEqual(before.get("eddy_neighbour_cache_misses_total"), 0)
        self.assertGreaterEqual(s.get("eddy_neighbour_cache_hits_total")
                                + s.get("eddy_neighbour_cache_misses_total"), 1)
        self.assertGreaterEqual(s.get("eddy_neighbour_cache_misses_total"), 1)  # cold: read
        self.assertEqual(s.get("eddy_neighbour_cache_evictions_total"), 0)
        self.assertIsNotNone(s.get("eddy_neighbour_cache_revalidated_total"))
        for method in ("Recommend", "GetUserProfile", "EventCounts"):
            self.assertEqual(s.get("eddy_serving_seconds_count", method=method), 1, method)
        self.assertEqual(s.get("eddy_serving_seconds_count", method="TopProducts"), 0)
        # newest event time minus watermark: exactly the default out-of-orderness (5 s)
        self.assertEqual(s.get("eddy_watermark_lag_seconds"), 5.0)
        self.assertGreaterEqual(s.get("eddy_leveldb_bytes"), 0)

        ingest = dict(grpc_service="eddy.v1.Eddy", grpc_method="Ingest", grpc_type="unary")
        self.assertEqual(s.get("grpc_server_handled_total", grpc_code="OK", **ingest), ok_calls)
        self.assertEqual(s.get("grpc_server_handled_total", grpc_code="InvalidArgument", **ingest), 1)
        self.assertEqual(s.get("grpc_server_handled_total", grpc_code="ResourceExhausted", **ingest), 0)
        self.assertEqual(s.get("grpc_server_started_total", **ingest), ok_calls + 1)
        self.assertEqual(s.get("grpc_server_msg_received_total", **ingest), ok_calls + 1)
        self.assertEqual(s.get("grpc_server_msg_sent_total", **ingest), ok_calls)
        self.assertEqual(s.get("grpc_server_handling_seconds_count", **ingest), ok_calls + 1)
        profile = dict(grpc_service="eddy.v1.Eddy", grpc_method="GetUserProfile", grpc_type="unary")
        self.assertEqual(s.get("grpc_server_handled_total", grpc_code="NotFound", **profile), 1)
        self.assertEqual(s.get("grpc_server_handled_total", grpc_service="unknown", grpc_method="unknown",
                               grpc_type="unknown", grpc_code="Unimplemented"), 1)
        self.assertNotIn("NoSuchMethod", s.text)
        # the health checks of the harness are counted too
        self.assertGreaterEqual(s.get("grpc_server_handled_total", grpc_service="grpc.health.v1.Health",
                                      grpc_method="Check", grpc_type="unary", grpc_code="OK"), 1)
        self.assertEqual(s.get("eddy_build_info", version="0.1.0",
                               grpc_version=dict(next(k[1] for k in s.samples
                                                      if k[0] == "eddy_build_info"))["grpc_version"]), 1)
        for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                     "process_virtual_memory_bytes", "process_open_fds", "process_max_fds",
                     "process_start_time_seconds"):
            self.assertIn(name, s.types)
        self.assertGreater(s.get("process_resident_memory_bytes"), 0)
        self.assertAlmostEqual(s.get("process_start_time_seconds"), time.time(), delta=600)

    def test_event_time_lag_shows_old_events(self):
        # eddy_watermark_lag_seconds stays within --out-of-orderness whatever the events'
        # age; eddy_event_time_lag_seconds is how far behind the wall clock they are
        self.assertEqual(self.scrape().get("eddy_event_time_lag_seconds"), 0)
        hour_ago = L.now_ms() - 3_600_000
        start = time.time()
        self.ingest([self.event(timestamp_ms=hour_ago + i * 1000) for i in range(3)])
        s = L.poll_until(lambda: (lambda s: s if s.get("eddy_event_time_lag_seconds") else None)(
            self.scrape()), 10, interval=0.05, what="an event time lag")
        lag = s.get("eddy_event_time_lag_seconds")
        self.assertGreaterEqual(lag, 3600 - 2 - 1)  # newest event: 2 s after hour_ago
        self.assertLessEqual(lag, 3600 - 2 + (time.time() - start) + 1)
        self.assertLessEqual(s.get("eddy_watermark_lag_seconds"), 5.0)
        # current events catch it up
        self.ingest([self.event(timestamp_ms=L.now_ms())])
        s = L.poll_until(lambda: (lambda s: s if s.get("eddy_event_time_lag_seconds") < 60 else None)(
            self.scrape()), 10, interval=0.05, what="the lag of a current event")
        self.assertGreater(s.get("eddy_event_time_lag_seconds"), -5)

    def test_promtool_accepts_the_scrape(self):
        if not PROMTOOL:
            self.skipTest("promtool not installed (Debian package 'prometheus')")
        self.ingest([self.event() for _ in range(3)])
        text = self.scrape().text
        r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(r.returncode, 0, f"promtool: {r.stdout}{r.stderr}")
        self.assertEqual((r.stdout + r.stderr).strip(), "", "promtool lint findings")

    def test_every_chart_metric_exists(self):
        sources = [os.path.join(HELM_DIR, "templates", "prometheusrule.yaml"),
                   os.path.join(HELM_DIR, "dashboards", "eddy.json")]
        referenced = set()
        for path in sources:
            with open(path) as f:
                referenced |= set(re.findall(r"\b((?:eddy|grpc_server|process)_[a-z0-9_]+)", f.read()))
        self.assertIn("eddy_events_ingested_total", referenced)  # the extraction works
        # the experiments' series (eddy_experiment_*{experiment, variant}) exist once an
        # experiment runs (the refresher exports each running one's variants, at zero until
        # answers are served): run one, as a dashboard user would
        L.require_cli()
        rc, _, err = L.run_cli(self.node.endpoint, "experiments", "create", "chart",
                               "--variant", "A:50", "--variant", "B:50")
        self.assertEqual(rc, 0, err)
        s = L.poll_until(lambda: (lambda s: s if "eddy_experiment_recommended_hits" in s.types
                                  else None)(self.scrape()),
                         15, interval=0.2, what="the experiment series in the scrape")
        families = set(s.types)

        def family(name):
            for suffix in ("_bucket", "_count", "_sum"):
                base = name[:-len(suffix)]
                if name.endswith(suffix) and s.types.get(base) == "histogram":
                    return base
            return name

        # every one, the move series included (registered on every node, at zero until a
        # partition moves in); the coordinator's own series from a real coordinator's scrape
        coord_only = {n for n in referenced if n in COORDINATOR_METRICS}
        missing = [name for name in sorted(referenced - coord_only) if family(name) not in families]
        self.assertEqual(missing, [], f"chart metrics missing from the scrape of a --dev node")
        self.assertTrue(coord_only, "the chart alerts on the coordinator's partition health")
        L.require_coordinator()
        L.require_etcd()
        etcd = L.start_etcd(self)
        c = L.start_coordinator(self, etcd.url, "c1", args=["--metrics-listen", "127.0.0.1:0"])
        _, _, text = http_get(f"http://127.0.0.1:{metrics_port(c)}/metrics")
        coord_families = set(Scrape(text).types)
        self.assertEqual(sorted(coord_only - coord_families), [],
                         "chart metrics missing from the scrape of a coordinator")
        self.assertIn("eddy_move_pause_seconds", {family(n) for n in referenced})
        # labels the dashboard groups by
        self.assertIn(("method", "Recommend"), {p for k in s.samples if k[0] == "eddy_serving_seconds_count" for p in k[1]})
        self.assertTrue(any(k[0] == "eddy_events_rejected_total" and dict(k[1]).get("reason")
                            for k in s.samples))

    def test_index_and_not_found(self):
        status, _, body = http_get(f"http://127.0.0.1:{self.mport}/")
        self.assertEqual(status, 200)
        self.assertIn("/metrics", body)
        with self.assertRaises(urllib.error.HTTPError) as cm:
            http_get(f"http://127.0.0.1:{self.mport}/nope")
        self.assertEqual(cm.exception.code, 404)

    def test_prometheus_server_scrapes_the_node(self):
        if not PROMETHEUS:
            self.skipTest("prometheus not installed (Debian package 'prometheus')")
        self.ingest([self.event() for _ in range(7)])
        d = L.temp_dir(self, "eddy-it-prom-")
        cfg = os.path.join(d, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                    "scrape_configs:\n  - job_name: eddy\n    static_configs:\n"
                    f"      - targets: ['127.0.0.1:{self.mport}']\n")
        port = free_port()
        log = open(os.path.join(d, "prometheus.log"), "w+b")
        self.addCleanup(log.close)
        proc = subprocess.Popen([PROMETHEUS, f"--config.file={cfg}",
                                 f"--storage.tsdb.path={os.path.join(d, 'data')}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        def stop():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.addCleanup(stop)
        base = f"http://127.0.0.1:{port}"

        def query():
            if proc.poll() is not None:
                log.seek(0)
                raise AssertionError(f"prometheus exited rc={proc.returncode}: {log.read().decode()[-2000:]}")
            q = urllib.parse.urlencode({"query": 'eddy_events_ingested_total{job="eddy"}'})
            _, _, body = http_get(f"{base}/api/v1/query?{q}", timeout=5)
            res = json.loads(body)
            if res.get("status") != "success" or not res["data"]["result"]:
                return None
            return float(res["data"]["result"][0]["value"][1])

        self.assertEqual(L.poll_until(query, 60, interval=0.5, what="Prometheus to scrape eddy-node"), 7)
        q = urllib.parse.urlencode({"query": 'up{job="eddy"}'})
        _, _, body = http_get(f"{base}/api/v1/query?{q}")
        self.assertEqual(json.loads(body)["data"]["result"][0]["value"][1], "1")


class MetricsListenTest(unittest.TestCase):
    def test_empty_address_disables_metrics(self):
        node = L.start_node(self, args=["--metrics-listen", ""])
        time.sleep(0.2)
        self.assertFalse(any(l.startswith("metrics on ") for l in node._stdout), node._stdout)

    def test_taken_metrics_address_fails_the_start(self):
        node = L.start_node(self, args=["--metrics-listen", "127.0.0.1:0"])
        taken = metrics_port(node)
        d = L.temp_dir(self)
        r = subprocess.run([L.require_node(), "--dev", "--data-dir", d, "--listen", "127.0.0.1:0",
                            "--metrics-listen", f"127.0.0.1:{taken}"],
                           capture_output=True, text=True, timeout=30)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("cannot serve metrics", r.stderr)
        self.assertNotIn("listening on", r.stdout)


if __name__ == "__main__":
    unittest.main()
