#!/bin/sh
# Generate the Python stubs of eddy.v1 (eddy_pb2.py, eddy_pb2_grpc.py) into ./gen, where
# eddy_example.py looks first. Needs Debian's protobuf-compiler and protobuf-compiler-grpc.
# Without ./gen the example generates the same files into a temporary directory itself.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
proto=${EDDY_PROTO_DIR:-$here/../../proto}
out=${1:-$here/gen}
mkdir -p "$out"
protoc -I "$proto" --python_out="$out" --grpc_python_out="$out" \
  --plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin eddy/v1/eddy.proto
echo "generated $out/eddy/v1/eddy_pb2.py and eddy_pb2_grpc.py"
