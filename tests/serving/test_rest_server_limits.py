"""REST timeout, graceful stop and default flags, with their own servers.

`--rest_api_timeout_in_ms=1` would break the shared server of test_rest_api.py,
so it gets a process here; graceful `RestServer.stop` is checked in-process
(ModelManager + DataPlane + RestServer, real HTTP on loopback) because it needs
a request to be in flight at a chosen moment.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.serving.conftest import copy_model, running_server

pytestmark = pytest.mark.timeout(300)


def post(url: str, body: bytes, timeout: float = 120.0) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_timeout_is_504_and_does_not_bound_status(tfs_testdata: Path, tmp_path: Path):
    base = copy_model(tfs_testdata, "saved_model_half_plus_two_cpu", tmp_path / "hp2")
    args = ["--model_name=half_plus_two", f"--model_base_path={base}", "--rest_api_timeout_in_ms=1"]
    with running_server(args) as srv:
        url = srv.rest_url + "/v1/models/half_plus_two"
        # 2M values take far longer than 1 ms to decode and run.
        body = json.dumps({"inputs": [1.0] * 2_000_000}).encode()
        status, headers, raw = post(url + ":predict", body)
        assert status == 504
        assert json.loads(raw) == {"error": "Deadline Exceeded"}
        assert headers["Content-Type"] == "application/json"
        # No CORS flag: no CORS headers.
        assert "Access-Control-Allow-Origin" not in headers
        with urllib.request.urlopen(url, timeout=60) as response:  # status has no deadline
            assert response.status == 200
        # No monitoring config: no metrics page.
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(srv.rest_url + "/monitoring/prometheus/metrics", timeout=60)
        assert info.value.code == 404


def test_stop_finishes_in_flight_requests_then_refuses(tfs_testdata: Path, tmp_path: Path):
    from serving.dataplane import DataPlane
    from serving.flags import options_for_tests
    from serving.metrics import Metrics
    from serving.model_manager import ModelManager, single_model_config
    from serving.rest import start_rest_server

    base = copy_model(tfs_testdata, "saved_model_half_plus_two_cpu", tmp_path / "hp2")
    options = options_for_tests(
        rest_api_port=0,
        file_system_poll_wait_seconds=0,
        model_base_path=str(base),
        model_name="half_plus_two",
    )
    manager = ModelManager(options)
    manager.start(single_model_config("half_plus_two", str(base)))
    metrics = Metrics()
    dataplane = DataPlane(manager, options, metrics)
    server = start_rest_server(dataplane, manager, options, metrics, host="127.0.0.1")
    url = f"http://127.0.0.1:{server.port}/v1/models/half_plus_two:predict"
    try:
        assert post(url, b'{"instances": [1.0]}')[0] == 200
        result: dict = {}
        values = [1.0] * 1_000_000
        body = json.dumps({"inputs": values}).encode()

        def slow_request() -> None:
            result["answer"] = post(url, body)

        worker = threading.Thread(target=slow_request)
        worker.start()
        deadline = time.monotonic() + 30
        while server._in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert server._in_flight == 1
        server.stop(grace_s=30)
        worker.join(timeout=60)
        status, _, raw = result["answer"]
        assert status == 200
        assert len(json.loads(raw)["outputs"]) == len(values)
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(urllib.request.Request(url, data=b"{}"), timeout=5)
    finally:
        server.stop(grace_s=1)
        dataplane.close()
        manager.stop()


def test_batching_errors_keep_their_rest_status(tfs_testdata: Path, tmp_path: Path):
    base = copy_model(tfs_testdata, "saved_model_half_plus_two_cpu", tmp_path / "hp2")
    batching = tmp_path / "batching.config"
    batching.write_text("max_batch_size { value: 4 }\nbatch_timeout_micros { value: 1000 }\n")
    args = [
        "--model_name=half_plus_two",
        f"--model_base_path={base}",
        "--enable_batching",
        f"--batching_parameters_file={batching}",
    ]
    with running_server(args) as srv:
        url = srv.rest_url + "/v1/models/half_plus_two:predict"
        status, _, raw = post(url, b'{"instances": [1.0, 2.0, 3.0, 4.0]}')
        assert (status, json.loads(raw)) == (200, {"predictions": [2.5, 3.0, 3.5, 4.0]})
        status, _, raw = post(url, b'{"instances": [1.0, 2.0, 3.0, 4.0, 5.0]}')
        assert status == 400
        assert "Task size 5 is larger than maximum input batch size 4" in json.loads(raw)["error"]
