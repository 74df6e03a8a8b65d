"""TF Serving's REST request JSON → tensors and tf.Examples (TFS_CONTRACT.md §4, §6).

The REST front end (`rest.py`) calls, in TF Serving's order of checks:

    doc = parse_request(body)                  # "JSON Parse error: ..." / "... Is not object"
    name = signature_name(doc)                 # "'signature_name' key must be a string value."
    ...model and signature lookup (rest.py / DataPlane)...
    inputs, row = predict_inputs(doc, signature, body)   # instances / inputs → numpy

and for `:classify` / `:regress`: `parse_request`, `signature_name`, then
`rest_examples.serialized_examples(doc, api)` (JSON → tf.Example bytes, before
the model lookup, as TF Serving does). The answers are written by `rest_response`.

Decisions worth knowing (where TF Serving's C++ behaviour cannot or should not
be copied byte for byte):

* Parsing uses orjson; only when orjson refuses a document (NaN/Infinity
  tokens, bytes that are not UTF-8, integers beyond 64 bits, a real syntax
  error) is it parsed again with Python's `json` module, which accepts the
  `NaN`, `Infinity` and `-Infinity` tokens TF Serving accepts. Syntax errors are
  reported as `JSON Parse error: <reason> at offset: <byte offset>`.
* Like TF Serving (rapidjson without encoding validation), bytes that are not
  UTF-8 inside a JSON string are kept as they are: they reach a DT_STRING
  tensor unchanged (the model then decides; a float input answers 400 `... is
  not of expected type: float`).
* Error messages that quote a JSON value (`JSON Value: ...`) print it compactly
  and cut it after `MAX_QUOTED_JSON_CHARS` characters; TF Serving prints the
  whole value, which for a 10 MB document is a 10 MB error message.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from serving import tensor_codec
from serving.errors import ServingError, invalid_argument, unimplemented

SIGNATURE_KEY = "signature_name"


INSTANCES_KEY = "instances"


INPUTS_KEY = "inputs"


CONTEXT_KEY = "context"


EXAMPLES_KEY = "examples"


B64_KEY = "b64"


# Longest JSON value quoted in an error message before it is cut with "...".
MAX_QUOTED_JSON_CHARS = 256


# Largest integers a float / double holds exactly (IsLosslessDecimal in TF Serving).
_MAX_EXACT_INT = {types_pb2.DT_FLOAT: (1 << 24) - 1, types_pb2.DT_DOUBLE: (1 << 53) - 1}


FLOAT_MAX = {
    types_pb2.DT_FLOAT: float(np.finfo(np.float32).max),
    types_pb2.DT_DOUBLE: float(np.finfo(np.float64).max),
}


# Integer dtypes: inclusive JSON range accepted (rapidjson IsInt/IsInt64/IsUint/IsUint64).
_INT_RANGE = {
    types_pb2.DT_INT32: (-(1 << 31), (1 << 31) - 1),
    types_pb2.DT_INT16: (-(1 << 31), (1 << 31) - 1),
    types_pb2.DT_INT8: (-(1 << 31), (1 << 31) - 1),
    types_pb2.DT_UINT8: (-(1 << 31), (1 << 31) - 1),
    types_pb2.DT_INT64: (-(1 << 63), (1 << 63) - 1),
    types_pb2.DT_UINT32: (0, (1 << 32) - 1),
    types_pb2.DT_UINT64: (0, (1 << 64) - 1),
}


_FLOAT_DTYPES = (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE)


def parse_request(body: bytes) -> dict:
    """Parses a request body into a JSON object, as TF Serving's `ParseJson` does.

    Args:
      body: the (already gunzipped) HTTP request body.

    Returns:
      The top-level JSON object.

    Raises:
      ServingError: INVALID_ARGUMENT `JSON Parse error: ...` for an empty or
        malformed document, `JSON Value: ... Is not object` for a non-object.
    """
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = _tolerant_loads(body)
    if not isinstance(doc, dict):
        raise format_error(doc, "Is not object")
    return doc


def _tolerant_loads(body: bytes) -> Any:
    """Python's json parser: NaN/Infinity tokens, big integers, non-UTF-8 bytes in strings.

    Bytes that are not UTF-8 are carried as lone surrogates (surrogateescape)
    and turned back into the same bytes by `utf8`.
    """
    text = body.decode("utf-8", "surrogateescape")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        offset = len(text[: e.pos].encode("utf-8", "surrogateescape"))
        raise invalid_argument(f"JSON Parse error: {e.msg} at offset: {offset}") from None
    except RecursionError:
        raise invalid_argument("JSON Parse error: the document is nested too deeply") from None


def signature_name(doc: Mapping[str, Any]) -> str:
    """The request's `signature_name` ('' when absent: the default signature).

    Raises:
      ServingError: INVALID_ARGUMENT when it is not a JSON string.
    """
    value = doc.get(SIGNATURE_KEY, "")
    if not isinstance(value, str):
        raise invalid_argument(
            f"JSON Value: {_quote(doc)} not formatted correctly. 'signature_name' key must be a string value."
        )
    return value


def predict_inputs(
    doc: Mapping[str, Any], signature: meta_graph_pb2.SignatureDef, body: bytes = b""
) -> tuple[dict[str, np.ndarray], bool]:
    """Converts `instances` (row) or `inputs` (columnar) into input arrays.

    Values are typed by the SIGNATURE's input dtypes (JSON has no float/int
    distinction worth trusting), as TF Serving's `FillPredictRequestFromJson`.

    Args:
      doc: the parsed request object.
      signature: the signature the request names (already looked up).
      body: the raw body; only used to skip a slow bool scan when it holds no
        `true`/`false` token at all.

    Returns:
      (alias → numpy array, True for the row format / False for columnar).
      DT_STRING inputs are object arrays of bytes.

    Raises:
      ServingError: INVALID_ARGUMENT with TF Serving's message for every shape,
        type, key or base64 problem; UNIMPLEMENTED for dtypes JSON cannot carry.
    """
    infos = signature.inputs
    if not infos:
        raise invalid_argument(f"Failed to get input map for signature: {signature_name(doc) or 'DEFAULT'}")
    bools_possible = not body or b"true" in body or b"false" in body
    has_instances = INSTANCES_KEY in doc
    has_inputs = INPUTS_KEY in doc
    if has_instances and has_inputs:
        raise format_error(
            doc, "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist "
        )
    if has_instances:
        instances = doc[INSTANCES_KEY]
        if not isinstance(instances, list):
            raise format_error(doc, "Excepting 'instances' to be an list/array")
        if not instances:
            raise format_error(doc, "No values in 'instances' array")
        return _from_instances(instances, infos, bools_possible), True
    if has_inputs:
        return _from_inputs(doc[INPUTS_KEY], infos, bools_possible), False
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _from_instances(instances: list, infos: Mapping[str, Any], bools_possible: bool) -> dict[str, np.ndarray]:
    """Row format: stacks one value (or one object of named values) per instance."""
    first = instances[0]
    if not isinstance(first, dict) and len(infos) > 1:
        raise invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple "
            "input tensors required as per tensorinfo_map"
        )
    if not _is_row_object(first):
        (alias,) = infos if len(infos) == 1 else (min(infos),)
        dtype = infos[alias].dtype
        fast = _fast_tensor(instances, dtype, bools_possible)
        if fast is not None and all(not _is_row_object(v) for v in instances):
            return {alias: fast}
        return _instances_exact(instances, infos, plain_alias=alias)

    names = set(infos)
    if all(_is_row_object(item) and item.keys() == names for item in instances):
        out = {}
        for alias in sorted(names):
            fast = _fast_tensor([item[alias] for item in instances], infos[alias].dtype, bools_possible)
            if fast is None:
                break
            out[alias] = fast
        else:
            return out
    return _instances_exact(instances, infos, plain_alias=None)


def _instances_exact(
    instances: list, infos: Mapping[str, Any], plain_alias: str | None
) -> dict[str, np.ndarray]:
    """Element by element, with TF Serving's messages (the reference path)."""
    names = set(infos)
    shapes: dict[str, tuple[int, ...]] = {}
    values: dict[str, list] = {}
    for index, item in enumerate(instances):
        if plain_alias is None:
            if not _is_row_object(item):
                raise invalid_argument(f"Expecting object but got list at item {index} of input list")
            for key, value in item.items():
                try:
                    _add_instance_item(value, key, infos, shapes, values)
                except ServingError as e:
                    raise invalid_argument(
                        f"Failed to process element: {index} key: {key} of 'instances' list. "
                        f"Error: {_status_string(e)}"
                    ) from None
            if set(item) != names:
                raise invalid_argument(
                    f"Failed to process element: {index} of 'instances' list. JSON object: "
                    f"{_quote(item)} keys must be equal to: {','.join(sorted(names))}"
                )
        else:
            if _is_row_object(item):
                raise invalid_argument(f"Expecting value/list but got object at item {index} of input list")
            try:
                _add_instance_item(item, plain_alias, infos, shapes, values)
            except ServingError as e:
                raise invalid_argument(
                    f"Failed to process element: {index} of 'instances' list. Error: {_status_string(e)}"
                ) from None
    count = len(instances)
    return {
        alias: _to_array(flat, (count, *shapes[alias]), infos[alias].dtype) for alias, flat in values.items()
    }


def _add_instance_item(
    value: Any,
    name: str,
    infos: Mapping[str, Any],
    shapes: dict[str, tuple[int, ...]],
    values: dict[str, list],
) -> None:
    """Adds one instance's value for input `name`; all instances must agree in shape."""
    if name not in infos:
        raise invalid_argument(f"JSON object: does not have named input: {name}")
    shape = _dense_shape(value)
    flat: list = []
    _fill(value, 0, shape, infos[name].dtype, flat)
    if name not in shapes:
        shapes[name] = shape
        values[name] = flat
        return
    expected = shapes[name]
    if math.prod(expected) != len(flat):
        raise invalid_argument(f"Expecting tensor size: {math.prod(expected)} but got: {len(flat)}")
    if expected != shape:
        raise invalid_argument(f"Expecting shape {_shape_string(expected)} but got: {_shape_string(shape)}")
    values[name].extend(flat)


def _from_inputs(value: Any, infos: Mapping[str, Any], bools_possible: bool) -> dict[str, np.ndarray]:
    """Columnar format: one whole tensor per input; names not in the signature are ignored."""
    if not isinstance(value, dict) or is_b64(value):
        if len(infos) > 1:
            raise invalid_argument(
                "inputs is a plain value/list, but expecting an object as multiple "
                "input tensors required as per tensorinfo_map"
            )
        (alias,) = infos
        return {alias: _tensor(value, infos[alias].dtype, bools_possible)}
    out = {}
    for alias in sorted(infos):
        if alias not in value:
            raise invalid_argument(f"Missing named input: {alias} in 'inputs' object.")
        out[alias] = _tensor(value[alias], infos[alias].dtype, bools_possible)
    return out


def _tensor(value: Any, dtype: int, bools_possible: bool) -> np.ndarray:
    """One JSON value (scalar or nested lists) → array of `dtype`."""
    fast = _fast_tensor(value, dtype, bools_possible)
    if fast is not None:
        return fast
    shape = _dense_shape(value)
    flat: list = []
    _fill(value, 0, shape, dtype, flat)
    return _to_array(flat, shape, dtype)


def _fast_tensor(value: Any, dtype: int, bools_possible: bool) -> np.ndarray | None:
    """numpy's own conversion when it gives exactly what the exact path would; else None.

    None sends the caller down the exact path, which also words the error.
    """
    if dtype == types_pb2.DT_STRING:
        if type(value) is list and all(type(v) is str for v in value):
            out = np.empty(len(value), dtype=object)
            out[:] = [utf8(v) for v in value]
            return out
        return None
    if dtype not in _FLOAT_DTYPES and dtype not in _INT_RANGE and dtype != types_pb2.DT_BOOL:
        return None
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        return None  # ragged lists, mixed types: the exact path says which element
    kind = array.dtype.kind
    if dtype == types_pb2.DT_BOOL:
        return array if kind == "b" else None
    if kind == "b" or kind not in "iuf" or (bools_possible and not _no_bools(value)):
        return None
    np_dtype = tensor_codec.numpy_dtype(dtype)
    if dtype in _FLOAT_DTYPES:
        if kind in "iu":
            if array.size and max(-int(array.min()), int(array.max())) > _MAX_EXACT_INT[dtype]:
                return None
            return array.astype(np_dtype)
        if dtype == types_pb2.DT_DOUBLE:
            return array.astype(np.float64, copy=False)
        with np.errstate(over="ignore"):
            converted = array.astype(np.float32)
        if not np.isfinite(converted).all() and (np.isfinite(converted) != np.isfinite(array)).any():
            return None  # a finite double beyond float range: lossy, exact path reports it
        return converted
    if kind == "f":
        return None
    low, high = _INT_RANGE[dtype]
    if array.size and (int(array.min()) < low or int(array.max()) > high):
        return None
    # int8/int16/uint8 take any int32 and wrap, as TF's int_val → static_cast does.
    return array.astype(np.int64).astype(np_dtype) if np_dtype.itemsize < 4 else array.astype(np_dtype)


def _no_bools(value: Any) -> bool:
    """True when no JSON true/false occurs in a nested list (exact, slower check)."""
    if type(value) is bool:
        return False
    if type(value) is list:
        return all(_no_bools(v) for v in value)
    return True


def _dense_shape(value: Any) -> tuple[int, ...]:
    """The shape a nested list claims, following first elements (GetDenseTensorShape)."""
    dims = []
    while type(value) is list:
        dims.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(dims)


def _fill(value: Any, level: int, shape: tuple[int, ...], dtype: int, out: list) -> None:
    """Appends the leaves of `value` to `out`, checking rectangularity and types."""
    rank = len(shape)
    if type(value) is not list:
        if level != rank:
            raise invalid_argument(
                f"JSON Value: {_quote(value)} found at incorrect level: {level + 1} in the "
                f"JSON DOM. Expected at level: {rank}"
            )
        if isinstance(value, dict):
            if dtype != types_pb2.DT_STRING:
                raise _type_error(value, dtype)
            out.append(decode_b64_object(value))
        else:
            out.append(_scalar(value, dtype))
        return
    if level >= rank:
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid_argument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} "
            f"expected size: {shape[level]}"
        )
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def _scalar(value: Any, dtype: int) -> Any:
    """One JSON leaf checked against `dtype` (AddValueToTensor)."""
    kind = type(value)
    if dtype in _FLOAT_DTYPES:
        if kind is int:
            if abs(value) > (1 << 64) - 1:  # rapidjson would have read it as a double
                value = float(value)
                kind = float
            elif abs(value) > _MAX_EXACT_INT[dtype]:
                raise lossy_error(value, dtype)
            else:
                return value
        if kind is float:
            if math.isfinite(value) and abs(value) > FLOAT_MAX[dtype]:
                raise lossy_error(value, dtype)
            return value
        raise _type_error(value, dtype)
    if dtype in _INT_RANGE:
        low, high = _INT_RANGE[dtype]
        if kind is int and low <= value <= high:
            return value
        raise _type_error(value, dtype)
    if dtype == types_pb2.DT_BOOL:
        if kind is bool:
            return value
        raise _type_error(value, dtype)
    if dtype == types_pb2.DT_STRING:
        if kind is str:
            return utf8(value)
        raise _type_error(value, dtype)
    raise unimplemented(
        f"Conversion of JSON Value: {_quote(value)} to type: {tensor_codec.dtype_name(dtype)}"
    )


def _to_array(flat: list, shape: tuple[int, ...], dtype: int) -> np.ndarray:
    """Flat checked leaves → array of `shape` and `dtype`."""
    np_dtype = tensor_codec.numpy_dtype(dtype)
    if dtype == types_pb2.DT_STRING:
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
    elif np_dtype.kind in "iu" and np_dtype.itemsize < 4:
        array = np.asarray(flat, dtype=np.int64).astype(np_dtype)
    else:
        array = np.asarray(flat, dtype=np_dtype)
    return array.reshape(shape)


def decode_b64_object(value: Any) -> bytes:
    """Decodes `{"b64": "<standard base64>"}` (padding optional, nothing else tolerated).

    Raises:
      ServingError: INVALID_ARGUMENT `... not formatted correctly for base64 data`
        for any other object, `Unable to base64 decode` for bad base64.
    """
    if not is_b64(value):
        raise invalid_argument(f"JSON Value: {_quote(value)} not formatted correctly for base64 data")
    text = value[B64_KEY]
    missing = -len(text) % 4
    if missing == 3:
        raise invalid_argument("Unable to base64 decode")
    try:
        return base64.b64decode(text + "=" * missing, validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument("Unable to base64 decode") from None


def is_b64(value: Any) -> bool:
    return type(value) is dict and len(value) == 1 and type(value.get(B64_KEY)) is str


def _is_row_object(value: Any) -> bool:
    """An instance given as an object of named inputs (a b64 object is a value)."""
    return type(value) is dict and not is_b64(value)


def utf8(text: str) -> bytes:
    # surrogateescape restores bytes that were not UTF-8 in the request (see _tolerant_loads).
    return text.encode("utf-8", "surrogateescape")


def _quote(value: Any) -> str:
    """A JSON value for an error message: compact, cut after MAX_QUOTED_JSON_CHARS."""
    try:
        text = orjson.dumps(value).decode("utf-8")
    except TypeError:
        # Strings holding request bytes that were not UTF-8: show them as U+FFFD.
        text = json.dumps(value, ensure_ascii=False, default=str)
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if len(text) > MAX_QUOTED_JSON_CHARS:
        text = text[:MAX_QUOTED_JSON_CHARS] + "..."
    return text


def format_error(value: Any, message: str) -> ServingError:
    return invalid_argument(f"JSON Value: {_quote(value)} {message}")


def json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _type_error(value: Any, dtype: int) -> ServingError:
    return invalid_argument(
        f"JSON Value: {_quote(value)} Type: {json_type(value)} is not of expected type: "
        f"{tensor_codec.dtype_name(dtype)}"
    )


def lossy_error(value: Any, dtype: int) -> ServingError:
    return invalid_argument(
        f"Cannot convert JSON value: {_quote(value)} to {tensor_codec.dtype_name(dtype)} "
        "without loss of precision."
    )


def _shape_string(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _status_string(error: ServingError) -> str:
    """A nested status as TF's Status::ToString prints it ("INVALID_ARGUMENT: msg")."""
    return f"{error.code.name}: {error.message}"
