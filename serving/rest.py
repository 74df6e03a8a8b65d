"""TF Serving's REST API on aiohttp (TFS_CONTRACT.md §3, §4, §7).

Routes (matched case-insensitively on the path as sent; model names and labels
are percent-decoded, versions are digits):

    GET  /v1/models/{m}[/versions/{n}|/labels/{l}]            model status
    GET  /v1/models/{m}[/versions/{n}|/labels/{l}]/metadata   model metadata
    POST /v1/models/{m}[/versions/{n}|/labels/{l}]:predict|:classify|:regress
    GET  <prometheus path>                                    metrics (when enabled)

Anything else under `/v1/` answers 400 `Malformed request: METHOD PATH`; paths
outside `/v1/` get a plain 404. Every `/v1/` answer is `application/json`,
errors are `{"error": "..."}` with the HTTP status `serving.errors` maps the
canonical code to.

Threading: the server runs its own asyncio loop in a background thread and only
routes and reads bodies there; JSON decoding, inference and encoding run in a
thread pool of `--rest_api_num_threads` workers, each request bounded by
`--rest_api_timeout_in_ms` (504 DEADLINE_EXCEEDED when exceeded).

Body size: TF Serving's libevent server reads bodies of any size. Here a body
(after gunzip) above `DEFAULT_MAX_BODY_BYTES` (256 MiB, or `max_body_bytes`)
is answered with 413 and `{"error": ...}` before it is parsed, so one huge
request cannot take the process's memory; gRPC takes up to 2 GiB.

Layering: handlers parse, delegate and encode; model lookup belongs to the
`ModelManager`, validation and runs to the `DataPlane`, JSON rules to
`rest_request` / `rest_response`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import re
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from google.protobuf import json_format

from serving import rest_examples, rest_request, rest_response
from serving.errors import ServingError, invalid_argument

log = logging.getLogger(__name__)

# Largest request body accepted, after gunzip (see module docstring).
DEFAULT_MAX_BODY_BYTES = 256 * 1024 * 1024

_JSON = "application/json"
_CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET",
    "Access-Control-Allow-Headers": "Content-Type",
}

# TF Serving's route regexes (http_rest_api_util.cc), as facts: names/labels are
# anything but '/' and ':', versions are digits, version and label exclusive.
_V1_PATH = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
_PREDICTION_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(classify|regress|predict)",
    re.IGNORECASE,
)
_MODEL_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:/versions/(\d+)|/labels/([^/:]+))?(?:/(metadata))?",
    re.IGNORECASE,
)
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


def _guarded(handler: Callable[..., bytes]) -> Callable[..., _Reply]:
    """Turns a handler's bytes into a 200 reply and its ServingError into an error reply.

    Anything else is a bug here or below; it is logged with its traceback and
    answered 500 so the server keeps serving the other requests.
    """

    @functools.wraps(handler)
    def wrapper(self: Any, *args: Any) -> _Reply:
        try:
            return _Reply(200, handler(self, *args))
        except ServingError as e:
            return _Reply.error(e)
        except Exception as e:
            log.exception("REST handler %s failed", handler.__name__)
            return _Reply.error(ServingError(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}"))

    return wrapper


class RestServer:
    """TF Serving's HTTP/REST front end, serving from its own thread.

    Use `start_rest_server`; then `port` is the bound port and `stop(grace_s)`
    shuts it down gracefully.

    Args:
      dataplane: the `DataPlane` that validates and runs requests.
      manager: the `ModelManager` resolving names, versions and labels.
      options: the frozen `ServerOptions` (reads `rest_api_port`,
        `rest_api_num_threads`, `rest_api_timeout_in_ms`,
        `rest_api_enable_cors_support`, `prometheus_enabled`, `prometheus_path`).
      metrics: where request counts and latencies go; renders the metrics page.
      host: interface to listen on (TF Serving listens on all of them).
      max_body_bytes: largest accepted request body after gunzip.
    """

    def __init__(
        self,
        dataplane: Any,
        manager: Any,
        options: Any,
        metrics: Any,
        host: str = "0.0.0.0",
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ):
        self._dataplane = dataplane
        self._manager = manager
        self._metrics = metrics
        self._host = host
        self._requested_port = int(options.rest_api_port)
        self._max_body_bytes = int(max_body_bytes)
        threads = int(options.rest_api_num_threads) or 4 * (os.cpu_count() or 1)
        timeout_ms = int(options.rest_api_timeout_in_ms)
        self._timeout_s = timeout_ms / 1000.0 if timeout_ms > 0 else None
        self._extra_headers = dict(_CORS_HEADERS) if options.rest_api_enable_cors_support else {}
        self._json_headers = {"Content-Type": _JSON, **self._extra_headers}
        self._prometheus_path = options.prometheus_path if options.prometheus_enabled else None
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="rest-api")
        self._metadata_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="rest-api-loop", daemon=True)
        self._runner: web.ServerRunner | None = None
        self._site: web.TCPSite | None = None
        self._in_flight = 0
        self._idle: asyncio.Event | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._stopped = False
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Binds the port and starts serving; returns once requests are accepted.

        Raises:
          OSError: the port cannot be bound (in use, no permission).
        """
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self._thread.join()
            self._pool.shutdown(wait=False)
            raise self._start_error

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._open())
        except BaseException as e:  # handed to start() in the caller's thread
            self._start_error = e
            self._started.set()
            self._loop.close()
            return
        self._started.set()
        self._loop.run_forever()
        self._loop.close()

    async def _open(self) -> None:
        self._idle = asyncio.Event()
        self._idle.set()
        # No access log: it costs per request and TF Serving writes none.
        server = web.Server(self._handle, access_log=None)
        self._runner = web.ServerRunner(server, shutdown_timeout=5.0)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self._host, self._requested_port, backlog=1024)
        try:
            await self._site.start()
        except OSError as e:
            await self._runner.cleanup()
            raise OSError(
                e.errno,
                f"cannot listen for REST on {self._host}:{self._requested_port}: {e.strerror}; "
                "choose another --rest_api_port",
            ) from e
        self.port = self._runner.addresses[0][1]

    def stop(self, grace_s: float) -> None:
        """Stops accepting connections, lets in-flight requests finish, then closes.

        Args:
          grace_s: how long to wait for in-flight requests before closing anyway.
        """
        if self._stopped or not self._thread.is_alive():
            return
        self._stopped = True
        future = asyncio.run_coroutine_threadsafe(self._close(grace_s), self._loop)
        try:
            future.result(timeout=grace_s + 10.0)
        except (concurrent.futures.TimeoutError, OSError, RuntimeError) as e:
            log.warning("REST server did not shut down cleanly: %s", e)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10.0)
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _close(self, grace_s: float) -> None:
        assert self._site is not None and self._runner is not None and self._idle is not None
        await self._site.stop()  # closes the listening socket: no new connections
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=max(grace_s, 0.0))
        except TimeoutError:
            log.warning("%d REST request(s) still running after %.1f s; closing", self._in_flight, grace_s)
        await self._runner.cleanup()

    # ------------------------------------------------------------------ dispatch (event loop)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        raw_path = request.raw_path
        path = raw_path.split("?", 1)[0]
        if self._prometheus_path is not None and path == self._prometheus_path:
            page = await self._loop.run_in_executor(self._pool, self._metrics.render)
            return web.Response(body=page, headers={"Content-Type": "text/plain", **self._extra_headers})
        if not _V1_PATH.fullmatch(path):
            return web.Response(status=404, text="404: Not Found")
        assert self._idle is not None  # created when the loop starts
        self._in_flight += 1
        self._idle.clear()
        try:
            return await self._handle_v1(request, path, raw_path)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

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
                job = functools.partial(self._metadata, name, version, label)
            else:
                job = functools.partial(self._status, name, version)
            return self._respond(await self._run(job, bounded=False))

        assert verb is not None  # the prediction route always names one
        api = verb.lower()
        start = time.perf_counter()
        try:
            body = await self._read_body(request)
        except ServingError as e:
            reply = _Reply.error(e)
        except _BodyTooLarge as e:
            reply = _Reply(413, rest_response.encode_error(str(e)), grpc.StatusCode.RESOURCE_EXHAUSTED.name)
        else:
            deadline = time.monotonic() + self._timeout_s if self._timeout_s else None
            handler = {"predict": self._predict, "classify": self._classify, "regress": self._regress}[api]
            reply = await self._run(functools.partial(handler, name, version, label, body, deadline))
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

    async def _run(self, job: Callable[[], _Reply], bounded: bool = True) -> _Reply:
        """Runs a handler in the pool; inference (`bounded`) within --rest_api_timeout_in_ms.

        TF Serving applies the timeout to Predict/Classify/Regress runs only, so
        status and metadata requests are not bounded.
        """
        future = self._loop.run_in_executor(self._pool, job)
        if self._timeout_s is None or not bounded:
            return await future
        try:
            return await asyncio.wait_for(future, self._timeout_s)
        except TimeoutError:
            # The worker finishes on its own; the data plane also saw the deadline.
            return _Reply.error(ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))

    def _respond(self, reply: _Reply) -> web.Response:
        return web.Response(status=reply.status, body=reply.body, headers=self._json_headers)

    # ------------------------------------------------------------------ handlers (pool threads)

    @_guarded
    def _predict(
        self, name: str, version: int | None, label: str | None, body: bytes, deadline: float | None
    ) -> bytes:
        # TF Serving's order: JSON, signature_name type, model, signature, body checks.
        doc = rest_request.parse_request(body)
        signature_name = rest_request.signature_name(doc)
        servable = self._manager.resolve(name, version, label)
        signature = self._dataplane.signature(servable, signature_name, "predict", rest=True)
        inputs, row_format = rest_request.predict_inputs(doc, signature, body)
        outputs = self._dataplane.predict(servable, signature_name, inputs, deadline=deadline, rest=True)
        return rest_response.encode_predict_response(outputs, row_format)

    @_guarded
    def _classify(
        self, name: str, version: int | None, label: str | None, body: bytes, deadline: float | None
    ) -> bytes:
        # The whole body becomes Examples before the model is looked up (as in TF Serving).
        doc = rest_request.parse_request(body)
        signature_name = rest_request.signature_name(doc)
        examples = rest_examples.serialized_examples(doc, "classify")
        servable = self._manager.resolve(name, version, label)
        classes, scores = self._dataplane.classify(servable, signature_name, examples, deadline)
        return rest_response.encode_classify_response(classes, scores)

    @_guarded
    def _regress(
        self, name: str, version: int | None, label: str | None, body: bytes, deadline: float | None
    ) -> bytes:
        doc = rest_request.parse_request(body)
        signature_name = rest_request.signature_name(doc)
        examples = rest_examples.serialized_examples(doc, "regress")
        servable = self._manager.resolve(name, version, label)
        values = self._dataplane.regress(servable, signature_name, examples, deadline)
        return rest_response.encode_regress_response(values)

    @_guarded
    def _status(self, name: str, version: int | None) -> bytes:
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
    def _metadata(self, name: str, version: int | None, label: str | None) -> bytes:
        servable = self._manager.resolve(name, version, label)
        cached = self._metadata_cache.get(servable)
        if cached is None:
            cached = self._metadata_cache[servable] = _metadata_json(name, servable)
        return cached


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


def start_rest_server(
    dataplane: Any,
    manager: Any,
    options: Any,
    metrics: Any,
    *,
    host: str = "0.0.0.0",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> RestServer:
    """Starts the REST front end on `options.rest_api_port` (0 = any free port).

    Args:
      dataplane: the `DataPlane`.
      manager: the `ModelManager`.
      options: the frozen `ServerOptions`.
      metrics: the `Metrics` store.
      host: interface to bind.
      max_body_bytes: largest request body accepted (413 above it).

    Returns:
      The running `RestServer` (`.port`, `.stop(grace_s)`).

    Raises:
      OSError: the port cannot be bound.
    """
    server = RestServer(dataplane, manager, options, metrics, host, max_body_bytes)
    server.start()
    return server
