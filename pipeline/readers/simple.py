"""The formats without a columnar parser: plain text lines, class folders and TFRecord files.

Plain text is cut with numpy and handed to Arrow as one buffer (no per-line
Python unless a chunk holds bytes that are not UTF-8). Class folders are one
document per file, TFRecord one `tf.Example` per record: both are read with
Python per document, which is not where their time goes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import DataError
from pipeline.readers.blocks import NOT_UTF8, Columns, decode_bytes, derived_ids, rows_block, vector_block
from pipeline.readers.framing import Lines, line_frames, read_chunks

_ROWS_PER_BLOCK = 256


# --- Plain text: one document per line --------------------------------------------------------------


def text_line_blocks(path: Path, fallback_encoding: str) -> Iterator[pa.RecordBatch]:
    """Yields one block per chunk of lines; every line is a record (a blank one is an empty text)."""
    for lines in line_frames(read_chunks(path)):
        offsets = np.concatenate([lines.starts, [len(lines.data)]]).astype(np.int32)
        raw = pa.Array.from_buffers(
            pa.binary(), len(lines.starts), [None, pa.py_buffer(offsets), pa.py_buffer(lines.data)]
        )
        numbers = lines.first + np.arange(len(lines.starts), dtype=np.int64)
        try:
            texts = pc.utf8_rtrim(pc.cast(raw, pa.string()), characters="\r\n")
        except pa.ArrowInvalid:  # not UTF-8 somewhere in the chunk: decide line by line
            yield _text_per_line(path, lines, numbers, fallback_encoding)
            continue
        yield vector_block(str(path), derived_ids(path.name, numbers), texts, None, numbers)


def _text_per_line(path: Path, lines: Lines, numbers: np.ndarray, fallback_encoding: str) -> pa.RecordBatch:
    texts, problems, fallbacks = [], [], []
    for start, end in zip(lines.starts, lines.ends):
        text, used = decode_bytes(lines.data[start:end].rstrip(b"\r"), fallback_encoding)
        texts.append(text)
        problems.append(NOT_UTF8 if text is None else None)
        fallbacks.append(used)
    ids = [f"{path.name}:{n}" for n in numbers]
    return rows_block(str(path), ids, texts, [None] * len(ids), numbers.tolist(), problems, fallbacks)


def count_text_lines(path: Path) -> int:
    """Lines in a text file (a last line without a newline counts)."""
    return sum(len(lines.starts) for lines in line_frames(read_chunks(path)))


# --- Class folders: root/<label>/<document> ------------------------------------------------------------


def folder_documents(root: Path, ignored: list[str] | None = None) -> Iterator[tuple[Path, str]]:
    """(file, label) for every document of a class-folder tree, in sorted order.

    Args:
      root: directory whose sub-directories are class names.
      ignored: if given, receives the top-level files, which are not documents.
    """
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            if ignored is not None:
                ignored.append(str(entry))
            continue
        for path in sorted(p for p in entry.rglob("*") if p.is_file() and not p.name.startswith(".")):
            yield path, entry.name


def folder_blocks(
    root: Path, fallback_encoding: str, ignored: list[str] | None = None
) -> Iterator[pa.RecordBatch]:
    """Yields blocks of whole-file documents; ids are paths relative to `root`, labels the folders.

    Raises:
      DataError: a file that cannot be read.
    """
    rows: list[list] = [[] for _ in range(6)]
    for path, label in folder_documents(root, ignored):
        try:
            raw = path.read_bytes()
        except OSError as error:
            raise DataError(f"{path}: cannot read file: {error.strerror}") from error
        text, used = decode_bytes(raw, fallback_encoding)
        problem = NOT_UTF8 if text is None else None
        values = (path.relative_to(root).as_posix(), text, label, str(path), problem, used)
        for column, value in zip(rows, values):
            column.append(value)
        if len(rows[0]) == _ROWS_PER_BLOCK:
            yield _folder_block(rows)
            rows = [[] for _ in range(6)]
    if rows[0]:
        yield _folder_block(rows)


def _folder_block(rows: list[list]) -> pa.RecordBatch:
    ids, texts, labels, sources, problems, fallbacks = rows
    block = rows_block("", ids, texts, labels, [1] * len(ids), problems, fallbacks)
    return block.set_column(3, "source", pa.array(sources, pa.string()))


# --- TFRecord of tf.Example ------------------------------------------------------------------------------


def _feature_text(example, key: str) -> tuple[bytes | None, str | None]:
    """A bytes feature's single value, or (None, reason)."""
    if key not in example.features.feature:
        return None, f"missing feature {key!r}"
    feature = example.features.feature[key]
    kind = feature.WhichOneof("kind")
    if kind != "bytes_list":
        return None, f"feature {key!r} is a {kind}, expected bytes_list"
    values = feature.bytes_list.value
    if len(values) != 1:
        return None, f"feature {key!r} has {len(values)} values, expected 1"
    return values[0], None


def tfrecord_blocks(path: Path, columns: Columns, fallback_encoding: str) -> Iterator[pa.RecordBatch]:
    """Yields blocks of `tf.Example` records; `line` is the 1-based record number.

    A corrupted file yields one problem record at the point of corruption:
    what follows it cannot be framed.
    """
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    from tensorflow.core.example import example_pb2

    compression = "GZIP" if path.suffix == ".gz" else ""
    iterator = tf.data.TFRecordDataset(str(path), compression_type=compression).as_numpy_iterator()
    rows: list[list] = [[] for _ in range(6)]
    number = 0
    while True:
        try:
            serialized = next(iterator)
        except StopIteration:
            break
        except tf.errors.OpError as error:
            reason = f"corrupted TFRecord data, the rest of the file is unreadable: {error.message}"
            for column, value in zip(
                rows, (f"{path.name}:{number + 1}", None, None, number + 1, reason, None)
            ):
                column.append(value)
            break
        number += 1
        try:
            example = example_pb2.Example.FromString(serialized)
        except DecodeError:
            values: tuple = (None, None, None, "record is not a serialized tf.Example", None)
        else:
            values = _example_values(example, columns, fallback_encoding)
        doc_id, text, label, problem, used = values
        for column, value in zip(
            rows, (doc_id or f"{path.name}:{number}", text, label, number, problem, used)
        ):
            column.append(value)
        if len(rows[0]) == _ROWS_PER_BLOCK * 4:
            yield rows_block(str(path), *rows)
            rows = [[] for _ in range(6)]
    if rows[0]:
        yield rows_block(str(path), *rows)


def _example_values(example, columns: Columns, fallback_encoding: str) -> tuple:
    """(id, text, label, problem, fallback encoding) of one tf.Example."""
    parts = []
    for key in columns.text:
        value, problem = _feature_text(example, str(key))
        if problem or value is None:
            return None, None, None, problem, None
        parts.append(value)
    text, used = decode_bytes(b" ".join(parts), fallback_encoding)
    if text is None:
        return None, None, None, NOT_UTF8, None
    doc_id = label = None
    if columns.id is not None:
        given, _ = _feature_text(example, str(columns.id))
        if given and given.strip():
            doc_id = given.strip().decode("utf-8", errors="replace")
    if columns.label is not None:
        given, _ = _feature_text(example, str(columns.label))
        label = given.decode("utf-8", errors="replace") if given else None
    return doc_id, text, label, None, used
