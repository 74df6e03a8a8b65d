"""JSON Lines: Arrow's multithreaded JSON parser per chunk, one Python parse per line only where needed.

Fast path, per chunk of complete lines: `pyarrow.json.read_json` with an
explicit schema of just the configured keys (other keys are skipped, not
converted). It is taken only when its answer provably matches the per-line
rules: as many rows as non-blank lines, and no null text. Anything else in a
chunk (a line that is not JSON or not an object, a text that is a number or
null, a missing key, bytes that are not UTF-8) sends that chunk, and only that
chunk, through `_per_line`, which gives each line its own reason.

Ids and labels may be numbers in JSON (`"id": 7`); when Arrow finds one where
it expected a string, that key is read as an integer for the rest of the file
and turned into text, so numeric ids do not push every chunk to the slow path.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from pipeline.readers.blocks import (
    NOT_UTF8,
    Columns,
    derived_ids,
    given_or_derived,
    join_text,
    rows_block,
    vector_block,
)
from pipeline.readers.framing import Lines, line_frames, read_chunks

_JSON_KINDS = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}


def _kind(value: object) -> str:
    return _JSON_KINDS.get(type(value), "a number")


class JsonLinesReader:
    """Reads one JSON Lines file into blocks (see the module docstring).

    Args:
      path: the file (optionally .gz).
      columns: the keys to read.
      fallback_encoding: for lines that are not UTF-8 ("" = such a line is a problem).
    """

    def __init__(self, path: Path, columns: Columns, fallback_encoding: str):
        self.path = path
        self.columns = columns
        self.fallback_encoding = fallback_encoding
        self.text_keys = [str(k) for k in columns.text]
        self.label_key = None if columns.label is None else str(columns.label)
        self.id_key = None if columns.id is None else str(columns.id)
        # Arrow types of the id and label keys: string, switched to int64 when the file has numbers there.
        self.types = {key: pa.string() for key in (self.label_key, self.id_key) if key is not None}

    def blocks(self) -> Iterator[pa.RecordBatch]:
        """Yields one block per chunk of lines, in order."""
        for lines in line_frames(read_chunks(self.path)):
            rows = lines.nonblank()
            if len(rows):
                yield self._fast(lines, rows) or self._per_line(lines, rows)

    def _schema(self) -> pa.Schema:
        fields = {key: pa.string() for key in self.text_keys}
        fields.update(self.types)
        return pa.schema(list(fields.items()))

    def _fast(self, lines: Lines, rows: np.ndarray) -> pa.RecordBatch | None:
        table = None
        # Arrow parses blocks of this size on its threads; a line must fit in one block.
        block_size = max(1 << 20, int((lines.ends - lines.starts).max()) + 2)
        for _ in range(1 + len(self.types)):
            try:
                table = pa_json.read_json(
                    io.BytesIO(lines.data),
                    read_options=pa_json.ReadOptions(block_size=block_size),
                    parse_options=pa_json.ParseOptions(
                        explicit_schema=self._schema(), unexpected_field_behavior="ignore"
                    ),
                )
                break
            except pa.ArrowInvalid as error:
                if not self._widen(str(error)):
                    return None
            except (UnicodeDecodeError, pa.ArrowException):
                return None
        if table is None or table.num_rows != len(rows):
            return None
        texts = [table.column(key).combine_chunks() for key in self.text_keys]
        if any(t.null_count for t in texts):
            return None  # missing or null text: the per-line path says which
        line_numbers = lines.first + rows
        derived = derived_ids(self.path.name, line_numbers)
        ids = given_or_derived(
            table.column(self.id_key).combine_chunks() if self.id_key else None, derived, strip=False
        )
        labels = None
        if self.label_key is not None:
            labels = table.column(self.label_key).combine_chunks()
            if labels.type != pa.string():
                labels = pc.cast(labels, pa.string())
            labels = pc.if_else(pc.equal(labels, ""), pa.scalar(None, pa.string()), labels)
        return vector_block(str(self.path), ids, join_text(texts), labels, line_numbers)

    def _widen(self, message: str) -> bool:
        """Reads a key as integers after Arrow found a number where a string was expected."""
        for key, kind in self.types.items():
            if kind == pa.string() and f"Column(/{key}) changed from string to number" in message:
                self.types[key] = pa.int64()
                return True
        return False

    def _per_line(self, lines: Lines, rows: np.ndarray) -> pa.RecordBatch:
        ids, texts, labels, numbers, problems, fallbacks = [], [], [], [], [], []
        for i in rows:
            number = lines.first + int(i)
            raw = lines.data[lines.starts[i] : lines.ends[i]]
            text, label, doc_id, problem, fallback = self._parse_line(raw)
            ids.append(doc_id or f"{self.path.name}:{number}")
            texts.append(text)
            labels.append(label)
            numbers.append(number)
            problems.append(problem)
            fallbacks.append(fallback)
        return rows_block(str(self.path), ids, texts, labels, numbers, problems, fallbacks)

    def _parse_line(self, raw: bytes) -> tuple[str | None, str | None, str | None, str | None, str | None]:
        """One line → (text, label, id, problem, fallback encoding)."""
        fallback = None
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                if not self.fallback_encoding:
                    return None, None, None, NOT_UTF8, None
                fallback = self.fallback_encoding
                try:
                    obj = orjson.loads(raw.decode(fallback, errors="replace"))
                except orjson.JSONDecodeError as again:
                    return None, None, None, f"malformed JSON: {again.msg}", fallback
            else:
                return None, None, None, f"malformed JSON: {error.msg}", None
        if not isinstance(obj, dict):
            return None, None, None, f"line is not a JSON object (it is {_kind(obj)})", fallback
        missing = [k for k in self.text_keys if k not in obj]
        if missing:
            return None, None, None, f"missing key(s) {missing}", fallback
        parts = [obj[k] for k in self.text_keys]
        wrong = [(k, v) for k, v in zip(self.text_keys, parts) if v is not None and not isinstance(v, str)]
        if wrong:
            key, value = wrong[0]
            return None, None, None, f"text key {key!r} is {_kind(value)}, not a string", fallback
        if all(p is None for p in parts):
            return None, None, None, f"text key {self.text_keys[0]!r} is null", fallback
        text = " ".join(p for p in parts if p is not None)
        doc_id = label = None
        if self.id_key is not None and obj.get(self.id_key) not in (None, ""):
            doc_id = str(obj[self.id_key])
        if self.label_key is not None and obj.get(self.label_key) not in (None, ""):
            label = str(obj[self.label_key])
        return text, label, doc_id, None, fallback
