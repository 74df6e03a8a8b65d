"""`TensorProto` <-> numpy conversion with TensorFlow C++ semantics.

TF Serving decodes request tensors with the C++ `Tensor::FromProto`, which is
more lenient than Python's `tf.make_ndarray` (TFS_CONTRACT.md §5, §10.4):

* The shape must be valid: known rank, no negative dimension, an element
  count that fits int64 at every step of the product (and, here, at most 64
  dimensions: numpy's limit).
* A tensor of zero elements is empty whatever its fields hold.
* `tensor_content` (raw little-endian bytes) wins when it is non-empty; its
  length must be exactly `num_elements * itemsize` (DT_STRING: the element
  lengths as varints, then the bytes, as `DecodeStringList` reads them).
* Otherwise the typed field for the dtype (`float_val`, `int_val`, ...) is read:
  fewer values than the shape needs repeat the last value, extra values are
  ignored, and no values at all give zeros (empty strings for DT_STRING);
  `int_val` entries are cast to narrower types (uint8, int16, ...) as C++'s
  static_cast does, wrapping around.
* An unsupported dtype fails the decode. The caller turns any failure into
  `tensor parsing error: <alias>` (INVALID_ARGUMENT), as TF Serving does.

Validate before allocating: the repeat-last and zeros rules let a message of a
few dozen bytes declare a tensor of any size (TF Serving answers such a
request with `tensor parsing error` once its allocator refuses). `to_numpy`
therefore computes the decoded size from the shape and the values present
before expanding anything and refuses a tensor over its byte budget with
`TensorTooLargeError`: the caller's per-request budget, or, without one, a
limit proportional to the message's own serialized size.

Responses are written like `Tensor::AsProtoField` (typed fields) or, with
`--enable_serialization_as_tensor_content`, like `AsProtoTensorContent`.

The module avoids `tf.make_tensor_proto` / `tf.make_ndarray` on the request
path: both are several times slower for small tensors and the latter rejects
the length mismatches above.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2


class TensorDecodeError(ValueError):
    """A `TensorProto` that `Tensor::FromProto` would refuse (bad shape, dtype or content)."""


class TensorTooLargeError(TensorDecodeError):
    """A `TensorProto` whose decoded size would exceed the byte budget.

    Attributes:
      needed_bytes: what decoding it would allocate.
      limit_bytes: the budget it exceeds.
      from_request_budget: True when the caller gave the budget (`max_bytes`),
        False when it was derived from the message size.
    """

    def __init__(self, message: str, needed_bytes: int, limit_bytes: int, from_request_budget: bool):
        super().__init__(message)
        self.needed_bytes = needed_bytes
        self.limit_bytes = limit_bytes
        self.from_request_budget = from_request_budget


# Without a caller's budget, a tensor may decode to this many bytes per byte of
# its serialized form. Honest requests stay well below: the widest expansion of
# a typed field is a 1-byte varint int64 (8 bytes decoded) or a 2-byte
# string_val entry (an 8-byte pointer here plus TF's 24-byte tstring later).
_DEFAULT_EXPANSION = 64
# ... and at least this many: small tensors of zeros (no values at all) pass.
_DEFAULT_FLOOR_BYTES = 16 << 20
# What one DT_STRING element costs beyond its bytes: a numpy object pointer and,
# once fed to TensorFlow, a tstring.
_STRING_ELEMENT_BYTES = 32
_MAX_RANK = 64  # numpy's limit (TensorFlow allows 254)
_INT64_MAX = 2**63 - 1


@dataclasses.dataclass(frozen=True)
class _DtypeInfo:
    """How one TensorFlow dtype maps to numpy and to the typed `TensorProto` field."""

    np_dtype: np.dtype
    field: str  # typed repeated field of TensorProto holding the values
    # Converts the typed field's values (a list) into a flat numpy array.
    from_field: Callable[[list, np.dtype], np.ndarray]
    # Converts a flat numpy array into a list for the typed field.
    to_field: Callable[[np.ndarray], list]


def _plain_from(values: list, np_dtype: np.dtype) -> np.ndarray:
    return np.asarray(values, dtype=np_dtype)


def _narrow_int_from(values: list, np_dtype: np.dtype) -> np.ndarray:
    # int_val holds int32s for every narrower integer type; C++ static_casts them (wrapping).
    return np.asarray(values, dtype=np.int32).astype(np_dtype)


def _plain_to(flat: np.ndarray) -> list:
    return flat.tolist()


def _bits16_from(values: list, np_dtype: np.dtype) -> np.ndarray:
    # half_val carries the raw 16-bit patterns of float16 / bfloat16 in int32s.
    return np.asarray(values, dtype=np.int64).astype(np.uint16).view(np_dtype)


def _bits16_to(flat: np.ndarray) -> list:
    return flat.view(np.uint16).tolist()


def _complex_from(values: list, np_dtype: np.dtype) -> np.ndarray:
    # scomplex_val / dcomplex_val interleave (real, imag) pairs.
    part = np.float32 if np_dtype == np.complex64 else np.float64
    pairs = np.asarray(values, dtype=part)
    if pairs.size % 2:
        pairs = pairs[:-1]
    return pairs.view(np_dtype)


def _complex_to(flat: np.ndarray) -> list:
    part = np.float32 if flat.dtype == np.complex64 else np.float64
    return flat.view(part).tolist()


def _string_from(values: list, np_dtype: np.dtype) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _string_to(flat: np.ndarray) -> list:
    return [v if isinstance(v, bytes) else as_bytes(v) for v in flat.tolist()]


def as_bytes(value) -> bytes:
    """A string-tensor element as bytes (str is UTF-8 encoded)."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"string tensor element {value!r} is neither bytes nor str")


_I = _DtypeInfo
_DTYPES: dict[int, _DtypeInfo] = {
    types_pb2.DT_FLOAT: _I(np.dtype(np.float32), "float_val", _plain_from, _plain_to),
    types_pb2.DT_DOUBLE: _I(np.dtype(np.float64), "double_val", _plain_from, _plain_to),
    types_pb2.DT_INT32: _I(np.dtype(np.int32), "int_val", _plain_from, _plain_to),
    types_pb2.DT_UINT8: _I(np.dtype(np.uint8), "int_val", _narrow_int_from, _plain_to),
    types_pb2.DT_INT16: _I(np.dtype(np.int16), "int_val", _narrow_int_from, _plain_to),
    types_pb2.DT_INT8: _I(np.dtype(np.int8), "int_val", _narrow_int_from, _plain_to),
    types_pb2.DT_UINT16: _I(np.dtype(np.uint16), "int_val", _narrow_int_from, _plain_to),
    types_pb2.DT_INT64: _I(np.dtype(np.int64), "int64_val", _plain_from, _plain_to),
    types_pb2.DT_UINT32: _I(np.dtype(np.uint32), "uint32_val", _plain_from, _plain_to),
    types_pb2.DT_UINT64: _I(np.dtype(np.uint64), "uint64_val", _plain_from, _plain_to),
    types_pb2.DT_BOOL: _I(np.dtype(np.bool_), "bool_val", _plain_from, _plain_to),
    types_pb2.DT_HALF: _I(np.dtype(np.float16), "half_val", _bits16_from, _bits16_to),
    types_pb2.DT_BFLOAT16: _I(np.dtype(ml_dtypes.bfloat16), "half_val", _bits16_from, _bits16_to),
    types_pb2.DT_COMPLEX64: _I(np.dtype(np.complex64), "scomplex_val", _complex_from, _complex_to),
    types_pb2.DT_COMPLEX128: _I(np.dtype(np.complex128), "dcomplex_val", _complex_from, _complex_to),
    types_pb2.DT_STRING: _I(np.dtype(object), "string_val", _string_from, _string_to),
}

# numpy dtype -> TF DataType, for encoding session outputs.
_NP_TO_TF: dict[np.dtype, int] = {
    info.np_dtype: tf_dtype for tf_dtype, info in _DTYPES.items() if tf_dtype != types_pb2.DT_STRING
}


def dtype_name(tf_dtype: int) -> str:
    """`DT_FLOAT` → `float`, as TensorFlow's `DataTypeString` prints dtypes in messages."""
    name = types_pb2.DataType.Name(tf_dtype) if tf_dtype in types_pb2.DataType.values() else "invalid"
    return name[3:].lower() if name.startswith("DT_") else name


def numpy_dtype(tf_dtype: int) -> np.dtype:
    """The numpy dtype used for a TensorFlow `DataType` enum value.

    Raises:
      TensorDecodeError: the dtype has no numpy counterpart here (quantized, resource, ...).
    """
    info = _DTYPES.get(tf_dtype)
    if info is None:
        raise TensorDecodeError(f"unsupported dtype {dtype_name(tf_dtype)}")
    return info.np_dtype


def _shape_of(shape_proto: tensor_shape_pb2.TensorShapeProto) -> tuple[tuple[int, ...], int]:
    """The dims and element count of a shape, checked as `TensorShape::IsValid` does."""
    if shape_proto.unknown_rank:
        raise TensorDecodeError("tensor shape has unknown rank")
    if len(shape_proto.dim) > _MAX_RANK:
        raise TensorDecodeError(
            f"tensor shape has {len(shape_proto.dim)} dimensions; at most {_MAX_RANK} are supported"
        )
    dims = tuple(d.size for d in shape_proto.dim)
    count = 1
    for size in dims:
        if size < 0:
            raise TensorDecodeError(f"tensor shape {list(dims)} has a negative dimension")
        count *= size
        # Checked at every step, as TensorFlow multiplies: [2**62, 4, 0] is invalid.
        if count > _INT64_MAX:
            raise TensorDecodeError(f"tensor shape {list(dims)} has more than 2**63-1 elements")
    return dims, count


def _typed_values(proto: tensor_pb2.TensorProto, info: _DtypeInfo) -> tuple[Any, int]:
    """The typed field holding the values and how many elements it gives."""
    values = getattr(proto, info.field)
    n = len(values)
    if proto.dtype in (types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128):
        n //= 2  # two repeated entries per element
    return values, n


def _decoded_bytes(proto: tensor_pb2.TensorProto, info: _DtypeInfo, count: int) -> int:
    """What decoding would allocate, computed without expanding anything."""
    if proto.dtype != types_pb2.DT_STRING:
        return count * info.np_dtype.itemsize
    if proto.tensor_content:
        return count * _STRING_ELEMENT_BYTES + len(proto.tensor_content)
    values, n = _typed_values(proto, info)
    used = min(n, count)
    total = count * _STRING_ELEMENT_BYTES + sum(len(values[i]) for i in range(used))
    if 0 < n < count:
        total += (count - n) * len(values[n - 1])  # TensorFlow copies the repeated value each time
    return total


def _check_budget(
    proto: tensor_pb2.TensorProto, info: _DtypeInfo, dims, count: int, max_bytes: int | None
) -> None:
    needed = _decoded_bytes(proto, info, count)
    if max_bytes is not None:
        limit, source = max_bytes, "the per-request limit"
    else:
        size = proto.ByteSize()
        limit = max(_DEFAULT_FLOOR_BYTES, _DEFAULT_EXPANSION * size)
        source = f"the limit for a {size}-byte tensor message"
    if needed > limit:
        raise TensorTooLargeError(
            f"tensor of shape {list(dims)} and type {dtype_name(proto.dtype)} would take "
            f"{needed} bytes, more than {source} ({limit} bytes)",
            needed,
            limit,
            from_request_budget=max_bytes is not None,
        )


def _decode_string_list(content: bytes, count: int) -> list[bytes]:
    """DT_STRING `tensor_content`: `count` varint32 lengths, then the strings back to back.

    The layout TensorFlow's `DecodeStringList` reads; every byte must be used.
    """
    lengths = []
    pos = 0
    for _ in range(count):
        length = shift = 0
        while True:
            if pos >= len(content) or shift > 28:
                raise TensorDecodeError("DT_STRING tensor_content ends inside a length prefix")
            byte = content[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        lengths.append(length)
    if pos + sum(lengths) != len(content):
        raise TensorDecodeError(
            f"DT_STRING tensor_content holds {len(content) - pos} bytes of strings, its lengths say {sum(lengths)}"
        )
    strings = []
    for length in lengths:
        strings.append(content[pos : pos + length])
        pos += length
    return strings


def to_numpy(proto: tensor_pb2.TensorProto, *, max_bytes: int | None = None) -> np.ndarray:
    """Decodes a `TensorProto` the way TensorFlow's C++ `Tensor::FromProto` does.

    Args:
      proto: the request tensor.
      max_bytes: the most the decoded array may take (the caller's per-request
        budget); None derives a limit from the proto's serialized size, so that
        a small message can never allocate gigabytes.

    Returns:
      An array of the proto's dtype and shape (DT_STRING → object array of bytes).

    Raises:
      TensorTooLargeError: the decoded tensor would exceed the budget (checked
        before anything is allocated).
      TensorDecodeError: invalid shape or dtype, or `tensor_content` whose byte
        length does not match the shape.
    """
    info = _DTYPES.get(proto.dtype)
    if info is None:
        raise TensorDecodeError(f"unsupported dtype {dtype_name(proto.dtype)}")
    dims, count = _shape_of(proto.tensor_shape)
    if count == 0:
        try:
            return np.empty(dims, dtype=info.np_dtype)
        except ValueError as e:  # numpy caps the product of the non-zero dims
            raise TensorDecodeError(f"tensor shape {list(dims)} is too large for numpy: {e}") from e
    _check_budget(proto, info, dims, count, max_bytes)

    if proto.tensor_content:
        content = proto.tensor_content
        if proto.dtype == types_pb2.DT_STRING:
            return _string_from(_decode_string_list(content, count), info.np_dtype).reshape(dims)
        if len(content) != count * info.np_dtype.itemsize:
            raise TensorDecodeError(
                f"tensor_content has {len(content)} bytes, shape {list(dims)} of "
                f"{dtype_name(proto.dtype)} needs {count * info.np_dtype.itemsize}"
            )
        # frombuffer gives a read-only view of the request bytes: copy so callers may pad/modify.
        return np.frombuffer(content, dtype=info.np_dtype).reshape(dims).copy()

    values, n = _typed_values(proto, info)
    if n == 0:
        if proto.dtype == types_pb2.DT_STRING:
            flat = _string_from([b""] * count, info.np_dtype)
        else:
            flat = np.zeros(count, dtype=info.np_dtype)
    elif n >= count:
        # Extra values are ignored, as in C++: convert only what the shape needs.
        width = 2 if proto.dtype in (types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128) else 1
        flat = info.from_field(values[: count * width], info.np_dtype)
    else:
        # Too few: the last value fills the rest (one value fills the whole tensor).
        given = info.from_field(values, info.np_dtype)
        if proto.dtype == types_pb2.DT_STRING:
            flat = _string_from(list(given) + [given[-1]] * (count - n), info.np_dtype)
        else:
            flat = np.concatenate([given, np.full(count - n, given[-1], dtype=info.np_dtype)])
    return flat.reshape(dims)


def tf_dtype_of(array: np.ndarray) -> int:
    """The TensorFlow `DataType` enum value for a numpy array (object/str/bytes → DT_STRING).

    Raises:
      TypeError: the dtype has no TensorFlow counterpart.
    """
    if array.dtype == object or array.dtype.kind in ("S", "U"):
        return types_pb2.DT_STRING
    tf_dtype = _NP_TO_TF.get(array.dtype)
    if tf_dtype is None:
        raise TypeError(f"cannot encode numpy dtype {array.dtype} as a TensorProto")
    return tf_dtype


def from_numpy(
    array: np.ndarray,
    as_tensor_content: bool = False,
    proto: tensor_pb2.TensorProto | None = None,
) -> tensor_pb2.TensorProto:
    """Encodes an array into a `TensorProto` as TF Serving writes response tensors.

    Args:
      array: a session output (DT_STRING outputs arrive as object arrays of bytes).
      as_tensor_content: write raw bytes into `tensor_content` (TF Serving's
        `--enable_serialization_as_tensor_content`); string tensors always use
        `string_val`, since their raw content is not a flat byte buffer.
      proto: an existing message to fill (e.g. a response's map entry); a new one if None.

    Returns:
      The filled `TensorProto`.

    Raises:
      TypeError: the array's dtype has no TensorFlow counterpart.
    """
    array = np.asarray(array)
    tf_dtype = tf_dtype_of(array)
    if proto is None:
        proto = tensor_pb2.TensorProto()
    proto.dtype = tf_dtype
    dims = proto.tensor_shape.dim
    for size in array.shape:
        dims.add().size = size
    info = _DTYPES[tf_dtype]
    if tf_dtype == types_pb2.DT_STRING:
        flat = array.ravel()
        if array.dtype.kind == "U":
            flat = flat.astype(object)
        proto.string_val.extend(_string_to(flat))
    elif as_tensor_content:
        proto.tensor_content = np.ascontiguousarray(array).tobytes()
    else:
        getattr(proto, info.field).extend(info.to_field(np.ascontiguousarray(array).ravel()))
    return proto
