"""Server-side batching: correctness under concurrency and TF Serving's batching errors.

The first part drives a real `--enable_batching` server over gRPC with many
threads, each checking it got exactly its own rows back. The second part drives
`BatchScheduler` in-process on a real loaded SavedModel for the rules that need
precise timing (queue full, padding to allowed sizes, large-batch splitting,
deadlines), which a server process would make slow and flaky.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc, regression_pb2

from serving import config_protos
from serving.batching import BatchingOptions, BatchScheduler
from serving.errors import ServingError
from serving.metrics import WRAPPED_RUN_COUNT, Metrics
from serving.servable import Servable
from tests.serving.conftest import copy_model, running_server

MAX_BATCH = 8


@pytest.fixture(scope="module")
def hp2_path(tfs_testdata, tmp_path_factory):
    return copy_model(tfs_testdata, "saved_model_half_plus_two_cpu", tmp_path_factory.mktemp("m") / "hp2")


@pytest.fixture(scope="module")
def server(hp2_path, tfs_testdata, tmp_path_factory):
    root = tmp_path_factory.mktemp("batching")
    hp3 = copy_model(tfs_testdata, "saved_model_half_plus_three", root / "hp3")
    config = root / "models.config"
    config.write_text(
        "model_config_list {\n"
        f'  config {{ name: "half_plus_two" base_path: "{hp2_path}" model_platform: "tensorflow" }}\n'
        f'  config {{ name: "half_plus_three" base_path: "{hp3}" model_platform: "tensorflow" }}\n'
        "}\n"
    )
    params = root / "batching.config"
    params.write_text(
        f"max_batch_size {{ value: {MAX_BATCH} }}\n"
        "batch_timeout_micros { value: 2000 }\n"
        "max_enqueued_batches { value: 1000 }\n"
        "num_batch_threads { value: 2 }\n"
    )
    args = [f"--model_config_file={config}", "--enable_batching", f"--batching_parameters_file={params}"]
    with running_server(args, rest=False) as srv:
        yield srv


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.grpc_target)
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


def _predict(values, model="half_plus_two") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(values, dtype=tf.float32))
    return request


def test_concurrent_callers_get_their_own_rows(stub):
    """32 threads × 15 requests of 1–3 distinct rows: every answer is the caller's 0.5x+2."""

    def caller(worker: int) -> list[str]:
        problems = []
        for i in range(15):
            rows = 1 + (worker + i) % 3
            values = [worker * 1000.0 + i * 10.0 + r for r in range(rows)]
            response = stub.Predict(_predict(values), timeout=60)
            got = list(response.outputs["y"].float_val)
            if got != [0.5 * v + 2 for v in values]:
                problems.append(f"worker {worker} request {i}: sent {values}, got {got}")
            if [d.size for d in response.outputs["y"].tensor_shape.dim] != [rows]:
                problems.append(f"worker {worker} request {i}: shape {response.outputs['y']}")
        return problems

    with futures.ThreadPoolExecutor(32) as pool:
        problems = [p for result in pool.map(caller, range(32)) for p in result]
    assert problems == []


def test_concurrent_regress_through_batcher(stub):
    def caller(worker: int) -> list[float]:
        request = regression_pb2.RegressionRequest()
        request.model_spec.name = "half_plus_two"
        request.model_spec.signature_name = "regress_x_to_y"
        example = request.input.example_list.examples.add()
        example.features.feature["x"].float_list.value.append(float(worker))
        return [r.value for r in stub.Regress(request, timeout=60).result.regressions]

    with futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(caller, range(16)))
    assert results == [[0.5 * w + 2] for w in range(16)]


def test_request_larger_than_max_batch_size(stub):
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(_predict([1.0] * (MAX_BATCH + 1)), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == (
        f"Task size {MAX_BATCH + 1} is larger than maximum input batch size {MAX_BATCH}"
    )


def test_scalar_input_is_rejected_when_batching(stub):
    # half_plus_three's serving_default takes a scalar x: fine unbatched, not batchable.
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_three"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(1.0, dtype=tf.float32))
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "Batching Run() input tensors must have at least one dimension"


def test_server_still_serves_after_batching_errors(stub):
    response = stub.Predict(_predict([4.0]), timeout=30)
    assert list(response.outputs["y"].float_val) == [4.0]


# ---------------------------------------------------------------------- in-process scheduler


@pytest.fixture(scope="module")
def servable(hp2_path):
    return Servable("half_plus_two", 123, str(hp2_path / "00000123"), ["serve"])


def _run(scheduler, servable, values, deadline=None):
    feeds = {"x:0": np.asarray(values, np.float32)}
    return scheduler.run(servable, feeds, ["y:0"], deadline)[0]


def _options(**overrides) -> BatchingOptions:
    params = config_protos.BatchingParameters()
    for name, value in overrides.items():
        if name == "allowed_batch_sizes":
            params.allowed_batch_sizes.extend(value)
        elif name == "pad_variable_length_inputs":
            params.pad_variable_length_inputs = value
        else:
            getattr(params, name).value = value
    return BatchingOptions.from_proto(params)


def test_defaults_match_tf_batch_scheduler():
    options = BatchingOptions.from_proto(config_protos.BatchingParameters())
    assert (options.max_batch_size, options.batch_timeout_micros, options.max_enqueued_batches) == (
        1000,
        0,
        10,
    )
    assert options.thread_pool_name == "model_server_batch_threads"


def test_allowed_batch_sizes_must_end_at_max_batch_size():
    with pytest.raises(ValueError, match="allowed_batch_sizes"):
        _options(max_batch_size=8, allowed_batch_sizes=[2, 4])


def test_tasks_share_one_batch_and_padding_is_dropped(servable):
    metrics = Metrics()
    scheduler = BatchScheduler(
        _options(
            max_batch_size=8,
            batch_timeout_micros=200_000,
            num_batch_threads=1,
            allowed_batch_sizes=[4, 8],
        ),
        metrics,
    )
    try:
        results = {}

        def call(i):
            results[i] = _run(scheduler, servable, [float(i)] * (i + 1))

        threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]  # 1+2+3 = 6 rows
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for i in range(3):
            np.testing.assert_array_equal(results[i], np.full(i + 1, 0.5 * i + 2, np.float32))
        # One run for all three callers (padded from 6 to 8 rows, padding not returned).
        assert metrics.value(WRAPPED_RUN_COUNT) == 1
    finally:
        scheduler.stop()


def test_queue_full_is_unavailable(servable):
    scheduler = BatchScheduler(
        _options(
            max_batch_size=2, batch_timeout_micros=1_000_000, max_enqueued_batches=1, num_batch_threads=1
        )
    )
    try:
        first = threading.Thread(target=_run, args=(scheduler, servable, [1.0]))
        first.start()
        time.sleep(0.1)  # the first task now waits in the only open batch
        with pytest.raises(ServingError) as info:
            _run(scheduler, servable, [1.0, 2.0])  # needs a second batch
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert info.value.message == ("The batch scheduling queue to which this task was submitted is full")
        first.join(30)
    finally:
        scheduler.stop()


def test_large_batch_splitting(servable):
    metrics = Metrics()
    scheduler = BatchScheduler(
        _options(
            max_batch_size=10,
            enable_large_batch_splitting=True,
            max_execution_batch_size=3,
            num_batch_threads=2,
        ),
        metrics,
    )
    try:
        values = np.arange(10, dtype=np.float32)
        np.testing.assert_array_equal(_run(scheduler, servable, values), values * 0.5 + 2)
        assert metrics.value(WRAPPED_RUN_COUNT) == 4  # 3 + 3 + 3 + 1 rows
    finally:
        scheduler.stop()


def test_mismatched_zeroth_dimensions(servable):
    scheduler = BatchScheduler(_options(num_batch_threads=1))
    try:
        feeds = {"x:0": np.zeros(2, np.float32), "y:0": np.zeros(3, np.float32)}
        with pytest.raises(ServingError) as info:
            scheduler.run(servable, feeds, ["y:0"])
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.message == ("Batching Run() input tensors must have equal 0th-dimension size")
    finally:
        scheduler.stop()


def test_deadline_while_queued(servable):
    scheduler = BatchScheduler(
        _options(max_batch_size=4, batch_timeout_micros=2_000_000, num_batch_threads=1)
    )
    try:
        start = time.monotonic()
        with pytest.raises(ServingError) as info:
            _run(scheduler, servable, [1.0], deadline=time.monotonic() + 0.2)
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - start < 1.5
    finally:
        scheduler.stop()


def test_different_dtypes_do_not_share_a_batch(servable):
    # A string request must fail alone, not take float callers' rows down with it.
    scheduler = BatchScheduler(_options(max_batch_size=8, batch_timeout_micros=100_000, num_batch_threads=1))
    try:
        outcome = {}

        def good():
            outcome["good"] = _run(scheduler, servable, [2.0])

        def bad():
            try:
                scheduler.run(servable, {"x:0": np.array([b"a"], dtype=object)}, ["y:0"])
            except ServingError as e:
                outcome["bad"] = e

        threads = [threading.Thread(target=good), threading.Thread(target=bad)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        np.testing.assert_array_equal(outcome["good"], [3.0])
        assert outcome["bad"].message == "Expects arg[0] to be float but string is provided"
    finally:
        scheduler.stop()


def test_idle_fast_path_waits_for_as_many_rows_as_the_last_batch(servable):
    """A lone request after a lone one runs at once; after a batch of 4 the next batch waits for 4 rows."""
    params = config_protos.BatchingParameters()
    params.max_batch_size.value = 8
    params.batch_timeout_micros.value = 400_000
    params.num_batch_threads.value = 1
    metrics = Metrics()
    scheduler = BatchScheduler(BatchingOptions.from_proto(params, idle_fast_path=True), metrics)
    _run(scheduler, servable, [0.0])  # builds the session callable, off the clock
    try:
        started = time.monotonic()
        _run(scheduler, servable, [1.0])
        assert time.monotonic() - started < 0.3  # a batch of 1 expected: no wait
        _run(scheduler, servable, [1.0, 2.0, 3.0, 4.0])  # the queue now expects 4 rows
        runs_before = metrics.value(WRAPPED_RUN_COUNT)
        results: dict[int, np.ndarray] = {}
        started = time.monotonic()

        def call(i: int) -> None:
            results[i] = _run(scheduler, servable, [float(i)])

        threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
            time.sleep(0.02)  # they trickle in, as callers coming back do
        for thread in threads:
            thread.join(30)
        elapsed = time.monotonic() - started
        # One run for the four callers (the first did not run alone), well before the timeout.
        assert metrics.value(WRAPPED_RUN_COUNT) - runs_before == 1
        assert elapsed < 0.35
        assert {i: r.tolist() for i, r in results.items()} == {i: [0.5 * i + 2] for i in range(4)}
        started = time.monotonic()
        _run(scheduler, servable, [5.0])  # expects 4 again, but only one comes: waits for the timeout
        assert time.monotonic() - started >= 0.35
        started = time.monotonic()
        _run(scheduler, servable, [6.0])  # load fell to one caller: runs at once again
        assert time.monotonic() - started < 0.3
    finally:
        scheduler.stop()
