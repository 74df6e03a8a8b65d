"""Parquet: row groups read as Arrow record batches, only the configured columns.

Rows are numbered from 1 through the file (`line` in the errors file is that
row number, and derived ids are `file:row`); a problem names the row group
too. A text column that is not a string column stops reading with its type; a
file without it stops with the columns the file has.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import DataError
from pipeline.readers.blocks import Columns, derived_ids, given_or_derived, join_text, vector_block

_BATCH_ROWS = 8192


def _is_text(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


class ParquetReader:
    """Reads one Parquet file into blocks.

    Args:
      path: the file.
      columns: the columns to read (by name, or 0-based position in the schema).

    Raises:
      DataError: the file is not Parquet, or lacks a required column, or its
        text column does not hold strings.
    """

    def __init__(self, path: Path, columns: Columns):
        self.path = path
        try:
            self.file = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as error:
            raise DataError(f"{path}: not a readable Parquet file ({error}); fix or remove it.") from error
        schema = self.file.schema_arrow
        names = schema.names

        def name_of(column: str | int | None, required: bool) -> str | None:
            if column is None:
                return None
            if isinstance(column, int):
                if column < len(names):
                    return names[column]
                if not required:
                    return None
                raise DataError(f"{path}: column index {column} is out of range; the file has {names}.")
            if column in names:
                return column
            if not required:
                return None
            raise DataError(f"{path}: column {column!r} not found; the file has columns {names}.")

        self.text = [name for name in (name_of(c, True) for c in columns.text) if name is not None]
        for name in self.text:
            kind = schema.field(name).type
            if not _is_text(kind):
                raise DataError(
                    f"{path}: text column {name!r} holds {kind}, not strings; point data.text_column "
                    f"(--text-column) at a string column."
                )
        self.label = name_of(columns.label, columns.label_required)
        self.id = name_of(columns.id, columns.id_required)

    @property
    def num_rows(self) -> int:
        """Rows in the file (from its footer; nothing is read)."""
        return self.file.metadata.num_rows

    def blocks(self) -> Iterator[pa.RecordBatch]:
        """Yields blocks of up to 8,192 rows, row group by row group."""
        wanted = list(dict.fromkeys(n for n in (*self.text, self.label, self.id) if n is not None))
        row = 1
        for group in range(self.file.num_row_groups):
            for batch in self.file.iter_batches(batch_size=_BATCH_ROWS, row_groups=[group], columns=wanted):
                yield self._block(batch, row, group)
                row += batch.num_rows

    def _block(self, batch: pa.RecordBatch, first_row: int, group: int) -> pa.RecordBatch:
        def column(name: str) -> pa.Array:
            values = batch.column(name)
            if pa.types.is_dictionary(values.type):
                values = values.dictionary_decode()
            return values if values.type == pa.string() else pc.cast(values, pa.string())

        lines = np.arange(first_row, first_row + batch.num_rows, dtype=np.int64)
        texts = [column(name) for name in self.text]
        nulls = pc.is_null(texts[0])
        for more in texts[1:]:
            nulls = pc.and_(nulls, pc.is_null(more))
        problems = pc.if_else(
            nulls, pa.scalar(f"text is null (row group {group})", pa.string()), pa.scalar(None, pa.string())
        )
        joined = join_text([pc.fill_null(t, "") for t in texts]) if len(texts) > 1 else texts[0]
        ids = given_or_derived(
            column(self.id) if self.id else None, derived_ids(self.path.name, lines), strip=False
        )
        labels = column(self.label) if self.label else None
        if labels is not None:
            labels = pc.if_else(pc.equal(labels, ""), pa.scalar(None, pa.string()), labels)
        return vector_block(str(self.path), ids, joined, labels, lines, problems)
