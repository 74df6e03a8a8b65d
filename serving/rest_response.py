"""TF Serving's REST answers: outputs, classifications, regressions and errors as JSON.

The counterpart of `rest_request`: `rest.py` writes a Predict answer with
`encode_predict_response(outputs, row_format)` (`{"predictions": ...}` for row
requests, `{"outputs": ...}` for columnar ones), Classify and Regress answers
with `encode_classify_response` / `encode_regress_response`, and every error as
`encode_error(message)`.

Decisions worth knowing:

* DT_STRING outputs are written as JSON strings. TF Serving writes their raw
  bytes even when they are not UTF-8, which makes the whole answer invalid JSON;
  here invalid sequences are replaced by U+FFFD and a warning naming the output
  is logged once per alias. Name the output `<something>_bytes` to receive
  exact bytes as `{"b64": ...}`.
* Floats are written in their shortest round-trip form for their own precision
  (float32 0.1 → `0.1`), always with a `.0` or exponent, and non-finite values
  as `NaN` / `Infinity` / `-Infinity`, as TF Serving writes them.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from serving import tensor_codec
from serving.errors import invalid_argument
from serving.rest_request import B64_KEY

log = logging.getLogger(__name__)

BYTES_SUFFIX = "_bytes"


_ORJSON_NUMPY = orjson.OPT_SERIALIZE_NUMPY


_NON_FINITE = {
    "nan": orjson.Fragment(b"NaN"),
    "inf": orjson.Fragment(b"Infinity"),
    "-inf": orjson.Fragment(b"-Infinity"),
}


_warned_outputs: set[str] = set()


def encode_predict_response(outputs: Mapping[str, np.ndarray], row_format: bool) -> bytes:
    """Writes `{"predictions": ...}` (row) or `{"outputs": ...}` (columnar).

    One output → its value directly; several → per-row objects (row) or an
    object of tensors (columnar). Aliases ending in `_bytes` with DT_STRING
    values are written as `{"b64": ...}`.

    Raises:
      ServingError: INVALID_ARGUMENT for an empty output map, or (row format)
        a scalar output or outputs that disagree on the batch size.
    """
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    aliases = sorted(outputs)
    if not row_format:
        if len(aliases) == 1:
            return _dumps({"outputs": _jsonable(outputs[aliases[0]], aliases[0])})
        return _dumps({"outputs": {a: _jsonable(outputs[a], a) for a in aliases}})
    batch = -1
    for alias in aliases:
        array = outputs[alias]
        if array.ndim == 0:
            raise invalid_argument(f"Tensor name: {alias} has no shape information ")
        if batch >= 0 and array.shape[0] != batch:
            raise invalid_argument(
                f"Tensor name: {alias} has inconsistent batch size: {array.shape[0]} expecting: {batch}"
            )
        batch = array.shape[0]
    if len(aliases) == 1:
        return _dumps({"predictions": _jsonable(outputs[aliases[0]], aliases[0])})
    rows = {a: _rows(outputs[a], a) for a in aliases}
    return _dumps({"predictions": [{a: rows[a][i] for a in aliases} for i in range(batch)]})


def encode_classify_response(classes: np.ndarray | None, scores: np.ndarray | None) -> bytes:
    """Writes `{"results": [[[label, score], ...], ...]}` (label "" / score 0.0 when absent).

    Args:
      classes: [n, k] object array of bytes, or None.
      scores: [n, k] float array, or None.

    Raises:
      ServingError: INVALID_ARGUMENT when there are no classifications.
    """
    base = classes if classes is not None else scores
    if base is None or base.shape[0] == 0:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    n, k = base.shape
    labels = _text_leaves(classes, "classes") if classes is not None else [""] * (n * k)
    if scores is not None:
        score_leaves = _float_leaves(np.ascontiguousarray(scores, dtype=np.float32))
    else:
        score_leaves = [np.float32(0.0)] * (n * k)
    results = [[[labels[i * k + j], score_leaves[i * k + j]] for j in range(k)] for i in range(n)]
    return _dumps({"results": results})


def encode_regress_response(values: np.ndarray) -> bytes:
    """Writes `{"results": [v, ...]}`, one float per example.

    Raises:
      ServingError: INVALID_ARGUMENT when there are no values.
    """
    if values.size == 0:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    return _dumps({"results": _jsonable(np.ascontiguousarray(values, dtype=np.float32).ravel(), "")})


def encode_error(message: str) -> bytes:
    """`{"error": message}` (never fails, whatever the message holds)."""
    try:
        return orjson.dumps({"error": message})
    except TypeError:  # lone surrogates from undecodable bytes
        return json.dumps({"error": message}).encode("ascii")


def _dumps(doc: Any) -> bytes:
    return orjson.dumps(doc, option=_ORJSON_NUMPY)


def _jsonable(array: np.ndarray, alias: str) -> Any:
    """A whole output tensor as something orjson writes with TF Serving's value rules."""
    kind = array.dtype.kind
    if kind == "O" or kind in "SU":
        leaves = _string_leaves(array, alias)
        return _nest(leaves, array.shape)
    if kind == "f":
        if array.dtype == np.float64 or array.dtype == np.float32 or array.dtype == np.float16:
            if np.isfinite(array).all():
                return _numeric(array)
            return _nest(_float_leaves(array), array.shape)
        return _nest(_float_leaves(array.astype(np.float32)), array.shape)  # bfloat16 etc.
    if kind in "iub":
        return _numeric(array)
    raise invalid_argument(f"Failed to write JSON value for tensor type: {array.dtype}")


def _numeric(array: np.ndarray) -> Any:
    if array.ndim == 0:
        return array[()]  # numpy scalar: orjson keeps float32 formatting
    return np.ascontiguousarray(array)


def _rows(array: np.ndarray, alias: str) -> list:
    """The per-row values of a batched output (row format with several outputs)."""
    whole = _jsonable(array, alias)
    if isinstance(whole, np.ndarray):
        return list(whole)  # numpy rows / scalars: orjson writes them natively
    return whole


def _nest(leaves: list, shape: tuple[int, ...]) -> Any:
    """Flat leaves → nested lists of `shape` (leaves kept as objects)."""
    holder = np.empty(len(leaves), dtype=object)
    holder[:] = leaves
    return holder.reshape(shape).tolist() if shape else holder[0]


def _float_leaves(array: np.ndarray) -> list:
    """Float elements as numpy scalars, non-finite ones as NaN/Infinity JSON fragments."""
    leaves = list(array.ravel())
    finite = np.isfinite(array).ravel()
    if not finite.all():
        for i in np.flatnonzero(~finite):
            leaves[i] = _NON_FINITE[str(float(leaves[i]))]
    return leaves


def _string_leaves(array: np.ndarray, alias: str) -> list:
    flat = array.ravel().tolist()
    if alias.endswith(BYTES_SUFFIX):
        return [{B64_KEY: base64.b64encode(tensor_codec.as_bytes(v)).decode("ascii")} for v in flat]
    return _text_leaves(array, alias)


def _text_leaves(array: np.ndarray, alias: str) -> list[str]:
    """DT_STRING elements as text; bytes that are not UTF-8 become U+FFFD (logged once)."""
    out = []
    for value in array.ravel().tolist():
        if isinstance(value, str):
            out.append(value)
            continue
        try:
            out.append(value.decode("utf-8"))
        except UnicodeDecodeError:
            if alias not in _warned_outputs:
                _warned_outputs.add(alias)
                log.warning(
                    "output %r holds bytes that are not UTF-8; they are written with U+FFFD "
                    "replacement characters. Name the output '%s%s' to receive them as base64.",
                    alias,
                    alias,
                    BYTES_SUFFIX,
                )
            out.append(value.decode("utf-8", "replace"))
    return out
