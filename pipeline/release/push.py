"""Publishing a version: staging, the version number, the one-step appearance, rollback.

A push, in order:

1. Load the candidate (`RUN/export/<highest>`) and re-read the run's data
   (pipeline/release/candidate.py).
2. The gate (pipeline/release/gate.py); `--force --reason` overrides it, logged.
3. Infra validation (pipeline/release/infra_validation.py): serve the
   candidate on loopback and compare its gRPC and REST answers with
   in-process predictions.
4. Publish under the lock: number = 1 + the largest number ever used in PATH
   (directories and log), then make the version appear in one step.
5. Append the record to the release log, still under the lock.

How a version appears in one step depends on the filesystem:

* Local disks and HDFS rename a directory atomically. The version is copied to
  `.tmp-push-...` and renamed to its number; a poller sees nothing or all of it.
  The rename fails rather than replacing an existing directory.
* Object stores (`gs://`, `s3://`, anything else) have no directory rename.
  There the files are written straight to `PATH/N/` with every file first and
  `saved_model.pb` last. TF Serving can list `N/` before it is complete; a load
  that runs before `saved_model.pb` arrives fails and TF Serving retries it
  (`--max_num_load_retries`, default 5, one minute apart). A push killed
  mid-copy leaves `N/` without `saved_model.pb`; the next push removes it when
  it breaks that push's stale lock.

A push that fails before publishing leaves PATH as it found it: a base path
it created is removed again when nothing else was put in it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import re
import secrets
import shlex
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf
from google.protobuf import message as protobuf_message
from tensorflow.core.protobuf import saved_model_pb2

from pipeline.config import PipelineConfig, ReleaseConfig
from pipeline.data import ingest
from pipeline.errors import EXIT_REFUSED, DataError, GateRefused, ReleaseError
from pipeline.release.candidate import Candidate, data_source, load_candidate, load_model, load_test_split
from pipeline.release.gate import Comparison, EvaluationSet, GateModel, format_comparison, run_gate
from pipeline.release.infra_validation import find_model_server, validate
from pipeline.release.lock import PushLock, pid_alive
from pipeline.release.log import append_record, read_release_log, read_version_record, reconcile_log
from pipeline.release.store import (
    RECORD_FILE,
    STAGING_PREFIX,
    copy_version,
    has_atomic_rename,
    join,
    local_copy,
    normalize_base_path,
    remove_tree,
)
from pipeline.release.versions import is_complete, latest_complete_version, version_dirs
from preprocessing import names


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())


def _staging_name() -> str:
    return f"{STAGING_PREFIX}{_host()}-{os.getpid()}-{secrets.token_hex(4)}"


def _remove_dead_staging(base_path: str, log: Callable[[str], None]) -> None:
    """Deletes staging directories left by killed pushes on this host."""
    for child in tf.io.gfile.listdir(base_path):
        child = child.rstrip("/")
        match = re.fullmatch(re.escape(STAGING_PREFIX) + r"(.+)-(\d+)-[0-9a-f]+", child)
        if match and match.group(1) == _host() and not pid_alive(int(match.group(2))):
            remove_tree(join(base_path, child))
            log(f"removed {child}: left by an interrupted push (pid {match.group(2)})")


class Staging:
    """The base path made ready for a publish, and a staging directory in it.

    Creates the base path if needed (remembering that it did) and a staging
    directory; fails early when PATH is not writable. `close()` removes the
    staging directory and, when the base path was created here and is still
    empty, the base path too, so a failed push leaves nothing behind.

    Args:
      base_path: the normalised model base path.
      log: where messages about removed leftovers go.

    Raises:
      ReleaseError: PATH cannot be created or written.
    """

    def __init__(self, base_path: str, log: Callable[[str], None]):
        self.base_path = base_path
        self.path = join(base_path, _staging_name())
        self.created_base = not tf.io.gfile.exists(base_path)
        try:
            tf.io.gfile.makedirs(base_path)
            _remove_dead_staging(base_path, log)
            tf.io.gfile.makedirs(self.path)
            # Object stores have no real directories: prove write access with a file.
            with tf.io.gfile.GFile(join(self.path, ".probe"), "wb") as handle:
                handle.write(b"")
            tf.io.gfile.remove(join(self.path, ".probe"))
        except (tf.errors.OpError, OSError) as error:
            raise ReleaseError(
                f"cannot write to the model base path {base_path}: {getattr(error, 'message', error)}. "
                f"Pass a --model-base-path this user can create files in."
            ) from error

    def close(self) -> None:
        """Removes the staging directory, and the base path if this push created it and it is empty."""
        remove_tree(self.path)
        if (
            self.created_base
            and tf.io.gfile.isdir(self.base_path)
            and not tf.io.gfile.listdir(self.base_path)
        ):
            tf.io.gfile.rmtree(self.base_path)


def _next_version(base_path: str) -> int:
    """1 + the largest version number ever used in PATH (directories and log), so no number is reused."""
    used = set(version_dirs(base_path))
    used |= {
        record["version"] for record in read_release_log(base_path)[0] if isinstance(record["version"], int)
    }
    return max(used, default=0) + 1


def publish(
    source_dir: str,
    staging: Staging,
    record: dict,
    lock_timeout_s: float,
    log: Callable[[str], None],
) -> tuple[int, dict]:
    """Copies a version into PATH under a new number and logs it; see the module docstring.

    Args:
      source_dir: the SavedModel directory to publish.
      staging: the prepared base path.
      record: the release record without `version`, `path` and `time`.
      lock_timeout_s: how long to wait for a concurrent push.
      log: where progress lines go.

    Returns:
      The version number and the record as logged.

    Raises:
      ReleaseError: the lock was not free in time, or the rename failed.
    """
    base_path = staging.base_path
    atomic = has_atomic_rename(base_path)
    if atomic:
        copy_version(source_dir, join(staging.path, "version"))
    with PushLock(base_path, lock_timeout_s, log) as lock:
        reconcile_log(base_path, {v: p for v, p in version_dirs(base_path).items() if is_complete(p)}, log)
        version = _next_version(base_path)
        target = join(base_path, str(version))
        if tf.io.gfile.exists(target):  # cannot happen with cooperating pushes; never overwrite
            raise ReleaseError(
                f"{target} already exists; refusing to overwrite a version.", exit_code=EXIT_REFUSED
            )
        record = {
            **record,
            "version": version,
            "path": target,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        record_bytes = (json.dumps(record, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        record_path = posixpath.join(names.ASSETS_EXTRA, RECORD_FILE)
        if atomic:
            staged = join(staging.path, "version")
            with tf.io.gfile.GFile(join(staged, record_path), "wb") as handle:
                handle.write(record_bytes)
            try:
                tf.io.gfile.rename(staged, target, overwrite=False)
            except tf.errors.OpError as error:
                raise ReleaseError(
                    f"could not move the new version into place at {target}: {error.message}",
                    exit_code=EXIT_REFUSED,
                ) from error
        else:
            lock.note_version(version)
            copy_version(source_dir, target, {record_path: record_bytes})
        append_record(base_path, record)
    return version, record


def lineage(card: dict) -> dict:
    """The model card fields a release record copies (where the model came from)."""
    return {
        "config_hash": card.get("config_hash"),
        "git_commit": card.get("git_commit"),
        "tensorflow_version": card.get("tensorflow_version"),
    }


def pushed_by() -> dict:
    """Who published: host, pid and the TensorFlow that did it."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


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

    Args:
      base_path: the model base path.
      to_version: N.
      reason: why; logged.
      lock_timeout_s: how long to wait for a concurrent push.
      log: where progress lines go.

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
        saved_model_pb2.SavedModel.FromString(tf.io.gfile.GFile(join(source, "saved_model.pb"), "rb").read())
    except protobuf_message.DecodeError as error:
        raise ReleaseError(
            f"{source}/saved_model.pb is corrupt ({error}); roll back to another version."
        ) from error
    records, _ = read_release_log(base_path)
    origin = next((r for r in reversed(records) if r.get("version") == to_version), None)
    origin = origin or read_version_record(source) or {}
    keep = (
        "model_name",
        "run_dir",
        "source",
        "data",
        "config_hash",
        "metrics",
        "git_commit",
        "tensorflow_version",
    )
    record = {key: origin.get(key) for key in keep}
    record.update(
        action="rollback", rollback_of=to_version, reason=reason, forced=False, pushed_by=pushed_by()
    )
    staging = Staging(base_path, log)
    try:
        version, record = publish(source, staging, record, lock_timeout_s, log)
    finally:
        staging.close()
    log(f"rolled back: version {to_version} re-published as version {version}")
    return version, record


def evaluation_documents(
    candidate: Candidate, config: PipelineConfig, data_path: str | Path | None, eval_data: str | Path | None
) -> EvaluationSet:
    """The documents the gate starts from: `--eval-data`, else the run's test split.

    Raises:
      ReleaseError: the file cannot be read (naming it), or the run's data is gone or changed.
    """
    if eval_data is None:
        test = load_test_split(candidate, config, data_path)
        return EvaluationSet(test, f"the run's test split ({candidate.run_dir / 'splits.json'})")
    path = Path(eval_data).resolve()
    try:
        data = ingest(path, config.data)
    except DataError as error:
        raise ReleaseError(f"--eval-data: {error}") from error
    dropped = {
        f"{why.replace('_', ' ')} in the file": n for why, n in data.report["dropped_by_reason"].items() if n
    }
    return EvaluationSet(data, f"--eval-data {path}", dropped)


@dataclass(frozen=True)
class PushResult:
    """A published version: its number, where it is, and its release record."""

    version: int
    path: str
    record: dict
    comparison: Comparison


def server_command(release: ReleaseConfig) -> tuple[str, ...]:
    """The serving command infra validation runs: `release.model_server`, else the default."""
    return tuple(shlex.split(release.model_server)) if release.model_server else find_model_server()


def push(
    run_dir: str | Path,
    base_path: str | Path,
    config: PipelineConfig,
    *,
    force: bool = False,
    reason: str | None = None,
    data_path: str | Path | None = None,
    eval_data: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> PushResult:
    """Gates, validates and publishes a run's export as the next version under `base_path`.

    Args:
      run_dir: the run directory (`RUN/export/<version>/` is the candidate).
      base_path: the model base path TF Serving polls (local or gfile URL).
      config: the run's config with the push's overrides; its `release`
        section holds the gate's thresholds and how the push runs (infra
        validation, server, timeouts), and is recorded in the release record.
      force: publish even if the gate refuses (needs `reason`).
      reason: why `force`, or why `release.infra_validation` is off; logged.
      data_path: the run's data when it has moved since training.
      eval_data: labelled documents to gate on instead of the run's test split
        (read with the run's `data` settings).
      log: where progress lines go.

    Returns:
      The new version and its release record.

    Raises:
      GateRefused: the candidate fails the gate and `force` is off (exit 1).
      InfraValidationError: the served candidate does not answer like the
        in-process one (exit 1).
      ReleaseError: unusable run, model, data or base path (exit 2), or a
        concurrent push that does not finish in time (exit 1).
    """
    settings = config.release
    if (force or not settings.infra_validation) and not (reason or "").strip():
        raise ReleaseError(
            "--force and --skip-infra-validation need --reason TEXT; it goes into the release log."
        )
    base_path = normalize_base_path(base_path)
    candidate = load_candidate(run_dir)
    log(f"candidate: {candidate.version_dir}")
    staging = Staging(base_path, log)
    scratch = tempfile.TemporaryDirectory(prefix="textserve-push-")
    try:
        evaluation = evaluation_documents(candidate, config, data_path, eval_data)
        log(f"evaluation: {evaluation.describe()} from {evaluation.source}")
        baseline, baseline_version = None, None
        latest = latest_complete_version(base_path)
        if latest is not None:
            baseline_version = latest[0]
            name = f"version {baseline_version}"
            model = load_model(local_copy(latest[1], Path(scratch.name)), f"served {name}")
            baseline = GateModel(name, model, model.card)
        comparison = run_gate(
            GateModel("the candidate", candidate.model, candidate.card),
            evaluation,
            settings,
            baseline=baseline,
            baseline_version=baseline_version,
            holdout=eval_data is not None,
            log=log,
        )
        del baseline
        table = format_comparison(comparison, f"candidate ({candidate.run_dir.name})")
        if not comparison.passed and not force:
            raise GateRefused(
                f"the gate refused {candidate.version_dir}:\n{table}\n"
                f"Improve the model, or push anyway with --force --reason TEXT.",
                comparison,
            )
        log(table if comparison.passed else table + f"\nforced: {reason}")

        infra: dict = {"skipped": True, "reason": reason}
        if settings.infra_validation:
            result = validate(
                candidate.version_dir,
                candidate.model,
                (comparison.floor_set.data.texts if comparison.floor_set else evaluation.data.texts)[
                    : settings.infra_sample
                ],
                candidate.card.get("model_name", config.export.model_name),
                server_command=server_command(settings),
                scratch_dir=Path(scratch.name) / "infra",
                tolerance=config.export.verify_tolerance,
                timeout_s=settings.infra_timeout_s,
            )
            infra = dataclasses.asdict(result)
            log(f"infra validation: {result.summary()}")

        record = _push_record(candidate, comparison, infra, config, force, reason, data_path, evaluation)
        version, record = publish(str(candidate.version_dir), staging, record, settings.lock_timeout_s, log)
    finally:
        staging.close()
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


def _push_record(
    candidate: Candidate,
    comparison: Comparison,
    infra: dict,
    config: PipelineConfig,
    force: bool,
    reason: str | None,
    data_path: str | Path | None,
    evaluation: EvaluationSet,
) -> dict:
    card = candidate.card
    return {
        "action": "push",
        "model_name": card.get("model_name", config.export.model_name),
        "run_dir": str(candidate.run_dir),
        "source": str(candidate.version_dir),
        "data": {
            "source": str(data_source(candidate, data_path)),
            "fingerprint": card.get("data", {}).get("fingerprint"),
        },
        **lineage(card),
        "metrics": {
            "candidate": _headline(comparison.candidate),
            "baseline": _headline(comparison.baseline),
            "baseline_version": comparison.baseline_version,
        },
        "evaluation": {"source": evaluation.source, "documents": len(evaluation.data.ids)},
        "gate": comparison.summary(),
        "release_config": dataclasses.asdict(config.release),
        "forced": bool(force and not comparison.passed),
        "reason": reason,
        "infra_validation": infra,
        "pushed_with_tensorflow": tf.__version__,
        "pushed_by": pushed_by(),
    }
