"""CI smoke run of the throughput benchmarks (docs/BENCHMARKS.md): eddy-bench for about
2 seconds per mode against a real `eddy-node --dev`, the reference programs briefly, and
bench/seed_pipeline.py if redis-server and python3-redis are installed. Asserts that each
JSON result counts work done, has no errors other than counted retries, and has sane
latency fields; the generator is checked to be deterministic and to follow its event mix.
Under 30 s in all."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import eddylib as L

BENCH = os.environ.get("EDDY_BENCH", "")
REF_LEVELDB = os.environ.get("EDDY_REF_LEVELDB", "")
REF_GRPC = os.environ.get("EDDY_REF_GRPC", "")
SEED_PIPELINE = os.path.normpath(os.path.join(L.HERE, "..", "..", "bench", "seed_pipeline.py"))


def run_json(args, timeout=20):
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"{args[0]} exited {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}")
    return json.loads(r.stdout)


class BenchSmoke(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not BENCH or not os.access(BENCH, os.X_OK):
            raise unittest.SkipTest("EDDY_BENCH is not set: the eddy-bench target was not built")
        cls.node = L.Node().start()

    @classmethod
    def tearDownClass(cls):
        cls.node.stop()
        cls.node.cleanup()

    def bench(self, *args):
        return run_json([BENCH, "--endpoint", self.node.endpoint, "-o", "json", *args])

    def assert_latency(self, d, count_at_least=1):
        self.assertGreaterEqual(d["count"], count_at_least)
        self.assertGreater(d["p50"], 0)
        self.assertLessEqual(d["p50"], d["p95"])
        self.assertLessEqual(d["p95"], d["p99"])
        self.assertLessEqual(d["p99"], d["p999"])
        self.assertLessEqual(d["p999"], d["max"])
        self.assertLess(d["max"], 30_000)

    def assert_no_errors(self, r):
        self.assertEqual(r["errors"], 0, r.get("first_error"))
        self.assertEqual(r["errors_by_code"], {})
        # retries (RESOURCE_EXHAUSTED) are allowed: they are counted, not errors
        self.assertEqual(r["retries_total"], sum(r["retries"].values()))

    def test_ingest(self):
        r = self.bench("--mode", "ingest", "--duration", "2s", "--streams", "2", "--batch", "200",
                       "--dup-fraction", "0.05", "--late-fraction", "0.02", "--scenario", "smoke")
        self.assertEqual(r["scenario"], "smoke")
        self.assertGreater(r["throughput_eps"], 0)
        self.assertGreater(r["events"], 0)
        self.assertEqual(r["events"], r["batches"] * 200)
        # every event sent is accounted for by the node
        self.assertEqual(r["accepted"] + r["duplicates"] + r["rejected"], r["events"])
        self.assertEqual(r["rejected"], 0)
        self.assertGreater(r["duplicates"], 0)
        self.assertGreater(r["late"], 0)
        self.assertAlmostEqual(r["throughput_eps"], r["events"] / r["duration_s"], delta=1)
        self.assert_latency(r["latency_ms"])
        self.assert_no_errors(r)

    def test_events_budget_and_rate(self):
        r = self.bench("--mode", "ingest", "--events", "1000", "--batch", "100", "--rate", "2000")
        self.assertEqual(r["events"], 1000)
        self.assertEqual(r["batches"], 10)
        # 1000 events at 2000/s take about half a second, not less
        self.assertGreater(r["duration_s"], 0.3)
        self.assert_no_errors(r)

    def test_recommend_and_mixed(self):
        r = self.bench("--mode", "recommend", "--duration", "2s", "--recommend-qps", "200",
                       "--preload", "2000")
        self.assertEqual(r["events"], 0)
        self.assertGreater(r["recommend_qps"], 150)
        self.assertGreater(r["recommend_requests"], 300)
        self.assert_latency(r["recommend_latency_ms"], 300)
        self.assertEqual(r["recommend_errors_by_code"], {})
        self.assert_no_errors(r)

        r = self.bench("--mode", "mixed", "--duration", "2s", "--recommend-qps", "100",
                       "--rate", "1000", "--batch", "100")
        self.assertGreater(r["throughput_eps"], 0)
        self.assertGreater(r["recommend_requests"], 100)
        self.assert_latency(r["latency_ms"])
        self.assert_latency(r["recommend_latency_ms"], 100)
        self.assert_no_errors(r)

    def test_visible(self):
        r = self.bench("--mode", "visible", "--duration", "2s", "--probe-interval", "50ms")
        self.assertGreater(r["visible_probes"], 10)
        self.assertEqual(r["visible_timeouts"], 0)
        self.assertEqual(r["visible_errors_by_code"], {})
        self.assert_latency(r["visible_latency_ms"], r["visible_probes"])
        self.assert_latency(r["visible_ack_latency_ms"], r["visible_probes"])
        # a probe is polled until visible; it cannot be visible long before its ack
        self.assertGreater(r["visible_latency_ms"]["p50"], 0.05)
        self.assert_no_errors(r)

    def test_generator_is_deterministic(self):
        def dump(seed):
            out = subprocess.run([BENCH, "--mode", "dump", "--events", "2000", "--seed", str(seed),
                                  "--run-id", "det", "--start-ms", "1700000000000"],
                                 capture_output=True, text=True, check=True, timeout=10).stdout
            return [json.loads(l) for l in out.splitlines()]
        a, b, c = dump(7), dump(7), dump(8)
        self.assertEqual(a, b)
        self.assertNotEqual(a, c)
        types = [e["eventType"] for e in a]
        self.assertAlmostEqual(types.count("view") / len(a), 0.60, delta=0.05)
        self.assertAlmostEqual(types.count("search") / len(a), 0.07, delta=0.03)
        # bounded disorder: at most --disorder (2 s) behind the synthetic clock
        for i, e in enumerate(a):
            clock = 1700000000000 + i  # 1000 events per second of event time
            self.assertLessEqual(clock - e["timestamp"], 2000)
            self.assertGreaterEqual(clock - e["timestamp"], 0)
        by_product = {}  # a product has one category, brand and price
        for e in a:
            if e["productId"]:
                key = (e["category"], e["brand"], e["price"])
                self.assertEqual(by_product.setdefault(e["productId"], key), key)

    def test_references(self):
        for ref in (REF_LEVELDB, REF_GRPC):
            if not ref or not os.access(ref, os.X_OK):
                self.skipTest("EDDY_REF_LEVELDB / EDDY_REF_GRPC not set")
        tmp = tempfile.mkdtemp(prefix="eddy-it-ref-")
        try:
            r = run_json([REF_LEVELDB, "-o", "json", "--dir", os.path.join(tmp, "db"),
                          "--events", "20000", "--batch", "500"])
            self.assertEqual(r["events"], 20000)
            self.assertEqual(r["syncs"], 40)
            self.assertGreater(r["throughput_eps"], 0)
            self.assertGreater(r["bytes_per_event"], 20)
            self.assert_latency(r["latency_ms"], 40)
            self.assertEqual(r["unsynced_writes"], 0)
            # the node's shape: a DEDUP row per event, 256 KiB of unsynced rows (two
            # 128 KiB writes) before each synced write, idle between them
            n = run_json([REF_LEVELDB, "-o", "json", "--dir", os.path.join(tmp, "db2"),
                          "--events", "5000", "--dedup", "--behind", "256k", "--pause", "1ms"])
            self.assertEqual(n["syncs"], 10)
            self.assertEqual(n["unsynced_writes"], 20)
            self.assertGreater(n["bytes_per_event"], r["bytes_per_event"])
            self.assert_latency(n["latency_ms"], 10)
            self.assertEqual(n["write_cpu_ms"]["count"], 10)
            self.assertLessEqual(n["write_cpu_ms"]["p50"], n["latency_ms"]["max"])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        r = run_json([REF_GRPC, "-o", "json", "--duration", "1s", "--batch", "500"])
        self.assertEqual(r["errors"], 0)
        self.assertGreater(r["throughput_eps"], 0)
        self.assertGreater(r["payload_bytes"], 500 * 20)
        self.assert_latency(r["latency_ms"])

    def test_seed_pipeline(self):
        try:
            import redis  # noqa: F401
        except ImportError:
            self.skipTest("python3-redis is not installed: seed pipeline reference not run")
        if not shutil.which("redis-server"):
            self.skipTest("redis-server is not installed: seed pipeline reference not run")
        events = subprocess.run([BENCH, "--mode", "dump", "--events", "500", "--run-id", "seed"],
                                capture_output=True, text=True, check=True, timeout=10).stdout
        r = subprocess.run([sys.executable, SEED_PIPELINE, "--start-redis", "-o", "json"],
                           input=events, capture_output=True, text=True, timeout=20)
        self.assertEqual(r.returncode, 0, r.stderr)
        res = json.loads(r.stdout)
        self.assertEqual(res["events"], 500)
        self.assertGreater(res["throughput_eps"], 0)
        self.assert_latency(res["latency_ms"], 500)


class ScriptSmoke(unittest.TestCase):
    """The one-command scripts at a tiny size, so they keep working."""

    def test_footprint(self):
        build = os.path.dirname(L.require_node())
        if not all(os.access(os.path.join(build, b), os.X_OK)
                   for b in ("eddy", "eddy-bench", "eddy-ref-leveldb", "eddy-ref-grpc")):
            raise unittest.SkipTest("the bench programs are not all built beside eddy-node")
        script = os.path.join(L.HERE, "..", "..", "bench", "footprint.sh")
        env = dict(os.environ, EDDY_BUILD_DIR=build, BENCH_USERS="1000")
        r = subprocess.run(["bash", script], capture_output=True, text=True, timeout=120, env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        out = json.loads(r.stdout)
        self.assertEqual((out["events"], out["errors"]), (3000, 0))
        self.assertGreater(out["users"], 900)   # of 1,000 drawn uniformly, 3 events each
        self.assertEqual(out["table_rows"]["log"], 3000)
        self.assertEqual(out["table_rows"]["user"], out["users"])
        self.assertGreater(out["rss_anon_bytes"], 0)
        self.assertLessEqual(out["rss_anon_bytes"], out["rss_bytes"])
        self.assertGreater(out["disk_per_user"], out["table_bytes_per_user"]["log"] / 10)

    def test_recommend_tail(self):
        build = os.path.dirname(L.require_node())
        if not all(os.access(os.path.join(build, b), os.X_OK)
                   for b in ("eddy-bench", "eddy-ref-leveldb", "eddy-ref-grpc")):
            raise unittest.SkipTest("the bench programs are not all built beside eddy-node")
        script = os.path.join(L.HERE, "..", "..", "bench", "recommend_tail.sh")
        env = dict(os.environ, EDDY_BUILD_DIR=build, BENCH_DURATION="1s", BENCH_PRELOAD="1s")
        r = subprocess.run(["bash", script], capture_output=True, text=True, timeout=120, env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        for run in ("cold", "warm"):  # a row each, and the server's side of the same calls
            self.assertTrue(any(l.startswith(f"| `recommend-{run}` | - | - | ")
                                for l in r.stdout.splitlines()), r.stdout)
            # a quantile past the top finite bucket prints as "inf" (a cold run that queued
            # for seconds: under ASan on a busy machine)
            q = r"(?:[0-9.e+-]+|inf)"
            self.assertRegex(r.stderr, rf"recommend-{run}: the server's own over [1-9][0-9]* "
                                       rf"calls \([0-9]+ us of the node's CPU per call\): "
                                       rf"served p50 <= {q} / p99 <= {q} ms; "
                                       rf"total p50 <= {q} / p99 <= {q} ms; user ")
        self.assertRegex(r.stderr, r"eddy_user_cache_hits_total [1-9]")  # the warm run's

    def test_targets(self):
        """bench/targets.sh at its tiny size: the issue-16 targets table comes out with every
        row measured (the numbers at this size mean nothing and are not checked)."""
        build = os.path.dirname(L.require_node())
        L.require_etcd()
        if not all(os.access(os.path.join(build, b), os.X_OK)
                   for b in ("eddy", "eddy-bench", "eddy-coordinator", "eddy-ref-leveldb", "eddy-ref-grpc")):
            raise unittest.SkipTest("the bench programs and eddy-coordinator are not all built beside eddy-node")
        script = os.path.join(L.HERE, "..", "..", "bench", "targets.sh")
        out = tempfile.mkdtemp(prefix="eddy-it-targets-")
        try:
            env = dict(os.environ, EDDY_BUILD_DIR=build, BENCH_QUICK="1")
            r = subprocess.run(["bash", script, out], capture_output=True, text=True, timeout=540, env=env)
            self.assertEqual(r.returncode, 0, r.stderr)
            lines = r.stdout.splitlines()
            # the rows, each once, each with a number measured and a verdict
            for row in ("durable ingest, `--dev`, 2 cores", "local cluster with R = 2",
                        "ack p99, 500-event batches at 5,000 events/s", "ack p99, one 500-event batch at a time",
                        "Recommend p99 at 5,000 QPS, idle (caches warm)",
                        "Recommend p99 at 5,000 QPS while ingesting 50,000 events/s",
                        "disk per user at 1 M users", "RAM per user at 1 M users (default caches)",
                        "100 MB partition move under ingest"):
                found = [l for l in lines if l.startswith(f"| {row} | ")]
                self.assertEqual(len(found), 1, f"{row!r} in\n{r.stdout}\n{r.stderr}")
                cells = [c.strip() for c in found[0].strip("|").split("|")]
                self.assertRegex(cells[2], r"^[0-9][0-9,.]* ", f"{row}: {found[0]}")
                self.assertIn(cells[4], ("met", "**missed**"), found[0])
                if "per user" not in row:  # the run's CPU, read from /proc beside it
                    self.assertRegex(found[0], r"machine busy [0-9]+ % of [0-9]+ CPUs")
            self.assertRegex(r.stdout, r"Machine: nproc [0-9]+, .* load average .* at the start, .* at the end")
            self.assertNotIn("Failed commands", r.stdout)
            with open(os.path.join(out, "targets.md")) as f:
                self.assertEqual(f.read(), r.stdout)
        finally:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
