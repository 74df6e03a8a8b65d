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
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import numpy as np

from serving.batching_options import BatchingOptions
from serving.errors import ServingError, invalid_argument, unavailable

__all__ = ["BatchScheduler", "BatchingOptions", "batch_size_of"]


class _Task:
    """One caller's run: its inputs, its deadline, and where its outputs go.

    `notify(task)` is called once, from a batch thread (or from `cancel`), when
    every piece has run or the task failed; the caller then reads `outputs()`.
    """

    __slots__ = (
        "abandoned",
        "deadline",
        "enqueued",
        "error",
        "feeds",
        "fetch_count",
        "notify",
        "parts",
        "pending",
        "queue",
        "size",
    )

    def __init__(
        self,
        feeds: dict[str, np.ndarray],
        size: int,
        fetch_count: int,
        deadline: float | None,
        notify: Callable[[_Task], None],
    ):
        self.feeds = feeds
        self.size = size
        self.fetch_count = fetch_count
        self.deadline = deadline
        self.notify = notify
        self.pending = 0  # pieces not yet run (guarded by the scheduler lock)
        self.parts: list[tuple[int, list[np.ndarray]]] = []  # (row offset, outputs)
        self.error: ServingError | None = None
        self.abandoned = False  # the caller gave up (deadline, cancellation): skip if not started
        self.queue: _Queue | None = None
        self.enqueued = time.perf_counter()

    def outputs(self) -> list[np.ndarray]:
        """This task's rows of every fetched tensor, once notified.

        Raises:
          ServingError: the run's error, or DEADLINE_EXCEEDED when the task
            expired in the queue.
        """
        if self.error is not None:
            raise self.error
        if len(self.parts) == 1:
            return self.parts[0][1]
        self.parts.sort(key=lambda part: part[0])
        return [np.concatenate([outputs[i] for _, outputs in self.parts]) for i in range(self.fetch_count)]


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
    __slots__ = ("batches", "fetches", "key", "running", "servable")

    def __init__(self, key: tuple, servable: Any, fetches: tuple[str, ...]):
        self.key = key
        self.servable = servable
        self.fetches = fetches
        self.batches: collections.deque[_Batch] = collections.deque()
        self.running = 0  # batches of this queue being run now


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

        For callers on threads (warmup, tests); the front ends use `submit`.

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
        done = threading.Event()
        task = self.submit(servable, feeds, fetches, deadline, lambda _task: done.set())
        if task is None:
            return servable.run(feeds, tuple(fetches))  # nothing to merge
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not done.wait(timeout):
            self.cancel(task, ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
            if not done.is_set():  # a piece is running; the caller does not wait for it
                raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        return task.outputs()

    def submit(
        self,
        servable: Any,
        feeds: dict[str, np.ndarray],
        fetches: Sequence[str],
        deadline: float | None,
        notify: Callable[[_Task], None],
    ) -> _Task | None:
        """Queues a run without waiting for it; `notify(task)` fires from a batch thread when done.

        Args:
          servable: the loaded `Servable`.
          feeds: tensor name → array; every array needs the same 0-th dimension.
          fetches: output tensor names.
          deadline: absolute `time.monotonic()` deadline, or None. A task still
            queued when it passes is dropped from its batch (DEADLINE_EXCEEDED).
          notify: called once with the task; then `task.outputs()` answers.

        Returns:
          The queued task (pass it to `cancel` if the caller goes away), or None
          for a request of 0 rows, which has nothing to batch: run it directly.

        Raises:
          ServingError: INVALID_ARGUMENT (no 0-th dim, mismatched 0-th dims, more
            rows than max_batch_size) or UNAVAILABLE (queue full, shutting down).
        """
        size = batch_size_of(feeds)
        opts = self.options
        if size > opts.max_batch_size:
            raise invalid_argument(
                f"Task size {size} is larger than maximum input batch size {opts.max_batch_size}"
            )
        if size == 0:
            return None
        fetches = tuple(fetches)
        task = _Task(feeds, size, len(fetches), deadline, notify)
        self._enqueue(self._key(servable, feeds, fetches), servable, fetches, task)
        return task

    def cancel(self, task: _Task, error: ServingError | None = None) -> None:
        """Removes a task's rows from the batches that have not started (client gone, deadline).

        Pieces already running finish, and their rows are dropped. Unless it
        already finished, the task is notified with `error` (default CANCELLED).
        """
        with self._cv:
            if task.abandoned or task.pending == 0:
                return
            task.abandoned = True
            queue = task.queue
            removed = 0
            if queue is not None:
                for batch in list(queue.batches):
                    kept = [p for p in batch.pieces if p.task is not task]
                    if len(kept) != len(batch.pieces):
                        removed += len(batch.pieces) - len(kept)
                        batch.pieces = kept
                        batch.size = sum(p.size for p in kept)
                        if not kept:
                            queue.batches.remove(batch)
            task.pending -= removed
            if task.pending > 0:
                return  # a running piece notifies when it ends
            task.error = error or ServingError(grpc.StatusCode.CANCELLED, "Request was cancelled")
        task.notify(task)

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
            task.queue = queue
            self._cv.notify()

    # ------------------------------------------------------------------ batch threads

    def _ready_batch(self) -> tuple[_Queue | None, _Batch | None, float | None]:
        """Pops the next runnable batch (round-robin over queues); else the time to wait.

        A batch is runnable when it is full or closed, when a newer one waits
        behind it, when its timeout has passed, or (with the idle fast path)
        when no batch of its queue is running: waiting only pays off while the
        model is busy and requests pile up behind it.
        """
        now = time.monotonic()
        timeout_s = self.options.batch_timeout_micros / 1e6
        fast = self.options.idle_fast_path
        wait: float | None = None
        count = len(self._order)
        for i in range(count):
            index = (self._next + i) % count
            queue = self._queues[self._order[index]]
            if not queue.batches:
                continue
            head = queue.batches[0]
            due = head.created + timeout_s
            if (
                head.closed
                or len(queue.batches) > 1
                or due <= now
                or self._stopping
                or (fast and queue.running == 0)
            ):
                queue.batches.popleft()
                queue.running += 1
                self._next = (index + 1) % count
                return queue, head, None
            wait = due - now if wait is None else min(wait, due - now)
        return None, None, wait

    def _forget_if_idle(self, queue: _Queue) -> None:
        """Drops an empty, idle queue so unloaded servables are not kept alive (lock held)."""
        if queue.batches or queue.running or self._queues.get(queue.key) is not queue:
            return
        del self._queues[queue.key]
        index = self._order.index(queue.key)
        self._order.pop(index)
        if self._next > index:
            self._next -= 1
        self._next = self._next % max(len(self._order), 1)

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
            try:
                self._execute(queue, batch)
            finally:
                with self._cv:
                    queue.running -= 1
                    self._forget_if_idle(queue)
                    # A batch that waited for this one to end may run now.
                    self._cv.notify()

    def _execute(self, queue: _Queue, batch: _Batch) -> None:
        now = time.monotonic()
        with self._cv:
            pieces = [p for p in batch.pieces if not p.task.abandoned]
            expired = [p for p in pieces if p.task.deadline is not None and p.task.deadline <= now]
        if expired:
            # Rows whose deadline passed in the queue are not run (nobody waits for them).
            self._finish(expired, error=ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
            pieces = [p for p in pieces if p not in expired]
        if not pieces:
            return
        opts = self.options
        total = sum(p.size for p in pieces)
        padded = total
        if opts.allowed_batch_sizes:
            index = bisect.bisect_left(opts.allowed_batch_sizes, total)
            padded = opts.allowed_batch_sizes[min(index, len(opts.allowed_batch_sizes) - 1)]
        # The session may run as long as the most patient caller waits (none: no limit).
        deadlines = [p.task.deadline for p in pieces]
        timeout_s = None if None in deadlines else max(d for d in deadlines if d is not None) - now
        try:
            feeds = self._merge(pieces, padded - total)
            if self.metrics is not None:
                now_perf = time.perf_counter()
                for piece in pieces:
                    self.metrics.record_batch_queuing(opts.thread_pool_name, now_perf - piece.task.enqueued)
            outputs = queue.servable.run(feeds, queue.fetches, timeout_s=timeout_s)
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
        finished = []
        with self._cv:
            for i, piece in enumerate(pieces):
                task = piece.task
                if task.pending == 0:
                    continue  # already notified (cancelled)
                if error is not None:
                    task.error = error
                elif results is not None:
                    task.parts.append((piece.start, results[i]))
                task.pending -= 1
                if task.pending == 0:
                    finished.append(task)
        for task in finished:  # outside the lock: a callback may take its time
            task.notify(task)

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
