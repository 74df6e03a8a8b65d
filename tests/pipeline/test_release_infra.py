"""Infra validation: the candidate served on loopback, and a hot swap under load (see release_support)."""

from __future__ import annotations

import json
import threading
import time

import grpc
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from pipeline import release
from pipeline.config import load_config
from pipeline.errors import InfraValidationError
from tests.conftest import TINY_OVERRIDES
from tests.pipeline.release_support import good_run, log_lines, numeric_dirs, push_run, quiet

__all__ = ["good_run"]  # a fixture, used by name


# --- Infra validation --------------------------------------------------------------------------


def test_infra_validation_failure_stops_the_push(good_run, tmp_path):
    base = tmp_path / "models"
    with pytest.raises(InfraValidationError, match="exited with code 1 before the model loaded"):
        push_run(
            good_run, base, 'release.model_server="/bin/false"', "release.infra_timeout_s=30", infra=True
        )
    assert numeric_dirs(base) == [] and not log_lines(base)
    assert not list(base.glob(f"{release.STAGING_PREFIX}*"))


def test_infra_validation_and_hot_swap_on_our_server(good_run, tiny_corpus, tmp_path):
    """Acceptance: two pushes to an empty path; a polling server swaps to version 2 with no failed request."""
    from pipeline.train import train
    from tests.serving.conftest import running_server

    base = tmp_path / "models"
    first = push_run(good_run, base, "release.infra_timeout_s=90", infra=True)
    test_split = json.loads((good_run.run_dir / "splits.json").read_text())["test"]
    assert first.version == 1 and first.record["infra_validation"]["documents"] == min(32, len(test_split))
    assert first.record["infra_validation"]["warmup_requests"] == 5

    second_run = train(
        load_config(None, [*TINY_OVERRIDES, "model.arch=tfidf", "train.seed=7"]),
        tiny_corpus,
        tmp_path / "second",
        verbose=0,
        log=quiet,
    )
    with running_server(
        ["--model_name=tiny", f"--model_base_path={base}", "--file_system_poll_wait_seconds=1"]
    ) as server:
        failures, versions_seen, stop = [], [], threading.Event()

        def hammer():
            with grpc.insecure_channel(server.grpc_target) as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                request = predict_pb2.PredictRequest()
                request.model_spec.name = "tiny"
                request.inputs["text"].CopyFrom(
                    tf.make_tensor_proto(["rocket orbit launch"], dtype=tf.string)
                )
                while not stop.is_set():
                    try:
                        versions_seen.append(stub.Predict(request, timeout=30).model_spec.version.value)
                    except grpc.RpcError as error:
                        failures.append(f"{error.code().name}: {error.details()}")

        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            assert push_run(second_run, base, "release.infra_timeout_s=90", infra=True).version == 2
            deadline = time.monotonic() + 60
            while (not versions_seen or versions_seen[-1] != 2) and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.5)
        finally:
            stop.set()
            thread.join()
    assert not failures, failures[:5]
    assert versions_seen[0] == 1 and versions_seen[-1] == 2
