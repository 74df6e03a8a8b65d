"""Running a checked request (`RunPlan`): through the batcher or on a worker thread.

* `await run_async(plan, deadline)` on the event loop: with `--enable_batching`
  the rows join a batch and the coroutine awaits a future that the batch
  thread resolves through `loop.call_soon_threadsafe`, so a waiting request
  holds no thread; a cancelled caller (client gone) takes its rows out of the
  queue. Without batching the session runs on a worker thread.
* `run(plan, deadline)` on a thread (warmup replay, tests): the same, blocking.

The remaining deadline becomes the session's `RunOptions.timeout_in_ms`; rows
whose deadline passes in the queue are not run. Without batching, a request of
more than `--max_rows_per_session_run` rows runs in slices of that many rows,
one after the other, so one huge request never holds the activations of all
its rows at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from serving.batching import BatchingOptions, BatchScheduler
from serving.errors import deadline_exceeded, failed_precondition

# Rows of one session run when batching is off (0 = no limit); see module docstring.
DEFAULT_MAX_ROWS_PER_RUN = 1024


@dataclasses.dataclass(eq=False)
class RunPlan:
    """A checked request, ready to run: what to feed, what to fetch, how to answer.

    Attributes:
      servable: the resolved `Servable`.
      feeds: tensor name → decoded input.
      fetches: tensor names to fetch, in the order `finish` expects.
      api: "Predict", "Classify", "Regress" or "MultiInference" (metrics label).
      finish: turns the fetched arrays into the answer (response proto, arrays, ...).
    """

    servable: Any
    feeds: dict[str, np.ndarray]
    fetches: tuple[str, ...]
    api: str
    finish: Callable[[list[np.ndarray]], Any]


class PlanRunner:
    """Runs plans; the base of `DataPlane`.

    Args:
      options: the frozen `ServerOptions`; reads `enable_batching`,
        `batching_parameters`, `batching_idle_fast_path`,
        `max_rows_per_session_run`, `grpc_max_threads` and `rest_api_num_threads`.
      metrics: where runtime latency and batching metrics go (None: nowhere).

    Raises:
      ValueError: batching parameters that break TF's rules.
    """

    def __init__(self, options: Any, metrics: Any = None):
        self.metrics = metrics
        self.max_rows_per_run = int(getattr(options, "max_rows_per_session_run", DEFAULT_MAX_ROWS_PER_RUN))
        self.batcher: BatchScheduler | None = None
        if getattr(options, "enable_batching", False):
            batching = BatchingOptions.from_proto(
                getattr(options, "batching_parameters", None),
                idle_fast_path=bool(getattr(options, "batching_idle_fast_path", False)),
            )
            self.batcher = BatchScheduler(batching, metrics)
        # Session runs without batching (and large decodes) use these threads; a
        # batched request waits for its batch without holding one.
        workers = max(
            int(getattr(options, "grpc_max_threads", 0)), int(getattr(options, "rest_api_num_threads", 0))
        )
        self.pool = concurrent.futures.ThreadPoolExecutor(max(1, workers), thread_name_prefix="session-run")

    def close(self) -> None:
        """Stops the batch threads after the queued batches ran, then the workers (shutdown)."""
        if self.batcher is not None:
            self.batcher.stop()
        self.pool.shutdown(wait=True)

    # ------------------------------------------------------------------ running

    def run(self, plan: RunPlan, deadline: float | None = None) -> Any:
        """Runs a plan on this thread and returns its answer (through the batcher when on).

        Raises:
          ServingError: DEADLINE_EXCEEDED, UNAVAILABLE (queue full), or the run's error.
        """
        start = time.perf_counter()
        if deadline is not None and time.monotonic() >= deadline:
            raise deadline_exceeded()
        if self.batcher is not None:
            outputs = self.batcher.run(plan.servable, plan.feeds, plan.fetches, deadline)
        else:
            outputs = self._run_direct(plan, deadline)
        self._record(plan, start)
        return plan.finish(outputs)

    async def run_async(self, plan: RunPlan, deadline: float | None = None) -> Any:
        """Runs a plan from the event loop without holding a thread while it waits.

        A cancelled caller (client gone) takes its rows out of the queue.

        Raises:
          ServingError: DEADLINE_EXCEEDED, UNAVAILABLE (queue full), or the run's error.
        """
        start = time.perf_counter()
        if deadline is not None and time.monotonic() >= deadline:
            raise deadline_exceeded()
        loop = asyncio.get_running_loop()
        task = None
        if self.batcher is not None:
            done = loop.create_future()

            def resolve(_task: Any) -> None:
                loop.call_soon_threadsafe(_set_done, done)

            task = self.batcher.submit(plan.servable, plan.feeds, plan.fetches, deadline, resolve)
        if task is None:  # no batching, or 0 rows
            outputs = await loop.run_in_executor(self.pool, self._run_direct, plan, deadline)
        else:
            try:
                if deadline is None:
                    await done
                else:
                    await asyncio.wait_for(done, max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                self.batcher.cancel(task)  # type: ignore[union-attr]  # task implies a batcher
                raise deadline_exceeded() from None
            except asyncio.CancelledError:
                self.batcher.cancel(task)  # type: ignore[union-attr]
                raise
            outputs = task.outputs()
        self._record(plan, start)
        return plan.finish(outputs)

    def _record(self, plan: RunPlan, start: float) -> None:
        if self.metrics is not None:
            self.metrics.record_runtime(plan.servable.name, plan.api, time.perf_counter() - start)

    def _run_direct(self, plan: RunPlan, deadline: float | None) -> list[np.ndarray]:
        """One session run, or several of `max_rows_per_run` rows each for a large request."""
        rows = _common_rows(plan.feeds)
        limit = self.max_rows_per_run
        if not limit or rows is None or rows <= limit:
            return plan.servable.run(plan.feeds, plan.fetches, timeout_s=_remaining(deadline))
        parts = []
        for begin in range(0, rows, limit):
            chunk = {name: value[begin : begin + limit] for name, value in plan.feeds.items()}
            size = min(limit, rows - begin)
            outputs = plan.servable.run(chunk, plan.fetches, timeout_s=_remaining(deadline))
            if any(out.ndim == 0 or out.shape[0] != size for out in outputs):
                raise failed_precondition(
                    f"The request's {rows} rows were run {limit} at a time (--max_rows_per_session_run), "
                    "but an output's 0th dimension is not the row count; start the server with "
                    "--max_rows_per_session_run=0 for this model"
                )
            parts.append(outputs)
        return [np.concatenate([part[i] for part in parts]) for i in range(len(plan.fetches))]


def _set_done(future: asyncio.Future) -> None:
    if not future.done():  # the waiter may have given up already
        future.set_result(None)


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def _common_rows(feeds: Mapping[str, np.ndarray]) -> int | None:
    """The 0th dimension all feeds share, or None (scalars, mismatched sizes, no feeds)."""
    rows = None
    for value in feeds.values():
        if value.ndim == 0 or (rows is not None and value.shape[0] != rows):
            return None
        rows = value.shape[0]
    return rows
