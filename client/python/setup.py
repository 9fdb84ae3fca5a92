"""Builds the wheel with the gRPC stubs of eddy.v1 generated from the protos at build time:
eddy/v1/eddy_pb2.py and eddy_pb2_grpc.py, by protoc and grpc_python_plugin (Debian:
protobuf-compiler, protobuf-compiler-grpc) or, where that plugin is missing, grpcio-tools.

Environment: EDDY_PROTO_DIR (default ../../proto), PROTOC (default protoc),
GRPC_PYTHON_PLUGIN (default /usr/bin/grpc_python_plugin)."""
import os
import shutil
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PROTOS = ["eddy/v1/eddy.proto"]


def protoc_command(proto_dir, out):
    plugin = os.environ.get("GRPC_PYTHON_PLUGIN", "/usr/bin/grpc_python_plugin")
    protoc = os.environ.get("PROTOC", "protoc")
    if os.path.isfile(plugin) and shutil.which(protoc):
        return [protoc, f"--plugin=protoc-gen-grpc_python={plugin}", f"-I{proto_dir}",
                f"--python_out={out}", f"--grpc_python_out={out}", *PROTOS]
    try:
        import grpc_tools  # noqa: F401  (pip's grpcio-tools)
    except ImportError:
        sys.exit("eddy-client: no protoc with grpc_python_plugin (Debian: protobuf-compiler "
                 "protobuf-compiler-grpc) and no grpcio-tools to generate the stubs")
    return [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_dir}", f"--python_out={out}",
            f"--grpc_python_out={out}", *PROTOS]


class BuildWithStubs(build_py):
    """build_py, then the stubs into the build directory (never into the source tree)."""

    def run(self):
        super().run()
        proto_dir = os.environ.get("EDDY_PROTO_DIR") or os.path.join(HERE, "..", "..", "proto")
        proto_dir = os.path.abspath(proto_dir)
        for p in PROTOS:
            if not os.path.isfile(os.path.join(proto_dir, p)):
                sys.exit(f"eddy-client: {p} not found under {proto_dir} (set EDDY_PROTO_DIR)")
        out = os.path.abspath(self.build_lib)
        subprocess.run(protoc_command(proto_dir, out), check=True)
        # eddy/v1 becomes a package of the wheel; the .proto files ship beside the stubs
        v1 = os.path.join(out, "eddy", "v1")
        with open(os.path.join(v1, "__init__.py"), "w") as f:
            f.write('"""Generated from proto/eddy/v1/eddy.proto when the wheel was built."""\n')
        for p in PROTOS:
            shutil.copy(os.path.join(proto_dir, p), v1)


setup(cmdclass={"build_py": BuildWithStubs})
