"""What every reader produces: record blocks with one schema, and the helpers that build them.

A block is a `pyarrow.RecordBatch` of `BLOCK_SCHEMA`, one row per physical
record in input order. Readers fill `problem` for a record they cannot turn
into a document (malformed line, missing or non-string text, undecodable
bytes) and never decide policy: training turns problems into errors, scoring
into rows of its errors file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import DataConfig
from pipeline.errors import DataError

BLOCK_SCHEMA = pa.schema(
    [
        ("id", pa.string()),  # given, or derived from file and line; never null
        ("text", pa.string()),  # "" when `problem` is set
        ("label", pa.string()),  # null when the input has none
        ("source", pa.string()),  # the file
        ("line", pa.int64()),  # 1-based line where the record starts (row / record number elsewhere)
        ("problem", pa.string()),  # why the record is unusable; null when it is fine
        ("fallback", pa.string()),  # the encoding used when the bytes were not UTF-8; else null
    ]
)

NOT_UTF8 = (
    "text is not valid UTF-8 (set --fallback-encoding / data.fallback_encoding, e.g. latin-1, to decode it)"
)


@dataclass(frozen=True)
class Columns:
    """The columns (keys, features) a reader takes, as configured.

    Attributes:
      text: names or 0-based indices of the text; several are joined by a space.
      label: the label column, or None for none.
      label_required: a file without the label column is an error (else it has no labels).
      id: the id column, or None to always derive ids.
      id_required: a file without the id column is an error (else ids are derived).
    """

    text: tuple[str | int, ...]
    label: str | int | None
    label_required: bool
    id: str | int | None
    id_required: bool

    @classmethod
    def from_config(cls, config: DataConfig, *, labels_required: bool) -> Columns:
        """The columns of `config`; the default label and id columns are used only where present.

        Args:
          config: the [data] section.
          labels_required: training needs a label column in every file that has a header.
        """
        label = None if config.label_column == "" else config.label_column
        id_column = None if config.id_column == "" else config.id_column
        return cls(
            text=tuple(config.text_column),
            label=label,
            label_required=label is not None and (labels_required or label != DataConfig.label_column),
            id=id_column,
            id_required=id_column is not None and id_column != DataConfig.id_column,
        )


def named_position(
    column: str | int, names: Sequence[str] | None, path: Path, *, required: bool, where: str = "header"
) -> int | None:
    """The 0-based position of a column given by name or index, or None when optional and absent.

    Raises:
      DataError: a required column that is not there (the message lists what is).
    """
    if isinstance(column, int):
        return column
    if names is None:
        if not required:
            return None
        raise DataError(
            f"{path}:1: column {column!r} given by name but the file is read without a "
            f"header; set data.header=true or give a 0-based index."
        )
    if column in names:
        return list(names).index(column)
    if not required:
        return None
    raise DataError(f"{path}:1: column {column!r} not found; the {where} has {list(names)}.")


def rows_block(
    source: str,
    ids: Sequence[str],
    texts: Sequence[str | None],
    labels: Sequence[str | None],
    lines: Sequence[int],
    problems: Sequence[str | None],
    fallbacks: Sequence[str | None],
) -> pa.RecordBatch:
    """A block from per-row Python values (the per-line path and the small formats)."""
    return pa.RecordBatch.from_arrays(
        [
            pa.array(ids, pa.string()),
            pa.array(
                [t if p is None and t is not None else "" for t, p in zip(texts, problems)], pa.string()
            ),
            pa.array(labels, pa.string()),
            pa.array([source] * len(ids), pa.string()),
            pa.array(lines, pa.int64()),
            pa.array(problems, pa.string()),
            pa.array(fallbacks, pa.string()),
        ],
        schema=BLOCK_SCHEMA,
    )


def derived_ids(name: str, lines: np.ndarray) -> pa.Array:
    """`name:line` for every row, computed as one Arrow operation."""
    return pc.binary_join_element_wise(name + ":", pc.cast(pa.array(lines, pa.int64()), pa.string()), "")


def given_or_derived(given: pa.Array | None, derived: pa.Array, *, strip: bool) -> pa.Array:
    """Ids: the given column where it is non-empty (after stripping, for CSV), else the derived ones."""
    if given is None:
        return derived
    if given.type != pa.string():
        given = pc.cast(given, pa.string())
    if strip:
        given = pc.utf8_trim_whitespace(given)
    usable = pc.and_kleene(pc.is_valid(given), pc.not_equal(pc.fill_null(given, ""), ""))
    return pc.if_else(pc.fill_null(usable, False), given, derived)


def vector_block(
    source: str,
    ids: pa.Array,
    texts: pa.Array,
    labels: pa.Array | None,
    lines: np.ndarray,
    problems: pa.Array | None = None,
) -> pa.RecordBatch:
    """A block from Arrow columns (the fast paths): every row's text was valid UTF-8."""
    n = len(ids)
    if labels is None:
        labels = pa.nulls(n, pa.string())
    elif labels.type != pa.string():
        labels = pc.cast(labels, pa.string())
    if problems is None:
        problems = pa.nulls(n, pa.string())
    texts = pc.if_else(pc.is_null(problems), pc.fill_null(texts, ""), "")
    return pa.RecordBatch.from_arrays(
        [
            ids,
            texts,
            labels,
            pa.repeat(pa.scalar(source, pa.string()), n),
            pa.array(lines, pa.int64()),
            problems,
            pa.nulls(n, pa.string()),
        ],
        schema=BLOCK_SCHEMA,
    )


def decode_bytes(raw: bytes, fallback_encoding: str) -> tuple[str | None, str | None]:
    """UTF-8 (a BOM is dropped), else the fallback encoding; returns (text, encoding used or None).

    With no fallback encoding, undecodable bytes give (None, None): the caller reports NOT_UTF8.
    """
    try:
        return raw.decode("utf-8-sig"), None
    except UnicodeDecodeError:
        if not fallback_encoding:
            return None, None
        return raw.decode(fallback_encoding, errors="replace"), fallback_encoding


def join_text(parts: Sequence[pa.Array]) -> pa.Array:
    """Several text columns joined by one space (one column is returned as it is)."""
    if len(parts) == 1:
        return parts[0]
    return pc.binary_join_element_wise(*parts, " ")
