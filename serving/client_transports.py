"""The two wire transports of `serving.client.ServingClient`: gRPC and REST.

Each transport turns one call into one TF Serving request and its answer into
plain Python (dicts shaped like TF Serving's REST documents, so both transports
are parsed one way), and every failure into a `ClientError` with the canonical
code. Retries and typing of the answers live in `serving.client`.
"""

from __future__ import annotations

import base64
import http.client
import queue
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from serving.errors import code_name_for_http

# TF Serving accepts messages up to INT32_MAX each way; grpcio's 4 MB receive
# default would fail on large batches, so the client lifts it to match.
MAX_GRPC_MESSAGE_BYTES = 2**31 - 1
# Idle keep-alive REST connections kept for reuse.
REST_POOL_SIZE = 8

# A checked tf.Example: feature name → list of bytes, of ints or of floats.
Features = dict[str, list]


class ClientError(Exception):
    """A request the server refused, or a server that could not be reached.

    Attributes:
      code: canonical status code name ("NOT_FOUND", "UNAVAILABLE", ...).
      message: the server's own message (or the connection error's text).
      http_status: the HTTP status for REST answers; None over gRPC or when no
        answer came back.
      attempts: how many tries were made before giving up.
      request: what was asked, e.g. "grpc Predict 'bbc_news' at localhost:8500".
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
class ModelSpec:
    """Which model (and version or label) every call of one client names."""

    name: str
    version: int | None
    label: str | None


class GrpcTransport:
    """TF Serving's gRPC services through the stubs of tensorflow-serving-api."""

    def __init__(self, target: str, spec: ModelSpec, timeout: float, backoff: float):
        import grpc
        from google.protobuf import json_format
        from tensorflow.core.example import example_pb2
        from tensorflow_serving.apis import (
            classification_pb2,
            get_model_metadata_pb2,
            get_model_status_pb2,
            model_service_pb2_grpc,
            predict_pb2,
            prediction_service_pb2_grpc,
            regression_pb2,
        )

        from serving import tensor_codec

        self._grpc = grpc
        self._json_format = json_format
        self._example_pb2 = example_pb2
        self._codec = tensor_codec
        self._classification_pb2 = classification_pb2
        self._regression_pb2 = regression_pb2
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

    def _fill_spec(self, model_spec: Any, signature: str | None) -> None:
        model_spec.name = self._spec.name
        if self._spec.version is not None:
            model_spec.version.value = self._spec.version
        elif self._spec.label is not None:
            model_spec.version_label = self._spec.label
        if signature:
            model_spec.signature_name = signature

    def _call(self, method: str, rpc: Any, request: Any) -> Any:
        try:
            return rpc(request, timeout=self._timeout)
        except self._grpc.RpcError as e:
            raise ClientError(e.code().name, e.details() or "", request=self.describe(method)) from e

    def predict(
        self, inputs: dict[str, np.ndarray], signature: str, output_filter: list[str]
    ) -> dict[str, np.ndarray]:
        request = self._predict_pb2.PredictRequest(output_filter=output_filter)
        self._fill_spec(request.model_spec, signature)
        for alias, array in inputs.items():
            self._codec.from_numpy(array, True, request.inputs[alias])
        response = self._call("Predict", self._prediction.Predict, request)
        return {alias: self._codec.to_numpy(proto) for alias, proto in response.outputs.items()}

    def _input(self, model_input: Any, examples: Sequence[Features], context: Features | None) -> None:
        if context is None:
            target = model_input.example_list.examples
        else:
            with_context = model_input.example_list_with_context
            self._fill_example(with_context.context, context)
            target = with_context.examples
        for features in examples:
            self._fill_example(target.add(), features)

    @staticmethod
    def _fill_example(example: Any, features: Features) -> None:
        for name, values in features.items():
            feature = example.features.feature[name]
            if values and isinstance(values[0], bytes):
                feature.bytes_list.value.extend(values)
            elif values and isinstance(values[0], int):
                feature.int64_list.value.extend(values)
            else:
                feature.float_list.value.extend(values)

    def classify(
        self, examples: Sequence[Features], context: Features | None, signature: str
    ) -> list[list[tuple[str, float]]]:
        request = self._classification_pb2.ClassificationRequest()
        self._fill_spec(request.model_spec, signature)
        self._input(request.input, examples, context)
        response = self._call("Classify", self._prediction.Classify, request)
        return [[(c.label, float(c.score)) for c in row.classes] for row in response.result.classifications]

    def regress(self, examples: Sequence[Features], context: Features | None, signature: str) -> list[float]:
        request = self._regression_pb2.RegressionRequest()
        self._fill_spec(request.model_spec, signature)
        self._input(request.input, examples, context)
        response = self._call("Regress", self._prediction.Regress, request)
        return [float(r.value) for r in response.result.regressions]

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

    def _to_dict(self, message: Any) -> dict[str, Any]:
        return self._json_format.MessageToDict(
            message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )

    def close(self) -> None:
        self._channel.close()


def _json_strings(values: list) -> list:
    """Byte strings for a JSON body: UTF-8 text as is, anything else as TF Serving's {"b64": ...}."""
    out: list = []
    for value in values:
        try:
            out.append(value.decode("utf-8"))
        except UnicodeDecodeError:
            out.append({"b64": base64.b64encode(value).decode("ascii")})
    return out


def _json_tensor(array: np.ndarray) -> Any:
    if array.dtype == object:
        flat = _json_strings(array.reshape(-1).tolist())
        return np.asarray(flat, dtype=object).reshape(array.shape).tolist() if array.ndim else flat[0]
    return array.tolist()


def _json_example(features: Features) -> dict[str, Any]:
    return {
        name: (_json_strings(values) if values and isinstance(values[0], bytes) else values)
        for name, values in features.items()
    }


class RestTransport:
    """TF Serving's REST API over pooled keep-alive HTTP/1.1 connections."""

    def __init__(self, target: str, spec: ModelSpec, timeout: float):
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

    def predict(self, inputs: dict[str, np.ndarray], signature: str, output_filter: list[str]) -> Any:
        """Returns the answer's `outputs` (a dict by alias, or the bare value of a single output)."""
        body: dict[str, Any] = {"inputs": {alias: _json_tensor(a) for alias, a in inputs.items()}}
        if signature:
            body["signature_name"] = signature
        if output_filter:
            body["output_filter"] = output_filter
        return self._request("Predict", "POST", f"{self._model_path}:predict", body)["outputs"]

    def _examples_body(
        self, examples: Sequence[Features], context: Features | None, signature: str
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"examples": [_json_example(e) for e in examples]}
        if context is not None:
            body["context"] = _json_example(context)
        if signature:
            body["signature_name"] = signature
        return body

    def classify(
        self, examples: Sequence[Features], context: Features | None, signature: str
    ) -> list[list[tuple[str, float]]]:
        body = self._examples_body(examples, context, signature)
        doc = self._request("Classify", "POST", f"{self._model_path}:classify", body)
        return [[(label, float(score)) for label, score in row] for row in doc["results"]]

    def regress(self, examples: Sequence[Features], context: Features | None, signature: str) -> list[float]:
        body = self._examples_body(examples, context, signature)
        doc = self._request("Regress", "POST", f"{self._model_path}:regress", body)
        return [float(value) for value in doc["results"]]

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
            code_name_for_http(status), message, request=self.describe(method), http_status=status
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
