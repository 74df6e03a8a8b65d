"""The clients of serving/clients and serving/client.py against a real server process.

One `python -m serving` process on the tiny export serves the whole module. The
Python client is checked over gRPC and REST against the in-process SavedModel,
the curl script and the Node.js examples against the Python client. The curl
and Node.js tests skip, with the reason, where `curl`, `node` or the example's
`node_modules` are missing (install: `npm ci` in serving/clients/node).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.client import ClientError, TensorSpec, TextClassifierClient, VersionStatus
from tests.serving.conftest import REPO_ROOT, free_port, running_server

CLIENTS_DIR = REPO_ROOT / "serving" / "clients"
NODE_DIR = CLIENTS_DIR / "node"
MODEL = "tiny"
# One text per class of the tiny corpus (tests/conftest.py), one with non-ASCII text.
TEXTS = [
    "oven recipe flour butter garlic simmer",
    "the striker scored a penalty goal in the league match",
    "shares investors profit bond inflation stocks",
    "rocket orbit astronaut launch telescope",
    "Crème brûlée: butter, flour — and the oven 🔥",
]
TRANSPORTS = ["grpc", "rest"]


@pytest.fixture(scope="module")
def version_dir(tiny_run) -> Path:
    return Path(tiny_run.version_dir)


@pytest.fixture(scope="module")
def server(version_dir):
    with running_server([f"--model_name={MODEL}", f"--model_base_path={version_dir.parent}"]) as srv:
        yield srv


@pytest.fixture(scope="module")
def in_process(version_dir) -> dict:
    """What the SavedModel answers in this process: labels, probabilities, class names."""
    from model.export import ExportedModel

    exported = ExportedModel(version_dir)
    outputs = exported.predict(TEXTS)
    return {
        "labels": [label.decode("utf-8") for label in outputs["label"]],
        "probabilities": outputs["probabilities"],
        "class_names": exported.label_names,
    }


def _target(server, transport: str) -> str:
    return server.grpc_target if transport == "grpc" else server.rest_url


@pytest.fixture(params=TRANSPORTS)
def client(request, server):
    with TextClassifierClient(
        _target(server, request.param), MODEL, transport=request.param, timeout=30
    ) as c:
        yield c


# --- Python client ------------------------------------------------------------------


def test_predict_matches_the_in_process_model(client, in_process):
    predictions = client.predict(TEXTS)

    assert [p.label for p in predictions] == in_process["labels"]
    for prediction, expected in zip(predictions, in_process["probabilities"]):
        assert list(prediction.probabilities) == in_process["class_names"]
        np.testing.assert_allclose(list(prediction.probabilities.values()), expected, atol=1e-5)
        assert prediction.score == pytest.approx(prediction.probabilities[prediction.label], abs=1e-6)
        assert prediction.score == max(prediction.probabilities.values())


def test_classify_agrees_with_predict(client, in_process):
    classified = client.classify(TEXTS)

    assert [c.label for c in classified] == in_process["labels"]
    for result, expected in zip(classified, in_process["probabilities"]):
        assert sorted(result.probabilities) == sorted(in_process["class_names"])
        scores = [result.probabilities[name] for name in in_process["class_names"]]
        np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_empty_list_sends_nothing_and_a_bare_string_is_refused(client):
    assert client.predict([]) == []
    assert client.classify([]) == []
    with pytest.raises(ValueError, match="not a single string"):
        client.predict("one text")


def test_metadata_describes_the_served_signatures(client, version_dir):
    metadata = client.metadata()

    assert metadata.name == MODEL
    assert metadata.version == int(version_dir.name)
    predict = metadata.signatures["serving_default"]
    assert predict.method_name == "tensorflow/serving/predict"
    assert predict.inputs == {"text": TensorSpec("DT_STRING", (-1,))}
    assert set(predict.outputs) == {"probabilities", "label", "class_id", "score"}
    assert predict.outputs["class_id"].dtype == "DT_INT64"
    classify = metadata.signatures["classify"]
    assert classify.method_name == "tensorflow/serving/classify"
    assert set(classify.inputs) == {"inputs"} and set(classify.outputs) == {"classes", "scores"}


def test_metadata_and_status_are_the_same_over_both_transports(server):
    grpc_client = TextClassifierClient(server.grpc_target, MODEL, transport="grpc")
    rest_client = TextClassifierClient(server.rest_url, MODEL, transport="rest")
    with grpc_client, rest_client:
        assert grpc_client.metadata() == rest_client.metadata()
        assert grpc_client.status() == rest_client.status()


def test_status_reports_the_available_version(client, version_dir):
    assert client.status() == [VersionStatus(int(version_dir.name), "AVAILABLE", "OK", "")]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_pinned_version_answers_like_the_latest(server, transport, version_dir, in_process):
    with TextClassifierClient(
        _target(server, transport), MODEL, transport=transport, version=int(version_dir.name)
    ) as pinned:
        assert [p.label for p in pinned.predict(TEXTS)] == in_process["labels"]
        assert [s.version for s in pinned.status()] == [int(version_dir.name)]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unknown_model_raises_with_the_servers_message(server, transport, caplog):
    caplog.set_level(logging.WARNING, logger="serving.client")
    with TextClassifierClient(_target(server, transport), "no_such_model", transport=transport) as c:
        with pytest.raises(ClientError) as predict_error:
            c.predict(["a text"])
        with pytest.raises(ClientError) as status_error:
            c.status()

    error = predict_error.value
    assert error.code == "NOT_FOUND"
    assert error.message == "Servable not found for request: Latest(no_such_model)"
    assert error.http_status == (404 if transport == "rest" else None)
    assert error.attempts == 1  # NOT_FOUND is the request's fault: never retried
    assert f"{transport} Predict 'no_such_model'" in str(error) and error.message in str(error)
    assert status_error.value.code == "NOT_FOUND"
    assert status_error.value.message == "Could not find any versions of model no_such_model"
    assert not caplog.records


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unknown_version_raises_not_found(server, transport):
    with (
        TextClassifierClient(_target(server, transport), MODEL, transport=transport, version=424242) as c,
        pytest.raises(ClientError) as error,
    ):
        c.predict(["a text"])
    assert error.value.code == "NOT_FOUND"
    assert "424242" in error.value.message


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_gives_up_after_retries_when_nothing_listens(transport, caplog):
    caplog.set_level(logging.WARNING, logger="serving.client")
    port = free_port()  # was free a moment ago: nothing listens there
    target = f"127.0.0.1:{port}" if transport == "grpc" else f"http://127.0.0.1:{port}"
    retries, backoff = 3, 0.05
    started = time.monotonic()
    with (
        TextClassifierClient(
            target, MODEL, transport=transport, retries=retries, backoff=backoff, timeout=5
        ) as c,
        pytest.raises(ClientError) as error,
    ):
        c.predict(["a text"])
    elapsed = time.monotonic() - started

    assert error.value.code == "UNAVAILABLE"
    assert error.value.attempts == retries + 1
    assert f"after {retries + 1} attempts" in str(error.value)
    assert str(port) in str(error.value)
    retry_logs = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retry_logs) == retries
    assert retry_logs[-1].endswith(f"retry {retries} of {retries} in {retry_logs[-1].split()[-2]} s")
    # Backoff doubles with jitter in [0.5, 1]: at least half of 0.05 + 0.1 + 0.2.
    assert elapsed >= 0.5 * backoff * (1 + 2 + 4)


def test_client_arguments_are_checked():
    with pytest.raises(ValueError, match="transport"):
        TextClassifierClient("localhost:1", MODEL, transport="http2")
    with pytest.raises(ValueError, match="version or version_label"):
        TextClassifierClient("localhost:1", MODEL, transport="rest", version=1, version_label="stable")
    with pytest.raises(ValueError, match="timeout"):
        TextClassifierClient("localhost:1", MODEL, transport="rest", timeout=0)


# --- descriptors for non-Python clients ------------------------------------------------


def test_descriptor_set_is_complete_and_maps_become_map_fields(tmp_path):
    sys.path.insert(0, str(CLIENTS_DIR))
    try:
        import tfs_descriptors
    finally:
        sys.path.remove(str(CLIENTS_DIR))
    from google.protobuf import descriptor_pb2, descriptor_pool

    data = tfs_descriptors.file_descriptor_set()
    files = descriptor_pb2.FileDescriptorSet.FromString(data).file
    pool = descriptor_pool.DescriptorPool()
    for file_proto in files:  # fails on a missing import or a file before its imports
        pool.Add(file_proto)
    service = pool.FindServiceByName("tensorflow.serving.PredictionService")
    assert {m.name for m in service.methods} == {
        "Classify",
        "Regress",
        "Predict",
        "MultiInference",
        "GetModelMetadata",
    }
    assert pool.FindServiceByName("tensorflow.serving.ModelService").methods_by_name["GetModelStatus"]

    namespace = tfs_descriptors.protobufjs_json(data)
    serving = namespace["nested"]["tensorflow"]["nested"]["serving"]["nested"]
    assert serving["PredictRequest"]["fields"]["inputs"] == {
        "keyType": "string",
        "type": ".tensorflow.TensorProto",
        "id": 2,
    }
    assert "InputsEntry" not in serving["PredictRequest"].get("nested", {})
    assert serving["ModelSpec"]["oneofs"] == {"version_choice": {"oneof": ["version", "version_label"]}}
    go_flags = tfs_descriptors.go_mapping_options(data, "example.com/tfs")
    assert (
        "--go_opt=Mtensorflow_serving/apis/predict.proto=example.com/tfs/tensorflow_serving;tensorflow_serving"
        in go_flags
    )
    assert not any("google/protobuf/" in flag for flag in go_flags)


# --- curl -----------------------------------------------------------------------------


def _curl(server, *args: str, model: str = MODEL) -> subprocess.CompletedProcess:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    env = dict(os.environ, TFS_REST_URL=server.rest_url, MODEL_NAME=model)
    return subprocess.run(
        ["bash", str(CLIENTS_DIR / "curl.sh"), *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_curl_predict_and_classify_give_the_python_clients_labels(server, in_process):
    predicted = _curl(server, "predict", *TEXTS)
    classified = _curl(server, "classify", *TEXTS)

    assert predicted.returncode == 0, predicted.stderr
    rows = json.loads(predicted.stdout)["predictions"]
    assert [row["label"] for row in rows] == in_process["labels"]
    np.testing.assert_allclose([row["probabilities"] for row in rows], in_process["probabilities"], atol=1e-5)
    assert classified.returncode == 0, classified.stderr
    results = json.loads(classified.stdout)["results"]
    assert [max(pairs, key=lambda pair: pair[1])[0] for pairs in results] == in_process["labels"]


def test_curl_status_and_metadata(server, version_dir):
    status = _curl(server, "status")
    metadata = _curl(server, "metadata")

    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["model_version_status"][0] == {
        "version": version_dir.name,
        "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""},
    }
    assert metadata.returncode == 0, metadata.stderr
    doc = json.loads(metadata.stdout)
    assert doc["model_spec"]["name"] == MODEL
    assert "serving_default" in doc["metadata"]["signature_def"]["signature_def"]


def test_curl_shows_the_servers_error_and_fails(server):
    result = _curl(server, "predict", "a text", model="no_such_model")

    assert result.returncode == 22  # curl --fail-with-body on an HTTP error
    assert json.loads(result.stdout) == {"error": "Servable not found for request: Latest(no_such_model)"}


# --- Node.js ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node_protos(tmp_path_factory) -> Path:
    """TF Serving's API in protobuf.js JSON, written from this venv's tensorflow-serving-api."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.skip("the Node.js example's packages are not installed: run `npm ci` in serving/clients/node")
    out = tmp_path_factory.mktemp("node") / "tfs_protos.json"
    written = subprocess.run(
        [sys.executable, str(CLIENTS_DIR / "tfs_descriptors.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert written.returncode == 0, written.stderr
    return out


def _node(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["node", str(NODE_DIR / script), *args], cwd=NODE_DIR, capture_output=True, text=True, timeout=60
    )


def test_node_grpc_example_matches_the_python_client(server, node_protos, version_dir):
    result = _node(
        "predict.js", "--protos", str(node_protos), "--target", server.grpc_target, "--model", MODEL, *TEXTS
    )
    with TextClassifierClient(server.grpc_target, MODEL) as python_client:
        expected = python_client.predict(TEXTS)

    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["model_spec"] == {
        "name": MODEL,
        "version": version_dir.name,
        "signature_name": "serving_default",
    }
    assert [p["label"] for p in doc["predictions"]] == [p.label for p in expected]
    np.testing.assert_allclose(
        [p["probabilities"] for p in doc["predictions"]],
        [list(p.probabilities.values()) for p in expected],
        atol=1e-6,
    )


def test_node_rest_example_matches_the_python_client(server, node_protos):
    result = _node("predict_rest.js", "--url", server.rest_url, "--model", MODEL, *TEXTS)
    with TextClassifierClient(server.rest_url, MODEL, transport="rest") as python_client:
        expected = python_client.predict(TEXTS)

    assert result.returncode == 0, result.stderr
    assert [p["label"] for p in json.loads(result.stdout)["predictions"]] == [p.label for p in expected]


def test_node_examples_report_the_servers_error(server, node_protos):
    over_grpc = _node(
        "predict.js",
        "--protos",
        str(node_protos),
        "--target",
        server.grpc_target,
        "--model",
        "no_such_model",
        "a text",
    )
    over_rest = _node("predict_rest.js", "--url", server.rest_url, "--model", "no_such_model", "a text")

    assert over_grpc.returncode == 1
    assert "NOT_FOUND: Servable not found for request: Latest(no_such_model)" in over_grpc.stderr
    assert over_rest.returncode == 1
    assert "HTTP 404: Servable not found for request: Latest(no_such_model)" in over_rest.stderr


# --- the BBC export (acceptance: label names over curl, Python and Node.js gRPC) ----------------

BBC_TEXTS = {
    "business": "Shares in the bank rose after it reported record quarterly profits and raised its dividend.",
    "sport": "The striker scored twice as the champions won the cup final in front of a full stadium.",
    "politics": "The prime minister faced questions from MPs over the election manifesto and tax plans.",
    "tech": "The new smartphone chip lets software run faster and improves battery life, the firm said.",
    "entertainment": "The film won best actress at the awards ceremony and topped the box office charts.",
}


@pytest.fixture(scope="module")
def bbc_server(bbc_run):
    with running_server(
        ["--model_name=bbc_news", f"--model_base_path={Path(bbc_run.version_dir).parent}"]
    ) as srv:
        yield srv


@pytest.mark.e2e
def test_bbc_export_answers_label_names_over_python_and_curl(bbc_server):
    texts = list(BBC_TEXTS.values())
    with (
        TextClassifierClient(bbc_server.grpc_target, "bbc_news") as grpc_client,
        TextClassifierClient(bbc_server.rest_url, "bbc_news", transport="rest") as rest_client,
    ):
        over_grpc, over_rest = grpc_client.predict(texts), rest_client.predict(texts)
    curl = _curl(bbc_server, "predict", *texts, model="bbc_news")

    assert [p.label for p in over_grpc] == list(BBC_TEXTS)
    assert [p.label for p in over_rest] == list(BBC_TEXTS)
    assert sorted(over_grpc[0].probabilities) == sorted(BBC_TEXTS)
    assert curl.returncode == 0, curl.stderr
    assert [p["label"] for p in json.loads(curl.stdout)["predictions"]] == list(BBC_TEXTS)


@pytest.mark.e2e
def test_bbc_export_answers_label_names_to_the_node_grpc_example(bbc_server, node_protos):
    node = _node(
        "predict.js", "--protos", str(node_protos), "--target", bbc_server.grpc_target, *BBC_TEXTS.values()
    )

    assert node.returncode == 0, node.stderr
    assert [p["label"] for p in json.loads(node.stdout)["predictions"]] == list(BBC_TEXTS)


# --- generic ServingClient on TF Serving's own test model --------------------------


@pytest.fixture(scope="module")
def half_plus_two(tfs_testdata, tmp_path_factory):
    from tests.serving.conftest import copy_model

    base = copy_model(tfs_testdata, "saved_model_half_plus_two_cpu", tmp_path_factory.mktemp("hp2") / "m")
    with running_server(["--model_name=half_plus_two", f"--model_base_path={base}"]) as srv:
        yield srv


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_serving_client_predicts_regresses_and_classifies_any_model(half_plus_two, transport):
    from serving.client import ServingClient

    with ServingClient(_target(half_plus_two, transport), "half_plus_two", transport=transport) as c:
        outputs = c.predict({"x": np.array([1.0, 2.0, 5.0], np.float32)})
        regressed = c.regress([{"x": 1.0}, {"x": 4.0}], signature_name="regress_x_to_y")
        classified = c.classify([{"x": 2.0}], signature_name="classify_x_to_y")
        with pytest.raises(ClientError) as error:
            c.predict({"x": np.array([1.0], np.float32)}, signature_name="no_such_signature")

    # The single output comes back under its alias, with the signature's dtype, on both transports.
    assert list(outputs) == ["y"] and outputs["y"].dtype == np.float32
    np.testing.assert_allclose(outputs["y"], [2.5, 3.0, 4.5])
    assert regressed == pytest.approx([2.5, 4.0])
    assert classified == [[("", pytest.approx(3.0))]]
    assert error.value.code in ("FAILED_PRECONDITION", "INVALID_ARGUMENT")
    assert "no_such_signature" in error.value.message


def test_serving_client_checks_its_inputs():
    from serving.client import ServingClient

    client = ServingClient("http://127.0.0.1:1", "m", transport="rest", retries=0)
    with pytest.raises(ValueError, match=r"'x'.*str or bytes"):
        client.predict({"x": np.array([b"a", 1], dtype=object)})
    with pytest.raises(ValueError, match="feature 'f'"):
        client.classify([{"f": [1, "a"]}])
