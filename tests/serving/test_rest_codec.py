"""TF Serving's JSON rules in `serving.rest_request` / `serving.rest_response`, for cases the test models cannot reach.

The test models only have float and serialized-Example inputs and one output
per signature; multi-input / multi-output, int, bool, string and `_bytes`
tensors are checked here on hand-made SignatureDefs and arrays.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from serving import rest_examples, rest_request, rest_response
from serving.errors import ServingError


def signature(**inputs: int) -> meta_graph_pb2.SignatureDef:
    sig = meta_graph_pb2.SignatureDef()
    for alias, dtype in inputs.items():
        sig.inputs[alias].dtype = dtype
        sig.inputs[alias].name = f"{alias}:0"
    return sig


def convert(body: bytes, sig: meta_graph_pb2.SignatureDef):
    return rest_request.predict_inputs(rest_request.parse_request(body), sig, body)


def error_of(fn, *args) -> ServingError:
    with pytest.raises(ServingError) as info:
        fn(*args)
    return info.value


# ---------------------------------------------------------------------------- requests


def test_row_objects_with_several_inputs_stack_per_input():
    sig = signature(a=types_pb2.DT_INT32, b=types_pb2.DT_STRING)
    inputs, row = convert(
        b'{"instances": [{"a": [1, 2], "b": "x"}, {"a": [3, 4], "b": {"b64": "eQ=="}}]}', sig
    )
    assert row is True
    assert inputs["a"].dtype == np.int32 and inputs["a"].tolist() == [[1, 2], [3, 4]]
    assert inputs["b"].dtype == object and inputs["b"].tolist() == [b"x", b"y"]


def test_row_objects_must_name_every_input():
    sig = signature(a=types_pb2.DT_INT32, b=types_pb2.DT_INT32)
    err = error_of(convert, b'{"instances": [{"a": 1}]}', sig)
    assert "keys must be equal to: a,b" in err.message
    err = error_of(convert, b'{"instances": [1, 2]}', sig)
    assert "instances is a plain list, but expecting list of objects" in err.message


def test_columnar_scalars_and_dtypes():
    sig = signature(i=types_pb2.DT_INT64, f=types_pb2.DT_DOUBLE, t=types_pb2.DT_BOOL, s=types_pb2.DT_STRING)
    inputs, row = convert(b'{"inputs": {"i": 7, "f": [1, 2.5], "t": [[true], [false]], "s": "hi"}}', sig)
    assert row is False
    assert inputs["i"].shape == () and inputs["i"].dtype == np.int64 and int(inputs["i"]) == 7
    assert inputs["f"].dtype == np.float64 and inputs["f"].tolist() == [1.0, 2.5]
    assert inputs["t"].dtype == np.bool_ and inputs["t"].tolist() == [[True], [False]]
    assert inputs["s"].shape == () and inputs["s"][()] == b"hi"


@pytest.mark.parametrize(
    "dtype,value,fragment",
    [
        (types_pb2.DT_INT32, "1.5", "Type: Number is not of expected type: int32"),
        (types_pb2.DT_INT32, "2147483648", "is not of expected type: int32"),
        (types_pb2.DT_INT64, "true", "Type: True is not of expected type: int64"),
        (types_pb2.DT_UINT32, "-1", "is not of expected type: uint32"),
        (types_pb2.DT_BOOL, "1", "is not of expected type: bool"),
        (types_pb2.DT_STRING, "1", "Type: Number is not of expected type: string"),
        (types_pb2.DT_FLOAT, '{"b64": "AA=="}', "Type: Object is not of expected type: float"),
        (types_pb2.DT_STRING, '{"b64": 1}', "not formatted correctly for base64 data"),
        (types_pb2.DT_FLOAT, "1e39", "to float without loss of precision"),
        (types_pb2.DT_DOUBLE, "9007199254740993", "to double without loss of precision"),
    ],
)
def test_type_errors(dtype, value, fragment):
    err = error_of(convert, f'{{"inputs": [{value}]}}'.encode(), signature(x=dtype))
    assert err.http_status == 400
    assert fragment in err.message


def test_mixed_bools_are_caught_even_where_numpy_would_coerce():
    err = error_of(convert, b'{"instances": [1, true]}', signature(x=types_pb2.DT_INT64))
    assert "Type: True is not of expected type: int64" in err.message


def test_base64_is_strict_but_padding_optional():
    sig = signature(x=types_pb2.DT_STRING)
    inputs, _ = convert(b'{"instances": [{"b64": "aGk"}, {"b64": "aGk="}]}', sig)
    assert inputs["x"].tolist() == [b"hi", b"hi"]
    for bad in (b'"aG k="', b'"aGk*"', b'"a"', b'"aGk=x"'):
        err = error_of(convert, b'{"instances": [{"b64": ' + bad + b"}]}", sig)
        assert "Unable to base64 decode" in err.message


def test_non_utf8_bytes_in_strings_reach_the_tensor_unchanged():
    inputs, _ = convert(b'{"instances": ["\xff\xfeok", "caf\xc3\xa9"]}', signature(x=types_pb2.DT_STRING))
    assert inputs["x"].tolist() == [b"\xff\xfeok", "café".encode()]


def test_parse_errors_name_the_byte_offset():
    err = error_of(rest_request.parse_request, b'{"a": [1, 2,, 3]}')
    assert err.message.startswith("JSON Parse error: ") and "at offset: 12" in err.message


def test_long_values_are_cut_in_messages():
    body = json.dumps({"instances": 5, "pad": "x" * 100_000}).encode()
    err = error_of(convert, body, signature(x=types_pb2.DT_FLOAT))
    assert len(err.message) < 400 and "..." in err.message


def test_unsupported_input_dtype_is_unimplemented():
    err = error_of(convert, b'{"inputs": [1.0]}', signature(x=types_pb2.DT_HALF))
    assert err.http_status == 501 and "to type: half" in err.message


# ---------------------------------------------------------------------------- predict responses


def test_row_response_with_several_outputs_is_a_list_of_objects():
    outputs = {
        "scores": np.array([[0.25, 0.75], [1.0, 0.0]], dtype=np.float32),
        "classes": np.array([[b"a", b"b"], [b"c", b"d"]], dtype=object),
        "ids_bytes": np.array([b"\x00\xff", b"z"], dtype=object),
        "count": np.array([1, 2], dtype=np.int64),
    }
    doc = json.loads(rest_response.encode_predict_response(outputs, row_format=True))
    assert doc == {
        "predictions": [
            {"scores": [0.25, 0.75], "classes": ["a", "b"], "ids_bytes": {"b64": "AP8="}, "count": 1},
            {"scores": [1.0, 0.0], "classes": ["c", "d"], "ids_bytes": {"b64": "eg=="}, "count": 2},
        ]
    }


def test_columnar_response_with_several_outputs_is_an_object():
    outputs = {"a": np.array(3.0, dtype=np.float32), "b": np.array([[True, False]])}
    raw = rest_response.encode_predict_response(outputs, row_format=False)
    assert raw == b'{"outputs":{"a":3.0,"b":[[true,false]]}}'


def test_row_response_needs_a_shared_batch_dimension():
    err = error_of(
        rest_response.encode_predict_response,
        {"a": np.zeros(2, np.float32), "b": np.zeros(3, np.float32)},
        True,
    )
    assert "Tensor name: b has inconsistent batch size: 3 expecting: 2" in err.message
    err = error_of(rest_response.encode_predict_response, {"a": np.array(1.0, np.float32)}, True)
    assert "Tensor name: a has no shape information" in err.message


def test_non_finite_floats_use_tokens_in_every_position():
    outputs = {
        "y": np.array([[np.nan, 1.5], [np.inf, -np.inf]], dtype=np.float32),
        "z": np.array([0, 1], dtype=np.int32),
    }
    raw = rest_response.encode_predict_response(outputs, row_format=True)
    assert raw == b'{"predictions":[{"y":[NaN,1.5],"z":0},{"y":[Infinity,-Infinity],"z":1}]}'
    raw = rest_response.encode_predict_response({"y": outputs["y"]}, row_format=False)
    assert raw == b'{"outputs":[[NaN,1.5],[Infinity,-Infinity]]}'


def test_non_utf8_string_outputs_are_replaced_not_dropped():
    raw = rest_response.encode_predict_response({"label": np.array([b"ok\xff"], dtype=object)}, True)
    assert json.loads(raw) == {"predictions": ["ok\ufffd"]}


# ---------------------------------------------------------------------------- classify / regress


def parse_example(serialized: bytes) -> example_pb2.Example:
    example = example_pb2.Example()
    example.ParseFromString(serialized)
    return example


def test_example_feature_kinds():
    doc = rest_request.parse_request(
        b'{"examples": [{"i": 2, "f": [2.0, 1e3], "b": [true, false], "s": "t", '
        b'"raw": {"b64": "AQI="}, "empty": []}]}'
    )
    (serialized,) = rest_examples.serialized_examples(doc)
    feature = parse_example(serialized).features.feature
    assert list(feature["i"].int64_list.value) == [2]
    assert list(feature["f"].float_list.value) == [2.0, 1000.0]
    assert list(feature["b"].int64_list.value) == [1, 0]
    assert list(feature["s"].bytes_list.value) == [b"t"]
    assert list(feature["raw"].bytes_list.value) == [b"\x01\x02"]
    assert feature["empty"].WhichOneof("kind") is None


def test_context_is_serialized_before_each_example():
    doc = rest_request.parse_request(b'{"context": {"c": 1, "x": 0.5}, "examples": [{"x": 2.0}, {}]}')
    rows = rest_examples.serialized_examples(doc)
    context = rest_examples.serialized_examples(
        rest_request.parse_request(b'{"examples": [{"c": 1, "x": 0.5}]}')
    )[0]
    assert all(row.startswith(context) for row in rows)
    merged = [parse_example(row).features.feature for row in rows]
    assert [list(m["x"].float_list.value) for m in merged] == [[2.0], [0.5]]
    assert [list(m["c"].int64_list.value) for m in merged] == [[1], [1]]


def test_example_integer_beyond_int64_is_rejected():
    doc = rest_request.parse_request(b'{"examples": [{"i": 9223372036854775808}]}')
    err = error_of(rest_examples.serialized_examples, doc)
    assert "Feature: i has uint64 element. Only int64 is supported." in err.message


def test_classify_and_regress_results():
    scores = np.array([[0.5, 0.25]], dtype=np.float32)
    classes = np.array([[b"sport", b"tech"]], dtype=object)
    assert json.loads(rest_response.encode_classify_response(classes, scores)) == {
        "results": [[["sport", 0.5], ["tech", 0.25]]]
    }
    assert (
        rest_response.encode_classify_response(None, np.array([[3.0]], np.float32))
        == b'{"results":[[["",3.0]]]}'
    )
    assert (
        rest_response.encode_classify_response(classes, None) == b'{"results":[[["sport",0.0],["tech",0.0]]]}'
    )
    assert (
        rest_response.encode_regress_response(np.array([3.0, np.nan], np.float32)) == b'{"results":[3.0,NaN]}'
    )


def test_error_body_is_exactly_one_key():
    assert json.loads(rest_response.encode_error('bad "x"\n')) == {"error": 'bad "x"\n'}
    assert json.loads(rest_response.encode_error("\udcff")) == {"error": "\udcff"}
