"""The model server process: `textserve serve` / `python -m serving`.

    python -m serving --port=8500 --rest_api_port=8501 \\
        --model_name=half_plus_two --model_base_path=/abs/path/saved_model_half_plus_two_cpu
    python -m serving --port=8500 --rest_api_port=8501 --model_config_file=/abs/models.config

Takes tensorflow_model_server's flags (see `serving.flags`) and behaves like it
(TFS_CONTRACT.md §1): the flags are checked, every configured model is loaded
(and warmed up) before any port opens, then the gRPC PredictionService,
ModelService (and, with --enable_grpc_healthcheck_service, the standard
`grpc.health.v1.Health`) listen on 0.0.0.0:--port (and on
unix:--grpc_socket_path) and the REST API on [::]:--rest_api_port. One line,
READY_MESSAGE, goes to stderr once everything answers. Startup failures print
TF Serving's `Failed to start server. Error: CODE: message` and exit non-zero.

Both front ends run on one asyncio event loop (uvloop when installed: the
`fast` extra): `grpc.aio` for gRPC, aiohttp for REST. A request holds no thread
while it waits for its batch; session runs happen on the batch threads (or on
worker threads without batching).

SIGTERM or SIGINT drains: health turns NOT_SERVING, new gRPC predictions are
answered UNAVAILABLE until clients stop sending them (at most 1 s), the listening
sockets close, gRPC sends GOAWAY, REST answers carry `Connection: close`, the requests
in flight finish within `--drain_grace_period_s` (20 s by default, so that with
Kubernetes' 5 s preStop sleep it ends inside the default 30 s
terminationGracePeriodSeconds), and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time

# Printed to stderr when every port answers (tests/serving/conftest.py waits for it).
READY_MESSAGE = "textserve model server is ready"
# TF Serving lifts gRPC's 4 MB default to INT32_MAX in both directions.
MAX_MESSAGE_BYTES = 2**31 - 1
# Calls gRPC's core may hold before the asyncio server has taken them. Past its
# defaults (1,000, hard limit 3,000) the core drops calls with a bare CANCELLED
# that the server never sees: a burst of 10,000 calls lost more than half that way
# (tests/serving/test_dataplane_faults.py). With this bound every call reaches a
# handler, which answers it at once (UNAVAILABLE when the batch queue is full),
# so the calls held here stay few and short-lived.
MAX_PENDING_GRPC_CALLS = 1 << 16
# The drain refuses new gRPC predictions until none has arrived for this long, at
# most for the second bound, before it stops the gRPC server (see _drain_grpc).
_QUIET_BEFORE_STOP_S = 0.1
_MAX_REFUSING_S = 1.0

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


# The names the health service reports SERVING ("" is the whole server), as TF Serving registers them.
HEALTH_SERVICE_NAMES = (
    "",
    "ModelService",
    "PredictionService",
    "tensorflow.serving.ModelService",
    "tensorflow.serving.PredictionService",
)


async def _add_health_service(server):
    """Registers grpcio-health-checking's `grpc.health.v1.Health`, every service SERVING."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    servicer = health.aio.HealthServicer()
    for name in HEALTH_SERVICE_NAMES:
        await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed (faster I/O), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


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
    """Loads the models, then runs both front ends on one event loop until a stop signal."""
    from serving import config_protos, model_manager, warmup
    from serving.dataplane import DataPlane
    from serving.errors import ServingError
    from serving.metrics import Metrics
    from serving.request_log import open_request_log

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

    # The event loop holds the GIL while it parses and encodes; a batch thread whose session run
    # has ended waits for it before it can answer and take the next batch, and the model idles
    # meanwhile. At Python's 5 ms that wait capped TF-IDF REST at c=64 28% lower than at 1 ms
    # (benchmarks/README.md, "Choosing the GIL switch interval").
    sys.setswitchinterval(options.python_switch_interval_micros / 1e6)
    metrics = Metrics()
    try:
        manager = model_manager.ModelManager(options, metrics)
    except config_protos.TextProtoError as e:
        print(e.log_line, file=sys.stderr)
        return _startup_failure("INVALID_ARGUMENT", str(e))
    try:
        request_log = open_request_log(options, metrics)
    except (ValueError, OSError) as e:
        return _startup_failure("INVALID_ARGUMENT", str(e))
    try:
        dataplane = DataPlane(manager, options, metrics, request_log)
    except ValueError as e:  # batching parameters that break TF's rules
        if request_log is not None:
            request_log.close()
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
        if request_log is not None:
            request_log.close()
        return _startup_failure(e.code.name, e.message)

    loop = _new_event_loop()
    try:
        return loop.run_until_complete(
            _run_front_ends(options, manager, dataplane, metrics, channel_arguments)
        )
    finally:
        dataplane.close()
        if request_log is not None:
            request_log.close()  # after the drain: every answered call is written
        manager.stop()
        loop.close()


async def _drain_grpc(server, predictions, grace: float) -> None:
    """Refuses new predictions until clients stop sending them, then stops within `grace`.

    Calls already running finish either way; the first step only keeps grpc core
    from cancelling calls that arrive as `stop()` begins (see `refuse_new_calls`).
    """
    start = time.monotonic()
    predictions.refuse_new_calls()
    await predictions.wait_until_no_calls_arrive(_QUIET_BEFORE_STOP_S, min(grace, _MAX_REFUSING_S))
    await server.stop(max(0.0, grace - (time.monotonic() - start)))


async def _run_front_ends(options, manager, dataplane, metrics, channel_arguments) -> int:
    """Opens gRPC and REST on the running loop, waits for SIGTERM/SIGINT, drains."""
    import grpc

    from serving.memory import InputBudget
    from serving.model_service import add_model_service
    from serving.ports import busy_port_message, port_is_free
    from serving.prediction_service import add_prediction_service

    budget = InputBudget(options.max_request_input_bytes, options.max_inflight_input_bytes)
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.server.max_pending_requests", MAX_PENDING_GRPC_CALLS),
            ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_GRPC_CALLS),
            # gRPC sets SO_REUSEPORT by default, so a second server on a busy port would
            # start and share it silently; refuse unless sharing is asked for.
            ("grpc.so_reuseport", 1 if options.grpc_allow_port_sharing else 0),
            *channel_arguments,  # after ours: the user's values win
        ],
    )
    predictions = add_prediction_service(server, manager, dataplane, metrics, budget)
    add_model_service(server, manager)
    health = await _add_health_service(server) if options.enable_grpc_healthcheck_service else None
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
            reason = ""
            if address.startswith("0.0.0.0:") and not port_is_free(options.port):
                reason = (
                    ": "
                    + busy_port_message(options.port, "the gRPC")
                    + (" (--grpc_allow_port_sharing=true lets two servers share it)")
                )
            return _startup_failure(
                "UNAVAILABLE", f"Failed to BuildAndStart gRPC server: cannot listen on {address}{reason}"
            )
    await server.start()
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
            from serving.rest import RestServer

            rest_server = RestServer(dataplane, manager, options, metrics, budget=budget)
            try:
                await rest_server.open()
            except OSError as e:
                await server.stop(0)
                why = str(e)
                if not port_is_free(options.rest_api_port):
                    why = busy_port_message(options.rest_api_port, "the REST")
                return _startup_failure(
                    "UNAVAILABLE", f"Failed to start HTTP Server at localhost:{options.rest_api_port}: {why}"
                )
            log.info("Exporting HTTP/REST API at:localhost:%d ...", options.rest_api_port)

    stop = asyncio.Event()
    received: list[int] = []
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        received.append(signum)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    rest_text = f"localhost:{options.rest_api_port}" if rest_server is not None else "off"
    print(
        f"{READY_MESSAGE}: gRPC at {', '.join(addresses)}, REST at {rest_text}", file=sys.stderr, flush=True
    )
    await stop.wait()

    grace = float(options.drain_grace_period_s)
    log.info(
        "Received %s: no new requests; waiting up to %.0f s for the ones in flight",
        signal.Signals(received[0]).name,
        grace,
    )
    if health is not None:
        await health.enter_graceful_shutdown()  # NOT_SERVING: load balancers stop sending
    drains = [_drain_grpc(server, predictions, grace)]
    if rest_server is not None:
        drains.append(rest_server.drain(grace))
    await asyncio.gather(*drains)
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError, RuntimeError):
            loop.remove_signal_handler(signum)
    log.info("Server stopped")
    return 0
