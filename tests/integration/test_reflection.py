"""gRPC server reflection (grpc.reflection.v1 and v1alpha) against real servers, done as
grpcurl does it (grpcurl itself is not packaged for Debian 12): list the services, fetch
the file that defines one, build a descriptor pool from the answer and call methods with
message classes made from it, with no generated Eddy code. On a dev node, on a cluster
node that serves the internal State service, and on a coordinator. And a Node.js client,
the npm package grpc-js-reflection-client (node_reflection/, installed with `npm ci` from
its lock file; skipped without npm)."""
import atexit
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

import eddylib as L

VERSIONS = ("v1", "v1alpha")
NODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node_reflection")
NPM_TIMEOUT = 300
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]

_modules = {}


def reflection_pb(version):
    """reflection_pb2 of `version`, compiled from the repository's proto with protoc. The
    files are copied under another path: the module would otherwise be "grpc.reflection",
    which the grpcio package shadows (the proto package, so the wire names, stay)."""
    if not _modules:
        d = tempfile.mkdtemp(prefix="eddy-it-reflection-")
        atexit.register(shutil.rmtree, d, True)
        src, out = os.path.join(d, "src"), os.path.join(d, "out")
        for v in VERSIONS:
            os.makedirs(os.path.join(src, "eddy_it_reflection", v))
            shutil.copy(os.path.join(L.PROTO_DIR, "grpc", "reflection", v, "reflection.proto"),
                        os.path.join(src, "eddy_it_reflection", v, "reflection.proto"))
        os.makedirs(out)
        r = subprocess.run(["protoc", f"-I{src}", f"--python_out={out}"] +
                           [f"eddy_it_reflection/{v}/reflection.proto" for v in VERSIONS],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"protoc reflection.proto failed: {r.stderr}")
        for p in ("eddy_it_reflection", *(f"eddy_it_reflection/{v}" for v in VERSIONS)):
            open(os.path.join(out, p, "__init__.py"), "a").close()
        sys.path.insert(0, out)
        for v in VERSIONS:
            _modules[v] = importlib.import_module(f"eddy_it_reflection.{v}.reflection_pb2")
    return _modules[version]


class Reflection:
    """A reflection client on one channel for one protocol version."""

    def __init__(self, channel, version):
        self.pb = reflection_pb(version)
        self.stream = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=self.pb.ServerReflectionRequest.SerializeToString,
            response_deserializer=self.pb.ServerReflectionResponse.FromString)

    def ask(self, *requests):
        """Send the requests on one stream; the answers, one per request, in order."""
        return list(self.stream(iter(requests), timeout=15))

    def req(self, **kw):
        return self.pb.ServerReflectionRequest(**kw)

    def services(self):
        (a,) = self.ask(self.req(list_services="*"))
        return [s.name for s in a.list_services_response.service]

    def files_of_symbol(self, symbol):
        (a,) = self.ask(self.req(file_containing_symbol=symbol))
        if a.WhichOneof("message_response") != "file_descriptor_response":
            raise AssertionError(f"{symbol}: {a}")
        return [descriptor_pb2.FileDescriptorProto.FromString(b)
                for b in a.file_descriptor_response.file_descriptor_proto]

    def pool_for(self, symbol):
        """A descriptor pool of the file defining `symbol` and of its imports, added
        imports first as a pool requires (the server sends them in any order)."""
        files = {f.name: f for f in self.files_of_symbol(symbol)}
        pool = descriptor_pool.DescriptorPool()
        added = set()

        def add(name):
            if name in added:
                return
            for dep in files[name].dependency:
                add(dep)
            pool.Add(files[name])
            added.add(name)

        for name in files:
            add(name)
        return pool


def message_class(pool, full_name):
    desc = pool.FindMessageTypeByName(full_name)
    if hasattr(message_factory, "GetMessageClass"):  # protobuf >= 4.22
        return message_factory.GetMessageClass(desc)
    return message_factory.MessageFactory(pool).GetPrototype(desc)


def dynamic_method(channel, pool, service, method):
    """The unary method `service`.`method` with classes built from `pool`: (call, request
    class)."""
    m = pool.FindServiceByName(service).FindMethodByName(method)
    req, resp = message_class(pool, m.input_type.full_name), message_class(pool, m.output_type.full_name)
    call = channel.unary_unary(f"/{service}/{method}", request_serializer=req.SerializeToString,
                               response_deserializer=resp.FromString)
    return call, req


class DevNodeReflectionTest(unittest.TestCase):
    def setUp(self):
        self.node = L.start_node(self, args=["--idle-timeout", "0"])
        self.channel = L.open_channel(self.node.endpoint)
        self.addCleanup(self.channel.close)

    def test_list_describe_and_call_recommend(self):
        for v in VERSIONS:
            with self.subTest(version=v):
                r = Reflection(self.channel, v)
                services = r.services()
                self.assertEqual(len(services), len(set(services)), services)
                for want in ("eddy.v1.Eddy", "grpc.health.v1.Health",
                             "grpc.reflection.v1.ServerReflection",
                             "grpc.reflection.v1alpha.ServerReflection"):
                    self.assertIn(want, services)
                self.assertNotIn("eddy.state.v1.State", services, "a dev node has no State API")
                for s in services:  # every listed service is described
                    names = [f.name for f in r.files_of_symbol(s)]
                    self.assertTrue(names, s)

                pool = r.pool_for("eddy.v1.Eddy")
                eddy = pool.FindServiceByName("eddy.v1.Eddy")
                self.assertIn("Recommend", [m.name for m in eddy.methods])
                self.assertEqual(eddy.file.name, "eddy/v1/eddy.proto")
                # comments travel too (grpcurl describe shows them)
                self.assertTrue(any(loc.leading_comments for loc in
                                    r.files_of_symbol("eddy.v1.Eddy")[0].source_code_info.location))

                ingest, IngestRequest = dynamic_method(self.channel, pool, "eddy.v1.Eddy", "Ingest")
                Event = message_class(pool, "eddy.v1.Event")
                view = pool.FindEnumTypeByName("eddy.v1.EventType").values_by_name["EVENT_TYPE_VIEW"].number
                t = L.now_ms() - 60_000
                user = f"u-refl-{v}"
                events = [Event(event_id=f"refl-{v}-{i}", user_id=u, timestamp_ms=t + i,
                                event_type=view, product_id=f"p-{i % 4}", category="books")
                          for i, u in enumerate([user] + [f"u-other-{k}" for k in range(11)])]
                got = ingest(IngestRequest(events=events), timeout=10)
                self.assertEqual(got.accepted, len(events))

                recommend, RecommendRequest = dynamic_method(self.channel, pool, "eddy.v1.Eddy",
                                                             "Recommend")
                resp = L.poll_until(
                    lambda: (lambda a: a if a.items else None)(
                        recommend(RecommendRequest(user_id=user, max_recommendations=5), timeout=10)),
                    10, what="recommendations through dynamic messages")
                self.assertEqual(type(resp).DESCRIPTOR.full_name, "eddy.v1.RecommendResponse")
                ids = [i.product_id for i in resp.items]
                self.assertTrue(set(ids) <= {"p-1", "p-2", "p-3"}, ids)  # p-0 seen already

    def test_lookups_and_errors_on_one_stream(self):
        for v in VERSIONS:
            with self.subTest(version=v):
                r = Reflection(self.channel, v)
                ext = r.pb.ExtensionRequest(containing_type="eddy.v1.Event", extension_number=100)
                answers = r.ask(
                    r.req(file_by_filename="eddy/v1/eddy.proto"),
                    r.req(file_containing_symbol="eddy.v1.Eddy.Recommend"),          # a method
                    r.req(file_containing_symbol="eddy.v1.RecommendRequest.user_id"),  # a field
                    r.req(file_containing_symbol="eddy.v1.EventType"),                # an enum
                    r.req(file_containing_symbol="eddy.v1.Nope"),
                    r.req(file_by_filename="nope.proto"),
                    r.req(file_containing_extension=ext),
                    r.req(all_extension_numbers_of_type="eddy.v1.Event"),
                    r.req(all_extension_numbers_of_type="eddy.v1.Nope"),
                    r.req(host="h"),                                                  # asks nothing
                    r.req(list_services=""))
                self.assertEqual(len(answers), 11)
                kinds = [a.WhichOneof("message_response") for a in answers]
                self.assertEqual(kinds, ["file_descriptor_response"] * 4 + ["error_response"] * 3 +
                                 ["all_extension_numbers_response", "error_response",
                                  "error_response", "list_services_response"])
                for a in answers[:4]:
                    first = descriptor_pb2.FileDescriptorProto.FromString(
                        a.file_descriptor_response.file_descriptor_proto[0])
                    self.assertEqual(first.name, "eddy/v1/eddy.proto")
                self.assertEqual([a.error_response.error_code for a in answers[4:7]], [NOT_FOUND] * 3)
                self.assertIn("eddy.v1.Nope", answers[4].error_response.error_message)
                self.assertEqual(answers[7].all_extension_numbers_response.base_type_name, "eddy.v1.Event")
                self.assertEqual(list(answers[7].all_extension_numbers_response.extension_number), [])
                self.assertEqual(answers[8].error_response.error_code, NOT_FOUND)
                self.assertEqual(answers[9].error_response.error_code, INVALID_ARGUMENT)
                self.assertEqual(answers[9].valid_host, "h")
                self.assertEqual(answers[4].original_request.file_containing_symbol, "eddy.v1.Nope")
                self.assertIn("eddy.v1.Eddy", [s.name for s in answers[10].list_services_response.service])

    def test_many_requests_on_one_stream(self):
        r = Reflection(self.channel, "v1")
        reqs = [r.req(file_containing_symbol=f"eddy.v1.Missing{i}") if i % 2 else
                r.req(list_services="") for i in range(300)]
        answers = r.ask(*reqs)
        self.assertEqual(len(answers), 300)
        for i, a in enumerate(answers):
            self.assertEqual(a.WhichOneof("message_response"),
                             "error_response" if i % 2 else "list_services_response", i)

    def test_node_reflection_client(self):
        npm, node = shutil.which("npm"), shutil.which("node")
        if not npm or not node:
            self.skipTest("npm and node are not installed: the Node.js reflection client "
                          "needs them (grpc-js-reflection-client)")
        if not os.path.exists(os.path.join(NODE_DIR, "node_modules", "grpc-js-reflection-client")):
            r = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
                               cwd=NODE_DIR, capture_output=True, text=True,
                               stdin=subprocess.DEVNULL, timeout=NPM_TIMEOUT)
            self.assertEqual(r.returncode, 0, f"npm ci in {NODE_DIR}: {r.stdout}\n{r.stderr}")
        events = L.generate(seed=11, n_users=8, n_products=20, n_events=400)
        r = self.node.ingest([L.to_pb(e) for e in events])
        self.assertEqual(r.accepted, len(events))
        user = events[0]["userId"]
        ask = lambda: [i.product_id for i in self.node.stub.Recommend(  # noqa: E731
            L.pb().RecommendRequest(user_id=user, max_recommendations=5), timeout=10).items]
        before = ask()
        self.assertTrue(before, "the user has recommendations")
        r = subprocess.run([node, os.path.join(NODE_DIR, "reflection_client.js"),
                            self.node.endpoint, user],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        got = json.loads(r.stdout)
        services = sorted(Reflection(self.channel, "v1").services())
        self.assertEqual(got["v1"], services)
        self.assertEqual(got["v1alpha"], services)
        self.assertIn("Recommend", got["methods"])
        # the same answer as a generated-stub client's (the state may settle in between)
        self.assertIn([i["product_id"] for i in got["recommend"]["items"]], (before, ask()))

    def test_malformed_request_ends_the_stream(self):
        raw = self.channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=None, response_deserializer=None)
        good = reflection_pb("v1").ServerReflectionRequest(list_services="").SerializeToString()
        it = raw(iter([good, b"\xff\xff\xff"]), timeout=10)
        first = next(it)
        self.assertTrue(reflection_pb("v1").ServerReflectionResponse.FromString(first)
                        .HasField("list_services_response"))
        with self.assertRaises(grpc.RpcError) as cm:
            next(it)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("malformed", cm.exception.details())
        # the server goes on serving
        self.assertIn("eddy.v1.Eddy", Reflection(self.channel, "v1").services())


class ClusterReflectionTest(unittest.TestCase):
    def test_state_node_and_coordinator(self):
        c = L.Cluster(self, partitions=4)
        coord = c.add_coordinator("c1")
        node = c.add_node("n1", roles="ingest,state")
        node.wait_ready()
        ch = L.open_channel(node.endpoint)
        self.addCleanup(ch.close)
        for v in VERSIONS:
            with self.subTest(server="node", version=v):
                r = Reflection(ch, v)
                services = r.services()
                for want in ("eddy.v1.Eddy", "eddy.state.v1.State", "grpc.health.v1.Health",
                             f"grpc.reflection.{v}.ServerReflection"):
                    self.assertIn(want, services)
                names = {f.name for f in r.files_of_symbol("eddy.state.v1.State")}
                self.assertEqual(names, {"eddy/v1/state.proto", "eddy/v1/eddy.proto",
                                         "eddy/v1/store.proto"})
                pool = r.pool_for("eddy.state.v1.State")
                self.assertIn("Apply", [m.name for m in
                                        pool.FindServiceByName("eddy.state.v1.State").methods])

        cch = L.open_channel(f"127.0.0.1:{coord.port}")
        self.addCleanup(cch.close)
        for v in VERSIONS:
            with self.subTest(server="coordinator", version=v):
                r = Reflection(cch, v)
                services = r.services()
                self.assertEqual(set(services), {"eddy.cluster.v1.Coordinator",
                                                 "grpc.health.v1.Health",
                                                 "grpc.reflection.v1.ServerReflection",
                                                 "grpc.reflection.v1alpha.ServerReflection"})
                pool = r.pool_for("eddy.cluster.v1.Coordinator")
                status, Req = dynamic_method(cch, pool, "eddy.cluster.v1.Coordinator", "ClusterStatus")
                got = L.poll_until(lambda: (lambda s: s if any(n.id == "n1" for n in s.nodes)
                                            else None)(status(Req(), timeout=10)),
                                   10, what="n1 in ClusterStatus through dynamic messages")
                self.assertEqual(type(got).DESCRIPTOR.full_name, "eddy.cluster.v1.ClusterStatusResponse")


if __name__ == "__main__":
    unittest.main()
