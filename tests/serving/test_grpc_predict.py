"""gRPC PredictionService against a real server process on loopback.

Covers TFS_CONTRACT.md §5 and the gRPC rows of §6 with TF Serving's own test
models: Predict (shape [1]/[3] inputs, tensor_content, output_filter, defaults),
Classify, Regress, MultiInference, GetModelMetadata, and every error message.
"""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    inference_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from tests.serving.conftest import contract_server, copy_model, running_server

CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"


def _config(models: dict[str, str]) -> str:
    entries = "".join(
        f'  config {{ name: "{name}" base_path: "{path}" model_platform: "tensorflow" }}\n'
        for name, path in models.items()
    )
    return f"model_config_list {{\n{entries}}}\n"


@pytest.fixture(scope="module")
def models(tfs_testdata, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    paths = {
        "half_plus_two": copy_model(tfs_testdata, "saved_model_half_plus_two_cpu", root / "hp2"),
        "half_plus_three": copy_model(tfs_testdata, "saved_model_half_plus_three", root / "hp3"),
        "half_plus_two_tf2": copy_model(tfs_testdata, "saved_model_half_plus_two_tf2_cpu", root / "tf2"),
    }
    config = root / "models.config"
    config.write_text(_config({k: str(v) for k, v in paths.items()}))
    return config


@pytest.fixture(scope="module")
def server(models):
    with contract_server([f"--model_config_file={models}"], rest=False) as srv:
        yield srv


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.grpc_target)
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


def _predict(model="half_plus_two", signature="", **inputs) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(value)
    return request


def _floats(values, shape=None) -> tensor_pb2.TensorProto:
    return tf.make_tensor_proto(values, dtype=tf.float32, shape=shape)


def _examples(request, xs, context=None):
    """Fills request.input with one tf.Example per x (float feature 'x')."""
    if context is None:
        target = request.input.example_list
    else:
        target = request.input.example_list_with_context
        target.context.features.feature["x"].float_list.value.append(context)
    for x in xs:
        example = target.examples.add()
        if x is not None:
            example.features.feature["x"].float_list.value.append(x)
    return request


def _error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=30)
    return info.value


# ---------------------------------------------------------------------- Predict


@pytest.mark.parametrize("values", [[1.0], [1.0, 2.0, 5.0]], ids=["shape1", "shape3"])
def test_predict_half_plus_two_rank1(stub, values):
    # TF Serving's own test sends shape [1]/[3] to a [-1,1] signature and gets rank-1 back.
    response = stub.Predict(_predict(x=_floats(values, [len(values)])), timeout=30)
    y = response.outputs["y"]
    assert y.dtype == types_pb2.DT_FLOAT
    assert [d.size for d in y.tensor_shape.dim] == [len(values)]
    assert list(y.float_val) == [0.5 * v + 2 for v in values]
    assert not y.tensor_content
    assert response.model_spec.name == "half_plus_two"
    assert response.model_spec.version.value == 123
    assert response.model_spec.signature_name == "serving_default"


def test_predict_explicit_version_and_signature(stub):
    request = _predict(signature="serving_default", x=_floats([[4.0]]))
    request.model_spec.version.value = 123
    response = stub.Predict(request, timeout=30)
    assert list(response.outputs["y"].float_val) == [4.0]
    assert [d.size for d in response.outputs["y"].tensor_shape.dim] == [1, 1]


def test_predict_tensor_content_input(stub):
    x = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    x.tensor_shape.dim.add().size = 2
    x.tensor_content = np.array([2.0, 6.0], np.float32).tobytes()
    response = stub.Predict(_predict(x=x), timeout=30)
    assert list(response.outputs["y"].float_val) == [3.0, 5.0]


def test_predict_repeats_last_value_like_cpp(stub):
    x = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[2.0])
    x.tensor_shape.dim.add().size = 3
    response = stub.Predict(_predict(x=x), timeout=30)
    assert list(response.outputs["y"].float_val) == [3.0, 3.0, 3.0]


def test_predict_output_filter(stub):
    request = _predict(x=_floats([2.0], [1]))
    request.output_filter.append("y")
    assert list(stub.Predict(request, timeout=30).outputs) == ["y"]


def test_predict_tf2_model_uses_signature_defaults(stub):
    # The TF2 model's serving_default declares a default for x (0.0 → 2.0).
    response = stub.Predict(_predict(model="half_plus_two_tf2"), timeout=30)
    assert list(response.outputs["y"].float_val) == [2.0]
    response = stub.Predict(_predict(model="half_plus_two_tf2", x=_floats([6.0], [1])), timeout=30)
    assert list(response.outputs["y"].float_val) == [5.0]


def test_predict_can_call_a_regress_signature(stub):
    # Method names are not checked by default: Predict feeds serialized Examples.
    example = tf.train.Example()
    example.features.feature["x"].float_list.value.append(4.0)
    request = _predict(
        signature="regress_x_to_y",
        inputs=tf.make_tensor_proto([example.SerializeToString()], dtype=tf.string),
    )
    response = stub.Predict(request, timeout=30)
    assert list(response.outputs["outputs"].float_val) == [4.0]
    assert response.model_spec.signature_name == "regress_x_to_y"


# ---------------------------------------------------------------------- Predict errors


def test_unknown_model(stub):
    error = _error(stub.Predict, _predict(model="nope", x=_floats([1.0])))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "Servable not found for request: Latest(nope)"


def test_unknown_version(stub):
    request = _predict(x=_floats([1.0]))
    request.model_spec.version.value = 999
    error = _error(stub.Predict, request)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "Servable not found for request: Specific(half_plus_two, 999)"


def test_unknown_label(stub):
    request = _predict(x=_floats([1.0]))
    request.model_spec.version_label = "stable"
    error = _error(stub.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Unrecognized servable version label: stable"


def test_missing_model_spec(stub):
    error = _error(stub.Predict, predict_pb2.PredictRequest())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Missing ModelSpec"


def test_empty_model_name(stub):
    error = _error(stub.Predict, _predict(model="", x=_floats([1.0])))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no name" in error.details()


def test_unknown_signature_predict(stub):
    error = _error(stub.Predict, _predict(signature="nope", x=_floats([1.0])))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == 'Serving signature key "nope" not found.'


def test_wrong_dtype(stub):
    request = _predict(x=tf.make_tensor_proto([b"a"], dtype=tf.string))
    error = _error(stub.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Expects arg[0] to be float but string is provided"


def test_bad_tensor_content(stub):
    x = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=b"\x00" * 7)
    x.tensor_shape.dim.add().size = 2
    error = _error(stub.Predict, _predict(x=x))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "tensor parsing error: x"


def test_too_many_inputs(stub):
    error = _error(stub.Predict, _predict(x=_floats([1.0]), z=_floats([1.0])))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "input size does not match signature: 2!=1 len({x,z}) != len({x}). "
        "Sent extra: {z}. Missing but required: {}."
    )


def test_no_inputs(stub):
    error = _error(stub.Predict, _predict())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("input size does not match signature: 0!=1")


def test_wrong_input_name(stub):
    error = _error(stub.Predict, _predict(z=_floats([1.0])))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Signature input alias: x(feed name: x:0) not found in request" in error.details()


def test_unknown_output_filter(stub):
    request = _predict(x=_floats([1.0]))
    request.output_filter.append("nope")
    error = _error(stub.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "output tensor alias not found in signature: nope Outputs expected to be in the set {y}."
    )


def test_duplicate_output_filter(stub):
    request = _predict(x=_floats([1.0]))
    request.output_filter.extend(["y", "y"])
    error = _error(stub.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "duplicate output tensor alias: y"


def test_long_error_messages_are_truncated(stub):
    error = _error(stub.Predict, _predict(signature="s" * 2000, x=_floats([1.0])))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert len(error.details()) == 1024 + len("...TRUNCATED")
    assert error.details().endswith("...TRUNCATED")


def test_server_keeps_serving_after_errors(stub):
    response = stub.Predict(_predict(x=_floats([8.0], [1])), timeout=30)
    assert list(response.outputs["y"].float_val) == [6.0]


# ---------------------------------------------------------------------- Classify / Regress


def test_classify_half_plus_two(stub):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.signature_name = "classify_x_to_y"
    response = stub.Classify(_examples(request, [2.0, 4.0]), timeout=30)
    scores = [[c.score for c in row.classes] for row in response.result.classifications]
    labels = [[c.label for c in row.classes] for row in response.result.classifications]
    assert scores == [[3.0], [4.0]]
    assert labels == [[""], [""]]
    assert response.model_spec.signature_name == "classify_x_to_y"
    assert response.model_spec.version.value == 123


def test_classify_with_context(stub):
    # The context's feature applies to an example that has none of its own.
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.signature_name = "classify_x_to_y"
    response = stub.Classify(_examples(request, [None, None], context=6.0), timeout=30)
    assert [row.classes[0].score for row in response.result.classifications] == [5.0, 5.0]


@pytest.mark.parametrize(
    ("model", "signature", "expected"),
    [
        ("half_plus_two", "regress_x_to_y", [3.0, 4.0]),
        ("half_plus_two", "regress_x_to_y2", [4.0, 5.0]),  # y2 = 0.5 x + 3
        # half_plus_three declares its regress input DT_FLOAT but feeds a string placeholder.
        ("half_plus_three", "tensorflow/serving/regress", [4.0, 5.0]),
    ],
)
def test_regress(stub, model, signature, expected):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    response = stub.Regress(_examples(request, [2.0, 4.0]), timeout=30)
    assert [r.value for r in response.result.regressions] == expected
    assert response.model_spec.signature_name == signature


def test_classify_unknown_signature(stub):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.signature_name = "nope"
    error = _error(stub.Classify, _examples(request, [1.0]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "No signature was found with the name: nope"


def test_regress_empty_input(stub):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.signature_name = "regress_x_to_y"
    error = _error(stub.Regress, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Input is empty."


def test_classify_on_predict_signature_fails_on_structure(stub):
    # serving_default has input 'x', not 'inputs': structure decides, not method_name.
    # Current TF Serving (classifier.cc) answers INVALID_ARGUMENT; older releases said FAILED_PRECONDITION.
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "half_plus_two"
    error = _error(stub.Classify, _examples(request, [1.0]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("No classification inputs found in SignatureDef")


def test_regress_missing_model_spec(stub):
    error = _error(stub.Regress, _examples(regression_pb2.RegressionRequest(), [1.0]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Missing ModelSpec"


# ---------------------------------------------------------------------- MultiInference


def _multi(tasks, model="half_plus_two") -> inference_pb2.MultiInferenceRequest:
    request = inference_pb2.MultiInferenceRequest()
    for signature, method, *name in tasks:
        task = request.tasks.add()
        task.model_spec.name = name[0] if name else model
        task.model_spec.signature_name = signature
        task.method_name = method
    return _examples(request, [2.0, 4.0])


def test_multi_inference(stub):
    response = stub.MultiInference(
        _multi([("classify_x_to_y", CLASSIFY), ("regress_x_to_y2", REGRESS)]), timeout=30
    )
    classify, regress = response.results
    assert classify.model_spec.signature_name == "classify_x_to_y"
    assert classify.model_spec.version.value == 123
    assert [r.classes[0].score for r in classify.classification_result.classifications] == [3, 4]
    assert regress.model_spec.signature_name == "regress_x_to_y2"
    assert [r.value for r in regress.regression_result.regressions] == [4.0, 5.0]


@pytest.mark.parametrize(
    ("tasks", "code", "message"),
    [
        (
            [("classify_x_to_y", CLASSIFY), ("regress_x_to_y", REGRESS, "half_plus_three")],
            grpc.StatusCode.INVALID_ARGUMENT,
            "All ModelSpecs in a MultiInferenceRequest must access the same model name.",
        ),
        (
            [("regress_x_to_y", REGRESS), ("regress_x_to_y", REGRESS)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "Duplicate evaluation of signature: regress_x_to_y",
        ),
        (
            [("serving_default", "tensorflow/serving/predict")],
            grpc.StatusCode.UNIMPLEMENTED,
            "Unsupported signature method_name: tensorflow/serving/predict",
        ),
        (
            [("nope", REGRESS)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "Requested signature not found in model graph: nope",
        ),
        (
            [("regress_x_to_y", REGRESS), ("regress_x2_to_y3", REGRESS)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "Input tensor must be the same for all Signatures.",
        ),
    ],
    ids=["mixed-models", "duplicate", "predict-method", "unknown-signature", "different-inputs"],
)
def test_multi_inference_errors(stub, tasks, code, message):
    error = _error(stub.MultiInference, _multi(tasks))
    assert error.code() == code
    assert error.details() == message


# ---------------------------------------------------------------------- GetModelMetadata


def _metadata_request(model="half_plus_two", fields=("signature_def",)):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=list(fields))
    request.model_spec.name = model
    return request


def test_get_model_metadata_matches_tf_serving(stub, tfs_testdata):
    response = stub.GetModelMetadata(_metadata_request(), timeout=30)
    assert response.model_spec.name == "half_plus_two"
    assert response.model_spec.version.value == 123
    assert response.model_spec.signature_name == ""
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    ours = json_format.MessageToDict(
        signature_map, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    reference = json.loads((tfs_testdata / "reference" / "half_plus_two_model_metadata.json").read_text())
    assert ours == reference["metadata"]["signature_def"]


def test_get_model_metadata_lists_tf2_init_op(stub):
    response = stub.GetModelMetadata(_metadata_request("half_plus_two_tf2"), timeout=30)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    assert "__saved_model_init_op" in signature_map.signature_def
    assert "serving_default" in signature_map.signature_def


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ((), "GetModelMetadataRequest must specify at least one metadata_field"),
        (("signature_def", "foo"), "Metadata field foo is not supported"),
    ],
)
def test_get_model_metadata_field_errors(stub, fields, message):
    error = _error(stub.GetModelMetadata, _metadata_request(fields=fields))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == message


def test_get_model_metadata_unknown_model(stub):
    error = _error(stub.GetModelMetadata, _metadata_request("nope"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "Servable not found for request: Latest(nope)"


# ---------------------------------------------------------------------- server flags


@pytest.fixture(scope="module")
def flagged_stub(models):
    args = [
        f"--model_config_file={models}",
        "--enable_serialization_as_tensor_content",
        "--enable_signature_method_name_check=true",
    ]
    with running_server(args, rest=False) as srv:
        channel = grpc.insecure_channel(srv.grpc_target)
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
        channel.close()


def test_outputs_as_tensor_content(flagged_stub):
    response = flagged_stub.Predict(_predict(x=_floats([2.0, 4.0], [2])), timeout=30)
    y = response.outputs["y"]
    assert not y.float_val
    assert np.frombuffer(y.tensor_content, np.float32).tolist() == [3.0, 4.0]


def test_method_name_check(flagged_stub):
    # TF2 signatures are all tensorflow/serving/predict, so Regress refuses them.
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "half_plus_two_tf2"
    request.model_spec.signature_name = "regress_x_to_y"
    error = _error(flagged_stub.Regress, _examples(request, [1.0]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "Expected regression signature method_name to be tensorflow/serving/regress. "
        "Was: tensorflow/serving/predict"
    )
    # A real regress signature still works.
    request.model_spec.name = "half_plus_two"
    response = flagged_stub.Regress(request, timeout=30)
    assert [r.value for r in response.result.regressions] == [2.5]
