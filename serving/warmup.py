"""SavedModel warmup: replay `assets.extra/tf_serving_warmup_requests` before serving.

TF Serving (on by default, `--enable_model_warmup`) reads that file from each
version directory as it loads: a TFRecord file whose records are serialized
`tensorflow.serving.PredictionLog`s. Each predict / classify / regress /
multi_inference request in it is run against the version being loaded,
`--num_request_iterations_for_warmup` times (0 means once), so the first real
request does not pay for lazy initialisation. A bad file fails that version's
load (TFS_CONTRACT.md §9).

The requests themselves are run by the data plane
(`DataPlane.replay_warmup_record`), which owns request semantics; this module
owns the file: reading, limits, errors and the warmup metrics.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import grpc

from serving.errors import ServingError
from serving.servable import Servable

log = logging.getLogger("serving.warmup")

WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
MAX_RECORDS = 1000
_REPLAYABLE = ("predict_log", "classify_log", "regress_log", "multi_inference_log")

Replay = Callable[[Servable, object], None]


def warmup_path(version_dir: str) -> str:
    """Where TF Serving looks for a version's warmup requests."""
    return os.path.join(version_dir, WARMUP_DIR, WARMUP_FILE)


def read_warmup_records(path: str) -> list:
    """Reads and parses every PredictionLog of a warmup file.

    Args:
      path: the TFRecord file.

    Returns:
      The `PredictionLog` messages, in file order.

    Raises:
      ServingError: DATA_LOSS for a file that is not TFRecord (or is truncated),
        INVALID_ARGUMENT for more than 1000 records or a record that is not a
        PredictionLog.
    """
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    from tensorflow.python.util import deprecation
    from tensorflow_serving.apis import prediction_log_pb2

    logs: list = []
    try:
        # The plain record iterator reads without building a tf.data pipeline.
        with deprecation.silence():
            records = tf.compat.v1.io.tf_record_iterator(path)
        for raw in records:
            if len(logs) == MAX_RECORDS:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Number of warmup records exceeds the maximum ({MAX_RECORDS}) at {path}",
                )
            prediction_log = prediction_log_pb2.PredictionLog()
            try:
                prediction_log.ParseFromString(raw)
            except DecodeError as e:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Failed to parse warmup record {len(logs)} of {path} as a "
                    f"tensorflow.serving.PredictionLog: {e}",
                ) from e
            logs.append(prediction_log)
    except tf.errors.OpError as e:
        raise ServingError(
            grpc.StatusCode.DATA_LOSS,
            f"Failed to read warmup data from {path}: {e.message}. "
            "Please verify your warmup data is in TFRecord format.",
        ) from e
    return logs


def run_warmup(
    servable: Servable,
    replay: Replay,
    num_request_iterations: int = 0,
    metrics=None,
) -> int:
    """Replays a version's warmup file, if it has one.

    Args:
      servable: the freshly loaded version (not yet served).
      replay: runs one PredictionLog against `servable`
        (`DataPlane.replay_warmup_record`); raises ServingError on failure.
      num_request_iterations: `--num_request_iterations_for_warmup` (0: once).
      metrics: a `serving.metrics.Metrics` to record warmup latency and
        record count into, or None.

    Returns:
      How many records the file held (0 when there is no file).

    Raises:
      ServingError: the file or one of its requests failed; the load fails.
    """
    path = warmup_path(servable.path)
    if not os.path.isfile(path):
        return 0
    started = time.monotonic()
    records = read_warmup_records(path)
    iterations = max(1, num_request_iterations)
    for index, prediction_log in enumerate(records):
        kind = prediction_log.WhichOneof("log_type")
        if kind not in _REPLAYABLE:
            raise ServingError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"Unsupported log_type for warmup: {kind} (record {index} of {path})",
            )
        for _ in range(iterations):
            replay(servable, prediction_log)
    latency_s = time.monotonic() - started
    if metrics is not None:
        metrics.record_warmup(servable.path, "OK", latency_s, len(records))
    log.info(
        "Finished reading warmup data for model at %s. Number of warmup records read: %d. "
        "Elapsed time (microseconds): %d.",
        path,
        len(records),
        int(latency_s * 1e6),
    )
    return len(records)
