"""tensorflow_model_server's command line, parsed into one frozen `ServerOptions`.

    python -m serving --port=8500 --rest_api_port=8501 \\
        --model_name=bbc_news --model_base_path=/abs/runs/bbc/export

The syntax is TensorFlow's flag syntax, not argparse's (TFS_CONTRACT.md §1):
`--name=value` only; a boolean may also be written bare (`--enable_batching`)
and otherwise takes exactly `=true` or `=false`. A malformed value for a known
flag is a usage error (usage printed, non-zero exit); an argument that names no
flag is reported as "unknown argument" and the server still starts. Every flag
tensorflow_model_server defines is accepted with its default, including the
ones this server treats as no-ops (marked "accepted, no effect here" below).

The files named by `--batching_parameters_file` and `--monitoring_config_file`
are parsed here too, so the rest of the server receives one finished object.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from serving import config_protos
from serving.errors import invalid_argument

_CPUS = os.cpu_count() or 1
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class _Flag:
    name: str
    kind: str  # "bool" | "int32" | "int64" | "float" | "string"
    default: Any
    help: str


# Every flag of tensorflow_model_server (main.cc), defaults from server.h.
FLAGS: tuple[_Flag, ...] = (
    _Flag("port", "int32", 8500, "TCP port for the gRPC API (0: no TCP gRPC; then --grpc_socket_path is needed)"),
    _Flag("grpc_socket_path", "string", "", "also serve gRPC on this UNIX domain socket"),
    _Flag("grpc_channel_arguments", "string", "", "gRPC server arguments as comma-separated key=value pairs"),
    _Flag("rest_api_port", "int32", 0, "TCP port for the HTTP/REST API (0: no REST API)"),
    _Flag("rest_api_num_threads", "int32", 4 * _CPUS, "number of threads running REST inference"),
    _Flag("rest_api_timeout_in_ms", "int32", 30000, "timeout of one REST request in milliseconds"),
    _Flag("rest_api_enable_cors_support", "bool", False, "answer REST requests with permissive CORS headers"),
    _Flag("enable_batching", "bool", False, "batch concurrent requests on the server"),
    _Flag("allow_version_labels_for_unavailable_models", "bool", False,
          "let new version labels point at versions that are not loaded yet"),
    _Flag("batching_parameters_file", "string", "", "text-format BatchingParameters (needs --enable_batching)"),
    _Flag("enable_per_model_batching_parameters", "bool", False,
          "read batching_params.pbtxt from each model version directory"),
    _Flag("model_config_file", "string", "", "text-format ModelServerConfig; overrides --model_name/--model_base_path"),
    _Flag("model_config_file_poll_wait_seconds", "int32", 0,
          "re-read --model_config_file every this many seconds (0: read once)"),
    _Flag("model_name", "string", "default", "name of the model in single-model mode"),
    _Flag("model_base_path", "string", "", "absolute path holding the model's numbered version directories"),
    _Flag("num_load_threads", "int32", 0, "threads loading versions (accepted, no effect here)"),
    _Flag("num_unload_threads", "int32", 0, "threads unloading versions (accepted, no effect here)"),
    _Flag("max_num_load_retries", "int32", 5, "how often a failed version load is retried"),
    _Flag("load_retry_interval_micros", "int64", 60 * 1000 * 1000, "wait between load retries in microseconds"),
    _Flag("file_system_poll_wait_seconds", "int32", 1,
          "rescan base paths for new versions every this many seconds (0: once at start)"),
    _Flag("flush_filesystem_caches", "bool", True, "flush file system caches after loading (accepted, no effect here)"),
    _Flag("tensorflow_session_parallelism", "int64", 0, "threads of one TensorFlow session (0: automatic)"),
    _Flag("tensorflow_intra_op_parallelism", "int64", 0, "TensorFlow intra-op threads (0: automatic)"),
    _Flag("tensorflow_inter_op_parallelism", "int64", 0, "TensorFlow inter-op threads (0: automatic)"),
    _Flag("use_alts_credentials", "bool", False, "use ALTS credentials for gRPC (not supported here)"),
    _Flag("ssl_config_file", "string", "", "text-format SSLConfig for gRPC (not supported here)"),
    _Flag("saved_model_tags", "string", "serve", "comma-separated tag set of the MetaGraph to load"),
    _Flag("platform_config_file", "string", "", "text-format PlatformConfigMap (accepted, no effect here)"),
    _Flag("per_process_gpu_memory_fraction", "float", 0.0, "fraction of GPU memory per process (0: automatic)"),
    _Flag("tensorflow_session_config_file", "string", "", "text-format tensorflow.ConfigProto for the sessions"),
    _Flag("version", "bool", False, "print version information and exit"),
    _Flag("monitoring_config_file", "string", "", "text-format MonitoringConfig (Prometheus endpoint)"),
    _Flag("remove_unused_fields_from_bundle_metagraph", "bool", True,
          "drop unused MetaGraph fields after loading (accepted, no effect here)"),
    _Flag("prefer_tflite_model", "bool", False, "load model.tflite when present (accepted, no effect here)"),
    _Flag("num_tflite_pools", "int32", _CPUS, "TFLite interpreter pools (accepted, no effect here)"),
    _Flag("num_tflite_interpreters_per_pool", "int32", 1, "TFLite interpreters per pool (accepted, no effect here)"),
    _Flag("enable_signature_method_name_check", "bool", False,
          "require classify/regress/predict method names on signatures"),
    _Flag("xla_cpu_compilation_enabled", "bool", False, "XLA on CPU (accepted, no effect here)"),
    _Flag("xla_gpu_compilation_enabled", "bool", False, "XLA on GPU (accepted, no effect here)"),
    _Flag("enable_profiler", "bool", True, "profiler service on the gRPC port (accepted, no effect here)"),
    _Flag("thread_pool_factory_config_file", "string", "", "thread pool factory config (accepted, no effect here)"),
    _Flag("enable_model_warmup", "bool", True, "replay assets.extra/tf_serving_warmup_requests before serving"),
    _Flag("num_request_iterations_for_warmup", "int32", 0, "replays of each warmup record (0: once)"),
    _Flag("enable_serialization_as_tensor_content", "bool", False,
          "write gRPC output tensors into tensor_content instead of typed fields"),
    _Flag("mixed_precision", "string", "", "mixed precision mode (accepted, no effect here)"),
    _Flag("skip_initialize_tpu", "bool", False, "skip TPU initialization (accepted, no effect here)"),
    _Flag("enable_grpc_healthcheck_service", "bool", False, "register the standard gRPC health service"),
    _Flag("grpc_max_threads", "int32", 4 * _CPUS, "maximum threads handling gRPC requests"),
)
_BY_NAME = {flag.name: flag for flag in FLAGS}


@dataclass(frozen=True)
class ServerOptions:
    """Every tensorflow_model_server flag (same names), plus the parsed config files.

    Built once by `parse_flags` in the entry point and passed down; no other
    module reads the command line. `batching_parameters` is None unless
    `--enable_batching` (defaults filled in by the batching owner when the file
    is absent); `monitoring_config` is an empty MonitoringConfig without a file.
    `unknown_arguments` lists what named no flag (reported, then ignored).
    """

    port: int
    grpc_socket_path: str
    grpc_channel_arguments: str
    rest_api_port: int
    rest_api_num_threads: int
    rest_api_timeout_in_ms: int
    rest_api_enable_cors_support: bool
    enable_batching: bool
    allow_version_labels_for_unavailable_models: bool
    batching_parameters_file: str
    enable_per_model_batching_parameters: bool
    model_config_file: str
    model_config_file_poll_wait_seconds: int
    model_name: str
    model_base_path: str
    num_load_threads: int
    num_unload_threads: int
    max_num_load_retries: int
    load_retry_interval_micros: int
    file_system_poll_wait_seconds: int
    flush_filesystem_caches: bool
    tensorflow_session_parallelism: int
    tensorflow_intra_op_parallelism: int
    tensorflow_inter_op_parallelism: int
    use_alts_credentials: bool
    ssl_config_file: str
    saved_model_tags: str
    platform_config_file: str
    per_process_gpu_memory_fraction: float
    tensorflow_session_config_file: str
    version: bool
    monitoring_config_file: str
    remove_unused_fields_from_bundle_metagraph: bool
    prefer_tflite_model: bool
    num_tflite_pools: int
    num_tflite_interpreters_per_pool: int
    enable_signature_method_name_check: bool
    xla_cpu_compilation_enabled: bool
    xla_gpu_compilation_enabled: bool
    enable_profiler: bool
    thread_pool_factory_config_file: str
    enable_model_warmup: bool
    num_request_iterations_for_warmup: int
    enable_serialization_as_tensor_content: bool
    mixed_precision: str
    skip_initialize_tpu: bool
    enable_grpc_healthcheck_service: bool
    grpc_max_threads: int
    # Parsed from the files above (not flags).
    batching_parameters: Any = None  # config_protos.BatchingParameters | None
    monitoring_config: Any = None  # config_protos.MonitoringConfig
    unknown_arguments: tuple[str, ...] = ()

    @property
    def tag_set(self) -> tuple[str, ...]:
        """`--saved_model_tags` split on commas, empty entries dropped."""
        return tuple(tag for tag in self.saved_model_tags.split(",") if tag)

    @property
    def prometheus_enabled(self) -> bool:
        return bool(self.monitoring_config and self.monitoring_config.prometheus_config.enable)

    @property
    def prometheus_path(self) -> str:
        """The metrics URL path (TF Serving's default when the config leaves it empty)."""
        path = self.monitoring_config.prometheus_config.path if self.monitoring_config else ""
        return path or config_protos.DEFAULT_PROMETHEUS_PATH

    def validate(self) -> None:
        """Checks the cross-flag rules tensorflow_model_server checks before starting.

        Raises:
          ServingError: INVALID_ARGUMENT with TF Serving's wording.
        """
        if not self.model_base_path and not self.model_config_file:
            raise invalid_argument(
                "Both server_options.model_base_path and server_options.model_config_file are empty!"
            )
        if self.port == 0 and not self.grpc_socket_path:
            raise invalid_argument(
                "At least one of server_options.grpc_port or server_options.grpc_socket_path must be set."
            )
        if self.tensorflow_intra_op_parallelism > 0 and self.tensorflow_inter_op_parallelism > 0 \
                and self.tensorflow_session_parallelism > 0:
            raise invalid_argument(
                "Either configure server_options.tensorflow_session_parallelism or "
                "(server_options.tensorflow_intra_op_parallelism, "
                "server_options.tensorflow_inter_op_parallelism). Setting both is not allowed."
            )
        if self.batching_parameters_file and not self.enable_batching:
            raise invalid_argument(
                "server_options.batching_parameters_file is set without setting "
                "server_options.enable_batching to true."
            )
        if self.use_alts_credentials and self.ssl_config_file:
            raise invalid_argument(
                "Either use_alts_credentials must be false or ssl_config_file must be empty."
            )


class FlagError(ValueError):
    """A known flag with a malformed value: the caller prints usage and exits non-zero."""


def usage(prog: str) -> str:
    """The usage text: one line per flag with its default, type and meaning."""
    lines = [f"usage: {prog}", "Flags:"]
    for flag in FLAGS:
        default = _format_default(flag)
        lines.append(f"\t--{flag.name}={default}".ljust(40) + f"\t{flag.kind}\t{flag.help}")
    return "\n".join(lines) + "\n"


def _format_default(flag: _Flag) -> str:
    if flag.kind == "bool":
        return "true" if flag.default else "false"
    if flag.kind == "string":
        return f'"{flag.default}"'
    return str(flag.default)


def _parse_value(flag: _Flag, raw: str | None) -> Any:
    """Converts one flag's text (None: written bare) to its typed value."""
    if flag.kind == "bool":
        if raw is None or raw == "true":
            return True
        if raw == "false":
            return False
        raise FlagError(f"Couldn't interpret value ={raw} for flag {flag.name}.")
    if raw is None:
        raise FlagError(f"Flag --{flag.name} needs a value: write --{flag.name}=VALUE.")
    if flag.kind in ("int32", "int64"):
        low, high = _INT32 if flag.kind == "int32" else _INT64
        try:
            value = int(raw.strip(), 10)
        except ValueError:
            raise FlagError(f"Couldn't interpret value ={raw} for flag {flag.name}.") from None
        if not low <= value <= high:
            raise FlagError(f"Value ={raw} for flag {flag.name} does not fit {flag.kind}.")
        return value
    if flag.kind == "float":
        try:
            return float(raw)
        except ValueError:
            raise FlagError(f"Couldn't interpret value ={raw} for flag {flag.name}.") from None
    return raw


def parse_args(argv: Sequence[str]) -> tuple[dict[str, Any], list[str], bool]:
    """Parses TF-syntax flags without reading any file.

    Args:
      argv: the arguments after the program name.

    Returns:
      (values by flag name with defaults filled in, unknown arguments, whether --help was given).

    Raises:
      FlagError: a known flag has a malformed value.
    """
    values = {flag.name: flag.default for flag in FLAGS}
    unknown: list[str] = []
    wants_help = False
    for arg in argv:
        if arg in ("--help", "-help", "--helpfull"):
            wants_help = True
            continue
        flag = None
        raw: str | None = None
        if arg.startswith("--"):
            name, sep, rest = arg[2:].partition("=")
            flag = _BY_NAME.get(name)
            raw = rest if sep else None
        if flag is None:
            unknown.append(arg)
            continue
        values[flag.name] = _parse_value(flag, raw)
    return values, unknown, wants_help


def parse_flags(argv: Sequence[str], prog: str = "tensorflow_model_server") -> ServerOptions:
    """Builds `ServerOptions` from tensorflow_model_server flags.

    Reads `--batching_parameters_file` (only with `--enable_batching`) and
    `--monitoring_config_file`. Cross-flag rules are checked by
    `ServerOptions.validate`, which the server calls before starting.

    Args:
      argv: the arguments after the program name.
      prog: program name for messages.

    Returns:
      The frozen options.

    Raises:
      FlagError: a known flag has a malformed value (print `usage(prog)`, exit non-zero).
      config_protos.TextProtoError: a config file cannot be read or parsed.
    """
    values, unknown, _ = parse_args(argv)
    batching = None
    if values["enable_batching"]:
        batching = config_protos.BatchingParameters()
        if values["batching_parameters_file"]:
            batching = config_protos.parse_text_file(
                config_protos.BatchingParameters, values["batching_parameters_file"]
            )
    monitoring = config_protos.MonitoringConfig()
    if values["monitoring_config_file"]:
        monitoring = config_protos.parse_text_file(
            config_protos.MonitoringConfig, values["monitoring_config_file"]
        )
    return ServerOptions(
        **values,
        batching_parameters=batching,
        monitoring_config=monitoring,
        unknown_arguments=tuple(unknown),
    )


def options_for_tests(**overrides: Any) -> ServerOptions:
    """Default options with some flags replaced (for building a manager in-process)."""
    values = {flag.name: flag.default for flag in FLAGS}
    unknown = set(overrides) - set(values) - {f.name for f in dataclasses.fields(ServerOptions)}
    if unknown:
        raise ValueError(f"options_for_tests: no such option(s): {sorted(unknown)}")
    values.update(overrides)
    values.setdefault("monitoring_config", config_protos.MonitoringConfig())
    return ServerOptions(**values)
