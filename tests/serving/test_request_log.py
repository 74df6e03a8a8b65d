"""Sampled request logging (--request_log_sample_rate): real servers, real files.

Two servers share the tiny text classifier, published as versions 1 and 2:
one logs every call without the text, one logs every call with it (and batches).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import ClassVar

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving import request_log
from serving.flags import options_for_tests
from serving.metrics import REQUEST_LOG_RECORDS, Metrics
from tests.serving.conftest import running_server, wait_for

pytestmark = pytest.mark.timeout(300)

TEXTS = ["The striker scored twice in the cup final", "Shares rose after the bank's profit report"]


@pytest.fixture(scope="module")
def two_versions(tiny_run, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("logged") / "tiny"
    for version in ("1", "2"):
        shutil.copytree(tiny_run.version_dir, base / version)
    return base


def _start(base: Path, log_file: Path, *extra: str):
    config = log_file.with_suffix(".models.config")
    config.write_text(
        f'model_config_list {{ config {{ name: "tiny" base_path: "{base}" model_platform: "tensorflow" '
        "model_version_policy { all {} } } }\n"
    )
    return running_server(
        [
            f"--model_config_file={config}",
            "--request_log_sample_rate=1",
            f"--request_log_file={log_file}",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def logged(two_versions, tmp_path_factory):
    log_file = tmp_path_factory.mktemp("request_log") / "requests.jsonl"
    with _start(two_versions, log_file) as server:
        yield server, log_file


def _post(server, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"{server.rest_url}{path}", data=json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{path} answered {e.code}: {e.read()!r}") from e


def _records(log_file: Path, count: int) -> list[dict]:
    """The log's records once there are `count` of them (the writer flushes within 0.2 s)."""
    assert wait_for(lambda: log_file.is_file() and len(log_file.read_text().splitlines()) >= count, 10)
    return [json.loads(line) for line in log_file.read_text().splitlines()]


def _fingerprint(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def test_every_call_is_logged_with_its_version_and_no_text(logged):
    server, log_file = logged
    latest = _post(server, "/v1/models/tiny:predict", {"instances": TEXTS})
    _post(server, "/v1/models/tiny/versions/1:predict", {"instances": TEXTS[:1]})
    _post(
        server, "/v1/models/tiny:classify", {"signature_name": "classify", "examples": [{"text": TEXTS[1]}]}
    )
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc_target))
    grpc_request = predict_pb2.PredictRequest()
    grpc_request.model_spec.name = "tiny"
    grpc_request.model_spec.version.value = 1
    grpc_request.inputs["text"].CopyFrom(tf.make_tensor_proto(TEXTS[1:]))
    stub.Predict(grpc_request, timeout=30)

    records = _records(log_file, 4)
    # Exactly these four: the export's warmup records, replayed at load, were not logged.
    assert len(records) == 4
    assert [(r["model_name"], r["model_version"], r["api"]) for r in records] == [
        ("tiny", 2, "Predict"),
        ("tiny", 1, "Predict"),
        ("tiny", 2, "Classify"),
        ("tiny", 1, "Predict"),
    ]
    first = records[0]
    assert first["signature_name"] == "serving_default"
    assert first["rows"] == 2 and first["latency_ms"] > 0
    assert first["time"].endswith("Z")
    assert first["inputs"]["text"]["fingerprints"] == [_fingerprint(t) for t in TEXTS]
    assert first["inputs"]["text"]["sizes"] == [len(t.encode()) for t in TEXTS]
    assert first["outputs"]["label"] == [p["label"] for p in latest["predictions"]]
    np.testing.assert_allclose(
        first["outputs"]["probabilities"], [p["probabilities"] for p in latest["predictions"]], rtol=1e-6
    )
    assert records[2]["signature_name"] == "classify"
    assert set(records[2]["outputs"]) == {"classes", "scores"}
    assert records[3]["inputs"]["text"]["fingerprints"] == [_fingerprint(TEXTS[1])]
    # Without --request_log_include_text the text itself is nowhere in the log.
    written = log_file.read_text()
    for text in TEXTS:
        assert text not in written and "values" not in written


def test_failed_calls_are_not_logged(logged):
    server, log_file = logged
    before = len(_records(log_file, 0))
    with pytest.raises(AssertionError, match="answered 404"):
        _post(server, "/v1/models/tiny/versions/9:predict", {"instances": TEXTS})
    _post(server, "/v1/models/tiny:predict", {"instances": TEXTS[:1]})
    records = _records(log_file, before + 1)
    assert len(records) == before + 1  # only the call that answered
    assert records[-1]["rows"] == 1


def test_records_are_counted_and_dropped_when_they_do_not_fit(tmp_path):
    feeds = {"serving_default_text:0": np.array([b"x"], dtype=object)}
    metrics = Metrics()
    fits = request_log.RequestLog(str(tmp_path / "fits.jsonl"), 1.0, metrics=metrics)
    fits.submit(_FakeServable(), "Predict", feeds, ["out:0"], [np.array([1.0])], 0.001)
    fits.close()
    assert metrics.value(REQUEST_LOG_RECORDS, "written") == 1
    record = json.loads((tmp_path / "fits.jsonl").read_text())
    # No signature feeds these tensors: the record keeps the tensor names.
    assert record["outputs"] == {"out:0": [1.0]} and record["signature_name"] == ""
    full = request_log.RequestLog(str(tmp_path / "full.jsonl"), 1.0, metrics=metrics, max_pending_bytes=0)
    full.submit(_FakeServable(), "Predict", feeds, ["out:0"], [np.array([1.0])], 0.001)
    full.close()
    assert metrics.value(REQUEST_LOG_RECORDS, "dropped_queue_full") == 1
    assert not (tmp_path / "full.jsonl").read_text()


class _FakeServable:
    """Only the attributes a log record reads (a name, a version, no signatures)."""

    name = "m"
    version = 3
    signature_defs: ClassVar[dict] = {}


def test_include_text_logs_the_text_itself(two_versions, tmp_path):
    log_file = tmp_path / "with_text.jsonl"
    with _start(two_versions, log_file, "--request_log_include_text", "--enable_batching") as server:
        _post(server, "/v1/models/tiny/versions/2:predict", {"instances": TEXTS})
        _post(server, "/v1/models/tiny:predict", {"inputs": {"text": ["ünïcode ✓ text"]}})
        records = _records(log_file, 2)
    assert records[0]["inputs"]["text"]["values"] == TEXTS
    assert records[0]["model_version"] == 2
    assert records[1]["inputs"]["text"]["values"] == ["ünïcode ✓ text"]


def test_sample_rate_zero_logs_nothing_and_opens_no_file(tmp_path):
    log_file = tmp_path / "never.jsonl"
    options = options_for_tests(request_log_sample_rate=0.0, request_log_file=str(log_file))
    assert request_log.open_request_log(options) is None
    assert not log_file.exists()


def test_sample_rate_is_honoured(tmp_path):
    draws = iter([0.05, 0.5, 0.2, 0.09])
    log = request_log.RequestLog(str(tmp_path / "s.jsonl"), 0.1, random_source=lambda: next(draws))
    assert [log.sampled() for _ in range(4)] == [True, False, False, True]
    log.close()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"request_log_sample_rate": 1.5, "request_log_file": "x"}, "must be in (0, 1]"),
        ({"request_log_sample_rate": 0.5}, "needs --request_log_file"),
        ({"request_log_sample_rate": 0.5, "request_log_file": "/nonexistent/dir/log"}, "cannot open"),
    ],
)
def test_bad_flags_are_refused_with_the_flag_named(overrides, message):
    with pytest.raises((ValueError, OSError)) as raised:
        request_log.open_request_log(options_for_tests(**overrides))
    assert message in str(raised.value)
