"""Unit tests for serving.tensor_codec: C++ `Tensor::FromProto` leniency and response encoding."""

from __future__ import annotations

import time

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving import tensor_codec


def _proto(dtype: int, shape: list[int], **fields) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype, **fields)
    for size in shape:
        proto.tensor_shape.dim.add().size = size
    return proto


@pytest.mark.parametrize(
    "array",
    [
        np.array([[1.5, -2.0], [3.25, 4.0]], dtype=np.float32),
        np.array([1.0, 2.5], dtype=np.float64),
        np.array([[1, -2, 3]], dtype=np.int32),
        np.array([0, 255, 7], dtype=np.uint8),
        np.array([-8, 9], dtype=np.int8),
        np.array([-300, 300], dtype=np.int16),
        np.array([65535, 1], dtype=np.uint16),
        np.array([2**40, -(2**40)], dtype=np.int64),
        np.array([2**32 - 1, 5], dtype=np.uint32),
        np.array([2**64 - 1, 5], dtype=np.uint64),
        np.array([True, False, True]),
        np.array([0.5, -1.25, 65504.0], dtype=np.float16),
        np.array([1.0, -2.0], dtype=ml_dtypes.bfloat16),
        np.array([1 + 2j, -3.5j], dtype=np.complex64),
        np.array([1 + 2j, -3.5j], dtype=np.complex128),
        np.array([[b"a", b"\xff\x00bytes"], [b"", b"z"]], dtype=object),
        np.float32(3.0).reshape(()),
        np.zeros((0, 3), dtype=np.float32),
    ],
    ids=lambda a: f"{a.dtype}{list(a.shape)}",
)
@pytest.mark.parametrize("as_content", [False, True], ids=["typed", "tensor_content"])
def test_round_trip_every_dtype(array, as_content):
    proto = tensor_codec.from_numpy(array, as_tensor_content=as_content)
    assert [d.size for d in proto.tensor_shape.dim] == list(array.shape)
    if as_content and array.dtype != object and array.size:
        assert proto.tensor_content and not proto.float_val
    decoded = tensor_codec.to_numpy(proto)
    assert decoded.dtype == array.dtype
    assert decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize(
    "array",
    [
        np.array([[1.5, 2.0]], dtype=np.float32),
        np.array([1, 2], dtype=np.int64),
        np.array([0.5, 2.0], dtype=np.float16),
        np.array([b"x", b"yz"], dtype=object),
        np.array([True, False]),
    ],
)
def test_typed_fields_match_tensorflow(array):
    # Our typed encoding decodes with TF's own make_ndarray, and vice versa.
    ours = tensor_codec.from_numpy(array)
    np.testing.assert_array_equal(tf.make_ndarray(ours), array)
    theirs = tf.make_tensor_proto(array)
    np.testing.assert_array_equal(tensor_codec.to_numpy(theirs), array)


def test_half_uses_half_val_bit_patterns():
    proto = tensor_codec.from_numpy(np.array([1.0, -2.0], dtype=np.float16))
    assert proto.dtype == types_pb2.DT_HALF
    assert list(proto.half_val) == [0x3C00, 0xC000]


def test_fewer_values_repeat_the_last():
    proto = _proto(types_pb2.DT_FLOAT, [2, 3], float_val=[1.0, 2.0])
    np.testing.assert_array_equal(
        tensor_codec.to_numpy(proto), np.array([[1, 2, 2], [2, 2, 2]], dtype=np.float32)
    )


def test_one_value_fills_the_tensor():
    proto = _proto(types_pb2.DT_STRING, [3], string_val=[b"same"])
    assert tensor_codec.to_numpy(proto).tolist() == [b"same"] * 3


def test_extra_values_are_ignored():
    proto = _proto(types_pb2.DT_INT32, [2], int_val=[7, 8, 9, 10])
    assert tensor_codec.to_numpy(proto).tolist() == [7, 8]


def test_no_values_give_zeros():
    proto = _proto(types_pb2.DT_INT64, [2, 2])
    np.testing.assert_array_equal(tensor_codec.to_numpy(proto), np.zeros((2, 2), np.int64))
    strings = _proto(types_pb2.DT_STRING, [2])
    assert tensor_codec.to_numpy(strings).tolist() == [b"", b""]


def test_tensor_content_length_must_match_shape():
    proto = _proto(types_pb2.DT_FLOAT, [3], tensor_content=np.zeros(2, np.float32).tobytes())
    with pytest.raises(tensor_codec.TensorDecodeError, match="needs 12"):
        tensor_codec.to_numpy(proto)


def test_tensor_content_wins_over_typed_fields():
    proto = _proto(
        types_pb2.DT_FLOAT,
        [2],
        tensor_content=np.array([5, 6], np.float32).tobytes(),
        float_val=[1.0, 2.0],
    )
    assert tensor_codec.to_numpy(proto).tolist() == [5.0, 6.0]


@pytest.mark.parametrize(
    "proto",
    [
        _proto(types_pb2.DT_FLOAT, [-1], float_val=[1.0]),
        tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape={"unknown_rank": True}),
        _proto(types_pb2.DT_INVALID, [1]),
        _proto(types_pb2.DT_RESOURCE, [1]),
    ],
    ids=["negative-dim", "unknown-rank", "invalid-dtype", "resource"],
)
def test_invalid_protos_are_rejected(proto):
    with pytest.raises(tensor_codec.TensorDecodeError):
        tensor_codec.to_numpy(proto)


def test_scalar_without_shape():
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[2.5])
    decoded = tensor_codec.to_numpy(proto)
    assert decoded.shape == () and decoded == np.float32(2.5)


def test_str_elements_are_encoded_as_utf8():
    proto = tensor_codec.from_numpy(np.array(["é", "b"]))
    assert list(proto.string_val) == ["é".encode(), b"b"]


def test_dtype_names_match_tensorflow_messages():
    assert tensor_codec.dtype_name(types_pb2.DT_FLOAT) == "float"
    assert tensor_codec.dtype_name(types_pb2.DT_STRING) == "string"


# ---- TensorFlow's C++ Tensor::FromProto as the oracle ---------------------------------------
# tf.io.parse_tensor runs the C++ FromProto on a serialized TensorProto: our decode
# must give the same array, or fail where it fails.

ORACLE_CASES = {
    "repeat-last": _proto(types_pb2.DT_FLOAT, [2, 3], float_val=[1.0, 2.0]),
    "extra-ignored": _proto(types_pb2.DT_INT64, [2], int64_val=[5, 6, 7]),
    "zeros": _proto(types_pb2.DT_DOUBLE, [2, 2]),
    "uint8-wraps": _proto(types_pb2.DT_UINT8, [3], int_val=[300, -1, 7]),
    "int8-wraps": _proto(types_pb2.DT_INT8, [2], int_val=[200, -129]),
    "int16-wraps": _proto(types_pb2.DT_INT16, [1], int_val=[70000]),
    "uint16-wraps": _proto(types_pb2.DT_UINT16, [2], int_val=[-1, 65536]),
    "complex-odd-entries": _proto(types_pb2.DT_COMPLEX64, [2], scomplex_val=[1.0, 2.0, 3.0]),
    "half-repeat": _proto(types_pb2.DT_HALF, [3], half_val=[0x3C00]),
    "bool-extra": _proto(types_pb2.DT_BOOL, [1], bool_val=[True, False]),
    "string-repeat": _proto(types_pb2.DT_STRING, [3], string_val=[b"a", b"b"]),
    "string-content": _proto(types_pb2.DT_STRING, [2], tensor_content=b"\x01\x02abc"),
    "string-content-short": _proto(types_pb2.DT_STRING, [2], tensor_content=b"\x01\x05abc"),
    "zero-elements-garbage-content": _proto(types_pb2.DT_FLOAT, [0, 3], tensor_content=b"xyz"),
    "zero-elements-extra-values": _proto(types_pb2.DT_INT32, [0], int_val=[1, 2]),
    "content-too-short": _proto(types_pb2.DT_FLOAT, [3], tensor_content=b"\x00" * 8),
    "overflow-before-zero": _proto(types_pb2.DT_FLOAT, [2**62, 4, 0]),
    "overflow": _proto(types_pb2.DT_FLOAT, [2**31, 2**31, 2**31], float_val=[1.0]),
    "too-many-dims": _proto(types_pb2.DT_FLOAT, [1] * 300, float_val=[1.0]),
}


def _tf_from_proto(proto: tensor_pb2.TensorProto):
    dtype = tf.dtypes.as_dtype(proto.dtype)
    try:
        return tf.io.parse_tensor(proto.SerializeToString(), dtype).numpy()
    except tf.errors.InvalidArgumentError:
        return None


@pytest.mark.parametrize("name", sorted(ORACLE_CASES))
def test_decode_matches_tensorflows_cpp_from_proto(name):
    proto = ORACLE_CASES[name]
    expected = _tf_from_proto(proto)
    if expected is None:
        with pytest.raises(tensor_codec.TensorDecodeError):
            tensor_codec.to_numpy(proto)
        return
    decoded = tensor_codec.to_numpy(proto)
    assert decoded.shape == expected.shape
    np.testing.assert_array_equal(decoded, expected)


# ---- validate before allocating ----------------------------------------------------------------


@pytest.mark.parametrize(
    "proto",
    [
        _proto(types_pb2.DT_FLOAT, [2**40], float_val=[1.0]),
        _proto(types_pb2.DT_FLOAT, [1 << 20, 1 << 20]),  # no values: would be zeros
        _proto(types_pb2.DT_STRING, [10**9], string_val=[b"x"]),
        _proto(types_pb2.DT_COMPLEX128, [1 << 30], dcomplex_val=[1.0, 2.0]),
    ],
    ids=["float-one-value", "zeros", "string-one-value", "complex"],
)
def test_tiny_message_declaring_a_huge_shape_is_refused_before_allocating(proto):
    assert proto.ByteSize() < 64
    started = time.perf_counter()
    with pytest.raises(tensor_codec.TensorTooLargeError) as raised:
        tensor_codec.to_numpy(proto)
    # Refused from the shape alone: no expansion ran (one would take seconds or OOM).
    assert time.perf_counter() - started < 0.5
    assert not raised.value.from_request_budget
    assert raised.value.needed_bytes > raised.value.limit_bytes
    assert "more than the limit for a" in str(raised.value)


def test_request_budget_is_checked_before_decoding():
    proto = _proto(types_pb2.DT_FLOAT, [1000], float_val=[1.0])
    assert tensor_codec.to_numpy(proto, max_bytes=4000).shape == (1000,)
    with pytest.raises(tensor_codec.TensorTooLargeError) as raised:
        tensor_codec.to_numpy(proto, max_bytes=3999)
    assert raised.value.from_request_budget
    assert (raised.value.needed_bytes, raised.value.limit_bytes) == (4000, 3999)
    assert "per-request limit" in str(raised.value)
    # Repeated strings count their bytes each time (TensorFlow copies them).
    strings = _proto(types_pb2.DT_STRING, [10], string_val=[b"x" * 100])
    with pytest.raises(tensor_codec.TensorTooLargeError):
        tensor_codec.to_numpy(strings, max_bytes=1000)
    assert tensor_codec.to_numpy(strings, max_bytes=2000).tolist() == [b"x" * 100] * 10


def test_default_limit_lets_honest_tensors_through():
    # Sent in full (typed or raw), any size decodes: the limit grows with the message.
    big = np.arange(2_000_000, dtype=np.int64)
    for as_content in (False, True):
        np.testing.assert_array_equal(
            tensor_codec.to_numpy(tensor_codec.from_numpy(big, as_tensor_content=as_content)), big
        )
    # A small tensor of zeros (no values sent) is within the floor.
    assert tensor_codec.to_numpy(_proto(types_pb2.DT_FLOAT, [1000, 1000])).sum() == 0
