"""The model store: which SavedModel versions are served, and their status.

A `ModelManager` turns a `ModelServerConfig` (from `--model_config_file`, or
built from `--model_name`/`--model_base_path`) into loaded `Servable`s and keeps
them current, the way tensorflow_model_server's ServerCore does
(TFS_CONTRACT.md §2):

* versions are the child directories of `base_path` whose whole name is an
  int64 (`00000123` → 123); the version policy (`latest` N, `all`, `specific`)
  picks the ones to serve ("aspired");
* a background thread rescans every `--file_system_poll_wait_seconds`; a new
  version is loaded (and warmed up) before an old one is unloaded, and an old
  version stays served while no aspired version is AVAILABLE, so a version that
  fails to load never disturbs the ones being served;
* a version directory without `saved_model.pb(txt)` is still being written and
  is ignored until the file appears; a version whose load failed (after
  `--max_num_load_retries` retries) stays `END` with its error and is tried
  again only when its files change;
* `version_labels` map labels to versions; a label may only name an AVAILABLE
  version unless `--allow_version_labels_for_unavailable_models`;
* `reload_config` replaces the whole config (HandleReloadConfigRequest, and the
  `--model_config_file_poll_wait_seconds` re-read).

Requests never wait for loads: the routing table is an immutable snapshot,
swapped whole after each change.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from serving import config_protos
from serving.errors import ServingError, invalid_argument, not_found
from serving.flags import ServerOptions
from serving.servable import Servable, session_config

log = logging.getLogger("serving.model_manager")

_INT64_MAX = 2**63 - 1
_VERSION_DIR = re.compile(r"[0-9]+")
_SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
_TENSORFLOW_PLATFORM = "tensorflow"
# How long an unload waits for runs already inside the Session to finish.
_UNLOAD_DRAIN_S = 30.0

# ModelVersionStatus.State numbers (get_model_status.proto).
START, LOADING, AVAILABLE, UNLOADING, END = 10, 20, 30, 40, 50

WarmupHook = Callable[[Servable], None]


def _model_server_config_class():
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
    return config_protos.parse_text_file(_model_server_config_class(), path)


def single_model_config(name: str, base_path: str):
    """The config tensorflow_model_server builds from `--model_name`/`--model_base_path`."""
    config = _model_server_config_class()()
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = base_path
    model.model_platform = _TENSORFLOW_PLATFORM
    return config


def initial_config(options: ServerOptions):
    """The startup config: the config file when given, else the single-model flags.

    Raises:
      config_protos.TextProtoError: the config file does not parse.
    """
    if options.model_config_file:
        return read_config_file(options.model_config_file)
    return single_model_config(options.model_name, options.model_base_path)


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
        platform = model.model_platform
        if model.model_type != 0:  # deprecated ModelType enum; 1 = TENSORFLOW
            if platform:
                raise invalid_argument(
                    "Illegal setting both ModelServerConfig::model_type (deprecated) and "
                    "ModelServerConfig::model_platform."
                )
            if model.model_type != 1:
                raise invalid_argument(
                    f"ModelServerConfig::model_type choice {model.model_type} not supported."
                )
            platform = _TENSORFLOW_PLATFORM
        if not platform:
            raise invalid_argument(
                "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
                "ModelServerConfig::model_platform."
            )
        if platform != _TENSORFLOW_PLATFORM:
            raise invalid_argument(
                f"Model {model.name} requested unsupported platform {platform}; "
                f'this server serves only model_platform: "{_TENSORFLOW_PLATFORM}"'
            )


def discover_versions(base_path: str) -> dict[int, str]:
    """Version number → directory, for every int64-named child dir of `base_path`.

    Returns {} when `base_path` is missing or unreadable (the caller logs it).
    Directories still being written (no saved_model.pb/.pbtxt yet) are left out.
    """
    try:
        entries = list(os.scandir(base_path))
    except OSError:
        return {}
    found: dict[int, str] = {}
    for entry in entries:
        if not _VERSION_DIR.fullmatch(entry.name) or not entry.is_dir():
            continue
        version = int(entry.name)
        if version > _INT64_MAX:
            continue
        if not any(os.path.isfile(os.path.join(entry.path, f)) for f in _SAVED_MODEL_FILES):
            continue
        # Two spellings of one number (1 and 001): keep the first seen, as a map would.
        found.setdefault(version, entry.path)
    return found


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


def _fingerprint(path: str) -> tuple:
    """(relative path, size, mtime) of every file under a version dir."""
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


@dataclass
class _Version:
    """What the status monitor knows about one version."""

    state: int
    code: grpc.StatusCode = grpc.StatusCode.OK
    message: str = ""
    servable: Servable | None = None
    # Files of a failed load: tried again once they change.
    failed_fingerprint: tuple | None = None


class ModelManager:
    """Loads, serves, swaps and unloads SavedModel versions per a ModelServerConfig.

    Typical use (the server's wiring):

        manager = ModelManager(options)
        manager.start(initial_config(options), warmup=hook)   # blocks until served
        servable = manager.resolve("half_plus_two")
        ...
        manager.stop()
    """

    def __init__(self, options: ServerOptions, metrics=None):
        """Prepares an empty manager; nothing loads until `start`.

        Args:
          options: the server options (tags, polling, retries, session threads, labels rule).
          metrics: a `serving.metrics.Metrics` to count load attempts in, or None.

        Raises:
          config_protos.TextProtoError: `--tensorflow_session_config_file` does not parse.
        """
        self._options = options
        self._metrics = metrics
        self._session_config = session_config(
            options.tensorflow_intra_op_parallelism,
            options.tensorflow_inter_op_parallelism,
            options.tensorflow_session_parallelism,
            options.tensorflow_session_config_file,
        )
        self._warmup: WarmupHook | None = None
        # Serialises every change (poll passes, reloads); requests never take it.
        self._change_lock = threading.RLock()
        # Guards the status records below (cheap, held only briefly).
        self._status_lock = threading.Lock()
        self._configs: dict = {}  # name → ModelConfig currently configured
        self._status: dict[str, dict[int, _Version]] = {}  # kept after unload (END)
        # Immutable snapshots read by requests without locking.
        self._routes: dict[str, dict[int, Servable]] = {}
        self._labels: dict[str, dict[str, int]] = {}
        # The versions each model's policy picked at its last pass.
        self._aspired_now: dict[str, dict[int, str]] = {}
        self._config = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._logged: set[tuple] = set()

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

        with self._status_lock:
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

    # ---- lifecycle ------------------------------------------------------------

    def start(self, config, warmup: WarmupHook | None = None) -> None:
        """Applies the startup config, blocks until every model is served, starts polling.

        Args:
          config: the startup `ModelServerConfig`.
          warmup: called with each freshly loaded servable before it is served;
            raising `ServingError` fails that version's load.

        Raises:
          ServingError: invalid config (INVALID_ARGUMENT), labels on versions that
            are not available (FAILED_PRECONDITION), or UNKNOWN
            `N servable(s) did not become available: ...`.
        """
        self._warmup = warmup
        with self._change_lock:
            validate_config(config)
            # Startup labels are checked before anything loads, as in TF Serving:
            # without --allow_version_labels_for_unavailable_models they fail.
            labels = self._checked_labels(config)
            self._apply(config, labels_after_load=None, first=True)
            self._labels = labels
        if self._options.file_system_poll_wait_seconds > 0:
            self._spawn(self._poll_loop, "model-version-poll")
        if self._options.model_config_file and self._options.model_config_file_poll_wait_seconds > 0:
            self._spawn(self._config_file_loop, "model-config-poll")

    def reload_config(self, config) -> None:
        """Replaces the whole config (HandleReloadConfigRequest semantics).

        Models absent from `config` are unloaded; added ones are loaded and waited
        for; then the version labels are replaced.

        Args:
          config: the new `ModelServerConfig`.

        Raises:
          ServingError: INVALID_ARGUMENT for a bad config (nothing changes),
            UNKNOWN when added models do not become available,
            FAILED_PRECONDITION for a label on an unavailable version.
        """
        with self._change_lock:
            validate_config(config)
            self._apply(config, labels_after_load=True, first=False)

    def stop(self) -> None:
        """Stops the polling threads (loaded sessions are freed with the process)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    # ---- applying configs -------------------------------------------------------

    def _apply(self, config, labels_after_load, first: bool) -> None:
        new = {model.name: model for model in config.model_config_list.config}
        for name in [n for n in self._configs if n not in new]:
            log.info("Model %s is no longer in the config; unloading all its versions", name)
            del self._configs[name]
            for version in list(self._routes.get(name, {})):
                self._unload(name, version)
        added = [name for name in new if name not in self._configs or first]
        self._configs = dict(new)
        for name in new:
            self._sync_model(name)
        self._wait_until_available(added)
        if labels_after_load:
            self._labels = self._checked_labels(config)
        self._config = config

    def _wait_until_available(self, names: list[str]) -> None:
        """Polls until each model is AVAILABLE or has failed; raises if any failed."""
        pending = list(names)
        while True:
            failed = [n for n in pending if self._outcome(n) == "failed"]
            pending = [n for n in pending if self._outcome(n) == "waiting"]
            if failed:
                raise self._not_available_error(failed)
            if not pending or self._stop.is_set():
                return
            self._stop.wait(max(1, self._options.file_system_poll_wait_seconds))
            for name in pending:
                self._sync_model(name)

    def _outcome(self, name: str) -> str:
        if self._routes.get(name):
            return "available"
        with self._status_lock:
            records = self._status.get(name, {})
            aspired = self._aspired_now.get(name, {})
            if aspired and all(
                v in records and records[v].state == END and records[v].code != grpc.StatusCode.OK
                for v in aspired
            ):
                return "failed"
        return "waiting"

    def _not_available_error(self, names: list[str]) -> ServingError:
        parts = []
        with self._status_lock:
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
            f"{len(names)} servable(s) did not become available: {{{''.join(parts)}}}",
        )

    def _checked_labels(self, config) -> dict[str, dict[str, int]]:
        """The new label map, after checking each label names an AVAILABLE version."""
        labels: dict[str, dict[str, int]] = {}
        for model in config.model_config_list.config:
            for label, version in sorted(model.version_labels.items()):
                available = version in self._routes.get(model.name, {})
                if not available:
                    current = self._labels.get(model.name, {}).get(label)
                    # The flag only lets *new* labels point ahead of loading; moving
                    # an existing label still needs the target to be AVAILABLE.
                    allowed = self._options.allow_version_labels_for_unavailable_models and (
                        current is None or current == version
                    )
                    if not allowed:
                        raise ServingError(
                            grpc.StatusCode.FAILED_PRECONDITION,
                            f"Request to assign label to version {version} of model {model.name}, "
                            "which is not currently available for inference",
                        )
                labels.setdefault(model.name, {})[label] = version
        return labels

    # ---- polling ------------------------------------------------------------------

    def _spawn(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _poll_loop(self) -> None:
        while not self._stop.wait(self._options.file_system_poll_wait_seconds):
            with self._change_lock:
                for name in list(self._configs):
                    if self._stop.is_set():
                        return
                    self._sync_model(name)

    def _config_file_loop(self) -> None:
        path = self._options.model_config_file
        while not self._stop.wait(self._options.model_config_file_poll_wait_seconds):
            try:
                config = read_config_file(path)
            except config_protos.TextProtoError as e:
                log.error("%s", e.log_line)
                log.error("Keeping the current models: %s", e)
                continue
            if self._config is not None and config.SerializeToString(
                deterministic=True
            ) == self._config.SerializeToString(deterministic=True):
                continue
            log.info("Model config file %s changed; applying it", path)
            try:
                self.reload_config(config)
            except ServingError as e:
                log.error("Could not apply the model config file %s: %s: %s", path, e.code.name, e.message)

    def _log_once(self, key: tuple, level: int, message: str, *args) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.log(level, message, *args)

    def _sync_model(self, name: str) -> None:
        """One pass for one model: discover versions, load new ones, unload old ones.

        Follows an availability-preserving order: unload a version that is no
        longer aspired only when an aspired version is AVAILABLE (or none is
        aspired, or several old ones remain); otherwise load the highest aspired
        version that needs loading first.
        """
        config = self._configs.get(name)
        if config is None:
            return
        base_path = config.base_path
        if not os.path.isdir(base_path):
            self._log_once(
                ("missing", name, base_path),
                logging.ERROR,
                "Could not find base path %s for servable %s",
                base_path,
                name,
            )
            found = {}
        else:
            self._logged.discard(("missing", name, base_path))
            found = discover_versions(base_path)
            if not found:
                self._log_once(
                    ("empty", name, base_path),
                    logging.WARNING,
                    "No versions of servable %s found under base path %s. Did you forget "
                    "to name your leaf directory as a number (eg. '/1/')?",
                    name,
                    base_path,
                )
        aspired = aspired_versions(config, found)
        policy = config.model_version_policy
        if policy.WhichOneof("policy_choice") == "specific":
            for missing in sorted(set(policy.specific.versions) - set(found)):
                self._log_once(
                    ("specific", name, missing),
                    logging.WARNING,
                    "Version %d of servable %s is in the config's specific versions but "
                    "not found under base path %s",
                    missing,
                    name,
                    base_path,
                )
        with self._status_lock:
            self._aspired_now = {**self._aspired_now, name: aspired}
        while not self._stop.is_set():
            serving = self._routes.get(name, {})
            old = sorted(v for v in serving if v not in aspired)
            aspired_serving = any(v in serving for v in aspired)
            if old and (not aspired or aspired_serving or len(old) > 1):
                self._unload(name, old[0])
                continue
            todo = [v for v in sorted(aspired, reverse=True) if self._needs_load(name, v, aspired[v])]
            if not todo:
                return
            self._load(name, todo[0], aspired[todo[0]])

    def _needs_load(self, name: str, version: int, path: str) -> bool:
        with self._status_lock:
            record = self._status.get(name, {}).get(version)
        if record is None or record.state != END:
            return record is None
        if record.code == grpc.StatusCode.OK:
            return True  # unloaded earlier, aspired again
        return record.failed_fingerprint != _fingerprint(path)

    def _set_status(self, name: str, version: int, record: _Version) -> None:
        with self._status_lock:
            self._status.setdefault(name, {})[version] = record

    def _load(self, name: str, version: int, path: str) -> None:
        """Loads (and warms up) one version with retries; serves it on success."""
        self._set_status(name, version, _Version(START))
        self._set_status(name, version, _Version(LOADING))
        retries = max(0, self._options.max_num_load_retries)
        interval_s = max(0, self._options.load_retry_interval_micros) / 1e6
        error: ServingError | None = None
        for attempt in range(retries + 1):
            fingerprint = _fingerprint(path)
            started = time.monotonic()
            log.info("Loading servable version {name: %s version: %d} from %s", name, version, path)
            try:
                servable = Servable(name, version, path, self._options.tag_set, self._session_config)
                if self._warmup is not None:
                    self._warmup(servable)
            except ServingError as e:
                error = e
                if self._metrics is not None:
                    self._metrics.record_model_load(path, "fail", time.monotonic() - started)
                log.error(
                    "Loading servable version {name: %s version: %d} failed (attempt %d of %d): %s: %s",
                    name,
                    version,
                    attempt + 1,
                    retries + 1,
                    e.code.name,
                    e.message,
                )
                # Stop retrying when the version is gone or no longer wanted.
                if attempt == retries or self._stop.wait(interval_s) or not os.path.isdir(path):
                    break
                continue
            if self._metrics is not None:
                self._metrics.record_model_load(path, "success", time.monotonic() - started)
            self._set_status(name, version, _Version(AVAILABLE, servable=servable))
            routes = dict(self._routes)
            routes[name] = {**routes.get(name, {}), version: servable}
            self._routes = routes
            log.info(
                "Successfully loaded servable version {name: %s version: %d} in %.2f s",
                name,
                version,
                time.monotonic() - started,
            )
            return
        assert error is not None
        self._set_status(
            name,
            version,
            _Version(END, code=error.code, message=error.message, failed_fingerprint=fingerprint),
        )

    def _unload(self, name: str, version: int) -> None:
        """Stops routing to a version, lets its running requests finish, frees it."""
        servable = self._routes.get(name, {}).get(version)
        self._set_status(name, version, _Version(UNLOADING))
        routes = dict(self._routes)
        remaining = {v: s for v, s in routes.get(name, {}).items() if v != version}
        if remaining:
            routes[name] = remaining
        else:
            routes.pop(name, None)
        self._routes = routes
        if servable is not None:
            if not servable.wait_idle(_UNLOAD_DRAIN_S):
                log.warning("Unloading %r while requests are still running in it", servable)
            servable.release()
        self._set_status(name, version, _Version(END))
        log.info("Unloaded servable version {name: %s version: %d}", name, version)
