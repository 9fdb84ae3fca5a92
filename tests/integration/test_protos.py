"""The protos as other languages' generators read them: protoc compiles every file under
proto/eddy into a descriptor set in which each sets go_package (an import path and a Go
package name of its own), java_package and java_multiple_files; buf.yaml is a v2 module of
proto/; and `buf lint` passes where buf is installed (`npm install -g @bufbuild/buf`)."""
import glob
import os
import re
import shutil
import subprocess
import tempfile
import unittest

from google.protobuf import descriptor_pb2

import eddylib as L

REPO = os.path.normpath(os.path.join(L.HERE, "..", ".."))
# The APIs and the stored formats; eddy/internal/ holds what the build alone reads (the
# subset of descriptor.proto the reflection service parses its descriptor set with).
PROTOS = sorted(os.path.relpath(p, L.PROTO_DIR)
                for p in glob.glob(os.path.join(L.PROTO_DIR, "eddy", "**", "*.proto"), recursive=True)
                if not p.startswith(os.path.join(L.PROTO_DIR, "eddy", "internal", "")))


class ProtosTest(unittest.TestCase):
    def test_language_options(self):
        self.assertGreaterEqual(len(PROTOS), 4, PROTOS)
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "set.pb")
            subprocess.run(["protoc", f"-I{L.PROTO_DIR}", f"--descriptor_set_out={out}", *PROTOS],
                           check=True, capture_output=True, timeout=60)
            fds = descriptor_pb2.FileDescriptorSet()
            with open(out, "rb") as f:
                fds.ParseFromString(f.read())
        files = {f.name: f for f in fds.file}
        self.assertEqual(sorted(files), PROTOS)
        go_packages = set()
        for name, f in files.items():
            o = f.options
            m = re.fullmatch(r"github\.com/eddy-analytics/eddy/gen/go/([a-z0-9/]+);([a-z0-9]+)",
                             o.go_package)
            self.assertIsNotNone(m, (name, o.go_package))
            # the Go package name is the import path's last two elements (eddy/v1 -> eddyv1)
            self.assertEqual(m.group(2), "".join(m.group(1).split("/")[-2:]), name)
            # eddy.v1 -> io.eddy.v1; eddy.state.v1 -> io.eddy.state.v1
            self.assertEqual(o.java_package, "io." + f.package, name)
            self.assertTrue(o.java_multiple_files, name)
            go_packages.add(o.go_package)
        self.assertEqual(len(go_packages), len(files), "two protos share a Go package")

    def test_buf_module(self):
        with open(os.path.join(REPO, "buf.yaml")) as f:
            text = f.read()
        self.assertRegex(text, r"(?m)^version: v2$")
        self.assertRegex(text, r"(?m)^modules:\n  - path: proto$")
        buf = shutil.which("buf")
        if not buf:
            self.skipTest("buf not installed (npm install -g @bufbuild/buf)")
        r = subprocess.run([buf, "lint"], cwd=REPO, capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


if __name__ == "__main__":
    unittest.main()
