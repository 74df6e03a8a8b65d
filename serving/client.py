"""One TF Serving client for any model, over gRPC or REST.

Works unchanged against `textserve serve` and against TensorFlow Serving's own
`tensorflow_model_server`, because it only speaks TF Serving's public API and
knows nothing about the model it calls:

    from serving.client import ServingClient

    with ServingClient("localhost:8500", "half_plus_two") as client:            # gRPC
        client.predict({"x": np.array([1.0, 2.0], np.float32)})                  # {"y": array([2.5, 3.], ...)}
    rest = ServingClient("http://localhost:8501", "bbc_news", transport="rest")
    rest.classify([{"text": "Shares rose"}], signature_name="classify")        # [[("business", 0.99), ...]]
    rest.status(), rest.metadata()                                            # version states, signatures

What each call sends (the same requests any TF Serving client sends):

* `predict(inputs)`: gRPC `PredictionService/Predict`, REST `POST .../{model}:predict`
  with columnar `{"inputs": {alias: [...]}}`. Outputs come back as numpy arrays
  with the signature's dtypes on both transports (DT_STRING as an object array
  of bytes); over REST the dtypes (and the alias of a single output, which TF
  Serving's columnar answer leaves out) are read once per signature from the
  model's metadata, after the first answer.
* `classify(examples)` / `regress(examples)`: one `tf.Example` per mapping of
  feature name → value(s) (str/bytes → bytes_list, int → int64_list, float →
  float_list); gRPC `Classify`/`Regress`, REST `:classify` / `:regress`.
* `metadata()`: gRPC `PredictionService/GetModelMetadata`, REST `GET .../{model}/metadata`.
* `status()`: gRPC `ModelService/GetModelStatus`, REST `GET /v1/models/{model}`.

Failures raise `ClientError`, carrying the canonical status code (gRPC's name
for it, e.g. "NOT_FOUND"; REST statuses are mapped back to one), the HTTP status
for REST, and the server's own message. By default only UNAVAILABLE (gRPC), HTTP
503 and refused connections are retried, with exponential backoff and jitter,
since those are what a restarting or overloaded server answers; every other
failure is the request's fault and is raised at once (`retry_codes` widens it).

The gRPC transport imports `tensorflow_serving.apis` (which loads TensorFlow);
the REST transport needs only numpy, orjson and the standard library.
"""

from __future__ import annotations

import base64
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from serving.client_transports import (
    ClientError,
    GrpcTransport,
    ModelSpec,
    RestTransport,
)

__all__ = [
    "DEFAULT_BACKOFF_S",
    "DEFAULT_MAX_BACKOFF_S",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT_S",
    "TRANSPORTS",
    "ClientError",
    "ModelMetadata",
    "ServingClient",
    "SignatureSpec",
    "TensorSpec",
    "VersionStatus",
]

log = logging.getLogger(__name__)

# Defaults: a per-attempt deadline, and how often / how patiently to retry.
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF_S = 0.1
DEFAULT_MAX_BACKOFF_S = 2.0

TRANSPORTS = ("grpc", "rest")

T = TypeVar("T")

# A tf.Example written as a mapping: feature name → one value or a list of them.
FeatureValue = str | bytes | int | float | Sequence[str] | Sequence[bytes] | Sequence[int] | Sequence[float]
Example = Mapping[str, FeatureValue]


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


class ServingClient:
    """Calls one served model through TF Serving's gRPC or REST API.

    Args:
      target: the server: "host:port" (gRPC port for "grpc", REST port for "rest"),
        "grpc://host:port", or "http(s)://host:port" for REST.
      model_name: the served model's name (`--model_name` or the config's `name`).
      transport: "grpc" or "rest".
      timeout: seconds one attempt may take (gRPC deadline / socket timeout).
      retries: extra attempts after a retryable answer (0 = try once).
      backoff: seconds before the first retry; doubled for each further one
        (with up to 50% random jitter so many clients don't retry in step).
      max_backoff: upper bound of the wait between two attempts.
      version: ask for this model version instead of the latest.
      version_label: ask for the version behind this label (exclusive with `version`).
      retry_codes: canonical codes worth another try (refused connections are
        UNAVAILABLE); e.g. add "RESOURCE_EXHAUSTED" and "DEADLINE_EXCEEDED" for
        a batch job that prefers waiting to failing.

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
        retry_codes: Iterable[str] = ("UNAVAILABLE",),
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
        self._retry_codes = frozenset(retry_codes)
        # Output dtypes per signature, read from metadata once (REST answers carry none).
        self._output_dtypes: dict[str, dict[str, str]] = {}
        spec = ModelSpec(model_name, version, version_label)
        if transport == "grpc":
            self._wire: GrpcTransport | RestTransport = GrpcTransport(target, spec, timeout, backoff)
        else:
            self._wire = RestTransport(target, spec, timeout)

    @property
    def target(self) -> str:
        """The server address as the transport uses it (for messages)."""
        return self._wire.target

    def describe(self, method: str) -> str:
        """How a call is named in errors, e.g. "grpc Predict 'bbc_news' at 127.0.0.1:8500"."""
        return self._wire.describe(method)

    # --- public calls -------------------------------------------------------

    def predict(
        self,
        inputs: Mapping[str, Any],
        *,
        signature_name: str = "",
        output_filter: Sequence[str] = (),
    ) -> dict[str, np.ndarray]:
        """Runs a Predict request.

        Args:
          inputs: input alias → array-like (numpy array, list, scalar). Strings
            (str, bytes, or arrays of them) are sent as DT_STRING.
          signature_name: the signature; "" is the server's `serving_default`.
          output_filter: output aliases to fetch; all when empty.

        Returns:
          Output alias → numpy array with the signature's dtype (DT_STRING as an
          object array of bytes).

        Raises:
          ClientError: the server refused the request or could not be reached.
          ValueError: an input that is not a number or string array.
        """
        arrays = {alias: _as_array(alias, value) for alias, value in inputs.items()}
        outputs = self._with_retries(
            "Predict", lambda: self._wire.predict(arrays, signature_name, list(output_filter))
        )
        if isinstance(self._wire, GrpcTransport):
            return outputs
        return self._typed_rest_outputs(outputs, signature_name, list(output_filter))

    def classify(
        self, examples: Sequence[Example], *, signature_name: str = "", context: Example | None = None
    ) -> list[list[tuple[str, float]]]:
        """Runs a Classify request on one `tf.Example` per mapping.

        Args:
          examples: feature name → value(s), one mapping per example.
          signature_name: a classification signature; "" is `serving_default`.
          context: features shared by every example (`example_list_with_context`).

        Returns:
          Per example, the (label, score) pairs in the signature's class order
          (label "" when the signature has no `classes` output, score 0.0 without `scores`).

        Raises:
          ClientError: the server refused the request or could not be reached.
          ValueError: a feature value of an unsupported type.
        """
        checked = [_checked_example(i, e) for i, e in enumerate(examples)]
        shared = None if context is None else _checked_example("context", context)
        return self._with_retries("Classify", lambda: self._wire.classify(checked, shared, signature_name))

    def regress(
        self, examples: Sequence[Example], *, signature_name: str = "", context: Example | None = None
    ) -> list[float]:
        """Runs a Regress request on one `tf.Example` per mapping.

        Returns:
          One value per example.

        Raises:
          ClientError: the server refused the request or could not be reached.
          ValueError: a feature value of an unsupported type.
        """
        checked = [_checked_example(i, e) for i, e in enumerate(examples)]
        shared = None if context is None else _checked_example("context", context)
        return self._with_retries("Regress", lambda: self._wire.regress(checked, shared, signature_name))

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

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- helpers ------------------------------------------------------------

    def _with_retries(self, method: str, call: Callable[[], T]) -> T:
        """Runs `call`, retrying the retryable codes with exponential backoff and jitter."""
        delay = self._backoff
        attempt = 1
        while True:
            try:
                return call()
            except ClientError as e:
                if e.code not in self._retry_codes or attempt > self._retries:
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

    def _typed_rest_outputs(
        self, outputs: Any, signature_name: str, output_filter: list[str]
    ) -> dict[str, np.ndarray]:
        """A REST `outputs` value as alias → array with the signature's dtypes."""
        dtypes = self._signature_output_dtypes(signature_name)
        if not isinstance(outputs, dict) or (len(dtypes) == 1 and set(outputs) != set(dtypes)):
            # TF Serving answers a single output as the bare value, without its alias.
            (alias,) = output_filter or list(dtypes)
            outputs = {alias: outputs}
        return {alias: _json_to_array(value, dtypes.get(alias, "")) for alias, value in outputs.items()}

    def _signature_output_dtypes(self, signature_name: str) -> dict[str, str]:
        name = signature_name or "serving_default"
        if name not in self._output_dtypes:
            signature = self.metadata().signatures.get(name)
            outputs = signature.outputs if signature is not None else {}
            self._output_dtypes[name] = {alias: spec.dtype for alias, spec in outputs.items()}
        return self._output_dtypes[name]


# --- conversions -------------------------------------------------------------------

_NUMPY_FOR_DTYPE = {
    "DT_FLOAT": np.float32,
    "DT_DOUBLE": np.float64,
    "DT_HALF": np.float16,
    "DT_INT8": np.int8,
    "DT_INT16": np.int16,
    "DT_INT32": np.int32,
    "DT_INT64": np.int64,
    "DT_UINT8": np.uint8,
    "DT_UINT16": np.uint16,
    "DT_UINT32": np.uint32,
    "DT_UINT64": np.uint64,
    "DT_BOOL": np.bool_,
}


def _as_array(alias: str, value: Any) -> np.ndarray:
    """An input value as a numpy array; strings become an object array of bytes."""
    if isinstance(value, (str, bytes)):
        array = np.empty((), dtype=object)
        array[()] = value
    else:
        array = np.asarray(value)
    if array.dtype.kind in "USO":
        flat = [
            v.encode("utf-8") if isinstance(v, str) else v for v in array.reshape(-1).tolist()
        ]  # one pass over the strings; numbers in an object array are refused below
        if not all(isinstance(v, bytes) for v in flat):
            raise ValueError(f"input {alias!r}: an object array must hold only str or bytes")
        strings = np.empty(len(flat), dtype=object)
        strings[:] = flat
        return strings.reshape(array.shape)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"input {alias!r}: dtype {array.dtype} is not a number or string")
    return array


def _checked_example(where: int | str, example: Example) -> dict[str, list]:
    """A feature mapping as name → list of bytes / ints / floats (one kind per feature)."""
    if not isinstance(example, Mapping):
        raise ValueError(f"example {where}: expected a mapping of feature name to values, got {example!r}")
    features: dict[str, list] = {}
    for name, value in example.items():
        values: list[Any] = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
        if all(isinstance(v, (str, bytes)) for v in values):
            features[name] = [v.encode("utf-8") if isinstance(v, str) else v for v in values]
        elif all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            features[name] = [int(v) for v in values]
        elif all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values):
            features[name] = [float(v) for v in values]
        else:
            raise ValueError(
                f"example {where}, feature {name!r}: values must be all strings/bytes, all ints "
                f"or all floats, got {values!r}"
            )
    return features


def _json_to_array(value: Any, dtype: str) -> np.ndarray:
    """A REST JSON value (nested lists) as an array of the signature's dtype."""
    if dtype == "DT_STRING" or (not dtype and _first_leaf(value, str | dict)):
        array = np.asarray(_string_leaves(value), dtype=object)
        if array.dtype != object:  # a 0-d or ragged result
            array = array.astype(object)
        return array
    numpy_dtype = _NUMPY_FOR_DTYPE.get(dtype)
    return np.asarray(value, dtype=numpy_dtype) if numpy_dtype else np.asarray(value)


def _first_leaf(value: Any, kind: Any) -> bool:
    while isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, kind)


def _string_leaves(value: Any) -> Any:
    if isinstance(value, list):
        return [_string_leaves(v) for v in value]
    if isinstance(value, dict) and "b64" in value:
        return base64.b64decode(value["b64"])
    return value.encode("utf-8") if isinstance(value, str) else value


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
