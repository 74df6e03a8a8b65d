#!/usr/bin/env bash
# Generates the Go stubs of TF Serving's gRPC API into ./gen (not committed).
#
#   PYTHON=../../../.venv/bin/python ./generate.sh
#
# Needs protoc, protoc-gen-go and protoc-gen-go-grpc on PATH, and a Python with
# tensorflow-serving-api. No .proto file is downloaded or kept: the descriptors
# compiled into the installed wheel are written as a FileDescriptorSet, and
# protoc reads that with --descriptor_set_in. TF Serving's files declare no
# go_package, so each proto package gets one under this module's gen/ (M options
# printed by tfs_descriptors.py --go-package).
set -euo pipefail
cd "$(dirname "$0")"

python=${PYTHON:-python3}
module=$(sed -n 's/^module //p' go.mod)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

read -r -a mappings < <("$python" ../tfs_descriptors.py --out "$work/tfs.pb" --go-package "$module/gen")
# Every file of the set except google.protobuf's, whose Go packages already exist.
mapfile -t files < <(printf '%s\n' "${mappings[@]}" | sed -n 's/^--go_opt=M\([^=]*\)=.*/\1/p')

rm -rf gen
protoc --descriptor_set_in="$work/tfs.pb" \
  --go_out=. --go_opt=module="$module" \
  --go-grpc_out=. --go-grpc_opt=module="$module" \
  "${mappings[@]}" "${files[@]}"
echo "generated $(find gen -name '*.go' | wc -l) Go files under gen/" >&2
