#!/usr/bin/env bash
# Regenerates the committed Python stubs from the .proto files beside this script.
set -euo pipefail
cd "$(dirname "$0")/.."
"${PYTHON:-python}" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. protos/*.proto
