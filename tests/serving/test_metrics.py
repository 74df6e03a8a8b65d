"""serving.metrics: TF Serving's metric names and Prometheus page layout."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from serving.metrics import REQUEST_COUNT, Metrics


def _lines(metrics: Metrics) -> list[str]:
    return metrics.render().decode().splitlines()


def test_request_count_has_tf_serving_name_and_no_total_suffix():
    metrics = Metrics()
    metrics.record_request("half_plus_two", "Predict", "GRPC", "OK", 0.001)
    metrics.record_request("half_plus_two", "Predict", "GRPC", "OK", 0.002)
    metrics.record_request("half_plus_two", "predict", "REST", "NOT_FOUND", 0.002)
    lines = _lines(metrics)
    assert "# TYPE :tensorflow:serving:request_count counter" in lines
    assert ':tensorflow:serving:request_count{model_name="half_plus_two",status="OK"} 2' in lines
    assert ':tensorflow:serving:request_count{model_name="half_plus_two",status="NOT_FOUND"} 1' in lines
    assert not any("request_count_total" in line for line in lines)
    assert not any(line.startswith("# HELP") for line in lines)
    assert metrics.value(REQUEST_COUNT, "half_plus_two", "OK") == 2


def test_latency_histogram_layout():
    metrics = Metrics()
    metrics.record_request("m", "Predict", "GRPC", "OK", 25e-6)  # 25 µs
    lines = _lines(metrics)
    prefix = ':tensorflow:serving:request_latency_bucket{model_name="m",API="Predict",entrypoint="GRPC",'
    buckets = [line for line in lines if line.startswith(prefix)]
    # TF's Exponential(10, 1.8, 33) limits plus the final +Inf bucket.
    assert len(buckets) == 34
    assert buckets[0] == prefix + 'le="10"} 0'
    assert buckets[1] == prefix + 'le="18"} 0'
    assert buckets[2] == prefix + 'le="32.4"} 1'
    assert buckets[-1] == prefix + 'le="+Inf"} 1'
    assert (
        ':tensorflow:serving:request_latency_sum{model_name="m",API="Predict",entrypoint="GRPC"} 25' in lines
    )
    assert (
        ':tensorflow:serving:request_latency_count{model_name="m",API="Predict",entrypoint="GRPC"} 1' in lines
    )


def test_every_metric_has_a_type_line_and_label_values_are_escaped():
    metrics = Metrics()
    metrics.record_warmup('/models/a"b\\c/1', "OK", 0.5, 3)
    metrics.record_example_count("m", 4)
    text = metrics.render().decode()
    for name in (
        ":tensorflow:serving:model_warmup_latency",
        ":tensorflow:serving:request_example_counts",
        ":tensorflow:serving:request_example_count_total",
        ":tensorflow:serving:runtime_latency",
        ":tensorflow:serving:batching_session:queuing_latency",
        ":tensorflow:cc:saved_model:load_attempt_count",
    ):
        assert f"# TYPE {name} " in text
    assert 'model_path="/models/a\\"b\\\\c/1"' in text
    assert ':tensorflow:serving:request_example_count_total{model="m"} 4' in text


def test_collector_works_with_prometheus_client_registry():
    metrics = Metrics()
    metrics.record_request("m", "Predict", "GRPC", "OK", 0.001)
    registry = CollectorRegistry()
    registry.register(metrics.collector())
    assert (
        registry.get_sample_value(":tensorflow:serving:request_count", {"model_name": "m", "status": "OK"})
        == 1.0
    )


def test_counts_from_many_threads_add_up_without_a_lock():
    """Each thread records into its own shard; the page sums them, losing no update."""
    import threading

    metrics = Metrics()
    barrier = threading.Barrier(8)

    def record(worker: int) -> None:
        barrier.wait()
        for i in range(2_000):
            metrics.record_request("m", "Predict", "GRPC", "OK", 0.001 * (i % 3))
            metrics.record_batch_queuing(f"pool{worker % 2}", 0.0002)

    threads = [threading.Thread(target=record, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    lines = _lines(metrics)
    assert ':tensorflow:serving:request_count{model_name="m",status="OK"} 16000' in lines
    assert metrics.value(REQUEST_COUNT, "m", "OK") == 16_000
    count_line = (
        ':tensorflow:serving:request_latency_count{model_name="m",API="Predict",entrypoint="GRPC"} 16000'
    )
    assert count_line in lines
    for pool in ("pool0", "pool1"):
        prefix = f':tensorflow:serving:batching_session:queuing_latency_count{{thread_pool_name="{pool}"}}'
        assert f"{prefix} 8000" in lines
