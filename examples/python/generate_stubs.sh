#!/bin/sh
# Generates the Python modules of the API into OUT_DIR with Debian's protoc and
# grpc_python_plugin (packages protobuf-compiler and protobuf-compiler-grpc):
#   examples/python/generate_stubs.sh OUT_DIR
# anoclip.v1 and google.rpc keep their packages (anoclip/v1/anoclip_pb2.py, ...). The reflection
# messages become the top-level module reflection_pb2: a package named grpc would hide grpcio.
set -eu
out=${1:?usage: generate_stubs.sh OUT_DIR}
proto_dir=$(cd "$(dirname "$0")/../../proto" && pwd)
mkdir -p "$out"
cd "$proto_dir"
protoc --proto_path=. --python_out="$out" --grpc_out="$out" \
  --plugin=protoc-gen-grpc="$(command -v grpc_python_plugin)" \
  anoclip/v1/anoclip.proto google/rpc/status.proto
protoc --proto_path=grpc/reflection/v1 --python_out="$out" reflection.proto
