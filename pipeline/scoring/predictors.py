"""Predictors: what turns a stream of record batches into model outputs.

Both answer `predict(texts)` for one batch of texts (an Arrow string array)
with the outputs of `serving_default` as numpy arrays by name, and say how
many batches they want in flight (`concurrency`); the job keeps the order, so
sharding, error rows and resume are the same whichever predicts:

* `LocalPredictor`: the exported SavedModel loaded in this process, its
  `serving_default` called once per batch (TensorFlow releases the GIL, so
  reading and writing run meanwhile);
* `RemotePredictor`: a running TF Serving (or `textserve serve`). Each record
  batch becomes one Predict request on `serving_default` (gRPC
  `PredictionService/Predict`, or REST `POST /v1/models/NAME:predict` with
  columnar `inputs`), with up to `concurrency` requests in flight and answers
  consumed in request order. Class names (for `--probabilities`) are not
  outputs of `serving_default`; they come from one Classify call on the
  model's `classify` signature at start. Transient failures (UNAVAILABLE,
  DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, HTTP 429/502/503/504, refused
  connections) are retried with backoff; anything else stops the run with the
  server's message, and `--resume` continues it later.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa

from pipeline.errors import RunStopped, ScoringError
from preprocessing import names

_OUTPUTS = (names.PREDICTED_LABEL, names.SCORE, names.PROBABILITIES)


class LocalPredictor:
    """The exported SavedModel loaded in this process, its `serving_default` called once per batch.

    Args:
      path: export directory or version directory.

    Raises:
      ScoringError: no SavedModel there, or one without the expected signature.
    """

    concurrency = 1  # TensorFlow's own threads use the cores; one batch at a time is fastest

    def __init__(self, path: str | Path):
        import tensorflow as tf

        from model.export import ExportedModel

        try:
            self.model = ExportedModel(path)
        except FileNotFoundError as error:
            raise ScoringError(str(error)) from error
        except (OSError, ValueError, tf.errors.OpError) as error:
            raise ScoringError(f"{path}: cannot load the SavedModel: {error}") from error
        except KeyError as error:
            raise ScoringError(
                f"{path}: the SavedModel has no `{names.PREDICT_SIGNATURE}` signature; export it with "
                f"`textserve train`."
            ) from error
        outputs = set(self.model.predict_fn.structured_outputs)
        missing = {names.PREDICTED_LABEL, names.SCORE, names.PROBABILITIES} - outputs
        inputs = self.model.predict_fn.structured_input_signature[1]
        if missing or names.TEXT_KEY not in inputs:
            raise ScoringError(
                f"{self.model.version_dir}: `{names.PREDICT_SIGNATURE}` must take `{names.TEXT_KEY}` and "
                f"return {sorted(names.PREDICT_OUTPUTS)}; it takes {sorted(inputs)} and returns {sorted(outputs)}."
            )
        self.label_names = self.model.label_names
        self.description = str(self.model.version_dir)
        self.version_dir = self.model.version_dir

    def predict(self, texts: pa.Array) -> dict[str, np.ndarray]:
        """One `serving_default` call on the batch's texts; outputs as numpy by name."""
        outputs = self.model.predict_fn(text=string_tensor(texts))
        return {key: outputs[key].numpy() for key in _OUTPUTS}

    def close(self) -> None:
        """Nothing to release (kept for symmetry with the remote predictor)."""


def string_tensor(texts: pa.Array):
    """An Arrow string array as a `tf.string` tensor `[n]`, without a Python object per row.

    The array's data buffer goes to TensorFlow as one scalar string, and
    `tf.strings.substr` cuts it at the array's offsets.
    """
    import tensorflow as tf

    n = len(texts)
    data = texts.buffers()[2]
    if not n or data is None:
        return tf.constant([""] * n, tf.string)
    offsets = np.frombuffer(texts.buffers()[1], np.int32)[texts.offset : texts.offset + n + 1]
    first, last = int(offsets[0]), int(offsets[-1])
    whole = tf.constant(data.slice(first, last - first).to_pybytes())
    relative = offsets - first
    return tf.strings.substr(whole, relative[:-1], np.diff(relative))


# --- Through a model server ------------------------------------------------------------

_RETRIES = 4
_BACKOFF_S = 0.5
_RETRY_HTTP = {429, 502, 503, 504}


class _Transient(Exception):
    """A failure worth retrying."""


class _GrpcBackend:
    """Predict / Classify / GetModelMetadata over one gRPC channel (thread-safe)."""

    def __init__(self, target: str, model_name: str, timeout_s: float):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self._grpc = grpc
        self.model_name = model_name
        self.timeout_s = timeout_s
        # Large batches of long documents exceed gRPC's 4 MiB default.
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        self.channel = grpc.insecure_channel(target, options=options)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout_s)
        except self._grpc.RpcError as error:
            code = error.code()
            message = f"{code.name}: {error.details()}"
            if code in (
                self._grpc.StatusCode.UNAVAILABLE,
                self._grpc.StatusCode.DEADLINE_EXCEEDED,
                self._grpc.StatusCode.RESOURCE_EXHAUSTED,
            ):
                raise _Transient(message) from error
            raise RunStopped(f"server answered {message}") from error

    def check(self) -> None:
        """Asks for the model's metadata: the model must be served with `serving_default`."""
        from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=model_pb2.ModelSpec(name=self.model_name), metadata_field=["signature_def"]
        )
        response = self._call(self.stub.GetModelMetadata, request)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        if names.PREDICT_SIGNATURE not in signatures.signature_def:
            raise ScoringError(
                f"model {self.model_name!r} has no `{names.PREDICT_SIGNATURE}` signature; it has "
                f"{sorted(signatures.signature_def)}."
            )

    def label_names(self) -> list[str]:
        from tensorflow.core.example import example_pb2, feature_pb2
        from tensorflow_serving.apis import classification_pb2, input_pb2, model_pb2

        example = example_pb2.Example()
        example.features.feature[names.TEXT_KEY].CopyFrom(
            feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[b"class names"]))
        )
        request = classification_pb2.ClassificationRequest(
            model_spec=model_pb2.ModelSpec(name=self.model_name, signature_name=names.CLASSIFY_SIGNATURE),
            input=input_pb2.Input(example_list=input_pb2.ExampleList(examples=[example])),
        )
        response = self._call(self.stub.Classify, request)
        return [c.label for c in response.result.classifications[0].classes]

    def predict(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        import tensorflow as tf
        from tensorflow_serving.apis import model_pb2, predict_pb2

        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=self.model_name, signature_name=names.PREDICT_SIGNATURE),
            output_filter=[names.PREDICTED_LABEL, names.SCORE, names.PROBABILITIES],
        )
        request.inputs[names.TEXT_KEY].CopyFrom(tf.make_tensor_proto(list(texts), dtype=tf.string))
        response = self._call(self.stub.Predict, request)
        return {
            key: tf.make_ndarray(response.outputs[key])
            for key in (names.PREDICTED_LABEL, names.SCORE, names.PROBABILITIES)
        }

    def close(self) -> None:
        self.channel.close()


class _RestBackend:
    """TF Serving's REST API over keep-alive HTTP connections, one per worker thread."""

    def __init__(self, host: str, port: int, model_name: str, timeout_s: float):
        self.host, self.port, self.model_name, self.timeout_s = host, port, model_name, timeout_s
        self._local = threading.local()
        self._base = f"/v1/models/{urllib.parse.quote(model_name)}"

    def _request(self, method: str, path: str, body: bytes | None = None) -> dict:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = http.client.HTTPConnection(
                self.host, self.port, timeout=self.timeout_s
            )
        try:
            connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            self._local.connection = None
            raise _Transient(f"http://{self.host}:{self.port}{path}: {error}") from error
        if response.status != 200:
            try:
                message = json.loads(payload).get("error", payload.decode("utf-8", "replace"))
            except ValueError:
                message = payload.decode("utf-8", "replace")[:500]
            if response.status in _RETRY_HTTP:
                raise _Transient(f"HTTP {response.status}: {message}")
            raise RunStopped(f"server answered HTTP {response.status} to {method} {path}: {message}")
        return orjson.loads(payload)

    def check(self) -> None:
        """Asks for the model's metadata: the model must be served with `serving_default`."""
        try:
            metadata = self._request("GET", f"{self._base}/metadata")
        except RunStopped as error:
            raise ScoringError(str(error)) from error
        signatures = metadata.get("metadata", {}).get("signature_def", {}).get("signature_def", {})
        if names.PREDICT_SIGNATURE not in signatures:
            raise ScoringError(
                f"model {self.model_name!r} has no `{names.PREDICT_SIGNATURE}` signature; it has {sorted(signatures)}."
            )

    def label_names(self) -> list[str]:
        body = orjson.dumps(
            {"signature_name": names.CLASSIFY_SIGNATURE, "examples": [{names.TEXT_KEY: "class names"}]}
        )
        answer = self._request("POST", f"{self._base}:classify", body)
        return [label for label, _ in answer["results"][0]]

    def predict(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        body = orjson.dumps(
            {"signature_name": names.PREDICT_SIGNATURE, "inputs": {names.TEXT_KEY: list(texts)}}
        )
        outputs = self._request("POST", f"{self._base}:predict", body)["outputs"]
        return {
            names.PREDICTED_LABEL: np.array(
                [label.encode("utf-8") for label in outputs[names.PREDICTED_LABEL]], dtype=object
            ),
            names.SCORE: np.asarray(outputs[names.SCORE], dtype=np.float32),
            names.PROBABILITIES: np.asarray(outputs[names.PROBABILITIES], dtype=np.float32),
        }

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()


def _parse_server(url: str) -> tuple[str, str, int]:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("grpc", "http") or not parsed.hostname or not parsed.port:
        raise ScoringError(
            f"--server {url!r}: expected grpc://HOST:PORT (TF Serving's --port) or http://HOST:PORT "
            f"(its --rest_api_port)."
        )
    return parsed.scheme, parsed.hostname, parsed.port


class RemotePredictor:
    """Scores record batches through a model server, `concurrency` requests at a time.

    Args:
      server: `grpc://HOST:PORT` or `http://HOST:PORT`.
      model_name: the served model's name.
      concurrency: requests in flight.
      timeout_s: deadline of one request.
      need_label_names: fail at start unless the class names can be read
        (needed to name `p_<class>` columns).

    Raises:
      ScoringError: a malformed URL, an unreachable server, an unknown model,
        or (with need_label_names) no `classify` signature.
    """

    def __init__(
        self,
        server: str,
        model_name: str,
        *,
        concurrency: int = 4,
        timeout_s: float = 60.0,
        need_label_names: bool = False,
    ):
        scheme, host, port = _parse_server(server)
        self.description = f"model {model_name!r} at {server}"
        self.concurrency = concurrency
        if scheme == "grpc":
            self.backend: _GrpcBackend | _RestBackend = _GrpcBackend(f"{host}:{port}", model_name, timeout_s)
        else:
            self.backend = _RestBackend(host, port, model_name, timeout_s)
        try:
            self._with_retries(self.backend.check)
        except RunStopped as error:
            raise ScoringError(f"{server}: {error}") from error
        except _Transient as error:
            raise ScoringError(f"{server}: the server does not answer ({error}); is it running?") from error
        try:
            self.label_names = self._with_retries(self.backend.label_names)
        except (RunStopped, _Transient) as error:
            if need_label_names:
                raise ScoringError(
                    f"{server}: --probabilities needs the class names, read through the model's "
                    f"`{names.CLASSIFY_SIGNATURE}` signature, which failed: {error}"
                ) from error
            self.label_names = []  # metrics then use the labels that occur

    def _with_retries(self, call, *args):
        for attempt in range(_RETRIES + 1):
            try:
                return call(*args)
            except _Transient:
                if attempt == _RETRIES:
                    raise
                time.sleep(_BACKOFF_S * 2**attempt)

    def predict(self, texts: pa.Array) -> dict[str, np.ndarray]:
        """One Predict request for the batch's texts (retried while the server is transiently down)."""
        try:
            return self._with_retries(self.backend.predict, texts.to_pylist())
        except _Transient as error:
            raise RunStopped(f"the server stopped answering after {_RETRIES} retries: {error}") from error

    def close(self) -> None:
        """Closes the connections."""
        self.backend.close()
