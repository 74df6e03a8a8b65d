"""TF Serving's model lifecycle under faults: lost base paths, broken versions, retries, reloads.

In-process managers for the file-system and retry cases (real SavedModels in
real Sessions), then a real server process on loopback for the acceptance
cases: `rm -rf` of a base path under load loses no request, and a ReloadConfig
naming a path with no versions answers promptly while hot swaps go on.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time

import grpc
import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import tensor_codec
from serving.model_repository import AVAILABLE, END, LOADING
from tests.serving.conftest import copy_model, running_server
from tests.serving.manager_helpers import (
    TWO_VERSIONS,
    add_version,
    break_version,
    make_config,
    manager_factory,
    predict_y,
    states,
    wait_for,
)

POLL_S = 1.0
# Retries as TF Serving's defaults space them: a minute apart, so a test that
# waited for one would time out; every case below must cut the wait short.
SLOW_RETRIES = {"max_num_load_retries": 5, "load_retry_interval_micros": 60_000_000}


@pytest.fixture
def managers():
    with manager_factory() as build:
        yield build


def models_config(*models: tuple[str, object]):
    entries = "".join(
        f'config {{ name: "{name}" base_path: "{base}" model_platform: "tensorflow" }} '
        for name, base in models
    )
    return make_config(f"model_config_list {{ {entries} }}")


def messages(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# ---- a base path that is lost keeps what it serves ----------------------------------------------


def _make_unlistable(base) -> None:
    shutil.rmtree(base)
    base.write_text("a file where the base path directory was")


def _make_empty(base) -> None:
    shutil.rmtree(base)
    base.mkdir()


@pytest.mark.parametrize(
    "fault, logged",
    [
        (shutil.rmtree, "Could not find base path"),
        (_make_unlistable, "Could not list base path"),
        (_make_empty, "No versions of servable m found under base path"),
    ],
    ids=["vanished", "unlistable", "no-versions"],
)
def test_lost_base_path_keeps_serving_and_logs_once_per_poll(
    tfs_testdata, tmp_path, managers, caplog, fault, logged
):
    caplog.set_level(logging.INFO)
    base = copy_model(tfs_testdata, TWO_VERSIONS, tmp_path / "m", versions=["00000123"])
    manager = managers()
    manager.start(models_config(("m", base)))
    fault(base)
    time.sleep(2.6 * POLL_S)
    assert manager.resolve("m").version == 123
    assert predict_y(manager.resolve("m"), [2.0]) == [3.0]
    assert states(manager) == {123: (AVAILABLE, 0)}
    lines = messages(caplog, logged)
    assert 2 <= len(lines) <= 5, lines  # one line per poll, no more
    assert all("keeping version(s) [123] served" in line for line in lines)
    assert not messages(caplog, "Unloaded servable version")

    # Once versions are back, polling picks them up again.
    if base.is_file():
        base.unlink()
    if not base.exists():
        base.mkdir()
    add_version(tfs_testdata, base, "00000124", "00000124")
    assert wait_for(lambda: manager.available_versions("m") == [124])
    # 123 unloads after 124 is AVAILABLE (load before unload), so it passes UNLOADING on its way to END.
    assert wait_for(lambda: states(manager) == {124: (AVAILABLE, 0), 123: (END, 0)}), states(manager)


# ---- retries never hold anything up --------------------------------------------------------------


def test_broken_version_then_good_one_serves_within_two_polls(tfs_testdata, tmp_path, managers, caplog):
    caplog.set_level(logging.INFO)
    base = copy_model(tfs_testdata, TWO_VERSIONS, tmp_path / "m", versions=["00000123"])
    manager = managers(**SLOW_RETRIES)
    manager.start(models_config(("m", base)))
    break_version(base, "124")
    assert wait_for(lambda: messages(caplog, "version: 124} failed (attempt 1 of 6)"))
    assert states(manager)[124][0] == LOADING  # waiting a minute for its retry
    assert manager.resolve("m").version == 123

    added = time.monotonic()
    add_version(tfs_testdata, base, "125")
    assert wait_for(lambda: manager.resolve("m").version == 125)
    took = time.monotonic() - added
    # Two poll periods, plus the load itself on a busy 2-core machine.
    assert took < 2 * POLL_S + 3.0, took
    state, code = states(manager)[124]
    assert state == END and code != 0  # its retries were cancelled, its error kept
    assert not messages(caplog, "version: 124} failed (attempt 2 of 6)")
    assert wait_for(lambda: states(manager)[123] == (END, 0))


def test_retrying_model_does_not_block_other_models(tfs_testdata, tmp_path, managers, caplog):
    caplog.set_level(logging.INFO)
    broken = copy_model(tfs_testdata, TWO_VERSIONS, tmp_path / "a", versions=["00000123"])
    other = copy_model(tfs_testdata, TWO_VERSIONS, tmp_path / "b", versions=["00000123"])
    manager = managers(**SLOW_RETRIES)
    manager.start(models_config(("a", broken), ("b", other)))
    break_version(broken, "124")
    assert wait_for(lambda: messages(caplog, "version: 124} failed (attempt 1 of 6)"))

    added = time.monotonic()
    add_version(tfs_testdata, other, "00000124", "00000124")
    assert wait_for(lambda: manager.resolve("b").version == 124)
    assert time.monotonic() - added < 2 * POLL_S + 3.0
    assert states(manager, "a")[124][0] == LOADING  # still in its minute-long wait

    # A config change cancels the retries at once: the reload does not wait for them.
    started = time.monotonic()
    manager.reload_config(models_config(("b", other)))
    assert time.monotonic() - started < 2.0
    assert wait_for(lambda: states(manager, "a")[124][0] == END, timeout_s=5)
    assert manager.model_names() == ["b"]
    assert not messages(caplog, "version: 124} failed (attempt 2 of 6)")


# ---- ReloadConfig answers promptly whatever the paths hold ------------------------------------------


def test_reload_naming_paths_without_versions_returns_promptly(tfs_testdata, tmp_path, managers, caplog):
    caplog.set_level(logging.INFO)
    served = copy_model(tfs_testdata, TWO_VERSIONS, tmp_path / "served", versions=["00000123"])
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = tmp_path / "missing"
    manager = managers()
    manager.start(models_config(("served", served)))

    started = time.monotonic()
    manager.reload_config(models_config(("served", served), ("empty", empty), ("missing", missing)))
    assert time.monotonic() - started < 2.0
    assert manager.model_names() == ["empty", "missing", "served"]
    assert len(messages(caplog, "ReloadConfig does not wait for it")) == 2

    # Hot swaps of the served model keep working, and the new models are
    # served as soon as their versions land.
    add_version(tfs_testdata, served, "00000124", "00000124")
    add_version(tfs_testdata, empty, "7")
    missing.mkdir()
    add_version(tfs_testdata, missing, "8")
    assert wait_for(
        lambda: (
            manager.available_versions("served") == [124]
            and manager.available_versions("empty") == [7]
            and manager.available_versions("missing") == [8]
        )
    )


def test_reloaded_model_names_are_logged_escaped(tfs_testdata, tmp_path, managers, caplog):
    caplog.set_level(logging.INFO)
    base = copy_model(tfs_testdata, TWO_VERSIONS, tmp_path / "m", versions=["00000123"])
    manager = managers()
    manager.start(models_config(("m", base)))
    forged = "evil\nERROR forged line"
    config = models_config(("m", base))
    config.model_config_list.config.add(
        name=forged, base_path=str(tmp_path / "nothing"), model_platform="tensorflow"
    )
    manager.reload_config(config)
    time.sleep(1.5 * POLL_S)  # a poll logs the missing base path too
    logged = [r.getMessage() for r in caplog.records]
    assert any("evil\\nERROR forged line" in line for line in logged)
    assert not any("\n" in line for line in logged)


# ---- against a real server process ---------------------------------------------------------------


def _predict_request(name: str) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.inputs["x"].CopyFrom(tensor_codec.from_numpy(np.array([1.0, 2.0], np.float32)))
    return request


def _status(stub, name: str) -> dict[int, int]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    return {s.version: s.state for s in stub.GetModelStatus(request, timeout=10).model_version_status}


@pytest.fixture(scope="module")
def server(tfs_testdata, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    doomed = copy_model(tfs_testdata, TWO_VERSIONS, root / "doomed", versions=["00000123"])
    swapped = copy_model(tfs_testdata, TWO_VERSIONS, root / "swapped", versions=["00000123"])
    config_file = root / "models.config"
    config_file.write_text(
        text_format.MessageToString(models_config(("doomed", doomed), ("swapped", swapped)))
    )
    args = [f"--model_config_file={config_file}", "--file_system_poll_wait_seconds=1"]
    with running_server(args, rest=False) as srv:
        yield srv, root


def test_rm_rf_of_a_base_path_under_load_fails_no_request(server):
    server, root = server
    channel = grpc.insecure_channel(server.grpc_target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = _predict_request("doomed")
    results: list[str] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                response = stub.Predict(request, timeout=30)
                ok = list(response.outputs["y"].float_val) == [2.5, 3.0]
                results.append("ok" if ok else "wrong")
            except grpc.RpcError as e:
                results.append(e.code().name)

    workers = [threading.Thread(target=client) for _ in range(4)]
    for worker in workers:
        worker.start()
    time.sleep(1.0)
    before = len(results)
    shutil.rmtree(root / "doomed")
    time.sleep(3.5)  # three polls over the vanished path
    stop.set()
    for worker in workers:
        worker.join(timeout=60)
    failed = [r for r in results if r != "ok"]
    assert not failed, f"{len(failed)} of {len(results)} requests failed: {sorted(set(failed))}"
    assert len(results) - before > 20  # requests kept flowing after the rm -rf
    assert server.wait_for_output("Could not find base path")
    assert "keeping version(s) [123] served" in server.stderr_text()
    channel.close()


def test_reload_naming_a_path_without_versions_answers_promptly_and_swaps_go_on(server, tfs_testdata):
    server, root = server
    channel = grpc.insecure_channel(server.grpc_target)
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    (root / "later").mkdir()
    reload = model_management_pb2.ReloadConfigRequest()
    reload.config.CopyFrom(
        models_config(("doomed", root / "doomed"), ("swapped", root / "swapped"), ("later", root / "later"))
    )
    started = time.monotonic()
    response = models.HandleReloadConfigRequest(reload, timeout=30)
    assert time.monotonic() - started < 5.0
    assert response.status.error_code == 0

    # Hot swaps of the other model still work, and `later` is served once a version lands.
    add_version(tfs_testdata, root / "swapped", "00000124", "00000124")
    add_version(tfs_testdata, root / "later", "3")
    assert wait_for(lambda: _status(models, "swapped").get(124) == AVAILABLE)
    assert wait_for(lambda: _status(models, "later").get(3) == AVAILABLE)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    assert stub.Predict(_predict_request("later"), timeout=30).model_spec.version.value == 3
    channel.close()
