"""Message classes for TF Serving's `MonitoringConfig` and `BatchingParameters`.

The pip package `tensorflow-serving-api` ships `ModelServerConfig` but not the
protos behind `--monitoring_config_file` and `--batching_parameters_file`
(TFS_CONTRACT.md §10.7). Their message layout is a public fact of TF Serving's
API, so it is declared here as a `FileDescriptorProto` built in code and turned
into message classes in a private descriptor pool (private, so a later import
of TF Serving's own generated modules can never clash with ours). Files are
then read with `google.protobuf.text_format`, exactly as tensorflow_model_server
reads them, including the wrapper syntax `max_batch_size { value: 128 }`.

    config = parse_text_file(BatchingParameters, "/models/batching.config")
    config.max_batch_size.value   # 128
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

_PACKAGE = "tensorflow.serving"
_FILE_NAME = "textserve/serving/config_protos.proto"

_F = descriptor_pb2.FieldDescriptorProto

# (field name, number, type, label, message type) in TF Serving's numbering so a
# binary-serialized config would round-trip too.
_MESSAGES: dict[str, list[tuple[str, int, int, int, str | None]]] = {
    # config/monitoring_config.proto
    "PrometheusConfig": [
        ("enable", 1, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, None),
        ("path", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
    ],
    "MonitoringConfig": [
        ("prometheus_config", 1, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".tensorflow.serving.PrometheusConfig"),
    ],
    # servables/tensorflow/session_bundle_config.proto
    "BatchingParameters": [
        ("max_batch_size", 1, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
        ("batch_timeout_micros", 2, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
        ("thread_pool_name", 3, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.StringValue"),
        ("num_batch_threads", 4, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
        ("max_enqueued_batches", 5, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
        ("allowed_batch_sizes", 6, _F.TYPE_INT64, _F.LABEL_REPEATED, None),
        ("pad_variable_length_inputs", 7, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, None),
        ("enable_large_batch_splitting", 8, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.BoolValue"),
        ("max_execution_batch_size", 9, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
    ],
}


def _build_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)

    file_proto = descriptor_pb2.FileDescriptorProto(
        name=_FILE_NAME, package=_PACKAGE, syntax="proto3", dependency=[wrappers.name]
    )
    for message_name, fields in _MESSAGES.items():
        message = file_proto.message_type.add(name=message_name)
        for name, number, field_type, label, type_name in fields:
            field = message.field.add(name=name, number=number, type=field_type, label=label)
            if type_name:
                field.type_name = type_name
            if label == _F.LABEL_REPEATED and field_type == _F.TYPE_INT64:
                field.options.packed = True
    pool.Add(file_proto)
    return pool


_POOL = _build_pool()


def _message_class(name: str):
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.{name}"))


PrometheusConfig = _message_class("PrometheusConfig")
MonitoringConfig = _message_class("MonitoringConfig")
BatchingParameters = _message_class("BatchingParameters")

# Where TF Serving serves Prometheus metrics when the config leaves `path` empty.
DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


class TextProtoError(ValueError):
    """A text-format proto file that cannot be read or parsed.

    `log_line` is what tensorflow_model_server logs for it
    (`Error parsing text-format <full name>: <line>:<col>: <reason>`), and the
    exception message is its startup error (`Invalid protobuf file: '<path>'`).
    """

    def __init__(self, message: str, log_line: str):
        super().__init__(message)
        self.log_line = log_line


def parse_text(message_class, text: str, source: str = "<string>"):
    """Parses text-format `text` into a new `message_class` message.

    Args:
      message_class: a protobuf message class (ours or generated).
      text: the text-format content.
      source: the file name, for the error message.

    Returns:
      The parsed message.

    Raises:
      TextProtoError: the text does not parse as that message type.
    """
    message = message_class()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        full_name = message.DESCRIPTOR.full_name
        where = f"{e.GetLine()}:{e.GetColumn()}: " if e.GetLine() is not None else ""
        # ParseError's own text starts with "line:col : "; keep only the reason.
        reason = str(e).split(" : ", 1)[-1]
        raise TextProtoError(
            f"Invalid protobuf file: '{source}'",
            f"Error parsing text-format {full_name}: {where}{reason}",
        ) from e
    return message


def parse_text_file(message_class, path: str):
    """Reads and parses a text-format proto file.

    Args:
      message_class: the message class to parse into.
      path: the file to read.

    Returns:
      The parsed message.

    Raises:
      TextProtoError: the file cannot be read or does not parse.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise TextProtoError(f"Invalid protobuf file: '{path}'", f"Could not read {path}: {e}") from e
    return parse_text(message_class, text, path)
