"""The model server process: `textserve serve` / `python -m serving`.

    python -m serving --port=8500 --rest_api_port=8501 \\
        --model_name=half_plus_two --model_base_path=/abs/path/saved_model_half_plus_two_cpu
    python -m serving --port=8500 --rest_api_port=8501 --model_config_file=/abs/models.config

Takes tensorflow_model_server's flags (see `serving.flags`) and behaves like it
(TFS_CONTRACT.md §1): the flags are checked, every configured model is loaded
(and warmed up) before any port opens, then the gRPC PredictionService and
ModelService listen on 0.0.0.0:--port (and on unix:--grpc_socket_path) and the
REST API on --rest_api_port. One line, READY_MESSAGE, goes to stderr once
everything answers. SIGTERM or SIGINT stops accepting new requests, lets the
ones in flight finish, and exits 0. Startup failures print TF Serving's
`Failed to start server. Error: CODE: message` and exit non-zero.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from concurrent import futures

# Printed to stderr when every port answers (tests/serving/conftest.py waits for it).
READY_MESSAGE = "textserve model server is ready"
# How long SIGTERM waits for in-flight requests before closing connections.
SHUTDOWN_GRACE_S = 30.0
# TF Serving lifts gRPC's 4 MB default to INT32_MAX in both directions.
MAX_MESSAGE_BYTES = 2**31 - 1

log = logging.getLogger("serving.server")


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s.%(msecs)03d: %(levelname).1s %(name)s] %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )


def _startup_failure(code_name: str, message: str) -> int:
    print(f"Failed to start server. Error: {code_name}: {message}", file=sys.stderr, flush=True)
    return 1


def _version_text() -> str:
    from importlib import metadata

    import tensorflow as tf

    try:
        ours = metadata.version("textserve")
    except metadata.PackageNotFoundError:
        ours = "unknown"
    return f"TensorFlow ModelServer: textserve-{ours}\nTensorFlow Library: {tf.__version__}"


def grpc_channel_arguments(text: str) -> list[tuple[str, object]]:
    """Parses `--grpc_channel_arguments` (`k=v,k=v`; integer values passed as ints).

    Raises:
      ValueError: an entry without `=`, naming the entry.
    """
    arguments: list[tuple[str, object]] = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = entry.partition("=")
        if not sep or not key:
            raise ValueError(f"--grpc_channel_arguments entry {entry!r} is not key=value")
        try:
            arguments.append((key, int(value)))
        except ValueError:
            arguments.append((key, value))
    return arguments


def _add_health_service(server, service_names: list[str]) -> None:
    """Registers `grpc.health.v1.Health/Check` (grpcio-health-checking is not a dependency).

    The two messages are tiny, so they are declared here from a descriptor built
    in code; every name in `service_names` (and "", the whole server) is SERVING.
    """
    import grpc
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="textserve/serving/health.proto", package="grpc.health.v1", syntax="proto3"
    )
    request = file_proto.message_type.add(name="HealthCheckRequest")
    request.field.add(name="service", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    response = file_proto.message_type.add(name="HealthCheckResponse")
    status_enum = response.enum_type.add(name="ServingStatus")
    for number, name in enumerate(["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"]):
        status_enum.value.add(name=name, number=number)
    response.field.add(
        name="status",
        number=1,
        type=field.TYPE_ENUM,
        label=field.LABEL_OPTIONAL,
        type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    request_class = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest")
    )
    response_class = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse")
    )
    serving = {"", *service_names}

    def check(req, context):
        if req.service not in serving:
            context.abort(grpc.StatusCode.NOT_FOUND, "service name unknown")
        return response_class(status=1)  # SERVING

    handler = grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health",
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                check,
                request_deserializer=request_class.FromString,
                response_serializer=response_class.SerializeToString,
            ),
        },
    )
    server.add_generic_rpc_handlers((handler,))


def main(argv: list[str], prog: str = "tensorflow_model_server") -> int:
    """Runs the model server until SIGTERM/SIGINT.

    Args:
      argv: tensorflow_model_server flags (without the program name).
      prog: the program name shown in usage text.

    Returns:
      The process exit code: 0 after a clean shutdown (or --help/--version),
      1 for a usage or startup error.
    """
    from serving import config_protos, flags

    try:
        _, unknown, wants_help = flags.parse_args(argv)
        if wants_help:
            print(flags.usage(prog), end="")
            return 0
        options = flags.parse_flags(argv, prog)
    except flags.FlagError as e:
        print(f"{e}\n{flags.usage(prog)}", file=sys.stderr, end="", flush=True)
        return 1
    except config_protos.TextProtoError as e:
        print(e.log_line, file=sys.stderr)
        return _startup_failure("INVALID_ARGUMENT", str(e))
    if options.version:
        print(_version_text())
        return 0
    for argument in unknown:
        # TF Serving reports these and starts anyway.
        print(f"unknown argument: {argument}", file=sys.stderr)
    if unknown:
        print(flags.usage(prog), file=sys.stderr, end="", flush=True)

    _configure_logging()
    from serving.errors import ServingError

    try:
        options.validate()
    except ServingError as e:
        return _startup_failure(e.code.name, e.message)
    return _serve(options)


def _serve(options) -> int:
    """Loads the models, opens the ports, blocks until a stop signal, drains."""
    import grpc

    from serving import config_protos, model_manager, warmup
    from serving.dataplane import DataPlane
    from serving.errors import ServingError
    from serving.metrics import Metrics
    from serving.model_service import add_model_service
    from serving.prediction_service import add_prediction_service

    try:
        config = model_manager.initial_config(options)
        channel_arguments = grpc_channel_arguments(options.grpc_channel_arguments)
    except config_protos.TextProtoError as e:
        print(e.log_line, file=sys.stderr)
        return _startup_failure("INVALID_ARGUMENT", str(e))
    except ValueError as e:
        return _startup_failure("INVALID_ARGUMENT", str(e))
    if options.use_alts_credentials or options.ssl_config_file:
        log.warning("ALTS/SSL credentials are not supported by this server; serving plaintext gRPC")
    if options.platform_config_file:
        log.warning("--platform_config_file is accepted but not applied by this server")

    metrics = Metrics()
    try:
        manager = model_manager.ModelManager(options, metrics)
    except config_protos.TextProtoError as e:
        print(e.log_line, file=sys.stderr)
        return _startup_failure("INVALID_ARGUMENT", str(e))
    try:
        dataplane = DataPlane(manager, options, metrics)
    except ValueError as e:  # batching parameters that break TF's rules
        return _startup_failure("INVALID_ARGUMENT", str(e))
    hook = None
    if options.enable_model_warmup:

        def hook(servable):
            warmup.run_warmup(
                servable, dataplane.replay_warmup_record, options.num_request_iterations_for_warmup, metrics
            )

    try:
        manager.start(config, warmup=hook)
    except ServingError as e:
        manager.stop()
        dataplane.close()
        return _startup_failure(e.code.name, e.message)

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max(1, options.grpc_max_threads), thread_name_prefix="grpc"),
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            *channel_arguments,
        ],
    )
    add_prediction_service(server, manager, dataplane, metrics)
    add_model_service(server, manager)
    if options.enable_grpc_healthcheck_service:
        _add_health_service(
            server,
            [
                "ModelService",
                "PredictionService",
                "tensorflow.serving.ModelService",
                "tensorflow.serving.PredictionService",
            ],
        )
    addresses = []
    if options.port:
        addresses.append(f"0.0.0.0:{options.port}")
    if options.grpc_socket_path:
        addresses.append(f"unix:{options.grpc_socket_path}")
    for address in addresses:
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError:
            bound = 0
        if not bound:
            manager.stop()
            dataplane.close()
            return _startup_failure(
                "UNAVAILABLE", f"Failed to BuildAndStart gRPC server: cannot listen on {address}"
            )
    server.start()
    for address in addresses:
        log.info("Running gRPC ModelServer at %s ...", address)

    rest_server = None
    if options.rest_api_port:
        if options.rest_api_port == options.port:
            log.error(
                "server_options.http_port cannot be same as grpc_port. Please use a different "
                "port for HTTP/REST API. Skipped exporting HTTP/REST API."
            )
        else:
            try:
                rest_server = _start_rest(dataplane, manager, options, metrics)
            except OSError as e:
                server.stop(0)
                manager.stop()
                dataplane.close()
                return _startup_failure(
                    "UNAVAILABLE", f"Failed to start HTTP Server at localhost:{options.rest_api_port}: {e}"
                )
            if rest_server is not None:
                log.info("Exporting HTTP/REST API at:localhost:%d ...", options.rest_api_port)

    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum, _frame):
        received.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    rest_text = f"localhost:{options.rest_api_port}" if rest_server is not None else "off"
    print(
        f"{READY_MESSAGE}: gRPC at {', '.join(addresses)}, REST at {rest_text}", file=sys.stderr, flush=True
    )
    while not stop.wait(1.0):
        pass

    log.info(
        "Received %s: no new requests; waiting up to %.0f s for the ones in flight",
        signal.Signals(received[0]).name,
        SHUTDOWN_GRACE_S,
    )
    grpc_done = server.stop(SHUTDOWN_GRACE_S)
    if rest_server is not None:
        rest_server.stop(SHUTDOWN_GRACE_S)
    grpc_done.wait()
    dataplane.close()
    manager.stop()
    log.info("Server stopped")
    return 0


def _start_rest(dataplane, manager, options, metrics):
    """Starts owner C's REST server; None (logged) while that module is absent."""
    try:
        from serving.rest import start_rest_server
    except ModuleNotFoundError as e:
        if e.name != "serving.rest":
            raise
        log.error("The REST API module serving/rest.py is missing; serving gRPC only")
        return None
    return start_rest_server(dataplane, manager, options, metrics)
