"""libeddy as an application gets it: `cmake --install BUILD --prefix TMP` into a fresh
prefix, then a small C program (libeddy/consumer.c) compiled and linked only with
`pkg-config --cflags --libs eddy` from that prefix, run against a real `eddy-node --dev`:
its events are read back by the test over gRPC.

Needs the build tree (EDDY_BUILD_DIR, set by CTest), cc and pkg-config."""
import os
import re
import shutil
import subprocess
import unittest

import eddylib as L

BUILD = os.environ.get("EDDY_BUILD_DIR", "")
CONSUMER = os.path.join(L.HERE, "libeddy", "consumer.c")


def cache_value(build, name):
    """A variable of BUILD/CMakeCache.txt ('' when unset)."""
    with open(os.path.join(build, "CMakeCache.txt")) as f:
        for line in f:
            m = re.match(rf"{re.escape(name)}:\w+=(.*)$", line.rstrip("\n"))
            if m:
                return m.group(1)
    return ""


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       timeout=120, **kw)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed rc={r.returncode}\n"
                             f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}")
    return r.stdout


class LibeddyInstallTest(unittest.TestCase):
    def setUp(self):
        if not BUILD or not os.path.isfile(os.path.join(BUILD, "CMakeCache.txt")):
            self.fail("EDDY_BUILD_DIR must name the CMake build tree (set by CTest)")
        for tool in ("cc", "pkg-config", "cmake"):
            if not shutil.which(tool):
                self.fail(f"{tool} is not installed")
        self.prefix = L.temp_dir(self, "eddy-it-prefix-")
        run(["cmake", "--install", BUILD, "--prefix", self.prefix])

    def pkg_config(self, *args):
        env = dict(os.environ)
        # only the temp prefix's eddy.pc (and the system's grpc, protobuf-c, libcrypto)
        env["PKG_CONFIG_PATH"] = os.path.join(self.prefix, "lib", "pkgconfig")
        return run(["pkg-config", *args], env=env).split()

    def test_installed_files(self):
        for rel in ("include/eddy/client.h", "include/eddy/proto/eddy/v1/eddy.pb-c.h",
                    "include/eddy/proto/grpc/health/v1/health.pb-c.h",
                    "lib/pkgconfig/eddy.pc", "lib/libeddy.so"):
            self.assertTrue(os.path.exists(os.path.join(self.prefix, rel)), rel)
        self.assertEqual(self.pkg_config("--modversion", "eddy"),
                         [cache_value(BUILD, "CMAKE_PROJECT_VERSION")])
        # the prefix comes from where eddy.pc is, not from the configure-time prefix
        libs = self.pkg_config("--libs", "eddy")
        self.assertIn("-leddy", libs)
        libdirs = [os.path.realpath(a[2:]) for a in libs if a.startswith("-L")]
        self.assertIn(os.path.realpath(os.path.join(self.prefix, "lib")), libdirs)
        # only the public API is exported
        syms = run(["nm", "-D", "--defined-only", os.path.join(self.prefix, "lib", "libeddy.so")])
        names = {ln.split()[-1].split("@")[0] for ln in syms.splitlines() if ln.strip()}
        self.assertIn("eddy_client_new", names)
        self.assertIn("eddy__v1__event__init", names)
        self.assertFalse({n for n in names if n.startswith(("rpc_client_", "tls_", "log_"))},
                         "common/ internals exported")

    def test_program_built_against_installed_copy(self):
        exe = os.path.join(self.prefix, "consumer")
        flags = self.pkg_config("--cflags", "--libs", "eddy")
        sanitize = cache_value(BUILD, "EDDY_SANITIZE")
        extra = [f"-fsanitize={sanitize}"] if sanitize else []
        run(["cc", "-std=c17", "-Wall", "-Werror", *extra, "-o", exe, CONSUMER, *flags,
             f"-Wl,-rpath,{os.path.join(self.prefix, 'lib')}"])
        # the program loads the installed libeddy.so, not the build tree's
        ldd = run(["ldd", exe])
        m = re.search(r"libeddy\.so\.0 => (\S+)", ldd)
        self.assertIsNotNone(m, ldd)
        self.assertEqual(os.path.dirname(os.path.realpath(m.group(1))),
                         os.path.realpath(os.path.join(self.prefix, "lib")))

        node = L.start_node(self)
        user = "u-libeddy"
        out = run([exe, node.endpoint, user])
        self.assertIn("ingest: accepted=3 duplicates=0 rejected=0\n", out)
        self.assertRegex(out, r"(?m)^recommend: items=\d+ cold_start=0$")
        self.assertIn(f"profile: user={user} events=3 purchases=1\n", out)
        m = L.pb()
        p = node.stub.GetUserProfile(m.GetUserProfileRequest(user_id=user), timeout=10).profile
        self.assertEqual(p.event_count, 3)
        self.assertEqual([v.product_id for v in p.recent_purchases], ["p-lib-a"])
        # run again: the same event ids are duplicates (the node deduplicates them)
        out = run([exe, node.endpoint, user])
        self.assertIn("ingest: accepted=0 duplicates=3 rejected=0\n", out)


if __name__ == "__main__":
    unittest.main()
