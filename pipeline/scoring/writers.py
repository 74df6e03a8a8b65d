"""Output rows: one encoder for every output format, and shard files committed atomically.

`encode_rows` is shared by the tf.data job and the Beam pipeline so both write
the same bytes; `ShardWriter` writes one shard to a hidden temporary file and
renames it into place only when the shard is complete.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from preprocessing import names

OUTPUT_FORMATS = ("jsonl", "csv", "tfrecord")
OUTPUT_SUFFIX = {"jsonl": ".jsonl", "csv": ".csv", "tfrecord": ".tfrecord"}


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Writes a whole file through a hidden temporary sibling, fsync and rename."""
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@dataclass
class RowBatch:
    """Scored rows of one shard segment: ids, labels, scores and (optionally) probabilities."""

    ids: list[str]
    labels: list[str]
    scores: list[float]
    probabilities: np.ndarray | None  # float32 [rows, classes]


def encode_rows(rows: RowBatch, output_format: str, prob_keys: Sequence[str]) -> list[bytes]:
    """Encodes scored rows as output records: JSON objects, CSV lines or serialized tf.Examples.

    Records carry no line terminator; the writer adds it.
    """
    probs = rows.probabilities.tolist() if prob_keys and rows.probabilities is not None else None
    if output_format == "jsonl":
        out = []
        for i, (doc_id, label, score) in enumerate(zip(rows.ids, rows.labels, rows.scores)):
            row = {"id": doc_id, names.PREDICTED_LABEL: label, names.SCORE: score}
            if probs is not None:
                row.update(zip(prob_keys, probs[i]))
            out.append(orjson.dumps(row))
        return out
    if output_format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="")
        out = []
        for i, (doc_id, label, score) in enumerate(zip(rows.ids, rows.labels, rows.scores)):
            buffer.seek(0)
            buffer.truncate()
            writer.writerow([doc_id, label, score, *(probs[i] if probs is not None else ())])
            out.append(buffer.getvalue().encode("utf-8"))
        return out
    from tensorflow.core.example import example_pb2, feature_pb2

    out = []
    for i, (doc_id, label, score) in enumerate(zip(rows.ids, rows.labels, rows.scores)):
        example = example_pb2.Example()
        feature = example.features.feature
        feature["id"].bytes_list.value.append(doc_id.encode("utf-8"))
        feature[names.PREDICTED_LABEL].bytes_list.value.append(label.encode("utf-8"))
        feature[names.SCORE].float_list.value.append(score)
        if probs is not None:
            for key, p in zip(prob_keys, probs[i]):
                feature[key].CopyFrom(feature_pb2.Feature(float_list=feature_pb2.FloatList(value=[p])))
        out.append(example.SerializeToString())
    return out


def csv_header(prob_keys: Sequence[str]) -> str:
    """The CSV output's header line (no terminator)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(["id", names.PREDICTED_LABEL, names.SCORE, *prob_keys])
    return buffer.getvalue()


class ShardWriter:
    """Writes one output shard to a hidden temporary file; `commit` renames it into place.

    Args:
      path: the final shard path.
      output_format: one of OUTPUT_FORMATS.
      label_names: class names in probability order.
      probabilities: write `p_<class>` columns.
    """

    def __init__(self, path: Path, output_format: str, label_names: Sequence[str], probabilities: bool):
        self.path = path
        self.format = output_format
        self.prob_keys = [names.probability_key(label) for label in label_names] if probabilities else []
        self.tmp = path.with_name(f".{path.name}.partial")
        path.parent.mkdir(parents=True, exist_ok=True)
        if output_format == "tfrecord":
            import tensorflow as tf

            self._handle = tf.io.TFRecordWriter(str(self.tmp))
        else:
            self._handle = open(self.tmp, "wb")
            if output_format == "csv":
                self._handle.write(csv_header(self.prob_keys).encode("utf-8") + b"\n")

    def write(self, rows: RowBatch) -> None:
        """Appends rows in order."""
        records = encode_rows(rows, self.format, self.prob_keys)
        if self.format == "tfrecord":
            for record in records:
                self._handle.write(record)
        elif records:
            self._handle.write(b"\n".join(records) + b"\n")

    def commit(self) -> None:
        """Flushes to disk and renames the shard into place (atomic on one filesystem)."""
        if self.format == "tfrecord":
            self._handle.close()
            with open(self.tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        else:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        """Closes and removes the temporary file (the run was interrupted)."""
        try:
            self._handle.close()
        finally:
            self.tmp.unlink(missing_ok=True)
