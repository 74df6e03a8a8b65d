"""The release log: `PATH/release_log.jsonl`, one JSON record per push or rollback.

Each version also carries its own record in
`N/assets.extra/release_record.json`. If a push is killed between making its
version appear and logging it, the next push finds that file and adds the
record (`reconcile_log`).

The log is rewritten whole with `store.write_atomic` on every append, so a
push interrupted while writing it leaves the previous, valid JSON Lines file
(an append in place could leave half a line that the next append would glue
onto). The log is small: one line per release.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import tensorflow as tf

from pipeline.release.store import RECORD_FILE, RELEASE_LOG, join, write_atomic
from preprocessing import names


def read_release_log(base_path: str) -> tuple[list[dict], list[str]]:
    """Reads `release_log.jsonl`.

    Args:
      base_path: the model base path.

    Returns:
      The records in file order, and one problem message per line that is not
      a JSON object (naming file and line), so callers can show them.
    """
    path = join(base_path, RELEASE_LOG)
    if not tf.io.gfile.exists(path):
        return [], []
    records, problems = [], []
    with tf.io.gfile.GFile(path, "r") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                problems.append(f"{path}:{number}: not JSON ({error.msg}); line ignored")
                continue
            if not isinstance(record, dict) or "version" not in record:
                problems.append(f"{path}:{number}: not a release record; line ignored")
                continue
            records.append(record)
    return records, problems


def append_record(base_path: str, record: dict) -> None:
    """Adds one record to the log, replacing the file atomically (see the module docstring).

    Args:
      base_path: the model base path.
      record: a JSON-serialisable release record with a `version`.
    """
    path = join(base_path, RELEASE_LOG)
    existing = b""
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path, "rb") as handle:
            existing = handle.read()
    if existing and not existing.endswith(b"\n"):
        existing += b"\n"  # a line torn by an older, non-atomic writer stays on its own line
    line = json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"
    write_atomic(path, existing + line.encode("utf-8"))


def read_version_record(version_path: str) -> dict | None:
    """The record a version carries in `assets.extra/release_record.json`, or None."""
    path = join(version_path, names.ASSETS_EXTRA, RECORD_FILE)
    if not tf.io.gfile.exists(path):
        return None
    try:
        with tf.io.gfile.GFile(path, "r") as handle:
            return json.loads(handle.read())
    except (json.JSONDecodeError, tf.errors.OpError):
        return None


def reconcile_log(base_path: str, versions: dict[int, str], log: Callable[[str], None]) -> None:
    """Adds the records of versions published by a push that died before its log append.

    Args:
      base_path: the model base path.
      versions: its complete versions, number → path.
      log: where a message about each restored record goes.
    """
    records, _ = read_release_log(base_path)
    logged = {record["version"] for record in records}
    for version, path in versions.items():
        if version in logged:
            continue
        record = read_version_record(path)
        if record is not None and record.get("version") == version:
            append_record(
                base_path,
                {**record, "recovered": "published by an interrupted push; record restored from the version"},
            )
            log(f"release log: restored the record of version {version} (its push ended before logging)")
