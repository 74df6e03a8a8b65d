"""The same SavedModel called in-process: the rate and CPU any server of it is measured against.

The model lives in a child process (spawned, so this one stays light): it is
loaded with `tf.saved_model.load` and called through `serving_default`, what a
Python program embedding the model gets. On command the child measures, per
batch size, documents per second and its own CPU per document (process CPU
from /proc, every TensorFlow thread included), and the single-document p50.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

from benchmarks.serving.common import INPUT_KEY, percentile


def _child(version: str, document: str, conn) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  registers the text ops of the graph

    signature = tf.saved_model.load(version).signatures["serving_default"]
    batches: dict[int, object] = {}

    def predict(size: int):
        batch = batches.get(size)
        if batch is None:
            batch = batches[size] = tf.constant([document] * size)
            signature(**{INPUT_KEY: batch})  # the first call of a shape allocates: off the clock
        return signature(**{INPUT_KEY: batch})

    label = predict(1)["label"].numpy()[0].decode()
    conn.send({"label": label})
    while (command := conn.recv()) is not None:
        sizes, seconds, latency_samples = command
        out: dict = {"by_batch": {}}
        for size in sizes:
            predict(size)
            docs = 0
            cpu0, start = time.process_time(), time.perf_counter()
            while time.perf_counter() - start < seconds:
                predict(size)
                docs += size
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
            out["by_batch"][size] = {"docs_per_s": docs / wall, "cpu_ms_per_doc": cpu / docs * 1e3}
        latencies = []
        for _ in range(latency_samples):
            start = time.perf_counter()
            predict(1)
            latencies.append(time.perf_counter() - start)
        latencies.sort()
        out["single_doc_p50_ms"] = percentile(latencies, 50) * 1e3
        conn.send(out)
    conn.close()


class InProcessModel:
    """The model loaded in a child process, measured on demand.

    Args:
      version: the SavedModel version directory.
      document: the text every call carries (batches repeat it).
    """

    def __init__(self, version: Path, document: str):
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child, args=(str(version), document, child), daemon=True)
        self._proc.start()
        child.close()
        self.label = self._receive(600)["label"]

    def _receive(self, timeout_s: float) -> dict:
        if not self._conn.poll(timeout_s):
            self._proc.kill()
            raise SystemExit("the in-process model did not answer in time")
        return self._conn.recv()

    def measure(self, sizes: list[int], seconds: float, latency_samples: int) -> dict:
        """Docs/s and CPU ms/doc per batch size, plus the single-document p50 (ms)."""
        self._conn.send((tuple(sizes), seconds, latency_samples))
        return self._receive(300 + len(sizes) * (seconds + 60))

    def close(self) -> None:
        self._conn.send(None)
        self._proc.join(30)
        if self._proc.is_alive():
            self._proc.kill()
