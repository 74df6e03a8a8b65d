"""The server process end to end: command line, startup failures, ModelService, polling, SIGTERM.

Every test starts the real `python -m serving` on loopback and talks to it with
the gRPC stubs from tensorflow-serving-api.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from concurrent import futures

import grpc
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import server as server_module
from tests.serving import conftest
from tests.serving.conftest import copy_model, free_port, run_server_to_exit, running_server, wait_for

TWO_VERSIONS = "saved_model_half_plus_two_2_versions"
AVAILABLE, END = 30, 50


def status(channel, name: str, version: int | None = None):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    return model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)


def version_states(channel, name: str) -> list[tuple[int, int, int]]:
    return [(s.version, s.state, s.status.error_code) for s in status(channel, name).model_version_status]


def predict(channel, name: str, values, label: str = "", timeout: float = 10.0):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if label:
        request.model_spec.version_label = label
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(values, dtype=tf.float32))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    return stub.Predict(request, timeout=timeout)


def config_text(*models: tuple[str, str, str]) -> str:
    entries = "".join(
        f'config {{ name: "{name}" base_path: "{base}" model_platform: "tensorflow" {extra} }} '
        for name, base, extra in models
    )
    return f"model_config_list {{ {entries}}}"


def test_ready_message_is_shared_with_the_fixtures():
    assert conftest.READY_MESSAGE == server_module.READY_MESSAGE


# ---- command line and startup failures (no model loads) ------------------------------------


def test_help_prints_usage_and_exits_zero():
    result = run_server_to_exit(["--help"])
    assert result.returncode == 0
    assert "--model_config_file_poll_wait_seconds=0" in result.stdout
    assert "--enable_model_warmup=true" in result.stdout


def test_malformed_flag_value_prints_usage_and_fails():
    result = run_server_to_exit(["--port=eighty", "--model_base_path=/m"])
    assert result.returncode != 0
    assert "Couldn't interpret value =eighty for flag port." in result.stderr
    assert "usage: python -m serving" in result.stderr


def test_version_prints_versions():
    result = run_server_to_exit(["--version"])
    assert result.returncode == 0
    assert "TensorFlow ModelServer: textserve-" in result.stdout
    assert f"TensorFlow Library: {tf.__version__}" in result.stdout


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            ["--bogus_flag=1"],
            "Failed to start server. Error: INVALID_ARGUMENT: Both server_options.model_base_path "
            "and server_options.model_config_file are empty!",
        ),
        (
            ["--model_base_path=/m", "--batching_parameters_file=/b"],
            "Failed to start server. Error: INVALID_ARGUMENT: server_options.batching_parameters_file "
            "is set without setting server_options.enable_batching to true.",
        ),
    ],
)
def test_flag_rule_violations_fail_startup(arguments, message):
    result = run_server_to_exit(arguments)
    assert result.returncode != 0
    assert message in result.stderr
    if "--bogus_flag=1" in arguments:
        assert "unknown argument: --bogus_flag=1" in result.stderr


def test_unparsable_config_file_fails_startup(tfs_testdata):
    bad = tfs_testdata / "reference" / "bad_model_config.txt"
    result = run_server_to_exit([f"--model_config_file={bad}", f"--port={free_port()}"])
    assert result.returncode != 0
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in result.stderr
    assert f"Failed to start server. Error: INVALID_ARGUMENT: Invalid protobuf file: '{bad}'" in result.stderr


def test_model_that_cannot_load_fails_startup(tmp_path):
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "saved_model.pb").write_bytes(b"garbage")
    result = run_server_to_exit(
        [
            f"--model_base_path={tmp_path / 'm'}",
            "--model_name=m",
            f"--port={free_port()}",
            "--max_num_load_retries=0",
        ]
    )
    assert result.returncode != 0
    assert (
        "Failed to start server. Error: UNKNOWN: 1 servable(s) did not become available: "
        "{{{name: m version: 1} due to error: " in result.stderr
    )


def test_relative_base_path_fails_startup():
    result = run_server_to_exit(["--model_base_path=models/m", f"--port={free_port()}"])
    assert result.returncode != 0
    assert (
        "INVALID_ARGUMENT: Expected model default to have an absolute path or URI; got base_path()=models/m"
    ) in result.stderr


# ---- a served two-version model: status, reload, labels ----------------------------------


@pytest.fixture(scope="module")
def two_versions(tfs_testdata, tmp_path_factory):
    """Both versions of half_plus_two served (policy all) from a config file."""
    root = tmp_path_factory.mktemp("two_versions")
    base = copy_model(tfs_testdata, TWO_VERSIONS, root / "hp2")
    config = root / "models.config"
    config.write_text(config_text(("hp2", str(base), "model_version_policy { all { } }")))
    with running_server([f"--model_config_file={config}"], rest=False) as srv:
        channel = grpc.insecure_channel(srv.grpc_target)
        yield srv, channel, base
        channel.close()


def test_get_model_status_lists_versions_newest_first(two_versions):
    _, channel, _ = two_versions
    assert version_states(channel, "hp2") == [(124, AVAILABLE, 0), (123, AVAILABLE, 0)]
    (only,) = status(channel, "hp2", 123).model_version_status
    assert (only.version, only.state, only.status.error_message) == (123, AVAILABLE, "")


@pytest.mark.parametrize(
    "name, version, message",
    [
        ("missing", None, "Could not find any versions of model missing"),
        ("hp2", 5, "Could not find version 5 of model hp2"),
    ],
)
def test_get_model_status_not_found(two_versions, name, version, message):
    _, channel, _ = two_versions
    with pytest.raises(grpc.RpcError) as raised:
        status(channel, name, version)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert raised.value.details() == message


def test_get_model_status_without_model_spec(two_versions):
    _, channel, _ = two_versions
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    with pytest.raises(grpc.RpcError) as raised:
        stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "Missing ModelSpec"


def test_reload_config_sets_labels_then_predict_follows_them(two_versions):
    _, channel, base = two_versions
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(
        config_text(
            (
                "hp2",
                str(base),
                "model_version_policy { all { } } "
                'version_labels { key: "stable" value: 123 } '
                'version_labels { key: "canary" value: 124 }',
            )
        ),
        request.config,
    )
    response = stub.HandleReloadConfigRequest(request, timeout=60)
    assert response.status.error_code == 0
    assert predict(channel, "hp2", [1.0], label="stable").model_spec.version.value == 123
    assert predict(channel, "hp2", [1.0], label="canary").model_spec.version.value == 124
    with pytest.raises(grpc.RpcError) as raised:
        predict(channel, "hp2", [1.0], label="nightly")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "Unrecognized servable version label: nightly"

    # Only model_config_list is accepted.
    custom = model_management_pb2.ReloadConfigRequest()
    custom.config.custom_model_config.type_url = "type.googleapis.com/x"
    with pytest.raises(grpc.RpcError) as raised:
        stub.HandleReloadConfigRequest(custom, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # An invalid config leaves the server as it was.
    bad = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(config_text(("hp2", "relative/path", "")), bad.config)
    with pytest.raises(grpc.RpcError) as raised:
        stub.HandleReloadConfigRequest(bad, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "absolute path" in raised.value.details()
    assert predict(channel, "hp2", [1.0], label="stable").model_spec.version.value == 123


# ---- polling while serving ---------------------------------------------------------------


def test_new_version_swaps_in_without_failed_requests(tfs_testdata, tmp_path):
    base = copy_model(tfs_testdata, TWO_VERSIONS, tmp_path / "hp", versions=["00000123"])
    args = [
        "--model_name=hp",
        f"--model_base_path={base}",
        "--file_system_poll_wait_seconds=1",
        "--max_num_load_retries=0",
    ]
    with running_server(args, rest=False) as srv, grpc.insecure_channel(srv.grpc_target) as channel:
        seen: list[int] = []
        failures: list[BaseException] = []
        stop = threading.Event()

        def hammer():
            while not stop.is_set():
                try:
                    response = predict(channel, "hp", [2.0])
                    assert list(response.outputs["y"].float_val) == [3.0]
                    seen.append(response.model_spec.version.value)
                except BaseException as e:
                    failures.append(e)

        workers = [threading.Thread(target=hammer) for _ in range(3)]
        for worker in workers:
            worker.start()
        try:
            time.sleep(0.5)
            # A version being written (no saved_model.pb yet) and a broken one: ignored / failed.
            shutil.copytree(
                tfs_testdata / TWO_VERSIONS / "00000124" / "variables", base / "00000130" / "variables"
            )
            (base / "00000140").mkdir()
            (base / "00000140" / "saved_model.pb").write_bytes(b"garbage")
            assert wait_for(lambda: any(v == 140 for v, _, _ in version_states(channel, "hp")))
            assert wait_for(lambda: {v: s for v, s, _ in version_states(channel, "hp")}[140] == END)
            shutil.rmtree(base / "00000140")
            # The real new version arrives atomically.
            staging = tmp_path / "staging"
            shutil.copytree(tfs_testdata / TWO_VERSIONS / "00000124", staging)
            os.rename(staging, base / "00000124")
            assert wait_for(lambda: seen and seen[-1] == 124)
            time.sleep(0.5)
        finally:
            stop.set()
            for worker in workers:
                worker.join()
        assert not failures, failures[:3]
        assert 123 in seen and seen[-1] == 124
        states = {v: (s, code) for v, s, code in version_states(channel, "hp")}
        assert states[124] == (AVAILABLE, 0)
        assert states[123] == (END, 0)
        assert states[140][0] == END and states[140][1] != 0
        assert 130 not in states


def test_config_file_poll_applies_changes_and_ignores_bad_files(tfs_testdata, tmp_path):
    first = copy_model(tfs_testdata, TWO_VERSIONS, tmp_path / "a", versions=["00000123"])
    second = copy_model(tfs_testdata, "saved_model_half_plus_three", tmp_path / "b")
    config = tmp_path / "models.config"
    config.write_text(config_text(("a", str(first), "")))
    args = [f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1"]
    with running_server(args, rest=False) as srv, grpc.insecure_channel(srv.grpc_target) as channel:
        config.write_text("model_config_list { this is broken")
        assert srv.wait_for_output("Error parsing text-format tensorflow.serving.ModelServerConfig")
        assert predict(channel, "a", [2.0]).outputs["y"].float_val == [3.0]
        config.write_text(config_text(("a", str(first), ""), ("b", str(second), "")))
        assert wait_for(lambda: _available(channel, "b"))
        assert predict(channel, "b", [2.0]).outputs["y"].float_val == [4.0]
        config.write_text(config_text(("b", str(second), "")))
        assert wait_for(lambda: version_states(channel, "a") == [(123, END, 0)])
        with pytest.raises(grpc.RpcError) as raised:
            predict(channel, "a", [2.0])
        assert raised.value.details() == "Servable not found for request: Latest(a)"


def _available(channel, name: str) -> bool:
    try:
        return any(s == AVAILABLE for _, s, _ in version_states(channel, name))
    except grpc.RpcError:
        return False


# ---- transports, health, shutdown ----------------------------------------------------------


def test_unix_socket_health_service_and_same_port_rest(tfs_testdata, tmp_path):
    base = copy_model(tfs_testdata, TWO_VERSIONS, tmp_path / "hp", versions=["00000123"])
    socket_path = tmp_path / "grpc.sock"
    port = free_port()
    args = [
        "--model_name=hp",
        f"--model_base_path={base}",
        f"--grpc_socket_path={socket_path}",
        f"--port={port}",
        f"--rest_api_port={port}",
        "--enable_grpc_healthcheck_service",
    ]
    with running_server(args) as srv:
        assert "cannot be same as grpc_port" in srv.stderr_text()
        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            assert predict(channel, "hp", [4.0]).outputs["y"].float_val == [4.0]
        with grpc.insecure_channel(srv.grpc_target) as channel:
            check = channel.unary_unary("/grpc.health.v1.Health/Check")
            assert check(b"", timeout=10) == b"\x08\x01"  # status: SERVING
            for service in (b"PredictionService", b"tensorflow.serving.ModelService"):
                named = b"\x0a" + bytes([len(service)]) + service  # field 1 "service"
                assert check(named, timeout=10) == b"\x08\x01"
            with pytest.raises(grpc.RpcError) as raised:
                check(b"\x0a\x03foo", timeout=10)
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_sigterm_drains_in_flight_requests_and_exits_zero(tfs_testdata, tmp_path):
    base = copy_model(tfs_testdata, TWO_VERSIONS, tmp_path / "hp", versions=["00000123"])
    batching = tmp_path / "batching.config"
    # A lone request waits 2 s for its batch to fill: it is in flight when SIGTERM arrives.
    batching.write_text(
        "max_batch_size { value: 64 } batch_timeout_micros { value: 2000000 } num_batch_threads { value: 1 }"
    )
    args = [
        "--model_name=hp",
        f"--model_base_path={base}",
        "--enable_batching",
        f"--batching_parameters_file={batching}",
        "--batching_idle_fast_path=false",  # so the lone request really waits for its batch
    ]
    srv = conftest.start_server(args, rest=False)
    try:
        with grpc.insecure_channel(srv.grpc_target) as channel, futures.ThreadPoolExecutor(2) as pool:
            in_flight = pool.submit(predict, channel, "hp", [6.0], "", 30.0)
            time.sleep(0.5)
            srv.proc.send_signal(signal.SIGTERM)
            response = in_flight.result(timeout=30)
            assert list(response.outputs["y"].float_val) == [5.0]
            time.sleep(0.3)
            with pytest.raises(grpc.RpcError) as raised:
                predict(channel, "hp", [1.0], timeout=5)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert srv.proc.wait(timeout=30) == 0
        assert "Received SIGTERM" in srv.stderr_text()
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()
