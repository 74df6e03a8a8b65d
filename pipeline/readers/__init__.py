"""Every input format, read the same way by `train`, `evaluate` and `score`.

One table (`EXTENSIONS`) maps file name endings, before an optional `.gz`, to
formats; a directory with sub-directories is the class-folder layout, a
directory of files stands for its files, and quoted globs expand to the files
they match.

| format | records | reader |
|---|---|---|
| `folder` | `root/<label>/<doc>`, one document per file (top-level files are listed as ignored) | `simple.py` |
| `text` | one document per line, no labels | `simple.py` (numpy + Arrow) |
| `csv` / `tsv` | rows; quoted multi-line fields allowed, unterminated quotes reported | `delimited.py` (Arrow) |
| `jsonl` | one JSON object per line | `jsonl.py` (Arrow) |
| `parquet` | rows, by row group | `parquet.py` (Arrow) |
| `tfrecord` | serialized `tf.Example`s with bytes features | `simple.py` |

Readers yield blocks (`blocks.BLOCK_SCHEMA`: one Arrow row per physical
record, in input order) and never decide policy: a record that cannot be used
carries a `problem`. Training (`pipeline/data.py`) turns problems into errors
that name file and line; batch scoring turns them into rows of its errors file.
Text that is not valid UTF-8 is decoded with `data.fallback_encoding` (and
marked, so both report it), or is a problem when that is "".
"""

from __future__ import annotations

import glob
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from pipeline.config import DataConfig
from pipeline.errors import DataError
from pipeline.readers.blocks import BLOCK_SCHEMA, NOT_UTF8, Columns
from pipeline.readers.delimited import DelimitedReader
from pipeline.readers.framing import line_frames, read_chunks
from pipeline.readers.jsonl import JsonLinesReader
from pipeline.readers.parquet import ParquetReader
from pipeline.readers.simple import (
    count_text_lines,
    folder_blocks,
    folder_documents,
    text_line_blocks,
    tfrecord_blocks,
)

__all__ = [
    "BLOCK_SCHEMA",
    "EXTENSIONS",
    "FORMATS",
    "NOT_UTF8",
    "Columns",
    "InputFile",
    "InputInfo",
    "Record",
    "count_records",
    "detect_format",
    "inspect_input",
    "read_blocks",
    "read_folder",
    "read_records",
    "resolve_inputs",
]

# File name endings (before an optional .gz) and the format each one means under format=auto.
EXTENSIONS = {
    ".txt": "text",
    ".text": "text",
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".tfrecord": "tfrecord",
    ".tfrecords": "tfrecord",
    ".tfr": "tfrecord",
}
FORMATS = ("folder", "text", "csv", "tsv", "jsonl", "parquet", "tfrecord")
# What a file that cannot be read raises, from the OS, gzip and zlib.
_READ_ERRORS = (OSError, EOFError, zlib.error)


@dataclass(frozen=True)
class InputFile:
    """One input and the reader it needs (`folder` inputs are whole class-folder trees)."""

    path: Path
    format: str


@dataclass(frozen=True)
class Record:
    """One document as read, before any policy is applied (a row of a block, as Python values).

    Attributes:
      id: stable document id (given, or `relative/path` / `file:line`).
      text: the document text ("" when `problem` is set).
      label: the class name, None when absent.
      source: the file the record came from.
      line: 1-based line where the record starts (1 for whole-file documents,
        the record or row number for TFRecord and Parquet).
      problem: why the record is unusable, or None.
      fallback_encoding: the encoding used when the bytes were not UTF-8.
    """

    id: str
    text: str | None
    label: str | None
    source: str
    line: int = 1
    problem: str | None = None
    fallback_encoding: str | None = None


def detect_format(path: Path, configured: str) -> str:
    """Picks the reader: the configured format, or folder / by file extension.

    Raises:
      DataError: the name does not tell the format and none is configured.
    """
    if configured != "auto":
        return configured
    if path.is_dir():
        return "folder"
    name = path.name.lower().removesuffix(".gz")
    for ext, fmt in EXTENSIONS.items():
        if name.endswith(ext):
            return fmt
    raise DataError(
        f"{path}: cannot tell the input format from the name; set data.format (score: --input-format) "
        f"to one of {', '.join(FORMATS)}."
    )


def _is_class_folder(path: Path) -> bool:
    return any(child.is_dir() and not child.name.startswith(".") for child in path.iterdir())


def resolve_inputs(patterns: Sequence[str | Path], configured: str = "auto") -> list[InputFile]:
    """Expands files, directories and globs into the ordered list of inputs.

    A directory with sub-directories is the class-folder layout (one input); a
    directory of files stands for its files, sorted. Each file is listed once.

    Raises:
      DataError: a path that does not exist, a glob that matches nothing, a
        file whose format cannot be told from its name.
    """
    found: list[InputFile] = []
    seen: set[Path] = set()

    def add(path: Path, fmt: str) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            found.append(InputFile(path, fmt))

    for pattern in map(str, patterns):
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                raise DataError(
                    f"{pattern}: the pattern matches no file (quote it so the shell leaves it to us)."
                )
            paths = [Path(m) for m in matches]
        else:
            paths = [Path(pattern)]
        for path in paths:
            if not path.exists():
                raise DataError(f"{path}: no such file or directory.")
            if path.is_dir() and (
                configured == "folder" or (configured == "auto" and _is_class_folder(path))
            ):
                add(path, "folder")
            elif path.is_dir():
                for child in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
                    add(child, detect_format(child, configured))
            elif configured == "folder":
                raise DataError(f"{path}: data.format=folder needs a directory of class folders.")
            else:
                add(path, detect_format(path, configured))
    return found


def _delimited(source: InputFile, config: DataConfig, columns: Columns) -> DelimitedReader:
    return DelimitedReader(
        source.path,
        columns,
        "," if source.format == "csv" else "\t",
        header=config.header,
        fallback_encoding=config.fallback_encoding,
        max_field_lines=config.csv_max_field_lines,
    )


def _blocks(source: InputFile, config: DataConfig, columns: Columns, ignored: list[str] | None):
    path, fmt = source.path, source.format
    if fmt == "folder":
        return folder_blocks(path, config.fallback_encoding, ignored)
    if fmt in ("csv", "tsv"):
        return _delimited(source, config, columns).blocks()
    if fmt == "jsonl":
        return JsonLinesReader(path, columns, config.fallback_encoding).blocks()
    if fmt == "parquet":
        return ParquetReader(path, columns).blocks()
    if fmt == "tfrecord":
        return tfrecord_blocks(path, columns, config.fallback_encoding)
    return text_line_blocks(path, config.fallback_encoding)


def read_blocks(
    source: InputFile, config: DataConfig, *, labels_required: bool = False, ignored: list[str] | None = None
) -> Iterator[pa.RecordBatch]:
    """Yields the blocks of one input, in order (see the module docstring).

    Args:
      source: the input and its format.
      config: the [data] section: columns, header, encodings.
      labels_required: a CSV/TSV/Parquet file without the label column is an
        error (training); otherwise it simply has no labels.
      ignored: receives the top-level files of class-folder inputs.

    Raises:
      DataError: a structural problem that stops reading (unreadable file,
        missing column, unreadable header), naming the file.
    """
    columns = Columns.from_config(config, labels_required=labels_required)
    try:
        yield from _blocks(source, config, columns, ignored)
    except _READ_ERRORS as error:
        raise DataError(f"{source.path}: cannot read the input ({error}); fix or remove the file.") from error


@dataclass(frozen=True)
class InputInfo:
    """What the count pass learnt about one input.

    Attributes:
      count: records `read_blocks` will yield, bad ones included.
      id_column: where ids come from ("path" for class folders; None = `file:line`).
      label_column: where labels come from ("folder" for class folders; None = none).
    """

    count: int
    id_column: str | None
    label_column: str | None


def inspect_input(source: InputFile, config: DataConfig, *, labels_required: bool = False) -> InputInfo:
    """Counts an input's records and finds its id and label columns, reading every byte.

    This is batch scoring's start-of-run check: it raises on anything that
    would stop a run later (unreadable or truncated file, corrupted gzip, a
    header or Parquet schema without the configured columns, corrupted
    TFRecord framing).

    Raises:
      DataError: naming the file and what to do.
    """
    path, fmt = source.path, source.format
    columns = Columns.from_config(config, labels_required=labels_required)
    try:
        if fmt == "folder":
            return InputInfo(sum(1 for _ in folder_documents(path)), "path", "folder")
        if fmt == "text":
            return InputInfo(count_text_lines(path), None, None)
        if fmt == "jsonl":
            count, first = 0, None
            for lines in line_frames(read_chunks(path)):
                rows = lines.nonblank()
                if first is None and len(rows):
                    first = lines.data[lines.starts[rows[0]] : lines.ends[rows[0]]]
                count += len(rows)
            keys = _first_object_keys(first)
            return InputInfo(
                count,
                str(columns.id) if str(columns.id) in keys else None,
                str(columns.label) if str(columns.label) in keys else None,
            )
        if fmt in ("csv", "tsv"):
            reader = _delimited(source, config, columns)
            count = reader.count()
            return InputInfo(count, reader.column_name(reader.id_idx), reader.column_name(reader.label_idx))
        if fmt == "parquet":
            parquet = ParquetReader(path, columns)
            return InputInfo(parquet.num_rows, parquet.id, parquet.label)
    except _READ_ERRORS as error:
        raise DataError(f"{path}: cannot read the input ({error}); fix or remove the file.") from error
    features = _first_example_features(path)
    return InputInfo(
        _count_tfrecords(path),
        str(columns.id) if str(columns.id) in features else None,
        str(columns.label) if str(columns.label) in features else None,
    )


def _first_example_features(path: Path) -> set[str]:
    """The feature names of a TFRecord file's first `tf.Example` (ids and labels are looked for there)."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    from tensorflow.core.example import example_pb2

    compression = "GZIP" if path.suffix == ".gz" else ""
    try:
        for serialized in tf.data.TFRecordDataset(str(path), compression_type=compression).take(1):
            return set(example_pb2.Example.FromString(serialized.numpy()).features.feature)
    except (tf.errors.OpError, DecodeError):
        pass  # the count below reports a corrupted file
    return set()


def _first_object_keys(line: bytes | None) -> set[str]:
    """The keys of the first JSON line, when it is an object (ids and labels are looked for there)."""
    import orjson

    try:
        first = orjson.loads(line) if line else None
    except orjson.JSONDecodeError:
        return set()
    return set(first) if isinstance(first, dict) else set()


def count_records(source: InputFile, config: DataConfig, *, labels_required: bool = False) -> int:
    """Counts the records `read_blocks` will yield, bad ones included (see `inspect_input`).

    Raises:
      DataError: naming the file and what to do.
    """
    return inspect_input(source, config, labels_required=labels_required).count


def _count_tfrecords(path: Path) -> int:
    import numpy as np
    import tensorflow as tf

    compression = "GZIP" if path.suffix == ".gz" else ""
    try:
        dataset = tf.data.TFRecordDataset(str(path), compression_type=compression)
        return int(dataset.reduce(np.int64(0), lambda n, _: n + 1))
    except tf.errors.OpError as error:  # DataLossError on corrupted framing or gzip
        raise DataError(
            f"{path}: cannot read the TFRecord file ({error.message}); fix or remove it."
        ) from error


def block_records(block: pa.RecordBatch) -> Iterator[Record]:
    """The rows of a block as `Record`s."""
    columns = [block.column(name).to_pylist() for name in BLOCK_SCHEMA.names]
    for doc_id, text, label, source, line, problem, fallback in zip(*columns):
        yield Record(doc_id, text, label, source, line, problem, fallback)


def read_records(
    path: str | Path, config: DataConfig, ignored: list[str] | None = None, *, labels_required: bool = True
) -> Iterator[Record]:
    """Yields the records of a file, directory or glob (as `textserve train --data` takes it).

    Raises:
      DataError: the path does not exist, its format cannot be told, or it
        cannot be read (see `read_blocks`).
    """
    if not glob.has_magic(str(path)) and not Path(path).exists():
        raise DataError(f"{path}: no such file or directory (pass --data PATH).")
    for source in resolve_inputs([path], config.format):
        for block in read_blocks(source, config, labels_required=labels_required, ignored=ignored):
            yield from block_records(block)


def read_folder(root: Path, fallback_encoding: str, ignored: list[str] | None = None) -> Iterator[Record]:
    """Yields one record per file of a class-folder tree, in sorted order (labels from the folders)."""
    for block in folder_blocks(Path(root), fallback_encoding, ignored):
        yield from block_records(block)
