"""Paths and files on any filesystem a model base path can live on.

A model base path is a local directory or any `tf.io.gfile` URL (`gs://`,
`s3://` with tensorflow-io, `hdfs://`). What it holds:

    PATH/1/, PATH/2/, ...             versions; TF Serving loads children named by a number
    PATH/release_log.jsonl            one JSON record per push or rollback
    PATH/.push.lock                   held while a push picks its version number
    PATH/.tmp-push-HOST-PID-HEX/      a version being copied

TF Serving only looks at children whose whole name is an integer, so the log,
the lock and the staging directories are invisible to it.

Local disks and HDFS rename a directory atomically; object stores have no
directory rename (gfile would copy object by object), so a push there writes
the files in `copy_plan` order instead (see pipeline/release/push.py).
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import tensorflow as tf

RELEASE_LOG = "release_log.jsonl"
LOCK_FILE = ".push.lock"
STAGING_PREFIX = ".tmp-push-"
RECORD_FILE = "release_record.json"  # inside <version>/assets.extra/

# Filesystems whose directory rename is atomic.
_ATOMIC_RENAME_SCHEMES = ("", "file", "hdfs", "viewfs")


def scheme(path: str) -> str:
    """The URL scheme of a path (`gs`, `s3`, ...), or "" for a local path."""
    return path.split("://", 1)[0] if "://" in path else ""


def is_remote(path: str) -> bool:
    """True for a gfile URL (`gs://...`), False for a local path."""
    return "://" in path


def normalize_base_path(path: str | Path) -> str:
    """Makes a local base path absolute (as TF Serving needs); URLs are kept as given."""
    path = str(path)
    if path.startswith("file://"):
        path = path[len("file://") :]
    if is_remote(path):
        return path.rstrip("/")
    return os.path.abspath(path)


def has_atomic_rename(base_path: str) -> bool:
    """True where a directory rename is atomic (local disk, HDFS), so staging + rename is used."""
    return scheme(base_path) in _ATOMIC_RENAME_SCHEMES


def join(base: str, *parts: str) -> str:
    """Joins path parts with `/` for URLs and the OS separator for local paths."""
    return posixpath.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


def remove_tree(path: str) -> None:
    """Deletes a directory tree if it exists."""
    if tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)


def write_atomic(path: str | Path, content: bytes) -> None:
    """Replaces a file so that readers see the old content or the new one, never a torn mix.

    Locally the bytes go to a temporary sibling that is renamed over `path`
    (a rename within one directory is atomic). On object stores the bytes go
    to a temporary object that is then copied over `path` by the store in one
    request, which replaces the object whole.

    Args:
      path: the file to write (local path or gfile URL).
      content: its new bytes.
    """
    path = str(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    if is_remote(path):
        with tf.io.gfile.GFile(tmp, "wb") as handle:
            handle.write(content)
        tf.io.gfile.rename(tmp, path, overwrite=True)
        return
    try:
        with open(tmp, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def copy_plan(source_dir: str) -> tuple[list[str], list[str]]:
    """The directories and files of a SavedModel, in the order a push writes them.

    Args:
      source_dir: a SavedModel directory (local or gfile URL).

    Returns:
      `(directories, files)` relative to `source_dir`; files are sorted with the
      top-level `saved_model.pb` last, so that on an object store a version is
      loadable only once everything else is in place.
    """
    directories, files = [], []
    for root, subdirs, filenames in tf.io.gfile.walk(source_dir):
        relative_root = (
            os.path.relpath(root, source_dir)
            if not is_remote(source_dir)
            else root[len(source_dir) :].strip("/")
        )
        relative_root = "" if relative_root == "." else relative_root
        directories += [posixpath.join(relative_root, d.rstrip("/")) for d in subdirs]
        files += [posixpath.join(relative_root, f) for f in filenames]
    if is_remote(source_dir):
        # Filesystems that list by name prefix (TF's ram://) report `assets/.extra`
        # for `assets.extra/...`; keep only files that are there.
        files = [f for f in files if tf.io.gfile.exists(join(source_dir, f))]
    files.sort(key=lambda f: (f == "saved_model.pb", f))
    return sorted(directories), files


def copy_version(source_dir: str, dest_dir: str, extra_files: dict[str, bytes] | None = None) -> None:
    """Copies a SavedModel directory file by file, in `copy_plan` order; never overwrites.

    Args:
      source_dir: the SavedModel to copy.
      dest_dir: where it goes (created).
      extra_files: more files to write, relative path → bytes; they are written
        before `saved_model.pb` too.
    """
    directories, files = copy_plan(source_dir)
    tf.io.gfile.makedirs(dest_dir)
    for directory in directories:
        tf.io.gfile.makedirs(join(dest_dir, directory))
    pending = dict(extra_files or {})
    for relative in files:
        if relative == "saved_model.pb":
            for extra, content in pending.items():
                tf.io.gfile.makedirs(posixpath.dirname(join(dest_dir, extra)))
                with tf.io.gfile.GFile(join(dest_dir, extra), "wb") as handle:
                    handle.write(content)
            pending = {}
        tf.io.gfile.copy(join(source_dir, relative), join(dest_dir, relative), overwrite=False)


def local_copy(version_path: str, scratch: Path) -> Path:
    """A local directory holding the version: itself when local, else downloaded into `scratch`."""
    if not is_remote(version_path):
        return Path(version_path)
    destination = scratch / posixpath.basename(version_path.rstrip("/"))
    copy_version(version_path, str(destination))
    return destination
