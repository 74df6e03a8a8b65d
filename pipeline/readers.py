"""Every input format, read the same way by `train`, `evaluate` and `score`.

One table maps file name endings (before an optional `.gz`) to formats; a
directory with sub-directories is the class-folder layout, a directory of files
stands for its files, and quoted globs expand to the files they match.

* `folder`: `root/<label>/<doc>`, the BBC archive's layout; files at the top
  level (README.TXT) are not documents and are listed as ignored;
* `text`: one document per line, no labels;
* `csv` / `tsv`: a text column (or several, joined by a space), optional label
  and id columns, by name or 0-based index, with or without a header, quoted
  multi-line fields allowed;
* `jsonl`: one JSON object per line with configurable keys;
* `tfrecord`: serialized `tf.Example`s with bytes features.

Readers yield `Record`s and never decide policy: a record that cannot be used
carries a `problem`. Training (`pipeline/data.py`) turns problems into errors
that name file and line; batch scoring turns them into rows of its errors file.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

import numpy as np

from pipeline.config import DataConfig
from pipeline.errors import DataError

# csv's default field limit (128 KiB) is smaller than some real documents.
csv.field_size_limit(2**31 - 1)

# File name endings (before an optional .gz) and the format each one means under format=auto.
EXTENSIONS = {
    ".txt": "text",
    ".text": "text",
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".tfrecord": "tfrecord",
    ".tfrecords": "tfrecord",
    ".tfr": "tfrecord",
}
FORMATS = ("folder", "text", "csv", "tsv", "jsonl", "tfrecord")


@dataclass(frozen=True)
class Record:
    """One document as read, before any policy is applied.

    Attributes:
      id: stable document id (given, or `relative/path` / `file:line`).
      text: the document text, None when it could not be read.
      label: the class name, None when absent.
      source: the file the record came from.
      line: 1-based line where the record starts (1 for whole-file documents,
        the record number for TFRecord).
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


@dataclass(frozen=True)
class InputFile:
    """One input and the reader it needs (`folder` inputs are whole class-folder trees)."""

    path: Path
    format: str


# --- Decoding -------------------------------------------------------------------------------


def open_binary(path: Path) -> IO[bytes]:
    """Opens a file for reading bytes, decompressing `.gz` on the fly."""
    if path.suffix == ".gz":
        return cast(IO[bytes], gzip.GzipFile(path, "rb"))
    return open(path, "rb")


def open_text(path: Path) -> io.TextIOWrapper:
    """Opens a (possibly gzipped) file as text; invalid UTF-8 survives as surrogates."""
    return io.TextIOWrapper(open_binary(path), encoding="utf-8", errors="surrogateescape", newline="")


def repair(value: str, fallback_encoding: str) -> tuple[str, str | None]:
    """Re-decodes a string that held invalid UTF-8 with the fallback encoding.

    Returns:
      The text and the encoding used for it, or None when it was valid UTF-8.
    """
    try:
        value.encode("utf-8")
        return value, None
    except UnicodeEncodeError:
        raw = value.encode("utf-8", errors="surrogateescape")
        return raw.decode(fallback_encoding, errors="replace"), fallback_encoding


def decode_document(raw: bytes, fallback_encoding: str) -> tuple[str, str | None]:
    """Decodes a whole file: UTF-8 (with or without BOM), else the fallback encoding."""
    try:
        return raw.decode("utf-8-sig"), None
    except UnicodeDecodeError:
        return raw.decode(fallback_encoding, errors="replace"), fallback_encoding


# --- Which reader -----------------------------------------------------------------------------


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
        f"{path}: cannot tell the input format from the name; set data.format (score: --input-format) to one "
        f"of {', '.join(FORMATS)}."
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
            else:
                add(path, detect_format(path, configured))
    return found


# --- Readers --------------------------------------------------------------------------------


def read_folder(root: Path, fallback_encoding: str, ignored: list[str] | None = None) -> Iterator[Record]:
    """Yields one record per file of a class-folder tree, in sorted order.

    Args:
      root: directory whose sub-directories are class names.
      fallback_encoding: used for files that are not valid UTF-8.
      ignored: if given, receives the top-level files that were skipped.

    Raises:
      DataError: a file that cannot be read.
    """
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            if ignored is not None:
                ignored.append(str(entry))
            continue
        for path in sorted(p for p in entry.rglob("*") if p.is_file() and not p.name.startswith(".")):
            doc_id = path.relative_to(root).as_posix()
            try:
                raw = path.read_bytes()
            except OSError as error:
                raise DataError(f"{path}: cannot read file: {error.strerror}") from error
            text, encoding = decode_document(raw, fallback_encoding)
            yield Record(doc_id, text, entry.name, str(path), 1, None, encoding)


def _column_index(column: str | int, header: list[str] | None, path: Path, line: int) -> int:
    if isinstance(column, int):
        return column
    if header is None:
        raise DataError(
            f"{path}:{line}: column {column!r} given by name but the file is read without a "
            f"header; set data.header=true or give a 0-based index."
        )
    if column not in header:
        raise DataError(f"{path}:{line}: column {column!r} not found; the header has {header}.")
    return header.index(column)


def read_delimited(
    path: Path, config: DataConfig, delimiter: str, *, text_columns: Sequence[str | int] | None = None
) -> Iterator[Record]:
    """Yields one record per CSV/TSV row (quoted multi-line fields allowed).

    A row too short for a configured column yields a record with a `problem`;
    a column missing from the header raises `DataError` at once.
    """
    text_columns = list(text_columns if text_columns is not None else config.text_column)
    with open_text(path) as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header = None
        if config.header:
            try:
                header = next(reader)
            except StopIteration:
                raise DataError(f"{path}:1: empty file, expected a header row.") from None
        text_idx = [_column_index(c, header, path, 1) for c in text_columns]
        label_idx = _column_index(config.label_column, header, path, 1) if config.label_column != "" else None
        id_idx = _column_index(config.id_column, header, path, 1) if config.id_column != "" else None
        start = reader.line_num + 1
        for row in reader:
            line, start = start, reader.line_num + 1
            if not row:
                continue  # a blank line is no record
            doc_id = f"{path.name}:{line}"
            needed = [i for i in [*text_idx, label_idx, id_idx] if i is not None]
            if max(needed) >= len(row):
                yield Record(
                    doc_id,
                    None,
                    None,
                    str(path),
                    line,
                    f"row has {len(row)} fields, column index {max(needed)} is missing",
                )
                continue
            if id_idx is not None and row[id_idx].strip():
                doc_id = row[id_idx].strip()
            text, encoding = repair(" ".join(row[i] for i in text_idx), config.fallback_encoding)
            label = row[label_idx].strip() if label_idx is not None else None
            yield Record(doc_id, text, label or None, str(path), line, None, encoding)


def read_jsonl(
    path: Path, config: DataConfig, *, text_keys: Sequence[str | int] | None = None
) -> Iterator[Record]:
    """Yields one record per JSON Lines line; bad lines carry a `problem`."""
    text_keys = [str(k) for k in (text_keys if text_keys is not None else config.text_column)]
    with open_text(path) as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            doc_id = f"{path.name}:{line_number}"
            line, encoding = repair(line, config.fallback_encoding)
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as error:
                yield Record(doc_id, None, None, str(path), line_number, f"malformed JSON: {error.msg}")
                continue
            if not isinstance(obj, dict):
                yield Record(doc_id, None, None, str(path), line_number, "line is not a JSON object")
                continue
            missing = [k for k in text_keys if k not in obj]
            if missing:
                yield Record(doc_id, None, None, str(path), line_number, f"missing key(s) {missing}")
                continue
            if config.id_column != "" and obj.get(str(config.id_column)) not in (None, ""):
                doc_id = str(obj[str(config.id_column)])
            text = " ".join(str(obj[k]) for k in text_keys if obj[k] is not None)
            label = obj.get(str(config.label_column))
            yield Record(
                doc_id,
                text,
                None if label in (None, "") else str(label),
                str(path),
                line_number,
                None,
                encoding,
            )


def read_text_lines(path: Path, config: DataConfig) -> Iterator[Record]:
    """Yields one record per line of a plain-text file; a blank line is an empty-text record."""
    with open_binary(path) as handle:
        for line_number, raw in enumerate(handle, start=1):
            line = raw.rstrip(b"\n").rstrip(b"\r").decode("utf-8", errors="surrogateescape")
            text, encoding = repair(line, config.fallback_encoding)
            yield Record(f"{path.name}:{line_number}", text, None, str(path), line_number, None, encoding)


def _feature_text(example, key: str) -> tuple[str | None, str | None]:
    """A bytes feature's single value as text, or (None, reason)."""
    if key not in example.features.feature:
        return None, f"missing feature {key!r}"
    feature = example.features.feature[key]
    kind = feature.WhichOneof("kind")
    if kind != "bytes_list":
        return None, f"feature {key!r} is a {kind}, expected bytes_list"
    values = feature.bytes_list.value
    if len(values) != 1:
        return None, f"feature {key!r} has {len(values)} values, expected 1"
    return values[0].decode("utf-8", errors="surrogateescape"), None


def read_tfrecord(path: Path, config: DataConfig) -> Iterator[Record]:
    """Yields one record per serialized `tf.Example` (bytes feature `text`, optional `id`).

    `line` is the 1-based record number. A corrupted file yields one problem
    record at the point of corruption: what follows it cannot be framed.
    """
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    from tensorflow.core.example import example_pb2

    compression = "GZIP" if path.suffix == ".gz" else ""
    dataset = tf.data.TFRecordDataset(str(path), compression_type=compression)
    number = 0
    iterator = dataset.as_numpy_iterator()
    while True:
        try:
            serialized = next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError as error:
            yield Record(
                f"{path.name}:{number + 1}",
                None,
                None,
                str(path),
                number + 1,
                f"corrupted TFRecord data, the rest of the file is unreadable: {error.message}",
            )
            return
        number += 1
        doc_id = f"{path.name}:{number}"
        try:
            example = example_pb2.Example.FromString(serialized)
        except DecodeError:
            yield Record(doc_id, None, None, str(path), number, "record is not a serialized tf.Example")
            continue
        parts: list[str] = []
        problem = None
        for key in config.text_column:
            value, problem = _feature_text(example, str(key))
            if problem or value is None:
                break
            parts.append(value)
        if problem:
            yield Record(doc_id, None, None, str(path), number, problem)
            continue
        text, encoding = repair(" ".join(parts), config.fallback_encoding)
        if config.id_column != "":
            given, _ = _feature_text(example, str(config.id_column))
            doc_id = given.strip() if given and given.strip() else doc_id
        label = None
        if config.label_column != "":
            label, _ = _feature_text(example, str(config.label_column))
        yield Record(doc_id, text, label or None, str(path), number, None, encoding)


def read_input(source: InputFile, config: DataConfig, ignored: list[str] | None = None) -> Iterator[Record]:
    """Yields the records of one input with the reader its format needs.

    Raises:
      DataError: a structural problem that stops reading (unreadable file,
        missing column); row-level problems are records with a `problem`.
    """
    if source.format == "folder":
        if not source.path.is_dir():
            raise DataError(f"{source.path}: data.format=folder needs a directory of class folders.")
        return read_folder(source.path, config.fallback_encoding, ignored)
    if source.format in ("csv", "tsv"):
        return read_delimited(source.path, config, "," if source.format == "csv" else "\t")
    if source.format == "jsonl":
        return read_jsonl(source.path, config)
    if source.format == "tfrecord":
        return read_tfrecord(source.path, config)
    return read_text_lines(source.path, config)


def read_records(path: str | Path, config: DataConfig, ignored: list[str] | None = None) -> Iterator[Record]:
    """Yields the records of a file, directory or glob (as `textserve train --data` takes it).

    Raises:
      DataError: the path does not exist or its format cannot be told.
    """
    path = Path(path)
    if not glob.has_magic(str(path)) and not path.exists():
        raise DataError(f"{path}: no such file or directory (pass --data PATH).")
    for source in resolve_inputs([path], config.format):
        yield from read_input(source, config, ignored)


def count_records(source: InputFile, config: DataConfig) -> int:
    """Counts the records `read_input` will yield, reading the whole input.

    This is also the start-of-run check of batch scoring: it raises on
    anything that would stop a run later (unreadable or truncated file,
    corrupted gzip, CSV header without the configured columns, corrupted
    TFRecord framing).

    Raises:
      DataError: naming the file and what to do.
    """
    path = source.path
    try:
        if source.format == "folder":
            return sum(
                1
                for entry in path.iterdir()
                if entry.is_dir() and not entry.name.startswith(".")
                for p in entry.rglob("*")
                if p.is_file() and not p.name.startswith(".")
            )
        if source.format == "text":
            with open_binary(path) as handle:
                return sum(1 for _ in handle)
        if source.format == "jsonl":
            with open_text(path) as handle:
                return sum(1 for line in handle if line.strip())
        if source.format in ("csv", "tsv"):
            delimiter = "," if source.format == "csv" else "\t"
            next(iter(read_delimited(path, config, delimiter)), None)  # checks the columns
            with open_text(path) as handle:
                rows = sum(1 for row in csv.reader(handle, delimiter=delimiter) if row)
            return max(rows - (1 if config.header else 0), 0)
    except (OSError, EOFError, UnicodeError) as error:
        raise DataError(f"{path}: cannot read the input ({error}); fix or remove the file.") from error
    import tensorflow as tf

    compression = "GZIP" if path.suffix == ".gz" else ""
    try:
        return int(
            tf.data.TFRecordDataset(str(path), compression_type=compression).reduce(
                np.int64(0), lambda n, _: n + 1
            )
        )
    except tf.errors.OpError as error:  # DataLossError on corrupted framing or gzip
        raise DataError(
            f"{path}: cannot read the TFRecord file ({error.message}); fix or remove it."
        ) from error
