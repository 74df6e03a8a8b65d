"""End to end: the model trained on real BBC News, served, answers as it does in-process."""

import json
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from model.export import ExportedModel
from pipeline.data import DataConfig, ingest
from tests.serving.conftest import running_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def served_bbc(bbc_run):
    export_dir = bbc_run.version_dir.parent
    with running_server(
        ["--model_name=bbc_news", f"--model_base_path={export_dir.resolve()}", "--enable_batching"]
    ) as server:
        yield server


@pytest.fixture(scope="module")
def test_articles(bbc_run, bbc_path):
    splits = json.loads((bbc_run.run_dir / "splits.json").read_text())
    data = ingest(bbc_path, DataConfig()).subset(splits["test"][:24])
    return data


def test_rest_and_grpc_answer_like_the_in_process_model(served_bbc, test_articles, bbc_run):
    texts = test_articles.texts
    expected = ExportedModel(bbc_run.version_dir).predict(texts)

    body = json.dumps({"instances": texts}).encode()
    request = urllib.request.Request(f"{served_bbc.rest_url}/v1/models/bbc_news:predict", data=body)
    with urllib.request.urlopen(request, timeout=60) as response:
        predictions = json.loads(response.read())["predictions"]
    assert [p["label"] for p in predictions] == [label.decode() for label in expected["label"]]
    np.testing.assert_allclose(
        [p["probabilities"] for p in predictions], expected["probabilities"], atol=1e-5
    )

    grpc_request = predict_pb2.PredictRequest()
    grpc_request.model_spec.name = "bbc_news"
    grpc_request.inputs["text"].CopyFrom(tf.make_tensor_proto(texts, dtype=tf.string))
    with grpc.insecure_channel(served_bbc.grpc_target) as channel:
        reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(grpc_request, timeout=60)
    assert reply.model_spec.version.value == 1 and reply.model_spec.signature_name == "serving_default"
    assert list(reply.outputs["label"].string_val) == list(expected["label"])
    accuracy = np.mean([p["label"] == label for p, label in zip(predictions, test_articles.labels)])
    assert accuracy >= 0.9


def test_classify_api_returns_label_names(served_bbc):
    body = json.dumps(
        {"signature_name": "classify", "examples": [{"text": "The striker scored twice in the cup final"}]}
    ).encode()
    request = urllib.request.Request(f"{served_bbc.rest_url}/v1/models/bbc_news:classify", data=body)
    with urllib.request.urlopen(request, timeout=60) as response:
        results = json.loads(response.read())["results"]
    pairs = results[0]
    assert [label for label, _ in pairs] == ["business", "entertainment", "politics", "sport", "tech"]
    assert max(pairs, key=lambda pair: pair[1])[0] == "sport"


def test_warmup_requests_were_replayed(served_bbc):
    with urllib.request.urlopen(f"{served_bbc.rest_url}/v1/models/bbc_news", timeout=30) as response:
        status = json.loads(response.read())
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
