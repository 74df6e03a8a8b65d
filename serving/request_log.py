"""Sampled request logging to JSON Lines, for drift monitoring (`--request_log_sample_rate`).

    python -m serving ... --request_log_file=/var/log/textserve/requests.jsonl --request_log_sample_rate=0.05

A difference from TF Serving: its ModelConfig has a `logging_config` with a
sampling rate, but open-source TF Serving ships no log collector to write the
records anywhere. Here a sampled Predict / Classify / Regress / MultiInference
call (gRPC or REST; warmup replays are never logged) becomes one line:

    {"time": "2025-06-01T12:00:00.123456Z", "model_name": "bbc_news", "model_version": 3,
     "signature_name": "serving_default", "api": "Predict", "latency_ms": 4.1, "rows": 1,
     "inputs": {"text": {"dtype": "DT_STRING", "fingerprints": ["9f2c…"], "sizes": [812]}},
     "outputs": {"label": ["sport"], "score": [0.97], "class_id": [3], "probabilities": [[…]]}}

* `fingerprints`: per row, the BLAKE2b-128 hex digest of the input's bytes
  (numeric rows: their little-endian bytes), to count duplicates and join with
  labels that arrive later without keeping the text; `sizes`: bytes per row.
* `values`: the inputs themselves (text as strings, `{"b64"}` where it is not
  UTF-8, serialized tf.Examples always as `{"b64"}`), only with
  `--request_log_include_text`.
* `latency_ms`: time in the data plane (batch queue, session run, answer
  assembly), the same for both front ends; it leaves out HTTP/JSON parsing.
* `signature_name`: the signature whose tensors the call ran ("+"-joined for a
  MultiInference over several); output names are that signature's aliases.

Logging stays off the request path: a sampled call only puts references to its
arrays in a bounded queue (`MAX_PENDING_RECORDS` records, `MAX_PENDING_BYTES`
bytes of inputs and outputs); one writer thread turns them into lines and
appends them. A record that does not fit, or cannot be written, is dropped and
counted in `:textserve:request_log:records{outcome="dropped_..."}`, next to
`outcome="written"`, on the Prometheus page.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import logging
import queue
import random
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import orjson
from tensorflow.core.framework import types_pb2

log = logging.getLogger(__name__)

MAX_PENDING_RECORDS = 10_000
MAX_PENDING_BYTES = 64 << 20
# The writer appends what is queued, then flushes, at most this long after a record arrives.
_FLUSH_INTERVAL_S = 0.2
_EXAMPLE_APIS = ("Classify", "Regress", "MultiInference")


@dataclass(frozen=True)
class _Pending:
    """A sampled call, as references: the writer thread does the work."""

    finished_at: float
    servable: Any
    api: str
    feeds: Mapping[str, np.ndarray]
    fetches: Sequence[str]
    outputs: Sequence[np.ndarray]
    latency_s: float
    size: int


class RequestLog:
    """A sampled JSON Lines request log with a bounded queue and one writer thread.

    Args:
      path: the file to append to; "-" writes to standard output.
      sample_rate: the fraction of calls logged, 0 < rate ≤ 1.
      include_text: also log the input values (the text itself).
      metrics: a `serving.metrics.Metrics` counting written and dropped records (None: not counted).
      max_pending_records: records queued at most before new ones are dropped.
      max_pending_bytes: bytes of queued inputs and outputs at most before new records are dropped.
      random_source: returns a float in [0, 1) per call (tests pass their own).

    Raises:
      ValueError: a sample rate outside (0, 1], naming the flag.
      OSError: the file cannot be opened for appending, naming it.
    """

    def __init__(
        self,
        path: str,
        sample_rate: float,
        include_text: bool = False,
        metrics: Any = None,
        max_pending_records: int = MAX_PENDING_RECORDS,
        max_pending_bytes: int = MAX_PENDING_BYTES,
        random_source: Callable[[], float] = random.random,
    ):
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(
                f"--request_log_sample_rate={sample_rate} must be in (0, 1]; 0 turns logging off"
            )
        self.sample_rate = float(sample_rate)
        self.include_text = include_text
        self._metrics = metrics
        self._random = random_source
        self._max_bytes = int(max_pending_bytes)
        self._pending_bytes = 0
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Pending | None] = queue.Queue(maxsize=max(1, int(max_pending_records)))
        self._file: IO[bytes] = sys.stdout.buffer if path == "-" else _open_append(path)
        self._owns_file = path != "-"
        self._write_failed = False
        self._thread = threading.Thread(target=self._write_loop, name="request-log-writer", daemon=True)
        self._thread.start()

    def sampled(self) -> bool:
        """Whether to log the call about to run (decided before it runs, so unsampled calls cost nothing)."""
        return self.sample_rate >= 1.0 or self._random() < self.sample_rate

    def submit(
        self,
        servable: Any,
        api: str,
        feeds: Mapping[str, np.ndarray],
        fetches: Sequence[str],
        outputs: Sequence[np.ndarray],
        latency_s: float,
    ) -> None:
        """Queues one finished call without waiting; drops (and counts) it when the queue is full."""
        size = _approx_bytes(feeds.values()) + _approx_bytes(outputs)
        with self._lock:
            if self._pending_bytes + size > self._max_bytes:
                self._count("dropped_queue_full")
                return
            self._pending_bytes += size
        entry = _Pending(time.time(), servable, api, feeds, fetches, outputs, latency_s, size)
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            with self._lock:
                self._pending_bytes -= size
            self._count("dropped_queue_full")

    def close(self, timeout_s: float = 10.0) -> None:
        """Writes what is queued, then stops the writer and closes the file."""
        try:
            self._queue.put(None, timeout=timeout_s)  # waits only while the writer drains a full queue
        except queue.Full:
            log.warning(
                "request log: the writer did not drain its queue in %.0f s; closing anyway", timeout_s
            )
        self._thread.join(timeout_s)
        if self._owns_file:
            self._file.close()
        else:
            self._file.flush()

    # ------------------------------------------------------------------ writer thread

    def _write_loop(self) -> None:
        while True:
            entry = self._queue.get()
            batch: list[_Pending | None] = [entry]
            deadline = time.monotonic() + _FLUSH_INTERVAL_S
            while entry is not None and time.monotonic() < deadline:
                try:
                    entry = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                batch.append(entry)
            records = [e for e in batch if e is not None]
            self._write(records)
            if len(records) < len(batch):
                return

    def _write(self, records: list[_Pending]) -> None:
        lines = []
        for record in records:
            try:
                lines.append(orjson.dumps(self._record(record)) + b"\n")
            except Exception:  # a bug here must not stop the writer; the record is counted as dropped
                log.exception("request log: could not encode a %s record", record.api)
                self._count("dropped_encode_error")
        try:
            self._file.write(b"".join(lines))
            self._file.flush()
        except OSError as e:
            if not self._write_failed:
                log.error("request log: cannot write (%s); records are dropped and counted", e)
            self._write_failed = True
            self._count("dropped_write_error", len(lines))
        else:
            self._write_failed = False
            self._count("written", len(lines))
        with self._lock:
            self._pending_bytes -= sum(r.size for r in records)

    def _record(self, entry: _Pending) -> dict[str, Any]:
        signature_names, input_aliases, output_aliases = _aliases(entry.servable, entry.feeds, entry.fetches)
        inputs = {}
        rows = 0
        for tensor_name, array in entry.feeds.items():
            info = input_aliases.get(tensor_name)
            alias = info[0] if info else tensor_name
            dtype = info[1] if info else types_pb2.DT_INVALID
            rows = max(rows, int(array.shape[0]) if array.ndim else 1)
            inputs[alias] = self._describe_input(array, dtype, entry.api in _EXAMPLE_APIS)
        outputs = {
            output_aliases.get(name, name): _jsonable(array)
            for name, array in zip(entry.fetches, entry.outputs)
        }
        stamp = datetime.datetime.fromtimestamp(entry.finished_at, datetime.UTC)
        return {
            "time": stamp.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "model_name": entry.servable.name,
            "model_version": int(entry.servable.version),
            "signature_name": "+".join(signature_names),
            "api": entry.api,
            "latency_ms": round(entry.latency_s * 1000.0, 3),
            "rows": rows,
            "inputs": inputs,
            "outputs": outputs,
        }

    def _describe_input(self, array: np.ndarray, dtype: int, examples: bool) -> dict[str, Any]:
        rows = array.reshape(array.shape[0], -1) if array.ndim else array.reshape(1, -1)
        if array.dtype == object:
            blobs = [b"".join(_as_bytes(v) for v in row) for row in rows]
        else:
            blobs = [np.ascontiguousarray(row).astype(row.dtype.newbyteorder("<")).tobytes() for row in rows]
        described: dict[str, Any] = {
            "dtype": types_pb2.DataType.Name(dtype) if dtype else str(array.dtype),
            "shape": list(array.shape),
            "fingerprints": [hashlib.blake2b(blob, digest_size=16).hexdigest() for blob in blobs],
            "sizes": [len(blob) for blob in blobs],
        }
        if self.include_text:
            described["values"] = _jsonable(array, force_b64=examples)
        return described

    def _count(self, outcome: str, amount: int = 1) -> None:
        if self._metrics is not None and amount:
            self._metrics.record_request_log(outcome, amount)


def _open_append(path: str) -> IO[bytes]:
    try:
        return open(path, "ab")
    except OSError as e:
        raise OSError(e.errno, f"cannot open --request_log_file={path} for appending: {e.strerror}") from e


def _aliases(
    servable: Any, feeds: Mapping[str, np.ndarray], fetches: Sequence[str]
) -> tuple[list[str], dict[str, tuple[str, int]], dict[str, str]]:
    """The signatures a run belongs to, and tensor name → alias for its inputs and outputs.

    A run plan carries tensor names; the signatures fed exactly these tensors
    (serving_default first) name them back. Unmatched tensors keep their names.
    """
    wanted_inputs = set(feeds)
    wanted_outputs = set(fetches)
    names: list[str] = []
    inputs: dict[str, tuple[str, int]] = {}
    outputs: dict[str, str] = {}
    signature_defs = getattr(servable, "signature_defs", {}) or {}
    for name in sorted(signature_defs, key=lambda n: (n != "serving_default", n)):
        signature = signature_defs[name]
        if {i.name for i in signature.inputs.values()} != wanted_inputs:
            continue
        by_tensor = {info.name: alias for alias, info in signature.outputs.items()}
        covered = wanted_outputs & set(by_tensor)
        if not covered or not covered - set(outputs):
            continue  # nothing fetched from it, or another signature already named it all
        names.append(name)
        inputs.update({info.name: (alias, info.dtype) for alias, info in signature.inputs.items()})
        outputs.update({t: by_tensor[t] for t in covered if t not in outputs})
        if wanted_outputs <= set(outputs):
            break
    return names, inputs, outputs


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def _approx_bytes(arrays: Any) -> int:
    """Bytes an array set keeps alive: numeric buffers, plus the strings of object arrays."""
    total = 0
    for array in arrays:
        total += array.nbytes
        if array.dtype == object:
            total += sum(len(v) for v in array.flat if isinstance(v, bytes))
    return total


def _jsonable(array: np.ndarray, force_b64: bool = False) -> Any:
    """An array as JSON values: numbers as they are, bytes as text (or `{"b64"}` where not UTF-8)."""
    values = array.tolist()  # NaN and infinities become null (JSON has no token for them)
    return values if array.dtype != object else _strings(values, force_b64)


def _strings(value: Any, force_b64: bool) -> Any:
    if isinstance(value, list):
        return [_strings(v, force_b64) for v in value]
    if isinstance(value, bytes):
        if not force_b64:
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                pass
        return {"b64": base64.b64encode(value).decode("ascii")}
    return value


def open_request_log(options: Any, metrics: Any = None) -> RequestLog | None:
    """The request log the flags ask for, or None when `--request_log_sample_rate` is 0.

    Args:
      options: the `ServerOptions` (`request_log_sample_rate`, `request_log_file`,
        `request_log_include_text`).
      metrics: where written and dropped records are counted.

    Returns:
      A running `RequestLog`, or None.

    Raises:
      ValueError: a rate outside [0, 1], or a rate without `--request_log_file`.
      OSError: the file cannot be opened.
    """
    rate = float(options.request_log_sample_rate)
    if rate == 0.0:
        return None
    if not options.request_log_file:
        raise ValueError(
            f"--request_log_sample_rate={rate} needs --request_log_file=PATH (or - for standard output)"
        )
    return RequestLog(options.request_log_file, rate, bool(options.request_log_include_text), metrics)
