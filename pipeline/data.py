"""Labelled documents for training and evaluation: validated and deduplicated (splits: pipeline/splits.py).

The formats themselves are read by `pipeline/readers.py`, the same readers
batch scoring uses. `ingest` applies training's policy on top of them: a
record with a structural problem (short row, malformed JSON line, unreadable
file) is an error that names file and line; empty texts, missing labels and
duplicates are dropped with a full account in `data_report.json`.

Nothing here tokenises: the duplicate key only folds whitespace and case.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import DataConfig
from pipeline.errors import DataError
from pipeline.readers import Record, read_folder, read_records

# Re-exported: callers that read documents for other purposes (benchmarks) import them from here.
__all__ = ["DataConfig", "Dataset", "Record", "ingest", "read_folder", "read_records"]


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


def normalized_content(text: str) -> str:
    """The text with whitespace runs folded to one space and case folded.

    Two documents are duplicates when these agree; the content-hash splits
    (`pipeline/splits.py`) hash the same form, so duplicates always share a split.
    """
    return " ".join(text.split()).casefold()


def ingest(path: str | Path, config: DataConfig, *, deduplicate: bool = True) -> Dataset:
    """Reads, validates and deduplicates labelled documents for training or evaluation.

    Args:
      path: a class-folder directory, a file of any format `pipeline/readers`
        reads (optionally .gz), or a quoted glob.
      config: how to read it; `on_label_conflict` says what one text under
        two labels does: stop (`error`), drop every copy (`drop`) or keep the
        first label (`keep_first`). Both places are listed in the report.
      deduplicate: drop exact duplicates (after whitespace and case folding);
        training does this before splitting so no test document leaks into
        training.

    Returns:
      The kept documents with a report of what was read and dropped.

    Raises:
      DataError: a structural problem (unreadable file, missing column, bad
        JSON line, short row, unterminated quote), a repeated id, or (with
        `on_label_conflict = "error"`) one text under two labels; the message
        names the file and line of each place.
    """
    ignored: list[str] = []
    report: dict = {
        "source": str(path),
        "records_read": 0,
        "ignored_files": ignored,
        "decoded_with_fallback": [],
        "empty_text": [],
        "missing_label": [],
        "duplicates": [],
        "label_conflicts": [],
    }
    candidates = _labelled_records(read_records(path, config, ignored), report)
    groups: dict[str, list[Record]] = {}
    for record in candidates:
        groups.setdefault(normalized_content(record.text or ""), []).append(record)
    conflicted = {key for key, copies in groups.items() if len({r.label for r in copies}) > 1}
    if conflicted and config.on_label_conflict == "error":
        raise DataError(_conflict_message(candidates, groups, conflicted))
    for key in conflicted:
        copies = groups[key]
        report["label_conflicts"].append(
            {
                "resolution": "dropped every copy"
                if config.on_label_conflict == "drop"
                else "kept the first label",
                "label_kept": None if config.on_label_conflict == "drop" else copies[0].label,
                "places": [{"id": r.id, "label": r.label, "where": f"{r.source}:{r.line}"} for r in copies],
            }
        )

    kept = Dataset([], [], [], report)
    conflict_drops = 0
    for record in candidates:
        key = normalized_content(record.text or "")
        first = groups[key][0]
        if key in conflicted and (config.on_label_conflict == "drop" or record.label != first.label):
            conflict_drops += 1
            continue
        if record is not first and deduplicate:
            report["duplicates"].append(
                {"kept": first.id, "dropped": record.id, "where": f"{record.source}:{record.line}"}
            )
            continue
        kept.ids.append(record.id)
        kept.texts.append(record.text or "")
        kept.labels.append(record.label or "")
    if not kept.ids:
        raise DataError(f"{path}: no usable labelled documents (read {report['records_read']} records).")
    by_reason = {
        "empty_text": len(report["empty_text"]),
        "missing_label": len(report["missing_label"]),
        "duplicate": len(report["duplicates"]),
        "label_conflict": conflict_drops,
    }
    dropped = sum(by_reason.values())
    report.update(
        records_kept=len(kept.ids),
        records_dropped=dropped,
        dropped_by_reason=by_reason,
        classes=dict(sorted(Counter(kept.labels).items())),
        fingerprint=kept.fingerprint(),
    )
    assert report["records_read"] == len(kept.ids) + dropped  # nothing lost silently
    return kept


def _labelled_records(records: Iterator[Record], report: dict) -> list[Record]:
    """The records with a text and a label, in order; the rest are counted in `report`.

    Raises:
      DataError: a record with a problem, or an id used twice.
    """
    seen_ids: dict[str, Record] = {}
    usable = []
    for record in records:
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
        elif record.label is None:
            report["missing_label"].append({"id": record.id, "where": where})
        else:
            usable.append(record)
    return usable


def _conflict_message(candidates: list[Record], groups: dict[str, list[Record]], conflicted: set[str]) -> str:
    """The first text (in input order) found under a second label, with both places."""
    for record in candidates:
        key = normalized_content(record.text or "")
        original = groups[key][0]
        if key in conflicted and record.label != original.label:
            break
    return (
        f"the same text has two labels: {original.label!r} at {original.source}:{original.line} "
        f"and {record.label!r} at {record.source}:{record.line} ({len(conflicted)} such text(s) in all); "
        f"fix the data, or pass --set data.on_label_conflict=drop (drop every copy) or "
        f"--set data.on_label_conflict=keep_first (keep the first label)."
    )


def write_json(path: Path, payload: dict) -> None:
    """Writes JSON atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", "utf-8")
    os.replace(tmp, path)
