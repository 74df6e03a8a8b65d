"""The async data plane under faults: cancellation, deadlines in the queue, floods, budgets, hygiene.

The scheduler cases run `BatchScheduler` in-process on a real half_plus_two
session (a thin wrapper records the rows each session run received, so "the
rows were not run" is observed, not assumed). The server cases share one
`--enable_batching` server whose batches wait 1 s to fill (idle fast path off),
so a request reliably sits in the queue while the test acts on it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving import config_protos
from serving.batching import BatchingOptions, BatchScheduler
from serving.errors import ServingError
from serving.servable import Servable, timeout_step_ms
from tests.serving.conftest import copy_model, running_server

pytestmark = pytest.mark.timeout(300)

HEADER_TIMEOUT_S = 1.0


class RecordingServable:
    """A real Servable whose runs are recorded (rows fed per run)."""

    def __init__(self, servable: Servable):
        self.servable = servable
        self.rows: list[int] = []

    def run(self, feeds, fetches, timeout_s=None):
        self.rows.append(len(next(iter(feeds.values()))))
        return self.servable.run(feeds, fetches, timeout_s=timeout_s)


@pytest.fixture(scope="module")
def hp2_path(tfs_testdata, tmp_path_factory):
    return copy_model(tfs_testdata, "saved_model_half_plus_two_cpu", tmp_path_factory.mktemp("m") / "hp2")


@pytest.fixture
def servable(hp2_path):
    return RecordingServable(Servable("half_plus_two", 123, str(hp2_path / "00000123"), ["serve"]))


def _options(idle_fast_path: bool = False, **overrides) -> BatchingOptions:
    params = config_protos.BatchingParameters()
    for name, value in overrides.items():
        getattr(params, name).value = value
    return BatchingOptions.from_proto(params, idle_fast_path=idle_fast_path)


def _feeds(values) -> dict:
    return {"x:0": np.asarray(values, np.float32)}


# --- scheduler ------------------------------------------------------------------------------


def test_idle_fast_path_runs_a_lone_request_at_once(servable):
    waiting = BatchScheduler(_options(batch_timeout_micros=600_000, num_batch_threads=1))
    fast = BatchScheduler(_options(True, batch_timeout_micros=600_000, num_batch_threads=1))
    servable.run(_feeds([0.0]), ["y:0"])  # the first run builds the session callable: keep it off the clock
    try:
        started = time.monotonic()
        (out,) = fast.run(servable, _feeds([1.0]), ["y:0"])
        fast_s = time.monotonic() - started
        started = time.monotonic()
        waiting.run(servable, _feeds([1.0]), ["y:0"])
        waiting_s = time.monotonic() - started
    finally:
        fast.stop()
        waiting.stop()
    np.testing.assert_array_equal(out, [2.5])
    assert fast_s < 0.3  # no 600 ms wait for a batch that nothing else would join
    assert waiting_s >= 0.55  # TF's semantics without the fast path


def test_cancelled_task_leaves_the_batch_and_the_others_still_run(servable):
    scheduler = BatchScheduler(_options(batch_timeout_micros=400_000, num_batch_threads=1))
    done = {}
    try:
        gone = scheduler.submit(
            servable, _feeds([1.0, 1.0, 1.0]), ["y:0"], None, lambda t: done.setdefault("gone", t)
        )
        kept_event = threading.Event()
        kept = scheduler.submit(servable, _feeds([4.0]), ["y:0"], None, lambda t: kept_event.set())
        scheduler.cancel(gone)
        assert kept_event.wait(10)
    finally:
        scheduler.stop()
    assert done["gone"].error.code == grpc.StatusCode.CANCELLED
    np.testing.assert_array_equal(kept.outputs()[0], [4.0])
    assert servable.rows == [1]  # the cancelled task's 3 rows were never fed


def test_rows_whose_deadline_passed_in_the_queue_are_not_run(servable):
    scheduler = BatchScheduler(_options(batch_timeout_micros=500_000, num_batch_threads=1))
    try:
        events = [threading.Event(), threading.Event()]
        late = scheduler.submit(
            servable, _feeds([1.0, 2.0]), ["y:0"], time.monotonic() + 0.1, lambda t: events[0].set()
        )
        patient = scheduler.submit(servable, _feeds([3.0]), ["y:0"], None, lambda t: events[1].set())
        assert all(e.wait(10) for e in events)
    finally:
        scheduler.stop()
    with pytest.raises(ServingError) as info:
        late.outputs()
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    np.testing.assert_array_equal(patient.outputs()[0], [3.5])
    assert servable.rows == [1]


def test_run_timeouts_round_up_to_a_few_cached_steps():
    assert timeout_step_ms(None) == 0
    steps = {timeout_step_ms(ms / 1000) for ms in range(1, 30_001)}
    assert len(steps) < 70  # ~4 callables per doubling, not one per millisecond
    for ms in (1, 7, 150, 2_999, 30_000):
        assert ms <= timeout_step_ms(ms / 1000) <= ms * 1.2 + 1


# --- one batching server whose batches wait -------------------------------------------------


@pytest.fixture(scope="module")
def server(hp2_path, tmp_path_factory):
    params = tmp_path_factory.mktemp("params") / "batching.config"
    params.write_text(
        "max_batch_size { value: 8 }\n"
        "batch_timeout_micros { value: 1000000 }\n"
        "max_enqueued_batches { value: 2 }\n"
        "num_batch_threads { value: 1 }\n"
    )
    args = [
        "--model_name=half_plus_two",
        f"--model_base_path={hp2_path}",
        "--enable_batching",
        f"--batching_parameters_file={params}",
        "--batching_idle_fast_path=false",
        "--max_request_input_bytes=400000",
        f"--rest_api_header_timeout_s={HEADER_TIMEOUT_S}",
    ]
    with running_server(args) as srv:
        yield srv


def _request(values) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(values, dtype=tf.float32))
    return request


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_client_that_disconnects_while_batched_leaves_the_server_serving(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        waiting = stub.Predict.future(_request([1.0]), timeout=30)
        time.sleep(0.3)  # it now waits in a batch that runs after 1 s
        waiting.cancel()
        answer = stub.Predict(_request([2.0]), timeout=30)
    assert waiting.cancelled()
    np.testing.assert_array_equal(tf.make_ndarray(answer.outputs["y"]), [3.0])
    assert "Traceback" not in server.output()


def test_deadline_that_expires_in_the_queue_is_deadline_exceeded(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(_request([1.0]), timeout=0.2)
        elapsed = time.monotonic() - started
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 0.9  # answered at the deadline, not when the batch would have run


def test_ten_thousand_concurrent_requests_are_bounded_by_the_queue(server):
    before = _rss_kb(server.pid)

    async def flood() -> list[grpc.StatusCode]:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = _request([1.0])

            async def one():
                try:
                    await stub.Predict(request, timeout=60)
                    return grpc.StatusCode.OK
                except grpc.aio.AioRpcError as e:
                    if e.code() == grpc.StatusCode.UNAVAILABLE:
                        assert "queue to which this task was submitted is full" in e.details()
                    return e.code()

            return await asyncio.gather(*(one() for _ in range(10_000)))

    codes = asyncio.run(flood())
    after = _rss_kb(server.pid)
    counts = {code: codes.count(code) for code in set(codes)}
    # As TF Serving answers: run, or refused because the batch queue is full. No call
    # may be dropped by gRPC's core before it reaches the server (a bare CANCELLED).
    assert set(counts) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, counts
    assert counts.get(grpc.StatusCode.UNAVAILABLE, 0) > 0, counts  # the queue holds 2 batches of 8
    assert counts.get(grpc.StatusCode.OK, 0) >= 16, counts
    assert after - before < 150_000, (before, after)  # kB: refused, not queued in memory
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        assert tf.make_ndarray(stub.Predict(_request([2.0]), timeout=30).outputs["y"]).tolist() == [3.0]


def test_request_over_the_input_budget_is_429_resource_exhausted(server):
    body = b'{"instances": [' + b",".join([b"1.0"] * 40_000) + b"]}"  # ~160 kB, ×4 decoded > 400 kB
    request = urllib.request.Request(server.rest_url + "/v1/models/half_plus_two:predict", data=body)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=30)
    assert info.value.code == 429
    assert "--max_request_input_bytes=400000" in info.value.read().decode()


def test_malformed_http_request_is_one_log_line_and_the_server_goes_on(server):
    mark = len(server.output())
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as sock:
        sock.sendall(b"NOT HTTP AT ALL\x00\x01\r\n\r\n")
        answer = sock.recv(1000)
    time.sleep(0.3)
    logged = server.output()[mark:]
    assert answer.split(b" ", 2)[1] == b"400"
    assert "Traceback" not in logged and len(logged.splitlines()) <= 1, logged
    with urllib.request.urlopen(server.rest_url + "/v1/models/half_plus_two", timeout=30) as response:
        assert response.status == 200


def test_client_that_sends_half_a_request_line_is_dropped_after_the_header_timeout(server):
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /v1/models/half_plus_two:pre")  # and nothing more
        closed = sock.recv(1000)
        elapsed = time.monotonic() - started
    assert closed == b""  # closed by the server, no answer
    assert HEADER_TIMEOUT_S * 0.9 <= elapsed < HEADER_TIMEOUT_S + 5, elapsed


def test_kept_alive_connection_idle_past_the_header_timeout_still_answers(server):
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=10)
    try:
        for _ in range(2):  # the header clock starts at a request's first byte, not at the last answer
            connection.request("POST", "/v1/models/half_plus_two:predict", b'{"instances": [1.0]}')
            response = connection.getresponse()
            assert (response.status, json.loads(response.read())) == (200, {"predictions": [2.5]})
            time.sleep(HEADER_TIMEOUT_S * 1.5)
    finally:
        connection.close()


def test_rest_listens_on_both_ipv4_and_ipv6(server):
    if not socket.has_ipv6:
        pytest.skip("this host has no IPv6")
    try:
        with socket.create_connection(("::1", server.rest_port), timeout=5):
            pass
    except OSError as e:
        pytest.skip(f"IPv6 loopback unavailable here: {e}")
    for host in ("127.0.0.1", "[::1]"):
        with urllib.request.urlopen(
            f"http://{host}:{server.rest_port}/v1/models/half_plus_two", timeout=30
        ) as r:
            assert r.status == 200


# --- SIGTERM under keep-alive load ------------------------------------------------------------


def test_sigterm_under_keep_alive_load_cuts_off_no_request(hp2_path):
    import collections
    import http.client

    from tests.serving.conftest import start_server

    srv = start_server(["--model_name=half_plus_two", f"--model_base_path={hp2_path}"])
    outcomes: collections.Counter = collections.Counter()
    lock = threading.Lock()
    body = b'{"instances": [1.0, 2.0, 3.0]}'

    def count(what) -> None:
        with lock:
            outcomes[what] += 1

    def rest_client() -> None:
        conn = None
        for _ in range(20_000):  # bounded; ends when the server refuses a new connection
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", srv.rest_port, timeout=30)
                try:
                    conn.connect()
                except ConnectionRefusedError:
                    count("refused")
                    return
            try:
                conn.request("POST", "/v1/models/half_plus_two:predict", body)
                response = conn.getresponse()
                response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                count("cut off")  # sent on a connection the server then dropped
                conn.close()
                conn = None
                continue
            count(response.status)
            if (response.getheader("Connection") or "").lower() == "close":
                count("told to close")
                conn.close()
                conn = None

    def grpc_client() -> None:
        with grpc.insecure_channel(srv.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for _ in range(20_000):
                try:
                    stub.Predict(_request([1.0]), timeout=30)
                    count("grpc OK")
                except grpc.RpcError as e:
                    count(f"grpc {e.code().name}")
                    if e.code() == grpc.StatusCode.UNAVAILABLE:
                        if "Server is shutting down" in (e.details() or ""):
                            count("grpc told to go elsewhere")
                        return

    threads = [threading.Thread(target=rest_client) for _ in range(6)]
    threads += [threading.Thread(target=grpc_client) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        time.sleep(2.0)
        srv.signal()
        for t in threads:
            t.join(60)
        code = srv.proc.wait(timeout=60)
    finally:
        srv.kill()
    assert code == 0
    assert outcomes["cut off"] == 0, outcomes
    assert outcomes[200] > 0 and outcomes["grpc OK"] > 0, outcomes
    assert outcomes["refused"] == 6, outcomes  # every REST client ended on a refused new connection
    assert outcomes["told to close"] >= 1, outcomes  # kept-alive answers during the drain said so
    # Both gRPC clients were refused by the drain's first step, before grpc's stop() could
    # cancel a call it had not handed over yet (grpc/grpc#41785): no CANCELLED.
    assert outcomes["grpc told to go elsewhere"] == 2, outcomes
    assert set(outcomes) <= {
        200,
        "refused",
        "told to close",
        "grpc OK",
        "grpc UNAVAILABLE",
        "grpc told to go elsewhere",
    }, outcomes
