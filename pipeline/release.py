"""Releasing a trained run into a TF Serving model base path: gate, publish, lineage.

    textserve push runs/bbc --model-base-path models/bbc_news
    textserve models list models/bbc_news
    textserve models rollback models/bbc_news --to 1
    textserve models label models/bbc_news --model-config serving/configs/models.config \\
        --label canary --version 2

What a model base path holds (PATH is a local directory or any `tf.io.gfile`
URL: `gs://`, `s3://` with tensorflow-io, `hdfs://`):

    PATH/1/, PATH/2/, ...             versions; TF Serving loads children named by a number
    PATH/release_log.jsonl            one JSON record per push or rollback
    PATH/.push.lock                   held while a push picks its version number
    PATH/.tmp-push-HOST-PID-HEX/      a version being copied

TF Serving only looks at children whose whole name is an integer, so the log,
the lock and the staging directories are invisible to it.

A push, in order:

1. Load the candidate (`RUN/export/<highest>`) and the run's config; re-read
   the data recorded in its model card, check the fingerprint, and cut the
   run's test split from `splits.json`.
2. Evaluate the candidate and the latest version in PATH on that split, in
   this process, and apply `release.min_accuracy`, `release.min_macro_f1` and
   `release.max_regression` (`--force --reason` overrides; both are logged).
3. Infra validation (pipeline/infra_validation.py): serve the candidate on
   loopback and compare its gRPC and REST answers with in-process predictions.
4. Publish under the lock: number = 1 + the largest number ever used in PATH
   (directories and log), then make the version appear in one step.
5. Append the record to the release log, still under the lock.

How a version appears in one step depends on the filesystem:

* Local disks and HDFS rename a directory atomically. The version is copied to
  `.tmp-push-...` and renamed to its number; a poller sees nothing or all of it.
  The rename fails rather than replacing an existing directory.
* Object stores (`gs://`, `s3://`, anything else) have no directory rename:
  gfile would copy object by object. There the files are written straight
  to `PATH/N/` with every file first and `saved_model.pb` last. TF Serving can
  list `N/` before it is complete. A load that runs before `saved_model.pb`
  arrives fails ("SavedModel not found"), and TF Serving retries it
  (`--max_num_load_retries`, default 5, one minute apart), so the version loads
  once the copy is done. A push killed mid-copy leaves `N/` without
  `saved_model.pb`; the next push removes it when it breaks that push's stale
  lock. Object stores also lack an exclusive create, so the lock there is
  write-then-read-back: it keeps pushes a few seconds apart from colliding.
  It does not protect against two pushes started in the same instant. Run
  pushes to a bucket from one CI job at a time.

Each version also carries its own record in
`N/assets.extra/release_record.json`. If a push is killed between the rename
and the log append, the next push finds that file and adds the record.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import re
import secrets
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf
from google.protobuf import message as protobuf_message
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.config import model_server_config_pb2

from model.export import ExportedModel, resolve_version_dir
from pipeline.config import PipelineConfig, ReleaseConfig
from pipeline.data import Dataset, ingest
from pipeline.errors import DataError, GateRefused, ReleaseError
from pipeline.evaluate import evaluate_export
from preprocessing import names

RELEASE_LOG = "release_log.jsonl"
LOCK_FILE = ".push.lock"
STAGING_PREFIX = ".tmp-push-"
RECORD_FILE = "release_record.json"  # inside <version>/assets.extra/

# A lock older than this is taken to belong to a dead push. The locked section
# (pick a number, rename, append one line) takes well under a second locally;
# on an object store it includes the upload.
_STALE_LOCK_S = 15 * 60
_LOCK_POLL_S = 0.2
_REMOTE_LOCK_SETTLE_S = 1.0
# Filesystems whose directory rename is atomic (see the module docstring).
_ATOMIC_RENAME_SCHEMES = ("", "file", "hdfs", "viewfs")
_LABEL_PATTERN = re.compile(r"^[A-Za-z0-9_]+$")


# --- Paths on any filesystem ---------------------------------------------------------------


def _scheme(path: str) -> str:
    return path.split("://", 1)[0] if "://" in path else ""


def normalize_base_path(path: str | Path) -> str:
    """Makes a local base path absolute (as TF Serving needs); URLs are kept as given."""
    path = str(path)
    if path.startswith("file://"):
        path = path[len("file://") :]
    if "://" in path:
        return path.rstrip("/")
    return os.path.abspath(path)


def has_atomic_rename(base_path: str) -> bool:
    """True where a directory rename is atomic (local disk, HDFS), so staging + rename is used."""
    return _scheme(base_path) in _ATOMIC_RENAME_SCHEMES


def _join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts) if "://" in base else os.path.join(base, *parts)


def _parse_version(name: str) -> int | None:
    """The version a child name stands for, as TF Serving reads it (`00007` → 7), else None."""
    name = name.rstrip("/")
    return int(name) if name.isdigit() and len(name) <= 18 else None


def version_dirs(base_path: str) -> dict[int, str]:
    """Every child of `base_path` that TF Serving would take for a version: number → path."""
    if not tf.io.gfile.isdir(base_path):
        return {}
    found = {}
    for child in tf.io.gfile.listdir(base_path):
        version = _parse_version(child)
        if version is not None:
            found[version] = _join(base_path, child.rstrip("/"))
    return dict(sorted(found.items()))


def is_complete(version_path: str) -> bool:
    """A version is complete once its saved_model.pb exists (written last on object stores)."""
    return tf.io.gfile.exists(_join(version_path, "saved_model.pb"))


def copy_plan(source_dir: str) -> tuple[list[str], list[str]]:
    """The directories and files of a SavedModel, in the order a push writes them.

    Returns:
      `(directories, files)` relative to `source_dir`; files are sorted with the
      top-level `saved_model.pb` last, so that on an object store a version is
      loadable only once everything else is in place.
    """
    directories, files = [], []
    for root, subdirs, filenames in tf.io.gfile.walk(source_dir):
        relative_root = (
            os.path.relpath(root, source_dir)
            if "://" not in source_dir
            else root[len(source_dir) :].strip("/")
        )
        relative_root = "" if relative_root == "." else relative_root
        directories += [posixpath.join(relative_root, d.rstrip("/")) for d in subdirs]
        files += [posixpath.join(relative_root, f) for f in filenames]
    if "://" in source_dir:
        # Filesystems that list by name prefix (TF's ram://) report `assets/.extra`
        # for `assets.extra/...`; keep only files that are there.
        files = [f for f in files if tf.io.gfile.exists(_join(source_dir, f))]
    files.sort(key=lambda f: (f == "saved_model.pb", f))
    return sorted(directories), files


def _copy_version(source_dir: str, dest_dir: str, extra_files: dict[str, bytes] | None = None) -> None:
    """Copies a SavedModel directory file by file, in `copy_plan` order; never overwrites."""
    directories, files = copy_plan(source_dir)
    tf.io.gfile.makedirs(dest_dir)
    for directory in directories:
        tf.io.gfile.makedirs(_join(dest_dir, directory))
    extra_files = dict(extra_files or {})
    for relative in files:
        if relative == "saved_model.pb":
            # Extra files (the release record) must also precede saved_model.pb.
            for extra, content in extra_files.items():
                tf.io.gfile.makedirs(posixpath.dirname(_join(dest_dir, extra)))
                with tf.io.gfile.GFile(_join(dest_dir, extra), "wb") as handle:
                    handle.write(content)
            extra_files = {}
        tf.io.gfile.copy(_join(source_dir, relative), _join(dest_dir, relative), overwrite=False)


def _remove_tree(path: str) -> None:
    if tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)


# --- The release log -------------------------------------------------------------------------


def read_release_log(base_path: str) -> tuple[list[dict], list[str]]:
    """Reads `release_log.jsonl`.

    Returns:
      The records in file order, and one problem message per line that is not
      a JSON object (naming file and line), so callers can show them.
    """
    path = _join(base_path, RELEASE_LOG)
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


def _append_record(base_path: str, record: dict) -> None:
    # One write of one line: local files open with O_APPEND, so the line lands whole.
    with tf.io.gfile.GFile(_join(base_path, RELEASE_LOG), "a") as handle:
        handle.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")


def _read_version_record(version_path: str) -> dict | None:
    path = _join(version_path, names.ASSETS_EXTRA, RECORD_FILE)
    if not tf.io.gfile.exists(path):
        return None
    try:
        with tf.io.gfile.GFile(path, "r") as handle:
            return json.loads(handle.read())
    except (json.JSONDecodeError, tf.errors.OpError):
        return None


def _reconcile_log(base_path: str, log: Callable[[str], None]) -> None:
    """Adds the records of versions published by a push that died before its log append."""
    records, _ = read_release_log(base_path)
    logged = {record["version"] for record in records}
    for version, path in version_dirs(base_path).items():
        if version in logged or not is_complete(path):
            continue
        record = _read_version_record(path)
        if record is not None and record.get("version") == version:
            _append_record(
                base_path,
                {**record, "recovered": "published by an interrupted push; record restored from the version"},
            )
            log(f"release log: restored the record of version {version} (its push ended before logging)")


# --- The push lock ---------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PushLock:
    """Serialises the short section of a push that picks a number and publishes it.

    Locally the lock file is created with O_EXCL, so exactly one process holds it.
    On object stores it is written and read back (see the module docstring).
    A lock whose holder is dead (same host, no such pid) or older than 15
    minutes is broken, and a version it left without saved_model.pb is removed.

    Args:
      base_path: the model base path.
      timeout_s: how long to wait for another push before giving up.
      log: where messages about waiting and stale locks go.
    """

    def __init__(self, base_path: str, timeout_s: float, log: Callable[[str], None]):
        self.path = _join(base_path, LOCK_FILE)
        self.base_path = base_path
        self.timeout_s = timeout_s
        self.log = log
        self.token = secrets.token_hex(8)
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": self.token}

    def __enter__(self) -> PushLock:
        deadline = time.monotonic() + self.timeout_s
        announced = False
        while not self._try_acquire():
            holder = self._read_holder()
            if holder is not None and self._is_stale(holder):
                self._break(holder)
                continue
            if time.monotonic() > deadline:
                raise ReleaseError(
                    f"another push holds {self.path} ({holder}); waited {self.timeout_s:.0f}s. "
                    f"Retry when it has finished; if no push is running, delete the file.",
                    exit_code=1,
                )
            if not announced:
                self.log(f"waiting for another push to {self.base_path} ({holder}) ...")
                announced = True
            time.sleep(_LOCK_POLL_S)
        return self

    def __exit__(self, *exc) -> None:
        holder = self._read_holder()
        if holder is not None and holder.get("token") == self.token:
            if tf.io.gfile.exists(self.path + ".version"):
                tf.io.gfile.remove(self.path + ".version")
            tf.io.gfile.remove(self.path)

    def note_version(self, version: int) -> None:
        """Records the version being written, so a stale lock can have its partial version removed.

        A file of its own: rewriting the lock file would leave a window in which
        it is gone (and TF's ram:// filesystem appends on rewrite).
        """
        with tf.io.gfile.GFile(self.path + ".version", "wb") as handle:
            handle.write(json.dumps({"token": self.token, "version": version}).encode("utf-8"))

    def _try_acquire(self) -> bool:
        payload = {**self.owner, "time": time.time()}
        if not tf.io.gfile.exists(self.path):
            try:
                self._write(payload)
            except FileExistsError:
                return False
            holder = self._read_holder()
            return holder is not None and holder.get("token") == self.token
        return False

    def _write(self, payload: dict) -> None:
        content = json.dumps(payload).encode("utf-8")
        if "://" not in self.path:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
            return
        with tf.io.gfile.GFile(self.path, "wb") as handle:
            handle.write(content)
        # Give a concurrent writer's object time to land before `_try_acquire` reads back.
        time.sleep(_REMOTE_LOCK_SETTLE_S)

    def _read_holder(self) -> dict | None:
        try:
            with tf.io.gfile.GFile(self.path, "rb") as handle:
                return json.loads(handle.read() or b"{}")
        except (tf.errors.NotFoundError, json.JSONDecodeError):
            return None

    def _is_stale(self, holder: dict) -> bool:
        on_this_host = holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int)
        if on_this_host and not _pid_alive(holder["pid"]):
            return True
        return time.time() - float(holder.get("time", 0)) > _STALE_LOCK_S

    def _break(self, holder: dict) -> None:
        # Only one breaker wins the rename; the others find the lock gone and retry.
        aside = f"{self.path}.stale-{self.token}"
        try:
            tf.io.gfile.rename(self.path, aside)
        except tf.errors.OpError:
            return
        tf.io.gfile.remove(aside)
        self.log(f"removed the stale lock of a push that is no longer running ({holder})")
        try:
            with tf.io.gfile.GFile(self.path + ".version", "rb") as handle:
                writing = json.loads(handle.read())
        except (tf.errors.NotFoundError, json.JSONDecodeError):
            return
        tf.io.gfile.remove(self.path + ".version")
        version = writing.get("version") if writing.get("token") == holder.get("token") else None
        if isinstance(version, int):
            partial = _join(self.base_path, str(version))
            if tf.io.gfile.isdir(partial) and not is_complete(partial):
                _remove_tree(partial)
                self.log(f"removed {partial}: that push died before writing its saved_model.pb")


# --- Staging directories --------------------------------------------------------------------


def _staging_name() -> str:
    host = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())
    return f"{STAGING_PREFIX}{host}-{os.getpid()}-{secrets.token_hex(4)}"


def _remove_dead_staging(base_path: str, log: Callable[[str], None]) -> None:
    """Deletes staging directories left by killed pushes on this host."""
    host = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())
    for child in tf.io.gfile.listdir(base_path):
        child = child.rstrip("/")
        match = re.fullmatch(re.escape(STAGING_PREFIX) + r"(.+)-(\d+)-[0-9a-f]+", child)
        if match and match.group(1) == host and not _pid_alive(int(match.group(2))):
            _remove_tree(_join(base_path, child))
            log(f"removed {child}: left by an interrupted push (pid {match.group(2)})")


def _prepare_base_path(base_path: str, log: Callable[[str], None]) -> str:
    """Creates the base path if needed and a staging directory in it; fails early when not writable.

    Returns:
      The staging directory (removed again by the caller).
    """
    staging = _join(base_path, _staging_name())
    try:
        tf.io.gfile.makedirs(base_path)
        _remove_dead_staging(base_path, log)
        tf.io.gfile.makedirs(staging)
        # Object stores have no real directories: prove write access with a file.
        with tf.io.gfile.GFile(_join(staging, ".probe"), "wb") as handle:
            handle.write(b"")
        tf.io.gfile.remove(_join(staging, ".probe"))
    except (tf.errors.OpError, OSError) as error:
        raise ReleaseError(
            f"cannot write to the model base path {base_path}: {getattr(error, 'message', error)}. "
            f"Pass a --model-base-path this user can create files in."
        ) from error
    return staging


def _next_version(base_path: str) -> int:
    """1 + the largest version number ever used in PATH (directories and log), so no number is reused."""
    used = set(version_dirs(base_path))
    used |= {
        record["version"] for record in read_release_log(base_path)[0] if isinstance(record["version"], int)
    }
    return max(used, default=0) + 1


def _publish(
    source_dir: str,
    base_path: str,
    staging: str,
    record: dict,
    lock_timeout_s: float,
    log: Callable[[str], None],
) -> tuple[int, dict]:
    """Copies a version into PATH under a new number and logs it; see the module docstring.

    Returns:
      The version number and the record as logged.
    """
    atomic = has_atomic_rename(base_path)
    if atomic:
        _copy_version(source_dir, _join(staging, "version"))
    with PushLock(base_path, lock_timeout_s, log) as lock:
        _reconcile_log(base_path, log)
        version = _next_version(base_path)
        target = _join(base_path, str(version))
        if tf.io.gfile.exists(target):  # cannot happen with cooperating pushes; never overwrite
            raise ReleaseError(f"{target} already exists; refusing to overwrite a version.", exit_code=1)
        record = {
            **record,
            "version": version,
            "path": target,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        record_bytes = (json.dumps(record, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        record_path = posixpath.join(names.ASSETS_EXTRA, RECORD_FILE)
        if atomic:
            staged = _join(staging, "version")
            with tf.io.gfile.GFile(_join(staged, record_path), "wb") as handle:
                handle.write(record_bytes)
            try:
                tf.io.gfile.rename(staged, target, overwrite=False)
            except tf.errors.OpError as error:
                raise ReleaseError(
                    f"could not move the new version into place at {target}: {error.message}", exit_code=1
                ) from error
        else:
            lock.note_version(version)
            _copy_version(source_dir, target, {record_path: record_bytes})
        _append_record(base_path, record)
    return version, record


# --- Candidate, test split, gate -------------------------------------------------------------


@dataclass
class Candidate:
    """A run's exported version, loaded, with the context the gate needs.

    Attributes:
      run_dir: the run directory.
      version_dir: `RUN/export/<version>`.
      model: the loaded SavedModel.
      card: its `assets.extra/model_card.json`.
    """

    run_dir: Path
    version_dir: Path
    model: ExportedModel
    card: dict


def _load_model(version_dir: Path, what: str) -> ExportedModel:
    pb_path = version_dir / "saved_model.pb"
    try:
        saved_model_pb2.SavedModel.FromString(pb_path.read_bytes())
    except (OSError, protobuf_message.DecodeError) as error:
        raise ReleaseError(
            f"{what}: {pb_path} is not a readable SavedModel ({error}). "
            f"Re-export it (textserve train) instead of pushing it."
        ) from error
    try:
        return ExportedModel(version_dir)
    except (tf.errors.OpError, ValueError, OSError, KeyError) as error:
        message = getattr(error, "message", None) or str(error)
        raise ReleaseError(
            f"{what}: {version_dir} does not load as a SavedModel: {message.splitlines()[0]}. "
            f"Re-export it (textserve train) instead of pushing it."
        ) from error


def load_candidate(run_dir: str | Path) -> Candidate:
    """Loads the highest exported version of a run.

    Raises:
      ReleaseError: the run has no export, or the export does not load.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReleaseError(f"{run_dir}: no such run directory.")
    try:
        version_dir = resolve_version_dir(run_dir / "export")
    except FileNotFoundError:
        raise ReleaseError(
            f"{run_dir} has no export: expected {run_dir / 'export'}/<version>/saved_model.pb. "
            f"Train first (textserve train --out {run_dir}), or pass the run directory that holds export/."
        ) from None
    model = _load_model(version_dir, "candidate")
    if not model.card:
        raise ReleaseError(
            f"{version_dir}/{names.ASSETS_EXTRA}/{names.MODEL_CARD_FILE} is missing: "
            f"without it the push has no lineage. Export with textserve train."
        )
    return Candidate(run_dir, version_dir, model, model.card)


def load_test_split(
    candidate: Candidate, config: PipelineConfig, data_path: str | Path | None = None
) -> Dataset:
    """Re-reads the run's data and cuts the test documents listed in its splits.json.

    Args:
      candidate: the loaded candidate (its model card names the data).
      config: the run's config (its `data` section says how to read the data).
      data_path: where the data is now, when it has moved since training.

    Raises:
      ReleaseError: the data is missing or changed (fingerprint), or the split names unknown ids.
    """
    source = Path(data_path or candidate.card.get("data", {}).get("source", ""))
    splits_file = candidate.run_dir / "splits.json"
    if not splits_file.is_file():
        raise ReleaseError(f"{splits_file} is missing: the gate needs the run's test split.")
    if not source.exists():
        raise ReleaseError(
            f"the run's data {source} (model card data.source) is not there; "
            f"pass --data PATH to where it is now."
        )
    try:
        dataset = ingest(source, config.data)
    except DataError as error:
        raise ReleaseError(f"cannot re-read the run's data: {error}") from error
    expected = candidate.card.get("data", {}).get("fingerprint")
    if expected and dataset.report["fingerprint"] != expected:
        raise ReleaseError(
            f"the data at {source} changed since training (fingerprint {dataset.report['fingerprint'][:12]} "
            f"!= {expected[:12]} in the model card), so the run's test split cannot be rebuilt; "
            f"pass --data PATH with the data the run was trained on."
        )
    test_ids = json.loads(splits_file.read_text("utf-8"))["test"]
    try:
        return dataset.subset(test_ids)
    except KeyError as error:
        raise ReleaseError(f"{splits_file}: test id {error} is not in {source}.") from None


@dataclass(frozen=True)
class Comparison:
    """Candidate against baseline on the same test split, and the gate's verdict.

    Attributes:
      candidate: metrics of the candidate.
      baseline: metrics of the latest served version, or None for an empty PATH.
      baseline_version: its number.
      thresholds: the release section of the config.
      failures: one sentence per failed check; empty when the gate passes.
    """

    candidate: dict
    baseline: dict | None
    baseline_version: int | None
    thresholds: ReleaseConfig
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures


def compare(
    candidate: dict, baseline: dict | None, baseline_version: int | None, thresholds: ReleaseConfig
) -> Comparison:
    """Applies the absolute floors and the allowed regression against the baseline."""
    failures = []
    for metric, floor in (("accuracy", thresholds.min_accuracy), ("macro_f1", thresholds.min_macro_f1)):
        if candidate[metric] < floor:
            failures.append(f"{metric} {candidate[metric]:.4f} is below release.min_{metric} {floor:.4f}")
        if baseline is not None and candidate[metric] < baseline[metric] - thresholds.max_regression:
            failures.append(
                f"{metric} {candidate[metric]:.4f} is more than release.max_regression "
                f"{thresholds.max_regression:.4f} below version {baseline_version}'s {baseline[metric]:.4f}"
            )
    return Comparison(candidate, baseline, baseline_version, thresholds, tuple(failures))


def format_comparison(comparison: Comparison, candidate_name: str) -> str:
    """The side-by-side table the push prints: headline metrics, per-class F1, the bar to meet."""
    baseline_name = (
        f"version {comparison.baseline_version}" if comparison.baseline is not None else "(nothing served)"
    )
    t = comparison.thresholds
    rows = [("metric", candidate_name, baseline_name, "required")]
    for metric, floor in (("accuracy", t.min_accuracy), ("macro_f1", t.min_macro_f1)):
        required = f">= {floor:.4f}"
        if comparison.baseline is not None:
            required += f" and >= {comparison.baseline[metric] - t.max_regression:.4f}"
        rows.append(
            (
                metric,
                f"{comparison.candidate[metric]:.4f}",
                f"{comparison.baseline[metric]:.4f}" if comparison.baseline else "-",
                required,
            )
        )
    classes = list(comparison.candidate["per_class"])
    if comparison.baseline is not None:
        classes += [c for c in comparison.baseline["per_class"] if c not in classes]
    for label in classes:
        cand = comparison.candidate["per_class"].get(label)
        base = comparison.baseline["per_class"].get(label) if comparison.baseline else None
        rows.append(
            (f"  F1 {label}", f"{cand['f1']:.4f}" if cand else "-", f"{base['f1']:.4f}" if base else "-", "")
        )
    rows.append(
        (
            "documents",
            str(comparison.candidate["count"]),
            str(comparison.baseline["count"]) if comparison.baseline else "-",
            "",
        )
    )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    verdict = (
        ["gate: PASS"] if comparison.passed else ["gate: FAIL", *(f"  - {f}" for f in comparison.failures)]
    )
    return "\n".join(lines + verdict)


def latest_complete_version(base_path: str) -> tuple[int, str] | None:
    """The highest version in PATH that has its saved_model.pb (what `latest` serves)."""
    complete = [(v, p) for v, p in version_dirs(base_path).items() if is_complete(p)]
    return complete[-1] if complete else None


def _local_copy(version_path: str, scratch: Path) -> Path:
    """A local directory holding the version (itself when local; downloaded from a bucket)."""
    if "://" not in version_path:
        return Path(version_path)
    destination = scratch / posixpath.basename(version_path.rstrip("/"))
    _copy_version(version_path, str(destination))
    return destination


# --- Push -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushOptions:
    """How one push runs; built by the command line.

    Attributes:
      force: push even if the gate refuses.
      reason: why (required with `force` or without infra validation); logged.
      data_path: the run's data when it has moved since training.
      infra_validation: the server command to validate with, or None to skip.
      infra_timeout_s: how long the server may take to load the candidate.
      infra_sample: test documents sent to the server.
      lock_timeout_s: how long to wait for a concurrent push.
    """

    force: bool = False
    reason: str | None = None
    data_path: str | None = None
    infra_validation: tuple[str, ...] | None = None
    infra_timeout_s: float = 300.0
    infra_sample: int = 32
    lock_timeout_s: float = 120.0


@dataclass(frozen=True)
class PushResult:
    """A published version: its number, where it is, and its release record."""

    version: int
    path: str
    record: dict
    comparison: Comparison


def push(
    run_dir: str | Path,
    base_path: str | Path,
    config: PipelineConfig,
    options: PushOptions,
    *,
    log: Callable[[str], None] = print,
) -> PushResult:
    """Gates, validates and publishes a run's export as the next version under `base_path`.

    Args:
      run_dir: the run directory (`RUN/export/<version>/` is the candidate).
      base_path: the model base path TF Serving polls (local or gfile URL).
      config: the run's config (from RUN/config.toml, with `release.*` overrides).
      options: force/reason, infra validation and timeouts.
      log: where progress lines go.

    Returns:
      The new version and its release record.

    Raises:
      GateRefused: the candidate fails the gate and `force` is off (exit 1).
      pipeline.infra_validation.InfraValidationError: the served candidate
        does not answer like the in-process one (exit 1).
      ReleaseError: unusable run, model, data or base path (exit 2), or a
        concurrent push that does not finish in time (exit 1).
    """
    from pipeline.infra_validation import validate

    if (options.force or options.infra_validation is None) and not (options.reason or "").strip():
        raise ReleaseError(
            "--force and --skip-infra-validation need --reason TEXT; it goes into the release log."
        )
    base_path = normalize_base_path(base_path)
    candidate = load_candidate(run_dir)
    log(f"candidate: {candidate.version_dir}")
    staging = _prepare_base_path(base_path, log)
    scratch = tempfile.TemporaryDirectory(prefix="textserve-push-")
    try:
        test = load_test_split(candidate, config, options.data_path)
        log(
            f"test split: {len(test.ids)} documents from {options.data_path or candidate.card['data']['source']}"
        )
        candidate_metrics = evaluate_export(candidate.model, test)
        baseline_metrics, baseline_version = None, None
        latest = latest_complete_version(base_path)
        if latest is not None:
            baseline_version = latest[0]
            baseline_model = _load_model(
                _local_copy(latest[1], Path(scratch.name)), f"served version {baseline_version}"
            )
            baseline_metrics = evaluate_export(baseline_model, test)
            del baseline_model
        comparison = compare(candidate_metrics, baseline_metrics, baseline_version, config.release)
        table = format_comparison(comparison, f"candidate ({candidate.run_dir.name})")
        if not comparison.passed and not options.force:
            raise GateRefused(
                f"the gate refused {candidate.version_dir}:\n{table}\n"
                f"Improve the model, or push anyway with --force --reason TEXT.",
                comparison,
            )
        log(table if comparison.passed else table + f"\nforced: {options.reason}")

        infra = {"skipped": True, "reason": options.reason}
        if options.infra_validation is not None:
            result = validate(
                candidate.version_dir,
                candidate.model,
                test.texts[: options.infra_sample],
                candidate.card.get("model_name", config.export.model_name),
                server_command=options.infra_validation,
                scratch_dir=Path(scratch.name) / "infra",
                tolerance=config.export.verify_tolerance,
                timeout_s=options.infra_timeout_s,
            )
            infra = dataclasses.asdict(result)
            log(f"infra validation: {result.summary()}")

        record = _release_record(candidate, comparison, infra, options, config)
        version, record = _publish(
            str(candidate.version_dir), base_path, staging, record, options.lock_timeout_s, log
        )
    finally:
        _remove_tree(staging)
        scratch.cleanup()
    log(f"pushed {candidate.version_dir} as version {version}: {record['path']}")
    return PushResult(version, record["path"], record, comparison)


def _headline(metrics: dict | None) -> dict | None:
    if metrics is None:
        return None
    return {
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "count": metrics["count"],
        "per_class_f1": {label: values["f1"] for label, values in metrics["per_class"].items()},
    }


def _release_record(
    candidate: Candidate, comparison: Comparison, infra: dict, options: PushOptions, config: PipelineConfig
) -> dict:
    card = candidate.card
    return {
        "action": "push",
        "model_name": card.get("model_name", config.export.model_name),
        "run_dir": str(candidate.run_dir.resolve()),
        "source": str(candidate.version_dir.resolve()),
        "data": {
            "source": str(options.data_path or card.get("data", {}).get("source")),
            "fingerprint": card.get("data", {}).get("fingerprint"),
        },
        "config_hash": card.get("config_hash"),
        "metrics": {
            "candidate": _headline(comparison.candidate),
            "baseline": _headline(comparison.baseline),
            "baseline_version": comparison.baseline_version,
        },
        "gate": {
            "passed": comparison.passed,
            "failures": list(comparison.failures),
            "thresholds": dataclasses.asdict(comparison.thresholds),
        },
        "forced": bool(options.force and not comparison.passed),
        "reason": options.reason,
        "infra_validation": infra,
        "git_commit": card.get("git_commit"),
        "tensorflow_version": card.get("tensorflow_version"),
        "pushed_with_tensorflow": tf.__version__,
        "pushed_by": {"host": socket.gethostname(), "pid": os.getpid()},
    }


# --- Rollback, list ---------------------------------------------------------------------------


def rollback(
    base_path: str | Path,
    to_version: int,
    *,
    reason: str | None = None,
    lock_timeout_s: float = 120.0,
    log: Callable[[str], None] = print,
) -> tuple[int, dict]:
    """Serves version N again by re-publishing it as a new, highest version.

    A new number is picked up by every version policy (`latest` included) and
    by TF Serving's poller, without touching the server's config.

    Returns:
      The new version number and its release record.

    Raises:
      ReleaseError: N does not exist or is incomplete, or PATH is not writable.
    """
    base_path = normalize_base_path(base_path)
    versions = version_dirs(base_path)
    if to_version not in versions or not is_complete(versions[to_version]):
        available = [v for v, p in versions.items() if is_complete(p)]
        raise ReleaseError(f"{base_path} has no complete version {to_version}; versions there: {available}.")
    source = versions[to_version]
    try:
        saved_model_pb2.SavedModel.FromString(tf.io.gfile.GFile(_join(source, "saved_model.pb"), "rb").read())
    except protobuf_message.DecodeError as error:
        raise ReleaseError(
            f"{source}/saved_model.pb is corrupt ({error}); roll back to another version."
        ) from error
    records, _ = read_release_log(base_path)
    origin = next((r for r in reversed(records) if r.get("version") == to_version), None)
    origin = origin or _read_version_record(source) or {}
    staging = _prepare_base_path(base_path, log)
    try:
        record = {
            key: origin.get(key)
            for key in (
                "model_name",
                "run_dir",
                "source",
                "data",
                "config_hash",
                "metrics",
                "git_commit",
                "tensorflow_version",
            )
        }
        record.update(
            action="rollback",
            rollback_of=to_version,
            reason=reason,
            forced=False,
            pushed_by={"host": socket.gethostname(), "pid": os.getpid()},
        )
        version, record = _publish(source, base_path, staging, record, lock_timeout_s, log)
    finally:
        _remove_tree(staging)
    log(f"rolled back: version {to_version} re-published as version {version}")
    return version, record


@dataclass(frozen=True)
class VersionInfo:
    """One version directory in PATH and what the release log says about it."""

    version: int
    path: str
    complete: bool
    record: dict | None


def list_versions(base_path: str | Path) -> tuple[list[VersionInfo], list[str]]:
    """Versions in PATH, newest first, with their release records.

    Returns:
      The versions and notes: unreadable log lines, staging directories
      (pushes in progress or killed), logged versions whose directory is gone.
    """
    base_path = normalize_base_path(base_path)
    if not tf.io.gfile.isdir(base_path):
        raise ReleaseError(f"{base_path}: no such model base path.")
    records, notes = read_release_log(base_path)
    by_version = {record["version"]: record for record in records}
    dirs = version_dirs(base_path)
    infos = []
    for version, path in sorted(dirs.items(), reverse=True):
        record = by_version.get(version) or _read_version_record(path)
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
    """The `textserve models list` table."""
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


# --- Version labels (canary) -----------------------------------------------------------------


@dataclass(frozen=True)
class LabelResult:
    """What `label_version` changed in the ModelServerConfig."""

    model_name: str
    label: str
    version: int
    versions_served: tuple[int, ...]
    messages: tuple[str, ...]


def _served_versions(policy, available: list[int]) -> set[int]:
    """Which versions a TF Serving version policy loads from the complete versions in PATH."""
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return set(available)
    if kind == "specific":
        return set(policy.specific.versions)
    count = max(policy.latest.num_versions, 1) if kind == "latest" else 1
    return set(sorted(available)[-count:])


def _header_comments(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines).rstrip() + "\n" if any(line.strip() for line in lines) else ""


def label_version(
    base_path: str | Path,
    model_config_file: str | Path,
    label: str,
    version: int,
    model_name: str | None = None,
) -> LabelResult:
    """Points a version label at a version in a text-format ModelServerConfig file.

    If the config's version policy would not load that version, the policy
    becomes `specific { versions: ... }` with every version it served, every
    labelled version and this one. TF Serving moves a label only to a loaded
    version, and a version outside the policy never loads.

    Args:
      base_path: the model base path (the version must exist there, complete).
      model_config_file: the ModelServerConfig file (rewritten in place, its
        leading comment block kept; comments inside the message are not kept).
      label: `[A-Za-z0-9_]+`, e.g. canary or stable.
      version: the version the label names.
      model_name: which config entry, when the file lists several models.

    Raises:
      ReleaseError: unreadable config, unknown model, bad label or missing version.
    """
    base_path = normalize_base_path(base_path)
    if not _LABEL_PATTERN.match(label):
        raise ReleaseError(f"label {label!r} must match [A-Za-z0-9_]+ (TF Serving's URL form).")
    path = Path(model_config_file)
    try:
        text = path.read_text("utf-8")
        server_config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except (OSError, text_format.ParseError) as error:
        raise ReleaseError(f"cannot read {path} as a ModelServerConfig: {error}") from error
    entries = list(server_config.model_config_list.config)
    if model_name is not None:
        entries = [entry for entry in entries if entry.name == model_name]
    if len(entries) != 1:
        listed = [entry.name for entry in server_config.model_config_list.config]
        raise ReleaseError(
            f"{path}: pick the model with --model-name; models there: {listed}."
            if model_name is None or not entries
            else f"{path}: several entries named {model_name!r}."
        )
    entry = entries[0]
    complete = [v for v, p in version_dirs(base_path).items() if is_complete(p)]
    if version not in complete:
        raise ReleaseError(
            f"{base_path} has no complete version {version}; versions there: {complete}. "
            f"Push it first (textserve push)."
        )
    messages = []
    served = _served_versions(entry.model_version_policy, complete)
    labelled = {v for key, v in entry.version_labels.items() if key != label}
    if version not in served or not labelled <= served:
        wanted = sorted(served | labelled | {version})
        entry.model_version_policy.Clear()
        entry.model_version_policy.specific.versions.extend(wanted)
        messages.append(
            f"version policy is now specific {{ versions: {wanted} }}: the old policy did not load version "
            f"{version}. A server assigns a label only to a version that is AVAILABLE, so it refuses this "
            f"config until {version} has loaded (unless it runs with "
            f"--allow_version_labels_for_unavailable_models and the label is new); apply it once more "
            f"after the version is up if the first reload is refused."
        )
        served = set(wanted)
    entry.version_labels[label] = version
    content = _header_comments(text) + text_format.MessageToString(server_config)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(content, "utf-8")
    os.replace(tmp, path)
    messages.append(
        f"{path}: {entry.name} label {label!r} -> version {version}; versions served: {sorted(served)}"
    )
    return LabelResult(entry.name, label, version, tuple(sorted(served)), tuple(messages))
