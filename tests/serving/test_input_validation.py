"""Hostile and malformed gRPC input against a real server: TF Serving's codes, no crash.

The issue-15 headline (a request of a few dozen bytes declaring a huge shape)
and Classify/Regress signature-structure errors, which TF Serving reports as
INVALID_ARGUMENT in the order of classifier.cc / regressor.cc
(`PreProcessClassification` / `PreProcessRegression`): method name (with the
check flag), one input, the output count, the `inputs` alias, then the output
aliases — all before the request's examples are looked at.
"""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    input_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from serving import tensor_codec
from tests.serving.conftest import copy_model, running_server


def _write_odd_signatures_model(path) -> None:
    """A SavedModel whose classify/regress-style signatures break the structure rules."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        a, b, c = tf.identity(x, "a"), tf.identity(x, "b"), tf.identity(x, "c")
        info = tf.compat.v1.saved_model.utils.build_tensor_info

        def signature(outputs: dict, method: str):
            return tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
                inputs={"x": info(x)}, outputs={k: info(v) for k, v in outputs.items()}, method_name=method
            )

        with tf.compat.v1.Session(graph=graph) as session:
            builder = tf.compat.v1.saved_model.Builder(str(path))
            builder.add_meta_graph_and_variables(
                session,
                ["serve"],
                signature_def_map={
                    "three_outputs": signature({"a": a, "b": b, "c": c}, "tensorflow/serving/classify"),
                    "two_outputs": signature({"a": a, "b": b}, "tensorflow/serving/regress"),
                },
            )
            builder.save()


@pytest.fixture(scope="module")
def server(tfs_testdata, tmp_path_factory):
    root = tmp_path_factory.mktemp("validation")
    hp2 = copy_model(tfs_testdata, "saved_model_half_plus_two_cpu", root / "hp2")
    _write_odd_signatures_model(root / "odd" / "1")
    config = root / "models.config"
    config.write_text(
        "model_config_list { "
        f'config {{ name: "hp2" base_path: "{hp2}" model_platform: "tensorflow" }} '
        f'config {{ name: "odd" base_path: "{root / "odd"}" model_platform: "tensorflow" }} }}'
    )
    with running_server([f"--model_config_file={config}"], rest=False) as srv:
        yield srv


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.grpc_target)
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def server_pid(server) -> int:
    return server.proc.pid


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _one_example() -> input_pb2.Input:
    model_input = input_pb2.Input()
    example = model_input.example_list.examples.add()
    example.features.feature["x"].float_list.value.append(1.0)
    return model_input


def _code_and_message(call, request):
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=30)
    return raised.value.code(), raised.value.details()


# ---- a tiny request declaring a huge shape ----------------------------------------------------


@pytest.mark.parametrize("dtype", [types_pb2.DT_FLOAT, types_pb2.DT_STRING])
def test_tiny_request_declaring_a_huge_shape_is_invalid_argument_and_the_server_keeps_answering(stub, dtype):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "hp2"
    tensor = tensor_pb2.TensorProto(dtype=dtype)
    tensor.tensor_shape.dim.add().size = 1 << 40
    tensor.tensor_shape.dim.add().size = 1 << 10
    if dtype == types_pb2.DT_FLOAT:
        tensor.float_val.append(1.0)
    else:
        tensor.string_val.append(b"x")
    request.inputs["x"].CopyFrom(tensor)
    assert request.ByteSize() < 64
    started = time.monotonic()
    code, message = _code_and_message(stub.Predict, request)
    assert (code, message) == (grpc.StatusCode.INVALID_ARGUMENT, "tensor parsing error: x")
    assert time.monotonic() - started < 10
    good = predict_pb2.PredictRequest()
    good.model_spec.name = "hp2"
    good.inputs["x"].CopyFrom(tensor_codec.from_numpy(np.array([2.0], np.float32)))
    assert list(stub.Predict(good, timeout=30).outputs["y"].float_val) == [3.0]


def test_huge_shape_requests_do_not_grow_the_server(stub, server_pid):
    before = _rss_kib(server_pid)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "hp2"
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].tensor_shape.dim.add().size = 1 << 31  # 8 GiB of float32 if expanded
    request.inputs["x"].float_val.append(1.0)
    for _ in range(20):
        assert _code_and_message(stub.Predict, request)[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert _rss_kib(server_pid) - before < 64 * 1024  # under 64 MiB of growth for 20 requests


# ---- Classify / Regress signature structure (classifier.cc, regressor.cc) ----------------------


@pytest.mark.parametrize(
    "model, signature, message",
    [
        ("hp2", "serving_default", "No classification inputs found in SignatureDef: "),
        (
            "hp2",
            "regress_x_to_y",
            'Expected classification signature outputs to contain at least one of "classes"',
        ),
        ("odd", "three_outputs", "Expected one or two output Tensors, found 3"),
    ],
)
def test_classify_structure_errors_are_invalid_argument_in_tf_servings_order(stub, model, signature, message):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.input.CopyFrom(_one_example())
    code, details = _code_and_message(stub.Classify, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith(message), details


@pytest.mark.parametrize(
    "model, signature, message",
    [
        ("hp2", "serving_default", "No regression inputs found in SignatureDef: "),
        ("hp2", "classify_x_to_y", "No regression outputs found in SignatureDef: "),
        ("odd", "two_outputs", "Expected one output Tensor."),
    ],
)
def test_regress_structure_errors_are_invalid_argument_in_tf_servings_order(stub, model, signature, message):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.input.CopyFrom(_one_example())
    code, details = _code_and_message(stub.Regress, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith(message), details


def test_signature_structure_is_checked_before_the_input(stub):
    # TF Serving validates the signature when it looks it up, before reading examples.
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "hp2"
    request.model_spec.signature_name = "serving_default"
    code, details = _code_and_message(stub.Classify, request)  # no examples at all
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("No classification inputs found in SignatureDef: "), details
