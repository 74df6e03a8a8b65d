"""The reading half of a scoring job: records of every input as a tf.data stream of batches.

The readers are `pipeline/readers.py`'s; this module adds scoring's policy
(`record_problem`: which records become rows of the errors file) and turns the
records into column batches that tf.data carries to the model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from pipeline.config import DataConfig
from pipeline.readers import InputFile, Record, read_input

# Records per element handed from a Python reader to tf.data: per-element
# overhead of `from_generator` is tens of microseconds, so records travel in chunks.
_READER_CHUNK = 256
_FIELDS = ("id", "text", "label", "source", "problem")


def record_problem(record: Record, fallback_allowed: bool) -> str | None:
    """Scoring's policy: why a record cannot be scored, or None."""
    if record.problem:
        return record.problem
    if record.fallback_encoding and not fallback_allowed:
        return "text is not valid UTF-8 (pass --fallback-encoding ENC to decode such text, e.g. latin-1)"
    if record.text is None:
        return "no text"
    if not record.text.strip():
        return "empty text"
    return None


def _encode(value: str | None) -> bytes:
    return b"" if value is None else value.encode("utf-8", errors="surrogateescape")


def _chunked_records(
    source: InputFile, config: DataConfig, fallback_allowed: bool, ignored: list[str]
) -> Iterator[dict[str, np.ndarray]]:
    """Groups one input's records into column arrays of up to _READER_CHUNK for tf.data."""
    columns: dict[str, list] = {key: [] for key in (*_FIELDS, "line")}
    for record in read_input(source, config, ignored):
        problem = record_problem(record, fallback_allowed)
        columns["id"].append(_encode(record.id))
        columns["text"].append(b"" if problem else _encode(record.text))
        columns["label"].append(_encode(record.label))
        columns["source"].append(_encode(record.source))
        columns["problem"].append(_encode(problem))
        columns["line"].append(record.line)
        if len(columns["id"]) == _READER_CHUNK:
            yield {
                key: np.array(values, dtype=object if key != "line" else np.int64)
                for key, values in columns.items()
            }
            columns = {key: [] for key in columns}
    if columns["id"]:
        yield {
            key: np.array(values, dtype=object if key != "line" else np.int64)
            for key, values in columns.items()
        }


def record_batches(
    sources: Sequence[InputFile],
    data_config: DataConfig,
    *,
    batch_size: int,
    fallback_allowed: bool,
    reader_parallelism: int = 4,
    skip: int = 0,
    ignored: list[str] | None = None,
):
    """A `tf.data.Dataset` of record batches over every input.

    Files are interleaved deterministically, so the order (and therefore every
    document's shard) is the same on every run.

    Args:
      sources: the resolved inputs.
      data_config: how to read them.
      batch_size: records per batch.
      fallback_allowed: text decoded with the fallback encoding is scored
        (else it is an error row).
      reader_parallelism: files read at once.
      skip: documents at the start to leave out (already scored shards).
      ignored: receives top-level files skipped in class-folder inputs.

    Returns:
      A dataset of dicts with `id`, `text`, `label`, `source`, `problem`
      (string `[B]`) and `line` (int64 `[B]`); `text` is empty for problem records.
    """
    import tensorflow as tf

    ignored = ignored if ignored is not None else []
    spec = {key: tf.TensorSpec([None], tf.string) for key in _FIELDS}
    spec["line"] = tf.TensorSpec([None], tf.int64)

    def one_file(index):
        return tf.data.Dataset.from_generator(
            lambda i: _chunked_records(sources[int(i)], data_config, fallback_allowed, ignored),
            args=(index,),
            output_signature=spec,
        )

    files = tf.data.Dataset.range(len(sources))
    chunks = files.interleave(
        one_file,
        cycle_length=min(len(sources), reader_parallelism),
        block_length=1,
        num_parallel_calls=min(len(sources), reader_parallelism),
        deterministic=True,
    )
    records = chunks.unbatch()
    if skip:
        records = records.skip(skip)
    return records.batch(batch_size)
