"""Output rows on Arrow: one table per scored batch, encoded without per-row Python where possible.

A scored batch becomes a `pyarrow.Table` with typed columns: `id` and `label`
(strings), `score` and, with `--probabilities`, one `p_<class>` per class
(float32). Encoders, shared by the tf.data job and the Beam pipeline so both
write the same bytes:

* JSON Lines: each line assembled with Arrow string kernels; ids and labels
  are JSON-escaped per row only in a batch that has one needing escapes
  (quote, backslash, control character);
* CSV: Arrow's CSV writer (header once per shard);
* Parquet: Arrow's Parquet writer, the table's column types kept;
* TFRecord: one `tf.Example` per row (bytes `id`/`label`, float `score`, `p_<class>`).

`ShardWriter` writes one shard to a hidden temporary file and renames it into
place only when the shard is complete (after fsync).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from pipeline.config import SCORE_OUTPUT_FORMATS
from preprocessing import names

OUTPUT_FORMATS = SCORE_OUTPUT_FORMATS
OUTPUT_SUFFIX = {"jsonl": ".jsonl", "csv": ".csv", "parquet": ".parquet", "tfrecord": ".tfrecord"}
_NEEDS_ESCAPE = r'["\\\x00-\x1f]'


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Writes a whole file through a hidden temporary sibling, fsync and rename."""
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def output_schema(prob_keys: Sequence[str]) -> pa.Schema:
    """The columns of every output: id, label, score and the optional `p_<class>` ones."""
    fields = [("id", pa.string()), (names.PREDICTED_LABEL, pa.string()), (names.SCORE, pa.float32())]
    return pa.schema(fields + [(key, pa.float32()) for key in prob_keys])


def scored_table(
    ids: pa.Array,
    labels: np.ndarray,
    scores: np.ndarray,
    probabilities: np.ndarray | None,
    prob_keys: Sequence[str],
) -> pa.Table:
    """Scored rows as a typed table.

    Args:
      ids: document ids (strings).
      labels: predicted labels as the model returns them (bytes).
      scores: float32 `[rows]`.
      probabilities: float32 `[rows, classes]`, used when `prob_keys` is not empty.
      prob_keys: the `p_<class>` column names, in probability order.
    """
    columns = [
        ids,
        pc.cast(pa.array(labels, pa.binary()), pa.string()),
        pa.array(np.asarray(scores, np.float32)),
    ]
    if prob_keys:
        assert probabilities is not None
        matrix = np.asarray(probabilities, np.float32)
        columns += [pa.array(matrix[:, j]) for j in range(len(prob_keys))]
    return pa.Table.from_arrays(columns, schema=output_schema(prob_keys))


def _json_strings(values: pa.Array) -> pa.Array:
    """Each string as a JSON string literal (quotes included)."""
    if pc.any(pc.match_substring_regex(values, _NEEDS_ESCAPE)).as_py():
        return pa.array([orjson.dumps(v).decode("utf-8") for v in values.to_pylist()], pa.string())
    return pc.binary_join_element_wise('"', values, '"', "")


def _json_numbers(values: pa.Array) -> pa.Array:
    """float32 values as JSON numbers (shortest text that reads back the same float32); null if not finite."""
    text = pc.cast(values, pa.string())
    return pc.if_else(pc.is_finite(values), text, "null")


def _buffer_bytes(lines: pa.Array) -> memoryview:
    """The concatenated values of a string array, straight from its data buffer."""
    if not len(lines):
        return memoryview(b"")
    offsets = np.frombuffer(lines.buffers()[1], np.int32)[lines.offset : lines.offset + len(lines) + 1]
    return memoryview(lines.buffers()[2])[offsets[0] : offsets[-1]]


def encode_jsonl(table: pa.Table) -> memoryview:
    """The table as JSON Lines (one object per row, keys in column order, newline-terminated)."""
    parts: list[Any] = []
    for i, name in enumerate(table.column_names):
        column = table.column(name).combine_chunks()
        parts.append(("{" if i == 0 else ",") + orjson.dumps(name).decode() + ":")
        parts.append(_json_strings(column) if pa.types.is_string(column.type) else _json_numbers(column))
    parts.append("}\n")
    return _buffer_bytes(pc.binary_join_element_wise(*parts, ""))


def encode_csv(table: pa.Table, *, header: bool) -> bytes:
    """The table as CSV (Arrow's writer: strings quoted, floats in shortest form)."""
    sink = io.BytesIO()
    pa_csv.write_csv(table, sink, pa_csv.WriteOptions(include_header=header))
    return sink.getvalue()


def encode_tfrecords(table: pa.Table) -> list[bytes]:
    """The table as serialized `tf.Example`s, one per row."""
    from tensorflow.core.example import example_pb2

    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    out = []
    for i in range(table.num_rows):
        example = example_pb2.Example()
        feature = example.features.feature
        for name, values in columns.items():
            if isinstance(values[i], str):
                feature[name].bytes_list.value.append(values[i].encode("utf-8"))
            else:
                feature[name].float_list.value.append(values[i])
        out.append(example.SerializeToString())
    return out


class ShardWriter:
    """Writes one output shard to a hidden temporary file; `commit` renames it into place.

    Args:
      path: the final shard path.
      output_format: one of OUTPUT_FORMATS.
      prob_keys: the `p_<class>` columns (empty without --probabilities).
    """

    def __init__(self, path: Path, output_format: str, prob_keys: Sequence[str]):
        self.path = path
        self.format = output_format
        self.schema = output_schema(prob_keys)
        self.tmp = path.with_name(f".{path.name}.partial")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: Any
        if output_format == "tfrecord":
            import tensorflow as tf

            self._handle = tf.io.TFRecordWriter(str(self.tmp))
        elif output_format == "parquet":
            self._handle = pq.ParquetWriter(str(self.tmp), self.schema)
        else:
            self._handle = open(self.tmp, "wb")
            if output_format == "csv":
                self._handle.write(encode_csv(self.schema.empty_table(), header=True))

    def write(self, table: pa.Table) -> None:
        """Appends rows in order.

        Raises:
          OSError: the disk is full (or the file cannot grow), naming the shard.
        """
        if not table.num_rows:
            return
        try:
            self._write(table)
        except OSError as error:
            raise OSError(error.errno, error.strerror, str(self.path)) from error

    def _write(self, table: pa.Table) -> None:
        if self.format == "jsonl":
            self._handle.write(encode_jsonl(table))
        elif self.format == "csv":
            self._handle.write(encode_csv(table, header=False))
        elif self.format == "parquet":
            self._handle.write_table(table)
        else:
            for record in encode_tfrecords(table):
                self._handle.write(record)

    def commit(self) -> None:
        """Flushes to disk and renames the shard into place (atomic on one filesystem).

        Raises:
          OSError: the data could not reach the disk, naming the shard.
        """
        try:
            self._commit()
        except OSError as error:
            raise OSError(error.errno, error.strerror, str(self.path)) from error

    def _commit(self) -> None:
        if self.format in ("tfrecord", "parquet"):
            self._handle.close()
            with open(self.tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        else:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        """Closes and removes the temporary file (the run stopped)."""
        try:
            self._handle.close()
        except (OSError, pa.ArrowException):
            pass  # the file goes anyway; a full disk can make the close fail too
        finally:
            self.tmp.unlink(missing_ok=True)
