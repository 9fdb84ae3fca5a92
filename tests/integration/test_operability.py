"""Rough edges a first-time operator meets (issue 17), each against real processes: the
image's listen address reached from outside loopback, the message of a busy gRPC port, a
busy metrics port and a data directory in use (each with a real second process), `eddy
status` against a single --dev node, a state node whose --partitions differs from its
cluster's, a --dev data directory opened with another count, --version on every binary, human defaults in --help, and a sample stream big
enough that `eddy recommend` still has something to say."""
import json
import os
import re
import socket
import subprocess
import unittest

import eddylib as lib

ROOT = os.path.normpath(os.path.join(lib.HERE, "..", ".."))


def dockerfile_env():
    """The ENV of the Dockerfile's last stage (continuation lines joined) and its EXPOSEd ports."""
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        text = f.read().replace("\\\n", " ")
    stage = text.rsplit("\nFROM ", 1)[-1]
    env, ports = {}, set()
    for line in stage.splitlines():
        words = line.split()
        if words[:1] == ["ENV"]:
            for w in words[1:]:
                k, _, v = w.partition("=")
                env[k] = v
        elif words[:1] == ["EXPOSE"]:
            ports |= {int(p.split("/")[0]) for p in words[1:]}
    return env, ports


def non_loopback_ipv4():
    """An IPv4 address of this host outside 127/8 (the route a UDP socket would take), or None."""
    for probe in ("10.255.255.255", "192.0.2.1"):
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))
                ip = s.getsockname()[0]
            if not ip.startswith("127."):
                return ip
        except OSError:
            continue
    return None


class SecondProcess(unittest.TestCase):
    """A second eddy-node that collides with a running one must say why in one line."""

    def setUp(self):
        lib.require_node()
        self.first = lib.Node(args=["--metrics-listen", "127.0.0.1:0", "--partitions", "8"])
        self.addCleanup(self.first.cleanup)
        self.first.start()

    def run_second(self, *args, data_dir=None):
        d = data_dir or lib.temp_dir(self)
        r = subprocess.run([lib.NODE, "--dev", "--partitions", "8", "--data-dir", d, *args],
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        self.assertNotEqual(r.returncode, 0, f"the second node started:\n{r.stderr}")
        # no raw library line: gRPC core's "E1206 ... chttp2_server.cc" or LevelDB's errno text
        self.assertNotRegex(r.stderr, r"chttp2_server|UNKNOWN:|Resource temporarily unavailable")
        self.assertNotIn("network error", r.stderr)
        return r.stderr

    def metrics_port(self):
        return lib.metrics_port_of(self.first)

    def test_busy_grpc_port(self):
        err = self.run_second("--listen", self.first.endpoint, "--metrics-listen", "127.0.0.1:0")
        self.assertIn(f"cannot listen on {self.first.endpoint}: address already in use", err)
        self.assertIn("choose another --listen", err)

    def test_busy_metrics_port(self):
        addr = f"127.0.0.1:{self.metrics_port()}"
        err = self.run_second("--listen", "127.0.0.1:0", "--metrics-listen", addr)
        self.assertIn(f"cannot serve metrics on {addr}: address already in use", err)
        self.assertIn("choose another --metrics-listen", err)
        self.assertNotIn("bind to port 0", err)  # libmicrohttpd's line

    def test_data_dir_in_use(self):
        err = self.run_second("--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                              data_dir=self.first.data_dir)
        self.assertIn(f"data directory {self.first.data_dir} is in use by process "
                      f"{self.first.proc.pid}", err)
        self.assertIn("each node needs its own --data-dir", err)


class SingleNode(unittest.TestCase):

    def test_status_of_a_dev_node(self):
        lib.require_cli()
        node = lib.start_node(self, args=["--partitions", "16", "--node-id", "solo"])
        # no coordinator at --coordinator: the --dev node at --endpoint answers for itself
        nobody = f"127.0.0.1:{lib.free_port()}"
        st = lib.cli_json(self, node.endpoint, "--coordinator", nobody, "status")
        self.assertEqual(st["config_partitions"], 16)
        self.assertEqual([n["id"] for n in st["nodes"]], ["solo"])
        self.assertEqual(st["nodes"][0]["grpc_addr"], node.endpoint)
        self.assertEqual(st["nodes"][0]["partitions_owned"], 16)
        self.assertEqual([p["owner"] for p in st["partitions"]], ["solo"] * 16)
        self.assertEqual([p["partition"] for p in st["partitions"]], list(range(16)))
        # asked directly as the coordinator, too
        rc, out, err = lib.run_cli(node.endpoint, "--coordinator", node.endpoint, "status")
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"nodes \(1\):")
        # neither a coordinator nor a node: the coordinator's error, exit 3
        rc, out, err = lib.run_cli(nobody, "--coordinator", nobody, "status")
        self.assertEqual(rc, 3, out)
        self.assertIn(f"(coordinator {nobody})", err)

    def test_dockerfile_listen_is_reachable(self):
        """`docker run -p 7070:7070 eddy --dev` with the image's ENV: a node that listens on
        every interface (reached here on a non-loopback address) and that protected mode lets
        start. Only the port is changed, to a free one."""
        env, exposed = dockerfile_env()
        host, _, port = env.get("EDDY_LISTEN", "").rpartition(":")
        self.assertEqual(host, "0.0.0.0", f"the image must listen on every interface: {env}")
        self.assertIn(int(port), exposed)
        mhost, _, mport = env.get("EDDY_METRICS_LISTEN", "").rpartition(":")
        self.assertEqual(mhost, "0.0.0.0")
        self.assertIn(int(mport), exposed)
        ip = non_loopback_ipv4()
        if ip is None:
            self.skipTest("no non-loopback IPv4 address on this host")
        free = lib.free_port()
        run_env = {k: v for k, v in os.environ.items() if not k.startswith("EDDY_")}
        run_env.update(env)
        run_env["EDDY_LISTEN"] = f"{host}:{free}"
        run_env["EDDY_METRICS_LISTEN"] = f"{mhost}:0"
        d = lib.temp_dir(self)
        p = subprocess.Popen([lib.NODE, "--dev", "--data-dir", d, "--partitions", "8"], env=run_env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        lib._live.add(p)

        def stop():
            if p.poll() is None:
                p.kill()
            p.wait()
            p.stderr.close()
            lib._live.discard(p)
        self.addCleanup(stop)
        ch = lib.open_channel(f"{ip}:{free}")
        self.addCleanup(ch.close)
        health = lib.health_stub(ch)
        h = lib.health_pb()

        def serving():
            if p.poll() is not None:
                raise AssertionError(f"eddy-node exited rc={p.returncode}: {p.stderr.read().decode()}")
            return health.Check(h.HealthCheckRequest(service=""), timeout=1).status == \
                h.HealthCheckResponse.SERVING
        lib.poll_until(serving, lib.START_TIMEOUT, what=f"SERVING on {ip}:{free}")


class ClusterPartitions(unittest.TestCase):
    """--partitions only sizes a new cluster: a state node started with another count
    adopts the cluster's (as the coordinator does), says so, and serves."""

    def test_state_node_adopts_the_cluster_count(self):
        lib.require_etcd()
        P = 256  # the default count (common/partition.h)
        c = lib.Cluster(self, partitions=P)
        c.add_coordinator("c1", args=["--replication-factor", "1"])  # one state node
        n = c.add_node("s1", roles="ingest,state", args=["--partitions", "64"])
        c.wait_assignment({"s1"})
        self.assertIn("using the cluster's partition count", n.log_text())
        self.assertRegex(n.log_text(), r"partitions=256 flag=64")
        events = lib.generate(seed=3, n_users=20, n_events=200)
        # users of partitions above 64: a node that kept its flag would not have them
        high = [e for e in events if lib.user_partition(e["userId"], P) >= 64]
        self.assertTrue(high)
        r = n.stub.Ingest(lib.pb().IngestRequest(events=[lib.to_pb(e) for e in events]),
                          timeout=15)
        self.assertEqual(r.accepted, len(events), r)
        lib.poll_until(lambda: lib.total_events(n.stub) == len(events), 15,
                       what="every event counted")
        user = high[0]["userId"]
        want = sum(1 for e in events if e["userId"] == user)
        self.assertEqual(lib.total_events(n.stub, user), want)


class DevPartitions(unittest.TestCase):
    """A --dev data directory records the partition count it was made with: opened with
    another, its users would hash to partitions that do not hold their state."""

    def test_dev_data_dir_keeps_its_count(self):
        lib.require_node()
        d = lib.temp_dir(self)
        n = lib.Node(data_dir=d, args=["--partitions", "8", "--metrics-listen", ""])
        self.addCleanup(n.cleanup)
        n.start()
        self.assertEqual(n.stub.Ingest(lib.pb().IngestRequest(events=[lib.to_pb(e) for e in
                         lib.generate(seed=5, n_users=5, n_events=20)]), timeout=10).accepted, 20)
        n.stop()
        r = subprocess.run([lib.NODE, "--dev", "--partitions", "16", "--data-dir", d, "--listen",
                            "127.0.0.1:0", "--metrics-listen", ""],
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        self.assertNotEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"data directory {d} was made with --partitions 8, not 16", r.stderr)
        n.start()  # the count it was made with still opens it, with its events
        self.assertEqual(lib.total_events(n.stub), 20)


class Binaries(unittest.TestCase):

    def project_version(self):
        with open(os.path.join(ROOT, "CMakeLists.txt")) as f:
            return re.search(r"project\(eddy VERSION (\S+)", f.read()).group(1)

    def test_version_flag(self):
        version = self.project_version()
        bins = {"eddy-node": lib.NODE, "eddy": lib.CLI,
                "eddy-coordinator": os.environ.get("EDDY_COORDINATOR_BIN", ""),
                "eddy-bench": os.environ.get("EDDY_BENCH", "")}
        checked = 0
        for name, path in bins.items():
            if not path or not os.access(path, os.X_OK):
                continue
            r = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 0, f"{name} --version: {r.stderr}")
            self.assertRegex(r.stdout, r"^%s %s( \(git [^)]+\))?\n$" % (re.escape(name), re.escape(version)))
            checked += 1
        self.assertGreaterEqual(checked, 2, "eddy-node and eddy at least")

    def test_help_prints_human_defaults(self):
        r = subprocess.run([lib.require_node(), "--help"], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0)
        self.assertIn("env EDDY_STATE_TTL, default 30d\n", r.stdout)
        self.assertIn("env EDDY_CACHE_SIZE, default 32MiB\n", r.stdout)
        self.assertIn("env EDDY_SHUTDOWN_GRACE, default 10s\n", r.stdout)
        self.assertNotRegex(r.stdout, r"default \d{4,}(ms|B)\n")


class SampleEvents(unittest.TestCase):

    def test_big_sample_still_recommends(self):
        """20,000 events used to go to 50 users and 40 products: every user had seen the
        whole catalogue and `eddy recommend u-7` answered nothing."""
        lib.require_cli()
        out = os.path.join(lib.temp_dir(self), "events.jsonl")
        with open(out, "w") as f:
            subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "scripts", "sample_events.py"),
                            "--events", "20000"], stdout=f, check=True, timeout=120)
        with open(out) as f:
            events = [json.loads(line) for line in f]
        self.assertEqual(len(events), 20000)
        self.assertGreaterEqual(len({e["userId"] for e in events}), 400)
        self.assertGreaterEqual(len({e["productId"] for e in events}), 150)
        node = lib.start_node(self)
        rc, _, err = lib.run_cli(node.endpoint, "ingest", out, timeout=120)
        self.assertEqual(rc, 0, err)
        rec = lib.cli_json(self, node.endpoint, "recommend", "u-7")
        self.assertTrue(rec["items"], f"no recommendation for u-7: {rec}")


if __name__ == "__main__":
    unittest.main()
