"""Server-side dynamic batching, as TF Serving's `--enable_batching` does it.

Concurrent session runs with the same (servable, feed names, fetch names) are
merged along the 0-th dimension, run once, and the outputs are split back so
every caller gets exactly the rows an unbatched run would give
(TFS_CONTRACT.md §8; TF Serving's batching_session.cc and TF's shared batch
scheduler).

Design, for throughput at high concurrency:
* One `BatchScheduler` (one pool of `num_batch_threads` threads) serves every
  model and version, with one queue per batching key, visited round-robin.
* A queue is a list of batches; only the newest is open. A batch is ready when
  it is full, no longer the newest, or `batch_timeout_micros` after its first
  task arrived (with timeout 0: as soon as a thread is free, so batches grow
  exactly while all threads are busy).
* Threads wait on one condition variable (no polling); each caller waits on its
  own lock, released by the thread that ran its batch.
* Inputs are merged with one `np.concatenate` per input; outputs are split as
  views.

Tasks with different dtypes or inner shapes are kept in different queues
(unless `pad_variable_length_inputs`), so one malformed request never fails
another caller's rows.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import itertools
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np

from serving.errors import ServingError, invalid_argument, unavailable

# TF's batch-scheduler defaults, used for fields the parameters file leaves unset.
DEFAULT_MAX_BATCH_SIZE = 1000
DEFAULT_BATCH_TIMEOUT_MICROS = 0
DEFAULT_MAX_ENQUEUED_BATCHES = 10
DEFAULT_THREAD_POOL_NAME = "model_server_batch_threads"


def _wrapped(proto: Any, field: str, default: Any) -> Any:
    """Reads a `google.protobuf` wrapper field (`name { value: X }`), or `default` if unset."""
    if proto is None:
        return default
    try:
        if not proto.HasField(field):
            return default
    except ValueError:
        # Not a message field in this descriptor: a plain scalar.
        return getattr(proto, field, default)
    return getattr(proto, field).value


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """Resolved batching parameters.

    Attributes:
      max_batch_size: largest request (rows) accepted; also the batch size
        unless large-batch splitting is on.
      batch_timeout_micros: longest wait for a partial batch to fill.
      max_enqueued_batches: per-queue bound; beyond it requests get UNAVAILABLE.
      num_batch_threads: batches run in parallel.
      thread_pool_name: label of the batching metrics.
      allowed_batch_sizes: if set, batches are padded up to the next of these.
      pad_variable_length_inputs: pad inner dimensions to the largest in the batch.
      enable_large_batch_splitting: split requests across batches instead of
        waiting for a fresh batch.
      max_execution_batch_size: batch size used when splitting is on.
    """

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batch_timeout_micros: int = DEFAULT_BATCH_TIMEOUT_MICROS
    max_enqueued_batches: int = DEFAULT_MAX_ENQUEUED_BATCHES
    num_batch_threads: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    thread_pool_name: str = DEFAULT_THREAD_POOL_NAME
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int = DEFAULT_MAX_BATCH_SIZE

    def __post_init__(self) -> None:
        for name in (
            "max_batch_size",
            "max_enqueued_batches",
            "num_batch_threads",
            "max_execution_batch_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"batching parameter {name} must be >= 1, got {getattr(self, name)}")
        if self.batch_timeout_micros < 0:
            raise ValueError(
                f"batching parameter batch_timeout_micros must be >= 0, got {self.batch_timeout_micros}"
            )
        sizes = self.allowed_batch_sizes
        if sizes:
            if any(b <= a for a, b in itertools.pairwise(sizes)) or sizes[0] < 1:
                raise ValueError(
                    f"allowed_batch_sizes must be positive and strictly increasing, got {list(sizes)}"
                )
            if sizes[-1] != self.execution_batch_size:
                raise ValueError(
                    f"the last entry of allowed_batch_sizes ({sizes[-1]}) must equal "
                    f"{'max_execution_batch_size' if self.enable_large_batch_splitting else 'max_batch_size'}"
                    f" ({self.execution_batch_size})"
                )

    @property
    def execution_batch_size(self) -> int:
        """Rows per executed batch."""
        if self.enable_large_batch_splitting:
            return self.max_execution_batch_size
        return self.max_batch_size

    @classmethod
    def from_proto(cls, params: Any | None) -> BatchingOptions:
        """Builds options from a `BatchingParameters` message (None → TF's defaults).

        Raises:
          ValueError: the parameters break TF's rules (e.g. allowed_batch_sizes).
        """
        max_batch = int(_wrapped(params, "max_batch_size", DEFAULT_MAX_BATCH_SIZE))
        splitting = bool(_wrapped(params, "enable_large_batch_splitting", False))
        return cls(
            max_batch_size=max_batch,
            batch_timeout_micros=int(_wrapped(params, "batch_timeout_micros", DEFAULT_BATCH_TIMEOUT_MICROS)),
            max_enqueued_batches=int(_wrapped(params, "max_enqueued_batches", DEFAULT_MAX_ENQUEUED_BATCHES)),
            num_batch_threads=int(_wrapped(params, "num_batch_threads", os.cpu_count() or 1)),
            thread_pool_name=str(
                _wrapped(params, "thread_pool_name", DEFAULT_THREAD_POOL_NAME) or DEFAULT_THREAD_POOL_NAME
            ),
            allowed_batch_sizes=tuple(
                int(s) for s in (getattr(params, "allowed_batch_sizes", ()) if params else ())
            ),
            pad_variable_length_inputs=bool(_wrapped(params, "pad_variable_length_inputs", False)),
            enable_large_batch_splitting=splitting,
            max_execution_batch_size=int(_wrapped(params, "max_execution_batch_size", max_batch)),
        )


class _Task:
    """One caller's run: its inputs, where its outputs go, and the lock it waits on."""

    __slots__ = ("abandoned", "done", "enqueued", "error", "feeds", "parts", "pending", "size")

    def __init__(self, feeds: dict[str, np.ndarray], size: int):
        self.feeds = feeds
        self.size = size
        self.done = threading.Lock()
        self.done.acquire()  # released by the batch thread when every piece finished
        self.pending = 0  # pieces not yet run (guarded by the scheduler lock)
        self.parts: list[tuple[int, list[np.ndarray]]] = []  # (row offset, outputs)
        self.error: ServingError | None = None
        self.abandoned = False  # the caller gave up (deadline); skip if not started
        self.enqueued = time.perf_counter()


class _Piece:
    """Rows [start, start+size) of a task, placed in one batch."""

    __slots__ = ("size", "start", "task")

    def __init__(self, task: _Task, start: int, size: int):
        self.task = task
        self.start = start
        self.size = size

    def feeds(self) -> dict[str, np.ndarray]:
        if self.start == 0 and self.size == self.task.size:
            return self.task.feeds
        end = self.start + self.size
        return {k: v[self.start : end] for k, v in self.task.feeds.items()}


class _Batch:
    __slots__ = ("closed", "created", "pieces", "size")

    def __init__(self) -> None:
        self.pieces: list[_Piece] = []
        self.size = 0
        self.created = time.monotonic()
        self.closed = False


class _Queue:
    __slots__ = ("batches", "fetches", "key", "servable")

    def __init__(self, key: tuple, servable: Any, fetches: tuple[str, ...]):
        self.key = key
        self.servable = servable
        self.fetches = fetches
        self.batches: collections.deque[_Batch] = collections.deque()


def batch_size_of(feeds: dict[str, np.ndarray]) -> int:
    """The common 0-th dimension of a run's inputs (TF's ComputeTensorBatchSize).

    Raises:
      ServingError: INVALID_ARGUMENT when an input is a scalar or 0-th dims differ.
    """
    if not feeds:
        raise invalid_argument("Batching Run() must have at least one input tensor")
    size: int | None = None
    for array in feeds.values():
        if array.ndim == 0:
            raise invalid_argument("Batching Run() input tensors must have at least one dimension")
        if size is None:
            size = array.shape[0]
        elif array.shape[0] != size:
            raise invalid_argument("Batching Run() input tensors must have equal 0th-dimension size")
    assert size is not None  # feeds is not empty
    return int(size)


class BatchScheduler:
    """Merges concurrent session runs into batches, shared by every model.

    Args:
      options: resolved `BatchingOptions`.
      metrics: optional `Metrics` (queuing latency, wrapped run count).
    """

    def __init__(self, options: BatchingOptions, metrics: Any = None):
        self.options = options
        self.metrics = metrics
        self._cv = threading.Condition(threading.Lock())
        self._queues: dict[tuple, _Queue] = {}
        self._order: list[tuple] = []  # round-robin order of queue keys
        self._next = 0
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{options.thread_pool_name}-{i}", daemon=True)
            for i in range(options.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------------ callers

    def run(
        self,
        servable: Any,
        feeds: dict[str, np.ndarray],
        fetches: Sequence[str],
        deadline: float | None = None,
    ) -> list[np.ndarray]:
        """Runs `servable.run(feeds, fetches)` as part of a batch; blocks for the result.

        Args:
          servable: the loaded `Servable`.
          feeds: tensor name → array; every array needs the same 0-th dimension.
          fetches: output tensor names.
          deadline: absolute `time.monotonic()` deadline, or None.

        Returns:
          This caller's rows of every fetched tensor, in `fetches` order.

        Raises:
          ServingError: INVALID_ARGUMENT (no 0-th dim, mismatched 0-th dims, more
            rows than max_batch_size), UNAVAILABLE (queue full), DEADLINE_EXCEEDED,
            or the run's own error.
        """
        size = batch_size_of(feeds)
        opts = self.options
        if size > opts.max_batch_size:
            raise invalid_argument(
                f"Task size {size} is larger than maximum input batch size {opts.max_batch_size}"
            )
        fetches = tuple(fetches)
        if size == 0:
            return servable.run(feeds, fetches)  # nothing to merge
        key = self._key(servable, feeds, fetches)
        task = _Task(feeds, size)
        self._enqueue(key, servable, fetches, task)
        if deadline is None:
            task.done.acquire()
        elif not task.done.acquire(timeout=max(0.0, deadline - time.monotonic())):
            task.abandoned = True
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        if task.error is not None:
            raise task.error
        if len(task.parts) == 1:
            return task.parts[0][1]
        task.parts.sort(key=lambda part: part[0])
        return [np.concatenate([outputs[i] for _, outputs in task.parts]) for i in range(len(fetches))]

    def _key(self, servable: Any, feeds: dict[str, np.ndarray], fetches: tuple[str, ...]) -> tuple:
        pad = self.options.pad_variable_length_inputs
        signature = tuple(
            (name, array.dtype.str, array.ndim if pad else array.shape[1:])
            for name, array in sorted(feeds.items())
        )
        return (id(servable), signature, fetches)

    def _enqueue(self, key: tuple, servable: Any, fetches: tuple[str, ...], task: _Task) -> None:
        opts = self.options
        limit = opts.execution_batch_size
        with self._cv:
            if self._stopping:
                raise unavailable("The batch scheduler is shutting down")
            queue = self._queues.get(key)
            if queue is None:
                queue = _Queue(key, servable, fetches)
                self._queues[key] = queue
                self._order.append(key)
            batches = queue.batches
            current = batches[-1] if batches and not batches[-1].closed else None
            room = limit - current.size if current is not None else 0
            # Plan where the rows go before touching the queue, so a full queue
            # rejects the whole task.
            if task.size <= room:
                plan = [(current, task.size)]
                new_batches = 0
            elif opts.enable_large_batch_splitting:
                plan = [(current, room)] if room > 0 else []
                rest = task.size - max(room, 0)
                new_batches = -(-rest // limit)
                plan += [(None, min(limit, rest - i * limit)) for i in range(new_batches)]
            else:
                plan = [(None, task.size)]
                new_batches = 1
            open_batches = len(batches)
            if new_batches and open_batches + new_batches > opts.max_enqueued_batches:
                raise unavailable("The batch scheduling queue to which this task was submitted is full")
            start = 0
            for batch, rows in plan:
                if batch is None:
                    if batches and not batches[-1].closed:
                        batches[-1].closed = True
                    batch = _Batch()
                    batches.append(batch)
                batch.pieces.append(_Piece(task, start, rows))
                batch.size += rows
                if batch.size >= limit:
                    batch.closed = True
                start += rows
            task.pending = len(plan)
            self._cv.notify()

    # ------------------------------------------------------------------ batch threads

    def _ready_batch(self) -> tuple[_Queue | None, _Batch | None, float | None]:
        """Pops the next runnable batch (round-robin over queues); else the time to wait."""
        now = time.monotonic()
        timeout_s = self.options.batch_timeout_micros / 1e6
        wait: float | None = None
        count = len(self._order)
        for i in range(count):
            index = (self._next + i) % count
            queue = self._queues[self._order[index]]
            if not queue.batches:
                continue
            head = queue.batches[0]
            due = head.created + timeout_s
            if head.closed or len(queue.batches) > 1 or due <= now or self._stopping:
                queue.batches.popleft()
                if not queue.batches:
                    # Drop idle queues so unloaded servables are not kept alive.
                    del self._queues[queue.key]
                    self._order.pop(index)
                    self._next = index % max(len(self._order), 1)
                else:
                    self._next = (index + 1) % count
                return queue, head, None
            wait = due - now if wait is None else min(wait, due - now)
        return None, None, wait

    def _work(self) -> None:
        while True:
            with self._cv:
                while True:
                    queue, batch, wait = self._ready_batch()
                    if queue is not None and batch is not None:
                        break
                    if self._stopping:
                        return
                    self._cv.wait(wait)
            self._execute(queue, batch)

    def _execute(self, queue: _Queue, batch: _Batch) -> None:
        pieces = [p for p in batch.pieces if not p.task.abandoned]
        if not pieces:
            return
        opts = self.options
        total = sum(p.size for p in pieces)
        padded = total
        if opts.allowed_batch_sizes:
            index = bisect.bisect_left(opts.allowed_batch_sizes, total)
            padded = opts.allowed_batch_sizes[min(index, len(opts.allowed_batch_sizes) - 1)]
        try:
            feeds = self._merge(pieces, padded - total)
            if self.metrics is not None:
                now = time.perf_counter()
                for piece in pieces:
                    self.metrics.record_batch_queuing(opts.thread_pool_name, now - piece.task.enqueued)
            outputs = queue.servable.run(feeds, queue.fetches)
            if self.metrics is not None:
                self.metrics.record_wrapped_run()
            for output in outputs:
                if output.ndim == 0:
                    raise ServingError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        "Batched output tensor has 0 dimensions",
                    )
                if output.shape[0] != padded:
                    raise ServingError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        "Batched output tensor's 0th dimension does not equal the sum of the "
                        "0th dimension sizes of the input tensors",
                    )
        except ServingError as e:
            self._finish(pieces, error=e)
            return
        except Exception as e:
            self._finish(pieces, error=ServingError(grpc.StatusCode.INTERNAL, str(e)))
            return
        offset = 0
        results = []
        for piece in pieces:
            end = offset + piece.size
            results.append([output[offset:end] for output in outputs])
            offset = end
        self._finish(pieces, results=results)

    def _merge(self, pieces: list[_Piece], padding: int) -> dict[str, np.ndarray]:
        """Concatenates the pieces' inputs; pads rows (copies of row 0) up to an allowed size."""
        if len(pieces) == 1 and padding == 0:
            return pieces[0].feeds()
        parts = [p.feeds() for p in pieces]
        merged = {}
        for name in parts[0]:
            arrays = [part[name] for part in parts]
            if self.options.pad_variable_length_inputs:
                arrays = _pad_inner_dims(arrays)
            if padding:
                first = arrays[0][:1]
                arrays.append(np.repeat(first, padding, axis=0))
            merged[name] = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
        return merged

    def _finish(
        self,
        pieces: list[_Piece],
        results: list[list[np.ndarray]] | None = None,
        error: ServingError | None = None,
    ) -> None:
        with self._cv:
            for i, piece in enumerate(pieces):
                task = piece.task
                if error is not None:
                    task.error = error
                elif results is not None:
                    task.parts.append((piece.start, results[i]))
                task.pending -= 1
                if task.pending == 0:
                    task.done.release()

    def stop(self) -> None:
        """Runs what is queued, then stops the batch threads."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)


def _pad_inner_dims(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Pads dims 1.. of each array to the largest in the batch with the array's first element."""
    target = np.max([a.shape for a in arrays], axis=0)
    out = []
    for array in arrays:
        if tuple(array.shape[1:]) == tuple(target[1:]):
            out.append(array)
            continue
        fill = array.flat[0] if array.size else (b"" if array.dtype == object else 0)
        padded = np.full((array.shape[0], *tuple(int(t) for t in target[1:])), fill, dtype=array.dtype)
        padded[tuple(slice(0, s) for s in array.shape)] = array
        out.append(padded)
    return out
