"""What is served: the model config, the versions on disk, and the routing table.

This module answers the questions a request asks — which servable does
`name`/`version`/`label` mean, what is the status of a model — and holds the
rules that turn a `ModelServerConfig` and a base path into versions
(TFS_CONTRACT.md §2):

* versions are the child directories of `base_path` whose whole name is an
  int64 (`00000123` → 123); a directory still being written (no
  `saved_model.pb(txt)` yet) is left out;
* the version policy (`latest` N, `all`, `specific`) picks the ones to serve
  ("aspired");
* `version_labels` map labels to versions; a label may only name an AVAILABLE
  version unless `--allow_version_labels_for_unavailable_models`.

`ModelRepository` keeps the routing table as an immutable snapshot that is
replaced whole on each change, so requests read it without taking a lock. The
`VersionWatcher` (version_watcher.py) decides what to load and unload and
writes the results here.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass

import grpc

from serving import config_protos
from serving.errors import ServingError, invalid_argument, not_found
from serving.servable import Servable

_INT64_MAX = 2**63 - 1
_VERSION_DIR = re.compile(r"[0-9]+")
_SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
TENSORFLOW_PLATFORM = "tensorflow"
# A model name longer than this is cut in log lines (names come from clients).
_MAX_LOGGED_CHARS = 200

# ModelVersionStatus.State numbers (get_model_status.proto).
START, LOADING, AVAILABLE, UNLOADING, END = 10, 20, 30, 40, 50


def printable(text: str) -> str:
    """`text` safe for one log line: control characters escaped, long text cut.

    Model names and paths arrive in ReloadConfig requests; written verbatim, a
    newline in one would forge a log line.
    """
    escaped = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    if len(escaped) > _MAX_LOGGED_CHARS:
        return f"{escaped[:_MAX_LOGGED_CHARS]}...({len(text)} chars)"
    return escaped


def model_server_config_class():
    """The `tensorflow.serving.ModelServerConfig` message class."""
    from tensorflow_serving.config import model_server_config_pb2

    return model_server_config_pb2.ModelServerConfig


def read_config_file(path: str):
    """Reads a text-format ModelServerConfig.

    Args:
      path: the `--model_config_file`.

    Returns:
      The parsed `ModelServerConfig`.

    Raises:
      config_protos.TextProtoError: unreadable or unparsable (its `log_line` is
        `Error parsing text-format tensorflow.serving.ModelServerConfig: ...`).
    """
    return config_protos.parse_text_file(model_server_config_class(), path)


def validate_config(config) -> None:
    """Checks a ModelServerConfig as ServerCore does before applying it.

    Raises:
      ServingError: INVALID_ARGUMENT naming the offending model.
    """
    if config.WhichOneof("config") != "model_config_list":
        raise invalid_argument(
            "ModelServerConfig must contain a model_config_list; custom_model_config "
            "is not supported by this server"
        )
    seen: set[str] = set()
    for model in config.model_config_list.config:
        if model.name in seen:
            raise invalid_argument(f"Illegal to list model {model.name} multiple times in config list")
        seen.add(model.name)
    for model in config.model_config_list.config:
        # Only absolute paths (or URIs) are allowed: the server wires no root dir.
        if not (os.path.isabs(model.base_path) or "://" in model.base_path):
            raise invalid_argument(
                f"Expected model {model.name} to have an absolute path or URI; "
                f"got base_path()={model.base_path}"
            )
    for model in config.model_config_list.config:
        _check_platform(model)


def _check_platform(model) -> None:
    platform = model.model_platform
    if model.model_type != 0:  # deprecated ModelType enum; 1 = TENSORFLOW
        if platform:
            raise invalid_argument(
                "Illegal setting both ModelServerConfig::model_type (deprecated) and "
                "ModelServerConfig::model_platform."
            )
        if model.model_type != 1:
            raise invalid_argument(f"ModelServerConfig::model_type choice {model.model_type} not supported.")
        platform = TENSORFLOW_PLATFORM
    if not platform:
        raise invalid_argument(
            "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
            "ModelServerConfig::model_platform."
        )
    if platform != TENSORFLOW_PLATFORM:
        raise invalid_argument(
            f"Model {model.name} requested unsupported platform {platform}; "
            f'this server serves only model_platform: "{TENSORFLOW_PLATFORM}"'
        )


def is_complete(version_path: str) -> bool:
    """A version directory is complete once its saved_model.pb (or .pbtxt) exists."""
    return any(os.path.isfile(os.path.join(version_path, f)) for f in _SAVED_MODEL_FILES)


def version_fingerprint(path: str) -> tuple:
    """(relative path, size, mtime) of every file under a version dir: changes when its files do."""
    files = []
    for root, _, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            try:
                stat = os.stat(full)
            except OSError:
                continue
            files.append((os.path.relpath(full, path), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(files))


def scan_base_path(base_path: str, complete_only: bool = True) -> dict[int, str]:
    """Version number → directory for every int64-named child dir of `base_path`.

    Args:
      base_path: a model's base path (local file system).
      complete_only: leave out directories still being written (no
        saved_model.pb/.pbtxt yet), as the server does; False lists them too
        (a release picking the next free number must not reuse theirs).

    Returns:
      The versions found, sorted by number; two spellings of one number
      (`1`, `001`) keep the first listed.

    Raises:
      OSError: `base_path` is missing (FileNotFoundError), not a directory, or
        cannot be listed.
    """
    found: dict[int, str] = {}
    with os.scandir(base_path) as entries:
        for entry in entries:
            if not _VERSION_DIR.fullmatch(entry.name) or not entry.is_dir():
                continue
            version = int(entry.name)
            if version > _INT64_MAX:
                continue
            if complete_only and not is_complete(entry.path):
                continue
            found.setdefault(version, entry.path)
    return dict(sorted(found.items()))


def discover_versions(base_path: str, complete_only: bool = True) -> dict[int, str]:
    """`scan_base_path`, with {} when `base_path` is missing or unreadable.

    For callers that treat "nothing there" and "cannot look" alike; the server
    itself uses `scan_base_path` so that it can tell them apart.
    """
    try:
        return scan_base_path(base_path, complete_only)
    except OSError:
        return {}


def aspired_versions(model_config, available: dict[int, str]) -> dict[int, str]:
    """Applies a model's `model_version_policy` to the versions found on disk."""
    policy = model_config.model_version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return dict(available)
    if kind == "specific":
        wanted = set(policy.specific.versions)
        return {v: p for v, p in available.items() if v in wanted}
    count = max(1, policy.latest.num_versions) if kind == "latest" else 1
    newest = sorted(available, reverse=True)[:count]
    return {v: available[v] for v in newest}


@dataclass(frozen=True)
class VersionStatus:
    """What the status monitor knows about one version."""

    state: int
    code: grpc.StatusCode = grpc.StatusCode.OK
    message: str = ""
    # Files of a failed load (path, size, mtime): it is tried again once they change.
    failed_fingerprint: tuple | None = None

    @property
    def failed(self) -> bool:
        """The version's load failed (a cancelled load is not a failure of its files)."""
        return self.state == END and self.code not in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED)


class ModelRepository:
    """The configured models, their version statuses, labels and routing table.

    Reads (`resolve`, `model_status`, ...) never wait for a load or a poll.
    Writes come from the `VersionWatcher`.

    Args:
      allow_labels_for_unavailable: `--allow_version_labels_for_unavailable_models`.
    """

    def __init__(self, allow_labels_for_unavailable: bool = False):
        self._allow_labels_for_unavailable = allow_labels_for_unavailable
        # Immutable snapshots, replaced whole under `_write_lock`; read without it.
        self._configs: dict = {}  # name → ModelConfig
        self._routes: dict[str, dict[int, Servable]] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._write_lock = threading.Lock()
        # Kept after unload (END), as TF Serving's status monitor does.
        self._status: dict[str, dict[int, VersionStatus]] = {}

    # ---- requests -------------------------------------------------------------

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """Finds the servable a request names.

        Args:
          name: model name.
          version: a specific version, or None.
          label: a version label (used when `version` is None), or None/"".

        Returns:
          The AVAILABLE servable: the given version, the label's version, or the highest.

        Raises:
          ServingError: INVALID_ARGUMENT `Unrecognized servable version label: L`;
            NOT_FOUND `Servable not found for request: Latest(M)` / `Specific(M, V)`.
        """
        routes = self._routes
        if version is None and label:
            labelled = self._labels.get(name, {}).get(label)
            if labelled is None:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = labelled
        versions = routes.get(name) or {}
        if version is None:
            if not versions:
                raise not_found(f"Servable not found for request: Latest({name})")
            return versions[max(versions)]
        found = versions.get(version)
        if found is None:
            raise not_found(f"Servable not found for request: Specific({name}, {version})")
        return found

    def model_names(self) -> list[str]:
        """Names of the configured models, sorted."""
        return sorted(self._configs)

    def available_versions(self, name: str) -> list[int]:
        """AVAILABLE versions of a model, highest first."""
        return sorted(self._routes.get(name, {}), reverse=True)

    def version_labels(self, name: str) -> dict[str, int]:
        """A model's version labels (label → version), as configured."""
        return dict(self._labels.get(name, {}))

    def model_status(self, name: str, version: int | None = None):
        """GetModelStatus: the status of one version, or of every version known.

        Args:
          name: model name.
          version: a version, or None for all (newest first, unloaded ones as END).

        Returns:
          A `GetModelStatusResponse`.

        Raises:
          ServingError: NOT_FOUND `Could not find any versions of model M` /
            `Could not find version V of model M`.
        """
        from tensorflow_serving.apis import get_model_status_pb2

        known = dict(self._status.get(name, {}))
        if version is not None:
            if version not in known:
                raise not_found(f"Could not find version {version} of model {name}")
            known = {version: known[version]}
        elif not known:
            raise not_found(f"Could not find any versions of model {name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for number in sorted(known, reverse=True):
            record = known[number]
            entry = response.model_version_status.add(version=number, state=record.state)
            entry.status.error_code = record.code.value[0]
            entry.status.error_message = record.message
        return response

    # ---- written by the watcher ------------------------------------------------

    def set_configs(self, configs: dict) -> None:
        """Replaces the configured models (name → ModelConfig)."""
        self._configs = dict(configs)

    def status_of(self, name: str, version: int) -> VersionStatus | None:
        """The status record of one version, or None if it was never seen."""
        return self._status.get(name, {}).get(version)

    def set_status(self, name: str, version: int, record: VersionStatus) -> None:
        """Records a version's new state."""
        with self._write_lock:
            self._status = {**self._status, name: {**self._status.get(name, {}), version: record}}

    def changed_failures(self, name: str, found: dict[int, str]) -> set[int]:
        """Versions among `found` whose last load failed and whose files changed since."""
        changed = set()
        for version, path in found.items():
            record = self.status_of(name, version)
            if record and record.failed and record.failed_fingerprint != version_fingerprint(path):
                changed.add(version)
        return changed

    def serving(self, name: str) -> dict[int, Servable]:
        """The AVAILABLE versions of a model and their servables."""
        return dict(self._routes.get(name, {}))

    def publish(self, servable: Servable) -> None:
        """Starts routing requests to a loaded servable (and marks it AVAILABLE)."""
        with self._write_lock:
            versions = {**self._routes.get(servable.name, {}), servable.version: servable}
            self._routes = {**self._routes, servable.name: versions}
        self.set_status(servable.name, servable.version, VersionStatus(AVAILABLE))

    def withdraw(self, name: str, version: int) -> Servable | None:
        """Stops routing to a version (marks it UNLOADING); returns its servable to drain."""
        with self._write_lock:
            versions = dict(self._routes.get(name, {}))
            servable = versions.pop(version, None)
            routes = dict(self._routes)
            if versions:
                routes[name] = versions
            else:
                routes.pop(name, None)
            self._routes = routes
        self.set_status(name, version, VersionStatus(UNLOADING))
        return servable

    def checked_labels(self, config) -> dict[str, dict[str, int]]:
        """The label map of `config`, after checking each label names an AVAILABLE version.

        Raises:
          ServingError: FAILED_PRECONDITION for a label on a version that is not
            available (the flag lets only *new* labels point ahead of loading).
        """
        labels: dict[str, dict[str, int]] = {}
        for model in config.model_config_list.config:
            for label, version in sorted(model.version_labels.items()):
                if version not in self._routes.get(model.name, {}):
                    current = self._labels.get(model.name, {}).get(label)
                    allowed = self._allow_labels_for_unavailable and current in (None, version)
                    if not allowed:
                        raise ServingError(
                            grpc.StatusCode.FAILED_PRECONDITION,
                            f"Request to assign label to version {version} of model {model.name}, "
                            "which is not currently available for inference",
                        )
                labels.setdefault(model.name, {})[label] = version
        return labels

    def set_labels(self, labels: dict[str, dict[str, int]]) -> None:
        """Replaces the whole label map (model → label → version)."""
        self._labels = labels

    def not_available_error(self, names: list[str], noun: str) -> ServingError:
        """TF Serving's UNKNOWN `N servable(s)|model(s) did not become available: {...}`."""
        parts = []
        for name in names:
            for version, record in sorted(self._status.get(name, {}).items(), reverse=True):
                if record.code != grpc.StatusCode.OK:
                    parts.append(
                        f"{{{{name: {name} version: {version}}} due to error: "
                        f"{record.code.name}: {record.message}}}, "
                    )
                    break
        return ServingError(
            grpc.StatusCode.UNKNOWN,
            f"{len(names)} {noun} did not become available: {{{''.join(parts)}}}",
        )
