"""The npm package client/node as a user installs it: `npm pack` (the protos and LICENSE
copied in), then `npm install <tarball>` into a clean directory (dependencies from the npm
registry or npm's cache), used there against real `eddy-node --dev` processes: the same
scenarios and answers as the Python package (clientpkg.Scenarios). Its index.d.ts is
type-checked with `tsc --noEmit --strict` on clients/typecheck.ts (scripts/setup.sh
installs typescript when npm is present), and a wrong call must not type-check.

Without npm the tests are skipped, as for the examples (test_examples.py)."""
import os
import shutil
import tempfile
import unittest

import clientpkg as C

NPM_TIMEOUT = 240


class NodePackageTest(C.Scenarios, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.npm, cls.node = shutil.which("npm"), shutil.which("node")
        if not cls.npm or not cls.node:
            raise unittest.SkipTest("npm/node not installed: the Node.js package needs Node.js "
                                    "18+ and npm")
        cls.tmp = tempfile.mkdtemp(prefix="eddy-it-npmpkg-")
        # pack from a copy laid out as the repository (client/node, proto/, LICENSE), so
        # that prepack writes nothing into the source tree
        src = os.path.join(cls.tmp, "src")
        shutil.copytree(os.path.join(C.REPO, "client", "node"), os.path.join(src, "client", "node"),
                        ignore=shutil.ignore_patterns("node_modules", "proto", "LICENSE", "*.tgz"))
        shutil.copytree(os.path.join(C.REPO, "proto"), os.path.join(src, "proto"))
        shutil.copy(os.path.join(C.REPO, "LICENSE"), src)
        out = C.run([cls.npm, "pack", "--silent", "--pack-destination", cls.tmp],
                    cwd=os.path.join(src, "client", "node"), timeout=NPM_TIMEOUT)
        cls.tarball = os.path.join(cls.tmp, out.strip().splitlines()[-1])
        cls.start_shared_node()
        cls.app = os.path.join(cls.tmp, "app")
        os.mkdir(cls.app)
        with open(os.path.join(cls.app, "package.json"), "w") as f:
            f.write('{"name": "eddy-client-check", "private": true}\n')
        C.run([cls.npm, "install", "--prefer-offline", "--no-audit", "--no-fund", cls.tarball],
              cwd=cls.app, timeout=NPM_TIMEOUT)
        shutil.copy(os.path.join(C.CLIENTS, "driver.js"), cls.app)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def driver(self, **args):
        env = {k: v for k, v in os.environ.items() if k not in ("NODE_PATH", "EDDY_ENDPOINT")}
        j = C.driver_json(C.run([self.node, "driver.js", C.json.dumps(args)], cwd=self.app,
                                env=env))
        self.assertTrue(j["module"].startswith(os.path.join(self.app, "node_modules", "eddy-client")),
                        j["module"])
        return j

    def test_package_contents(self):
        pkg = os.path.join(self.app, "node_modules", "eddy-client")
        self.assertEqual(sorted(os.listdir(pkg)), ["LICENSE", "README.md", "index.d.ts",
                                                   "index.js", "package.json", "proto"])
        with open(os.path.join(pkg, "proto", "eddy", "v1", "eddy.proto")) as a, \
                open(os.path.join(C.REPO, "proto", "eddy", "v1", "eddy.proto")) as b:
            self.assertEqual(a.read(), b.read())
        meta = C.json.loads(open(os.path.join(pkg, "package.json")).read())
        self.assertEqual(meta["license"], "Apache-2.0")
        self.assertEqual(meta["types"], "index.d.ts")

    def test_types_check(self):
        """One tsc run (--strict, without @types/node: fast) over clients/typecheck.ts, which
        must check clean, and a wrong call, which must not: the types are the package's,
        not 'any'."""
        tsc = shutil.which("tsc")
        if not tsc:
            self.skipTest("tsc not installed (scripts/setup.sh: npm install -g typescript)")
        shutil.copy(os.path.join(C.CLIENTS, "typecheck.ts"), self.app)
        with open(os.path.join(self.app, "wrong.ts"), "w") as f:
            f.write("import { Client } from 'eddy-client';\n"
                    "new Client('h:1', { batchSize: 'big' }).recommend(42);\n")
        with open(os.path.join(self.app, "tsconfig.json"), "w") as f:
            C.json.dump({"compilerOptions": {"strict": True, "noEmit": True, "target": "es2020",
                                             "module": "commonjs", "moduleResolution": "node",
                                             "lib": ["es2020"], "types": []},
                         "files": ["typecheck.ts", "wrong.ts"]}, f)
        r = C.subprocess.run([tsc, "-p", "."], cwd=self.app, capture_output=True, text=True,
                             timeout=120)
        errors = [ln for ln in r.stdout.splitlines() if "error TS" in ln]
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertEqual([ln for ln in errors if not ln.startswith("wrong.ts(")], [], r.stdout)
        self.assertTrue(any("error TS2322" in ln for ln in errors), r.stdout)  # 'big'
        self.assertTrue(any("error TS2345" in ln for ln in errors), r.stdout)  # 42


if __name__ == "__main__":
    unittest.main()
