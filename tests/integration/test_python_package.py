"""The Python package client/python as a user installs it: a wheel built with Debian's pip
and setuptools (stubs generated from proto/ at build time, no network), installed into a
clean venv (--system-site-packages: Debian's python3-grpcio and python3-protobuf are its
dependencies), then used there against real `eddy-node --dev` processes: batching, reads,
deadlines, retries with backoff and the server's retry-after-ms, TLS and a token
(clientpkg.Scenarios), and the README's five lines of Python run verbatim."""
import glob
import os
import re
import shutil
import sys
import tempfile
import unittest

import clientpkg as C
import eddylib as L

PYTHON = "/usr/bin/python3"  # Debian's: python3-pip, -venv, -setuptools, -wheel, -grpcio


def readme_python_snippet():
    """The first ```python block of README.md's 'Python' client section."""
    with open(os.path.join(C.REPO, "README.md")) as f:
        text = f.read()
    m = re.search(r"^### Python\b.*?^```python\n(.*?)^```", text, re.S | re.M)
    if not m:
        raise AssertionError("README.md has no ```python block under '### Python'")
    return m.group(1)


class PythonPackageTest(C.Scenarios, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="eddy-it-pypkg-")
        # build from a copy, so that the build leaves nothing in the source tree
        src = os.path.join(cls.tmp, "src")
        shutil.copytree(os.path.join(C.REPO, "client", "python"), src,
                        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        dist = os.path.join(cls.tmp, "dist")
        env = dict(os.environ, EDDY_PROTO_DIR=L.PROTO_DIR)
        C.run([PYTHON, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index",
               "-w", dist, src], env=env, timeout=120)
        wheels = glob.glob(os.path.join(dist, "eddy_client-*.whl"))
        if len(wheels) != 1:
            raise AssertionError(f"expected one wheel in {dist}: {os.listdir(dist)}")
        cls.venv = os.path.join(cls.tmp, "venv")
        # without its own pip (ensurepip takes half a minute on a loaded machine): Debian's
        # pip installs into it (--python)
        C.run([PYTHON, "-m", "venv", "--system-site-packages", "--without-pip", cls.venv])
        cls.python = os.path.join(cls.venv, "bin", "python")
        C.run([PYTHON, "-m", "pip", "--python", cls.python, "install", "--no-index", "--no-deps",
               wheels[0]])
        cls.start_shared_node()
        cls.app = os.path.join(cls.tmp, "app")  # cwd of every run: no source tree near it
        os.mkdir(cls.app)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def env(self, **extra):
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "EDDY_ENDPOINT", "EDDY_PROTO_DIR")}
        env.update(extra)
        return env

    def driver(self, **args):
        out = C.run([self.python, os.path.join(C.CLIENTS, "driver.py"), C.json.dumps(args)],
                    cwd=self.app, env=self.env())
        j = C.driver_json(out)
        # the installed copy answered, not a source tree
        self.assertTrue(j["module"].startswith(self.venv + os.sep), j["module"])
        return j

    def test_wheel_contents(self):
        out = C.run([self.python, "-c", "import eddy, eddy.v1.eddy_pb2 as pb, "
                     "eddy.v1.eddy_pb2_grpc as g; print(eddy.__version__, pb.DESCRIPTOR.package, "
                     "g.EddyStub.__name__, eddy.pb is pb)"], cwd=self.app, env=self.env())
        self.assertEqual(out.split(), ["0.1.0", "eddy.v1", "EddyStub", "True"])
        meta = C.run([PYTHON, "-m", "pip", "--python", self.python, "show", "eddy-client"],
                     env=self.env())
        self.assertRegex(meta, r"(?m)^License: Apache-2.0$")

    def test_readme_five_lines(self):
        """The README's snippet, verbatim, against a node with some traffic."""
        code = readme_python_snippet()
        self.assertLessEqual(len(code.strip().splitlines()), 5, code)
        node = self.shared
        for batch in L.batches(L.generate(seed=3, n_users=10, n_events=400), [400]):
            r = node.ingest(batch)
            self.assertEqual(len(r.rejected), 0)
        path = os.path.join(self.app, "five_lines.py")
        with open(path, "w") as f:
            f.write(code)
        out = C.run([self.python, path], cwd=self.app, env=self.env(EDDY_ENDPOINT=node.endpoint))
        items = re.findall(r"^(\S+) (\d+\.\d+) (.+)$", out, re.M)
        self.assertTrue(items, f"no recommendation printed:\n{out}")
        users = set(re.findall(r'event\("([^"]+)"', code))
        self.assertEqual(len(users), 1, code)
        user = users.pop()
        m = L.pb()
        want = node.stub.Recommend(m.RecommendRequest(user_id=user, max_recommendations=5),
                                   timeout=10)
        self.assertEqual([pid for pid, _, _ in items], [i.product_id for i in want.items], out)
        p = node.stub.GetUserProfile(m.GetUserProfileRequest(user_id=user), timeout=10).profile
        self.assertEqual(p.event_count, len(re.findall(r"event\(", code)))


if __name__ == "__main__":
    unittest.main()
