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


def flag(kind: str, default: Any, help: str) -> Any:
    """Declares one `ServerOptions` field as a command-line flag of `kind` (see `FLAGS`)."""
    return dataclasses.field(default=default, metadata={"kind": kind, "help": help})


@dataclass(frozen=True)
class ServerOptions:
    """Every tensorflow_model_server flag (same names), plus the parsed config files.

    This class is the one table of flags: each field declared with `flag()` is
    a flag of that name, kind, default and help text (`FLAGS` is derived from
    it). Flags of tensorflow_model_server come first (main.cc, defaults from
    server.h); textserve's own flags follow in their own block.

    Built once by `parse_flags` in the entry point and passed down; no other
    module reads the command line. `batching_parameters` is None unless
    `--enable_batching` (defaults filled in by the batching owner when the file
    is absent); `monitoring_config` is an empty MonitoringConfig without a file.
    `unknown_arguments` lists what named no flag (reported, then ignored).
    """

    port: int = flag(
        "int32", 8500, "TCP port for the gRPC API (0: no TCP gRPC; then --grpc_socket_path is needed)"
    )
    grpc_socket_path: str = flag("string", "", "also serve gRPC on this UNIX domain socket")
    grpc_channel_arguments: str = flag(
        "string", "", "gRPC server arguments as comma-separated key=value pairs"
    )
    rest_api_port: int = flag("int32", 0, "TCP port for the HTTP/REST API (0: no REST API)")
    rest_api_num_threads: int = flag(
        "int32",
        4 * _CPUS,
        "worker threads for unbatched session runs and large REST bodies (TF Serving: threads serving REST "
        "requests; here a request waiting for its batch holds no thread, so this does not cap batching)",
    )
    rest_api_timeout_in_ms: int = flag("int32", 30000, "timeout of one REST request in milliseconds")
    rest_api_enable_cors_support: bool = flag(
        "bool", False, "answer REST requests with permissive CORS headers"
    )
    enable_batching: bool = flag("bool", False, "batch concurrent requests on the server")
    allow_version_labels_for_unavailable_models: bool = flag(
        "bool", False, "let new version labels point at versions that are not loaded yet"
    )
    batching_parameters_file: str = flag(
        "string", "", "text-format BatchingParameters (needs --enable_batching)"
    )
    enable_per_model_batching_parameters: bool = flag(
        "bool", False, "read batching_params.pbtxt from each model version directory"
    )
    model_config_file: str = flag(
        "string", "", "text-format ModelServerConfig; overrides --model_name/--model_base_path"
    )
    model_config_file_poll_wait_seconds: int = flag(
        "int32", 0, "re-read --model_config_file every this many seconds (0: read once)"
    )
    model_name: str = flag("string", "default", "name of the model in single-model mode")
    model_base_path: str = flag(
        "string", "", "absolute path holding the model's numbered version directories"
    )
    num_load_threads: int = flag("int32", 0, "threads loading versions (accepted, no effect here)")
    num_unload_threads: int = flag("int32", 0, "threads unloading versions (accepted, no effect here)")
    max_num_load_retries: int = flag("int32", 5, "how often a failed version load is retried")
    load_retry_interval_micros: int = flag(
        "int64", 60 * 1000 * 1000, "wait between load retries in microseconds"
    )
    file_system_poll_wait_seconds: int = flag(
        "int32", 1, "rescan base paths for new versions every this many seconds (0: once at start)"
    )
    flush_filesystem_caches: bool = flag(
        "bool", True, "flush file system caches after loading (accepted, no effect here)"
    )
    tensorflow_session_parallelism: int = flag("int64", 0, "threads of one TensorFlow session (0: automatic)")
    tensorflow_intra_op_parallelism: int = flag("int64", 0, "TensorFlow intra-op threads (0: automatic)")
    tensorflow_inter_op_parallelism: int = flag("int64", 0, "TensorFlow inter-op threads (0: automatic)")
    use_alts_credentials: bool = flag("bool", False, "use ALTS credentials for gRPC (not supported here)")
    ssl_config_file: str = flag("string", "", "text-format SSLConfig for gRPC (not supported here)")
    saved_model_tags: str = flag("string", "serve", "comma-separated tag set of the MetaGraph to load")
    platform_config_file: str = flag("string", "", "text-format PlatformConfigMap (accepted, no effect here)")
    per_process_gpu_memory_fraction: float = flag(
        "float", 0.0, "fraction of GPU memory per process (0: automatic)"
    )
    tensorflow_session_config_file: str = flag(
        "string", "", "text-format tensorflow.ConfigProto for the sessions"
    )
    version: bool = flag("bool", False, "print version information and exit")
    monitoring_config_file: str = flag("string", "", "text-format MonitoringConfig (Prometheus endpoint)")
    remove_unused_fields_from_bundle_metagraph: bool = flag(
        "bool", True, "drop unused MetaGraph fields after loading (accepted, no effect here)"
    )
    prefer_tflite_model: bool = flag(
        "bool", False, "load model.tflite when present (accepted, no effect here)"
    )
    num_tflite_pools: int = flag("int32", _CPUS, "TFLite interpreter pools (accepted, no effect here)")
    num_tflite_interpreters_per_pool: int = flag(
        "int32", 1, "TFLite interpreters per pool (accepted, no effect here)"
    )
    enable_signature_method_name_check: bool = flag(
        "bool", False, "require classify/regress/predict method names on signatures"
    )
    xla_cpu_compilation_enabled: bool = flag("bool", False, "XLA on CPU (accepted, no effect here)")
    xla_gpu_compilation_enabled: bool = flag("bool", False, "XLA on GPU (accepted, no effect here)")
    enable_profiler: bool = flag("bool", True, "profiler service on the gRPC port (accepted, no effect here)")
    thread_pool_factory_config_file: str = flag(
        "string", "", "thread pool factory config (accepted, no effect here)"
    )
    enable_model_warmup: bool = flag(
        "bool", True, "replay assets.extra/tf_serving_warmup_requests before serving"
    )
    num_request_iterations_for_warmup: int = flag("int32", 0, "replays of each warmup record (0: once)")
    enable_serialization_as_tensor_content: bool = flag(
        "bool", False, "write gRPC output tensors into tensor_content instead of typed fields"
    )
    mixed_precision: str = flag("string", "", "mixed precision mode (accepted, no effect here)")
    skip_initialize_tpu: bool = flag("bool", False, "skip TPU initialization (accepted, no effect here)")
    enable_grpc_healthcheck_service: bool = flag("bool", False, "register the standard gRPC health service")
    grpc_max_threads: int = flag(
        "int32",
        4 * _CPUS,
        "worker threads for unbatched session runs and large gRPC messages, shared with REST's (TF Serving: "
        "threads serving gRPC; here requests are served on one event loop and do not cap batching)",
    )

    # --- textserve's own flags (not in tensorflow_model_server) -----------------
    # Front ends, data plane and shutdown:
    batching_idle_fast_path: bool = flag(
        "bool",
        True,
        "run a batch at once when its model is idle and it holds as many rows as the model's last batch, "
        "instead of waiting batch_timeout_micros (a lone request after a lone one never waits)",
    )
    python_switch_interval_micros: int = flag(
        "int32",
        1000,
        "how long one thread may hold Python's GIL while another waits for it (sys.setswitchinterval; "
        "Python's own default is 5000): a batch thread back from the model gets it sooner",
    )
    max_rows_per_session_run: int = flag(
        "int64", 1024, "without batching, run larger requests in slices of this many rows (0: no limit)"
    )
    max_request_input_bytes: int = flag(
        "int64",
        256 << 20,
        "decoded-input budget of one request in bytes (0: none; over it: RESOURCE_EXHAUSTED/429)",
    )
    max_inflight_input_bytes: int = flag(
        "int64",
        768 << 20,
        "decoded-input budget of all requests in flight in bytes (0: none; fits a 2 GiB pod)",
    )
    drain_grace_period_s: int = flag(
        "int32",
        20,
        "on SIGTERM, seconds to let in-flight requests finish (keep below terminationGracePeriodSeconds)",
    )
    rest_api_idle_timeout_s: int = flag(
        "int32", 75, "close a kept-alive REST connection idle this many seconds"
    )
    rest_api_playground: bool = flag(
        "bool", False, "serve a page to try the models at / on the REST port (off: / is a plain 404)"
    )
    request_log_sample_rate: float = flag(
        "float", 0.0, "fraction of Predict/Classify/Regress calls written to --request_log_file (0: off)"
    )
    request_log_file: str = flag(
        "string", "", "JSON Lines file the sampled request log is appended to (-: standard output)"
    )
    request_log_include_text: bool = flag(
        "bool", False, "also log the inputs themselves (default: only their fingerprints and sizes)"
    )
    rest_api_header_timeout_s: float = flag(
        "float",
        10.0,
        "close a REST connection whose request line and headers take longer than this many seconds to "
        "arrive after their first byte, so slow clients cannot hold connections (0: no limit; not in TF Serving)",
    )
    grpc_allow_port_sharing: bool = flag(
        "bool",
        False,
        "let a second server bind the same gRPC port (SO_REUSEPORT; TF Serving allows it silently, "
        "tensorflow/serving#1288); off: a busy port stops start-up naming the process holding it",
    )

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
        if (
            self.tensorflow_intra_op_parallelism > 0
            and self.tensorflow_inter_op_parallelism > 0
            and self.tensorflow_session_parallelism > 0
        ):
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
        if self.python_switch_interval_micros <= 0:
            raise invalid_argument(
                f"--python_switch_interval_micros must be positive, received {self.python_switch_interval_micros}"
            )
        if self.use_alts_credentials and self.ssl_config_file:
            raise invalid_argument(
                "Either use_alts_credentials must be false or ssl_config_file must be empty."
            )


# Every flag, in declaration order (the order of `--help`).
FLAGS: tuple[_Flag, ...] = tuple(
    _Flag(f.name, f.metadata["kind"], f.default, f.metadata["help"])
    for f in dataclasses.fields(ServerOptions)
    if "kind" in f.metadata
)
_BY_NAME = {flag.name: flag for flag in FLAGS}


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
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ServerOptions)}
    if unknown:
        raise ValueError(f"options_for_tests: no such option(s): {sorted(unknown)}")
    overrides.setdefault("monitoring_config", config_protos.MonitoringConfig())
    return ServerOptions(**overrides)
