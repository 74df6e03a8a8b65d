"""Writes TF Serving's gRPC API as descriptors that non-Python clients load.

    python serving/clients/tfs_descriptors.py --out serving/clients/node/tfs_protos.json
    python serving/clients/tfs_descriptors.py --out tfs.pb --go-package example.com/textserve/tfs

The repository carries no copy of TF Serving's or TensorFlow's .proto files.
Every client generator can start from the descriptors that the installed
`tensorflow-serving-api` wheel already compiled in: this script collects
`prediction_service.proto` and `model_service.proto` with every file they import
(TensorFlow's tensor/example/meta_graph protos, google.protobuf's Any and
wrappers, ...), dependencies first, and writes them

* as a serialized `google.protobuf.FileDescriptorSet` (`--out X.pb`), which
  `protoc --descriptor_set_in` reads (see `serving/clients/go/README.md`);
* as protobuf.js's JSON namespace (`--out X.json`), which `@grpc/proto-loader`'s
  `fromJSON` reads. The JSON form is used for Node.js rather than
  `loadFileDescriptorSetFromBuffer` because protobuf.js turns a descriptor's
  map fields (`PredictRequest.inputs`, `PredictResponse.outputs`, ...) into lists
  of `{key, value}` entries, while from JSON they are plain objects, as in every
  TF Serving example.

With `--go-package P`, the `protoc` `M` options that give each proto package a
Go package under P are printed too (TF Serving's files declare no `go_package`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# The two services a TF Serving client calls.
SERVICE_MODULES = (
    "tensorflow_serving.apis.prediction_service_pb2",
    "tensorflow_serving.apis.model_service_pb2",
)
# Go packages of their own already exist for these (google.golang.org/protobuf).
_GO_WELL_KNOWN = "google/protobuf/"


def file_descriptor_set() -> bytes:
    """Returns the serialized FileDescriptorSet of both services and their imports.

    Raises:
      ImportError: tensorflow-serving-api is not installed.
    """
    import importlib

    from google.protobuf import descriptor_pb2

    ordered: list = []
    seen: set[str] = set()

    def visit(file_descriptor) -> None:
        if file_descriptor.name in seen:
            return
        seen.add(file_descriptor.name)
        for dependency in file_descriptor.dependencies:
            visit(dependency)
        ordered.append(file_descriptor)  # after its imports, as protoc orders them

    for module in SERVICE_MODULES:
        visit(importlib.import_module(module).DESCRIPTOR)
    descriptor_set = descriptor_pb2.FileDescriptorSet()
    for file_descriptor in ordered:
        file_descriptor.CopyToProto(descriptor_set.file.add())
    return descriptor_set.SerializeToString()


# FieldDescriptorProto.Type number → protobuf.js scalar name (11 message, 14 enum, 10 group: by name).
_SCALAR_TYPES = {
    1: "double",
    2: "float",
    3: "int64",
    4: "uint64",
    5: "int32",
    6: "fixed64",
    7: "fixed32",
    8: "bool",
    9: "string",
    12: "bytes",
    13: "uint32",
    15: "sfixed32",
    16: "sfixed64",
    17: "sint32",
    18: "sint64",
}
_LABEL_REPEATED = 3


def protobufjs_json(descriptor_set: bytes) -> dict:
    """Converts a serialized FileDescriptorSet into protobuf.js's JSON namespace form.

    Type references stay fully qualified (".tensorflow.TensorProto"), which
    protobuf.js resolves from the root; map entries become map fields.

    Args:
      descriptor_set: the output of `file_descriptor_set()`.

    Returns:
      `{"nested": {...}}`, ready for `protoLoader.fromJSON`.
    """
    from google.protobuf import descriptor_pb2

    root: dict = {"nested": {}}
    for file_proto in descriptor_pb2.FileDescriptorSet.FromString(descriptor_set).file:
        namespace = root
        for part in filter(None, file_proto.package.split(".")):
            namespace = namespace.setdefault("nested", {}).setdefault(part, {"nested": {}})
        nested = namespace.setdefault("nested", {})
        prefix = f".{file_proto.package}" if file_proto.package else ""
        for message in file_proto.message_type:
            nested[message.name] = _message_json(message, f"{prefix}.{message.name}")
        for enum in file_proto.enum_type:
            nested[enum.name] = _enum_json(enum)
        for service in file_proto.service:
            nested[service.name] = {
                "methods": {
                    method.name: {
                        "requestType": method.input_type,
                        "responseType": method.output_type,
                        **({"requestStream": True} if method.client_streaming else {}),
                        **({"responseStream": True} if method.server_streaming else {}),
                    }
                    for method in service.method
                }
            }
    return root


def _enum_json(enum) -> dict:
    return {"values": {value.name: value.number for value in enum.value}}


def _field_type(field) -> str:
    return _SCALAR_TYPES.get(field.type) or field.type_name


def _message_json(message, full_name: str) -> dict:
    """One DescriptorProto (named `full_name`, e.g. ".tensorflow.TensorProto") as protobuf.js JSON."""
    map_entries = {
        f"{full_name}.{nested.name}": nested for nested in message.nested_type if nested.options.map_entry
    }
    fields: dict = {}
    oneofs: dict = {}
    for field in message.field:
        entry = map_entries.get(field.type_name)
        if entry is not None and field.label == _LABEL_REPEATED:
            key, value = entry.field[0], entry.field[1]
            fields[field.name] = {"keyType": _field_type(key), "type": _field_type(value), "id": field.number}
            continue
        spec = {"type": _field_type(field), "id": field.number}
        if field.label == _LABEL_REPEATED:
            spec["rule"] = "repeated"
        fields[field.name] = spec
        if field.HasField("oneof_index") and not field.proto3_optional:
            oneofs.setdefault(message.oneof_decl[field.oneof_index].name, []).append(field.name)
    doc: dict = {"fields": fields}
    if oneofs:
        doc["oneofs"] = {name: {"oneof": members} for name, members in oneofs.items()}
    nested = {
        n.name: _message_json(n, f"{full_name}.{n.name}")
        for n in message.nested_type
        if not n.options.map_entry
    }
    nested.update({e.name: _enum_json(e) for e in message.enum_type})
    if nested:
        doc["nested"] = nested
    return doc


def go_mapping_options(descriptor_set: bytes, go_package_root: str) -> list[str]:
    """`--go_opt=M...`/`--go-grpc_opt=M...` flags mapping each non-well-known file to a Go package.

    Args:
      descriptor_set: the output of `file_descriptor_set()`.
      go_package_root: Go import path under which one package per proto package is made,
        e.g. "example.com/textserve/tfs" → ".../tfs/tensorflow_serving".

    Returns:
      protoc flags, one per file and plugin.
    """
    from google.protobuf import descriptor_pb2

    parsed = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
    flags = []
    for file_proto in parsed.file:
        if file_proto.name.startswith(_GO_WELL_KNOWN):
            continue
        package = file_proto.package.replace(".", "_")
        # "path;name": the name too, or protoc-gen-go derives it from each file's own go_package.
        mapping = f"M{file_proto.name}={go_package_root}/{package};{package}"
        flags += [f"--go_opt={mapping}", f"--go-grpc_opt={mapping}"]
    return flags


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="where to write: NAME.pb (FileDescriptorSet) or NAME.json (protobuf.js JSON)",
    )
    parser.add_argument(
        "--go-package", help="also print protoc M options for Go packages under this import path"
    )
    args = parser.parse_args(argv)
    if args.out.suffix not in (".pb", ".json"):
        parser.error(f"--out must end in .pb (FileDescriptorSet) or .json (protobuf.js JSON), got {args.out}")
    try:
        data = file_descriptor_set()
    except ImportError as e:
        print(
            f"cannot import TF Serving's API ({e}): run this with the Python that has "
            "tensorflow-serving-api installed, e.g. PYTHON=.venv/bin/python",
            file=sys.stderr,
        )
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.suffix == ".json":
        args.out.write_text(json.dumps(protobufjs_json(data), indent=1, sort_keys=True) + "\n", "utf-8")
    else:
        args.out.write_bytes(data)
    print(f"wrote {args.out}", file=sys.stderr)
    if args.go_package:
        print(" ".join(go_mapping_options(data, args.go_package)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
