"""The versions under a model base path, as TF Serving sees them, and `textserve models list`.

TF Serving loads every child of the base path whose whole name is a number
(`00007` is version 7) and ignores everything else. A version is complete once
its `saved_model.pb` exists; on object stores that file is written last.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from pipeline.errors import ReleaseError
from pipeline.release.log import read_release_log, read_version_record
from pipeline.release.store import STAGING_PREFIX, is_remote, join, normalize_base_path
from serving.model_repository import discover_versions


def parse_version(name: str) -> int | None:
    """The version a child name stands for, as TF Serving reads it (`00007` → 7), else None."""
    name = name.rstrip("/")
    return int(name) if name.isdigit() and len(name) <= 18 else None


def version_dirs(base_path: str) -> dict[int, str]:
    """Every child of `base_path` that TF Serving would take for a version: number → path.

    Local base paths are read with the server's own rule
    (`serving.model_repository.discover_versions`), complete or not, so that a
    push never reuses the number of a version still being written; gfile URLs
    (object stores, which the server module does not list) by the same rule here.
    """
    if not is_remote(base_path):
        return discover_versions(base_path, complete_only=False)
    if not tf.io.gfile.isdir(base_path):
        return {}
    found = {}
    for child in tf.io.gfile.listdir(base_path):
        version = parse_version(child)
        if version is not None:
            found[version] = join(base_path, child.rstrip("/"))
    return dict(sorted(found.items()))


def is_complete(version_path: str) -> bool:
    """A version is complete once its saved_model.pb exists (written last on object stores)."""
    return tf.io.gfile.exists(join(version_path, "saved_model.pb"))


def complete_versions(base_path: str) -> list[int]:
    """The numbers of the complete versions under `base_path`, ascending."""
    return [version for version, path in version_dirs(base_path).items() if is_complete(path)]


def latest_complete_version(base_path: str) -> tuple[int, str] | None:
    """The highest version in PATH that has its saved_model.pb (what `latest` serves)."""
    complete = [(v, p) for v, p in version_dirs(base_path).items() if is_complete(p)]
    return complete[-1] if complete else None


@dataclass(frozen=True)
class VersionInfo:
    """One version directory in PATH and what the release log says about it."""

    version: int
    path: str
    complete: bool
    record: dict | None


def list_versions(base_path: str | Path) -> tuple[list[VersionInfo], list[str]]:
    """Versions in PATH, newest first, with their release records.

    Args:
      base_path: the model base path.

    Returns:
      The versions and notes: unreadable log lines, staging directories
      (pushes in progress or killed), logged versions whose directory is gone.

    Raises:
      ReleaseError: PATH does not exist.
    """
    base_path = normalize_base_path(base_path)
    if not tf.io.gfile.isdir(base_path):
        raise ReleaseError(f"{base_path}: no such model base path.")
    records, notes = read_release_log(base_path)
    by_version = {record["version"]: record for record in records}
    dirs = version_dirs(base_path)
    infos = []
    for version, path in sorted(dirs.items(), reverse=True):
        record = by_version.get(version) or read_version_record(path)
        infos.append(VersionInfo(version, path, is_complete(path), record))
    for child in tf.io.gfile.listdir(base_path):
        if child.startswith(STAGING_PREFIX):
            notes.append(
                f"{child.rstrip('/')}: a push in progress, or left by one that was killed "
                f"(ignored by TF Serving; the next push on this host removes it)"
            )
    for version in sorted(set(by_version) - set(dirs)):
        notes.append(f"version {version} is in the release log but its directory is gone")
    return infos, notes


def format_versions(base_path: str, infos: list[VersionInfo], notes: list[str]) -> str:
    """The `textserve models list` table.

    Args:
      base_path: the model base path, for the header.
      infos: from `list_versions`.
      notes: from `list_versions`.

    Returns:
      The table, one version per row, with the notes below it.
    """
    latest = next((info.version for info in infos if info.complete), None)
    rows = [("version", "released (UTC)", "action", "accuracy", "macro-F1", "vs baseline", "run / note")]
    for info in infos:
        record = info.record or {}
        metrics = (record.get("metrics") or {}).get("candidate") or {}
        action = record.get("action", "?")
        if action == "rollback":
            action = f"rollback of {record.get('rollback_of')}"
        if record.get("forced"):
            action += " (forced)"
        baseline_version = (record.get("metrics") or {}).get("baseline_version")
        note = record.get("run_dir") or "no release record"
        if record.get("reason"):
            note += f"  reason: {record['reason']}"
        if not info.complete:
            note = "INCOMPLETE: no saved_model.pb (TF Serving cannot load it)"
        rows.append(
            (
                f"{info.version}{' *' if info.version == latest else ''}",
                record.get("time", "-"),
                action,
                f"{metrics['accuracy']:.4f}" if "accuracy" in metrics else "-",
                f"{metrics['macro_f1']:.4f}" if "macro_f1" in metrics else "-",
                f"v{baseline_version}" if baseline_version is not None else "-",
                note,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[-1]]) for row in rows]
    header = f"{base_path}: {len(infos)} version(s), newest first; * = what a `latest` policy serves"
    return "\n".join([header, *lines, *(f"note: {note}" for note in notes)])
