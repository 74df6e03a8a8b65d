"""Predictors: what turns a stream of record batches into model outputs.

Both answer `predict(texts)` for one batch of texts (an Arrow string array)
with the outputs of `serving_default` as numpy arrays by name, and say how
many batches they want in flight (`concurrency`); the job keeps the order, so
sharding, error rows and resume are the same whichever predicts:

* `LocalPredictor`: the exported SavedModel loaded in this process, its
  `serving_default` called once per batch (TensorFlow releases the GIL, so
  reading and writing run meanwhile);
* `RemotePredictor`: a running TF Serving (or `textserve serve`), called with
  the project's generic TF Serving client (`serving.client.ServingClient`).
  Each batch becomes one Predict request on `serving_default` (gRPC
  `PredictionService/Predict`, or REST `POST /v1/models/NAME:predict` with
  columnar `inputs`), with up to `concurrency` requests in flight. Class names
  (for `--probabilities`) are not outputs of `serving_default`; they come from
  one Classify call on the model's `classify` signature at start. Transient
  failures (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, and the HTTP
  statuses the client maps to them, refused connections) are retried with
  backoff; anything else stops the run with the server's message, and
  `--resume` continues it later.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa

from pipeline.errors import RunStopped, ScoringError
from preprocessing import names

_OUTPUTS = (names.PREDICTED_LABEL, names.SCORE, names.PROBABILITIES)


class Predictor(Protocol):
    """What the job needs of a predictor (the two below, or a stand-in such as the benchmark's no-op)."""

    concurrency: int  # batches worth having in flight at once
    description: str  # how the start line names the model
    label_names: list[str]  # class names in probability order ([] when unknown)

    def predict(self, texts: pa.Array) -> dict[str, np.ndarray]:
        """`serving_default`'s outputs (label, score, probabilities) for one batch of texts."""
        ...

    def close(self) -> None:
        """Releases connections or the model."""
        ...


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

# Answers worth another try in a batch job: a restarting, overloaded or slow server.
_RETRY_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED")
_RETRIES = 4
_BACKOFF_S = 0.5
_MAX_BACKOFF_S = 8.0


def _parse_server(url: str) -> tuple[str, str]:
    """`grpc://HOST:PORT` or `http://HOST:PORT` → (transport, target) for `ServingClient`."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("grpc", "http") or not parsed.hostname or not parsed.port:
        raise ScoringError(
            f"--server {url!r}: expected grpc://HOST:PORT (TF Serving's --port) or http://HOST:PORT "
            f"(its --rest_api_port)."
        )
    if parsed.scheme == "grpc":
        return "grpc", f"{parsed.hostname}:{parsed.port}"
    return "rest", f"http://{parsed.hostname}:{parsed.port}"


class RemotePredictor:
    """Scores batches through a model server with the generic TF Serving client (`serving.client`).

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
        from serving.client import ClientError, ServingClient

        self._client_error = ClientError
        transport, target = _parse_server(server)
        self.description = f"model {model_name!r} at {server}"
        self.concurrency = concurrency
        self.client = ServingClient(
            target,
            model_name,
            transport=transport,
            timeout=timeout_s,
            retries=_RETRIES,
            backoff=_BACKOFF_S,
            max_backoff=_MAX_BACKOFF_S,
            retry_codes=_RETRY_CODES,
        )
        try:
            signatures = self.client.metadata().signatures
        except ClientError as error:
            hint = "; is it running?" if error.code == "UNAVAILABLE" else ""
            raise ScoringError(f"{server}: {error}{hint}") from error
        if names.PREDICT_SIGNATURE not in signatures:
            raise ScoringError(
                f"model {model_name!r} at {server} has no `{names.PREDICT_SIGNATURE}` signature; it has "
                f"{sorted(signatures)}."
            )
        try:
            answer = self.client.classify(
                [{names.TEXT_KEY: "class names"}], signature_name=names.CLASSIFY_SIGNATURE
            )
            self.label_names = [label for label, _ in answer[0]]
        except ClientError as error:
            if need_label_names:
                raise ScoringError(
                    f"{server}: --probabilities needs the class names, read through the model's "
                    f"`{names.CLASSIFY_SIGNATURE}` signature, which failed: {error}"
                ) from error
            self.label_names = []  # metrics then use the labels that occur

    def predict(self, texts: pa.Array) -> dict[str, np.ndarray]:
        """One Predict request for the batch's texts (retried while the server is transiently down).

        Raises:
          RunStopped: the server refused the request or stopped answering.
        """
        batch = np.empty(len(texts), dtype=object)
        batch[:] = texts.to_pylist()
        try:
            return self.client.predict(
                {names.TEXT_KEY: batch}, signature_name=names.PREDICT_SIGNATURE, output_filter=list(_OUTPUTS)
            )
        except self._client_error as error:
            raise RunStopped(str(error)) from error

    def close(self) -> None:
        """Closes the channel or the pooled connections."""
        self.client.close()
