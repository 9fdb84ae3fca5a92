"""Harness of Eddy's integration tests: start and stop eddy-node, generate the Python
stubs, drive the CLI, generate deterministic event streams and compute what the node
should answer for them.

Environment (set by CTest, see CMakeLists.txt):
  EDDY_NODE       path of eddy-node (required)
  EDDY_CLI        path of the eddy CLI (optional: CLI tests skip without it)
  EDDY_PROTO_DIR  the repository's proto/ directory (default: ../../proto)
  EDDY_KEEP_LOGS  a directory: each process's log is moved there when it exits instead of
                  removed (to read a failed run's logs, restarts included)
"""
import atexit
import importlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.environ.get("EDDY_PROTO_DIR") or os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
NODE = os.environ.get("EDDY_NODE", "")
CLI = os.environ.get("EDDY_CLI", "")
GRPC_PLUGIN = "/usr/bin/grpc_python_plugin"

START_TIMEOUT = 20.0   # seconds for a node to print its port and answer SERVING
STOP_TIMEOUT = 20.0    # seconds for a SIGTERM'd node to exit

WINDOW_MS = 60_000
OUT_OF_ORDERNESS_MS = 5_000


def require_node():
    if not NODE or not os.access(NODE, os.X_OK):
        raise unittest.SkipTest("EDDY_NODE is not set to an executable eddy-node")
    return NODE


def require_cli():
    if not CLI or not os.access(CLI, os.X_OK):
        raise unittest.SkipTest("EDDY_CLI is not set: the eddy CLI target was not built")
    return CLI


# ---- generated code -------------------------------------------------------------------

class _Stubs:
    """eddy_pb2, health_pb2 and service stubs, generated once per process with protoc."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="eddy-it-stubs-")
        atexit.register(shutil.rmtree, self.dir, True)
        # health.proto is copied under another path: its generated module would otherwise be
        # "grpc.health.v1", which the grpcio package shadows. The proto package (and so the
        # method names on the wire) stays grpc.health.v1.
        src = os.path.join(self.dir, "src")
        os.makedirs(os.path.join(src, "eddy_it_health"))
        shutil.copy(os.path.join(PROTO_DIR, "grpc", "health", "v1", "health.proto"),
                    os.path.join(src, "eddy_it_health", "health.proto"))
        out = os.path.join(self.dir, "out")
        os.makedirs(out)
        args = ["protoc", f"-I{PROTO_DIR}", f"-I{src}", f"--python_out={out}"]
        self.real_stubs = os.access(GRPC_PLUGIN, os.X_OK)
        if self.real_stubs:
            args += [f"--plugin=protoc-gen-grpc_python={GRPC_PLUGIN}", f"--grpc_python_out={out}"]
        args += ["eddy/v1/eddy.proto", "eddy_it_health/health.proto"]
        r = subprocess.run(args, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"protoc failed ({r.returncode}): {r.stderr}")
        for d in ("eddy", "eddy/v1", "eddy_it_health"):
            open(os.path.join(out, d, "__init__.py"), "a").close()
        sys.path.insert(0, out)
        self.pb = importlib.import_module("eddy.v1.eddy_pb2")
        self.health_pb = importlib.import_module("eddy_it_health.health_pb2")
        if self.real_stubs:
            self.pb_grpc = importlib.import_module("eddy.v1.eddy_pb2_grpc")
            self.health_grpc = importlib.import_module("eddy_it_health.health_pb2_grpc")


_stubs = None


def stubs():
    global _stubs
    if _stubs is None:
        _stubs = _Stubs()
    return _stubs


def pb():
    return stubs().pb


def health_pb():
    return stubs().health_pb


EDDY_METHODS = {
    "Ingest": ("IngestRequest", "IngestResponse"),
    "Recommend": ("RecommendRequest", "RecommendResponse"),
    "GetUserProfile": ("GetUserProfileRequest", "GetUserProfileResponse"),
    "TopProducts": ("TopProductsRequest", "TopProductsResponse"),
    "EventCounts": ("EventCountsRequest", "EventCountsResponse"),
    "DeleteUser": ("DeleteUserRequest", "DeleteUserResponse"),
}


class _GenericEddyStub:
    """Same interface as the generated EddyStub, built on channel.unary_unary (used only
    when grpc_python_plugin is not installed)."""

    def __init__(self, channel):
        m = pb()
        for name, (req, resp) in EDDY_METHODS.items():
            setattr(self, name, channel.unary_unary(
                f"/eddy.v1.Eddy/{name}",
                request_serializer=getattr(m, req).SerializeToString,
                response_deserializer=getattr(m, resp).FromString))


class _GenericHealthStub:
    def __init__(self, channel):
        h = health_pb()
        self.Check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=h.HealthCheckRequest.SerializeToString,
            response_deserializer=h.HealthCheckResponse.FromString)
        self.Watch = channel.unary_stream(
            "/grpc.health.v1.Health/Watch",
            request_serializer=h.HealthCheckRequest.SerializeToString,
            response_deserializer=h.HealthCheckResponse.FromString)


def eddy_stub(channel):
    s = stubs()
    return s.pb_grpc.EddyStub(channel) if s.real_stubs else _GenericEddyStub(channel)


def health_stub(channel):
    s = stubs()
    return s.health_grpc.HealthStub(channel) if s.real_stubs else _GenericHealthStub(channel)


def raw_method(channel, path):
    """A unary method that sends and returns bytes as they are."""
    return channel.unary_unary(path, request_serializer=None, response_deserializer=None)


# ---- nodes ----------------------------------------------------------------------------

_live = set()


@atexit.register
def _kill_leftovers():
    for proc in list(_live):
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def poll_until(fn, timeout, interval=0.02, what="condition"):
    """Call fn until it returns a true value; return it. Raises AssertionError (with the
    last value or exception) once timeout seconds have passed."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            v = fn()
            if v:
                return v
            last = v
        except Exception as e:  # noqa: BLE001 - reported below
            last = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def sigstop(proc, timeout=10):
    """SIGSTOP `proc` and return once every thread of it is stopped. kill() only queues
    the signal: one thread takes it and then stops the others, which go on serving calls
    meanwhile (an eddy-node at load 20: 163 of 200 kills returned with threads still
    running, for up to 177 ms), so a call made right after kill() can still be answered."""
    os.kill(proc.pid, signal.SIGSTOP)

    def stopped():
        for tid in os.listdir(f"/proc/{proc.pid}/task"):
            try:
                with open(f"/proc/{proc.pid}/task/{tid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except FileNotFoundError:  # a thread that exited
                continue
            if state not in ("T", "t"):
                return False
        return True
    poll_until(stopped, timeout, interval=0.002, what=f"every thread of pid {proc.pid} stopped")


def open_channel(target, creds=None, options=None):
    """A plaintext channel, or a TLS one with `creds` (grpc.ssl_channel_credentials)."""
    if creds is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, creds, options=options)


def _release_run(p):
    """After process p.proc of a Node or Coordinator exited: close its stdout reader and its
    log, and remove the log (a restart spawns a new one)."""
    if p.proc is not None:
        p._reader.join(5)  # the process is gone: its stdout is at EOF
        if not p._reader.is_alive():
            p.proc.stdout.close()
    if p._log is not None:
        p._log.close()
        p._log = None
    if p.log_path:
        keep = os.environ.get("EDDY_KEEP_LOGS")
        try:
            if keep:
                shutil.move(p.log_path, os.path.join(keep, os.path.basename(p.log_path)))
            else:
                os.unlink(p.log_path)
        except OSError:
            pass
        p.log_path = None


def _spawn(cmd, log_prefix, env=None):
    """Start an Eddy process (`cmd`, with `env` added to this process's environment) with
    stderr in a new temp log and read its stdout on a thread until it prints "listening on
    PORT". Returns (proc, log_path, log_file,
    stdout_lines, reader_thread, port); port is None if it exited or did not print it
    within START_TIMEOUT."""
    fd, log_path = tempfile.mkstemp(prefix=log_prefix, suffix=".txt")
    log = os.fdopen(fd, "w+b")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                            env={**os.environ, **env} if env else None)
    _live.add(proc)
    lines = []
    got = threading.Event()

    def reader():
        for raw in proc.stdout:
            lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
            if lines[-1].startswith("listening on "):
                got.set()
        got.set()  # EOF: let the waiter notice the exit

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    port = None
    if got.wait(START_TIMEOUT):
        line = next((l for l in lines if l.startswith("listening on ")), None)
        if line:
            port = int(line.split()[2])
    return proc, log_path, log, lines, t, port


class Node:
    """One `eddy-node --dev` process on 127.0.0.1 (port 0: the node picks one and prints it)
    with its own data dir. Use as a context manager or via start()/stop()/kill9(). `env`:
    variables added to its environment (a test hook such as EDDY_TEST_PAUSE_AT)."""

    def __init__(self, data_dir=None, args=(), keep_dir=False, creds=None, env=None):
        self.bin = require_node()
        self.creds = creds  # grpc.ChannelCredentials for a TLS node (None: plaintext)
        self.own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="eddy-it-data-")
        self.keep_dir = keep_dir
        self.args = list(args)
        self.env = env
        self.proc = None
        self.port = None
        self.channel = None
        self._stdout = []
        self._log = None
        self.log_path = None

    # -- lifecycle --
    def command(self):
        """The eddy-node command line (ClusterNode overrides it)."""
        return [self.bin, "--dev", "--data-dir", self.data_dir, "--listen", "127.0.0.1:0",
                "--log-level", "warn", *self.args]

    log_prefix = "eddy-it-log-"

    def _connected(self):
        """Called once the channel and the public stubs exist (ClusterNode adds State)."""

    def start(self):
        assert self.proc is None or self.proc.poll() is not None, "node already running"
        _release_run(self)  # a restart: the last run's log goes
        (self.proc, self.log_path, self._log, self._stdout, self._reader,
         port) = _spawn(self.command(), self.log_prefix, self.env)
        if port is None:
            self._fail_start("did not print 'listening on PORT'")
        self.port = port
        self.channel = open_channel(self.endpoint, self.creds, options=[
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.max_receive_message_length", 64 << 20)])
        self.stub = eddy_stub(self.channel)
        self.health = health_stub(self.channel)
        self._connected()
        self.wait_ready()
        return self

    def _fail_start(self, why):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        _live.discard(self.proc)
        raise AssertionError(f"eddy-node {why} (rc={self.proc.returncode}); stdout={self._stdout}"
                             f"\nlog:\n{self.log_tail()}")

    def wait_ready(self, timeout=START_TIMEOUT):
        h = health_pb()

        def serving():
            if self.proc.poll() is not None:
                raise AssertionError(f"eddy-node exited rc={self.proc.returncode}\n{self.log_tail()}")
            try:
                r = self.health.Check(h.HealthCheckRequest(service=""), timeout=1.0)
            except grpc.RpcError:
                return False
            return r.status == h.HealthCheckResponse.SERVING

        poll_until(serving, timeout, what=f"health SERVING on {self.endpoint}")

    def _close_channel(self):
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def stop(self, expect_rc=0):
        """SIGTERM; wait for the exit; assert its code."""
        if self.proc is None or self.proc.poll() is not None:
            rc = self.proc.returncode if self.proc else None
            self._close_channel()
            if self.proc is not None and expect_rc is not None:
                assert rc == expect_rc, f"eddy-node had already exited rc={rc}\n{self.log_tail()}"
            return rc
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            _live.discard(self.proc)
            self._close_channel()
            raise AssertionError(f"eddy-node did not exit within {STOP_TIMEOUT}s of SIGTERM\n"
                                 f"{self.log_tail()}")
        _live.discard(self.proc)
        self._close_channel()  # after the exit: calls in flight see what the node answered
        if expect_rc is not None:
            assert rc == expect_rc, f"eddy-node exited rc={rc} after SIGTERM, want {expect_rc}\n" \
                                    f"{self.log_tail()}"
        return rc

    def kill9(self):
        self._close_channel()
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        _live.discard(self.proc)

    def cleanup(self):
        """Kill if still running (after a failure), remove the data dir and the log."""
        if self.proc is not None and self.proc.poll() is None:
            self.kill9()
        self._close_channel()
        if self.own_dir and not self.keep_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        _release_run(self)

    def log_tail(self, n=40):
        if not self.log_path:
            return ""
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    @property
    def endpoint(self):
        return f"127.0.0.1:{self.port}"

    def dump_state(self, tables):
        """--dump-state of this node's data dir (the node must be stopped)."""
        return dump_state(self.data_dir, tables)

    # -- conveniences --
    def ingest(self, events, timeout=30):
        req = pb().IngestRequest(events=[to_pb(e) if isinstance(e, dict) else e for e in events])
        return self.stub.Ingest(req, timeout=timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()
        return False


def start_node(test, data_dir=None, args=()):
    """Start a node whose process and data dir are cleaned up when `test` ends, even on
    failure."""
    n = Node(data_dir=data_dir, args=args)
    test.addCleanup(n.cleanup)
    return n.start()


def dump_state(data_dir, tables):
    r = subprocess.run([require_node(), "--data-dir", data_dir, "--dump-state", tables],
                       capture_output=True, timeout=60)
    if r.returncode != 0:
        raise AssertionError(f"--dump-state {tables} failed rc={r.returncode}: "
                             f"{r.stderr.decode(errors='replace')}")
    return r.stdout


def temp_dir(test, prefix="eddy-it-"):
    d = tempfile.mkdtemp(prefix=prefix)
    test.addCleanup(shutil.rmtree, d, True)
    return d


def run_cli(endpoint, *args, stdin=None, timeout=60):
    """Run `eddy --endpoint ENDPOINT ARGS`; return (rc, stdout, stderr)."""
    cmd = [require_cli(), "--endpoint", endpoint, *args]
    r = subprocess.run(cmd, capture_output=True, text=True, input=stdin, timeout=timeout)
    return r.returncode, r.stdout, r.stderr


def cli_json(test, endpoint, *args, expect_rc=0):
    rc, out, err = run_cli(endpoint, "-o", "json", *args)
    test.assertEqual(rc, expect_rc, f"eddy {' '.join(args)}: rc={rc}\nstdout={out}\nstderr={err}")
    try:
        return json.loads(out)
    except ValueError as e:
        raise AssertionError(f"eddy {' '.join(args)}: stdout is not JSON ({e}): {out!r}")


# ---- events ---------------------------------------------------------------------------

TYPES = ["view", "click", "add_to_cart", "remove_from_cart", "purchase", "search"]
CATEGORIES = {"electronics": ["acme", "voltix"], "books": ["penguin", "orbit"],
              "kitchen": ["chefco", "acme"], "sports": ["stride", "peak"],
              "toys": ["funco", "orbit"], "garden": ["greenly", "acme"]}


def now_ms():
    return int(time.time() * 1000)


def make_catalog(n_products, n_categories):
    cats = sorted(CATEGORIES)[:n_categories]
    products = []
    for i in range(n_products):
        c = cats[i % len(cats)]
        products.append({"productId": f"p-{i:03d}", "category": c, "brand": CATEGORIES[c][(i // len(cats)) % 2],
                         "price": round(3 + (i * 7.31) % 180, 2)})
    return products


def generate(seed, n_users=40, n_products=30, n_categories=4, n_events=3000,
             start_ms=None, span_ms=20 * 60_000, jitter_ms=2_000, prefix="ev"):
    """A deterministic stream (for a seed) of shop events as dicts in the seed's JSON-lines
    shape, in arrival order. Each event's time is its slot time +- jitter_ms, so the stream
    is out of order by at most 2 * jitter_ms (below the 5 s out-of-orderness: nothing is
    late). Users favour one category; carts get adds, removals and purchases."""
    rnd = random.Random(seed)
    if start_ms is None:
        start_ms = now_ms() - 3_600_000
    products = make_catalog(n_products, n_categories)
    cats = sorted({p["category"] for p in products})
    carts = {}
    step = span_ms / n_events
    out = []
    for n in range(n_events):
        uid = rnd.randrange(n_users)
        user = f"u-{uid:03d}"
        fav = cats[uid % len(cats)]
        pool = [p for p in products if p["category"] == fav] if rnd.random() < 0.7 else products
        prod = rnd.choice(pool)
        cart = carts.setdefault(user, [])
        r = rnd.random()
        if r < 0.45:
            kind = "view"
        elif r < 0.60:
            kind = "click"
        elif r < 0.72:
            kind = "add_to_cart"
        elif r < 0.80:
            kind = "remove_from_cart"
            if cart:
                pick = rnd.choice(cart)
                prod = next(p for p in products if p["productId"] == pick)
        elif r < 0.90:
            kind = "purchase"
            if cart and rnd.random() < 0.7:
                pick = rnd.choice(cart)
                prod = next(p for p in products if p["productId"] == pick)
        else:
            kind = "search"
        if kind == "add_to_cart" and prod["productId"] not in cart:
            cart.append(prod["productId"])
        elif kind in ("remove_from_cart", "purchase") and prod["productId"] in cart:
            cart.remove(prod["productId"])
        ts = int(start_ms + n * step) + rnd.randint(-jitter_ms, jitter_ms)
        ev = {"eventId": f"{prefix}-{seed}-{n}", "userId": user, "sessionId": f"s-{user}-{n // 500}",
              "timestamp": ts, "eventType": kind}
        if kind == "search":
            ev["searchQuery"] = f"{prod['brand']} {prod['category']} {rnd.randrange(5)}"
            if rnd.random() < 0.5:  # a search may name the product the user picked
                ev.update(productId=prod["productId"], category=prod["category"])
        else:
            ev.update(productId=prod["productId"], category=prod["category"], brand=prod["brand"])
            if rnd.random() < 0.9:
                ev["price"] = prod["price"]
        if rnd.random() < 0.2:
            ev["metadata"] = {"source": rnd.choice(["web", "app"]), "pos": str(rnd.randrange(10))}
        out.append(ev)
    return out


def write_jsonl(path, events):
    with open(path, "w") as f:
        for ev in events:
            f.write(json.dumps(ev) + "\n")


def to_pb(ev):
    """The proto Event of a JSON-lines dict."""
    m = pb()
    e = m.Event(event_id=ev.get("eventId", ""), user_id=ev.get("userId", ""),
                session_id=ev.get("sessionId", ""), timestamp_ms=int(ev.get("timestamp", 0)),
                event_type=m.EventType.Value("EVENT_TYPE_" + ev["eventType"].upper()),
                product_id=ev.get("productId", ""), category=ev.get("category", ""),
                brand=ev.get("brand", ""), price=float(ev.get("price", 0.0)),
                search_query=ev.get("searchQuery", ""))
    for k, v in (ev.get("metadata") or {}).items():
        e.metadata[k] = str(v)
    return e


def batches(seq, sizes):
    """Split seq into consecutive batches whose sizes cycle through `sizes`."""
    out, i, k = [], 0, 0
    while i < len(seq):
        n = sizes[k % len(sizes)]
        out.append(seq[i:i + n])
        i += n
        k += 1
    return out


# ---- partitioning (docs/design.md §2) ------------------------------------------------------

_M64 = (1 << 64) - 1
_P1, _P2, _P3, _P4, _P5 = (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                           0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5)


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & _M64


def _round(acc, lane):
    acc = (acc + lane * _P2) & _M64
    return (_rotl(acc, 31) * _P1) & _M64


def xxh64(data, seed=0):
    n = len(data)
    i = 0
    if n >= 32:
        v = [(seed + _P1 + _P2) & _M64, (seed + _P2) & _M64, seed & _M64, (seed - _P1) & _M64]
        while i + 32 <= n:
            for j in range(4):
                v[j] = _round(v[j], int.from_bytes(data[i + 8 * j:i + 8 * j + 8], "little"))
            i += 32
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & _M64
        for j in range(4):
            h = ((h ^ _round(0, v[j])) * _P1 + _P4) & _M64
    else:
        h = (seed + _P5) & _M64
    h = (h + n) & _M64
    while i + 8 <= n:
        h ^= _round(0, int.from_bytes(data[i:i + 8], "little"))
        h = (_rotl(h, 27) * _P1 + _P4) & _M64
        i += 8
    if i + 4 <= n:
        h ^= (int.from_bytes(data[i:i + 4], "little") * _P1) & _M64
        h = (_rotl(h, 23) * _P2 + _P3) & _M64
        i += 4
    while i < n:
        h ^= (data[i] * _P5) & _M64
        h = (_rotl(h, 11) * _P1) & _M64
        i += 1
    h ^= h >> 33
    h = (h * _P2) & _M64
    h ^= h >> 29
    h = (h * _P3) & _M64
    h ^= h >> 32
    return h


def user_partition(user_id, partitions=256):
    return (xxh64(b"u:" + user_id.encode()) * partitions) >> 64


# ---- expectations ---------------------------------------------------------------------

def window_start(ts, size=WINDOW_MS):
    return ts // size * size


def _new_counts():
    return {t: 0 for t in TYPES}


def counts_json(c):
    """TypeCounts as the CLI's JSON shows them (with total)."""
    d = dict(c)
    d["total"] = sum(c[t] for t in TYPES)
    return d


def counts_of_pb(tc):
    return {"view": tc.view, "click": tc.click, "add_to_cart": tc.add_to_cart,
            "remove_from_cart": tc.remove_from_cart, "purchase": tc.purchase,
            "search": tc.search, "total": tc.total}


class Expect:
    """What a node should answer after applying `events` in arrival order with no late
    event (the generator guarantees it), computed from the rules of the public API."""

    def __init__(self, events, partitions=256, window_ms=WINDOW_MS, ooo_ms=OUT_OF_ORDERNESS_MS):
        self.events = events
        self.window_ms = window_ms
        self.partitions = partitions
        max_ts = {}
        for e in events:
            p = user_partition(e["userId"], partitions)
            max_ts[p] = max(max_ts.get(p, e["timestamp"]), e["timestamp"])
        self.part_watermark = {p: t - ooo_ms for p, t in max_ts.items()}
        self.watermark = min(self.part_watermark.values())

    def user_watermark(self, user):
        return self.part_watermark[user_partition(user, self.partitions)]

    def windows(self, user=None, include_open=False):
        """[(start, end, counts_json, closed)] oldest first."""
        wm = self.watermark if user is None else self.user_watermark(user)
        acc = {}
        for e in self.events:
            if user is not None and e["userId"] != user:
                continue
            ws = window_start(e["timestamp"], self.window_ms)
            acc.setdefault(ws, _new_counts())[e["eventType"]] += 1
        out = []
        for ws in sorted(acc):
            closed = ws + self.window_ms <= wm
            if closed or include_open:
                out.append((ws, ws + self.window_ms, counts_json(acc[ws]), closed))
        return out

    def top(self, category="", event_type=None, include_open=False, limit=1000):
        """[(product_id, category, counts_json)] best first: count desc, product_id asc."""
        acc, cat = {}, {}
        for e in self.events:
            pid = e.get("productId")
            if not pid:
                continue
            ws = window_start(e["timestamp"], self.window_ms)
            if not include_open and ws + self.window_ms > self.watermark:
                continue
            if category and e.get("category", "") != category:
                continue
            acc.setdefault(pid, _new_counts())[e["eventType"]] += 1
            if e.get("category"):
                cat[pid] = e["category"]
        rows = [(pid, cat.get(pid, ""), counts_json(c)) for pid, c in acc.items()]
        key = (lambda r: r[2]["total"]) if event_type is None else (lambda r: r[2][event_type])
        rows.sort(key=lambda r: (-key(r), r[0]))
        return rows[:limit]

    def profile(self, user, recent_items=20):
        evs = [e for e in self.events if e["userId"] == user]
        if not evs:
            return None

        def order(e):
            return (e["timestamp"], e["eventId"])

        def recent(kinds, key):
            latest = {}
            for e in evs:
                if e["eventType"] in kinds:
                    k = e[key]
                    if k not in latest or order(e) > order(latest[k]):
                        latest[k] = e
            items = sorted(latest.values(), key=order, reverse=True)[:recent_items]
            return items

        cart_state = {}
        for e in evs:
            if e["eventType"] in ("add_to_cart", "remove_from_cart", "purchase"):
                pid = e["productId"]
                if pid not in cart_state or order(e) > order(cart_state[pid]):
                    cart_state[pid] = e
        cart = [e for e in cart_state.values() if e["eventType"] == "add_to_cart"]
        cart.sort(key=lambda e: (-e["timestamp"], e["productId"]))
        prices = [e["price"] for e in evs if e.get("price", 0) > 0 and e["eventType"] != "search"]
        item = lambda e: (e["productId"], e.get("category", ""), e["timestamp"])  # noqa: E731
        weights = {"view": 1.0, "click": 2.0, "add_to_cart": 3.0, "purchase": 5.0, "search": 0.5}
        last = max(e["timestamp"] for e in evs)
        hl = 604_800_000.0
        cat_aff, brand_aff = {}, {}
        psum = pn = 0.0
        for e in evs:
            w = weights.get(e["eventType"], 0.0)
            d = 2.0 ** (-(last - e["timestamp"]) / hl)
            if w > 0 and e.get("category"):
                cat_aff[e["category"]] = cat_aff.get(e["category"], 0.0) + w * d
            if w > 0 and e.get("brand"):
                brand_aff[e["brand"]] = brand_aff.get(e["brand"], 0.0) + w * d
            if e.get("price", 0) > 0 and e["eventType"] != "search":
                psum += e["price"] * d
                pn += d
        return {
            "user_id": user,
            "event_count": len(evs),
            "last_update_ms": last,
            "recent_views": [item(e) for e in recent(("view", "click"), "productId")],
            "recent_purchases": [item(e) for e in recent(("purchase",), "productId")],
            "recent_searches": [(e["searchQuery"], e["timestamp"]) for e in recent(("search",), "searchQuery")],
            "cart": [item(e) for e in cart],
            "price_min": min(prices) if prices else 0.0,
            "price_max": max(prices) if prices else 0.0,
            "price_mean": psum / pn if pn else 0.0,
            "category_affinities": cat_aff,
            "brand_affinities": brand_aff,
        }


def profile_of_pb(p):
    """The comparable parts of a UserProfile message, in Expect.profile's shape."""
    item = lambda r: (r.product_id, r.category, r.timestamp_ms)  # noqa: E731
    return {
        "user_id": p.user_id,
        "event_count": p.event_count,
        "last_update_ms": p.last_update_ms,
        "recent_views": [item(r) for r in p.recent_views],
        "recent_purchases": [item(r) for r in p.recent_purchases],
        "recent_searches": [(s.query, s.timestamp_ms) for s in p.recent_searches],
        "cart": [item(r) for r in p.cart],
        "price_min": p.price_range.min,
        "price_max": p.price_range.max,
        "price_mean": p.price_range.mean,
        "category_affinities": [(a.name, a.score) for a in p.category_affinities],
        "brand_affinities": [(a.name, a.score) for a in p.brand_affinities],
    }


def profile_of_json(p):
    """The same from `eddy -o json profile` (snake_case keys, docs/cli.md)."""
    item = lambda r: (r["product_id"], r.get("category", ""), int(r["timestamp_ms"]))  # noqa: E731
    return {
        "user_id": p["user_id"],
        "event_count": int(p["event_count"]),
        "last_update_ms": int(p["last_update_ms"]),
        "recent_views": [item(r) for r in p.get("recent_views", [])],
        "recent_purchases": [item(r) for r in p.get("recent_purchases", [])],
        "recent_searches": [(s["query"], int(s["timestamp_ms"])) for s in p.get("recent_searches", [])],
        "cart": [item(r) for r in p.get("cart", [])],
        "price_min": p["price_range"]["min"],
        "price_max": p["price_range"]["max"],
        "price_mean": p["price_range"]["mean"],
        "category_affinities": [(a["name"], a["score"]) for a in p.get("category_affinities", [])],
        "brand_affinities": [(a["name"], a["score"]) for a in p.get("brand_affinities", [])],
    }


def assert_profile(test, got, want, label=""):
    """Exact on lists, counts and min/max; affinities and the decayed mean within the
    node's fixed-point rounding (1e-4 relative); affinities best first."""
    exact = ("user_id", "event_count", "last_update_ms", "recent_views", "recent_purchases",
             "recent_searches", "cart", "price_min", "price_max")
    for k in exact:
        test.assertEqual(got[k], want[k], f"{label} profile.{k}")
    test.assertAlmostEqual(got["price_mean"], want["price_mean"],
                           delta=1e-4 * max(1.0, want["price_mean"]), msg=f"{label} price_range.mean")
    for k in ("category_affinities", "brand_affinities"):
        names = [n for n, _ in got[k]]
        test.assertEqual(sorted(names), sorted(want[k]), f"{label} {k} names")
        scores = [s for _, s in got[k]]
        test.assertEqual(scores, sorted(scores, reverse=True), f"{label} {k} not best first")
        for n, s in got[k]:
            test.assertAlmostEqual(s, want[k][n], delta=1e-4 * max(1.0, want[k][n]),
                                   msg=f"{label} {k}[{n}]")


# ---- etcd and eddy-coordinator (cluster tests) ----------------------------------------
#
# Environment: EDDY_COORDINATOR_BIN = path of eddy-coordinator (cluster tests skip without
# it), EDDY_ETCD_BIN = etcd (default /usr/bin/etcd, Debian's etcd-server).

import base64  # noqa: E402
import socket  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402

COORDINATOR = os.environ.get("EDDY_COORDINATOR_BIN", "")
ETCD_BIN = os.environ.get("EDDY_ETCD_BIN", "/usr/bin/etcd")


def require_coordinator():
    if not COORDINATOR or not os.access(COORDINATOR, os.X_OK):
        raise unittest.SkipTest("EDDY_COORDINATOR_BIN is not set to an executable eddy-coordinator")
    return COORDINATOR


def require_etcd():
    if not os.access(ETCD_BIN, os.X_OK):
        raise unittest.SkipTest(f"{ETCD_BIN} not found (Debian package etcd-server)")
    return ETCD_BIN


def free_port():
    """A TCP port that was free on 127.0.0.1 a moment ago (for programs that cannot take
    port 0, like etcd)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _b64(s):
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def _unb64(s):
    return base64.b64decode(s or "")


def _prefix_end(key):
    b = bytearray(key.encode())
    b[-1] += 1
    return bytes(b)


class Etcd:
    """A single-member etcd on free loopback ports with its data in a temporary directory,
    fast elections (--heartbeat-interval 10 --election-timeout 50), and a small client for
    its v3 JSON gateway (guide part B). restart() keeps the data dir and the ports."""

    def __init__(self, data_dir=None):
        self.bin = require_etcd()
        self.own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="eddy-it-etcd-")
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc = None
        self._log = None

    scheme = "http"

    @property
    def url(self):
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    def extra_args(self):
        """More etcd flags (SecureEtcd: TLS)."""
        return []

    def _open(self, req, timeout):
        return urllib.request.urlopen(req, timeout=timeout)

    def start(self, timeout=START_TIMEOUT):
        assert self.proc is None or self.proc.poll() is not None, "etcd already running"
        c, p = self.url, f"http://127.0.0.1:{self.peer_port}"
        cmd = [self.bin, "--name", "n1", "--data-dir", os.path.join(self.data_dir, "etcd"),
               "--listen-client-urls", c, "--advertise-client-urls", c,
               "--listen-peer-urls", p, "--initial-advertise-peer-urls", p,
               "--initial-cluster", f"n1={p}", "--initial-cluster-state", "new",
               "--logger", "zap", "--log-level", "error",
               "--heartbeat-interval", "10", "--election-timeout", "50", *self.extra_args()]
        if self._log is None:
            self._log = open(os.path.join(self.data_dir, "etcd.log"), "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=self._log,
                                     stdin=subprocess.DEVNULL)
        _live.add(self.proc)

        def healthy():
            if self.proc.poll() is not None:
                raise AssertionError(f"etcd exited rc={self.proc.returncode}")
            with self._open(self.url + "/health", 1) as r:
                return json.loads(r.read()).get("health") == "true"

        poll_until(healthy, timeout, interval=0.01, what=f"etcd healthy at {self.url}")
        return self

    def kill9(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        _live.discard(self.proc)

    def restart(self):
        self.kill9()
        return self.start()

    def cleanup(self):
        self.kill9()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    # -- JSON gateway --
    def call(self, path, body, timeout=5):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json",
                                              **self.auth_headers()})
        try:
            with self._open(req, timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise AssertionError(f"etcd {path}: HTTP {e.code}: {e.read()!r}")

    def auth_headers(self):
        """Headers of every gateway call (SecureEtcd: the root user's token)."""
        return {}

    def put(self, key, value, lease=0):
        body = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        return int(self.call("/v3/kv/put", body)["header"]["revision"])

    def get(self, key):
        """(value bytes, kv dict) or (None, None)."""
        kvs = self.call("/v3/kv/range", {"key": _b64(key)}).get("kvs", [])
        return (_unb64(kvs[0].get("value")), kvs[0]) if kvs else (None, None)

    def get_prefix(self, prefix):
        """{key: value bytes} of every key starting with prefix."""
        r = self.call("/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix))})
        return {_unb64(kv["key"]).decode(): _unb64(kv.get("value")) for kv in r.get("kvs", [])}

    def get_prefix_kvs(self, prefix):
        """{key: (value bytes, mod_revision)} of every key starting with prefix."""
        r = self.call("/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix))})
        return {_unb64(kv["key"]).decode(): (_unb64(kv.get("value")), int(kv["mod_revision"]))
                for kv in r.get("kvs", [])}

    def cas_put(self, key, value, mod_revision):
        """Put `key` only if its mod_revision is still `mod_revision`; whether it was."""
        body = {"compare": [{"key": _b64(key), "target": "MOD", "result": "EQUAL",
                             "mod_revision": str(mod_revision)}],
                "success": [{"request_put": {"key": _b64(key), "value": _b64(value)}}]}
        return bool(self.call("/v3/kv/txn", body).get("succeeded", False))

    def delete(self, key):
        return int(self.call("/v3/kv/deleterange", {"key": _b64(key)}).get("deleted", "0"))

    def lease_grant(self, ttl_s):
        return int(self.call("/v3/lease/grant", {"TTL": ttl_s})["ID"])

    def lease_revoke(self, lease):
        self.call("/v3/lease/revoke", {"ID": str(lease)})


# ---- TLS: certificates made with the openssl CLI, an etcd with TLS and authentication ----

class Pki:
    """A CA in `directory` (ca.crt, ca.key) that signs leaf certificates for 127.0.0.1 and
    localhost (EC P-256, valid 2 days): pki.issue("server") -> (crt path, key path)."""

    def __init__(self, directory, name="ca"):
        self.dir = directory
        self.name = name
        self.ca = os.path.join(directory, f"{name}.crt")
        self.ca_key = os.path.join(directory, f"{name}.key")
        self._openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                      "-nodes", "-keyout", self.ca_key, "-subj", f"/CN=eddy-test-{name}",
                      "-days", "2", "-out", self.ca)

    @staticmethod
    def _openssl(*args):
        r = subprocess.run(["openssl", *args], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"openssl {args[0]} failed: {r.stderr}")

    def issue(self, name, cn=None):
        """cn="" gives a subject without a CommonName (etcd's gateway refuses client
        certificates with one when authentication is on)."""
        base = os.path.join(self.dir, f"{self.name}-{name}")
        ext = base + ".ext"
        with open(ext, "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        self._openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                      "-nodes", "-keyout", base + ".key",
                      "-subj", "/O=eddy-test" if cn == "" else f"/CN={cn or name}",
                      "-out", base + ".csr")
        self._openssl("x509", "-req", "-in", base + ".csr", "-CA", self.ca, "-CAkey", self.ca_key,
                      "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", base + ".crt")
        return base + ".crt", base + ".key"

    def creds(self, cert=None, key=None):
        """grpc channel credentials trusting this CA, with a client certificate if given."""
        def rd(path):
            if not path:
                return None
            with open(path, "rb") as f:
                return f.read()
        return grpc.ssl_channel_credentials(rd(self.ca), rd(key), rd(cert))


class SecureEtcd(Etcd):
    """An Etcd with TLS on its client port (--client-cert-auth: a client certificate of
    `pki` is required) and, after enable_auth(), authentication: user `root` and a user
    `eddy` whose role may read and write /eddy/. The harness's own calls go as root."""

    scheme = "https"

    def __init__(self, pki, data_dir=None):
        super().__init__(data_dir)
        self.pki = pki
        self.server_cert, self.server_key = pki.issue("etcd-server")
        # no CommonName: with authentication on, etcd's gateway answers 400 "CommonName of
        # client sending a request against gateway will be ignored" to a certificate with one
        self.client_cert, self.client_key = pki.issue("etcd-client", cn="")
        self.password_file = os.path.join(self.data_dir, "eddy-password")
        with open(self.password_file, "w") as f:
            f.write("eddy-secret\n")
        self._token = None
        import ssl
        self._ssl = ssl.create_default_context(cafile=pki.ca)
        self._ssl.load_cert_chain(self.client_cert, self.client_key)

    def extra_args(self):
        return ["--cert-file", self.server_cert, "--key-file", self.server_key,
                "--trusted-ca-file", self.pki.ca, "--client-cert-auth"]

    def _open(self, req, timeout):
        return urllib.request.urlopen(req, timeout=timeout, context=self._ssl)

    def auth_headers(self):
        return {"Authorization": self._token} if self._token else {}

    def etcdctl(self, *args):
        cmd = ["etcdctl", "--endpoints", self.url, "--cacert", self.pki.ca, "--cert",
               self.client_cert, "--key", self.client_key, *args]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20,
                           env={**os.environ, "ETCDCTL_API": "3"})
        if r.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)} failed: {r.stderr}")
        return r.stdout

    def enable_auth(self):
        self.etcdctl("user", "add", "root", "--new-user-password", "root-secret")
        self.etcdctl("role", "add", "eddy")
        self.etcdctl("role", "grant-permission", "eddy", "--prefix=true", "readwrite", "/eddy/")
        self.etcdctl("user", "add", "eddy", "--new-user-password", "eddy-secret")
        self.etcdctl("user", "grant-role", "eddy", "eddy")
        self.etcdctl("auth", "enable")
        self.login()

    def login(self):
        self._token = None
        self._token = self.call("/v3/auth/authenticate",
                                {"name": "root", "password": "root-secret"})["token"]

    def eddy_args(self):
        """The flags that let eddy-node and eddy-coordinator in."""
        return ["--etcd-ca", self.pki.ca, "--etcd-cert", self.client_cert,
                "--etcd-key", self.client_key, "--etcd-user", "eddy",
                "--etcd-password-file", self.password_file]


def start_etcd(test):
    """An etcd removed (process and data) when `test` ends, even on failure."""
    e = Etcd()
    test.addCleanup(e.cleanup)
    return e.start()


def cluster_stubs():
    """(cluster_pb2, CoordinatorStub class or None): eddy/v1/cluster.proto compiled into
    the same directory as stubs(), so the 'eddy' package is shared."""
    s = stubs()
    if not hasattr(s, "cluster_pb"):
        out = os.path.join(s.dir, "out")
        args = ["protoc", f"-I{PROTO_DIR}", f"--python_out={out}"]
        if s.real_stubs:
            args += [f"--plugin=protoc-gen-grpc_python={GRPC_PLUGIN}", f"--grpc_python_out={out}"]
        r = subprocess.run(args + ["eddy/v1/cluster.proto"], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"protoc cluster.proto failed ({r.returncode}): {r.stderr}")
        importlib.invalidate_caches()
        s.cluster_pb = importlib.import_module("eddy.v1.cluster_pb2")
        s.cluster_grpc = importlib.import_module("eddy.v1.cluster_pb2_grpc") if s.real_stubs else None
    return s.cluster_pb, s.cluster_grpc


def cluster_status_method(channel):
    """The ClusterStatus unary method on `channel` (stub-free, works without the plugin)."""
    m, _ = cluster_stubs()
    return channel.unary_unary("/eddy.cluster.v1.Coordinator/ClusterStatus",
                               request_serializer=m.ClusterStatusRequest.SerializeToString,
                               response_deserializer=m.ClusterStatusResponse.FromString)


class Coordinator:
    """One eddy-coordinator process against `etcd_url`, gRPC on 127.0.0.1:0."""

    def __init__(self, etcd_url, cid, cluster="it", args=(), creds=None):
        self.bin = require_coordinator()
        self.creds = creds
        self.etcd_url = etcd_url
        self.id = cid
        self.cluster = cluster
        self.args = list(args)
        self.proc = None
        self.port = None
        self.channel = None
        self.log_path = None
        self._log = None
        self._stdout = []

    def start(self):
        _release_run(self)  # a restart: the last run's log goes
        cmd = [self.bin, "--etcd", self.etcd_url, "--cluster", self.cluster, "--id", self.id,
               "--listen", "127.0.0.1:0", *self.args]
        (self.proc, self.log_path, self._log, self._stdout, self._reader,
         port) = _spawn(cmd, "eddy-it-coord-")
        if port is None:
            self.kill9()
            raise AssertionError(f"eddy-coordinator did not start\n{self.log_tail()}")
        self.port = port
        self.channel = open_channel(f"127.0.0.1:{self.port}", self.creds)
        self.health = health_stub(self.channel)
        self.status_rpc = cluster_status_method(self.channel)
        return self

    def health_of(self, service):
        h = health_pb()
        try:
            return self.health.Check(h.HealthCheckRequest(service=service), timeout=1.0).status \
                == h.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False

    def wait_ready(self, timeout=START_TIMEOUT):
        poll_until(lambda: self.alive() and self.health_of("readiness"), timeout,
                   what=f"coordinator {self.id} readiness SERVING")

    def alive(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"coordinator {self.id} exited rc={self.proc.returncode}\n"
                                 f"{self.log_tail()}")
        return True

    def is_leader(self):
        return self.health_of("leader")

    def status(self, timeout=5):
        return self.status_rpc(cluster_pb_request(), timeout=timeout)

    def stop(self, expect_rc=0):
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill9()
                raise AssertionError(f"coordinator {self.id} ignored SIGTERM\n{self.log_tail()}")
        _live.discard(self.proc)
        if expect_rc is not None:
            assert self.proc.returncode == expect_rc, \
                f"coordinator {self.id} exited rc={self.proc.returncode}\n{self.log_tail()}"
        return self.proc.returncode

    def kill9(self):
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        _live.discard(self.proc)

    def cleanup(self):
        self.kill9()
        _release_run(self)

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except (OSError, TypeError):
            return ""

    def log_tail(self, n=40):
        return "\n".join(self.log_text().splitlines()[-n:])


def cluster_pb_request():
    m, _ = cluster_stubs()
    return m.ClusterStatusRequest()


def start_coordinator(test, etcd_url, cid, cluster="it", args=(), ready=True, creds=None):
    c = Coordinator(etcd_url, cid, cluster=cluster, args=args, creds=creds)
    test.addCleanup(c.cleanup)
    c.start()
    if ready:
        c.wait_ready()
    return c


# ---- cluster nodes (eddy-node --role ... --etcd ...) and the internal State API -------
#
# Used by test_cluster.py. A cluster node is a Node whose command line is cluster mode
# instead of --dev; it prints "listening on PORT" only after it has read the cluster
# config from etcd and registered, so a coordinator must lead first.

def state_stubs():
    """eddy/v1/state.proto (package eddy.state.v1) compiled next to stubs(); returns the
    state_pb2 module. Methods are called through state_method() (no plugin needed)."""
    s = stubs()
    if not hasattr(s, "state_pb"):
        out = os.path.join(s.dir, "out")
        r = subprocess.run(["protoc", f"-I{PROTO_DIR}", f"--python_out={out}",
                            "eddy/v1/store.proto", "eddy/v1/state.proto"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"protoc state.proto failed ({r.returncode}): {r.stderr}")
        importlib.invalidate_caches()
        s.state_pb = importlib.import_module("eddy.v1.state_pb2")
    return s.state_pb


_STATE_METHODS = {
    "Apply": ("ApplyRequest", "ApplyResponse"),
    "Forward": ("ForwardRequest", "ForwardResponse"),
    "User": ("UserRequest", "UserResponse"),
    "Partial": ("PartialRequest", "PartialResponse"),
    "CategoryTop": ("CategoryTopRequest", "CategoryTopResponse"),
    "Neighbours": ("NeighboursRequest", "NeighboursResponse"),
}


def state_method(channel, name):
    """The unary method eddy.state.v1.State/<name> on `channel`."""
    m = state_stubs()
    req, resp = _STATE_METHODS[name]
    return channel.unary_unary(f"/eddy.state.v1.State/{name}",
                               request_serializer=getattr(m, req).SerializeToString,
                               response_deserializer=getattr(m, resp).FromString)


class ClusterNode(Node):
    """One `eddy-node --role ROLES --etcd URL` process (cluster mode) on 127.0.0.1:0 with
    its own data dir. `args` are extra flags (e.g. --idle-timeout 0)."""

    def __init__(self, etcd_url, node_id, roles="state", cluster="it", partitions=16,
                 lease_ttl_s=2, data_dir=None, args=(), creds=None, env=None):
        super().__init__(data_dir=data_dir, args=args, creds=creds, env=env)
        self.etcd_url = etcd_url
        self.id = node_id
        self.roles = roles
        self.cluster = cluster
        self.partitions = partitions
        self.lease_ttl_s = lease_ttl_s
        self.state = {}

    def command(self):
        return [self.bin, "--role", self.roles, "--etcd", self.etcd_url, "--cluster", self.cluster,
                "--node-id", self.id, "--data-dir", self.data_dir, "--listen", "127.0.0.1:0",
                "--partitions", str(self.partitions), "--lease-ttl", f"{self.lease_ttl_s}s",
                "--log-level", "info", *self.args]

    @property
    def log_prefix(self):
        return f"eddy-it-{self.id}-"

    def _connected(self):
        self.state = {n: state_method(self.channel, n) for n in _STATE_METHODS}

    def apply(self, partition, epoch, events, timeout=10):
        """State/Apply of `events` (dicts or Event messages) for one partition; returns its
        PartitionResult."""
        m = state_stubs()
        pe = m.PartitionEvents(partition=partition, epoch=epoch,
                               events=[to_pb(e) if isinstance(e, dict) else e for e in events])
        r = self.state["Apply"](m.ApplyRequest(partitions=[pe]), timeout=timeout)
        assert len(r.results) == 1, r
        return r.results[0]

    def partial(self, timeout=5):
        """State/Partial with no query: progress of the owned partitions and the OUTBOX."""
        return self.state["Partial"](state_stubs().PartialRequest(), timeout=timeout)

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except (OSError, TypeError):
            return ""


class Cluster:
    """etcd + coordinators + cluster nodes for one test; everything is killed and removed
    when the test ends (pass or fail). P partitions, lease TTL `ttl_s` seconds."""

    def __init__(self, test, partitions=16, ttl_s=2, name="it", node_args=(), coord_args=(),
                 etcd=None, creds=None):
        """`etcd`: an Etcd already started (e.g. a SecureEtcd; default: a new plain one);
        `creds`: the test's channel credentials to TLS nodes and coordinators."""
        require_node()
        require_coordinator()
        self.test = test
        self.creds = creds
        self.P = partitions
        self.ttl_s = ttl_s
        self.name = name
        self.node_args = list(node_args)
        self.coord_args = list(coord_args)
        self.etcd = etcd or start_etcd(test)
        self.coordinators = []
        self.nodes = {}

    def key(self, suffix):
        return f"/eddy/{self.name}/{suffix}"

    def add_coordinator(self, cid, wait_leader=True, args=(), ready=True):
        c = start_coordinator(self.test, self.etcd.url, cid, cluster=self.name,
                              args=["--partitions", str(self.P), "--lease-ttl", f"{self.ttl_s}s",
                                    "--settle", "100ms", "--log-level", "info",
                                    *self.coord_args, *args], creds=self.creds, ready=ready)
        self.test.addCleanup(print_log_if_failed, self.test, c)
        self.coordinators.append(c)
        if wait_leader:
            poll_until(lambda: self.leader() is not None, 10, what="a leading coordinator")
        return c

    def add_node(self, node_id, roles="state", args=(), data_dir=None, env=None):
        n = ClusterNode(self.etcd.url, node_id, roles=roles, cluster=self.name,
                        partitions=self.P, lease_ttl_s=self.ttl_s, data_dir=data_dir,
                        args=self.node_args + list(args), creds=self.creds, env=env)
        self.test.addCleanup(n.cleanup)
        # cleanups run last first: this one, before the node's, shows its log's end if the
        # test failed (the cleanup then removes the process and its log)
        self.test.addCleanup(print_log_if_failed, self.test, n)
        n.start()
        self.nodes[node_id] = n
        return n

    def write_replicated_map(self, replicas, epoch=1, min_insync=None):
        """Write the cluster config and a map by hand (no coordinator needed): every
        partition at `epoch` with copies `replicas` (the leader first), R = len(replicas),
        min-insync `min_insync` (default R)."""
        r = len(replicas)
        self.etcd.put(self.key("config"), json.dumps(
            {"partitions": self.P, "replication_factor": r, "min_insync": min_insync or r}))
        self.etcd.put(self.key("assignment"), json.dumps(
            {"partitions": self.P, "version": 1, "owners": [replicas[0]] * self.P,
             "epochs": [epoch] * self.P, "replicas": [list(replicas)] * self.P}))

    def leader(self):
        v, _ = self.etcd.get(self.key("leader"))
        return v.decode() if v is not None else None

    def assignment(self):
        v, _ = self.etcd.get(self.key("assignment"))
        return json.loads(v) if v is not None else None

    def registered(self):
        return {k.rsplit("/", 1)[1]: json.loads(v)
                for k, v in self.etcd.get_prefix(self.key("nodes/")).items()}

    def wait_assignment(self, owners, timeout=15):
        """Wait until the map is complete and owned by exactly the ids in `owners`, each
        with its balanced share, and no live move is in progress; return the map."""
        owners = set(owners)
        n = len(owners)

        def ok():
            m = self.assignment()
            if m is None or "" in m["owners"] or set(m["owners"]) != owners:
                return None
            if self.etcd.get_prefix(self.key("moves/")):
                return None  # live moves still running: not settled yet
            counts = {o: m["owners"].count(o) for o in owners}
            if any(c not in (self.P // n, -(-self.P // n)) for c in counts.values()):
                return None
            return m

        return poll_until(ok, timeout, interval=0.05, what=f"assignment owned by {sorted(owners)}")

    def state_nodes(self):
        return [n for n in self.nodes.values()
                if "state" in n.roles.split(",") and n.proc is not None and n.proc.poll() is None]

    def wait_outbox_empty(self, timeout=30):
        """Poll State/Partial on every live state node until every OUTBOX is empty."""
        def empty():
            return all(n.partial().outbox == 0 for n in self.state_nodes())
        poll_until(empty, timeout, interval=0.05, what="stage-2 OUTBOX empty on every state node")

    def owner_node(self, partition, m=None):
        m = m or self.assignment()
        return self.nodes[m["owners"][partition]], m["epochs"][partition]


def users_in_partition(partition, partitions, n=1, prefix="u-p"):
    """`n` user ids whose partition (docs/design.md §2) is `partition`."""
    out, i = [], 0
    while len(out) < n:
        uid = f"{prefix}{partition}-{i}"
        if user_partition(uid, partitions) == partition:
            out.append(uid)
        i += 1
    return out


def total_events(stub, user_id="", timeout=10):
    """Sum of every window's total from EventCounts(include_open) on an Eddy stub."""
    r = stub.EventCounts(pb().EventCountsRequest(user_id=user_id, include_open=True),
                         timeout=timeout)
    return sum(w.counts.total for w in r.windows)


# ---- checkpoints and metrics ------------------------------------------------------------

import re  # noqa: E402  (helpers appended at the end of the module)
import urllib.request  # noqa: E402

_CKPT_NAME = re.compile(r"^p(\d{5})-(\d{20})\.ckp$")


def checkpoint_files(directory):
    """{partition: [paths, newest (highest seq) first]} of the published checkpoint files
    (p<P:05>-<seq:020>.ckp) in `directory` (empty if it does not exist)."""
    out = {}
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return out
    for name in names:
        m = _CKPT_NAME.match(name)
        if m:
            out.setdefault(int(m.group(1)), []).append((int(m.group(2)),
                                                        os.path.join(directory, name)))
    return {p: [path for _, path in sorted(v, reverse=True)] for p, v in out.items()}


def test_failed(test):
    """Whether `test` has failed or raised so far (for cleanups: the result records a
    failure as soon as its part of the test ended)."""
    result = getattr(getattr(test, "_outcome", None), "result", None)
    return result is not None and any(t is test for t, _ in result.failures + result.errors)


def print_log_if_failed(test, proc, n=40):
    """The end of `proc`'s log (any of this module's processes) on stderr, if `test`
    failed."""
    if test_failed(test):
        print(f"\n--- {getattr(proc, 'id', proc)}: log's end\n{proc.log_tail(n)}",
              file=sys.stderr)


def checkpoint_seq(path):
    """The sequence number a published checkpoint file's name carries."""
    return int(_CKPT_NAME.match(os.path.basename(path)).group(2))


def verify_checkpoint(path, key_file=None):
    """`eddy-node --verify-checkpoint PATH [--checkpoint-key-file KEY]`: (rc, the printed
    JSON or None, stderr)."""
    cmd = [require_node(), "--verify-checkpoint", path]
    if key_file:
        cmd += ["--checkpoint-key-file", key_file]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    info = json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else None
    return r.returncode, info, r.stderr


def metrics_port_of(node):
    """The /metrics port a node printed ("metrics on N"), or None."""
    line = next((l for l in node._stdout if l.startswith("metrics on ")), None)
    return int(line.split()[2]) if line else None


def scrape_samples(addr):
    """{sample name with labels as printed: value} of http://ADDR/metrics."""
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
