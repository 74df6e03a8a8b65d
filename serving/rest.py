"""TF Serving's REST API on aiohttp (TFS_CONTRACT.md §3, §4, §7).

Routes (matched case-insensitively on the path as sent; model names and labels
are percent-decoded, versions are digits):

    GET  /v1/models/{m}[/versions/{n}|/labels/{l}]            model status
    GET  /v1/models/{m}[/versions/{n}|/labels/{l}]/metadata   model metadata
    POST /v1/models/{m}[/versions/{n}|/labels/{l}]:predict|:classify|:regress
    GET  <prometheus path>                                    metrics (when enabled)
    GET  /openapi.json                                        OpenAPI document (textserve)
    GET  / and /playground/*                                  playground (--rest_api_playground)

Anything else under `/v1/` answers 400 `Malformed request: METHOD PATH`; paths
outside `/v1/` get a plain 404. Every `/v1/` answer is `application/json`,
errors are `{"error": "..."}` with the HTTP status `serving.errors` maps the
canonical code to.

Concurrency: the server runs on the process's one event loop, beside the gRPC
server. A request is read, parsed (bodies above 1 MiB on a worker thread),
planned by the `DataPlane`, and then *awaits* its run: with batching its rows
join a batch and no thread is held while it waits. Each inference request is
bounded by `--rest_api_timeout_in_ms` (504 DEADLINE_EXCEEDED, and its rows are
not run once the deadline passes); a client that disconnects takes its queued
rows with it.

Memory: a body (after gunzip) above `DEFAULT_MAX_BODY_BYTES` (256 MiB, or
`max_body_bytes`) is answered 413 before it is parsed; a body whose decoded
size would pass the input budget (`serving.memory`) is answered 429.

Connections: REST listens on `::` (dual stack, as TF Serving does), or on
0.0.0.0 where the host has no IPv6. Idle keep-alive connections close after
`--rest_api_idle_timeout_s`. On shutdown (`drain`) the listening socket
closes, every answer carries `Connection: close`, and the requests in flight
finish within the grace period. A malformed HTTP request is logged as one
line, without a traceback.

Layering: handlers parse, delegate and encode; model lookup belongs to the
`ModelManager`, validation and runs to the `DataPlane`, JSON rules to
`rest_request` / `rest_response`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import functools
import logging
import re
import socket
import threading
import time
import urllib.parse
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from google.protobuf import json_format

from serving import openapi, playground, rest_examples, rest_request, rest_response, routes
from serving.errors import ServingError, as_serving_error, deadline_exceeded, escape_for_log, invalid_argument
from serving.memory import InputBudget

log = logging.getLogger(__name__)

# Largest request body accepted, after gunzip (see module docstring).
DEFAULT_MAX_BODY_BYTES = 256 * 1024 * 1024
# After the last in-flight request of a drain, how long kept-alive connections are still answered.
_DRAIN_LINGER_S = 0.5
# Bodies larger than this are parsed and encoded on a worker thread, not on the event loop.
PARSE_OFF_LOOP_BYTES = 1 << 20

_JSON = "application/json"
_CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET",
    "Access-Control-Allow-Headers": "Content-Type",
}

# The route table (serving/routes.py) is shared with the OpenAPI document.
_V1_PATH = routes.V1_PATH
_PREDICTION_PATH = routes.PREDICTION_PATH
_MODEL_PATH = routes.MODEL_PATH
_INT64_MAX = (1 << 63) - 1


@dataclass(frozen=True)
class _Reply:
    """What a handler answers: HTTP status, JSON body, canonical code name for metrics."""

    status: int
    body: bytes
    code: str = "OK"

    @classmethod
    def error(cls, error: ServingError) -> _Reply:
        return cls(error.http_status, rest_response.encode_error(error.message), error.code.name)


class _UrlParseError(Exception):
    """The URL matched a route but a part of it does not parse (version beyond int64).

    TF Serving answers these with 400 and an empty body (TFS_CONTRACT.md §10.10).
    """


def _guarded(handler: Callable[..., Awaitable[bytes]]) -> Callable[..., Awaitable[_Reply]]:
    """Turns a handler's bytes into a 200 reply and any failure into an error reply.

    A `ServingError` is the request's fault and answers with its status;
    anything else is a bug here or below, logged with its traceback
    (`serving.errors.as_serving_error`) and answered 500, so the server keeps
    serving the other requests.
    """

    @functools.wraps(handler)
    async def wrapper(self: Any, *args: Any) -> _Reply:
        try:
            return _Reply(200, await handler(self, *args))
        except Exception as e:
            return _Reply.error(as_serving_error(e, f"REST {handler.__name__.strip('_')}"))

    return wrapper


class _OneLineErrors(logging.Filter):
    """Logs aiohttp's malformed-request errors as one escaped line instead of a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            detail = getattr(error, "message", None) or str(error)
            record.msg = escape_for_log(f"{record.getMessage()}: {type(error).__name__}: {detail}")[:500]
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


_SERVER_LOG_FILTER = _OneLineErrors()


class RestServer:
    """TF Serving's HTTP/REST front end, on the caller's event loop.

    `await open()` binds and serves; `await drain(grace_s)` shuts down
    gracefully. `start_rest_server` runs one on a thread of its own instead.

    Args:
      dataplane: the `DataPlane` that plans and runs requests.
      manager: the `ModelManager` resolving names, versions and labels.
      options: the frozen `ServerOptions` (reads `rest_api_port`,
        `rest_api_timeout_in_ms`, `rest_api_enable_cors_support`,
        `rest_api_idle_timeout_s`, `prometheus_enabled`, `prometheus_path`).
      metrics: where request counts and latencies go; renders the metrics page.
      host: interface to listen on; None listens on `::` (dual stack), or on
        0.0.0.0 without IPv6.
      max_body_bytes: largest accepted request body after gunzip.
      budget: the decoded-input memory budget (None: unbounded).
    """

    def __init__(
        self,
        dataplane: Any,
        manager: Any,
        options: Any,
        metrics: Any,
        host: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        budget: InputBudget | None = None,
    ):
        self._dataplane = dataplane
        self._manager = manager
        self._metrics = metrics
        self._host = host
        self._budget = budget
        self._requested_port = int(options.rest_api_port)
        self._max_body_bytes = int(max_body_bytes)
        timeout_ms = int(options.rest_api_timeout_in_ms)
        self._timeout_s = timeout_ms / 1000.0 if timeout_ms > 0 else None
        self._idle_timeout_s = float(getattr(options, "rest_api_idle_timeout_s", 75.0))
        self._extra_headers = dict(_CORS_HEADERS) if options.rest_api_enable_cors_support else {}
        self._json_headers = {"Content-Type": _JSON, **self._extra_headers}
        self._prometheus_path = options.prometheus_path if options.prometheus_enabled else None
        # Path → page, only with --rest_api_playground (otherwise `/` stays a plain 404, as in TF Serving).
        self._playground = playground.pages() if getattr(options, "rest_api_playground", False) else {}
        self._metadata_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._runner: web.ServerRunner | None = None
        self._site: web.BaseSite | None = None
        self._in_flight = 0
        self._idle: asyncio.Event | None = None
        self._draining = False
        self.port = 0
        self.address = ""

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Binds the port and starts serving on the running loop.

        Raises:
          OSError: the port cannot be bound (in use, no permission).
        """
        logging.getLogger("aiohttp.server").addFilter(_SERVER_LOG_FILTER)
        self._idle = asyncio.Event()
        self._idle.set()
        # No access log: it costs per request and TF Serving writes none. Handler
        # cancellation: a client that disconnects cancels its request (and its queued rows).
        server = web.Server(
            self._handle, access_log=None, handler_cancellation=True, keepalive_timeout=self._idle_timeout_s
        )
        self._runner = web.ServerRunner(server, shutdown_timeout=5.0)
        await self._runner.setup()
        try:
            sock = _listening_socket(self._host, self._requested_port)
        except OSError as e:
            await self._runner.cleanup()
            raise OSError(
                e.errno,
                f"cannot listen for REST on {self._host or '[::]'}:{self._requested_port}: {e.strerror}; "
                "choose another --rest_api_port",
            ) from e
        self._site = web.SockSite(self._runner, sock, backlog=1024)
        await self._site.start()
        self.address, self.port = sock.getsockname()[:2]

    async def drain(self, grace_s: float) -> None:
        """Stops accepting, answers with `Connection: close`, lets in-flight requests finish, closes.

        Args:
          grace_s: how long to wait for in-flight requests before closing anyway.
        """
        if self._site is None or self._runner is None or self._idle is None or self._draining:
            return
        self._draining = True
        await self._site.stop()  # closes the listening socket: no new connections
        deadline = time.monotonic() + max(grace_s, 0.0)
        try:
            while True:
                await asyncio.wait_for(self._idle.wait(), timeout=max(deadline - time.monotonic(), 0.0))
                # Kept-alive clients may have a request on its way: answer it (with
                # Connection: close) rather than reset a connection it was sent on.
                await asyncio.sleep(min(_DRAIN_LINGER_S, max(deadline - time.monotonic(), 0.0)))
                if self._in_flight == 0:
                    break
        except TimeoutError:
            log.warning("%d REST request(s) still running after %.1f s; closing", self._in_flight, grace_s)
        await self._runner.cleanup()

    # ------------------------------------------------------------------ dispatch

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        raw_path = request.raw_path
        path = raw_path.split("?", 1)[0]
        if self._prometheus_path is not None and path == self._prometheus_path:
            response: web.StreamResponse = web.Response(
                body=self._metrics.render(), headers={"Content-Type": "text/plain", **self._extra_headers}
            )
        elif request.method == "GET" and path == routes.OPENAPI_PATH:
            body = openapi.document_json(self._manager, playground=bool(self._playground))
            response = web.Response(body=body, headers=self._json_headers)
        elif request.method == "GET" and self._playground and path in self._playground:
            response = web.Response(body=self._playground[path].body, headers=self._playground[path].headers)
        elif not _V1_PATH.fullmatch(path):
            response = web.Response(status=404, text="404: Not Found")
        else:
            assert self._idle is not None  # created when the server opens
            self._in_flight += 1
            self._idle.clear()
            try:
                response = await self._handle_v1(request, path, raw_path)
            finally:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._idle.set()
        if self._draining:
            response.force_close()  # Connection: close, so kept-alive clients reconnect elsewhere
        return response

    async def _handle_v1(self, request: web.BaseRequest, path: str, raw_path: str) -> web.Response:
        method = request.method
        match = None
        if method == "POST":
            match = _PREDICTION_PATH.fullmatch(path)
        elif method == "GET":
            match = _MODEL_PATH.fullmatch(path)
        elif method == "OPTIONS" and self._extra_headers:
            return web.Response(status=200, headers=self._extra_headers)  # CORS preflight
        if match is None:
            return self._respond(_Reply.error(invalid_argument(f"Malformed request: {method} {raw_path}")))
        try:
            name, version, label, verb = _route_parts(match)
        except _UrlParseError:
            return web.Response(status=400, body=b"", headers=self._json_headers)

        if method == "GET":
            if not name:
                return self._respond(_Reply.error(invalid_argument("Missing model name in request.")))
            if verb:  # metadata
                return self._respond(await self._metadata(name, version, label))
            return self._respond(await self._status(name, version))

        assert verb is not None  # the prediction route always names one
        api = verb.lower()
        start = time.perf_counter()
        deadline = time.monotonic() + self._timeout_s if self._timeout_s else None
        try:
            body = await self._read_body(request)
        except ServingError as e:
            reply = _Reply.error(e)
        except _BodyTooLarge as e:
            reply = _Reply(413, rest_response.encode_error(str(e)), grpc.StatusCode.RESOURCE_EXHAUSTED.name)
        else:
            handler = {"predict": self._predict, "classify": self._classify, "regress": self._regress}[api]
            reply = await handler(name, version, label, body, deadline)
        self._metrics.record_request(name, api, "REST", reply.code, time.perf_counter() - start)
        return self._respond(reply)

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        """Reads (and gunzips, via aiohttp) the body, refusing more than the limit."""
        limit = self._max_body_bytes
        declared = request.content_length
        if declared is not None and declared > limit and not request.headers.get("Content-Encoding"):
            raise _BodyTooLarge(declared, limit)
        if request.headers.get("Expect", "").lower() == "100-continue":
            # Clients such as curl wait for this before sending large bodies.
            await request.writer.write(b"HTTP/%d.%d 100 Continue\r\n\r\n" % request.version)
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise _BodyTooLarge(size, limit)
                chunks.append(chunk)
        except (HttpProcessingError, RequestPayloadError) as e:
            # e.g. a body sent with Content-Encoding: gzip that is not gzip data.
            cause = e.__cause__ or e
            detail = getattr(cause, "message", None) or str(cause)
            raise invalid_argument(
                "Failed to read the request body (Content-Encoding: "
                f"{request.headers.get('Content-Encoding', 'identity')}): {detail.strip()}"
            ) from e
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _off_loop(self, size: int, job: Callable[[], Any]) -> Any:
        """Runs CPU work for a large body on a worker thread, small ones inline."""
        if size <= PARSE_OFF_LOOP_BYTES:
            return job()
        return await asyncio.get_running_loop().run_in_executor(self._dataplane.pool, job)

    async def _infer(
        self, body: bytes, deadline: float | None, plan: Callable[[], Any], encode: Callable
    ) -> bytes:
        """Plans (parse + checks), awaits the run within the deadline, encodes; all within the budget."""
        with InputBudget.reserve_or_none(self._budget, len(body), "request body"):
            run_plan, extra = await self._off_loop(len(body), plan)
            if deadline is not None and time.monotonic() >= deadline:
                raise deadline_exceeded()
            answer = await self._dataplane.run_async(run_plan, deadline)
            return await self._off_loop(len(body), lambda: encode(answer, extra))

    def _respond(self, reply: _Reply) -> web.Response:
        return web.Response(status=reply.status, body=reply.body, headers=self._json_headers)

    # ------------------------------------------------------------------ handlers

    @_guarded
    async def _predict(
        self, name: str, version: int | None, label: str | None, body: bytes, deadline: float | None
    ) -> bytes:
        def plan() -> tuple[Any, bool]:
            # TF Serving's order: JSON, signature_name type, model, signature, body checks.
            doc = rest_request.parse_request(body)
            signature_name = rest_request.signature_name(doc)
            servable = self._manager.resolve(name, version, label)
            signature = self._dataplane.signature(servable, signature_name, "predict", rest=True)
            inputs, row_format = rest_request.predict_inputs(doc, signature, body)
            return self._dataplane.plan_predict(servable, signature_name, inputs, rest=True), row_format

        return await self._infer(body, deadline, plan, rest_response.encode_predict_response)

    @_guarded
    async def _classify(
        self, name: str, version: int | None, label: str | None, body: bytes, deadline: float | None
    ) -> bytes:
        def plan() -> tuple[Any, None]:
            # The whole body becomes Examples before the model is looked up (as in TF Serving).
            doc = rest_request.parse_request(body)
            signature_name = rest_request.signature_name(doc)
            examples = rest_examples.serialized_examples(doc, "classify")
            servable = self._manager.resolve(name, version, label)
            return self._dataplane.plan_classify(servable, signature_name, examples), None

        return await self._infer(
            body, deadline, plan, lambda answer, _: rest_response.encode_classify_response(*answer)
        )

    @_guarded
    async def _regress(
        self, name: str, version: int | None, label: str | None, body: bytes, deadline: float | None
    ) -> bytes:
        def plan() -> tuple[Any, None]:
            doc = rest_request.parse_request(body)
            signature_name = rest_request.signature_name(doc)
            examples = rest_examples.serialized_examples(doc, "regress")
            servable = self._manager.resolve(name, version, label)
            return self._dataplane.plan_regress(servable, signature_name, examples), None

        return await self._infer(
            body, deadline, plan, lambda answer, _: rest_response.encode_regress_response(answer)
        )

    @_guarded
    async def _status(self, name: str, version: int | None) -> bytes:
        # GetModelStatus only looks at an explicit version: a label lists every version.
        response = self._manager.model_status(name, version)
        doc = json_format.MessageToDict(
            response,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )
        statuses = doc.get("model_version_status", [])
        statuses.sort(key=lambda s: int(s.get("version", 0)), reverse=True)
        return orjson.dumps({"model_version_status": statuses})

    @_guarded
    async def _metadata(self, name: str, version: int | None, label: str | None) -> bytes:
        servable = self._manager.resolve(name, version, label)
        cached = self._metadata_cache.get(servable)
        if cached is None:
            cached = self._metadata_cache[servable] = _metadata_json(name, servable)
        return cached


def _listening_socket(host: str | None, port: int) -> socket.socket:
    """A listening TCP socket: `host`, or `::` accepting IPv4 too, or 0.0.0.0 without IPv6."""
    if host is None and socket.has_ipv6:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        except OSError as e:
            if e.errno not in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
                raise
        else:
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual stack, like TF Serving
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("::", port))
            except OSError as e:
                sock.close()
                if e.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    raise
            else:
                sock.setblocking(False)
                return sock
    family = socket.AF_INET6 if host and ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host or "0.0.0.0", port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class _BodyTooLarge(Exception):
    def __init__(self, size: int, limit: int):
        super().__init__(
            f"Request body of {size} bytes is larger than the REST limit of {limit} bytes; "
            "split the request or send it over gRPC"
        )


def _route_parts(match: re.Match) -> tuple[str, int | None, str | None, str | None]:
    """(model name, version, label, verb) from a route match, names percent-decoded.

    Raises:
      _UrlParseError: the version does not fit an int64.
    """
    name, version_text, label, verb = match.groups()
    version = None
    if version_text:
        version = int(version_text)
        if version > _INT64_MAX:
            raise _UrlParseError(version_text)
    return (
        urllib.parse.unquote(name) if name else "",
        version,
        urllib.parse.unquote(label) if label else None,
        verb,
    )


def _metadata_json(name: str, servable: Any) -> bytes:
    """GetModelMetadata's REST JSON: model_spec plus the SignatureDefMap, defaults printed."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in servable.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(signature)
    doc = {
        "model_spec": {"name": name, "signature_name": "", "version": str(servable.version)},
        "metadata": {
            "signature_def": json_format.MessageToDict(
                signature_map,
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
            )
        },
    }
    return orjson.dumps(doc)


class ThreadedRestServer:
    """A `RestServer` on an event loop of its own thread (for embedding and tests).

    Attributes:
      server: the `RestServer`; `port` is its bound port.
    """

    def __init__(self, server: RestServer):
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rest-api-loop", daemon=True)
        self._stopped = False

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def _in_flight(self) -> int:
        return self.server._in_flight

    def start(self) -> None:
        """Binds and serves; returns once requests are accepted.

        Raises:
          OSError: the port cannot be bound.
        """
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.server.open(), self._loop).result()
        except BaseException:
            self._stop_loop()
            raise

    def stop(self, grace_s: float) -> None:
        """Drains (see `RestServer.drain`) and stops the loop thread."""
        if self._stopped:
            return
        self._stopped = True
        future = asyncio.run_coroutine_threadsafe(self.server.drain(grace_s), self._loop)
        try:
            future.result(timeout=grace_s + 10.0)
        except (concurrent.futures.TimeoutError, OSError, RuntimeError) as e:
            log.warning("REST server did not shut down cleanly: %s", e)
        self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10.0)


def start_rest_server(
    dataplane: Any,
    manager: Any,
    options: Any,
    metrics: Any,
    *,
    host: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> ThreadedRestServer:
    """Starts the REST front end on a thread of its own, on `options.rest_api_port` (0 = any).

    The model server itself runs `RestServer` on its one event loop; this is for
    embedding the REST API in another program.

    Returns:
      The running server (`.port`, `.stop(grace_s)`).

    Raises:
      OSError: the port cannot be bound.
    """
    server = ThreadedRestServer(RestServer(dataplane, manager, options, metrics, host, max_body_bytes))
    server.start()
    return server
