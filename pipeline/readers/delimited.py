"""CSV / TSV: records cut with numpy (`framing.py`), fields parsed by Arrow's CSV parser.

The framing decides what a physical record is (quoted multi-line fields
included, unterminated quotes reported); Arrow parses each chunk of framed
records on its threads with every needed column typed as string. Its answer is
taken when it has one row per non-blank record; a chunk with a row of the
wrong width or bytes that are not UTF-8 is parsed record by record with
Python's `csv` instead, so each bad record gets its own reason.

The header (when `data.header`) is the first non-blank record. Columns are
resolved against it once; a required column that is missing stops reading
with the header's names in the message.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from pipeline.errors import DataError
from pipeline.readers.blocks import (
    NOT_UTF8,
    Columns,
    derived_ids,
    given_or_derived,
    join_text,
    named_position,
    rows_block,
    vector_block,
)
from pipeline.readers.framing import BadRecord, Records, csv_frames, read_chunks

# csv's default field limit (128 KiB) is smaller than some real documents.
csv.field_size_limit(2**31 - 1)


class DelimitedReader:
    """Reads one CSV/TSV file into blocks (see the module docstring).

    Args:
      path: the file (optionally .gz).
      columns: the columns to read.
      delimiter: "," or "\\t".
      header: the first record names the columns.
      fallback_encoding: for records that are not UTF-8 ("" = such a record is a problem).
      max_field_lines: longest quoted field, in lines, before it counts as unterminated.
    """

    def __init__(
        self,
        path: Path,
        columns: Columns,
        delimiter: str,
        *,
        header: bool,
        fallback_encoding: str,
        max_field_lines: int,
    ):
        self.path = path
        self.columns = columns
        self.delimiter = delimiter
        self.header = header
        self.fallback_encoding = fallback_encoding
        self.max_field_lines = max_field_lines
        self.width: int | None = None  # fields per row (from the header or the first record)
        self.names: list[str] | None = None  # the header's column names
        self.text_idx: list[int] = []
        self.label_idx: int | None = None
        self.id_idx: int | None = None

    def frames(self) -> Iterator[Records | BadRecord]:
        """The file's framed records, header included."""
        return csv_frames(read_chunks(self.path), self.delimiter, self.max_field_lines)

    def count(self) -> int:
        """Records `blocks` will yield (bad ones included), parsing only the header.

        Raises:
          DataError: the header lacks a configured column, or cannot be read.
        """
        total = 0
        pending_header = self.header
        for frame in self.frames():
            if isinstance(frame, BadRecord):
                if pending_header:
                    raise DataError(
                        f"{self.path}:{frame.line}: the header row is unreadable: {frame.reason}."
                    )
                total += 1
                continue
            rows = frame.nonblank()
            if pending_header and len(rows):
                self._read_header(frame, int(rows[0]))
                pending_header = False
                rows = rows[1:]
            total += len(rows)
        if pending_header:
            raise DataError(f"{self.path}:1: empty file, expected a header row.")
        return total

    def blocks(self) -> Iterator[pa.RecordBatch]:
        """Yields one block per chunk of framed records (and one per bad record), in order."""
        pending_header = self.header
        for frame in self.frames():
            if isinstance(frame, BadRecord):
                if pending_header:
                    raise DataError(
                        f"{self.path}:{frame.line}: the header row is unreadable: {frame.reason}."
                    )
                yield rows_block(
                    str(self.path),
                    [f"{self.path.name}:{frame.line}"],
                    [None],
                    [None],
                    [frame.line],
                    [frame.reason],
                    [None],
                )
                continue
            rows = frame.nonblank()
            if pending_header and len(rows):
                self._read_header(frame, int(rows[0]))
                pending_header = False
                rows = rows[1:]
            if len(rows):
                yield self._fast(frame, rows) or self._per_record(frame, rows)
        if pending_header:
            raise DataError(f"{self.path}:1: empty file, expected a header row.")

    def _fields(self, raw: bytes) -> list[str] | None:
        """One record's fields with Python's csv (undecodable bytes survive as surrogates)."""
        text = raw.decode("utf-8", errors="surrogateescape")
        parsed = list(csv.reader(io.StringIO(text, newline=""), delimiter=self.delimiter))
        return parsed[0] if len(parsed) == 1 else None

    def _read_header(self, frame: Records, index: int) -> None:
        raw = frame.data[frame.starts[index] : frame.ends[index]]
        fields = self._fields(raw)
        if fields is None:
            raise DataError(
                f"{self.path}:{frame.lines[index]}: the header row does not parse as one CSV row."
            )
        names = [f.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for f in fields]
        self._resolve(names, len(names))

    def _resolve(self, names: list[str] | None, width: int) -> None:
        self.width, self.names = width, names
        cols = self.columns
        positions = [named_position(c, names, self.path, required=True) for c in cols.text]
        self.text_idx = [p for p in positions if p is not None]
        self.label_idx = (
            named_position(cols.label, names, self.path, required=cols.label_required)
            if cols.label is not None
            else None
        )
        self.id_idx = (
            named_position(cols.id, names, self.path, required=cols.id_required)
            if cols.id is not None
            else None
        )

    def column_name(self, index: int | None) -> str | None:
        """How a resolved column is called in messages: its header name, or its index."""
        if index is None:
            return None
        return self.names[index] if self.names is not None and index < len(self.names) else str(index)

    def _needed(self) -> list[int]:
        return [i for i in [*self.text_idx, self.label_idx, self.id_idx] if i is not None]

    def _fast(self, frame: Records, rows: np.ndarray) -> pa.RecordBatch | None:
        if self.width is None:
            first = self._fields(frame.data[frame.starts[rows[0]] : frame.ends[rows[0]]])
            if first is None:
                return None
            self._resolve(None, len(first))
        assert self.width is not None
        if max(self._needed()) >= self.width:
            return None  # short rows: the per-record path reports each
        start = int(frame.starts[rows[0]])
        names = [f"c{i}" for i in range(self.width)]
        needed = sorted(set(self._needed()))
        try:
            table = pa_csv.read_csv(
                io.BytesIO(frame.data[start:]),
                read_options=pa_csv.ReadOptions(column_names=names, block_size=1 << 20),
                parse_options=pa_csv.ParseOptions(delimiter=self.delimiter, newlines_in_values=True),
                convert_options=pa_csv.ConvertOptions(
                    include_columns=[names[i] for i in needed],
                    column_types={names[i]: pa.string() for i in needed},
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
        except (pa.ArrowInvalid, UnicodeDecodeError):
            return None
        if table.num_rows != len(rows):
            return None
        column = {i: table.column(names[i]).combine_chunks() for i in needed}
        line_numbers = frame.lines[rows]
        derived = derived_ids(self.path.name, line_numbers)
        ids = given_or_derived(column[self.id_idx] if self.id_idx is not None else None, derived, strip=True)
        labels = None
        if self.label_idx is not None:
            labels = pc.utf8_trim_whitespace(column[self.label_idx])
            labels = pc.if_else(pc.equal(labels, ""), pa.scalar(None, pa.string()), labels)
        text = join_text([column[i] for i in self.text_idx])
        return vector_block(str(self.path), ids, text, labels, line_numbers)

    def _per_record(self, frame: Records, rows: np.ndarray) -> pa.RecordBatch:
        ids, texts, labels, numbers, problems, fallbacks = [], [], [], [], [], []
        needed = self._needed()
        for i in rows:
            number = int(frame.lines[i])
            doc_id, text, label, problem, fallback = f"{self.path.name}:{number}", None, None, None, None
            fields = self._fields(frame.data[frame.starts[i] : frame.ends[i]])
            if fields is None:
                problem = "the record does not parse as one CSV row"
            elif max(needed) >= len(fields):
                problem = f"row has {len(fields)} fields, column index {max(needed)} is missing"
            else:
                if self.id_idx is not None and fields[self.id_idx].strip():
                    doc_id = self._readable(fields[self.id_idx].strip())
                text, fallback, problem = self._decoded(" ".join(fields[j] for j in self.text_idx))
                if self.label_idx is not None:
                    label = self._readable(fields[self.label_idx].strip()) or None
            ids.append(doc_id)
            texts.append(text)
            labels.append(label)
            numbers.append(number)
            problems.append(problem)
            fallbacks.append(fallback)
        return rows_block(str(self.path), ids, texts, labels, numbers, problems, fallbacks)

    def _readable(self, value: str) -> str:
        """An id or label as valid text: the fallback encoding, else replacement characters."""
        raw = value.encode("utf-8", errors="surrogateescape")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode(self.fallback_encoding or "utf-8", errors="replace")

    def _decoded(self, value: str) -> tuple[str | None, str | None, str | None]:
        """A field that may hold surrogates → (text, fallback encoding used, problem)."""
        try:
            value.encode("utf-8")
            return value, None, None
        except UnicodeEncodeError:
            if not self.fallback_encoding:
                return None, None, NOT_UTF8
            raw = value.encode("utf-8", errors="surrogateescape")
            return raw.decode(self.fallback_encoding, errors="replace"), self.fallback_encoding, None
