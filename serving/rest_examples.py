"""TF Serving's REST Classify / Regress JSON → serialized tf.Examples (TFS_CONTRACT.md §4).

`rest.py` calls `serialized_examples(doc, api)` after `rest_request.parse_request`
and `signature_name`, before the model lookup, as TF Serving does. A request is
`{"examples": [{feature: value, ...}, ...]}`, optionally with a `"context"`
object whose features every example gets. Feature kinds follow the JSON types
in TF Serving's order of checks: strings and `{"b64": ...}` are bytes, integers
int64 and other numbers float; one feature never mixes kinds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import types_pb2

from serving.errors import invalid_argument
from serving.rest_request import (
    CONTEXT_KEY,
    EXAMPLES_KEY,
    FLOAT_MAX,
    decode_b64_object,
    format_error,
    is_b64,
    json_type,
    lossy_error,
    utf8,
)


def serialized_examples(doc: Mapping[str, Any], api: str = "classify") -> list[bytes]:
    """Turns `context` + `examples` into the serialized tf.Examples fed to the model.

    Each JSON value becomes a feature: string / b64 → bytes_list, number with a
    fraction or exponent → float_list, integer → int64_list, true/false → int64 1/0.
    With a context, each row is the serialized context followed by the serialized
    example (proto merge: the example's own features win).

    Args:
      doc: the parsed request object.
      api: "classify" or "regress" (TF Serving's message says classify for both).

    Returns:
      One serialized Example per entry of `examples`.

    Raises:
      ServingError: INVALID_ARGUMENT for missing/empty/non-list `examples`,
        non-object examples, null / nested / mixed values, bad base64.
    """
    del api  # TF Serving words the missing-key error as "classify" for both APIs.
    context = b""
    if CONTEXT_KEY in doc:
        context = _example(doc[CONTEXT_KEY]).SerializeToString()
    if EXAMPLES_KEY not in doc:
        raise format_error(doc, "When method is classify, key 'examples' is expected and was not found")
    examples = doc[EXAMPLES_KEY]
    if not isinstance(examples, list):
        raise format_error(doc, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise format_error(doc, "'examples' value is an empty array")
    return [context + _example(item).SerializeToString() for item in examples]


def _example(value: Any) -> example_pb2.Example:
    if not isinstance(value, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {json_type(value)}")
    example = example_pb2.Example()
    features = example.features.feature
    for name, content in value.items():
        features[name].CopyFrom(_feature(name, content))
    return example


def _feature(name: str, content: Any) -> feature_pb2.Feature:
    """One JSON value or flat list → Feature; all elements must be of one kind."""
    kind = None
    values: list = []
    for item in content if type(content) is list else (content,):
        item_kind, converted = _feature_value(name, item, kind)
        kind = item_kind
        values.append(converted)
    feature = feature_pb2.Feature()
    if kind == "bytes":
        feature.bytes_list.value.extend(values)
    elif kind == "float":
        feature.float_list.value.extend(values)
    elif kind == "int64":
        feature.int64_list.value.extend(values)
    return feature


def _feature_value(name: str, value: Any, kind: str | None) -> tuple[str, Any]:
    """(kind, value) of one feature element, in TF Serving's order of checks."""
    value_type = type(value)
    converted: Any
    if value is None or value_type is list or (value_type is dict and not is_b64(value)):
        raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: {json_type(value)}")
    if value_type is bool:
        wanted, converted = "int64", int(value)
    elif value_type is dict:
        _check_kind(name, kind, "bytes")
        return "bytes", decode_b64_object(value)
    elif value_type is str:
        wanted, converted = "bytes", utf8(value)
    elif value_type is float or (value_type is int and value > (1 << 64) - 1):
        _check_kind(name, kind, "float")
        value = float(value)
        if math.isfinite(value) and abs(value) > FLOAT_MAX[types_pb2.DT_FLOAT]:
            raise lossy_error(value, types_pb2.DT_FLOAT)
        return "float", value
    else:
        _check_kind(name, kind, "int64")
        if value > (1 << 63) - 1:
            raise invalid_argument(f"Feature: {name} has uint64 element. Only int64 is supported.")
        if value < -(1 << 63):
            raise lossy_error(value, types_pb2.DT_INT64)
        return "int64", value
    _check_kind(name, kind, wanted)
    return wanted, converted


def _check_kind(name: str, kind: str | None, wanted: str) -> None:
    if kind is not None and kind != wanted:
        raise invalid_argument(f"Unexpected element type in feature: {name} expecting type: {kind}")
