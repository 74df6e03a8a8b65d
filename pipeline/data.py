"""Reading labelled documents and validating them (splitting is in pipeline/splits.py).

Three layouts are read:

* a class-folder tree (`root/<label>/<doc>`), the BBC archive's layout; files
  at the top level (README.TXT) are ignored and listed in the report;
* CSV / TSV with a label column and one or more text columns, by name or
  0-based index, with or without a header, quoted multi-line fields allowed;
* JSON Lines with configurable keys.

Readers yield `Record`s and never decide policy: a record that cannot be used
carries a `problem`. Training (`ingest`) turns structural problems into errors
that name file and line, and drops empty texts, missing labels and duplicates
with a full account in `data_report.json`. Batch scoring reuses the readers
with its own policy (bad records go to an errors file).

Nothing here tokenises: the duplicate key only folds whitespace and case.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import DataConfig
from pipeline.errors import DataError

# csv's default field limit (128 KiB) is smaller than some real documents.
csv.field_size_limit(2**31 - 1)


@dataclass(frozen=True)
class Record:
    """One document as read, before any policy is applied.

    Attributes:
      id: stable document id (given, or `relative/path` / `file:line`).
      text: the document text, None when it could not be read.
      label: the class name, None when absent.
      source: the file the record came from.
      line: 1-based line where the record starts (1 for whole-file documents).
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


# --- Decoding ------------------------------------------------------------------


def _open_text(path: Path) -> io.TextIOBase:
    """Opens a (possibly gzipped) file as text; invalid UTF-8 survives as surrogates."""
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="")


def _repair(value: str, fallback_encoding: str) -> tuple[str, str | None]:
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


# --- Readers --------------------------------------------------------------------


def read_folder(root: Path, fallback_encoding: str, ignored: list[str] | None = None) -> Iterator[Record]:
    """Yields one record per file of a class-folder tree, in sorted order.

    Args:
      root: directory whose sub-directories are class names.
      fallback_encoding: used for files that are not valid UTF-8.
      ignored: if given, receives the top-level files that were skipped.
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
    with _open_text(path) as handle:
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
            text, encoding = _repair(" ".join(row[i] for i in text_idx), config.fallback_encoding)
            label = row[label_idx].strip() if label_idx is not None else None
            yield Record(doc_id, text, label or None, str(path), line, None, encoding)


def read_jsonl(
    path: Path, config: DataConfig, *, text_keys: Sequence[str | int] | None = None
) -> Iterator[Record]:
    """Yields one record per JSON Lines line; bad lines carry a `problem`."""
    text_keys = [str(k) for k in (text_keys if text_keys is not None else config.text_column)]
    with _open_text(path) as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            doc_id = f"{path.name}:{line_number}"
            line, encoding = _repair(line, config.fallback_encoding)
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


def detect_format(path: Path, configured: str) -> str:
    """Picks the reader: the configured format, or folder / by file extension."""
    if configured != "auto":
        return configured
    if path.is_dir():
        return "folder"
    name = path.name.lower().removesuffix(".gz")
    for ext, fmt in ((".csv", "csv"), (".tsv", "tsv"), (".jsonl", "jsonl"), (".json", "jsonl")):
        if name.endswith(ext):
            return fmt
    raise DataError(
        f"{path}: cannot tell the data format from the name; set data.format to one of "
        f"folder, csv, tsv, jsonl."
    )


def read_records(path: Path, config: DataConfig, ignored: list[str] | None = None) -> Iterator[Record]:
    """Yields the records of one input path with the reader its format needs."""
    if not path.exists():
        raise DataError(f"{path}: no such file or directory (pass --data PATH).")
    fmt = detect_format(path, config.format)
    if fmt == "folder":
        if not path.is_dir():
            raise DataError(f"{path}: data.format=folder needs a directory of class folders.")
        return read_folder(path, config.fallback_encoding, ignored)
    if fmt in ("csv", "tsv"):
        return read_delimited(path, config, "," if fmt == "csv" else "\t")
    return read_jsonl(path, config)


# --- Ingest for training ------------------------------------------------------------------


@dataclass
class Dataset:
    """Deduplicated, validated documents and the account of everything dropped."""

    ids: list[str]
    texts: list[str]
    labels: list[str]
    report: dict = field(default_factory=dict)

    @property
    def label_names(self) -> list[str]:
        return sorted(set(self.labels))

    def fingerprint(self) -> str:
        """SHA-256 over (id, label, text) of every kept document, in order."""
        digest = hashlib.sha256()
        for doc_id, label, text in zip(self.ids, self.labels, self.texts):
            for part in (doc_id, label, text):
                digest.update(part.encode("utf-8", "surrogatepass"))
                digest.update(b"\0")
        return digest.hexdigest()

    def subset(self, ids: Sequence[str]) -> Dataset:
        index = {doc_id: i for i, doc_id in enumerate(self.ids)}
        rows = [index[doc_id] for doc_id in ids]
        return Dataset(
            [self.ids[i] for i in rows], [self.texts[i] for i in rows], [self.labels[i] for i in rows]
        )


def _duplicate_key(text: str) -> str:
    return " ".join(text.split()).casefold()


def ingest(path: str | Path, config: DataConfig, *, deduplicate: bool = True) -> Dataset:
    """Reads, validates and deduplicates labelled documents for training or evaluation.

    Args:
      path: a class-folder directory or a CSV/TSV/JSONL file (optionally .gz).
      config: how to read it.
      deduplicate: drop exact duplicates (after whitespace and case folding);
        training does this before splitting so no test document leaks into
        training.

    Returns:
      The kept documents with a report of what was read and dropped.

    Raises:
      DataError: a structural problem (unreadable file, missing column, bad
        JSON line, short row), or one text under two labels; the message names
        the file and line of each place.
    """
    path = Path(path)
    ignored: list[str] = []
    report: dict = {
        "source": str(path),
        "records_read": 0,
        "ignored_files": ignored,
        "decoded_with_fallback": [],
        "empty_text": [],
        "missing_label": [],
        "duplicates": [],
    }
    kept = Dataset([], [], [], report)
    first_seen: dict[str, tuple[int, Record]] = {}
    seen_ids: dict[str, Record] = {}
    for record in read_records(path, config, ignored):
        report["records_read"] += 1
        where = f"{record.source}:{record.line}"
        if record.problem:
            raise DataError(f"{where}: {record.problem}.")
        if record.id in seen_ids:
            raise DataError(
                f"{where}: document id {record.id!r} was already used at "
                f"{seen_ids[record.id].source}:{seen_ids[record.id].line}; ids must be unique."
            )
        seen_ids[record.id] = record
        if record.fallback_encoding:
            report["decoded_with_fallback"].append(
                {
                    "id": record.id,
                    "where": where,
                    "encoding": record.fallback_encoding,
                    "reason": "not valid UTF-8",
                }
            )
        if not record.text or not record.text.strip():
            report["empty_text"].append({"id": record.id, "where": where})
            continue
        if record.label is None:
            report["missing_label"].append({"id": record.id, "where": where})
            continue
        key = _duplicate_key(record.text)
        if key in first_seen:
            _index, original = first_seen[key]
            if original.label != record.label:
                raise DataError(
                    f"the same text has two labels: {original.label!r} at {original.source}:{original.line} "
                    f"and {record.label!r} at {where}; fix one of them."
                )
            if deduplicate:
                report["duplicates"].append({"kept": original.id, "dropped": record.id, "where": where})
                continue
        else:
            first_seen[key] = (len(kept.ids), record)
        kept.ids.append(record.id)
        kept.texts.append(record.text)
        kept.labels.append(record.label)
    if not kept.ids:
        raise DataError(f"{path}: no usable labelled documents (read {report['records_read']} records).")
    dropped = len(report["empty_text"]) + len(report["missing_label"]) + len(report["duplicates"])
    report.update(
        records_kept=len(kept.ids),
        records_dropped=dropped,
        dropped_by_reason={
            "empty_text": len(report["empty_text"]),
            "missing_label": len(report["missing_label"]),
            "duplicate": len(report["duplicates"]),
        },
        classes=dict(sorted(Counter(kept.labels).items())),
        fingerprint=kept.fingerprint(),
    )
    assert report["records_read"] == len(kept.ids) + dropped  # nothing lost silently
    return kept


def write_json(path: Path, payload: dict) -> None:
    """Writes JSON atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", "utf-8")
    os.replace(tmp, path)
