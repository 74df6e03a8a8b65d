"""A small Python client for the served text classifier, over gRPC or REST.

Works unchanged against `textserve serve` and against TensorFlow Serving's own
`tensorflow_model_server`, because it only speaks TF Serving's public API:

    from serving.client import TextClassifierClient

    with TextClassifierClient("localhost:8500", "bbc_news") as client:          # gRPC
        for p in client.predict(["Shares rose after the merger"]):
            print(p.label, p.score, p.probabilities)        # 'business' 0.99 {'business': 0.99, ...}
    rest = TextClassifierClient("http://localhost:8501", "bbc_news", transport="rest")
    rest.classify(["The striker scored twice"])             # same answers from the classify signature
    rest.status(), rest.metadata()                          # version states, signatures

What each call sends (the same requests any TF Serving client sends):

* `predict(texts)`: the `serving_default` signature with input `text` (DT_STRING
  `[n]`); gRPC `PredictionService/Predict`, REST `POST .../{model}:predict`
  with `{"instances": [...]}`. Its `probabilities` output is a bare vector, so
  the class names it is indexed by are read once from the `classify` signature
  (which lists every class in probability order) and checked against every
  answer's `label`/`class_id`; a new model version with other classes is
  noticed and the names are read again.
* `classify(texts)`: the `classify` signature (method `tensorflow/serving/classify`)
  with one `tf.Example` per text holding bytes feature `text`; gRPC
  `PredictionService/Classify`, REST `POST .../{model}:classify`.
* `metadata()`: gRPC `PredictionService/GetModelMetadata` (field `signature_def`),
  REST `GET .../{model}/metadata`.
* `status()`: gRPC `ModelService/GetModelStatus`, REST `GET /v1/models/{model}`.

Failures raise `ClientError`, carrying the canonical status code (gRPC's name
for it, e.g. "NOT_FOUND"; REST statuses are mapped back to one), the HTTP status
for REST, and the server's own message. Only UNAVAILABLE (gRPC), HTTP 503 and
refused connections are retried, with exponential backoff, since those are the
failures a restarting or overloaded server answers and a later try can fix;
every other failure is the request's fault and is raised at once.

The gRPC transport imports `tensorflow_serving.apis` (which loads TensorFlow);
the REST transport needs only the standard library and orjson.
"""

from __future__ import annotations

import http.client
import logging
import queue
import random
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from preprocessing import names

log = logging.getLogger(__name__)

# Defaults: a per-attempt deadline, and how often / how patiently to retry.
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF_S = 0.1
DEFAULT_MAX_BACKOFF_S = 2.0
# TF Serving accepts messages up to INT32_MAX each way; grpcio's 4 MB receive
# default would fail on large batches, so the client lifts it to match.
MAX_GRPC_MESSAGE_BYTES = 2**31 - 1
# Idle keep-alive REST connections kept for reuse.
REST_POOL_SIZE = 8

TRANSPORTS = ("grpc", "rest")

# The canonical code a REST status stands for (TF Serving's mapping, read backwards;
# 400 also covers FAILED_PRECONDITION and OUT_OF_RANGE, 500 also INTERNAL/DATA_LOSS).
_CODE_FOR_HTTP = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    413: "RESOURCE_EXHAUSTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "UNKNOWN",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_RETRYABLE_CODE = "UNAVAILABLE"

T = TypeVar("T")


class ClientError(Exception):
    """A request the server refused, or a server that could not be reached.

    Attributes:
      code: canonical status code name ("NOT_FOUND", "UNAVAILABLE", ...).
      message: the server's own message (or the connection error's text).
      http_status: the HTTP status for REST answers; None over gRPC or when no
        answer came back.
      attempts: how many tries were made before giving up.
      request: what was asked, e.g. "grpc Predict bbc_news at localhost:8500".
    """

    def __init__(
        self, code: str, message: str, *, request: str, http_status: int | None = None, attempts: int = 1
    ):
        self.code = code
        self.message = message
        self.http_status = http_status
        self.attempts = attempts
        self.request = request
        super().__init__(message)

    def __str__(self) -> str:
        status = f"{self.code}" + (f" (HTTP {self.http_status})" if self.http_status else "")
        tries = f" after {self.attempts} attempts" if self.attempts > 1 else ""
        return f"{self.request} failed{tries}: {status}: {self.message}"


@dataclass(frozen=True)
class Prediction:
    """One text's answer: the top class, its score, and every class's probability."""

    label: str
    score: float
    probabilities: dict[str, float]


@dataclass(frozen=True)
class VersionStatus:
    """One model version as the server reports it (state START/LOADING/AVAILABLE/UNLOADING/END)."""

    version: int
    state: str
    error_code: str
    error_message: str


@dataclass(frozen=True)
class TensorSpec:
    """A signature input or output: dtype name (e.g. "DT_STRING") and shape (-1 = any; None = unknown rank)."""

    dtype: str
    shape: tuple[int, ...] | None


@dataclass(frozen=True)
class SignatureSpec:
    """A signature's method name and its inputs and outputs by alias."""

    method_name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]


@dataclass(frozen=True)
class ModelMetadata:
    """The served version and its signatures (`__saved_model_init_op` included, as served)."""

    name: str
    version: int
    signatures: dict[str, SignatureSpec]


class TextClassifierClient:
    """Calls a served text classifier through TF Serving's gRPC or REST API.

    Args:
      target: the server: "host:port" (gRPC port for "grpc", REST port for "rest"),
        or "http://host:port" for REST.
      model_name: the served model's name (`--model_name` or the config's `name`).
      transport: "grpc" or "rest".
      timeout: seconds one attempt may take (gRPC deadline / socket timeout).
      retries: extra attempts after an UNAVAILABLE answer or a refused
        connection (0 = try once).
      backoff: seconds before the first retry; doubled for each further one
        (with up to 50% random jitter so many clients don't retry in step).
      max_backoff: upper bound of the wait between two attempts.
      version: ask for this model version instead of the latest.
      version_label: ask for the version behind this label (exclusive with `version`).

    Raises:
      ValueError: an unknown transport, negative retries/timeouts, or both
        `version` and `version_label`.
    """

    def __init__(
        self,
        target: str,
        model_name: str,
        *,
        transport: str = "grpc",
        timeout: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF_S,
        max_backoff: float = DEFAULT_MAX_BACKOFF_S,
        version: int | None = None,
        version_label: str | None = None,
    ):
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
        if not model_name:
            raise ValueError("model_name must be a non-empty string")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if retries < 0 or backoff < 0 or max_backoff < 0:
            raise ValueError(
                f"retries, backoff and max_backoff must be >= 0, got {retries!r}, {backoff!r}, {max_backoff!r}"
            )
        if version is not None and version_label is not None:
            raise ValueError("give either version or version_label, not both")
        self.model_name = model_name
        self.transport = transport
        self._retries = retries
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._label_names: list[str] | None = None
        spec = _ModelSpec(model_name, version, version_label)
        if transport == "grpc":
            self._wire: _GrpcTransport | _RestTransport = _GrpcTransport(target, spec, timeout, backoff)
        else:
            self._wire = _RestTransport(target, spec, timeout)

    # --- public calls -------------------------------------------------------

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """Classifies texts with the `serving_default` signature.

        Args:
          texts: the documents (a list of str, not a single str).

        Returns:
          One `Prediction` per text, in order; `probabilities` maps every class
          name to its probability.

        Raises:
          ClientError: the server refused the request or could not be reached.
          ValueError: `texts` is a bare string or holds non-strings.
        """
        texts = _checked_texts(texts)
        if not texts:
            return []
        outputs = self._with_retries("Predict", lambda: self._wire.predict(texts))
        for key in names.PREDICT_OUTPUTS:
            if key not in outputs:
                raise ClientError(
                    "INTERNAL",
                    f"the answer has no {key!r} output (got {sorted(outputs)}); is this "
                    f"model a textserve text classifier?",
                    request=self._wire.describe("Predict"),
                )
        labels = [_text(v) for v in outputs[names.PREDICTED_LABEL]]
        class_ids = [int(v) for v in outputs[names.CLASS_ID]]
        class_names = self._class_names(labels, class_ids)
        return [
            Prediction(label, float(score), dict(zip(class_names, map(float, row))))
            for label, score, row in zip(labels, outputs[names.SCORE], outputs[names.PROBABILITIES])
        ]

    def classify(self, texts: Sequence[str]) -> list[Prediction]:
        """Classifies texts with the `classify` signature (TF Serving's Classify API).

        Args:
          texts: the documents (a list of str, not a single str).

        Returns:
          One `Prediction` per text: the highest-scoring class and every
          class's score, as the signature's `classes`/`scores` give them.

        Raises:
          ClientError: the server refused the request or could not be reached.
          ValueError: `texts` is a bare string or holds non-strings.
        """
        texts = _checked_texts(texts)
        if not texts:
            return []
        results = self._with_retries("Classify", lambda: self._wire.classify(texts))
        predictions = []
        for pairs in results:
            scores = {label: float(score) for label, score in pairs}
            best = max(scores, key=scores.__getitem__)
            predictions.append(Prediction(best, scores[best], scores))
        return predictions

    def metadata(self) -> ModelMetadata:
        """Reads the served version's signatures.

        Returns:
          The model name, the version answered for, and every signature.

        Raises:
          ClientError: unknown model/version, or the server could not be reached.
        """
        doc = self._with_retries("GetModelMetadata", self._wire.metadata)
        spec = doc["model_spec"]
        signatures = doc["metadata"]["signature_def"]["signature_def"]
        return ModelMetadata(
            name=spec["name"],
            version=int(spec["version"]),
            signatures={key: _signature(value) for key, value in signatures.items()},
        )

    def status(self) -> list[VersionStatus]:
        """Reads the state of the model's versions (one when a version was asked for).

        Returns:
          The versions the server knows, in the server's order.

        Raises:
          ClientError: unknown model/version, or the server could not be reached.
        """
        doc = self._with_retries("GetModelStatus", self._wire.status)
        return [
            VersionStatus(
                version=int(entry["version"]),
                state=entry["state"],
                error_code=entry.get("status", {}).get("error_code", "OK"),
                error_message=entry.get("status", {}).get("error_message", ""),
            )
            for entry in doc["model_version_status"]
        ]

    def close(self) -> None:
        """Closes the channel or the pooled connections."""
        self._wire.close()

    def __enter__(self) -> TextClassifierClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- helpers ------------------------------------------------------------

    def _with_retries(self, method: str, call: Callable[[], T]) -> T:
        """Runs `call`, retrying UNAVAILABLE with exponential backoff and jitter."""
        delay = self._backoff
        attempt = 1
        while True:
            try:
                return call()
            except ClientError as e:
                if e.code != _RETRYABLE_CODE or attempt > self._retries:
                    e.attempts = attempt
                    raise
                pause = min(delay, self._max_backoff) * random.uniform(0.5, 1.0)
                log.warning(
                    "%s: %s: %s; retry %d of %d in %.2f s",
                    e.request,
                    e.code,
                    e.message,
                    attempt,
                    self._retries,
                    pause,
                )
                time.sleep(pause)
                delay *= 2
                attempt += 1

    def _class_names(self, labels: list[str], class_ids: list[int]) -> list[str]:
        """Class names in probability order, re-read if the answer disagrees with the cached ones."""
        for fresh in (False, True):
            if self._label_names is None or fresh:
                self._label_names = self._read_class_names()
            known = self._label_names
            if all(0 <= i < len(known) and known[i] == label for label, i in zip(labels, class_ids)):
                return known
        raise ClientError(
            "FAILED_PRECONDITION",
            f"the classify signature's classes {known} disagree with serving_default's answers "
            f"(labels {labels}, class ids {class_ids}); the export's two signatures do not match",
            request=self._wire.describe("Predict"),
        )

    def _read_class_names(self) -> list[str]:
        # An Example without the `text` feature is an empty document: the
        # classify signature still lists every class, in probability order.
        results = self._with_retries("Classify", lambda: self._wire.classify([None]))
        return [label for label, _ in results[0]]


# --- transports ------------------------------------------------------------------


@dataclass(frozen=True)
class _ModelSpec:
    name: str
    version: int | None
    label: str | None


def _checked_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise ValueError("texts must be a list of strings, not a single string: pass [text]")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts[{i}] is a {type(text).__name__}, expected str")
    return texts


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _signature(doc: Mapping[str, Any]) -> SignatureSpec:
    def tensors(section: Mapping[str, Any]) -> dict[str, TensorSpec]:
        specs = {}
        for alias, info in section.items():
            shape_doc = info.get("tensor_shape", {})
            shape = (
                None
                if shape_doc.get("unknown_rank")
                else tuple(int(dim.get("size", 0)) for dim in shape_doc.get("dim", []))
            )
            specs[alias] = TensorSpec(info.get("dtype", "DT_INVALID"), shape)
        return specs

    return SignatureSpec(
        doc.get("method_name", ""), tensors(doc.get("inputs", {})), tensors(doc.get("outputs", {}))
    )


class _GrpcTransport:
    """TF Serving's gRPC services through the stubs of tensorflow-serving-api."""

    def __init__(self, target: str, spec: _ModelSpec, timeout: float, backoff: float):
        import grpc
        from google.protobuf import json_format
        from tensorflow.core.example import example_pb2
        from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
        from tensorflow_serving.apis import (
            classification_pb2,
            get_model_metadata_pb2,
            get_model_status_pb2,
            model_service_pb2_grpc,
            predict_pb2,
            prediction_service_pb2_grpc,
        )

        self._grpc = grpc
        self._json_format = json_format
        self._example_pb2 = example_pb2
        self._tensor_pb2, self._shape_pb2, self._types_pb2 = tensor_pb2, tensor_shape_pb2, types_pb2
        self._classification_pb2 = classification_pb2
        self._metadata_pb2 = get_model_metadata_pb2
        self._status_pb2 = get_model_status_pb2
        self._predict_pb2 = predict_pb2
        self.target = target.removeprefix("grpc://")
        self._spec = spec
        self._timeout = timeout
        # Reconnect attempts follow the client's own backoff: with gRPC's
        # default (1 s, then growing) a quick retry would fail without trying.
        reconnect_ms = max(int(backoff * 1000), 100)
        self._channel = grpc.insecure_channel(
            self.target,
            options=[
                ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
                ("grpc.initial_reconnect_backoff_ms", reconnect_ms),
                ("grpc.min_reconnect_backoff_ms", reconnect_ms),
            ],
        )
        self._prediction = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def describe(self, method: str) -> str:
        return f"grpc {method} {self._spec.name!r} at {self.target}"

    def _fill_spec(self, model_spec, signature: str | None) -> None:
        model_spec.name = self._spec.name
        if self._spec.version is not None:
            model_spec.version.value = self._spec.version
        elif self._spec.label is not None:
            model_spec.version_label = self._spec.label
        if signature is not None:
            model_spec.signature_name = signature

    def _call(self, method: str, rpc, request):
        try:
            return rpc(request, timeout=self._timeout)
        except self._grpc.RpcError as e:
            raise ClientError(e.code().name, e.details() or "", request=self.describe(method)) from e

    def predict(self, texts: list[str]) -> dict[str, list]:
        request = self._predict_pb2.PredictRequest()
        self._fill_spec(request.model_spec, names.PREDICT_SIGNATURE)
        tensor = request.inputs[names.TEXT_KEY]
        tensor.dtype = self._types_pb2.DT_STRING
        tensor.tensor_shape.dim.add(size=len(texts))
        tensor.string_val.extend(text.encode("utf-8") for text in texts)
        response = self._call("Predict", self._prediction.Predict, request)
        return {alias: _rows(self._types_pb2, proto) for alias, proto in response.outputs.items()}

    def classify(self, texts: Sequence[str | None]) -> list[list[tuple[str, float]]]:
        request = self._classification_pb2.ClassificationRequest()
        self._fill_spec(request.model_spec, names.CLASSIFY_SIGNATURE)
        for text in texts:
            example = request.input.example_list.examples.add()
            if text is not None:
                example.features.feature[names.TEXT_KEY].bytes_list.value.append(text.encode("utf-8"))
        response = self._call("Classify", self._prediction.Classify, request)
        return [
            [(_text(c.label), float(c.score)) for c in row.classes] for row in response.result.classifications
        ]

    def metadata(self) -> dict[str, Any]:
        request = self._metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._fill_spec(request.model_spec, None)
        response = self._call("GetModelMetadata", self._prediction.GetModelMetadata, request)
        signatures = self._metadata_pb2.SignatureDefMap()
        if not response.metadata["signature_def"].Unpack(signatures):
            raise ClientError(
                "INTERNAL",
                f"metadata 'signature_def' holds {response.metadata['signature_def'].type_url}, "
                "not a tensorflow.serving.SignatureDefMap",
                request=self.describe("GetModelMetadata"),
            )
        # The REST document's shape, so both transports parse one way.
        return {
            "model_spec": {"name": response.model_spec.name, "version": response.model_spec.version.value},
            "metadata": {"signature_def": self._to_dict(signatures)},
        }

    def status(self) -> dict[str, Any]:
        request = self._status_pb2.GetModelStatusRequest()
        self._fill_spec(request.model_spec, None)
        return self._to_dict(self._call("GetModelStatus", self._models.GetModelStatus, request))

    def _to_dict(self, message) -> dict[str, Any]:
        return self._json_format.MessageToDict(
            message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )

    def close(self) -> None:
        self._channel.close()


def _rows(types_pb2, proto) -> list:
    """A TensorProto's values as a list over its first dimension (typed fields or tensor_content)."""
    import numpy as np

    shape = [dim.size for dim in proto.tensor_shape.dim]
    numeric = {
        types_pb2.DT_FLOAT: (np.float32, "float_val"),
        types_pb2.DT_DOUBLE: (np.float64, "double_val"),
        types_pb2.DT_INT32: (np.int32, "int_val"),
        types_pb2.DT_INT64: (np.int64, "int64_val"),
    }
    if proto.dtype == types_pb2.DT_STRING:
        values = np.array(list(proto.string_val), dtype=object)
    elif proto.dtype in numeric:
        dtype, field = numeric[proto.dtype]
        values = (
            np.frombuffer(proto.tensor_content, dtype=dtype)
            if proto.tensor_content
            else np.array(getattr(proto, field), dtype=dtype)
        )
    else:
        raise ClientError(
            "UNIMPLEMENTED",
            f"output dtype {types_pb2.DataType.Name(proto.dtype)} is not decoded by this client",
            request="decoding a Predict answer",
        )
    return list(values.reshape(shape)) if shape else [values.item()]


class _RestTransport:
    """TF Serving's REST API over pooled keep-alive HTTP/1.1 connections."""

    def __init__(self, target: str, spec: _ModelSpec, timeout: float):
        parsed = urllib.parse.urlsplit(target if "//" in target else f"http://{target}")
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"REST target must be host:port or http(s)://host:port, got {target!r}")
        self.target = f"{parsed.scheme}://{parsed.netloc}"
        self._https = parsed.scheme == "https"
        self._host, self._port = parsed.hostname, parsed.port or (443 if self._https else 80)
        self._timeout = timeout
        self._spec = spec
        path = f"/v1/models/{urllib.parse.quote(spec.name, safe='')}"
        if spec.version is not None:
            path += f"/versions/{spec.version}"
        elif spec.label is not None:
            path += f"/labels/{urllib.parse.quote(spec.label, safe='')}"
        self._model_path = path
        self._idle: queue.LifoQueue[http.client.HTTPConnection] = queue.LifoQueue(REST_POOL_SIZE)

    def describe(self, method: str) -> str:
        return f"rest {method} {self._spec.name!r} at {self.target}"

    def predict(self, texts: list[str]) -> dict[str, list]:
        doc = self._request(
            "Predict",
            "POST",
            f"{self._model_path}:predict",
            {
                "signature_name": names.PREDICT_SIGNATURE,
                "instances": texts,
            },
        )
        rows = doc["predictions"]  # one object per text: {output alias: value}
        return {alias: [row[alias] for row in rows] for alias in (rows[0] if rows else {})}

    def classify(self, texts: Sequence[str | None]) -> list[list[tuple[str, float]]]:
        doc = self._request(
            "Classify",
            "POST",
            f"{self._model_path}:classify",
            {
                "signature_name": names.CLASSIFY_SIGNATURE,
                "examples": [{} if text is None else {names.TEXT_KEY: text} for text in texts],
            },
        )
        return [[(label, float(score)) for label, score in row] for row in doc["results"]]

    def metadata(self) -> dict[str, Any]:
        return self._request("GetModelMetadata", "GET", f"{self._model_path}/metadata", None)

    def status(self) -> dict[str, Any]:
        return self._request("GetModelStatus", "GET", self._model_path, None)

    def _request(self, method: str, verb: str, path: str, body: dict | None) -> Any:
        payload = None if body is None else orjson.dumps(body)
        status, data = self._exchange(method, verb, path, payload)
        if status == 200:
            return orjson.loads(data)
        try:
            message = orjson.loads(data)["error"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            message = data.decode("utf-8", "replace").strip() or f"HTTP {status} with an empty body"
        raise ClientError(
            _CODE_FOR_HTTP.get(status, "UNKNOWN"), message, request=self.describe(method), http_status=status
        )

    def _exchange(self, method: str, verb: str, path: str, payload: bytes | None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        for reused in (True, False):
            conn, was_idle = self._connection(fresh=not reused)
            try:
                conn.request(verb, path, body=payload, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                conn.close()
                # A kept-alive connection the server has since closed: the
                # request never reached it, so send it again on a new one.
                if was_idle:
                    continue
                raise ClientError(
                    "UNAVAILABLE", f"connection lost: {e}", request=self.describe(method)
                ) from e
            except ConnectionRefusedError as e:
                conn.close()
                raise ClientError(
                    "UNAVAILABLE", f"cannot connect to {self.target}: {e}", request=self.describe(method)
                ) from e
            except TimeoutError as e:
                conn.close()
                raise ClientError(
                    "DEADLINE_EXCEEDED", f"no answer within {self._timeout} s", request=self.describe(method)
                ) from e
            except OSError as e:
                conn.close()
                raise ClientError(
                    "UNAVAILABLE", f"cannot reach {self.target}: {e}", request=self.describe(method)
                ) from e
            if response.will_close:
                conn.close()
            else:
                self._release(conn)
            return response.status, data
        raise AssertionError("unreachable: the second try uses a fresh connection")

    def _connection(self, fresh: bool) -> tuple[http.client.HTTPConnection, bool]:
        if not fresh:
            try:
                return self._idle.get_nowait(), True
            except queue.Empty:
                pass
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=self._timeout), False

    def _release(self, conn: http.client.HTTPConnection) -> None:
        try:
            self._idle.put_nowait(conn)
        except queue.Full:
            conn.close()

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return
