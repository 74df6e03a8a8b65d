"""TF Serving's monitoring metrics, exported in TF Serving's Prometheus layout.

TF Serving keeps metrics in TensorFlow's monitoring library under names such as
`/tensorflow/serving/request_count` and prints them with every character outside
`[A-Za-z0-9_]` turned into `:` (TFS_CONTRACT.md §7; util/prometheus_exporter.cc):

    # TYPE :tensorflow:serving:request_count counter
    :tensorflow:serving:request_count{model_name="half_plus_two",status="OK"} 3
    # TYPE :tensorflow:serving:request_latency histogram
    :tensorflow:serving:request_latency_bucket{model_name="m",API="Predict",entrypoint="GRPC",le="10"} 0
    ...
    :tensorflow:serving:request_latency_sum{model_name="m",API="Predict",entrypoint="GRPC"} 1234
    :tensorflow:serving:request_latency_count{model_name="m",API="Predict",entrypoint="GRPC"} 3

`Metrics` stores the values; `TfServingCollector` exposes them as
prometheus-client `Metric` families (so they can also be registered on any
`CollectorRegistry`), and `Metrics.render()` writes the page the way TF Serving
does: `# TYPE` lines only, labels in declaration order, counters without a
`_total` suffix, histogram buckets with TF's bucket limits and a final `+Inf`.
"""

from __future__ import annotations

import bisect
import dataclasses
import sys
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

_MICROS = 1e6


def exponential_buckets(scale: float, growth: float, count: int) -> tuple[float, ...]:
    """TF monitoring's `Buckets::Exponential`: `count` limits from `scale`, plus DBL_MAX."""
    limits = [scale * growth**i for i in range(count)]
    return (*tuple(limits), sys.float_info.max)


# Scale 10 µs, growth 1.8, 33 buckets (~20 minutes), as TF Serving's latency samplers.
LATENCY_BUCKETS = exponential_buckets(10, 1.8, 33)
# Examples per request: 1, 2, 4, ... 16384.
EXAMPLE_COUNT_BUCKETS = exponential_buckets(1, 2, 15)
# Batch queuing: scale 100 µs, growth 1.2, 52 buckets (~1 s).
QUEUING_BUCKETS = exponential_buckets(100, 1.2, 52)


@dataclasses.dataclass(frozen=True)
class _Spec:
    tf_name: str  # TensorFlow monitoring name, e.g. /tensorflow/serving/request_count
    kind: str  # "counter" or "histogram"
    labels: tuple[str, ...]
    doc: str
    buckets: tuple[float, ...] = ()

    @property
    def name(self) -> str:
        """The Prometheus name TF Serving prints."""
        out = "".join(c if (c.isascii() and (c.isalnum() or c == "_")) else ":" for c in self.tf_name)
        return "_" + out if out[:1].isdigit() else out


REQUEST_COUNT = _Spec(
    "/tensorflow/serving/request_count",
    "counter",
    ("model_name", "status"),
    "The total number of requests.",
)
REQUEST_LATENCY = _Spec(
    "/tensorflow/serving/request_latency",
    "histogram",
    ("model_name", "API", "entrypoint"),
    "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
    LATENCY_BUCKETS,
)
RUNTIME_LATENCY = _Spec(
    "/tensorflow/serving/runtime_latency",
    "histogram",
    ("model_name", "API", "runtime"),
    "Distribution of wall time (in microseconds) for Tensorflow runtime.",
    LATENCY_BUCKETS,
)
EXAMPLE_COUNTS = _Spec(
    "/tensorflow/serving/request_example_counts",
    "histogram",
    ("model",),
    "The number of tensorflow.Examples per request.",
    EXAMPLE_COUNT_BUCKETS,
)
EXAMPLE_COUNT_TOTAL = _Spec(
    "/tensorflow/serving/request_example_count_total",
    "counter",
    ("model",),
    "The total number of tensorflow.Examples.",
)
WARMUP_LATENCY = _Spec(
    "/tensorflow/serving/model_warmup_latency",
    "histogram",
    ("model_path", "status"),
    "Distribution of wall time (in microseconds) for warming up the model.",
    LATENCY_BUCKETS,
)
WARMUP_RECORDS = _Spec(
    "/tensorflow/serving/model_warmup_records_read",
    "counter",
    ("model_path", "status"),
    "Number of warmup records read.",
)
QUEUING_LATENCY = _Spec(
    "/tensorflow/serving/batching_session/queuing_latency",
    "histogram",
    ("thread_pool_name",),
    "Distribution of wall time spent (in microseconds) in queuing",
    QUEUING_BUCKETS,
)
WRAPPED_RUN_COUNT = _Spec(
    "/tensorflow/serving/batching_session/wrapped_run_count",
    "counter",
    (),
    "Total count of run calls on the wrapped session",
)
LOAD_ATTEMPT_COUNT = _Spec(
    "/tensorflow/cc/saved_model/load_attempt_count",
    "counter",
    ("model_path", "status"),
    "The number of times a SavedModel was successfully loaded.",
)
LOAD_LATENCY = _Spec(
    "/tensorflow/cc/saved_model/load_latency",
    "counter",
    ("model_path",),
    "Latency in microseconds for SavedModels that were successfully loaded.",
)

# textserve's own (not in TF Serving): the request log's records (serving/request_log.py).
REQUEST_LOG_RECORDS = _Spec(
    "/textserve/request_log/records",
    "counter",
    ("outcome",),
    "Sampled request log records: written, or dropped (queue full, encode or write error).",
)

ALL_SPECS = (
    REQUEST_COUNT,
    REQUEST_LATENCY,
    RUNTIME_LATENCY,
    EXAMPLE_COUNTS,
    EXAMPLE_COUNT_TOTAL,
    WARMUP_LATENCY,
    WARMUP_RECORDS,
    QUEUING_LATENCY,
    WRAPPED_RUN_COUNT,
    LOAD_ATTEMPT_COUNT,
    LOAD_LATENCY,
    REQUEST_LOG_RECORDS,
)


class _Histogram:
    __slots__ = ("counts", "total")

    def __init__(self, size: int):
        self.counts = [0] * size
        self.total = 0.0


class Metrics:
    """Thread-safe store of TF Serving's metrics.

    Front ends call `record_request`; the data plane records runtime latency,
    example counts and batching; the model manager records loads and warmup.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # spec -> {label values tuple -> int (counter) | _Histogram}
        self._values: dict[_Spec, dict[tuple[str, ...], Any]] = {s: {} for s in ALL_SPECS}

    # ------------------------------------------------------------------ recording

    def _add(self, spec: _Spec, labels: tuple[str, ...], amount: int = 1) -> None:
        with self._lock:
            cells = self._values[spec]
            cells[labels] = cells.get(labels, 0) + amount

    def _observe(self, spec: _Spec, labels: tuple[str, ...], value: float) -> None:
        # TF's histogram puts a value in the first bucket whose limit is above it.
        index = bisect.bisect_right(spec.buckets, value)
        index = min(index, len(spec.buckets) - 1)
        with self._lock:
            cells = self._values[spec]
            cell = cells.get(labels)
            if cell is None:
                cell = cells[labels] = _Histogram(len(spec.buckets))
            cell.counts[index] += 1
            cell.total += value

    def record_request(
        self, model_name: str, api: str, entrypoint: str, status: str, latency_s: float
    ) -> None:
        """Counts one request and its latency.

        Args:
          model_name: the requested model.
          api: `Predict`/`Classify`/`Regress`/... for gRPC, `predict`/`classify`/`regress` for REST.
          entrypoint: `GRPC` or `REST`.
          status: the status code name (`OK`, `NOT_FOUND`, ...).
          latency_s: wall time of the request in seconds.
        """
        self._add(REQUEST_COUNT, (model_name, status))
        self._observe(REQUEST_LATENCY, (model_name, api, entrypoint), latency_s * _MICROS)

    def record_runtime(self, model_name: str, api: str, latency_s: float) -> None:
        """Records the time spent in the TF session run (incl. batch queuing)."""
        self._observe(RUNTIME_LATENCY, (model_name, api, "TF1"), latency_s * _MICROS)

    def record_example_count(self, model_name: str, count: int) -> None:
        """Records the number of tf.Examples in one classify/regress request."""
        self._observe(EXAMPLE_COUNTS, (model_name,), float(count))
        self._add(EXAMPLE_COUNT_TOTAL, (model_name,), count)

    def record_warmup(self, model_path: str, status: str, latency_s: float, records: int) -> None:
        """Records one version's warmup (model_path = the version directory)."""
        self._observe(WARMUP_LATENCY, (model_path, status), latency_s * _MICROS)
        self._add(WARMUP_RECORDS, (model_path, status), records)

    def record_model_load(self, model_path: str, status: str, latency_s: float) -> None:
        """Records a SavedModel load attempt (status `success` or `fail`, as TF labels it)."""
        self._add(LOAD_ATTEMPT_COUNT, (model_path, status))
        if status == "success":
            self._add(LOAD_LATENCY, (model_path,), int(latency_s * _MICROS))

    def record_batch_queuing(self, thread_pool_name: str, latency_s: float) -> None:
        """Records how long one task waited in a batching queue."""
        self._observe(QUEUING_LATENCY, (thread_pool_name,), latency_s * _MICROS)

    def record_wrapped_run(self) -> None:
        """Counts one batched session run."""
        self._add(WRAPPED_RUN_COUNT, ())

    def record_request_log(self, outcome: str, count: int = 1) -> None:
        """Counts request log records by outcome (`written`, `dropped_queue_full`, ...)."""
        self._add(REQUEST_LOG_RECORDS, (outcome,), count)

    # ------------------------------------------------------------------ reading

    def value(self, spec: _Spec, *labels: str) -> float:
        """A counter's value, or a histogram's sample count (0 when never recorded)."""
        with self._lock:
            cell = self._values[spec].get(tuple(labels))
        if cell is None:
            return 0
        return sum(cell.counts) if isinstance(cell, _Histogram) else cell

    def _snapshot(self) -> list[tuple[_Spec, list[tuple[tuple[str, ...], Any]]]]:
        with self._lock:
            out = []
            for spec in sorted(ALL_SPECS, key=lambda s: s.tf_name):
                cells = []
                for labels, cell in self._values[spec].items():
                    if isinstance(cell, _Histogram):
                        copy = _Histogram(len(cell.counts))
                        copy.counts = list(cell.counts)
                        copy.total = cell.total
                        cell = copy
                    cells.append((labels, cell))
                out.append((spec, cells))
            return out

    def render(self) -> bytes:
        """The Prometheus text page, laid out as TF Serving's exporter writes it."""
        lines: list[str] = []
        for spec, cells in self._snapshot():
            lines.append(f"# TYPE {spec.name} {spec.kind}")
            for labels, cell in cells:
                pairs = [f'{n}="{_escape(v)}"' for n, v in zip(spec.labels, labels)]
                joined = ",".join(pairs)
                if spec.kind == "counter":
                    lines.append(f"{spec.name}{{{joined}}} {int(cell)}")
                    continue
                prefix = f"{spec.name}_bucket{{{joined}{',' if joined else ''}"
                cumulative = 0
                last = len(spec.buckets) - 1
                for i, count in enumerate(cell.counts):
                    cumulative += count
                    limit = "+Inf" if i == last else _number(spec.buckets[i])
                    lines.append(f'{prefix}le="{limit}"}} {cumulative}')
                lines.append(f"{spec.name}_sum{{{joined}}} {_number(cell.total)}")
                lines.append(f"{spec.name}_count{{{joined}}} {cumulative}")
        return ("\n".join(lines) + "\n").encode("utf-8")

    def collector(self) -> TfServingCollector:
        """A prometheus-client collector over these metrics (for a `CollectorRegistry`)."""
        return TfServingCollector(self)


class TfServingCollector(Collector):
    """Exposes `Metrics` as prometheus-client metric families with TF Serving's names."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for spec, cells in self._metrics._snapshot():
            family = Metric(spec.name, spec.doc, spec.kind)
            for labels, cell in cells:
                named = dict(zip(spec.labels, labels))
                if spec.kind == "counter":
                    family.add_sample(spec.name, named, float(cell))
                    continue
                cumulative = 0
                for i, count in enumerate(cell.counts):
                    cumulative += count
                    le = "+Inf" if i == len(cell.counts) - 1 else _number(spec.buckets[i])
                    family.add_sample(f"{spec.name}_bucket", {**named, "le": le}, cumulative)
                family.add_sample(f"{spec.name}_sum", named, cell.total)
                family.add_sample(f"{spec.name}_count", named, cumulative)
            yield family


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _number(value: float) -> str:
    """Formats like absl::StrCat(double): up to six significant digits."""
    return f"{value:.6g}"
